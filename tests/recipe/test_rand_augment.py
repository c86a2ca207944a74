"""The original's RandAugment: op pool and order, level rules, every op on tiny images against hand-computed pixels,
unclamped magnitudes, choice frequencies, the config grammar, and which implementation the recipe builds."""
import math
import random
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image, ImageFilter
from timm.data.auto_augment import RandAugment as TimmRandAugment

from classification.data import rand_augment as ra
from classification.data.defaults import resolve_dataset_defaults
from classification.data.transforms import build_transform
from classification.engine.config import parse_args

BICUBIC = Image.Resampling.BICUBIC
FILL = (124, 116, 104)  # the ImageNet mean x 255, rounded: the original's fill
RAMP = (np.arange(64).reshape(8, 8) * 3 + 10).astype(np.uint8)  # pixel (y, x) = 24 y + 3 x + 10


def rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.stack([gray] * 3, -1))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)[..., 0].astype(int)


def op(name: str, img: Image.Image, *args) -> Image.Image:
    return ra.OPS[name](img, *args, fill=FILL, resample=BICUBIC)


def test_pool_is_the_originals_19_ops_in_order():
    assert ra.RAND_OPS == (
        "Distort", "Zoom", "Blur", "Skew", "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeTpu",
        "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel")
    assert set(ra.OPS) == set(ra.LEVEL_RULES) == set(ra.CHOICE_WEIGHTS_0) == set(ra.RAND_OPS)
    transform = ra.rand_augment_transform("rand-m9-mstd0.5", FILL, BICUBIC)
    assert [o.name for o in transform.ops] == list(ra.RAND_OPS) and transform.num_layers == 2
    assert all((o.prob, o.magnitude, o.magnitude_std, o.fill, o.resample) == (0.5, 9, 0.5, FILL, BICUBIC)
               for o in transform.ops)
    assert transform.choice_weights is None


@pytest.mark.parametrize("name, at9, at10", [
    ("Distort", 19, 20), ("Zoom", 0.36, 0.4), ("PosterizeTpu", 3, 4), ("Solarize", 230, 256),
    ("SolarizeAdd", 99, 110), ("Color", 1.72, 1.9), ("Contrast", 1.72, 1.9), ("Brightness", 1.72, 1.9),
    ("Sharpness", 1.72, 1.9), ("AutoContrast", None, None), ("Equalize", None, None), ("Invert", None, None)])
def test_unsigned_level_rules(name, at9, at10):
    for magnitude, expected in ((9, at9), (10, at10)):
        assert ra.level_to_arg(name, magnitude) == (() if expected is None else (pytest.approx(expected),))
    if name == "PosterizeTpu":
        assert ra.level_to_arg(name, 2.4) == (0,) and ra.level_to_arg(name, 12.5) == (5,)


@pytest.mark.parametrize("name, at9", [("Rotate", 27.0), ("ShearX", 0.27), ("ShearY", 0.27), ("Blur", 0.45),
                                       ("Skew", 0.27), ("TranslateXRel", 0.405), ("TranslateYRel", 0.405)])
def test_signed_level_rules_draw_either_sign_evenly(name, at9):
    random.seed(0)
    values = [ra.level_to_arg(name, 9)[0] for _ in range(2000)]
    assert set(np.round(values, 6)) == {round(at9, 6), round(-at9, 6)}
    assert 900 < sum(v > 0 for v in values) < 1100


def test_magnitude_is_gaussian_and_never_clamped():
    augment = ra.RandAugmentOp("Rotate", magnitude=9, magnitude_std=3.0)
    random.seed(1)
    draws = np.array([augment.sample_magnitude() for _ in range(20000)])
    assert abs(draws.mean() - 9) < 0.1 and abs(draws.std() - 3.0) < 0.1
    assert draws.max() > 15 and draws.min() < 0  # timm clamps to [0, 10]; the original does not
    assert (draws > 10).mean() == pytest.approx(0.369, abs=0.02)  # P(N(9, 3) > 10)
    # and the level rule follows the unclamped magnitude: Solarize threshold above 256, Zoom below zero magnitude
    assert ra.level_to_arg("Solarize", 12.0) == (307,) and ra.level_to_arg("Zoom", -1.0)[0] < 0
    assert ra.RandAugmentOp("Rotate", 9, 0.0).sample_magnitude() == 9


