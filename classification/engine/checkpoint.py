"""Checkpoint files: atomic writes, the top-k manager of a run, and strict weight loading with named errors.

A training checkpoint holds `epoch`, `model`, `ema_model`, `optimizer`, `scaler` (as the original) plus `scheduler`,
`rng` (one entry per rank), `checkpoints` (the kept top-k list), `model_name` and `config` for exact resume.
The released form is `{'state_dict': weights}` (tools/convert_ckpt.py). Loading accepts both and strips `module.`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

WEIGHT_KEYS = ("state_dict", "model")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def atomic_save(obj: Any, path: str) -> None:
    """`torch.save` to a temporary file in the same folder, then rename: `path` is never left half written."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth.tar", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_copy(src: str, dst: str) -> None:
    """Copy `src` to `dst` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth.tar", dir=os.path.dirname(os.path.abspath(dst)))
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_file(path: str) -> dict[str, Any]:
    """Read a checkpoint on CPU; errors name the file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    return ckpt


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove every leading `module.` (DDP adds one, the original's EMA of a DDP model two)."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def weights_of(ckpt: Mapping[str, Any], path: str, key: Optional[str] = None) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint: `ckpt[key]`, else `state_dict` (released form), else `model` (training form)."""
    keys = (key,) if key else WEIGHT_KEYS
    for k in keys:
        if isinstance(ckpt.get(k), Mapping):
            return strip_module_prefix(ckpt[k])
    raise CheckpointError(f"{path}: no {' or '.join(repr(k) for k in keys)} weights (keys: {sorted(ckpt)})")


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    """Strictly load `state_dict` into `model`; a mismatch raises naming the file and the first differing keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(f"{label} ({len(items)}): {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}")
        raise CheckpointError(f"{path} does not fit this model (another model?): " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


class CheckpointManager:
    """Keeps the `keep_num` best `checkpoint-<epoch>.pth.tar` of a run plus `last.pth.tar` and `best.pth.tar`.

    Ranking is by the score (top-1; the EMA's when EMA is on), ties keep the earlier epoch first, as the original.
    Every file is written atomically; only the main rank writes.
    """

    def __init__(self, save_dir: str, keep_num: int = 10, enabled: bool = True):
        self.save_dir, self.keep_num, self.enabled = save_dir, keep_num, enabled
        self.ckpts: list[list] = []  # [[path, score], ...] best first

    def state_dict(self) -> list[list]:
        return [list(item) for item in self.ckpts]

    def load_state_dict(self, ckpts: list[list]) -> None:
        """Adopt a resumed run's list; entries of another folder are dropped (never evicted from there)."""
        here = os.path.abspath(self.save_dir)
        self.ckpts = [list(item) for item in ckpts if os.path.dirname(os.path.abspath(item[0])) == here]

    def update(self, epoch: int, score: float, payload: dict[str, Any]) -> list[list]:
        """Record `score` for `epoch` and write the checkpoint files; returns the kept list."""
        last = os.path.join(self.save_dir, "last.pth.tar")
        rank = sum(1 for _, s in self.ckpts if score <= s)
        if rank >= self.keep_num:
            payload["checkpoints"] = self.state_dict()
            if self.enabled:
                atomic_save(payload, last)
            return self.ckpts
        path = os.path.join(self.save_dir, f"checkpoint-{epoch}.pth.tar")
        self.ckpts.insert(rank, [path, score])
        evicted = self.ckpts[self.keep_num:]
        self.ckpts = self.ckpts[: self.keep_num]
        payload["checkpoints"] = self.state_dict()
        if self.enabled:
            atomic_save(payload, path)
            atomic_copy(path, last)
            if rank == 0:
                atomic_copy(path, os.path.join(self.save_dir, "best.pth.tar"))
            for old, _ in evicted:
                if os.path.exists(old):
                    os.remove(old)
        return self.ckpts


def convert_checkpoint(src: str, dst: str, key: str = "model") -> int:
    """Write the released form `{'state_dict': ckpt[key]}` (prefixes `module.` stripped); returns the tensor count."""
    ckpt = load_file(src)
    weights = weights_of(ckpt, src, key)
    atomic_save({"state_dict": weights}, dst)
    return len(weights)
