"""The ``triton`` backend of ``multi_scan_inner_fn``: the LocalMamba mixer's K-direction Mamba inner function.

Kernels with torch matmuls (cuBLAS) between them, forward and backward. With a conv (LocalVim):

1. ``_conv_fwd_kernel`` reads the x channels of the token rows through the index table (no K gathered copies) and
   writes u = SiLU(depthwise causal conv(x_seq) + bias), (Bt, K, L, E), in sequence order;
2. torch: x_dbl = u @ x_proj_weight[k]^T (Bt, K, L, R + 2N);
3. ``_scan_fwd_kernel`` runs the selective scan with the dt projection (delta = x_dbl[..., :R] @ dt_proj_weight[k]^T,
   R multiply-adds per step and channel: no delta tensor is written or read), softplus(delta + bias), D and the
   SiLU(z) gate fused (z read through the index table) and writes each output at its token's row (the reverse scatter
   fused): (Bt, K, T, E).

Without a conv (LocalVMamba) the scan is token-major: x_dbl = x @ x_proj_weight^T is one matmul on the token rows for
all directions, (Bt, T, K, R + 2N) (the projection commutes with the reordering), and the scan reads u = x and x_dbl
at the token rows the index gives: no sequence-order copy of x exists, and its backward writes every per-step
gradient at token rows too.

The scan is chunked over time: one program per (batch, direction, block of BD channels) loads a (CHUNK, BD, N) tile
of decays and inputs and combines it with ``tl.associative_scan`` (the affine map h -> a h + b composes
associatively), carrying the state from chunk to chunk; the state at the start of each chunk is stored for the
backward pass. The backward pass walks the chunks in reverse: it recomputes the chunk's delta and states from its
stored start (one forward associative scan), then runs the adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} as a
reverse associative scan; the recomputing scan also yields a_t h_{t-1} (``states_and_decayed``). The dt projection's
gradients are computed in the kernel too (R rank-1 steps per chunk): the whole gradient of x_dbl (its dt input, B
and C) is written by the kernel and no d delta tensor exists. Sums over programs are atomic adds by default: the
gradients of the input-dependent B / C (summed over each channel block first) into one buffer, and the tokens'
gradients (z; x through the conv or, token-major, directly) over the directions into the tokens' gradient. Under
``torch.use_deterministic_algorithms(True)`` they are written per block or per direction and summed in torch
(``scan_math.atomic_reductions``). Gradients of per-channel parameters are written per program and summed in torch.
Math in fp32; activations in the tokens' dtype. The grid is (channel blocks, batch x directions): a (batch,
direction)'s programs run side by side.

Each pair of kernels is a torch.library custom op with autograd, so that ``torch.compile`` sees opaque ops.
Runs CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (the tests).
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from localmamba_kernel_runtime.derivatives import refuse_second_derivative
from localmamba_kernel_runtime.launch_limits import batch_slices, item_span, on_tensor_device
from localmamba_kernel_runtime.precision import autocast_off

from .scan_math import (affine_combine, atomic_reductions, channel_block, scan_warps, softplus, states_and_decayed,
                        step_at, store_or_add)

SCAN_CHUNK = 16      # time steps per tile of the scan
SCAN_BLOCK_D = 8     # channels per scan program
CONV_CHUNK = 32      # time steps per conv program
CONV_BLOCK_E = 32    # channels per conv program


# --- depthwise causal conv + SiLU, read through the index table -----------------------------------------------------

@triton.jit
def _conv_tap(tok_ptr, index_ptr, b, k, s, e, emask, w, num_tokens, length, s_tb, s_tt, WIDTH: tl.constexpr):
    """The conv's input under tap w at sequence positions s, channels e, of direction k of batch b: the x channels
    of token row index[k, s - (WIDTH - 1) + w] in fp32 (CT, BE), zeros for padding and positions before the start."""
    src = s - (WIDTH - 1) + w
    valid = (src >= 0) & (src < length)
    row = tl.load(index_ptr + k * length + src, mask=valid, other=num_tokens)
    m = (valid & (row < num_tokens))[:, None] & emask[None, :]
    return tl.load(tok_ptr + b * s_tb + row[:, None] * s_tt + e[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _conv_pre(tok_ptr, index_ptr, w_ptr, bias_ptr, b, k, s, e, emask, num_tokens, length, inner, s_tb, s_tt,
              HAS_BIAS: tl.constexpr, WIDTH: tl.constexpr, CT: tl.constexpr, BE: tl.constexpr):
    """The causal depthwise conv's pre-activation (CT, BE) at sequence positions s and channels e of direction k of
    batch b (the taps of :func:`_conv_tap`). Shared by the forward and the backward, which recomputes it."""
    acc = tl.zeros([CT, BE], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + k * inner + e, mask=emask, other=0.0).to(tl.float32)[None, :]
    for w in tl.static_range(WIDTH):
        x = _conv_tap(tok_ptr, index_ptr, b, k, s, e, emask, w, num_tokens, length, s_tb, s_tt, WIDTH)
        acc += x * tl.load(w_ptr + (k * inner + e) * WIDTH + w, mask=emask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _conv_fwd_kernel(tok_ptr, index_ptr, w_ptr, bias_ptr, u_ptr,
                     num_tokens, length, inner, s_tb, s_tt, num_dirs,
                     HAS_BIAS: tl.constexpr, WIDTH: tl.constexpr, CT: tl.constexpr, BE: tl.constexpr):
    pid_bk = tl.program_id(0)
    s = tl.program_id(1) * CT + tl.arange(0, CT)
    e = tl.program_id(2) * BE + tl.arange(0, BE)
    emask = e < inner
    acc = _conv_pre(tok_ptr, index_ptr, w_ptr, bias_ptr, pid_bk // num_dirs, pid_bk % num_dirs, s, e, emask,
                    num_tokens, length, inner, s_tb, s_tt, HAS_BIAS, WIDTH, CT, BE)
    acc = acc * tl.sigmoid(acc)
    out = u_ptr + ((pid_bk * length + s) * inner)[:, None] + e[None, :]
    tl.store(out, acc.to(u_ptr.dtype.element_ty), mask=(s < length)[:, None] & emask[None, :])


@triton.jit
def _conv_bwd_pre_kernel(du_ptr, tok_ptr, index_ptr, w_ptr, bias_ptr, dpre_ptr, dw_ptr, dbias_ptr,
                         num_tokens, length, inner, s_tb, s_tt, num_dirs, num_chunks,
                         HAS_BIAS: tl.constexpr, WIDTH: tl.constexpr, CT: tl.constexpr, BE: tl.constexpr):
    """dpre = du * SiLU'(pre) in sequence order, and per-program partial sums of the weight / bias gradients."""
    pid_bk = tl.program_id(0)
    pid_t = tl.program_id(1)
    b = pid_bk // num_dirs
    k = pid_bk % num_dirs
    s = pid_t * CT + tl.arange(0, CT)
    e = tl.program_id(2) * BE + tl.arange(0, BE)
    emask = e < inner
    smask = (s < length)[:, None] & emask[None, :]
    pre = _conv_pre(tok_ptr, index_ptr, w_ptr, bias_ptr, b, k, s, e, emask, num_tokens, length, inner, s_tb, s_tt,
                    HAS_BIAS, WIDTH, CT, BE)
    du = tl.load(du_ptr + ((pid_bk * length + s) * inner)[:, None] + e[None, :], mask=smask, other=0.0)
    sig = tl.sigmoid(pre)
    dpre = du.to(tl.float32) * sig * (1.0 + pre * (1.0 - sig))
    tl.store(dpre_ptr + ((pid_bk * length + s) * inner)[:, None] + e[None, :], dpre, mask=smask)
    partial = (pid_bk * num_chunks + pid_t) * inner + e
    if HAS_BIAS:
        tl.store(dbias_ptr + partial, tl.sum(dpre, axis=0), mask=emask)
    for w in tl.static_range(WIDTH):
        x = _conv_tap(tok_ptr, index_ptr, b, k, s, e, emask, w, num_tokens, length, s_tb, s_tt, WIDTH)
        tl.store(dw_ptr + partial * WIDTH + w, tl.sum(dpre * x, axis=0), mask=emask)


