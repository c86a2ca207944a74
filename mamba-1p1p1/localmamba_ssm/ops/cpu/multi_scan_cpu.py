"""The ``cpu`` backend of ``multi_scan_inner_fn``: the C kernels ``csrc/multi_scan.c``.

One custom op ``localmamba::multi_scan_cpu_fwd`` scans every direction's sequence as read through the index table
and writes the gated outputs in token order. Without a conv (LocalVMamba) it reads the token rows in place, and
x_proj runs once on the token rows for all directions (one matmul: the projection commutes with the reordering);
with a conv (LocalVim) a gather pass writes each direction's conv + SiLU output first, and x_proj is one bmm over the
directions. dt's low-rank projection, softplus, D and the SiLU(z) gate are computed in the scan. Its backward op
``multi_scan_cpu_bwd`` writes the gradient of the token rows (x and gate halves) and the parameter gradients. Both
have fake implementations, so ``torch.compile`` traces through them. See ``csrc/multi_scan.c`` for the layouts.
"""
import ctypes
import math
import threading
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from localmamba_kernel_runtime import ckernel, task_runner
from localmamba_kernel_runtime.derivatives import refuse_second_derivative
from localmamba_kernel_runtime.kernel_args import data_ptr
from localmamba_kernel_runtime.precision import autocast_off

from ..checks import check_index_table_once

SOURCES = (Path(__file__).resolve().with_name("csrc") / "multi_scan.c",)
MAX_RANK = 256

_T = torch.Tensor


class MultiScanArgs(ctypes.Structure):
    """Mirror of the C ``MultiScanArgs`` struct (``csrc/multi_scan.c``; checked at load)."""

    _fields_ = ([(n, ctypes.c_int64) for n in ("batch", "ndir", "seqlen", "ntok", "dim", "nstate", "rank", "width",
                                               "silu", "gate", "src_stride", "pdim", "token_major")]
                + [(n, ctypes.c_void_p) for n in ("index", "src", "conv_w", "conv_b", "u", "xdbl", "dt_w", "dt_b",
                                                  "A", "A2", "D", "y", "dy", "du", "dxdbl", "dsrc", "dconv_w",
                                                  "dconv_b", "ddt_w", "ddt_b", "dA", "dD", "ckpt")])


KERNELS = ("multi_scan_gather_fwd", "multi_scan_gather_bwd", "multi_scan_recurrence_fwd", "multi_scan_recurrence_bwd")


def load_kernel() -> Optional[ctypes.CDLL]:
    """The compiled multi-direction kernels (built on first use), or None when unavailable or disabled."""
    lib = ckernel.load_library("multi_scan", SOURCES, dict.fromkeys(KERNELS, MultiScanArgs))
    if lib is not None:
        lib.multi_scan_checkpoint_floats.restype = ctypes.c_int64
        lib.multi_scan_checkpoint_floats.argtypes = [ctypes.c_int64] * 3
    return lib


def _checkpoint_shape(lib, num_dirs: int, batch: int, length: int, inner: int, state: int) -> Tuple[int, int, int]:
    """(K, Bt, floats): the scan's state at every chunk start, per (direction, batch) pair."""
    return num_dirs, batch, lib.multi_scan_checkpoint_floats(length, inner, state)


@ckernel.constant_under_compile  # under torch.compile: evaluated (and the kernels loaded) at trace time
def kernel_available() -> bool:
    """True when the C kernels are built and enabled."""
    return load_kernel() is not None


EXP2_8_SCALE = 8 / math.log(2)  # the kernel's exp2_8 takes exponents pre-scaled by 8 log2(e)


