"""The ``cpu`` backend of ``multi_scan_inner_fn`` and ``attention_merge_fn``: C kernels on token-major buffers.

``multi_scan_inner_cpu``: one custom op ``localmamba::multi_scan_cpu_fwd`` gathers every direction's sequence
straight from the token rows (with the causal conv and SiLU), projects it (one bmm over all directions, and one more
for the dt low-rank projection), scans it in sequence order, and moves the outputs back to token order with the gate
applied; its backward op ``multi_scan_cpu_bwd`` writes the gradient of the
token rows in place (x and gate halves) and the parameter gradients. ``attention_merge_cpu``: the token mean of the
LayerNorm-ed outputs and the gated sum over directions in C, the small gate MLP in PyTorch, and a fused backward.
All ops have fake implementations, so ``torch.compile`` traces through them. See ``multi_scan_source.py`` for
the layouts.
"""
from __future__ import annotations

import ctypes
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from localmamba_conv1d import ckernel
from localmamba_conv1d.precision import autocast_off

from .multi_scan_source import SOURCE

MAX_RANK = 256
MIN_ROWS_PER_TASK = 64

_T = torch.Tensor


class MSArgs(ctypes.Structure):
    """Mirror of the C ``MSArgs`` struct."""

    _fields_ = ([(n, ctypes.c_long) for n in ("batch", "ndir", "seqlen", "ntok", "dim", "nstate", "rank", "width",
                                              "silu", "gate", "src_stride", "pdim")]
                + [(n, ctypes.c_void_p) for n in ("index", "src", "conv_w", "conv_b", "u", "xdbl", "dt_w", "dt_b",
                                                  "A", "A2", "D", "u_out", "y", "ys", "dtr", "dy", "du", "dxdbl",
                                                  "dsrc", "dconv_w", "dconv_b", "ddt_w", "ddt_b", "dA", "dD")])


class AttnArgs(ctypes.Structure):
    """Mirror of the C ``AttnArgs`` struct."""

    _fields_ = ([(n, ctypes.c_long) for n in ("batch", "ndir", "ntok", "dim")] + [("eps", ctypes.c_float)]
                + [(n, ctypes.c_void_p) for n in ("y", "gate", "dm", "dxbar", "mu", "rstd", "out", "xbar", "mu_out",
                                                  "rstd_out", "dy", "dgate")])


_SIG_MS = (ctypes.POINTER(MSArgs), ctypes.c_long, ctypes.c_long)
_SIG_ATTN = (ctypes.POINTER(AttnArgs), ctypes.c_long, ctypes.c_long)


def load_kernel():
    """The compiled multi-direction kernels (built on first use), or None when unavailable or disabled."""
    return ckernel.load_library("multi_scan", SOURCE, {
        "ms_gather_fwd": _SIG_MS, "ms_gather_bwd": _SIG_MS, "ms_scan_fwd": _SIG_MS, "ms_gate_fwd": _SIG_MS,
        "ms_scan_bwd": _SIG_MS,
        "attn_stats": _SIG_ATTN, "attn_merge": _SIG_ATTN, "attn_gate_grad": _SIG_ATTN, "attn_input_grad": _SIG_ATTN})


@ckernel.constant_under_compile  # under torch.compile: evaluated (and the kernels loaded) at trace time
def kernel_usable(inner: int) -> bool:
    """True when the C kernels are available and there are channels to run them on (the state and rank limits,
    MAX_STATE and MAX_RANK, are checked when the backend is chosen)."""
    return inner > 0 and load_kernel() is not None


def _run(fn, make_args, items: int, min_items: int) -> None:
    """Run ``fn`` over ``items`` in ``ckernel.num_tasks(items, min_items)`` parallel tasks; ``make_args(i)`` gives
    task i its arguments (its own accumulators, where the kernel adds to some)."""
    tasks = ckernel.num_tasks(items, min_items)
    ckernel.run_parallel(fn, [make_args(i) for i in range(tasks)], items)


EXP2_8_SCALE = 8 / math.log(2)  # the kernel's exp2_8 takes exponents pre-scaled by 8 log2(e)


