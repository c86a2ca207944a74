"""The ``cpu`` backend of ``attention_merge_fn``: the C kernels ``csrc/attention_merge.c`` on token-major rows.

The token mean of the LayerNorm-ed outputs and the gated sum over directions run in C, the small gate MLP in
PyTorch (``channel_gate``); the backward is fused likewise. Both custom ops have fake implementations, so
``torch.compile`` traces through them.
"""
import ctypes
from pathlib import Path
from typing import Optional, Tuple

import torch

from localmamba_kernel_runtime import ckernel, task_runner
from localmamba_kernel_runtime.derivatives import refuse_second_derivative
from localmamba_kernel_runtime.precision import autocast_off

from ..channel_gate import gate_backward, gate_forward

SOURCES = (Path(__file__).resolve().with_name("csrc") / "attention_merge.c",)
MIN_ROWS_PER_TASK = 64

_T = torch.Tensor


class AttentionMergeArgs(ctypes.Structure):
    """Mirror of the C ``AttentionMergeArgs`` struct (``csrc/attention_merge.c``; checked at load)."""

    _fields_ = ([(n, ctypes.c_int64) for n in ("batch", "ndir", "ntok", "dim")] + [("eps", ctypes.c_float)]
                + [(n, ctypes.c_void_p) for n in ("y", "gate", "dm", "dxbar", "mu", "rstd", "out", "xbar", "mu_out",
                                                  "rstd_out", "dy", "dgate")])


KERNELS = ("attention_stats", "attention_weighted_sum", "attention_gate_grad", "attention_input_grad")


def load_kernel() -> Optional[ctypes.CDLL]:
    """The compiled channel-attention kernels (built on first use), or None when unavailable or disabled."""
    return ckernel.load_library("attention_merge", SOURCES, dict.fromkeys(KERNELS, AttentionMergeArgs))


@ckernel.constant_under_compile  # under torch.compile: evaluated (and the kernels loaded) at trace time
def kernel_available() -> bool:
    """True when the C kernels are built and enabled."""
    return load_kernel() is not None


def _attention_args(y, eps) -> AttentionMergeArgs:
    batch, num_dirs, num_tokens, dim = y.shape
    return AttentionMergeArgs(batch=batch, ndir=num_dirs, ntok=num_tokens, dim=dim, eps=eps, y=y.data_ptr())


def merge_forward(y: torch.Tensor, norm_w: torch.Tensor, norm_b: torch.Tensor, reduce_w: torch.Tensor,
                  reduce_b: torch.Tensor, select_w: torch.Tensor, select_b: torch.Tensor,
                  eps: float) -> Tuple[_T, _T, _T, _T, _T, _T]:
    """The forward of ``attention_merge_cpu_fwd`` as a plain function (see there)."""
    lib = load_kernel()
    batch, num_dirs, num_tokens, dim = y.shape
    xbar = y.new_empty(batch, num_dirs, dim)
    mu, rstd = y.new_empty(batch, num_dirs, num_tokens), y.new_empty(batch, num_dirs, num_tokens)

    def make_stats(_):
        a = _attention_args(y, eps)
        a.xbar, a.mu_out, a.rstd_out = xbar.data_ptr(), mu.data_ptr(), rstd.data_ptr()
        return a

    task_runner.run_tasks(lib.attention_stats, make_stats, batch * num_dirs, 1)
    gate, hidden = gate_forward(xbar, norm_w, norm_b, reduce_w, reduce_b, select_w, select_b)
    out = y.new_empty(batch, num_tokens, dim)

    def make_merge(_):
        a = _attention_args(y, eps)
        a.gate, a.out = gate.data_ptr(), out.data_ptr()
        return a

    task_runner.run_tasks(lib.attention_weighted_sum, make_merge, batch * num_tokens, MIN_ROWS_PER_TASK)
    return out, gate, xbar, mu, rstd, hidden


@torch.library.custom_op("localmamba::attention_merge_cpu_fwd", mutates_args=(), device_types="cpu")
def attention_merge_cpu_fwd(y: torch.Tensor, norm_w: torch.Tensor, norm_b: torch.Tensor, reduce_w: torch.Tensor,
                            reduce_b: torch.Tensor, select_w: torch.Tensor, select_b: torch.Tensor,
                            eps: float) -> Tuple[_T, _T, _T, _T, _T, _T]:
    """Contiguous fp32 y (Bt, K, T, E) -> merged (Bt, T, E), and for the backward: gate (Bt, K, E), the normalised
    token means xbar (Bt, K, E), each row's mean and rstd (Bt, K, T), and the MLP's hidden pre-activation."""
    return merge_forward(y, norm_w, norm_b, reduce_w, reduce_b, select_w, select_b, eps)


