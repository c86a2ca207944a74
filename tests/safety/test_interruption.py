"""SIGTERM, SIGUSR1 or Ctrl-C stops a run after its current step with a mid-epoch last.pth.tar, and --resume from it
ends bit-identical to an uninterrupted run, with and without loader workers (two DDP ranks: test_train_distributed.py).
A signal during an epoch's end writes stops the run after them; a second Ctrl-C aborts at once; torchrun
(tools/launch.sh) forwards SIGTERM and SIGUSR1 to its workers."""
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest
import torch

from classification.common.csv_log import CsvLog
from classification.engine.cli import run_cli
from classification.engine.config import ConfigError, parse_args
from classification.engine.evaluate import test as evaluate
from classification.engine.trainer import train

from safety_helpers import TINY_RUN
from training_helpers import REPO, SIGNAL_AT_SCRIPT, assert_same_run, free_port, rows, snapshot, tool_env

# 5 iterations per epoch; EMA and mixup/cutmix on: the EMA weights and the numpy and torch random streams must resume
RUN = [*TINY_RUN, "--epochs", "2", "--model-ema", "--model-ema-decay", "0.9", "--mixup", "0.2", "--cutmix", "1.0"]
MID_EPOCH_1 = 8  # the signal comes once 8 iterations are done: after step 3 of 5 of epoch 1
POSIX_SIGNALS = pytest.mark.skipif(os.name == "nt", reason="POSIX signals and process groups")


def with_workers(flags, workers):
    flags = list(flags)
    flags[flags.index("-j") + 1] = str(workers)
    return flags


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def signal_at(when, flags, out, **env):
    """Run tools/train.py `flags` into `out`/run through signal_at.py (SIGNAL_AT=`when`), in its own process group."""
    proc = subprocess.run([sys.executable, SIGNAL_AT_SCRIPT, *flags, "--output", str(out),
                           "--experiment", "run"], capture_output=True, text=True, timeout=300,
                          env={**tool_env(), "SIGNAL_AT": when, **env}, start_new_session=True)
    return proc, out / "run"


