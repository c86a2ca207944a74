"""The ``triton`` backend of ``selective_scan_fn``: chunked associative-scan Triton kernels, forward and backward.

One program per (block of BD channels, batch element): the grid's first axis is the channel blocks, so the programs
that read one batch element's B / C rows run side by side. The sequence is cut into chunks of CT steps; a chunk's u,
delta, z (CT, BD) and B, C (CT, N) rows are loaded as tiles, its decays a = exp(dt A) and inputs b = dt u B form a
(CT, BD, N) tile that ``tl.associative_scan`` combines along time (the affine maps h -> a h + b compose
associatively), and the state is carried from chunk to chunk. Time is the tile's first axis: the compiler then keeps
a (channel, state) pair's CT steps in one thread, and the scan is a sequential loop in registers (no shuffles; a
test reads the layout). The forward pass stores the state at the start of every chunk; the backward pass walks the
chunks in reverse, recomputes a chunk's states from its stored start (one forward scan) and runs the adjoint
recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} as a reverse scan, seeded with the gradient of the last state; the
recomputing scan also yields a_t h_{t-1} (``scan_math.states_and_decayed``). Steps past the end are identities
(decay 1, input 0, whatever A holds). Gradients of input-dependent B / C are summed over each channel block (every
channel of a block is in one group), then added atomically into the group's rows or, under
``torch.use_deterministic_algorithms(True)``, written per block and the blocks summed afterwards
(``scan_math.atomic_reductions``); those of per-channel parameters are written per program. Inputs may be fp32 /
fp16 / bf16, each in its own dtype (u, delta, z and B / C need not share one); the math is fp32. Wrapped as
torch.library custom ops (``localmamba::selective_scan_triton_fwd`` / ``_bwd``) with autograd. Runs on CUDA tensors,
or on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
"""
import math
from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from localmamba_kernel_runtime.derivatives import refuse_second_derivative
from localmamba_kernel_runtime.launch_limits import batch_slices, item_span, on_tensor_device
from localmamba_kernel_runtime.precision import autocast_off

from .scan_math import (affine_combine, atomic_reductions, channel_block, scan_warps, softplus, states_and_decayed,
                        step_at, store_or_add)

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CHUNK = 16          # time steps per tile
MAX_BLOCK_D = 8     # channels per program (a power of two dividing Dm and every group of B / C)


@triton.jit
def _bc_tile(ptr, pid_b, group, d, dmask, n, nmask, t, tmask, s_b, s_g, s_n, s_t, VARIABLE: tl.constexpr):
    """B or C of one chunk in fp32: the input-dependent rows of the block's group as (CT, 1, BN), or the
    time-invariant per-channel matrix as (1, BD, BN)."""
    if VARIABLE:
        m = tmask[:, None] & nmask[None, :]
        tile = tl.load(ptr + pid_b * s_b + group * s_g + t[:, None] * s_t + n[None, :] * s_n, mask=m, other=0.0)
        tile = tile.to(tl.float32)[:, None, :]
    else:
        tile = tl.load(ptr + d[:, None] * s_g + n[None, :] * s_n, mask=dmask[:, None] & nmask[None, :], other=0.0)
        tile = tile.to(tl.float32)[None, :, :]
    return tile


@triton.jit
def _step_dt(delta_ptr, offs, m, bias, SOFTPLUS: tl.constexpr):
    """The raw delta + bias and the step dt (CT, BD) at offsets ``offs``; dt is 0 (an identity step) where not m."""
    raw = tl.load(delta_ptr + offs, mask=m, other=0.0).to(tl.float32) + bias[None, :]
    dt = raw
    if SOFTPLUS:
        dt = softplus(raw)
    return raw, tl.where(m, dt, 0.0)


