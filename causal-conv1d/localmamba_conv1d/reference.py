"""Plain-PyTorch references of the causal depthwise conv1d ops (the direct formula; any device, autograd, export)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from localmamba_kernel_runtime.precision import autocast_off, compute_dtype

ACTIVATIONS = (None, "silu", "swish")


class UnsupportedActivationError(ValueError, NotImplementedError):
    """An activation other than None, 'silu' or 'swish': a ValueError (our contract) that is also the
    NotImplementedError the official causal-conv1d functions raise (what ported code catches)."""


def check_activation(op: str, activation: Optional[str]) -> None:
    """Raise :class:`UnsupportedActivationError`, naming ``op``, unless ``activation`` is None, 'silu' or 'swish'."""
    if activation not in ACTIVATIONS:
        raise UnsupportedActivationError(f"{op}: activation must be None, 'silu' or 'swish', got {activation!r}")


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                      activation: Optional[str] = None) -> torch.Tensor:
    """Causal depthwise conv1d by the direct formula.

    x (B, D, L), weight (D, W), bias (D,) or None. ``out[b, d, t] = bias[d] + sum_k weight[d, k] * x[b, d, t-W+1+k]``
    with zeros for t-W+1+k < 0; optional SiLU. Computed in fp32 (fp64 for fp64 inputs), returned in x's dtype.
    """
    check_activation("causal_conv1d_ref", activation)
    with autocast_off(x.device.type):
        dtype = compute_dtype(x, weight)
        seqlen, width = x.shape[-1], weight.shape[-1]
        xs = F.pad(x.to(dtype), (width - 1, 0))
        w = weight.to(dtype)
        out = xs[..., 0:seqlen] * w[:, 0:1]
        for k in range(1, width):
            out = out + xs[..., k:k + seqlen] * w[:, k:k + 1]
        if bias is not None:
            out = out + bias.to(dtype)[:, None]
        if activation is not None:
            out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d_update_ref(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                             bias: Optional[torch.Tensor] = None, activation: Optional[str] = None) -> torch.Tensor:
    """One decoding step: x (B, D), conv_state (B, D, W) holding the last W inputs (updated in place) -> (B, D)."""
    check_activation("causal_conv1d_update_ref", activation)
    with autocast_off(x.device.type):
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        dtype = compute_dtype(x, weight)
        out = (conv_state.to(dtype) * weight.to(dtype)).sum(dim=-1)
        if bias is not None:
            out = out + bias.to(dtype)
        if activation is not None:
            out = F.silu(out)
    return out.to(x.dtype)
