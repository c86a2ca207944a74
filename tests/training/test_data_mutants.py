"""Values of the data pipeline that a mutation audit of classification/data found unchecked: each test kills small
changes of the code (a flipped comparison, a swapped argument, a filter or constant changed) that the other data
tests let pass, by asserting hand-computed values or the original's documented rule."""
import logging
import os
import random
import shutil
import unicodedata

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from timm.data.auto_augment import AugMixAugment, AutoAugment
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from classification.data import DataError, build_datasets, build_eval_dataset, build_loaders, build_mixup
from classification.data import rand_augment as ra
from classification.data.defaults import resolve_dataset_defaults
from classification.data.image_decoding import load_image
from classification.data.loader import (SeededTransformDataset, _quiet_when_main_process_left, build_loader,
                                        lost_worker)
from classification.data.mixup import OriginalMixup, cutmix_box
from classification.data.small_datasets import build_digits
from classification.data.transforms import Cutout, build_transform, check_auto_augment
from classification.engine.config import parse_args

from training_helpers import make_cifar, make_folder_tree, make_meta_tree

BICUBIC, BILINEAR = Image.Resampling.BICUBIC, Image.Resampling.BILINEAR
FILL = (124, 116, 104)
PLAIN = ("--image-mean", "0", "0", "0", "--image-std", "1", "1", "1")  # the tensors hold the pixels / 255
GREY_RAMP = Image.fromarray(np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, -1))  # every value once


def cfg_for(*argv):
    cfg = parse_args(["-j", "0", *argv])
    resolve_dataset_defaults(cfg)
    return cfg


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---- RandAugment ----

def test_a_signed_level_is_negative_when_pythons_draw_is_above_one_half():
    """The original negates a level when `random.random() > 0.5`: the same seed gives the same sign as the original
    (a rule negating below 0.5 draws both signs as often, so only the seeded sign tells them apart)."""
    signs = set()
    for seed in range(20):
        random.seed(seed)
        draw = random.random()
        random.seed(seed)
        assert ra.level_to_arg("Rotate", 9) == ((-27.0,) if draw > 0.5 else (27.0,)), seed
        signs.add(draw > 0.5)
    assert signs == {True, False}


def test_an_op_is_applied_when_the_draw_is_at_most_its_probability():
    """An op of probability 0.8 runs when `random.random() <= 0.8` (the original skips it when the draw is above):
    about 80 % of images, not 50 % or 20 %."""
    img = Image.new("RGB", (2, 2), (10, 10, 10))
    op = ra.RandAugmentOp("Invert", prob=0.8)
    applied = []
    for seed in range(60):
        random.seed(seed)
        draw = random.random()
        random.seed(seed)
        out = np.asarray(op(img))[0, 0, 0]
        assert out == (245 if draw <= 0.8 else 10), seed
        applied.append(out == 245)
    assert 0.65 < np.mean(applied) < 0.95


def test_each_call_applies_its_own_drawn_magnitude():
    """With mstd the magnitude of every call is drawn from N(m, mstd) after the apply draw, and that magnitude is the
    one applied: Solarize at a drawn m inverts the values from int(m / 10 * 256) up (a call at the fixed m = 5 always
    from 128)."""
    op = ra.RandAugmentOp("Solarize", magnitude=5, magnitude_std=2.0)
    values = np.asarray(GREY_RAMP)[..., 0].astype(int)
    thresholds = set()
    for seed in range(12):
        random.seed(seed)
        out = np.asarray(op(GREY_RAMP))[..., 0].astype(int)
        random.seed(seed)
        if random.random() > 0.5:
            assert (out == values).all()
            continue
        threshold = int(random.gauss(5, 2.0) / 10 * 256)
        thresholds.add(threshold)
        np.testing.assert_array_equal(out, np.where(values >= threshold, 255 - values, values))
    assert len(thresholds) >= 3 and 128 not in thresholds


