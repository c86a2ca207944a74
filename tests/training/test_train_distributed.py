"""Two gloo processes on CPU (tools/dist_train.sh) train the same weights as one process with the same global batch;
when only one of them gets SIGTERM both stop at the same step, and the run resumes to the same files bit for bit."""
import csv
import logging
import os
import re
import signal
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml

from classification.engine.config import parse_args
from classification.engine.torchrun import exit_status, failure_line
from classification.engine.trainer import train

from training_helpers import (LOSS_FAILS_AT_SCRIPT, READ_FAILS_AT_SCRIPT, REPO, SIGNAL_AT_SCRIPT,
                              TINY_MODEL, assert_same_run, free_port, snapshot, tool_env)

# No mixup and no drop path: those draw from per-rank generators, which differ by design (seed + rank).
# SGD, unlike Adam, is not invariant to the gradient's scale, so a wrong gradient average would show.
RECIPE = {"dataset": "digits", "epochs": 1, "opt": "sgd", "lr": 0.05, "weight_decay": 0.05, "sched": "cosine",
          "warmup_epochs": 0, "aa": "rand-m9-mstd0.5", "reprob": 0.25, "workers": 0, "log_interval": 10,
          "model_ema": True, "model_ema_decay": 0.9}
SKIP_ON_WINDOWS = pytest.mark.skipif(os.name == "nt", reason="POSIX shell script")


def metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def two_processes(entry, config, out, *flags, **env):
    """tools/dist_run.sh ENTRY 2 CONFIG MODEL -b 16 (44 iterations per epoch) into `out`."""
    return subprocess.run(["sh", os.path.join(REPO, "tools", "dist_run.sh"), entry, "2", str(config), TINY_MODEL[1],
                           *TINY_MODEL[2:], "-b", "16", "--output", str(out), *flags], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**tool_env(), "MASTER_PORT": str(free_port()), **env})


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


@pytest.fixture(scope="module")
def two(config):
    """The folder of an uninterrupted run of two processes; the stdout of its launch."""
    proc = two_processes("tools/train.py", config, config.parent, "--experiment", "two")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return config.parent / "two", proc.stdout


