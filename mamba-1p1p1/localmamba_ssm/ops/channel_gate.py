"""The small MLP of LocalMamba's channel attention, in plain PyTorch, forward and backward by hand: what the fused
``attention_merge`` backends (``cpu``, ``triton``) run between their kernels over the tokens.

xbar (Bt, K, E) is the mean over tokens of each direction's normalised outputs; the gate is
sigmoid(select(GELU(reduce(xbar * norm_w + norm_b)))), (Bt, K, E). Written out rather than left to autograd so that
the backends' custom ops can run it inside their own backward (fp32, as the kernels)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

_T = torch.Tensor


def gate_forward(xbar: _T, norm_w: _T, norm_b: _T, reduce_w: _T, reduce_b: _T, select_w: _T,
                 select_b: _T) -> Tuple[_T, _T]:
    """-> gate (Bt, K, E), contiguous, and the hidden pre-activation (Bt, K, E') the backward needs."""
    hidden = F.linear(xbar * norm_w + norm_b, reduce_w, reduce_b)
    return torch.sigmoid(F.linear(F.gelu(hidden), select_w, select_b)).contiguous(), hidden


def gate_backward(dgate: _T, gate: _T, xbar: _T, hidden: _T, norm_w: _T, norm_b: _T, reduce_w: _T,
                  select_w: _T) -> Tuple[_T, _T, _T, _T, _T, _T, _T]:
    """Gradients from dgate (Bt, K, E): -> d xbar (Bt, K, E), contiguous, then those of norm_w, norm_b, reduce_w,
    reduce_b, select_w, select_b."""
    batch, num_dirs, dim = xbar.shape
    dlogit = (dgate * gate * (1 - gate)).flatten(0, 1)
    act = F.gelu(hidden).flatten(0, 1)
    dselect_w, dselect_b = dlogit.t() @ act, dlogit.sum(0)
    dhidden = torch.ops.aten.gelu_backward(dlogit @ select_w, hidden.flatten(0, 1))
    summary = (xbar * norm_w + norm_b).flatten(0, 1)
    dreduce_w, dreduce_b = dhidden.t() @ summary, dhidden.sum(0)
    dsummary = (dhidden @ reduce_w).view(batch, num_dirs, dim)
    dnorm_w, dnorm_b = (dsummary * xbar).sum((0, 1)), dsummary.sum((0, 1))
    return (dsummary * norm_w).contiguous(), dnorm_w, dnorm_b, dreduce_w, dreduce_b, dselect_w, dselect_b