def test_the_drawn_ops_are_applied_in_the_drawn_order():
    """`rand-n2`: both ops that NumPy draws run, first then second (Invert then PosterizeTpu 2 bits differs from the
    reverse order, and from either alone)."""
    invert, posterize = ra.RandAugmentOp("Invert", prob=1.0), ra.RandAugmentOp("PosterizeTpu", 5, prob=1.0)
    augment = ra.RandAugment([invert, posterize], num_layers=2)
    steps = {0: ImageOps.invert, 1: lambda img: ImageOps.posterize(img, 2)}
    orders = set()
    for seed in range(12):
        np.random.seed(seed)
        out = augment(GREY_RAMP)
        picks = tuple(np.random.RandomState(seed).choice(2, 2))
        expected = GREY_RAMP
        for pick in picks:
            expected = steps[pick](expected)
        assert out.tobytes() == expected.tobytes(), picks
        orders.add(picks)
    assert {(0, 1), (1, 0)} <= orders


def test_distort_zoom_and_skew_resample_bicubic():
    """The four ops timm lacks resample bicubic whatever --interpolation says (facts 5.4): Distort's mesh (the 2 x 2
    tiles of magnitude 10), Zoom's shrink and Skew's perspective, each on a noise image where bilinear differs."""
    img = noise(8, 8)
    mesh = [((0, 0, 4, 4), (0, 0, 0, 4, 24, 24, 4, 0)), ((4, 0, 8, 4), (4, 0, 24, 24, 8, 4, 8, 0)),
            ((0, 4, 4, 8), (0, 4, 0, 8, 4, 8, 24, 24)), ((4, 4, 8, 8), (24, 24, 4, 8, 8, 8, 8, 4))]
    coeffs = ra.skew_coefficients(8, 8, 0.27)
    for filt, same in ((BICUBIC, True), (BILINEAR, False)):
        distorted = img.transform((8, 8), Image.Transform.MESH, mesh, resample=filt)
        assert (ra.distort(img, 20, FILL, BILINEAR).tobytes() == distorted.tobytes()) == same
        skewed = img.transform((8, 8), Image.Transform.PERSPECTIVE, coeffs, resample=filt)
        assert (ra.skew(img, 0.27, FILL, BILINEAR).tobytes() == skewed.tobytes()) == same
        zoomed = np.zeros((8, 8, 3), np.uint8)
        zoomed[2:6, 2:6] = np.asarray(img.resize((4, 4), resample=filt))  # factor 0.5: 4 x 4 in the middle
        assert (np.asarray(ra.zoom(img, 0.5, FILL, BILINEAR)) == zoomed).all() == same


def test_zoom_of_an_image_that_is_not_square_shrinks_each_side_by_the_factor():
    """16 wide, 8 high at factor 0.5: the 8 x 4 picture lies in columns 4..11 and rows 2..5 (sides swapped it would be
    4 wide and 8 high)."""
    img = noise(16, 8, seed=1)
    out = np.asarray(ra.zoom(img, 0.5, FILL, BICUBIC))
    expected = np.zeros((8, 16, 3), np.uint8)
    expected[2:6, 4:12] = np.asarray(img.resize((8, 4), resample=BICUBIC))
    np.testing.assert_array_equal(out, expected)


def test_distort_of_an_image_that_is_not_square_splits_each_side_by_its_own_length():
    """8 wide, 12 high at magnitude 10 (2 x 2 tiles): columns split at 4, rows at 6, the inner corner (4, 6) taken
    from 20 pixels right and down, (24, 26); rows split by the width would cut at 4."""
    assert ra.distort_mesh(8, 12, 20) == [
        ((0, 0, 4, 6), (0, 0, 0, 6, 24, 26, 4, 0)),
        ((4, 0, 8, 6), (4, 0, 24, 26, 8, 6, 8, 0)),
        ((0, 6, 4, 12), (0, 6, 0, 12, 4, 12, 24, 26)),
        ((4, 6, 8, 12), (24, 26, 4, 12, 8, 12, 8, 6))]


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_solarize_add_saturates_at_255_below_the_threshold_in_rgb_and_grey(mode):
    """SolarizeAdd 200 (magnitude 18.2, possible unclamped): values below 128 gain 200 up to at most 255, the rest
    stay; grey images too, as the original's."""
    values = np.array([[0, 50, 54, 55], [127, 128, 200, 255]], np.uint8)
    img = Image.fromarray(values).convert(mode)
    out = np.asarray(ra.solarize_add(img, 200, FILL, BICUBIC))
    out = out if mode == "L" else out[..., 0]
    np.testing.assert_array_equal(out, [[200, 250, 254, 255], [255, 128, 200, 255]])


