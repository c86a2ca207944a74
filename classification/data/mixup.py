"""Mixup / CutMix with the original's CutMix boxes (its copy of timm's, `lib/dataset/mixup.py`).

timm's `Mixup` draws the same λ and pairs the same images (image i with image n - 1 - i); only its CutMix box
differs in current timm: a box of odd size `cut` spans `cut // 2` pixels above its centre and `(cut + 1) // 2` below
(one pixel more than the original's `cut // 2` each side, on 44 % of the recipe's 224 px boxes), and the min-max box
may touch the image's far edge (the original's cannot). timm offers no hook for the box, so `OriginalMixup` restates
timm 1.0.31's `_mix_batch` / `_mix_elem` / `_mix_pair` around it. Random draws are those of the original, in its
order, from NumPy's global generator.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from timm.data import Mixup

Box = tuple[int, int, int, int]  # top, bottom, left, right: the rows top..bottom - 1 and columns left..right - 1


def cutmix_box(img_shape: Sequence[int], lam: float, ratio_minmax: Optional[Sequence[float]] = None,
               correct_lam: bool = True) -> tuple[Box, float]:
    """The original's CutMix box for an image of shape (..., H, W) and mixing weight `lam`, and the weight its area
    gives (`correct_lam`: 1 - box area / image area, clipped at the border; always so with `ratio_minmax`).

    Without `ratio_minmax` the box is square-scaled: `int(H * sqrt(1 - lam)) // 2` rows above and below a uniformly
    drawn centre (and W's columns alike), clipped to the image. With `ratio_minmax = (lo, hi)` its sides are drawn from
    [int(H * lo), int(H * hi)) and its top-left corner so that it stays inside the image, short of the far edge.
    """
    img_h, img_w = img_shape[-2:]
    if ratio_minmax is None:
        scale = np.sqrt(1 - lam)
        half_h, half_w = int(img_h * scale) // 2, int(img_w * scale) // 2
        cy, cx = np.random.randint(0, img_h), np.random.randint(0, img_w)
        top, bottom = np.clip(cy - half_h, 0, img_h), np.clip(cy + half_h, 0, img_h)
        left, right = np.clip(cx - half_w, 0, img_w), np.clip(cx + half_w, 0, img_w)
    else:
        lo, hi = ratio_minmax
        cut_h = np.random.randint(int(img_h * lo), int(img_h * hi))
        cut_w = np.random.randint(int(img_w * lo), int(img_w * hi))
        top, left = np.random.randint(0, img_h - cut_h), np.random.randint(0, img_w - cut_w)
        bottom, right = top + cut_h, left + cut_w
    if correct_lam or ratio_minmax is not None:
        lam = 1.0 - (bottom - top) * (right - left) / float(img_h * img_w)
    return (int(top), int(bottom), int(left), int(right)), lam


class OriginalMixup(Mixup):
    """timm's `Mixup` (same arguments, λ draws and targets) mixing images as the original does: its CutMix boxes
    (:func:`cutmix_box`). Called with images (B, C, H, W), B even, and labels (B,); returns the mixed images (in
    place) and the soft targets (B, num_classes)."""

    def _mix_batch(self, x: torch.Tensor) -> float:
        """One λ for the whole batch: image i mixed with image B - 1 - i."""
        lam, use_cutmix = self._params_per_batch()
        if lam == 1.0:
            return 1.0
        if use_cutmix:
            (top, bottom, left, right), lam = cutmix_box(x.shape, lam, self.cutmix_minmax, self.correct_lam)
            x[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
        else:
            partner = x.flip(0).mul_(1.0 - lam)
            x.mul_(lam).add_(partner)
        return lam

    def _mix_elem(self, x: torch.Tensor) -> torch.Tensor:
        """A λ per image: image i takes from the unmixed image B - 1 - i."""
        return self._mix_per_image(x, len(x), both=False)

    def _mix_pair(self, x: torch.Tensor) -> torch.Tensor:
        """A λ per pair (i, B - 1 - i) for i < B / 2, both images of a pair mixed with the same box or weight."""
        return self._mix_per_image(x, len(x) // 2, both=True)

    def _mix_per_image(self, x: torch.Tensor, count: int, both: bool) -> torch.Tensor:
        """Mix images 0..count - 1 each with its partner B - 1 - i (and, with `both`, the partner with it); returns
        the per-image λ as a (B, 1) tensor."""
        lams, use_cutmix = self._params_per_elem(count)
        source = x.clone()
        last = len(x) - 1
        for i in range(count):
            j, lam = last - i, lams[i]
            if lam == 1.0:
                continue
            if use_cutmix[i]:
                (top, bottom, left, right), lams[i] = cutmix_box(x[i].shape, lam, self.cutmix_minmax,
                                                                 self.correct_lam)
                x[i, :, top:bottom, left:right] = source[j, :, top:bottom, left:right]
                if both:
                    x[j, :, top:bottom, left:right] = source[i, :, top:bottom, left:right]
            else:
                x[i] = x[i] * lam + source[j] * (1 - lam)
                if both:
                    x[j] = x[j] * lam + source[i] * (1 - lam)
        per_image = np.concatenate((lams, lams[::-1])) if both else lams
        return torch.tensor(per_image, device=x.device, dtype=x.dtype).unsqueeze(1)
