"""The channel attention of every direction (the original's BiAttn, upstream-facts 3.3) against the formula written
out in numpy float64: the module, and the reference of the fused attention + merge op that the kernels are tested
against (until now the two were only compared with each other)."""
import math

import numpy as np
import torch

from classification.models.multi_scan import ChannelAttention
from localmamba_ssm.ops.reference import attention_merge_ref


def biattn_by_hand(x: np.ndarray, ln_w, ln_b, w1, b1, w2, b2, eps: float = 1e-5) -> np.ndarray:
    """x (..., L, C): LayerNorm over C, mean over the L tokens, Linear C -> C/8, exact (erf) GELU, Linear C/8 -> C,
    sigmoid; the gate multiplies the un-normalised x."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    summary = ((x - mean) / np.sqrt(var + eps) * ln_w + ln_b).mean(axis=-2, keepdims=True)
    hidden = summary @ w1.T + b1
    hidden = 0.5 * hidden * (1 + np.vectorize(math.erf)(hidden / math.sqrt(2)))
    gate = 1 / (1 + np.exp(-(hidden @ w2.T + b2)))
    return x * gate


def random_attention(channels: int, seed: int) -> ChannelAttention:
    torch.manual_seed(seed)
    attn = ChannelAttention(channels).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p))   # LayerNorm's affine away from (1, 0): every weight counts
    return attn


def test_channel_attention_is_the_originals_biattn_formula():
    attn = random_attention(16, seed=0)
    assert attn.global_reduce.out_features == 2     # int(16 * 0.125)
    x = torch.randn(2, 5, 16, dtype=torch.float64) * 3 + 1
    weights = [p.detach().numpy() for p in attn.merge_weights()]
    np.testing.assert_allclose(attn(x).detach().numpy(), biattn_by_hand(x.numpy(), *weights), rtol=1e-12, atol=1e-12)


def test_the_fused_merge_reference_sums_each_directions_gated_output():
    attn = random_attention(16, seed=1)
    y = torch.randn(2, 3, 7, 16, dtype=torch.float64)     # (batch, K directions, tokens, channels)
    weights = [p.detach().numpy() for p in attn.merge_weights()]
    expected = sum(biattn_by_hand(y[:, k].numpy(), *weights) for k in range(3))
    np.testing.assert_allclose(attention_merge_ref(y, *attn.merge_weights()).detach().numpy(), expected,
                               rtol=1e-12, atol=1e-12)


def test_channel_attention_gradient_flows_through_the_gate():
    """The gate depends on x (through its token mean): x's gradient has that path too, checked numerically."""
    attn = random_attention(16, seed=2)
    x = torch.randn(1, 3, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(attn, (x,), eps=1e-6, atol=1e-6, rtol=1e-5)
