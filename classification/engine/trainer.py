"""A training run: `train(cfg)` runs a whole experiment, holding its state in a `Run`.

An epoch (`train_loop.train_one_epoch`: the optimizer steps, `--grad-accum-steps`, the stop on a loss that is not
finite), then: validate the model (and the EMA, whose metrics then rank the checkpoints) in fp32 unless `--amp-eval`,
append the `metrics.csv` row, then save the checkpoints with `last.pth.tar` last. That file commits the epoch:
`--resume` from it rewinds the CSV files to it and repairs the checkpoint files, so a run killed at any instant
continues exactly.

SIGINT (Ctrl-C), SIGTERM, SIGUSR1 or SIGHUP (`signals.StopSignals`) stops the run cleanly: after the current optimizer
step every rank stops at the same step, `last.pth.tar` is written in the middle of the epoch (marked by `step`, the
batches done, with the running train-loss sums), and the run exits through `RunInterrupted`. A signal during validation
stops it after the current validation batch (the epoch's training is saved: `--resume` validates it), one during the
epoch end's writes once they are done, before the next epoch. `--resume` from a mid-epoch checkpoint
skips the batches already trained and keeps the epoch's `lr.csv` rows up to there: the run ends bit-identical to an
uninterrupted one on a CPU. A second Ctrl-C aborts at once (the last committed `last.pth.tar` stays).

On `--resume` the flags of the new command (optimizer and schedule flags included, e.g. `--lr`, `--epochs`) take effect:
the optimizer's hyperparameters are the new flags', its state (moments) the checkpoint's, and the learning rate of each
iteration is what the new schedule gives at that iteration. Changes are logged.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import uuid
from argparse import Namespace
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn
from localmamba_kernel_runtime.settings import check_settings
from localmamba_ssm import backend_summary
from timm.loss import SoftTargetCrossEntropy
from torch.nn.parallel import DistributedDataParallel

from ..common.checkpoint_io import (CheckpointError, epoch_position, load_checkpoint_on_all_ranks,
                                    remove_temporary_files, state_dict_from)
from ..common.csv_log import LR_CSV, LR_HEADER, METRICS_CSV, METRICS_HEADER, CsvLog
from ..common.rng import get_rng_state, seed_everything, set_rng_state
from ..data import build_datasets, build_loaders, build_mixup, class_summary
from ..data.loader import lost_worker_as_data_error
from ..data.transforms import check_auto_augment
from ..models.directions import directions_difference, scan_directions
from ..search.monitor import SearchMonitor
from .amp import log_precision, make_scaler
from .checkpoint import (LAST, CheckpointManager, check_same_model, load_finetune_weights, load_weights,
                         saved_search_candidates)
from .config import ConfigError, config_dict, save_config
from .distillation import (Distillation, build_distillation, check_distillation_flags, check_teacher_outside_run,
                           log_teacher_accuracy)
from .distributed import DistEnv, agreed_setup, all_gather_objects, init_distributed, shutdown
from .ema import ForeachModelEma
from .evaluate import ValidationStopped, log_top5_meaning, validate
from .experiment import (RunFolder, check_folder_unchanged, choose_run_folder, delete_previous_run, finished_run,
                         is_training_checkpoint, next_epoch, resolve_auto_resume, start_branch)
from .flags import DEFAULT_EXPERIMENT
from .logs import setup_logging, start_log_file
from .model_builder import build_model, canonical_model_name, check_input_size, check_model_flags, image_channels
from .optim import build_optimizer
from .resume import (adopt_original_checkpoints, check_same_batches, check_same_classes, keep_epoch_seed,
                     keep_original_args, keep_run_start, load_optimizer_state, log_changed_flags, misfit_remedy,
                     read_alike_on_every_rank, warn_ema_switch, warn_other_epoch_order)
from .run_lock import ELSEWHERE, RESUMED_ELSEWHERE, RunLock, claim_run_folder
from .scheduler import WarmupScheduler, build_scheduler
from .signals import StopSignals
from .stopping import aborted, interrupted, save_on_every_rank, saved_so_far
from .train_loop import EpochProgress, train_one_epoch


class Run:
    """Everything one training run holds: model (+DDP wrapper, EMA), optimizer, scaler, schedule, outputs."""

    def __init__(self, cfg: Namespace, env: DistEnv, exp_dir: str, log: logging.Logger):
        self.cfg, self.env, self.exp_dir, self.log = cfg, env, exp_dir, log
        self.run_id = uuid.uuid4().hex  # names the run in its checkpoints (only rank 0's writes them)
        with agreed_setup("setting up its data and model"):  # each rank's own, before DDP's first collective
            train_set, val_set = build_datasets(cfg, image_channels(cfg))
            self.classes: Optional[list[str]] = getattr(train_set, "classes", None)  # the labels' names, if any
            self.train_images = len(train_set)
            self.train_loader, self.val_loader = build_loaders(cfg, train_set, val_set, env.world_size, env.rank,
                                                               pin_memory=env.device.type == "cuda")
            self.mixup = build_mixup(cfg)
            if self.mixup is not None and cfg.batch_size % 2:
                raise ConfigError(f"mixup/cutmix need an even batch size, got -b {cfg.batch_size}")
            self.model = build_model(cfg).to(env.device)
            check_input_size(self.model, cfg)
            if env.device.type == "cuda":
                torch.backends.cudnn.benchmark = True  # as the original
            n_params = sum(p.numel() for p in self.model.parameters())
            log.info(f"Model {cfg.model} created, params: {n_params / 1e6:.3f} M, device: {env.device}, "
                     f"processes: {env.world_size}, train images: {len(train_set)}, val images: {len(val_set)}")
            log.info(class_summary(train_set))
            log_top5_meaning(log, cfg.num_classes)
            log.info(f"Kernel backends on {env.device}: {backend_summary(env.device)}")
            log_precision(log, env.device, cfg.amp, cfg.amp_eval, cfg.amp_dtype)
            if cfg.compile is not None:
                log.warning(f"--compile {cfg.compile} is tools/test.py's: training and its validation run eager")
            self.distillation: Optional[Distillation] = (build_distillation(cfg, env.device, log, self.classes)
                                                         if cfg.kd else None)
        self.net = self.model
        if env.distributed:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.ema = ForeachModelEma(self.model, decay=cfg.model_ema_decay) if cfg.model_ema else None
        self.optimizer = build_optimizer(self.model, cfg)
        self.updates_per_epoch = len(self.train_loader) // cfg.grad_accum_steps  # optimizer steps
        self.steps_per_epoch = self.updates_per_epoch * cfg.grad_accum_steps  # batches trained in an epoch
        self.scheduler: WarmupScheduler = build_scheduler(self.optimizer, cfg, self.updates_per_epoch)
        if cfg.grad_accum_steps > 1:
            dropped = len(self.train_loader) - self.steps_per_epoch
            log.info(f"--grad-accum-steps {cfg.grad_accum_steps}: an optimizer step of {cfg.grad_accum_steps} batches "
                     f"of {cfg.batch_size} on each of {env.world_size} process(es), "
                     f"{cfg.grad_accum_steps * cfg.batch_size * env.world_size} images; {self.updates_per_epoch} "
                     f"steps an epoch" + (f" (its last {dropped} batch(es) not trained)" if dropped else ""))
        if 0 < cfg.epochs <= cfg.warmup_epochs:
            log.warning(f"--warmup-epochs {cfg.warmup_epochs} >= --epochs {cfg.epochs}: the whole run is warmup, its "
                        f"learning rate stays below --lr {cfg.lr}")
        self.scaler = make_scaler(env.device, cfg.amp, cfg.amp_dtype)
        self.manager = CheckpointManager(exp_dir, cfg.keep_num, enabled=env.is_main)
        self.metrics: CsvLog | None = None  # opened by open_outputs, once the inputs are checked
        self.lr_log: CsvLog | None = None
        self.search: SearchMonitor | None = None
        mixing = self.mixup is not None
        self.train_loss: Callable = SoftTargetCrossEntropy() if mixing else nn.CrossEntropyLoss(
            label_smoothing=cfg.smoothing)
        self.val_loss: Callable = nn.CrossEntropyLoss(label_smoothing=0.0 if mixing else cfg.smoothing)
        self.start_epoch = 0
        self.start_progress = EpochProgress()  # of start_epoch: not 0 when resumed in the middle of it
        self.rng_to_restore = None
        self.non_finite_steps = 0  # the last optimizer steps' losses not finite, in a row (see train_one_epoch)
        self.original_run = False  # resumed from a checkpoint of the original code (see resume)

    def resume(self, ckpt: dict, path: str, rewound: bool = False) -> None:
        """Restore model, EMA, optimizer state, scaler, schedule position, kept-checkpoint list, epoch (and the step
        and running train loss of a mid-epoch checkpoint) and RNG from `ckpt` (read from `path`); `rewound`: the run
        in its folder had gone further (`--rewind`), so kept entries whose files are gone were evicted after it. A
        released {'state_dict'} file gives the weights only: training starts at epoch 0."""
        check_same_model(self.model, canonical_model_name(self.cfg.model), ckpt, path)
        check_same_classes(ckpt.get("classes"), self.classes, path)
        try:
            load_weights(self.model, state_dict_from(ckpt, source=path), path)
        except CheckpointError as error:
            raise CheckpointError(f"{error}; {misfit_remedy(ckpt, path)}") from None
        if self.ema is not None:
            self.ema.set(self.model)  # the EMA starts from the loaded weights unless the checkpoint holds its own
        if not is_training_checkpoint(ckpt):
            self.log.info(f"Loaded weights from {path}; no training state in it, starting at epoch 0 (args.yaml "
                          f"records it as the run's --finetune, which starts a copy of the run from the same weights)")
            self.cfg.finetune = path
            return
        if not self.cfg.branch:
            self.run_id = ckpt.get("run_id") or self.run_id
        step = ckpt.get("step")  # batches done in `epoch` by a run stopped in its middle; None: `epoch` finished
        start_epoch = next_epoch(ckpt)
        if start_epoch >= self.cfg.epochs:
            where = f"already finished epoch {start_epoch - 1}" if step is None else f"stopped in epoch {start_epoch}"
            raise ConfigError(f"{path} {where} and --epochs {self.cfg.epochs} ends the run at epoch "
                              f"{self.cfg.epochs - 1} (epochs count from 0, as the log does): nothing left to train "
                              f"(raise --epochs to continue it)")
        if step is not None:
            check_same_batches(ckpt, path, self.env.world_size, self.cfg.batch_size, self.cfg.grad_accum_steps)
            warn_other_epoch_order(ckpt, path, self.train_images, self.log)
            self.start_progress = EpochProgress(int(step))
            loss_sum, loss_count = ckpt["train_loss_sums"][self.env.rank]
            self.start_progress.loss.sum, self.start_progress.loss.count = loss_sum, loss_count
        if self.ema is not None and ckpt.get("ema_model") is not None:
            load_weights(self.ema.module, state_dict_from(ckpt, "ema_model", source=path), path)
        load_optimizer_state(self.optimizer, self.model, self.cfg, ckpt, path, self.log)
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        saved = ckpt.get("config") or {}
        keep_run_start(self.cfg, saved, path, self.log)
        warn_ema_switch(ckpt, path, start_epoch, self.cfg.model_ema, self.log)
        log_changed_flags(self.cfg, saved, self.log)
        if step is not None and step < self.steps_per_epoch:
            keep_epoch_seed(ckpt, self.train_loader, self.cfg.seed, self.log)
        self.start_epoch = start_epoch
        self.scheduler.set_step(self.start_epoch * self.updates_per_epoch
                                + self.start_progress.step // self.cfg.grad_accum_steps)
        self.original_run = ckpt.get("checkpoints") is None  # the original code's checkpoints record no kept list
        if self.original_run:
            adopt_original_checkpoints(self.manager, start_epoch, path, self.log)
        else:
            past = self.manager.load_state_dict(ckpt["checkpoints"], ckpt.get("left_alone") or (),
                                                keep_missing=not (self.cfg.branch or rewound))
            if past:
                self.log.warning(f"--keep-num {self.cfg.keep_num} keeps fewer checkpoints than the run of {path}: "
                                 f"those ranked past the best {self.cfg.keep_num} are deleted: "
                                 f"{', '.join(self.manager.path(name) for name in past)}")
        rng = ckpt.get("rng") or []
        if len(rng) == self.env.world_size:
            self.rng_to_restore = rng[self.env.rank]
        else:
            held = f"RNG states of {len(rng)} processes" if rng else "no RNG states (the original code saves none)"
            self.log.warning(f"{path} holds {held}, this run has {self.env.world_size} process(es): random streams "
                             f"are reseeded, not restored")
            seed_everything(self.cfg.seed + self.env.rank + self.start_epoch)
        if step is not None and step >= self.steps_per_epoch:  # stopped during the epoch's validation or writes
            self.log.info(f"Resumed {path}: the training of epoch {self.start_epoch} is done, validating it")
            return
        at_step = f", {self.epoch_position(step)}" if step is not None else ""
        self.log.info(f"Resumed {path}, starting training at epoch {self.start_epoch}{at_step}")

    def finetune(self, ckpt: dict, path: str) -> None:
        """Start from the weights of `ckpt` (read from `path`) adapted to this model (`load_finetune_weights`); the
        EMA starts from them too. Nothing else of `ckpt` is used: the run starts at epoch 0."""
        kept = load_finetune_weights(self.model, ckpt, path, canonical_model_name(self.cfg.model))
        if self.ema is not None:
            self.ema.set(self.model)
        fresh = f"; {', '.join(kept)} keep their initialisation (another shape)" if kept else ""
        self.log.info(f"Fine-tuning from the weights of {path}{fresh}")
        other = directions_difference(self.model, ckpt)
        if other is not None:
            self.log.warning(f"{path} was trained with other scan directions ({other}): its weights fine-tune this "
                             f"model's directions (give --directions as its run did to keep them)")

    def open_outputs(self, folder: RunFolder, resumed: Optional[Mapping[str, Any]] = None) -> None:
        """Prepare the folder once the inputs are checked: remove leftover temporary files, delete an earlier run
        (--overwrite), take a branch's CSV history or make a rewound run's last.pth.tar the resumed checkpoint
        (`resumed`, as read), rewind the CSV files and repair the checkpoint files to the resumed epoch, write
        args.yaml."""
        cfg, env, exp_dir = self.cfg, self.env, self.exp_dir
        if env.is_main:
            leftovers = remove_temporary_files(exp_dir)
            if leftovers:
                self.log.info(f"Removed {len(leftovers)} temporary file(s) of an interrupted write: {leftovers}")
            removed = delete_previous_run(exp_dir) if cfg.overwrite else []
            kept = sorted(name for name in os.listdir(exp_dir) if not name.startswith(".")) if removed else []
            start_log_file(self.log)
            if removed:
                self.log.info(f"--overwrite: deleted the earlier run's files {removed}")
            if kept:
                self.log.warning(f"--overwrite: kept {kept}, which no run writes (tools/vis_search_prob.py's "
                                 f"directions.yaml, plots, your files): those made from the deleted run describe it, "
                                 f"not the run starting here")
            copied = start_branch(folder)
            if copied:
                self.log.info(f"Branch: took {', '.join(copied)} of {folder.branch_of} up to the resumed checkpoint")
            if folder.rewinds is not None:  # from here on, an interrupted rewind resumes from the rewound point
                self.manager.save_last(dict(resumed))  # with the kept list of the rewind
        self.metrics = CsvLog(os.path.join(exp_dir, METRICS_CSV), METRICS_HEADER, enabled=env.is_main)
        self.lr_log = CsvLog(os.path.join(exp_dir, LR_CSV), LR_HEADER, enabled=env.is_main)
        self.search = SearchMonitor.for_model(self.model, exp_dir, enabled=env.is_main)
        for csv_log in (self.metrics, self.search.csv if self.search is not None else None):
            if csv_log is not None:
                csv_log.truncate_from(self.start_epoch)
        mid_epoch = self.start_progress.step > 0
        self.lr_log.truncate_from(self.start_epoch, self.scheduler.t if mid_epoch else None)  # t: the next iteration
        if self.start_epoch > 0 or mid_epoch:
            self.manager.reconcile()
        if env.is_main:
            if self.original_run:
                keep_original_args(exp_dir, self.log)
            save_config(cfg, os.path.join(exp_dir, "args.yaml"))

    def checkpoint_payload(self, epoch: int, progress: Optional[EpochProgress] = None) -> dict:
        """The training checkpoint at the end of `epoch`, or with `progress` in its middle (RNG states and running
        train-loss sums of every rank included). Every rank calls it."""
        loss_sums = [progress.loss.sum, progress.loss.count] if progress is not None else None
        states = all_gather_objects((get_rng_state(), loss_sums))
        ema_weights = self.ema.module.state_dict() if self.ema is not None else None
        return {
            "epoch": epoch,
            "step": progress.step if progress is not None else None,
            "steps_per_epoch": self.steps_per_epoch,
            "train_loss_sums": [sums for _, sums in states] if progress is not None else None,
            "model": self.model.state_dict(),
            "ema_model": ema_weights,
            "state_dict_ema": ema_weights,  # the same dict, stored once: where timm's load_checkpoint looks for an EMA
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "scheduler": self.scheduler.state_dict(),
            "rng": [rng for rng, _ in states],
            "model_name": canonical_model_name(self.cfg.model),
            "directions": scan_directions(self.model),
            "candidates": saved_search_candidates(self.model),
            "classes": self.classes,
            "train_images": self.train_images,
            "epoch_seed": self.train_loader.sampler.epoch_seeds.get(epoch, self.cfg.seed),
            "config": config_dict(self.cfg),
            "run_id": self.run_id,
        }

    def fit(self) -> dict:
        """Train from `start_epoch` to `epochs`; returns the last epoch's metrics. A stop signal ends it with
        `RunInterrupted`, after the current step or, during an epoch's end, after its writes."""
        metrics: dict = {}
        with StopSignals(self.env.device) as stop:
            if self.distillation is not None:
                self._validate_teacher(stop)
            # restored after the teacher's validation: the epochs start from the saved streams, whatever it draws
            if self.rng_to_restore is not None:
                set_rng_state(self.rng_to_restore)
            for epoch in range(self.start_epoch, self.cfg.epochs):
                signum = stop.agreed()
                if signum is not None:  # received during the previous epoch's validation or writes
                    self.log.info(f"{signal.Signals(signum).name}: stopping before epoch {epoch}")
                    raise interrupted(self, signum)
                progress = self.start_progress if epoch == self.start_epoch else EpochProgress()
                train_metrics = train_one_epoch(self, epoch, progress, stop)
                trained = self.checkpoint_payload(epoch, progress)  # saved before the validation: see _finish_epoch
                save_on_every_rank(self, lambda: self.manager.save_last(trained))
                metrics = self._finish_epoch(epoch, train_metrics, stop)
        return metrics

    def _validate_teacher(self, stop: StopSignals) -> None:
        """Log the teacher's top-1 before the first epoch (`log_teacher_accuracy`). A stop signal ends the run there,
        as during the epochs' validations: nothing was trained since the run's `last.pth.tar` (none in a fresh run)."""
        cfg = self.cfg
        try:
            log_teacher_accuracy(self.distillation, self.val_loader, self.val_loss, self.env, self.log, cfg.amp_eval,
                                 cfg.amp_dtype, stop=stop.agreed)
        except ValidationStopped as stopped:
            last = self.manager.path(LAST)
            saved = (f"nothing was trained since {last}, from which --resume continues" if os.path.isfile(last)
                     else "nothing was trained yet")
            self.log.info(f"{signal.Signals(stopped.signum).name}: stopping the teacher's validation before epoch "
                          f"{self.start_epoch}; {saved}")
            raise interrupted(self, stopped.signum) from None

    def _finish_epoch(self, epoch: int, metrics: dict, stop: StopSignals) -> dict:
        """Validate, append the `metrics.csv` row and write the checkpoints (`last.pth.tar` last) of `epoch`, whose
        training gave `metrics`; returns them with the validation's. `last.pth.tar` already holds the epoch's trained
        state, marked as stopped after its last step: a validation that fails (an unreadable image) or is killed
        loses no training, and `--resume` goes straight to the validation. A signal of `stop` stops the validation at
        its next batch (and so the run); one received during the writes stops the run before the next epoch."""
        cfg, log = self.cfg, self.log
        common = dict(log_interval=cfg.log_interval, amp=cfg.amp_eval, amp_dtype=cfg.amp_dtype, stop=stop.agreed)
        try:
            test_metrics = validate(self.model, self.val_loader, self.val_loss, self.env, epoch, log, **common)
            if self.ema is not None:
                test_metrics = validate(self.ema.module, self.val_loader, self.val_loss, self.env, epoch, log,
                                        suffix="(EMA)", **common)
        except ValidationStopped as stopped:
            log.info(f"{signal.Signals(stopped.signum).name}: stopping the validation of epoch {epoch}; the epoch's "
                     f"training is saved in {self.manager.path(LAST)}, from which --resume validates it")
            raise interrupted(self, stopped.signum) from None
        except Exception:
            log.error(f"Validation of epoch {epoch} failed; its training is saved: once the cause is fixed, continue "
                      f"with --resume {self.manager.path(LAST)}")
            raise
        metrics.update(test_metrics)
        if self.search is not None:
            self.search.append_epoch(epoch)
        self.metrics.append([epoch] + [metrics[k] for k in METRICS_HEADER[1:]])
        payload = self.checkpoint_payload(epoch)
        kept = save_on_every_rank(self, lambda: self.manager.update(epoch, metrics["top1"], payload))
        ranked = "Checkpoints, by the EMA's top-1:" if self.ema is not None else "Checkpoints, by top-1:"
        deleted = {p: "" if os.path.isfile(self.manager.path(p)) else " (file deleted)" for p, _ in kept}
        log.info("\n".join([ranked] + [f"        {self.manager.path(p)} : {s:.3f}%{deleted[p]}" for p, s in kept]))
        return metrics

    def epoch_position(self, step: int) -> str:
        """Where `step` batches of an epoch stand, for log lines: `step 4 of 10`; with --grad-accum-steps, whose log
        lines count optimizer steps, `batch 4 of 10 (optimizer step 2 of 5)`."""
        return epoch_position(step, self.steps_per_epoch, self.cfg.grad_accum_steps)


