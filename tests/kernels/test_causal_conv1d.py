"""causal_conv1d_fn / _ref / _update against the direct sum formula; gradients; shape errors."""
import pytest
import torch

from kernel_formulas import direct_conv1d
from localmamba_conv1d import (UnsupportedActivationError, causal_conv1d_fn, causal_conv1d_ref, causal_conv1d_update,
                               causal_conv1d_update_ref)

BT, DM, L = 2, 6, 13


def make(width=4, dtype=torch.float32, with_bias=True, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BT, DM, L, generator=g).to(dtype).requires_grad_(requires_grad)
    w = torch.randn(DM, width, generator=g).to(dtype).requires_grad_(requires_grad)
    b = torch.randn(DM, generator=g).to(dtype).requires_grad_(requires_grad) if with_bias else None
    return x, w, b


@pytest.mark.parametrize("width", [2, 3, 4, 5])
@pytest.mark.parametrize("activation", [None, "silu", "swish"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv1d_matches_direct_formula(cpu_backend, width, activation, with_bias):
    x, w, b = make(width, with_bias=with_bias)
    expected = direct_conv1d(x, w, b, silu=activation is not None)
    for fn in (causal_conv1d_fn, causal_conv1d_ref):
        out = fn(x, w, b, activation=activation)
        assert out.shape == (BT, DM, L) and out.dtype == torch.float32
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_conv1d_accepts_three_dim_weight(cpu_backend):
    x, w, b = make()
    torch.testing.assert_close(causal_conv1d_fn(x, w.unsqueeze(1), b, "silu"), causal_conv1d_fn(x, w, b, "silu"))


def test_conv1d_gradcheck(cpu_backend):
    x, w, b = make(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: causal_conv1d_fn(x, w, b, activation="silu"), (x, w, b))


def test_conv1d_bf16_input_fp32_weight(cpu_backend):
    x, w, b = make()
    out = causal_conv1d_fn(x.bfloat16(), w, b, activation="silu")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), direct_conv1d(x.bfloat16(), w, b, True), rtol=2e-2, atol=2e-2)


def test_conv1d_update_matches_full_conv():
    x, w, b = make()
    state = torch.zeros(BT, DM, w.shape[1])
    state_ref = state.clone()
    full = direct_conv1d(x, w, b, silu=True)
    for t in range(L):
        out = causal_conv1d_update(x[:, :, t], state, w, b, activation="silu")
        out_ref = causal_conv1d_update_ref(x[:, :, t], state_ref, w, b, activation="silu")
        torch.testing.assert_close(out.double(), full[:, :, t], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out_ref, out)
    torch.testing.assert_close(state, x[:, :, -w.shape[1]:])


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(x=torch.zeros(DM, L)), "x must have shape"),
    (dict(weight=torch.zeros(DM + 1, 4)), "weight must have shape"),
    (dict(weight=torch.zeros(DM, 2, 4)), "weight must have shape"),
    (dict(bias=torch.zeros(DM + 1)), "bias must have shape"),
    (dict(activation="relu"), "activation"),
])
def test_conv1d_bad_arguments(kwargs, pattern):
    x, w, b = make()
    args = dict(x=x, weight=w, bias=b, activation=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        causal_conv1d_fn(**args)


@pytest.mark.parametrize("width,seqlen", [(2, 37), (4, 37), (5, 9), (4, 2), (5, 3)])   # L < W - 1 too
@pytest.mark.parametrize("activation,with_bias", [("silu", True), (None, False)])
def test_cpu_backend_gradients_match_reference(force_backend, c_kernel, width, seqlen, activation, with_bias):
    """The cpu backend (C kernel when it builds, or its PyTorch fallback) against the reference, fp32."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 70, seqlen, generator=g).requires_grad_()
    w = torch.randn(70, width, generator=g).requires_grad_()
    b = torch.randn(70, generator=g).requires_grad_() if with_bias else None
    dout = torch.randn(3, 70, seqlen, generator=g)
    results = []
    for backend in ("cpu", "reference"):
        force_backend(backend)
        out = causal_conv1d_fn(x, w, b, activation=activation)
        grads = torch.autograd.grad(out, [x, w] + ([b] if with_bias else []), dout)
        results.append((out.detach(), grads))
    (out, grads), (out_ref, grads_ref) = results
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-4)


def test_cpu_backend_takes_a_non_contiguous_output_gradient(force_backend, c_kernel):
    """The backward op gets the output's gradient contiguous: a transposed one (from a loss over (B, L, D)) gives the
    reference's gradients."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 11, generator=g).requires_grad_()
    w, b = torch.randn(8, 4, generator=g).requires_grad_(), torch.randn(8, generator=g).requires_grad_()
    dout = torch.randn(2, 11, 8, generator=g).transpose(1, 2)          # (B, D, L) view, time-major in memory
    results = []
    for backend in ("cpu", "reference"):
        force_backend(backend)
        results.append(torch.autograd.grad(causal_conv1d_fn(x, w, b, activation="silu"), [x, w, b], dout))
    for grad, grad_ref in zip(*results):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-4)


