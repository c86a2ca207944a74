"""Per-direction scan and its inverse on the models' index tables (``scan_index``), for the tests' reference
compositions: the models gather and scatter by the same tables inside their fused ops."""
from typing import Sequence

import torch
import torch.nn.functional as F

from classification.models.scan_maps import scan_index


def _channels_first(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, L, D) or (B, D, H, W) -> (B, D, H*W)."""
    if x.dim() == 4:
        assert tuple(x.shape[2:]) == tuple(grid)
        return x.flatten(2)
    assert x.shape[1] == grid[0] * grid[1]
    return x.transpose(1, 2)


def scan(x: torch.Tensor, name: str, grid: Sequence[int]) -> torch.Tensor:
    """Tokens in the order of one direction: (B, L, D) or (B, D, H, W) -> (B, D, L_k), padding as zeros."""
    return F.pad(_channels_first(x, grid), (0, 1))[..., scan_index(name, tuple(grid))]


def reverse(y: torch.Tensor, name: str, grid: Sequence[int]) -> torch.Tensor:
    """Back to row-major token order: (B, D, L_k) -> (B, D, H*W), padding positions dropped."""
    index = scan_index(name, tuple(grid))
    num_tokens = grid[0] * grid[1]
    real = index < num_tokens
    positions = torch.empty(num_tokens, dtype=torch.long)
    positions[index[real]] = torch.arange(index.numel())[real]
    return y[..., positions]
