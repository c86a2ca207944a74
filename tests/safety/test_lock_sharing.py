"""A run folder shared by a group: the lock file gets the permissions of every other file of the run, and one left by
a killed run of another user blocks nothing."""
import errno
import os
import re
import stat
import subprocess
import sys

import pytest

from classification.common.checkpoint_io import atomic_write_text
from classification.engine import run_lock
from classification.engine.config import ConfigError
from classification.engine.run_lock import LOCK_FILE, RunLock

from training_helpers import REPO, tool_env

# Holds the lock of folder argv[1], prints `held`, then waits for stdin to close.
HOLD = ("import sys; from classification.engine.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); sys.stdin.read()")


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_the_lock_file_takes_the_umask_as_the_runs_other_files(tmp_path, umask):
    """The lock file was created 0644 whatever the umask: in a folder shared by a group (umask 002, whose checkpoints
    are 0664), a teammate's --resume after a killed run (whose lock file stays) failed to open it for writing
    (`[Errno 13] Permission denied: '.../.run.lock'`), though every other file of the run was theirs to write."""
    folder = str(tmp_path / "run")
    previous = os.umask(umask)
    try:
        lock = RunLock(folder)
        lock.acquire()
        atomic_write_text(os.path.join(folder, "args.yaml"), "epochs: 1\n")
        modes = {name: stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) for name in (LOCK_FILE, "args.yaml")}
        lock.release()
    finally:
        os.umask(previous)
    assert modes == {LOCK_FILE: 0o666 & ~umask, "args.yaml": 0o666 & ~umask}


def as_a_user_who_may_not_write(monkeypatch, also_read=False):
    """os.open in run_lock refuses to open a file without write permission for writing (and, `also_read`, any
    existing file), as for a user who does not own it: the tests run as root, whom permissions do not stop."""
    real_open = os.open

    def user_open(path, flags, *mode):
        if os.path.exists(path) and (also_read or (flags & os.O_RDWR and not os.stat(path).st_mode & stat.S_IWUSR)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *mode)

    monkeypatch.setattr(run_lock.os, "open", user_open)


def test_a_killed_run_of_another_user_leaves_a_lock_file_that_blocks_nothing(tmp_path, monkeypatch):
    """A teammate's run was killed, leaving its 0644 lock file: the next run in the folder (its --resume by another
    user) ended with `[Errno 13] Permission denied: '.../.run.lock'`, though no run held the lock."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).write_text("pid 4242 on elsewhere, since 2026-01-01 00:00:00 UTC\n")
    os.chmod(folder / LOCK_FILE, 0o444)
    as_a_user_who_may_not_write(monkeypatch)
    lock = RunLock(str(folder))
    assert lock.acquire() is None and lock.held
    assert (folder / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")
    assert os.stat(folder / LOCK_FILE).st_mode & stat.S_IWUSR
    lock.release()
    assert os.listdir(folder) == []


def test_a_live_run_of_another_user_is_refused_naming_it(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=tool_env(), cwd=REPO)
    try:
        assert holder.stdout.readline() == "held\n"
        os.chmod(folder / LOCK_FILE, 0o444)
        as_a_user_who_may_not_write(monkeypatch)
        with pytest.raises(ConfigError, match=f"^{folder} is in use by another run \\(pid {holder.pid} on "):
            RunLock(str(folder)).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert os.listdir(folder) == [LOCK_FILE]


def test_a_lock_file_this_user_cannot_even_read_is_refused_in_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).write_text("")
    as_a_user_who_may_not_write(monkeypatch, also_read=True)
    with pytest.raises(ConfigError, match="^" + re.escape(
            f"{folder / LOCK_FILE} (root's) cannot be opened: Permission denied; it is the lock file of a run in "
            f"{folder}: once no run of theirs is live there, delete it, or choose another --experiment")):
        RunLock(str(folder)).acquire()


def test_a_lock_file_of_another_user_deleted_as_its_run_ends_is_created_anew(tmp_path, monkeypatch):
    """The live run of another user ends (deleting its lock file) between this run's two opens of the file."""
    folder = tmp_path / "run"
    folder.mkdir()
    lock_file = folder / LOCK_FILE
    lock_file.write_text("pid 4242 on elsewhere, since 2026-01-01 00:00:00 UTC\n")
    real_open = os.open

    def user_open(path, flags, *mode):
        if path == str(lock_file) and flags & os.O_RDWR and lock_file.exists():
            os.remove(lock_file)  # its run ends now
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *mode)

    monkeypatch.setattr(run_lock.os, "open", user_open)
    lock = RunLock(str(folder))
    assert lock.acquire() is None and lock_file.read_text().startswith(f"pid {os.getpid()} on ")
    lock.release()
