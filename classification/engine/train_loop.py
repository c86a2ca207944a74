"""One epoch of training (`train_one_epoch`), the loop of a `trainer.Run`.

Per iteration (as the original): mixup, forward under autocast, backward (scaled for fp16), optional gradient clipping,
optimizer step, EMA update, LR schedule step. With `--grad-accum-steps N` an iteration takes N batches, the gradient of
each loss / N summed (all-reduced across processes only at the last): one step of the global batch -b x processes x N,
which the schedule, the EMA, clipping, the log lines and `lr.csv` count; the batches at the end of an epoch that do not
fill an iteration are not trained, as a loader of the large batch drops them. A loss that is not finite stops the run
before its step's update (under fp16's GradScaler only the 10th in a row). Every rank stops at the same step: after a
stop signal, a batch that a rank cannot read, or a loss that is not finite on any rank, with what was trained saved.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional

import torch
import torch.nn as nn
from timm.utils import AverageMeter
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .amp import autocast
from .distributed import all_reduce, all_reduce_sum
from .logs import ProgressBar, StepTimes, format_eta, peak_memory_mib
from .signals import StopSignals
from .stopping import stop_for_non_finite_loss, stop_for_unread_batch, stop_mid_epoch

if TYPE_CHECKING:  # the loop reads a Run's state; trainer.py imports this module
    from .trainer import Run


# fp16 steps in a row whose loss is not finite (each skipped by the GradScaler) before the run stops as diverged
NON_FINITE_STEPS_TO_STOP = 10


@dataclass
class EpochProgress:
    """How far an epoch got: `step` batches done, and this rank's running train loss (`loss.sum` over `loss.count`
    samples)."""

    step: int = 0
    loss: AverageMeter = field(default_factory=AverageMeter)


def train_one_epoch(run: Run, epoch: int, progress: Optional[EpochProgress] = None,
                    stop: Optional[StopSignals] = None) -> dict:
    """One pass over epoch `epoch`'s training data from `progress` on (updated as it goes); returns `train_loss`
    averaged over all samples of all ranks. Each optimizer step takes `--grad-accum-steps` batches. When `stop` is
    agreed before a step other than the first one here, writes a mid-epoch `last.pth.tar` and raises `RunInterrupted`;
    when a rank cannot read its next batch (an unreadable image), every rank writes it too (up to the last optimizer
    step) and raises (see `stopping.stop_for_unread_batch`); so it does, without taking the step, when the loss of a
    batch of the step is not finite on any rank (`TrainingDiverged`). Under a GradScaler (fp16), which skips a step
    whose gradients are not finite, as the original's did, the run stops only at the `NON_FINITE_STEPS_TO_STOP`-th
    such step in a row; a non-finite loss never enters the running train loss."""
    cfg, env = run.cfg, run.env
    progress = progress if progress is not None else EpochProgress()
    accum = cfg.grad_accum_steps
    loader: DataLoader = run.train_loader
    loader.sampler.set_epoch(epoch, start=progress.step * cfg.batch_size)
    updates = run.updates_per_epoch
    run.net.train()
    loss_m, update_m, data_m = progress.loss, StepTimes(), AverageMeter()
    bar = ProgressBar(updates, f"epoch {epoch}", enabled=env.is_main)
    start = time.time()
    batches, first = iter(loader), progress.step // accum
    try:
        for update in range(first, updates):
            run.optimizer.zero_grad(set_to_none=True)
            loading, losses = 0.0, []
            for part in range(accum):
                fetch = time.time()
                images, target, error = _next_batch(batches)
                loading += time.time() - fetch  # the loading alone, not the agreement below
                signum, failed = stop.agreed_with(error is not None) if stop is not None else (None, error is not None)
                if failed:
                    raise stop_for_unread_batch(run, epoch, progress, error)
                if signum is not None and part == 0 and update > first:
                    raise stop_mid_epoch(run, epoch, progress, signum)
                losses.append((_forward_backward(run, images, target, sync=part == accum - 1), images.shape[0]))
            _check_finite(run, epoch, progress, [loss for loss, _ in losses])
            _add_step_loss(loss_m, losses)
            _optimizer_step(run)
            if run.ema is not None:
                run.ema.update(run.model)
            data_m.update(loading)
            update_m.update(time.time() - start)
            lr = run.optimizer.param_groups[0]["lr"]
            if update % cfg.log_interval == 0 or update == updates - 1:
                _log_train_line(run, epoch, update, loss_m, update_m, data_m, lr)
                run.lr_log.append([epoch, run.scheduler.t, lr])
            bar.update(update + 1, f"loss {loss_m.avg:.3f} lr {lr:.2e}")
            run.scheduler.step()
            progress.step = (update + 1) * accum
            start = time.time()
    finally:
        bar.close()
    loss_sum, count = all_reduce_sum([loss_m.sum, loss_m.count], env.device)
    return {"train_loss": loss_sum / max(count, 1)}


def _check_finite(run: Run, epoch: int, progress: EpochProgress, losses: list[float]) -> None:
    """Before the optimizer step after `progress` whose batches gave this rank `losses`: when a loss is not finite on
    any rank (one all-reduce, so that all ranks agree), stop the run with its steps before it saved
    (`stopping.stop_for_non_finite_loss`), unless a GradScaler is to skip the step: then warn, and stop at the
    `NON_FINITE_STEPS_TO_STOP`-th such step in a row."""
    not_finite = next((loss for loss in losses if not math.isfinite(loss)), None)
    if not all_reduce([float(not_finite is not None)], run.env.device, "max")[0]:
        run.non_finite_steps = 0
        return
    run.non_finite_steps += 1
    if run.scaler is None or run.non_finite_steps >= NON_FINITE_STEPS_TO_STOP:
        raise stop_for_non_finite_loss(run, epoch, progress, not_finite)
    run.log.warning(f"The training loss is not finite in epoch {epoch} after {run.epoch_position(progress.step)}: "
                    f"the GradScaler skips the step ({run.non_finite_steps} in a row; the "
                    f"run stops at {NON_FINITE_STEPS_TO_STOP})")


def _add_step_loss(loss_m: AverageMeter, losses: list[tuple[float, int]]) -> None:
    """Add an optimizer step's batches, (loss, images) each, to the running train loss: their mean over the images
    becomes `loss_m.val` (the log line's step loss); a loss that is not finite (a step the GradScaler skips) is left
    out."""
    finite = [(loss, count) for loss, count in losses if math.isfinite(loss)]
    if len(finite) == 1:
        loss_m.update(*finite[0])
    elif finite:
        images = sum(count for _, count in finite)
        loss_m.update(sum(loss * count for loss, count in finite) / images, images)


def _next_batch(batches: Iterator) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[Exception]]:
    """The next (images, target) of the loader iterator `batches`, and None; or (None, None, the error) when it
    cannot be read (an unreadable image, a failed read)."""
    try:
        images, target = next(batches)
    except Exception as err:  # noqa: BLE001 - every rank must hear of it before the step's collectives
        return None, None, err
    return images, target, None


def _forward_backward(run: Run, images: torch.Tensor, target: torch.Tensor, sync: bool) -> float:
    """Mixup, forward (and a distilled run's teacher's, on the same images under the same autocast) and backward of
    one batch, adding its share (loss / --grad-accum-steps) to the gradients; under DDP they are all-reduced only when
    `sync` (the optimizer step's last batch). Returns the batch's loss (with `--kd`, the weighted sum of the run's loss
    and the distillation loss)."""
    cfg, env = run.cfg, run.env
    images = images.to(env.device, non_blocking=True)
    target = target.to(env.device, non_blocking=True)
    if run.mixup is not None:
        images, target = run.mixup(images, target)
    deferred = not sync and isinstance(run.net, DistributedDataParallel)
    with run.net.no_sync() if deferred else nullcontext():
        with autocast(env.device, cfg.amp, cfg.amp_dtype):
            output = run.net(images)
            teacher_output = run.distillation.teacher_logits(images) if run.distillation is not None else None
        loss = run.train_loss(output.float(), target)
        if teacher_output is not None:
            loss = run.distillation.loss(loss, output.float(), teacher_output.float())
        share = loss / cfg.grad_accum_steps
        (run.scaler.scale(share) if run.scaler is not None else share).backward()
    return loss.item()


def _optimizer_step(run: Run) -> None:
    """Clip (if asked, on the unscaled gradients) and step the optimizer (through the GradScaler for fp16)."""
    cfg = run.cfg
    if run.scaler is not None and cfg.clip_grad_norm:
        run.scaler.unscale_(run.optimizer)
    if cfg.clip_grad_norm:
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad_max_norm)
    if run.scaler is None:
        run.optimizer.step()
        return
    run.scaler.step(run.optimizer)
    run.scaler.update()


def _log_train_line(run: Run, epoch: int, update: int, loss_m: AverageMeter, step_m: StepTimes,
                    data_m: AverageMeter, lr: float) -> None:
    """The line of optimizer step `update` of the epoch (`step_m`: the steps' times, of all their --grad-accum-steps
    batches, the ETAs from their mean after the epoch's first step; `data_m`: their loading)."""
    cfg, env = run.cfg, run.env
    steps = run.updates_per_epoch
    loss_val, loss_sum, count = all_reduce_sum([loss_m.val, loss_m.sum, loss_m.count], env.device)
    speed = cfg.batch_size * env.world_size * cfg.grad_accum_steps / max(step_m.val, 1e-9)
    left_epoch = (steps - update - 1) * step_m.avg
    left_run = left_epoch + (cfg.epochs - epoch - 1) * steps * step_m.avg
    run.log.info(f"Train: {epoch} [{update:>4d}/{steps}] "
                 f"Loss: {loss_val / env.world_size:.3f} ({loss_sum / max(count, 1):.3f}) "
                 f"LR: {lr:.3e} Mem: {peak_memory_mib(env.device):.0f} "
                 f"Time: {step_m.val:.2f}s ({step_m.avg:.2f}s) Data: {data_m.val:.2f}s "
                 f"Speed: {speed:.1f} img/s ETA: {format_eta(left_epoch)} (run {format_eta(left_run)})")
    if run.search is not None:
        run.search.log_probs()
