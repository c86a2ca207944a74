"""Helpers for the ops' argument checks."""
from __future__ import annotations

import torch


def shape_str(t: torch.Tensor) -> str:
    """A tensor's shape as the error messages print it: ``(2, 3, 5)``."""
    return "(" + ", ".join(str(s) for s in t.shape) + ")"
