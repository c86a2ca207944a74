"""mamba_inner_fn_no_out_proj and its references against a step-by-step formula; gradients; shape errors."""
import pytest
import torch
import torch.nn.functional as F

from kernel_formulas import direct_bimamba_no_out_proj, direct_inner_no_out_proj
from localmamba_conv1d import causal_conv1d_ref
from localmamba_ssm import (bimamba_inner_fn, bimamba_inner_ref, mamba_inner_fn, mamba_inner_fn_no_out_proj,
                            mamba_inner_no_out_proj_ref, mamba_inner_ref)

BT, E, L, N, R, W = 2, 6, 13, 5, 3, 4


def make(dtype=torch.float32, batch=BT, dim=E, seqlen=L, dstate=N, rank=R, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_(requires_grad)

    xz = rand(batch, 2 * dim, seqlen)
    conv_w = rand(dim, 1, W, scale=0.5)
    conv_b = rand(dim, scale=0.5)
    x_proj_w = rand(rank + 2 * dstate, dim, scale=0.5)
    dt_proj_w = rand(dim, rank, scale=0.5)
    A = (-torch.rand(dim, dstate, generator=g) * 2 - 0.1).to(dtype).requires_grad_(requires_grad)
    D = rand(dim)
    dt_bias = rand(dim, scale=0.5)
    return xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias


def call(fn, xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias):
    return fn(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, None, None, D, dt_bias, delta_softplus=True)


def test_inner_matches_direct_formula(cpu_backend):
    args = make()
    expected = direct_inner_no_out_proj(*args)
    for fn in (mamba_inner_fn_no_out_proj, mamba_inner_no_out_proj_ref):
        out = call(fn, *args)
        assert out.shape == (BT, E, L) and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_inner_adds_the_B_and_C_projection_biases(cpu_backend):
    """B_proj_bias and C_proj_bias (mamba_ssm's arguments) are added to B and C, each to its own."""
    args = make()
    g = torch.Generator().manual_seed(5)
    B_bias, C_bias = torch.randn(N, generator=g), torch.randn(N, generator=g)
    expected = direct_inner_no_out_proj(*args, B_proj_bias=B_bias, C_proj_bias=C_bias)
    assert (expected - direct_inner_no_out_proj(*args)).abs().max() > 1e-2
    for fn in (mamba_inner_fn_no_out_proj, mamba_inner_no_out_proj_ref):
        xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias = args
        out = fn(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, None, None, D, dt_bias, B_proj_bias=B_bias,
                 C_proj_bias=C_bias, delta_softplus=True)
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_inner_with_out_proj(cpu_backend):
    xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias = make()
    out_w, out_b = torch.randn(7, E), torch.randn(7)
    y = direct_inner_no_out_proj(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias)
    expected = F.linear(y.transpose(1, 2), out_w.double(), out_b.double())
    for fn in (mamba_inner_fn, mamba_inner_ref):
        out = fn(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_w, out_b, A, D=D, delta_bias=dt_bias)
        assert out.shape == (BT, L, 7)
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_inner_two_dim_conv_weight(cpu_backend):
    xz, conv_w, *rest = make()
    torch.testing.assert_close(call(mamba_inner_fn_no_out_proj, xz, conv_w[:, 0], *rest),
                               call(mamba_inner_fn_no_out_proj, xz, conv_w, *rest))


def test_inner_takes_C_from_the_last_rows_of_x_proj_when_B_is_given(cpu_backend):
    """With B given, x_proj_weight holds the dt rows and then C's (R + N rows): C is x_dbl's last N rows, as in
    mamba_ssm, and the result is that of the full projection."""
    xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias = make()
    u = causal_conv1d_ref(xz[:, :E], conv_w[:, 0], conv_b, "silu")
    B = torch.einsum("nd,bdl->bnl", x_proj_w[R:R + N], u).unsqueeze(1)
    without_B = torch.cat([x_proj_w[:R], x_proj_w[R + N:]])
    out = mamba_inner_fn_no_out_proj(xz, conv_w, conv_b, without_B, dt_proj_w, A, B, None, D, dt_bias)
    torch.testing.assert_close(out, call(mamba_inner_fn_no_out_proj, xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D,
                                         dt_bias), rtol=1e-5, atol=1e-5)


def test_inner_gradcheck(cpu_backend):
    args = make(dtype=torch.float64, batch=1, dim=3, seqlen=5, dstate=2, rank=2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: call(mamba_inner_fn_no_out_proj, *a), args, eps=1e-6, atol=1e-6,
                                    rtol=1e-4)


def test_inner_autocast_bf16(cpu_backend):
    """Under autocast the projections run in bf16, the scan in fp32; the output keeps xz's dtype (bf16 in models)."""
    xz, *params = make()
    expected = call(mamba_inner_fn_no_out_proj, xz, *params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert call(mamba_inner_fn_no_out_proj, xz, *params).dtype == torch.float32
        out = call(mamba_inner_fn_no_out_proj, xz.bfloat16(), *params)
    assert out.dtype == torch.bfloat16
    # bf16 rounding of xz and of the projections, carried through the scan: measured at most 0.016 x (1 + |expected|)
    # over seeds 0-4 on both CPU backends (0.013 at this seed; outputs up to 6.4 here)
    torch.testing.assert_close(out.float(), expected, rtol=0.03, atol=0.03)


@pytest.mark.parametrize("index,bad,pattern", [
    (0, torch.zeros(BT, 2 * E + 1, L), "xz must have shape"),
    (1, torch.zeros(E + 1, 1, W), "conv1d_weight must have shape"),
    (3, torch.zeros(R + 2 * N, E + 1), "x_proj_weight must have shape"),
    (3, torch.zeros(R + 2 * N - 1, E), "x_proj_weight must have shape"),   # a row short: B and C would overlap
    (4, torch.zeros(E + 2, R), "delta_proj_weight must have shape"),
    (5, torch.zeros(E - 1, N), "A must have shape"),
])
def test_inner_bad_shapes(index, bad, pattern):
    args = list(make())
    args[index] = bad
    with pytest.raises(ValueError, match=pattern):
        call(mamba_inner_fn_no_out_proj, *args)


def test_mamba_inner_no_out_proj_applies_softplus_by_default():
    """The default delta_softplus=True of mamba_ssm (Vim calls it without the flag)."""
    g = torch.Generator().manual_seed(0)
    dim, dstate, rank, L = 4, 3, 2, 5
    xz = torch.randn(1, 2 * dim, L, generator=g)
    conv_w, conv_b = torch.randn(dim, 4, generator=g) * 0.5, torch.randn(dim, generator=g) * 0.5
    x_proj = torch.randn(rank + 2 * dstate, dim, generator=g) * 0.5
    dt_proj = torch.randn(dim, rank, generator=g) * 0.5
    A = -torch.rand(dim, dstate, generator=g) * 2 - 0.1
    D, dt_bias = torch.randn(dim, generator=g), torch.randn(dim, generator=g) * 0.5
    args = (xz, conv_w, conv_b, x_proj, dt_proj, A, None, None, D, dt_bias)
    default = mamba_inner_fn_no_out_proj(*args)
    torch.testing.assert_close(default, mamba_inner_fn_no_out_proj(*args, delta_softplus=True))
    assert not torch.allclose(default, mamba_inner_fn_no_out_proj(*args, delta_softplus=False))


def test_bimamba_inner_matches_the_scans_both_ways(cpu_backend):
    """Vim's bimamba_inner_fn ("v1"; it was an ImportError here): the forward scan with A plus the scan run from the
    last step back with A_b, on shared conv and projections, then out_proj."""
    xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias = make()
    g = torch.Generator().manual_seed(3)
    A_b = -torch.rand(E, N, generator=g) * 2 - 0.1
    out_w, out_b = torch.randn(7, E, generator=g), torch.randn(7, generator=g)
    y = direct_bimamba_no_out_proj(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, A_b, D, dt_bias)
    expected = F.linear(y.transpose(1, 2), out_w.double(), out_b.double())
    forward_only = direct_inner_no_out_proj(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias)
    assert (y - forward_only).abs().max() > 0.1   # the backward scan adds to every step
    for fn in (bimamba_inner_fn, bimamba_inner_ref):
        out = fn(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_w, out_b, A, A_b, None, None, D, delta_bias=dt_bias)
        assert out.shape == (BT, L, 7) and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_bimamba_inner_reverses_a_constant_B_and_C_along_their_states_as_vim_does(cpu_backend):
    """Vim reverses B and C along their last axis for the second scan: time for projected ones, the states of a
    constant (E, N) B or C the caller gives (the original's math, kept)."""
    xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias = make()
    g = torch.Generator().manual_seed(4)
    A_b, B, C = -torch.rand(E, N, generator=g) - 0.1, torch.randn(E, N, generator=g), torch.randn(E, N, generator=g)
    x_proj_w = x_proj_w[:R]   # B and C given: the x projection gives delta's rank rows alone
    expected = direct_bimamba_no_out_proj(xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, A_b, D, dt_bias, B, C)
    for fn in (bimamba_inner_fn, bimamba_inner_ref):
        out = fn(xz, conv_w, conv_b, x_proj_w, dt_proj_w, torch.eye(E), None, A, A_b, B, C, D, delta_bias=dt_bias)
        torch.testing.assert_close(out.transpose(1, 2).double(), expected, rtol=1e-4, atol=1e-4)


def test_bimamba_inner_gradcheck(cpu_backend):
    args = make(dtype=torch.float64, batch=1, dim=3, seqlen=5, dstate=2, rank=2, requires_grad=True)
    xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias = args
    A_b = (-torch.rand(3, 2, dtype=torch.float64) - 0.1).requires_grad_()
    out_w = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)

    def run(xz, conv_w, x_proj_w, dt_proj_w, A, A_b, D, dt_bias, out_w):
        return bimamba_inner_fn(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_w, None, A, A_b, D=D,
                                delta_bias=dt_bias)

    assert torch.autograd.gradcheck(run, (xz, conv_w, x_proj_w, dt_proj_w, A, A_b, D, dt_bias, out_w), eps=1e-6,
                                    atol=1e-6, rtol=1e-4)


def test_bimamba_inner_refuses_an_A_b_unlike_A():
    xz, conv_w, conv_b, x_proj_w, dt_proj_w, A, D, dt_bias = make()
    with pytest.raises(ValueError, match=rf"^mamba_inner: A_b must have A's shape \(E, N\)=\({E}, {N}\), got "
                                         rf"\({E}, {N + 1}\)$"):
        bimamba_inner_fn(xz, conv_w, conv_b, x_proj_w, dt_proj_w, torch.randn(7, E), None, A, torch.zeros(E, N + 1))
    with pytest.raises(NotImplementedError, match=r"^mamba_inner: complex A_b is not supported \(A_b must be real, "
                                                  r"of shape \(E, N\)\)$"):
        bimamba_inner_fn(xz, conv_w, conv_b, x_proj_w, dt_proj_w, torch.randn(7, E), None, A, A.to(torch.complex64))
