"""Speed benchmarks, every figure a ratio against a baseline timed in the same process.

    python tools/benchmark.py --op scan                      # selective scan at the LocalVim-T shape
    python tools/benchmark.py --op inner --threads 2 --csv out.csv
    python tools/benchmark.py --op conv1d --device cuda --dtype bf16
    python tools/benchmark.py --op state_update --threads 2  # one decoding step (inference only: forward)
    python tools/benchmark.py --model local_vim_tiny --threads 2        # vs deit_tiny_patch16_224
    python tools/benchmark.py --model local_vssm_tiny --csv vssm.csv    # vs swin_tiny_patch4_window7_224
    python tools/benchmark.py --model local_vim_tiny local_vssm_tiny --sweep 224 512 768 1024 --plot sweep.png
    python tools/benchmark.py --model local_vim_tiny --model-kwargs in_chans=1 --directions directions.yaml
    python tools/benchmark.py --ema local_vim_tiny --threads 1     # --model-ema's update vs timm's ModelEmaV2
    python tools/benchmark.py --profile local_vim_tiny local_vssm_tiny --threads 2   # where the CPU time goes

``--op``: each available backend of a kernel op against the plain-PyTorch reference; the table gives milliseconds
and the speedup over the reference, for the forward pass (under no_grad) and for forward + backward. Defaults:
batch 8, dim 384 (LocalVim-T inner width E), seqlen 196, dstate 16, z/D/delta_bias/softplus, variable B/C.

``--model``: images per second of a registered model against a timm baseline (``deit_tiny_patch16_224`` for
LocalVim, ``swin_tiny_patch4_window7_224`` for LocalVMamba; ``--baseline`` picks another): inference at each
``--batch-sizes`` (eval mode, inference_mode) and one training step (forward, cross-entropy, backward, AdamW step)
at ``--train-batch``. Both models run on the same random images. Several ``--model`` names: each against its own
baseline, in turn. ``--model-kwargs`` and ``--directions`` build the ``--model`` (also ``--ema``'s and
``--profile``'s) as a training run's flags do; the baseline stays as registered (a gray ``in_chans=1`` model gets its
own one-channel images).

``--sweep SIZE ...``: instead, inference at each image size (batch ``--sweep-batch``, default 1), the ratio, each
forward's peak memory above its weights and images, and the size where the ratio crosses 1; ``--plot`` draws
img/s and memory against size for every model and baseline.

``--ema``: milliseconds per update of ``--model-ema``'s EMA (multi-tensor ops) against timm's ModelEmaV2, whose
values it keeps (the table says whether both EMAs end equal bit for bit), on the model's weights in ``--dtype``.

``--profile``: where a model's CPU forward spends its time (torch.profiler's self time over ``--repeats`` forwards,
default 3, at ``--batch``, default 8, and ``--img-size``): the shares of the fused mixer op's scan and merge kernels,
of the rest of that op, of the matrix products outside it, of convolutions and copies and of the rest; the matrix
products' GFLOP/s; and the scan kernels' nanoseconds per state update per core at each of the model's problem sizes.

Runs are interleaved (every repeat times every contender in turn) and summarised by medians.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Ctrl-C during the
    signal.signal(signal.SIGINT, signal.SIG_DFL)      # imports stops quietly (run_stopping_in_one_line restores it)

import torch
from localmamba_kernel_runtime.settings import SETTING_ERRORS, check_settings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classification.benchmarks import (CASES, DTYPES, OpShape, UnknownModelError, benchmark_models,  # noqa: E402
                                       default_baseline, format_model_table, format_sweep_table, parse_device,
                                       output_file_problem, plot_resolution_sweep, print_op_benchmark,
                                       resolution_sweep, unavailable_backends, write_csv)
from classification.benchmarks.ema_speed import benchmark_ema, format_ema_table  # noqa: E402
from classification.benchmarks.model_speed import COMPILE_WARMUP  # noqa: E402
from classification.benchmarks.op_speed import OP_SIZES  # noqa: E402
from classification.benchmarks.peak_memory import PeakMemoryError  # noqa: E402
from classification.benchmarks.stopping import run_stopping_in_one_line, where_rows_are  # noqa: E402
from classification.benchmarks.tables import REPLACED  # noqa: E402
from classification.benchmarks.time_profile import format_time_profile, profile_model, profile_rows  # noqa: E402
from classification.engine.config import ConfigError  # noqa: E402
from classification.engine.flags import KeyValueAction  # noqa: E402
from classification.engine.plotting import figure_path  # noqa: E402
from classification.engine.model_builder import (check_directions_file, check_kwargs_taken,  # noqa: E402
                                                 resolve_model_name)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--op", choices=sorted(CASES), help="kernel op to benchmark")
    mode.add_argument("--model", nargs="+", help="registered model(s) to benchmark against a timm baseline")
    mode.add_argument("--ema", nargs="+", metavar="MODEL",
                      help="time --model-ema's update on these models' weights against timm's ModelEmaV2")
    mode.add_argument("--profile", nargs="+", metavar="MODEL",
                      help="profile these models' CPU forward: the share of each kind of op, GFLOP/s, ns per update")
    parser.add_argument("--baseline", default=None,
                        help="timm model to compare --model with (default by family; one --model only)")
    parser.add_argument("--model-kwargs", nargs="+", default={}, action=KeyValueAction, metavar="KEY=VALUE",
                        help="--model, --ema, --profile: keyword arguments for the model constructor, as a training "
                             "run's --model-kwargs (e.g. in_chans=1 depth=12); not for the baseline")
    parser.add_argument("--directions", default=None,
                        help="--model, --ema, --profile: directions.yaml written by tools/vis_search_prob.py, as a "
                             "training run's --directions")
    parser.add_argument("--img-size", type=int, default=None,
                        help="--model, --profile: image size (default 224)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="--model: inference batch sizes (default 1 8)")
    parser.add_argument("--train-batch", type=int, default=None,
                        help="--model: training-step batch (default 8; 0: skip)")
    parser.add_argument("--sweep", type=int, nargs="+", default=None, metavar="SIZE",
                        help="--model: inference at each of these image sizes instead (a resolution sweep)")
    parser.add_argument("--sweep-batch", type=int, default=None, help="--sweep: batch size (default 1)")
    parser.add_argument("--plot", default=None, help="--sweep: also draw the sweep into this PNG file")
    parser.add_argument("--compile", default=None, choices=("default", "reduce-overhead", "max-autotune"),
                        help="--model: time inference under torch.compile in this mode (reduce-overhead: CUDA graphs)")
    parser.add_argument("--batch", type=int, default=None, help="--op, --profile: batch (default 8)")
    parser.add_argument("--dim", type=int, default=None,
                        help="--op: channels (E, the inner width; default 384, LocalVim-T's)")
    parser.add_argument("--seqlen", type=int, default=None, help="--op: sequence length (default 196)")
    parser.add_argument("--dstate", type=int, default=None, help="--op: state size (default 16)")
    parser.add_argument("--width", type=int, default=None, help="--op: conv1d kernel width (default 4)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats (default: 10 for --op, 5 for --model, 3 for --profile)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: unchanged")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the activations")
    parser.add_argument("--backends", nargs="*", default=None,
                        help="--op: subset of backends to time (plus reference)")
    parser.add_argument("--no-backward", action="store_true", help="--op: time the forward pass only")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    for flag in ("model", "ema", "profile"):
        given = getattr(args, flag) or []
        try:
            setattr(args, flag, [resolve_model_name(name) for name in given])
        except UnknownModelError as err:
            parser.error(f"--{flag}: {err}")
        twice = [(given[i], name) for i, name in enumerate(getattr(args, flag)) if name in getattr(args, flag)[:i]]
        if twice:
            spelled, name = twice[0]
            again = f"{name} given twice" if spelled == name else f"{spelled} is {name}, given already"
            parser.error(f"--{flag}: {again}: give each model once")
    _check_model_build(parser, args)
    if args.ema and args.baseline:
        parser.error("--baseline is a flag of --model: --ema's baseline is timm's ModelEmaV2")
    if args.profile and args.baseline:
        parser.error("--baseline is a flag of --model: --profile has no baseline")
    if args.baseline:
        if len(args.model) != 1:
            parser.error("--baseline takes one --model; several models are each compared with their default")
        try:
            args.baseline = resolve_model_name(args.baseline)
        except UnknownModelError as err:
            parser.error(f"--baseline: {err}")
    try:
        args.baselines = [args.baseline] if args.baseline else [default_baseline(name) for name in args.model]
    except ValueError as err:
        alone = ", in a command with it alone as --model (--baseline takes one --model)" if len(args.model) > 1 else ""
        parser.error(f"{err}{alone}")
    if args.repeats is None:
        args.repeats = 5 if args.model else 3 if args.profile else 10
    table_flags = {"--img-size": args.img_size, "--batch-sizes": args.batch_sizes, "--train-batch": args.train_batch}
    given = [flag for flag, value in table_flags.items() if value is not None]
    if args.sweep and given:
        parser.error(f"{given[0]} sets the batch table, not --sweep (its sizes are the sweep's; its batch is "
                     "--sweep-batch)")
    op_flags = {"--batch": args.batch, "--dim": args.dim, "--seqlen": args.seqlen, "--dstate": args.dstate,
                "--width": args.width, "--backends": args.backends, "--no-backward": args.no_backward or None}
    model_flags = {**table_flags, "--sweep": args.sweep, "--sweep-batch": args.sweep_batch, "--compile": args.compile}
    mode = "model" if args.model else "ema" if args.ema else "profile" if args.profile else "op"
    others = {"op": op_flags, "model": model_flags}
    profile_flags = ("--img-size", "--batch")
    wrong = [(flag, owner) for owner, flags in others.items() if owner != mode
             for flag, value in flags.items()
             if value is not None and not (mode == "profile" and flag in profile_flags)]
    if wrong:
        parser.error(f"{wrong[0][0]} is a flag of --{wrong[0][1]}, not of --{mode}")
    unused = [size for size in OpShape.__dataclass_fields__ if args.op and getattr(args, size) is not None
              and size not in OP_SIZES[args.op]]
    if unused:
        parser.error(f"--{unused[0]} does not apply to --op {args.op} (its sizes: "
                     f"{' '.join('--' + size for size in OP_SIZES[args.op])})")
    if args.sweep_batch is not None and not args.sweep:
        parser.error("--sweep-batch is the batch of --sweep: give --sweep SIZE ...")
    for flag, default in (("batch", 8), ("dim", 384), ("seqlen", 196), ("dstate", 16), ("width", 4),
                          ("sweep_batch", 1)):
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    args.img_size = 224 if args.img_size is None else args.img_size
    args.batch_sizes = [1, 8] if args.batch_sizes is None else args.batch_sizes
    args.train_batch = 8 if args.train_batch is None else args.train_batch
    _check_args(parser, args)
    return args


def _check_model_build(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, in one line and before any timing, --model-kwargs and --directions with --op, an ``img_size`` among
    --model-kwargs (the sizes timed are --img-size's or --sweep's), a keyword one of the models does not take and a
    directions file that cannot be read."""
    given = "--model-kwargs" if args.model_kwargs else "--directions" if args.directions else None
    if args.op and given:
        parser.error(f"{given} builds the models of --model, --ema and --profile, not of --op")
    if "img_size" in args.model_kwargs:
        parser.error("--model-kwargs img_size: the image sizes timed are --img-size's (or --sweep's): give them there")
    try:
        for name in args.model or args.ema or args.profile or []:
            check_kwargs_taken(name, args.model_kwargs)
    except ConfigError as err:
        parser.error(str(err))
    if args.directions:
        try:
            check_directions_file(args.directions)
        except (ConfigError, OSError) as err:
            parser.error(f"--directions: {err}")


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, in one line and before any timing, sizes out of range, a --csv that cannot be written (a missing
    folder, a folder, no permission), a --plot format matplotlib cannot write (a name without extension becomes the
    .png file it writes), an unknown --device, a bad kernel setting (LOCALMAMBA_BACKEND, LOCALMAMBA_CPU_ISA,
    LOCALMAMBA_CPU_KERNEL, CC) and --backends that cannot run on it."""
    threads = 1 if args.threads is None else args.threads
    lows = (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0), ("--img-size", args.img_size, 1),
            ("--batch-sizes", min(args.batch_sizes), 1), ("--train-batch", args.train_batch, 0),
            ("--batch", args.batch, 1), ("--dim", args.dim, 1), ("--seqlen", args.seqlen, 1),
            ("--dstate", args.dstate, 1), ("--width", args.width, 1), ("--threads", threads, 1),
            ("--sweep", min(args.sweep or [1]), 1), ("--sweep-batch", args.sweep_batch, 1))
    for flag, value, low in lows:
        if value < low:
            parser.error(f"{flag} must be at least {low}")
    if args.compile and args.warmup < COMPILE_WARMUP:
        parser.error(f"--compile {args.compile} compiles in the warmup calls: --warmup {args.warmup} would time the "
                     f"compilation; give --warmup {COMPILE_WARMUP} or more")
    if args.plot and not args.sweep:
        parser.error("--plot draws a resolution sweep: give --sweep SIZE ...")
    if args.plot:
        try:
            args.plot = figure_path(args.plot)
        except ConfigError as err:
            parser.error(f"--plot {err}")
    if args.sweep:
        args.sweep = sorted(set(args.sweep))
    for flag, path in (("--csv", args.csv), ("--plot", args.plot)):
        problem = path and output_file_problem(flag, path)
        if problem:
            parser.error(problem)
    try:
        args.device = str(parse_device(args.device))
        check_settings(args.device)
    except (ValueError, *SETTING_ERRORS) as err:
        parser.error(str(err))
    if args.profile and args.device != "cpu":
        parser.error(f"--profile reads torch.profiler's CPU self times: it profiles on the CPU, not on {args.device} "
                     "(there, run torch.profiler or Nsight Systems around tools/benchmark.py --model)")
    missing = unavailable_backends(args.op, args.device, args.backends) if args.op and args.backends else []
    if missing:
        parser.error(f"--backends {', '.join(map(repr, missing))}: not available for --op {args.op} on {args.device}")


def _compare(args: argparse.Namespace, model: str, baseline: str, rows: list) -> None:
    """Benchmark one model against its baseline as the arguments ask, appending each row to ``rows`` as it ends;
    print the table of its rows, also of those that ended before a failure or Ctrl-C."""
    start = len(rows)
    try:
        if args.sweep:
            resolution_sweep(model, baseline, args.sweep, args.sweep_batch, args.device, args.dtype, args.repeats,
                             args.warmup, log=print, compile_mode=args.compile, finished=rows,
                             model_kwargs=args.model_kwargs, directions=args.directions)
        else:
            benchmark_models(model, baseline, args.batch_sizes, args.train_batch, args.img_size, args.device,
                             args.dtype, args.repeats, args.warmup, compile_mode=args.compile, finished=rows,
                             model_kwargs=args.model_kwargs, directions=args.directions)
    finally:
        if len(rows) > start:
            print((format_sweep_table if args.sweep else format_model_table)(rows[start:]), flush=True)


def _run_all(args: argparse.Namespace, rows: list) -> None:
    """Each --model against its baseline, each --ema or --profile model in turn, or the --op's backends, appending
    each row to ``rows`` as it ends; a model that cannot be run, a peak memory that cannot be measured, CUDA out of
    memory or Ctrl-C stops the run (:func:`run_stopping_in_one_line` says so) and the rows before it are kept."""
    if args.op:
        print_op_benchmark(args.op, OpShape(args.batch, args.dim, args.seqlen, args.dstate, args.width), args.device,
                           args.dtype, args.backends, args.repeats, args.warmup, backward=not args.no_backward,
                           finished=rows)
        return
    if args.model:
        for model, baseline in zip(args.model, args.baselines):
            _compare(args, model, baseline, rows)
        return
    if args.profile:
        for model in args.profile:
            profile = profile_model(model, args.batch, args.img_size, args.dtype, args.repeats, args.warmup,
                                    args.model_kwargs, args.directions)
            print(format_time_profile(profile), flush=True)
            rows.extend(profile_rows(profile))
        return
    try:
        for model in args.ema:
            rows.extend(benchmark_ema(model, args.device, args.dtype, args.repeats, args.warmup,
                                      model_kwargs=args.model_kwargs, directions=args.directions))
    finally:
        if rows:
            print(format_ema_table(rows), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows: list = []
    earlier = {path for path in (args.csv, args.plot) if path and os.path.exists(path)}  # replaced: say so
    failure, status = run_stopping_in_one_line(lambda: _run_all(args, rows), (ConfigError, PeakMemoryError))
    if args.plot and rows:
        plot_resolution_sweep(rows, args.plot)
        print(f"plot: {args.plot}{REPLACED * (args.plot in earlier)}")
    if args.csv and rows:
        write_csv(args.csv, rows)
        if not failure:   # the failure's line names it
            print(f"csv: {args.csv}{REPLACED * (args.csv in earlier)}")
    if failure:
        print(failure + where_rows_are(rows, args.csv), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