@pytest.mark.parametrize("config", ["rand_m9_mstd0.5", "randaugment-m9", "Rand-m9"])
def test_a_policy_whose_first_section_is_not_rand_is_refused_saying_how_it_is_written(config):
    """`rand_m9_mstd0.5` (underscores) starts with 'rand' but has no section 'rand': the error said it must start
    with 'rand'. It now shows how the string is written; a check of the prefix alone ran it at the defaults (m10)."""
    with pytest.raises(ValueError, match=rf"^not a RandAugment string: '{config}' must be 'rand' then '-'-separated "
                                         r"sections, as 'rand-m9-mstd0.5'$"):
        ra.rand_augment_transform(config)


# ---- Mixup / CutMix ----

@pytest.mark.parametrize("seed", range(12))
def test_a_cutmix_box_centre_is_drawn_from_every_row_and_column(seed):
    """On a 4 x 4 image at λ = 0.75 (cut 2: 1 pixel each side) the centre is NumPy's randint(0, 4) for the row, then
    for the column, as the original's: the last row and column included (drawing from 0..2 never cut there, and gives
    other boxes for the same seed)."""
    np.random.seed(seed)
    box, lam = cutmix_box((3, 4, 4), 0.75)
    replay = np.random.RandomState(seed)
    cy, cx = replay.randint(0, 4), replay.randint(0, 4)
    assert box == (max(cy - 1, 0), min(cy + 1, 4), max(cx - 1, 0), min(cx + 1, 4))
    assert lam == 1 - (box[1] - box[0]) * (box[3] - box[2]) / 16


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_cutmix_pastes_the_partners_pixels_of_the_same_box_unchanged(mode):
    """CutMix on noise images: image i differs from itself only inside one box, where it holds exactly the pixels of
    its partner B - 1 - i at the same place (constant images do not show a box pasted mirrored or shifted), and its
    target weighs the partner by the box's area."""
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mixer = OriginalMixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode=mode, label_smoothing=0.0, num_classes=4)
    boxes = 0
    for seed in range(6):
        np.random.seed(seed)
        mixed, targets = mixer(images.clone(), torch.arange(4))
        for i in range(4):
            partner = 3 - i
            changed = (mixed[i] != images[i]).any(0)
            area = changed.sum().item()
            if area:
                rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
                assert area == len(rows) * len(cols) and rows.diff().eq(1).all() and cols.diff().eq(1).all()
                boxes += 1
            torch.testing.assert_close(mixed[i][:, changed], images[partner][:, changed], rtol=0, atol=0)
            assert targets[i, partner].item() == pytest.approx(area / 256)
    assert boxes >= 10


# ---- transforms ----

@pytest.mark.parametrize("seed", range(4))
def test_an_odd_cutout_length_zeroes_one_pixel_less_each_way(seed):
    """--cutout-length 5 as the original (its `length // 2` each side of the centre): rows and columns centre - 2 to
    centre + 1, a 4 x 4 square where the border does not clip it."""
    np.random.seed(seed)
    out = Cutout(5)(torch.ones(1, 12, 12))
    replay = np.random.RandomState(seed)
    y, x = replay.randint(12), replay.randint(12)
    expected = torch.ones(1, 12, 12)
    expected[:, max(y - 2, 0):y + 2, max(x - 2, 0):x + 2] = 0
    assert torch.equal(out, expected)


def test_cifar_cutout_zeroes_the_normalised_pixels():
    """--cutout-length 8 cuts after the normalisation, as the original (on the GPU, after Normalize): the square holds
    0 in the model's input, the dataset mean, not the (0 - mean) / std of black pixels."""
    transform = build_transform(cfg_for("--dataset", "cifar10", "--cutout-length", "8"), training=True)
    np.random.seed(3)
    torch.manual_seed(3)
    out = transform(Image.new("RGB", (32, 32), (255, 255, 255)))
    replay = np.random.RandomState(3)
    y, x = replay.randint(32), replay.randint(32)
    cut = out[:, max(y - 4, 0):y + 4, max(x - 4, 0):x + 4]
    assert cut.numel() > 0 and (cut == 0).all() and (out == 0).sum() == cut.numel()


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("interpolation, mode", [("bicubic", T.InterpolationMode.BICUBIC),
                                                 ("bilinear", T.InterpolationMode.BILINEAR)])
