"""Mixed precision: the autocast dtype of a run, its autocast context and gradient scaler, and the log line saying
which precision it trains and evaluates in."""
from __future__ import annotations

import contextlib
import logging
from typing import ContextManager, Optional

import torch

DEFAULT_DTYPES = {"cuda": "float16", "cpu": "bfloat16"}   # `--amp-dtype` left unset, per device type


def amp_dtype(device: torch.device, dtype: Optional[str] = None) -> torch.dtype:
    """The autocast dtype of `--amp-dtype` (`dtype`, 'float16' or 'bfloat16') on `device`; None takes the device's
    default: fp16 on CUDA (as the original), bf16 elsewhere."""
    return getattr(torch, dtype or DEFAULT_DTYPES.get(device.type, "bfloat16"))


def autocast(device: torch.device, enabled: bool, dtype: Optional[str] = None) -> ContextManager:
    """Autocast to `amp_dtype(device, dtype)`; a no-op when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(device, dtype))


def make_scaler(device: torch.device, enabled: bool, dtype: Optional[str] = None) -> Optional[torch.amp.GradScaler]:
    """A GradScaler for fp16 autocast (on CUDA or the CPU); None otherwise (bf16 needs no loss scaling)."""
    if enabled and amp_dtype(device, dtype) == torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def _cpu_computes_natively(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs `dtype` matrix products natively on this CPU (AVX-512 BF16 / FP16 or AMX); without, a
    half-precision product is emulated and slower than fp32."""
    check = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return True  # a torch without the check: say nothing


def log_precision(log: logging.Logger, device: torch.device, train_amp: Optional[bool], eval_amp: bool,
                  dtype: Optional[str]) -> None:
    """Log the precision of training (`train_amp`; None for an evaluation alone) and evaluation, and warn when
    autocast on a CPU is emulated (a step then takes several times as long as in fp32)."""
    autocast_dtype = amp_dtype(device, dtype)
    half = str(autocast_dtype).replace("torch.", "")
    scaled = " with a GradScaler" if autocast_dtype == torch.float16 else ""
    parts = [] if train_amp is None else [f"training in {f'{half} autocast{scaled}' if train_amp else 'fp32'}"]
    parts.append(f"evaluation in {f'{half} autocast' if eval_amp else 'fp32'}")
    log.info(f"Precision on {device.type}: {', '.join(parts)}")
    if device.type == "cpu" and (train_amp or eval_amp) and not _cpu_computes_natively(autocast_dtype):
        log.warning(f"this CPU has no native {half} matrix products (oneDNN emulates them): autocast runs several "
                    f"times slower than fp32 here; leave out --amp{' and --amp-eval' if eval_amp else ''} for speed")
