"""Mixup / CutMix as the original mixes: its CutMix boxes (`cut // 2` each side of the centre; min-max boxes short of
the far edge), timm's λ draws and pairing otherwise."""
import numpy as np
import pytest
import torch
from timm.data import Mixup

from classification.data.mixup import OriginalMixup, cutmix_box

B, H, W = 6, 224, 224


def constant_images() -> torch.Tensor:
    """(B, 3, H, W) images, image k filled with the value k."""
    return torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, H, W).clone()


def test_an_odd_cut_gives_an_even_box_around_the_drawn_centre():
    np.random.seed(3)
    box, lam = cutmix_box((3, H, W), 0.6)
    replay = np.random.RandomState(3)
    cy, cx = replay.randint(0, H), replay.randint(0, W)
    # int(224 * sqrt(0.4)) = 141, an odd cut: 70 pixels each side of the centre (current timm: 70 above, 71 below)
    assert int(H * np.sqrt(0.4)) == 141
    assert box == (max(cy - 70, 0), min(cy + 70, H), max(cx - 70, 0), min(cx + 70, W))
    assert lam == pytest.approx(1 - (box[1] - box[0]) * (box[3] - box[2]) / (H * W), abs=1e-12)


def test_an_unclipped_box_has_sides_of_twice_half_the_cut():
    sides = set()
    for seed in range(200):
        np.random.seed(seed)
        (top, bottom, left, right), lam = cutmix_box((H, W), 0.6)
        if 0 < top and bottom < H and 0 < left and right < W:
            sides.add((bottom - top, right - left))
            assert lam == pytest.approx(1 - 140 * 140 / (H * W))
    assert sides == {(140, 140)}


def test_without_lambda_correction_the_drawn_lambda_is_kept():
    np.random.seed(0)
    assert cutmix_box((H, W), 0.3, correct_lam=False)[1] == 0.3


def test_minmax_boxes_keep_short_of_the_far_edge_and_draw_their_sides_in_range():
    bottoms, rights, sides = set(), set(), set()
    for seed in range(300):
        np.random.seed(seed)
        (top, bottom, left, right), lam = cutmix_box((8, 10), 0.5, ratio_minmax=(0.2, 0.8), correct_lam=False)
        sides.add((bottom - top, right - left))
        bottoms.add(bottom)
        rights.add(right)
        assert top >= 0 and left >= 0
        assert lam == pytest.approx(1 - (bottom - top) * (right - left) / 80)  # always corrected with min-max
    # sides from [int(8 * .2), int(8 * .8)) = [1, 6) and [int(10 * .2), int(10 * .8)) = [2, 8); the box reaches
    # one pixel short of the far edges 8 and 10, never the edge itself (timm's may)
    assert {h for h, _ in sides} == {1, 2, 3, 4, 5} and {w for _, w in sides} == {2, 3, 4, 5, 6, 7}
    assert max(bottoms) == 7 and max(rights) == 9


