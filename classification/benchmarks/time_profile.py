"""Where a model's CPU forward spends its time: torch.profiler's self time of every op, summed into groups (the
fused multi-direction mixer op, what it calls, the matrix products outside it, convolutions and copies, the rest),
with the matrix products' GFLOP/s and the multi-direction scan's nanoseconds per state update per core."""
from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from localmamba_ssm.ops.cpu.scan_merge_cpu import MERGE_RECORD, SCAN_RECORD
from torch.autograd.profiler_util import FunctionEvent

from ..models.factory import input_channels
from .model_speed import backends_line, build_model, check_image_size, inference_step, variant_text
from .tables import render_table
from .timing import DTYPES

FUSED_OP_PREFIX = "localmamba::"
MATRIX_PRODUCTS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::matmul",
                             "aten::linear"})
COPIES = frozenset({"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy", "aten::to"})
SCAN_SIZES = re.compile(re.escape(SCAN_RECORD) + r" B=(\d+) K=(\d+) L=(\d+) E=(\d+) N=(\d+)$")
SCAN, MERGE, INSIDE, PRODUCTS, CONV_COPIES, OTHERS = (
    "the scan's C kernels (gather, conv, recurrence with dt, D, gate)", "the attention + merge's C kernels",
    "the rest of the fused op (x_proj, gate MLP, layouts)", "matrix products outside it (projections, head)",
    "convolutions and copies", "the rest (elementwise ops, norms, reductions)")
GROUPS = (SCAN, MERGE, INSIDE, PRODUCTS, CONV_COPIES, OTHERS)


def op_group(event: FunctionEvent) -> str:
    """The group of :data:`GROUPS` a profiled CPU op's self time belongs to: the fused mixer op's scan and merge
    kernels by their profiler entries, what else runs in that op, and outside it by the kind of op."""
    if SCAN_SIZES.match(event.name):
        return SCAN
    if event.name == MERGE_RECORD:
        return MERGE
    parent = event
    while parent is not None:
        if parent.name.startswith(FUSED_OP_PREFIX):
            return INSIDE
        parent = parent.cpu_parent
    if event.name in MATRIX_PRODUCTS:
        return PRODUCTS
    if event.name in COPIES or "conv" in event.name:
        return CONV_COPIES
    return OTHERS


@dataclass
class ScanShare:
    """The scan kernels' self milliseconds per forward and state updates per forward at one problem size."""
    calls: int = 0
    ms: float = 0.0
    updates: int = 0


@dataclass
class TimeProfile:
    """One model's profile: self milliseconds per forward by group and by op, the matrix products' floating-point
    operations and self milliseconds per forward, and the scan's share at each problem size (B, K, L, E, N)."""
    model: str
    batch: int
    img_size: int
    dtype: str
    threads: int
    forwards: int
    group_ms: Dict[str, float]
    op_ms: Dict[str, float]
    product_flops: float
    product_ms: float
    scans: Dict[Tuple[int, ...], ScanShare]
    variant: str = ""   # how the model was built beyond its name (model_speed.variant_text)

    @property
    def total_ms(self) -> float:
        return sum(self.group_ms.values())

    def share(self, ms: float) -> float:
        """``ms`` (per forward) as a fraction of the forward's self time."""
        return ms / self.total_ms if self.total_ms else 0.0

    @property
    def product_gflops(self) -> Optional[float]:
        return self.product_flops / self.product_ms / 1e6 if self.product_ms else None

    def ns_per_update_core(self, scan: ScanShare) -> float:
        """Nanoseconds per state update per core (all threads counted busy) of the scan kernels at one size."""
        return scan.ms * 1e6 * self.threads / scan.updates


def summarize_events(events: Sequence[FunctionEvent], forwards: int) -> Dict[str, object]:
    """Self milliseconds per forward by group and by op name (the scan's entries as one), the matrix products'
    totals, and the scan's per problem size, of the CPU op events of ``forwards`` profiled forwards."""
    group_ms: Dict[str, float] = dict.fromkeys(GROUPS, 0.0)
    op_ms: Dict[str, float] = collections.defaultdict(float)
    scans: Dict[Tuple[int, ...], ScanShare] = {}
    product_flops = product_ms = 0.0
    for event in events:
        ms = event.self_cpu_time_total / 1e3 / forwards
        group_ms[op_group(event)] += ms
        sizes = SCAN_SIZES.match(event.name)
        op_ms[SCAN_RECORD if sizes else event.name] += ms
        if event.name in MATRIX_PRODUCTS and event.flops:
            product_flops += event.flops / forwards
            product_ms += ms
        if sizes:
            shape = tuple(int(size) for size in sizes.groups())
            scan = scans.setdefault(shape, ScanShare())
            scan.calls += 1
            scan.ms += ms
            scan.updates += math.prod(shape)
    for scan in scans.values():
        scan.calls //= forwards
        scan.updates //= forwards
    return dict(group_ms=group_ms, op_ms=dict(op_ms), product_flops=product_flops, product_ms=product_ms,
                scans=scans)