def test_cifar_at_a_smaller_image_size_is_resized_down_with_the_interpolation_given(training, interpolation, mode):
    """--dataset cifar10 --img-size 16: the 32-pixel images are resized to 16 (a resize only to larger sizes gave a
    model built for 16 pixels 32-pixel tensors), by --interpolation. A 32-pixel image black on its left half and white
    on its right keeps its outer columns black and white and its mean."""
    cfg = cfg_for("--dataset", "cifar10", "--img-size", "16", "--interpolation", interpolation, "--hflip", "0", *PLAIN)
    transform = build_transform(cfg, training=training)
    (resize,) = [step for step in transform.transforms if isinstance(step, T.Resize)]
    assert resize.interpolation == mode
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, 16:] = 255
    torch.manual_seed(0)
    out = transform(Image.fromarray(pixels))
    assert out.shape == (3, 16, 16)
    if not training:  # the padded crop of training moves the edge
        assert (out[:, :, 0] == 0).all() and (out[:, :, 15] == 1).all()
        assert out.mean().item() == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("policy, kind", [("v0", AutoAugment), ("original", AutoAugment), ("augmix-m3", AugMixAugment)])
def test_policies_other_than_rand_run_timms_augmentation(policy, kind):
    """Only a `rand-...` policy runs the original's RandAugment; timm's AutoAugment and AugMix policies (which it
    cannot parse) are timm's, with the default --aa-impl."""
    check_auto_augment(policy)
    steps = build_transform(cfg_for("--img-size", "16", "--aa", policy), training=True).transforms
    assert [type(step) for step in steps if isinstance(step, (AutoAugment, AugMixAugment, ra.RandAugment))] == [kind]


def test_random_erasing_erases_one_box_at_most_as_the_original():
    """The original's RandomErasing (--reprob 0.25 --remode pixel) has max_count 1: one box per image, never 2."""
    steps = build_transform(cfg_for("-c", "configs/strategies/local_mamba/config.yaml", "--img-size", "16"),
                            training=True).transforms
    (erasing,) = [step for step in steps if isinstance(step, RandomErasing)]
    assert (erasing.probability, erasing.mode, erasing.min_count, erasing.max_count) == (0.25, "pixel", 1, 1)
    assert (erasing.min_area, erasing.max_area) == (0.02, 1 / 3)


def test_imagenet_defaults_are_the_originals_crops():
    """Without flags ImageNet is read from data/imagenet and trains on random-resized crops of 8 % to 100 % of the
    image at aspect ratios 3/4 to 4/3, 224 pixels, and evaluates the centre 224 of the image resized to 256
    (crop_pct 0.875), as the original."""
    cfg = cfg_for()
    assert cfg.data_path == "data/imagenet"  # no --data-path (an empty one): the original's folder
    crop = build_transform(cfg, training=True).transforms[0]
    assert (tuple(crop.size), tuple(crop.scale), tuple(crop.ratio)) == ((224, 224), (0.08, 1.0), (3 / 4, 4 / 3))
    resize, centre = build_transform(cfg, training=False).transforms[:2]
    assert (resize.size, tuple(centre.size), cfg.crop_pct) == (256, (224, 224), 0.875)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_is_normalised_by_the_cifar10_training_sets_statistics(dataset):
    """Both CIFARs default to the original's CIFAR-10 mean and std (not CIFAR-100's own, nor ImageNet's): a grey 128
    image becomes (128 / 255 - mean) / std per channel."""
    mean, std = (0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)
    out = build_transform(cfg_for("--dataset", dataset), training=False)(Image.new("RGB", (32, 32), (128,) * 3))
    expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(mean, std)]).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dataset, data_path", [
    ("cifar10", "data/cifar"), ("cifar100", "data/cifar"), ("digits", "")])
def test_small_datasets_evaluate_the_whole_32_pixel_image(dataset, data_path):
    """CIFAR and digits default to 32 pixels and crop_pct 1 (the whole image: no centre crop, so no warning of an
    unused --crop-pct); CIFAR is read from data/cifar, digits from scikit-learn. Digits are normalised by mean 0.5
    and std 0.5 (a grey 128 image becomes (128 / 255 - 0.5) / 0.5) and cropped to 60 % to 100 % of the image."""
    cfg = cfg_for("--dataset", dataset)
    assert (cfg.img_size, cfg.crop_pct, cfg.data_path) == (32, 1.0, data_path)
    out = build_transform(cfg, training=False)(Image.new("RGB", (32, 32), (128,) * 3))
    assert out.shape == (3, 32, 32)
    if dataset == "digits":  # mild crops of 60 % to 100 % of an 8 x 8 digit
        torch.testing.assert_close(out, torch.full((3, 32, 32), (128 / 255 - 0.5) / 0.5), atol=1e-6, rtol=0)
        assert tuple(build_transform(cfg, training=True).transforms[0].scale) == (0.6, 1.0)