def test_each_op_applies_with_probability_one_half():
    augment = ra.RandAugmentOp("Invert", magnitude=9)
    img = rgb(np.full((2, 2), 10, np.uint8))
    random.seed(2)
    applied = sum(pixels(augment(img))[0, 0] == 245 for _ in range(4000))
    assert 1900 < applied < 2100


def test_uniform_choice_with_replacement_histogram():
    transform = ra.rand_augment_transform("rand-m9-n3", FILL, BICUBIC)
    np.random.seed(3)
    picks = [ra.RAND_OPS.index(o.name) for _ in range(19000) for o in transform.choose()]
    counts = np.bincount(picks, minlength=19)
    assert len(picks) == 57000 and abs(counts - 3000).max() < 250  # 3000 each, binomial sd ~53
    np.random.seed(3)
    repeats = sum(len({o.name for o in transform.choose()}) < 3 for _ in range(5000))
    assert repeats / 5000 == pytest.approx(1 - (18 / 19) * (17 / 19), abs=0.02)  # with replacement


@pytest.mark.parametrize("magnitude", [0.0, 0.1, -2.0])
def test_zoom_to_less_than_a_pixel_gives_the_black_canvas(magnitude):
    """`rand-m0`, or a magnitude drawn near 0 or below (`rand-m1-mstd1`), made Zoom resize to 0 or fewer pixels,
    which Pillow refuses: the run stopped at that image. The picture shrunk to nothing leaves the black canvas."""
    white = Image.new("RGB", (8, 8), (200, 100, 50))
    out = ra.RandAugmentOp("Zoom").apply(white, magnitude)    # factor 0.4 m / 10: round(8 x factor) = 0 or less
    assert out.size == (8, 8) and out.mode == "RGB" and not np.asarray(out).any()


def test_w0_with_more_layers_than_its_ops_is_refused():
    """w0 draws without replacement from its 13 ops of non-zero weight: n14 failed at the first image."""
    with pytest.raises(ValueError, match=r"^the weight set w0 draws n different ops of its 13, got n14$"):
        ra.rand_augment_transform("rand-n14-m9-w0")
    assert ra.rand_augment_transform("rand-n13-m9-w0").num_layers == 13


def test_weighted_choice_w0_without_replacement():
    transform = ra.rand_augment_transform("rand-m9-mstd0.5-w0", FILL, BICUBIC)
    weights = np.array([ra.CHOICE_WEIGHTS_0[n] for n in ra.RAND_OPS])
    np.testing.assert_allclose(transform.choice_weights, weights / weights.sum())
    assert ra.CHOICE_WEIGHTS_0["Rotate"] == 0.3 and ra.CHOICE_WEIGHTS_0["Zoom"] == 0
    np.random.seed(4)
    firsts, seconds = [], []
    for _ in range(10000):
        a, b = transform.choose()
        assert a is not b
        firsts.append(ra.RAND_OPS.index(a.name))
        seconds.append(ra.RAND_OPS.index(b.name))
    first = np.bincount(firsts, minlength=19) / 10000
    np.testing.assert_allclose(first, weights / weights.sum(), atol=0.015)
    never = [i for i, w in enumerate(weights) if w == 0]
    assert not set(never) & (set(firsts) | set(seconds))


@pytest.mark.parametrize("config, expected", [
    ("rand-m9-mstd0.5", (9, 2, 0.5, False)), ("rand-n3-m7", (7, 3, 0.0, False)), ("rand", (10, 2, 0.0, False)),
    ("rand-m5-w0", (5, 2, 0.0, True)), ("rand-m9-n1-mstd1.5", (9, 1, 1.5, False))])
