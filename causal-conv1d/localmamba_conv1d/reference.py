"""Plain-PyTorch references of the causal depthwise conv1d ops (the direct formula; any device, autograd, export)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from localmamba_kernel_runtime.precision import autocast_off, compute_dtype


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                      activation: Optional[str] = None) -> torch.Tensor:
    """Causal depthwise conv1d by the direct formula.

    x (B, D, L), weight (D, W), bias (D,) or None. ``out[b, d, t] = bias[d] + sum_k weight[d, k] * x[b, d, t-W+1+k]``
    with zeros for t-W+1+k < 0; optional SiLU. Computed in fp32 (fp64 for fp64 inputs), returned in x's dtype.
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
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
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
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
