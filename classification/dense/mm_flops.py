"""FLOPs and parameters of a whole mmdet detector or mmseg segmentor built from a config, the selective scans
included (what `detection/tools/analysis_tools/mamba_get_flops.py` prints). mmengine, mmdet and mmseg are imported
inside the functions."""
from __future__ import annotations

from typing import Any

import torch

from ..models.flop_count import SCAN_OP, flop_analysis

# The input size the original's tool counts at, by the config's default_scope.
DEFAULT_SHAPES = {'mmdet': (1280, 800), 'mmseg': (512, 2048)}


def build_mm_model(cfg: Any) -> tuple[torch.nn.Module, str]:
    """The config's model (mmdet or mmseg by its default_scope), CPU, eval mode, weights as constructed."""
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings

    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(scope)
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmdet.registry import MODELS
    return MODELS.build(cfg.model).eval(), scope


def random_image_samples(scope: str, height: int, width: int) -> list:
    """One data sample whose metadata describes an unscaled, unpadded H x W image."""
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1.0, 1.0))
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample
        return [SegDataSample(metainfo=meta)]
    from mmdet.structures import DetDataSample
    return [DetDataSample(metainfo=meta)]


def complexity(cfg: Any, height: int, width: int) -> dict:
    """dict(params, flops, scan_flops, uncounted) of one forward of the config's model on a (1, 3, H, W) image."""
    model, scope = build_mm_model(cfg)
    samples = random_image_samples(scope, height, width)

    class TensorForward(torch.nn.Module):
        """The mm model's 'tensor' forward with fixed data samples: one image tensor in, as fvcore traces it."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> Any:
            return self.model(image, samples, mode='tensor')

    analysis = flop_analysis(TensorForward(), (3, height, width))
    scan_key = SCAN_OP.split('::', 1)[1]  # fvcore's by_operator() drops the 'prim::' namespace
    return dict(params=sum(p.numel() for p in model.parameters()), flops=int(analysis.total()),
                scan_flops=int(analysis.by_operator().get(scan_key, 0)), uncounted=dict(analysis.unsupported_ops()))