# ---- loaders ----

def test_a_sample_read_in_the_main_process_leaves_the_global_generators_as_they_were():
    """-j 0: the per-sample seeding draws from python's, NumPy's and torch's global generators, and then puts their
    states back, so that the training's own draws (mixup, dropout) and a resumed run's restored states are not
    replaced by the last sample's seed."""
    def draw_all(image):
        return random.random(), np.random.rand(), torch.rand(1).item()

    data = SeededTransformDataset([(None, 0)], draw_all, seed=3)
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    drawn, label = data[(0, 0)]
    after = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    assert after == (random.random(), np.random.rand(), torch.rand(1).item()) != drawn and label == 0


def test_a_worker_reports_an_os_error_other_than_a_dropped_connection():
    """A worker's full disk (OSError 28) is reported; only the connection errors of a main process that stopped are
    kept quiet."""
    reports = []
    full = OSError(28, "No space left on device")
    _quiet_when_main_process_left(OSError, full, None, report=lambda *args: reports.append(args[0]))
    assert reports == [OSError]


def test_a_loader_timeout_is_not_taken_for_a_dead_worker():
    """torch's 'DataLoader timed out after 5 seconds' is no dead worker: it is not turned into the out-of-memory
    killer's one line."""
    assert lost_worker(RuntimeError("DataLoader timed out after 5 seconds")) is None


def test_a_samples_augmentation_does_not_depend_on_the_rank_that_reads_it():
    """The augmentation seed of a sample is (seed, epoch, index) on every rank: two ranks of a run together give each
    sample the draws one process gives it (a seed offset by the rank gave rank 1 other crops and flips)."""
    base = [(None, index) for index in range(6)]

    def draws(world_size, rank):
        loader = build_loader(base, lambda image: torch.rand(1).item(), 1, 0, True, world_size, rank, seed=4)
        return {label.item(): value.item() for value, label in loader}

    single = draws(1, 0)
    assert {**draws(2, 0), **draws(2, 1)} == single and len(set(single.values())) == 6


# ---- datasets ----

def write_meta(root: str, split: str, rows) -> None:
    with open(os.path.join(root, "meta", f"{split}.txt"), "w") as f:
        f.writelines(f"{rel} {label}\n" for rel, label in rows)


def test_one_unused_meta_label_is_warned_of(tmp_path, localmamba_log):
    """Train labels 0 and 2: the model gets 3 outputs, and the one unused label, 1, is named."""
    root = str(tmp_path)
    lists = make_meta_tree(root)
    write_meta(root, "train", [(rel, label) for rel, label in lists["train"] if label != 1])
    write_meta(root, "val", [(rel, label) for rel, label in lists["val"] if label != 1])
    cfg = cfg_for("--data-path", root)
    build_datasets(cfg)
    warnings = [r.getMessage() for r in localmamba_log.records if r.levelno == logging.WARNING]
    assert cfg.num_classes == 3 and warnings == [
        f"{os.path.join(root, 'meta', 'train.txt')}: its labels use 2 of the 3 classes 0..2 (unused: 1); the model "
        f"gets 3 outputs (largest label + 1), those of unused labels are never trained; renumber the labels 0..1 "
        f"for 2 outputs"]


def test_a_val_label_equal_to_the_train_class_count_is_refused_in_training(tmp_path):
    """Train labels 0..2 (3 classes): a val label 3 has no output of the model and is refused at start."""
    root = str(tmp_path)
    lists = make_meta_tree(root)
    rel, _ = lists["val"][-1]
    write_meta(root, "val", lists["val"][:-1] + [(rel, 3)])
    with pytest.raises(DataError, match=rf"val\.txt: label 3 of .*{rel} is not a train label \(train has 3 "
                                        r"classes\)$"):
        build_datasets(cfg_for("--data-path", root))


