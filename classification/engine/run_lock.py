"""The lock that keeps two runs out of one run folder.

A run holds an exclusive lock on `<folder>/.run.lock` from before it checks the folder until it ends, so a second
run started there (the same command twice, a requeued job while the first still runs, a `--resume` of a live run) is
refused in one line naming the holder, instead of both writing checkpoints and CSV rows into the folder. It is a
POSIX record lock (`lockf`): it belongs to the process, not to the file descriptor (which forked data loader workers
inherit and may outlive a killed run by seconds), and the kernel drops it when that process dies however it dies, so
a crashed run never blocks its `--resume`; it also holds across NFS clients. Rank 0 holds it for a distributed run.
The lock file is deleted when the run ends; a file left by a killed run holds no lock (one of another user, which
this user may not write, is replaced). `claim_run_folder` takes it at a run's start and checks the folder under it.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import os
import pwd
import socket
from argparse import Namespace
from typing import Callable, NoReturn, Optional

from .config import ConfigError
from .distributed import DistEnv, share_refusal
from .experiment import check_overwrite_spares, check_run_folder, make_writable

LOCK_FILE = ".run.lock"
LOCK_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC

# lockf errors that mean "another process holds it"; and those that mean "this file system cannot lock"
HELD = (errno.EACCES, errno.EAGAIN)
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

# Lock files held by this process: POSIX locks never conflict within a process, and closing any descriptor of the
# file drops them, so a second lock of the same folder in this process is refused here.
_held_here: set[str] = set()


def _holder_line() -> str:
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"pid {os.getpid()} on {socket.gethostname()}, since {started}"


# What a run refused by a live run's lock can do instead of waiting: a fresh run (or a branch) goes to another folder;
# a resumed run continues in its checkpoint's folder whatever --experiment says, so it branches from the checkpoint.
ELSEWHERE = "choose another --experiment"
RESUMED_ELSEWHERE = "give --branch --experiment NEW to continue from its checkpoint in a new folder"


class RunLock:
    """An exclusive lock on the run folder `folder`, held between `acquire` and `release`; a refusal advises
    `elsewhere` (`ELSEWHERE`, or `RESUMED_ELSEWHERE` for a run resumed in its checkpoint's folder). `resumed`: that
    checkpoint, which named the folder (an unwritable one is blamed on it, not on --output)."""

    def __init__(self, folder: str, elsewhere: str = ELSEWHERE, resumed: Optional[str] = None):
        self.folder = folder
        self.elsewhere = elsewhere
        self.resumed = resumed
        self.path = os.path.join(folder, LOCK_FILE)
        self._fd: Optional[int] = None
        self._created_folders: list[str] = []  # deepest first

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Optional[str]:
        """Create the folder when needed and take the lock; ConfigError (one line, naming the holder) when another
        run holds it, or naming the lock file and the cause when it cannot be opened, locked or written. Returns a
        warning to log when the file system cannot lock (the run then goes on unlocked)."""
        self._created_folders = _missing_folders(self.folder)
        if self.resumed is None:
            make_writable(self.folder)
        else:
            make_writable(self.folder, f"--resume {self.resumed}", self.elsewhere)
        if os.path.realpath(self.path) in _held_here:
            self._refuse(_holder_line())
        try:
            return self._lock()
        except OSError as err:  # a file system that is read-only or full, a lock path that is a folder or a loop ...
            self.release()
            raise ConfigError(f"{self.path}: cannot take the lock of the run folder {self.folder}: "
                              f"{err.strerror or err}; fix that, or {self.elsewhere}") from None

    def _lock(self) -> Optional[str]:
        """Open the lock file and lock it (`acquire`, the folder made); OSError on a failure not handled here."""
        while True:
            fd = self._open()
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                self._close_refusing_a_holder(fd, err)
                if err.errno not in UNSUPPORTED:
                    raise
                return (f"{self.folder}: its file system cannot lock {LOCK_FILE} ({err.strerror}), so a second run "
                        f"started in this folder would not be refused")
            if self._is_current(fd):
                break
            os.close(fd)  # the file was deleted by the run that held it, after we opened it: open the new one
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (_holder_line() + "\n").encode())
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        _held_here.add(os.path.realpath(self.path))
        return None

    def _open(self) -> int:
        """The lock file, opened for writing (created when missing). One that this user may not write (a killed run
        of another user sharing the folder left it: a killed run's file stays) is replaced when no run holds it."""
        try:
            return os.open(self.path, LOCK_OPEN_FLAGS, 0o666)  # less the umask
        except PermissionError as err:
            denied = err.strerror
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # deleted since by the run that held it, ending
            return os.open(self.path, LOCK_OPEN_FLAGS, 0o666)
        except OSError:
            self._cannot_open(denied)
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a shared lock: granted only when no run holds the file
        except OSError as err:
            self._close_refusing_a_holder(fd, err)
            self._cannot_open(denied)
        try:
            os.unlink(self.path)
        except FileNotFoundError:  # another run replaced it first: the lock of the file opened next decides
            pass
        except OSError:
            self._cannot_open(denied)
        finally:
            os.close(fd)
        return os.open(self.path, LOCK_OPEN_FLAGS, 0o666)

    def _close_refusing_a_holder(self, fd: int, err: OSError) -> None:
        """After a lockf of the lock file `fd` failed with `err`: close it, and refuse naming the holder it names when
        `err` says another run holds it."""
        try:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
        finally:
            os.close(fd)
        if err.errno in HELD:
            self._refuse(holder or "its holder has not written its name yet")

    def _cannot_open(self, why: str) -> NoReturn:
        """Refuse a lock file that this user can neither write nor replace (`why`: the error of opening it)."""
        self.release()
        raise ConfigError(f"{self.path} ({_owner(self.path)}'s) cannot be opened: {why}; it is the lock file of a "
                          f"run in {self.folder}: once no run of theirs is live there, delete it, or {self.elsewhere}")

    def _refuse(self, holder: str) -> None:
        self.release()
        raise ConfigError(f"{self.folder} is in use by another run ({holder}): two runs in one folder would mix their "
                          f"checkpoints and CSV rows; let that run end or stop it, or {self.elsewhere}")

    def _is_current(self, fd: int) -> bool:
        """True when `fd` is still the file at `path` (not one a releasing run deleted)."""
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Delete the lock file and drop the lock; remove the folders `acquire` created (the run folder and any missing
        parent, such as a new `--output`) when nothing was written there since (a run refused before its first write
        leaves no empty folder)."""
        if self._fd is not None:
            _held_here.discard(os.path.realpath(self.path))
            try:
                os.unlink(self.path)
            except OSError:  # gone, or the folder became read-only: the lock drops with the file's closing anyway
                pass
            os.close(self._fd)  # closing the file drops the lock
            self._fd = None
        created, self._created_folders = self._created_folders, []
        for folder in created:
            try:
                os.rmdir(folder)
            except OSError:  # not empty: the run wrote there
                break


def _owner(path: str) -> str:
    """The name of the user who owns `path` (its uid when it has no name here)."""
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return "its owner"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _missing_folders(folder: str) -> list[str]:
    """`folder` and those of its parents that do not exist, deepest first (empty when `folder` exists)."""
    missing, path = [], os.path.abspath(folder)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def claim_run_folder(cfg: Namespace, env: DistEnv, lock: RunLock, fresh: bool,
                     recheck: Optional[Callable[[], None]] = None) -> Optional[str]:
    """On rank 0, create the run folder and take its lock (`lock`), then refuse a `fresh` run in a folder that
    holds another run (checked under the lock, so two runs started together cannot both pass), and call `recheck`
    (a resumed run's checks of its folder, made before the lock: `experiment.check_folder_unchanged`); every rank
    raises rank 0's refusal, or the line of an OSError of these checks (a file of the folder that cannot be read).
    Returns the warning of a file system that cannot lock, else None."""
    refusal, unlocked = None, None
    if env.is_main:
        try:
            unlocked = lock.acquire()
            if fresh:
                check_run_folder(lock.folder, cfg.overwrite)
                if cfg.overwrite:
                    check_overwrite_spares(lock.folder, {"--finetune": cfg.finetune, "--resume": cfg.resume,
                                                         "--teacher-ckpt": cfg.teacher_ckpt})
            if recheck is not None:
                recheck()
        except (ConfigError, OSError) as err:
            refusal = err
    share_refusal(refusal)
    return unlocked