def resume(flags, folder):
    train(parse_args([*flags, "--resume", str(folder / "last.pth.tar")]))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The folder of the uninterrupted run."""
    out = tmp_path_factory.mktemp("straight")
    train(parse_args([*RUN, "--output", str(out), "--experiment", "run"]))
    return out / "run"


@pytest.fixture(scope="module")
def straight(straight_run):
    return snapshot(straight_run)


@POSIX_SIGNALS
@pytest.mark.parametrize("name, workers, to", [("SIGTERM", 0, "self"), ("SIGUSR1", 2, "group")])
def test_signal_mid_epoch_then_resume_equals_the_uninterrupted_run(name, workers, to, straight, tmp_path):
    """SIGUSR1 to the whole process group, as Slurm sends it: the loader workers get it too and must not die."""
    flags = with_workers(RUN, workers)
    proc, folder = signal_at(f"{name} step {MID_EPOCH_1}", flags, tmp_path, SIGNAL_TO=to)
    assert proc.returncode == 128 + getattr(signal, name), proc.stderr[-2000:]
    last = folder / "last.pth.tar"
    assert proc.stderr.strip().splitlines()[-1].startswith(f"interrupted by {name}; continue with: ")
    assert proc.stderr.strip().endswith(f"--resume {last}") and "Traceback" not in proc.stderr
    ckpt = load(last)
    assert (ckpt["epoch"], ckpt["step"], ckpt["scheduler"]["t"]) == (1, 3, MID_EPOCH_1)
    assert sorted(n for n in os.listdir(folder) if n.endswith(".pth.tar")) == [
        "best.pth.tar", "checkpoint-0.pth.tar", "last.pth.tar"]  # epoch 1 is not taken for a finished one
    assert [r[0] for r in rows(folder / "metrics.csv")[1:]] == ["0"]
    resume(flags, folder)
    assert_same_run(snapshot(folder), straight)


@POSIX_SIGNALS
def test_a_new_seed_at_a_mid_epoch_resume_takes_effect_from_the_next_epoch(straight, tmp_path):
    """--seed changed at a --resume in the middle of an epoch reordered the rest of it (some images trained twice in
    it, others never): the epoch ends as begun, also when stopped again in it, whose checkpoint keeps its seed."""
    proc, folder = signal_at(f"SIGTERM step {MID_EPOCH_1}", RUN, tmp_path)
    assert proc.returncode == 143, proc.stderr[-2000:]
    again, _ = signal_at(f"SIGTERM step {MID_EPOCH_1 + 1}", [*RUN, "--seed", "1", "--resume",
                                                             str(folder / "last.pth.tar")], tmp_path)
    assert again.returncode == 143, again.stderr[-2000:]
    assert ("--seed changed on resume: 42 -> 1 (the new value is used)\n" in again.stdout
            and "--seed 1: the rest of epoch 1 keeps the order and augmentation of --seed 42, which it began with; the "
                "new seed takes effect from epoch 2\n" in again.stdout)
    ckpt = load(folder / "last.pth.tar")
    assert (ckpt["epoch"], ckpt["step"], ckpt["config"]["seed"], ckpt["epoch_seed"]) == (1, 4, 1, 42)
    resume([*RUN, "--seed", "1"], folder)
    assert_same_run(snapshot(folder), straight)


# -b 128: 11 batches an epoch, 5 optimizer steps of 2 batches; the 11th batch is not trained
ACCUMULATED = [*RUN, "-b", "128", "--grad-accum-steps", "2"]


@POSIX_SIGNALS
def test_a_run_with_accumulated_steps_stops_between_steps_and_resumes_exactly(tmp_path):
    """With --grad-accum-steps 2 a signal after the 8th optimizer step (step 3 of 5 in epoch 1) saves the run after
    its 6th batch of 10; --resume ends bit-identical to the run never stopped, and refuses another accumulation
    in the middle of the epoch. The schedule and lr.csv count optimizer steps."""
    out = tmp_path / "straight"
    train(parse_args([*ACCUMULATED, "--output", str(out), "--experiment", "run"]))
    proc, folder = signal_at(f"SIGTERM step {MID_EPOCH_1}", ACCUMULATED, tmp_path)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "SIGTERM: stopping in epoch 1 after batch 6 of 10 (optimizer step 3 of 5)" in proc.stdout  # as logged
    assert ("--grad-accum-steps 2: an optimizer step of 2 batches of 128 on each of 1 process(es), 256 images; 5 steps "
            "an epoch (its last 1 batch(es) not trained)") in proc.stdout
    ckpt = load(folder / "last.pth.tar")
    assert (ckpt["epoch"], ckpt["step"], ckpt["steps_per_epoch"], ckpt["scheduler"]["t"]) == (1, 6, 10, MID_EPOCH_1)
    with pytest.raises(ConfigError, match=r"with -b 128 --grad-accum-steps 2; continue it with the same \(this "
                                          r"run: 1 with -b 128 --grad-accum-steps 1\)"):
        resume([*ACCUMULATED, "--grad-accum-steps", "1"], folder)
    resume(ACCUMULATED, folder)
    assert_same_run(snapshot(folder), snapshot(out / "run"))
    assert "starting training at epoch 1, batch 6 of 10 (optimizer step 3 of 5)" in "".join(
        path.read_text() for path in folder.glob("log_*.txt"))
    # --log-interval 2: optimizer steps 0, 2 and 4 (the last) of each epoch
    assert [row[:2] for row in rows(out / "run" / "lr.csv")[1:]] == [
        ["0", "0"], ["0", "2"], ["0", "4"], ["1", "5"], ["1", "7"], ["1", "9"]]


def run_on_a_terminal_and_hang_up(argv, marker: str, nohup_output=None, timeout: float = 240):
    """Run `argv` on a pseudo-terminal of its own (it leads the session the terminal controls, as a login shell's
    command does) and hang the terminal up, as a lost ssh connection does, once `marker` is in its output; returns
    (the output up to then, the exit status). With `nohup_output`, run it as `nohup` does: SIGHUP ignored, output
    into that file."""
    pid, fd = pty.fork()
    if pid == 0:
        if nohup_output is not None:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            out = os.open(nohup_output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(out, 2)
        os.execve(argv[0], argv, tool_env())
    output, deadline = b"", time.time() + timeout
    while marker.encode() not in output and time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        try:
            chunk = os.read(fd, 65536) if ready else b""
        except OSError:  # the child ended and closed the terminal
            break
        if ready and not chunk:
            break
        output += chunk
        if nohup_output is not None and os.path.isfile(nohup_output):
            output = open(nohup_output, "rb").read()
    os.close(fd)  # the hang-up: the kernel sends SIGHUP to the terminal's foreground process group
    _, status = os.waitpid(pid, 0)
    return output.decode(errors="replace"), os.waitstatus_to_exitcode(status)


@POSIX_SIGNALS
def test_a_terminal_hang_up_stops_and_saves_like_the_other_signals(straight, tmp_path):
    """A run started in a terminal whose connection is lost (SIGHUP to it and its loader workers) died at once,
    losing the epoch in progress. It now stops cleanly, saves, and resumes to the uninterrupted run's files."""
    flags = with_workers(RUN, 2)
    argv = [sys.executable, os.path.join(REPO, "tools", "train.py"), *flags, "--output", str(tmp_path),
            "--experiment", "run"]
    output, status = run_on_a_terminal_and_hang_up(argv, "Train: 0 [")
    assert "Train: 0 [" in output and status == 128 + signal.SIGHUP, (status, output[-2000:])
    folder = tmp_path / "run"
    log = "".join(path.read_text() for path in folder.glob("log_*.txt"))
    assert "INFO SIGHUP: stopping " in log, log[-2000:]
    resume(flags, folder)
    assert_same_run(snapshot(folder), straight)


