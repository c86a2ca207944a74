"""Helpers for the ops' argument checks."""
from __future__ import annotations

from typing import Mapping, Optional

import torch


def shape_str(t: torch.Tensor) -> str:
    """A tensor's shape as the error messages print it: ``(2, 3, 5)``."""
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_tensor_types(op: str, required: Mapping[str, object],
                       optional: Optional[Mapping[str, object]] = None) -> None:
    """Raise one TypeError naming ``op`` and the argument for a required argument that is not a tensor, or an optional
    one that is neither a tensor nor None (a Python number for a bias, say), before any shape is read."""
    for name, value in required.items():
        if not isinstance(value, torch.Tensor):
            got = "None" if value is None else type(value).__name__
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {got}")
    for name, value in (optional or {}).items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(value).__name__}")
