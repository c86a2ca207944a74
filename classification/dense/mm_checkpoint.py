"""mmengine checkpoints that ``torch.load(weights_only=True)`` reads: the message hub's ``HistoryBuffer`` objects and
numpy values are saved as tensors and plain values, and turned back into them when a checkpoint is loaded.

Imported by the det/seg entry points only (it needs mmengine).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

HISTORY_BUFFER = '__history_buffer__'
NDARRAY = '__ndarray__'


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
        return type(value)((key, to_plain(item)) for key, item in value.items())
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
        return type(value)((key, from_plain(item)) for key, item in value.items())
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
