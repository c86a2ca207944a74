"""Public causal depthwise conv1d ops with per-call backend dispatch (see ``localmamba_kernel_runtime.backends``).

Signatures follow causal-conv1d 1.0.0 (the copy the original code ships): ``causal_conv1d_fn(x, weight, bias=None,
activation=None)`` and ``causal_conv1d_update(x, conv_state, weight, bias=None, activation=None)``; the keywords
``seq_idx`` (1.1), ``initial_states`` and ``final_states_out`` (1.2) of newer releases are accepted only as None,
``return_final_states`` (1.2) only as False.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from localmamba_kernel_runtime import backends
from localmamba_kernel_runtime.validation import check_tensor_types, shape_str

from .cpu_conv1d import causal_conv1d_cpu
from .reference import causal_conv1d_ref, causal_conv1d_update_ref, check_activation

OP = "causal_conv1d"
OP_UPDATE = "causal_conv1d_update"
OFFICIAL_MODULE = "causal_conv1d.causal_conv1d_interface"
_FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_args(op: str, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                activation: Optional[str]) -> torch.Tensor:
    """Validate the arguments of ``op`` (errors start with its name); return weight as (D, W)."""
    check_tensor_types(op, dict(x=x, weight=weight), dict(bias=bias))
    check_activation(op, activation)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must have shape (batch, dim, seqlen), got {shape_str(x)}")
    dim = x.shape[1]
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight[:, 0]
    if torch.jit.is_tracing():  # shapes are traced values during ONNX export
        return weight
    if weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"{op}: weight must have shape (dim, width) or (dim, 1, width) with dim={dim} and "
                         f"width >= 1, got {shape_str(weight)}")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"{op}: bias must have shape (dim,)=({dim},), got {shape_str(bias)}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    return weight


def _official_layout(x: torch.Tensor) -> torch.Tensor:
    """x as the official kernel accepts it: time-contiguous, or channel-last (a (B, L, D) tensor transposed) with
    D and the batch and time strides multiples of 8 (it TORCH_CHECKs those); anything else is made contiguous."""
    if x.stride(1) == 1 and x.stride(2) > 1:
        if x.shape[1] % 8 == 0 and x.stride(0) % 8 == 0 and x.stride(2) % 8 == 0:
            return x
        return x.contiguous()
    return x if x.stride(2) == 1 else x.contiguous()


def _conv_official(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   activation: Optional[str]) -> torch.Tensor:
    """cuda backend: the official package, through its Python-level function only (its bindings changed per release).
    Its kernel needs bias in weight's dtype (cast) and a layout it accepts (:func:`_official_layout`)."""
    official = backends.optional_module(OFFICIAL_MODULE)
    bias = None if bias is None else bias.to(weight.dtype)
    return official.causal_conv1d_fn(_official_layout(x), weight.contiguous(), bias, activation=activation)


def _update_official(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     activation: Optional[str]) -> torch.Tensor:
    """cuda backend of the update: the official function, with bias cast to weight's dtype and contiguous as its
    kernel requires (its Python function passes bias on as given)."""
    official = backends.optional_module(OFFICIAL_MODULE)
    bias = None if bias is None else bias.to(weight.dtype).contiguous()
    return official.causal_conv1d_update(x, conv_state, weight.contiguous(), bias, activation=activation)


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
        if backend == "cuda" and x.numel() == 0:
            return backends.OFFICIAL_EMPTY_GRID
        if backend == "cuda" and not 2 <= weight.shape[-1] <= 4:
            return f"the official kernel supports widths 2 to 4, got {weight.shape[-1]}"
        return None

    return check


def _update_input_check(x: torch.Tensor, conv_state: torch.Tensor,
                        weight: torch.Tensor) -> Callable[[str], Optional[str]]:
    """:func:`_input_check`, and the official update's conv_state dtype (the state is updated in place: no cast)."""
    conv_check = _input_check(x, weight)

    def check(backend: str) -> Optional[str]:
        reason = conv_check(backend)
        if reason is None and backend == "cuda" and conv_state.dtype != x.dtype:
            reason = f"the official kernel needs conv_state in x's dtype {x.dtype}, got {conv_state.dtype}"
        return reason

    return check


def _refuse_newer_argument(name: str, value: object, off: object = None) -> None:
    """Refuse a keyword of a newer causal-conv1d release unless it has its "off" value (None, or False)."""
    if value is not off:
        raise NotImplementedError(f"causal_conv1d_fn: {name} is not supported: this package follows the "
                                  f"causal-conv1d 1.0.0 API, which has no {name} (pass {off})")


def causal_conv1d_fn(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                     activation: Optional[str] = None, *, seq_idx: Optional[torch.Tensor] = None,
                     initial_states: Optional[torch.Tensor] = None, return_final_states: bool = False,
                     final_states_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal depthwise conv1d: x (B, D, L), weight (D, W) or (D, 1, W), bias (D,) or None -> (B, D, L).

    ``activation`` is None, 'silu' or 'swish' (same as 'silu'). Zero history on the left; fp32 compute; output in
    x's dtype. ``seq_idx`` (causal-conv1d 1.1), ``initial_states`` and ``final_states_out`` (1.2) must be None,
    ``return_final_states`` (1.2) False.
    """
    _refuse_newer_argument("seq_idx", seq_idx)
    _refuse_newer_argument("initial_states", initial_states)
    _refuse_newer_argument("return_final_states", return_final_states, False)
    _refuse_newer_argument("final_states_out", final_states_out)
    weight = _check_args("causal_conv1d_fn", x, weight, bias, activation)
    backend = backends.select(OP, x.device, _input_check(x, weight))
    return _IMPLS[backend](x, weight, bias, activation)


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, activation: Optional[str] = None) -> torch.Tensor:
    """One decoding step: x (B, D), conv_state (B, D, W) updated in place, weight (D, W), bias (D,) -> (B, D)."""
    check_tensor_types(OP_UPDATE, dict(x=x, conv_state=conv_state, weight=weight), dict(bias=bias))
    if x.dim() != 2:
        raise ValueError(f"{OP_UPDATE}: x must have shape (batch, dim), got {shape_str(x)}")
    weight = _check_args(OP_UPDATE, x.unsqueeze(-1), weight, bias, activation)
    expected = (x.shape[0], x.shape[1], weight.shape[-1])
    if tuple(conv_state.shape) != expected:
        raise ValueError(f"{OP_UPDATE}: conv_state must have shape (batch, dim, width)={expected}, "
                         f"got {shape_str(conv_state)}")
    if not conv_state.is_floating_point():
        raise ValueError(f"{OP_UPDATE}: conv_state must be a floating-point tensor, got {conv_state.dtype}")
    if conv_state.device != x.device:
        raise ValueError(f"{OP_UPDATE}: conv_state is on {conv_state.device} but x is on {x.device}")
    backend = backends.select(OP_UPDATE, x.device, _update_input_check(x, conv_state, weight))
    if backend == "cuda":
        return _update_official(x, conv_state, weight, bias, activation)
    return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)