def test_config_grammar(config, expected):
    transform = ra.rand_augment_transform(config)
    magnitude, layers, std, weighted = expected
    first = transform.ops[0]
    assert (first.magnitude, transform.num_layers, first.magnitude_std) == (magnitude, layers, std)
    assert (transform.choice_weights is not None) == weighted
    assert transform.ops[0].fill == (128, 128, 128)
    assert transform.ops[0].resample == (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


@pytest.mark.parametrize("config", ["rand-m9-inc1", "rand-m9-mmax10", "rand-w1", "augmix-m5", "rand-m9.5"])
def test_config_outside_the_originals_grammar_is_refused(config):
    with pytest.raises(ValueError):
        ra.rand_augment_transform(config)


@pytest.mark.parametrize("config", ["rand-m9-inc", "rand-m9-mmax", "rand-mX-n2", "rand-m9-x-mstd1.5", "rand--m9"])
def test_a_section_without_a_number_is_refused(config):
    """The original skips it: `rand-mX-n2` ran at magnitude 10 and `rand-m9-inc` without timm's `inc`, unseen."""
    with pytest.raises(ValueError, match="has no value"):
        ra.rand_augment_transform(config)


# ---- each op against hand-computed pixels ----

def test_zoom_shrinks_into_the_middle_of_a_black_canvas():
    white = Image.new("RGB", (8, 8), (200, 100, 50))
    out = np.asarray(ra.zoom(white, 0.36, FILL, BICUBIC))  # m9: round(8 * 0.36) = 3 -> 3x3 at [3:6, 3:6]
    expected = np.zeros((8, 8, 3), int)
    expected[3:6, 3:6] = (200, 100, 50)
    np.testing.assert_array_equal(out, expected)
    out = np.asarray(ra.zoom(white, 0.5, FILL, BICUBIC))  # 4x4 at [2:6, 2:6]
    assert (out[2:6, 2:6] == (200, 100, 50)).all() and out.sum() == 16 * 350


def test_skew_moves_the_four_corners_as_the_original():
    s = 3  # ceil(8 * 0.27)
    coeffs = ra.skew_coefficients(8, 8, 0.27)

    def source_of(x, y):
        a, b, c, d, e, f, g, h = coeffs
        den = g * x + h * y + 1
        return (a * x + b * y + c) / den, (d * x + e * y + f) / den

    for out, src in [((-s, 0), (0, 0)), ((8, -s), (8, 0)), ((8 + s, 8), (8, 8)), ((0, 8 + s), (0, 8))]:
        np.testing.assert_allclose(source_of(*out), src, atol=1e-9)
    white = Image.new("RGB", (8, 8), (200, 200, 200))
    assert (pixels(ra.skew(white, 0.27, FILL, BICUBIC)) == 200).all()  # corners pushed out: the canvas stays covered
    inward = pixels(ra.skew(white, -0.27, FILL, BICUBIC))  # corners pulled in: black (not the fill) at the corners
    assert inward[0, 0] == inward[0, 7] == inward[7, 7] == inward[7, 0] == 0
    assert (inward[3:5, 2:6] == 200).all()


@pytest.mark.parametrize("width, height, amount", [(8, 8, 0.27), (16, 16, 0.3 * 1.0183), (224, 224, -0.243),
                                                   (17, 40, 0.11), (300, 200, -0.3)])
def test_skew_coefficients_are_the_exact_solution_rounded_once(width, height, amount):
    """The skewed corners form a parallelogram, so the map is affine: its perspective terms are exactly 0 and the
    rest is the closed form below, rounded once. A floating-point solve misses both in the last bits, and which bits
    it gets depends on the BLAS and its thread count (numpy 1.26: OMP_NUM_THREADS=1 and 2 differed)."""
    s = math.ceil(max(width, height) * amount)
    den = (width + s) * (height + s) + s * s
    a, d = Fraction(width * (height + s), den), Fraction(height * s, den)
    exact = (a, -a * s / (height + s), a * s, d, Fraction(height * (width + s), den), d * s, 0, 0)
    assert tuple(ra.skew_coefficients(width, height, amount)) == tuple(float(c) for c in exact)


def test_distort_is_the_identity_below_two_tiles_and_moves_inner_corners():
    img = rgb(RAMP)
    assert (pixels(ra.distort(img, 19, FILL, BICUBIC)) == RAMP).all()  # m9: int(19 / 10) = 1 tile
    assert ra.distort_mesh(8, 8, 20) == [  # m10: 2 x 2 tiles, the inner corner (4, 4) taken from (24, 24)
        ((0, 0, 4, 4), (0, 0, 0, 4, 24, 24, 4, 0)),
        ((4, 0, 8, 4), (4, 0, 24, 24, 8, 4, 8, 0)),
        ((0, 4, 4, 8), (0, 4, 0, 8, 4, 8, 24, 24)),
        ((4, 4, 8, 8), (24, 24, 4, 8, 8, 8, 8, 4))]
    out = pixels(ra.distort(img, 20, FILL, BICUBIC))
    assert out[0, 0] > 0 and out[4, 4] == 0  # near the fixed outer corner vs sampled outside the image (black)
    assert len(ra.distort_mesh(9, 9, 31)) == 9 and ra.distort_mesh(9, 9, 31)[-1][0] == (6, 6, 9, 9)
    # below magnitude 0 the original divides by zero tiles; here one tile, the identity
    assert ra.distort_mesh(8, 8, 5) == [((0, 0, 8, 8), (0, 0, 0, 8, 8, 8, 8, 0))]


@pytest.mark.parametrize("width, height, shift, tiles", [
    (1, 1, 20, 1), (1, 5, 30, 1), (5, 1, 20, 1), (2, 3, 30, 2), (3, 2, 30, 2), (3, 3, 30, 3)])
def test_distort_of_an_image_narrower_than_its_tiles_takes_one_tile_per_pixel(width, height, shift, tiles):
    """Pillow divided by zero on the tiles of no pixel (a 1-pixel side from magnitude 10 on)."""
    img = Image.fromarray(np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3))
    mesh = ra.distort_mesh(width, height, shift)
    assert len(mesh) == tiles * tiles and all(right > left and bottom > top for (left, top, right, bottom), _ in mesh)
    out = ra.distort(img, shift, FILL, BICUBIC)
    assert out.size == img.size
    if tiles == 1:  # no inner corner: the identity
        assert (np.asarray(out) == np.asarray(img)).all()


