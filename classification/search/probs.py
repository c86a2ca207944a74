"""Candidate probabilities of a search supernet and the top-k directions they select.

The probabilities are always :meth:`MultiScan.probabilities` of the supernet's search layers: those of a live model,
or of layers holding the weights read from a checkpoint file.
"""
from __future__ import annotations

from typing import Mapping, Union

import torch
from torch import nn

from ..models.directions import CANDIDATES
from ..models.multi_scan import SEARCH_WEIGHT_SUFFIX, MultiScan, search_layers


def layers_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> list[MultiScan]:
    """The search layers saved in a supernet state dict (its ``*multi_scan.weights`` entries, in state-dict order),
    as :class:`MultiScan` layers holding those weights; ValueError names an entry without one weight per candidate."""
    layers = []
    for name, weights in state_dict.items():
        if not name.endswith(SEARCH_WEIGHT_SUFFIX):
            continue
        if weights.numel() != len(CANDIDATES):
            raise ValueError(f"{name} has not {len(CANDIDATES)} candidate weights (shape {tuple(weights.shape)})")
        layer = MultiScan(channels=0)
        layer.load_state_dict({'weights': weights.reshape(layer.weights.shape)})
        layers.append(layer)
    return layers


def layer_probabilities(source: Union[nn.Module, Mapping[str, torch.Tensor]]) -> list[torch.Tensor]:
    """Per search layer of a supernet (a model, or a state dict read from a checkpoint), the softmax over its 8
    candidate weights: float32 on the CPU, as the original computes it."""
    layers = search_layers(source) if isinstance(source, nn.Module) else layers_from_state_dict(source)
    return [layer.probabilities().cpu() for layer in layers]


def chosen_directions(probs: list[torch.Tensor], k: int = 4) -> list[list[str]]:
    """Per layer, the k most probable candidates sorted in candidate (canonical) order."""
    return [[CANDIDATES[i] for i in p.topk(k)[1].sort()[0].tolist()] for p in probs]
