"""Speed benchmarks: each available backend of a kernel op against the plain-PyTorch reference, in one process.

    python tools/benchmark.py --op scan                      # selective scan at the LocalVim-T shape
    python tools/benchmark.py --op inner --threads 2 --csv out.csv
    python tools/benchmark.py --op conv1d --device cuda --dtype bf16

Runs are interleaved (every repeat times every backend in turn) and summarised by medians; the table gives
milliseconds and the speedup over the reference, for the forward pass (under no_grad) and for forward + backward.
Defaults: batch 8, dim 384 (LocalVim-T inner width E), seqlen 196, dstate 16, z/D/delta_bias/softplus, variable B/C.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

import torch

from localmamba_conv1d import backends, causal_conv1d_fn
from localmamba_ssm import mamba_inner_fn_no_out_proj, selective_scan_fn

OP_NAMES = {"scan": "selective_scan", "inner": "selective_scan", "conv1d": "causal_conv1d"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Case:
    """One benchmark problem: ``run()`` does a forward pass and returns the output, ``inputs`` need gradients."""

    run: Callable[[], torch.Tensor]
    inputs: Sequence[torch.Tensor]


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_()


def scan_case(args, device, dtype) -> Case:
    """selective_scan_fn with z, D, delta_bias, softplus and variable B/C of shape (Bt, 1, N, L)."""
    g = torch.Generator().manual_seed(0)
    bt, dm, seqlen, n = args.batch, args.dim, args.seqlen, args.dstate

    def rand(*shape, scale=1.0, dt=dtype):
        return _leaf((torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt))

    u, delta, z = rand(bt, dm, seqlen), rand(bt, dm, seqlen, scale=0.5), rand(bt, dm, seqlen)
    B, C = rand(bt, 1, n, seqlen), rand(bt, 1, n, seqlen)
    A = _leaf(-torch.exp(torch.randn(dm, n, generator=g) * 0.5).to(device))
    D, bias = rand(dm, dt=torch.float32), rand(dm, scale=0.5, dt=torch.float32)
    return Case(lambda: selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True),
                [u, delta, A, B, C, D, z, bias])


def inner_case(args, device, dtype) -> Case:
    """mamba_inner_fn_no_out_proj with LocalVim-T sizes: E = dim, R = ceil(E / 32), W = 4 (autocast for bf16/fp16)."""
    g = torch.Generator().manual_seed(0)
    bt, e, seqlen, n = args.batch, args.dim, args.seqlen, args.dstate
    rank = math.ceil(e / 32)

    def rand(*shape, scale=1.0, dt=torch.float32):
        return _leaf((torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt))

    xz = rand(bt, 2 * e, seqlen, dt=dtype)
    conv_w, conv_b = rand(e, 1, args.width, scale=0.5), rand(e, scale=0.1)
    x_proj, dt_proj = rand(rank + 2 * n, e, scale=e ** -0.5), rand(e, rank, scale=rank ** -0.5)
    A = _leaf(-torch.exp(torch.randn(e, n, generator=g) * 0.5).to(device))
    D, dt_bias = rand(e), rand(e, scale=0.5)
    params = [xz, conv_w, conv_b, x_proj, dt_proj, A, D, dt_bias]

    def run():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return mamba_inner_fn_no_out_proj(xz, conv_w, conv_b, x_proj, dt_proj, A, None, None, D, dt_bias,
                                              delta_softplus=True)

    return Case(run, params)


def conv1d_case(args, device, dtype) -> Case:
    """causal_conv1d_fn with SiLU: x (Bt, dim, L), weight (dim, width), bias."""
    g = torch.Generator().manual_seed(0)
    x = _leaf(torch.randn(args.batch, args.dim, args.seqlen, generator=g).to(device=device, dtype=dtype))
    w = _leaf(torch.randn(args.dim, args.width, generator=g).to(device))
    b = _leaf(torch.randn(args.dim, generator=g).to(device))
    return Case(lambda: causal_conv1d_fn(x, w, b, activation="silu"), [x, w, b])


CASES = {"scan": scan_case, "inner": inner_case, "conv1d": conv1d_case}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(case: Case, backward: bool, device: torch.device) -> float:
    for t in case.inputs:
        t.grad = None
    _sync(device)
    start = time.perf_counter()
    if backward:
        case.run().float().sum().backward()
    else:
        with torch.no_grad():
            case.run()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def time_backends(case: Case, names: List[str], args, device) -> Dict[str, Dict[str, float]]:
    """Median milliseconds per backend for 'fwd' and 'fwd+bwd', with the backends interleaved in every repeat."""
    samples = {name: {"fwd": [], "fwd+bwd": []} for name in names}
    for mode, backward in (("fwd", False), ("fwd+bwd", True)):
        if backward and args.no_backward:
            continue
        for repeat in range(args.warmup + args.repeats):
            for name in names:
                os.environ[backends.ENV_VAR] = name
                ms = _time_once(case, backward, device)
                if repeat >= args.warmup:
                    samples[name][mode].append(ms)
    return {name: {mode: statistics.median(v) for mode, v in modes.items() if v} for name, modes in samples.items()}


def _format_table(rows: List[Dict[str, object]]) -> str:
    header = ["backend", "fwd ms", "fwd speedup", "fwd+bwd ms", "fwd+bwd speedup"]
    lines = [header]
    for r in rows:
        lines.append([str(r["backend"]), f"{r['fwd_ms']:.3f}", f"{r['fwd_speedup']:.1f}x",
                      "-" if r["fwdbwd_ms"] is None else f"{r['fwdbwd_ms']:.3f}",
                      "-" if r["fwdbwd_speedup"] is None else f"{r['fwdbwd_speedup']:.1f}x"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def run_op_benchmark(args) -> List[Dict[str, object]]:
    """Benchmark ``args.op`` on every backend available for the device; print the table, return its rows."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    op = OP_NAMES[args.op]
    names = [b for b in backends.available_backends(op, device) if not args.backends or b in args.backends]
    if "reference" not in names:
        names.append("reference")
    case = CASES[args.op](args, device, dtype)
    saved = os.environ.get(backends.ENV_VAR)
    try:
        medians = time_backends(case, names, args, device)
    finally:
        if saved is None:
            os.environ.pop(backends.ENV_VAR, None)
        else:
            os.environ[backends.ENV_VAR] = saved
    ref = medians["reference"]
    rows = []
    for name in names:
        m = medians[name]
        fb = m.get("fwd+bwd")
        rows.append({"op": args.op, "backend": name, "device": device.type, "dtype": args.dtype,
                     "shape": f"B={args.batch} D={args.dim} L={args.seqlen} N={args.dstate}",
                     "threads": torch.get_num_threads(), "fwd_ms": m["fwd"], "fwd_speedup": ref["fwd"] / m["fwd"],
                     "fwdbwd_ms": fb, "fwdbwd_speedup": None if fb is None else ref["fwd+bwd"] / fb})
    print(f"op={args.op} device={device.type} dtype={args.dtype} batch={args.batch} dim={args.dim} "
          f"seqlen={args.seqlen} dstate={args.dstate} threads={torch.get_num_threads()} "
          f"repeats={args.repeats} (medians, interleaved; fwd under no_grad)")
    print(_format_table(rows))
    return rows


def write_csv(path: str, rows: List[Dict[str, object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--op", choices=sorted(CASES), help="kernel op to benchmark")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=384, help="channels (E, the inner width; 384 for LocalVim-T)")
    parser.add_argument("--seqlen", type=int, default=196)
    parser.add_argument("--dstate", type=int, default=16)
    parser.add_argument("--width", type=int, default=4, help="conv1d kernel width")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: unchanged")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the activations")
    parser.add_argument("--backends", nargs="*", default=None, help="subset of backends to time (plus reference)")
    parser.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = run_op_benchmark(args)  # the only mode so far; other modes join the --op group in parse_args
    if args.csv:
        write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