def _multi_scan_args(src, index, conv_w, conv_b, params, dt_b, D, gate, inner, rank, state, u,
                     xdbl=None) -> MultiScanArgs:
    num_dirs, length = index.shape
    dt_t, A_t, A2_t = params
    return MultiScanArgs(batch=src.shape[0], ndir=num_dirs, seqlen=length, ntok=src.shape[1], dim=inner,
                         nstate=state, rank=rank, width=0 if conv_w is None else conv_w.shape[1],
                         silu=int(conv_w is not None), gate=int(gate), src_stride=src.shape[2], pdim=A_t.shape[2],
                         token_major=int(conv_w is None), index=index.data_ptr(), src=src.data_ptr(),
                         conv_w=data_ptr(conv_w), conv_b=data_ptr(conv_b),
                         u=None if conv_w is None else u.data_ptr(), xdbl=data_ptr(xdbl), dt_w=dt_t.data_ptr(),
                         dt_b=dt_b.data_ptr(), A=A_t.data_ptr(), A2=A2_t.data_ptr(), D=data_ptr(D))


def _channel_major(conv_w, dt_w, A_log, lanes: int):
    """Per-channel vectors for the kernel: conv (K, W, E), and (dt_w (K, R, P), A = -exp(A_log) (K, N, P),
    A * EXP2_8_SCALE (K, N, P)) with the channels zero-padded to P, a multiple of the kernel's vector width
    ``lanes`` (whole-vector loads)."""
    conv_t = None if conv_w is None else conv_w.transpose(1, 2).contiguous()
    inner = A_log.shape[1]
    pad = (-inner) % lanes
    dt_t = F.pad(dt_w.transpose(1, 2), (0, pad)).contiguous()
    A_t = F.pad((-torch.exp(A_log)).transpose(1, 2), (0, pad)).contiguous()
    return conv_t, (dt_t, A_t, A_t * EXP2_8_SCALE)


_SCRATCH = threading.local()
SCRATCH_MAX_BYTES = 256 << 20


def scratch(name: str, *shape: int) -> torch.Tensor:
    """An fp32 buffer of ``shape`` for use within one call, from the per-thread buffer ``name``, kept and reused
    across calls. A fresh buffer of several MB is page-faulted in on every call (glibc hands freed big blocks back to
    the OS): at LocalVim-T batch 8 the sequences' buffer alone took 47k page faults per forward, more time than the
    gather that fills it. A buffer over SCRATCH_MAX_BYTES is not kept (a fresh one each call), which bounds the
    memory held between calls."""
    numel = math.prod(shape)
    if numel * 4 > SCRATCH_MAX_BYTES:
        return torch.empty(shape, dtype=torch.float32)
    buffer = getattr(_SCRATCH, name, None)
    if buffer is None or buffer.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: a backward outside inference mode updates it in place
            buffer = torch.empty(numel, dtype=torch.float32)
        setattr(_SCRATCH, name, buffer)
    return buffer[:numel].view(shape)


def _token_x(src: torch.Tensor, inner: int) -> torch.Tensor:
    """The x channels of the token rows (Bt, T, C) as a (Bt * T, E) view (row stride C)."""
    return src[:, :, :inner].view(-1, inner)


