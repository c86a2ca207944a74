"""The ``triton`` backend of ``causal_conv1d_fn`` (imports triton; loaded only when this backend is used).

One kernel computes ``sum_k w[d, k] * src[b, d, t + SIGN * (W - 1 - k)]`` over a (channels x time) tile: with
SIGN = -1 plus bias and SiLU it is the forward conv; in GRAD mode it returns ``dout * act'(preact)`` instead; with
SIGN = +1 on that gradient it is the input gradient. Weight and bias gradients are reductions done in PyTorch.
Wrapped as torch.library custom ops ``localmamba::causal_conv1d_triton_fwd`` / ``_bwd`` with autograd.
"""
import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from localmamba_kernel_runtime.launch_limits import batch_slices, on_tensor_device
from localmamba_kernel_runtime.precision import autocast_off

from .backward import register_autograd, weight_grad

BLOCK_D = 16
BLOCK_T = 64


@triton.jit
def _conv_kernel(src_ptr, w_ptr, bias_ptr, dout_ptr, out_ptr, dim, seqlen,
                 SIGN: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, GRAD: tl.constexpr,
                 WIDTH: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr):
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    pid_b = tl.program_id(2)
    dmask = d < dim
    row = (pid_b * dim + d)[:, None] * seqlen
    acc = tl.zeros([BD, BT], dtype=tl.float32)
    for k in tl.static_range(WIDTH):
        wk = tl.load(w_ptr + d * WIDTH + k, mask=dmask, other=0.0).to(tl.float32)
        pos = t + SIGN * (WIDTH - 1 - k)
        m = dmask[:, None] & (pos >= 0)[None, :] & (pos < seqlen)[None, :]
        acc += wk[:, None] * tl.load(src_ptr + row + pos[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)[:, None]
    omask = dmask[:, None] & (t < seqlen)[None, :]
    if GRAD:
        g = tl.load(dout_ptr + row + t[None, :], mask=omask, other=0.0).to(tl.float32)
        if SILU:
            s = tl.sigmoid(acc)
            g = g * s * (1.0 + acc * (1.0 - s))
        acc = g
    elif SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + row + t[None, :], acc.to(out_ptr.dtype.element_ty), mask=omask)


def _launch(src, weight, bias, dout, out, sign, silu, grad):
    """One kernel call over src (B, D, L): the time blocks on the grid's first axis (2^31 - 1 programs; CUDA caps
    the others at 65,535, which a sequence of 4.2M steps passed), the batch on its third (``batch_slices``)."""
    batch, dim, seqlen = src.shape
    grid = (triton.cdiv(seqlen, BLOCK_T), triton.cdiv(dim, BLOCK_D), batch)
    _conv_kernel[grid](src, weight, bias, dout, out, dim, seqlen, SIGN=sign, HAS_BIAS=bias is not None, SILU=silu,
                       GRAD=grad, WIDTH=weight.shape[1], BD=BLOCK_D, BT=BLOCK_T)


@torch.library.custom_op("localmamba::causal_conv1d_triton_fwd", mutates_args=())
@on_tensor_device
def causal_conv1d_triton_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                             silu: bool) -> torch.Tensor:
    """Contiguous x (B, D, L) (fp32/fp16/bf16), weight (D, W), bias (D,) -> out (B, D, L) in x's dtype."""
    out = torch.empty_like(x)
    _launch(x, weight, bias, None, out, -1, silu, False)
    return out


@causal_conv1d_triton_fwd.register_fake
def _fwd_fake(x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("localmamba::causal_conv1d_triton_bwd", mutates_args=())
@on_tensor_device
def causal_conv1d_triton_bwd(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                             bias: Optional[torch.Tensor], silu: bool
                             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward -> dx (x's dtype), dweight (D, W) fp32, dbias (D,) fp32."""
    gact = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    _launch(x, weight, bias, dout, gact, -1, silu, True)
    dx = torch.empty_like(x)
    _launch(gact, weight, None, None, dx, 1, False, False)
    return dx, weight_grad(gact, x.float(), weight.shape[1]), gact.sum(dim=(0, 2))


@causal_conv1d_triton_bwd.register_fake
def _bwd_fake(dout, x, weight, bias, silu):
    f32 = dict(dtype=torch.float32)
    return x.new_empty(x.shape), weight.new_empty(weight.shape, **f32), x.new_empty(x.shape[1], **f32)


register_autograd(causal_conv1d_triton_fwd, causal_conv1d_triton_bwd, cast_param_grads=True)


def causal_conv1d_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         activation: Optional[str]) -> torch.Tensor:
    """triton backend of ``causal_conv1d_fn`` (validated inputs; weight (D, W)); fp32 math, output in x's dtype. A
    batch too large for one kernel call (``launch_limits``) runs as several calls on slices of it."""
    slices = batch_slices(x.shape[0], math.prod(x.shape[1:]), item_grid_rows=1)
    # fp32 compute under any autocast; the split's torch.cat too is outside it (autocast refuses fp16 parts in a
    # bf16 region and the reverse)
    with autocast_off(x.device.type):
        if len(slices) > 1:   # the parts get the weight and bias in fp32: their gradients summed in fp32 (one call)
            weight, bias = weight.float(), None if bias is None else bias.float()
            return torch.cat([causal_conv1d_triton(x[part], weight, bias, activation) for part in slices])
        return torch.ops.localmamba.causal_conv1d_triton_fwd(
            x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(), activation is not None)
