"""The signals that stop work: SIGINT (Ctrl-C), SIGTERM (Slurm preemption or time limit, torchrun shutdown), SIGUSR1
(Slurm's warning, `--signal=USR1@120`) and SIGHUP (the terminal hung up: an ssh connection lost).

Training (`engine.signals.StopSignals`) turns them into a request to stop after the current step; work with nothing
to save (an evaluation, a det/seg run under mmengine, which saves on its own schedule) lets them raise
`StopSignalReceived` through `interrupt_on_stop_signals`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import Callable, Iterator, NoReturn, Optional, TextIO

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGHUP")
                     if hasattr(signal, name))


def signals_to_catch() -> list[int]:
    """`STOP_SIGNALS`, but a SIGHUP the process was started ignoring (under `nohup`), which stays ignored. (The others
    are caught even when ignored: a shell starts background jobs with SIGINT ignored, and `kill -INT` still means
    stop.)"""
    return [sig for sig in STOP_SIGNALS
            if not (sig == getattr(signal, "SIGHUP", None) and signal.getsignal(sig) is signal.SIG_IGN)]


class StopSignalReceived(KeyboardInterrupt):
    """A stop signal (`signum`) where there is nothing to save: it ends the work at once, as Ctrl-C does (a
    KeyboardInterrupt, so that no ``except Exception`` takes it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


@contextlib.contextmanager
def interrupt_on_stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM, SIGUSR1 and SIGHUP raise `StopSignalReceived` in the main thread (SIGINT raises
    KeyboardInterrupt already), so that the work can say it was cut short; a SIGHUP the process was started ignoring
    stays ignored. A process forked within the block (a data loader worker, which Slurm signals too) ends on them as
    by default, with no traceback. The previous handlers come back after it; outside the main thread nothing changes
    (Python handles signals there only)."""
    owner = os.getpid()

    def stop(signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise StopSignalReceived(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stop) for sig in signals_to_catch() if sig != signal.SIGINT}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def write_if_possible(stream: TextIO, text: str) -> bool:
    """Write `text` to `stream` unless it is gone (a terminal that hung up: the work stops on SIGHUP); whether it
    was written."""
    try:
        stream.write(text)
        stream.flush()
    except OSError:
        return False
    return True


def exit_after_stop(stop: BaseException, hint: Callable[[], str] = str) -> NoReturn:
    """End the process that ``stop`` (Ctrl-C's KeyboardInterrupt, or an exception with the ``signum`` of its signal)
    interrupted: rank 0 (the ``RANK`` variable, read now) says ``interrupted[ by SIGNAME]`` and ``hint()`` (how to
    go on) on stderr; the exit status is 128 + the signal's number, as for a process the signal ended."""
    signum = getattr(stop, "signum", signal.SIGINT)
    if os.environ.get("RANK", "0") == "0":
        by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        write_if_possible(sys.stderr, f"\ninterrupted{by}{hint()}\n")
    sys.exit(128 + signum)
