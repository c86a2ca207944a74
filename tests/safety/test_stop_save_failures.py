"""A mid-epoch save that a stop makes (a stop signal, a training batch that cannot be read, a non-finite loss)
failing on a full disk: the run says what last.pth.tar still holds (the previous save, whole: writes are atomic) and
that --resume continues from there; it ended with the write error alone."""
import os
import signal
from types import SimpleNamespace

import pytest
import torch

from classification.common import checkpoint_io
from classification.data import DataError
from classification.engine import checkpoint, stopping, train_loop
from classification.engine.cli import TrainingDiverged
from classification.engine.config import parse_args
from classification.engine.scheduler import WarmupScheduler
from classification.engine.trainer import train

from safety_helpers import TINY_RUN, FullDisk

RUN = [*TINY_RUN, "--epochs", "2"]  # 5 steps per epoch
POSIX_SIGNALS = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")


def mid_epoch_saves_fill_the_disk(monkeypatch, fails=lambda payload: payload.get("step") not in (None, 5)) -> None:
    """Every checkpoint write of a payload that `fails` picks (by default a mid-epoch save: a step of 5 short of the
    epoch's end) fails after 100 bytes with ENOSPC, as on a file system that filled up."""
    real_save, real_fdopen = checkpoint.atomic_save, os.fdopen

    def save(obj, path, *args, **kwargs):
        if not fails(obj):
            return real_save(obj, path, *args, **kwargs)
        with monkeypatch.context() as full:
            full.setattr(checkpoint_io.os, "fdopen", lambda *a: FullDisk(real_fdopen(*a), 100))
            return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "atomic_save", save)


def what_last_holds(last) -> str:
    return (f"{last} holds the run up to epoch 0; the training after it is lost: --resume {last} continues from "
            f"there")


def fails_keeping_epoch_0(tmp_path) -> None:
    """Train RUN in tmp_path/run: its write of last.pth.tar fails on a full disk, which the run's error says, with
    what last.pth.tar holds (epoch 0's end, kept whole)."""
    folder = tmp_path / "run"
    last = folder / "last.pth.tar"
    with pytest.raises(checkpoint_io.CheckpointError) as failed:
        train(parse_args([*RUN, "--output", str(tmp_path), "--experiment", "run"]))
    assert str(failed.value) == f"cannot write checkpoint {last}: No space left on device; {what_last_holds(last)}"
    assert_epoch_0_kept(folder)


