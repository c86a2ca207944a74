"""The GPU end-to-end check (``tools/gpu_check.py --e2e``): one command that runs every user-facing path on CUDA and
prints one PASS/FAIL line per check with its time, then writes the whole transcript to ``docs/measurements/``.

Steps (each a subprocess with its own time limit, run folders under a fresh temporary directory), the figures first:
kernel checks (``tools/gpu_check.py``: the Triton backends against the reference, op timings), the model throughput
tables (``tools/benchmark.py``: fp32 and bf16, batch 1 and 64, a training step at 64), the peak memory and resolution
sweep (:func:`memory_and_resolution_sweep`); then one quickstart epoch with ``--amp`` (fp16 + GradScaler), with
``--amp-dtype bfloat16 --model-ema`` (the EMA's multi-tensor update on CUDA) and with ``--amp --grad-accum-steps 2``,
``tools/dist_train.sh 1`` (torchrun; and ``dist_train.sh N`` on NCCL when N >= 2 GPUs are visible: one process group
needs two GPUs), a run killed after its first epoch and ``--resume``d (it must continue at a later epoch and finish),
a run stopped by SIGTERM in its second epoch (it must save there and exit with 143) and resumed from that step,
``tools/test.py`` on the killed run's checkpoint (also with ``--compile reduce-overhead``), and the throughput under
``--compile reduce-overhead`` (compiling takes longest). Under a time budget each step's limit is cut to what is left
and the steps that no longer fit are listed.

``--device cpu --quick`` runs the same plan at tiny sizes on the CPU (Triton under the interpreter), and ``--dry-run``
prints the commands only: the plan, the checks of each step's output and the report are code paths the CPU tests
cover; what they cannot cover is the GPU itself.
"""
from __future__ import annotations

import datetime
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from .model_speed import build_model, inference_step, train_step
from .peak_memory import cuda_peak_mib
from .resolution_sweep import SWEEP_SIZES, format_sweep_table, resolution_sweep
from .tables import render_table
from .timing import DTYPES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAIRS = (("local_vim_tiny", "deit_tiny_patch16_224"), ("local_vssm_tiny", "swin_tiny_patch4_window7_224"))
MIN_STEP_SECONDS = 30  # under a time budget, a step starts only with at least this much of it left
STOP_POLL_SECONDS = 0.02  # how often a step's stop condition is read: a quickstart epoch takes about a second on a GPU


@dataclass
class Outcome:
    """What one command did: exit status (None when the runner killed it on purpose), output, seconds."""

    returncode: Optional[int]
    output: str
    seconds: float


@dataclass
class Step:
    """One check: a command, its time limit, and ``verdict(outcome)`` -> None (PASS) or the reason it failed.

    ``stop_when()`` (polled while the command runs) makes the runner send ``stop_signal`` to the command's process
    group when true: SIGKILL (the returncode is then None), or a signal the command handles, whose exit it awaits.
    ``unset``: variables of this environment the command runs without. ``output_file``: where the command's output
    is written as it comes (it outlives this process, killed or not; a temporary file, gone with it, when None).
    """

    name: str
    argv: List[str]
    timeout: float
    verdict: Callable[[Outcome], Optional[str]]
    env: Dict[str, str] = field(default_factory=dict)
    stop_when: Optional[Callable[[], bool]] = None
    stop_signal: int = signal.SIGKILL
    summary: Callable[[Outcome], str] = lambda outcome: ""
    needs: Tuple[str, ...] = ()  # names of earlier steps whose files this one reads
    unset: Tuple[str, ...] = ()
    output_file: Optional[str] = None


