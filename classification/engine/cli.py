"""Shared start-up of the command-line tools: user errors and interruptions become one line instead of a traceback.

Bad input (config, data, checkpoint, a file or folder that cannot be read or written, a full disk, a kernel environment
variable: ``LOCALMAMBA_BACKEND``, ``LOCALMAMBA_CPU_ISA``, ``LOCALMAMBA_DIRECTION_MODULES``; a C kernel that does not
build under ``LOCALMAMBA_CPU_KERNEL=require``, whose message holds the compiler's output) and a training loss that is
no longer finite print `error: <message>` and exit with status 2. An interrupted training run (Ctrl-C, SIGTERM, SIGUSR1,
SIGHUP) prints one line with the command that continues it and exits with the shell's status for the signal, 128 + its
number (130 for SIGINT, 143 for SIGTERM, 138 for SIGUSR1, 129 for SIGHUP). In a distributed run, a rank whose collective
fails because another rank stopped says so in one line (status 1), so that the other rank's error is not buried under
its traceback (under NCCL, whose texts are the same for a hung rank or a network fault, the line says so too).
`--debug` or `LOCALMAMBA_DEBUG=1` shows the traceback instead.
"""
from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
import threading
from typing import Callable, Optional, Sequence

from localmamba_kernel_runtime.settings import SETTING_ERRORS

from ..common.checkpoint_io import CheckpointError
from ..common.error_text import describe_error
from ..common.signals import exit_after_stop
from ..data import DataError
from ..models.scan_maps import DirectionModuleError
from .config import ConfigError
from .flags import build_parser

DEBUG_ENV = "LOCALMAMBA_DEBUG"


class TrainingDiverged(RuntimeError):
    """The training loss of a step is not finite (inf or NaN): the run stopped before that step's update."""


USER_ERRORS = (ConfigError, DataError, CheckpointError, DirectionModuleError, OSError, TrainingDiverged,
               *SETTING_ERRORS)


class RunInterrupted(Exception):
    """A training run stopped by signal `signum`; `resume_path` is the checkpoint to continue from (None before the
    first)."""

    def __init__(self, resume_path: Optional[str], signum: int = signal.SIGINT):
        super().__init__(resume_path)
        self.resume_path, self.signum = resume_path, int(signum)


# What one command does to a run folder: the command that continues an interrupted run leaves them out.
FOLDER_ACTION_FLAGS = ("--resume", "--overwrite", "--rewind", "--branch")


def _long_flag(word: str, flags: Sequence[str]) -> Optional[str]:
    """The long flag among `flags` that the command-line `word` names as argparse reads it: in full, as an unambiguous
    prefix (`--overw`), either with `=VALUE`; None for any other word."""
    name = word.split("=", 1)[0]
    if not name.startswith("--") or name == "--":
        return None
    if name in flags:
        return name
    matches = [flag for flag in flags if flag.startswith(name)]
    return matches[0] if len(matches) == 1 else None


def resume_command(argv: Sequence[str], resume_path: str) -> str:
    """The command line `argv` (script first) with any `--resume`/`--overwrite`/`--rewind`/`--branch`, in full or
    abbreviated as argparse takes them, replaced by `--resume resume_path` (the run's own last.pth.tar, which
    continues it in place)."""
    flags = [flag for flag in build_parser()._option_string_actions if flag.startswith("--")]
    kept, skip = [], False
    for item in argv[1:]:
        flag = _long_flag(item, flags)
        if skip:
            skip = False
        elif flag == "--resume" and "=" not in item:
            skip = True
        elif flag not in FOLDER_ACTION_FLAGS:
            kept.append(item)
    return shlex.join(["python", argv[0], *kept, "--resume", resume_path])


def _debugging(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


GLOO_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
# NCCL's (torch's DistBackendError): ncclRemoteError's two texts, the abort of the communicator after it and the
# watchdog's timeouts; a network fault between the nodes gives the same texts as a peer that exited
NCCL_PEER_LOST = ("remote process exited or there was a network error", "ncclRemoteError",
                  "NCCL communicator was aborted", "Watchdog caught collective operation timeout",
                  "timed out in blocking wait")


def _lost_a_peer(err: RuntimeError) -> Optional[str]:
    """How another rank was lost when a collective of a distributed run failed with `err`: by gloo's texts, it
    stopped first; by NCCL's, it stopped first, hangs (the watchdog's timeouts) or the network cut it off. None for
    another error or a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if any(text in str(err) for text in NCCL_PEER_LOST):   # checked first: NCCL's detail may quote a socket's error
        return "which stopped first, hangs or was cut off by a network fault (NCCL does not tell which)"
    if any(text in str(err) for text in GLOO_PEER_LOST):
        return "which stopped first"
    return None


def raise_on_ctrl_c() -> None:
    """A tool may let Ctrl-C stop it quietly while it imports (`SIG_DFL`); from here on Ctrl-C raises
    KeyboardInterrupt again (a SIGINT that a parent shell ignores stays ignored)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_DFL:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_cli(main: Callable[[], object]) -> None:
    """Call `main`; bad input exits with `error: <message>` (status 2), an interruption with the resume command
    (128 + the signal's number). Ctrl-C raises KeyboardInterrupt again (:func:`raise_on_ctrl_c`)."""
    raise_on_ctrl_c()
    if _debugging(sys.argv):
        main()
        return
    try:
        main()
    except USER_ERRORS as err:
        sys.stderr.write(f"error: {describe_error(err)}\n")
        sys.exit(2)
    except RuntimeError as err:
        lost = _lost_a_peer(err)
        if lost is None:
            raise
        rank = os.environ.get("RANK", "?")
        sys.stderr.write(f"error: rank {rank} lost another rank, {lost} (its error, if it printed one, is above or "
                         f"below; the launcher's report names its exit status): {str(err).strip().splitlines()[0]}\n")
        sys.exit(1)
    except (KeyboardInterrupt, RunInterrupted) as err:  # RunInterrupted, StopSignalReceived: their signum
        exit_after_stop(err, functools.partial(_how_to_continue, err))  # RANK read then: under --slurm, main() sets it


def _how_to_continue(stop: BaseException) -> str:
    """What to add to the line of an interrupted run: the command that continues it from the checkpoint the stop
    wrote (`RunInterrupted`), or that there is none; nothing for other work."""
    if not isinstance(stop, RunInterrupted):
        return ""
    if stop.resume_path and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"; continue with your launch command (dist_train.sh, srun) plus --resume {stop.resume_path}"
    if stop.resume_path:
        return f"; continue with: {resume_command(sys.argv, stop.resume_path)}"
    return "; no checkpoint was written yet, nothing to resume"