def _read_resume_checkpoint(cfg: Namespace) -> tuple[str, Optional[str], dict | None]:
    """`--resume` resolved (`--resume auto`: `resolve_auto_resume`), that resolution's line (None without auto) and
    the checkpoint read (None without one)."""
    auto = resolve_auto_resume(cfg)
    ckpt = load_checkpoint_on_all_ranks(cfg.resume, trust=cfg.trust_checkpoint) if cfg.resume else None
    return cfg.resume, auto, ckpt


def _read_finetune_checkpoint(cfg: Namespace, resumed: dict | None) -> tuple[str, None, dict | None]:
    """--finetune's path, no line, and the checkpoint of a fresh run; None when there is none or when --resume
    continues a run (whose first epoch was fine-tuned from it)."""
    if not cfg.finetune or (resumed is not None and is_training_checkpoint(resumed)):
        return cfg.finetune, None, None
    if resumed is not None:
        raise ConfigError(f"--finetune starts a run from weights and --resume {cfg.resume} (released weights, no "
                          f"training state) does the same: give only one of them")
    return cfg.finetune, None, load_checkpoint_on_all_ranks(cfg.finetune, trust=cfg.trust_checkpoint)


def train(cfg: Namespace) -> dict:
    """Run the experiment described by `cfg` (tools/train.py); returns the last epoch's metrics.

    Order: device, model flags, the --resume checkpoint, the run folder (locked for the run's life; refused when
    another live run holds it, or when a fresh run would erase the run it holds), data and model, the resumed state;
    only then is anything in the folder changed (`Run.open_outputs`).
    """
    env = init_distributed(cfg.device, cfg.slurm, cfg.dist_port, cfg.threads)
    lock: Optional[RunLock] = None
    try:
        with agreed_setup("checking its settings"):  # the kernel settings come from each node's environment
            check_settings(env.device)
            check_model_flags(cfg)
            check_auto_augment(cfg.aa, cfg.aa_impl)
            check_distillation_flags(cfg)
        auto, ckpt = read_alike_on_every_rank(functools.partial(_read_resume_checkpoint, cfg))
        finished = finished_run(cfg, ckpt) if auto is not None else None
        if finished is not None:
            if env.is_main:
                print(finished, flush=True)
            return {}
        _, finetune = read_alike_on_every_rank(functools.partial(_read_finetune_checkpoint, cfg, ckpt), "--finetune")
        folder = choose_run_folder(cfg, ckpt)
        exp_dir = folder.path
        check_teacher_outside_run(cfg, exp_dir)
        fresh = ckpt is None or not is_training_checkpoint(ckpt)
        if fresh or folder.branch_of:
            lock = RunLock(exp_dir, ELSEWHERE)
        else:
            lock = RunLock(exp_dir, RESUMED_ELSEWHERE, resumed=cfg.resume)
        recheck = None if fresh else functools.partial(check_folder_unchanged, cfg, ckpt, folder)
        unlocked = claim_run_folder(cfg, env, lock, fresh=fresh, recheck=recheck)
        log = setup_logging(exp_dir, env.is_main)
        if unlocked is not None:
            log.warning(unlocked)
        if auto is not None:
            log.info(auto)
        named = os.path.join(cfg.output, cfg.experiment)
        if folder.branch_of is not None:
            log.info(f"--branch: continuing from {cfg.resume} in {exp_dir}; the run in {folder.branch_of} is left "
                     f"as it is")
        elif os.path.realpath(named) != os.path.realpath(exp_dir):
            other = "" if cfg.experiment == DEFAULT_EXPERIMENT else f" (not {named}, where --experiment points)"
            log.info(f"Continuing in the resumed checkpoint's folder {exp_dir}{other}")
            cfg.output, cfg.experiment = os.path.split(os.path.normpath(exp_dir))  # what args.yaml and checkpoints say
        if folder.rewinds is not None:
            log.info(f"--rewind: continuing {exp_dir} from {cfg.resume} ({folder.rewinds}); the checkpoints and CSV "
                     f"rows after it are deleted")
        elif cfg.rewind:  # the resume in place keeps the ranks of checkpoint files deleted by hand, as without it
            log.info(f"--rewind: nothing to rewind, {cfg.resume} is where the run in {exp_dir} stands: it continues "
                     f"as with --resume alone")
        seed_everything(cfg.seed + env.rank)
        run = Run(cfg, env, exp_dir, log)
        with agreed_setup(f"applying {'--resume' if ckpt is not None else '--finetune'}"):  # to its own data
            if ckpt is not None:
                run.resume(ckpt, cfg.resume, rewound=folder.rewinds is not None)
            elif finetune is not None:
                run.finetune(finetune, cfg.finetune)
        with agreed_setup("opening the run folder"):  # rank 0's writes: a folder where a file goes, a full disk
            run.open_outputs(folder, ckpt)
        del ckpt, finetune
        log.info(run.model)  # the layout, once the inputs are checked (a refusal is not buried under it)
        # torch raises a dead loader worker's error where the run is (even within a step): nothing more is saved
        # (a worker that dies while its batch is awaited is an unread batch: the steps before it were saved)
        with lost_worker_as_data_error(saved=lambda: saved_so_far(run, resume_hint=True)):
            try:
                return run.fit()
            except KeyboardInterrupt:  # a second Ctrl-C (the first one stops the run cleanly)
                raise aborted(run) from None
    finally:
        if lock is not None:
            lock.release()
        shutdown()
