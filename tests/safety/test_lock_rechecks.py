"""What a resumed run checked of its folder before it held the folder's lock is checked again under the lock: a live
run in that folder may go on (and end, releasing the lock) in between."""
import re
import shutil
from argparse import Namespace

import pytest

from classification.common.checkpoint_io import atomic_save
from classification.engine import run_lock
from classification.engine.config import ConfigError, parse_args
from classification.engine.experiment import RunFolder, check_folder_unchanged
from classification.engine.trainer import train

from safety_helpers import TINY_RUN, digests


@pytest.mark.parametrize("resumed, refusal", [
    ("last.pth.tar", "{resume} changed while this run started: the run in {folder} went on to epoch 1 after this run "
                     "read it at epoch 0; give the command again to continue from where that run stopped"),
    ("checkpoint-0.pth.tar", "{resume} (epoch 0) is behind the run in {folder}: its last.pth.tar has gone on to "
                             "epoch 1. Continuing from it there would delete what came after: give --branch"),
])
def test_a_run_that_went_on_before_the_lock_was_taken_is_not_rewound(resumed, refusal, finished_run, tmp_path,
                                                                     monkeypatch):
    """A job resumed the folder's last.pth.tar (epoch 0) while the run there was finishing epoch 1; that run committed
    epoch 1 and ended before the job took the lock. The job passed its check that the checkpoint is not behind the
    folder (made before the lock) and continued from epoch 0, deleting checkpoint-1.pth.tar and epoch 1's CSV rows
    as a --rewind does, which it was not given. (Resuming checkpoint-0.pth.tar, the same check made before the lock
    refuses it; under the lock it did not look again.)"""
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    later = (folder / "last.pth.tar").read_bytes()
    after = digests(folder)  # the folder as the other run leaves it
    shutil.copy(folder / "checkpoint-0.pth.tar", folder / "last.pth.tar")  # where it stood when the job read it
    acquire = run_lock.RunLock.acquire

    def other_run_commits_then_acquire(lock):
        (folder / "last.pth.tar").write_bytes(later)
        return acquire(lock)

    monkeypatch.setattr(run_lock.RunLock, "acquire", other_run_commits_then_acquire)
    resume = str(folder / resumed)
    with pytest.raises(ConfigError, match="^" + re.escape(refusal.format(resume=resume, folder=folder))):
        train(parse_args([*TINY_RUN, "--epochs", "3", "--resume", resume]))
    assert digests(folder) == after


def test_a_branch_into_a_folder_that_got_a_run_before_the_lock_is_refused(finished_run, tmp_path, monkeypatch):
    """Two `--branch --experiment b` of one checkpoint: both found b without a run; the first trained an epoch there
    and ended before the second took the lock, which then started its branch over it (its CSV files copied over the
    first's, its checkpoint files deleted as files of no kept list)."""
    branch = tmp_path / "b"
    acquire = run_lock.RunLock.acquire

    def other_branch_runs_then_acquire(lock):
        shutil.copytree(finished_run, branch)  # what the first branch left
        return acquire(lock)

    monkeypatch.setattr(run_lock.RunLock, "acquire", other_branch_runs_then_acquire)
    resume = str(finished_run / "last.pth.tar")
    with pytest.raises(ConfigError, match="^" + re.escape(f"--branch continues {resume} in a new folder, and {branch} "
                                                          f"holds a run: give --experiment NEW")):
        train(parse_args([*TINY_RUN, "--epochs", "3", "--resume", resume, "--branch", "--output", str(tmp_path),
                          "--experiment", "b"]))
    monkeypatch.undo()
    assert digests(branch) == digests(finished_run)


def test_a_last_checkpoint_unreadable_under_the_lock_is_a_refusal_every_rank_shares(tmp_path):
    """claim_run_folder shares a ConfigError of rank 0's checks with every rank; any other error would leave the
    other ranks waiting in their next collective."""
    last = str(tmp_path / "last.pth.tar")
    ckpt = {"epoch": 0, "step": None, "model": {}, "run_id": "a"}
    atomic_save(ckpt, last)
    with open(last, "r+b") as f:  # cut short since it was read
        f.truncate(100)
    cfg = Namespace(resume=last, trust_checkpoint=False)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{last} changed while this run started and cannot be read "
                                                          f"now: {last} looks truncated (100 bytes")):
        check_folder_unchanged(cfg, ckpt, RunFolder(str(tmp_path)))
