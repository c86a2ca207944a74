"""Both mixer ops in one call on their ``cpu`` backends: ``attention_merge_fn(multi_scan_inner_fn(...))``, eagerly.

Without autograd the directions' outputs (Bt, K, T, E) go to a scratch buffer reused across calls; with autograd
the pair is one autograd node whose backward hands the outputs' gradient from the attention's backward to the scan's
through another such buffer. Either buffer is as big as a layer's outputs (77 MB at LocalVMamba-T's first stage,
batch 8), and a fresh one was page-faulted in on every call. Used by
``multi_scan_interface.multi_scan_attention_merge_fn`` on plain tensors outside ``torch.compile`` and ``torch.jit``
tracing (which see the two custom ops instead).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from localmamba_kernel_runtime.derivatives import first_derivative_only
from localmamba_kernel_runtime.precision import autocast_off

from . import attention_merge_cpu, multi_scan_cpu


class _ScanAttentionMerge(torch.autograd.Function):
    """The two forwards (outputs, chunk states and attention statistics kept) and the two backwards, on kernel
    inputs (``multi_scan_cpu.kernel_inputs``) and fp32 attention weights. The backward is kernels without a gradient
    of their own: differentiating its result (a second derivative) raises, as the single ops' backwards do, instead
    of treating it as a constant (``localmamba_kernel_runtime.derivatives``)."""

    @staticmethod
    def forward(ctx, src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, gate, eps, *attention):
        y = src.new_empty(src.shape[0], index.shape[0], src.shape[1], x_proj_w.shape[2])
        u, xdbl, ckpt = multi_scan_cpu.scan_forward(src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, gate,
                                                    True, y)
        merged, *statistics = attention_merge_cpu.merge_forward(y, *attention, eps)
        ctx.save_for_backward(src, index, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, u, xdbl, ckpt, y,
                              *statistics, *attention)
        ctx.gate = gate
        return merged

    @staticmethod
    @first_derivative_only("localmamba::multi_scan_attention_merge_cpu")
    def backward(ctx, dmerged):
        saved = ctx.saved_tensors
        scan_inputs, (u, xdbl, ckpt, y), statistics, attention = saved[:9], saved[9:13], saved[13:18], saved[18:]
        norm_w, norm_b, reduce_w, _, select_w, _ = attention
        dy = multi_scan_cpu.scratch("output_gradients", *y.shape)
        attention_grads = attention_merge_cpu.merge_backward(dmerged.contiguous(), y, *statistics, norm_w, norm_b,
                                                             reduce_w, select_w, dy)
        dsrc, dconv_w, dconv_b, dx_proj_w, ddt_w, ddt_b, dA_log, dD = multi_scan_cpu.scan_backward(
            dy, *scan_inputs, ctx.gate, u, xdbl, ckpt)
        conv_w, conv_b, D = scan_inputs[2], scan_inputs[3], scan_inputs[8]
        return (dsrc, None, None if conv_w is None else dconv_w, None if conv_b is None else dconv_b, dx_proj_w,
                ddt_w, ddt_b, dA_log, None if D is None else dD, None, None, *attention_grads)


SCAN_RECORD, MERGE_RECORD = "localmamba::multi_scan_cpu_forward", "localmamba::attention_merge_cpu_forward"


def scan_record_name(batch: int, num_dirs: int, length: int, inner: int, state: int) -> str:
    """The profiler entry of the inference scan's kernels (gather, conv, recurrence) at one problem size, which a
    profile reads back to give time per state update (``classification/benchmarks/time_profile.py``)."""
    return f"{SCAN_RECORD} B={batch} K={num_dirs} L={length} E={inner} N={state}"


def multi_scan_attention_merge_cpu(tokens: torch.Tensor, index: torch.Tensor, x_proj_weight: torch.Tensor,
                                   dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                                   D: Optional[torch.Tensor], conv_weight: Optional[torch.Tensor],
                                   conv_bias: Optional[torch.Tensor], gate: bool,
                                   attention_weights: Sequence[torch.Tensor], eps: float) -> torch.Tensor:
    """``multi_scan_attention_merge_fn`` (same arguments) -> (Bt, T, E) in the tokens' dtype."""
    needs_grad = multi_scan_cpu.needs_gradient(tokens, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                                               conv_weight, conv_bias, *attention_weights)
    with autocast_off(tokens.device.type):
        scan_inputs = multi_scan_cpu.kernel_inputs(tokens, index, x_proj_weight, dt_proj_weight, dt_proj_bias,
                                                   A_log, D, conv_weight, conv_bias)
        attention = [t.float().contiguous() for t in attention_weights]
        if needs_grad:
            merged = _ScanAttentionMerge.apply(*scan_inputs, gate, eps, *attention)
        else:
            with torch.profiler.record_function("localmamba::multi_scan_attention_merge_cpu"):  # profiler entries
                src = scan_inputs[0]
                y = multi_scan_cpu.scratch("outputs", src.shape[0], index.shape[0], src.shape[1],
                                           x_proj_weight.shape[2])
                with torch.profiler.record_function(scan_record_name(src.shape[0], *index.shape, *A_log.shape[1:])):
                    multi_scan_cpu.scan_forward(*scan_inputs, gate, False, y)
                with torch.profiler.record_function(MERGE_RECORD):
                    merged = attention_merge_cpu.merge_forward(y, *attention, eps)[0]
    return merged.to(tokens.dtype)
