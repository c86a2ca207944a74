"""Inference speed and peak memory against image size: a LocalMamba model and its attention baseline timed together
(interleaved medians) at each size, the ratio, the size where the ratio crosses 1, and a figure of both curves."""
from __future__ import annotations

import csv
import math
import platform
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from localmamba_kernel_runtime import ckernel

from .model_speed import (backends_line, build_compared, default_baseline, images_per_second, settings_line,
                          variant_text)
from .peak_memory import forward_peak_mib
from .tables import render_table

SWEEP_SIZES = (224, 512, 768, 1024)


def crossing_size(sizes: Sequence[float], ratios: Sequence[float]) -> Optional[float]:
    """The first image size where ``ratios`` (model over baseline, at increasing ``sizes``) reaches 1 from either
    side, interpolated linearly in log(size) against log(ratio) between the two sizes around it; ``None`` if the
    ratio stays on one side of 1."""
    points = [(s, r) for s, r in zip(sizes, ratios) if r is not None and r > 0]
    for (s0, r0), (s1, r1) in zip(points, points[1:]):
        if r0 == 1 or r1 == 1:
            return float(s0 if r0 == 1 else s1)
        if (r0 < 1) != (r1 < 1):
            t = math.log(r0) / (math.log(r0) - math.log(r1))
            return math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0)))
    return float(points[0][0]) if len(points) == 1 and points[0][1] == 1 else None


def resolution_sweep(model: str, baseline: Optional[str] = None, sizes: Sequence[int] = SWEEP_SIZES,
                     batch: int = 1, device: str = "cpu", dtype: str = "fp32", repeats: int = 5, warmup: int = 2,
                     memory: bool = True, log: Optional[Callable[[str], None]] = None,
                     compile_mode: Optional[str] = None,
                     finished: Optional[List[Dict[str, object]]] = None,
                     model_kwargs: Optional[Mapping[str, Any]] = None,
                     directions: Optional[str] = None) -> List[Dict[str, object]]:
    """One row per image size: inference img/s of ``model`` (built with ``model_kwargs`` and ``directions``) and
    ``baseline`` (by family unless given) on the same random (batch, C, size, size) images (C: each model's input
    channels), their ratio and, unless ``memory`` is off, each forward's peak MiB above its weights and images
    (:func:`forward_peak_mib`; ``None`` where it cannot be measured), with the device's :func:`device_description`.
    ``compile_mode``: timed under ``torch.compile`` in that mode (memory stays eager). A size a model cannot take raises
    ``ConfigError``; ``log`` gets one line per size as it ends. ``finished``: a list each row is also appended to as it
    ends, which keeps them where a later size fails or is interrupted."""
    baseline = baseline or default_baseline(model)
    if log is not None:
        log(settings_line(model, baseline, device, dtype, f"batch={batch} img={','.join(map(str, sizes))}", repeats,
                          variant_text(model_kwargs, directions))
            + ("" if compile_mode is None else f" compile={compile_mode}") + f"\n{backends_line(device)}")
    rows, device_name = [], device_description(device)
    for size in sizes:
        models = build_compared(model, baseline, size, device, model_kwargs, directions, flag="--sweep")
        ips = images_per_second(models, batch, size, dtype=dtype, repeats=repeats, warmup=warmup,
                                compile_mode=compile_mode)
        del models
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        built_with = {model: dict(model_kwargs=model_kwargs, directions=directions), baseline: {}}
        peaks = {name: forward_peak_mib(name, size, batch, dtype, device, **built_with[name]) if memory else None
                 for name in (model, baseline)}
        rows.append({"model": model, "baseline": baseline, "device": torch.device(device).type,
                     "device_name": device_name, "dtype": dtype, "batch": batch, "img_size": size,
                     "model_img_s": ips[model], "baseline_img_s": ips[baseline], "ratio": ips[model] / ips[baseline],
                     "model_peak_mib": peaks[model], "baseline_peak_mib": peaks[baseline]})
        if finished is not None:
            finished.append(rows[-1])
        if log is not None:
            log(f"  {size}px: {ips[model]:.2f} vs {ips[baseline]:.2f} img/s ({ips[model] / ips[baseline]:.3f}x)"
                + "".join(f", {name} peak {_mib(peaks[name])} MiB" for name in (model, baseline) if memory))
    return rows


def read_sweep_csv(path: str) -> List[Dict[str, object]]:
    """The rows a sweep wrote with ``tools/benchmark.py --sweep ... --csv``, numbers as numbers (an empty peak, one
    not measured: ``None``)."""
    with open(path, newline="") as f:
        rows: List[Dict[str, object]] = list(csv.DictReader(f))
    for row in rows:
        row["batch"], row["img_size"] = int(row["batch"]), int(row["img_size"])
        row.setdefault("device_name", None)
        for key in ("model_img_s", "baseline_img_s", "ratio", "model_peak_mib", "baseline_peak_mib"):
            row[key] = float(row[key]) if row[key] != "" else None
    return rows


