"""Validation loop (top-1 / top-5 / loss, summed over ranks) and the `tools/test.py` entry point.

Evaluation runs in fp32, as the original's, even for a model trained with `--amp`; `--amp-eval` evaluates under
autocast instead.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from argparse import Namespace
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn
from localmamba_kernel_runtime.settings import check_settings
from timm.utils import AverageMeter, accuracy
from torch.utils.data import DataLoader

from ..common.checkpoint_io import (CheckpointError, load_checkpoint_on_all_ranks, saved_epoch_position,
                                    state_dict_from)
from ..common.signals import interrupt_on_stop_signals
from ..data import build_eval_dataset, build_loaders, class_summary
from ..data.loader import lost_worker_as_data_error
from .amp import autocast, log_precision
from .checkpoint import INPUT_FLAGS, load_at_model_size, load_evaluated_weights
from .config import ConfigError
from .distributed import DistEnv, agreed_setup, all_reduce, all_reduce_sum, init_distributed, shutdown
from .logs import ProgressBar, StepTimes, format_eta, setup_logging, start_log_file
from .model_builder import build_model, canonical_model_name, check_input_size, image_channels
from .resume import read_alike_on_every_rank


class FixedBatch(nn.Module):
    """``net`` run on batches of exactly ``batch_size`` images: a smaller (last) batch is padded with zeros and its
    outputs cut back, so that a compiled ``net`` sees one input shape (one compilation, one CUDA graph, where the
    last batch compiled it again). Exact in eval mode, where each image's output depends on that image alone."""

    def __init__(self, net: nn.Module, batch_size: int):
        super().__init__()
        self.net = net
        self.batch_size = batch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, ...) with B <= batch_size -> the outputs of ``net``, (B, ...)."""
        missing = self.batch_size - images.shape[0]
        if missing <= 0:
            return self.net(images)
        return self.net(torch.cat([images, images.new_zeros(missing, *images.shape[1:])]))[:images.shape[0]]


class ValidationStopped(Exception):
    """A validation ended early by the stop signal `signum`, which every rank agreed on."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def log_top5_meaning(log: logging.Logger, num_classes: int) -> None:
    """Say that top-5 accuracy measures nothing for a model of 5 or fewer classes (timm's accuracy takes the top
    min(5, classes): every image counts as right)."""
    if num_classes <= 5:
        log.info(f"The model has {num_classes} classes: its top-5 accuracy is 100 % by definition")


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, loss_fn: Callable, env: DistEnv, epoch: int | None,
             log: logging.Logger, log_interval: int = 50, amp: bool = False, amp_dtype: Optional[str] = None,
             suffix: str = "", stop: Optional[Callable[[], Optional[int]]] = None) -> dict:
    """Evaluate `model` on this rank's share of `loader`; returns `test_loss`, `top1`, `top5` over all ranks. `epoch`
    labels the log lines (None: weights of no epoch, a released file).

    `stop` (a training run's `StopSignals.agreed`) is called by every rank after each batch that all ranks have (their
    shares may differ by the last batch); a signal it returns ends the validation there with `ValidationStopped`."""
    model.eval()
    loss_m, top1_m, top5_m, batch_m = AverageMeter(), AverageMeter(), AverageMeter(), StepTimes()
    steps = len(loader)
    steps_of_all = -int(all_reduce([-steps], env.device, "max")[0]) if stop is not None else 0  # fewest of any rank
    bar = ProgressBar(steps, f"test{suffix}", enabled=env.is_main)
    correct1 = correct5 = 0     # exact counts: timm's float32 percentages summed drift with the batch size
    start = time.time()
    try:
        for idx, (images, target) in enumerate(loader):
            images = images.to(env.device, non_blocking=True)
            target = target.to(env.device, non_blocking=True)
            with autocast(env.device, amp, amp_dtype):
                output = model(images)
            output = output.float()
            loss = loss_fn(output, target)
            n = images.shape[0]
            batch_loss, acc1, acc5 = torch.stack([loss, *accuracy(output, target, topk=(1, 5))]).tolist()  # one sync
            loss_m.update(batch_loss, n)
            top1_m.update(acc1, n)
            top5_m.update(acc5, n)
            correct1 += round(acc1 * n / 100)
            correct5 += round(acc5 * n / 100)
            batch_m.update(time.time() - start)
            eta = format_eta((steps - idx - 1) * batch_m.avg)
            if idx % log_interval == 0 or idx == steps - 1:
                log.info(f"Test{suffix}: {'' if epoch is None else f'{epoch} '}[{idx:>4d}/{steps}] "
                         f"Loss: {loss_m.val:.3f} ({loss_m.avg:.3f}) "
                         f"Top-1: {top1_m.val:.3f}% ({top1_m.avg:.3f}%) "
                         f"Top-5: {top5_m.val:.3f}% ({top5_m.avg:.3f}%) "
                         f"Time: {batch_m.val:.2f}s ETA: {eta}")
            bar.update(idx + 1, f"top-1 {top1_m.avg:.2f}% ETA {eta}")
            signum = stop() if idx < steps_of_all else None
            if signum is not None:
                raise ValidationStopped(signum)
            start = time.time()
    finally:
        bar.close()
    loss_sum, c1_sum, c5_sum, count = all_reduce_sum([loss_m.sum, correct1, correct5, loss_m.count], env.device)
    count = max(count, 1)
    metrics = {"test_loss": loss_sum / count, "top1": 100 * c1_sum / count, "top5": 100 * c5_sum / count}
    if env.world_size > 1:      # the lines above are rank 0's share
        log.info(f"Test{suffix}: {'' if epoch is None else f'{epoch} '}all {env.world_size} processes, "
                 f"{round(count)} images: Loss: {metrics['test_loss']:.3f} Top-1: {metrics['top1']:.3f}% "
                 f"Top-5: {metrics['top5']:.3f}%")
    return metrics


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def other_inputs(cfg: Namespace, saved: Mapping[str, Any]) -> list[str]:
    """`--flag run's -> this evaluation's` for each input flag (`INPUT_FLAGS`) whose value differs from the one the
    checkpoint's run (config `saved`) validated with; empty for a released file, which records none."""
    return [f"--{key.replace('_', '-')} {_plain(saved[key])} -> {_plain(getattr(cfg, key))}" for key in INPUT_FLAGS
            if saved.get(key) is not None and _plain(saved[key]) != _plain(getattr(cfg, key))]


