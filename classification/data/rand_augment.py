"""The original LocalMamba's RandAugment (its `augment_ops.rand_augment_transform`), rebuilt from its rules.

It is not timm's: the pool has 19 ops (four that timm lacks: Distort, Zoom, Blur, Skew; TPU-style posterize), each
chosen op runs with probability 0.5, its magnitude is drawn from N(m, mstd) on every call and is never clamped, and the
level-to-argument rules are the original's. Randomness comes from the global generators the original used (numpy's for
the op choice, python's `random` for apply / magnitude / sign / filter), which the loader seeds per sample.

Config strings: `rand-m9-mstd0.5` -> sections `m` (int magnitude, default 10), `n` (ops per image, default 2),
`mstd` (float magnitude std, default 0: no noise), `w` (index of a choice-weight set; only 0 exists). Any other key
is an error, as in the original (it has no `inc` / `mmax`; timm's implementation, `--aa-impl timm`, does), and so is a
section without a number (`inc`, `mX`), which the original skipped: a typo changed nothing and went unseen.
"""
from __future__ import annotations

import functools
import math
import random
import re
from fractions import Fraction
from typing import Callable, Sequence, Union

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

__all__ = ["RAND_OPS", "CHOICE_WEIGHTS_0", "RandAugment", "RandAugmentOp", "level_to_arg", "rand_augment_transform"]

MAX_LEVEL = 10.0
DEFAULT_FILL = (128, 128, 128)
Resample = Union[int, Sequence[int]]

# The pool in the original's order; the order matters, since the op choice draws indices into it.
RAND_OPS: tuple[str, ...] = (
    "Distort", "Zoom", "Blur", "Skew", "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeTpu", "Solarize",
    "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)

# Weight set 0 (`w0`): relative choice weights; ops at 0 are never chosen.
CHOICE_WEIGHTS_0: dict[str, float] = {
    "Rotate": 0.3, "ShearX": 0.2, "ShearY": 0.2, "TranslateXRel": 0.1, "TranslateYRel": 0.1,
    "Color": 0.025, "Sharpness": 0.025, "AutoContrast": 0.025,
    "Solarize": 0.005, "SolarizeAdd": 0.005, "Contrast": 0.005, "Brightness": 0.005, "Equalize": 0.005,
    "PosterizeTpu": 0.0, "Invert": 0.0, "Distort": 0.0, "Zoom": 0.0, "Blur": 0.0, "Skew": 0.0,
}


def _random_sign(value: float) -> float:
    """`value` or `-value` with equal odds (one python `random` draw)."""
    return -value if random.random() > 0.5 else value


def _pick_resample(resample: Resample) -> int:
    """A PIL filter: `resample` itself, or one drawn from a sequence of them."""
    return random.choice(resample) if isinstance(resample, (list, tuple)) else resample


# ---- level -> argument rules (magnitude on the 0..10 scale, not clamped) ----

def _scaled(magnitude: float, top: float) -> float:
    return magnitude / MAX_LEVEL * top


LEVEL_RULES: dict[str, Callable[[float], tuple]] = {
    "Distort": lambda m: (int(_scaled(m, 10.0) + 10),),
    "Zoom": lambda m: (_scaled(m, 0.4),),
    "Blur": lambda m: (_random_sign(_scaled(m, 0.5)),),
    "Skew": lambda m: (_random_sign(_scaled(m, 0.3)),),
    "AutoContrast": lambda m: (),
    "Equalize": lambda m: (),
    "Invert": lambda m: (),
    "Rotate": lambda m: (_random_sign(_scaled(m, 30.0)),),
    "PosterizeTpu": lambda m: (int(_scaled(m, 4.0)),),
    "Solarize": lambda m: (int(_scaled(m, 256.0)),),
    "SolarizeAdd": lambda m: (int(_scaled(m, 110.0)),),
    "Color": lambda m: (_scaled(m, 1.8) + 0.1,),
    "Contrast": lambda m: (_scaled(m, 1.8) + 0.1,),
    "Brightness": lambda m: (_scaled(m, 1.8) + 0.1,),
    "Sharpness": lambda m: (_scaled(m, 1.8) + 0.1,),
    "ShearX": lambda m: (_random_sign(_scaled(m, 0.3)),),
    "ShearY": lambda m: (_random_sign(_scaled(m, 0.3)),),
    "TranslateXRel": lambda m: (_random_sign(_scaled(m, 0.45)),),
    "TranslateYRel": lambda m: (_random_sign(_scaled(m, 0.45)),),
}


def level_to_arg(name: str, magnitude: float) -> tuple:
    """The arguments op `name` takes at `magnitude` (signed rules draw their sign from python's `random`)."""
    return LEVEL_RULES[name](magnitude)


# ---- the ops: img (PIL) and the level arguments, plus the fill colour and resampling filter ----

def _affine(img: Image.Image, matrix: tuple, fill: tuple, resample: Resample) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=_pick_resample(resample), fillcolor=fill)


