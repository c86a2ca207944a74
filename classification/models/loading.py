"""Reading model weights out of the checkpoint containers that LocalMamba tools and the original code write."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

# Containers, in the order they are looked for: released files, training checkpoints, EMA weights.
STATE_DICT_KEYS = ('state_dict', 'model', 'ema_model', 'state_dict_ema')


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = 'module.') -> dict[str, torch.Tensor]:
    """Remove every leading ``prefix`` (DDP wraps once, the original EMA of a DDP model twice) from all keys."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(prefix):
            key = key[len(prefix):]
        out[key] = value
    return out


def extract_state_dict(checkpoint: Mapping[str, Any], key: Optional[str] = None) -> dict[str, torch.Tensor]:
    """The weights inside a checkpoint: ``checkpoint[key]`` if given, else the first of STATE_DICT_KEYS present,
    else the checkpoint itself when it is already a flat tensor dict; ``module.`` prefixes stripped."""
    if key is not None:
        if key not in checkpoint or checkpoint[key] is None:
            raise KeyError(f'checkpoint has no {key!r} entry (found: {sorted(checkpoint)})')
        return strip_prefix(checkpoint[key])
    for candidate in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(candidate), Mapping):
            return strip_prefix(checkpoint[candidate])
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return strip_prefix(checkpoint)
    raise KeyError(f'no weights found in checkpoint: expected one of {STATE_DICT_KEYS} (found: {sorted(checkpoint)})')
