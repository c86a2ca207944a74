"""What `--resume` takes from a training checkpoint besides the weights, and what it checks first.

The flags of the new command win (see `trainer`'s module doc): the optimizer keeps the checkpoint's state (moments)
under this run's hyperparameters, re-indexed when the parameters are grouped otherwise; another `--opt` starts its
state afresh. A run stopped in the middle of an epoch continues only with the same processes, batch size and
--grad-accum-steps, and finishes that epoch under the --seed it began with (a new one takes effect from the next
epoch). Every changed flag is logged, and so are the changes whose effect is not obvious: another training
set size in the middle of an epoch, the EMA switched on or off, a --finetune that a continued run does not read.
A checkpoint of the original code (no config, kept list or RNG states) continues too: its optimizer kind and EMA are
read from its state, its folder's checkpoint files ranked by its metrics.csv, its args.yaml kept.
"""
from __future__ import annotations

import logging
import os
import socket
from argparse import Namespace
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..common.checkpoint_io import CheckpointError, atomic_copy
from ..common.csv_log import METRICS_CSV, epoch_scores
from ..data import DataError
from .checkpoint import CheckpointManager, run_config_beside
from .config import ConfigError, config_dict
from .distributed import all_gather_objects
from .experiment import ORIGINAL_ARGS, describe_progress, is_training_checkpoint
from .optim import param_groups

# Flags that name the run's folder: a resumed run continues in its checkpoint's folder (or a branch's) whatever
# they say.
FOLDER_FLAGS = {"output", "experiment"}
# The teacher's flags and the loss weights, which do nothing while --kd is off: when a resume switches --kd on or off,
# its one line says what happens (`_distillation_switch`), and theirs (an empty value, a weight not used) are left out.
TEACHER_FLAGS = {"teacher_model", "teacher_model_kwargs", "teacher_ckpt", "teacher_pretrained", "kd_loss_weight",
                 "ori_loss_weight"}


def _resume_view(resume: str, auto: Optional[str], ckpt: Optional[Mapping[str, Any]],
                 error: Optional[Exception], flag: str) -> str:
    """What one rank's `--resume` (resolved to `resume`, with `--resume auto`'s line `auto`, read as `ckpt`, or
    failing with `error`) gives, in words."""
    if error is not None:
        return str(error)
    if ckpt is None:
        return auto or f"no {flag}"
    if not is_training_checkpoint(ckpt):
        return f"reads the weights {resume}"
    return f"reads {resume} ({describe_progress(ckpt)}, run {ckpt.get('run_id') or 'of unknown id'})"


Read = Callable[[], tuple[str, Optional[str], Optional[Mapping[str, Any]]]]


def read_alike_on_every_rank(read: Read, flag: str = "--resume") -> tuple[Optional[str], Optional[Mapping[str, Any]]]:
    """Call `read` (-> the path the flag resolved to, `--resume auto`'s line or None, the checkpoint read or None) on
    every rank, and return its line and checkpoint once every rank got the same (tools/train.py and tools/test.py
    read their checkpoints through it): ranks of several nodes that do not share the run's folder would otherwise
    start from different epochs (one resuming, another starting afresh) and wait for each other in collectives that
    never match, or wait for a rank that stopped on a missing file. An error of `read` that every rank met is raised
    as it is; any other difference, on every rank, as one ConfigError line naming rank 0's view and that of the first
    rank that differs (in a single process: the error, if any). `flag`: the flag that names the checkpoint
    (tools/train.py reads its `--finetune` weights so too)."""
    resume, auto, ckpt, error = "", None, None, None
    try:
        resume, auto, ckpt = read()
    except (ConfigError, CheckpointError) as err:
        error = err
    views = all_gather_objects((socket.gethostname(), _resume_view(resume, auto, ckpt, error, flag)))
    differ = [rank for rank, (_, view) in enumerate(views) if view != views[0][1]]
    if not differ:
        if error is not None:
            raise error
        return auto, ckpt
    (host0, view0), (host, view) = views[0], views[differ[0]]
    raise ConfigError(f"{flag}: the processes do not read the same checkpoint (rank 0 on {host0}: {view0}; rank "
                      f"{differ[0]} on {host}: {view}): every node must read the same run folder and checkpoint; give "
                      f"--output and {flag} paths on a file system that all nodes share")


