"""The ``cpu`` backend of ``selective_scan_fn``: torch.library custom ops around the C kernel ``csrc/selective_scan.c``
(PyTorch fallback).

``selective_scan_cpu`` prepares the kernel layout with differentiable torch ops (fp32 cast, A padded to Np, B/C to
(Bt, G, L, Np)), then calls ``torch.ops.localmamba.selective_scan_cpu_fwd`` whose backward is the custom op
``selective_scan_cpu_bwd``. Both have fake implementations, so ``torch.compile`` traces through them.
The kernel parallelises over (batch, channel) pairs on ``torch.get_num_threads()`` threads
(``task_runner.run_parallel``).
"""
import ctypes
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from localmamba_kernel_runtime import ckernel, task_runner
from localmamba_kernel_runtime.derivatives import refuse_second_derivative
from localmamba_kernel_runtime.kernel_args import data_ptr
from localmamba_kernel_runtime.precision import autocast_off, compute_dtype

from . import torch_scan

SOURCES = (Path(__file__).resolve().with_name("csrc") / "selective_scan.c",)
MAX_STATE = 256
MIN_PAIRS_PER_TASK = 16


class SelectiveScanArgs(ctypes.Structure):
    """Mirror of the C ``SelectiveScanArgs`` struct (``csrc/selective_scan.c``; checked at load)."""

    _fields_ = ([(name, ctypes.c_int64) for name in
                 ("batch", "dim", "seqlen", "nstate", "groups_b", "groups_c", "softplus")]
                + [(name, ctypes.c_void_p) for name in
                   ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "out", "last_state", "dout", "dlast", "du",
                    "ddelta", "dz", "dA", "dB", "dC", "dD", "ddelta_bias")])


def load_kernel() -> Optional[ctypes.CDLL]:
    """The compiled scan kernel (built on first use), or None when unavailable or disabled."""
    return ckernel.load_library("selective_scan", SOURCES,
                                {"selective_scan_fwd": SelectiveScanArgs, "selective_scan_bwd": SelectiveScanArgs})


@ckernel.constant_under_compile  # under torch.compile: evaluated (and the kernel loaded) at trace time
def state_padding() -> int:
    """The multiple the state size is zero padded to: the loaded kernel's vector width (8 without a kernel)."""
    lib = load_kernel()
    return 8 if lib is None else ckernel.vector_width(lib)


def _groups(M: torch.Tensor) -> int:
    return 0 if M.dim() == 2 else M.shape[1]


def _base_args(u, delta, A, B, C, D, z, delta_bias, softplus) -> SelectiveScanArgs:
    return SelectiveScanArgs(batch=u.shape[0], dim=u.shape[1], seqlen=u.shape[2], nstate=A.shape[1],
                             groups_b=_groups(B), groups_c=_groups(C), softplus=int(softplus), u=u.data_ptr(),
                             delta=delta.data_ptr(), A=A.data_ptr(), B=B.data_ptr(), C=C.data_ptr(),
                             D=data_ptr(D), z=data_ptr(z), delta_bias=data_ptr(delta_bias))


def _use_kernel(u: torch.Tensor, A: torch.Tensor):
    if u.dtype != torch.float32 or A.shape[1] > MAX_STATE or u.numel() == 0:
        return None
    lib = load_kernel()
    return lib if lib is not None and A.shape[1] % ckernel.vector_width(lib) == 0 else None


