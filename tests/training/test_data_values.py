"""What the data pipeline computes, checked against hand-computed values or torch's own: eval normalisation,
per-epoch augmentation seeds, the labels of a val tree missing a class, the interpolation and random-erasing flags,
the sampler's shards, the eval crop, CIFAR's padded crop and cutout, and the flip probability."""
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
from classification.data.transforms import Cutout, build_transform
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


@pytest.mark.parametrize("rank", range(5))
def test_a_data_set_smaller_than_half_the_ranks_is_padded_as_torch_pads_it(rank):
    """2 samples on 5 ranks: the order is repeated until every rank has one index, as DistributedSampler repeats it
    (padding with the head once left ranks 3 and 4 without a sample, though each counted one)."""
    ours = ShardedSampler(2, 5, rank, shuffle=True, seed=5)
    torch_sampler = DistributedSampler(range(2), 5, rank, shuffle=True, seed=5)
    got = [i for _, i in ours]
    assert got == list(torch_sampler) and len(got) == len(ours) == 1


def test_an_epoch_begun_under_another_seed_keeps_its_augmentation():
    """A run resumed mid-epoch with a new --seed: the epoch's samples draw their augmentation from the seed it began
    with (`epoch_seeds`), the later epochs from the new one."""
    def draws(dataset, epoch):
        return [dataset[(epoch, index)][0] for index in range(3)]

    base = [(None, 0)] * 3
    resumed = SeededTransformDataset(base, lambda image: torch.rand(1).item(), seed=7)
    resumed.epoch_seeds[1] = 5
    began = SeededTransformDataset(base, lambda image: torch.rand(1).item(), seed=5)
    new = SeededTransformDataset(base, lambda image: torch.rand(1).item(), seed=7)
    assert draws(resumed, 1) == draws(began, 1) != draws(new, 1)
    assert draws(resumed, 2) == draws(new, 2)


@pytest.mark.parametrize("rank", [0, 1])
def test_unshuffled_shards_are_torch_order_without_padding(rank):
    """Not shuffled, the shards are DistributedSampler's without its padding (each sample counted once in eval)."""
    ours = ShardedSampler(21, 2, rank, shuffle=False)
    torch_sampler = DistributedSampler(range(21), 2, rank, shuffle=False)
    got = [i for _, i in ours]
    assert got == list(torch_sampler)[:len(range(rank, 21, 2))] and len(got) == len(ours) == [11, 10][rank]


PLAIN = ("--image-mean", "0", "0", "0", "--image-std", "1", "1", "1")  # the tensors hold the pixels / 255


def test_eval_keeps_the_centre_crop_pct_of_the_image():
    """--crop-pct 0.5 at --img-size 16: the image is resized to 16 / 0.5 = 32 pixels and its central 16 kept, the
    middle half of each side. Of a 64-pixel image whose middle three quarters are white and the border black, that
    is all white; timm's default crop (0.875: 16 of 18 pixels) reaches the black border."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[8:56, 8:56] = 255
    out = build_transform(cfg_for("--img-size", "16", "--crop-pct", "0.5", *PLAIN), training=False)(
        Image.fromarray(pixels))
    torch.testing.assert_close(out, torch.ones(3, 16, 16), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", range(4))
def test_cutout_zeroes_a_square_of_its_length_around_the_drawn_centre(seed):
    """--cutout-length 8 as the original's Cutout: rows and columns centre - 4 .. centre + 3 (clipped at the
    border) set to 0, the centre drawn row first from NumPy's generator."""
    np.random.seed(seed)
    out = Cutout(8)(torch.ones(3, 32, 32))
    replay = np.random.RandomState(seed)
    y, x = replay.randint(32), replay.randint(32)
    expected = torch.ones(3, 32, 32)
    expected[:, max(y - 4, 0):min(y + 4, 32), max(x - 4, 0):min(x + 4, 32)] = 0
    assert torch.equal(out, expected)


@pytest.mark.parametrize("seed", range(6))
def test_the_cifar_crop_is_of_the_image_padded_by_four_zeros(seed):
    """CIFAR's training crop: 32 pixels of the image padded by 4 zero pixels on each side, at an offset of 0..8
    drawn by torch (row, then column): a white image keeps a black band of 4 - offset rows or columns."""
    transform = build_transform(cfg_for("--dataset", "cifar10", "--hflip", "0", *PLAIN), training=True)
    torch.manual_seed(seed)
    out = transform(Image.new("RGB", (32, 32), (255, 255, 255)))
    torch.manual_seed(seed)
    top, left = torch.randint(0, 9, size=(1,)).item(), torch.randint(0, 9, size=(1,)).item()
    expected = torch.nn.functional.pad(torch.ones(3, 32, 32), (4, 4, 4, 4))[:, top:top + 32, left:left + 32]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dataset, flags, flipped", [
    ("digits", (), False),                    # digits are not mirror-symmetric: their default --hflip is 0
    ("digits", ("--hflip", "1"), True),
    ("imagenet", ("--hflip", "0"), False)])
def test_the_flip_probability_is_the_datasets_or_the_flags(dataset, flags, flipped):
    """A 16-pixel image black on the left and white on the right, cropped whole (--scale 1 1 --ratio 1 1), over 12
    draws: never mirrored with --hflip 0, always with --hflip 1 (a fixed 0.5 mirrors about half)."""
    cfg = cfg_for("--dataset", dataset, "--img-size", "16", "--scale", "1", "1", "--ratio", "1", "1",
                  "--color-jitter", "0", *PLAIN, *flags)
    transform = build_transform(cfg, training=True)
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:, 8:] = 255
    for seed in range(12):
        torch.manual_seed(seed)
        out = transform(Image.fromarray(pixels))
        left, right = out[:, :, :8].mean().item(), out[:, :, 8:].mean().item()
        assert (left, right) == ((1.0, 0.0) if flipped else (0.0, 1.0)), seed


def test_the_crop_ratio_flag_reaches_the_random_resized_crop():
    """--ratio LO HI bounds the crop's aspect ratio; without it the crop takes timm's (3/4, 4/3)."""
    crop = build_transform(cfg_for("--img-size", "16", "--ratio", "0.5", "2"), training=True).transforms[0]
    assert tuple(crop.ratio) == (0.5, 2.0)
    cfg = cfg_for("--img-size", "16")
    assert cfg.ratio is None and tuple(build_transform(cfg, training=True).transforms[0].ratio) == (3 / 4, 4 / 3)


@pytest.mark.parametrize("training", [True, False])
def test_cifar_at_another_image_size_resizes_its_32_pixel_images(training):
    """--dataset cifar10 --img-size 64: the 32-pixel images (cropped, when training) are resized to 64 with the
    --interpolation given (without the resize a model built for 64 pixels would get 32-pixel tensors)."""
    cfg = cfg_for("--dataset", "cifar10", "--img-size", "64", "--interpolation", "bilinear", *PLAIN)
    transform = build_transform(cfg, training=training)
    resize = [step for step in transform.transforms if isinstance(step, T.Resize)]
    assert len(resize) == 1 and resize[0].interpolation == T.InterpolationMode.BILINEAR
    assert transform(Image.new("RGB", (32, 32), (255, 0, 0))).shape == (3, 64, 64)
