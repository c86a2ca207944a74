"""The ``cpu`` backend of ``selective_state_update``: the C kernel ``csrc/state_update.c`` (one pass over the state,
parallel over (batch, channel) rows). Inference only (no autograd). Called directly, not as a torch.library custom
op: a step is microseconds, and a custom op's dispatch cost more than the kernel at decoding sizes (14 us against
9 us at Dm = 384, N = 16); torch.compile breaks its graph here. Without a working compiler (or with
``LOCALMAMBA_CPU_KERNEL=0``), and for fp64 inputs, the reference runs.
"""
import ctypes
from pathlib import Path
from typing import Optional

import torch

from localmamba_kernel_runtime import ckernel, task_runner
from localmamba_kernel_runtime.kernel_args import data_ptr
from localmamba_kernel_runtime.precision import autocast_off

from ..reference import selective_state_update_ref

SOURCES = (Path(__file__).resolve().with_name("csrc") / "state_update.c",)
MIN_ROWS_PER_TASK = 1024


class StateUpdateArgs(ctypes.Structure):
    """Mirror of the C ``StateUpdateArgs`` struct (``csrc/state_update.c``; checked at load)."""

    _fields_ = ([(name, ctypes.c_int64) for name in ("dim", "dstate", "softplus")]
                + [(name, ctypes.c_void_p) for name in
                   ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias", "out")])


KERNELS = ("selective_state_update_step",)


def load_kernel() -> Optional[ctypes.CDLL]:
    """The compiled state-update kernel (built on first use), or None when unavailable or disabled."""
    return ckernel.load_library("state_update", SOURCES, dict.fromkeys(KERNELS, StateUpdateArgs))


def _step(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
          D: Optional[torch.Tensor], z: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
          dt_softplus: bool) -> torch.Tensor:
    """All fp32 contiguous: state (Bt, Dm, N) updated in place; x, dt, z (Bt, Dm); A (Dm, N); B, C (Bt, N); D,
    dt_bias (Dm,) -> out (Bt, Dm)."""
    lib = load_kernel()
    if lib is None or state.numel() == 0:
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    out = x.new_empty(x.shape)
    args = StateUpdateArgs(dim=x.shape[1], dstate=state.shape[2], softplus=int(dt_softplus), state=state.data_ptr(),
                           x=x.data_ptr(), dt=dt.data_ptr(), A=A.data_ptr(), B=B.data_ptr(), C=C.data_ptr(),
                           D=data_ptr(D), z=data_ptr(z), dt_bias=data_ptr(dt_bias), out=out.data_ptr())
    task_runner.run_tasks(lib.selective_state_update_step, lambda _: args, x.numel(), MIN_ROWS_PER_TASK)
    return out


def selective_state_update_cpu(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                               B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                               z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
                               dt_softplus: bool = False) -> torch.Tensor:
    """cpu backend of ``selective_state_update`` (validated inputs). A state that is not fp32 and contiguous is
    updated in an fp32 copy, written back (rounded to its dtype) after the step; out is in x's dtype."""
    if any(t is not None and t.dtype == torch.float64 for t in (state, x, dt, A, B, C, D, z, dt_bias)):
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    with autocast_off(x.device.type):
        work = state if state.dtype == torch.float32 and state.is_contiguous() else state.float().contiguous()
        x32, dt32, A32, B32, C32, D32, z32, bias32 = (None if t is None else t.float().contiguous()
                                                      for t in (x, dt, A, B, C, D, z, dt_bias))
        out = _step(work, x32, dt32, A32, B32, C32, D32, z32, bias32, dt_softplus)
        if work is not state:
            state.copy_(work)
    return out.to(x.dtype)