def _mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def crossing_line(rows: Sequence[Dict[str, object]]) -> str:
    """One sentence: where the ratio of one model's sweep rows first crosses 1, and which way (the ratio at the next
    size says), or that it does not in the sizes run (of one size: which is faster there)."""
    model, baseline = rows[0]["model"], rows[0]["baseline"]
    sizes = [int(r["img_size"]) for r in rows]
    ratios = [float(r["ratio"]) for r in rows]
    if len(sizes) == 1:
        side = "as fast as" if ratios[0] == 1 else f"{'faster' if ratios[0] > 1 else 'slower'} than"
        return f"{model} is {side} {baseline} at {sizes[0]} px (one size swept)"
    size = crossing_size(sizes, ratios)
    if size is None:
        side = "faster" if ratios[0] > 1 else "slower"
        return f"{model} is {side} than {baseline} at every size from {sizes[0]} to {sizes[-1]} px"
    faster_after = next((r for s, r in zip(sizes, ratios) if s > size and r != 1), ratios[-1]) > 1
    return (f"{model} {'overtakes' if faster_after else 'falls behind'} {baseline} at about {size:.0f} px "
            f"(ratio 1, interpolated on log scales)")


def format_sweep_table(rows: Sequence[Dict[str, object]]) -> str:
    """The rows of one :func:`resolution_sweep` as a titled text table and its crossing line."""
    first = rows[0]
    model, baseline = first["model"], first["baseline"]
    header = ["img px", f"{model} img/s", f"{baseline} img/s", "ratio", f"{model} peak MiB",
              f"{baseline} peak MiB"]
    lines = [[str(r["img_size"]), f"{r['model_img_s']:.2f}", f"{r['baseline_img_s']:.2f}", f"{r['ratio']:.3f}x",
              _mib(r["model_peak_mib"]), _mib(r["baseline_peak_mib"])] for r in rows]
    title = (f"resolution sweep, {model} against {baseline}: inference at batch {first['batch']}, {first['dtype']}, "
             f"{first['device']}; peak MiB above weights and images")
    return "\n".join([title + ":", render_table([header] + lines), crossing_line(rows)])


def device_description(device: Union[str, torch.device]) -> str:
    """The device a figure was measured on, for its title: the GPU's name, or the CPU's model name, thread count and
    the instruction set of the C kernels."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} threads, kernels {ckernel.isa_summary()}"


def plot_resolution_sweep(rows: Sequence[Dict[str, object]], path: str, title: str = "") -> None:
    """A PNG of sweep rows (one or more models, each with its baseline): img/s against image size on log scales,
    each model solid and its baseline dashed in the same colour, the crossing marked; beside it, peak MiB against
    size where any was measured. The title names the rows' device unless ``title`` is given."""
    from ..common.plots import pyplot, save_figure

    plt = pyplot()
    groups: Dict[str, List[Dict[str, object]]] = {}
    for row in rows:
        groups.setdefault(str(row["model"]), []).append(row)
    with_memory = any(r["model_peak_mib"] is not None or r["baseline_peak_mib"] is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if with_memory else 1, figsize=(12 if with_memory else 6.5, 4.5), squeeze=False)
    speed_ax, memory_ax = axes[0][0], axes[0][-1] if with_memory else None
    for colour, (model, group) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], groups.items()):
        sizes = [int(r["img_size"]) for r in group]
        baseline = str(group[0]["baseline"])
        for key, name, style in (("model", model, "-o"), ("baseline", baseline, "--s")):
            speed_ax.plot(sizes, [r[f"{key}_img_s"] for r in group], style, color=colour, label=name)
            if memory_ax is not None:
                memory_ax.plot(sizes, [r[f"{key}_peak_mib"] for r in group], style, color=colour, label=name)
        size = crossing_size(sizes, [float(r["ratio"]) for r in group])
        if size is not None:  # labelled inside the axes, on the side of the line with more room
            right_half = size > math.sqrt(sizes[0] * sizes[-1])
            speed_ax.axvline(size, color=colour, linestyle=":", linewidth=1)
            speed_ax.annotate(f"equal at {size:.0f} px", (size, 1), xycoords=("data", "axes fraction"),
                              color=colour, fontsize=8, ha="right" if right_half else "left", va="top",
                              textcoords="offset points",
                              xytext=(-3 if right_half else 3, -3 - 12 * list(groups).index(model)))
    all_sizes = sorted({int(r["img_size"]) for r in rows})
    first = rows[0]
    for ax, ylabel in ((speed_ax, f"images / s (batch {first['batch']}, {first['dtype']})"),
                       (memory_ax, "peak MiB of a forward above weights and images")):
        if ax is None:
            continue
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(all_sizes)
        ax.set_xticklabels([str(s) for s in all_sizes])
        ax.minorticks_off()
        ax.set_xlabel("image side (px)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or f"inference against image size: {first.get('device_name') or first['device']}",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
