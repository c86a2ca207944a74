"""Run tools/train.py and send a signal at a chosen moment of it (the interruption tests).

Usage: SIGNAL_AT="NAME EVENT N [COUNT]" python signal_at.py [train.py flags], or signal_at.py as the ENTRY of
tools/dist_run.sh. Signal NAME (e.g. SIGTERM) is sent COUNT times (default 1) right after EVENT: `step` (the
optimizer step that brings the schedule to iteration N, counted over the run), `test` (this rank's N-th validation
batch of the run, counted from 1) or `metrics` (epoch N's metrics.csv row, during the epoch end's writes).
SIGNAL_RANK (default 0) is the only rank that sends it; SIGNAL_TO is `self` (default), `group`: this process group,
loader workers included, as a terminal, torchrun or Slurm signal a run (the process must then lead its group: start it
with start_new_session=True), or `parent`: the process that started this one (under tools/dist_run.sh, torchrun).
"""
import os
import signal
import sys

from fault_harness import run_train

import classification.engine.evaluate as evaluate
from classification.common.csv_log import CsvLog
from classification.engine.scheduler import WarmupScheduler

NAME, EVENT, N, *COUNT = os.environ["SIGNAL_AT"].split()
SIGNUM, N, COUNT = getattr(signal, NAME), int(N), int(COUNT[0]) if COUNT else 1
TO = os.environ.get("SIGNAL_TO", "self")
TO_GROUP = TO == "group"
SENDS = os.environ.get("RANK", "0") == os.environ.get("SIGNAL_RANK", "0")
if TO_GROUP and os.getpgid(0) != os.getpid():
    sys.exit("signal_at.py: SIGNAL_TO=group needs a process that leads its group (start_new_session=True)")


def send() -> None:
    for _ in range(COUNT):
        if TO_GROUP:
            os.killpg(os.getpgid(0), SIGNUM)
        elif TO == "parent":
            os.kill(os.getppid(), SIGNUM)
        else:
            os.kill(os.getpid(), SIGNUM)


def after(function, matches):
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        if SENDS and matches(*args):
            send()
        return result
    return wrapped


WarmupScheduler.step = after(WarmupScheduler.step, lambda scheduler: EVENT == "step" and scheduler.t == N)
validation_batches = 0


def nth_validation_batch(*args) -> bool:
    global validation_batches
    validation_batches += 1
    return EVENT == "test" and validation_batches == N


evaluate.accuracy = after(evaluate.accuracy, nth_validation_batch)
CsvLog.append = after(CsvLog.append, lambda log, row: EVENT == "metrics" and log.path.endswith("metrics.csv")
                      and int(row[0]) == N)

run_train()
