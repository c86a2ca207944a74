"""A run killed at any file event of an epoch resumes to exactly the files of an uninterrupted run; leftover
temporary files are removed; the kept-checkpoint ranking survives a resume from another working directory."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from safety_helpers import TINY_RUN, run_tool
from training_helpers import assert_same_run, snapshot, tool_env

HERE = os.path.dirname(os.path.abspath(__file__))
# keep 2: a later epoch evicts the worst kept one, so every event of the manager happens
RUN = [*TINY_RUN, "--epochs", "4", "--keep-num", "2", "--model-ema", "--model-ema-decay", "0.5"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    run_tool("train.py", *RUN, "--output", str(out), "--experiment", "run")
    return snapshot(out / "run")


def kill_at(event, epoch, out, cwd=None):
    """Run RUN into `out`/run (relative to `cwd`) and SIGKILL it right after `event` of `epoch`."""
    proc = subprocess.run([sys.executable, os.path.join(HERE, "kill_at.py"), event, str(epoch), *RUN,
                           "--output", str(out), "--experiment", "run"], capture_output=True, text=True,
                          env=tool_env(), timeout=300, cwd=cwd)
    assert proc.returncode == -9, f"not killed at {event}@{epoch}:\n{proc.stderr[-2000:]}"
    return out / "run"


@pytest.mark.parametrize("event, epoch", [("trained", 1), ("metrics", 1), ("checkpoint", 1), ("best", 1),
                                          ("last", 2)])
def test_kill_at_any_file_event_resumes_exactly(event, epoch, straight, tmp_path):
    folder = kill_at(event, epoch, tmp_path)
    (folder / ".tmp-left-by-a-killed-write.pth.tar").write_bytes(b"partial")
    run_tool("train.py", *RUN, "--resume", str(folder / "last.pth.tar"))
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    assert_same_run(snapshot(folder), straight)


def test_resume_from_another_working_directory_keeps_the_ranking(straight, tmp_path):
    (tmp_path / "first").mkdir()
    kill_at("last", 1, Path("."), cwd=str(tmp_path / "first"))  # started with a relative --output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_tool("train.py", *RUN, "--resume", os.path.join("..", "first", "run", "last.pth.tar"), cwd=str(elsewhere))
    assert_same_run(snapshot(tmp_path / "first" / "run"), straight)
    assert len(straight["kept"]) == 2 and straight["files"] == sorted(
        ["best.pth.tar", "last.pth.tar"] + [name for name, _ in straight["kept"]])


def test_reconcile_with_nothing_kept_removes_an_uncommitted_best(tmp_path):
    """A run resumed in the middle of epoch 0 and killed during that epoch's end writes leaves checkpoint-0 and
    best.pth.tar that its mid-epoch last.pth.tar does not hold: both go, as after any later epoch."""
    from classification.engine.checkpoint import CheckpointManager

    for name in ("checkpoint-0.pth.tar", "best.pth.tar", "last.pth.tar"):
        (tmp_path / name).write_bytes(b"uncommitted")
    manager = CheckpointManager(str(tmp_path))
    manager.load_state_dict([])
    manager.reconcile()
    assert os.listdir(tmp_path) == ["last.pth.tar"]


def test_a_tied_score_keeps_the_earlier_epoch_first(tmp_path):
    """Ties rank the earlier epoch first (the class's promise, as the original): a later epoch reaching the same
    top-1 neither takes best.pth.tar nor pushes the earlier one down, and with the list full it is not kept."""
    import torch

    from classification.engine.checkpoint import CheckpointManager

    manager = CheckpointManager(str(tmp_path), keep_num=2)
    for epoch in range(3):
        manager.update(epoch, 50.0, {"epoch": epoch})
    assert manager.ckpts == [["checkpoint-0.pth.tar", 50.0], ["checkpoint-1.pth.tar", 50.0]]
    epoch_of = {name: torch.load(tmp_path / name, weights_only=True)["epoch"] for name in os.listdir(tmp_path)}
    assert epoch_of == {"checkpoint-0.pth.tar": 0, "checkpoint-1.pth.tar": 1, "best.pth.tar": 0, "last.pth.tar": 2}


@pytest.mark.parametrize("keep_missing", [True, False])
def test_checkpoint_files_deleted_by_hand_keep_their_rank_and_best(tmp_path, keep_missing):
    """A user frees disk space by deleting the checkpoint-N files, keeping best.pth.tar and last.pth.tar; a resume
    in the run's own folder (keep_missing) dropped their entries: best.pth.tar was removed, then replaced by a worse
    epoch. A branch's new folder (keep_missing=False) starts its ranking afresh from the files it has."""
    import torch

    from classification.engine.checkpoint import CheckpointManager

    manager = CheckpointManager(str(tmp_path), keep_num=3)
    for epoch, score in enumerate([40.0, 70.0, 60.0]):
        manager.update(epoch, score, {"epoch": epoch})
    for epoch in range(3):
        os.remove(tmp_path / f"checkpoint-{epoch}.pth.tar")
    resumed = CheckpointManager(str(tmp_path), keep_num=3)
    resumed.load_state_dict(manager.state_dict(), keep_missing=keep_missing)
    resumed.reconcile()

    def best_epoch():
        path = tmp_path / "best.pth.tar"
        return torch.load(path, weights_only=True)["epoch"] if path.exists() else None

    if keep_missing:
        assert best_epoch() == 1 and resumed.latest(before_epoch=3) is None
        resumed.update(3, 65.0, {"epoch": 3})                     # worse than the deleted best: kept second
        assert best_epoch() == 1 and [name for name, _ in resumed.ckpts] == [
            "checkpoint-1.pth.tar", "checkpoint-3.pth.tar", "checkpoint-2.pth.tar"]
        resumed.update(4, 75.0, {"epoch": 4})                     # better: it takes best.pth.tar
        assert best_epoch() == 4 and resumed.ckpts[0] == ["checkpoint-4.pth.tar", 75.0]
    else:
        assert best_epoch() is None and resumed.ckpts == []
        resumed.update(3, 65.0, {"epoch": 3})
        assert best_epoch() == 3


@pytest.mark.parametrize("write", ["save", "copy", "text"])
def test_checkpoint_writes_are_synced_before_and_after_their_rename(write, tmp_path, monkeypatch):
    """A machine crash (not only a killed process) must not leave last.pth.tar empty: the temporary file's data is
    synced before the rename and the folder after it, for written and for copied checkpoints alike, and for the
    run's text files (args.yaml)."""
    from classification.common import checkpoint_io
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace",
                        lambda src, dst: (events.append(("rename", str(dst))), real_replace(src, dst))[1])
    src = tmp_path / "checkpoint-1.pth.tar"
    checkpoint_io.atomic_save({"epoch": 1}, str(src))
    targets = {"save": src, "copy": tmp_path / "last.pth.tar", "text": tmp_path / "args.yaml"}
    if write == "copy":
        events.clear()
        checkpoint_io.atomic_copy(str(src), str(targets["copy"]))
    elif write == "text":
        events.clear()
        checkpoint_io.atomic_write_text(str(targets["text"]), "epochs: 2\n")
        assert targets["text"].read_text() == "epochs: 2\n"
    target = str(targets[write])
    assert [kind for kind, _ in events] == ["fsync", "rename", "fsync"]
    assert os.path.basename(events[0][1]).startswith(".tmp-") and events[1][1] == target
    assert events[2][1] == str(tmp_path)


