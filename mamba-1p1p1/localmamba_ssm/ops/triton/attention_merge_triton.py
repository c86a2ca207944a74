"""The ``triton`` backend of ``attention_merge_fn``: LocalMamba's channel attention on each direction, summed.

The gate of direction k depends on the mean over all tokens of LayerNorm(y_k), so each pass over y needs the one
before it to have finished, and the op takes two passes each way (one kernel cannot wait for all the others):

- forward: ``_norm_mean_kernel`` reads y once and writes mean_t((y_t - mu_t) / sigma_t) per (batch, direction)
  (partial sums per token block); the gate MLP (``channel_gate``) runs in torch on those (Bt, K, E) summaries;
  ``_merge_kernel`` reads y a second time and writes sum_k y_k * gate_k;
- backward: ``_gate_grad_kernel`` reads dout and y for d gate_k = sum_t dout_t * y_k,t (partial sums per token
  block); the MLP's backward in torch gives d xbar; ``_input_grad_kernel`` reads dout and y again and writes the
  whole gradient of y once: dout * gate_k plus the LayerNorm backward of d xbar / T (a gradient that is the same for
  every token of a direction; mu and sigma are recomputed from the row).

One custom op each way, with autograd; math in fp32, y, its gradient and the output in y's dtype. CUDA tensors, or
CPU under TRITON_INTERPRET=1.
"""
import math
from typing import Tuple

import torch
import triton
import triton.language as tl

from localmamba_kernel_runtime.derivatives import refuse_second_derivative
from localmamba_kernel_runtime.launch_limits import batch_slices, on_tensor_device
from localmamba_kernel_runtime.precision import autocast_off

from ..channel_gate import gate_backward, gate_forward

ROWS = 16             # tokens per program of the normalisation kernel (whole rows)
INPUT_GRAD_ROWS = 8   # tokens per program of the input-gradient kernel (whole rows of y and dout: 112 registers)
MERGE_ROWS = 16       # tokens per program of the merge and gate-gradient kernels
MERGE_COLS = 64       # channels per program of the merge and gate-gradient kernels

_T = torch.Tensor