def scan_forward(src: torch.Tensor, index: torch.Tensor, conv_w: Optional[torch.Tensor],
                 conv_b: Optional[torch.Tensor], x_proj_w: torch.Tensor, dt_w: torch.Tensor, dt_b: torch.Tensor,
                 A_log: torch.Tensor, D: Optional[torch.Tensor], gate: bool, save_states: bool,
                 y: torch.Tensor) -> Tuple[_T, _T, _T]:
    """The forward of ``multi_scan_cpu_fwd`` as a plain function writing its output to ``y`` (Bt, K, T, E);
    returns u, xdbl and the chunk states (see there)."""
    lib = load_kernel()
    check_index_table_once(index, src.shape[1])   # the kernels read every row it lists
    batch, num_tokens = src.shape[:2]
    num_dirs, length = index.shape
    inner, width, rank, state = x_proj_w.shape[2], x_proj_w.shape[1], dt_w.shape[2], A_log.shape[2]
    conv_t, params = _channel_major(conv_w, dt_w, A_log, ckernel.vector_width(lib))
    ckpt = src.new_empty(_checkpoint_shape(lib, num_dirs, batch, length, inner, state) if save_states else 0)
    if conv_w is None:
        u = src.new_empty(0)
        xdbl = torch.mm(_token_x(src, inner), x_proj_w.reshape(-1, inner).t()).view(batch, num_tokens, num_dirs,
                                                                                    width)
    else:
        shape = (num_dirs, batch, length, inner)
        u = src.new_empty(shape) if save_states else scratch("sequences", *shape)
        gather = _multi_scan_args(src, index, conv_t, conv_b, params, dt_b, D, gate, inner, rank, state, u)
        task_runner.run_tasks(lib.multi_scan_gather_fwd, lambda _: gather, num_dirs * batch, 1)
        xdbl = torch.bmm(u.view(num_dirs, batch * length, inner), x_proj_w.transpose(1, 2))
        xdbl = xdbl.view(num_dirs, batch, length, width)

    def make(_):
        a = _multi_scan_args(src, index, conv_t, conv_b, params, dt_b, D, gate, inner, rank, state, u, xdbl)
        a.y, a.ckpt = y.data_ptr(), ckpt.data_ptr() if save_states else None
        return a

    task_runner.run_tasks(lib.multi_scan_recurrence_fwd, make, num_dirs * batch, 1)
    return u if save_states else src.new_empty(0), xdbl, ckpt


@torch.library.custom_op("localmamba::multi_scan_cpu_fwd", mutates_args=(), device_types="cpu")
def multi_scan_cpu_fwd(src: torch.Tensor, index: torch.Tensor, conv_w: Optional[torch.Tensor],
                       conv_b: Optional[torch.Tensor], x_proj_w: torch.Tensor, dt_w: torch.Tensor, dt_b: torch.Tensor,
                       A_log: torch.Tensor, D: Optional[torch.Tensor], gate: bool,
                       save_states: bool) -> Tuple[_T, _T, _T, _T]:
    """Contiguous fp32 inputs (see ``multi_scan_inner_cpu``) -> y (Bt, K, T, E), and for the backward u and xdbl
    (with a conv: (K, Bt, L, E), empty unless ``save_states``, and (K, Bt, L, R + 2N); without: empty and
    (Bt, T, K, R + 2N)) and, when ``save_states``, the scan's state at every chunk start (else empty)."""
    y = src.new_empty(src.shape[0], index.shape[0], src.shape[1], x_proj_w.shape[2])
    return (y,) + scan_forward(src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, gate, save_states, y)


@multi_scan_cpu_fwd.register_fake
def _multi_scan_fwd_fake(src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, gate, save_states):
    batch, num_tokens = src.shape[:2]
    num_dirs, length = index.shape
    inner, width, state = x_proj_w.shape[2], x_proj_w.shape[1], A_log.shape[2]
    ckpt_shape = _checkpoint_shape(load_kernel(), num_dirs, batch, length, inner, state) if save_states else 0
    if conv_w is None:
        u, xdbl = src.new_empty(0), src.new_empty(batch, num_tokens, num_dirs, width)
    else:
        u = src.new_empty((num_dirs, batch, length, inner) if save_states else 0)
        xdbl = src.new_empty(num_dirs, batch, length, width)
    return src.new_empty(batch, num_dirs, num_tokens, inner), u, xdbl, src.new_empty(ckpt_shape)