def _ms_args(src, index, conv_w, conv_b, params, dt_b, D, gate, inner, rank, state) -> MSArgs:
    num_dirs, length = index.shape
    dt_t, A_t, A2_t = params
    return MSArgs(batch=src.shape[0], ndir=num_dirs, seqlen=length, ntok=src.shape[1], dim=inner, nstate=state,
                  rank=rank, width=0 if conv_w is None else conv_w.shape[1], silu=int(conv_w is not None),
                  gate=int(gate), src_stride=src.shape[2], pdim=A_t.shape[2], index=index.data_ptr(),
                  src=src.data_ptr(), conv_w=ckernel.data_ptr(conv_w), conv_b=ckernel.data_ptr(conv_b),
                  dt_w=dt_t.data_ptr(), dt_b=dt_b.data_ptr(), A=A_t.data_ptr(), A2=A2_t.data_ptr(),
                  D=ckernel.data_ptr(D))


def _channel_major(conv_w, dt_w, A_log):
    """Per-channel vectors for the kernel: conv (K, W, E), and (dt_w (K, R, P), A = -exp(A_log) (K, N, P),
    A * EXP2_8_SCALE (K, N, P)) with the channels zero-padded to P, a multiple of 8 (whole-vector loads)."""
    conv_t = None if conv_w is None else conv_w.transpose(1, 2).contiguous()
    inner = A_log.shape[1]
    pad = (-inner) % 8
    dt_t = F.pad(dt_w.transpose(1, 2), (0, pad)).contiguous()
    A_t = F.pad((-torch.exp(A_log)).transpose(1, 2), (0, pad)).contiguous()
    return conv_t, (dt_t, A_t, A_t * EXP2_8_SCALE)


def _dt_projection(xdbl: torch.Tensor, dt_w: torch.Tensor, rank: int) -> torch.Tensor:
    """dt_w x_dbl[:R] (no bias) for every position: one batched matmul -> (K, Bt * L, E), rows laid out like u."""
    flat = xdbl.reshape(xdbl.shape[0], -1, xdbl.shape[-1])
    return torch.bmm(flat[:, :, :rank], dt_w.transpose(1, 2))


def _check_index(index: torch.Tensor, num_tokens: int) -> None:
    if index.numel() and (int(index.min()) < 0 or int(index.max()) > num_tokens):
        raise ValueError(f"index values must lie in [0, {num_tokens}] (the token count marks padding)")


@torch.library.custom_op("localmamba::multi_scan_cpu_fwd", mutates_args=(), device_types="cpu")
def multi_scan_cpu_fwd(src: torch.Tensor, index: torch.Tensor, conv_w: Optional[torch.Tensor],
                       conv_b: Optional[torch.Tensor], x_proj_w: torch.Tensor, dt_w: torch.Tensor, dt_b: torch.Tensor,
                       A_log: torch.Tensor, D: Optional[torch.Tensor], gate: bool) -> Tuple[_T, _T, _T]:
    """Contiguous fp32 inputs (see ``multi_scan_inner_cpu``) -> y (Bt, K, T, E), and u (K, Bt, L, E) and xdbl
    (K, Bt, L, R + 2N) for the backward."""
    lib = load_kernel()
    _check_index(index, src.shape[1])
    batch = src.shape[0]
    num_dirs, length = index.shape
    inner, rank, state = x_proj_w.shape[2], dt_w.shape[2], A_log.shape[2]
    conv_t, params = _channel_major(conv_w, dt_w, A_log)
    u = src.new_empty(num_dirs, batch, length, inner)
    y = src.new_empty(batch, num_dirs, src.shape[1], inner)

    def make(_):
        a = _ms_args(src, index, conv_t, conv_b, params, dt_b, D, gate, inner, rank, state)
        a.u_out, a.u, a.y = u.data_ptr(), u.data_ptr(), y.data_ptr()
        return a

    pairs = num_dirs * batch
    _run(lib.ms_gather_fwd, make, pairs, 1)
    xdbl = torch.bmm(u.view(num_dirs, batch * length, inner), x_proj_w.transpose(1, 2))
    dtr = _dt_projection(xdbl, dt_w, rank)
    xdbl = xdbl.view(num_dirs, batch, length, -1)

    def make_scan(i):
        a = make(i)
        # the scan overwrites each row of dtr with its ungated output once it has read it
        a.xdbl, a.dtr, a.ys = xdbl.data_ptr(), dtr.data_ptr(), dtr.data_ptr()
        return a

    _run(lib.ms_scan_fwd, make_scan, pairs, 1)
    _run(lib.ms_gate_fwd, make_scan, batch * src.shape[1], MIN_ROWS_PER_TASK)
    return y, u, xdbl