def distort_mesh(width: int, height: int, shift: int) -> list[tuple[tuple, tuple]]:
    """PIL MESH data of Distort: `int(shift / 10)` x `int(shift / 10)` tiles (at least one, and at most the shorter
    side's pixels: a tile of no pixel made Pillow divide by zero), every inner grid corner taken from `shift` pixels
    right and down. Each entry is (output box, source quad UL, LL, LR, UR)."""
    tiles = max(min(int(0.1 * shift), width, height), 1)
    xs = [k * (width // tiles) for k in range(tiles)] + [width]
    ys = [k * (height // tiles) for k in range(tiles)] + [height]

    def source(gx: int, gy: int) -> tuple[int, int]:
        inner = 0 < gx < tiles and 0 < gy < tiles
        return xs[gx] + shift * inner, ys[gy] + shift * inner

    mesh = []
    for ty in range(tiles):
        for tx in range(tiles):
            box = (xs[tx], ys[ty], xs[tx + 1], ys[ty + 1])
            quad = (*source(tx, ty), *source(tx, ty + 1), *source(tx + 1, ty + 1), *source(tx + 1, ty))
            mesh.append((box, quad))
    return mesh


def distort(img: Image.Image, shift: int, fill: tuple, resample: Resample) -> Image.Image:
    """Elastic-like grid distortion (bicubic); with one tile (shift < 20) the identity."""
    return img.transform(img.size, Image.Transform.MESH, distort_mesh(*img.size, shift),
                         resample=Image.Resampling.BICUBIC)


def zoom(img: Image.Image, factor: float, fill: tuple, resample: Resample) -> Image.Image:
    """Shrink by `factor` (bicubic) and cut the centred original-size box out of it: the picture sits in the middle
    of a black canvas (the fill colour is not used, as in the original). A factor that leaves less than a pixel (a
    magnitude near 0 or below, never clamped; Pillow refuses to resize to it) gives the black canvas alone."""
    w, h = img.size
    size = (int(round(w * factor)), int(round(h * factor)))
    if min(size) < 1:
        return Image.new(img.mode, img.size)
    small = img.resize(size, resample=Image.Resampling.BICUBIC)
    cx, cy = small.size[0] / 2, small.size[1] / 2
    return small.crop((math.floor(cx - w / 2), math.floor(cy - h / 2), math.floor(cx + w / 2), math.floor(cy + h / 2)))


def blur(img: Image.Image, radius: float, fill: tuple, resample: Resample) -> Image.Image:
    """Gaussian blur; a negative radius blurs as its absolute value (what Pillow does with the original's sign)."""
    return img.filter(ImageFilter.GaussianBlur(abs(radius)))


def skew_coefficients(width: int, height: int, amount: float) -> tuple[float, ...]:
    """The 8 PIL PERSPECTIVE coefficients of Skew: the output corners TL, TR, BR, BL moved by
    `s = ceil(max(width, height) * amount)` pixels (left, up, right, down) show the input's corners."""
    return _perspective_coefficients(width, height, math.ceil(max(width, height) * amount))


@functools.lru_cache(maxsize=1024)
def _perspective_coefficients(width: int, height: int, s: int) -> tuple[float, ...]:
    """The 8 x 8 system of the four point pairs, solved exactly in rationals and rounded once.

    A floating-point solve (the original's float32 pseudo-inverse, or `np.linalg.solve`) is not reproducible: its last
    bits depend on the BLAS build and its thread count (numpy 1.26's OpenBLAS gave other bits with OMP_NUM_THREADS=2
    than with 1), and those bits decide whether a pixel on the border samples the image or the black outside, so the
    same seeded sample came out differently in two processes. The integer corners give one exact answer everywhere.
    """
    source = [(0, 0), (width, 0), (width, height), (0, height)]
    target = [(-s, 0), (width, -s), (width + s, height), (0, height + s)]
    rows = []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y, u])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y, v])
    return tuple(float(c) for c in _solve_exactly([[Fraction(a) for a in row] for row in rows]))


