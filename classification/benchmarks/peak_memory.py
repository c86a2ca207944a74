"""Peak memory of one inference forward: the memory it needs above what the process held before it (weights and
images). On CUDA the caching allocator's peak; on a Linux CPU the peak resident size, measured in a fresh process
whose allocator hands freed blocks back to the system, because a process that has run other models keeps their freed
memory and reuses it, which would hide part of the peak."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any, Callable, Mapping, Optional, Union

import torch

from ..engine.torchrun import how_it_ended
from ..models.factory import input_channels
from .model_speed import build_model, inference_step
from .timing import DTYPES, synchronize

PROC_STATUS = "/proc/self/status"
PROC_CLEAR_REFS = "/proc/self/clear_refs"
RESET_PEAK_RSS = "5"  # clear_refs: set the peak resident size (VmHWM) to the current one (Linux 4.0+)
# glibc: blocks of 128 KiB and more are mapped and unmapped on their own (the fixed value turns off glibc's raising
# of the threshold after frees), so freed tensors leave the resident size at once
CHILD_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "MALLOC_TRIM_THRESHOLD_": str(128 * 1024)}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class PeakMemoryError(RuntimeError):
    """The fresh process that measures a forward's peak memory failed (its last line of error, or the signal that
    killed it)."""


def _status_kib(field: str) -> int:
    with open(PROC_STATUS) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{PROC_STATUS} has no {field}")


def rss_peak_supported() -> bool:
    """Whether this process can reset and read its peak resident size (Linux with /proc)."""
    try:
        _status_kib("VmHWM")
        return os.access(PROC_CLEAR_REFS, os.W_OK)
    except OSError:
        return False


def rss_peak_mib(step: Callable[[], None]) -> float:
    """MiB by which the resident size of this process peaked above its size before ``step`` while ``step`` ran; 0 for
    a step that stays below it (the peak read after such a step can be a few pages below the size read before it:
    a sweep row read -0.078 MiB)."""
    with open(PROC_CLEAR_REFS, "w") as f:
        f.write(RESET_PEAK_RSS)
    before = _status_kib("VmRSS")
    step()
    return max(0.0, (_status_kib("VmHWM") - before) / 1024)


def cuda_peak_mib(step: Callable[[], None], device: Union[str, torch.device], above_current: bool = True) -> float:
    """MiB of the CUDA allocator's peak of allocated memory while ``step`` ran: above its level before ``step``, or
    in all (``above_current=False``: the tensors held before count too)."""
    synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if above_current else 0
    step()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20


def _forward_step(name: str, img_size: int, batch: int, dtype: str, device: Union[str, torch.device],
                  built_with: Optional[Mapping[str, Any]] = None):
    model = build_model(name, img_size, device, **(built_with or {}))
    images = torch.randn(batch, input_channels(model), img_size, img_size, device=device)
    step = inference_step(model, images, DTYPES[dtype])
    step()  # once before the measured call: lazily built kernels, caches and workspaces are not the forward's
    return step


def measure_here(name: str, img_size: int, batch: int, dtype: str = "fp32", threads: Optional[int] = None,
                 built_with: Optional[Mapping[str, Any]] = None) -> float:
    """:func:`rss_peak_mib` of one CPU forward of ``name`` (built with ``built_with``, :func:`build_model`'s keyword
    arguments) in this process (the child of :func:`forward_peak_mib`)."""
    if threads:
        torch.set_num_threads(threads)
    return rss_peak_mib(_forward_step(name, img_size, batch, dtype, "cpu", built_with))


def _child_command(name: str, img_size: int, batch: int, dtype: str, threads: int,
                   built_with: Mapping[str, Any]) -> list:
    code = ("import json, sys; from classification.benchmarks.peak_memory import measure_here; "
            "print(json.dumps(measure_here(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], "
            "int(sys.argv[5]), json.loads(sys.argv[6]))))")
    return [sys.executable, "-c", code, name, str(img_size), str(batch), dtype, str(threads), json.dumps(built_with)]


def forward_peak_mib(name: str, img_size: int, batch: int = 1, dtype: str = "fp32",
                     device: Union[str, torch.device] = "cpu", model_kwargs: Optional[Mapping[str, Any]] = None,
                     directions: Optional[str] = None) -> Optional[float]:
    """MiB one inference forward of model ``name`` (built with ``model_kwargs`` and ``directions``, as
    :func:`build_model` takes them) on (batch, C, img_size, img_size) images needs above its weights and images: on
    CUDA in this process, on a Linux CPU in a fresh Python process (same thread count); ``None`` where neither can be
    measured. ``PeakMemoryError`` where the fresh process fails (its last line of error, or the signal that killed
    it)."""
    device = torch.device(device)
    built_with = dict(model_kwargs=dict(model_kwargs or {}), directions=directions)
    if device.type == "cuda":
        return cuda_peak_mib(_forward_step(name, img_size, batch, dtype, device, built_with), device)
    if device.type != "cpu" or not rss_peak_supported():
        return None
    env = dict(os.environ, **CHILD_MALLOC_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    done = subprocess.run(_child_command(name, img_size, batch, dtype, torch.get_num_threads(), built_with), env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr.strip() or _exit_reason(done.returncode)).splitlines()
        raise PeakMemoryError(f"peak memory of {name} at {img_size}px: {lines[-1]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def _exit_reason(returncode: int) -> str:
    """Why a child process that printed no error ended: the signal that killed it (SIGKILL: most often the kernel's
    out-of-memory killer), or its exit status."""
    oom = " (most often the out-of-memory killer: try a smaller --sweep size or --sweep-batch)" \
        if returncode == -signal.SIGKILL else ""
    return how_it_ended(returncode, "killed") + oom