@pytest.mark.parametrize("name", ra.RAND_OPS)
@pytest.mark.parametrize("size", [(1, 1), (1, 7), (7, 1), (2, 3)])
def test_every_op_keeps_a_tiny_image_at_any_magnitude(name, size):
    img = Image.fromarray(np.full((size[1], size[0], 3), 77, np.uint8))
    for magnitude in (-5, 0, 9, 10, 30):
        random.seed(0)
        out = ra.RandAugmentOp(name, magnitude, prob=1.0)(img)
        assert out.size == img.size and out.mode == img.mode


def test_blur_radius_sign_does_not_matter():
    impulse = np.zeros((8, 8), np.uint8)
    impulse[3:5, 3:5] = 255
    img = rgb(impulse)
    blurred = pixels(ra.blur(img, -0.45, FILL, BICUBIC))
    assert (blurred == pixels(img.filter(ImageFilter.GaussianBlur(0.45)))).all()
    assert (blurred == pixels(ra.blur(img, 0.45, FILL, BICUBIC))).all()
    assert blurred[3, 3] < 255 and blurred[2, 3] > 0 and (blurred == blurred.T).all()
    assert (pixels(ra.blur(rgb(np.full((8, 8), 77, np.uint8)), 0.45, FILL, BICUBIC)) == 77).all()


