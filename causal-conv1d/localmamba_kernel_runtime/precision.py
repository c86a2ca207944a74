"""Helpers that keep kernels computing in fp32 (fp64 for fp64 inputs), also under ``torch.autocast``."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch


def compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """fp64 when any given floating tensor is fp64, else fp32 (half and bf16 inputs are upcast)."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def autocast_off(device_type: str) -> ContextManager:
    """Disable autocast for ``device_type`` if it is on (a no-op otherwise, so tracing and export stay plain)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