def test_a_copy_onto_a_full_disk_names_the_checkpoint_and_the_reason_alone(tmp_path, monkeypatch):
    """The copy to last.pth.tar / best.pth.tar failing on a full disk said `cannot write checkpoint last.pth.tar:
    [Errno 28] No space left on device: 'checkpoint-0.pth.tar' -> '.tmp-x.pth.tar'`, naming two other files."""
    import shutil

    from classification.common import checkpoint_io
    src, dst = tmp_path / "checkpoint-0.pth.tar", tmp_path / "last.pth.tar"
    checkpoint_io.atomic_save({"epoch": 0}, str(src))

    def full_disk(source, target):
        raise OSError(28, "No space left on device", source, None, target)

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    with pytest.raises(checkpoint_io.CheckpointError) as failed:
        checkpoint_io.atomic_copy(str(src), str(dst))
    assert str(failed.value) == f"cannot write checkpoint {dst}: No space left on device"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-0.pth.tar"]


def test_a_save_into_a_folder_it_cannot_write_says_permission_denied_alone(tmp_path, monkeypatch):
    """Only a file that stands where a folder is needed (os.makedirs' FileExistsError) is named as such; another
    refused write (the temporary file in a read-only folder, mocked: this may run as root) says its own reason, not
    that the temporary file is a file."""
    import tempfile

    from classification.common import checkpoint_io

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".tmp-x1y2.pth.tar"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(checkpoint_io.CheckpointError) as failed:
        checkpoint_io.atomic_save({"epoch": 0}, str(tmp_path / "last.pth.tar"))
    assert str(failed.value) == f"cannot write checkpoint {tmp_path / 'last.pth.tar'}: Permission denied"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("failure", ["folder in the way", "full disk"])
def test_a_failed_small_file_write_names_the_file_not_its_temporary_copy(tmp_path, monkeypatch, failure):
    """args.yaml (or a figure, a table) that cannot be written: the error named the temporary file whose rename
    failed (`Is a directory: out/.tmp-b2i23hn8.yaml`, a file the user never sees) or no file at all (a full disk);
    it names the file written, and no temporary file is left."""
    from classification.common.checkpoint_io import atomic_write_text
    from classification.common.error_text import describe_error
    target = tmp_path / "args.yaml"
    if failure == "folder in the way":
        target.mkdir()
        expected = f"Is a directory: {target}"
    else:
        def full_disk(fd):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", full_disk)
        expected = f"No space left on device: {target}"
    with pytest.raises(OSError) as failed:
        atomic_write_text(str(target), "epochs: 1\n")
    assert describe_error(failed.value) == expected
    assert os.listdir(tmp_path) == (["args.yaml"] if failure == "folder in the way" else [])


def test_a_failed_rewrite_of_args_or_directions_keeps_the_old_file(tmp_path, monkeypatch):
    """args.yaml and directions.yaml are replaced whole or not at all: a write that fails (here its sync) leaves the
    previous file as it was and no temporary file (they were truncated first, then written in place)."""
    import argparse

    from classification.engine.config import save_config
    from classification.models.directions import load_directions, save_directions
    args_file, directions_file = tmp_path / "args.yaml", tmp_path / "directions.yaml"
    save_config(argparse.Namespace(epochs=2, model="local_vim_tiny"), str(args_file))
    save_directions(directions_file, [["h", "v"]] * 2, topk=2)
    before = {path: path.read_bytes() for path in (args_file, directions_file)}

    def failing_sync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_sync)
    with pytest.raises(OSError, match="No space"):
        save_config(argparse.Namespace(epochs=300, model="local_vim_small"), str(args_file))
    with pytest.raises(OSError, match="No space"):
        save_directions(directions_file, [["w2", "w2_flip"]] * 2, topk=2)
    assert {path: path.read_bytes() for path in before} == before
    assert sorted(os.listdir(tmp_path)) == ["args.yaml", "directions.yaml"]
    assert load_directions(str(directions_file)) == [["h", "v"]] * 2
