"""RMSNorm / fused add+norm against direct formulas: dtypes of output and residual, prenorm, gradients."""
import pytest
import torch

from kernel_formulas import direct_layer_norm, direct_rms_norm
from localmamba_ssm import RMSNorm, layer_norm_fn, layer_norm_ref, rms_norm_fn, rms_norm_ref

H = 7


def make(dtype=torch.float32, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, H, generator=g).to(dtype).requires_grad_(requires_grad)
    res = torch.randn(2, 5, H, generator=g).to(dtype).requires_grad_(requires_grad)
    w = (1 + 0.1 * torch.randn(H, generator=g)).to(dtype).requires_grad_(requires_grad)
    b = (0.1 * torch.randn(H, generator=g)).to(dtype).requires_grad_(requires_grad)
    return x, res, w, b


@pytest.mark.parametrize("is_rms", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_add_norm_matches_direct_formula(cpu_backend, is_rms, with_bias):
    x, res, w, b = make()
    b = b if with_bias else None
    direct = direct_rms_norm if is_rms else direct_layer_norm
    out, res_out = layer_norm_fn(x, w, b, residual=res, eps=1e-5, prenorm=True, is_rms_norm=is_rms)
    torch.testing.assert_close(res_out, x + res)
    torch.testing.assert_close(out.double(), direct(x.double() + res.double(), w, b, 1e-5), rtol=1e-5, atol=1e-5)
    ref = (rms_norm_ref if is_rms else layer_norm_ref)(x, w, b, residual=res, eps=1e-5, prenorm=True)
    torch.testing.assert_close(ref[0], out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref[1], res_out)


def test_rms_norm_fn_dtypes(cpu_backend):
    x, res, w, _ = make()
    xb = x.bfloat16()
    out, res_out = rms_norm_fn(xb, w, None, residual=None, prenorm=True, residual_in_fp32=True, eps=1e-5)
    assert out.dtype == torch.bfloat16 and res_out.dtype == torch.float32
    out, res_out = rms_norm_fn(xb, w, None, residual=res, prenorm=True, residual_in_fp32=True, eps=1e-5)
    assert out.dtype == torch.bfloat16 and res_out.dtype == torch.float32
    torch.testing.assert_close(res_out, xb.float() + res)
    torch.testing.assert_close(out.double(), direct_rms_norm(xb.double() + res.double(), w, None, 1e-5),
                               rtol=2e-2, atol=2e-2)
    out, res_out = rms_norm_fn(xb, w, None, prenorm=True, eps=1e-5)
    assert res_out.dtype == torch.bfloat16
    assert rms_norm_fn(xb, w, None, eps=1e-5).dtype == torch.bfloat16


@pytest.mark.parametrize("is_rms", [True, False])
def test_add_norm_gradcheck(cpu_backend, is_rms):
    x, res, w, b = make(torch.float64, requires_grad=True)

    def fn(x, res, w, b):
        out, res_out = layer_norm_fn(x, w, b, residual=res, eps=1e-5, prenorm=True, is_rms_norm=is_rms)
        return out, res_out

    assert torch.autograd.gradcheck(fn, (x, res, w, b))


def test_rms_norm_module():
    norm = RMSNorm(H, eps=1e-5)
    assert norm.bias is None and list(norm.state_dict()) == ["weight"]
    torch.testing.assert_close(norm.weight.detach(), torch.ones(H))
    x, res, _, _ = make()
    with torch.no_grad():
        norm.weight.mul_(torch.linspace(0.5, 1.5, H))
    expected = direct_rms_norm(x, norm.weight.detach(), None, 1e-5)
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-5, atol=1e-5)
    out, res_out = norm(x, residual=res, prenorm=True, residual_in_fp32=True)
    torch.testing.assert_close(res_out, x + res)


def test_rms_norm_module_default_eps_is_mamba_ssm_one():
    """RMSNorm's default eps is 1e-5 (mamba_ssm's module), not the functions' 1e-6: visible on small inputs."""
    norm = RMSNorm(H)
    assert norm.eps == 1e-5
    x = 1e-3 * make()[0]
    torch.testing.assert_close(norm(x).double(), direct_rms_norm(x, torch.ones(H), None, 1e-5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", [layer_norm_fn, rms_norm_fn])
def test_a_residual_of_another_shape_is_refused_not_broadcast(norm):
    x, res, w, _ = make()
    with pytest.raises(ValueError, match=r"residual must have x's shape \(2, 5, 7\), got \(1, 5, 7\)"):
        norm(x, w, None, residual=res[:1])


def test_norm_bad_weight_shape():
    x, _, w, _ = make()
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm_fn(x, w[:-1], None)


@pytest.mark.parametrize("is_rms", [True, False])
def test_add_norm_uses_the_eps_it_is_given(cpu_backend, is_rms):
    """eps reaches the norm: at eps = 0.5 (of the order of the rows' variance) the output differs clearly from one
    at any default eps, and equals the direct formula at 0.5; the reference norms too."""
    x, res, w, b = make()
    direct = direct_rms_norm if is_rms else direct_layer_norm
    expected = direct(x.double() + res.double(), w, b, 0.5)
    out = layer_norm_fn(x, w, b, residual=res, eps=0.5, is_rms_norm=is_rms)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    ref = (rms_norm_ref if is_rms else layer_norm_ref)(x, w, b, residual=res, eps=0.5)
    torch.testing.assert_close(ref.double(), expected, rtol=1e-5, atol=1e-5)
    assert (out.double() - direct(x.double() + res.double(), w, b, 1e-5)).abs().max() > 1e-2


@pytest.mark.parametrize("ref", [rms_norm_ref, layer_norm_ref])
def test_reference_norms_add_the_residual_in_x_dtype(ref):
    """As mamba_ssm's references: x + residual is rounded to x's dtype (bf16 x, fp32 residual), normalised from
    there and returned in that dtype by prenorm."""
    x, res, w, b = make()
    xb = x.bfloat16()
    out, res_out = ref(xb, w, b, residual=res, eps=1e-5, prenorm=True)
    assert res_out.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    torch.testing.assert_close(res_out, (xb + res).bfloat16(), rtol=0, atol=0)
