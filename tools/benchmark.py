"""Speed benchmarks, every figure a ratio against a baseline timed in the same process.

    python tools/benchmark.py --op scan                      # selective scan at the LocalVim-T shape
    python tools/benchmark.py --op inner --threads 2 --csv out.csv
    python tools/benchmark.py --op conv1d --device cuda --dtype bf16
    python tools/benchmark.py --model local_vim_tiny --threads 2        # vs deit_tiny_patch16_224
    python tools/benchmark.py --model local_vssm_tiny --csv vssm.csv    # vs swin_tiny_patch4_window7_224

``--op``: each available backend of a kernel op against the plain-PyTorch reference; the table gives milliseconds
and the speedup over the reference, for the forward pass (under no_grad) and for forward + backward. Defaults:
batch 8, dim 384 (LocalVim-T inner width E), seqlen 196, dstate 16, z/D/delta_bias/softplus, variable B/C.

``--model``: images per second of a registered model against a timm baseline (``deit_tiny_patch16_224`` for
LocalVim, ``swin_tiny_patch4_window7_224`` for LocalVMamba; ``--baseline`` picks another): inference at each
``--batch-sizes`` (eval mode, inference_mode) and one training step (forward, cross-entropy, backward, AdamW step)
at ``--train-batch``. Both models run on the same random images.

Runs are interleaved (every repeat times every contender in turn) and summarised by medians.
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

from localmamba_conv1d import causal_conv1d_fn
from localmamba_kernel_runtime import backends
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


def median_seconds(steps: Dict[str, Callable[[], None]], args, device: torch.device) -> Dict[str, float]:
    """Median seconds of each step, the steps interleaved in every repeat after ``args.warmup`` untimed ones."""
    samples: Dict[str, List[float]] = {name: [] for name in steps}
    for repeat in range(args.warmup + args.repeats):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if repeat >= args.warmup:
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def time_backends(case: Case, names: List[str], args, device) -> Dict[str, Dict[str, float]]:
    """Median milliseconds per backend for 'fwd' and 'fwd+bwd', with the backends interleaved in every repeat."""
    medians: Dict[str, Dict[str, float]] = {name: {} for name in names}
    for mode, backward in (("fwd", False), ("fwd+bwd", True)):
        if backward and args.no_backward:
            continue
        steps = {name: _backend_step(case, name, backward) for name in names}
        for name, seconds in median_seconds(steps, args, device).items():
            medians[name][mode] = seconds * 1e3
    return medians


def render_table(lines: List[List[str]]) -> str:
    """Header line plus rows as aligned text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _format_table(rows: List[Dict[str, object]]) -> str:
    header = ["backend", "fwd ms", "fwd speedup", "fwd+bwd ms", "fwd+bwd speedup"]
    return render_table([header] + [
        [str(r["backend"]), f"{r['fwd_ms']:.3f}", f"{r['fwd_speedup']:.1f}x",
         "-" if r["fwdbwd_ms"] is None else f"{r['fwdbwd_ms']:.3f}",
         "-" if r["fwdbwd_speedup"] is None else f"{r['fwdbwd_speedup']:.1f}x"] for r in rows])


