"""The folder of a run: where it goes, when an existing one is refused, and what `--overwrite` deletes.

A fresh run writes into `<output>/<experiment>/`; a folder that already holds a run (a checkpoint, or a CSV file with
rows past epoch 0) is refused unless `--overwrite` is given, which never deletes the run's own inputs. `--resume` of a
training checkpoint continues in that checkpoint's own folder, whatever `--output` / `--experiment` say; `--resume
auto` takes the folder's last.pth.tar when there is one (and does nothing when that run has finished its epochs) and
starts the run when there is none.

A checkpoint behind its folder's last.pth.tar (an earlier epoch, best.pth.tar) would rewind that run, deleting what
it did after the checkpoint: that needs `--rewind`. Every checkpoint names its run (`run_id`, kept by `--resume` and
`--rewind`, new for a fresh run and a `--branch`); one of another run than the folder's last.pth.tar (a copy brought
into the folder) is refused there. `--branch` instead continues from any training checkpoint in
`<output>/<experiment>` (a folder without a run; that of a branch of the same run stopped before its first
checkpoint holds none), taking the CSV history up to the checkpoint and leaving the original run as it is.
Nothing in any folder is deleted before the new run's inputs have been checked.
"""
from __future__ import annotations

import csv
import fnmatch
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..common.checkpoint_io import TMP_PREFIX, CheckpointError, atomic_write_bytes, load_checkpoint
from ..common.csv_log import LR_CSV, RUN_CSV_FILES
from .checkpoint import BEST, EPOCH_FILE, LAST, checkpoint_folder
from .config import ConfigError

# What a training run writes; `--overwrite` deletes exactly these.
# the args.yaml of an original code's run, kept when a run of ours resumes it (resume.keep_original_args)
ORIGINAL_ARGS = "args_original.yaml"
RUN_FILE_PATTERNS = ("*.pth.tar", *RUN_CSV_FILES, "args.yaml", ORIGINAL_ARGS, "log_*.txt", "eval_*.txt")


def is_training_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    """True for our training checkpoints (they carry `epoch` and `model`), False for released weights."""
    return "model" in ckpt and "epoch" in ckpt


def next_epoch(ckpt: Mapping[str, Any]) -> int:
    """The epoch a training checkpoint continues with: the one after `epoch`, or `epoch` itself when `step` marks a
    stop in its middle."""
    return int(ckpt["epoch"]) + (1 if ckpt.get("step") is None else 0)


def progress_of(ckpt: Mapping[str, Any]) -> tuple[int, int]:
    """How far a training checkpoint's run got, as (the epoch it continues with, batches done in that epoch)."""
    return next_epoch(ckpt), int(ckpt.get("step") or 0)


def describe_progress(ckpt: Mapping[str, Any]) -> str:
    """`epoch N` for an epoch-end checkpoint, `epoch N, step S` for one written in the middle of epoch N."""
    step = ckpt.get("step")
    return f"epoch {ckpt['epoch']}" + (f", step {step}" if step is not None else "")


def _folder_last(path: str, trust: bool) -> tuple[Optional[Mapping[str, Any]], Optional[str]]:
    """The training checkpoint `last.pth.tar` beside the checkpoint `path` (None when there is none, or it is `path`
    itself), and why it cannot be read (None when it can)."""
    last = os.path.join(checkpoint_folder(path), LAST)
    if not os.path.isfile(last) or os.path.samefile(last, path):
        return None, None
    try:
        saved = load_checkpoint(last, trust=trust, mmap=True)
    except CheckpointError as err:
        return None, f"its {LAST} cannot be read ({err})"
    return (saved if is_training_checkpoint(saved) else None), None


def later_progress(ckpt: Mapping[str, Any], last: Optional[Mapping[str, Any]]) -> Optional[str]:
    """What the run in the folder of the training checkpoint `ckpt` did after it, from the folder's `last.pth.tar`
    (`last`, None when there is none): a description when that is further on, else None."""
    if last is None or progress_of(last) <= progress_of(ckpt):
        return None
    return f"its {LAST} has gone on to {describe_progress(last)}"


