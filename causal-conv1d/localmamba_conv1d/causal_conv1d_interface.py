"""Public causal depthwise conv1d ops with per-call backend dispatch (see ``localmamba_kernel_runtime.backends``).

Signatures follow causal-conv1d 1.0.0: ``causal_conv1d_fn(x, weight, bias=None, activation=None)`` and
``causal_conv1d_update(x, conv_state, weight, bias=None, activation=None)``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from localmamba_kernel_runtime import backends
from localmamba_kernel_runtime.validation import shape_str

from .cpu_conv1d import causal_conv1d_cpu
from .reference import causal_conv1d_ref, causal_conv1d_update_ref

OP = "causal_conv1d"
OP_UPDATE = "causal_conv1d_update"
OFFICIAL_MODULE = "causal_conv1d.causal_conv1d_interface"
_FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_args(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                activation: Optional[str]) -> torch.Tensor:
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    if x.dim() != 3:
        raise ValueError(f"x must have shape (batch, dim, seqlen), got {shape_str(x)}")
    dim = x.shape[1]
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight[:, 0]
    if torch.jit.is_tracing():  # shapes are traced values during ONNX export
        return weight
    if weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape (dim, width) or (dim, 1, width) with dim={dim} and width >= 1, "
                         f"got {shape_str(weight)}")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"bias must have shape (dim,)=({dim},), got {shape_str(bias)}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    return weight


def _conv_official(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   activation: Optional[str]) -> torch.Tensor:
    """cuda backend: the official package, through its Python-level function only (its bindings changed per release)."""
    official = backends.optional_module(OFFICIAL_MODULE)
    if x.stride(-1) != 1 and x.stride(1) != 1:
        x = x.contiguous()
    bias = None if bias is None else bias.to(weight.dtype)
    return official.causal_conv1d_fn(x, weight.contiguous(), bias, activation=activation)


def _conv_triton(x, weight, bias, activation):
    """triton backend (the module, and triton itself, are imported on first use)."""
    from .triton_conv1d import causal_conv1d_triton

    return causal_conv1d_triton(x, weight, bias, activation)


_IMPLS: Dict[str, Callable] = {
    "cuda": _conv_official,
    "triton": _conv_triton,
    "cpu": causal_conv1d_cpu,
    "reference": causal_conv1d_ref,
}

backends.register_kernel_backends(OP, OFFICIAL_MODULE)
backends.register(OP_UPDATE, "cuda", backends.check_official(OFFICIAL_MODULE))
backends.register(OP_UPDATE, "reference", backends.check_any)


def _input_check(x: torch.Tensor, weight: torch.Tensor) -> Callable[[str], Optional[str]]:
    def check(backend: str) -> Optional[str]:
        if backend in ("cuda", "triton"):
            if x.dtype not in _FLOAT_TYPES or weight.dtype not in _FLOAT_TYPES:
                return f"needs fp32/fp16/bf16 tensors, got x {x.dtype} and weight {weight.dtype}"
        if backend == "cuda" and not 2 <= weight.shape[-1] <= 4:
            return f"the official kernel supports widths 2 to 4, got {weight.shape[-1]}"
        return None

    return check


def causal_conv1d_fn(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     activation: Optional[str] = None) -> torch.Tensor:
    """Causal depthwise conv1d: x (B, D, L), weight (D, W) or (D, 1, W), bias (D,) or None -> (B, D, L).

    ``activation`` is None, 'silu' or 'swish' (same as 'silu'). Zero history on the left; fp32 compute; output in
    x's dtype.
    """
    weight = _check_args(x, weight, bias, activation)
    backend = backends.select(OP, x.device, _input_check(x, weight))
    return _IMPLS[backend](x, weight, bias, activation)


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, activation: Optional[str] = None) -> torch.Tensor:
    """One decoding step: x (B, D), conv_state (B, D, W) updated in place, weight (D, W), bias (D,) -> (B, D)."""
    if x.dim() != 2:
        raise ValueError(f"x must have shape (batch, dim), got {shape_str(x)}")
    weight = _check_args(x.unsqueeze(-1), weight, bias, activation)
    expected = (x.shape[0], x.shape[1], weight.shape[-1])
    if tuple(conv_state.shape) != expected:
        raise ValueError(f"conv_state must have shape (batch, dim, width)={expected}, got {shape_str(conv_state)}")
    if not conv_state.is_floating_point():
        raise ValueError(f"conv_state must be a floating-point tensor, got {conv_state.dtype}")
    backend = backends.select(OP_UPDATE, x.device, _input_check(x, weight))
    if backend == "cuda":
        official = backends.optional_module(OFFICIAL_MODULE)
        return official.causal_conv1d_update(x, conv_state, weight.contiguous(), bias, activation=activation)
    return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)
