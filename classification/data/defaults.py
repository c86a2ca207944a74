"""Per-dataset defaults for flags left unset (None / empty) on the command line and in the config."""
from __future__ import annotations

from argparse import Namespace
from typing import Any, Sequence

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# ImageNet statistics are timm's constants; timm ships none for CIFAR, so these are the training set's own.
CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "imagenet": dict(data_path="data/imagenet", img_size=224, crop_pct=0.875, hflip=0.5, scale=(0.08, 1.0),
                     image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD),
    # no scale: the CIFAR transform (the original's random crop with padding) has no random-resized crop
    "cifar10": dict(data_path="data/cifar", img_size=32, crop_pct=1.0, hflip=0.5,
                    image_mean=CIFAR_MEAN, image_std=CIFAR_STD),
    "cifar100": dict(data_path="data/cifar", img_size=32, crop_pct=1.0, hflip=0.5,
                     image_mean=CIFAR_MEAN, image_std=CIFAR_STD),
    # handwritten digits are not mirror-symmetric and only 8x8 pixels: no flip, mild crops
    "digits": dict(data_path="", img_size=32, crop_pct=1.0, hflip=0.0, scale=(0.6, 1.0),
                   image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)),
}


# The flags that a dataset fills when unset: its defaults above, and `num_classes` from its data.
DATASET_FILLED_FLAGS = frozenset({key for defaults in DATASET_DEFAULTS.values() for key in defaults} | {"num_classes"})


def filled_alike(dataset: str, other: str) -> set[str]:
    """The flags that `dataset` and `other` fill with the same default (cifar10 and cifar100: all but the class
    count, which their data gives); none for a name that is no dataset (the parser refuses it later)."""
    mine, theirs = DATASET_DEFAULTS.get(dataset, {}), DATASET_DEFAULTS.get(other, {})
    return {key for key, value in mine.items() if key in theirs and theirs[key] == value}


# The per-channel normalisation flags: a dataset's defaults hold one value per RGB channel.
NORMALIZATION_FLAGS = ("image_mean", "image_std")


def channel_defaults(rgb_values: Sequence[float], channels: int) -> tuple[float, ...]:
    """A dataset's per-channel default (`rgb_values`, one per RGB channel) for images of `channels` channels: as it is
    for 3, the mean of the three for 1 (gray images: ImageNet's mean 0.449 and std 0.226)."""
    return tuple(rgb_values) if channels == 3 else (sum(rgb_values) / len(rgb_values),)


def resolve_dataset_defaults(cfg: Namespace, channels: int = 3) -> None:
    """Fill unset data flags of `cfg` in place with the dataset's defaults (`note_filled_from_dataset`), the
    normalisation for images of `channels` channels (`channel_defaults`). A mean or std that a dataset filled with
    another number of values (an args.yaml of a run of the other channel count) is filled again."""
    filled = []
    for key, value in DATASET_DEFAULTS[cfg.dataset].items():
        current = getattr(cfg, key)
        if key in NORMALIZATION_FLAGS:
            value = channel_defaults(value, channels)
            if key in getattr(cfg, "filled_from_dataset", ()) and current is not None and len(current) != channels:
                current = None
        if current in (None, ""):
            setattr(cfg, key, list(value) if isinstance(value, tuple) else value)
            filled.append(key)
    note_filled_from_dataset(cfg, filled)


def note_filled_from_dataset(cfg: Namespace, keys: list[str]) -> None:
    """Add `keys` to `cfg.filled_from_dataset`, the flags whose values the dataset filled: a run's args.yaml lists
    them, so that `-c args.yaml --dataset OTHER` has OTHER fill them again rather than keep the first one's."""
    cfg.filled_from_dataset = sorted({*getattr(cfg, "filled_from_dataset", ()), *keys})
