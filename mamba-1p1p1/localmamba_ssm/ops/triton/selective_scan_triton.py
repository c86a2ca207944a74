"""The ``triton`` backend of ``selective_scan_fn``: sequential-in-time Triton kernels, forward and backward.

Each program owns one batch element and a block of BD channels with all N states in registers and walks the
sequence. The forward pass stores the state at the start of every CHUNK steps; the backward pass walks the chunks in
reverse, recomputes the states of one chunk into a per-program scratch buffer, then runs the reverse-time recurrence
over it. Gradients of variable B / C are summed over each channel block and written per block (deterministic; the
blocks of one group are summed afterwards). Inputs may be fp32 / fp16 / bf16; the math is fp32.
Wrapped as torch.library custom ops (``localmamba::selective_scan_triton_fwd`` / ``_bwd``) with autograd.
Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from localmamba_kernel_runtime.precision import autocast_off

CHUNK = 64
MAX_BLOCK_D = 16


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, ckpt_ptr, last_ptr,
                     dim, seqlen, dstate, n_chunks,
                     sBb, sBg, sBn, sBt, cpg_b, sCb, sCg, sCn, sCt, cpg_c,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     BD: tl.constexpr, BN: tl.constexpr, CHUNK_T: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, BN)
    nmask = n < dstate
    mask2 = (d[:, None] < dim) & nmask[None, :]
    A = tl.load(A_ptr + d[:, None] * dstate + n[None, :], mask=mask2, other=0.0).to(tl.float32)
    Dv = tl.load(D_ptr + d).to(tl.float32) if HAS_D else tl.zeros([BD], dtype=tl.float32)
    bias = tl.load(bias_ptr + d).to(tl.float32) if HAS_BIAS else tl.zeros([BD], dtype=tl.float32)
    row = pid_b * dim * seqlen + d * seqlen
    b_rows = B_ptr + pid_b * sBb + (d // cpg_b)[:, None] * sBg + n[None, :] * sBn
    c_rows = C_ptr + pid_b * sCb + (d // cpg_c)[:, None] * sCg + n[None, :] * sCn
    state_rows = (pid_b * dim + d)[:, None] * dstate + n[None, :]
    h = tl.zeros([BD, BN], dtype=tl.float32)
    for c in range(0, n_chunks):
        tl.store(ckpt_ptr + ((pid_b * dim + d)[:, None] * n_chunks + c) * dstate + n[None, :], h, mask=mask2)
        t0 = c * CHUNK_T
        t1 = tl.minimum(t0 + CHUNK_T, seqlen)
        for t in range(t0, t1):
            uu = tl.load(u_ptr + row + t).to(tl.float32)
            dt = tl.load(delta_ptr + row + t).to(tl.float32) + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            Bt = tl.load(b_rows + t * sBt, mask=mask2, other=0.0).to(tl.float32)
            Ct = tl.load(c_rows + t * sCt, mask=mask2, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt
            y = tl.sum(h * Ct, axis=1) + Dv * uu
            if HAS_Z:
                zz = tl.load(z_ptr + row + t).to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty))
    tl.store(last_ptr + state_rows, h, mask=mask2)


@triton.jit
def _scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, ckpt_ptr,
                     scratch_ptr, du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                     dim, seqlen, dstate, n_chunks, n_dblocks,
                     sBb, sBg, sBn, sBt, cpg_b, sCb, sCg, sCn, sCt, cpg_c,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     HAS_DLAST: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr,
                     BD: tl.constexpr, BN: tl.constexpr, CHUNK_T: tl.constexpr):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, BN)
    nmask = n < dstate
    mask2 = (d[:, None] < dim) & nmask[None, :]
    A = tl.load(A_ptr + d[:, None] * dstate + n[None, :], mask=mask2, other=0.0).to(tl.float32)
    Dv = tl.load(D_ptr + d).to(tl.float32) if HAS_D else tl.zeros([BD], dtype=tl.float32)
    bias = tl.load(bias_ptr + d).to(tl.float32) if HAS_BIAS else tl.zeros([BD], dtype=tl.float32)
    row = pid_b * dim * seqlen + d * seqlen
    b_rows = B_ptr + pid_b * sBb + (d // cpg_b)[:, None] * sBg + n[None, :] * sBn
    c_rows = C_ptr + pid_b * sCb + (d // cpg_c)[:, None] * sCg + n[None, :] * sCn
    state_rows = (pid_b * dim + d)[:, None] * dstate + n[None, :]
    # per-block gradient rows of variable B / C: (Bt, n_dblocks, N, L)
    block_rows = ((pid_b * n_dblocks + pid_d) * dstate + n) * seqlen
    scratch = scratch_ptr + (pid_b * n_dblocks + pid_d) * CHUNK_T * BD * BN + \
        tl.arange(0, BD)[:, None] * BN + n[None, :]
    if HAS_DLAST:
        g = tl.load(dlast_ptr + state_rows, mask=mask2, other=0.0).to(tl.float32)
    else:
        g = tl.zeros([BD, BN], dtype=tl.float32)
    dA_acc = tl.zeros([BD, BN], dtype=tl.float32)
    dB_acc = tl.zeros([BD, BN], dtype=tl.float32)
    dC_acc = tl.zeros([BD, BN], dtype=tl.float32)
    dD_acc = tl.zeros([BD], dtype=tl.float32)
    dbias_acc = tl.zeros([BD], dtype=tl.float32)
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        t0 = c * CHUNK_T
        t1 = tl.minimum(t0 + CHUNK_T, seqlen)
        h0 = tl.load(ckpt_ptr + ((pid_b * dim + d)[:, None] * n_chunks + c) * dstate + n[None, :], mask=mask2,
                     other=0.0)
        h = h0
        for t in range(t0, t1):
            uu = tl.load(u_ptr + row + t).to(tl.float32)
            dt = tl.load(delta_ptr + row + t).to(tl.float32) + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            Bt = tl.load(b_rows + t * sBt, mask=mask2, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bt
            tl.store(scratch + (t - t0) * BD * BN, h)
        tl.debug_barrier()
        for ti in range(0, t1 - t0):
            t = t1 - 1 - ti
            uu = tl.load(u_ptr + row + t).to(tl.float32)
            raw = tl.load(delta_ptr + row + t).to(tl.float32) + bias
            dt = _softplus(raw) if SOFTPLUS else raw
            Bt = tl.load(b_rows + t * sBt, mask=mask2, other=0.0).to(tl.float32)
            Ct = tl.load(c_rows + t * sCt, mask=mask2, other=0.0).to(tl.float32)
            ht = tl.load(scratch + (t - t0) * BD * BN)
            hp = tl.load(scratch + tl.maximum(t - t0 - 1, 0) * BD * BN)
            hp = tl.where(t > t0, hp, h0)
            dy = tl.load(dout_ptr + row + t).to(tl.float32)
            if HAS_Z:
                zz = tl.load(z_ptr + row + t).to(tl.float32)
                sz = tl.sigmoid(zz)
                y = tl.sum(ht * Ct, axis=1) + Dv * uu
                tl.store(dz_ptr + row + t, (dy * y * sz * (1.0 + zz * (1.0 - sz))).to(dz_ptr.dtype.element_ty))
                dy = dy * zz * sz
            a = tl.exp(dt[:, None] * A)
            g = g + dy[:, None] * Ct
            dC_t = dy[:, None] * ht
            dB_t = g * (dt * uu)[:, None]
            if C_VAR:
                tl.store(dC_ptr + block_rows + t, tl.sum(dC_t, axis=0), mask=nmask)
            else:
                dC_acc += dC_t
            if B_VAR:
                tl.store(dB_ptr + block_rows + t, tl.sum(dB_t, axis=0), mask=nmask)
            else:
                dB_acc += dB_t
            sB = tl.sum(g * Bt, axis=1)
            da = g * hp * a
            dA_acc += da * dt[:, None]
            ddt = sB * uu + tl.sum(da * A, axis=1)
            tl.store(du_ptr + row + t, (dy * Dv + dt * sB).to(du_ptr.dtype.element_ty))
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            tl.store(ddelta_ptr + row + t, ddt.to(ddelta_ptr.dtype.element_ty))
            dbias_acc += ddt
            dD_acc += dy * uu
            g = g * a
        tl.debug_barrier()
    tl.store(dA_ptr + state_rows, dA_acc, mask=mask2)
    if not B_VAR:
        tl.store(dB_ptr + state_rows, dB_acc, mask=mask2)
    if not C_VAR:
        tl.store(dC_ptr + state_rows, dC_acc, mask=mask2)
    tl.store(dD_ptr + pid_b * dim + d, dD_acc)
    tl.store(dbias_ptr + pid_b * dim + d, dbias_acc)


def _bc_view(M: torch.Tensor, dim: int):
    """Kernel view of B or C: (tensor, strides (batch, group, n, t), channels per group, variable?)."""
    if M.dim() == 2:  # time-invariant (Dm, N): one "group" per channel
        M = M.contiguous()
        return M, (0, M.stride(0), M.stride(1), 0), 1, False
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M, tuple(M.stride()), dim // M.shape[1], True


def _block_d(dim: int, B: torch.Tensor, C: torch.Tensor) -> int:
    """Channels per program: a power of two <= 16 dividing Dm and every variable group size."""
    size = dim
    for M in (B, C):
        if M.dim() >= 3:
            size = math.gcd(size, dim // (1 if M.dim() == 3 else M.shape[1]))
    block = 1
    while block * 2 <= MAX_BLOCK_D and size % (block * 2) == 0:
        block *= 2
    return block


def _launch_args(u, A, B, C):
    dim = u.shape[1]
    Bv, sB, cpg_b, _ = _bc_view(B, dim)
    Cv, sC, cpg_c, _ = _bc_view(C, dim)
    block = _block_d(dim, B, C)
    return Bv, Cv, (*sB, cpg_b, *sC, cpg_c), block


@torch.library.custom_op("localmamba::selective_scan_triton_fwd", mutates_args=())
def selective_scan_triton_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                              C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                              delta_bias: Optional[torch.Tensor], delta_softplus: bool
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u, delta, z contiguous (Bt, Dm, L); A (Dm, N) fp32; B, C (Dm, N), (Bt, N, L) or (Bt, G, N, L).

    Returns out (Bt, Dm, L) in u's dtype, last state (Bt, Dm, N) fp32 and the chunk checkpoints (Bt, Dm, chunks, N).
    """
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    n_chunks = max(1, -(-seqlen // CHUNK))
    out = torch.empty_like(u)
    last = u.new_empty(batch, dim, dstate, dtype=torch.float32)
    ckpt = u.new_empty(batch, dim, n_chunks, dstate, dtype=torch.float32)
    Bv, Cv, strides, block = _launch_args(u, A, B, C)
    _scan_fwd_kernel[(batch, dim // block)](
        u, delta, A, Bv, Cv, D, z, delta_bias, out, ckpt, last, dim, seqlen, dstate, n_chunks, *strides,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        BD=block, BN=triton.next_power_of_2(dstate), CHUNK_T=CHUNK)
    return out, last, ckpt


@selective_scan_triton_fwd.register_fake
def _fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    batch, dim, seqlen = u.shape
    n_chunks = max(1, -(-seqlen // CHUNK))
    return (u.new_empty(u.shape), u.new_empty(batch, dim, A.shape[1], dtype=torch.float32),
            u.new_empty(batch, dim, n_chunks, A.shape[1], dtype=torch.float32))


@torch.library.custom_op("localmamba::selective_scan_triton_bwd", mutates_args=())
def selective_scan_triton_bwd(dout: torch.Tensor, dlast: Optional[torch.Tensor], ckpt: torch.Tensor,
                              u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                              C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                              delta_bias: Optional[torch.Tensor], delta_softplus: bool
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                         torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward -> du, ddelta, dA, dB, dC (fp32, B/C's shapes), dD (Dm,), dz (empty without z), ddelta_bias (Dm,)."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    n_chunks = ckpt.shape[2]
    Bv, Cv, strides, block = _launch_args(u, A, B, C)
    n_dblocks = dim // block
    bn = triton.next_power_of_2(dstate)
    f32 = dict(device=u.device, dtype=torch.float32)
    du, ddelta = torch.empty_like(u), torch.empty_like(u)
    dz = torch.empty_like(u) if z is not None else u.new_zeros(0)
    dA = torch.empty(batch, dim, dstate, **f32)
    dB = torch.zeros(batch, n_dblocks, dstate, seqlen, **f32) if B.dim() >= 3 else torch.empty(batch, dim, dstate,
                                                                                                 **f32)
    dC = torch.zeros(batch, n_dblocks, dstate, seqlen, **f32) if C.dim() >= 3 else torch.empty(batch, dim, dstate,
                                                                                                 **f32)
    dD, dbias = torch.empty(batch, dim, **f32), torch.empty(batch, dim, **f32)
    scratch = torch.empty(batch * n_dblocks * CHUNK * block * bn, **f32)
    _scan_bwd_kernel[(batch, n_dblocks)](
        u, delta, A, Bv, Cv, D, z, delta_bias, dout, dlast, ckpt, scratch, du, ddelta, dz, dA, dB, dC, dD, dbias,
        dim, seqlen, dstate, n_chunks, n_dblocks, *strides,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_DLAST=dlast is not None, B_VAR=B.dim() >= 3, C_VAR=C.dim() >= 3, BD=block, BN=bn, CHUNK_T=CHUNK)
    return (du, ddelta, dA.sum(0), _reduce_bc(dB, B, dim, block), _reduce_bc(dC, C, dim, block), dD.sum(0), dz,
            dbias.sum(0))


def _reduce_bc(grad: torch.Tensor, M: torch.Tensor, dim: int, block: int) -> torch.Tensor:
    """Per-block (Bt, blocks, N, L) or per-batch (Bt, Dm, N) gradient -> M's shape (fp32)."""
    if M.dim() == 2:
        return grad.sum(0)
    groups = 1 if M.dim() == 3 else M.shape[1]
    batch, blocks = grad.shape[:2]
    summed = grad.reshape(batch, groups, blocks // groups, *grad.shape[2:]).sum(2)
    return summed[:, 0] if M.dim() == 3 else summed


@selective_scan_triton_bwd.register_fake
def _bwd_fake(dout, dlast, ckpt, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    dim = u.shape[1]
    f32 = dict(dtype=torch.float32)
    dz = u.new_empty(u.shape) if z is not None else u.new_empty(0)
    return (u.new_empty(u.shape), u.new_empty(u.shape), A.new_empty(A.shape, **f32), B.new_empty(B.shape, **f32),
            C.new_empty(C.shape, **f32), u.new_empty(dim, **f32), dz, u.new_empty(dim, **f32))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.mark_non_differentiable(output[2])
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dout, dlast, dckpt):
    u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dz, dbias = selective_scan_triton_bwd(
        dout.contiguous(), None if dlast is None else dlast.contiguous(), ckpt, u, delta, A, B, C, D, z,
        delta_bias, ctx.delta_softplus)
    return (du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), None if D is None else dD,
            None if z is None else dz, None if delta_bias is None else dbias, None)


selective_scan_triton_fwd.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                          delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                          return_last_state: bool = False
                          ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """triton backend of ``selective_scan_fn`` (same arguments and result; inputs already validated)."""
    dtype = u.dtype
    with autocast_off(u.device.type):

        def act(t):
            return None if t is None else t.to(dtype).contiguous()

        def param(t):
            return None if t is None else t.float().contiguous()

        def bc(M):
            return M.float() if M.dim() == 2 else M.to(dtype)

        out, last, _ = torch.ops.localmamba.selective_scan_triton_fwd(
            act(u), act(delta), param(A), bc(B), bc(C), param(D), act(z), param(delta_bias), delta_softplus)
    return (out, last) if return_last_state else out
