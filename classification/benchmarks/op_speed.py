"""Kernel-op timings: each available backend of an op against the plain-PyTorch reference, forward (under no_grad)
and forward + backward, interleaved medians. Defaults: the selective scan at the LocalVim-T shape (batch 8, inner
width 384, L = 196, N = 16) with z, D, delta_bias, softplus and variable B/C; ``multi_scan`` is the fused
multi-direction op at a LocalVim-T layer (``mixer_ops.mixer_problem``: 14x14 grid and class token, four directions);
``state_update`` is one decoding step (``selective_state_update``: state (B, D, N) updated in place, with D, z,
dt_bias and softplus), inference only: forward timings alone.

For the scans the table also gives, on the CPU, the forward's nanoseconds per state update per core, time * threads
/ (updates), updates = B * D * L * N (times the directions for ``multi_scan``, B * D * N for one decoding step; none
on a GPU, whose cores are not the CPU threads), and the backward's time over the forward's (backward = forward +
backward minus forward; the two are timed in separate loops, so where noise makes forward + backward no slower than
forward the table says so instead of giving a ratio)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from unittest import mock

import torch
from localmamba_kernel_runtime import backends, ckernel

from ..models.scan_maps import sequence_index
from .mixer_ops import LAYER_DIRECTIONS, SCAN_TILES, mixer_problem
from .op_problems import conv_problem, inner_problem, scan_problem, state_update_problem
from .tables import render_table
from .timing import DTYPES, cuda_graph_seconds, median_seconds

OP_NAMES = {"scan": "selective_scan", "inner": "selective_scan", "conv1d": "causal_conv1d",
            "multi_scan": "multi_scan_inner", "state_update": "selective_state_update"}
INFERENCE_ONLY = {"state_update"}    # ops without a backward: timed forward only
LAYER_GRID = (14, 14)
NOISY_BACKWARD = "n/a (noise: fwd+bwd <= fwd)"


@dataclass(frozen=True)
class OpShape:
    """Problem size: batch, channels (the inner width E), sequence length, state size, conv1d width."""

    batch: int = 8
    dim: int = 384
    seqlen: int = 196
    dstate: int = 16
    width: int = 4


@dataclass
class Case:
    """One benchmark problem: ``run()`` does a forward pass and returns the output, ``inputs`` need gradients;
    ``updates``: state updates per forward (scans and the decoding step only)."""

    run: Callable[[], torch.Tensor]
    inputs: Sequence[torch.Tensor]
    updates: Optional[int] = None


def scan_case(shape: OpShape, device: torch.device, dtype: torch.dtype) -> Case:
    """selective_scan_fn with z, D, delta_bias, softplus and variable B/C of shape (Bt, 1, N, L)."""
    fn, inputs, _ = scan_problem(device, dtype, "var4", 1, shape.dim, shape.seqlen, shape.dstate, softplus=True,
                                 use_z=True, last=False, batch=shape.batch)
    return Case(fn, inputs, updates=shape.batch * shape.dim * shape.seqlen * shape.dstate)


def multi_scan_case(shape: OpShape, device: torch.device, dtype: torch.dtype) -> Case:
    """multi_scan_inner_fn (conv, projections, scan, gate; four directions) at a LocalVim-T layer with the batch,
    inner width and state size of ``shape`` (its seqlen does not apply: the grid and windows fix L)."""
    fn, inputs, _ = mixer_problem(device, dtype, batch=shape.batch, grid=LAYER_GRID, inner=shape.dim,
                                  state=shape.dstate)
    seqlen = op_shape("multi_scan", shape).seqlen
    return Case(fn, inputs, updates=shape.batch * len(LAYER_DIRECTIONS) * shape.dim * seqlen * shape.dstate)


def inner_case(shape: OpShape, device: torch.device, dtype: torch.dtype) -> Case:
    """mamba_inner_fn_no_out_proj with LocalVim-T sizes: E = dim, R = ceil(E / 32) (autocast for bf16/fp16)."""
    fn, inputs, _ = inner_problem(device, dtype, shape.dim, shape.seqlen, shape.dstate, batch=shape.batch,
                                  width=shape.width)
    return Case(fn, inputs)


def conv1d_case(shape: OpShape, device: torch.device, dtype: torch.dtype) -> Case:
    """causal_conv1d_fn with SiLU: x (Bt, dim, L), weight (dim, width), bias."""
    fn, inputs, _ = conv_problem(device, dtype, shape.width, True, shape.dim, shape.seqlen, batch=shape.batch)
    return Case(fn, inputs)


def state_update_case(shape: OpShape, device: torch.device, dtype: torch.dtype) -> Case:
    """selective_state_update with D, z, dt_bias and softplus: a state (Bt, dim, dstate) stepped in place, as a
    decoding loop does (no sequence length: one token)."""
    fn, _, _ = state_update_problem(device, dtype, shape.dim, shape.dstate, batch=shape.batch, copy_state=False)
    return Case(lambda: fn()[0], [], updates=shape.batch * shape.dim * shape.dstate)


CASES = {"scan": scan_case, "inner": inner_case, "conv1d": conv1d_case, "multi_scan": multi_scan_case,
         "state_update": state_update_case}
# The OpShape fields each op's problem takes (multi_scan's length is its layer's; the scans have no conv1d).
OP_SIZES = {"scan": ("batch", "dim", "seqlen", "dstate"), "inner": ("batch", "dim", "seqlen", "dstate", "width"),
            "conv1d": ("batch", "dim", "seqlen", "width"), "multi_scan": ("batch", "dim", "dstate"),
            "state_update": ("batch", "dim", "dstate")}
SIZE_LETTERS = {"batch": "B", "dim": "D", "seqlen": "L", "dstate": "N", "width": "W"}


def problem_sizes(op: str) -> tuple[str, ...]:
    """The OpShape fields of ``op``'s problem, in ``SIZE_LETTERS``' order: ``OP_SIZES``, and multi_scan's length
    (fixed by its layer, not a flag)."""
    return tuple(name for name in SIZE_LETTERS if name in OP_SIZES[op] or (op, name) == ("multi_scan", "seqlen"))


def _backend_step(case: Case, backend: str, backward: bool) -> Callable[[], None]:
    """One forward (under no_grad) or forward + backward of ``case`` with ``backend`` forced."""

    def step() -> None:
        backends.force_backend(backend)
        for t in case.inputs:
            t.grad = None
        if backward:
            case.run().float().sum().backward()
        else:
            with torch.no_grad():
                case.run()

    return step


def op_shape(op: str, shape: OpShape) -> OpShape:
    """The problem ``op`` runs for ``shape``: ``multi_scan`` fixes its length (the LocalVim-T layer's tokens and
    windows, with the class token), the other ops take ``shape`` as it is."""
    if op != "multi_scan":
        return shape
    return replace(shape, seqlen=sequence_index(LAYER_DIRECTIONS, LAYER_GRID, LAYER_GRID[0] * LAYER_GRID[1] // 2)
                   .shape[1])


def unavailable_backends(op: str, device: str, requested: Sequence[str]) -> List[str]:
    """The names in ``requested`` that :func:`benchmark_op` cannot time for ``op`` on ``device`` (unknown names,
    backends not available there); the reference is always timed."""
    available = set(backends.available_backends(OP_NAMES[op], torch.device(device))) & set(backends.KERNEL_BACKENDS)
    return [name for name in requested if name not in available | {"reference"}]


def benchmark_op(op: str, shape: OpShape = OpShape(), device: str = "cpu", dtype: str = "fp32",
                 only_backends: Optional[Sequence[str]] = None, repeats: int = 10, warmup: int = 2,
                 backward: bool = True, finished: Optional[List[Dict[str, object]]] = None) -> List[Dict[str, object]]:
    """Time ``op`` (a key of ``CASES``) on every backend available for ``device`` (or those of ``only_backends``)
    and the reference; one row per backend with milliseconds and the speedup over the reference. ``finished``: a
    list the rows are also appended to once the forward timings end (their forward + backward figures are filled in
    when those end), which keeps the forward figures where Ctrl-C stops the forward + backward timings. An op of
    ``INFERENCE_ONLY`` is timed forward only."""
    device, shape = torch.device(device), op_shape(op, shape)
    backward = backward and op not in INFERENCE_ONLY
    names = [b for b in backends.available_backends(OP_NAMES[op], device)
             if b in backends.KERNEL_BACKENDS and (not only_backends or b in only_backends)]  # composed: not forceable
    if "reference" not in names:
        names.append("reference")
    case = CASES[op](shape, device, DTYPES[dtype])
    medians: Dict[str, Dict[str, float]] = {name: {} for name in names}
    rows: List[Dict[str, object]] = []
    with backends.restoring_choice():
        for mode, with_backward in (("fwd", False), ("fwd+bwd", True)):
            if with_backward and not backward:
                continue
            steps = {name: _backend_step(case, name, with_backward) for name in names}
            for name, seconds in median_seconds(steps, repeats, warmup, device).items():
                medians[name][mode] = seconds * 1e3
            if device.type == "cuda":
                for name, step in steps.items():
                    if name != "reference":
                        medians[name][mode + " graph"] = _graph_ms(step, repeats, device)
            timed = [_op_row(op, name, shape, device, dtype, medians, case.updates) for name in names]
            if rows:  # forward + backward: the rows of the forward timings get its figures
                for row, figures in zip(rows, timed):
                    row.update(figures)
            else:
                rows = timed
                if finished is not None:
                    finished.extend(rows)
    return rows


def _op_row(op: str, name: str, shape: OpShape, device: torch.device, dtype: str,
            medians: Dict[str, Dict[str, float]], updates: Optional[int]) -> Dict[str, object]:
    """The row of backend ``name`` from the milliseconds timed so far (``medians``: backend -> mode -> ms); the
    forward + backward figures are None until that mode is timed."""
    m, ref, threads = medians[name], medians["reference"], torch.get_num_threads()
    fb = m.get("fwd+bwd")
    return {"op": op, "backend": name, "device": device.type, "dtype": dtype,
            "shape": " ".join(f"{SIZE_LETTERS[size]}={getattr(shape, size)}" for size in problem_sizes(op)),
            "threads": threads, "fwd_ms": m["fwd"], "fwd_speedup": ref["fwd"] / m["fwd"],
            "fwdbwd_ms": fb, "fwdbwd_speedup": None if fb is None else ref["fwd+bwd"] / fb,
            "fwd_ns_per_update_core": (None if updates is None or device.type != "cpu"
                                       else m["fwd"] * 1e6 * threads / updates),
            "bwd_over_fwd": None if fb is None else (fb - m["fwd"]) / m["fwd"],
            "fwd_graph_ms": m.get("fwd graph"), "fwdbwd_graph_ms": m.get("fwd+bwd graph")}


def _graph_ms(step: Callable[[], None], repeats: int, device: torch.device) -> Optional[float]:
    """Milliseconds per CUDA-graph replay of ``step`` (None, with the reason printed, where capture fails)."""
    try:
        return cuda_graph_seconds(step, repeats, device=device) * 1e3
    except Exception as err:  # a backend that cannot be captured still has its plain timing
        print(f"(no CUDA-graph timing: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        return None


def _backward_ratio_cell(bwd_over_fwd: Optional[float]) -> str:
    """The bwd/fwd cell: '-' without a backward timing, :data:`NOISY_BACKWARD` where the backward's time (forward +
    backward minus forward) is not positive, else the ratio."""
    if bwd_over_fwd is None:
        return "-"
    return f"{bwd_over_fwd:.2f}x" if bwd_over_fwd > 0 else NOISY_BACKWARD


def format_op_table(rows: List[Dict[str, object]]) -> str:
    """The rows of :func:`benchmark_op` as a text table; on CUDA with the CUDA-graph replay times (the device's time
    without the host's launch overhead) as two more columns."""
    header = ["backend", "fwd ms", "fwd speedup", "fwd ns/update/core", "fwd+bwd ms", "fwd+bwd speedup", "bwd/fwd"]
    graphed = any(r.get("fwd_graph_ms") is not None for r in rows)
    if graphed:
        header += ["fwd graph ms", "fwd+bwd graph ms"]

    def fmt(value, spec: str, suffix: str = "") -> str:
        return "-" if value is None else format(value, spec) + suffix

    table = [header]
    for r in rows:
        table.append([str(r["backend"]), f"{r['fwd_ms']:.3f}", f"{r['fwd_speedup']:.1f}x",
                      fmt(r["fwd_ns_per_update_core"], ".3f"), fmt(r["fwdbwd_ms"], ".3f"),
                      fmt(r["fwdbwd_speedup"], ".1f", "x"), _backward_ratio_cell(r["bwd_over_fwd"])])
        if graphed:
            table[-1] += [fmt(r.get("fwd_graph_ms"), ".3f"), fmt(r.get("fwdbwd_graph_ms"), ".3f")]
    return render_table(table)


def print_op_benchmark(op: str, shape: OpShape = OpShape(), device: str = "cpu", dtype: str = "fp32",
                       only_backends: Optional[Sequence[str]] = None, repeats: int = 10, warmup: int = 2,
                       backward: bool = True, finished: Optional[List[Dict[str, object]]] = None
                       ) -> List[Dict[str, object]]:
    """:func:`benchmark_op`, printed with a header line naming the problem; returns the rows. ``finished``: as
    :func:`benchmark_op`'s; the rows it holds are printed also where the timings stop early (Ctrl-C)."""
    rows: List[Dict[str, object]] = []
    try:
        benchmark_op(op, shape, device, dtype, only_backends, repeats, warmup, backward, finished=rows)
    finally:
        if finished is not None:
            finished.extend(rows)
        if rows:
            shape = op_shape(op, shape)
            sizes = " ".join(f"{name}={getattr(shape, name)}" for name in problem_sizes(op))
            print(f"op={op} device={torch.device(device).type} dtype={dtype} {sizes} threads={torch.get_num_threads()} "
                  f"cpu_isa={ckernel.isa_summary()} repeats={repeats} (medians, interleaved; fwd under no_grad)")
            print(format_op_table(rows), flush=True)
    return rows


def scan_tile_sweep(device: str = "cuda", shape: OpShape = OpShape(), repeats: int = 20,
                    tiles: Sequence[Tuple[int, int]] = SCAN_TILES) -> str:
    """Milliseconds of the triton ``selective_scan_fn`` at ``shape`` (fp32) for each (time steps, channels) tile of
    its kernels, per call and (on CUDA) per CUDA-graph replay: to pick the default on a GPU."""
    from localmamba_ssm.ops.triton import selective_scan_triton as kernels

    device = torch.device(device)
    default = (kernels.CHUNK, kernels.MAX_BLOCK_D)
    case = scan_case(shape, device, torch.float32)
    rows = [["tiles (steps x channels)", "fwd ms", "fwd+bwd ms", "fwd graph ms", "fwd+bwd graph ms"]]
    with backends.restoring_choice():
        for chunk, block in [default] + [t for t in tiles if t != default]:
            with mock.patch.multiple(kernels, CHUNK=chunk, MAX_BLOCK_D=block):
                steps = {mode: _backend_step(case, "triton", mode == "fwd+bwd") for mode in ("fwd", "fwd+bwd")}
                seconds = median_seconds(steps, repeats, 2, device)
                graphed = {mode: _graph_ms(step, repeats, device) if device.type == "cuda" else None
                           for mode, step in steps.items()}
            label = f"{chunk}x{block}" + (" (default)" if (chunk, block) == default else "")
            rows.append([label, f"{seconds['fwd'] * 1e3:.3f}", f"{seconds['fwd+bwd'] * 1e3:.3f}",
                         *("-" if graphed[m] is None else f"{graphed[m]:.3f}" for m in ("fwd", "fwd+bwd"))])
    return (f"selective_scan_fn triton tiles, batch={shape.batch} dim={shape.dim} seqlen={shape.seqlen} "
            f"dstate={shape.dstate} fp32 (medians of {repeats})\n" + render_table(rows))
