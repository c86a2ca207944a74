"""Knowledge distillation on the logits (`--kd`), the original toolbox's logit methods and flags.

The training loss of a distilled run is `--ori-loss-weight` x the run's own loss on the student's logits (label
smoothing or mixup's soft targets included) + `--kd-loss-weight` x the distillation loss between the student's and the
teacher's logits. Methods: `kd` (KL divergence at temperature 4), `kdt<tau>` (at temperature tau, e.g. `kdt4`),
`dist` (DIST with beta = gamma = tau = 1) and `dist_t<tau>`. The teacher (`--teacher-model`, weights from
`--teacher-ckpt`) sees the same (mixed) batch as the student, under the same autocast, in eval mode and without
gradients; it is no part of the model that is trained, wrapped in DDP, averaged by the EMA or saved.

The original's feature methods (`mse`, `diffkd`) and its `--teacher-module` / `--student-module` / `--kd-loss-kwargs`
hook CNN modules named in its table of ResNets, MobileNets and Swins, none of them a model of this code: refused.
"""
from __future__ import annotations

import logging
import math
from argparse import Namespace
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..common.checkpoint_io import CheckpointError, load_checkpoint_on_all_ranks, state_dict_from
from ..data.image_decoding import channels_name
from ..models.directions import checkpoint_candidates, directions_difference
from ..models.factory import SUPERNET_FINAL_MODELS, input_channels
from .checkpoint import check_same_model, flag_value, load_at_model_size
from .config import ConfigError
from .distributed import DistEnv
from .evaluate import validate
from .experiment import replaced_run_file
from .flags import FEATURE_DISTILLATION
from .model_builder import (UnknownModelError, check_kwargs_taken, config_kwargs_taken, create_model_at_size,
                            image_channels, resolve_model_name)
from .resume import class_folders_difference

LOGIT_METHODS = "kd, kdt<tau> (e.g. kdt4), dist or dist_t<tau>"
FEATURE_METHODS = ("mse", "diffkd")


class KLDivergence(nn.Module):
    """KL(teacher || student) of the logits' softmax at temperature `tau`, times tau^2, summed over the classes and
    averaged over the batch ('batchmean'), as the original's `kd` / `kdt<tau>`."""

    def __init__(self, tau: float = 4.0):
        super().__init__()
        self.tau = tau

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes) of both; returns a scalar."""
        student_log_probs = F.log_softmax(student_logits / self.tau, dim=1)
        teacher_probs = F.softmax(teacher_logits.detach() / self.tau, dim=1)
        return self.tau ** 2 * F.kl_div(student_log_probs, teacher_probs, reduction="batchmean")


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b` (rows, columns); eps is added to the product
    of the norms, as in the original."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DIST(nn.Module):
    """DIST (Huang et al., 2022): one minus the mean Pearson correlation of the student's and teacher's class
    probabilities at temperature `tau`, per image (inter-class, weight `beta`) and per class over the batch
    (intra-class, weight `gamma`), each times tau^2."""

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0):
        super().__init__()
        self.beta, self.gamma, self.tau = beta, gamma, tau

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes) of both; returns a scalar."""
        student_probs = (student_logits / self.tau).softmax(dim=1)
        teacher_probs = (teacher_logits / self.tau).softmax(dim=1)
        inter = 1 - _pearson_rows(student_probs, teacher_probs).mean()
        intra = 1 - _pearson_rows(student_probs.t(), teacher_probs.t()).mean()
        return self.tau ** 2 * (self.beta * inter + self.gamma * intra)


def _temperature(method: str, prefix: str) -> float:
    """The tau of `method` named `<prefix><tau>`; ConfigError when it is not a positive finite number."""
    try:
        tau = float(method[len(prefix):])
    except ValueError:
        tau = math.nan
    if not math.isfinite(tau) or tau <= 0:
        raise ConfigError(f"--kd {method}: the temperature after {prefix!r} must be a positive number (e.g. "
                          f"{prefix}4)")
    return tau


def distillation_loss(method: str) -> nn.Module:
    """The loss of logit method `method` (`LOGIT_METHODS`), called as loss(student_logits, teacher_logits); a
    feature method or an unknown name raises ConfigError."""
    if method in FEATURE_METHODS:
        raise ConfigError(f"--kd {method}: the original's {FEATURE_DISTILLATION} is not part of this code; give a "
                          f"logit method: {LOGIT_METHODS}")
    if method == "kd":
        return KLDivergence(tau=4.0)
    if method == "dist":
        return DIST(beta=1.0, gamma=1.0, tau=1.0)
    if method.startswith("dist_t"):
        return DIST(beta=1.0, gamma=1.0, tau=_temperature(method, "dist_t"))
    if method.startswith("kdt"):
        return KLDivergence(tau=_temperature(method, "kdt"))
    raise ConfigError(f"--kd {method}: unknown distillation method; give {LOGIT_METHODS}")


