"""The ``cpu`` backend of ``causal_conv1d_fn``: the C kernel ``csrc/causal_conv1d.c`` (conv + bias + SiLU fused,
forward and backward).

Wrapped as torch.library custom ops ``localmamba::causal_conv1d_cpu_fwd`` / ``_bwd`` with fake implementations
and autograd, parallel over (batch, channel) rows. Without a working compiler (or with ``LOCALMAMBA_CPU_KERNEL=0``)
the ops compute the same in PyTorch; fp64 inputs use the reference formula (autograd).
"""
import ctypes
from pathlib import Path
from typing import Optional, Tuple

import torch

from localmamba_kernel_runtime import ckernel, task_runner
from localmamba_kernel_runtime.precision import autocast_off

from .backward import register_autograd, weight_grad
from .reference import causal_conv1d_ref

MIN_ROWS_PER_TASK = 64

SOURCES = (Path(__file__).resolve().with_name("csrc") / "causal_conv1d.c",)


class Conv1dArgs(ctypes.Structure):
    """Mirror of the C ``Conv1dArgs`` struct (``csrc/causal_conv1d.c``; checked at load)."""

    _fields_ = ([(name, ctypes.c_int64) for name in ("batch", "dim", "seqlen", "width", "silu")]
                + [(name, ctypes.c_void_p) for name in
                   ("x", "weight", "bias", "out", "dout", "dx", "dweight", "dbias")])


KERNELS = ("causal_conv1d_fwd", "causal_conv1d_bwd")


def load_kernel() -> Optional[ctypes.CDLL]:
    """The compiled conv1d kernel (built on first use), or None when unavailable or disabled."""
    return ckernel.load_library("causal_conv1d", SOURCES, dict.fromkeys(KERNELS, Conv1dArgs))


def _args(x, weight, bias, silu) -> Conv1dArgs:
    return Conv1dArgs(batch=x.shape[0], dim=x.shape[1], seqlen=x.shape[2], width=weight.shape[1], silu=int(silu),
                      x=x.data_ptr(), weight=weight.data_ptr(), bias=None if bias is None else bias.data_ptr())


@torch.library.custom_op("localmamba::causal_conv1d_cpu_fwd", mutates_args=(), device_types="cpu")
def causal_conv1d_cpu_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          silu: bool) -> torch.Tensor:
    """Contiguous fp32 x (B, D, L), weight (D, W), bias (D,) -> out (B, D, L)."""
    lib = load_kernel()
    if lib is None or x.numel() == 0:
        return causal_conv1d_ref(x, weight, bias, "silu" if silu else None)
    out = torch.empty_like(x)

    def make(_: int) -> Conv1dArgs:
        a = _args(x, weight, bias, silu)
        a.out = out.data_ptr()
        return a

    task_runner.run_tasks(lib.causal_conv1d_fwd, make, x.shape[0] * x.shape[1], MIN_ROWS_PER_TASK)
    return out


@causal_conv1d_cpu_fwd.register_fake
def _fwd_fake(x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("localmamba::causal_conv1d_cpu_bwd", mutates_args=(), device_types="cpu")
def causal_conv1d_cpu_bwd(dout: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          silu: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of the forward op -> dx (B, D, L), dweight (D, W), dbias (D,)."""
    lib = load_kernel()
    if lib is None or x.numel() == 0:
        return _bwd_torch(dout, x, weight, bias, silu)
    rows = x.shape[0] * x.shape[1]
    tasks = task_runner.num_tasks(rows, MIN_ROWS_PER_TASK)
    dx = torch.empty_like(x)
    dweight = weight.new_zeros((tasks,) + weight.shape)
    dbias = x.new_zeros(tasks, x.shape[1])

    def make(i: int) -> Conv1dArgs:   # task i adds into its own slices of the weight and bias gradients
        a = _args(x, weight, bias, silu)
        a.dout, a.dx, a.dweight, a.dbias = dout.data_ptr(), dx.data_ptr(), dweight[i].data_ptr(), dbias[i].data_ptr()
        return a

    task_runner.run_tasks(lib.causal_conv1d_bwd, make, rows, MIN_ROWS_PER_TASK, tasks)
    return dx, dweight.sum(0), dbias.sum(0)


def _bwd_torch(dout, x, weight, bias, silu):
    """The backward in PyTorch: gradient of the pre-activation, then shifted sums."""
    seqlen, width = x.shape[2], weight.shape[1]
    grad = dout
    if silu:
        pre = causal_conv1d_ref(x, weight, bias, None)
        s = torch.sigmoid(pre)
        grad = dout * s * (1 + pre * (1 - s))
    padded = torch.nn.functional.pad(grad, (0, width - 1))
    dx = sum(weight[:, k, None] * padded[..., width - 1 - k:width - 1 - k + seqlen] for k in range(width))
    return dx, weight_grad(grad, x, width), grad.sum(dim=(0, 2))


@causal_conv1d_cpu_bwd.register_fake
def _bwd_fake(dout, x, weight, bias, silu):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), x.new_empty(x.shape[1])


register_autograd(causal_conv1d_cpu_fwd, causal_conv1d_cpu_bwd, cast_param_grads=False)


def causal_conv1d_cpu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      activation: Optional[str]) -> torch.Tensor:
    """cpu backend of ``causal_conv1d_fn`` (validated inputs; weight (D, W)); fp32 compute, output in x's dtype."""
    if x.dtype == torch.float64 or weight.dtype == torch.float64:
        return causal_conv1d_ref(x, weight, bias, activation)
    with autocast_off(x.device.type):
        out = torch.ops.localmamba.causal_conv1d_cpu_fwd(
            x.float().contiguous(), weight.float().contiguous(), None if bias is None else bias.float().contiguous(),
            activation is not None)
    return out.to(x.dtype)
