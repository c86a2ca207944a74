"""Run tools/train.py with a training batch that cannot be read (the distributed unreadable-image test).

Usage: READ_FAILS_AT="N RANK" python read_fails_at.py [train.py flags], or read_fails_at.py as the ENTRY of
tools/dist_run.sh: on rank RANK, once the optimizer step that brings the schedule to iteration N is done, reading the
next batch raises the DataError of an unreadable image.
"""
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from torch.utils.data import dataloader  # noqa: E402

from classification.data import DataError  # noqa: E402
from classification.engine.scheduler import WarmupScheduler  # noqa: E402

N, RANK = (int(value) for value in os.environ["READ_FAILS_AT"].split())
BROKEN = os.environ.get("RANK", "0") == str(RANK)
reached = False
step, next_batch = WarmupScheduler.step, dataloader._BaseDataLoaderIter.__next__


def step_and_count(scheduler):
    global reached
    step(scheduler)
    reached = reached or scheduler.t == N


def next_or_fail(loader_iter):
    if BROKEN and reached:
        raise DataError("cannot read image /data/train/broken.png: truncated file; remove or replace the file")
    return next_batch(loader_iter)


WarmupScheduler.step = step_and_count
dataloader._BaseDataLoaderIter.__next__ = next_or_fail

train = os.path.join(REPO, "tools", "train.py")
sys.argv = [train, *sys.argv[1:]]
runpy.run_path(train, run_name="__main__")