def class_folders_difference(trained: Optional[list[str]], found: Optional[list[str]]) -> Optional[str]:
    """How the class folders `found` in the data differ from those a checkpoint was `trained` on (`added [...],
    removed [...]`, at most five names each); None when they are the same, in the same order, or either is None."""
    if trained is None or found is None or list(trained) == list(found):
        return None
    added, gone = sorted(set(found) - set(trained)), sorted(set(trained) - set(found))
    return f"added {added[:5]}, removed {gone[:5]}"


def check_same_classes(trained: Optional[list[str]], found: Optional[list[str]], path: str) -> None:
    """Refuse to continue the run of checkpoint `path`, trained on the class folders `trained`, on data whose class
    folders are `found` (others: its labels would mean other classes); None on either side: no check."""
    difference = class_folders_difference(trained, found)
    if difference is not None:
        raise DataError(f"{path} was trained on other class folders than those of the data ({difference}): its "
                        f"labels would change meaning; restore the folders or start a new run (--finetune {path})")


def check_same_batches(ckpt: Mapping[str, Any], path: str, world_size: int, batch_size: int,
                       grad_accum_steps: int = 1) -> None:
    """A run stopped in the middle of an epoch continues it with the same batches and optimizer steps: the same
    number of processes, batch size and --grad-accum-steps."""
    saved = ckpt.get("config") or {}
    processes, saved_batch, saved_accum = len(ckpt.get("rng") or []), saved.get("batch_size"), saved.get(
        "grad_accum_steps", 1)
    if (processes, saved_batch, saved_accum) != (world_size, batch_size, grad_accum_steps):
        accumulated = saved_accum != 1 or grad_accum_steps != 1
        then, now = (f" --grad-accum-steps {n}" if accumulated else "" for n in (saved_accum, grad_accum_steps))
        raise ConfigError(f"{path} stopped in the middle of epoch {ckpt['epoch']} of a run of {processes} "
                          f"process(es) with -b {saved_batch}{then}; continue it with the same (this run: "
                          f"{world_size} with -b {batch_size}{now})")


def warn_other_epoch_order(ckpt: Mapping[str, Any], path: str, train_images: int, log: logging.Logger) -> None:
    """Warn when a run stopped in the middle of an epoch resumes on a training set of another size (`train_images`
    now; an unreadable image removed): the epoch's order is drawn from the size, so its rest is not the rest it
    began."""
    saved = ckpt.get("train_images")
    if saved is not None and saved != train_images:
        log.warning(f"{path} stopped in the middle of epoch {ckpt['epoch']} with {saved} training images, the data "
                    f"now has {train_images}: the rest of the epoch follows another order (some images are trained "
                    f"twice in it, others not at all); the epochs after it are as usual")


def keep_epoch_seed(ckpt: Mapping[str, Any], loader: DataLoader, seed: int, log: logging.Logger) -> None:
    """A run stopped in the middle of an epoch, resumed with another --seed (now `seed`): the rest of the epoch keeps
    the order and augmentation of the seed it began with (the checkpoint's `epoch_seed`; in older files its config's),
    so that each image is trained once in it; the new seed takes effect from the next epoch. `loader`: the training
    loader, before its first iteration (its workers copy its dataset then)."""
    began = ckpt.get("epoch_seed", (ckpt.get("config") or {}).get("seed"))
    if began is None or began == seed:
        return
    epoch = int(ckpt["epoch"])
    loader.sampler.epoch_seeds[epoch] = loader.dataset.epoch_seeds[epoch] = began
    log.info(f"--seed {seed}: the rest of epoch {epoch} keeps the order and augmentation of --seed {began}, which it "
             f"began with; the new seed takes effect from epoch {epoch + 1}")


