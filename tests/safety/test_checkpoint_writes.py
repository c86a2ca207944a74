"""A checkpoint write that fails part way (a full disk, a file past its size limit): the error names the cause in
one line, and the previous checkpoint is kept whole, with no temporary file left."""
import errno
import os

import pytest
import torch

from classification.common import checkpoint_io
from classification.common.checkpoint_io import CheckpointError, atomic_copy, atomic_save, load_checkpoint

from safety_helpers import FullDisk


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT])
@pytest.mark.parametrize("room", [0, 100, 5000])
def test_a_write_that_fails_names_its_cause_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, code, room):
    """torch's stream writer turned the OSError of a failed write into a RuntimeError, and a run on a full disk
    ended with 'cannot write checkpoint ...: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598'
    (seen on a full tmpfs) instead of 'No space left on device'."""
    path = str(tmp_path / "last.pth.tar")
    atomic_save({"epoch": 3, "weights": torch.arange(4.0)}, path)
    good = open(path, "rb").read()
    real_fdopen = os.fdopen
    monkeypatch.setattr(checkpoint_io.os, "fdopen", lambda *args: FullDisk(real_fdopen(*args), room, code))
    with pytest.raises(CheckpointError) as failed:
        atomic_save({"epoch": 4, "weights": torch.zeros(10000)}, path)
    monkeypatch.undo()
    assert str(failed.value) == f"cannot write checkpoint {path}: {os.strerror(code)}"
    assert os.listdir(tmp_path) == ["last.pth.tar"] and open(path, "rb").read() == good
    assert load_checkpoint(path)["epoch"] == 3


def test_a_copy_whose_temporary_file_cannot_be_created_is_a_checkpoint_error(tmp_path, monkeypatch):
    """best.pth.tar and last.pth.tar are copies (atomic_copy); on a file system out of inodes (or space for a new
    file) the run ended with 'No space left on device: .../.tmp-x1y2.pth.tar', naming a temporary file, not the
    checkpoint, unlike every other failed write."""
    src, dst = str(tmp_path / "checkpoint-3.pth.tar"), str(tmp_path / "best.pth.tar")
    atomic_save({"epoch": 3}, src)

    def full(prefix, suffix, dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(dir, prefix + "x1y2" + suffix))

    monkeypatch.setattr(checkpoint_io.tempfile, "mkstemp", full)
    with pytest.raises(CheckpointError) as failed:
        atomic_copy(src, dst)
    assert str(failed.value) == f"cannot write checkpoint {dst}: No space left on device"
    assert os.listdir(tmp_path) == ["checkpoint-3.pth.tar"]
