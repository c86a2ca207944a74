"""Running averages and top-k counts."""
from __future__ import annotations

import torch


class AverageMeter:
    """Last value, sum, count and average of a local quantity."""

    def __init__(self) -> None:
        self.val = self.sum = self.count = 0.0

    def update(self, val: float, n: int = 1) -> None:
        self.val = val
        self.sum += val * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / max(self.count, 1)


def correct_topk(output: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> list[int]:
    """How many samples have their label among the k highest logits, per k (k capped at the class count).

    output: (N, C) logits; target: (N,) int labels.
    """
    maxk = min(max(ks), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]