def test_a_missing_image_is_located_by_its_line_in_the_file_counting_blank_lines(tmp_path):
    """A meta list that begins with a blank line: the missing third image is on line 4 of the file, not entry 3."""
    root = str(tmp_path)
    lists = make_meta_tree(root)
    with open(os.path.join(root, "meta", "train.txt"), "w") as f:
        f.write("\n" + "".join(f"{rel} {label}\n" for rel, label in lists["train"]))
    os.remove(tmp_path / "train" / lists["train"][2][0])
    with pytest.raises(DataError, match=rf"^{tmp_path / 'meta' / 'train.txt'}:4: image not found: "):
        build_datasets(cfg_for("--data-path", root))


def test_evaluation_without_a_train_list_refuses_fewer_classes_than_the_val_labels(tmp_path):
    """No meta/train.txt: the val labels 0..2 need 3 outputs, so --num-classes 2 is refused (taking 2 as the count
    let labels 2 reach a 2-way head)."""
    root = str(tmp_path)
    make_meta_tree(root)
    os.remove(os.path.join(root, "meta", "train.txt"))
    with pytest.raises(DataError, match=r"^--num-classes 2 is fewer than the 3 classes of "):
        build_eval_dataset(cfg_for("--data-path", root, "--num-classes", "2"))


def test_a_train_class_named_decomposed_takes_its_composed_val_folder(tmp_path):
    """Train copied on macOS names `café` decomposed (NFD), val composed (NFC): val/café is that class, label 1."""
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("bee", composed, "eel"), per_class=2, val_per_class=1)
    os.rename(root / "train" / composed, root / "train" / decomposed)
    train, val = build_datasets(cfg_for("--data-path", str(root)))
    assert train.classes == ["bee", decomposed, "eel"]
    assert [(os.path.basename(os.path.dirname(p)), y) for p, y in val.samples] == [
        ("bee", 0), (composed, 1), ("eel", 2)]


