"""Run tools/train.py with a training batch that cannot be read (the distributed unreadable-image test).

Usage: READ_FAILS_AT="N RANK" python read_fails_at.py [train.py flags], or read_fails_at.py as the ENTRY of
tools/dist_run.sh: on rank RANK, once the optimizer step that brings the schedule to iteration N is done, reading the
next batch raises the DataError of an unreadable image.
"""
from fault_harness import Reached, run_train, step_and_faulty_rank
from torch.utils.data import dataloader

from classification.data import DataError

N, BROKEN = step_and_faulty_rank("READ_FAILS_AT")
reached = Reached(N)
next_batch = dataloader._BaseDataLoaderIter.__next__


def next_or_fail(loader_iter):
    if BROKEN and reached:
        raise DataError("cannot read image /data/train/broken.png: truncated file; remove or replace the file")
    return next_batch(loader_iter)


dataloader._BaseDataLoaderIter.__next__ = next_or_fail
run_train()