def check_same_run(path: str, ckpt: Mapping[str, Any], last: Optional[Mapping[str, Any]]) -> None:
    """Refuse to continue the checkpoint `path` (read as `ckpt`) in its folder when the folder's `last.pth.tar`
    (`last`) is another run's (another `run_id`): the two runs' checkpoints and CSV rows would mix. Checkpoints
    written before run ids were recorded are not compared."""
    mine, theirs = ckpt.get("run_id"), (last or {}).get("run_id")
    if mine and theirs and mine != theirs:
        folder = checkpoint_folder(path)
        raise ConfigError(f"{path} is a checkpoint of another run than the one in {folder} (its {LAST} has another "
                          f"run id): continuing it there would mix the two runs' checkpoints and CSV rows; give "
                          f"--branch --experiment NEW to continue it in a new folder")


@dataclass
class RunFolder:
    """Where a run writes: `path`; for `--branch`, the folder of the run it continues (`branch_of`, whose CSV
    history it copies); for `--rewind`, what the rewound run did after the checkpoint (`rewinds`)."""

    path: str
    branch_of: Optional[str] = None
    rewinds: Optional[str] = None


def choose_run_folder(cfg: Any, resume_ckpt: Optional[Mapping[str, Any]]) -> RunFolder:
    """The run's folder: `<output>/<experiment>` for a fresh run or a `--branch`, else the resumed training
    checkpoint's own, where one behind the folder's last.pth.tar needs `--rewind` (see the module doc)."""
    named = os.path.join(cfg.output, cfg.experiment)
    if resume_ckpt is None or not is_training_checkpoint(resume_ckpt):
        if cfg.branch or cfg.rewind:
            raise ConfigError(f"--{'branch' if cfg.branch else 'rewind'} continues a run from one of its training "
                              f"checkpoints; {cfg.resume or '--resume'} is released weights (no training state)")
        return RunFolder(named)
    own = checkpoint_folder(cfg.resume)
    if cfg.branch:
        if os.path.realpath(named) == own or branch_would_overwrite(named, own):
            raise ConfigError(f"--branch continues {cfg.resume} in a new folder, and {named} "
                              f"{'is its own' if os.path.realpath(named) == own else 'holds a run'}: give "
                              f"--experiment NEW")
        return RunFolder(named, branch_of=own)
    last, unreadable = _folder_last(cfg.resume, cfg.trust_checkpoint)
    check_same_run(cfg.resume, resume_ckpt, last)
    later = unreadable or later_progress(resume_ckpt, last)
    if later is None:
        return RunFolder(own)
    if not cfg.rewind:
        raise ConfigError(f"{cfg.resume} ({describe_progress(resume_ckpt)}) is behind the run in {own}: {later}. "
                          f"Continuing from it there would delete what came after: give --branch --experiment NEW "
                          f"to continue from it in a new folder (the run stays as it is), or --rewind to continue "
                          f"from it in {own}, deleting the later checkpoints and CSV rows")
    return RunFolder(own, rewinds=later)


def check_folder_unchanged(cfg: Any, resume_ckpt: Mapping[str, Any], folder: RunFolder) -> None:
    """Check again, under the run folder's lock, what `choose_run_folder` checked before it for a run that continues
    the training checkpoint `resume_ckpt` in `folder`: a live run there may have gone on, and ended, in between. A
    --resume of the folder's last.pth.tar that no longer holds the checkpoint read is refused; otherwise
    `choose_run_folder`'s refusals (a checkpoint now behind the folder's last.pth.tar without --rewind, another run's
    last.pth.tar, a --branch into a folder that now holds a run) are raised as they are, and a --rewind that would
    now delete more is refused."""
    last = os.path.join(folder.path, LAST)
    if os.path.isfile(last) and os.path.isfile(cfg.resume) and os.path.samefile(last, cfg.resume):
        try:
            now = load_checkpoint(last, trust=cfg.trust_checkpoint, mmap=True)
        except CheckpointError as err:  # a ConfigError, which claim_run_folder shares with every rank
            raise ConfigError(f"{cfg.resume} changed while this run started and cannot be read now: {err}") from None
        if progress_of(now) != progress_of(resume_ckpt) or now.get("run_id") != resume_ckpt.get("run_id"):
            raise ConfigError(f"{cfg.resume} changed while this run started: the run in {folder.path} went on to "
                              f"{describe_progress(now)} after this run read it at {describe_progress(resume_ckpt)}; "
                              f"give the command again to continue from where that run stopped")
        return
    chosen = choose_run_folder(cfg, resume_ckpt)
    if chosen != folder:
        raise ConfigError(f"{folder.path}: the run there went on while this run started ({chosen.rewinds}); give the "
                          f"command again to --rewind it to {cfg.resume}")


