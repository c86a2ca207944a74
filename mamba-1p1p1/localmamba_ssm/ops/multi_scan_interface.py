"""Multi-direction ops of the LocalMamba mixers, with per-call backend dispatch (see
``localmamba_kernel_runtime.backends``).

``multi_scan_inner_fn`` runs the Mamba inner function (conv, projections, selective scan, gate) over K reorderings
of one set of token rows at once and returns the outputs in token order; ``attention_merge_fn`` applies the
LocalMamba channel attention to each direction's output and sums them. Backends of ``multi_scan_inner``: ``triton``
(fused kernels reading through the index table, see ``triton/multi_scan_triton.py``; CUDA), ``cpu`` (fused C kernels
on token-major buffers, fp32 compute), ``composed`` (plain ops around ``causal_conv1d_fn`` and ``selective_scan_fn``,
which choose their own backends: what runs for fp64 and under ``torch.jit`` tracing) and ``reference`` (the
composition on the reference conv and scan). ``attention_merge``: ``triton`` (``triton/attention_merge_triton.py``),
``cpu`` (C kernels) and ``reference`` (plain ops, on any device). ``multi_scan_attention_merge_fn`` is the two in
one call, which on the ``cpu`` backends keeps the directions' outputs (and in the backward their gradient) in a
reused buffer.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from localmamba_conv1d.causal_conv1d_interface import causal_conv1d_fn
from localmamba_kernel_runtime import backends
from localmamba_kernel_runtime.validation import shape_str

from .checks import check_attention_weights, check_multi_scan_args
from .cpu import attention_merge_cpu, multi_scan_cpu, scan_merge_cpu
from .cpu.selective_scan_cpu import MAX_STATE
from .reference import attention_merge_ref, multi_scan_inner_composed, multi_scan_inner_ref
from .selective_scan_interface import selective_scan_fn

OP_SCAN = "multi_scan_inner"
OP_MERGE = "attention_merge"


def _fused_kernels_check(kernel_available: Callable[[], bool]) -> backends.Check:
    """Check for the ``cpu`` backend of a fused op: CPU inputs and its C kernels built and enabled."""

    def check(device: torch.device, forced: bool) -> Optional[str]:
        reason = backends.check_cpu(device, forced)
        if reason is None and not kernel_available():
            reason = "its C kernels are disabled (LOCALMAMBA_CPU_KERNEL=0) or could not be built"
        return reason

    return check


backends.register(OP_SCAN, "triton", backends.check_triton)
backends.register(OP_SCAN, "cpu", _fused_kernels_check(multi_scan_cpu.kernel_available))
backends.register(OP_SCAN, backends.COMPOSED, backends.check_any)
backends.register(OP_SCAN, "reference", backends.check_any)
backends.register(OP_MERGE, "triton", backends.check_triton)
backends.register(OP_MERGE, "cpu", _fused_kernels_check(attention_merge_cpu.kernel_available))
backends.register(OP_MERGE, "reference", backends.check_any)


def _fused_input_check(t: torch.Tensor, inner: int, state: int = 0, rank: int = 0) -> Callable[[str], Optional[str]]:
    """Input constraints of the fused cpu and triton kernels: fp32 compute (fp64 keeps its precision on the other
    backends), not while ``torch.jit`` traces (ONNX export, FLOP counting record plain ops), sizes within the cpu
    kernels' limits."""

    def check(backend: str) -> Optional[str]:
        if backend not in ("cpu", "triton"):
            return None
        if t.dtype == torch.float64:
            return "the fused kernels compute in fp32, not fp64"
        if torch.jit.is_tracing():
            return "torch.jit is tracing (the plain ops are recorded instead)"
        if inner == 0:
            return "there are no channels"
        if backend == "triton":
            return None
        if state > MAX_STATE or rank > multi_scan_cpu.MAX_RANK:
            return f"the cpu kernels support N <= {MAX_STATE} and R <= {multi_scan_cpu.MAX_RANK}"
        return None

    return check


