"""Optimizer with the original's two parameter groups.

No weight decay for: 1-D parameters, names ending in `.bias`, and names listed by `model.no_weight_decay()` (an item
starting with `[g]` matches as a substring). Everything else decays — including `A_log`, `dt_projs_bias`,
`x_proj_weight` and the search supernet's `multi_scan.weights`, as in the published runs. `honor_no_weight_decay`
(our opt-in) also exempts the search weights, the parameters a module names in its `opt_in_no_weight_decay` (our
mixers' `A_log` and `D`: a module attribute, which a deep copy of the model keeps) and those carrying
`_no_weight_decay = True` (mamba_ssm's mark, which `copy.deepcopy` and `to_empty` drop from a parameter).
"""
from __future__ import annotations

import logging
from argparse import Namespace
from typing import Any

import torch
import torch.nn as nn

from ..models.multi_scan import SEARCH_WEIGHT_SUFFIX

logger = logging.getLogger("localmamba")


def _skip_names(model: nn.Module) -> set[str]:
    return set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()


def _in_skip_list(name: str, skip: set[str]) -> bool:
    return any(name == s or (s.startswith("[g]") and s[3:] in name) for s in skip)


def _opt_in_exempt_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that modules list in their `opt_in_no_weight_decay`."""
    return {f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
            for name in getattr(module, "opt_in_no_weight_decay", ())}


def param_groups(model: nn.Module, lr: float, weight_decay: float, filter_no_decay: bool = True,
                 honor_no_weight_decay: bool = False) -> list[dict[str, Any]]:
    """`[no-decay group, decay group]` as the original, or one group when filtering is off or weight decay is 0."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if weight_decay == 0 or not filter_no_decay:
        return [{"params": [p for _, p in named], "initial_lr": lr}]
    skip = _skip_names(model)
    opt_in = _opt_in_exempt_names(model) if honor_no_weight_decay else set()
    decay, no_decay = [], []
    for name, param in named:
        exempt = param.ndim == 1 or name.endswith(".bias") or _in_skip_list(name, skip)
        if honor_no_weight_decay:
            exempt = (exempt or name in opt_in or getattr(param, "_no_weight_decay", False)
                      or name.endswith(SEARCH_WEIGHT_SUFFIX))
        (no_decay if exempt else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0, "initial_lr": lr},
            {"params": decay, "weight_decay": weight_decay, "initial_lr": lr}]


def build_optimizer(model: nn.Module, cfg: Namespace) -> torch.optim.Optimizer:
    """AdamW / SGD (Nesterov unless --sgd-no-nesterov or --momentum 0) / RMSprop / RMSpropTF over `param_groups`."""
    filtered = cfg.weight_decay != 0 and not cfg.opt_no_filter
    groups = param_groups(model, cfg.lr, cfg.weight_decay, not cfg.opt_no_filter, cfg.honor_no_weight_decay)
    wd = 0.0 if filtered else cfg.weight_decay
    if cfg.opt == "adamw":
        betas = tuple(cfg.opt_betas) if cfg.opt_betas else (0.9, 0.999)
        return torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.opt_eps, betas=betas, weight_decay=wd)
    if cfg.opt == "sgd":
        # Nesterov without momentum is plain SGD's update, which torch refuses to build as Nesterov
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd,
                               nesterov=not cfg.sgd_no_nesterov and cfg.momentum > 0)
    if cfg.opt == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, eps=cfg.opt_eps, momentum=cfg.momentum, weight_decay=wd)
    if cfg.opt == "rmsproptf":
        from timm.optim import RMSpropTF
        return RMSpropTF(groups, lr=cfg.lr, eps=cfg.opt_eps, momentum=cfg.momentum, weight_decay=wd)
    raise ValueError(f"unknown optimizer {cfg.opt!r}")
