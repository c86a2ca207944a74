"""PyTorch implementation of the cpu backend's forward and backward (used for fp64, and when no C compiler works).

Same layout contract as the C kernel (see ``csrc/selective_scan.c``): A (Dm, Np); B, C (Dm, Np) or (Bt, G, L, Np).
The backward is the explicit reverse-time recurrence, so it needs no autograd graph over the sequence.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def _per_channel(M: torch.Tensor, batch: int, dim: int) -> torch.Tensor:
    """(Dm, Np) -> (1, Dm, 1, Np); (Bt, G, L, Np) -> (Bt, Dm, L, Np)."""
    if M.dim() == 2:
        return M[None, :, None, :]
    groups = M.shape[1]
    return M[:, :, None].expand(batch, groups, dim // groups, *M.shape[2:]).reshape(batch, dim, *M.shape[2:])


def _to_layout(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a per-channel gradient (Bt, Dm, L, Np) back to the layout of ``like``."""
    if like.dim() == 2:
        return full.sum(dim=(0, 2))
    batch, dim = full.shape[:2]
    groups = like.shape[1]
    return full.reshape(batch, groups, dim // groups, *full.shape[2:]).sum(dim=2)


def _states(u, delta, A, B, C, D, delta_bias, softplus):
    raw = delta if delta_bias is None else delta + delta_bias[:, None]
    dt = F.softplus(raw) if softplus else raw
    decay = torch.exp(dt[..., None] * A[:, None, :])
    Bx = _per_channel(B, u.shape[0], u.shape[1])
    Cx = _per_channel(C, u.shape[0], u.shape[1])
    drive = (dt * u)[..., None] * Bx
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    hs = torch.empty_like(decay)
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + drive[:, :, t]
        hs[:, :, t] = h
    y = (hs * Cx).sum(-1)
    if D is not None:
        y = y + D[:, None] * u
    return raw, dt, decay, Bx, Cx, hs, y


def scan_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
             softplus: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward: returns out (Bt, Dm, L) and the last state (Bt, Dm, Np)."""
    _, _, _, _, _, hs, y = _states(u, delta, A, B, C, D, delta_bias, softplus)
    out = y * F.silu(z) if z is not None else y
    return out, hs[:, :, -1].clone()


def scan_bwd(dout: torch.Tensor, dlast: Optional[torch.Tensor], u: torch.Tensor, delta: torch.Tensor,
             A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
             delta_bias: Optional[torch.Tensor], softplus: bool) -> Tuple[torch.Tensor, ...]:
    """Backward: returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias (dD, ddelta_bias of shape (Dm,); dz empty
    when z is None)."""
    raw, dt, decay, Bx, Cx, hs, y = _states(u, delta, A, B, C, D, delta_bias, softplus)
    if z is not None:
        sz = torch.sigmoid(z)
        dz = dout * y * sz * (1 + z * (1 - sz))
        dy = dout * z * sz
    else:
        dz = u.new_zeros(0)
        dy = dout
    g = dlast.clone() if dlast is not None else torch.zeros_like(hs[:, :, 0])
    gs = torch.empty_like(hs)
    for t in range(u.shape[2] - 1, -1, -1):
        g = g + dy[:, :, t, None] * Cx[:, :, min(t, Cx.shape[2] - 1)]
        gs[:, :, t] = g
        g = g * decay[:, :, t]
    dC = _to_layout(dy[..., None] * hs, C)
    dB = _to_layout(gs * (dt * u)[..., None], B)
    sB = (gs * Bx).sum(-1)
    hprev = torch.cat([torch.zeros_like(hs[:, :, :1]), hs[:, :, :-1]], dim=2)
    da = gs * hprev * decay
    dA = (da * dt[..., None]).sum(dim=(0, 2))
    ddt = sB * u + (da * A[:, None, :]).sum(-1)
    du = dt * sB if D is None else dy * D[:, None] + dt * sB
    ddelta = ddt * torch.sigmoid(raw) if softplus else ddt
    dD = (dy * u).sum(dim=(0, 2))
    return du, ddelta, dA, dB, dC, dD, dz, ddelta.sum(dim=(0, 2))
