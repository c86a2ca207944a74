"""Train / eval transforms, built with timm as the original's recipe.

ImageNet (and digits): random-resized crop (bicubic or bilinear), horizontal flip, RandAugment when `--aa` is set
(colour jitter only without it; a `rand-*` policy runs the original's RandAugment, `rand_augment.py`, unless
`--aa-impl timm`), to tensor, normalise, random erasing. Eval: resize to size/crop_pct, centre crop.
CIFAR as the original: random crop 32 with 4-pixel padding, horizontal flip, normalise, optional cutout.
"""
from __future__ import annotations

from argparse import Namespace
from typing import Callable

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment as timm_auto_augment
from timm.data import create_transform
from torchvision import transforms as T

from .errors import DataError
from .rand_augment import posterize_bits, rand_augment_transform


class Cutout:
    """Zero the rows and columns `c - length // 2` to `c + length // 2 - 1` (clipped at the borders) around a random
    pixel `c` of a CHW tensor, as the original: a `length` x `length` square, one pixel less each way for an odd
    `length`."""

    def __init__(self, length: int):
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        y, x = np.random.randint(h), np.random.randint(w)
        half = self.length // 2
        img = img.clone()
        img[..., max(y - half, 0):min(y + half, h), max(x - half, 0):min(x + half, w)] = 0
        return img


def _cifar_transform(cfg: Namespace, training: bool) -> Callable:
    steps: list[Callable] = []
    if training:
        steps += [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(cfg.hflip)]
    if cfg.img_size != 32:
        mode = T.InterpolationMode.BICUBIC if cfg.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
        steps.append(T.Resize(cfg.img_size, interpolation=mode))
    steps += [T.ToTensor(), T.Normalize(cfg.image_mean, cfg.image_std)]
    if training and cfg.cutout_length:
        steps.append(Cutout(cfg.cutout_length))
    return T.Compose(steps)


def _own_rand_augment(aa: str | None, impl: str) -> bool:
    """Whether `--aa` runs the original's RandAugment (``rand_augment.py``) rather than timm's augmentations."""
    return bool(aa) and aa.startswith("rand") and impl == "original"


def check_auto_augment(aa: str | None, impl: str = "original") -> None:
    """Refuse an `--aa` policy string that the chosen implementation cannot parse (DataError naming the flag), by
    parsing it as :func:`build_transform` will."""
    if not aa:
        return
    try:
        if _own_rand_augment(aa, impl):
            rand_augment_transform(aa)
        else:
            create_transform(input_size=32, is_training=True, auto_augment=aa)
    except (ValueError, AssertionError, KeyError) as err:
        known = (" (policies: 'rand-m9-mstd0.5' as the recipe, or any 'rand-...'; 'augmix-...'; timm's "
                 "AutoAugment policies 'original', 'originalr', 'v0', 'v0r', '3a')"
                 if str(err).startswith("Unknown AA policy") else "")
        raise DataError(f"--aa {aa!r}: {err}{known}") from None


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's Posterize op, with 0 bits kept giving the black image it gave before Pillow 13 (which refuses 0 bits,
    so that a timm policy that draws it, e.g. `rand-m9-mstd0.5-inc1` at its top magnitude, ended the run)."""
    return posterize_bits(img, bits_to_keep)


def _with_posterize_of_zero_bits(transform: T.Compose) -> T.Compose:
    """`transform` with every timm augmentation op that posterizes using `_posterize` (RandAugment, AutoAugment's
    sub-policies, AugMix)."""
    for step in transform.transforms:
        ops = getattr(step, "ops", None) or [op for policy in getattr(step, "policy", []) for op in policy]
        for op in ops:
            if getattr(op, "aug_fn", None) is timm_auto_augment.posterize:
                op.aug_fn = _posterize
    return transform


def build_transform(cfg: Namespace, training: bool) -> Callable:
    """The PIL -> normalised float CHW tensor transform for one split (cfg holds resolved dataset defaults)."""
    if cfg.dataset in ("cifar10", "cifar100"):
        return _cifar_transform(cfg, training)
    common = dict(input_size=cfg.img_size, interpolation=cfg.interpolation,
                  mean=tuple(cfg.image_mean), std=tuple(cfg.image_std))
    if not training:
        return create_transform(is_training=False, crop_pct=cfg.crop_pct, **common)
    own_rand_augment = _own_rand_augment(cfg.aa, cfg.aa_impl)
    train = create_transform(
        is_training=True,
        scale=tuple(cfg.scale),
        ratio=tuple(cfg.ratio or (3 / 4, 4 / 3)),
        hflip=cfg.hflip,
        color_jitter=None if own_rand_augment else cfg.color_jitter or None,
        auto_augment=None if own_rand_augment else cfg.aa or None,
        re_prob=cfg.reprob,
        re_mode=cfg.remode,
        re_count=1,
        separate=own_rand_augment,
        **common,
    )
    if not own_rand_augment:
        return _with_posterize_of_zero_bits(train)
    # the original's RandAugment between flip and to-tensor, where timm puts its own (colour jitter stays off)
    crop_flip, _, to_tensor = train
    resample = Image.Resampling.BICUBIC if cfg.interpolation == "bicubic" else Image.Resampling.BILINEAR
    fill = tuple(min(255, round(255 * x)) for x in cfg.image_mean)
    return T.Compose([*crop_flip.transforms, rand_augment_transform(cfg.aa, fill, resample), *to_tensor.transforms])