def _settings(kwargs: Mapping[str, Any]) -> str:
    """Keyword arguments as --teacher-model-kwargs reads them (`depth=2 embed_dim=16`), a table of scan directions
    as its count of layers."""
    return " ".join(f"{len(value)} layers of directions" if key == "directions" and isinstance(value, list)
                    else f"{key}={flag_value(value)}" for key, value in kwargs.items())


def check_distillation_flags(cfg: Namespace) -> None:
    """Refuse, before anything is built, a `--kd` method that is unknown or not on the logits, a run without its
    `--teacher-model` or `--teacher-ckpt`, a teacher name timm does not know, a `--teacher-model-kwargs` key it does
    not take (or the image size and class count, which are the run's), and the teacher flags or loss weights given
    without `--kd` (which they would not switch on)."""
    if not cfg.kd:
        teacher_kwargs = _settings(cfg.teacher_model_kwargs)
        given = [f"{flag} {value}" for flag, value, off in (
            ("--teacher-model", cfg.teacher_model, ""), ("--teacher-model-kwargs", teacher_kwargs, ""),
            ("--teacher-ckpt", cfg.teacher_ckpt, ""), ("--ori-loss-weight", cfg.ori_loss_weight, 1.0),
            ("--kd-loss-weight", cfg.kd_loss_weight, 1.0))
            if value != off]
        if given:
            raise ConfigError(f"{', '.join(given)}: distillation is off without --kd; give --kd {LOGIT_METHODS}, "
                              f"or drop {'it' if len(given) == 1 else 'them'}")
        return
    distillation_loss(cfg.kd)
    if not cfg.teacher_model:
        raise ConfigError(f"--kd {cfg.kd} distills from a teacher: give --teacher-model NAME and --teacher-ckpt FILE")
    try:
        name = resolve_model_name(cfg.teacher_model)
    except UnknownModelError as err:
        raise ConfigError(f"--teacher-model: {err}") from None
    check_kwargs_taken(name, cfg.teacher_model_kwargs, "--teacher-model-kwargs")
    for key, flag in (("img_size", "--img-size"), ("num_classes", "the run's classes")):
        if key in cfg.teacher_model_kwargs:
            raise ConfigError(f"--teacher-model-kwargs {key}: the teacher is built for {flag}, as the student, "
                              f"whose images it sees and whose logits it teaches: leave {key} out")
    if not cfg.teacher_ckpt:
        pretrained = ("--teacher-pretrained would download its weights, and nothing is downloaded here"
                      if cfg.teacher_pretrained else "a teacher of random weights teaches nothing")
        raise ConfigError(f"--kd {cfg.kd}: give the teacher's weights with --teacher-ckpt FILE (a checkpoint of "
                          f"{cfg.teacher_model}, e.g. a run's best.pth.tar); {pretrained}")


def check_teacher_outside_run(cfg: Namespace, folder: str) -> None:
    """Refuse a `--teacher-ckpt` that is one of the files the run in `folder` replaces or deletes as it trains
    (`replaced_run_file`): loaded at the start, it would be another teacher, or none, when the run is resumed from its
    args.yaml. A copy elsewhere, or a file of the folder the run never touches, is a teacher like any other."""
    name = replaced_run_file(cfg.teacher_ckpt, folder) if cfg.kd and cfg.teacher_ckpt else None
    if name is not None:
        raise ConfigError(f"--teacher-ckpt {cfg.teacher_ckpt} is the {name} of this run's folder {folder}, which the "
                          f"run replaces or deletes as it trains (a resume would load another teacher, or none): "
                          f"copy it out of the run folder and give the copy")