@SKIP_ON_WINDOWS
def test_two_processes_equal_one_process(two, config, tmp_path):
    folder, stdout = two
    assert "processes: 2" in stdout
    one = train(parse_args(["-c", str(config), *TINY_MODEL, "-b", "32", "--output", str(tmp_path),
                            "--experiment", "one"]))

    a = torch.load(folder / "last.pth.tar", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "one" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert a["scheduler"] == b["scheduler"] == {"t": 44}  # same number of global steps
    assert len(a["rng"]) == 2 and len(b["rng"]) == 1
    for key in ("model", "ema_model"):
        for name, value in b[key].items():
            torch.testing.assert_close(a[key][name], value, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
    (row_two,), (row_one,) = metrics(folder / "metrics.csv"), metrics(tmp_path / "one" / "metrics.csv")
    for col in ("train_loss", "test_loss"):    # the means over both ranks' samples (rank 0's alone: 2e-3 away)
        assert float(row_two[col]) == pytest.approx(float(row_one[col]), rel=1e-4), col
    for col in ("top1", "top5"):               # percentages of 360 images: at most one prediction may flip
        assert float(row_two[col]) == pytest.approx(float(row_one[col]), abs=100 / 360 + 1e-6), col
    assert one["top1"] == pytest.approx(float(row_one["top1"]))
    # the Test lines are rank 0's share; the line after them gives the figures of all ranks, as metrics.csv has them
    # (the EMA's: the recipe keeps one)
    assert (f"Test(EMA): 0 all 2 processes, 360 images: Loss: {float(row_two['test_loss']):.3f} "
            f"Top-1: {float(row_two['top1']):.3f}% Top-5: {float(row_two['top5']):.3f}%") in stdout


@SKIP_ON_WINDOWS
def test_accumulated_steps_of_two_processes_equal_one_process_with_the_global_batch(config, tmp_path):
    """Two processes of -b 16 with --grad-accum-steps 2 (44 batches each, 22 optimizer steps) train what one process
    of -b 64 trains: each step averages the same 64 images' gradients (all-reduced once, at its second batch)."""
    proc = two_processes("tools/train.py", config, tmp_path, "--experiment", "accumulated", "--grad-accum-steps", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ("--grad-accum-steps 2: an optimizer step of 2 batches of 16 on each of 2 process(es), 64 images; 22 steps "
            "an epoch\n") in proc.stdout   # 718 images a process: 44 batches, none left over
    assert re.search(r"Train: 0 \[  21/22\] .* Speed: [0-9.]+ img/s", proc.stdout), proc.stdout[-3000:]
    train(parse_args(["-c", str(config), *TINY_MODEL, "-b", "64", "--output", str(tmp_path), "--experiment", "one"]))

    a = torch.load(tmp_path / "accumulated" / "last.pth.tar", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "one" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert a["scheduler"] == b["scheduler"] == {"t": 22}
    assert (a["steps_per_epoch"], b["steps_per_epoch"]) == (44, 22)
    for key in ("model", "ema_model"):
        for name, value in b[key].items():
            torch.testing.assert_close(a[key][name], value, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
    (row_two,) = metrics(tmp_path / "accumulated" / "metrics.csv")
    (row_one,) = metrics(tmp_path / "one" / "metrics.csv")
    assert float(row_two["train_loss"]) == pytest.approx(float(row_one["train_loss"]), rel=1e-4)
    with open(tmp_path / "accumulated" / "lr.csv") as f2, open(tmp_path / "one" / "lr.csv") as f1:
        assert f2.read() == f1.read()


def _deferred_all_reduce_worker(rank: int, init_file: str, out_dir: str) -> None:
    import logging

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from classification.engine.distributed import DistEnv
    from classification.engine.train_loop import _forward_backward
    from classification.engine.trainer import Run

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cfg = parse_args(["--dataset", "digits", *TINY_MODEL, "-b", "4", "-j", "0", "--device", "cpu",
                          "--smoothing", "0", "--grad-accum-steps", "2", "--output", out_dir,
                          "--experiment", f"rank{rank}"])
        torch.manual_seed(0)
        run = Run(cfg, DistEnv(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu")), out_dir,
                  logging.getLogger("localmamba.test"))
        assert isinstance(run.net, DistributedDataParallel)
        reductions = []

        def count(state, bucket):
            reductions.append(bucket.index())
            return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0] / 2)

        run.net.register_comm_hook(None, count)
        initial = {n: t.clone() for n, t in run.model.state_dict().items()}
        generator = torch.Generator().manual_seed(1)
        parts = [(torch.randn(4, 3, 16, 16, generator=generator), torch.randint(0, 10, (4,), generator=generator))
                 for _ in range(4)]  # rank r trains parts 2r and 2r + 1
        _forward_backward(run, *parts[2 * rank], sync=False)
        after_first = len(reductions)
        _forward_backward(run, *parts[2 * rank + 1], sync=True)
        grads = {n: p.grad.clone() for n, p in run.model.named_parameters()}
        torch.save({"after_first": after_first, "after_second": len(reductions), "grads": grads, "initial": initial},
                   os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_accumulating_batches_all_reduce_only_at_the_steps_last_batch(tmp_path):
    """Under DDP the first of two accumulated batches keeps its gradient local (`no_sync`: no bucket is reduced);
    the second reduces the sum once, so every rank holds the mean over all 4 batches of both ranks' gradients, each
    batch's loss / 2 (checked against one process on the four batches)."""
    import torch.multiprocessing as mp

    from classification.engine.model_builder import build_model

    mp.spawn(_deferred_all_reduce_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [r["after_first"] for r in results] == [0, 0]
    assert all(r["after_second"] >= 1 for r in results)
    model = build_model(parse_args([*TINY_MODEL, "--num-classes", "10"]))
    model.load_state_dict(results[0]["initial"])
    generator = torch.Generator().manual_seed(1)
    parts = [(torch.randn(4, 3, 16, 16, generator=generator), torch.randint(0, 10, (4,), generator=generator))
             for _ in range(4)]
    images, target = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
    torch.nn.functional.cross_entropy(model(images), target).backward()
    for name, param in model.named_parameters():
        for result in results:
            torch.testing.assert_close(result["grads"][name], param.grad, rtol=1e-5, atol=1e-7, msg=name)


@SKIP_ON_WINDOWS
def test_a_signal_to_one_rank_stops_both_at_the_same_step(two, config, tmp_path):
    cut = two_processes(SIGNAL_AT_SCRIPT, config, tmp_path, "--experiment", "cut", SIGNAL_AT="SIGTERM step 20",
                        SIGNAL_RANK="1")
    assert cut.returncode == 143 and "Traceback" not in cut.stderr, cut.stdout[-3000:] + cut.stderr[-3000:]
    # the other rank exits by itself too, or is stopped by torchrun's SIGTERM first; torchrun before torch 2.10 names
    # only the ranks that had ended when it saw the first. A clean stop, not an error (it said "failed ... the
    # workers' own errors are above")
    both = r"2 processes: rank (0|1) \(first\) exit status 143, rank (0|1) (exit status 143|ended by SIGTERM)"
    assert re.fullmatch(rf"{SIGNAL_AT_SCRIPT} stopped on a signal in ({both}|1 process: rank (0|1) exit status 143); "
                        rf"the workers' lines above say where they stopped", cut.stderr.splitlines()[-1])
    assert "SIGTERM: stopping in epoch 0 after step 20 of 44" in cut.stdout  # logged by rank 0, told by rank 1
    last = tmp_path / "cut" / "last.pth.tar"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], len(ckpt["rng"]), len(ckpt["train_loss_sums"])) == (0, 20, 2, 2)

    again = two_processes("tools/train.py", config, tmp_path, "--resume", str(last))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "starting training at epoch 0, step 20 of 44" in again.stdout
    assert_same_run(snapshot(tmp_path / "cut"), snapshot(two[0]))


@SKIP_ON_WINDOWS
def test_a_signal_to_one_rank_during_validation_stops_both_at_the_same_batch(two, config, tmp_path):
    """Rank 1 signalled after its third validation batch (of 12): both ranks stop the validation there, with the
    epoch's training saved, and --resume validates it: the run ends as one never stopped."""
    cut = two_processes(SIGNAL_AT_SCRIPT, config, tmp_path, "--experiment", "cut", SIGNAL_AT="SIGTERM test 3",
                        SIGNAL_RANK="1")
    assert cut.returncode == 143 and "Traceback" not in cut.stderr, cut.stdout[-3000:] + cut.stderr[-3000:]
    last = tmp_path / "cut" / "last.pth.tar"
    assert f"SIGTERM: stopping the validation of epoch 0; the epoch's training is saved in {last}" in cut.stdout
    assert "Test: 0 [   0/12]" in cut.stdout and "Test: 0 [  11/12]" not in cut.stdout
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (0, 44)

    again = two_processes("tools/train.py", config, tmp_path, "--resume", str(last))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"Resumed {last}: the training of epoch 0 is done, validating it" in again.stdout
    assert_same_run(snapshot(tmp_path / "cut"), snapshot(two[0]))


def kill_processes_naming(text: str) -> None:
    """SIGKILL the processes whose command line holds `text` (workers a failed test left running)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds left-over workers through /proc")
def test_workers_whose_torchrun_is_killed_stop_and_save(two, config, tmp_path):
    """torchrun killed with SIGKILL (it cannot pass that on): its workers trained on, unseen, to the end of the run.
    They now see that their launcher is gone, stop together as on SIGHUP after their current step, and save it: the
    run resumes to the files of a run never stopped."""
    try:
        cut = two_processes(SIGNAL_AT_SCRIPT, config, tmp_path, "--experiment", "orphaned",
                            SIGNAL_AT="SIGKILL step 20", SIGNAL_TO="parent")
    finally:
        kill_processes_naming(str(tmp_path / "orphaned"))
    assert cut.returncode == -signal.SIGKILL, cut.stdout[-3000:] + cut.stderr[-3000:]   # torchrun's own status
    assert "is gone: stopping as on SIGHUP" in cut.stdout, cut.stdout[-3000:] + cut.stderr[-3000:]
    stopped = re.search(r"SIGHUP: stopping in epoch 0 after step (\d+) of 44", cut.stdout)
    last = tmp_path / "orphaned" / "last.pth.tar"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert stopped and (ckpt["epoch"], ckpt["step"]) == (0, int(stopped.group(1))) and ckpt["step"] >= 20

    again = two_processes("tools/train.py", config, tmp_path, "--resume", str(last))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert_same_run(snapshot(tmp_path / "orphaned"), snapshot(two[0]))


@SKIP_ON_WINDOWS
def test_a_batch_one_rank_cannot_read_stops_both_with_the_steps_saved(two, config, tmp_path):
    """Rank 1 cannot read its batch after step 20: both ranks save the 20 steps and stop (rank 1 with its error,
    rank 0 pointing at it) instead of rank 0 waiting in the step's all-reduce; --resume ends as the run that never
    failed."""
    cut = two_processes(READ_FAILS_AT_SCRIPT, config, tmp_path, "--experiment", "cut", READ_FAILS_AT="20 1")
    assert cut.returncode != 0 and "Traceback" not in cut.stderr, cut.stdout[-3000:] + cut.stderr[-3000:]
    assert "error: cannot read image /data/train/broken.png: truncated file" in cut.stderr
    assert "error: another rank could not read its training batch 20 of epoch 0" in cut.stderr
    last = tmp_path / "cut" / "last.pth.tar"
    assert (f"Reading the training data of epoch 0 failed after step 20 of 44; its training up to step 20 is saved: "
            f"once the cause is fixed, continue with --resume {last}") in cut.stdout
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], len(ckpt["rng"])) == (0, 20, 2)
    again = two_processes("tools/train.py", config, tmp_path, "--resume", str(last))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert_same_run(snapshot(tmp_path / "cut"), snapshot(two[0]))


@SKIP_ON_WINDOWS
def test_a_loss_one_rank_finds_not_finite_stops_both_before_the_step(two, config, tmp_path):
    """Rank 1's training loss is NaN in step 20: both ranks agree, neither takes the step (whose gradients hold the
    NaN), both save the 20 steps before it and stop in one line each instead of training on NaN weights; the saved
    run equals the 20 steps of the run that never failed."""
    cut = two_processes(LOSS_FAILS_AT_SCRIPT, config, tmp_path, "--experiment", "cut", LOSS_FAILS_AT="20 1")
    assert cut.returncode != 0 and "Traceback" not in cut.stderr, cut.stdout[-3000:] + cut.stderr[-3000:]
    last = tmp_path / "cut" / "last.pth.tar"
    where = (f"in epoch 0 after step 20 of 44 (the step was not taken; {last} holds the run before it): --resume "
             f"{last} would meet the same loss again (the same weights and batch), so continue from a fresh run (no "
             f"epoch checkpoint was kept) with a lower --lr or --clip-grad-norm")
    assert f"error: the training loss is nan {where}" in cut.stderr
    assert f"error: another rank's training loss is not finite {where}" in cut.stderr
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["scheduler"]["t"], len(ckpt["rng"])) == (0, 20, 20, 2)
    assert all(torch.isfinite(value).all() for value in ckpt["model"].values())
    stopped = two_processes(SIGNAL_AT_SCRIPT, config, tmp_path, "--experiment", "stopped", SIGNAL_AT="SIGTERM step 20")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    reference = torch.load(tmp_path / "stopped" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert reference["step"] == 20
    for key in ("model", "ema_model"):
        assert all(torch.equal(ckpt[key][name], value) for name, value in reference[key].items()), key
    assert ckpt["train_loss_sums"] == reference["train_loss_sums"]   # the NaN batch is not in the running loss


def test_the_launch_ends_in_one_line_naming_the_failed_ranks():
    """torchrun ended a failed launch with a ChildFailedError traceback and status 1, whatever the workers' status."""
    failures = {rank: SimpleNamespace(exitcode=code) for rank, code in enumerate([2, -15, 1, 2, -9, 2])}
    assert failure_line("tools/train.py", failures, first_rank=3) == (
        "error: tools/train.py failed in 6 processes: rank 3 (first) exit status 2, rank 0 exit status 2, rank 1 "
        "ended by SIGTERM, rank 2 exit status 1 and 2 more; the workers' own errors are above")
    assert failure_line("t.py", {5: SimpleNamespace(exitcode=-200)}, 5) == (
        "error: t.py failed in 1 process: rank 5 ended by signal 200; the workers' own errors are above")
    assert [exit_status(code) for code in (2, 0, -15, -9)] == [2, 0, 143, 137]
    stopped = {0: SimpleNamespace(exitcode=143), 1: SimpleNamespace(exitcode=-15), 2: SimpleNamespace(exitcode=130)}
    assert failure_line("t.py", stopped, 0) == (
        "t.py stopped on a signal in 3 processes: rank 0 (first) exit status 143, rank 1 ended by SIGTERM, rank 2 exit "
        "status 130; the workers' lines above say where they stopped")


def test_a_one_node_launch_takes_a_free_port_and_a_busy_one_is_one_line(tmp_path):
    """Two dist_train.sh runs on one node both took port 29500: the second ended in a DistNetworkError traceback."""
    import socket

    from classification.engine.torchrun import with_a_port

    argv = with_a_port(["--nnodes=1", "--master_port=auto", "x.py", "--master_port=auto"])
    port = int(argv[1].split("=")[1])
    assert argv[0] == "--nnodes=1" and argv[2:] == ["x.py", "--master_port=auto"] and port > 0   # the script's own
    script = tmp_path / "x.py"
    script.write_text("print('ran')\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "classification.engine.torchrun", "--nproc_per_node=1",
                               "--master_addr=127.0.0.1", f"--master_port={taken}", str(script)],
                              capture_output=True, text=True, timeout=120, cwd=REPO, env=tool_env())
    assert proc.returncode == 1 and "ran" not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: the master port {taken} is in use (another run on this machine?): set MASTER_PORT to a free port, "
        f"or leave it unset on one node to take one")


def test_a_signalled_launch_ends_in_one_line_with_the_signals_status(monkeypatch, capsys):
    """torchrun stopped by SIGTERM (after passing it on) raised SignalException: a traceback and status 1."""
    import signal

    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing import SignalException

    from classification.engine import torchrun

    def stopped(argv):
        assert argv == ["--nproc_per_node=2", "train.py"]
        raise SignalException("Process 1 got signal: 15", signal.SIGTERM)
    monkeypatch.setattr(torch.distributed.run, "main", stopped)
    assert torchrun.main(["--nproc_per_node=2", "train.py"]) == 143
    assert capsys.readouterr().err == "torchrun: stopped by SIGTERM, which it passed on to the workers\n"
    monkeypatch.setattr(torch.distributed.run, "main", lambda argv: None)
    assert torchrun.main([]) == 0


def test_a_busy_port_given_as_the_det_seg_scripts_port_names_port(monkeypatch, capsys):
    """detection/ and segmentation/'s dist_*.sh take PORT before MASTER_PORT (tools/mm_dist_run.sh): setting or
    unsetting MASTER_PORT, as the line advised, left the busy PORT in place."""
    import torch.distributed.run

    from classification.engine import torchrun

    def busy(argv):
        raise RuntimeError("The server socket has failed to listen on any local network address. code: -98, name: "
                           "EADDRINUSE, message: address already in use")
    monkeypatch.setattr(torch.distributed.run, "main", busy)
    monkeypatch.setenv("PORT", "29511")
    monkeypatch.setenv("MASTER_PORT", "29511")
    assert torchrun.main(["--master_port=29511", "train.py"]) == 1
    assert capsys.readouterr().err == ("error: the master port 29511 is in use (another run on this machine?): set "
                                       "PORT to a free port, or leave it unset on one node to take one\n")


@pytest.mark.parametrize("error", [RuntimeError, torch.distributed.DistNetworkError], ids=lambda e: e.__name__)
def test_a_busy_port_is_one_line_whichever_error_torch_raises(monkeypatch, capsys, error):
    """torch 2.4 raises a plain RuntimeError for a port in use, newer torch its subclass DistNetworkError; another
    RuntimeError is not taken for a busy port."""
    import torch.distributed.run

    from classification.engine import torchrun

    def busy(argv):
        raise error("The server socket has failed to listen on any local network address. useIpv6: 0, code: -98, "
                    "name: EADDRINUSE, message: address already in use")
    monkeypatch.setattr(torch.distributed.run, "main", busy)
    assert torchrun.main(["--master_port=29511", "train.py"]) == 1
    assert capsys.readouterr().err == ("error: the master port 29511 is in use (another run on this machine?): set "
                                       "MASTER_PORT to a free port, or leave it unset on one node to take one\n")

    def broken(argv):
        raise error("something else")
    monkeypatch.setattr(torch.distributed.run, "main", broken)
    with pytest.raises(error, match="something else"):
        torchrun.main(["train.py"])


SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODELIST", "SLURM_JOB_ID")


@pytest.fixture
def no_launcher_env(monkeypatch) -> None:
    """No torchrun or srun variable set; teardown restores those that _slurm_environment writes."""
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", *SLURM_VARIABLES):
        monkeypatch.setenv(key, "")  # set first, so that teardown restores them
        monkeypatch.delenv(key)


def fake_scontrol(folder, script: str) -> str:
    """A folder holding an executable `scontrol` that runs the shell `script`."""
    path = folder / "scontrol"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(folder)


@pytest.mark.parametrize("master_port, expected", [(None, "4321"), ("1234", "1234")])
@pytest.mark.usefixtures("no_launcher_env")
def test_slurm_tasks_take_dist_port_unless_master_port_is_set(monkeypatch, master_port, expected):
    from classification.engine.distributed import _slurm_environment

    if master_port is not None:
        monkeypatch.setenv("MASTER_PORT", master_port)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert _slurm_environment("4321") == (5, 16, 1)
    assert (os.environ["MASTER_PORT"], os.environ["RANK"], os.environ["WORLD_SIZE"]) == (expected, "5", "16")


@pytest.mark.parametrize("job_ids, ports", [
    (("4017", "4018"), ("24017", "24018")),       # two jobs on one node took the one default 29500: the second
    (("123456", "123456"), ("23456", "23456")),   # failed; the tasks of one job agree on a port
    ((None, "x7"), ("29500", "29500")),            # no numeric job id: torch's default
])
@pytest.mark.usefixtures("no_launcher_env")
def test_slurm_jobs_without_a_port_take_one_from_their_job_id(monkeypatch, job_ids, ports):
    from classification.engine.distributed import _slurm_environment

    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    taken = []
    for job_id in job_ids:
        monkeypatch.delenv("MASTER_PORT", raising=False)
        if job_id is None:
            monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        else:
            monkeypatch.setenv("SLURM_JOB_ID", job_id)
        _slurm_environment(None)
        taken.append(os.environ["MASTER_PORT"])
    assert tuple(taken) == ports


def test_a_numbered_gpu_for_several_processes_is_refused(monkeypatch):
    """--device cuda:N under torchrun would put every rank on GPU N (NCCL then fails on duplicate GPUs)."""
    from classification.engine.config import ConfigError
    from classification.engine.distributed import init_distributed

    for key, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=r"--device cuda:1 would put all 2 processes on one GPU: give --device cuda"):
        init_distributed("cuda:1")