def test_a_box_on_an_image_that_is_not_square_scales_each_side_by_its_own_length():
    """A 40 x 100 image at λ = 0.75: the cut is int(40 * 0.5) = 20 rows and int(100 * 0.5) = 50 columns, 10 and 25
    each side of the centre drawn (row first); the height's half used for the columns (or the width's for the rows)
    gives a box of another shape."""
    np.random.seed(11)
    box, lam = cutmix_box((3, 40, 100), 0.75)
    replay = np.random.RandomState(11)
    cy, cx = replay.randint(0, 40), replay.randint(0, 100)
    assert box == (max(cy - 10, 0), min(cy + 10, 40), max(cx - 25, 0), min(cx + 25, 100))
    assert lam == pytest.approx(1 - (box[1] - box[0]) * (box[3] - box[2]) / 4000, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_a_minmax_box_draws_height_width_top_then_left_as_the_original(seed):
    """The original's min-max box takes four draws of NumPy's generator in this order: cut height, cut width, top,
    left. The same seed then gives the original's box (drawing left before top gives another one on a 30 x 50
    image)."""
    np.random.seed(seed)
    box, _ = cutmix_box((30, 50), 0.5, ratio_minmax=(0.2, 0.8))
    replay = np.random.RandomState(seed)
    cut_h, cut_w = replay.randint(6, 24), replay.randint(10, 40)
    top, left = replay.randint(0, 30 - cut_h), replay.randint(0, 50 - cut_w)
    assert box == (top, top + cut_h, left, left + cut_w)


def test_batch_cutmix_pastes_the_flipped_batch_into_one_box_and_weights_the_targets_by_its_area():
    mixer = OriginalMixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=B)
    for seed in range(20):
        np.random.seed(seed)
        images, targets = mixer(constant_images(), torch.arange(B))
        replay = np.random.RandomState(seed)
        replay.rand()  # the draw that decides whether the batch is mixed (prob 1)
        half = int(H * np.sqrt(1 - replay.beta(1.0, 1.0))) // 2
        pasted = images == torch.arange(B - 1, -1, -1, dtype=images.dtype).view(B, 1, 1, 1)
        rows, cols = pasted[0, 0].any(1).nonzero().flatten(), pasted[0, 0].any(0).nonzero().flatten()
        if half == 0:
            assert not pasted.any()
            continue
        top, bottom = rows.min().item(), rows.max().item() + 1
        left, right = cols.min().item(), cols.max().item() + 1
        assert bottom - top <= 2 * half and right - left <= 2 * half
        assert pasted[:, :, top:bottom, left:right].all() and pasted.sum() == B * 3 * (bottom - top) * (right - left)
        lam = 1 - (bottom - top) * (right - left) / (H * W)
        expected = lam * torch.eye(B) + (1 - lam) * torch.eye(B).flip(0)
        torch.testing.assert_close(targets, expected)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixup_alone_mixes_as_timm(mode):
    """Without CutMix nothing differs from timm's Mixup: the same λ draws, pairs and targets."""
    images = torch.randn(B, 3, 8, 8)
    np.random.seed(5)
    labels = torch.arange(B)
    ours = OriginalMixup(mixup_alpha=0.2, mode=mode, label_smoothing=0.1, num_classes=10)(images.clone(), labels)
    np.random.seed(5)
    timms = Mixup(mixup_alpha=0.2, mode=mode, label_smoothing=0.1, num_classes=10)(images.clone(), labels)
    for mine, theirs in zip(ours, timms):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_batch_mixup_blends_each_image_with_its_unmixed_partner():
    images = torch.randn(B, 3, 8, 8)
    np.random.seed(0)  # λ = 0.5626
    mixer = OriginalMixup(mixup_alpha=1.0, label_smoothing=0.0, num_classes=B)
    mixed, targets = mixer(images.clone(), torch.arange(B))
    lam = targets[0, 0].item()
    assert 0.1 < lam < 0.9
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_per_image_cutmix_takes_each_box_from_the_unmixed_partner(mode):
    np.random.seed(2)
    images, targets = OriginalMixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode=mode, label_smoothing=0.0,
                                    num_classes=B)(constant_images(), torch.arange(B))
    for i in range(B):
        partner = B - 1 - i
        area = (images[i, 0] == partner).sum().item()
        assert ((images[i] == i) | (images[i] == partner)).all()
        torch.testing.assert_close(targets[i, partner], torch.tensor(area / (H * W)))
        torch.testing.assert_close(targets[i, i], torch.tensor(1 - area / (H * W)))
        if mode == "pair":  # both images of a pair swap the same box
            assert torch.equal(images[i, 0] == partner, images[partner, 0] == i)


@pytest.mark.parametrize("mode", ["pair", "elem"])
def test_per_image_cutmix_leaves_the_images_drawn_unmixed_as_they_are(mode):
    """--mixup-prob 0.5 with min-max CutMix, per image: an image whose λ is drawn 1 (not mixed) keeps its pixels and
    its one-hot target; a min-max box drawn for it anyway would paste its partner's pixels (timm's λ draw says which
    images mix, and CutMix is drawn for every image alike)."""
    np.random.seed(0)
    images, targets = OriginalMixup(mixup_alpha=0.0, cutmix_alpha=1.0, cutmix_minmax=(0.2, 0.4), prob=0.5, mode=mode,
                                    label_smoothing=0.0, num_classes=B)(constant_images(), torch.arange(B))
    unmixed = [i for i in range(B) if targets[i, i] == 1.0]
    assert 0 < len(unmixed) < B
    for i in unmixed:
        assert (images[i] == i).all()
