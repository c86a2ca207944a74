"""Run tools/train.py, SIGKILLing itself right after one file event of one epoch (the crash-consistency tests).

Usage: python kill_at.py EVENT EPOCH [train.py flags]; EVENT is `lr` (the epoch's first lr.csv row appended, in its
first training step), `trained` (last.pth.tar written after the epoch's
last step, before its validation), `metrics` (its metrics.csv row appended), `checkpoint` (checkpoint-EPOCH.pth.tar
written), `best` (copied to best.pth.tar) or `last` (the epoch's own last.pth.tar written, before old checkpoints are
evicted).
"""
import os
import runpy
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from classification.common.csv_log import CsvLog  # noqa: E402
from classification.engine import checkpoint  # noqa: E402

EVENT, EPOCH = sys.argv[1], int(sys.argv[2])
EPOCH_FILE = f"checkpoint-{EPOCH}.pth.tar"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after(function, matches):
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        if matches(*args):
            die()
        return result
    return wrapped


append = CsvLog.append
CsvLog.append = after(append, lambda log, row: log.path.endswith(
    {"metrics": "metrics.csv", "lr": "lr.csv"}.get(EVENT, "(no csv)")) and int(row[0]) == EPOCH)
checkpoint.atomic_save = after(checkpoint.atomic_save, lambda obj, path: (
    (EVENT == "checkpoint" and path.endswith(EPOCH_FILE))
    or (path.endswith("last.pth.tar") and obj["epoch"] == EPOCH
        and EVENT == ("trained" if obj["step"] is not None else "last"))))
checkpoint.atomic_copy = after(checkpoint.atomic_copy, lambda src, dst: src.endswith(EPOCH_FILE) and (
    (EVENT == "best" and dst.endswith("best.pth.tar")) or (EVENT == "last" and dst.endswith("last.pth.tar"))))

train = os.path.join(REPO, "tools", "train.py")
sys.argv = [train, *sys.argv[3:]]
runpy.run_path(train, run_name="__main__")
