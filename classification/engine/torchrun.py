"""torchrun as our launchers run it (``python -m classification.engine.torchrun`` takes torchrun's arguments).

It is ``torch.distributed.run`` unchanged, except for how a launch that failed ends: when a worker fails, or torchrun
itself is stopped by a signal, it prints one line and exits with the worker's status (128 + N for signal N), where
torchrun prints a ChildFailedError or SignalException traceback and exits with 1. Each worker prints its own error
above that line.
"""
from __future__ import annotations

import signal
import sys
from typing import Any, Mapping, Optional, Sequence

SHOWN_RANKS = 4


def exit_status(exitcode: int) -> int:
    """A worker's exit code as a shell reports it: a process killed by signal N (exitcode -N) as 128 + N."""
    return 128 - exitcode if exitcode < 0 else exitcode


def _how_it_ended(exitcode: int) -> str:
    if exitcode >= 0:
        return f"exit status {exitcode}"
    try:
        return f"ended by {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"ended by signal {-exitcode}"


def failure_line(entry: str, failures: Mapping[int, Any], first_rank: int) -> str:
    """One line naming the failed ranks of ``entry`` and how each ended, the first failure first.

    ``failures``: global rank -> torch's ProcessFailure (its ``exitcode``), as in ``ChildFailedError.failures``."""
    ranks = [first_rank] + sorted(rank for rank in failures if rank != first_rank)
    shown = [f"rank {rank}{' (first)' if rank == first_rank and len(ranks) > 1 else ''} "
             f"{_how_it_ended(failures[rank].exitcode)}" for rank in ranks[:SHOWN_RANKS]]
    more = f" and {len(ranks) - SHOWN_RANKS} more" if len(ranks) > SHOWN_RANKS else ""
    plural = "es" if len(ranks) > 1 else ""
    return (f"error: {entry} failed in {len(ranks)} process{plural}: {', '.join(shown)}{more}; the workers' own "
            f"errors are above")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run torchrun with ``argv`` (default: this process's arguments); the exit status of the launch."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(list(argv) if argv is not None else None)
    except ChildFailedError as err:
        first_rank, first = err.get_first_failure()
        print(failure_line(err.name, err.failures, first_rank), file=sys.stderr)
        return exit_status(first.exitcode)
    except SignalException as err:
        print(f"torchrun: stopped by {err.sigval.name}, which it passed on to the workers", file=sys.stderr)
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
