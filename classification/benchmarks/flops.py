"""Parameters and FLOPs of models, in two conventions, both counting one multiply-add as one FLOP:

* original -- what the original code reports for the model: LocalVim (``local_vim_*``) its analytic
  ``VisionMamba.flops()`` (in_proj, conv, x_proj, dt_proj once per layer, a ``5*E*L*N + 2*E*L`` scan per direction);
  LocalVMamba (``local_vssm_*``) fvcore with a scan handle, as ``VSSM.flops()``.
* fvcore -- fvcore's trace of one forward with every selective scan charged ``9*B*L*D*N + B*D*L`` (L the padded
  length) and the causal conv1d charged as a convolution, for every model alike.

Runs on CPU. Any other timm model gets the fvcore count only.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..engine.model_builder import resolve_model_name
from ..models.factory import input_channels
from ..models.flop_count import flop_analysis
from ..models.local_vim import VisionMamba
from ..models.local_vmamba import VSSM
from .model_speed import build_model, check_image_size, square_side
from .tables import render_table


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def fvcore_flops(model: nn.Module, img_size: int = 224) -> Tuple[int, Dict[str, int]]:
    """fvcore's total with the scan handle, and the ops it could not count (name -> calls), for one ``img_size``
    square image of the model's channels."""
    analysis = flop_analysis(model, (input_channels(model), img_size, img_size))
    return int(analysis.total()), dict(analysis.unsupported_ops())


def original_flops(model: nn.Module, img_size: int = 224, fvcore_total: Optional[int] = None) -> Optional[int]:
    """The original code's figure: LocalVim's analytic count, LocalVMamba's fvcore count (the same as
    :func:`fvcore_flops`, reused when given); None for other models."""
    shape = (input_channels(model), img_size, img_size)
    if isinstance(model, VisionMamba):
        return int(model.flops(shape))
    if isinstance(model, VSSM):
        return fvcore_total if fvcore_total is not None else int(model.flops(shape))
    return None


def flops_row(name: str, img_size: int = 224, num_classes: Optional[int] = None,
              model_kwargs: Optional[Mapping[str, Any]] = None, directions: Optional[str] = None) -> dict:
    """Params and both FLOP counts of one model (built as :func:`build_model` builds it), at the size it is built for
    (an ``img_size`` in ``model_kwargs`` wins over ``img_size``): dict(model, img_size, params, original, fvcore,
    unsupported)."""
    img_size = square_side((model_kwargs or {}).get("img_size", img_size))
    model = build_model(name, img_size, num_classes=num_classes, model_kwargs=model_kwargs, directions=directions)
    check_image_size(model, resolve_model_name(name), img_size)
    total, unsupported = fvcore_flops(model, img_size)
    return dict(model=resolve_model_name(name), img_size=img_size, params=count_params(model),
                original=original_flops(model, img_size, total), fvcore=total, unsupported=unsupported)


def flops_rows(names: List[str], img_size: int = 224, num_classes: Optional[int] = None,
               model_kwargs: Optional[Mapping[str, Any]] = None, directions: Optional[str] = None,
               finished: Optional[List[dict]] = None) -> List[dict]:
    """:func:`flops_row` of each model (names already resolved, or resolvable), without autograd. ``finished``: a
    list each row is also appended to as it ends, which keeps them where a later model fails or Ctrl-C stops."""
    rows = []
    with torch.no_grad():
        for name in names:
            rows.append(flops_row(name, img_size, num_classes, model_kwargs, directions))
            if finished is not None:
                finished.append(rows[-1])
    return rows


def format_flops_table(rows: List[dict]) -> str:
    """Rows of :func:`flops_row` as a text table (exact parameter counts, as the README's model table gives them;
    GFLOPs in both conventions)."""
    header = ("model", "img", "params", "GFLOPs original", "GFLOPs fvcore+scan")
    lines = [list(header)]
    for row in rows:
        original = "-" if row["original"] is None else f"{row['original'] / 1e9:.3f}"
        lines.append([row["model"], str(row["img_size"]), f"{row['params']:,}", original,
                      f"{row['fvcore'] / 1e9:.3f}"])
    return render_table(lines)
