"""torchrun as our launchers run it (``python tools/torchrun.py`` or ``python -m classification.engine.torchrun``
take torchrun's arguments).

It is ``torch.distributed.run`` unchanged, except for how a launch that failed ends: when a worker fails, or torchrun
itself is stopped by a signal, it prints one line and exits with the worker's status (128 + N for signal N), where
torchrun prints a ChildFailedError or SignalException traceback and exits with 1. Each worker prints its own error
above that line. On torch before 2.10 it also passes on the signals ``PET_SIGNALS_TO_HANDLE`` names, as 2.10's
torchrun does (:func:`pass_on_the_named_signals`). ``--master_port=auto`` takes a free port of this machine (a
one-node launch), and a master port in use ends in one line naming it, where torchrun printed a DistNetworkError
traceback.

``tools/torchrun.py`` imports this module without running ``classification/__init__.py`` (no models in the launcher
process): at module level it imports the standard library and ``common.signals`` only, torch in the functions.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Any, Mapping, Optional, Sequence

from ..common.signals import STOP_SIGNALS, write_if_possible

SHOWN_RANKS = 4


def exit_status(exitcode: int) -> int:
    """A worker's exit code as a shell reports it: a process killed by signal N (exitcode -N) as 128 + N."""
    return 128 - exitcode if exitcode < 0 else exitcode


def how_it_ended(exitcode: int, verb: str = "ended") -> str:
    """A process's end from its exit code (-N: killed by signal N, as subprocess and multiprocessing report it):
    `exit status 1`, `ended by SIGKILL` (`verb` says how), `ended by signal 99` for a number with no name."""
    if exitcode >= 0:
        return f"exit status {exitcode}"
    try:
        return f"{verb} by {signal.Signals(-exitcode).name}"
    except ValueError:
        return f"{verb} by signal {-exitcode}"


STOP_STATUSES = {128 + int(sig) for sig in STOP_SIGNALS}


def stopped_cleanly(failures: Mapping[int, Any]) -> bool:
    """Whether every failed worker ended with a stop signal's status (130, 143, 138, 129: `STOP_SIGNALS`), as
    tools/train.py exits once it has stopped and saved on SIGINT, SIGTERM, SIGUSR1 or SIGHUP, or was ended by one of
    those signals."""
    return all(exit_status(failure.exitcode) in STOP_STATUSES for failure in failures.values())


def failure_line(entry: str, failures: Mapping[int, Any], first_rank: int) -> str:
    """One line naming the failed ranks of ``entry`` and how each ended, the first failure first; not an error when
    every one stopped on a signal (`stopped_cleanly`).

    ``failures``: global rank -> torch's ProcessFailure (its ``exitcode``), as in ``ChildFailedError.failures``."""
    ranks = [first_rank] + sorted(rank for rank in failures if rank != first_rank)
    shown = [f"rank {rank}{' (first)' if rank == first_rank and len(ranks) > 1 else ''} "
             f"{how_it_ended(failures[rank].exitcode)}" for rank in ranks[:SHOWN_RANKS]]
    more = f" and {len(ranks) - SHOWN_RANKS} more" if len(ranks) > SHOWN_RANKS else ""
    plural = "es" if len(ranks) > 1 else ""
    if stopped_cleanly(failures):
        return (f"{entry} stopped on a signal in {len(ranks)} process{plural}: {', '.join(shown)}{more}; the "
                f"workers' lines above say where they stopped")
    return (f"error: {entry} failed in {len(ranks)} process{plural}: {', '.join(shown)}{more}; the workers' own "
            f"errors are above")


AUTO_PORT = "--master_port=auto"


def free_port() -> int:
    """A TCP port no process on this machine listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_a_port(argv: Sequence[str]) -> list[str]:
    """``argv`` with its first ``--master_port=auto`` (torchrun's, before the entry script's arguments) replaced by a
    free port."""
    argv = list(argv)
    if AUTO_PORT in argv:
        argv[argv.index(AUTO_PORT)] = f"--master_port={free_port()}"
    return argv


SIGNALS_TO_HANDLE = "PET_SIGNALS_TO_HANDLE"


def pass_on_the_named_signals() -> list[str]:
    """Make torchrun pass on the signals that ``PET_SIGNALS_TO_HANDLE`` names (comma-separated, e.g. tools/launch.sh's
    ``SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1``) on a torch that does not read it; the names of the signals handed over.

    torch 2.10 added that setting (``--signals_to_handle``). Before it, torchrun passed on SIGINT, SIGTERM, SIGHUP
    and SIGQUIT only and died on SIGUSR1 (Slurm's warning before the time limit), its workers left to notice that
    their launcher was gone. Here torchrun's own handler takes the other named signals too: it raises
    ``SignalException``, on which torchrun sends that signal to its workers and waits for them, as 2.10 does."""
    import dataclasses

    from torch.distributed.elastic.multiprocessing.api import _terminate_process_handler
    from torch.distributed.launcher.api import LaunchConfig

    if ("signals_to_handle" in {field.name for field in dataclasses.fields(LaunchConfig)}   # torch >= 2.10
            or threading.current_thread() is not threading.main_thread()):     # where no handler can be set
        return []
    handed_over = []
    for name in filter(None, (part.strip() for part in os.environ.get(SIGNALS_TO_HANDLE, "").split(","))):
        sig = getattr(signal, name, None)
        if isinstance(sig, signal.Signals) and sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, _terminate_process_handler)
            handed_over.append(name)
    return handed_over


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run torchrun with ``argv`` (default: this process's arguments); the exit status of the launch."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    argv = with_a_port(sys.argv[1:] if argv is None else argv)
    pass_on_the_named_signals()
    try:
        torchrun_main(argv)
    except ChildFailedError as err:
        first_rank, first = err.get_first_failure()
        write_if_possible(sys.stderr, failure_line(err.name, err.failures, first_rank) + "\n")
        return exit_status(first.exitcode)
    except RuntimeError as err:   # torch 2.11 raises its subclass DistNetworkError, torch 2.4.1 a RuntimeError
        if "EADDRINUSE" not in str(err) and "address already in use" not in str(err):
            raise
        port = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--master_port=")), "29500")
        variable = "PORT" if os.environ.get("PORT") == port else "MASTER_PORT"  # det/seg's dist_*.sh take PORT first
        print(f"error: the master port {port} is in use (another run on this machine?): set {variable} to a free "
              f"port, or leave it unset on one node to take one", file=sys.stderr)
        return 1
    except SignalException as err:
        write_if_possible(sys.stderr, f"torchrun: stopped by {err.sigval.name}, which it passed on to the workers\n")
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