@triton.jit
def _normalised_rows(y_ptr, row0, t, num_tokens, e, channels, eps):
    """(x - mean) / std of the rows t of one (batch, direction): (ROWS, BE) fp32 (zero on masked rows), 1/std and
    the mask."""
    m = (t < num_tokens)[:, None] & (e < channels)[None, :]
    x = tl.load(y_ptr + ((row0 + t) * channels)[:, None] + e[None, :], mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / channels
    centred = tl.where(m, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / channels + eps)
    return centred * rstd[:, None], rstd, m


@triton.jit
def _norm_mean_kernel(y_ptr, part_ptr, num_tokens, channels, eps, RT: tl.constexpr, BE: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_bk = tl.program_id(1)
    t = pid_t * RT + tl.arange(0, RT)
    e = tl.arange(0, BE)
    xhat, _, _ = _normalised_rows(y_ptr, pid_bk * num_tokens, t, num_tokens, e, channels, eps)
    tl.store(part_ptr + (pid_bk * tl.num_programs(0) + pid_t) * channels + e, tl.sum(xhat, axis=0),
             mask=e < channels)


@triton.jit
def _merge_kernel(y_ptr, gate_ptr, out_ptr, num_dirs, num_tokens, channels, RT: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(0) * RT + tl.arange(0, RT)
    b = tl.program_id(1)
    e = tl.program_id(2) * BC + tl.arange(0, BC)
    m = (t < num_tokens)[:, None] & (e < channels)[None, :]
    acc = tl.zeros([RT, BC], dtype=tl.float32)
    for k in range(0, num_dirs):
        row0 = (b * num_dirs + k) * num_tokens
        y = tl.load(y_ptr + ((row0 + t) * channels)[:, None] + e[None, :], mask=m, other=0.0).to(tl.float32)
        gate = tl.load(gate_ptr + (b * num_dirs + k) * channels + e, mask=e < channels, other=0.0)
        acc += y * gate[None, :]
    tl.store(out_ptr + ((b * num_tokens + t) * channels)[:, None] + e[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m)


@triton.jit
def _gate_grad_kernel(dout_ptr, y_ptr, part_ptr, num_dirs, num_tokens, channels, RT: tl.constexpr,
                      BC: tl.constexpr):
    """Partial sums over a token block of dout * y_k: (Bt * K, blocks, E)."""
    pid_t = tl.program_id(0)
    pid_bk = tl.program_id(1)
    t = pid_t * RT + tl.arange(0, RT)
    e = tl.program_id(2) * BC + tl.arange(0, BC)
    m = (t < num_tokens)[:, None] & (e < channels)[None, :]
    rows = ((pid_bk // num_dirs * num_tokens + t) * channels)[:, None] + e[None, :]
    dout = tl.load(dout_ptr + rows, mask=m, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + ((pid_bk * num_tokens + t) * channels)[:, None] + e[None, :], mask=m, other=0.0)
    tl.store(part_ptr + (pid_bk * tl.num_programs(0) + pid_t) * channels + e, tl.sum(dout * y.to(tl.float32), axis=0),
             mask=e < channels)


@triton.jit
def _input_grad_kernel(dout_ptr, y_ptr, gate_ptr, dxbar_ptr, dy_ptr, num_dirs, num_tokens, channels, eps,
                       RT: tl.constexpr, BE: tl.constexpr):
    """dy_k = dout * gate_k + the LayerNorm backward of g = d xbar_k / T at the rows of one token block."""
    t = tl.program_id(0) * RT + tl.arange(0, RT)
    pid_bk = tl.program_id(1)
    e = tl.arange(0, BE)
    emask = e < channels
    xhat, rstd, m = _normalised_rows(y_ptr, pid_bk * num_tokens, t, num_tokens, e, channels, eps)
    g = tl.load(dxbar_ptr + pid_bk * channels + e, mask=emask, other=0.0) / num_tokens
    g_mean = tl.sum(g, axis=0) / channels
    proj = tl.sum(xhat * g[None, :], axis=1) / channels
    gate = tl.load(gate_ptr + pid_bk * channels + e, mask=emask, other=0.0)
    dout = tl.load(dout_ptr + ((pid_bk // num_dirs * num_tokens + t) * channels)[:, None] + e[None, :], mask=m,
                   other=0.0).to(tl.float32)
    dy = dout * gate[None, :] + rstd[:, None] * (g[None, :] - g_mean - xhat * proj[:, None])
    tl.store(dy_ptr + ((pid_bk * num_tokens + t) * channels)[:, None] + e[None, :], dy.to(dy_ptr.dtype.element_ty),
             mask=m)


def _merge_grid(rows: int, num_tokens: int, channels: int):
    """Grid of the merge and gate-gradient kernels over ``rows`` (Bt, or Bt * K) rows of tokens: the token blocks on
    the first axis (2^31 - 1 programs; CUDA caps the others at 65,535, which 1M tokens passed), the rows on the second
    (``batch_slices``)."""
    return triton.cdiv(num_tokens, MERGE_ROWS), rows, triton.cdiv(channels, MERGE_COLS)


@torch.library.custom_op("localmamba::attention_merge_triton_fwd", mutates_args=())
@on_tensor_device
def attention_merge_triton_fwd(y: _T, norm_w: _T, norm_b: _T, reduce_w: _T, reduce_b: _T, select_w: _T,
                               select_b: _T, eps: float) -> Tuple[_T, _T, _T, _T]:
    """Contiguous y (Bt, K, T, E), fp32 parameters -> merged (Bt, T, E) in y's dtype, and for the backward (fp32):
    gate (Bt, K, E), the normalised token means xbar (Bt, K, E) and the MLP's hidden pre-activation (Bt, K, E')."""
    batch, num_dirs, num_tokens, channels = y.shape
    blocks = triton.cdiv(num_tokens, ROWS)
    part = torch.empty(batch, num_dirs, blocks, channels, device=y.device, dtype=torch.float32)
    _norm_mean_kernel[(blocks, batch * num_dirs)](y, part, num_tokens, channels, eps, RT=ROWS,
                                                  BE=triton.next_power_of_2(channels))
    xbar = part.sum(2) / num_tokens
    gate, hidden = gate_forward(xbar, norm_w, norm_b, reduce_w, reduce_b, select_w, select_b)
    out = y.new_empty(batch, num_tokens, channels)
    _merge_kernel[_merge_grid(batch, num_tokens, channels)](y, gate, out, num_dirs, num_tokens, channels,
                                                            RT=MERGE_ROWS, BC=MERGE_COLS)
    return out, gate, xbar, hidden


@attention_merge_triton_fwd.register_fake
def _fwd_fake(y, norm_w, norm_b, reduce_w, reduce_b, select_w, select_b, eps):
    batch, num_dirs, num_tokens, channels = y.shape
    f32 = dict(dtype=torch.float32)
    return (y.new_empty(batch, num_tokens, channels), y.new_empty(batch, num_dirs, channels, **f32),
            y.new_empty(batch, num_dirs, channels, **f32), y.new_empty(batch, num_dirs, reduce_w.shape[0], **f32))


@torch.library.custom_op("localmamba::attention_merge_triton_bwd", mutates_args=())
@on_tensor_device
def attention_merge_triton_bwd(dout: _T, y: _T, gate: _T, xbar: _T, hidden: _T, norm_w: _T, norm_b: _T,
                               reduce_w: _T, select_w: _T, eps: float) -> Tuple[_T, _T, _T, _T, _T, _T, _T]:
    """Backward -> dy (y's dtype), d norm_w, d norm_b, d reduce_w, d reduce_b, d select_w, d select_b (fp32)."""
    batch, num_dirs, num_tokens, channels = y.shape
    grid = _merge_grid(batch * num_dirs, num_tokens, channels)
    part = torch.empty(batch, num_dirs, grid[0], channels, device=y.device, dtype=torch.float32)
    _gate_grad_kernel[grid](dout, y, part, num_dirs, num_tokens, channels, RT=MERGE_ROWS, BC=MERGE_COLS)
    with autocast_off(y.device.type):   # a backward called under autocast: the gate MLP's gradients stay fp32
        dxbar, *param_grads = gate_backward(part.sum(2), gate, xbar, hidden, norm_w, norm_b, reduce_w, select_w)
    dy = torch.empty_like(y)
    _input_grad_kernel[(triton.cdiv(num_tokens, INPUT_GRAD_ROWS), batch * num_dirs)](
        dout, y, gate, dxbar, dy, num_dirs, num_tokens, channels, eps, RT=INPUT_GRAD_ROWS,
        BE=triton.next_power_of_2(channels))
    return (dy, *param_grads)


@attention_merge_triton_bwd.register_fake
def _bwd_fake(dout, y, gate, xbar, hidden, norm_w, norm_b, reduce_w, select_w, eps):
    return (y.new_empty(y.shape), norm_w.new_empty(norm_w.shape), norm_w.new_empty(norm_w.shape),
            reduce_w.new_empty(reduce_w.shape), reduce_w.new_empty(reduce_w.shape[0]),
            select_w.new_empty(select_w.shape), select_w.new_empty(select_w.shape[0]))


def _setup(ctx, inputs, output):
    y, norm_w, norm_b, reduce_w, reduce_b, select_w, select_b, eps = inputs
    _, gate, xbar, hidden = output
    ctx.save_for_backward(y, gate, xbar, hidden, norm_w, norm_b, reduce_w, select_w)
    ctx.eps = eps
    ctx.set_materialize_grads(False)  # no zero gradients for the outputs kept for the backward


def _backward(ctx, dout, *unused):
    y, gate, xbar, hidden, norm_w, norm_b, reduce_w, select_w = ctx.saved_tensors
    grads = attention_merge_triton_bwd(dout.contiguous(), y, gate, xbar, hidden, norm_w, norm_b, reduce_w, select_w,
                                       ctx.eps)
    return grads + (None,)


attention_merge_triton_fwd.register_autograd(_backward, setup_context=_setup)
refuse_second_derivative(attention_merge_triton_bwd)


def attention_merge_triton(y: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                           reduce_weight: torch.Tensor, reduce_bias: torch.Tensor, select_weight: torch.Tensor,
                           select_bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """triton backend of ``attention_merge_fn`` (same arguments and result). A batch too large for one kernel call
    (``launch_limits``) runs as several calls on slices of it."""
    slices = batch_slices(y.shape[0], math.prod(y.shape[1:]), item_grid_rows=y.shape[1])
    # fp32 compute under any autocast; the split's torch.cat too is outside it (autocast refuses fp16 parts in a
    # bf16 region and the reverse)
    with autocast_off(y.device.type):
        if len(slices) > 1:   # the parts get the weights in fp32: their gradients summed in fp32 (as on one call)
            weights = [t.float() for t in (norm_weight, norm_bias, reduce_weight, reduce_bias, select_weight,
                                           select_bias)]
            return torch.cat([attention_merge_triton(y[part], *weights, eps) for part in slices])
        return attention_merge_triton_fwd(
            y.contiguous(), *(t.float().contiguous() for t in (norm_weight, norm_bias, reduce_weight, reduce_bias,
                                                               select_weight, select_bias)), eps)[0]