@triton.jit
def _chunk_states(u_ptr, delta_ptr, B_ptr, C_ptr, h0, c, steps, row, seqlen, A, bias, pid_b, group_b, group_c, d,
                  dmask, n, nmask, sBb, sBg, sBn, sBt, sCb, sCg, sCn, sCt,
                  CT: tl.constexpr, SOFTPLUS: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr,
                  DECAYED: tl.constexpr):
    """Chunk c from its start state h0 (BD, BN): its steps t, their mask, the (CT, BD) mask and offsets of the
    activations; u, raw delta, dt (CT, BD); B, C tiles; the states h and (``DECAYED``, for the backward) a_t h_{t-1},
    else the inputs b (CT, BD, BN)."""
    t = c * CT + steps
    tmask = t < seqlen
    m = tmask[:, None] & dmask[None, :]
    offs = t[:, None] + row[None, :]
    u = tl.load(u_ptr + offs, mask=m, other=0.0).to(tl.float32)
    raw, dt = _step_dt(delta_ptr, offs, m, bias, SOFTPLUS)
    Bm = _bc_tile(B_ptr, pid_b, group_b, d, dmask, n, nmask, t, tmask, sBb, sBg, sBn, sBt, B_VAR)
    Cm = _bc_tile(C_ptr, pid_b, group_c, d, dmask, n, nmask, t, tmask, sCb, sCg, sCn, sCt, C_VAR)
    a = tl.where(m[:, :, None], tl.exp(dt[:, :, None] * A[None, :, :]), 1.0)
    b = (dt * u)[:, :, None] * Bm
    if DECAYED:
        h, b = states_and_decayed(a, b, h0[None, :, :])
    else:
        a_cum, b_cum = tl.associative_scan((a, b), 0, affine_combine)
        h = a_cum * h0[None, :, :] + b_cum
    return t, tmask, m, offs, u, raw, dt, Bm, Cm, b, h


@triton.jit
def _channel_params(A_ptr, D_ptr, bias_ptr, d, dmask, n, mdn, dstate, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                    BD: tl.constexpr):
    """A (BD, BN), D and the delta bias (BD,) of the channel block d, fp32 (zeros where absent)."""
    A = tl.load(A_ptr + d[:, None] * dstate + n[None, :], mask=mdn, other=0.0).to(tl.float32)
    Dv = tl.zeros([BD], dtype=tl.float32)
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    return A, Dv, bias


@triton.jit
def _program_block(A_ptr, D_ptr, bias_ptr, dim, seqlen, dstate, n_chunks, HAS_D: tl.constexpr,
                   HAS_BIAS: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    """What a program of either kernel works on: channel block pid_d of batch element pid_b (the grid's axes), its
    channels d and state lanes n with their masks (``channel_block``), their parameters A, D and delta bias
    (``_channel_params``), the offsets of its activation rows (BD,) and of its chunk start states (BD, BN)
    (chunk c's at + c * dstate)."""
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    d, dmask, n, nmask, mdn = channel_block(pid_d, dim, dstate, BD, BN)
    A, Dv, bias = _channel_params(A_ptr, D_ptr, bias_ptr, d, dmask, n, mdn, dstate, HAS_D, HAS_BIAS, BD)
    row = (pid_b * dim + d) * seqlen
    states = (pid_b * dim + d)[:, None] * n_chunks * dstate + n[None, :]
    return pid_d, pid_b, d, dmask, n, nmask, mdn, A, Dv, bias, row, states


@triton.jit
def _scan_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, ckpt_ptr, last_ptr,
                     dim, seqlen, dstate, n_chunks,
                     sBb, sBg, sBn, sBt, cpg_b, sCb, sCg, sCn, sCt, cpg_c,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     B_VAR: tl.constexpr, C_VAR: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
                     CT: tl.constexpr):
    pid_d, pid_b, d, dmask, n, nmask, mdn, A, Dv, bias, row, states = _program_block(
        A_ptr, D_ptr, bias_ptr, dim, seqlen, dstate, n_chunks, HAS_D, HAS_BIAS, BD, BN)
    steps = tl.arange(0, CT)
    h0 = tl.zeros([BD, BN], dtype=tl.float32)
    for c in range(0, n_chunks):
        tl.store(ckpt_ptr + states + c * dstate, h0, mask=mdn)
        t, tmask, m, offs, u, raw, dt, Bm, Cm, b, h = _chunk_states(
            u_ptr, delta_ptr, B_ptr, C_ptr, h0, c, steps, row, seqlen, A, bias, pid_b, (pid_d * BD) // cpg_b,
            (pid_d * BD) // cpg_c, d, dmask, n, nmask, sBb, sBg, sBn, sBt, sCb, sCg, sCn, sCt,
            CT, SOFTPLUS, B_VAR, C_VAR, False)
        y = tl.sum(h * Cm, axis=2) + Dv[None, :] * u
        if HAS_Z:
            z = tl.load(z_ptr + offs, mask=m, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)
        h0 = step_at(h, steps, CT - 1)
    tl.store(last_ptr + (pid_b * dim + d)[:, None] * dstate + n[None, :], h0, mask=mdn)