def test_a_train_split_of_one_class_folder_linked_from_a_missing_drive_names_the_link(tmp_path):
    """train/ holding only a broken link (its drive not mounted) is a split of class folders whose link is broken,
    and the error names the link; not 'no class folders', which sends the user looking for a missing folder."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("cat",), per_class=1, val_per_class=1)
    shutil.rmtree(root / "train" / "cat")
    os.symlink(tmp_path / "drive" / "cat", root / "train" / "cat")
    with pytest.raises(DataError, match=rf"^broken link {root / 'train' / 'cat'} -> {tmp_path / 'drive' / 'cat'}: "):
        build_datasets(cfg_for("--data-path", str(root)))


def test_sixteen_bit_values_are_scaled_by_255_over_65535(tmp_path):
    """16-bit 65407 and 33025 are 254.502 and 128.502 in 8 bits (v x 255 / 65535), rounded 255 and 129; a scale of
    255 / 65536 gives 254.498 and 128.498, rounded 254 and 128."""
    Image.fromarray(np.array([[65407, 33025, 65535, 0]], np.uint16)).save(tmp_path / "deep.png")
    assert np.asarray(load_image(str(tmp_path / "deep.png")))[0, :, 1].tolist() == [255, 129, 255, 0]


def test_digits_are_their_0_to_16_pixels_scaled_to_255_and_resized_bicubic():
    """scikit-learn's digits hold 0..16: 16 becomes white (255) and 8 becomes 127.5 rounded 128 (a scale of 255 / 15
    overflows 8 bits); at 16 pixels each 8 x 8 digit is resized bicubic (not nearest)."""
    from sklearn.datasets import load_digits

    digits = load_digits().images
    pixels = np.round(digits * (255 / 16)).astype(np.uint8)
    assert pixels.max() == 255 and set(np.unique(pixels[digits == 8])) == {128}
    for size in (8, 16):
        expected = {np.asarray(Image.fromarray(p).resize((size, size), BICUBIC)).tobytes() for p in pixels}
        train, val = build_digits(size)
        for data in (train, val):
            image = np.asarray(data[len(data) // 2][0])
            assert image.shape == (size, size, 3) and image[..., 1].tobytes() in expected


def test_cifar_is_read_from_the_extracted_folder_given_as_the_data_path(tmp_path):
    """--data-path may name the extracted cifar-10-batches-py/ itself, not only the folder that holds it."""
    data, labels = make_cifar(str(tmp_path))
    train, val = build_datasets(cfg_for("--dataset", "cifar10", "--data-path", str(tmp_path / "cifar-10-batches-py")))
    assert (len(train), len(val)) == (50, 4) and train[0][1] == labels[0]
    assert np.array_equal(np.asarray(train[0][0]), data[0].reshape(3, 32, 32).transpose(1, 2, 0))


def test_a_tree_of_one_class_is_refused(tmp_path):
    """One class folder: nothing to classify, refused at start rather than training a 1-way head."""
    make_folder_tree(str(tmp_path), classes=("cat",), per_class=2, val_per_class=1)
    with pytest.raises(DataError, match=rf"^{tmp_path}: 1 class found; classification needs at least 2$"):
        build_datasets(cfg_for("--data-path", str(tmp_path)))


@pytest.mark.parametrize("multiplier, batch", [("2", 8), ("0.5", 2), ("0.1", 1)])
def test_the_val_batch_is_the_batch_size_times_its_multiplier_at_least_one(multiplier, batch):
    """-b 4 --val-batch-size-multiplier M: validation batches of int(4 M) images, at least 1."""
    cfg = cfg_for("-b", "4", "--val-batch-size-multiplier", multiplier, "--img-size", "16")
    _, val_loader = build_loaders(cfg, None, [(Image.new("RGB", (16, 16)), 0)] * 9, 1, 0)
    assert val_loader.batch_size == batch


def test_cutmix_minmax_alone_turns_cutmix_on():
    """--cutmix-minmax 0.25 0.5 without --mixup or --cutmix mixes (timm forces CutMix's alpha to 1 with it): every
    image of a batch takes a box of its partner, sides of 2 or 3 pixels on 8, and targets weighted by its area."""
    cfg = cfg_for("--cutmix-minmax", "0.25", "0.5", "--smoothing", "0", "--img-size", "8")
    cfg.num_classes = 2
    mixer = build_mixup(cfg)
    assert mixer is not None and (mixer.cutmix_alpha, mixer.mixup_alpha, mixer.mode) == (1.0, 0.0, "batch")
    images = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    np.random.seed(0)
    mixed, targets = mixer(images.clone(), torch.tensor([0, 1]))
    area = mixed[0, 0].sum().item()
    assert area in (4, 6, 9) and targets[0, 1].item() == pytest.approx(area / 64)


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_the_mixup_mode_flag_reaches_the_mixer(mode):
    """--mixup-mode pair / elem: λ per pair or per image, not the recipe's one per batch."""
    cfg = cfg_for("--mixup", "0.8", "--mixup-mode", mode)
    cfg.num_classes = 10
    assert build_mixup(cfg).mode == mode


def test_the_seed_flag_seeds_the_loaders_order_and_augmentation():
    """--seed 7: the train loader's shuffle and per-sample augmentation seeds are 7 (not a fixed 0), so two seeds give
    two data orders."""
    cfg = cfg_for("--seed", "7", "-b", "2", "--img-size", "16")
    images = [(Image.new("RGB", (16, 16)), i % 2) for i in range(8)]
    train_loader, val_loader = build_loaders(cfg, images, images, 1, 0)
    assert (train_loader.sampler.seed, train_loader.dataset.seed, val_loader.dataset.seed) == (7, 7, 7)


def test_a_corrupt_cifar_batch_is_named_in_the_error(tmp_path):
    """A CIFAR file cut short (an interrupted copy) ends the run naming that file."""
    make_cifar(str(tmp_path))
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"^cannot read CIFAR batch {batch}: "):
        build_datasets(cfg_for("--dataset", "cifar10", "--data-path", str(tmp_path)))


def test_a_tree_of_flat_train_and_val_images_is_told_of_val_first(tmp_path):
    """train/ and val/ both holding images without class folders: the hint names val/ (ImageNet's val comes so) and
    its meta list."""
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            path = tmp_path / split / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(DataError, match=rf"; {tmp_path / 'val'} holds 2 images but no class folders \(as ImageNet's "
                                        rf"val/ comes\): list them with their labels in "
                                        rf"{tmp_path / 'meta' / 'val.txt'}, or move them into val/<class>/ folders$"):
        build_datasets(cfg_for("--data-path", str(tmp_path)))