@attention_merge_cpu_fwd.register_fake
def _attention_fwd_fake(y, norm_w, norm_b, reduce_w, reduce_b, select_w, select_b, eps):
    batch, num_dirs, num_tokens, dim = y.shape
    return (y.new_empty(batch, num_tokens, dim), y.new_empty(batch, num_dirs, dim), y.new_empty(batch, num_dirs, dim),
            y.new_empty(batch, num_dirs, num_tokens), y.new_empty(batch, num_dirs, num_tokens),
            y.new_empty(batch, num_dirs, reduce_w.shape[0]))


def merge_backward(dout: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, xbar: torch.Tensor, mu: torch.Tensor,
                   rstd: torch.Tensor, hidden: torch.Tensor, norm_w: torch.Tensor, norm_b: torch.Tensor,
                   reduce_w: torch.Tensor, select_w: torch.Tensor,
                   dy: torch.Tensor) -> Tuple[_T, _T, _T, _T, _T, _T]:
    """The backward of ``attention_merge_cpu_bwd`` as a plain function writing the input gradient to ``dy`` (y's
    shape); returns the parameters' gradients (see there)."""
    lib = load_kernel()
    batch, num_dirs, num_tokens, dim = y.shape
    dgate = y.new_empty(batch, num_dirs, dim)

    def make(_):
        a = _attention_args(y, 0.0)
        a.dm, a.gate, a.dgate = dout.data_ptr(), gate.data_ptr(), dgate.data_ptr()
        return a

    task_runner.run_tasks(lib.attention_gate_grad, make, batch * num_dirs, 1)
    with autocast_off(y.device.type):   # a backward called under autocast: the gate MLP's gradients stay fp32
        dxbar, *param_grads = gate_backward(dgate, gate, xbar, hidden, norm_w, norm_b, reduce_w, select_w)

    def make_input(_):
        a = make(0)
        a.dxbar, a.mu, a.rstd, a.dy = dxbar.data_ptr(), mu.data_ptr(), rstd.data_ptr(), dy.data_ptr()
        return a

    task_runner.run_tasks(lib.attention_input_grad, make_input, batch * num_dirs, 1)
    return tuple(param_grads)


@torch.library.custom_op("localmamba::attention_merge_cpu_bwd", mutates_args=(), device_types="cpu")
def attention_merge_cpu_bwd(dout: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, xbar: torch.Tensor,
                            mu: torch.Tensor, rstd: torch.Tensor, hidden: torch.Tensor, norm_w: torch.Tensor,
                            norm_b: torch.Tensor, reduce_w: torch.Tensor, select_w: torch.Tensor
                            ) -> Tuple[_T, _T, _T, _T, _T, _T, _T]:
    """Backward -> dy, dnorm_w, dnorm_b, dreduce_w, dreduce_b, dselect_w, dselect_b."""
    dy = torch.empty_like(y)
    return (dy,) + merge_backward(dout, y, gate, xbar, mu, rstd, hidden, norm_w, norm_b, reduce_w, select_w, dy)


@attention_merge_cpu_bwd.register_fake
def _attention_bwd_fake(dout, y, gate, xbar, mu, rstd, hidden, norm_w, norm_b, reduce_w, select_w):
    return (y.new_empty(y.shape), norm_w.new_empty(norm_w.shape), norm_w.new_empty(norm_w.shape),
            reduce_w.new_empty(reduce_w.shape), reduce_w.new_empty(reduce_w.shape[0]),
            select_w.new_empty(select_w.shape), select_w.new_empty(select_w.shape[0]))


def _attention_setup(ctx, inputs, output):
    y, norm_w, norm_b, reduce_w, reduce_b, select_w, select_b, eps = inputs
    _, gate, xbar, mu, rstd, hidden = output
    ctx.save_for_backward(y, gate, xbar, mu, rstd, hidden, norm_w, norm_b, reduce_w, select_w)
    ctx.set_materialize_grads(False)  # no zero gradients for the outputs kept for the backward


def _attention_backward(ctx, dout, *unused):
    y, gate, xbar, mu, rstd, hidden, norm_w, norm_b, reduce_w, select_w = ctx.saved_tensors
    grads = attention_merge_cpu_bwd(dout.contiguous(), y, gate, xbar, mu, rstd, hidden, norm_w, norm_b, reduce_w,
                                    select_w)
    return grads + (None,)


attention_merge_cpu_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)
refuse_second_derivative(attention_merge_cpu_bwd)


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
