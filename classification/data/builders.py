"""Build the datasets, loaders and Mixup of a run from its config (`cfg`: the flags of tools/train.py)."""
from __future__ import annotations

import logging
from argparse import Namespace
from typing import Optional, Sequence

from torch.utils.data import DataLoader, Dataset

from .defaults import note_filled_from_dataset, resolve_dataset_defaults
from .errors import DataError
from .image_list import build_imagenet, build_imagenet_val
from .loader import build_loader, loader_workers, usable_cpus
from .mixup import OriginalMixup
from .small_datasets import build_cifar, build_cifar_test, build_digits
from .transforms import build_transform

logger = logging.getLogger("localmamba.data")


def build_datasets(cfg: Namespace, channels: int = 3) -> tuple[Dataset, Dataset]:
    """Untransformed train and val datasets of `cfg.dataset` for a model of `channels` input channels (3: RGB
    images, 1: gray); fills unset data flags (`resolve_dataset_defaults`) and `num_classes` in `cfg`."""
    resolve_dataset_defaults(cfg, channels)
    if cfg.dataset == "imagenet":
        train, val = build_imagenet(cfg.data_path, channels)
    elif cfg.dataset in ("cifar10", "cifar100"):
        train, val = build_cifar(cfg.data_path, cfg.dataset, channels)
    elif cfg.dataset == "digits":
        train, val = build_digits(cfg.img_size, channels=channels)
    else:
        raise DataError(f"unknown dataset {cfg.dataset!r}")
    _set_num_classes(cfg, train.num_classes, training=True)
    return train, val


def build_eval_dataset(cfg: Namespace, classes: Optional[Sequence[str]] = None, channels: int = 3) -> Dataset:
    """The untransformed val dataset of `cfg.dataset`, without building the train set; fills defaults and decodes
    for `channels` as above. `classes` (the class names a checkpoint was trained with) fix the labels of a
    class-folder tree."""
    resolve_dataset_defaults(cfg, channels)
    if cfg.dataset == "imagenet":
        val = build_imagenet_val(cfg.data_path, cfg.num_classes, classes, channels)
    elif cfg.dataset in ("cifar10", "cifar100"):
        val = build_cifar_test(cfg.data_path, cfg.dataset, channels)
    elif cfg.dataset == "digits":
        _, val = build_digits(cfg.img_size, channels=channels)
    else:
        raise DataError(f"unknown dataset {cfg.dataset!r}")
    _set_num_classes(cfg, val.num_classes)
    return val


def _set_num_classes(cfg: Namespace, found: int, training: bool = False) -> None:
    """Set `cfg.num_classes` to the dataset's `found` classes; an explicit value below it is refused, one above it
    logged when `training` (its extra outputs get no training data)."""
    where = cfg.data_path or cfg.dataset
    if cfg.num_classes is not None:
        if cfg.num_classes < found:
            raise DataError(f"--num-classes {cfg.num_classes} is fewer than the {found} classes of {where}: "
                            f"its labels would not fit the classifier")
        if training and cfg.num_classes > found:
            logger.info(f"--num-classes {cfg.num_classes} is more than the {found} classes of {where}: outputs "
                        f"{found} to {cfg.num_classes - 1} have no training data")
        return
    if found < 2:
        raise DataError(f"{where}: {found} class found; classification needs at least 2")
    cfg.num_classes = found
    note_filled_from_dataset(cfg, ["num_classes"])


def class_summary(dataset: Dataset, shown: int = 10) -> str:
    """One log line of a dataset's classes: their count, and the first `shown` names when the data has names."""
    names = getattr(dataset, "classes", None)
    if not names:
        return f"Classes: {dataset.num_classes}"
    more = ", ..." if len(names) > shown else ""
    return f"Classes: {len(names)} ({', '.join(names[:shown])}{more})"