@pytest.mark.parametrize("per_node, local_rank", [("4", "0"), ("4", "3"), (None, "2")])
def test_more_processes_on_a_node_than_gpus_is_refused_on_every_rank(monkeypatch, per_node, local_rank):
    """tools/dist_train.sh 4 on a 2-GPU node put two ranks on each GPU: they joined the group, where NCCL failed on
    duplicate GPUs. Every rank refuses before the rendezvous, rank 0 too."""
    from classification.engine import distributed
    from classification.engine.config import ConfigError

    def joined(**kwargs):
        raise AssertionError(f"joined the process group: {kwargs}")

    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(distributed.dist, "init_process_group", joined)
    for key, value in (("WORLD_SIZE", "4"), ("RANK", local_rank), ("LOCAL_RANK", local_rank),
                       ("LOCAL_WORLD_SIZE", per_node)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    expected = 4 if per_node else 3
    with pytest.raises(ConfigError) as refused:
        distributed.init_distributed("auto")
    assert str(refused.value) == (
        f"{expected} processes on this node but 2 CUDA devices visible: each process needs a GPU of its own; launch "
        f"at most 2 (tools/dist_train.sh GPUS; CUDA_VISIBLE_DEVICES chooses which GPUs), or give --device cpu")


@pytest.mark.usefixtures("no_launcher_env")
def test_slurm_without_srun_variables_is_refused_in_one_line(monkeypatch):
    """`--slurm` outside srun: a ConfigError naming the missing variables (was a KeyError traceback)."""
    from classification.engine.config import ConfigError
    from classification.engine.distributed import _slurm_environment

    monkeypatch.setenv("SLURM_NTASKS", "2")
    expected = (r"^--slurm runs as an srun task \(tools/slurm_train.sh\), but SLURM_PROCID, SLURM_NODELIST are not "
                r"set; without Slurm, launch with tools/dist_train.sh and no --slurm$")
    with pytest.raises(ConfigError, match=expected):
        _slurm_environment("29500")


@SKIP_ON_WINDOWS
@pytest.mark.parametrize("script, expected", [
    ("echo 'scontrol: error: Invalid node name list' >&2; exit 1",
     "'scontrol show hostnames node[01-02]' failed (scontrol: error: Invalid node name list); set MASTER_ADDR"),
    (None, "cannot run 'scontrol show hostnames node[01-02]' to find the master node"),
    ("printf 'node01\\nnode02\\n'", None),
])
@pytest.mark.usefixtures("no_launcher_env")
def test_slurm_master_address_comes_from_scontrol_or_a_one_line_error(monkeypatch, tmp_path, script, expected):
    """A failing or absent scontrol is refused (its message used to become MASTER_ADDR, and the rendezvous with that
    name retried for 30 minutes); a working one gives the node list's first host."""
    from classification.engine.config import ConfigError
    from classification.engine.distributed import _slurm_environment

    for key, value in (("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2"), ("SLURM_NODELIST", "node[01-02]")):
        monkeypatch.setenv(key, value)
    path = fake_scontrol(tmp_path, script) + os.pathsep + os.environ["PATH"] if script else str(tmp_path)
    monkeypatch.setenv("PATH", path)  # no script: a PATH without scontrol
    if expected is None:
        assert _slurm_environment("29500") == (1, 2, 1 % max(torch.cuda.device_count(), 1))
        assert os.environ["MASTER_ADDR"] == "node01"
    else:
        with pytest.raises(ConfigError, match=r"^--slurm: ") as err:
            _slurm_environment("29500")
        assert expected in str(err.value)
        assert "MASTER_ADDR" not in os.environ


@SKIP_ON_WINDOWS
def test_an_interrupted_slurm_run_names_the_resume_command_once(config, tmp_path):
    """Two srun tasks (SLURM_* set by hand) both get SIGTERM, as from scancel: both exit 143, and one `interrupted`
    line is printed (every task printed it: RANK was read before --slurm had set it)."""
    env = {**tool_env(), "SLURM_NTASKS": "2", "SLURM_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "SIGNAL_AT": "SIGTERM step 5"}
    command = [sys.executable, SIGNAL_AT_SCRIPT, "-c", str(config), *TINY_MODEL, "-b", "16", "--output",
               str(tmp_path), "--experiment", "cut", "--slurm"]
    tasks = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              env={**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}) for rank in (0, 1)]
    try:
        outputs = [task.communicate(timeout=120) for task in tasks]
    finally:
        for task in tasks:
            task.kill()
    last = tmp_path / "cut" / "last.pth.tar"
    assert [task.returncode for task in tasks] == [143, 143], [err[-2000:] for _, err in outputs]
    lines = [line for _, err in outputs for line in err.splitlines() if line.startswith("interrupted")]
    assert lines == [f"interrupted by SIGTERM; continue with your launch command (dist_train.sh, srun) plus --resume "
                     f"{last}"]
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], len(ckpt["rng"])) == (0, 5, 2)


