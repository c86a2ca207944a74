"""Public ``selective_state_update`` (one decoding step of the selective scan) with per-call backend dispatch.

The module sits where mamba_ssm 1.1.1 keeps its op (``mamba_ssm.ops.triton.selective_state_update``), with
``selective_state_update_ref`` beside it, so that ported code only renames the package; it does not import triton
itself (the kernel module is imported on first use). Backends: ``cuda`` (the official op, a Triton kernel of
mamba_ssm, for CUDA tensors when it is installed), ``triton`` (ours), ``cpu`` (our C kernel, one pass over the state)
and ``reference``. The cpu kernel is there because the reference's whole-state temporaries cost more than the step:
``tools/benchmark.py --op state_update --threads 2`` on a 2-core AMD EPYC Zen 4 (AVX-512, fp32, N = 16) gives the cpu
backend 1.5x the reference at batch 1 x Dm 384 (0.038 ms), 1.8x at 8 x 384, 2.0x at 8 x 1536 and 2.6x at 16 x 5120.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from localmamba_kernel_runtime import backends

from ..checks import STATE_UPDATE, check_state_update_args
from ..cpu.state_update_cpu import selective_state_update_cpu
from ..reference import selective_state_update_ref

OP = STATE_UPDATE
OFFICIAL_MODULE = "mamba_ssm.ops.triton.selective_state_update"
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

backends.register(OP, "cuda", backends.check_official(OFFICIAL_MODULE))
backends.register(OP, "triton", backends.check_triton)
backends.register(OP, "cpu", backends.check_cpu)
backends.register(OP, backends.REFERENCE, backends.check_any)


def _input_check(state: torch.Tensor, activations: tuple) -> Callable[[str], Optional[str]]:
    """The kernels (official and ours) take fp32 / fp16 / bf16 state and activations: others run the reference."""
    def check(backend: str) -> Optional[str]:
        if backend in ("cuda", "triton"):
            dtypes = {t.dtype for t in (state, *activations) if t is not None}
            if not dtypes <= set(_KERNEL_DTYPES):
                names = ", ".join(sorted(str(dtype) for dtype in dtypes - set(_KERNEL_DTYPES)))
                return f"needs fp32/fp16/bf16 state and activations, got {names}"
        return None

    return check


def _update_official(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """cuda backend: mamba_ssm's op (its own Triton kernel; its softplus is log(1 + e^x), inf for x > 88 in fp32)."""
    official = backends.optional_module(OFFICIAL_MODULE)
    return official.selective_state_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)


def _update_triton(*args):
    """triton backend (the module, and triton itself, are imported on first use)."""
    from .state_update_triton import selective_state_update_triton

    return selective_state_update_triton(*args)


_IMPLS = {"cuda": _update_official, "triton": _update_triton, "cpu": selective_state_update_cpu,
          "reference": selective_state_update_ref}


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                           dt_bias: Optional[torch.Tensor] = None, dt_softplus: bool = False) -> torch.Tensor:
    """One step of the selective scan for decoding: ``h = exp(dt A) h + dt B x``, ``out = <h, C> + D x``, times
    SiLU(z), with ``dt = softplus(dt + dt_bias)`` when ``dt_softplus``.

    state (Bt, Dm, N) is updated in place; x, dt, z (Bt, Dm); A (Dm, N); B, C (Bt, N); D, dt_bias (Dm,). Returns out
    (Bt, Dm) in x's dtype; fp32 math. Inference only: no backward, and an input that requires grad is refused while
    grad mode is on (mamba_ssm's kernel silently returns an output without gradient there).
    """
    check_state_update_args(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    backend = backends.select(OP, state.device, _input_check(state, (x, dt, B, C, z)))
    return _IMPLS[backend](state, x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus))


__all__ = ["selective_state_update", "selective_state_update_ref"]
