"""Selective-scan kernels for LocalMamba (API of mamba_ssm 1.1.1 + Vim's ``mamba_inner_fn_no_out_proj`` and
``bimamba_inner_fn``), and the fused multi-direction ops of the LocalMamba mixers (``multi_scan_inner_fn``,
``attention_merge_fn``, and the two in one call, ``multi_scan_attention_merge_fn``), and mamba_ssm's decoding step
``selective_state_update`` (inference only).

Backends per call: ``cuda`` (official mamba_ssm), ``triton``, ``cpu``, ``reference``, and ``composed`` for the fused
multi-direction ops (plain ops around the scan and conv, which choose their own); override with the environment
variable ``LOCALMAMBA_BACKEND`` and query with :func:`selected_backend`.
"""
from typing import Dict, Union

import torch
from localmamba_kernel_runtime import ckernel
from localmamba_kernel_runtime.backends import selected_backend

from .ops.layernorm import RMSNorm, layer_norm_fn, layer_norm_ref, rms_norm_fn, rms_norm_ref
from .ops.multi_scan_interface import attention_merge_fn, multi_scan_attention_merge_fn, multi_scan_inner_fn
from .ops.reference import (attention_merge_ref, bimamba_inner_ref, mamba_inner_no_out_proj_ref, mamba_inner_ref,
                            multi_scan_inner_ref, selective_scan_ref)
from .ops.selective_scan_interface import (bimamba_inner_fn, mamba_inner_fn, mamba_inner_fn_no_out_proj,
                                           selective_scan_fn)
from .ops.triton.selective_state_update import selective_state_update, selective_state_update_ref

__version__ = "1.1.1"

MODEL_OPS = ("multi_scan_inner", "attention_merge", "selective_scan", "causal_conv1d", "layer_norm")


def backend_summary(device: Union[str, torch.device, None] = None) -> Dict[str, str]:
    """Backend each op used by the models would run on ``device`` (e.g. to log at model build), and under
    ``cpu_isa`` the instruction set the CPU kernels are built for (``off`` when disabled)."""
    return {**{op: selected_backend(op, device) for op in MODEL_OPS}, "cpu_isa": ckernel.isa_summary()}


__all__ = [
    "RMSNorm",
    "attention_merge_fn",
    "attention_merge_ref",
    "backend_summary",
    "bimamba_inner_fn",
    "bimamba_inner_ref",
    "layer_norm_fn",
    "layer_norm_ref",
    "mamba_inner_fn",
    "mamba_inner_fn_no_out_proj",
    "mamba_inner_no_out_proj_ref",
    "mamba_inner_ref",
    "multi_scan_attention_merge_fn",
    "multi_scan_inner_fn",
    "multi_scan_inner_ref",
    "rms_norm_fn",
    "rms_norm_ref",
    "selected_backend",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
]
