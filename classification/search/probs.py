"""Candidate probabilities of a search supernet and the top-k directions they select.

The probabilities are always the softmax of a search layer's weights (:func:`search_probabilities`, what
:meth:`MultiScan.probabilities` computes): of a live model's layers, or of the weights read from a checkpoint file.
Their order is the supernet's candidate order: the model's ``candidates`` (default ``CANDIDATES``).
"""
from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..models.directions import CANDIDATES
from ..models.multi_scan import SEARCH_WEIGHT_SUFFIX, search_layers, search_probabilities


def _layer_order(name: str) -> list[Union[str, int]]:
    """Sort key of a state-dict name by its layer numbers (``layers.2`` before ``layers.10``): the text between the
    numbers at even places, the numbers at odd ones."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r'(\d+)', name))]


def search_weight_entries(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The ``*multi_scan.weights`` entries of a supernet's state dict, (name, weights) in layer order: sorted by the
    numbers in their names, since a file may hold its keys in another order (a safetensors file sorts them as text,
    ``layers.10`` before ``layers.2``)."""
    return sorted(((name, value) for name, value in state_dict.items() if name.endswith(SEARCH_WEIGHT_SUFFIX)),
                  key=lambda entry: _layer_order(entry[0]))


def layer_probabilities(source: Union[nn.Module, Mapping[str, torch.Tensor]],
                        candidates: Optional[Sequence[str]] = None) -> list[torch.Tensor]:
    """Per search layer of a supernet (a model, or a state dict read from a checkpoint: its ``*multi_scan.weights``
    entries in layer order), the softmax over its candidate weights: float32 on the CPU, as the original computes
    it. A state dict's layers must hold one weight per candidate (``candidates``, default ``CANDIDATES``); a
    ValueError names an entry that does not."""
    if isinstance(source, nn.Module):
        return [layer.probabilities().cpu() for layer in search_layers(source)]
    candidates = CANDIDATES if candidates is None else tuple(candidates)
    probs = []
    for name, weights in search_weight_entries(source):
        if weights.numel() != len(candidates):
            raise ValueError(f"{name} holds {weights.numel()} candidate weights (shape {tuple(weights.shape)}), not "
                             f"one for each of the {len(candidates)} candidates {', '.join(candidates)}: name the "
                             f"{weights.numel()} its supernet searched over, in order (extract(candidates=...), "
                             f"vis_search_prob.py --candidates)")
        probs.append(search_probabilities(weights).cpu())
    return probs


def chosen_directions(probs: list[torch.Tensor], k: int = 4,
                      candidates: Sequence[str] = CANDIDATES) -> list[list[str]]:
    """Per layer, the k most probable of ``candidates`` (the order of the probabilities) sorted in candidate
    (canonical) order."""
    return [[candidates[i] for i in p.topk(k)[1].sort()[0].tolist()] for p in probs]