def warn_ema_switch(ckpt: Mapping[str, Any], path: str, start_epoch: int, model_ema: bool,
                    log: logging.Logger) -> None:
    """Warn when --model-ema (now `model_ema`) is switched on or off on resume (its run's config says whether it was
    on; a file without one, the original code's, by holding EMA weights or not): the validation columns of
    metrics.csv, and the ranking of the kept checkpoints, change from one weights' accuracy to the other's."""
    had = (ckpt.get("config") or {}).get("model_ema")
    if had is None and "config" not in ckpt:
        had = ckpt.get("ema_model") is not None
    if had is None or bool(had) == bool(model_ema):
        return
    if model_ema:
        what = "the EMA's (which starts from the resumed weights)", "the model's"
    else:
        what = "the model's", "the EMA's (whose weights are dropped)"
    log.warning(f"--model-ema {'on' if model_ema else 'off'} where the run of {path} had it "
                f"{'off' if model_ema else 'on'}: from epoch {start_epoch} the validation columns of metrics.csv and "
                f"the ranking of the kept checkpoints are {what[0]}, before it {what[1]}")


def misfit_remedy(ckpt: Mapping[str, Any], path: str) -> str:
    """What to give when the weights of `ckpt`, the --resume file `path`, do not fit the model the command built."""
    if not is_training_checkpoint(ckpt):
        return (f"--resume trains released weights on at their own model, classes and image size; to train them at "
                f"others, give --finetune {path} instead")
    run_config = run_config_beside(path)
    if run_config is None:
        return "give the model, data and image size its run was trained with"
    return f"to continue its run, give its config: -c {run_config} --resume {path}"


def adopt_original_checkpoints(manager: CheckpointManager, start_epoch: int, path: str, log: logging.Logger) -> None:
    """A run of the original code continued from its checkpoint `path` (which records no kept list): rank the
    checkpoint files of its folder by its metrics.csv's top-1 (`CheckpointManager.adopt`) instead of deleting them as
    files of no list, and say so."""
    kept = manager.adopt(start_epoch, epoch_scores(os.path.join(manager.save_dir, METRICS_CSV)))
    alone = sorted(manager.left_alone)
    if kept or alone:
        log.info(f"{path} records no kept checkpoints (the original code's): ranked its folder's "
                 f"{[name for name, _ in kept]} by metrics.csv's top-1"
                 + (f"; {alone} are left as they are (never deleted)" if alone else ""))


def keep_original_args(exp_dir: str, log: logging.Logger) -> None:
    """Keep the args.yaml of an original code's run in `exp_dir` as `ORIGINAL_ARGS` before this run writes its own."""
    args_file, kept = os.path.join(exp_dir, "args.yaml"), os.path.join(exp_dir, ORIGINAL_ARGS)
    if os.path.isfile(args_file) and not os.path.exists(kept):
        atomic_copy(args_file, kept)
        log.info(f"The original code's args.yaml is kept as {kept}")


def keep_run_start(cfg: Namespace, saved: Mapping[str, Any], path: str, log: logging.Logger) -> None:
    """Keep the weights the resumed run started from (`--finetune` of its config, `saved`) in this run's `cfg`,
    which args.yaml records: the flag means nothing to a run that continues, and a run copied from its args.yaml
    must start as it did. Another --finetune given here is logged as not read."""
    own = saved.get("finetune", cfg.finetune)
    if cfg.finetune:
        start = "" if own == cfg.finetune else f", which started from {own or 'scratch'}"
        log.info(f"--finetune {cfg.finetune} is not read: the run continues from {path}{start}")
    cfg.finetune = own