@POSIX_SIGNALS
def test_a_run_under_nohup_goes_on_after_a_hang_up(straight, tmp_path):
    """`nohup` makes a run ignore SIGHUP: catching it as a stop signal must not undo that."""
    flags = with_workers(RUN, 2)
    argv = [sys.executable, os.path.join(REPO, "tools", "train.py"), *flags, "--output", str(tmp_path),
            "--experiment", "run"]
    output, status = run_on_a_terminal_and_hang_up(argv, "Train: 0 [", nohup_output=tmp_path / "nohup.out")
    assert "Train: 0 [" in output and status == 0, (status, (tmp_path / "nohup.out").read_text()[-2000:])
    assert_same_run(snapshot(tmp_path / "run"), straight)


@POSIX_SIGNALS
def test_a_run_started_with_sigint_ignored_still_stops_on_it(tmp_path):
    """A shell starts the background jobs of a script with SIGINT ignored; `kill -INT` must still stop the run and
    save it (only SIGHUP, which nohup ignores on purpose, stays ignored)."""
    proc = subprocess.run([sys.executable, SIGNAL_AT_SCRIPT, *RUN, "--output", str(tmp_path), "--experiment", "run"],
                          capture_output=True, text=True, timeout=300, env={**tool_env(), "SIGNAL_AT": "SIGINT step 8"},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-2000:]
    ckpt = load(tmp_path / "run" / "last.pth.tar")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 3)


@POSIX_SIGNALS
def test_signal_during_the_epoch_end_stops_after_its_writes(straight, tmp_path):
    proc, folder = signal_at("SIGTERM metrics 0", RUN, tmp_path)  # after validation, before the checkpoints
    assert proc.returncode == 143, proc.stderr[-2000:]
    ckpt = load(folder / "last.pth.tar")  # epoch 0's, with every write of its end done
    assert (ckpt["epoch"], ckpt["step"]) == (0, None)
    assert [name for name, _ in ckpt["checkpoints"]] == ["checkpoint-0.pth.tar"]
    assert (folder / "checkpoint-0.pth.tar").exists() and (folder / "best.pth.tar").exists()
    assert {r[0] for r in rows(folder / "lr.csv")[1:]} == {"0"}  # stopped before epoch 1's first step
    resume(RUN, folder)
    assert_same_run(snapshot(folder), straight)


