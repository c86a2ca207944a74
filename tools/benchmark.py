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
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classification.benchmarks import (CASES, DTYPES, OpShape, UnknownModelError, benchmark_models,  # noqa: E402
                                       default_baseline, format_model_table, parse_device, print_op_benchmark,
                                       unavailable_backends, write_csv)
from classification.engine.config import ConfigError  # noqa: E402
from classification.engine.model_builder import resolve_model_name  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--op", choices=sorted(CASES), help="kernel op to benchmark")
    mode.add_argument("--model", help="registered model to benchmark against a timm baseline")
    parser.add_argument("--baseline", default=None, help="timm model to compare --model with (default by family)")
    parser.add_argument("--img-size", type=int, default=224, help="--model: image size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="--model: inference batch sizes")
    parser.add_argument("--train-batch", type=int, default=8, help="--model: training-step batch (0: skip)")
    parser.add_argument("--compile", default=None, choices=("default", "reduce-overhead", "max-autotune"),
                        help="--model: time inference under torch.compile in this mode (reduce-overhead: CUDA graphs)")
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
    for flag in ("model", "baseline"):
        if getattr(args, flag):
            try:
                setattr(args, flag, resolve_model_name(getattr(args, flag)))
            except UnknownModelError as err:
                parser.error(f"--{flag}: {err}")
    if args.model and not args.baseline:
        try:
            args.baseline = default_baseline(args.model)
        except ValueError as err:
            parser.error(str(err))
    if args.repeats is None:
        args.repeats = 5 if args.model else 10
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, in one line and before any timing, sizes out of range, a --csv that cannot be written (a missing
    folder, a folder, no permission), an unknown --device and --backends that cannot run on it."""
    threads = 1 if args.threads is None else args.threads
    lows = (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0), ("--img-size", args.img_size, 1),
            ("--batch-sizes", min(args.batch_sizes), 1), ("--train-batch", args.train_batch, 0),
            ("--batch", args.batch, 1), ("--dim", args.dim, 1), ("--seqlen", args.seqlen, 1),
            ("--dstate", args.dstate, 1), ("--width", args.width, 1), ("--threads", threads, 1))
    for flag, value, low in lows:
        if value < low:
            parser.error(f"{flag} must be at least {low}")
    if args.csv:
        folder = os.path.dirname(os.path.abspath(args.csv))
        if not os.path.isdir(folder):
            parser.error(f"--csv {args.csv}: its folder does not exist")
        if os.path.isdir(args.csv):
            parser.error(f"--csv {args.csv}: is a folder, not a file")
        if not os.access(args.csv if os.path.exists(args.csv) else folder, os.W_OK):
            parser.error(f"--csv {args.csv}: not writable")
    try:
        args.device = str(parse_device(args.device))
    except ValueError as err:
        parser.error(str(err))
    missing = unavailable_backends(args.op, args.device, args.backends) if args.op and args.backends else []
    if missing:
        parser.error(f"--backends {', '.join(map(repr, missing))}: not available for --op {args.op} on {args.device}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.model:
        try:
            rows = benchmark_models(args.model, args.baseline, args.batch_sizes, args.train_batch, args.img_size,
                                    args.device, args.dtype, args.repeats, args.warmup, compile_mode=args.compile)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(format_model_table(rows))
    else:
        rows = print_op_benchmark(args.op, OpShape(args.batch, args.dim, args.seqlen, args.dstate, args.width),
                                  args.device, args.dtype, args.backends, args.repeats, args.warmup,
                                  backward=not args.no_backward)
    if args.csv:
        write_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