def saved_optimizer_kind(ckpt: Mapping[str, Any]) -> Optional[str]:
    """The `--opt` of a training checkpoint: its config's, or, in a file without one (the original code's), the kind
    its optimizer state's hyperparameters show; None when they show none of ours."""
    kind = (ckpt.get("config") or {}).get("opt")
    if kind is not None:
        return kind
    groups = (ckpt.get("optimizer") or {}).get("param_groups") or [{}]
    keys = set(groups[0])
    for key, name in (("betas", "adamw"), ("nesterov", "sgd"), ("lr_in_momentum", "rmsproptf"), ("alpha", "rmsprop")):
        if key in keys:
            return name
    return None


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, cfg: Namespace,
                         ckpt: Mapping[str, Any], path: str, log: logging.Logger) -> None:
    """Load the checkpoint's optimizer state into `optimizer` (built from `cfg` for `model`), keeping this run's
    hyperparameters. Another `--opt` than the checkpoint's starts the state afresh (one kind's moments mean nothing to
    another); another parameter grouping (weight decay 0 or not, --opt-no-filter, --honor-no-weight-decay) keeps
    each parameter's state."""
    if ckpt.get("optimizer") is None:
        return
    saved = ckpt.get("config") or {}
    kind = saved_optimizer_kind(ckpt)
    if kind not in (None, cfg.opt):
        log.warning(f"--opt changed on resume ({kind} -> {cfg.opt}): the optimizer state of {path} is not "
                    f"used, {cfg.opt} starts afresh")
        return
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(_regrouped(ckpt["optimizer"], saved, optimizer, model, cfg))
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: optimizer state does not fit ({err})") from err
    for group, hyper in zip(optimizer.param_groups, fresh):
        group.update(hyper)


def _regrouped(state: dict, saved: Mapping[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module,
               cfg: Namespace) -> dict:
    """`state` re-indexed to `optimizer`'s parameter groups when the saved config grouped the parameters otherwise."""
    if not {"weight_decay", "opt_no_filter"} <= saved.keys():
        return state
    old_groups = param_groups(model, cfg.lr, saved["weight_decay"], not saved["opt_no_filter"],
                              saved.get("honor_no_weight_decay", False))
    old = [p for group in old_groups for p in group["params"]]
    new = [p for group in optimizer.param_groups for p in group["params"]]
    sizes = [len(group["params"]) for group in state["param_groups"]]
    if sizes != [len(group["params"]) for group in old_groups] or [id(p) for p in old] == [id(p) for p in new]:
        return state
    position = {id(p): i for i, p in enumerate(new)}
    return {"state": {position[id(old[int(i)])]: v for i, v in state["state"].items()},
            "param_groups": optimizer.state_dict()["param_groups"]}


def _same_value(old: Any, new: Any) -> bool:
    """Equal values, or the same path written two ways (relative and absolute)."""
    if old == new:
        return True
    return isinstance(old, str) and isinstance(new, str) and bool(old) and os.path.abspath(old) == os.path.abspath(new)


def _distillation_switch(saved: Mapping[str, Any], now: Mapping[str, Any]) -> Optional[str]:
    """The line of a resume that switches distillation on or off (`--kd` set in one of the run's config `saved` and
    this run's `now`, not in the other), saying what the run does from here; None when it does not."""
    if "kd" not in saved or bool(saved["kd"]) == bool(now["kd"]):
        return None
    if now["kd"]:
        return (f"--kd changed on resume: off -> {now['kd']} (the run goes on distilled from the teacher "
                f"{now['teacher_model']} of {now['teacher_ckpt']})")
    return (f"--kd changed on resume: {saved['kd']} -> off (the run goes on without distillation, on its own loss "
            f"alone; the teacher {saved.get('teacher_model')} of {saved.get('teacher_ckpt')} is not used)")


def log_changed_flags(cfg: Namespace, saved: Mapping[str, Any], log: logging.Logger) -> None:
    """Log every flag whose value differs from the one the checkpoint's run had (`saved`: its config), but the
    folder's (`FOLDER_FLAGS`); a path given relative once and absolute once is the same value. The list of the flags
    filled from the dataset (`filled_from_dataset`) is no flag: not compared. `--kd` switched on or off is one line
    (`_distillation_switch`), for it and the teacher's flags (`TEACHER_FLAGS`)."""
    now = config_dict(cfg)
    switch = _distillation_switch(saved, now)
    skipped = FOLDER_FLAGS | {"filled_from_dataset"} | (TEACHER_FLAGS if switch else set())
    for key in sorted(now.keys() & saved.keys() - skipped):
        if key == "kd" and switch:
            log.info(switch)
        elif not _same_value(saved[key], now[key]):
            log.info(f"--{key.replace('_', '-')} changed on resume: {saved[key]} -> {now[key]} (the new value is used)")
