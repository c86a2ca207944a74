"""Initial values shared by both model families: the selective-scan parameters (A, D, dt), the dt rank rule, and the
original's truncated-normal init pass over Linear and LayerNorm modules."""
from __future__ import annotations

import math
from typing import Union

import torch
from timm.layers import trunc_normal_
from torch import nn


def dt_rank_of(d_model: int, dt_rank: Union[int, str] = 'auto') -> int:
    """Rank of the dt projection: ``ceil(d_model / 16)`` for ``'auto'`` (Mamba's rule), else ``int(dt_rank)``."""
    return math.ceil(d_model / 16) if dt_rank == 'auto' else int(dt_rank)


def trunc_normal_init(module: nn.Module) -> None:
    """The original's init pass (``model.apply``): Linear weights trunc_normal(std 0.02) with zero bias, affine
    LayerNorm weight 1 and bias 0; other modules and plain parameters keep their own init."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def a_log_init(channels: int, d_state: int, copies: int = 1) -> torch.Tensor:
    """log(1..N) in every row: (copies * channels, d_state), so that A = -exp(A_log) = -(1..N)."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(copies * channels, 1)


def dt_weight_init(weight: torch.Tensor, dt_rank: int, dt_scale: float = 1.0) -> None:
    """Mamba's 'random' dt projection init: U(-s, s) with s = dt_scale / sqrt(dt_rank), in place."""
    bound = dt_scale * dt_rank ** -0.5
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def dt_bias_init(shape: tuple[int, ...], dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> torch.Tensor:
    """Bias such that softplus(bias) = dt with dt ~ log-uniform in [dt_min, dt_max], clamped below at dt_init_floor."""
    dt = torch.exp(torch.rand(shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))