def _solve_exactly(rows: list[list[Fraction]]) -> list[Fraction]:
    """Gauss-Jordan elimination on an augmented n x (n + 1) matrix of a nonsingular system; the n unknowns."""
    n = len(rows)
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col])]
    return [rows[r][n] / rows[r][r] for r in range(n)]


def skew(img: Image.Image, amount: float, fill: tuple, resample: Resample) -> Image.Image:
    """Perspective skew (bicubic, black outside the source)."""
    return img.transform(img.size, Image.Transform.PERSPECTIVE, skew_coefficients(*img.size, amount),
                         resample=Image.Resampling.BICUBIC)


def rotate(img: Image.Image, degrees: float, fill: tuple, resample: Resample) -> Image.Image:
    """Rotate about the centre, always bicubic (the original ignores the configured filter here)."""
    return img.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor=fill)


def posterize_bits(img: Image.Image, bits: int) -> Image.Image:
    """Keep the `bits` most significant bits of every channel: 8 or more keep the image, 0 or fewer (a magnitude below
    2.5, never clamped) give the black image Pillow gave before version 13, which refuses them."""
    if bits >= 8:
        return img
    if bits <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


def posterize(img: Image.Image, bits: int, fill: tuple, resample: Resample) -> Image.Image:
    """The PosterizeTpu op: `posterize_bits`."""
    return posterize_bits(img, bits)


def solarize_add(img: Image.Image, add: int, fill: tuple, resample: Resample, threshold: int = 128) -> Image.Image:
    """Add `add` (saturating at 255) to values below `threshold`; modes other than L / RGB pass unchanged."""
    if img.mode not in ("L", "RGB"):
        return img
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _enhance(kind: type) -> Callable[..., Image.Image]:
    return lambda img, factor, fill, resample: kind(img).enhance(factor)


OPS: dict[str, Callable[..., Image.Image]] = {
    "Distort": distort,
    "Zoom": zoom,
    "Blur": blur,
    "Skew": skew,
    "AutoContrast": lambda img, fill, resample: ImageOps.autocontrast(img),
    "Equalize": lambda img, fill, resample: ImageOps.equalize(img),
    "Invert": lambda img, fill, resample: ImageOps.invert(img),
    "Rotate": rotate,
    "PosterizeTpu": posterize,
    "Solarize": lambda img, threshold, fill, resample: ImageOps.solarize(img, threshold),
    "SolarizeAdd": solarize_add,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda img, f, fill, resample: _affine(img, (1, f, 0, 0, 1, 0), fill, resample),
    "ShearY": lambda img, f, fill, resample: _affine(img, (1, 0, 0, f, 1, 0), fill, resample),
    "TranslateXRel": lambda img, p, fill, resample: _affine(img, (1, 0, p * img.size[0], 0, 1, 0), fill, resample),
    "TranslateYRel": lambda img, p, fill, resample: _affine(img, (1, 0, 0, 0, 1, p * img.size[1]), fill, resample),
}