@multi_scan_cpu_fwd.register_fake
def _ms_fwd_fake(src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, gate):
    batch, num_tokens = src.shape[:2]
    num_dirs, length = index.shape
    inner, width = x_proj_w.shape[2], x_proj_w.shape[1]
    return (src.new_empty(batch, num_dirs, num_tokens, inner), src.new_empty(num_dirs, batch, length, inner),
            src.new_empty(num_dirs, batch, length, width))


@torch.library.custom_op("localmamba::multi_scan_cpu_bwd", mutates_args=(), device_types="cpu")
def multi_scan_cpu_bwd(dy: torch.Tensor, src: torch.Tensor, index: torch.Tensor, conv_w: Optional[torch.Tensor],
                       conv_b: Optional[torch.Tensor], x_proj_w: torch.Tensor, dt_w: torch.Tensor,
                       dt_b: torch.Tensor, A_log: torch.Tensor, D: Optional[torch.Tensor], gate: bool,
                       u: torch.Tensor, xdbl: torch.Tensor) -> Tuple[_T, _T, _T, _T, _T, _T, _T, _T]:
    """Backward -> dsrc, dconv_w, dconv_b, dx_proj_w, ddt_w, ddt_b, dA_log, dD (empty where the input is None)."""
    lib = load_kernel()
    batch = src.shape[0]
    num_dirs, length = index.shape
    inner, rank, state = x_proj_w.shape[2], dt_w.shape[2], A_log.shape[2]
    conv_t, params = _channel_major(conv_w, dt_w, A_log)
    used = inner * (2 if gate else 1)
    dsrc = torch.zeros_like(src) if src.shape[2] > used else torch.empty_like(src)
    du, dxdbl = torch.empty_like(u), torch.empty_like(xdbl)
    tasks = ckernel.num_tasks(batch, 1)
    dA = src.new_zeros(tasks, num_dirs, state, inner)
    ddt_w = src.new_zeros(tasks, num_dirs, rank, inner)
    ddt_b = dt_b.new_zeros((tasks,) + dt_b.shape)
    dD = dt_b.new_zeros((tasks,) + dt_b.shape)
    dconv_w = None if conv_t is None else conv_t.new_zeros((tasks,) + conv_t.shape)
    dconv_b = None if conv_b is None else conv_b.new_zeros((tasks,) + conv_b.shape)

    dtr = _dt_projection(xdbl, dt_w, rank)

    def make(i):
        a = _ms_args(src, index, conv_t, conv_b, params, dt_b, D, gate, inner, rank, state)
        a.dtr = dtr.data_ptr()
        a.u, a.xdbl, a.dy, a.du, a.dxdbl, a.dsrc = (u.data_ptr(), xdbl.data_ptr(), dy.data_ptr(), du.data_ptr(),
                                                    dxdbl.data_ptr(), dsrc.data_ptr())
        a.dA, a.ddt_w, a.ddt_b = dA[i].data_ptr(), ddt_w[i].data_ptr(), ddt_b[i].data_ptr()
        a.dD = None if D is None else dD[i].data_ptr()
        a.dconv_w = None if dconv_w is None else dconv_w[i].data_ptr()
        a.dconv_b = None if dconv_b is None else dconv_b[i].data_ptr()
        return a

    _run(lib.ms_scan_bwd, make, batch, 1)
    flat_dxdbl = dxdbl.view(num_dirs, batch * length, -1)
    dx_proj_w = torch.bmm(flat_dxdbl.transpose(1, 2), u.view(num_dirs, batch * length, inner))
    du.view(num_dirs, batch * length, inner).baddbmm_(flat_dxdbl, x_proj_w)
    _run(lib.ms_gather_bwd, make, batch, 1)
    A = -torch.exp(A_log)
    return (dsrc,
            src.new_zeros(0) if dconv_w is None else dconv_w.sum(0).transpose(1, 2).contiguous(),
            src.new_zeros(0) if dconv_b is None else dconv_b.sum(0),
            dx_proj_w, ddt_w.sum(0).transpose(1, 2).contiguous(), ddt_b.sum(0),
            (dA.sum(0).transpose(1, 2) * A).contiguous(), src.new_zeros(0) if D is None else dD.sum(0))


@multi_scan_cpu_bwd.register_fake
def _ms_bwd_fake(dy, src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, gate, u, xdbl):
    def like(t):
        return src.new_empty(0) if t is None else t.new_empty(t.shape)

    return (like(src), like(conv_w), like(conv_b), like(x_proj_w), like(dt_w), like(dt_b), like(A_log), like(D))