def assert_epoch_0_kept(folder) -> None:
    """last.pth.tar is epoch 0's end, whole, and no temporary file is left."""
    ckpt = torch.load(folder / "last.pth.tar", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (0, None)
    assert not [name for name in os.listdir(folder) if name.startswith(".tmp-")]


@POSIX_SIGNALS
def test_a_stop_signal_whose_save_fills_the_disk_says_what_last_holds(tmp_path, monkeypatch):
    """SIGTERM after step 3 of epoch 1: its save fails; the run's error names the write's cause and what last.pth.tar
    holds (epoch 0's end) and how to continue."""
    step = WarmupScheduler.step

    def step_then_stop(scheduler):
        step(scheduler)
        if scheduler.t == 8:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(WarmupScheduler, "step", step_then_stop)
    mid_epoch_saves_fill_the_disk(monkeypatch)
    fails_keeping_epoch_0(tmp_path)


def test_an_unread_batch_whose_save_fills_the_disk_says_what_last_holds(tmp_path, monkeypatch):
    """The batch after step 3 of epoch 1 cannot be read and the save of the 3 steps fails: the run still ends with
    the reading's error, and its log line says the save failed, why, and what last.pth.tar holds."""
    real_next, calls = train_loop._next_batch, []

    def next_batch(batches):
        calls.append(1)
        if len(calls) == 9:  # epoch 0's 5 batches, then epoch 1's 3 read, the 4th fails
            return None, None, DataError("cannot read image 9.png")
        return real_next(batches)

    monkeypatch.setattr(train_loop, "_next_batch", next_batch)
    mid_epoch_saves_fill_the_disk(monkeypatch)
    folder = tmp_path / "run"
    last = folder / "last.pth.tar"
    with pytest.raises(DataError, match="^cannot read image 9.png$"):
        train(parse_args([*RUN, "--output", str(tmp_path), "--experiment", "run"]))
    log = "".join(path.read_text() for path in folder.glob("log_*.txt"))
    assert (f"Reading the training data of epoch 1 failed after step 3 of 5; saving its training up to step 3 failed: "
            f"cannot write checkpoint {last}: No space left on device; {what_last_holds(last)}\n") in log
    assert_epoch_0_kept(folder)


def test_a_non_finite_loss_whose_save_fills_the_disk_still_ends_as_diverged(tmp_path, monkeypatch):
    """The loss of step 3 of epoch 1 is NaN and the save of the steps before it fails: the run ended with the write
    error alone, losing the divergence and its advice; now the divergence says the save failed and what last.pth.tar
    holds, an earlier state than the step's, from which a lower --lr takes another way."""
    calls, forward = [], torch.nn.CrossEntropyLoss.forward

    def nan_at_step_8(module, logits, target):
        loss = forward(module, logits, target)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 9:  # epoch 0's 5 steps, then epoch 1's steps 0-2 taken, step 3's loss NaN
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", nan_at_step_8)
    mid_epoch_saves_fill_the_disk(monkeypatch)
    folder = tmp_path / "run"
    last = folder / "last.pth.tar"
    with pytest.raises(TrainingDiverged) as diverged:
        train(parse_args([*RUN, "--output", str(tmp_path), "--experiment", "run"]))
    assert str(diverged.value) == (
        f"the training loss is nan in epoch 1 after step 3 of 5 (the step was not taken; saving the run before it "
        f"failed: cannot write checkpoint {last}: No space left on device; {what_last_holds(last)}): lower --lr or "
        f"add --clip-grad-norm")
    assert_epoch_0_kept(folder)


def test_an_epochs_end_save_that_fills_the_disk_says_what_last_holds(tmp_path, monkeypatch):
    """The save of epoch 1's trained state before its validation fails: the run ended with the write error alone;
    now it says that last.pth.tar holds epoch 0 and that --resume continues from there."""
    mid_epoch_saves_fill_the_disk(monkeypatch, lambda payload: (payload["epoch"], payload.get("step")) == (1, 5))
    fails_keeping_epoch_0(tmp_path)


def test_an_epochs_checkpoints_that_fill_the_disk_say_that_resume_validates_again(tmp_path, monkeypatch):
    """Epoch 1 trained and validated, its checkpoint files cannot be written: last.pth.tar holds the epoch's training
    (saved before the validation), from which --resume validates it and writes them again."""
    mid_epoch_saves_fill_the_disk(monkeypatch, lambda payload: (payload["epoch"], payload.get("step")) == (1, None))
    folder = tmp_path / "run"
    last = folder / "last.pth.tar"
    with pytest.raises(checkpoint_io.CheckpointError) as failed:
        train(parse_args([*RUN, "--output", str(tmp_path), "--experiment", "run"]))
    assert str(failed.value) == (
        f"cannot write checkpoint {folder / 'checkpoint-1.pth.tar'}: No space left on device; {last} holds the run up "
        f"to after step 5 of epoch 1; the training after it is lost: --resume {last} continues from there")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (1, 5)
    assert sorted(name for name in os.listdir(folder) if name.endswith(".pth.tar")) == [
        "best.pth.tar", "checkpoint-0.pth.tar", "last.pth.tar"]


def test_rank_0s_failed_save_ends_every_rank_with_its_line(monkeypatch):
    """On a rank that writes nothing (rank 1), rank 0's failed mid-epoch save is the error too, given to it by a
    stand-in gather of the two ranks' reports: before, rank 1 went on past the barrier to end as a stopped run whose
    checkpoint was saved."""
    line = ("cannot write checkpoint out/last.pth.tar: No space left on device; out/last.pth.tar holds the run up to "
            "epoch 0; the training after it is lost: --resume out/last.pth.tar continues from there")
    sent = []

    def gather(report):
        sent.append(report)
        return [line, report]

    saves = []
    run = SimpleNamespace(manager=SimpleNamespace(save_last=saves.append),
                          checkpoint_payload=lambda epoch, progress: {"epoch": epoch, "step": progress.step})
    monkeypatch.setattr(stopping, "all_gather_objects", gather)
    with pytest.raises(checkpoint_io.CheckpointError) as failed:
        stopping._save_mid_epoch(run, 1, SimpleNamespace(step=3))
    assert str(failed.value) == line
    assert saves == [{"epoch": 1, "step": 3}] and sent == [None]


@pytest.mark.parametrize("failing_save", [1, 2], ids=["trained epoch", "epoch's checkpoints"])
def test_rank_0s_failed_epoch_end_save_ends_every_rank_with_its_line(tmp_path, monkeypatch, failing_save):
    """The epoch-end saves (the trained epoch's last.pth.tar before its validation, its checkpoints after) share their
    outcome like the mid-epoch ones: a rank whose own call wrote nothing hears rank 0's failure, given here by a
    stand-in gather at the `failing_save`-th save, and ends with its line. Before, rank 0 raised alone and the other
    ranks went on into the validation's collectives, waiting there until the launcher ended them."""
    line = "cannot write checkpoint last.pth.tar: No space left on device; (what rank 0's last.pth.tar holds)"
    sent = []

    def gather(report):
        sent.append(report)
        return [line if len(sent) == failing_save else None, report]

    monkeypatch.setattr(stopping, "all_gather_objects", gather)
    with pytest.raises(checkpoint_io.CheckpointError) as failed:
        train(parse_args([*RUN, "--output", str(tmp_path), "--experiment", "run"]))
    assert str(failed.value) == line
    assert sent == [None] * failing_save