def _non_finite_loss_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from classification.engine.checkpoint import LAST, CheckpointManager
    from classification.engine.stopping import stop_for_non_finite_loss

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        folder = os.path.join(out_dir, f"node{rank}")    # each rank on a node of its own, without a shared folder
        os.makedirs(folder)
        if rank == 0:
            open(os.path.join(folder, LAST), "wb").close()
        run = SimpleNamespace(manager=CheckpointManager(folder, enabled=rank == 0), non_finite_steps=1, scaler=None,
                              epoch_position=lambda step: f"step {step}", log=logging.getLogger("localmamba.test"))
        error = stop_for_non_finite_loss(run, 3, SimpleNamespace(step=0), float("nan") if rank else None)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"{rank}.txt"), "w") as f:
        f.write(str(error))


def test_a_non_finite_loss_is_told_on_every_rank_as_rank_0s_folder_holds_it(tmp_path):
    """A rank on another node than rank 0, with no shared file system, found no last.pth.tar and said that nothing was
    saved, advising a lower --lr, where rank 0 named the checkpoint to go on from."""
    import torch.multiprocessing as mp

    mp.spawn(_non_finite_loss_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    last = tmp_path / "node0" / "last.pth.tar"
    saved = (f"(the step was not taken; {last} holds the run before it): --resume {last} would meet the same loss "
             f"again (the same weights and batch), so continue from a fresh run (no epoch checkpoint was kept) with a "
             f"lower --lr or --clip-grad-norm")
    assert [(tmp_path / f"{rank}.txt").read_text() for rank in (0, 1)] == [
        f"another rank's training loss is not finite in epoch 3 after step 0 {saved}",
        f"the training loss is nan in epoch 3 after step 0 {saved}"]


def _collectives_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from classification.engine.distributed import _LAST_COLLECTIVE, all_gather_objects, all_reduce

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        result = {"objects": all_gather_objects({"rank": rank, "text": "x" * (3 + 5000 * rank)}),
                  "sum": all_reduce([rank + 0.5, 2.0], torch.device("cpu")),
                  "max": all_reduce([rank, -rank], torch.device("cpu"), "max"),
                  "held": sorted(_LAST_COLLECTIVE)}
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(out_dir, f"{rank}.pt"))


def test_collective_helpers_gather_objects_of_unequal_sizes_and_reduce(tmp_path):
    """Two gloo processes: every rank's object whatever its pickled size, sums and maxima elementwise; the tensors of
    each helper's last collective stay held (see distributed._LAST_COLLECTIVE)."""
    import torch.multiprocessing as mp

    mp.spawn(_collectives_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert got["objects"] == [{"rank": 0, "text": "xxx"}, {"rank": 1, "text": "x" * 5003}]
        assert got["sum"] == [2.0, 4.0] and got["max"] == [1.0, 0.0]
        assert got["held"] == ["all_gather_objects", "all_reduce"]