@triton.jit
def _conv_bwd_x_kernel(dpre_ptr, index_ptr, w_ptr, dx_ptr, dtok_ptr, num_tokens, length, inner, num_dirs, dtok_cols,
                       ATOMIC: tl.constexpr, WIDTH: tl.constexpr, CT: tl.constexpr, BE: tl.constexpr):
    """dx = sum_j w[W-1-j] dpre[s + j] at its token's row: added atomically into the x channels of the tokens'
    gradient (Bt, T, C) (ATOMIC), or written per direction (Bt, K, T, E)."""
    pid_bk = tl.program_id(0)
    k = pid_bk % num_dirs
    s = tl.program_id(1) * CT + tl.arange(0, CT)
    e = tl.program_id(2) * BE + tl.arange(0, BE)
    emask = e < inner
    acc = tl.zeros([CT, BE], dtype=tl.float32)
    for j in tl.static_range(WIDTH):
        dst = s + j
        m = (dst < length)[:, None] & emask[None, :]
        d = tl.load(dpre_ptr + ((pid_bk * length + dst) * inner)[:, None] + e[None, :], mask=m, other=0.0)
        w = tl.load(w_ptr + (k * inner + e) * WIDTH + (WIDTH - 1 - j), mask=emask, other=0.0)
        acc += d.to(tl.float32) * w.to(tl.float32)[None, :]
    row = tl.load(index_ptr + k * length + s, mask=s < length, other=num_tokens)
    m = ((s < length) & (row < num_tokens))[:, None] & emask[None, :]
    if ATOMIC:
        dest = dtok_ptr + ((pid_bk // num_dirs * num_tokens + row) * dtok_cols)[:, None] + e[None, :]
    else:
        dest = dx_ptr + ((pid_bk * num_tokens + row) * inner)[:, None] + e[None, :]
    store_or_add(dest, acc, m, ATOMIC)


# --- the selective scan: chunked associative scan, z gate and the scatter to token rows fused ----------------------

@triton.jit
def _dt_raw(xdbl_ptr, dtw_ptr, dbl_rows, tmask, k, d, dmask, bias, rank, inner, CT: tl.constexpr, BD: tl.constexpr):
    """delta + bias before the softplus, (CT, BD): x_dbl[t, :R] @ dt_proj_weight[k, d, :]^T + bias at the steps whose
    x_dbl rows start at ``dbl_rows`` (bias alone where not tmask); one rank-1 update per r, from cached loads."""
    raw = tl.zeros([CT, BD], dtype=tl.float32) + bias[None, :]
    w_rows = dtw_ptr + (k * inner + d) * rank
    for r in range(0, rank):
        xr = tl.load(xdbl_ptr + dbl_rows + r, mask=tmask, other=0.0).to(tl.float32)
        w = tl.load(w_rows + r, mask=dmask, other=0.0).to(tl.float32)
        raw += xr[:, None] * w[None, :]
    return raw


@triton.jit
def _step_rows(index_ptr, k, t, tmask, b, pid_bk, num_tokens, length, num_dirs, inner, width_dbl, s_tb, s_tt,
               TOKEN_MAJOR: tl.constexpr):
    """Where the steps t of direction k of batch b live: their token rows and which are real (token < T); the
    offsets of their u rows and x_dbl rows; their position in the per-step gradients (length T or L) and the mask of
    their loads. Sequence-major: u, x_dbl and the gradients in sequence order (Bt, K, L, .). Token-major (no conv):
    u is the tokens' x channels, x_dbl is (Bt, T, K, .), the gradients (Bt, K, T, .), all at token rows."""
    token = tl.load(index_ptr + k * length + t, mask=tmask, other=num_tokens)
    real = tmask & (token < num_tokens)
    if TOKEN_MAJOR:
        u_rows = b * s_tb + token * s_tt
        dbl_rows = ((b * num_tokens + token) * num_dirs + k) * width_dbl
        pos = token
        loaded = real
    else:
        u_rows = (pid_bk * length + t) * inner
        dbl_rows = (pid_bk * length + t) * width_dbl
        pos = t
        loaded = tmask
    return token, real, u_rows, dbl_rows, pos, loaded


@triton.jit
def _scan_chunk_inputs(u_ptr, xdbl_ptr, dtw_ptr, u_rows, dbl_rows, loaded, tmask, k, d, dmask, n, nmask, A, bias,
                       rank, dstate, inner, CT: tl.constexpr, BD: tl.constexpr):
    """Loads of one chunk (where ``loaded``; zeros elsewhere): u, raw delta (+ bias), dt = softplus(raw) (CT, BD);
    B, C (CT, N); decays a and inputs b (CT, BD, N), the identity map (a = 1, b = 0) past the sequence's end."""
    u = tl.load(u_ptr + u_rows[:, None] + d[None, :], mask=loaded[:, None] & dmask[None, :], other=0.0)
    u = u.to(tl.float32)
    raw = _dt_raw(xdbl_ptr, dtw_ptr, dbl_rows, loaded, k, d, dmask, bias, rank, inner, CT, BD)
    dt = softplus(raw)
    mb = loaded[:, None] & nmask[None, :]
    dbl = dbl_rows[:, None] + n[None, :]
    Bm = tl.load(xdbl_ptr + dbl + rank, mask=mb, other=0.0).to(tl.float32)
    Cm = tl.load(xdbl_ptr + dbl + rank + dstate, mask=mb, other=0.0).to(tl.float32)
    a = tl.exp(dt[:, :, None] * A[None, :, :])
    b = (dt * u)[:, :, None] * Bm[:, None, :]
    live = tmask[:, None, None]
    return u, raw, dt, Bm, Cm, tl.where(live, a, 1.0), tl.where(live, b, 0.0)


@triton.jit
def _direction_params(A_log_ptr, bias_ptr, D_ptr, k, d, dmask, n, mdn, inner, dstate, HAS_D: tl.constexpr,
                      BD: tl.constexpr):
    """Direction k's parameters for the channel block d: A = -exp(A_log) (BD, BN), the dt bias and D (BD,), fp32."""
    A = -tl.exp(tl.load(A_log_ptr + (k * inner + d)[:, None] * dstate + n[None, :], mask=mdn, other=0.0)
                .to(tl.float32))
    bias = tl.load(bias_ptr + k * inner + d, mask=dmask, other=0.0).to(tl.float32)
    Dv = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + k * inner + d, mask=dmask, other=0.0).to(tl.float32)
    return A, bias, Dv


@triton.jit
def _program_block(A_log_ptr, bias_ptr, D_ptr, inner, dstate, num_dirs, HAS_D: tl.constexpr, BD: tl.constexpr,
                   BN: tl.constexpr):
    """What a program of either scan kernel works on: channel block pid_d of direction k of batch element b
    (pid_bk = b * K + k; the grid's axes), its channels d and state lanes n with their masks (``channel_block``),
    and the direction's parameters A, the dt bias and D for them (``_direction_params``)."""
    pid_d = tl.program_id(0)
    pid_bk = tl.program_id(1)
    k = pid_bk % num_dirs
    d, dmask, n, nmask, mdn = channel_block(pid_d, inner, dstate, BD, BN)
    A, bias, Dv = _direction_params(A_log_ptr, bias_ptr, D_ptr, k, d, dmask, n, mdn, inner, dstate, HAS_D, BD)
    return pid_d, pid_bk, pid_bk // num_dirs, k, d, dmask, n, nmask, mdn, A, bias, Dv


@triton.jit
def _scan_fwd_kernel(u_ptr, xdbl_ptr, tok_ptr, index_ptr, A_log_ptr, D_ptr, dtw_ptr, bias_ptr, out_ptr, ckpt_ptr,
                     num_tokens, length, inner, rank, dstate, width_dbl, s_tb, s_tt, num_dirs, num_chunks,
                     HAS_D: tl.constexpr, GATE: tl.constexpr, TOKEN_MAJOR: tl.constexpr, CT: tl.constexpr,
                     BD: tl.constexpr, BN: tl.constexpr):
    pid_d, pid_bk, b, k, d, dmask, n, nmask, mdn, A, bias, Dv = _program_block(
        A_log_ptr, bias_ptr, D_ptr, inner, dstate, num_dirs, HAS_D, BD, BN)
    rows = tl.arange(0, CT)
    h0 = tl.zeros([BD, BN], dtype=tl.float32)
    for c in range(0, num_chunks):
        tl.store(ckpt_ptr + ((pid_bk * num_chunks + c) * inner + d)[:, None] * dstate + n[None, :], h0, mask=mdn)
        t = c * CT + rows
        tmask = t < length
        token, real, u_rows, dbl_rows, _, loaded = _step_rows(index_ptr, k, t, tmask, b, pid_bk, num_tokens, length,
                                                              num_dirs, inner, width_dbl, s_tb, s_tt, TOKEN_MAJOR)
        u, raw, dt, Bm, Cm, a, bb = _scan_chunk_inputs(u_ptr, xdbl_ptr, dtw_ptr, u_rows, dbl_rows, loaded, tmask, k,
                                                       d, dmask, n, nmask, A, bias, rank, dstate, inner, CT, BD)
        a_cum, b_cum = tl.associative_scan((a, bb), 0, affine_combine)
        h = a_cum * h0[None, :, :] + b_cum
        y = tl.sum(h * Cm[:, None, :], axis=2) + Dv[None, :] * u
        m = real[:, None] & dmask[None, :]
        if GATE:
            z = tl.load(tok_ptr + b * s_tb + token[:, None] * s_tt + inner + d[None, :], mask=m, other=0.0)
            z = z.to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(out_ptr + ((pid_bk * num_tokens + token) * inner)[:, None] + d[None, :],
                 y.to(out_ptr.dtype.element_ty), mask=m)
        h0 = step_at(h, rows, CT - 1)


@triton.jit
def _scan_bwd_kernel(dout_ptr, ckpt_ptr, u_ptr, xdbl_ptr, tok_ptr, index_ptr, A_log_ptr, D_ptr, dtw_ptr, bias_ptr,
                     du_ptr, dxdbl_ptr, ddtw_ptr, dz_ptr, dtok_ptr, dA_log_ptr, dD_ptr, dbias_ptr,
                     num_tokens, length, inner, rank, dstate, width_dbl, s_tb, s_tt, num_dirs, num_chunks, dtok_cols,
                     HAS_D: tl.constexpr, GATE: tl.constexpr, TOKEN_MAJOR: tl.constexpr, ATOMIC: tl.constexpr,
                     CT: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, RP: tl.constexpr):
    pid_d, pid_bk, b, k, d, dmask, n, nmask, mdn, A, bias, Dv = _program_block(
        A_log_ptr, bias_ptr, D_ptr, inner, dstate, num_dirs, HAS_D, BD, BN)
    rows = tl.arange(0, CT)
    grad_len = length
    if TOKEN_MAJOR:
        grad_len = num_tokens
    # the gradient of x_dbl, (Bt*K, blocks, T or L, R + 2N): one block summed by atomics, or each program's own
    block = pid_d
    blocks = tl.num_programs(0)
    if ATOMIC:
        block = 0
        blocks = 1
    dx_rows = dxdbl_ptr + (pid_bk * blocks + block) * grad_len * width_dbl
    r_idx = tl.arange(0, RP)
    g_in = tl.zeros([BD, BN], dtype=tl.float32)  # dL/dh at the first step of the chunk after this one
    ddt_w = tl.zeros([BD, RP], dtype=tl.float32)
    dA = tl.zeros([BD, BN], dtype=tl.float32)
    dD = tl.zeros([BD], dtype=tl.float32)
    dbias = tl.zeros([BD], dtype=tl.float32)
    for ci in range(0, num_chunks):
        c = num_chunks - 1 - ci
        h0 = tl.load(ckpt_ptr + ((pid_bk * num_chunks + c) * inner + d)[:, None] * dstate + n[None, :], mask=mdn,
                     other=0.0)
        t = c * CT + rows
        tmask = t < length
        token, real, u_rows, dbl_rows, pos, loaded = _step_rows(index_ptr, k, t, tmask, b, pid_bk, num_tokens,
                                                                length, num_dirs, inner, width_dbl, s_tb, s_tt,
                                                                TOKEN_MAJOR)
        u, raw, dt, Bm, Cm, a, bb = _scan_chunk_inputs(u_ptr, xdbl_ptr, dtw_ptr, u_rows, dbl_rows, loaded, tmask, k,
                                                       d, dmask, n, nmask, A, bias, rank, dstate, inner, CT, BD)
        h, ah = states_and_decayed(a, bb, h0[None, :, :])     # and a_t h_{t-1}
        m = real[:, None] & dmask[None, :]
        dy = tl.load(dout_ptr + ((pid_bk * num_tokens + token) * inner)[:, None] + d[None, :], mask=m, other=0.0)
        dy = dy.to(tl.float32)
        if GATE:
            z = tl.load(tok_ptr + b * s_tb + token[:, None] * s_tt + inner + d[None, :], mask=m, other=0.0)
            z = z.to(tl.float32)
            sz = tl.sigmoid(z)
            y = tl.sum(h * Cm[:, None, :], axis=2) + Dv[None, :] * u
            if ATOMIC:
                dz_rows = dtok_ptr + (b * num_tokens + token) * dtok_cols + inner
            else:
                dz_rows = dz_ptr + (pid_bk * num_tokens + token) * inner
            store_or_add(dz_rows[:, None] + d[None, :], dy * y * sz * (1.0 + z * (1.0 - sz)), m, ATOMIC)
            dy = dy * z * sz
        # decay of the next step, a_{t+1} (zero past the end: no gradient flows in from there)
        nxt = t + 1
        nmask_t = nxt < length
        _, _, _, dbl_next, _, loaded_next = _step_rows(index_ptr, k, nxt, nmask_t, b, pid_bk, num_tokens, length,
                                                       num_dirs, inner, width_dbl, s_tb, s_tt, TOKEN_MAJOR)
        raw_next = _dt_raw(xdbl_ptr, dtw_ptr, dbl_next, loaded_next, k, d, dmask, bias, rank, inner, CT, BD)
        a_next = tl.where(nmask_t[:, None, None], tl.exp(softplus(raw_next)[:, :, None] * A[None, :, :]), 0.0)
        g_mul, g_add = tl.associative_scan((a_next, Cm[:, None, :] * dy[:, :, None]), 0, affine_combine,
                                           reverse=True)
        g = g_mul * g_in[None, :, :] + g_add
        g_in = step_at(g, rows, 0)
        mb = loaded[:, None] & nmask[None, :]
        step_rows = dx_rows + pos * width_dbl
        dbc = step_rows[:, None] + rank + n[None, :]
        store_or_add(dbc, tl.sum(g * (dt * u)[:, :, None], axis=1), mb, ATOMIC)
        store_or_add(dbc + dstate, tl.sum(h * dy[:, :, None], axis=1), mb, ATOMIC)
        gB = tl.sum(g * Bm[:, None, :], axis=2)
        gAh = g * ah
        ddt = gB * u + tl.sum(gAh * A[None, :, :], axis=2)
        draw = ddt * tl.sigmoid(raw)
        m2 = tmask[:, None] & dmask[None, :]
        act = ((pid_bk * grad_len + pos) * inner)[:, None] + d[None, :]
        stored = loaded[:, None] & dmask[None, :]
        du = dy * Dv[None, :] + dt * gB
        if TOKEN_MAJOR and ATOMIC:     # u is the tokens' x channels: add into their gradient
            tl.atomic_add(dtok_ptr + ((b * num_tokens + token) * dtok_cols)[:, None] + d[None, :], du, mask=m,
                          sem="relaxed")
        else:
            tl.store(du_ptr + act, du.to(du_ptr.dtype.element_ty), mask=stored)
        # the dt projection's gradients, column by column: d x_dbl[:, :R] = draw @ W and d W += draw^T x_dbl[:, :R]
        dx_dt = tl.zeros([CT, RP], dtype=tl.float32)
        w_rows = dtw_ptr + (k * inner + d) * rank
        for r in range(0, rank):
            w = tl.load(w_rows + r, mask=dmask, other=0.0).to(tl.float32)
            dx_dt += tl.where(r_idx[None, :] == r, tl.sum(draw * w[None, :], axis=1)[:, None], 0.0)
            xr = tl.load(xdbl_ptr + dbl_rows + r, mask=loaded, other=0.0).to(tl.float32)
            ddt_w += tl.where(r_idx[None, :] == r, tl.sum(draw * xr[:, None], axis=0)[:, None], 0.0)
        store_or_add(step_rows[:, None] + r_idx[None, :], dx_dt, loaded[:, None] & (r_idx < rank)[None, :], ATOMIC)
        dA += tl.sum(gAh * dt[:, :, None], axis=0)
        dD += tl.sum(tl.where(m2, dy * u, 0.0), axis=0)
        dbias += tl.sum(tl.where(m2, draw, 0.0), axis=0)
    per_channel = pid_bk * inner + d
    tl.store(ddtw_ptr + per_channel[:, None] * rank + r_idx[None, :], ddt_w,
             mask=dmask[:, None] & (r_idx < rank)[None, :])
    tl.store(dA_log_ptr + per_channel[:, None] * dstate + n[None, :], dA * A, mask=mdn)
    tl.store(dD_ptr + per_channel, dD, mask=dmask)
    tl.store(dbias_ptr + per_channel, dbias, mask=dmask)


# --- launches, custom ops with autograd ------------------------------------------------------------------------------

def _tokens_view(tokens: torch.Tensor) -> torch.Tensor:
    return tokens if tokens.stride(-1) == 1 else tokens.contiguous()


def _conv_params(conv_weight: torch.Tensor):
    """(weight (K, E, W) contiguous, width)."""
    weight = conv_weight.reshape(conv_weight.shape[0], conv_weight.shape[1], -1).contiguous()
    return weight, weight.shape[-1]


def _conv_grid(batch: int, num_dirs: int, length: int, inner: int):
    return batch * num_dirs, triton.cdiv(length, CONV_CHUNK), triton.cdiv(inner, CONV_BLOCK_E)


@torch.library.custom_op("localmamba::multi_scan_conv_triton_fwd", mutates_args=())
@on_tensor_device
def multi_scan_conv_fwd(tokens: torch.Tensor, index: torch.Tensor, conv_weight: torch.Tensor,
                        conv_bias: Optional[torch.Tensor], inner: int) -> torch.Tensor:
    """u (Bt, K, L, E) in the tokens' dtype: SiLU(conv(x_seq) + bias) with x_seq read through ``index`` (int32
    (K, L))."""
    tokens = _tokens_view(tokens)
    (batch, num_tokens), (num_dirs, length) = tokens.shape[:2], index.shape
    weight, width = _conv_params(conv_weight)
    u = tokens.new_empty(batch, num_dirs, length, inner)
    _conv_fwd_kernel[_conv_grid(batch, num_dirs, length, inner)](
        tokens, index, weight, conv_bias, u, num_tokens, length, inner, tokens.stride(0), tokens.stride(1), num_dirs,
        HAS_BIAS=conv_bias is not None, WIDTH=width, CT=CONV_CHUNK, BE=CONV_BLOCK_E)
    return u


@multi_scan_conv_fwd.register_fake
def _conv_fwd_fake(tokens, index, conv_weight, conv_bias, inner):
    return tokens.new_empty(tokens.shape[0], index.shape[0], index.shape[1], inner)


@torch.library.custom_op("localmamba::multi_scan_conv_triton_bwd", mutates_args=())
@on_tensor_device
def multi_scan_conv_bwd(du: torch.Tensor, tokens: torch.Tensor, index: torch.Tensor,
                        conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor]
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> d tokens (x channels; fp32, tokens' shape), d conv_weight (K, E, W) fp32, d conv_bias (K, E) fp32 (empty
    without a bias)."""
    tokens = _tokens_view(tokens)
    du = du.contiguous()
    (batch, num_tokens), (num_dirs, length), inner = tokens.shape[:2], index.shape, du.shape[-1]
    weight, width = _conv_params(conv_weight)
    grid = _conv_grid(batch, num_dirs, length, inner)
    f32 = dict(device=du.device, dtype=torch.float32)
    dpre = torch.empty(batch, num_dirs, length, inner, **f32)
    dw_part = torch.empty(batch, num_dirs, grid[1], inner, width, **f32)
    db_part = torch.empty(batch, num_dirs, grid[1], inner, **f32) if conv_bias is not None else None
    _conv_bwd_pre_kernel[grid](
        du, tokens, index, weight, conv_bias, dpre, dw_part, db_part, num_tokens, length, inner,
        tokens.stride(0), tokens.stride(1), num_dirs, grid[1],
        HAS_BIAS=conv_bias is not None, WIDTH=width, CT=CONV_CHUNK, BE=CONV_BLOCK_E)
    dweight = dw_part.sum((0, 2))
    dbias = db_part.sum((0, 2)) if db_part is not None else torch.zeros(0, **f32)
    atomic = atomic_reductions()
    dtokens = torch.zeros(tokens.shape, **f32)
    # per direction, every token row is written (the index's contract), then summed in torch; or added atomically
    dx = torch.zeros(0, **f32) if atomic else torch.empty(batch, num_dirs, num_tokens, inner, **f32)
    _conv_bwd_x_kernel[grid](dpre, index, weight, dx, dtokens, num_tokens, length, inner, num_dirs, tokens.shape[2],
                             ATOMIC=atomic, WIDTH=width, CT=CONV_CHUNK, BE=CONV_BLOCK_E)
    if not atomic:
        dtokens[..., :inner] = dx.sum(1)
    return dtokens, dweight, dbias


@multi_scan_conv_bwd.register_fake
def _conv_bwd_fake(du, tokens, index, conv_weight, conv_bias):
    f32 = dict(dtype=torch.float32)
    dweight = du.new_empty(conv_weight.shape[:2] + (conv_weight.shape[-1],), **f32)
    return (tokens.new_empty(tokens.shape, **f32), dweight,
            du.new_empty(conv_bias.shape, **f32) if conv_bias is not None else du.new_empty(0, **f32))


def _conv_setup(ctx, inputs, output):
    tokens, index, conv_weight, conv_bias, inner = inputs
    ctx.save_for_backward(tokens, index, conv_weight, conv_bias)


def _conv_backward(ctx, du):
    tokens, index, conv_weight, conv_bias = ctx.saved_tensors
    dtokens, dweight, dbias = multi_scan_conv_bwd(du, tokens, index, conv_weight, conv_bias)
    return (dtokens.to(tokens.dtype), None, dweight.view(conv_weight.shape).to(conv_weight.dtype),
            None if conv_bias is None else dbias.to(conv_bias.dtype), None)


multi_scan_conv_fwd.register_autograd(_conv_backward, setup_context=_conv_setup)
refuse_second_derivative(multi_scan_conv_bwd)


def _scan_launch(batch: int, num_dirs: int, length: int, inner: int, dstate: int, chunk: int):
    """Grid, chunks and the tile constants of the scan kernels for chunks of ``chunk`` steps. The channel blocks
    are the grid's first axis, so the programs of one (batch, direction), which read the same x_dbl, index and
    (token-major) token rows, run side by side and share those rows in L2."""
    num_chunks = max(1, triton.cdiv(length, chunk))
    grid = (triton.cdiv(inner, SCAN_BLOCK_D), batch * num_dirs)
    block_n = triton.next_power_of_2(dstate)
    return grid, num_chunks, dict(CT=chunk, BD=SCAN_BLOCK_D, BN=block_n,
                                  num_warps=scan_warps(SCAN_BLOCK_D, block_n))


def _scan_sizes(tokens: torch.Tensor, index: torch.Tensor, A_log: torch.Tensor, dt_weight: torch.Tensor):
    """(batch, K, L, T, E, N, R)."""
    return (tokens.shape[0], *index.shape, tokens.shape[1], *A_log.shape[1:], dt_weight.shape[-1])


@torch.library.custom_op("localmamba::multi_scan_triton_fwd", mutates_args=())
@on_tensor_device
def multi_scan_scan_fwd(u: torch.Tensor, x_dbl: torch.Tensor, tokens: torch.Tensor, index: torch.Tensor,
                        A_log: torch.Tensor, D: Optional[torch.Tensor], dt_weight: torch.Tensor, dt_bias: torch.Tensor,
                        gate: bool, token_major: bool, chunk: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The scan of every direction -> y (Bt, K, T, E) in u's dtype at token rows, chunk start states
    (Bt*K, chunks, E, N) fp32.

    tokens (Bt, T, C) (z = channels [E, 2E)); index int32 (K, L); A_log (K, E, N), D, dt_bias (K, E), dt_weight
    (K, E, R). Sequence-major: u (Bt, K, L, E) and x_dbl (Bt, K, L, R + 2N) contiguous, in sequence order.
    ``token_major`` (no conv): u is ``tokens`` itself (x = channels [0, E)) and x_dbl (Bt, T, K, R + 2N) contiguous,
    both read at the token rows the index gives. ``chunk``: time steps per tile (an argument, not the module
    constant read here, so that a compiled graph records it with the shapes it implies)."""
    tokens = _tokens_view(tokens)
    batch, num_dirs, length, num_tokens, inner, dstate, rank = _scan_sizes(tokens, index, A_log, dt_weight)
    if token_major:
        u = tokens
    grid, num_chunks, blocks = _scan_launch(batch, num_dirs, length, inner, dstate, chunk)
    out = u.new_empty(batch, num_dirs, num_tokens, inner)
    ckpt = u.new_empty(batch * num_dirs, num_chunks, inner, dstate, dtype=torch.float32)
    _scan_fwd_kernel[grid](
        u, x_dbl, tokens, index, A_log, D, dt_weight, dt_bias, out, ckpt, num_tokens, length, inner, rank, dstate,
        x_dbl.shape[-1], tokens.stride(0), tokens.stride(1), num_dirs, num_chunks,
        HAS_D=D is not None, GATE=gate, TOKEN_MAJOR=token_major, **blocks)
    return out, ckpt


@multi_scan_scan_fwd.register_fake
def _scan_fwd_fake(u, x_dbl, tokens, index, A_log, D, dt_weight, dt_bias, gate, token_major, chunk):
    batch, num_dirs, length, num_tokens, inner, dstate, _ = _scan_sizes(tokens, index, A_log, dt_weight)
    num_chunks = max(1, -(-length // chunk))
    return (u.new_empty(batch, num_dirs, num_tokens, inner),
            u.new_empty(batch * num_dirs, num_chunks, inner, dstate, dtype=torch.float32))


@torch.library.custom_op("localmamba::multi_scan_triton_bwd", mutates_args=())
@on_tensor_device
def multi_scan_scan_bwd(dout: torch.Tensor, ckpt: torch.Tensor, u: torch.Tensor, x_dbl: torch.Tensor,
                        tokens: torch.Tensor, index: torch.Tensor, A_log: torch.Tensor, D: Optional[torch.Tensor],
                        dt_weight: torch.Tensor, dt_bias: torch.Tensor, gate: bool, token_major: bool, chunk: int
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                   torch.Tensor, torch.Tensor]:
    """-> du, d x_dbl (x_dbl's shape), d tokens (z channels), d A_log (K, E, N), dD (K, E; empty without D),
    d dt_weight (K, E, R), d dt_bias (K, E), all from one kernel (d x_dbl and d dt_weight too). du is in u's dtype
    (sequence-major), or (token-major) the whole gradient of the tokens, x and z channels, fp32, with d tokens
    empty; the rest fp32."""
    tokens = _tokens_view(tokens)
    dout = dout.contiguous()
    batch, num_dirs, length, num_tokens, inner, dstate, rank = _scan_sizes(tokens, index, A_log, dt_weight)
    if token_major:
        u = tokens
    grid, num_chunks, blocks = _scan_launch(batch, num_dirs, length, inner, dstate, chunk)
    rows = num_tokens if token_major else length        # of the per-step gradients, in token or sequence order
    f32 = dict(device=u.device, dtype=torch.float32)
    act = dict(device=u.device, dtype=u.dtype)
    atomic = atomic_reductions()
    # the tokens' gradient: z channels (gate) and, token-major, x channels, summed over the directions atomically
    # or, per direction, in torch (every token is at one position of every direction, multi_scan_inner_fn's
    # contract, so each row of the per-direction buffers is written)
    dtokens = torch.zeros(tokens.shape, **f32)
    du = (torch.zeros(0, **f32) if token_major and atomic
          else torch.empty(batch, num_dirs, rows, inner, **act))
    width = x_dbl.shape[-1]
    dx_dbl = (torch.zeros(batch, num_dirs, 1, rows, width, **f32) if atomic
              else torch.empty(batch, num_dirs, grid[0], rows, width, **f32))
    ddt_weight = torch.empty(batch, num_dirs, inner, rank, **f32)
    dz = torch.empty(batch, num_dirs, num_tokens, inner, **f32) if gate and not atomic else torch.zeros(0, **f32)
    dA_log = torch.empty(batch, num_dirs, inner, dstate, **f32)
    dD, dbias = torch.empty(batch, num_dirs, inner, **f32), torch.empty(batch, num_dirs, inner, **f32)
    _scan_bwd_kernel[grid](
        dout, ckpt, u, x_dbl, tokens, index, A_log, D, dt_weight, dt_bias, du, dx_dbl, ddt_weight, dz, dtokens,
        dA_log, dD, dbias, num_tokens, length, inner, rank, dstate, width, tokens.stride(0), tokens.stride(1),
        num_dirs, num_chunks, tokens.shape[2], HAS_D=D is not None, GATE=gate, TOKEN_MAJOR=token_major,
        ATOMIC=atomic, RP=triton.next_power_of_2(rank), **blocks)
    dx_dbl = dx_dbl.sum(2)                                                                    # (Bt, K, rows, R + 2N)
    if gate and not atomic:
        dtokens[..., inner:2 * inner] = dz.sum(1)
    if token_major:
        dx_dbl = dx_dbl.transpose(1, 2).contiguous()                                          # (Bt, T, K, R + 2N)
        if not atomic:
            dtokens[..., :inner] = du.sum(1, dtype=torch.float32)
        du, dtokens = dtokens, dtokens.new_zeros(0)
    return (du, dx_dbl, dtokens, dA_log.sum(0), dD.sum(0) if D is not None else dD.new_zeros(0), ddt_weight.sum(0),
            dbias.sum(0))


@multi_scan_scan_bwd.register_fake
def _scan_bwd_fake(dout, ckpt, u, x_dbl, tokens, index, A_log, D, dt_weight, dt_bias, gate, token_major, chunk):
    f32 = dict(dtype=torch.float32)
    num_dirs, inner = A_log.shape[:2]
    du = tokens.new_empty(tokens.shape, **f32) if token_major else u.new_empty(u.shape)
    dtokens = tokens.new_empty(0, **f32) if token_major else tokens.new_empty(tokens.shape, **f32)
    return (du, x_dbl.new_empty(x_dbl.shape, **f32), dtokens, A_log.new_empty(A_log.shape, **f32),
            u.new_empty((num_dirs, inner) if D is not None else (0,), **f32),
            dt_weight.new_empty(dt_weight.shape, **f32), u.new_empty(num_dirs, inner, **f32))


def _scan_setup(ctx, inputs, output):
    u, x_dbl, tokens, index, A_log, D, dt_weight, dt_bias, gate, token_major, chunk = inputs
    ctx.save_for_backward(output[1], u, x_dbl, tokens, index, A_log, D, dt_weight, dt_bias)
    ctx.mark_non_differentiable(output[1])
    ctx.gate, ctx.token_major, ctx.chunk = gate, token_major, chunk


def _scan_backward(ctx, dout, dckpt):
    ckpt, u, x_dbl, tokens, index, A_log, D, dt_weight, dt_bias = ctx.saved_tensors
    du, dx_dbl, dtokens, dA_log, dD, ddt_weight, dbias = multi_scan_scan_bwd(
        dout, ckpt, u, x_dbl, tokens, index, A_log, D, dt_weight, dt_bias, ctx.gate, ctx.token_major, ctx.chunk)
    return (du.to(u.dtype), dx_dbl.to(x_dbl.dtype),
            dtokens.to(tokens.dtype) if ctx.gate and not ctx.token_major else None, None,
            dA_log.to(A_log.dtype), None if D is None else dD.to(D.dtype), ddt_weight.to(dt_weight.dtype),
            dbias.to(dt_bias.dtype), None, None, None)


multi_scan_scan_fwd.register_autograd(_scan_backward, setup_context=_scan_setup)
refuse_second_derivative(multi_scan_scan_bwd)


def multi_scan_inner_triton(tokens: torch.Tensor, index: torch.Tensor, x_proj_weight: torch.Tensor,
                            dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                            D: Optional[torch.Tensor] = None, conv_weight: Optional[torch.Tensor] = None,
                            conv_bias: Optional[torch.Tensor] = None, gate: bool = False) -> torch.Tensor:
    """triton backend of ``multi_scan_inner_fn`` (same arguments and result; inputs already validated). A batch too
    large for one kernel call (``launch_limits``) runs as several calls on slices of it."""
    tokens = _tokens_view(tokens)
    (num_dirs, length), (width, inner) = index.shape, x_proj_weight.shape[1:]
    rows, dstate, rank = max(length, tokens.shape[1]), A_log.shape[2], dt_proj_weight.shape[-1]
    conv_width = 0 if conv_weight is None else conv_weight.shape[-1]
    slices = batch_slices(tokens.shape[0], max(
        item_span(tokens),                                                    # the tokens (and their gradient)
        num_dirs * rows * max(inner, width),                                  # u, x_dbl, y and their gradients
        num_dirs * triton.cdiv(length, SCAN_CHUNK) * inner * dstate,          # the chunk start states
        num_dirs * triton.cdiv(inner, SCAN_BLOCK_D) * rows * width,           # per-block x_dbl gradients
        num_dirs * inner * rank,                                              # per-element dt_proj gradients
        num_dirs * triton.cdiv(length, CONV_CHUNK) * inner * conv_width),     # per-program conv weight gradients
        item_grid_rows=num_dirs)
    if len(slices) > 1:
        # the parts get the parameters the kernels read in fp32, so that their gradients are summed over the parts
        # in fp32 and rounded to the parameters' dtype once, as on one call (each part's x projection runs in the
        # tokens' dtype, or under the ambient autocast, and rounds its weight's gradient there); their torch.cat
        # outside autocast, which refuses fp16 parts in a bf16 region and the reverse
        dt_proj_weight, dt_proj_bias, A_log, D, conv_weight, conv_bias = (
            None if t is None else t.float() for t in (dt_proj_weight, dt_proj_bias, A_log, D, conv_weight, conv_bias))
        parts = [multi_scan_inner_triton(tokens[part], index, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                                         conv_weight, conv_bias, gate) for part in slices]
        with autocast_off(tokens.device.type):
            return torch.cat(parts)
    index32 = index.to(torch.int32).contiguous()

    def dense(t):
        return None if t is None else t.contiguous()

    if conv_weight is None:   # token-major: the scan reads x and its projection at the token rows
        width = x_proj_weight.shape[1]
        x_dbl = torch.matmul(tokens[..., :inner], x_proj_weight.to(tokens.dtype).reshape(-1, inner).t())
        u, x_dbl = tokens, x_dbl.view(*tokens.shape[:2], index.shape[0], width)           # (Bt, T, K, R + 2N)
    else:
        u = multi_scan_conv_fwd(tokens, index32, conv_weight, dense(conv_bias), inner)   # (Bt, K, L, E)
        x_dbl = torch.matmul(u, x_proj_weight.to(u.dtype).transpose(1, 2))                # (Bt, K, L, R + 2N)
    with autocast_off(tokens.device.type):
        y, _ = multi_scan_scan_fwd(u, x_dbl.contiguous(), tokens, index32, dense(A_log), dense(D),
                                   dense(dt_proj_weight), dense(dt_proj_bias), gate, conv_weight is None, SCAN_CHUNK)
    return y
