"""selective_scan_fn / selective_scan_ref against the direct loop formula; gradients; shape errors."""
import pytest
import torch

from kernel_formulas import direct_scan
from localmamba_ssm import selective_scan_fn, selective_scan_ref
from localmamba_ssm.ops.reference import linear_recurrence

BT, DM, L, N = 2, 6, 13, 5


def make_inputs(bc_kind, groups=1, with_z=True, with_d=True, with_bias=True, dtype=torch.float32,
                batch=BT, dim=DM, seqlen=L, dstate=N, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_(requires_grad)

    u = rand(batch, dim, seqlen)
    delta = rand(batch, dim, seqlen, scale=0.5)
    A = (-torch.rand(dim, dstate, generator=g) * 2 - 0.1).to(dtype).requires_grad_(requires_grad)
    if bc_kind == "const":
        B, C = rand(dim, dstate), rand(dim, dstate)
    elif bc_kind == "var3":
        B, C = rand(batch, dstate, seqlen), rand(batch, dstate, seqlen)
    else:
        B, C = rand(batch, groups, dstate, seqlen), rand(batch, groups, dstate, seqlen)
    D = rand(dim) if with_d else None
    z = rand(batch, dim, seqlen) if with_z else None
    bias = rand(dim, scale=0.5) if with_bias else None
    return u, delta, A, B, C, D, z, bias


CASES = [("const", 1), ("var3", 1), ("var4", 1), ("var4", 2), ("var4", 3)]


@pytest.mark.parametrize("bc_kind,groups", CASES)
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("with_z", [True, False])
def test_scan_matches_direct_formula(cpu_backend, bc_kind, groups, softplus, with_z):
    u, delta, A, B, C, D, z, bias = make_inputs(bc_kind, groups, with_z=with_z)
    expected, expected_last = direct_scan(u, delta, A, B, C, D, z, bias, softplus)
    out, last = selective_scan_fn(u, delta, A, B, C, D, z, bias, softplus, return_last_state=True)
    assert out.dtype == torch.float32 and out.shape == (BT, DM, L) and last.shape == (BT, DM, N)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last.double(), expected_last, rtol=1e-4, atol=1e-4)


def test_scan_without_optional_inputs(cpu_backend):
    u, delta, A, B, C, _, _, _ = make_inputs("var4", 3, with_z=False, with_d=False, with_bias=False)
    expected, _ = direct_scan(u, delta, A, B, C)
    torch.testing.assert_close(selective_scan_fn(u, delta, A, B, C).double(), expected, rtol=1e-4, atol=1e-4)


def test_reference_matches_direct_formula():
    u, delta, A, B, C, D, z, bias = make_inputs("var4", 2)
    expected, expected_last = direct_scan(u, delta, A, B, C, D, z, bias, True)
    out, last = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last.double(), expected_last, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bc_kind,groups", CASES)
def test_reference_during_an_onnx_export_matches_direct_formula(monkeypatch, bc_kind, groups):
    """Under an ONNX export the reference solves the recurrence by pairing steps instead of its loop."""
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    u, delta, A, B, C, D, z, bias = make_inputs(bc_kind, groups)
    expected, expected_last = direct_scan(u, delta, A, B, C, D, z, bias, True)
    out, last = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last.double(), expected_last, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seqlen", [1, 2, 3, 6, 7, 64, 100])
def test_linear_recurrence_matches_the_step_by_step_states_and_gradients(seqlen):
    g = torch.Generator().manual_seed(seqlen)
    decay = torch.rand(2, 3, seqlen, generator=g, dtype=torch.float64).requires_grad_()
    drive = torch.randn(2, 3, seqlen, generator=g, dtype=torch.float64).requires_grad_()
    weights = torch.randn(2, 3, seqlen, generator=g, dtype=torch.float64)
    state, expected = torch.zeros(2, 3, dtype=torch.float64), []
    for t in range(seqlen):
        state = decay[..., t] * state + drive[..., t]
        expected.append(state)
    expected = torch.stack(expected, dim=-1)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (decay, drive))
    states = linear_recurrence(decay, drive)
    grads = torch.autograd.grad((states * weights).sum(), (decay, drive))
    torch.testing.assert_close(states, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected_grads):   # at L = 1 decay's gradient is zero (the state before is zero)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bc_kind,groups", [("const", 1), ("var3", 1), ("var4", 2)])
