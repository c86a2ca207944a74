"""Interleaved median timings: every repeat times every contender in turn, so machine noise hits all alike."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Union

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: Union[str, torch.device]) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int = 2,
                   device: Union[str, torch.device] = "cpu") -> Dict[str, float]:
    """Median seconds of each step, the steps interleaved in every repeat after ``warmup`` untimed ones."""
    samples: Dict[str, List[float]] = {name: [] for name in steps}
    for repeat in range(warmup + repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if repeat >= warmup:
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}