def test(cfg: Namespace) -> dict:
    """Evaluate the checkpoint `cfg.resume` (training or released form); also its EMA weights with --model-ema, whose
    metrics are then returned (each result is logged on a line of its own, `Model: {...}` and `EMA: {...}`)."""
    if not cfg.resume or cfg.resume == "auto":
        raise ConfigError("tools/test.py needs --resume CHECKPOINT (a path; 'auto' is tools/train.py's)")
    env = init_distributed(cfg.device, cfg.slurm, cfg.dist_port, cfg.threads)
    try:
        with agreed_setup("checking its settings"):  # the kernel settings come from each node's environment
            check_settings(env.device)
        _, ckpt = read_alike_on_every_rank(      # a node without the file: one line on every rank, no wait
            lambda: (cfg.resume, None, load_checkpoint_on_all_ranks(cfg.resume, trust=cfg.trust_checkpoint)))
        weights = state_dict_from(ckpt, source=cfg.resume)
        try:
            ema_weights = state_dict_from(ckpt, "ema_model", source=cfg.resume) if cfg.model_ema else None
        except CheckpointError as err:
            raise CheckpointError(f"{err}: evaluate its weights alone with --no-model-ema (a config's "
                                  f"'model_ema: true' asks for the EMA's)") from None
        log = setup_logging(os.path.join(cfg.output, cfg.experiment), env.is_main, prefix="eval")
        with agreed_setup("setting up its data and model"):  # each rank's own, before validate's collectives
            val_set = build_eval_dataset(cfg, ckpt.get("classes"), image_channels(cfg))
            _, val_loader = build_loaders(cfg, None, val_set, env.world_size, env.rank,
                                          pin_memory=env.device.type == "cuda")
            model = build_model(cfg)
            check_input_size(model, cfg)
            load_evaluated_weights(model, canonical_model_name(cfg.model), cfg.model_kwargs, ckpt, weights, cfg.resume)
            model.to(env.device)
            net = model
            if cfg.compile is not None:     # shares model's weights; every batch at one shape: one compilation
                shape = min(val_loader.batch_size, len(val_loader.sampler))    # no padding beyond this rank's images
                net = FixedBatch(torch.compile(model, mode=cfg.compile), shape)
        changed = other_inputs(cfg, ckpt.get("config") or {})
        if changed:
            log.warning(f"{cfg.resume} was validated by its run with other inputs than these ({', '.join(changed)}): "
                        f"the accuracy is of other images; give its run's values (or -c its args.yaml) to evaluate "
                        f"as it was trained")
        epoch = ckpt.get("epoch")
        stopped = f", stopped after {saved_epoch_position(ckpt, False)}" if ckpt.get("step") is not None else ""
        what = "released weights" if epoch is None else f"epoch {epoch}{stopped}"
        log.info(f"Loaded {cfg.resume} ({what}) into {cfg.model}")
        log_precision(log, env.device, None, cfg.amp_eval, cfg.amp_dtype)
        log.info(f"Evaluating on the {len(val_set)} images of {cfg.data_path or cfg.dataset} (val) at --img-size "
                 f"{cfg.img_size}, --crop-pct {cfg.crop_pct}, --interpolation {cfg.interpolation}, in batches of "
                 f"{val_loader.batch_size} on {env.world_size} process(es)")
        log.info(class_summary(val_set))
        log_top5_meaning(log, cfg.num_classes)
        start_log_file(log)  # the inputs are checked: an evaluation refused before this leaves no eval log
        loss_fn = nn.CrossEntropyLoss()
        common = dict(log_interval=cfg.log_interval, amp=cfg.amp_eval, amp_dtype=cfg.amp_dtype)
        with interrupt_on_stop_signals(), lost_worker_as_data_error():
            try:
                metrics = validate(net, val_loader, loss_fn, env, epoch, log, **common)
                log.info(f"{'Model: ' if ema_weights is not None else ''}{metrics}")
                if ema_weights is not None:
                    load_at_model_size(model, ema_weights, cfg.resume)
                    metrics = validate(net, val_loader, loss_fn, env, epoch, log, suffix="(EMA)", **common)
                    log.info(f"EMA: {metrics}")
            except KeyboardInterrupt as stop:
                by = signal.Signals(getattr(stop, "signum", signal.SIGINT)).name
                log.warning(f"Evaluation stopped by {by}: no result (the running figures above are of part of the "
                            f"images)")
                raise
        return metrics
    finally:
        shutdown()