def run_op_benchmark(args) -> List[Dict[str, object]]:
    """Benchmark ``args.op`` on every backend available for the device; print the table, return its rows."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    op = OP_NAMES[args.op]
    names = [b for b in backends.available_backends(op, device) if not args.backends or b in args.backends]
    if "reference" not in names:
        names.append("reference")
    case = CASES[args.op](args, device, dtype)
    with backends.forced_backend(backends.requested_backend()):
        medians = time_backends(case, names, args, device)
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


DEFAULT_BASELINES = {"local_vim": "deit_tiny_patch16_224", "local_vssm": "swin_tiny_patch4_window7_224"}


def default_baseline(model: str) -> str:
    """The timm model a LocalMamba model is compared with: DeiT-T for the plain family, Swin-T for the other."""
    for prefix, baseline in DEFAULT_BASELINES.items():
        if model.startswith(prefix):
            return baseline
    raise ValueError(f"no default baseline for {model!r}: pass --baseline")


def _build(name: str, args, device: torch.device) -> torch.nn.Module:
    from classification.engine.model_builder import UnknownModelError, create_model_at_size

    try:
        return create_model_at_size(name, args.img_size).to(device)
    except UnknownModelError as err:
        raise SystemExit(str(err)) from err


def _inference_step(model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype):
    def step() -> None:
        with torch.inference_mode(), torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(images)

    return step


def _train_step(model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    targets = torch.randint(0, 1000, (images.shape[0],), generator=torch.Generator().manual_seed(0)).to(images.device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = torch.nn.functional.cross_entropy(model(images).float(), targets)
        loss.backward()
        optimizer.step()

    return step


def run_model_benchmark(args) -> List[Dict[str, object]]:
    """Images/s of ``args.model`` and its baseline for inference at each batch size and a training step."""
    from localmamba_ssm import backend_summary

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    baseline = args.baseline
    models = {name: _build(name, args, device) for name in (args.model, baseline)}
    backends_used = ", ".join(f"{op}={b}" for op, b in backend_summary(device).items())
    print(f"model={args.model} baseline={baseline} device={device.type} dtype={args.dtype} img={args.img_size} "
          f"threads={torch.get_num_threads()} repeats={args.repeats} (medians, interleaved)\nbackends: {backends_used}")
    plans = [(f"inference b{b}", b, _inference_step, False) for b in args.batch_sizes]
    if args.train_batch > 0:
        plans.append((f"train step b{args.train_batch}", args.train_batch, _train_step, True))
    rows = []
    for metric, batch, make_step, train in plans:
        images = torch.randn(batch, 3, args.img_size, args.img_size,
                             generator=torch.Generator().manual_seed(0)).to(device)
        for model in models.values():
            model.train(train)
        seconds = median_seconds({name: make_step(m, images, dtype) for name, m in models.items()}, args, device)
        ips = {name: batch / s for name, s in seconds.items()}
        rows.append({"metric": metric, "model": args.model, "baseline": baseline, "device": device.type,
                     "dtype": args.dtype, "threads": torch.get_num_threads(), "model_img_s": ips[args.model],
                     "baseline_img_s": ips[baseline], "ratio": ips[args.model] / ips[baseline]})
        print(f"  {metric}: {ips[args.model]:.2f} vs {ips[baseline]:.2f} img/s", flush=True)
    print(_format_model_table(rows))
    return rows


def _format_model_table(rows: List[Dict[str, object]]) -> str:
    header = ["metric", f"{rows[0]['model']} img/s", f"{rows[0]['baseline']} img/s", "ratio"]
    return render_table([header] + [[str(r["metric"]), f"{r['model_img_s']:.2f}", f"{r['baseline_img_s']:.2f}",
                                      f"{r['ratio']:.3f}x"] for r in rows])


def write_csv(path: str, rows: List[Dict[str, object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--op", choices=sorted(CASES), help="kernel op to benchmark")
    mode.add_argument("--model", help="registered model to benchmark against a timm baseline")
    parser.add_argument("--baseline", default=None, help="timm model to compare --model with (default by family)")
    parser.add_argument("--img-size", type=int, default=224, help="--model: image size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="--model: inference batch sizes")
    parser.add_argument("--train-batch", type=int, default=8, help="--model: training-step batch (0: skip)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=384, help="channels (E, the inner width; 384 for LocalVim-T)")
    parser.add_argument("--seqlen", type=int, default=196)
    parser.add_argument("--dstate", type=int, default=16)
    parser.add_argument("--width", type=int, default=4, help="conv1d kernel width")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default: 10 for --op, 5 for --model)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: unchanged")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the activations")
    parser.add_argument("--backends", nargs="*", default=None, help="subset of backends to time (plus reference)")
    parser.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    if args.model and not args.baseline:
        try:
            args.baseline = default_baseline(args.model)
        except ValueError as err:
            parser.error(str(err))
    if args.repeats is None:
        args.repeats = 5 if args.model else 10
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = run_model_benchmark(args) if args.model else run_op_benchmark(args)
    if args.csv:
        write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