@POSIX_SIGNALS
def test_a_second_ctrl_c_aborts_at_once(tmp_path):
    proc, folder = signal_at(f"SIGINT step {MID_EPOCH_1} 2", RUN, tmp_path)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("interrupted; continue with: ")
    assert load(folder / "last.pth.tar")["step"] is None  # epoch 0's: no mid-epoch checkpoint was written
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    # the first Ctrl-C's line said it was saving there: the second one's says what the file holds
    assert (f"WARNING Second Ctrl-C: stopped at once, without saving; {folder / 'last.pth.tar'} holds the run up to "
            f"epoch 0; the training after it is lost") in proc.stdout


@POSIX_SIGNALS
@pytest.mark.parametrize("first, second, aborts", [
    ("SIGINT", "SIGINT", True),
    ("SIGINT", "SIGTERM", True),      # a second Ctrl-C under torchrun reaches the workers as SIGTERM
    ("SIGUSR1", "SIGTERM", False),    # Slurm's time limit after its warning: the stop goes on (its save included)
    ("SIGTERM", "SIGTERM", False),
])
def test_which_second_signal_aborts_at_once(first, second, aborts):
    from classification.engine.signals import StopSignals

    def send(name):
        os.kill(os.getpid(), getattr(signal, name))
        time.sleep(0.05)                                 # the handler runs at the next bytecode of the main thread

    with StopSignals(torch.device("cpu")) as stop:
        send(first)
        if aborts:
            with pytest.raises(KeyboardInterrupt):
                send(second)
        else:
            send(second)
        assert stop.signum == getattr(signal, first)


def test_rank_0_says_the_launcher_is_gone_when_another_rank_saw_it_first(monkeypatch, localmamba_log):
    """torchrun killed: the rank that checks its parent first stops the others through the step's all-reduce. When
    that was not rank 0, the only rank that logs, the run stopped "on SIGHUP" without saying why (a race that the
    2-process test of a killed torchrun lost now and then)."""
    from classification.engine import signals

    parents = iter([4242, 4242, 1])            # at construction, at the check before the all-reduce, after it

    def another_rank_flags_sighup(flags, op):
        flags[0] = signal.SIGHUP

    monkeypatch.setenv(signals.TORCHRUN_ENV, "run")
    monkeypatch.setattr(signals.os, "getppid", lambda: next(parents))
    monkeypatch.setattr(signals.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(signals.dist, "all_reduce", another_rank_flags_sighup)
    stop = signals.StopSignals(torch.device("cpu"))
    with localmamba_log.at_level("WARNING", logger="localmamba"):
        assert stop.agreed_with(False) == (signal.SIGHUP, False)
    assert "the launcher of this worker (torchrun, pid 4242) is gone: stopping as on SIGHUP" in localmamba_log.text


def test_a_mid_epoch_checkpoint_continues_with_the_same_batches_and_evaluates_as_such(straight_run, tmp_path):
    ckpt = load(straight_run / "last.pth.tar")
    ckpt.update(step=3, train_loss_sums=[[6.9, 768]])  # as if stopped after step 3 of epoch 1
    (tmp_path / "run").mkdir()
    torch.save(ckpt, tmp_path / "run" / "last.pth.tar")
    with pytest.raises(ConfigError, match=r"stopped in the middle of epoch 1 of a run of 1 process\(es\) with -b 256; "
                                          r"continue it with the same \(this run: 1 with -b 128\)"):
        train(parse_args([*RUN, "-b", "128", "--resume", str(tmp_path / "run" / "last.pth.tar")]))
    out = tmp_path / "eval"
    evaluate(parse_args([*RUN, "--resume", str(tmp_path / "run" / "last.pth.tar"), "--output", str(out)]))
    (log,) = (out / "exp").glob("eval_*.txt")  # not taken for a training log
    assert f"Loaded {tmp_path / 'run' / 'last.pth.tar'} (epoch 1, stopped after step 3) into" in log.read_text()
    assert f"INFO Logging to {log}\n" in log.read_text()  # and on the console: where to find it


@POSIX_SIGNALS
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_during_an_evaluation_ends_it_saying_there_is_no_result(straight_run, tmp_path, monkeypatch,
                                                                              capsys, name):
    """tools/test.py stopped by SIGTERM (a job's time limit) died silently with its log ending on a running top-1 (a
    reader could take it for the result); now its log and its last line say it stopped, with the signal's status."""
    from classification.engine import evaluate as evaluate_module
    real_accuracy, calls = evaluate_module.accuracy, []

    def signal_at_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), getattr(signal, name))
        return real_accuracy(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "accuracy", signal_at_the_second_batch)
    out = tmp_path / "eval"
    argv = ["test.py", *RUN, "-b", "32", "--resume", str(straight_run / "last.pth.tar"), "--output", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: evaluate(parse_args(argv[1:])))
    assert stop.value.code == 128 + getattr(signal, name)
    by = "" if name == "SIGINT" else f" by {name}"
    assert capsys.readouterr().err.endswith(f"\ninterrupted{by}\n")
    (log,) = (out / "exp").glob("eval_*.txt")
    assert log.read_text().endswith(f"WARNING Evaluation stopped by {name}: no result (the running figures above are "
                                    f"of part of the images)\n")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are restored


