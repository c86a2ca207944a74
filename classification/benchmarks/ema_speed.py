"""The update of ``--model-ema`` (``ForeachModelEma``, multi-tensor ops) against timm's ModelEmaV2, the baseline whose
values it keeps: milliseconds per update towards a model's weights, and whether both EMAs end equal bit for bit."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from timm.utils import ModelEmaV2

from ..engine.ema import ForeachModelEma
from .model_speed import build_model
from .tables import render_table
from .timing import DTYPES, median_seconds


def benchmark_ema(model: str, device: Union[str, torch.device] = "cpu", dtype: str = "fp32", repeats: int = 10,
                  warmup: int = 2, decay: float = 0.9998, model_kwargs: Optional[Mapping[str, Any]] = None,
                  directions: Optional[str] = None) -> List[Dict[str, object]]:
    """One row: ``model``'s weights (built with ``model_kwargs`` and ``directions``; in ``dtype``) on ``device``, each
    EMA updated towards them in turn (interleaved medians of ``repeats`` updates after ``warmup``); ``ratio`` is
    ModelEmaV2's time over ForeachModelEma's."""
    net = build_model(model, device=device, model_kwargs=model_kwargs, directions=directions).to(DTYPES[dtype])
    emas = {"ModelEmaV2": ModelEmaV2(net, decay=decay), "ForeachModelEma": ForeachModelEma(net, decay=decay)}
    seconds = median_seconds({name: (lambda ema=ema: ema.update(net)) for name, ema in emas.items()},
                             repeats, warmup, device)
    pairs = zip(emas["ModelEmaV2"].module.state_dict().values(), emas["ForeachModelEma"].module.state_dict().values())
    return [{"model": model, "tensors": len(net.state_dict()), "device": torch.device(device).type, "dtype": dtype,
             "model_ema_v2_ms": seconds["ModelEmaV2"] * 1e3, "foreach_ms": seconds["ForeachModelEma"] * 1e3,
             "ratio": seconds["ModelEmaV2"] / seconds["ForeachModelEma"],
             "equal": all(torch.equal(a, b) for a, b in pairs)}]


def format_ema_table(rows: List[Dict[str, object]]) -> str:
    """The rows of :func:`benchmark_ema` as a text table."""
    header = ["model", "tensors", "ModelEmaV2 ms", "ForeachModelEma ms", "ratio", "equal bit for bit"]
    return render_table([header] + [[str(r["model"]), str(r["tensors"]), f"{r['model_ema_v2_ms']:.2f}",
                                     f"{r['foreach_ms']:.2f}", f"{r['ratio']:.2f}x", "yes" if r["equal"] else "NO"]
                                    for r in rows])
