"""Logging for runs: console + per-run log file (main rank) and a terminal progress bar (CSV files: common.csv_log)."""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from typing import Optional

import torch

from ..common.signals import write_if_possible

LOGGER_NAME = "localmamba"
logger = logging.getLogger(LOGGER_NAME)


class _BarAwareHandler(logging.StreamHandler):
    """Console handler that clears an active progress bar line before printing a record."""

    def emit(self, record: logging.LogRecord) -> None:
        if ProgressBar.active is not None:
            ProgressBar.active.clear()
        super().emit(record)
        if ProgressBar.active is not None:
            ProgressBar.active.redraw()


class _Formatter(logging.Formatter):
    """``%(asctime)s %(levelname)s %(message)s``, where bytes of a file name that are not UTF-8 (Python keeps them as
    lone surrogates: a Latin-1 class folder from an old archive) are written as ``\\xNN``: a UTF-8 log file or
    console cannot write them as they are."""

    def __init__(self, datefmt: str):
        super().__init__("%(asctime)s %(levelname)s %(message)s", datefmt=datefmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:   # a surrogate that stands for no byte
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def setup_logging(exp_dir: Optional[str], is_main: bool, prefix: str = "log") -> logging.Logger:
    """Console log on every rank (errors only off the main rank); on the main rank also `exp_dir/<prefix>_<time>.txt`
    (`log_` for training, `eval_` for tools/test.py), whose records wait in memory until `start_log_file`: a run
    refused before it may change its folder leaves no log file there."""
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.ERROR)
    console = _BarAwareHandler(sys.stdout)
    console.setFormatter(_Formatter(datefmt="%H:%M:%S"))
    logger.addHandler(console)
    if is_main and exp_dir:
        logger.addHandler(_PendingLogFile(os.path.join(exp_dir, f"{prefix}_{time.strftime('%Y%m%d_%H%M%S')}.txt")))
    return logger


def start_log_file(log: logging.Logger) -> None:
    """Write the records `setup_logging` held back to the log file, and log into it from now on (saying where)."""
    for handler in list(log.handlers):
        if isinstance(handler, _PendingLogFile):
            handler.setTarget(_log_file(handler.path))
            handler.flush()
            log.addHandler(handler.target)
            log.removeHandler(handler)
            log.info(f"Logging to {handler.path}")


class _PendingLogFile(logging.handlers.MemoryHandler):
    """The records meant for the log file `path`, held until `start_log_file` (never written without it)."""

    def __init__(self, path: str):
        super().__init__(capacity=sys.maxsize, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
        self.path = path


def _log_file(path: str) -> logging.FileHandler:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_Formatter(datefmt="%y-%m-%d %H:%M:%S"))
    return handler


class ProgressBar:
    """A one-line `\\r` progress bar on stderr, drawn only when stderr is a terminal."""

    active: Optional["ProgressBar"] = None

    def __init__(self, total: int, prefix: str, enabled: bool = True):
        self.total, self.prefix, self.text, self.done = total, prefix, "", 0
        self.enabled = enabled and sys.stderr.isatty()
        if self.enabled:
            ProgressBar.active = self

    def update(self, done: int, text: str = "") -> None:
        self.done, self.text = done, text
        self.redraw()

    def redraw(self) -> None:
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        bar = '#' * filled + '.' * (width - filled)
        self._write(f"\r{self.prefix} [{bar}] {self.done}/{self.total} {self.text}\033[K")

    def clear(self) -> None:
        self._write("\r\033[K")

    def _write(self, text: str) -> None:
        """Draw on the terminal; one that has hung up (SIGHUP, the run then stopping) ends the bar, not the run."""
        if self.enabled:
            self.enabled = write_if_possible(sys.stderr, text)

    def close(self) -> None:
        self.clear()
        if ProgressBar.active is self:
            ProgressBar.active = None


class StepTimes:
    """Seconds of the steps of a loop, for its ETA: ``val`` the last step's, ``avg`` the mean of the steps after the
    first (which also waited for the loader's workers to start, kernels to build, ``torch.compile`` to compile), the
    first step's alone until another has ended."""

    def __init__(self) -> None:
        self.val = 0.0
        self.steps = 0
        self._later_sum = 0.0

    def update(self, seconds: float) -> None:
        if self.steps:
            self._later_sum += seconds
        self.steps += 1
        self.val = seconds

    @property
    def avg(self) -> float:
        return self._later_sum / (self.steps - 1) if self.steps > 1 else self.val


def format_eta(seconds: float) -> str:
    """h:mm:ss."""
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def peak_memory_mib(device: torch.device | str) -> float:
    """Peak memory in MiB (2**20 bytes): CUDA max allocated on a CUDA device, else the process's peak resident size;
    0 where the platform reports none (Windows)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1024 if sys.platform != "darwin" else peak / 2**20
    except ImportError:  # Windows
        return 0.0