class Distillation:
    """The teacher of a distilled run and the loss that adds its distillation term to the run's own loss."""

    def __init__(self, teacher: nn.Module, method: str, ori_loss_weight: float, kd_loss_weight: float):
        self.teacher = teacher.eval().requires_grad_(False)
        self.kd_loss = distillation_loss(method)
        self.ori_loss_weight, self.kd_loss_weight = ori_loss_weight, kd_loss_weight

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (batch, classes) of `images` (batch, channels, height, width), without gradients; in
        eval mode whatever mode the training loop set."""
        self.teacher.eval()
        with torch.no_grad():
            return self.teacher(images)

    def loss(self, original_loss: torch.Tensor, student_logits: torch.Tensor,
             teacher_logits: torch.Tensor) -> torch.Tensor:
        """ori_loss_weight x `original_loss` (the run's loss of the student's logits) + kd_loss_weight x the
        distillation loss of the logits (batch, classes)."""
        return (self.ori_loss_weight * original_loss
                + self.kd_loss_weight * self.kd_loss(student_logits, teacher_logits))


def _recorded_kwargs(name: str, ckpt: dict) -> dict:
    """Keyword arguments that the checkpoint `ckpt` of teacher `name` records its run built it with: the recorded
    `model_kwargs` the teacher takes (but `img_size`), its scan directions and a supernet's search candidates (none
    for released weights, or weights saved by hand)."""
    config = ckpt.get("config")
    recorded = (config.get("model_kwargs") or {}) if isinstance(config, dict) else {}
    kwargs = config_kwargs_taken(name, recorded, warn=False)   # as its run dropped a config's keys for other models
    kwargs.pop("img_size", None)
    if isinstance(ckpt.get("directions"), list):
        kwargs["directions"] = ckpt["directions"]
    candidates = checkpoint_candidates(ckpt)
    if candidates is not None and name in SUPERNET_FINAL_MODELS:
        kwargs["candidates"] = list(candidates)
    return kwargs


def _given_over_record(given: Mapping[str, Any], recorded: Mapping[str, Any]) -> str:
    """What the build log line says of `--teacher-model-kwargs` (`given`): the keys, and the `recorded` values
    (`_recorded_kwargs`) they replace; '' when none is given."""
    if not given:
        return ""
    replaced = {key: recorded[key] for key in given if key in recorded and recorded[key] != given[key]}
    over = f" (over {_settings(replaced)}, which the file records)" if replaced else ""
    return f" with --teacher-model-kwargs {_settings(given)}{over}"


def _check_teacher_record(name: str, ckpt: dict, path: str, teacher: Optional[nn.Module] = None) -> None:
    """Refuse a teacher checkpoint whose scan-direction record does not fit `--teacher-model` `name` (possible when
    it records no model name: weights saved by hand), naming the teacher model that fits where it can: before the
    teacher is built, fixed directions for a search supernet or a supernet's record (`directions` None) for the
    model its search trains; with the built `teacher`, any other difference (`directions_difference`)."""
    if "directions" not in ckpt:
        return
    saved = ckpt["directions"]
    supernets = [key for key, final in SUPERNET_FINAL_MODELS.items() if final == name]
    if teacher is None and saved is not None and name in SUPERNET_FINAL_MODELS:
        raise CheckpointError(f"--teacher-ckpt {path} holds a model of fixed scan directions, --teacher-model {name} "
                              f"is a search supernet: give --teacher-model {SUPERNET_FINAL_MODELS[name]}")
    if teacher is None and saved is None and supernets:
        raise CheckpointError(f"--teacher-ckpt {path} holds a search supernet (it records no fixed scan directions), "
                              f"--teacher-model {name} has fixed ones: give --teacher-model {supernets[0]}")
    where = directions_difference(teacher, ckpt) if teacher is not None else None
    if where is not None:
        raise CheckpointError(f"--teacher-ckpt {path} records other scan directions than --teacher-model {name} has "
                              f"({where}), built as the file records: give the --teacher-model it is a checkpoint of")


def _build_teacher(cfg: Namespace, name: str, recorded: dict, path: str, device: torch.device) -> nn.Module:
    """`--teacher-model` `name` built for the run's image size and classes with `--teacher-model-kwargs` over what
    its checkpoint records (`recorded`: `_recorded_kwargs`), the global random streams left as they were; keywords
    that cannot build it (directions of another depth where the file keeps no `model_kwargs`) are one
    CheckpointError saying what the teacher was built with."""
    kwargs = {**recorded, **cfg.teacher_model_kwargs}
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return create_model_at_size(name, cfg.img_size, **kwargs, num_classes=cfg.num_classes)
    except (TypeError, ValueError) as err:
        how = ("with --teacher-model-kwargs over what the file records" if cfg.teacher_model_kwargs
               else "as the file records its run built it")
        raise CheckpointError(f"--teacher-ckpt {path}: --teacher-model {name} cannot be built {how} "
                              f"({_settings(kwargs) or 'no model_kwargs, no directions'}): {err}; give the "
                              f"model_kwargs its run was trained with as --teacher-model-kwargs KEY=VALUE ..., or a "
                              f"checkpoint its run saved (e.g. best.pth.tar) or tools/convert_ckpt.py's file of one, "
                              f"which records them") from None


def _warn_of_other_normalization(cfg: Namespace, ckpt: dict, path: str, log: logging.Logger) -> None:
    """Warn when the teacher's run (its checkpoint's config; none recorded: no warning) normalized its images with
    another `--image-mean` / `--image-std` than this run: the teacher sees this run's images, as they are."""
    config = ckpt.get("config")
    if not isinstance(config, dict):
        return
    given = {key: config.get(key) for key in ("image_mean", "image_std")}
    if all(value is None or list(value) == list(getattr(cfg, key)) for key, value in given.items()):
        return
    log.warning(f"--teacher-ckpt {path}: its run normalized the images with --image-mean {given['image_mean']} "
                f"--image-std {given['image_std']}, this run with {list(cfg.image_mean)} {list(cfg.image_std)}: "
                f"the teacher sees this run's images")