def _descendants(pid: int) -> List[int]:
    """The processes below ``pid`` (children, theirs, ...) as /proc lists them now; [] where there is no /proc. They
    include those in sessions of their own, which a kill of ``pid``'s process group misses: torchrun's workers."""
    children: Dict[int, List[int]] = {}
    try:
        entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])   # the field after the state
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group and every process below it, then reap ``proc``."""
    below = _descendants(proc.pid)
    for kill, target in [(os.killpg, proc.pid)] + [(os.kill, pid) for pid in below]:
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


def run_command(step: Step, poll: float = 0.2, stop_grace: float = 120) -> Outcome:
    """Run ``step.argv`` in the repository root in its own process group; kill it and every process below it at the
    time limit, and when ``step.stop_when()`` turns true send its group ``step.stop_signal`` (SIGKILL: returncode None;
    another signal: the command's own exit, awaited for ``stop_grace`` seconds, but not past the time limit); the
    condition is read every :data:`STOP_POLL_SECONDS` at most, so that a stop meant for an epoch lands in it. An
    exception while it runs (Ctrl-C) kills it too and gets the output so far as its ``outcome`` attribute."""
    start = time.perf_counter()
    if step.stop_when is not None:
        poll = min(poll, STOP_POLL_SECONDS)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    for name in step.unset:
        env.pop(name, None)
    with open(step.output_file, "w+") if step.output_file else tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(step.argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=env)
        returncode: Optional[int] = None
        try:
            while True:
                code = proc.poll()
                if code is not None:
                    returncode = code
                    break
                if step.stop_when is not None and step.stop_when():
                    if step.stop_signal != signal.SIGKILL:
                        os.killpg(proc.pid, step.stop_signal)
                        grace = min(stop_grace, max(step.timeout - (time.perf_counter() - start), poll))
                        try:
                            returncode = proc.wait(timeout=grace)
                        except subprocess.TimeoutExpired:
                            out.write(f"\n[gpu_check --e2e] no exit {grace:.0f} s after "
                                      f"{signal.Signals(step.stop_signal).name}\n")
                    break
                if time.perf_counter() - start > step.timeout:
                    returncode = -signal.SIGKILL
                    out.write(f"\n[gpu_check --e2e] killed after the {step.timeout:.0f} s limit\n")
                    break
                time.sleep(poll)
        except BaseException as err:
            kill_tree(proc)
            out.seek(0)
            err.outcome = Outcome(None, out.read(), time.perf_counter() - start)   # type: ignore[attr-defined]
            raise
        if proc.poll() is None:
            kill_tree(proc)
        out.seek(0)
        return Outcome(returncode, out.read(), time.perf_counter() - start)


def _exited_ok(outcome: Outcome) -> Optional[str]:
    if outcome.returncode == 0:
        return None
    tail = outcome.output.strip().splitlines()[-1:] or ["(no output)"]
    return f"exit status {outcome.returncode}: {tail[0][:200]}"


def _all_of(*checks: Callable[[Outcome], Optional[str]]) -> Callable[[Outcome], Optional[str]]:
    def verdict(outcome: Outcome) -> Optional[str]:
        for check in checks:
            reason = check(outcome)
            if reason is not None:
                return reason
        return None

    return verdict


def _file_exists(path: str) -> Callable[[Outcome], Optional[str]]:
    return lambda outcome: None if os.path.isfile(path) else f"{path} was not written"


def _says(pattern: str, what: str) -> Callable[[Outcome], Optional[str]]:
    return lambda outcome: None if re.search(pattern, outcome.output) else f"output does not show {what}"


def train_speed(outcome: Outcome) -> str:
    """The last training speed a run logged ('Speed: X img/s'), or ''."""
    speeds = re.findall(r"Speed: ([0-9.]+) img/s", outcome.output)
    return f"last logged speed {speeds[-1]} img/s" if speeds else ""


def _exited_with(status: int) -> Callable[[Outcome], Optional[str]]:
    return lambda outcome: None if outcome.returncode == status else \
        f"exit status {outcome.returncode}, not {status}: {(outcome.output.strip().splitlines() or [''])[-1][:200]}"


def _has_row_of_epoch(csv_path: str, epoch: int) -> bool:
    """Whether the CSV file a run appends to (lr.csv) holds a row of `epoch` yet: that epoch has begun."""
    if not os.path.isfile(csv_path):
        return False
    with open(csv_path) as f:
        return any(line.split(",", 1)[0] == str(epoch) for line in f)


def measured_memory_and_sweeps(outcome: Outcome) -> Optional[str]:
    """None where the sweep step's output has a figure in every cell of its memory table and a resolution sweep of
    each pair of :data:`PAIRS` (one that failed at a later size, out of memory at 1024 px, keeps its rows); else what
    was not measured."""
    failed = re.search(r"^\S+\s+(?:fp32|bf16)\s+error: .*$", outcome.output, re.M)
    if failed:
        return f"the memory table has an error: {' '.join(failed.group(0).split())}"
    for model, baseline in PAIRS:
        if f"resolution sweep, {model} against {baseline}: inference at batch" not in outcome.output:
            return f"no resolution sweep of {model} against {baseline} (it failed at its first size)"
    return None


def top1(outcome: Outcome) -> Optional[float]:
    """The last top-1 accuracy tools/test.py printed ({'top1': X, ...}), or None."""
    found = re.findall(r"'top1': ([0-9.]+)", outcome.output)
    return float(found[-1]) if found else None


TOP1_TOLERANCE = 1.0   # percentage points between the compiled and the eager evaluation of one checkpoint


def was_killed(outcome: Outcome) -> Optional[str]:
    return None if outcome.returncode is None else f"the run ended by itself (status {outcome.returncode}) before " \
                                                   f"it could be killed"


def plan(device: str, workdir: str, quick: bool = False) -> List[Step]:
    """The steps of the end-to-end check on ``device`` with run folders under ``workdir`` (tiny sizes when
    ``quick``)."""
    py = sys.executable
    cuda = torch.device(device).type == "cuda"
    # quick: two blocks (of the model without a searched per-layer table), not twenty: a CPU epoch in seconds
    model = "local_vim_tiny_wo_search" if quick else "local_vim_tiny"
    common = ["--device", device, "--warmup-epochs", "0"] + (["--model-kwargs", "depth=2"] if quick else [])
    train = [py, "tools/train.py", "-c", "configs/quickstart.yaml", "--model", model] + common
    interp = {} if cuda else {"TRITON_INTERPRET": "1"}
    # on CUDA no step runs Triton under its interpreter (minutes a kernel), whatever this environment says
    native = ("TRITON_INTERPRET",) if cuda else ()
    kernel_options = ["--quick", "--skip-timing", "--skip-models"] if quick else ["--repeats", "10"]
    kernel_check = [py, "tools/gpu_check.py", "--device", device] + kernel_options

    def run_dir(name: str) -> List[str]:
        return ["--output", os.path.join(workdir, name), "--experiment", "run"]

    def last(name: str) -> str:
        return os.path.join(workdir, name, "run", "last.pth.tar")

    steps = [Step("kernel checks and op timings", kernel_check, 420 if not quick else 1800,
                  _all_of(_exited_ok, _says("ALL CHECKS PASSED", "ALL CHECKS PASSED")), env=interp)]
    for family, _ in PAIRS:
        for dtype in ("fp32", "bf16"):
            sizes = ["--img-size", "32", "--batch-sizes", "1", "2", "--train-batch", "2", "--repeats", "1"] if quick \
                else ["--batch-sizes", "1", "64", "--train-batch", "64"]
            steps.append(Step(f"throughput {family} {dtype}", [py, "tools/benchmark.py", "--model", family,
                                                               "--device", device, "--dtype", dtype] + sizes,
                              300 if not quick else 900, _all_of(_exited_ok, _says(r"ratio", "the ratio table"))))
    steps.append(Step("peak memory and resolution sweep", [py, "tools/gpu_check.py", "--device", device, "--sweep"]
                      + (["--quick"] if quick else []), 300 if not quick else 900,
                      _all_of(_exited_ok, _says(r"peak MiB", "the sweep table"), measured_memory_and_sweeps)))
    ema_line = r"Test\(EMA\): 0 \["   # a validation line of the EMA weights after epoch 0
    scaled = r"training in float16 autocast with a GradScaler"    # --amp's default on CUDA (bf16 on the CPU)
    for name, folder, extra, shows in (
            ("train 1 epoch --amp (fp16 + GradScaler)", "amp_fp16", ["--amp"],
             (_says(scaled, repr(scaled)),) if cuda else ()),
            ("train 1 epoch --amp --amp-dtype bfloat16 --model-ema", "amp_bf16",
             ["--amp", "--amp-dtype", "bfloat16", "--model-ema"], (_says(ema_line, "the EMA's validation"),))):
        steps.append(Step(name, train + ["--epochs", "1"] + extra + run_dir(folder), 180,
                          _all_of(_exited_ok, _file_exists(last(folder)), *shows), summary=train_speed))
    accumulated = "--grad-accum-steps 2: an optimizer step of 2 batches"
    accumulating = train + ["--epochs", "1", "--amp", "--grad-accum-steps", "2"] + run_dir("amp_accum")
    steps.append(Step("train 1 epoch --amp --grad-accum-steps 2", accumulating, 180,
                      _all_of(_exited_ok, _file_exists(last("amp_accum")), _says(accumulated, repr(accumulated))),
                      summary=train_speed))
    gpus = max(1, torch.cuda.device_count()) if cuda else 1
    for procs in sorted({1, gpus}):
        folder = f"dist{procs}"
        # several processes take GPU LOCAL_RANK each: --device cuda, not the one GPU of --device cuda:N
        device_of = common if procs == 1 else ["--device", torch.device(device).type] + common[2:]
        steps.append(Step(f"tools/dist_train.sh {procs}" + (" (NCCL)" if procs > 1 and cuda else ""),
                          ["sh", "tools/dist_train.sh", str(procs), "configs/quickstart.yaml", model,
                           "--epochs", "1"] + device_of + run_dir(folder),
                          240, _all_of(_exited_ok, _file_exists(last(folder))), summary=train_speed,
                          env={"PYTHON": py}))   # the launcher's interpreter: this one, not `python` on PATH
    checkpoint, resume_lr = last("resume"), os.path.join(workdir, "resume", "run", "lr.csv")
    killed = "train, killed after its first epoch"
    # killed once epoch 1 logs a step: last.pth.tar already exists during epoch 0's validation (its training saved)
    steps.append(Step(killed, train + ["--epochs", "3"] + run_dir("resume"), 180,
                      _all_of(was_killed, _file_exists(checkpoint)),
                      stop_when=lambda: _has_row_of_epoch(resume_lr, 1)))
    steps.append(Step("the killed run continues with --resume",
                      train + ["--epochs", "3", "--resume", checkpoint] + run_dir("resume"), 180,
                      _all_of(_exited_ok,
                              _says(r"starting training at epoch [12]\b", "'starting training at epoch 1 or 2'"),
                              _says(r"Train: 2 ", "a training line of the last epoch (2)")), summary=train_speed,
                      needs=(killed,)))
    stopped, stopped_lr = last("stopped"), os.path.join(workdir, "stopped", "run", "lr.csv")
    signalled = "train, stopped by SIGTERM in its second epoch"
    stop_line = r"SIGTERM: stopping in epoch 1 after step"
    steps.append(Step(signalled, train + ["--epochs", "3"] + run_dir("stopped"), 180,
                      _all_of(_exited_with(128 + signal.SIGTERM), _says(stop_line, repr(stop_line))),
                      stop_when=lambda: _has_row_of_epoch(stopped_lr, 1), stop_signal=signal.SIGTERM))
    resumed_line = r"starting training at epoch 1, step \d+ of"
    steps.append(Step("the stopped run continues from its mid-epoch checkpoint",
                      train + ["--epochs", "3", "--resume", stopped] + run_dir("stopped"), 180,
                      _all_of(_exited_ok, _says(resumed_line, repr(resumed_line)),
                              _says(r"Train: 2 ", "a training line of the last epoch (2)")), summary=train_speed,
                      needs=(signalled,)))
    test = [py, "tools/test.py", "-c", "configs/quickstart.yaml", "--model", model, "--resume", checkpoint] + common
    eager: Dict[str, float] = {}

    def records_top1(outcome: Outcome) -> None:   # the eager figure the compiled evaluation must give
        if top1(outcome) is not None:
            eager["top1"] = top1(outcome)

    def as_eager(outcome: Outcome) -> Optional[str]:
        compiled = top1(outcome)
        if compiled is None or "top1" not in eager or abs(compiled - eager["top1"]) <= TOP1_TOLERANCE:
            return None
        return f"top-1 {compiled:.3f} % compiled, {eager['top1']:.3f} % eager on the same checkpoint"

    steps.append(Step("tools/test.py on the resumed checkpoint", test + run_dir("test"), 120,
                      _all_of(_exited_ok, _says(r"'top1'", "the metrics"), records_top1), needs=(killed,)))
    steps.append(Step("tools/test.py --compile reduce-overhead",
                      test + ["--compile", "reduce-overhead" if cuda else "default"] + run_dir("test_compiled"),
                      300, _all_of(_exited_ok, _says(r"'top1'", "the metrics"), as_eager), needs=(killed,)))
    if cuda and not quick:  # small batches: CUDA graphs against launch overhead
        for family, _ in PAIRS:
            steps.append(Step(f"throughput {family} fp32 --compile reduce-overhead",
                              [py, "tools/benchmark.py", "--model", family, "--device", device, "--batch-sizes", "1",
                               "64", "--train-batch", "0", "--compile", "reduce-overhead"], 300,
                              _all_of(_exited_ok, _says(r"ratio", "the ratio table"))))
    return [replace(step, unset=native) for step in steps]


def report_line(step: Step, outcome: Outcome) -> str:
    """'PASS|FAIL  seconds  name  (summary or reason)'."""
    reason = step.verdict(outcome)
    note = reason if reason is not None else step.summary(outcome)
    line = f"{'PASS' if reason is None else 'FAIL'}  {outcome.seconds:7.1f} s  {step.name}"
    return f"{line}  ({note})" if note else line


class _Transcript:
    """The log file, written as it grows (nothing when ``path`` is None). A step's title goes in before it runs and
    its output, as it comes, into :attr:`running_output` (``<log>.running``), which is added to the log and removed
    when the step ends: where this process is killed mid-step (a lease's time limit), the log ends with that step's
    title and the file beside it holds what the step printed."""

    def __init__(self, path: Optional[str], header: str):
        self.path = path
        self.running_output = f"{path}.running" if path else None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(header + "\n")

    def add(self, *lines: str) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write("\n".join(lines) + "\n")

    def step_ended(self, output: str, *lines: str) -> None:
        """Add a step's output and verdict ``lines`` under its title, and remove its running output."""
        self.add(output.rstrip(), *lines)
        if self.running_output and os.path.exists(self.running_output):
            os.remove(self.running_output)


class UnknownCheck(ValueError):
    """A word of ``--only`` that is in no check's name."""


def select_steps(steps: Sequence[Step], only: Sequence[str]) -> List[Step]:
    """The steps whose name contains one of ``only`` (all when empty), with the earlier steps they need;
    :class:`UnknownCheck` naming every check when a word of ``only`` is in none of their names."""
    unknown = [word for word in only if not any(word in s.name for s in steps)]
    if unknown:
        raise UnknownCheck(f"--only {' '.join(map(shlex.quote, unknown))} matches no check; the checks: "
                           + "; ".join(s.name for s in steps))
    if not only:
        return list(steps)
    wanted = {s.name for s in steps if any(word in s.name for word in only)}
    for step in reversed(steps):
        if step.name in wanted:
            wanted.update(step.needs)
    return [s for s in steps if s.name in wanted]


def next_part_path(log_path: str) -> str:
    """A log beside ``log_path`` for the rest of its run, that no file holds yet: ``<name>_part2.log`` (or part 3,
    ...; a part's log gives the next part of the same name), so that the rest does not replace the transcript of the
    part that ran."""
    stem, ext = os.path.splitext(log_path)
    stem = re.sub(r"_part\d+$", "", stem)
    part = 2
    while os.path.exists(f"{stem}_part{part}{ext}"):
        part += 1
    return f"{stem}_part{part}{ext}"


def run_e2e(device: str = "cuda", quick: bool = False, dry_run: bool = False, log_path: Optional[str] = None,
            runner: Callable[[Step], Outcome] = run_command, workdir: Optional[str] = None,
            only: Sequence[str] = (), budget: Optional[float] = None) -> bool:
    """Run (or, ``dry_run``, list) the plan, or its steps whose name contains one of ``only`` (and the steps they
    need); print one line per step as it ends, then the summary. Within ``budget`` seconds: each step's limit is
    cut to what is left, and once too little is left the remaining steps are reported as SKIP with the command that
    runs them (and the step the budget's end killed). The transcript (every step's full output, then the summary)
    is written to ``log_path`` as the steps end, so a run killed from outside keeps what it did (and an interrupted
    one, its last step's output so far; a SIGKILLed one, the running step's title, its output in ``<log>.running``).
    True when every step ran and passed; :class:`UnknownCheck` (before anything runs or a folder is made) for a word
    of ``only`` in no step's name."""
    own_workdir = workdir is None
    if dry_run:
        workdir = workdir or os.path.join(tempfile.gettempdir(), "localmamba_e2e_XXXX")
    elif own_workdir:
        select_steps(plan(device, "", quick), only)   # refuses an unknown word before the folder is made
    workdir = workdir or tempfile.mkdtemp(prefix="localmamba_e2e_")
    steps = select_steps(plan(device, workdir, quick), only)
    if dry_run:
        for step in steps:
            env = " ".join(f"{k}={v}" for k, v in step.env.items())
            print(f"{step.name}:\n    {env + ' ' if env else ''}{' '.join(step.argv)}")
        return True
    header = f"gpu_check --e2e  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  device " \
             f"{torch.cuda.get_device_name(device) if torch.device(device).type == 'cuda' else device}  torch " \
             f"{torch.__version__}  run folders {workdir}"
    print(header, flush=True)
    log = _Transcript(log_path, header)
    lines: List[str] = []
    skipped: List[Step] = []
    start = time.perf_counter()
    for step in steps:
        left = None if budget is None else budget - (time.perf_counter() - start)
        if left is not None and (left < MIN_STEP_SECONDS or any(s.name in step.needs for s in skipped)):
            skipped.append(step)
            line = f"SKIP  {0.0:7.1f} s  {step.name}  (time budget spent)"
        else:
            log.add(f"\n===== {step.name}: {' '.join(step.argv)}")
            limited = replace(step, timeout=step.timeout if left is None else min(step.timeout, left),
                              output_file=log.running_output)
            try:
                outcome = runner(limited)
            except BaseException as err:   # Ctrl-C: the transcript keeps what the step printed (run_command's)
                stopped = getattr(err, "outcome", None)
                if stopped is not None:
                    log.step_ended(stopped.output,
                                   f"STOPPED {stopped.seconds:7.1f} s  {step.name}  (interrupted; its output so far)")
                raise
            line = report_line(step, outcome)
            if left is not None and left < step.timeout and outcome.returncode == -signal.SIGKILL \
                    and outcome.seconds >= left:   # killed at the budget's end, not its own limit: run it again
                skipped.append(step)
                line = (f"FAIL  {outcome.seconds:7.1f} s  {step.name}  (killed at the end of the time budget, "
                        f"{left:.0f} s into its {step.timeout:.0f} s limit)")
            log.step_ended(outcome.output, line)
        print(line, flush=True)
        lines.append(line)
    passed = all(line.startswith("PASS") for line in lines)
    total = sum(float(line.split()[1]) for line in lines)
    summary = [f"{sum(line.startswith('PASS') for line in lines)}/{len(lines)} checks passed in {total:.0f} s"]
    if skipped:
        log_flag = f" --log {shlex.quote(next_part_path(log_path))}" if log_path else ""
        summary.append("not run for the time budget; to run them: python tools/gpu_check.py --e2e --device "
                       f"{device}{' --quick' if quick else ''} --budget {budget:g} --only "
                       + " ".join(shlex.quote(s.name) for s in skipped) + log_flag)
    print("\n".join(summary))
    log.add("\n===== summary", header, *lines, *summary)
    if log_path:
        print(f"log: {log_path}")
    if own_workdir and passed:
        shutil.rmtree(workdir, ignore_errors=True)
    return passed


def peak_mib_cell(step: Callable[[], None], device: torch.device) -> str:
    """The CUDA allocator's peak MiB over one call of ``step``, as a table cell; ``-`` off CUDA, where no per-step
    figure exists (the process's peak resident size counts everything before it)."""
    if device.type != "cuda":
        return "-"
    return f"{cuda_peak_mib(step, device, above_current=False):.0f}"


def memory_and_resolution_sweep(device: str = "cuda", quick: bool = False, repeats: int = 5,
                                sweep_batch: int = 8) -> Iterator[str]:
    """Peak memory of each model of :data:`PAIRS` for inference and a training step at batch 64, fp32 and bf16, as
    one table; then each pair's :func:`resolution_sweep` (fp32 inference at batch ``sweep_batch`` and each of
    :data:`SWEEP_SIZES`; each forward's peak memory on CUDA), so that the resolution where LocalVim-T /
    LocalVMamba-T cross DeiT-T / Swin-T shows. Each table is yielded when it is complete, so that a caller can
    print it before the minutes the next one takes."""
    device = torch.device(device)
    batch, sizes = (2, (32, 64)) if quick else (64, SWEEP_SIZES)
    models = [name for pair in PAIRS for name in pair]
    memory = [["model", "dtype", f"inference b{batch} peak MiB", f"train step b{batch} peak MiB"]]
    for name in models:
        for dtype in ("fp32", "bf16"):
            try:
                model = build_model(name, sizes[0], device)
                images = torch.randn(batch, 3, sizes[0], sizes[0], device=device)
                infer = peak_mib_cell(inference_step(model, images, DTYPES[dtype]), device)
                model.train()
                train = peak_mib_cell(train_step(model, images, DTYPES[dtype]), device)
                memory.append([name, dtype, infer, train])
            except Exception as err:  # report and go on with the other models
                memory.append([name, dtype, f"error: {type(err).__name__}", "-"])
            model = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    yield render_table(memory)
    for model, baseline in PAIRS:
        rows: List[Dict[str, object]] = []
        try:
            resolution_sweep(model, baseline, sizes, 1 if quick else sweep_batch, str(device), "fp32", repeats, 2,
                             memory=device.type == "cuda", finished=rows)
            table = format_sweep_table(rows)
        except Exception as err:
            # a size that fails (out of memory at 1024 px) hides neither the sizes before it nor the other pair
            failed = f"resolution sweep, {model} against {baseline}: error: {type(err).__name__}: {err}"
            table = "\n".join([format_sweep_table(rows), "", failed]) if rows else failed
        if device.type == "cuda":
            torch.cuda.empty_cache()
        yield table


def default_log_path(device: str) -> str:
    """docs/measurements/<device name>_e2e.log (e.g. nvidia_h200_e2e.log)."""
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return os.path.join(REPO, "docs", "measurements", f"{slug}_e2e.log")
