"""mmengine checkpoints that ``torch.load(weights_only=True)`` reads: the message hub's ``HistoryBuffer`` objects and
numpy values are saved as tensors and plain values, and turned back into them when a checkpoint is loaded.

Imported by the det/seg entry points only (it needs mmengine).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

HISTORY_BUFFER = '__history_buffer__'
NDARRAY = '__ndarray__'


def _map_values(mapping: dict, fn: Callable[[Any], Any]) -> dict:
    """A copy of ``mapping`` of the same type (a Counter stays a Counter, an OrderedDict keeps its order) with
    ``fn`` applied to every value."""
    out = copy.copy(mapping)
    for key, item in mapping.items():
        out[key] = fn(item)
    return out


def to_plain(value: Any) -> Any:
    """``value`` with every HistoryBuffer and numpy array as a marked dict of tensors, numpy scalars as Python ones;
    dicts, lists and tuples are walked, everything else is kept."""
    if isinstance(value, HistoryBuffer):
        log, count = value.data
        return {HISTORY_BUFFER: value.max_length, 'log': torch.from_numpy(np.array(log)),
                'count': torch.from_numpy(np.array(count))}
    if isinstance(value, np.ndarray):
        return {NDARRAY: torch.from_numpy(value.copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return _map_values(value, to_plain)
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(item) for item in value)
    return value


def from_plain(value: Any) -> Any:
    """The inverse of :func:`to_plain` (numpy scalars come back as Python numbers)."""
    if isinstance(value, dict):
        if HISTORY_BUFFER in value:
            return HistoryBuffer(value['log'].numpy(), value['count'].numpy(), value[HISTORY_BUFFER])
        if NDARRAY in value:
            return value[NDARRAY].numpy()
        return _map_values(value, from_plain)
    if isinstance(value, (list, tuple)):
        return type(value)(from_plain(item) for item in value)
    return value


class PlainCheckpointHook(Hook):
    """Saves checkpoints in the :func:`to_plain` form and restores them as they are loaded (before the Runner reads
    the message hub). Lowest priority: it sees the checkpoint after every other hook has added to it."""

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        checkpoint.update(to_plain(dict(checkpoint)))

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        checkpoint.update(from_plain(dict(checkpoint)))