class RandAugmentOp:
    """One op of the pool: applied with probability `prob`, at a magnitude drawn from N(magnitude, magnitude_std)."""

    def __init__(self, name: str, magnitude: float = MAX_LEVEL, magnitude_std: float = 0.0, prob: float = 0.5,
                 fill: tuple = DEFAULT_FILL, resample: Resample = (Image.Resampling.BILINEAR,
                                                                   Image.Resampling.BICUBIC)):
        self.name = name
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.prob = prob
        self.fill = tuple(fill)
        self.resample = resample

    def sample_magnitude(self) -> float:
        """This call's magnitude: Gaussian around `magnitude` when `magnitude_std` > 0, never clamped."""
        if self.magnitude_std > 0:
            return random.gauss(self.magnitude, self.magnitude_std)
        return self.magnitude

    def apply(self, img: Image.Image, magnitude: float) -> Image.Image:
        """The op at a given magnitude (signed rules still draw their sign)."""
        return OPS[self.name](img, *level_to_arg(self.name, magnitude), fill=self.fill, resample=self.resample)

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.prob:
            return img
        return self.apply(img, self.sample_magnitude())

    def __repr__(self) -> str:
        return f"{self.name}(p={self.prob}, m={self.magnitude}, mstd={self.magnitude_std})"


class RandAugment:
    """Apply `num_layers` ops drawn from `ops` (numpy's global generator): uniformly with replacement, or by
    `choice_weights` without replacement."""

    def __init__(self, ops: Sequence[RandAugmentOp], num_layers: int = 2, choice_weights: np.ndarray | None = None):
        self.ops = list(ops)
        self.num_layers = num_layers
        self.choice_weights = choice_weights

    def choose(self) -> list[RandAugmentOp]:
        """The ops for one image."""
        picks = np.random.choice(len(self.ops), self.num_layers, replace=self.choice_weights is None,
                                 p=self.choice_weights)
        return [self.ops[i] for i in picks]

    def __call__(self, img: Image.Image) -> Image.Image:
        for op in self.choose():
            img = op(img)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.num_layers}, ops={self.ops})"


def rand_augment_transform(config_str: str, fill: tuple = DEFAULT_FILL,
                           resample: Resample = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)) -> RandAugment:
    """Build the original's RandAugment from a config string such as `rand-m9-mstd0.5` (grammar in the module doc).

    fill: RGB fill of the affine ops (the original: the ImageNet mean x 255, rounded); resample: the affine ops'
    filter (the train interpolation), or a sequence to draw one from per call.
    """
    sections = config_str.split("-")
    if sections[0] != "rand":
        raise ValueError(f"not a RandAugment string: {config_str!r} must be 'rand' then '-'-separated sections, as "
                         f"'rand-m9-mstd0.5'")
    magnitude, num_layers, magnitude_std, weight_idx = MAX_LEVEL, 2, 0.0, None
    for section in sections[1:]:
        parts = re.split(r"(\d.*)", section)
        if len(parts) < 2:
            raise ValueError(f"RandAugment section {section!r} in {config_str!r} has no value: the original's "
                             "grammar has m<int>, n<int>, mstd<float>, w<int> (use --aa-impl timm for timm's)")
        key, value = parts[:2]
        if key == "m":
            magnitude = int(value)
        elif key == "n":
            num_layers = int(value)
        elif key == "mstd":
            magnitude_std = float(value)
        elif key == "w":
            weight_idx = int(value)
        else:
            raise ValueError(f"unknown RandAugment section {section!r} in {config_str!r}: the original's grammar has "
                             "m, n, mstd, w (use --aa-impl timm for timm's)")
    choice_weights = None
    if weight_idx is not None:
        if weight_idx != 0:
            raise ValueError(f"only the weight set w0 exists, got w{weight_idx}")
        weights = np.array([CHOICE_WEIGHTS_0[name] for name in RAND_OPS])
        choice_weights = weights / weights.sum()
        if num_layers > np.count_nonzero(weights):  # w0 draws without replacement
            raise ValueError(f"the weight set w0 draws n different ops of its {np.count_nonzero(weights)}, got "
                             f"n{num_layers}")
    ops = [RandAugmentOp(name, magnitude, magnitude_std, 0.5, fill, resample) for name in RAND_OPS]
    return RandAugment(ops, num_layers, choice_weights)