def build_distillation(cfg: Namespace, device: torch.device, log: logging.Logger,
                       classes: Optional[list[str]] = None) -> Distillation:
    """The teacher `--teacher-model` built for the run's classes and image size, as its checkpoint `--teacher-ckpt`
    (training or released form, read `weights_only` unless --trust-checkpoint) records its run built it
    (`_recorded_kwargs`) with `--teacher-model-kwargs` over that record, loaded strictly from it onto `device`. A
    checkpoint of another model, weights that do not fit, a teacher trained on other class folders than the run's
    `classes` (None: not known, no check) and a teacher of other input channels than the run's images raise one line
    naming the teacher flags. The global random streams are left as they were, so that a distilled run draws what the
    same run without a teacher draws."""
    name = resolve_model_name(cfg.teacher_model)
    path = cfg.teacher_ckpt
    try:
        ckpt = load_checkpoint_on_all_ranks(path, trust=cfg.trust_checkpoint)
    except CheckpointError as err:
        raise CheckpointError(f"--teacher-ckpt: {err}") from None
    saved_name = ckpt.get("model_name")
    if saved_name is not None and saved_name != name:
        raise CheckpointError(f"--teacher-ckpt {path} is a checkpoint of {saved_name}, not of the teacher {name}: "
                              f"give --teacher-model {saved_name}")
    difference = class_folders_difference(ckpt.get("classes"), classes)
    if difference is not None:
        raise CheckpointError(f"--teacher-ckpt {path} was trained on other class folders than this run's data "
                              f"({difference}): its logits would stand for other classes; give a teacher trained on "
                              f"these classes")
    _check_teacher_record(name, ckpt, path)
    recorded = _recorded_kwargs(name, ckpt)
    teacher = _build_teacher(cfg, name, recorded, path, device)
    _check_teacher_record(name, ckpt, path, teacher)
    built_with = _given_over_record(cfg.teacher_model_kwargs, recorded)
    try:
        check_same_model(teacher, name, ckpt, path)
        load_at_model_size(teacher, state_dict_from(ckpt, source=path), path)
    except CheckpointError as err:
        unrecorded = ("" if isinstance(ckpt.get("config"), dict) else "; the file records no model_kwargs: weights "
                      "of another size of it need those they were trained with, as --teacher-model-kwargs KEY=VALUE")
        raise CheckpointError(f"--teacher-ckpt: {err} (the teacher is --teacher-model {name}, built for "
                              f"{cfg.num_classes} classes{built_with}{unrecorded})") from None
    channels = image_channels(cfg)
    if input_channels(teacher) != channels:
        raise ConfigError(f"--teacher-ckpt {path} holds a teacher of {channels_name(input_channels(teacher))} images, "
                          f"the run's model takes {channels_name(channels)} ones, which the teacher sees: give a "
                          f"teacher trained on {channels_name(channels)} images (model_kwargs in_chans={channels})")
    _warn_of_other_normalization(cfg, ckpt, path, log)
    params = sum(p.numel() for p in teacher.parameters())
    log.info(f"Distillation --kd {cfg.kd}: teacher {name} from {path}{built_with}, params: {params / 1e6:.3f} M; "
             f"loss = {cfg.ori_loss_weight} x the run's loss + {cfg.kd_loss_weight} x the distillation loss")
    return Distillation(teacher.to(device), cfg.kd, cfg.ori_loss_weight, cfg.kd_loss_weight)


def log_teacher_accuracy(distillation: Distillation, val_loader: DataLoader, loss_fn: Callable, env: DistEnv,
                         log: logging.Logger, amp: bool, amp_dtype: Optional[str],
                         stop: Optional[Callable[[], Optional[int]]] = None) -> None:
    """Validate the teacher once, as the original does before training, and log its top-1 (a wrong checkpoint or
    another class order shows here); `amp`: under autocast, as `--amp-eval` validates the student. `stop` (the run's
    `StopSignals.agreed`) ends the validation with `ValidationStopped`, as `validate` does."""
    metrics = validate(distillation.teacher, val_loader, loss_fn, env, None, log, amp=amp, amp_dtype=amp_dtype,
                       suffix="(teacher)", stop=stop)
    log.info(f"Top-1 accuracy of the teacher: {metrics['top1']:.3f}%")
