"""Public selective-scan ops with per-call backend dispatch (see ``localmamba_kernel_runtime.backends``).

Signatures follow mamba_ssm 1.1.1 plus Vim's ``mamba_inner_fn_no_out_proj`` and ``bimamba_inner_fn``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from localmamba_conv1d.causal_conv1d_interface import causal_conv1d_fn
from localmamba_kernel_runtime import backends
from localmamba_kernel_runtime.validation import check_tensor_types

from .checks import check_inner_args, check_scan_args
from .cpu.selective_scan_cpu import selective_scan_cpu
from .reference import bidirectional_scan, inner_projections
from .reference import bimamba_inner_ref, mamba_inner_ref, selective_scan_ref  # noqa: F401 (as upstream's module)

OP = "selective_scan"
OFFICIAL_MODULE = "mamba_ssm.ops.selective_scan_interface"
_FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)

ScanResult = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def _scan_official(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """cuda backend: the official kernel; casts to the dtypes it requires (inputs in u's dtype, params fp32), and
    makes delta_bias contiguous (the kernel TORCH_CHECKs its unit stride, which the official function leaves)."""
    official = backends.optional_module(OFFICIAL_MODULE)
    dtype = u.dtype
    delta = delta.to(dtype)
    z = None if z is None else z.to(dtype)
    B = B.to(dtype) if B.dim() >= 3 else B.float()
    C = C.to(dtype) if C.dim() >= 3 else C.float()
    D = None if D is None else D.float()
    delta_bias = None if delta_bias is None else delta_bias.float().contiguous()
    return official.selective_scan_fn(u, delta, A.float(), B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _scan_triton(*args):
    """triton backend (the module, and triton itself, are imported on first use)."""
    from .triton.selective_scan_triton import selective_scan_triton

    return selective_scan_triton(*args)


_IMPLS: Dict[str, Callable[..., ScanResult]] = {
    "cuda": _scan_official,
    "triton": _scan_triton,
    "cpu": selective_scan_cpu,
    "reference": selective_scan_ref,
}

backends.register_kernel_backends(OP, OFFICIAL_MODULE)


LAST_STATE_GRADIENT = "the official kernel does not backpropagate through the last state"


def _input_check(u: torch.Tensor, A: torch.Tensor, inputs: Sequence[Optional[torch.Tensor]],
                 return_last_state: bool) -> Callable[[str], Optional[str]]:
    """Input constraints per backend. The official kernel ignores the last state's gradient (mamba_ssm 1.1.1 says
    so), which the other backends propagate: it is passed over when that gradient may be asked for, and for an
    empty input, which it cannot launch."""
    def check(backend: str) -> Optional[str]:
        if backend in ("cuda", "triton") and u.dtype not in _FLOAT_TYPES:
            return f"needs fp32/fp16/bf16 inputs, got {u.dtype}"
        if backend == "cuda" and u.numel() == 0:
            return backends.OFFICIAL_EMPTY_GRID
        if backend == "cuda" and A.shape[1] > 256:
            return f"the official kernel supports N <= 256, got N={A.shape[1]}"
        if backend == "cuda" and return_last_state and torch.is_grad_enabled() \
                and any(t is not None and t.requires_grad for t in inputs):
            return LAST_STATE_GRADIENT
        return None

    return check


def selective_scan_fn(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                      D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                      delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                      return_last_state: bool = False) -> ScanResult:
    """Selective scan ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = <h_t, C_t> + D u_t``, times SiLU(z).

    u, delta (Bt, Dm, L); A (Dm, N) real; B, C (Dm, N), (Bt, N, L) or (Bt, G, N, L) with Dm % G == 0 (channel block g
    uses group g); D, delta_bias (Dm,); z (Bt, Dm, L). ``delta = softplus(delta + delta_bias)`` when
    ``delta_softplus`` (a bool, or 0 / 1 as the official kernel takes them; so ``return_last_state``). Computed in
    fp32 (also under autocast), returned in u's dtype; with ``return_last_state`` also returns the final state
    (Bt, Dm, N), whose gradient reaches the inputs.
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    delta_softplus, return_last_state = bool(delta_softplus), bool(return_last_state)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    backend = backends.select(OP, u.device, _input_check(u, A, inputs, return_last_state))
    return _IMPLS[backend](u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def mamba_inner_fn_no_out_proj(xz: torch.Tensor, conv1d_weight: torch.Tensor, conv1d_bias: Optional[torch.Tensor],
                               x_proj_weight: torch.Tensor, delta_proj_weight: torch.Tensor, A: torch.Tensor,
                               B: Optional[torch.Tensor] = None, C: Optional[torch.Tensor] = None,
                               D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                               B_proj_bias: Optional[torch.Tensor] = None, C_proj_bias: Optional[torch.Tensor] = None,
                               delta_softplus: bool = True) -> torch.Tensor:
    """Mamba inner function without the output projection: xz (Bt, 2E, L) -> z-gated scan output (Bt, E, L).

    x, z = xz split in channels; u = SiLU(causal_conv1d(x)); x_dbl = x_proj(u); delta = delta_proj_weight @ x_dbl[:R];
    B, C = x_dbl[R:R+N], x_dbl[-N:] as (Bt, 1, N, L) unless given; then the selective scan with z gating.
    conv1d_weight is (E, W) or (E, 1, W); x_proj_weight (R + 2N, E); delta_proj_weight (E, R); A (E, N).
    """
    check_inner_args(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, B_proj_bias,
                     C_proj_bias, D=D, delta_bias=delta_bias)
    return _inner_scan(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D, delta_bias,
                       B_proj_bias, C_proj_bias, delta_softplus)


def _inner_scan(xz: torch.Tensor, conv1d_weight: torch.Tensor, conv1d_bias: Optional[torch.Tensor],
                x_proj_weight: torch.Tensor, delta_proj_weight: torch.Tensor, A: torch.Tensor,
                B: Optional[torch.Tensor], C: Optional[torch.Tensor], D: Optional[torch.Tensor],
                delta_bias: Optional[torch.Tensor], B_proj_bias: Optional[torch.Tensor],
                C_proj_bias: Optional[torch.Tensor], delta_softplus: bool) -> torch.Tensor:
    """The inner function's projections and scan on checked arguments (see :func:`mamba_inner_fn_no_out_proj`)."""
    u, delta, B, C, z = inner_projections(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                                          B_proj_bias, C_proj_bias, causal_conv1d_fn)
    return selective_scan_fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


def mamba_inner_fn(xz: torch.Tensor, conv1d_weight: torch.Tensor, conv1d_bias: Optional[torch.Tensor],
                   x_proj_weight: torch.Tensor, delta_proj_weight: torch.Tensor, out_proj_weight: torch.Tensor,
                   out_proj_bias: Optional[torch.Tensor], A: torch.Tensor, B: Optional[torch.Tensor] = None,
                   C: Optional[torch.Tensor] = None, D: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, B_proj_bias: Optional[torch.Tensor] = None,
                   C_proj_bias: Optional[torch.Tensor] = None, delta_softplus: bool = True) -> torch.Tensor:
    """mamba_ssm's ``mamba_inner_fn``: :func:`mamba_inner_fn_no_out_proj` followed by out_proj -> (Bt, L, C)."""
    check_tensor_types("mamba_inner", dict(out_proj_weight=out_proj_weight))
    check_inner_args(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, B_proj_bias,
                     C_proj_bias, out_proj_weight, out_proj_bias, D, delta_bias)
    y = _inner_scan(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D, delta_bias,
                    B_proj_bias, C_proj_bias, delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def bimamba_inner_fn(xz: torch.Tensor, conv1d_weight: torch.Tensor, conv1d_bias: Optional[torch.Tensor],
                     x_proj_weight: torch.Tensor, delta_proj_weight: torch.Tensor, out_proj_weight: torch.Tensor,
                     out_proj_bias: Optional[torch.Tensor], A: torch.Tensor, A_b: torch.Tensor,
                     B: Optional[torch.Tensor] = None, C: Optional[torch.Tensor] = None,
                     D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                     B_proj_bias: Optional[torch.Tensor] = None, C_proj_bias: Optional[torch.Tensor] = None,
                     delta_softplus: bool = True) -> torch.Tensor:
    """Vim's ``bimamba_inner_fn`` (its "v1" Mamba): the conv and projections of :func:`mamba_inner_fn`, the scan
    over the sequence with A plus the scan over the reversed sequence with A_b (E, N) (same D, delta_bias and z),
    summed, then out_proj -> (Bt, L, C)."""
    check_tensor_types("mamba_inner", dict(out_proj_weight=out_proj_weight, A_b=A_b))
    check_inner_args(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, B_proj_bias,
                     C_proj_bias, out_proj_weight, out_proj_bias, D, delta_bias, A_b=A_b)
    u, delta, B, C, z = inner_projections(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                                          B_proj_bias, C_proj_bias, causal_conv1d_fn)
    y = bidirectional_scan(u, delta, A, A_b, B, C, D, z, delta_bias, delta_softplus, selective_scan_fn)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)