def _ms_setup(ctx, inputs, output):
    src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, gate = inputs
    _, u, xdbl = output
    ctx.save_for_backward(src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, u, xdbl)
    ctx.gate = gate


def _ms_backward(ctx, dy, du_unused, dxdbl_unused):
    src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, u, xdbl = ctx.saved_tensors
    grads = multi_scan_cpu_bwd(dy.contiguous(), src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, ctx.gate,
                               u, xdbl)
    dsrc, dconv_w, dconv_b, dx_proj_w, ddt_w, ddt_b, dA_log, dD = grads
    return (dsrc, None, None if conv_w is None else dconv_w, None if conv_b is None else dconv_b, dx_proj_w, ddt_w,
            ddt_b, dA_log, None if D is None else dD, None)


multi_scan_cpu_fwd.register_autograd(_ms_backward, setup_context=_ms_setup)


def multi_scan_inner_cpu(tokens: torch.Tensor, index: torch.Tensor, x_proj_weight: torch.Tensor,
                         dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                         D: Optional[torch.Tensor], conv_weight: Optional[torch.Tensor],
                         conv_bias: Optional[torch.Tensor], gate: bool) -> torch.Tensor:
    """cpu backend of ``multi_scan_inner_fn`` (same arguments; fp32 compute, output in the tokens' dtype)."""
    dtype = tokens.dtype

    def f32(t):
        return None if t is None else t.float().contiguous()

    with autocast_off(tokens.device.type):
        y, _, _ = torch.ops.localmamba.multi_scan_cpu_fwd(
            f32(tokens), index.contiguous(), None if conv_weight is None else f32(conv_weight.flatten(2)),
            f32(conv_bias), f32(x_proj_weight), f32(dt_proj_weight), f32(dt_proj_bias), f32(A_log), f32(D), gate)
    return y.to(dtype)


# --------------------------------------------------------------------------------------------------------------
# Channel attention and merge.

def _attn_args(y, eps) -> AttnArgs:
    batch, num_dirs, num_tokens, dim = y.shape
    return AttnArgs(batch=batch, ndir=num_dirs, ntok=num_tokens, dim=dim, eps=eps, y=y.data_ptr())


@torch.library.custom_op("localmamba::attention_merge_cpu_fwd", mutates_args=(), device_types="cpu")
def attention_merge_cpu_fwd(y: torch.Tensor, norm_w: torch.Tensor, norm_b: torch.Tensor, reduce_w: torch.Tensor,
                            reduce_b: torch.Tensor, select_w: torch.Tensor, select_b: torch.Tensor,
                            eps: float) -> Tuple[_T, _T, _T, _T, _T, _T]:
    """Contiguous fp32 y (Bt, K, T, E) -> merged (Bt, T, E), and for the backward: gate (Bt, K, E), the normalised
    token means xbar (Bt, K, E), each row's mean and rstd (Bt, K, T), and the MLP's hidden pre-activation."""
    lib = load_kernel()
    batch, num_dirs, num_tokens, dim = y.shape
    xbar = y.new_empty(batch, num_dirs, dim)
    mu, rstd = y.new_empty(batch, num_dirs, num_tokens), y.new_empty(batch, num_dirs, num_tokens)

    def make_stats(_):
        a = _attn_args(y, eps)
        a.xbar, a.mu_out, a.rstd_out = xbar.data_ptr(), mu.data_ptr(), rstd.data_ptr()
        return a

    _run(lib.attn_stats, make_stats, batch * num_dirs, 1)
    hidden = F.linear(xbar * norm_w + norm_b, reduce_w, reduce_b)
    gate = torch.sigmoid(F.linear(F.gelu(hidden), select_w, select_b)).contiguous()
    out = y.new_empty(batch, num_tokens, dim)

    def make_merge(_):
        a = _attn_args(y, eps)
        a.gate, a.out = gate.data_ptr(), out.data_ptr()
        return a

    _run(lib.attn_merge, make_merge, batch * num_tokens, MIN_ROWS_PER_TASK)
    return out, gate, xbar, mu, rstd, hidden


@attention_merge_cpu_fwd.register_fake
def _attn_fwd_fake(y, norm_w, norm_b, reduce_w, reduce_b, select_w, select_b, eps):
    batch, num_dirs, num_tokens, dim = y.shape
    return (y.new_empty(batch, num_tokens, dim), y.new_empty(batch, num_dirs, dim), y.new_empty(batch, num_dirs, dim),
            y.new_empty(batch, num_dirs, num_tokens), y.new_empty(batch, num_dirs, num_tokens),
            y.new_empty(batch, num_dirs, reduce_w.shape[0]))


@torch.library.custom_op("localmamba::attention_merge_cpu_bwd", mutates_args=(), device_types="cpu")
def attention_merge_cpu_bwd(dout: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, xbar: torch.Tensor,
                            mu: torch.Tensor, rstd: torch.Tensor, hidden: torch.Tensor, norm_w: torch.Tensor,
                            norm_b: torch.Tensor, reduce_w: torch.Tensor, select_w: torch.Tensor
                            ) -> Tuple[_T, _T, _T, _T, _T, _T, _T]:
    """Backward -> dy, dnorm_w, dnorm_b, dreduce_w, dreduce_b, dselect_w, dselect_b."""
    lib = load_kernel()
    batch, num_dirs, num_tokens, dim = y.shape
    dgate = y.new_empty(batch, num_dirs, dim)

    def make(_):
        a = _attn_args(y, 0.0)
        a.dm, a.gate, a.dgate = dout.data_ptr(), gate.data_ptr(), dgate.data_ptr()
        return a

    _run(lib.attn_gate_grad, make, batch * num_dirs, 1)
    dlogit = (dgate * gate * (1 - gate)).flatten(0, 1)
    act = F.gelu(hidden).flatten(0, 1)
    dselect_w, dselect_b = dlogit.t() @ act, dlogit.sum(0)
    dhidden = torch.ops.aten.gelu_backward(dlogit @ select_w, hidden.flatten(0, 1))
    summary = (xbar * norm_w + norm_b).flatten(0, 1)
    dreduce_w, dreduce_b = dhidden.t() @ summary, dhidden.sum(0)
    dsummary = (dhidden @ reduce_w).view(batch, num_dirs, dim)
    dnorm_w, dnorm_b = (dsummary * xbar).sum((0, 1)), dsummary.sum((0, 1))
    dxbar = (dsummary * norm_w).contiguous()
    dy = torch.empty_like(y)

    def make_input(_):
        a = make(0)
        a.dxbar, a.mu, a.rstd, a.dy = dxbar.data_ptr(), mu.data_ptr(), rstd.data_ptr(), dy.data_ptr()
        return a

    _run(lib.attn_input_grad, make_input, batch * num_dirs, 1)
    return dy, dnorm_w, dnorm_b, dreduce_w, dreduce_b, dselect_w, dselect_b


@attention_merge_cpu_bwd.register_fake
def _attn_bwd_fake(dout, y, gate, xbar, mu, rstd, hidden, norm_w, norm_b, reduce_w, select_w):
    return (y.new_empty(y.shape), norm_w.new_empty(norm_w.shape), norm_w.new_empty(norm_w.shape),
            reduce_w.new_empty(reduce_w.shape), reduce_w.new_empty(reduce_w.shape[0]),
            select_w.new_empty(select_w.shape), select_w.new_empty(select_w.shape[0]))


def _attn_setup(ctx, inputs, output):
    y, norm_w, norm_b, reduce_w, reduce_b, select_w, select_b, eps = inputs
    _, gate, xbar, mu, rstd, hidden = output
    ctx.save_for_backward(y, gate, xbar, mu, rstd, hidden, norm_w, norm_b, reduce_w, select_w)


def _attn_backward(ctx, dout, *unused):
    y, gate, xbar, mu, rstd, hidden, norm_w, norm_b, reduce_w, select_w = ctx.saved_tensors
    grads = attention_merge_cpu_bwd(dout.contiguous(), y, gate, xbar, mu, rstd, hidden, norm_w, norm_b, reduce_w,
                                    select_w)
    return grads + (None,)


attention_merge_cpu_fwd.register_autograd(_attn_backward, setup_context=_attn_setup)


def attention_merge_cpu(y: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                        reduce_weight: torch.Tensor, reduce_bias: torch.Tensor, select_weight: torch.Tensor,
                        select_bias: torch.Tensor, eps: float) -> torch.Tensor:
    """cpu backend of ``attention_merge_fn`` (fp32 compute, output in y's dtype)."""
    with autocast_off(y.device.type):
        out = torch.ops.localmamba.attention_merge_cpu_fwd(
            y.float().contiguous(), *(t.float().contiguous() for t in (norm_weight, norm_bias, reduce_weight,
                                                                        reduce_bias, select_weight, select_bias)),
            eps)[0]
    return out.to(y.dtype)