def test_posterize_tpu_solarize_solarize_add_invert_on_known_values():
    values = np.array([[0, 20, 31, 37], [127, 128, 200, 229], [230, 255, 64, 96]], np.uint8)
    img = rgb(values)
    np.testing.assert_array_equal(pixels(op("PosterizeTpu", img, 3)),  # keep 3 bits: & 0b11100000
                                  [[0, 0, 0, 32], [96, 128, 192, 224], [224, 224, 64, 96]])
    np.testing.assert_array_equal(pixels(op("PosterizeTpu", img, 8)), values)
    # magnitudes below 2.5 (never clamped) keep 0 or fewer bits: black, as Pillow gave before 13 (which refuses them)
    assert [ra.LEVEL_RULES["PosterizeTpu"](m) for m in (2.4, -3.0)] == [(0,), (-1,)]
    for bits in (0, -1):
        assert not pixels(op("PosterizeTpu", img, bits)).any()
    np.testing.assert_array_equal(pixels(op("Solarize", img, 230)),  # invert >= 230
                                  [[0, 20, 31, 37], [127, 128, 200, 229], [25, 0, 64, 96]])
    np.testing.assert_array_equal(pixels(op("SolarizeAdd", img, 99)),  # +99 below 128, saturating
                                  [[99, 119, 130, 136], [226, 128, 200, 229], [230, 255, 163, 195]])
    np.testing.assert_array_equal(pixels(op("Invert", img)), 255 - values.astype(int))
    assert op("SolarizeAdd", img.convert("RGBA"), 99).tobytes() == img.convert("RGBA").tobytes()


def test_autocontrast_and_enhance_factors():
    img = rgb(np.array([[50, 150], [150, 50]], np.uint8))
    np.testing.assert_array_equal(pixels(op("AutoContrast", img)), [[0, 255], [255, 0]])
    grey = rgb(np.full((2, 2), 100, np.uint8))
    assert (pixels(op("Brightness", grey, 1.72)) == 172).all()  # m9: factor 1.72
    assert (pixels(op("Color", grey, 1.72)) == 100).all()  # a grey image has no colour to enhance
    assert (pixels(op("Contrast", grey, 1.72)) == 100).all()  # contrast about its own mean


def test_color_sharpness_and_equalize_on_hand_computed_pixels():
    """Each op is the one its name says: the grey image of `test_autocontrast_and_enhance_factors` leaves Color,
    Contrast and Sharpness alike, so two swapped enhancers, or Equalize built as AutoContrast, went unseen."""
    two = Image.fromarray(np.array([[[200, 100, 50], [20, 40, 220]]], np.uint8))
    # Color 0: each pixel's own luma 0.299 R + 0.587 G + 0.114 B (124.2, 54.54); Contrast 0: their one mean grey
    np.testing.assert_array_equal(np.asarray(op("Color", two, 0.0)), [[[124] * 3, [55] * 3]])
    assert len(np.unique(np.asarray(op("Contrast", two, 0.0)))) == 1
    impulse = np.zeros((5, 5), np.uint8)
    impulse[2, 2] = 255
    # Sharpness 0: PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 inside the 1-pixel border, kept there
    smooth = np.zeros((5, 5), int)
    smooth[1:4, 1:4] = round(255 / 13)
    smooth[2, 2] = round(255 * 5 / 13)
    np.testing.assert_array_equal(pixels(op("Sharpness", rgb(impulse), 0.0)), smooth)
    # Equalize: 255 pixels of 10, 255 of 12, 10 of 30; step (520 - 10) // 255 = 2, value i -> (1 + #below i) // 2
    ramp = np.array([10] * 255 + [12] * 255 + [30] * 10, np.uint8).reshape(20, 26)
    expected = np.select([ramp == 10, ramp == 12], [0, 128], 255)
    np.testing.assert_array_equal(pixels(op("Equalize", rgb(ramp))), expected)   # AutoContrast gives 12 -> 25