def scan_backward(dy: torch.Tensor, src: torch.Tensor, index: torch.Tensor, conv_w: Optional[torch.Tensor],
                  conv_b: Optional[torch.Tensor], x_proj_w: torch.Tensor, dt_w: torch.Tensor, dt_b: torch.Tensor,
                  A_log: torch.Tensor, D: Optional[torch.Tensor], gate: bool, u: torch.Tensor, xdbl: torch.Tensor,
                  ckpt: torch.Tensor) -> Tuple[_T, _T, _T, _T, _T, _T, _T, _T]:
    """The backward of ``multi_scan_cpu_bwd`` as a plain function (see there)."""
    lib = load_kernel()
    batch, num_tokens = src.shape[:2]
    num_dirs, length = index.shape
    inner, width, rank, state = x_proj_w.shape[2], x_proj_w.shape[1], dt_w.shape[2], A_log.shape[2]
    conv_t, params = _channel_major(conv_w, dt_w, A_log, ckernel.vector_width(lib))
    used = inner * (2 if gate else 1)
    dsrc = torch.zeros_like(src) if src.shape[2] > used else torch.empty_like(src)
    du, dxdbl = scratch("sequences", *u.shape), torch.empty_like(xdbl)
    tasks = task_runner.num_tasks(batch, 1)
    dA = src.new_zeros(tasks, num_dirs, state, inner)
    ddt_w = src.new_zeros(tasks, num_dirs, rank, inner)
    ddt_b = dt_b.new_zeros((tasks,) + dt_b.shape)
    dD = dt_b.new_zeros((tasks,) + dt_b.shape)
    dconv_w = None if conv_t is None else conv_t.new_zeros((tasks,) + conv_t.shape)
    dconv_b = None if conv_b is None else conv_b.new_zeros((tasks,) + conv_b.shape)

    def make(i):
        a = _multi_scan_args(src, index, conv_t, conv_b, params, dt_b, D, gate, inner, rank, state, u, xdbl)
        a.dy, a.du, a.dxdbl, a.dsrc = dy.data_ptr(), du.data_ptr(), dxdbl.data_ptr(), dsrc.data_ptr()
        a.dA, a.ddt_w, a.ddt_b = dA[i].data_ptr(), ddt_w[i].data_ptr(), ddt_b[i].data_ptr()
        a.dD = None if D is None else dD[i].data_ptr()
        a.dconv_w = None if dconv_w is None else dconv_w[i].data_ptr()
        a.dconv_b = None if dconv_b is None else dconv_b[i].data_ptr()
        a.ckpt = ckpt.data_ptr() if ckpt.numel() else None
        return a

    task_runner.run_tasks(lib.multi_scan_recurrence_bwd, make, batch, 1, tasks)
    with autocast_off(src.device.type):   # a backward called under autocast: the projection's gradients stay fp32
        if conv_w is None:
            flat_dxdbl, flat_w = dxdbl.view(batch * num_tokens, num_dirs * width), x_proj_w.reshape(-1, inner)
            dx_proj_w = torch.mm(flat_dxdbl.t(), _token_x(src, inner)).view_as(x_proj_w)
            _token_x(dsrc, inner).addmm_(flat_dxdbl, flat_w)
        else:
            flat_dxdbl = dxdbl.view(num_dirs, batch * length, width)
            dx_proj_w = torch.bmm(flat_dxdbl.transpose(1, 2), u.view(num_dirs, batch * length, inner))
            du.view(num_dirs, batch * length, inner).baddbmm_(flat_dxdbl, x_proj_w)
            task_runner.run_tasks(lib.multi_scan_gather_bwd, make, batch, 1, tasks)
    A = -torch.exp(A_log)
    return (dsrc,
            src.new_zeros(0) if dconv_w is None else dconv_w.sum(0).transpose(1, 2).contiguous(),
            src.new_zeros(0) if dconv_b is None else dconv_b.sum(0),
            dx_proj_w, ddt_w.sum(0).transpose(1, 2).contiguous(), ddt_b.sum(0),
            (dA.sum(0).transpose(1, 2) * A).contiguous(), src.new_zeros(0) if D is None else dD.sum(0))