def test_scan_gradcheck(cpu_backend, bc_kind, groups):
    inputs = make_inputs(bc_kind, groups, dtype=torch.float64, batch=2, dim=4, seqlen=4, dstate=3,
                         requires_grad=True)

    def fn(u, delta, A, B, C, D, z, bias):
        return selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_scan_gradcheck_last_state_no_softplus(cpu_backend):
    inputs = make_inputs("var4", 1, dtype=torch.float64, batch=1, dim=2, seqlen=4, dstate=3, requires_grad=True)

    def fn(u, delta, A, B, C, D, z, bias):
        out, last = selective_scan_fn(u, delta.abs(), A, B, C, D, z, None, delta_softplus=False,
                                      return_last_state=True)
        return out, last

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradient_through_the_last_state_alone_matches_the_reference(cpu_backend):
    """A loss on the last state only (the output's gradient is None, not materialised): the inputs' gradients equal
    the reference's."""
    inputs = make_inputs("var3", requires_grad=True)
    ref_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    selective_scan_fn(*inputs, delta_softplus=True, return_last_state=True)[1].square().sum().backward()
    selective_scan_ref(*ref_inputs, delta_softplus=True, return_last_state=True)[1].square().sum().backward()
    for got, want in zip(inputs, ref_inputs):  # z does not reach the last state: no gradient, or zeros
        zeros = torch.zeros_like(got)
        torch.testing.assert_close(zeros if got.grad is None else got.grad, zeros if want.grad is None else want.grad,
                                   rtol=1e-4, atol=1e-5)


def test_half_inputs_return_their_dtype(cpu_backend):
    u, delta, A, B, C, D, z, bias = make_inputs("var4", 2)
    expected, _ = direct_scan(u, delta, A, B, C, D, z, bias, True)
    lowp = [t.bfloat16() for t in (u, delta, B, C, z)]
    out = selective_scan_fn(lowp[0], lowp[1], A, lowp[2], lowp[3], D, lowp[4], bias, True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected, rtol=5e-2, atol=5e-2)


def test_autocast_computes_in_fp32(cpu_backend):
    u, delta, A, B, C, D, z, bias = make_inputs("var4", 1)
    expected = selective_scan_fn(u, delta, A, B, C, D, z, bias, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan_fn(u, delta, A, B, C, D, z, bias, True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_complex_A_not_implemented():
    u, delta, A, B, C, D, z, bias = make_inputs("var3")
    with pytest.raises(NotImplementedError, match="complex"):
        selective_scan_fn(u, delta, A.to(torch.complex64), B, C)


@pytest.mark.parametrize("name,bad,pattern", [
    ("u", torch.zeros(BT, DM), "u must have shape"),
    ("delta", torch.zeros(BT, DM, L + 1), "delta must have shape"),
    ("A", torch.zeros(DM + 1, N), "A must have shape"),
    ("B", torch.zeros(BT, 4, N, L), "B must have shape"),
    ("B", torch.zeros(BT, N, L + 2), "B must have shape"),
    ("C", torch.zeros(DM, N + 1), "C must have shape"),
    ("D", torch.zeros(DM + 1), "D must have shape"),
    ("z", torch.zeros(BT, DM, L - 1), "z must have shape"),
    ("delta_bias", torch.zeros(1, DM), "delta_bias must have shape"),
])
def test_bad_shapes_raise_value_error(name, bad, pattern):
    args = dict(zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), make_inputs("var3")))
    args[name] = bad
    with pytest.raises(ValueError, match=pattern):
        selective_scan_fn(**args)


@pytest.mark.parametrize("fn", [selective_scan_fn, selective_scan_ref])
def test_last_state_of_a_bf16_scan_is_float32(cpu_backend, fn):
    """The state is kept in fp32, as mamba_ssm returns it; only the output takes u's dtype."""
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 3, 5, generator=g), torch.rand(2, 3, 5, generator=g)
    A, B, C = -torch.rand(3, 4, generator=g), torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    out, state = fn(u.bfloat16(), delta, A, B, C, return_last_state=True)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    torch.testing.assert_close(state, fn(u.bfloat16().float(), delta, A, B, C, return_last_state=True)[1])
