"""Plain-PyTorch references: the sequential selective scan and the Mamba inner functions built on it.

They follow mamba_ssm 1.1.1's formulation (all decays ``exp(delta * A)`` and inputs ``delta * B * u`` first, then one
Python loop over the sequence), are differentiable by autograd, run on any device and export to ONNX. During an ONNX
export the scan solves its recurrence by :func:`linear_recurrence` instead of the loop: the same sums in another order
in O(log L) graph ops instead of O(L), so the exported graph does not grow with the number of tokens.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from localmamba_kernel_runtime.precision import autocast_off, compute_dtype
from localmamba_conv1d.reference import causal_conv1d_ref


def _per_channel(M: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Grouped (Bt, G, N, L) -> (Bt, Dm, N, L) by repeating each group for its Dm/G channels."""
    M = M.to(dtype)
    if M.dim() == 4:
        M = M.repeat_interleave(dim // M.shape[1], dim=1)
    return M


def linear_recurrence(decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """States of ``h_t = decay_t * h_{t-1} + drive_t`` with ``h_{-1} = 0`` along the last dim: (..., L) -> (..., L).

    Steps 2i and 2i+1 compose into one step of a half-length recurrence, solved the same way, whose states are the odd
    steps'; each even step is then one step from the odd state before it. O(L) work in O(log L) tensor ops.
    """
    seqlen = decay.shape[-1]
    if seqlen <= 1:  # one step from the zero state; decay stays in the graph (a zero gradient, not None)
        return decay * torch.zeros_like(drive) + drive
    if seqlen % 2:  # a trailing identity step (decay 1, drive 0), dropped again below
        decay = F.pad(decay, (0, 1), value=1.0)
        drive = F.pad(drive, (0, 1))
    decay_even, decay_odd = decay[..., 0::2], decay[..., 1::2]
    drive_even, drive_odd = drive[..., 0::2], drive[..., 1::2]
    states_odd = linear_recurrence(decay_odd * decay_even, decay_odd * drive_even + drive_odd)
    states_even = drive_even + decay_even * F.pad(states_odd[..., :-1], (1, 0))
    return torch.stack((states_even, states_odd), dim=-1).flatten(-2)[..., :seqlen]


def _scan_by_loop(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  C: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """mamba_ssm's loop over the sequence: u, delta (Bt, Dm, L); A (Dm, N); B, C (Dm, N), (Bt, N, L) or per channel
    (Bt, Dm, N, L) -> the outputs <h_t, C_t> (Bt, Dm, L) and the last state (Bt, Dm, N)."""
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B.dim() == 2:
        drive = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    elif B.dim() == 3:
        drive = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        drive = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    state = u.new_zeros((u.shape[0], u.shape[1], A.shape[1]))
    ys = []
    # unbind, not indexing: the backward of one index per step would fill a full-size gradient every step
    steps = zip(decay.unbind(2), drive.unbind(2), [C] * u.shape[2] if C.dim() == 2 else C.unbind(-1))
    for decay_t, drive_t, C_t in steps:
        state = decay_t * state + drive_t
        if C.dim() == 2:
            ys.append(torch.einsum("bdn,dn->bd", state, C_t))
        elif C.dim() == 3:
            ys.append(torch.einsum("bdn,bn->bd", state, C_t))
        else:
            ys.append(torch.einsum("bdn,bdn->bd", state, C_t))
    return torch.stack(ys, dim=2), state


def _time_last(M: torch.Tensor) -> torch.Tensor:
    """B or C as (Dm, N), (Bt, N, L) or (Bt, Dm, N, L), viewed to broadcast against (Bt, Dm, N, L)."""
    if M.dim() == 2:
        return M[:, :, None]
    return M[:, None] if M.dim() == 3 else M


def _scan_by_pairs(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`_scan_by_loop` with the states from :func:`linear_recurrence`, all in (Bt, Dm, N, L) by broadcasting
    (no einsum: onnxruntime's CPU Einsum is several times slower than its Mul on these)."""
    decay = torch.exp(delta[:, :, None] * A[:, :, None])
    states = linear_recurrence(decay, (delta * u)[:, :, None] * _time_last(B))
    return (states * _time_last(C)).sum(dim=2), states[..., -1]


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                       delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                       return_last_state: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Selective scan by mamba_ssm's loop over the sequence; during an ONNX export by :func:`linear_recurrence`.

    u, delta (Bt, Dm, L); A (Dm, N); B, C (Dm, N), (Bt, N, L) or (Bt, G, N, L); D, delta_bias (Dm,); z (Bt, Dm, L).
    Returns out (Bt, Dm, L) in u's dtype, and the last state (Bt, Dm, N) if ``return_last_state``.
    """
    if A.is_complex():
        raise NotImplementedError("selective_scan_ref: complex A is not supported")
    dtype_in = u.dtype
    with autocast_off(u.device.type):
        dtype = compute_dtype(u)
        u = u.to(dtype)
        delta = delta.to(dtype)
        if delta_bias is not None:
            delta = delta + delta_bias.to(dtype)[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        dim = u.shape[1]
        A = A.to(dtype)
        B = _per_channel(B, dim, dtype)
        C = _per_channel(C, dim, dtype)
        scan = _scan_by_pairs if torch.onnx.is_in_onnx_export() else _scan_by_loop
        out, state = scan(u, delta, A, B, C)
        if D is not None:
            out = out + u * D.to(dtype)[:, None]
        if z is not None:
            out = out * F.silu(z.to(dtype))
    out = out.to(dtype_in)
    return (out, state) if return_last_state else out


def selective_state_update_ref(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                               B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                               z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
                               dt_softplus: bool = False) -> torch.Tensor:
    """One step of the selective scan (decoding): ``h = exp(dt A) h + dt B x``, ``out = <h, C> + D x``, times SiLU(z).

    state (Bt, Dm, N) is updated in place, kept in its dtype; x, dt, z (Bt, Dm); A (Dm, N); B, C (Bt, N); D, dt_bias
    (Dm,); ``dt = softplus(dt + dt_bias)`` when ``dt_softplus``. Computed in fp32 (fp64 for fp64 state or x), also
    under autocast; out is read from the new state before it is rounded to the state's dtype (as mamba_ssm's kernel
    does) and returned in x's dtype (Bt, Dm). Plain ops: autograd follows them, but the state is overwritten.
    """
    with autocast_off(x.device.type):
        dtype = compute_dtype(state, x)
        step = dt.to(dtype)
        if dt_bias is not None:
            step = step + dt_bias.to(dtype)
        if dt_softplus:
            step = F.softplus(step)
        x_in = x.to(dtype)
        decay = torch.exp(step[:, :, None] * A.to(dtype))
        new_state = decay * state.to(dtype) + (step * x_in)[:, :, None] * B.to(dtype)[:, None, :]
        state.copy_(new_state)
        out = (new_state * C.to(dtype)[:, None, :]).sum(dim=-1)
        if D is not None:
            out = out + x_in * D.to(dtype)
        if z is not None:
            out = out * F.silu(z.to(dtype))
    return out.to(x.dtype)


_T = torch.Tensor
OptionalTensor = Optional[torch.Tensor]


def inner_projections(xz: _T, conv1d_weight: _T, conv1d_bias: OptionalTensor, x_proj_weight: _T,
                      delta_proj_weight: _T, A: _T, B: OptionalTensor, C: OptionalTensor, B_proj_bias: OptionalTensor,
                      C_proj_bias: OptionalTensor, conv_fn: Callable[..., _T]) -> Tuple[_T, _T, _T, _T, _T]:
    """Shared front half of the inner functions: conv + SiLU, x_proj, dt_proj; B/C from x_dbl when not given.
    xz (Bt, 2E, L) -> u, delta, B, C, z for the scan."""
    rank = delta_proj_weight.shape[1]
    dstate = A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    if conv1d_weight.dim() == 3:
        conv1d_weight = conv1d_weight[:, 0]
    u = conv_fn(x, conv1d_weight, conv1d_bias, activation="silu")
    x_dbl = F.linear(u.transpose(1, 2), x_proj_weight)  # (Bt, L, R + 2N)
    # contiguous: with a transposed delta, torch.compile's traced backward can mispredict strides (view error)
    delta = F.linear(x_dbl[..., :rank], delta_proj_weight).transpose(1, 2).contiguous()  # (Bt, E, L)
    if B is None:
        B = x_dbl[..., rank:rank + dstate]
        if B_proj_bias is not None:
            B = B + B_proj_bias.to(B.dtype)
        B = B.transpose(1, 2).unsqueeze(1)  # (Bt, 1, N, L)
    if C is None:
        C = x_dbl[..., -dstate:]
        if C_proj_bias is not None:
            C = C + C_proj_bias.to(C.dtype)
        C = C.transpose(1, 2).unsqueeze(1)
    return u, delta, B, C, z


def mamba_inner_no_out_proj_ref(xz: torch.Tensor, conv1d_weight: torch.Tensor, conv1d_bias: Optional[torch.Tensor],
                                x_proj_weight: torch.Tensor, delta_proj_weight: torch.Tensor, A: torch.Tensor,
                                B: Optional[torch.Tensor] = None, C: Optional[torch.Tensor] = None,
                                D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                                B_proj_bias: Optional[torch.Tensor] = None, C_proj_bias: Optional[torch.Tensor] = None,
                                delta_softplus: bool = True) -> torch.Tensor:
    """Reference of ``mamba_inner_fn_no_out_proj``: xz (Bt, 2E, L) -> z-gated scan output (Bt, E, L)."""
    u, delta, B, C, z = inner_projections(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                                          B_proj_bias, C_proj_bias, causal_conv1d_ref)
    return selective_scan_ref(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


def mamba_inner_ref(xz: torch.Tensor, conv1d_weight: torch.Tensor, conv1d_bias: Optional[torch.Tensor],
                    x_proj_weight: torch.Tensor, delta_proj_weight: torch.Tensor, out_proj_weight: torch.Tensor,
                    out_proj_bias: Optional[torch.Tensor], A: torch.Tensor, B: Optional[torch.Tensor] = None,
                    C: Optional[torch.Tensor] = None, D: Optional[torch.Tensor] = None,
                    delta_bias: Optional[torch.Tensor] = None, B_proj_bias: Optional[torch.Tensor] = None,
                    C_proj_bias: Optional[torch.Tensor] = None, delta_softplus: bool = True) -> torch.Tensor:
    """Reference of mamba_ssm's ``mamba_inner_fn``: the no-out-proj output projected by out_proj -> (Bt, L, C)."""
    y = mamba_inner_no_out_proj_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C, D,
                                    delta_bias, B_proj_bias, C_proj_bias, delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def bidirectional_scan(u: _T, delta: _T, A: _T, A_b: _T, B: _T, C: _T, D: OptionalTensor, z: _T,
                       delta_bias: OptionalTensor, delta_softplus: bool, scan_fn: Callable[..., _T]) -> _T:
    """Vim's "v1" scan: ``scan_fn`` over the sequence with A, plus (reversed back) over the reversed sequence with
    A_b; u, delta, z, B and C are reversed along their last dim as Vim does (the state axis of a constant B or C)."""
    forward = scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    backward = scan_fn(u.flip(-1), delta.flip(-1), A_b, B.flip(-1), C.flip(-1), D, z.flip(-1), delta_bias,
                       delta_softplus)
    return forward + backward.flip(-1)


def bimamba_inner_ref(xz: torch.Tensor, conv1d_weight: torch.Tensor, conv1d_bias: Optional[torch.Tensor],
                      x_proj_weight: torch.Tensor, delta_proj_weight: torch.Tensor, out_proj_weight: torch.Tensor,
                      out_proj_bias: Optional[torch.Tensor], A: torch.Tensor, A_b: torch.Tensor,
                      B: Optional[torch.Tensor] = None, C: Optional[torch.Tensor] = None,
                      D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                      B_proj_bias: Optional[torch.Tensor] = None, C_proj_bias: Optional[torch.Tensor] = None,
                      delta_softplus: bool = True) -> torch.Tensor:
    """Reference of Vim's ``bimamba_inner_fn``: the projections of the inner function, :func:`bidirectional_scan`,
    then out_proj -> (Bt, L, C)."""
    u, delta, B, C, z = inner_projections(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B, C,
                                          B_proj_bias, C_proj_bias, causal_conv1d_ref)
    y = bidirectional_scan(u, delta, A, A_b, B, C, D, z, delta_bias, delta_softplus, selective_scan_ref)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def sequence_positions(index: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Inverse of a token index (K, L) (value ``num_tokens`` = padding): (K, T), the position holding each token."""
    positions = torch.arange(index.shape[1], device=index.device).expand_as(index)
    table = torch.zeros(index.shape[0], num_tokens + 1, dtype=torch.long, device=index.device)
    return table.scatter(1, index, positions)[:, :num_tokens]


def multi_scan_inner_composed(tokens: _T, index: _T, x_proj_weight: _T, dt_proj_weight: _T, dt_proj_bias: _T,
                              A_log: _T, D: OptionalTensor, conv_weight: OptionalTensor, conv_bias: OptionalTensor,
                              gate: bool, conv_fn: Callable[..., _T], scan_fn: Callable[..., _T]) -> _T:
    """``multi_scan_inner_fn`` composed of plain ops around ``conv_fn`` and ``scan_fn`` (all directions batched as
    one grouped scan: the conv and the scan are per channel, B and C one group per direction)."""
    batch, num_tokens = tokens.shape[:2]
    num_dirs, length = index.shape
    inner, rank, state = x_proj_weight.shape[2], dt_proj_weight.shape[2], A_log.shape[2]
    seqs = F.pad(tokens, (0, 0, 0, 1))[:, index].permute(0, 1, 3, 2)                # (B, K, C, L); row T is zero
    x = seqs[:, :, :inner].reshape(batch, num_dirs * inner, length)
    if conv_weight is not None:
        x = conv_fn(x, conv_weight.reshape(num_dirs * inner, -1),
                    None if conv_bias is None else conv_bias.reshape(-1), activation="silu")
    x_dbl = torch.einsum("bkel,kre->bkrl", x.view(batch, num_dirs, inner, length), x_proj_weight)
    delta = torch.einsum("bkrl,ker->bkel", x_dbl[:, :, :rank], dt_proj_weight)
    z = seqs[:, :, inner:2 * inner].reshape(batch, num_dirs * inner, length) if gate else None
    wide = compute_dtype(tokens)
    y = scan_fn(x, delta.reshape(batch, num_dirs * inner, length), -torch.exp(A_log.to(wide)).flatten(0, 1),
                x_dbl[:, :, rank:rank + state], x_dbl[:, :, rank + state:], None if D is None else D.to(wide).flatten(),
                z, dt_proj_bias.to(wide).flatten(), True)
    positions = sequence_positions(index, num_tokens).view(1, num_dirs, 1, num_tokens)
    y = torch.gather(y.view(batch, num_dirs, inner, length), 3, positions.expand(batch, -1, inner, -1))
    return y.transpose(2, 3)


def multi_scan_inner_ref(tokens: torch.Tensor, index: torch.Tensor, x_proj_weight: torch.Tensor,
                         dt_proj_weight: torch.Tensor, dt_proj_bias: torch.Tensor, A_log: torch.Tensor,
                         D: Optional[torch.Tensor] = None, conv_weight: Optional[torch.Tensor] = None,
                         conv_bias: Optional[torch.Tensor] = None, gate: bool = False) -> torch.Tensor:
    """Reference of ``multi_scan_inner_fn``: the composition on the reference conv and scan -> (Bt, K, T, E)."""
    return multi_scan_inner_composed(tokens, index, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D,
                                     conv_weight, conv_bias, gate, causal_conv1d_ref, selective_scan_ref)


def attention_merge_ref(y: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                        reduce_weight: torch.Tensor, reduce_bias: torch.Tensor, select_weight: torch.Tensor,
                        select_bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Reference of ``attention_merge_fn``: y (Bt, K, T, E) -> sum_k y_k * gate_k, (Bt, T, E).

    gate_k = sigmoid(select(GELU(reduce(mean over tokens of LayerNorm(y_k))))), the LocalMamba channel attention.
    """
    summary = F.layer_norm(y, norm_weight.shape, norm_weight, norm_bias, eps).mean(dim=-2, keepdim=True)
    gate = torch.sigmoid(F.linear(F.gelu(F.linear(summary, reduce_weight, reduce_bias)), select_weight, select_bias))
    return (y * gate).sum(dim=1)
