"""Mixed precision: autocast contexts and the gradient scaler (fp16 on CUDA only)."""
from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch


def autocast(device: torch.device, enabled: bool, dtype: str = "float16") -> ContextManager:
    """bf16 autocast on CPU; fp16 or bf16 (`dtype`) on CUDA; a no-op when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def make_scaler(device: torch.device, enabled: bool, dtype: str = "float16") -> Optional[torch.amp.GradScaler]:
    """A GradScaler for fp16 autocast on CUDA; None otherwise (bf16 needs no loss scaling)."""
    if enabled and device.type == "cuda" and dtype == "float16":
        return torch.amp.GradScaler("cuda")
    return None