def start_branch(folder: RunFolder) -> list[str]:
    """Copy the CSV files of the run a `--branch` continues into the branch's folder (they are then rewound to the
    resumed checkpoint like any resumed run's), each whole or not at all; returns their names."""
    if folder.branch_of is None:
        return []
    copied = []
    for name in RUN_CSV_FILES:
        src = os.path.join(folder.branch_of, name)
        if os.path.isfile(src):
            with open(src, "rb") as f:
                atomic_write_bytes(os.path.join(folder.path, name), f.read())
            copied.append(name)
    return copied


def _has_rows(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read().count(b"\n") > 1


def previous_run_files(folder: str) -> list[str]:
    """Names of the files in `folder` that show an earlier run: checkpoints and CSV files with rows."""
    if not os.path.isdir(folder):
        return []
    names = sorted(os.listdir(folder))
    found = [n for n in names if n.endswith(".pth.tar") and not n.startswith(TMP_PREFIX)]
    found += [n for n in names if n in RUN_CSV_FILES and _has_rows(os.path.join(folder, n))]
    return found


def _csv_rows(path: str) -> list[list[str]]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.reader(f))


def branch_would_overwrite(folder: str, source: str) -> list[str]:
    """Names of the files in `folder` that show a run a `--branch` of the run in `source` would overwrite
    (`previous_run_files`); none when `folder` holds no checkpoint and the rows of its CSV files but lr.csv begin
    those of `source`'s: a branch of that run stopped before its first checkpoint (its lr.csv rows of that epoch are of
    no checkpoint), whose history the branch copies again."""
    found = previous_run_files(folder)
    if any(name.endswith(".pth.tar") for name in found):
        return found
    for name in found:
        mine, theirs = _csv_rows(os.path.join(folder, name)), _csv_rows(os.path.join(source, name))
        if name != LR_CSV and mine != theirs[:len(mine)]:
            return found
    return []


def csv_files_past_first_epoch(folder: str) -> list[str]:
    """Names of the CSV files in `folder` with a row of an epoch after 0: only a run that committed an epoch (wrote
    `last.pth.tar`) writes them."""
    found = []
    for name in RUN_CSV_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, newline="") as f:
                if any(row and row[0].isdigit() and int(row[0]) > 0 for row in csv.reader(f)):
                    found.append(name)
    return found


def committed_run_files(folder: str) -> tuple[list[str], list[str]]:
    """What shows that `folder` holds a run a fresh start would erase: its checkpoints, and its CSV files with rows
    past epoch 0. CSV rows of a first epoch that never reached a checkpoint are no run (nothing continues them)."""
    checkpoints = [name for name in previous_run_files(folder) if name.endswith(".pth.tar")]
    return checkpoints, csv_files_past_first_epoch(folder)


def check_run_folder(folder: str, overwrite: bool) -> None:
    """Refuse to start a fresh run in a folder that holds another run (`committed_run_files`), unless `overwrite`."""
    checkpoints, csv_files = committed_run_files(folder)
    found = checkpoints + csv_files
    if found and not overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        last = os.path.join(folder, LAST)
        resume = f"continue it with --resume {last}, " if os.path.isfile(last) else ""
        raise ConfigError(f"{folder} already holds a run ({shown}); {resume}start afresh there with --overwrite, "
                          f"or choose another --experiment")


