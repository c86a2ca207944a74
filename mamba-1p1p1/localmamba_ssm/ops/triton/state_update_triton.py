"""The ``triton`` backend of ``selective_state_update``: one step of the selective scan, the state updated in place.

One program per (block of BD channels, batch element). It loads its channels' x, dt (plus the bias, softplus) and,
for each tile of BN state lanes in turn, the state, A, B and C, updates the tile, writes it back in the state's
dtype and adds its share of <h, C>; then D x and the SiLU(z) gate, and writes out in x's dtype. The math is fp32;
state, x, dt, z, B and C may each be fp32, fp16 or bf16, and any tensor may be strided (the state is written
through its own strides, so a view of a larger cache is updated in place). No autograd: inference only. Wrapped as a
torch.library custom op that mutates the state (``localmamba::selective_state_update_triton``). Runs on CUDA tensors,
or on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from localmamba_kernel_runtime.launch_limits import batch_slices, item_span, on_tensor_device
from localmamba_kernel_runtime.precision import autocast_off

from .scan_math import softplus

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_BLOCK_N = 64      # state lanes per tile (a larger N is walked in tiles of this size)
TILE_ELEMENTS = 512   # channels x state lanes per tile


@triton.jit
def _state_update_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
                         dim, dstate,
                         s_hb, s_hd, s_hn, s_xb, s_xd, s_tb, s_td, s_ad, s_an, s_bb, s_bn, s_cb, s_cn, s_zb, s_zd,
                         HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                         BD: tl.constexpr, BN: tl.constexpr):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    d = pid_d * BD + tl.arange(0, BD)
    dmask = d < dim
    x = tl.load(x_ptr + pid_b * s_xb + d * s_xd, mask=dmask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * s_tb + d * s_td, mask=dmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d, mask=dmask, other=0.0)
    if SOFTPLUS:
        dt = softplus(dt)
    dt_x = dt * x
    out = tl.zeros([BD], dtype=tl.float32)
    for start in range(0, dstate, BN):
        n = start + tl.arange(0, BN)
        nmask = n < dstate
        m = dmask[:, None] & nmask[None, :]
        h_ptrs = state_ptr + pid_b * s_hb + d[:, None] * s_hd + n[None, :] * s_hn
        h = tl.load(h_ptrs, mask=m, other=0.0).to(tl.float32)
        A = tl.load(A_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=m, other=0.0)
        Bv = tl.load(B_ptr + pid_b * s_bb + n * s_bn, mask=nmask, other=0.0).to(tl.float32)
        Cv = tl.load(C_ptr + pid_b * s_cb + n * s_cn, mask=nmask, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + dt_x[:, None] * Bv[None, :]
        tl.store(h_ptrs, h.to(state_ptr.dtype.element_ty), mask=m)
        out += tl.sum(tl.where(m, h * Cv[None, :], 0.0), axis=1)
    if HAS_D:
        out += x * tl.load(D_ptr + d, mask=dmask, other=0.0)
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_zb + d * s_zd, mask=dmask, other=0.0).to(tl.float32)
        out = out * z * tl.sigmoid(z)
    tl.store(out_ptr + pid_b * dim + d, out.to(out_ptr.dtype.element_ty), mask=dmask)


def tiles(dstate: int):
    """(BD, BN, warps) for a state of N = ``dstate`` lanes: BN covers N up to :data:`MAX_BLOCK_N`, BD fills a tile of
    :data:`TILE_ELEMENTS`, one warp per 128 elements of it (at most 4)."""
    block_n = min(triton.next_power_of_2(dstate), MAX_BLOCK_N)
    block_d = max(1, TILE_ELEMENTS // block_n)
    return block_d, block_n, max(1, min(4, block_d * block_n // 128))


@torch.library.custom_op("localmamba::selective_state_update_triton", mutates_args=("state",))
@on_tensor_device
def selective_state_update_triton_step(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                                       B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                                       z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                                       dt_softplus: bool) -> torch.Tensor:
    """One kernel call: state (Bt, Dm, N) updated in place; x, dt, z (Bt, Dm) and B, C (Bt, N) in a kernel dtype,
    any strides; A (Dm, N) fp32, any strides; D, dt_bias (Dm,) fp32 contiguous -> out (Bt, Dm) in x's dtype."""
    batch, dim, dstate = state.shape
    out = x.new_empty(batch, dim)
    if out.numel() == 0:
        return out
    block_d, block_n, warps = tiles(dstate)
    z_strides = (0, 0) if z is None else z.stride()
    _state_update_kernel[(triton.cdiv(dim, block_d), batch)](
        state, x, dt, A, B, C, D, z, dt_bias, out, dim, dstate, *state.stride(), *x.stride(), *dt.stride(),
        *A.stride(), *B.stride(), *C.stride(), *z_strides,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        BD=block_d, BN=block_n, num_warps=warps)
    return out


@selective_state_update_triton_step.register_fake
def _step_fake(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return x.new_empty(state.shape[:2])


def _kernel_dtype(t: torch.Tensor) -> torch.Tensor:
    """An activation as the kernel reads it: fp32 / fp16 / bf16 kept, anything else cast to fp32."""
    return t if t.dtype in KERNEL_DTYPES else t.float()


def selective_state_update_triton(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                                  B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                                  z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
                                  dt_softplus: bool = False) -> torch.Tensor:
    """triton backend of ``selective_state_update`` (same arguments and result; inputs already validated, state in
    a kernel dtype). A batch too large for one kernel call (``launch_limits``) runs as calls on slices of it, each
    updating its rows of the state in place."""
    with autocast_off(x.device.type):
        x, dt, B, C = (_kernel_dtype(t) for t in (x, dt, B, C))
        z = None if z is None else _kernel_dtype(z)
        A = A.float()
        D, dt_bias = (None if t is None else t.float().contiguous() for t in (D, dt_bias))
        spans = [item_span(t) for t in (state, x, dt, B, C) + (() if z is None else (z,))]
        slices = batch_slices(state.shape[0], max(spans), item_grid_rows=1)
        step = torch.ops.localmamba.selective_state_update_triton
        parts = [step(state[rows], x[rows], dt[rows], A, B[rows], C[rows], D, None if z is None else z[rows], dt_bias,
                      dt_softplus) for rows in slices]
    return parts[0] if len(parts) == 1 else torch.cat(parts)
