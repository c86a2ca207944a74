"""The ``triton`` backend of ``attention_merge_fn``: LocalMamba's channel attention on each direction, summed.

The gate of direction k depends on the mean over all tokens of LayerNorm(y_k), so the op takes two passes over y:
``_norm_mean_kernel`` reads y once and writes mean_t((y_t - mu_t) / sigma_t) per (batch, direction) (partial sums
per token block); the affine LayerNorm parameters, the two small linear layers, GELU and the sigmoid run in torch on
(Bt, K, E) summaries; ``_merge_kernel`` reads y a second time and writes sum_k y_k * gate_k. Backward mirrors it:
``_merge_bwd_kernel`` (dy = dout * gate_k and per-block partial sums of dgate), torch through the gate MLP, and
``_norm_mean_bwd_kernel`` (the LayerNorm backward of a gradient that is the same for every token of a direction).
Math in fp32; y and the output in y's dtype. Custom ops with autograd; CUDA tensors, or CPU under TRITON_INTERPRET=1.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from localmamba_kernel_runtime.launch_limits import batch_slices
from localmamba_kernel_runtime.precision import autocast_off

ROWS = 16        # tokens per program of the normalisation kernels
MERGE_ROWS = 16  # tokens per program of the merge kernels
MERGE_COLS = 64  # channels per program of the merge kernels


@triton.jit
def _normalised_rows(y_ptr, row0, t, num_tokens, e, channels, eps):
    """(x - mean) / std of the rows t of one (batch, direction): (ROWS, BE) fp32 (zero on masked rows), and 1/std."""
    m = (t < num_tokens)[:, None] & (e < channels)[None, :]
    x = tl.load(y_ptr + ((row0 + t) * channels)[:, None] + e[None, :], mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / channels
    centred = tl.where(m, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / channels + eps)
    return centred * rstd[:, None], rstd, m


@triton.jit
def _norm_mean_kernel(y_ptr, part_ptr, num_tokens, channels, eps, RT: tl.constexpr, BE: tl.constexpr):
    pid_bk = tl.program_id(0)
    pid_t = tl.program_id(1)
    t = pid_t * RT + tl.arange(0, RT)
    e = tl.arange(0, BE)
    xhat, _, _ = _normalised_rows(y_ptr, pid_bk * num_tokens, t, num_tokens, e, channels, eps)
    tl.store(part_ptr + (pid_bk * tl.num_programs(1) + pid_t) * channels + e, tl.sum(xhat, axis=0),
             mask=e < channels)


@triton.jit
def _norm_mean_bwd_kernel(y_ptr, dmean_ptr, dy_ptr, num_tokens, channels, eps, RT: tl.constexpr,
                          BE: tl.constexpr):
    pid_bk = tl.program_id(0)
    t = tl.program_id(1) * RT + tl.arange(0, RT)
    e = tl.arange(0, BE)
    xhat, rstd, m = _normalised_rows(y_ptr, pid_bk * num_tokens, t, num_tokens, e, channels, eps)
    g = tl.load(dmean_ptr + pid_bk * channels + e, mask=e < channels, other=0.0) / num_tokens
    g_mean = tl.sum(g, axis=0) / channels
    proj = tl.sum(xhat * g[None, :], axis=1) / channels
    dy = rstd[:, None] * (g[None, :] - g_mean - xhat * proj[:, None])
    tl.store(dy_ptr + ((pid_bk * num_tokens + t) * channels)[:, None] + e[None, :], dy, mask=m)


@triton.jit
def _merge_kernel(y_ptr, gate_ptr, out_ptr, num_dirs, num_tokens, channels, RT: tl.constexpr, BC: tl.constexpr):
    b = tl.program_id(0)
    t = tl.program_id(1) * RT + tl.arange(0, RT)
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
def _merge_bwd_kernel(dout_ptr, y_ptr, gate_ptr, dy_ptr, dgate_ptr, num_dirs, num_tokens, channels,
                      RT: tl.constexpr, BC: tl.constexpr):
    pid_bk = tl.program_id(0)
    pid_t = tl.program_id(1)
    b = pid_bk // num_dirs
    t = pid_t * RT + tl.arange(0, RT)
    e = tl.program_id(2) * BC + tl.arange(0, BC)
    m = (t < num_tokens)[:, None] & (e < channels)[None, :]
    dout = tl.load(dout_ptr + ((b * num_tokens + t) * channels)[:, None] + e[None, :], mask=m, other=0.0)
    dout = dout.to(tl.float32)
    act = ((pid_bk * num_tokens + t) * channels)[:, None] + e[None, :]
    y = tl.load(y_ptr + act, mask=m, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + pid_bk * channels + e, mask=e < channels, other=0.0)
    tl.store(dy_ptr + act, dout * gate[None, :], mask=m)
    tl.store(dgate_ptr + (pid_bk * tl.num_programs(1) + pid_t) * channels + e, tl.sum(dout * y, axis=0),
             mask=e < channels)


@torch.library.custom_op("localmamba::normalised_mean_triton", mutates_args=())
def normalised_mean(y: torch.Tensor, eps: float) -> torch.Tensor:
    """y (Bt, K, T, E) contiguous -> mean over tokens of (y - mean_E) / std_E, (Bt, K, E) fp32."""
    batch, num_dirs, num_tokens, channels = y.shape
    blocks = triton.cdiv(num_tokens, ROWS)
    part = torch.empty(batch, num_dirs, blocks, channels, device=y.device, dtype=torch.float32)
    _norm_mean_kernel[(batch * num_dirs, blocks)](y, part, num_tokens, channels, eps, RT=ROWS,
                                                   BE=triton.next_power_of_2(channels))
    return part.sum(2) / num_tokens


@normalised_mean.register_fake
def _normalised_mean_fake(y, eps):
    return y.new_empty(y.shape[:2] + y.shape[3:], dtype=torch.float32)


@torch.library.custom_op("localmamba::normalised_mean_triton_bwd", mutates_args=())
def normalised_mean_bwd(dmean: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Gradient of :func:`normalised_mean` with respect to y, fp32."""
    batch, num_dirs, num_tokens, channels = y.shape
    dy = torch.empty(y.shape, device=y.device, dtype=torch.float32)
    _norm_mean_bwd_kernel[(batch * num_dirs, triton.cdiv(num_tokens, ROWS))](
        y, dmean.float().contiguous(), dy, num_tokens, channels, eps, RT=ROWS, BE=triton.next_power_of_2(channels))
    return dy