WORKER = """import signal, sys, time
def stop(signum, frame):
    open(sys.argv[1], "w").write(signal.Signals(signum).name)
    sys.exit(128 + signum)
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
    signal.signal(sig, stop)
open(sys.argv[1] + ".ready", "w").close()
time.sleep(120)
"""


@POSIX_SIGNALS
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_torchrun_forwards_the_stop_signals_to_its_workers(name, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    got = tmp_path / "got"
    proc = subprocess.Popen(["sh", os.path.join(REPO, "tools", "launch.sh"), "torchrun", "1",
                             str(tmp_path / "worker.py"), str(got)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**tool_env(), "MASTER_PORT": str(free_port())})
    try:
        deadline = time.time() + 120
        while not (tmp_path / "got.ready").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(getattr(signal, name))  # to torchrun (launch.sh execs it), not to the worker
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert got.read_text() == name


def test_the_wrapper_hands_the_named_signals_to_torchrun_where_torch_does_not(monkeypatch):
    """On torch before 2.10 (a LaunchConfig without ``signals_to_handle``) the wrapper gives the signals named in
    PET_SIGNALS_TO_HANDLE to torchrun's own handler, skipping those no handler can take and unknown names; on a torch
    that reads the setting itself it leaves every handler alone."""
    import dataclasses

    import torch.distributed.launcher.api as launcher
    from torch.distributed.elastic.multiprocessing.api import _terminate_process_handler

    from classification.engine import torchrun

    old_torch_config = dataclasses.make_dataclass("LaunchConfig", [("min_nodes", int), ("max_nodes", int)])
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    monkeypatch.setenv("PET_SIGNALS_TO_HANDLE", "SIGTERM, SIGUSR1,SIGKILL,SIGNOPE")
    try:
        new_torch = "signals_to_handle" in {field.name for field in dataclasses.fields(launcher.LaunchConfig)}
        assert torchrun.pass_on_the_named_signals() == ([] if new_torch else ["SIGTERM", "SIGUSR1"])
        monkeypatch.setattr(launcher, "LaunchConfig", old_torch_config)
        assert torchrun.pass_on_the_named_signals() == ["SIGTERM", "SIGUSR1"]
        assert signal.getsignal(signal.SIGUSR1) is _terminate_process_handler
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_lr_log_rewinds_to_a_step_of_an_epoch(tmp_path):
    log = CsvLog(str(tmp_path / "lr.csv"), ("epoch", "step", "lr"))
    for row in ([0, 0, 0.1], [0, 2, 0.1], [1, 5, 0.2], [1, 7, 0.3], [1, 9, 0.4], [2, 10, 0.5]):
        log.append(row)
    log.truncate_from(1, 8)
    assert rows(tmp_path / "lr.csv")[1:] == [["0", "0", "0.1"], ["0", "2", "0.1"], ["1", "5", "0.2"], ["1", "7", "0.3"]]
    log.truncate_from(1)
    assert rows(tmp_path / "lr.csv")[1:] == [["0", "0", "0.1"], ["0", "2", "0.1"]]