def make_writable(folder: str, named_by: str = "--output", elsewhere: str = "") -> None:
    """Create `folder` (and parents); refuse one that cannot be created or written, naming it and what the command
    named it by (`named_by`: `--output`, or `--resume CHECKPOINT` for a run continued in its checkpoint's folder), with
    `elsewhere`, what to give instead, when there is such advice."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{named_by}: cannot create the run folder {folder}: {err.strerror or err}") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        advice = f"; {elsewhere}" if elsewhere else ""
        raise ConfigError(f"{named_by}: the run folder {folder} is not writable{advice}")


def _run_file_names(folder: str) -> list[str]:
    """Names of the files in `folder` that `--overwrite` deletes (`RUN_FILE_PATTERNS`)."""
    return [name for name in sorted(os.listdir(folder)) if any(fnmatch.fnmatch(name, p) for p in RUN_FILE_PATTERNS)]


def _entry_and_target(path: str) -> set[str]:
    """Where `path` is: its folder entry (the folder resolved through links, the name kept: a link itself) and, for
    a link, the file it leads to."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    return {os.path.join(folder, os.path.basename(path)), os.path.realpath(path)}


def replaced_run_file(path: str, folder: str) -> Optional[str]:
    """The name of the file that `path` is (as a folder entry, or the file a link leads to) among those the run in
    `folder` replaces or deletes as it goes: its last.pth.tar, best.pth.tar, checkpoint-<epoch>.pth.tar and the
    temporary files of its writes; None when it is none of them (another folder, or a file the run never touches)."""
    own = os.path.realpath(folder)
    for place in sorted(_entry_and_target(path)):
        name = os.path.basename(place)
        if os.path.dirname(place) == own and (name in (LAST, BEST) or EPOCH_FILE.match(name)
                                              or name.startswith(TMP_PREFIX)):
            return name
    return None


def check_overwrite_spares(folder: str, inputs: Mapping[str, Optional[str]]) -> None:
    """Refuse `--overwrite` of `folder` when it would delete one of the run's inputs (`{flag: path}`, e.g. the
    --finetune weights kept in the folder of the run they came from, or a link to them there or elsewhere)."""
    if not os.path.isdir(folder):
        return
    doomed = {os.path.join(os.path.realpath(folder), name) for name in _run_file_names(folder)}
    for flag, path in inputs.items():
        if path and _entry_and_target(path) & doomed:
            raise ConfigError(f"--overwrite would delete {flag} {path}, which lies in the run folder {folder}: move "
                              f"it out of the folder first, or choose another --experiment")


def delete_previous_run(folder: str) -> list[str]:
    """Delete what an earlier run wrote into `folder` (`RUN_FILE_PATTERNS`); returns the names."""
    removed = _run_file_names(folder)
    for name in removed:
        os.remove(os.path.join(folder, name))
    return removed


def resolve_auto_resume(cfg: Any) -> Optional[str]:
    """`--resume auto` (a job that runs the same command at every start): `cfg.resume` becomes the run folder's
    last.pth.tar when there is one, else "" (a fresh run). Without last.pth.tar, a folder with checkpoints or with CSV
    rows past epoch 0 (an earlier run's, which a fresh start would erase) is refused.
    Returns the line to log, or None without `auto`."""
    if cfg.resume != "auto":
        return None
    folder = os.path.join(cfg.output, cfg.experiment)
    last = os.path.join(folder, LAST)
    if os.path.isfile(last):
        cfg.resume = last
        return f"--resume auto: continuing {last}"
    checkpoints, csv_files = committed_run_files(folder)
    found = checkpoints + [f"{name} (rows past epoch 0)" for name in csv_files]
    if found:
        raise ConfigError(f"--resume auto: {folder} holds {', '.join(found)} but no {LAST}; resume a checkpoint by "
                          f"its path, or start afresh with --overwrite in place of --resume auto")
    cfg.resume = ""
    return f"--resume auto: no {LAST} in {folder}, starting the run"


def finished_run(cfg: Any, ckpt: Optional[Mapping[str, Any]]) -> Optional[str]:
    """For `--resume auto` (resolved to `cfg.resume`, read as `ckpt`): the line to print when that run has finished
    its `--epochs` (a requeued job started after the end: nothing to do, not an error), else None."""
    if ckpt is None or not is_training_checkpoint(ckpt) or ckpt.get("step") is not None:
        return None
    if next_epoch(ckpt) < cfg.epochs:
        return None
    past = f", past epoch {cfg.epochs - 1}" if ckpt["epoch"] > cfg.epochs - 1 else ""
    return (f"--resume auto: {cfg.resume} has finished epoch {ckpt['epoch']}{past}, the last of --epochs "
            f"{cfg.epochs} (epochs count from 0, as the log does): nothing left to train")