@normalised_mean_bwd.register_fake
def _normalised_mean_bwd_fake(dmean, y, eps):
    return y.new_empty(y.shape, dtype=torch.float32)


def _norm_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.eps = inputs[1]


def _norm_backward(ctx, dmean):
    (y,) = ctx.saved_tensors
    return normalised_mean_bwd(dmean, y, ctx.eps).to(y.dtype), None


normalised_mean.register_autograd(_norm_backward, setup_context=_norm_setup)


def _merge_grid(batch: int, num_tokens: int, channels: int):
    return batch, triton.cdiv(num_tokens, MERGE_ROWS), triton.cdiv(channels, MERGE_COLS)


@torch.library.custom_op("localmamba::gated_sum_triton", mutates_args=())
def gated_sum(y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """y (Bt, K, T, E) contiguous, gate (Bt, K, E) fp32 -> sum_k y_k * gate_k, (Bt, T, E) in y's dtype."""
    batch, num_dirs, num_tokens, channels = y.shape
    out = y.new_empty(batch, num_tokens, channels)
    _merge_kernel[_merge_grid(batch, num_tokens, channels)](y, gate, out, num_dirs, num_tokens, channels,
                                                            RT=MERGE_ROWS, BC=MERGE_COLS)
    return out


@gated_sum.register_fake
def _gated_sum_fake(y, gate):
    return y.new_empty(y.shape[0], y.shape[2], y.shape[3])


@torch.library.custom_op("localmamba::gated_sum_triton_bwd", mutates_args=())
def gated_sum_bwd(dout: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """-> dy (y's shape) and dgate (Bt, K, E), fp32."""
    batch, num_dirs, num_tokens, channels = y.shape
    grid = _merge_grid(batch, num_tokens, channels)
    dy = torch.empty(y.shape, device=y.device, dtype=torch.float32)
    part = torch.empty(batch, num_dirs, grid[1], channels, device=y.device, dtype=torch.float32)
    _merge_bwd_kernel[(batch * num_dirs,) + grid[1:]](dout.contiguous(), y, gate, dy, part, num_dirs, num_tokens,
                                                       channels, RT=MERGE_ROWS, BC=MERGE_COLS)
    return dy, part.sum(2)


@gated_sum_bwd.register_fake
def _gated_sum_bwd_fake(dout, y, gate):
    return y.new_empty(y.shape, dtype=torch.float32), gate.new_empty(gate.shape, dtype=torch.float32)


def _merge_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _merge_backward(ctx, dout):
    y, gate = ctx.saved_tensors
    dy, dgate = gated_sum_bwd(dout, y, gate)
    return dy.to(y.dtype), dgate


gated_sum.register_autograd(_merge_backward, setup_context=_merge_setup)


def attention_merge_triton(y: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                           reduce_weight: torch.Tensor, reduce_bias: torch.Tensor, select_weight: torch.Tensor,
                           select_bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """triton backend of ``attention_merge_fn`` (same arguments and result). A batch too large for one kernel call
    (``launch_limits``) runs as several calls on slices of it."""
    slices = batch_slices(y.shape[0], y[0].numel())
    if len(slices) > 1:
        return torch.cat([attention_merge_triton(y[part], norm_weight, norm_bias, reduce_weight, reduce_bias,
                                                 select_weight, select_bias, eps) for part in slices])
    y = y.contiguous()
    with autocast_off(y.device.type):
        summary = normalised_mean(y, eps) * norm_weight.float() + norm_bias.float()
    hidden = F.gelu(F.linear(summary.to(reduce_weight.dtype), reduce_weight, reduce_bias))
    gate = torch.sigmoid(F.linear(hidden, select_weight, select_bias))
    with autocast_off(y.device.type):
        return gated_sum(y, gate.float().contiguous())