def test_cpu_backend_computes_an_fp64_weight_in_fp64(force_backend):
    """fp64 x or weight runs the reference formula in fp64 (the C kernel computes in fp32), output in x's dtype."""
    force_backend("cpu")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 11, generator=g)
    w, b = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    out = causal_conv1d_fn(x, w, b, activation="silu")
    assert out.dtype == torch.float32
    assert torch.equal(out, causal_conv1d_ref(x.double(), w, b, "silu").float())


def test_conv1d_takes_the_newer_keywords_only_as_none():
    """Callers written for causal-conv1d >= 1.1 pass seq_idx= (1.1) and initial_states= (1.2) by keyword; None
    computes as before, a tensor is refused in one line (this package follows the 1.0.0 API)."""
    x, w, b = make()
    expected = causal_conv1d_fn(x, w, b, "silu")
    torch.testing.assert_close(causal_conv1d_fn(x, w, b, activation="silu", seq_idx=None, initial_states=None),
                               expected, rtol=0, atol=0)
    for name, value in (("seq_idx", torch.zeros(BT, L, dtype=torch.int32)), ("initial_states", torch.zeros(BT, DM, 3))):
        with pytest.raises(NotImplementedError, match=rf"^causal_conv1d_fn: {name} is not supported: this package "
                                                      rf"follows the causal-conv1d 1.0.0 API, which has no {name} "
                                                      rf"\(pass None\)$"):
            causal_conv1d_fn(x, w, b, activation="silu", **{name: value})
    with pytest.raises(TypeError):
        causal_conv1d_fn(x, w, b, "silu", None)   # keyword-only: the 1.0.0 positional order stays


@pytest.mark.parametrize("fn", [causal_conv1d_fn, causal_conv1d_ref, causal_conv1d_update, causal_conv1d_update_ref],
                         ids=lambda fn: fn.__name__)
def test_bad_activation_is_a_value_error_and_a_not_implemented_error(fn):
    """Our contract names ValueError; the official functions raise NotImplementedError, which ported code catches."""
    x, w, b = make()
    args = (x, w, b) if fn in (causal_conv1d_fn, causal_conv1d_ref) else (x[:, :, 0], torch.zeros(BT, DM, 4), w, b)
    with pytest.raises(UnsupportedActivationError,
                       match=rf"^{fn.__name__}: activation must be None, 'silu' or 'swish', got 'relu'$") as info:
        fn(*args, activation="relu")
    assert isinstance(info.value, ValueError) and isinstance(info.value, NotImplementedError)


@pytest.mark.parametrize("kwargs,message", [
    (dict(x=torch.zeros(DM, L)), r"x must have shape \(batch, dim, seqlen\), got \(6, 13\)"),
    (dict(weight=torch.zeros(DM + 1, 4)), r"weight must have shape \(dim, width\) or \(dim, 1, width\) with dim=6"),
    (dict(bias=torch.zeros(DM + 1)), r"bias must have shape \(dim,\)=\(6,\), got \(7\)"),
    (dict(bias=torch.zeros(DM, device="meta")), r"bias is on meta but x is on cpu"),
])
def test_conv1d_errors_name_the_op(kwargs, message):
    x, w, b = make()
    args = dict(x=x, weight=w, bias=b)
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^causal_conv1d_fn: {message}"):
        causal_conv1d_fn(**args)


def test_conv1d_update_checks_the_state_device_and_names_the_op():
    """A conv_state on another device ended in torch's own device error (or the cpu path read it as host memory)."""
    x, w, b = make()
    with pytest.raises(ValueError, match=r"^causal_conv1d_update: conv_state is on meta but x is on cpu$"):
        causal_conv1d_update(x[:, :, 0], torch.zeros(BT, DM, 4, device="meta"), w, b)
    with pytest.raises(ValueError, match=r"^causal_conv1d_update: x must have shape \(batch, dim\), got \(2, 6, 13\)$"):
        causal_conv1d_update(x, torch.zeros(BT, DM, 4), w, b)
    with pytest.raises(ValueError, match=r"^causal_conv1d_update: weight is on meta but x is on cpu$"):
        causal_conv1d_update(x[:, :, 0], torch.zeros(BT, DM, 4), w.to("meta"), b)


def test_conv1d_takes_the_final_state_keywords_of_1_2_only_at_their_off_values():
    """causal-conv1d 1.2 added initial_states= together with return_final_states= and final_states_out=; code
    written for it that passes return_final_states=False (or final_states_out=None) got a TypeError (unexpected
    keyword) where initial_states=None ran. They now compute as before at False / None; asking for the final
    states is refused in one line, as a tensor for initial_states is."""
    x, w, b = make()
    expected = causal_conv1d_fn(x, w, b, "silu")
    out = causal_conv1d_fn(x, w, b, seq_idx=None, initial_states=None, return_final_states=False,
                           final_states_out=None, activation="silu")
    assert torch.is_tensor(out)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match=r"^causal_conv1d_fn: return_final_states is not supported: this "
                                                  r"package follows the causal-conv1d 1.0.0 API, which has no "
                                                  r"return_final_states \(pass False\)$"):
        causal_conv1d_fn(x, w, b, activation="silu", return_final_states=True)
    with pytest.raises(NotImplementedError, match=r"^causal_conv1d_fn: final_states_out is not supported: .* "
                                                  r"\(pass None\)$"):
        causal_conv1d_fn(x, w, b, activation="silu", final_states_out=torch.zeros(BT, DM, 3))