def multi_scan_inner_fn(tokens: torch.Tensor, index: torch.Tensor, x_proj_weight: torch.Tensor,
                        dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                        D: Optional[torch.Tensor] = None, conv_weight: Optional[torch.Tensor] = None,
                        conv_bias: Optional[torch.Tensor] = None, gate: bool = False) -> torch.Tensor:
    """The Mamba inner function over K reorderings of the same token rows; outputs in token order.

    tokens (Bt, T, C): x is channels [0, E), the gate z channels [E, 2E) (used when ``gate``). index (K, L) int64:
    position s of sequence k reads token ``index[k, s]``, the value T reads a zero (padding); every sequence lists
    every token once. Per direction k: u = SiLU(causal depthwise conv1d(x_seq; conv_weight[k] (E, W) or (E, 1, W),
    conv_bias[k])) if ``conv_weight`` is given, else x_seq; x_dbl = x_proj_weight[k] (R + 2N, E) @ u;
    delta = softplus(dt_proj_weight[k] (E, R) @ x_dbl[:R] + dt_proj_bias[k]); the selective scan with
    A = -exp(A_log[k]) (E, N), B = x_dbl[R:R+N], C = x_dbl[R+N:], D[k]; times SiLU(z_seq) when ``gate``.
    Returns (Bt, K, T, E): direction k's output at the position of each token. Scan in fp32; output in the tokens'
    dtype.
    """
    check_multi_scan_args(tokens, index, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, conv_weight,
                          conv_bias, gate)
    backend = backends.select(OP_SCAN, tokens.device, _fused_input_check(
        tokens, x_proj_weight.shape[2], A_log.shape[2], dt_proj_weight.shape[2]))
    args = (tokens, index, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, conv_weight, conv_bias, gate)
    if backend == "triton":
        from .triton.multi_scan_triton import multi_scan_inner_triton  # imports triton on first use

        return multi_scan_inner_triton(*args)
    if backend == "cpu":
        return multi_scan_cpu.multi_scan_inner_cpu(*args)
    if backend == "reference":
        return multi_scan_inner_ref(*args)
    return multi_scan_inner_composed(*args, causal_conv1d_fn, selective_scan_fn)


def attention_merge_fn(y: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                       reduce_weight: torch.Tensor, reduce_bias: torch.Tensor, select_weight: torch.Tensor,
                       select_bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Channel attention per direction, summed: y (Bt, K, T, E) -> (Bt, T, E).

    gate_k = sigmoid(select(GELU(reduce(mean over tokens of LayerNorm(y_k; norm_weight, norm_bias, eps))))) with
    reduce (E', E) and select (E, E') linear layers; returns sum_k y_k * gate_k.
    """
    if not torch.jit.is_tracing():  # shapes are traced values during ONNX export
        if y.dim() != 4:
            raise ValueError(f"attention_merge: y must have shape (Bt, K, T, E), got {shape_str(y)}")
        if not y.is_floating_point():
            raise ValueError(f"attention_merge: y must be a floating-point tensor, got {y.dtype}")
        check_attention_weights(y, (norm_weight, norm_bias, reduce_weight, reduce_bias, select_weight, select_bias),
                                y.shape[-1])
    backend = backends.select(OP_MERGE, y.device, _fused_input_check(y, y.shape[-1]))
    args = (y, norm_weight, norm_bias, reduce_weight, reduce_bias, select_weight, select_bias, eps)
    if backend == "triton":
        from .triton.attention_merge_triton import attention_merge_triton  # imports triton on first use

        return attention_merge_triton(*args)
    if backend == "cpu":
        return attention_merge_cpu.attention_merge_cpu(*args)
    return attention_merge_ref(*args)


def multi_scan_attention_merge_fn(tokens: torch.Tensor, index: torch.Tensor, x_proj_weight: torch.Tensor,
                                  dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                                  D: Optional[torch.Tensor] = None, conv_weight: Optional[torch.Tensor] = None,
                                  conv_bias: Optional[torch.Tensor] = None, gate: bool = False, *,
                                  attention_weights: Sequence[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """``attention_merge_fn(multi_scan_inner_fn(tokens, ..., gate), *attention_weights, eps)`` -> (Bt, T, E): the
    scan of all directions, then the channel attention per direction and the sum (a mixer's plain merge).

    ``attention_weights``: norm_weight, norm_bias, reduce_weight, reduce_bias, select_weight, select_bias as
    ``attention_merge_fn`` takes them. Where both ops would run on their ``cpu`` backend, on plain tensors outside
    ``torch.compile`` and ``torch.jit`` tracing, the two run as one (``cpu/scan_merge_cpu.py``): the directions'
    outputs, or in the backward their gradient, go to a buffer reused across calls instead of a fresh tensor;
    otherwise it is the two calls.
    """
    scan_args = (tokens, index, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, conv_weight, conv_bias, gate)
    inner = x_proj_weight.shape[-1]
    if type(tokens) is torch.Tensor and not torch.compiler.is_compiling() and not torch.jit.is_tracing():
        check_multi_scan_args(*scan_args)
        check_attention_weights(tokens, attention_weights, inner)
        check = _fused_input_check(tokens, inner, A_log.shape[-1], dt_proj_weight.shape[-1])
        if (backends.select(OP_SCAN, tokens.device, check) == "cpu"
                and backends.select(OP_MERGE, tokens.device, _fused_input_check(tokens, inner)) == "cpu"):
            return scan_merge_cpu.multi_scan_attention_merge_cpu(*scan_args, attention_weights, eps)
    return attention_merge_fn(multi_scan_inner_fn(*scan_args), *attention_weights, eps)