@torch.library.custom_op("localmamba::selective_scan_cpu_fwd", mutates_args=(), device_types="cpu")
def selective_scan_cpu_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                           delta_softplus: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel-layout forward (contiguous fp32/fp64; A (Dm, Np)) -> out (Bt, Dm, L), last state (Bt, Dm, Np)."""
    lib = _use_kernel(u, A)
    if lib is None:
        return torch_scan.scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    out = torch.empty_like(u)
    last = u.new_empty(u.shape[0], u.shape[1], A.shape[1])

    def make(_: int) -> SelectiveScanArgs:
        a = _base_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        a.out, a.last_state = out.data_ptr(), last.data_ptr()
        return a

    task_runner.run_tasks(lib.selective_scan_fwd, make, u.shape[0] * u.shape[1], MIN_PAIRS_PER_TASK)
    return out, last


@selective_scan_cpu_fwd.register_fake
def _fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return u.new_empty(u.shape), u.new_empty(u.shape[0], u.shape[1], A.shape[1])


@torch.library.custom_op("localmamba::selective_scan_cpu_bwd", mutates_args=(), device_types="cpu")
def selective_scan_cpu_bwd(dout: torch.Tensor, dlast: Optional[torch.Tensor], u: torch.Tensor, delta: torch.Tensor,
                           A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
                           z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                      torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel-layout backward -> du, ddelta, dA, dB, dC, dD (Dm,), dz (empty without z), ddelta_bias (Dm,)."""
    lib = _use_kernel(u, A)
    if lib is None:
        return torch_scan.scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    pairs = u.shape[0] * u.shape[1]
    tasks = task_runner.num_tasks(pairs, MIN_PAIRS_PER_TASK)
    du, ddelta = torch.empty_like(u), torch.empty_like(u)
    dz = torch.empty_like(u) if z is not None else u.new_zeros(0)
    dA = A.new_zeros((tasks,) + A.shape)
    dB = B.new_zeros((tasks,) + B.shape)
    dC = C.new_zeros((tasks,) + C.shape)
    dD = u.new_zeros(tasks, u.shape[1])
    dbias = u.new_zeros(tasks, u.shape[1])

    def make(i: int) -> SelectiveScanArgs:   # task i adds into its own slices of the parameter gradients
        a = _base_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        a.dout, a.dlast = dout.data_ptr(), data_ptr(dlast)
        a.du, a.ddelta, a.dz = du.data_ptr(), ddelta.data_ptr(), data_ptr(dz if z is not None else None)
        a.dA, a.dB, a.dC, a.dD, a.ddelta_bias = (dA[i].data_ptr(), dB[i].data_ptr(), dC[i].data_ptr(),
                                                 dD[i].data_ptr(), dbias[i].data_ptr())
        return a

    task_runner.run_tasks(lib.selective_scan_bwd, make, pairs, MIN_PAIRS_PER_TASK, tasks)
    return du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0), dD.sum(0), dz, dbias.sum(0)


@selective_scan_cpu_bwd.register_fake
def _bwd_fake(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    dim = u.shape[1]
    dz = u.new_empty(u.shape) if z is not None else u.new_empty(0)
    return (u.new_empty(u.shape), u.new_empty(u.shape), A.new_empty(A.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), u.new_empty(dim), dz, u.new_empty(dim))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.set_materialize_grads(False)  # an unused last state gets no zero gradient
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dout, dlast):
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    dout = torch.zeros_like(u) if dout is None else dout  # only the last state reached the loss
    du, ddelta, dA, dB, dC, dD, dz, dbias = selective_scan_cpu_bwd(
        dout.contiguous(), None if dlast is None else dlast.contiguous(), u, delta, A, B, C, D, z, delta_bias,
        ctx.delta_softplus)
    return (du, ddelta, dA, dB, dC, None if D is None else dD, None if z is None else dz,
            None if delta_bias is None else dbias, None)


selective_scan_cpu_fwd.register_autograd(_backward, setup_context=_setup_context)
refuse_second_derivative(selective_scan_cpu_bwd)


def _kernel_layout_bc(M: torch.Tensor, dtype: torch.dtype, padded: int) -> torch.Tensor:
    """(Dm, N) -> (Dm, Np); (Bt, N, L) or (Bt, G, N, L) -> (Bt, G, L, Np); zero padded, contiguous."""
    M = M.to(dtype)
    if M.dim() == 3:
        M = M.unsqueeze(1)
    if M.dim() == 4:
        M = M.transpose(2, 3)
    return F.pad(M, (0, padded - M.shape[-1])).contiguous()


def selective_scan_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                       delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                       return_last_state: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """cpu backend of ``selective_scan_fn`` (same arguments and result; inputs already validated)."""
    dtype_in = u.dtype
    dstate = A.shape[1]
    lanes = state_padding()
    padded = -(-dstate // lanes) * lanes
    with autocast_off(u.device.type):
        dtype = compute_dtype(u)

        def prep(t):
            return None if t is None else t.to(dtype).contiguous()

        out, last = torch.ops.localmamba.selective_scan_cpu_fwd(
            prep(u), prep(delta), F.pad(A.to(dtype), (0, padded - dstate)).contiguous(),
            _kernel_layout_bc(B, dtype, padded), _kernel_layout_bc(C, dtype, padded), prep(D), prep(z),
            prep(delta_bias), delta_softplus)
    out = out.to(dtype_in)
    return (out, last[..., :dstate]) if return_last_state else out
