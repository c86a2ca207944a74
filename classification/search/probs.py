"""Candidate probabilities of a search supernet and the top-k directions they select (as tools/vis_search_prob.py)."""
from __future__ import annotations

from typing import Mapping

import torch

# The 8 candidates of MultiScan in the order of each layer's `multi_scan.weights` (shape (8, 1, 1, 1)).
CANDIDATE_NAMES: tuple[str, ...] = ("h", "h_flip", "v", "v_flip", "w2", "w2_flip", "w7", "w7_flip")
SEARCH_WEIGHT_SUFFIX = "multi_scan.weights"


def search_weights(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The `(name, weights)` entries of a supernet state dict, in layer (state-dict) order."""
    return [(k, v) for k, v in state_dict.items() if k.endswith(SEARCH_WEIGHT_SUFFIX)]


def probabilities(state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(layers, 8) softmax over each layer's candidate weights (float64 on CPU)."""
    rows = [torch.softmax(w.detach().reshape(-1).to("cpu", torch.float64), dim=0) for _, w in search_weights(state_dict)]
    if not rows:
        return torch.zeros(0, len(CANDIDATE_NAMES), dtype=torch.float64)
    return torch.stack(rows)


def top_k_directions(probs: torch.Tensor, k: int = 4) -> list[list[str]]:
    """Per layer, the k most probable candidates sorted in candidate (canonical) order."""
    return [[CANDIDATE_NAMES[i] for i in sorted(row.topk(k).indices.tolist())] for row in probs]