def test_w0_choice_weights_are_the_originals():
    """Weight set 0 as the original's `_RAND_CHOICE_WEIGHTS_0` (facts 5.4); the four ops timm lacks weigh 0."""
    assert ra.CHOICE_WEIGHTS_0 == {
        "Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1,
        "Color": 0.025, "Sharpness": 0.025, "AutoContrast": 0.025, "Solarize": 0.005, "SolarizeAdd": 0.005,
        "Contrast": 0.005, "Brightness": 0.005, "Equalize": 0.005, "PosterizeTpu": 0.0, "Invert": 0.0,
        "Distort": 0.0, "Zoom": 0.0, "Blur": 0.0, "Skew": 0.0}


def test_affine_ops_use_the_fill_colour():
    img = rgb(RAMP)
    shifted = np.asarray(op("TranslateXRel", img, 0.25))  # 2 pixels: out[y, x] = in[y, x + 2]
    np.testing.assert_array_equal(shifted[:, :6, 0], RAMP[:, 2:])
    assert (shifted[:, 6:] == FILL).all()
    shifted = np.asarray(op("TranslateYRel", img, -0.25))  # out[y, x] = in[y - 2, x]
    np.testing.assert_array_equal(shifted[2:, :, 0], RAMP[:6])
    assert (shifted[:2] == FILL).all()
    sheared = np.asarray(op("ShearX", img, 2.0))  # row y reads x + 2 (y + 0.5): shifts 1, 3, 5, 7
    for y, shift in enumerate((1, 3, 5, 7)):
        np.testing.assert_array_equal(sheared[y, :8 - shift, 0], RAMP[y, shift:])
        assert (sheared[y, 8 - shift:] == FILL).all()
    assert (sheared[4:] == FILL).all()
    assert (pixels(op("ShearY", img, 2.0)) == pixels(op("ShearX", rgb(RAMP.T.copy()), 2.0)).T).all()


def test_relative_translations_scale_by_their_own_side():
    """On a non-square image (8 high, 16 wide) TranslateXRel 0.25 shifts by a quarter of the width (4 pixels) and
    TranslateYRel by a quarter of the height (2): a rule taking the other side shifts by 2 and 4 (unseen on the
    square ramp above)."""
    wide = (np.arange(128).reshape(8, 16) + 60).astype(np.uint8)     # pixel (y, x) = 16 y + x + 60
    img = rgb(wide)
    assert img.size == (16, 8)
    shifted = np.asarray(op("TranslateXRel", img, 0.25))               # out[y, x] = in[y, x + 4]
    np.testing.assert_array_equal(shifted[:, :12, 0], wide[:, 4:])
    assert (shifted[:, 12:] == FILL).all()
    shifted = np.asarray(op("TranslateYRel", img, 0.25))               # out[y, x] = in[y + 2, x]
    np.testing.assert_array_equal(shifted[:6, :, 0], wide[2:])
    assert (shifted[6:] == FILL).all()


def test_rotate_is_bicubic_with_fill():
    img = rgb(RAMP)
    np.testing.assert_array_equal(pixels(op("Rotate", img, 90.0)), np.rot90(RAMP))  # counter-clockwise
    rotated = np.asarray(ra.rotate(img, 45.0, FILL, Image.Resampling.NEAREST))
    assert tuple(rotated[0, 0]) == FILL
    assert (rotated == np.asarray(img.rotate(45.0, resample=BICUBIC, fillcolor=FILL))).all()


def test_a_drawn_interpolation_comes_from_pythons_random():
    img, both = rgb(RAMP), (Image.Resampling.BILINEAR, BICUBIC)
    random.seed(5)
    drawn = ra.OPS["ShearX"](img, 0.3, fill=FILL, resample=both)
    random.seed(5)
    expected = ra.OPS["ShearX"](img, 0.3, fill=FILL, resample=random.choice(both))
    assert drawn.tobytes() == expected.tobytes()


