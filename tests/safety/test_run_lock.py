"""Two runs never share a folder: a live run's lock refuses a second one (one process or two), a killed run's lock
file blocks nothing (even while a process it forked lives on), and the lock leaves no file (nor an empty folder of a
refused run) behind."""
import errno
import fcntl
import os
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from classification.engine.config import ConfigError
from classification.engine.run_lock import LOCK_FILE, RunLock

from safety_helpers import TINY_RUN, assert_one_line_error, digests, run_tool
from training_helpers import REPO, TINY_MODEL, free_port, tool_env

# Holds the lock of folder argv[1], then forks a child that outlives it (as data loader workers can outlive a
# killed run), printing `held <child pid>`; then waits for stdin to close.
HOLD_LOCK = ("import os, sys, time; from classification.engine.run_lock import RunLock; lock = RunLock(sys.argv[1]); "
             "lock.acquire(); child = os.fork(); child or (time.sleep(120), os._exit(0)); "
             "print('held', child, flush=True); sys.stdin.read()")


@pytest.fixture
def holder():
    """Start a process that holds the lock of a folder until it is stopped: `holder(folder)` returns it."""
    procs, children = [], []

    def start(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=tool_env(), cwd=REPO)
        procs.append(proc)
        word, child = proc.stdout.readline().split()
        assert word == "held"
        children.append(int(child))
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_second_lock_is_refused_naming_the_holder_until_the_first_is_released(tmp_path):
    folder = str(tmp_path / "run")
    first = RunLock(folder)
    assert first.acquire() is None and first.held
    with pytest.raises(ConfigError, match=rf"is in use by another run \(pid {os.getpid()} on "
                                          rf"{socket.gethostname()}, since "):
        RunLock(folder).acquire()
    first.release()
    assert not os.path.exists(os.path.join(folder, LOCK_FILE))
    second = RunLock(folder)
    assert second.acquire() is None
    second.release()


def test_a_lock_file_that_cannot_be_deleted_is_released_without_an_error(tmp_path, monkeypatch):
    """A run folder that became read-only (or a full disk's remount) must not replace the run's own error with one
    about the lock file: the lock drops and a later run takes the folder (the left file holds no lock)."""
    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", path)

    folder = str(tmp_path / "run")
    lock = RunLock(folder)
    lock.acquire()
    with monkeypatch.context() as patch:
        patch.setattr(os, "unlink", read_only)
        lock.release()
    assert not lock.held and os.path.exists(os.path.join(folder, LOCK_FILE))
    again = RunLock(folder)
    assert again.acquire() is None
    again.release()


def test_release_removes_only_an_empty_folder_that_acquire_created(tmp_path):
    created, written, existing = tmp_path / "created", tmp_path / "written", tmp_path / "existing"
    existing.mkdir()
    for folder in (created, written, existing):
        lock = RunLock(str(folder))
        lock.acquire()
        if folder is written:
            (folder / "metrics.csv").write_text("epoch\n")
        lock.release()
    assert not created.exists()
    assert os.listdir(written) == ["metrics.csv"] and os.listdir(existing) == []


def test_a_run_into_the_folder_of_a_live_run_is_refused_and_a_killed_runs_lock_blocks_nothing(holder, tmp_path):
    folder = tmp_path / "run"
    live = holder(folder)
    before = digests(folder)
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), "--experiment", "run",
                    check=False)
    assert_one_line_error(proc, f"{folder} is in use by another run (pid {live.pid} on ")
    assert digests(folder) == before
    live.send_signal(signal.SIGKILL)  # its forked child lives on, with the lock file open
    live.wait()
    assert os.path.isfile(folder / LOCK_FILE)  # a killed run cannot delete its file, but its lock is gone
    run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), "--experiment", "run")
    assert (folder / "last.pth.tar").is_file() and not (folder / LOCK_FILE).exists()


def test_resume_of_a_live_run_is_refused(finished_run, holder):
    before = digests(finished_run)
    live = holder(finished_run)
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "3", "--resume", str(finished_run / "last.pth.tar"),
                    check=False)
    assert_one_line_error(proc, f"{finished_run} is in use by another run (pid {live.pid} on ")
    live.kill()
    live.wait()
    os.remove(finished_run / LOCK_FILE)
    assert digests(finished_run) == before


def test_resume_of_a_live_run_advises_a_branch_which_goes_ahead(finished_run, holder, tmp_path):
    """--resume continues in its checkpoint's folder whatever --experiment says, so the refusal must not send the user
    to another --experiment (refused the same) but to --branch, which continues from the checkpoint in a new folder."""
    live = holder(finished_run)
    resume = ("--epochs", "3", "--resume", str(finished_run / "last.pth.tar"), "--output", str(tmp_path),
              "--experiment", "elsewhere")
    proc = run_tool("train.py", *TINY_RUN, *resume, check=False)
    assert_one_line_error(proc, f"{finished_run} is in use by another run (pid {live.pid} on ")
    assert "give --branch --experiment NEW" in proc.stderr and "choose another --experiment" not in proc.stderr
    run_tool("train.py", *TINY_RUN, *resume, "--branch")
    assert (tmp_path / "elsewhere" / "last.pth.tar").is_file()
    live.kill()
    live.wait()
    os.remove(finished_run / LOCK_FILE)


def test_a_refused_fresh_run_leaves_no_folder(tmp_path):
    proc = run_tool("train.py", *TINY_RUN, "--epochs", "1", "--output", str(tmp_path), "--experiment", "bad",
                    "--dataset", "imagenet", "--data-path", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.skipif(os.name == "nt", reason="POSIX shell script")
def test_every_rank_of_a_distributed_run_stops_with_rank_0s_refusal(holder, tmp_path):
    """Only rank 0 takes the lock; rank 1 must raise the same refusal, not wait in a collective."""
    folder = tmp_path / "run"
    live = holder(folder)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({"dataset": "digits", "epochs": 1, "workers": 0}))
    proc = subprocess.run(["sh", os.path.join(REPO, "tools", "dist_train.sh"), "2", str(config), TINY_MODEL[1],
                           *TINY_MODEL[2:], "-b", "16", "--output", str(tmp_path), "--experiment", "run"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**tool_env(), "MASTER_PORT": str(free_port())})
    refusal = f"error: {folder} is in use by another run (pid {live.pid} on "
    assert proc.returncode != 0
    assert proc.stderr.count(refusal) == 2, proc.stderr[-3000:]
    assert "lost another rank" not in proc.stderr


def test_a_lock_file_deleted_by_its_releasing_holder_while_opened_is_taken_anew(tmp_path, monkeypatch):
    """A run releasing the folder deletes its lock file: a run that opened the file just before would lock a deleted
    file, and a third run, creating a new one, would share the folder with it. It opens the file again and locks the
    one at its path, which names its pid."""
    lock = RunLock(str(tmp_path / "run"))
    lockf = fcntl.lockf
    deleted = []

    def lockf_after_the_holder_left(fd, operation):
        if not deleted:      # the holder's release, between this run's open and its lock
            os.remove(lock.path)
            deleted.append(fd)
        return lockf(fd, operation)

    monkeypatch.setattr(fcntl, "lockf", lockf_after_the_holder_left)
    assert lock.acquire() is None
    try:
        assert deleted and os.path.samestat(os.fstat(lock._fd), os.stat(lock.path))
        with open(lock.path) as f:
            assert f.read().startswith(f"pid {os.getpid()} on ")
    finally:
        lock.release()
