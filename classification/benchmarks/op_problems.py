"""The single-op problems of the GPU check and the op benchmark: the selective scan, the causal conv1d, the Mamba
inner function and the decoding step, each as (fn, inputs needing gradients, output weights of the loss); the fused
mixer ops' problems are in ``mixer_ops``."""
from __future__ import annotations

import math
from typing import Any, Callable, List, Tuple

import torch
from localmamba_conv1d import causal_conv1d_fn
from localmamba_ssm import mamba_inner_fn_no_out_proj, selective_scan_fn, selective_state_update

# A problem: the op call, the inputs whose gradients are compared, the output weights of the loss.
Problem = Tuple[Callable[[], Any], List[torch.Tensor], List[torch.Tensor]]


def scan_problem(device: torch.device, dtype: torch.dtype, bc: str, groups: int, dim: int, seqlen: int, dstate: int,
                 softplus: bool, use_z: bool, last: bool, batch: int = 2) -> Problem:
    """selective_scan_fn with B/C ``bc`` ('const' (D, N), 'var3' (B, N, L), else (B, groups, N, L)), optional z,
    softplus and last state."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt).requires_grad_()

    u, z = rand(batch, dim, seqlen), rand(batch, dim, seqlen)
    delta = (torch.randn(batch, dim, seqlen, generator=g) * 0.5).to(device=device, dtype=dtype)
    delta = (delta if softplus else delta.abs()).requires_grad_()
    A = (-torch.exp(torch.randn(dim, dstate, generator=g) * 0.5)).to(device).requires_grad_()
    if bc == "const":
        B, C = rand(dim, dstate, dt=torch.float32), rand(dim, dstate, dt=torch.float32)
    elif bc == "var3":
        B, C = rand(batch, dstate, seqlen), rand(batch, dstate, seqlen)
    else:
        B, C = rand(batch, groups, dstate, seqlen), rand(batch, groups, dstate, seqlen)
    D, bias = rand(dim, dt=torch.float32), rand(dim, scale=0.5, dt=torch.float32)
    if not softplus:  # delta + bias must stay positive, or the states grow without bound
        bias = bias.detach().abs().requires_grad_()
    inputs = [u, delta, A, B, C, D] + ([z] if use_z else []) + [bias]
    weights = [torch.randn(batch, dim, seqlen, generator=g).to(device),
               torch.randn(batch, dim, dstate, generator=g).to(device)]

    def fn():
        return selective_scan_fn(u, delta, A, B, C, D, z if use_z else None, bias, softplus, return_last_state=last)

    return fn, inputs, weights


def conv_problem(device: torch.device, dtype: torch.dtype, width: int, silu: bool, dim: int, seqlen: int,
                 batch: int = 2) -> Problem:
    """causal_conv1d_fn of x (B, D, L) with a (D, width) kernel, with or without SiLU."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, dim, seqlen, generator=g).to(device=device, dtype=dtype).requires_grad_()
    w = torch.randn(dim, width, generator=g).to(device).requires_grad_()
    b = torch.randn(dim, generator=g).to(device).requires_grad_()
    weights = [torch.randn(batch, dim, seqlen, generator=g).to(device)]
    return (lambda: causal_conv1d_fn(x, w, b, activation="silu" if silu else None)), [x, w, b], weights


def inner_problem(device: torch.device, dtype: torch.dtype, dim: int, seqlen: int, dstate: int,
                  batch: int = 2, width: int = 4) -> Problem:
    """mamba_inner_fn_no_out_proj at inner width ``dim`` with LocalVim-T's dt rank ceil(dim / 32) and a width-``width``
    conv (autocast to ``dtype`` when it is 16-bit); A = -exp(A_log) is computed in the call, as the model does."""
    g = torch.Generator().manual_seed(2)
    rank = math.ceil(dim / 32)

    def rand(*shape, scale=1.0, dt=torch.float32):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt).requires_grad_()

    xz = rand(batch, 2 * dim, seqlen, dt=dtype)
    params = [xz, rand(dim, 1, width, scale=0.5), rand(dim, scale=0.1), rand(rank + 2 * dstate, dim, scale=dim ** -0.5),
              rand(dim, rank, scale=rank ** -0.5)]
    A_log, D, dt_bias = rand(dim, dstate, scale=0.5), rand(dim), rand(dim, scale=0.5)
    inputs = params + [A_log, D, dt_bias]
    weights = [torch.randn(batch, dim, seqlen, generator=g).to(device)]

    def fn():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return mamba_inner_fn_no_out_proj(*params, -torch.exp(A_log), None, None, D, dt_bias, delta_softplus=True)

    return fn, inputs, weights


def state_update_problem(device: torch.device, dtype: torch.dtype, dim: int, dstate: int, batch: int = 2,
                         copy_state: bool = True) -> Problem:
    """selective_state_update (inference only: no gradients, its inputs need none) of a ``dtype`` state (B, D, N) with
    D, z, dt_bias and softplus; each call updates a copy of the state (``copy_state``: every call takes the same step)
    or the state itself (a decoding loop: the benchmark), and returns (out, the updated state)."""
    g = torch.Generator().manual_seed(3)

    def rand(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt)

    state, x, dt, z = rand(batch, dim, dstate), rand(batch, dim), rand(batch, dim, scale=0.5), rand(batch, dim)
    A = -torch.exp(rand(dim, dstate, scale=0.5, dt=torch.float32))
    B, C = rand(batch, dstate), rand(batch, dstate)
    D, dt_bias = rand(dim, dt=torch.float32), rand(dim, scale=0.5, dt=torch.float32)
    weights = [torch.randn(batch, dim, generator=g).to(device), torch.randn(batch, dim, dstate, generator=g).to(device)]

    def fn():
        updated = state.clone() if copy_state else state
        out = selective_state_update(updated, x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=True)
        return out, updated

    return fn, [x], weights
