"""A run lock that cannot be taken for a reason other than a live run (a read-only or full file system, a lock path
that is a folder or a link loop, a lock call failing) is one ConfigError line naming the lock file and the cause,
which every rank of a distributed run raises: an OSError raised on rank 0 alone left the other ranks waiting in their
next collective until the launcher killed them."""
import errno
import fcntl
import os
import re
from argparse import Namespace

import pytest
import torch

from classification.engine import distributed, run_lock
from classification.engine.config import ConfigError
from classification.engine.distributed import DistEnv
from classification.engine.run_lock import ELSEWHERE, LOCK_FILE, RESUMED_ELSEWHERE, RunLock, claim_run_folder


def failing(monkeypatch, module, name, code, path=None):
    """`module.name` (os.open, fcntl.lockf, os.write, ...) raises OSError `code` in run_lock, as on such a file
    system; os.open only for the lock file, `path`."""
    real = getattr(module, name)

    def fail(*args, **kwargs):
        if path is None or args[0] == path:
            raise OSError(code, os.strerror(code), path)
        return real(*args, **kwargs)

    monkeypatch.setattr(getattr(run_lock, module.__name__), name, fail)


def refusal(folder, cause, elsewhere=ELSEWHERE):
    path = os.path.join(folder, LOCK_FILE)
    return (f"{path}: cannot take the lock of the run folder {folder}: {cause}; fix that, or {elsewhere}")


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EDQUOT])
def test_a_lock_file_that_cannot_be_created_is_one_line_naming_it(tmp_path, monkeypatch, code):
    """A file system read-only, out of space or over quota for the lock file: the run ended with the raw OSError
    ('[Errno 30] Read-only file system: .../.run.lock'), on rank 0 alone. The run folder that acquire created is
    removed again, as for every other refusal."""
    folder = str(tmp_path / "out" / "run")
    failing(monkeypatch, os, "open", code, os.path.join(folder, LOCK_FILE))
    lock = RunLock(folder)
    with pytest.raises(ConfigError) as refused:
        lock.acquire()
    assert str(refused.value) == refusal(folder, os.strerror(code))
    assert not lock.held and not os.path.exists(tmp_path / "out")


def test_a_lock_path_that_is_a_folder_or_a_link_loop_is_one_line_naming_it(tmp_path):
    """Real failures of the lock file's open: a folder named .run.lock (EISDIR) and a link to itself (ELOOP)."""
    as_folder, as_loop = str(tmp_path / "a"), str(tmp_path / "b")
    os.makedirs(os.path.join(as_folder, LOCK_FILE))
    os.makedirs(as_loop)
    os.symlink(LOCK_FILE, os.path.join(as_loop, LOCK_FILE))
    for folder, code in ((as_folder, errno.EISDIR), (as_loop, errno.ELOOP)):
        with pytest.raises(ConfigError) as refused:
            RunLock(folder).acquire()
        assert str(refused.value) == refusal(folder, os.strerror(code))
    resumed = RunLock(as_folder, RESUMED_ELSEWHERE, resumed=os.path.join(as_folder, "last.pth.tar"))
    with pytest.raises(ConfigError, match="^" + re.escape(refusal(as_folder, os.strerror(errno.EISDIR),
                                                                  RESUMED_ELSEWHERE)) + "$"):
        resumed.acquire()


@pytest.mark.parametrize("module, name, code", [(fcntl, "lockf", errno.EIO), (fcntl, "lockf", errno.EBADF),
                                                (os, "write", errno.ENOSPC), (os, "ftruncate", errno.EIO)])
def test_a_lock_call_that_fails_unexpectedly_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch, module, name,
                                                                            code):
    """A lock call failing with an errno that means neither 'held' nor 'cannot lock here', or the holder's line
    failing to be written: one line naming the lock file; the lock is not held, and the next run takes it."""
    folder = str(tmp_path / "run")
    lock = RunLock(folder)
    with monkeypatch.context() as patch:
        failing(patch, module, name, code)
        with pytest.raises(ConfigError) as refused:
            lock.acquire()
    assert str(refused.value) == refusal(folder, os.strerror(code))
    assert not lock.held
    again = RunLock(folder)
    assert again.acquire() is None
    again.release()


def lock_file_read_only(folder, monkeypatch):
    failing(monkeypatch, os, "open", errno.EROFS, os.path.join(folder, LOCK_FILE))
    return refusal(folder, os.strerror(errno.EROFS))


def unreadable_csv_file(folder, monkeypatch):
    os.makedirs(os.path.join(folder, "metrics.csv"))  # what the check of an earlier run's files cannot read
    return f"{os.strerror(errno.EISDIR)}: {os.path.join(folder, 'metrics.csv')}"


@pytest.mark.parametrize("fault", [lock_file_read_only, unreadable_csv_file])
def test_the_failure_on_rank_0_is_the_refusal_of_every_rank(tmp_path, monkeypatch, fault):
    """claim_run_folder on rank 0 joins the collective that shares its refusal, with the line (before, the OSError
    of the lock, and later that of the check of the folder's earlier run, left claim_run_folder before it); rank 1,
    given rank 0's report by a stand-in gather, raises the same line."""
    folder = str(tmp_path / "run")
    line = fault(folder, monkeypatch)
    reports = {0: ("node0", None), 1: ("node1", None)}

    def gather_as(rank):
        def gather(report):
            reports[rank] = report
            return [reports[0], reports[1]]
        return gather

    cfg = Namespace(overwrite=False, finetune=None, resume=None)
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "all_gather_objects", gather_as(rank))
        monkeypatch.setattr(distributed.socket, "gethostname", lambda: f"node{rank}")
        env = DistEnv(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        with pytest.raises(ConfigError) as refused:
            claim_run_folder(cfg, env, RunLock(folder), fresh=True)
        assert str(refused.value) == line
    assert reports == {0: ("node0", line), 1: ("node1", None)}