def profile_model(name: str, batch: int = 8, img_size: int = 224, dtype: str = "fp32", forwards: int = 3,
                  warmup: int = 2, model_kwargs: Optional[Mapping[str, Any]] = None,
                  directions: Optional[str] = None) -> TimeProfile:
    """Profile ``forwards`` inference forwards (eval mode, inference_mode, autocast for a 16-bit ``dtype``) of
    registered model ``name`` (built with ``model_kwargs`` and ``directions``) on random (batch, C, img_size,
    img_size) images on the CPU, after ``warmup`` untimed ones; ``ConfigError`` when the model cannot take that
    size."""
    model = build_model(name, img_size, "cpu", model_kwargs=model_kwargs, directions=directions)
    check_image_size(model, name, img_size)
    images = torch.randn(batch, input_channels(model), img_size, img_size, generator=torch.Generator().manual_seed(0))
    step = inference_step(model, images, DTYPES[dtype])
    for _ in range(warmup):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True,
                                with_flops=True) as prof:
        for _ in range(forwards):
            step()
    events = [event for event in prof.events() if event.device_type == torch.autograd.DeviceType.CPU]
    return TimeProfile(name, batch, img_size, dtype, torch.get_num_threads(), forwards,
                       **summarize_events(events, forwards), variant=variant_text(model_kwargs, directions))


def format_time_profile(profile: TimeProfile, top: int = 8) -> str:
    """The profile as text: a settings line, the groups' shares and milliseconds, the ops with most self time, the
    matrix products' share and GFLOP/s, and the scan's nanoseconds per state update per core."""
    lines = [f"profile: model={profile.model}{profile.variant} batch={profile.batch} img={profile.img_size} device=cpu "
             f"dtype={profile.dtype} threads={profile.threads} forwards={profile.forwards} "
             f"(torch.profiler self time per forward, inference_mode)", backends_line("cpu")]
    rows: List[List[str]] = [["group", "share", "ms/forward"]]
    rows += [[group, f"{100 * profile.share(ms):.1f} %", f"{ms:.1f}"] for group, ms in profile.group_ms.items()]
    rows.append(["total", "100.0 %", f"{profile.total_ms:.1f}"])
    lines.append(render_table(rows))
    busiest = sorted(profile.op_ms.items(), key=lambda item: -item[1])[:top]
    lines.append("most self time: " + ", ".join(f"{op} {100 * profile.share(ms):.1f} %" for op, ms in busiest))
    if profile.product_gflops is not None:
        lines.append(f"matrix products (mm, addmm, bmm; inside and outside the fused op): "
                     f"{100 * profile.share(profile.product_ms):.1f} % of the forward, "
                     f"{profile.product_gflops:.1f} GFLOP/s on {profile.threads} thread(s)")
    if profile.scans:
        rows = [["scan B x K x L x E x N", "calls", "ms/forward", "share", "ns/update/core"]]
        rows += [["x".join(map(str, shape)), str(scan.calls), f"{scan.ms:.1f}", f"{100 * profile.share(scan.ms):.1f} %",
                  f"{profile.ns_per_update_core(scan):.3f}"] for shape, scan in profile.scans.items()]
        lines.append(render_table(rows))
    return "\n".join(lines)


def profile_rows(profile: TimeProfile) -> List[Dict[str, object]]:
    """The profile as CSV rows: one per group, then one per scan problem size (with its ns per update per core)."""
    base = {"model": profile.model, "batch": profile.batch, "img_size": profile.img_size, "dtype": profile.dtype,
            "threads": profile.threads}
    rows = [{**base, "part": group, "ms_per_forward": ms, "share": profile.share(ms), "ns_per_update_core": ""}
            for group, ms in profile.group_ms.items()]
    rows += [{**base, "part": "scan " + "x".join(map(str, shape)), "ms_per_forward": scan.ms,
              "share": profile.share(scan.ms), "ns_per_update_core": profile.ns_per_update_core(scan)}
             for shape, scan in profile.scans.items()]
    return rows