@torch.library.custom_op("localmamba::multi_scan_cpu_bwd", mutates_args=(), device_types="cpu")
def multi_scan_cpu_bwd(dy: torch.Tensor, src: torch.Tensor, index: torch.Tensor, conv_w: Optional[torch.Tensor],
                       conv_b: Optional[torch.Tensor], x_proj_w: torch.Tensor, dt_w: torch.Tensor,
                       dt_b: torch.Tensor, A_log: torch.Tensor, D: Optional[torch.Tensor], gate: bool,
                       u: torch.Tensor, xdbl: torch.Tensor,
                       ckpt: torch.Tensor) -> Tuple[_T, _T, _T, _T, _T, _T, _T, _T]:
    """Backward (``ckpt``: the forward's chunk-start states, or empty) -> dsrc, dconv_w, dconv_b, dx_proj_w, ddt_w,
    ddt_b, dA_log, dD (empty where the input is None)."""
    return scan_backward(dy, src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, gate, u, xdbl, ckpt)


@multi_scan_cpu_bwd.register_fake
def _multi_scan_bwd_fake(dy, src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, gate, u, xdbl, ckpt):
    def like(t):
        return src.new_empty(0) if t is None else t.new_empty(t.shape)

    return (like(src), like(conv_w), like(conv_b), like(x_proj_w), like(dt_w), like(dt_b), like(A_log), like(D))


def _multi_scan_setup(ctx, inputs, output):
    src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, gate, _ = inputs
    _, u, xdbl, ckpt = output
    ctx.save_for_backward(src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, u, xdbl, ckpt)
    ctx.set_materialize_grads(False)  # no zero gradients for u, xdbl and ckpt (the last as big as y)
    ctx.gate = gate


def _multi_scan_backward(ctx, dy, du_unused, dxdbl_unused, dckpt_unused):
    src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, u, xdbl, ckpt = ctx.saved_tensors
    grads = multi_scan_cpu_bwd(dy.contiguous(), src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, ctx.gate,
                               u, xdbl, ckpt)
    dsrc, dconv_w, dconv_b, dx_proj_w, ddt_w, ddt_b, dA_log, dD = grads
    return (dsrc, None, None if conv_w is None else dconv_w, None if conv_b is None else dconv_b, dx_proj_w, ddt_w,
            ddt_b, dA_log, None if D is None else dD, None, None)


multi_scan_cpu_fwd.register_autograd(_multi_scan_backward, setup_context=_multi_scan_setup)
refuse_second_derivative(multi_scan_cpu_bwd)


def kernel_inputs(tokens: torch.Tensor, index: torch.Tensor, x_proj_weight: torch.Tensor,
                  dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                  D: Optional[torch.Tensor], conv_weight: Optional[torch.Tensor],
                  conv_bias: Optional[torch.Tensor]) -> tuple:
    """``multi_scan_inner_fn``'s tensors as the kernels take them: contiguous, fp32, the conv weight (K, E, W)."""

    def f32(t):
        return None if t is None else t.float().contiguous()

    return (f32(tokens), index.contiguous(), None if conv_weight is None else f32(conv_weight.flatten(2)),
            f32(conv_bias), f32(x_proj_weight), f32(dt_proj_weight), f32(dt_proj_bias), f32(A_log), f32(D))


def needs_gradient(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether autograd will want gradients of any of ``tensors`` (None entries ignored)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def multi_scan_inner_cpu(tokens: torch.Tensor, index: torch.Tensor, x_proj_weight: torch.Tensor,
                         dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                         D: Optional[torch.Tensor], conv_weight: Optional[torch.Tensor],
                         conv_bias: Optional[torch.Tensor], gate: bool) -> torch.Tensor:
    """cpu backend of ``multi_scan_inner_fn`` (same arguments; fp32 compute, output in the tokens' dtype)."""
    save_states = needs_gradient(tokens, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, conv_weight, conv_bias)
    with autocast_off(tokens.device.type):
        y, _, _, _ = torch.ops.localmamba.multi_scan_cpu_fwd(
            *kernel_inputs(tokens, index, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, conv_weight,
                           conv_bias), gate, save_states)
    return y.to(tokens.dtype)
