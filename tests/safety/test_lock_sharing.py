"""The lock file of a run folder shared by a group gets the permissions of every other file of the run."""
import os
import stat

import pytest

from classification.common.checkpoint_io import atomic_write_text
from classification.engine.run_lock import LOCK_FILE, RunLock


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
