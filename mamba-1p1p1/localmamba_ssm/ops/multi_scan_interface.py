"""Multi-direction ops of the LocalMamba mixers, with per-call backend dispatch (see ``localmamba_conv1d.backends``).

``multi_scan_inner_fn`` runs the Mamba inner function (conv, projections, selective scan, gate) over K reorderings
of one set of token rows at once and returns the outputs in token order; ``attention_merge_fn`` applies the
LocalMamba channel attention to each direction's output and sums them. Backends: ``cpu`` (fused C kernels on
token-major buffers), ``cuda`` / ``triton`` (the composition of plain ops on the dispatched conv and scan, which
then pick their own GPU kernels), ``reference`` (the composition on the reference conv and scan).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from localmamba_conv1d import backends
from localmamba_conv1d.causal_conv1d_interface import causal_conv1d_fn

from .checks import _shape
from .cpu.multi_scan_cpu import MAX_RANK, attention_merge_cpu, kernel_usable, multi_scan_inner_cpu
from .cpu.selective_scan_cpu import MAX_STATE
from .reference import attention_merge_ref, multi_scan_inner_composed, multi_scan_inner_ref
from .selective_scan_interface import selective_scan_fn

OP_SCAN = "multi_scan_inner"
OP_MERGE = "attention_merge"

for _op in (OP_SCAN, OP_MERGE):
    backends.register(_op, "cuda", backends.check_official("mamba_ssm.ops.selective_scan_interface"))
    backends.register(_op, "triton", backends.check_triton)
    backends.register(_op, "cpu", backends.check_cpu)
    backends.register(_op, "reference", backends.check_any)


def _expect(name: str, t: Optional[torch.Tensor], shape: tuple) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise ValueError(f"multi_scan_inner: {name} must have shape {shape}, got {_shape(t)}")


def _check_scan_args(tokens, index, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, conv_weight, conv_bias,
                     gate) -> None:
    if torch.jit.is_tracing():
        return
    if tokens.dim() != 3:
        raise ValueError(f"multi_scan_inner: tokens must have shape (Bt, T, C), got {_shape(tokens)}")
    if index.dim() != 2 or index.dtype != torch.long:
        raise ValueError(f"multi_scan_inner: index must be an int64 (K, L) table, got {index.dtype} {_shape(index)}")
    if x_proj_weight.dim() != 3:
        raise ValueError(f"multi_scan_inner: x_proj_weight must have shape (K, R + 2N, E), got {_shape(x_proj_weight)}")
    num_dirs, inner = index.shape[0], x_proj_weight.shape[2]
    if A_log.dim() != 3 or A_log.shape[:2] != (num_dirs, inner):
        raise ValueError(f"multi_scan_inner: A_log must have shape (K, E, N)=({num_dirs}, {inner}, N), "
                         f"got {_shape(A_log)}")
    if dt_proj_weight.dim() != 3 or dt_proj_weight.shape[:2] != (num_dirs, inner):
        raise ValueError(f"multi_scan_inner: dt_proj_weight must have shape (K, E, R)=({num_dirs}, {inner}, R), "
                         f"got {_shape(dt_proj_weight)}")
    rank, state = dt_proj_weight.shape[2], A_log.shape[2]
    _expect("x_proj_weight", x_proj_weight, (num_dirs, rank + 2 * state, inner))
    for name, t in (("dt_proj_bias", dt_proj_bias), ("D", D), ("conv_bias", conv_bias)):
        _expect(name, t, (num_dirs, inner))
    if conv_weight is not None and (conv_weight.dim() not in (3, 4) or conv_weight.shape[:2] != (num_dirs, inner)
                                    or (conv_weight.dim() == 4 and conv_weight.shape[2] != 1)):
        raise ValueError(f"multi_scan_inner: conv_weight must have shape (K, E, W) or (K, E, 1, W) with "
                         f"(K, E)=({num_dirs}, {inner}), got {_shape(conv_weight)}")
    needed = inner * (2 if gate else 1)
    if tokens.shape[2] < needed:
        raise ValueError(f"multi_scan_inner: tokens need at least {needed} channels (x{' and z' if gate else ''}), "
                         f"got {tokens.shape[2]}")


def _scan_input_check(dt_proj_weight: torch.Tensor, A_log: torch.Tensor) -> Callable[[str], Optional[str]]:
    def check(backend: str) -> Optional[str]:
        if backend == "cpu" and (A_log.shape[2] > MAX_STATE or dt_proj_weight.shape[2] > MAX_RANK):
            return f"the cpu kernels support N <= {MAX_STATE} and R <= {MAX_RANK}"
        return None

    return check


def _fused_cpu(t: torch.Tensor) -> bool:
    """Whether the cpu backend runs its fused kernels: not for fp64 (the composition keeps fp64), nor while
    ``torch.jit`` traces (ONNX export, FLOP counting), which records the composition's plain ops instead."""
    return t.dtype != torch.float64 and not torch.jit.is_tracing()


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
    _check_scan_args(tokens, index, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, conv_weight, conv_bias,
                     gate)
    backend = backends.select(OP_SCAN, tokens.device, _scan_input_check(dt_proj_weight, A_log))
    args = (tokens, index, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D, conv_weight, conv_bias, gate)
    if backend == "reference":
        return multi_scan_inner_ref(*args)
    if backend == "cpu" and _fused_cpu(tokens) and kernel_usable(x_proj_weight.shape[2]):
        return multi_scan_inner_cpu(*args)
    return multi_scan_inner_composed(*args, causal_conv1d_fn, selective_scan_fn)


def attention_merge_fn(y: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                       reduce_weight: torch.Tensor, reduce_bias: torch.Tensor, select_weight: torch.Tensor,
                       select_bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Channel attention per direction, summed: y (Bt, K, T, E) -> (Bt, T, E).

    gate_k = sigmoid(select(GELU(reduce(mean over tokens of LayerNorm(y_k; norm_weight, norm_bias, eps))))) with
    reduce (E', E) and select (E, E') linear layers; returns sum_k y_k * gate_k.
    """
    if not torch.jit.is_tracing() and (y.dim() != 4 or norm_weight.shape != (y.shape[-1],)):
        raise ValueError(f"attention_merge: y must be (Bt, K, T, E) with E = norm_weight's size, got {_shape(y)}")
    backend = backends.select(OP_MERGE, y.device)
    args = (y, norm_weight, norm_bias, reduce_weight, reduce_bias, select_weight, select_bias, eps)
    if backend == "cpu" and _fused_cpu(y) and kernel_usable(y.shape[-1]):
        return attention_merge_cpu(*args)
    return attention_merge_ref(*args)
