"""RMSNorm / LayerNorm with a fused residual add (mamba_ssm 1.1.1 ``ops/triton/layernorm.py`` semantics).

``residual_out = x + residual`` (kept in residual's dtype; fp32 when residual is None and ``residual_in_fp32``), the
norm is computed in fp32 from that sum and returned in x's dtype; ``prenorm`` also returns ``residual_out``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from localmamba_kernel_runtime import backends
from localmamba_kernel_runtime.precision import autocast_off
from localmamba_kernel_runtime.validation import check_tensor_types

OP = "layer_norm"
_OFFICIAL_MODULES = ("mamba_ssm.ops.triton.layer_norm", "mamba_ssm.ops.triton.layernorm")

NormResult = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


backends.register(OP, "cuda", backends.check_official(_OFFICIAL_MODULES, "layer_norm_fn"))
backends.register(OP, "reference", backends.check_any)


def _reference_norm_inputs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           residual: Optional[torch.Tensor], upcast: bool
                           ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """What the reference norms normalise: ``x + residual`` in x's dtype, and their weight and bias (all in fp32
    when ``upcast``)."""
    if upcast:
        x = x.float()
        residual = None if residual is None else residual.float()
        weight = weight.float()
        bias = None if bias is None else bias.float()
    if residual is not None:
        x = (x + residual).to(x.dtype)
    return x, weight, bias


def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   residual: Optional[torch.Tensor] = None, eps: float = 1e-6, prenorm: bool = False,
                   upcast: bool = False) -> NormResult:
    """Reference LayerNorm over the last dim of ``x + residual``; ``upcast`` computes everything in fp32."""
    dtype = x.dtype
    x, weight, bias = _reference_norm_inputs(x, weight, bias, residual, upcast)
    out = F.layer_norm(x.to(weight.dtype), x.shape[-1:], weight=weight, bias=bias, eps=eps).to(dtype)
    return (out, x) if prenorm else out


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 residual: Optional[torch.Tensor] = None, eps: float = 1e-6, prenorm: bool = False,
                 upcast: bool = False) -> NormResult:
    """Reference RMSNorm ``x * rsqrt(mean(x^2) + eps) * weight (+ bias)`` of ``x + residual``."""
    dtype = x.dtype
    x, weight, bias = _reference_norm_inputs(x, weight, bias, residual, upcast)
    rstd = torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)
    out = x * rstd * weight
    if bias is not None:
        out = out + bias
    out = out.to(dtype)
    return (out, x) if prenorm else out


def _add_norm_torch(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm):
    """Fused add + norm in plain PyTorch (the reference backend): fp32 compute, dtypes as the fused kernel."""
    if residual is not None:
        residual_dtype = residual.dtype
    else:
        residual_dtype = torch.float32 if residual_in_fp32 else x.dtype
    with autocast_off(x.device.type):
        dtype = torch.float64 if torch.float64 in (x.dtype, weight.dtype) else torch.float32
        total = x.to(dtype) if residual is None else x.to(dtype) + residual.to(dtype)
        if is_rms_norm:
            normed = total * torch.rsqrt(total.square().mean(dim=-1, keepdim=True) + eps)
        else:
            normed = F.layer_norm(total, total.shape[-1:], eps=eps)
        out = normed * weight.to(dtype)
        if bias is not None:
            out = out + bias.to(dtype)
    out = out.to(x.dtype)
    return (out, total.to(residual_dtype)) if prenorm else out


def _add_norm_official(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm):
    official = backends.official_module(_OFFICIAL_MODULES, "layer_norm_fn")
    return official.layer_norm_fn(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm,
                                  residual_in_fp32=residual_in_fp32, is_rms_norm=is_rms_norm)


_IMPLS = {"cuda": _add_norm_official, "reference": _add_norm_torch}


def layer_norm_fn(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  residual: Optional[torch.Tensor] = None, eps: float = 1e-6, prenorm: bool = False,
                  residual_in_fp32: bool = False, is_rms_norm: bool = False) -> NormResult:
    """Fused ``residual_out = x + residual`` then LayerNorm (or RMSNorm) over the last dim of x (..., H).

    weight, bias (H,). Output in x's dtype; residual_out in residual's dtype (fp32 if residual is None and
    ``residual_in_fp32``, else x's dtype). Returns ``(out, residual_out)`` when ``prenorm``.
    """
    _check_norm_inputs("layer_norm_fn", x, weight, bias, residual)
    return _fused_add_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm)


def _check_norm_inputs(api: str, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       residual: Optional[torch.Tensor]) -> None:
    """Refuse bad arguments in one error that names ``api``, the function the caller called."""
    check_tensor_types(api, dict(x=x, weight=weight), dict(bias=bias, residual=residual))
    if x.dim() < 1:
        raise ValueError(f"{api}: x must have at least one dimension (..., H), got shape {tuple(x.shape)}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("residual", residual)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{api}: {name} must be a floating-point tensor, got {t.dtype}")
        if t is not None and t.device != x.device:
            raise ValueError(f"{api}: {name} is on {t.device} but x is on {x.device}")
    hidden = x.shape[-1]
    if tuple(weight.shape) != (hidden,):
        raise ValueError(f"{api}: weight must have shape (H,)=({hidden},), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (hidden,):
        raise ValueError(f"{api}: bias must have shape (H,)=({hidden},), got {tuple(bias.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"{api}: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")


def _fused_add_norm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    residual: Optional[torch.Tensor], eps: float, prenorm: bool, residual_in_fp32: bool,
                    is_rms_norm: bool) -> NormResult:
    """The checked call on the backend chosen for x's device."""
    backend = backends.select(OP, x.device)
    return _IMPLS[backend](x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm)


def rms_norm_fn(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                residual: Optional[torch.Tensor] = None, prenorm: bool = False, residual_in_fp32: bool = False,
                eps: float = 1e-6) -> NormResult:
    """Fused add + RMSNorm; see :func:`layer_norm_fn` (note the different argument order, as in mamba_ssm)."""
    _check_norm_inputs("rms_norm_fn", x, weight, bias, residual)
    return _fused_add_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm=True)


class RMSNorm(nn.Module):
    """RMSNorm with a learnable ``weight`` (no bias parameter: ``bias`` is None, the state_dict holds ``weight``)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, prenorm: bool = False,
                residual_in_fp32: bool = False) -> NormResult:
        return rms_norm_fn(x, self.weight, self.bias, residual=residual, eps=self.eps, prenorm=prenorm,
                           residual_in_fp32=residual_in_fp32)