# ---- which implementation the train transform builds ----

def train_transform(*argv):
    cfg = parse_args(["-j", "0", *argv])
    resolve_dataset_defaults(cfg)
    return build_transform(cfg, training=True)


def test_recipe_config_builds_the_originals_rand_augment():
    transform = train_transform("-c", "configs/strategies/local_mamba/config.yaml")
    names = [type(t).__name__ for t in transform.transforms]
    assert names == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment", "MaybeToTensor",
                     "Normalize", "RandomErasing"]
    augment = transform.transforms[2]
    assert isinstance(augment, ra.RandAugment) and len(augment.ops) == 19 and augment.num_layers == 2
    assert {(o.magnitude, o.magnitude_std, o.fill, o.resample) for o in augment.ops} == {(9, 0.5, FILL, BICUBIC)}
    assert "ColorJitter" not in names  # the recipe's color_jitter 0.3 is ignored while aa is set, as the original
    bilinear = train_transform("--aa", "rand-m9-mstd0.5").transforms[2]
    assert bilinear.ops[0].resample == Image.Resampling.BILINEAR
    grey_mean = train_transform("--aa", "rand-m9", "--image-mean", "0.5", "0.2", "1.0").transforms[2]
    assert grey_mean.ops[0].fill == (128, 51, 255)  # the fill follows --image-mean


def test_aa_impl_timm_builds_timms():
    transform = train_transform("-c", "configs/strategies/local_mamba/config.yaml", "--aa-impl", "timm")
    augment = transform.transforms[2]
    assert isinstance(augment, TimmRandAugment) and len(augment.ops) == 15
    assert not any(isinstance(t, ra.RandAugment) for t in transform.transforms)


@pytest.mark.parametrize("policy, op_name, magnitude", [
    ("rand-m9-mstd0.5-inc1", "PosterizeIncreasing", 10), ("rand-m9", "Posterize", 0)])
def test_timms_posterize_of_zero_bits_gives_a_black_image_instead_of_ending_the_run(policy, op_name, magnitude):
    """Pillow 13 refuses to posterize to 0 bits, which timm's ops draw at these magnitudes (`inc1` at its top, the
    plain op at its bottom): one image in ~2000 of `rand-m9-mstd0.5-inc1` ended the run with a ValueError. The op
    gives the black image it gave on older Pillow."""
    transform = train_transform("--aa", policy, "--aa-impl", "timm")
    (op,) = [op for op in transform.transforms[2].ops if op.name == op_name]
    op.prob, op.magnitude, op.magnitude_std = 1.0, magnitude, 0
    assert op.level_fn(magnitude, op.hparams) == (0,)   # 0 bits kept
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert not np.asarray(op(image)).any()
    op.magnitude = 5  # 2 bits kept: what Pillow computes
    assert np.array_equal(np.asarray(op(image)), np.asarray(image) & 0b11000000)


def test_seeded_pipeline_is_deterministic():
    from classification.common.rng import seeded

    transform = train_transform("-c", "configs/strategies/local_mamba/config.yaml", "--img-size", "16")
    image = rgb(np.tile(RAMP, (3, 3)))
    runs = []
    for _ in range(2):
        with seeded(123):
            runs.append(transform(image))
    assert runs[0].shape == (3, 16, 16) and (runs[0] == runs[1]).all()


def test_zero_magnitude_std_draws_nothing_from_python_random():
    """Without mstd the magnitude is fixed and takes no draw, so the sign / apply draws of a seeded run stay those
    of the original."""
    op = ra.RandAugmentOp("Rotate", magnitude=9, magnitude_std=0.0)
    random.seed(0)
    before = random.getstate()
    assert op.sample_magnitude() == 9
    assert random.getstate() == before
