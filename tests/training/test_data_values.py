"""What the data pipeline computes, checked against hand-computed values or torch's own: eval normalisation,
per-epoch augmentation seeds, the labels of a val tree missing a class, the interpolation and random-erasing flags,
and the sampler's shards."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DistributedSampler
from torchvision import transforms as T

from classification.common.rng import sample_seed
from classification.data import ShardedSampler, build_datasets, build_eval_dataset
from classification.data.defaults import resolve_dataset_defaults
from classification.data.loader import SeededTransformDataset
from classification.data.transforms import build_transform
from classification.engine.config import parse_args

from training_helpers import write_image


def cfg_for(*argv):
    cfg = parse_args(["-j", "0", *argv])
    resolve_dataset_defaults(cfg)
    return cfg


GREY = Image.new("RGB", (24, 24), (128, 128, 128))


@pytest.mark.parametrize("flags, mean, std", [
    ((), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet defaults
    (("--image-mean", "0.2", "0.5", "0.7", "--image-std", "0.3", "0.6", "0.9"), (0.2, 0.5, 0.7), (0.3, 0.6, 0.9)),
])
def test_eval_transform_normalises_with_mean_then_std(flags, mean, std):
    """Guards against the eval transform passing mean and std swapped (or mixed up) to the normalisation: a grey
    128 image must become (128/255 - mean) / std per channel."""
    out = build_transform(cfg_for("--img-size", "16", *flags), training=False)(GREY)
    assert out.shape == (3, 16, 16)
    for c in range(3):
        expected = (128 / 255 - mean[c]) / std[c]
        torch.testing.assert_close(out[c], torch.full((16, 16), expected), atol=1e-5, rtol=0)


def test_sample_seed_and_augmentation_depend_on_the_epoch():
    """Guards against a per-sample seed of (seed, index) only: each epoch must draw new augmentations of the same
    sample, and the same (epoch, index) the same ones."""
    assert sample_seed(42, 0, 3) != sample_seed(42, 1, 3)
    assert sample_seed(42, 0, 3) == sample_seed(42, 0, 3)
    assert sample_seed(42, 0, 3) != sample_seed(42, 0, 4)
    cfg = cfg_for("--img-size", "16", "--aa", "rand-m9-mstd0.5")
    rng = np.random.default_rng(0)
    base = [(Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)), i) for i in range(4)]
    data = SeededTransformDataset(base, build_transform(cfg, training=True), seed=42)
    first, again, next_epoch = data[(0, 2)][0], data[(0, 2)][0], data[(1, 2)][0]
    assert torch.equal(first, again)
    assert not torch.equal(first, next_epoch)
    assert data[(1, 2)][1] == 2


@pytest.fixture
def tree_missing_a_val_class(tmp_path):
    for split, names in (("train", ("cat", "dog", "eel")), ("val", ("cat", "eel"))):
        for c, name in enumerate(names):
            for i in range(2):
                write_image(os.path.join(tmp_path, split, name, f"{i}.png"), seed=c * 10 + i, fmt="PNG")
    return str(tmp_path)


def test_val_labels_follow_the_train_classes_when_a_val_class_is_missing(tree_missing_a_val_class):
    """Guards against numbering the val tree's own folders: with no val/dog, val/eel must keep label 2 (its index
    among the train classes cat, dog, eel), both with the train set and with a checkpoint's class list."""
    root = tree_missing_a_val_class
    _, val = build_datasets(cfg_for("--data-path", root, "--img-size", "16"))
    labels = {os.path.basename(os.path.dirname(p)): y for p, y in val.samples}
    assert labels == {"cat": 0, "eel": 2}
    val = build_eval_dataset(cfg_for("--data-path", root, "--img-size", "16"), classes=["cat", "dog", "eel"])
    labels = {os.path.basename(os.path.dirname(p)): y for p, y in val.samples}
    assert labels == {"cat": 0, "eel": 2}


@pytest.mark.parametrize("aa", [(), ("--aa", "rand-m9-mstd0.5")])
def test_interpolation_and_random_erasing_flags_reach_the_transforms(aa):
    """Guards against the interpolation being fixed to bilinear and the random-erasing mode forced to 'const': the
    original recipe's --interpolation bicubic --reprob 0.25 --remode pixel must be what the transforms hold."""
    cfg = cfg_for("--img-size", "16", "--interpolation", "bicubic", "--reprob", "0.25", "--remode", "pixel", *aa)
    train = build_transform(cfg, training=True).transforms
    assert type(train[0]).__name__ == "RandomResizedCropAndInterpolation"
    assert train[0].interpolation == T.InterpolationMode.BICUBIC
    erasing = [t for t in train if isinstance(t, RandomErasing)]
    assert len(erasing) == 1 and erasing[0].mode == "pixel" and erasing[0].probability == 0.25
    resize = build_transform(cfg, training=False).transforms[0]
    assert isinstance(resize, T.Resize) and resize.interpolation == T.InterpolationMode.BICUBIC
    cfg = cfg_for("--img-size", "16", "--interpolation", "bilinear")
    assert build_transform(cfg, training=False).transforms[0].interpolation == T.InterpolationMode.BILINEAR


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("epoch", [0, 3])
def test_shuffled_shards_are_torch_distributed_sampler_shards(rank, epoch):
    """Guards against dropping the tail instead of padding it with the head: 21 samples on 2 ranks give each rank
    11 indices, exactly those of torch's DistributedSampler for the same seed and epoch."""
    ours = ShardedSampler(21, 2, rank, shuffle=True, seed=5)
    ours.set_epoch(epoch)
    torch_sampler = DistributedSampler(range(21), 2, rank, shuffle=True, seed=5)
    torch_sampler.set_epoch(epoch)
    got = [i for _, i in ours]
    assert got == list(torch_sampler) and len(got) == len(ours) == 11
    assert all(e == epoch for e, _ in ours)


@pytest.mark.parametrize("rank", [0, 1])
def test_unshuffled_shards_are_torch_order_without_padding(rank):
    """Not shuffled, the shards are DistributedSampler's without its padding (each sample counted once in eval)."""
    ours = ShardedSampler(21, 2, rank, shuffle=False)
    torch_sampler = DistributedSampler(range(21), 2, rank, shuffle=False)
    got = [i for _, i in ours]
    assert got == list(torch_sampler)[:len(range(rank, 21, 2))] and len(got) == len(ours) == [11, 10][rank]
