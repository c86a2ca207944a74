"""One-shot check of the GPU backends: every Triton kernel against the reference, then timings.

    python tools/gpu_check.py                   # on a CUDA machine: correctness table, timing table, exit code
    TRITON_INTERPRET=1 python tools/gpu_check.py --device cpu --quick    # smoke test of this script on CPU (refused
                                                # without TRITON_INTERPRET=1)
    python tools/gpu_check.py --e2e             # everything on one GPU in a few minutes: kernels, AMP training,
                                                # dist_train.sh, kill + --resume, test.py, throughput, memory sweep;
                                                # one PASS/FAIL line per check, log in docs/measurements/
    python tools/gpu_check.py --e2e --budget 540 --log LOG    # the same, ending within 9 minutes (a time-limited
                                                # machine); what did not fit is listed with its --only command
    python tools/gpu_check.py --e2e --dry-run   # the commands it would run
    python tools/gpu_check.py --e2e --device cpu --quick    # the same plan at tiny sizes on the CPU
    python tools/gpu_check.py --report LOG [LOG ...]        # the README's GPU figures from e2e logs: each target
                                                # met or missed, throughput, memory and sweep as Markdown
    python tools/gpu_check.py --report LOG --plot sweep.png  # also draw the resolution sweep of the logs

What is checked and timed: see ``classification.benchmarks.gpu_check`` and ``classification.benchmarks.gpu_e2e``.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Sequence

if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Ctrl-C during the
    signal.signal(signal.SIGINT, signal.SIG_DFL)      # imports stops quietly (run_stopping_in_one_line restores it)

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from localmamba_kernel_runtime.backends import triton_interpreter  # noqa: E402

from classification.benchmarks.gpu_check import run_gpu_check  # noqa: E402
from classification.benchmarks.gpu_e2e import UnknownCheck, default_log_path, next_part_path, run_e2e  # noqa: E402
from classification.benchmarks.gpu_e2e import memory_and_resolution_sweep  # noqa: E402
from classification.benchmarks.gpu_report import (has_older_sweep_table, mixed_devices, read_sections,  # noqa: E402
                                                  report, sweep_rows)
from classification.benchmarks.resolution_sweep import plot_resolution_sweep  # noqa: E402
from classification.benchmarks.stopping import INTERRUPTED_STATUS, run_stopping_in_one_line  # noqa: E402
from classification.benchmarks.tables import REPLACED, output_file_problem  # noqa: E402
from classification.common.signals import StopSignalReceived, interrupt_on_stop_signals  # noqa: E402
from classification.engine.config import ConfigError  # noqa: E402
from classification.engine.plotting import figure_path  # noqa: E402


def _refuse(message: str) -> int:
    """Print `error: message` to stderr; the exit status of input that cannot give a result."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def _argument_error(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with the arguments before anything runs (an unknown --device, --repeats below 1, an --e2e option
    without --e2e, a --plot format matplotlib cannot write), or None; a --plot name without extension becomes the
    .png file matplotlib writes."""
    try:
        device_type = torch.device(args.device).type
    except RuntimeError:
        device_type = None
    if device_type not in ("cpu", "cuda"):
        return f"--device {args.device!r} is not one of cpu, cuda, cuda:N"
    if args.repeats is not None and args.repeats < 1:
        return "--repeats must be at least 1"
    e2e_options = {"--dry-run": args.dry_run, "--only": bool(args.only), "--log": args.log is not None,
                   "--budget": args.budget is not None}
    given = [flag for flag, present in e2e_options.items() if present]
    if given and not args.e2e:
        return f"{given[0]} needs --e2e"
    if args.budget is not None and args.budget <= 0:
        return f"--budget must be a positive number of seconds, got {args.budget:g}"
    if args.repeats is not None and (args.e2e or args.report):
        return (f"--repeats is not an option of {'--e2e' if args.e2e else '--report'}: it times the kernel check and "
                "--sweep")
    runs = [flag for flag, present in (("--e2e", args.e2e), ("--sweep", args.sweep)) if present]
    if args.report and runs:
        return f"--report reads logs and runs nothing: drop {runs[0]}"
    if args.plot and not args.report:
        return "--plot draws the sweep of --report logs: give --report LOG ..."
    if not args.plot:
        return None
    try:
        args.plot = figure_path(args.plot)
    except ConfigError as err:
        return f"--plot {err}"
    return output_file_problem("--plot", args.plot)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (for a CPU smoke test)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per figure (default 20, 1 with --quick; --sweep: 5)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-models", action="store_true", help="leave out the whole-model logits check")
    parser.add_argument("--e2e", action="store_true", help="the end-to-end check (see classification.benchmarks."
                                                           "gpu_e2e)")
    parser.add_argument("--dry-run", action="store_true", help="--e2e: print the commands only")
    parser.add_argument("--only", nargs="+", default=(), help="--e2e: only the checks whose name contains a word")
    parser.add_argument("--log", default=None, help="--e2e: transcript file (default docs/measurements/"
                                                    "<device>_e2e.log; with --only, where that one exists, "
                                                    "<device>_e2e_part2.log or the next free part)")
    parser.add_argument("--budget", type=float, default=None,
                        help="--e2e: seconds for the whole run; each check's limit is cut to what is left, and the "
                             "checks that no longer fit are listed with the command that runs them")
    parser.add_argument("--sweep", action="store_true", help="peak memory and the resolution sweep only")
    parser.add_argument("--report", nargs="+", metavar="LOG", default=None,
                        help="print the targets and tables of these --e2e logs (a run split with --only: all its "
                             "logs; logs of different devices are refused) and exit; needs no GPU")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="--report: also draw the logs' resolution sweep into this file")
    args = parser.parse_args(argv)
    error = _argument_error(args)
    if error:
        return _refuse(error)
    if args.report:
        folders = [path for path in args.report if os.path.isdir(path)]
        if folders:
            return _refuse(f"--report takes log files, not folders: {', '.join(folders)}")
        missing = [path for path in args.report if not os.path.isfile(path)]
        if missing:
            return _refuse(f"no such log: {', '.join(missing)}")
        texts = []
        for path in args.report:
            with open(path, "rb") as f:
                texts.append(f.read().decode("utf-8", errors="replace"))
        not_e2e = [path for path, text in zip(args.report, texts) if not read_sections([text])]
        if not_e2e:
            return _refuse(f"not a --e2e log (no '===== <check>' output in it): {', '.join(not_e2e)}")
        mixed = mixed_devices(texts, args.report)
        if mixed:
            return _refuse(mixed)
        print(report(texts, args.report))
        if args.plot:
            sections = read_sections(texts)
            rows = sweep_rows(sections)
            if not rows and has_older_sweep_table(sections):
                return _refuse(f"--plot: the resolution sweep in {', '.join(args.report)} is an older log's one table "
                               f"of all models, without the baselines and ratios --plot draws")
            if not rows:
                return _refuse(f"--plot: no resolution sweep table in {', '.join(args.report)}")
            earlier = os.path.exists(args.plot)
            plot_resolution_sweep(rows, args.plot, title=f"inference against image size, {rows[0]['device']} "
                                                         f"(from {os.path.basename(args.report[-1])})")
            print(f"plot: {args.plot}{REPLACED * earlier}")
        return 0
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available() and not args.dry_run:
        return _refuse("CUDA is not available here; run on a GPU machine (or --device cpu with TRITON_INTERPRET=1)")
    index = torch.device(args.device).index
    if index is not None and not args.dry_run:
        if index >= torch.cuda.device_count():
            return _refuse(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(index)    # CUDA graphs, events and streams follow the current device, not the tensors'
    log = None
    if args.e2e:
        log = None if args.dry_run else (args.log or default_log_path(args.device))
        if log and args.only and not args.log and os.path.exists(log):   # a part: the whole run's transcript stays
            log = next_part_path(log)
    elif not args.sweep and torch.device(args.device).type == "cpu" and not triton_interpreter():
        return _refuse("the kernel check on the CPU runs Triton under its interpreter: set TRITON_INTERPRET=1 "
                       "(TRITON_INTERPRET=1 python tools/gpu_check.py --device cpu --quick)")
    signalled: list = []

    def run() -> int:
        """The checks; SIGTERM, SIGUSR1 or SIGHUP (a time limit's kill) during --e2e stop it as Ctrl-C does: the
        running step is killed with the processes it started, its output so far kept in the transcript."""
        if not args.e2e or args.dry_run:
            return _run_checks(args, log)
        try:
            with interrupt_on_stop_signals():
                return _run_checks(args, log)
        except StopSignalReceived as stop:
            signalled.append(signal.Signals(stop.signum).name)
            return 128 + stop.signum

    failure, status = run_stopping_in_one_line(run, (UnknownCheck,))
    if signalled:
        failure = f"interrupted by {signalled[0]}"
    if failure:
        kept = f"; the checks that ended are in {log}" if log and (status == INTERRUPTED_STATUS or signalled) else ""
        print(failure + kept, file=sys.stderr)
    return status


def _run_checks(args: argparse.Namespace, log: Optional[str]) -> int:
    """The --e2e checks (their transcript in ``log``), the --sweep, or the kernel check: 0 where every check passed,
    1 where one failed."""
    if args.e2e:
        return 0 if run_e2e(args.device, args.quick, args.dry_run, log, only=args.only, budget=args.budget) else 1
    if args.sweep:
        repeats = {} if args.repeats is None else {"repeats": args.repeats}
        for index, table in enumerate(memory_and_resolution_sweep(args.device, args.quick, **repeats)):
            print(("\n" if index else "") + table, flush=True)  # each table as it ends: the sweep takes minutes
        return 0
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 20)
    return 0 if run_gpu_check(args.device, args.quick, repeats, args.skip_timing, not args.skip_models) else 1


if __name__ == "__main__":
    sys.exit(main())
