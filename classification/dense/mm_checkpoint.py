"""mmengine checkpoints that ``torch.load(weights_only=True)`` reads: the message hub's ``HistoryBuffer`` objects and
numpy values are saved as tensors and plain values, and turned back into them when a checkpoint is loaded. Also the
check that a tested or resumed checkpoint fits the model (mmengine loads what fits and leaves the rest as initialised),
and the backbone's scan directions, recorded in every checkpoint, checked where one is tested or resumed and named
in a warning where a fresh run's ``load_from`` differs.

Imported by the det/seg entry points only (it needs mmengine).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer, print_log
from mmengine.model import BaseTTAModel, is_model_wrapper

from ..common import CheckpointError
from ..models.directions import directions_difference, scan_directions

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


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The detector or segmentor inside DDP and TTA wrappers."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def backbone_trunk(model: torch.nn.Module) -> Optional[torch.nn.Module]:
    """The classification model a LocalMamba backbone of ``model`` (wrapped or not) is built on; None for other
    backbones."""
    return getattr(getattr(_unwrapped(model), 'backbone', None), 'trunk', None)


class ScanDirectionsHook(Hook):
    """Records the backbone's scan directions in every checkpoint (``directions``, as the classification checkpoints
    hold them): two direction tables give weights of the same names and shapes, so only this entry tells a checkpoint's
    directions. ``model.backbone.directions=CKPT`` reads them back."""

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        trunk = backbone_trunk(runner.model)
        if trunk is not None:
            checkpoint['directions'] = scan_directions(trunk)


class LoadFromDirectionsHook(Hook):
    """A fresh run's ``load_from`` (a det/seg checkpoint to fine-tune from) of other scan directions than the
    backbone's is loaded with a warning naming where they differ, as the backbone's pretrained file is: its weights
    have the same names and shapes, so nothing else tells."""

    priority = 'VERY_LOW'

    def __init__(self, source: str):
        self.source = source

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        trunk = backbone_trunk(runner.model)
        other = None if trunk is None else directions_difference(trunk, checkpoint)
        if other is not None:
            print_log(f"load_from {self.source} was trained with other scan directions ({other}): its weights "
                      f"fine-tune this backbone's directions (set model.backbone.directions={self.source} to keep "
                      f"them)", logger='current', level=logging.WARNING)


class EarlierRunDeletion(Hook):
    """``--overwrite``: delete the earlier run's checkpoint files ``names`` in ``work_dir`` (on the main rank) once
    the new run has started training, its weights initialised, and save the new run's config in their place: a run
    that fails to start (a pretrained file the backbone refuses) leaves them, and the earlier run's config."""

    priority = 'VERY_HIGH'

    def __init__(self, work_dir: str, names: Sequence[str]):
        self.work_dir, self.names = work_dir, list(names)

    def before_train(self, runner: Any) -> None:
        if runner.rank != 0:
            return
        for name in self.names:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.work_dir, name))
        runner.dump_config()
        print(f"--overwrite: deleted the earlier run's checkpoints {self.names} in {self.work_dir}", file=sys.stderr)


def misfit(model: torch.nn.Module, state_dict: dict) -> str:
    """What keeps ``state_dict`` (``module.`` prefixes stripped, as mmengine loads it) from being all of ``model``'s
    weights: tensors of other shapes and weights it lacks, described in one line; '' when it fits."""
    weights = {re.sub(r'^module\.', '', key): value for key, value in state_dict.items()
               if isinstance(value, torch.Tensor)}
    own = model.state_dict()
    resized = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in weights]
    parts = []
    if resized:
        parts.append(f'{len(resized)} tensors of other shapes (' + '; '.join(
            f'{k}: checkpoint {tuple(weights[k].shape)}, model {tuple(own[k].shape)}' for k in resized[:2]) + ')')
    if missing:
        parts.append(f'{len(missing)} of the model\'s {len(own)} tensors missing ({", ".join(missing[:3])})')
    return ', '.join(parts)


class CheckpointFitHook(Hook):
    """Refuses (:class:`CheckpointError`) a checkpoint that does not fit the model, before mmengine loads it: for
    testing and resuming, where a checkpoint of another config would be evaluated or trained on with part of the model
    as initialised, or with other scan directions than its run's (same weight shapes, other results). ``source`` names
    the checkpoint in the message."""

    priority = 'VERY_LOW'

    def __init__(self, source: str):
        self.source = source

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        model = _unwrapped(runner.model)
        problem = misfit(model, checkpoint.get('state_dict', checkpoint))
        if problem:
            raise CheckpointError(f'{self.source} does not fit the model of this config: {problem}')
        trunk = backbone_trunk(model)
        other = None if trunk is None else directions_difference(trunk, checkpoint)
        if other is not None:
            path = self.source if os.path.isfile(self.source) else 'CHECKPOINT'
            raise CheckpointError(f"{self.source} was trained with other scan directions than this config's backbone "
                                  f"({other}): give the backbone its run's directions, e.g. --cfg-options "
                                  f"model.backbone.directions={path} (the checkpoint holds them)")
