"""Candidate probabilities of a search supernet and the top-k directions they select."""
from __future__ import annotations

from typing import Mapping

import torch

# The 8 candidates of MultiScan in the order of each layer's `multi_scan.weights` (shape (8, 1, 1, 1)).
CANDIDATE_NAMES: tuple[str, ...] = ("h", "h_flip", "v", "v_flip", "w2", "w2_flip", "w7", "w7_flip")
SEARCH_WEIGHT_SUFFIX = "multi_scan.weights"


def search_weights(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The `(name, weights)` entries of a supernet state dict, in layer (state-dict) order."""
    return [(k, v) for k, v in state_dict.items() if k.endswith(SEARCH_WEIGHT_SUFFIX)]


def layer_probabilities(state_dict: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, the softmax over its 8 candidate weights (float32 on CPU, as the original computes it)."""
    return [w.detach().to("cpu", torch.float32).view(-1).softmax(-1) for _, w in search_weights(state_dict)]


def chosen_directions(probs: list[torch.Tensor], k: int = 4) -> list[list[str]]:
    """Per layer, the k most probable candidates sorted in candidate (canonical) order."""
    return [[CANDIDATE_NAMES[i] for i in p.topk(k)[1].sort()[0].tolist()] for p in probs]
