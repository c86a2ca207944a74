"""Stopping a training run cleanly on SIGINT (Ctrl-C), SIGTERM (Slurm preemption, time limit, torchrun shutdown),
SIGUSR1 (Slurm's warning, `--signal=USR1@120`) or SIGHUP (its terminal hung up: an ssh connection lost).

While a `StopSignals` is active the first such signal only records its number; the training loop asks
`agreed_with()` once it holds the next batch, before that batch's step, and every rank stops before the first step
where any rank has been signalled or could not read its batch (one all-reduce per step, only when distributed); the
validation asks `agreed()` after each batch. After a SIGINT, a second SIGINT or a SIGTERM raises KeyboardInterrupt at
once: a second Ctrl-C, which torchrun passes on to its workers as SIGTERM. Other second signals (Slurm's SIGTERM at the
time limit after its SIGUSR1 warning) let the run finish its stop.

A torchrun worker also stops, as on SIGHUP, when its launcher is gone (torchrun killed with SIGKILL, which it cannot
pass on): the worker, whose parent it was, is then adopted by another process, which the check at every step sees.
The workers would otherwise train on unseen, holding the run folder.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Optional

import torch
import torch.distributed as dist

from ..common.signals import signals_to_catch
from .distributed import all_reduce

# torchrun sets it in the environment of its workers
TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"


class StopSignals:
    """Context manager that turns the stop signals into a request, restoring the previous handlers on exit."""

    def __init__(self, device: torch.device):
        self.device = device
        self.signum: Optional[int] = None  # the first stop signal this process received
        self._previous: dict[int, object] = {}
        self._launcher = os.getppid() if os.environ.get(TORCHRUN_ENV) else None  # torchrun's pid, in its workers

    def __enter__(self) -> StopSignals:
        """Catch the stop signals; a SIGHUP the process was started ignoring (under `nohup`) stays ignored. (The
        others are caught even so: a shell starts background jobs with SIGINT ignored, and `kill -INT` still means
        stop.)"""
        if threading.current_thread() is threading.main_thread():  # Python handles signals in the main thread only
            self._previous = {sig: signal.signal(sig, self._receive) for sig in signals_to_catch()}
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _receive(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is None:
            self.signum = signum
        elif self.signum == signal.SIGINT and signum in (signal.SIGINT, signal.SIGTERM):
            raise KeyboardInterrupt

    def agreed(self) -> Optional[int]:
        """The signal all ranks stop for (the highest number any rank received), or None to go on.

        Every rank must call it at the same points of the loop."""
        return self.agreed_with(False)[0]

    def agreed_with(self, failed: bool) -> tuple[Optional[int], bool]:
        """`agreed()`, and whether any rank `failed` (could not read its next batch), from the same all-reduce."""
        self._check_launcher()
        if not dist.is_initialized():
            return self.signum, failed
        signum, any_failed = map(int, all_reduce([self.signum or 0, int(failed)], self.device, "max"))
        if signum and self.signum is None:
            self._check_launcher()  # another rank saw the launcher gone first: say so here too (rank 0 logs)
        return signum or None, bool(any_failed)

    def _check_launcher(self) -> None:
        """Record a stop (SIGHUP) when the torchrun that started this worker is no longer its parent."""
        if self.signum is None and self._launcher is not None and os.getppid() != self._launcher:
            self.signum = signal.SIGHUP
            logging.getLogger("localmamba").warning(
                f"the launcher of this worker (torchrun, pid {self._launcher}) is gone: stopping as on SIGHUP")
