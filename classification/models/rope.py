"""2-D rotary position embedding of LocalVim (EVA-02 style), and resizing of per-token tables to another grid."""
from __future__ import annotations

from typing import Optional

import torch
import torch.fx
from timm.layers import register_notrace_function, resample_abs_pos_embed
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate tokens x (B, L, C) by the angle tables cos/sin (L, C)."""
    return x * cos + rotate_half(x) * sin


@register_notrace_function
@torch.fx.wrap
def resize_grid_table(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a per-token table (H*W, C) or (1, H*W, C) from ``old_grid`` to ``new_grid`` (timm's
    ``resample_abs_pos_embed``, align_corners=False, no antialiasing); the table itself when the grids agree (also
    while tracing or exporting, where timm would interpolate to the same size)."""
    if tuple(old_grid) == tuple(new_grid):
        return table
    if table.dim() == 2:
        return resize_grid_table(table.unsqueeze(0), old_grid, new_grid)[0]
    return resample_abs_pos_embed(table, list(new_grid), list(old_grid), num_prefix_tokens=0, antialias=False)


class VisionRotaryEmbedding(nn.Module):
    """Rotary embedding over a square token grid: the first C/2 channels rotate with the row, the rest with the column.

    ``dim`` is half the embedding width. Frequencies are ``1 / 10000^(2i/dim)``; positions ``arange(ft) / ft * pt``
    (integers at the pre-training grid). Buffers ``freqs_cos`` / ``freqs_sin`` have shape (ft*ft, 2*dim);
    :meth:`tables` gives them for a grid, and :func:`apply_rotary` rotates tokens by them.
    """

    def __init__(self, dim: int, pt_seq_len: int = 14, ft_seq_len: Optional[int] = None, theta: float = 10000.0):
        super().__init__()
        ft_seq_len = ft_seq_len or pt_seq_len
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        positions = torch.arange(ft_seq_len) / ft_seq_len * pt_seq_len
        angles = torch.outer(positions, inv_freq).repeat_interleave(2, dim=-1)          # (ft, dim)
        rows = angles[:, None, :].expand(ft_seq_len, ft_seq_len, dim)
        cols = angles[None, :, :].expand(ft_seq_len, ft_seq_len, dim)
        grid_angles = torch.cat([rows, cols], dim=-1).reshape(ft_seq_len * ft_seq_len, 2 * dim)
        self.grid = (ft_seq_len, ft_seq_len)
        self.register_buffer('freqs_cos', grid_angles.cos())
        self.register_buffer('freqs_sin', grid_angles.sin())

    def tables(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables (H*W, C) for a token grid, resized bicubically when it differs from the built grid."""
        return (resize_grid_table(self.freqs_cos, self.grid, grid),
                resize_grid_table(self.freqs_sin, self.grid, grid))
