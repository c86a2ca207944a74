"""Interleaved median timings: every repeat times every contender in turn, so machine noise hits all alike."""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Dict, List, Optional, Union

import torch

from ..engine.distributed import parse_device as parse_run_device
from ..engine.logs import format_eta

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: Union[str, torch.device]) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_device(name: str) -> torch.device:
    """A benchmark tool's ``--device`` (auto, cpu, cuda or cuda:N; refused as training refuses it), with GPU N made
    the current device for cuda:N: what a benchmark does on "the" GPU follows the current device (CUDA graphs'
    capture streams, timing events, ``torch.compile``'s graphs), so timing GPU 1's tensors from GPU 0 mixed both."""
    device = parse_run_device(name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def median_seconds(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int = 2,
                   device: Union[str, torch.device] = "cpu",
                   progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, float]:
    """Median seconds of each step, the steps interleaved in every repeat after ``warmup`` untimed ones;
    ``progress(done, total)`` is called after each repeat (warmup included)."""
    samples: Dict[str, List[float]] = {name: [] for name in steps}
    for repeat in range(warmup + repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if repeat >= warmup:
                samples[name].append(time.perf_counter() - start)
        if progress is not None:
            progress(repeat + 1, warmup + repeats)
    return {name: statistics.median(v) for name, v in samples.items()}


def progress_reporter(log: Callable[[str], None], what: str = "forwards",
                      clock: Callable[[], float] = time.perf_counter) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback for :func:`median_seconds` that logs `done/total`, the elapsed time and
    an ETA after the first call and after every tenth of ``total``."""
    start = clock()

    def report(done: int, total: int) -> None:
        if done != 1 and done % max(1, math.ceil(total / 10)) and done != total:
            return
        elapsed = clock() - start
        log(f"{what} {done}/{total}, elapsed {format_eta(elapsed)}, ETA {format_eta(elapsed / done * (total - done))}")

    return report


def cuda_graph_seconds(step: Callable[[], None], repeats: int, warmup: int = 3,
                       device: Union[str, torch.device] = "cuda") -> float:
    """Seconds per replay of ``step`` captured in a CUDA graph, timed with CUDA events over ``repeats`` back-to-back
    replays: the device's time for the step without the host's Python and launch overhead."""
    device = torch.device(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm up off the default stream, as capture requires
        for _ in range(warmup):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats
