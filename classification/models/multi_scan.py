"""Parts shared by the LocalVim and LocalVMamba mixers: channel attention, and the merge of the K directions."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from localmamba_ssm import attention_merge_fn

from .directions import CANDIDATES
from .scan_maps import parse_direction


class BiAttn(nn.Module):
    """Channel attention applied to each direction's output (shared by all directions of a layer).

    The gate comes from the token mean of LayerNorm(x) through a bottleneck MLP; it multiplies the un-normalised x.
    x: (..., L, C) -> (..., L, C).
    """

    def __init__(self, channels: int, act_ratio: float = 0.125):
        super().__init__()
        reduced = int(channels * act_ratio)
        self.norm = nn.LayerNorm(channels)
        self.global_reduce = nn.Linear(channels, reduced)
        self.act = nn.GELU()
        self.channel_select = nn.Linear(reduced, channels)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summary = self.norm(x).mean(dim=-2, keepdim=True)
        return x * self.gate(self.channel_select(self.act(self.global_reduce(summary))))

    def forward_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` on each direction of x (B, K, L, C), summed over the directions -> (B, L, C), as one fused op."""
        return attention_merge_fn(x, self.norm.weight, self.norm.bias, self.global_reduce.weight,
                                  self.global_reduce.bias, self.channel_select.weight, self.channel_select.bias,
                                  self.norm.eps)


class MultiScan(nn.Module):
    """The direction set of one layer and how their outputs are merged.

    With fixed ``directions`` the merge is a plain sum. With ``directions=None`` the layer is a search-supernet layer:
    it scans all :data:`CANDIDATES` and merges them as ``sum_k softmax(weights)_k * LayerNorm(a_k)`` where ``weights``
    (8, 1, 1, 1) are the architecture parameters.
    """

    def __init__(self, channels: int, directions: Optional[Sequence[str]] = None):
        super().__init__()
        self.search = directions is None
        self.directions = tuple(CANDIDATES if directions is None else directions)
        for name in self.directions:
            parse_direction(name)
        if self.search:
            self.weights = nn.Parameter(1e-3 * torch.randn(len(CANDIDATES), 1, 1, 1))
        self.channels = channels

    def probabilities(self) -> torch.Tensor:
        """Softmax over the search weights, (8,) in CANDIDATES order (search layers only)."""
        if not self.search:
            raise RuntimeError('probabilities() is only defined for search-supernet layers (directions=None)')
        return torch.softmax(self.weights.detach().view(-1).float(), dim=0)

    def merge(self, outputs: torch.Tensor) -> torch.Tensor:
        """Merge per-direction outputs (B, K, L, C) into (B, L, C)."""
        if not self.search:
            return outputs.sum(dim=1)
        normed = F.layer_norm(outputs, (self.channels,))
        probs = torch.softmax(self.weights, dim=0).view(1, -1, 1, 1).to(normed.dtype)
        return (normed * probs).sum(dim=1)

    def attend_and_merge(self, outputs: torch.Tensor, attn: BiAttn) -> torch.Tensor:
        """``merge(attn(outputs))``: (B, K, L, C) -> (B, L, C); the plain sum runs as one fused op."""
        return self.merge(attn(outputs)) if self.search else attn.forward_sum(outputs)

    def extra_repr(self) -> str:
        return ('search over ' if self.search else '') + ', '.join(self.directions)


class MultiScanAttn(MultiScan):
    """:class:`MultiScan` that owns the shared channel attention (LocalVMamba keeps it here: keys ``attn.*``)."""

    def __init__(self, channels: int, directions: Optional[Sequence[str]] = None):
        super().__init__(channels, directions)
        self.attn = BiAttn(channels)
