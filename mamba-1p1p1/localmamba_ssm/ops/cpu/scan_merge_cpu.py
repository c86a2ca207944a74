"""Inference on the ``cpu`` backends of both mixer ops at once: ``attention_merge_fn(multi_scan_inner_fn(...))``
with the directions' outputs (Bt, K, T, E) in a scratch buffer reused across calls.

Called only without autograd, on plain tensors, outside ``torch.compile`` (see
``multi_scan_interface.multi_scan_attention_merge_fn``): the outputs never leave the call, so they need not be a
fresh tensor, which at LocalVMamba-T's first stage (77 MB at batch 8) was page-faulted in on every call.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from localmamba_kernel_runtime.precision import autocast_off

from . import attention_merge_cpu, multi_scan_cpu


def multi_scan_attention_merge_cpu(tokens: torch.Tensor, index: torch.Tensor, x_proj_weight: torch.Tensor,
                                   dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                                   D: Optional[torch.Tensor], conv_weight: Optional[torch.Tensor],
                                   conv_bias: Optional[torch.Tensor], gate: bool,
                                   attention_weights: Sequence[torch.Tensor], eps: float) -> torch.Tensor:
    """``multi_scan_attention_merge_fn`` (same arguments) without autograd -> (Bt, T, E) in the tokens' dtype."""
    with autocast_off(tokens.device.type):
        inputs = multi_scan_cpu.kernel_inputs(tokens, index, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                                              conv_weight, conv_bias)
        src = inputs[0]
        y = multi_scan_cpu.scratch("outputs", src.shape[0], index.shape[0], src.shape[1], x_proj_weight.shape[2])
        multi_scan_cpu.scan_forward(*inputs, gate, False, y)
        merged = attention_merge_cpu.merge_forward(y, *(t.float().contiguous() for t in attention_weights), eps)[0]
    return merged.to(tokens.dtype)