@triton.jit
def _bc_grad_rows(pid_b, pid_d, n_dblocks, group, groups, n, dstate, seqlen, ATOMIC: tl.constexpr):
    """Offsets of the rows (BN,) where the channel block pid_d writes its input-dependent B or C gradient: its
    group's rows of the (Bt, G, N, L) gradient (ATOMIC: added), or its own rows of a (Bt, blocks, N, L) buffer."""
    if ATOMIC:
        slot = pid_b * groups + group
    else:
        slot = pid_b * n_dblocks + pid_d
    return (slot * dstate + n) * seqlen


@triton.jit
def _scan_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, ckpt_ptr,
                     du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                     dim, seqlen, dstate, n_chunks, n_dblocks,
                     sBb, sBg, sBn, sBt, cpg_b, sCb, sCg, sCn, sCt, cpg_c,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     HAS_DLAST: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr, ATOMIC_BC: tl.constexpr,
                     BD: tl.constexpr, BN: tl.constexpr, CT: tl.constexpr):
    pid_d, pid_b, d, dmask, n, nmask, mdn, A, Dv, bias, row, states = _program_block(
        A_ptr, D_ptr, bias_ptr, dim, seqlen, dstate, n_chunks, HAS_D, HAS_BIAS, BD, BN)
    per_channel = (pid_b * dim + d)[:, None] * dstate + n[None, :]
    rows_B = _bc_grad_rows(pid_b, pid_d, n_dblocks, (pid_d * BD) // cpg_b, dim // cpg_b, n, dstate, seqlen, ATOMIC_BC)
    rows_C = _bc_grad_rows(pid_b, pid_d, n_dblocks, (pid_d * BD) // cpg_c, dim // cpg_c, n, dstate, seqlen, ATOMIC_BC)
    steps = tl.arange(0, CT)
    g_in = tl.zeros([BD, BN], dtype=tl.float32)  # dL/dh at the first step of the chunk after this one
    if HAS_DLAST:
        g_in = tl.load(dlast_ptr + per_channel, mask=mdn, other=0.0).to(tl.float32)
    dA = tl.zeros([BD, BN], dtype=tl.float32)
    dB_acc = tl.zeros([BD, BN], dtype=tl.float32)
    dC_acc = tl.zeros([BD, BN], dtype=tl.float32)
    dD = tl.zeros([BD], dtype=tl.float32)
    dbias = tl.zeros([BD], dtype=tl.float32)
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        h0 = tl.load(ckpt_ptr + states + c * dstate, mask=mdn, other=0.0)
        t, tmask, m, offs, u, raw, dt, Bm, Cm, ah, h = _chunk_states(
            u_ptr, delta_ptr, B_ptr, C_ptr, h0, c, steps, row, seqlen, A, bias, pid_b, (pid_d * BD) // cpg_b,
            (pid_d * BD) // cpg_c, d, dmask, n, nmask, sBb, sBg, sBn, sBt, sCb, sCg, sCn, sCt,
            CT, SOFTPLUS, B_VAR, C_VAR, True)
        dy = tl.load(dout_ptr + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(z_ptr + offs, mask=m, other=0.0).to(tl.float32)
            sz = tl.sigmoid(z)
            y = tl.sum(h * Cm, axis=2) + Dv[None, :] * u
            tl.store(dz_ptr + offs, (dy * y * sz * (1.0 + z * (1.0 - sz))).to(dz_ptr.dtype.element_ty), mask=m)
            dy = dy * z * sz
        # the next step's decay a_{t+1}; 1 past the end, which carries the last state's gradient into step L - 1
        m_next = (t + 1 < seqlen)[:, None] & dmask[None, :]
        _, dt_next = _step_dt(delta_ptr, offs + 1, m_next, bias, SOFTPLUS)
        a_next = tl.where(m_next[:, :, None], tl.exp(dt_next[:, :, None] * A[None, :, :]), 1.0)
        g_mul, g_add = tl.associative_scan((a_next, Cm * dy[:, :, None]), 0, affine_combine, reverse=True)
        g = g_mul * g_in[None, :, :] + g_add
        g_in = step_at(g, steps, 0)
        gAh = g * ah                                        # g_t a_t h_{t-1}
        gB = tl.sum(g * Bm, axis=2)
        ddt = gB * u + tl.sum(gAh * A[None, :, :], axis=2)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(m, ddt, 0.0)
        tl.store(du_ptr + offs, (dy * Dv[None, :] + dt * gB).to(du_ptr.dtype.element_ty), mask=m)
        tl.store(ddelta_ptr + offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=m)
        dA += tl.sum(gAh * dt[:, :, None], axis=0)
        dD += tl.sum(dy * u, axis=0)
        dbias += tl.sum(ddt, axis=0)
        gbu = g * (dt * u)[:, :, None]
        hdy = h * dy[:, :, None]
        if B_VAR:
            store_or_add(dB_ptr + t[:, None] + rows_B[None, :], tl.sum(gbu, axis=1),
                         tmask[:, None] & nmask[None, :], ATOMIC_BC)
        else:
            dB_acc += tl.sum(gbu, axis=0)
        if C_VAR:
            store_or_add(dC_ptr + t[:, None] + rows_C[None, :], tl.sum(hdy, axis=1),
                         tmask[:, None] & nmask[None, :], ATOMIC_BC)
        else:
            dC_acc += tl.sum(hdy, axis=0)
    tl.store(dA_ptr + per_channel, dA, mask=mdn)
    if not B_VAR:
        tl.store(dB_ptr + per_channel, dB_acc, mask=mdn)
    if not C_VAR:
        tl.store(dC_ptr + per_channel, dC_acc, mask=mdn)
    tl.store(dD_ptr + pid_b * dim + d, dD, mask=dmask)
    tl.store(dbias_ptr + pid_b * dim + d, dbias, mask=dmask)


def _bc_view(M: torch.Tensor, dim: int):
    """Kernel view of B or C: (tensor, strides (batch, group, n, t), channels per group, variable?)."""
    if M.dim() == 2:  # time-invariant (Dm, N): one "group" per channel
        M = M.contiguous()
        return M, (0, M.stride(0), M.stride(1), 0), 1, False
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M, tuple(M.stride()), dim // M.shape[1], True


def _block_d(dim: int, B: torch.Tensor, C: torch.Tensor) -> int:
    """Channels per program: a power of two <= ``MAX_BLOCK_D`` dividing Dm and every variable group size."""
    size = dim
    for M in (B, C):
        if M.dim() >= 3:
            size = math.gcd(size, dim // (1 if M.dim() == 3 else M.shape[1]))
    block = 1
    while block * 2 <= MAX_BLOCK_D and size % (block * 2) == 0:
        block *= 2
    return block


def _launch_args(u, B, C):
    dim = u.shape[1]
    Bv, sB, cpg_b, _ = _bc_view(B, dim)
    Cv, sC, cpg_c, _ = _bc_view(C, dim)
    block = _block_d(dim, B, C)
    return Bv, Cv, (*sB, cpg_b, *sC, cpg_c), block


@torch.library.custom_op("localmamba::selective_scan_triton_fwd", mutates_args=())
@on_tensor_device
def selective_scan_triton_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                              C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                              delta_bias: Optional[torch.Tensor], delta_softplus: bool, chunk: int
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u, delta, z contiguous (Bt, Dm, L); A (Dm, N) fp32; B, C (Dm, N), (Bt, N, L) or (Bt, G, N, L); ``chunk``
    time steps per tile (an argument, so that a compiled graph records it with the shapes it implies).

    Returns out (Bt, Dm, L) in u's dtype, last state (Bt, Dm, N) fp32 and the chunk checkpoints (Bt, Dm, chunks, N).
    """
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    n_chunks = max(1, triton.cdiv(seqlen, chunk))
    out = torch.empty_like(u)
    last = u.new_empty(batch, dim, dstate, dtype=torch.float32)
    ckpt = u.new_empty(batch, dim, n_chunks, dstate, dtype=torch.float32)
    Bv, Cv, strides, block = _launch_args(u, B, C)
    bn = triton.next_power_of_2(dstate)
    _scan_fwd_kernel[(dim // block, batch)](
        u, delta, A, Bv, Cv, D, z, delta_bias, out, ckpt, last, dim, seqlen, dstate, n_chunks, *strides,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        B_VAR=B.dim() >= 3, C_VAR=C.dim() >= 3, BD=block, BN=bn, CT=chunk, num_warps=scan_warps(block, bn))
    return out, last, ckpt


@selective_scan_triton_fwd.register_fake
def _fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk):
    batch, dim, seqlen = u.shape
    n_chunks = max(1, triton.cdiv(seqlen, chunk))
    return (u.new_empty(u.shape), u.new_empty(batch, dim, A.shape[1], dtype=torch.float32),
            u.new_empty(batch, dim, n_chunks, A.shape[1], dtype=torch.float32))


@torch.library.custom_op("localmamba::selective_scan_triton_bwd", mutates_args=())
@on_tensor_device
def selective_scan_triton_bwd(dout: torch.Tensor, dlast: Optional[torch.Tensor], ckpt: torch.Tensor,
                              u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                              C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                              delta_bias: Optional[torch.Tensor], delta_softplus: bool, chunk: int
                              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                         torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward -> du, ddelta, dA, dB, dC (fp32, B/C's shapes), dD (Dm,), dz (empty without z), ddelta_bias (Dm,)."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    n_chunks = ckpt.shape[2]
    Bv, Cv, strides, block = _launch_args(u, B, C)
    n_dblocks = dim // block
    bn = triton.next_power_of_2(dstate)
    f32 = dict(device=u.device, dtype=torch.float32)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else u.new_zeros(0)
    dA = torch.empty(batch, dim, dstate, **f32)
    atomic = atomic_reductions()
    dB, dC = (_bc_grad_buffer(M, batch, dim, n_dblocks, dstate, seqlen, atomic) for M in (B, C))
    dD, dbias = torch.empty(batch, dim, **f32), torch.empty(batch, dim, **f32)
    _scan_bwd_kernel[(n_dblocks, batch)](
        u, delta, A, Bv, Cv, D, z, delta_bias, dout, dlast, ckpt, du, ddelta, dz, dA, dB, dC, dD, dbias,
        dim, seqlen, dstate, n_chunks, n_dblocks, *strides,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_DLAST=dlast is not None, B_VAR=B.dim() >= 3, C_VAR=C.dim() >= 3, ATOMIC_BC=atomic, BD=block, BN=bn,
        CT=chunk, num_warps=scan_warps(block, bn))
    return (du, ddelta, dA.sum(0), _reduce_bc(dB, B), _reduce_bc(dC, C), dD.sum(0), dz, dbias.sum(0))


def _groups(M: torch.Tensor) -> int:
    """Groups of an input-dependent B or C: (Bt, N, L) has one, (Bt, G, N, L) has G."""
    return 1 if M.dim() == 3 else M.shape[1]


def _bc_grad_buffer(M: torch.Tensor, batch: int, dim: int, n_dblocks: int, dstate: int, seqlen: int,
                    atomic: bool) -> torch.Tensor:
    """fp32 buffer the backward kernel writes the gradient of B or C into: per batch element (Bt, Dm, N) for a
    time-invariant one; for an input-dependent one its groups' rows (Bt, G, N, L), zeroed, which the channel blocks
    add into (``atomic``), or a slot per block (Bt, blocks, N, L), every element written."""
    f32 = dict(device=M.device, dtype=torch.float32)
    if M.dim() == 2:
        return torch.empty(batch, dim, dstate, **f32)
    if atomic:
        return torch.zeros(batch, _groups(M), dstate, seqlen, **f32)
    return torch.empty(batch, n_dblocks, dstate, seqlen, **f32)


def _reduce_bc(grad: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """The kernel's buffer of :func:`_bc_grad_buffer` -> the gradient in M's shape (fp32)."""
    if M.dim() == 2:
        return grad.sum(0)
    batch, blocks = grad.shape[:2]
    groups = _groups(M)
    summed = grad.reshape(batch, groups, blocks // groups, *grad.shape[2:]).sum(2)
    return summed[:, 0] if M.dim() == 3 else summed


@selective_scan_triton_bwd.register_fake
def _bwd_fake(dout, dlast, ckpt, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk):
    dim = u.shape[1]
    f32 = dict(dtype=torch.float32)
    dz = z.new_empty(z.shape) if z is not None else u.new_empty(0)
    return (u.new_empty(u.shape), delta.new_empty(delta.shape), A.new_empty(A.shape, **f32),
            B.new_empty(B.shape, **f32), C.new_empty(C.shape, **f32), u.new_empty(dim, **f32), dz,
            u.new_empty(dim, **f32))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.mark_non_differentiable(output[2])
    ctx.delta_softplus, ctx.chunk = delta_softplus, chunk


def _backward(ctx, dout, dlast, dckpt):
    u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dz, dbias = selective_scan_triton_bwd(
        dout.contiguous(), None if dlast is None else dlast.contiguous(), ckpt, u, delta, A, B, C, D, z,
        delta_bias, ctx.delta_softplus, ctx.chunk)
    return (du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), None if D is None else dD,
            None if z is None else dz, None if delta_bias is None else dbias, None, None)


selective_scan_triton_fwd.register_autograd(_backward, setup_context=_setup_context)
refuse_second_derivative(selective_scan_triton_bwd)


def _kernel_dtype(t: torch.Tensor) -> torch.Tensor:
    """An activation as the kernels read it: fp32 / fp16 / bf16 kept (each is loaded as fp32, so a wider delta or
    B than u keeps its precision, as on the reference), anything else cast to fp32."""
    return t if t.dtype in KERNEL_DTYPES else t.float()


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                          delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                          return_last_state: bool = False
                          ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """triton backend of ``selective_scan_fn`` (same arguments and result; inputs already validated). A batch too
    large for one kernel call (``launch_limits``) runs as several calls on slices of it."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    # per batch element: u-sized tensors, the chunk checkpoints, the backward's per-block B / C gradients, the span
    # of input-dependent B / C (views of a wider tensor keep its strides)
    spans = [item_span(M) for M in (B, C) if M.dim() >= 3]
    slices = batch_slices(batch, max(dim * seqlen, dim * triton.cdiv(seqlen, CHUNK) * dstate,
                                     dim // _block_d(dim, B, C) * dstate * seqlen, *spans), item_grid_rows=1)
    # fp32 compute under any autocast; the split's torch.cat too is outside it (autocast refuses fp16 parts in a
    # bf16 region and the reverse)
    with autocast_off(u.device.type):
        if len(slices) > 1:
            # the parts get the parameters shared by the batch in fp32, so that their gradients are summed over
            # the parts in fp32 and rounded to the parameters' dtype once, as on one call
            A, D, delta_bias = (None if t is None else t.float() for t in (A, D, delta_bias))
            B, C = (M.float() if M.dim() == 2 else M for M in (B, C))
            parts = [selective_scan_triton(u[rows], delta[rows], A, B if B.dim() == 2 else B[rows],
                                           C if C.dim() == 2 else C[rows], D, None if z is None else z[rows],
                                           delta_bias, delta_softplus, return_last_state=True) for rows in slices]
            out, last = (torch.cat(outs) for outs in zip(*parts))
            return (out, last) if return_last_state else out

        def act(t):
            return None if t is None else _kernel_dtype(t).contiguous()

        def param(t):
            return None if t is None else t.float().contiguous()

        def bc(M):
            return M.float() if M.dim() == 2 else _kernel_dtype(M)

        out, last, _ = torch.ops.localmamba.selective_scan_triton_fwd(
            act(u), act(delta), param(A), bc(B), bc(C), param(D), act(z), param(delta_bias), delta_softplus, CHUNK)
    return (out, last) if return_last_state else out
