"""Watching a search supernet during training: per-layer candidate probabilities in the log and in a CSV file."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.nn as nn

from ..common.csv_log import SEARCH_PROBS_CSV, CsvLog
from ..models.multi_scan import search_candidates, search_layers
from .probs import layer_probabilities

logger = logging.getLogger("localmamba")


class SearchMonitor:
    """Logs softmax(multi_scan.weights) of every layer and appends them to `search_probs.csv` each epoch, one column
    per candidate of the supernet (its `candidates`, in the order of its search weights)."""

    def __init__(self, model: nn.Module, exp_dir: str, enabled: bool = True):
        self.model = model
        self.candidates = search_candidates(model)
        self.csv = CsvLog(os.path.join(exp_dir, SEARCH_PROBS_CSV), ("epoch", "layer") + self.candidates,
                          enabled=enabled)

    @classmethod
    def for_model(cls, model: nn.Module, exp_dir: str, enabled: bool = True) -> Optional["SearchMonitor"]:
        """A monitor when `model` has search weights, else None."""
        if not search_layers(model):
            return None
        return cls(model, exp_dir, enabled)

    def current(self) -> torch.Tensor:
        """(layers, candidates) probabilities."""
        return torch.stack(layer_probabilities(self.model))

    def log_probs(self) -> None:
        probs = self.current()
        lines = [f"  layer {i:>2d}: " + " ".join(f"{n}={p:.4f}" for n, p in zip(self.candidates, row.tolist()))
                 for i, row in enumerate(probs)]
        logger.info("Search probabilities:\n" + "\n".join(lines))

    def append_epoch(self, epoch: int) -> None:
        for layer, row in enumerate(self.current().tolist()):
            self.csv.append([epoch, layer] + [f"{p:.6f}" for p in row])