def build_loaders(cfg: Namespace, train: Optional[Dataset], val: Dataset, world_size: int, rank: int,
                  pin_memory: bool = False) -> tuple[Optional[DataLoader], DataLoader]:
    """Train loader (None when `train` is None) and val loader for this rank, pinning their batches when
    `pin_memory` (give it for a CUDA device only); logs when -j is cut to the CPUs."""
    workers = loader_workers(cfg.workers)
    if workers < cfg.workers:
        logger.info(
            f"-j {cfg.workers}: this process may use {usable_cpus()} CPUs, so each loader starts {workers} worker "
            f"processes")
    _note_unused_on_cifar(cfg, training=train is not None)
    train_loader = None
    if train is not None:
        train_loader = build_loader(train, build_transform(cfg, training=True), cfg.batch_size, cfg.workers,
                                    True, world_size, rank, cfg.seed, pin_memory)
        if len(train_loader) < cfg.grad_accum_steps:
            step = "one batch" if cfg.grad_accum_steps == 1 else f"--grad-accum-steps {cfg.grad_accum_steps} batches"
            fit = len(train) // (world_size * cfg.grad_accum_steps)
            remedy = (f"give -b {fit} or less" if fit else "use fewer processes") + (
                " (or fewer --grad-accum-steps)" if cfg.grad_accum_steps > 1 else "")
            raise DataError(f"{len(train)} training images are fewer than {step} of {cfg.batch_size} on each of "
                            f"{world_size} process(es): {remedy}")
    val_batch = max(1, int(cfg.batch_size * cfg.val_batch_size_multiplier))
    val_loader = build_loader(val, build_transform(cfg, training=False), val_batch, cfg.workers, False,
                              world_size, rank, cfg.seed, pin_memory)
    return train_loader, val_loader


def _note_unused_on_cifar(cfg: Namespace, training: bool) -> None:
    """Warn of the flags set for a CIFAR run that its transforms (the original's) do not apply: when `training`, the
    augmentation flags the random crop with padding, flip and --cutout-length leave out, e.g. the recipe config's `aa`
    and `reprob`, and the random-resized-crop range `--scale` / `--ratio` (no CIFAR default fills them, so only a
    user's value warns); always, a `--crop-pct` below 1 (the evaluation takes the whole image, no centre crop)."""
    if cfg.dataset not in ("cifar10", "cifar100"):
        return
    unused = [f"--{key.replace('_', '-')} {_flag_value(getattr(cfg, key))}"
              for key in ("aa", "reprob", "color_jitter", "scale", "ratio") if training and getattr(cfg, key)]
    if unused:
        logger.warning(f"--dataset {cfg.dataset} trains with the original's CIFAR transform (random crop with 4-pixel "
                       f"padding, flip, --cutout-length): {', '.join(unused)} not applied")
    if cfg.crop_pct not in (None, 1.0):
        logger.warning(f"--dataset {cfg.dataset} evaluates the whole image, as the original's CIFAR transform does "
                       f"(no centre crop): --crop-pct {cfg.crop_pct} not applied")


def _flag_value(value: object) -> str:
    """A flag's value as the command line writes it (a list as its space-separated items)."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def build_mixup(cfg: Namespace) -> Optional[OriginalMixup]:
    """Mixup/CutMix (timm's, with the original's CutMix boxes) with label smoothing when `--mixup`, `--cutmix` or
    `--cutmix-minmax` is set, else None. A `--cutmix-minmax` that leaves no box side to draw at `--img-size` is
    refused (a DataError naming the flag)."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0 and cfg.cutmix_minmax is None:
        return None
    if cfg.cutmix_minmax is not None:
        low, high = (int(cfg.img_size * ratio) for ratio in cfg.cutmix_minmax)
        if low >= high:  # the box side is drawn from range(low, high)
            raise DataError(f"--cutmix-minmax {_flag_value(cfg.cutmix_minmax)}: at --img-size {cfg.img_size} "
                            f"no CutMix box side lies in [{low}, {high}) pixels: give a max one pixel "
                            f"(1/{cfg.img_size}) or more above the min")
    return OriginalMixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                         prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                         label_smoothing=cfg.smoothing, num_classes=cfg.num_classes)
