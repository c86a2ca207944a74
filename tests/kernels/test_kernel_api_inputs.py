"""The kernel packages' public APIs on inputs a user may pass: integer tensors, an empty state, bias shapes, index
tables that miss tokens, and mixed dtypes on the Triton scan. Each op either computes what its reference computes or
raises one ValueError that names the argument.
"""
import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from localmamba_conv1d import causal_conv1d_fn, causal_conv1d_update
from localmamba_ssm import (attention_merge_fn, bimamba_inner_fn, layer_norm_fn, mamba_inner_fn,
                            mamba_inner_fn_no_out_proj, multi_scan_inner_fn, rms_norm_fn, selective_scan_fn)
from localmamba_ssm.ops.checks import check_index_table

from test_multi_scan_inner import make_problem


def scan_inputs(batch=2, dim=3, seqlen=5, dstate=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, dim, seqlen, generator=g), torch.rand(batch, dim, seqlen, generator=g),
            -torch.rand(dim, dstate, generator=g) - 0.5, torch.randn(batch, dstate, seqlen, generator=g),
            torch.randn(batch, dstate, seqlen, generator=g))


@pytest.mark.parametrize("integer", ["x", "weight", "bias"])
def test_causal_conv1d_refuses_integer_tensors(cpu_backend, integer):
    """An integer x used to come back as a truncated integer output; an integer weight or bias was used silently."""
    args = dict(x=torch.randn(2, 3, 5), weight=torch.randn(3, 4), bias=torch.randn(3))
    args[integer] = args[integer].round().long()
    with pytest.raises(ValueError,
                       match=rf"^causal_conv1d_fn: {integer} must be a floating-point tensor, got torch.int64$"):
        causal_conv1d_fn(**args, activation="silu")


def test_causal_conv1d_update_refuses_an_integer_state(cpu_backend):
    """An integer conv_state used to truncate the new input into the state in place."""
    state = torch.zeros(2, 3, 4, dtype=torch.long)
    with pytest.raises(ValueError,
                       match=r"^causal_conv1d_update: conv_state must be a floating-point tensor, got torch.int64$"):
        causal_conv1d_update(torch.randn(2, 3), state, torch.randn(3, 4))
    assert not state.any()


@pytest.mark.parametrize("norm", [layer_norm_fn, rms_norm_fn])
def test_fused_norms_refuse_integer_and_scalar_inputs(norm):
    """An integer x used to come back as a truncated integer output; a 0-d x raised a bare IndexError."""
    api = norm.__name__
    with pytest.raises(ValueError, match=rf"^{api}: x must be a floating-point tensor, got torch.int64$"):
        norm(torch.ones(2, 4, dtype=torch.long), torch.ones(4), None)
    with pytest.raises(ValueError, match=rf"^{api}: residual must be a floating-point tensor, got torch.int32"):
        norm(torch.ones(2, 4), torch.ones(4), None, residual=torch.ones(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=rf"^{api}: x must have at least one dimension \(\.\.\., H\), got "
                                         r"shape \(\)$"):
        norm(torch.tensor(1.0), torch.ones(1), None)


@pytest.mark.parametrize("norm", [layer_norm_fn, rms_norm_fn])
@pytest.mark.parametrize("name", ["weight", "bias", "residual"])
def test_fused_norms_refuse_a_tensor_on_another_device(norm, name):
    """A residual (or weight, bias) on another device ended in torch's "Tensor on device meta is not on the expected
    device cpu!"; it is now refused by name, as the other ops do."""
    args = dict(x=torch.ones(2, 4), weight=torch.ones(4), bias=torch.zeros(4), residual=torch.ones(2, 4))
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"^{norm.__name__}: {name} is on meta but x is on cpu$"):
        norm(**args)


@pytest.mark.parametrize("flag", ["delta_softplus", "return_last_state"])
@pytest.mark.parametrize("value", ["yes", 2, -1, 1.0, None])
def test_selective_scan_refuses_flags_that_are_not_bools(cpu_backend, flag, value):
    """delta_softplus="yes" failed deep inside torch.library on the cpu backend (and ran as True on the reference);
    return_last_state="no" returned the last state."""
    with pytest.raises(ValueError, match=rf"^selective_scan: {flag} must be a bool \(or 0 / 1\), got {value!r}$"):
        selective_scan_fn(*scan_inputs(), **{flag: value})


def test_selective_scan_takes_0_and_1_as_flags_as_the_official_kernel_does(cpu_backend):
    """mamba_ssm's selective_scan_fn passes the flags to a C++ bool, so code written for it may give 1 or 0; those
    were refused. Each now gives what True / False give (softplus applied or not, the last state returned or not)."""
    inputs = scan_inputs()
    for number, flag in ((1, True), (0, False)):
        as_bool = selective_scan_fn(*inputs, delta_softplus=flag, return_last_state=flag)
        as_int = selective_scan_fn(*inputs, delta_softplus=number, return_last_state=number)
        assert type(as_int) is type(as_bool)
        for got, want in zip(*(r if isinstance(r, tuple) else (r,) for r in (as_int, as_bool))):
            assert torch.equal(got, want)
    assert not torch.equal(selective_scan_fn(*inputs, delta_softplus=1), selective_scan_fn(*inputs))


@pytest.mark.parametrize("name", ["x_proj_weight", "A_log", "dt_proj_weight", "D", "conv_weight"])
def test_multi_scan_inner_names_a_direction_count_mismatch(cpu_backend, name):
    """An index of 2 directions against weights of 3 reported "A_log must have shape (K, E, N)=(2, 12, N)"."""
    p = make_problem(num_dirs=3)
    p = dict(p, index=p["index"][:2]) if name == "x_proj_weight" else dict(p, **{name: p[name][:2]})
    index_dirs, weight_dirs = (2, 3) if name == "x_proj_weight" else (3, 2)
    with pytest.raises(ValueError, match=rf"^multi_scan_inner: the index has {index_dirs} directions but {name} has "
                                         rf"weights for {weight_dirs} \(shape \({weight_dirs}, "):
        multi_scan_inner_fn(**p, gate=True)


def test_selective_scan_refuses_an_empty_state(cpu_backend):
    """N = 0 ran on the CPU backends but crashed inside the Triton kernels; all backends now refuse it."""
    u, delta, A, B, C = scan_inputs(dstate=0)
    with pytest.raises(ValueError, match=r"^selective_scan: A needs at least one state \(N >= 1\), got \(3, 0\)$"):
        selective_scan_fn(u, delta, A, B, C)


@pytest.mark.parametrize("name", ["B_proj_bias", "C_proj_bias"])
def test_mamba_inner_checks_projection_bias_shapes(cpu_backend, name):
    """A wrong B_proj_bias / C_proj_bias used to surface as a bare broadcasting error."""
    g = torch.Generator().manual_seed(0)
    inner, rank, dstate = 4, 2, 3
    args = dict(xz=torch.randn(2, 2 * inner, 6, generator=g), conv1d_weight=torch.randn(inner, 4, generator=g),
                conv1d_bias=None, x_proj_weight=torch.randn(rank + 2 * dstate, inner, generator=g),
                delta_proj_weight=torch.randn(inner, rank, generator=g), A=-torch.rand(inner, dstate, generator=g))
    with pytest.raises(ValueError, match=rf"^mamba_inner: {name} must have shape \(N,\)=\(3,\), got \(5\)$"):
        mamba_inner_fn_no_out_proj(**args, **{name: torch.randn(5)})


def inner_args(inner=4, rank=2, dstate=3, dim=5):
    """Arguments of mamba_inner_fn: xz (2, 2*inner, 6), weights in fp32."""
    g = torch.Generator().manual_seed(0)
    return dict(xz=torch.randn(2, 2 * inner, 6, generator=g), conv1d_weight=torch.randn(inner, 4, generator=g),
                conv1d_bias=torch.randn(inner, generator=g),
                x_proj_weight=torch.randn(rank + 2 * dstate, inner, generator=g),
                delta_proj_weight=torch.randn(inner, rank, generator=g), out_proj_weight=torch.randn(dim, inner),
                out_proj_bias=torch.randn(dim), A=-torch.rand(inner, dstate, generator=g))


@pytest.mark.parametrize("backend", ["reference", "composed", "cpu"])
@pytest.mark.parametrize("name", ["xz", "x_proj_weight", "delta_proj_weight", "out_proj_weight", "out_proj_bias"])
def test_mamba_inner_refuses_mixed_dtypes_outside_autocast(force_backend, backend, name):
    """bf16 xz with fp32 projection weights (or one weight cast) ended in F.linear's 'expected scalar type Float but
    found BFloat16'; refused by name, as multi_scan_inner_fn does. Under autocast the same call runs."""
    force_backend(backend)
    args = inner_args()
    args[name] = args[name].bfloat16()
    anchor = "bfloat16" if name == "xz" else "float32"
    other = "float32" if name == "xz" else "bfloat16"
    shown = "x_proj_weight" if name == "xz" else name
    with pytest.raises(ValueError, match=rf"^mamba_inner: {shown} is torch.{other} but xz is torch.{anchor}: cast "
                                         r"them to one dtype, or run under torch.autocast$"):
        mamba_inner_fn(**args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mamba_inner_fn(**args).shape == (2, 6, 5)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_mamba_inner_takes_fp32_conv_weights_beside_bf16_tokens(force_backend, backend):
    """mamba_ssm's own test of mamba_inner_fn builds its conv weight and bias in fp32 beside xz and projections in
    the input dtype (its conv kernel takes mixed dtypes); with bf16 inputs that was refused as 'conv1d_weight is
    torch.float32 but xz is torch.bfloat16'. It runs, in bf16, as the same call on bf16-exact values in fp32."""
    force_backend(backend)
    torch.manual_seed(0)   # inner_args draws out_proj_weight from the global generator
    args = {k: v.bfloat16().float() for k, v in inner_args().items()}
    expected = mamba_inner_fn(**args)
    mixed = {k: v if k in ("conv1d_weight", "conv1d_bias", "A") else v.bfloat16() for k, v in args.items()}
    out = mamba_inner_fn(**mixed)
    assert out.dtype == torch.bfloat16
    # bf16 rounding of the conv output, the projections and the result: measured at most 0.042 x (1 + |expected|)
    # over global seeds 0-19 on both backends (outputs up to about 80)
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("inner", [mamba_inner_fn, mamba_inner_fn_no_out_proj])
def test_mamba_inner_refuses_a_complex_A_in_its_own_name(cpu_backend, inner):
    """A complex A (mamba_ssm 1.1.1's complex path: x_proj_weight with R + 4N rows) ran the conv and projections,
    then was refused as 'selective_scan: complex A ...', an op the caller never called; now refused first, by the
    function called."""
    args = inner_args(dstate=3)
    args["A"] = torch.complex(args["A"], torch.ones_like(args["A"]))
    args["x_proj_weight"] = torch.randn(2 + 4 * 3, 4)
    if inner is mamba_inner_fn_no_out_proj:
        del args["out_proj_weight"], args["out_proj_bias"]
    with pytest.raises(NotImplementedError, match=r"^mamba_inner: complex A is not supported \(A must be real, of "
                                                  r"shape \(E, N\)\)$"):
        inner(**args)


def test_mamba_inner_refuses_integer_conv_weights_by_name(cpu_backend):
    """Integer conv weights are refused by the inner function, naming its own argument (not the conv's)."""
    with pytest.raises(ValueError, match=r"^mamba_inner: conv1d_weight must be a floating-point tensor, got "
                                         r"torch.int64$"):
        mamba_inner_fn(**dict(inner_args(), conv1d_weight=torch.ones(4, 4, dtype=torch.long)))


@pytest.mark.parametrize("name, shape, message", [
    ("conv1d_bias", (5,), r"conv1d_bias must have shape \(E,\)=\(4,\), got \(5\)"),
    ("out_proj_weight", (5, 3), r"out_proj_weight must have shape \(C, E\) with E=4, got \(5, 3\)"),
    ("out_proj_bias", (4,), r"out_proj_bias must have shape \(C,\)=\(5,\), got \(4\)"),
])
def test_mamba_inner_checks_conv_bias_and_out_proj_shapes(cpu_backend, name, shape, message):
    args = dict(inner_args(), **{name: torch.randn(shape)})
    with pytest.raises(ValueError, match=rf"^mamba_inner: {message}$"):
        mamba_inner_fn(**args)


@pytest.mark.parametrize("backend", ["reference", "composed", "cpu"])
@pytest.mark.parametrize("defect, message", [
    ("out of range", r"^index values must lie in \[0, 11\] \(the token count marks padding\)$"),
    ("missing token", r"^index: every direction must list every token in \[0, 11\) exactly once$"),
    ("repeated token", r"^index: every direction must list every token in \[0, 11\) exactly once$"),
])
def test_multi_scan_inner_refuses_bad_index_tables_on_every_backend(force_backend, backend, defect, message):
    """Only the cpu backend checked the table: the others raised a bare IndexError, or (a direction that misses
    tokens) returned outputs, and the Triton kernels read out of bounds or left rows unwritten."""
    force_backend(backend)
    p = make_problem()
    index = p["index"].clone()
    if defect == "repeated token":
        index[0][index[0] == 11] = 0     # direction 0's padding slots read token 0 again
    else:
        index[0] = 99 if defect == "out of range" else 11
    with pytest.raises(ValueError, match=message):
        multi_scan_inner_fn(**dict(p, index=index), gate=True)


def test_multi_scan_inner_checks_a_table_again_after_an_in_place_change(force_backend):
    """The check of a table is cached per tensor; writing into the table makes the next call check it again."""
    force_backend("composed")
    p = make_problem()
    index = p["index"].clone()
    multi_scan_inner_fn(**dict(p, index=index), gate=True)
    index[1, :] = 11
    with pytest.raises(ValueError, match=r"every direction must list every token"):
        multi_scan_inner_fn(**dict(p, index=index), gate=True)


def test_multi_scan_inner_checks_a_valid_table_again_for_another_token_count(force_backend):
    """The cached check of a table holds for the token count it was checked with: the same table with fewer tokens
    (values past their padding marker) is refused, not read past the tokens."""
    force_backend("composed")
    p = make_problem()
    index = p["index"].clone()
    multi_scan_inner_fn(**dict(p, index=index), gate=True)
    with pytest.raises(ValueError, match=r"index values must lie in \[0, 10\]"):
        multi_scan_inner_fn(**dict(p, index=index, tokens=p["tokens"][:, :10]), gate=True)


@pytest.mark.parametrize("change,gate,message", [
    (dict(tokens=lambda t: t[..., :23]), True, r"tokens need at least 24 channels \(x and z\), got 23"),
    (dict(tokens=lambda t: t[..., :11]), False, r"tokens need at least 12 channels \(x\), got 11"),
    (dict(conv_weight=lambda w: w.expand(-1, -1, 2, -1)), True,
     r"conv_weight must have shape \(K, E, W\) or \(K, E, 1, W\) .* got \(3, 12, 2, 4\)"),
])
def test_multi_scan_inner_refuses_too_few_token_channels_and_a_conv_weight_of_two_rows(cpu_backend, change, gate,
                                                                                       message):
    """The gate's z channels [E, 2E) must exist in the tokens, and a 4-D conv weight must be (K, E, 1, W): a shorter
    z or a second weight row would otherwise be read as something else."""
    p = make_problem()
    p.update({name: fn(p[name].detach()) for name, fn in change.items()})
    with pytest.raises(ValueError, match=message):
        multi_scan_inner_fn(**p, gate=gate)


def test_multi_scan_inner_runs_on_meta_tensors_without_reading_the_table():
    """On the 'meta' device (shapes only, as for a model built there) the index table has no values to check: the
    op gives the (Bt, K, T, E) result on that device."""
    p = {name: t.detach().to("meta") for name, t in make_problem().items()}
    out = multi_scan_inner_fn(**p, gate=True)
    assert out.device.type == "meta" and out.shape == (2, 3, 11, 12)


def test_multi_scan_inner_checks_an_inference_mode_table_at_every_call(force_backend):
    """A table made under torch.inference_mode has no version counter: it is checked at every call, not cached."""
    force_backend("composed")
    p = make_problem()
    with torch.inference_mode():
        index = p["index"].clone()
        good = multi_scan_inner_fn(**dict(p, index=index), gate=True)
        assert torch.equal(good, multi_scan_inner_fn(**p, gate=True))
        index[1, :] = 11
        with pytest.raises(ValueError, match=r"every direction must list every token"):
            multi_scan_inner_fn(**dict(p, index=index), gate=True)


def test_multi_scan_inner_refuses_an_empty_state(cpu_backend):
    """N = 0 crashed inside the Triton kernels; all backends now refuse it."""
    p = make_problem(state=0)
    with pytest.raises(ValueError, match=r"^multi_scan_inner: A_log needs at least one state \(N >= 1\), got "
                                         r"\(3, 12, 0\)$"):
        multi_scan_inner_fn(**p, gate=True)


TRITON_CHECKS = textwrap.dedent("""
    import torch
    from localmamba_ssm import multi_scan_inner_fn, selective_scan_fn, selective_scan_ref
    from test_multi_scan_inner import make_problem

    # u in bf16, the rest fp32: delta, z and B used to be rounded to bf16 before the kernels read them
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 2, 6, generator=g).bfloat16().requires_grad_()
    delta = (torch.rand(1, 2, 6, generator=g) * 0.5).requires_grad_()
    A = -torch.rand(2, 3, generator=g) - 0.5
    B, C = torch.randn(1, 3, 6, generator=g).requires_grad_(), torch.randn(1, 3, 6, generator=g)
    z = torch.randn(1, 2, 6, generator=g).requires_grad_()
    out, last = selective_scan_fn(u, delta, A, B, C, z=z, delta_softplus=True, return_last_state=True)
    out_ref, last_ref = selective_scan_ref(u, delta, A, B, C, z=z, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(last, last_ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.float().sum() + last.sum(), (delta, z, B))
    grads_ref = torch.autograd.grad(out_ref.float().sum() + last_ref.sum(), (delta, z, B))
    for grad, grad_ref in zip(grads, grads_ref):
        assert grad.dtype == torch.float32, grad.dtype
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-4)
    print("ok mixed dtypes")

    p = make_problem(batch=1, num_tokens=3, length=4, num_dirs=2, inner=2, rank=1, state=2, width=2)
    index = p["index"].clone()
    index[0] = 3
    try:
        multi_scan_inner_fn(**dict(p, index=index), gate=True)
    except ValueError as e:
        assert "every direction must list every token in [0, 3) exactly once" in str(e), e
        print("ok index table")
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_under_interpreter_keep_wide_inputs_and_refuse_bad_tables():
    """Under the Triton interpreter (set before the kernels are defined: a subprocess), at tiny shapes."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, TRITON_INTERPRET="1", LOCALMAMBA_BACKEND="triton",
               PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", TRITON_CHECKS], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["ok", "mixed", "dtypes", "ok", "index", "table"], result.stdout


@pytest.mark.parametrize("backend", ["reference", "composed", "cpu"])
@pytest.mark.parametrize("cast", ["tokens", "x_proj_weight"])
def test_multi_scan_inner_refuses_mixed_dtypes_outside_autocast_on_every_backend(force_backend, backend, cast):
    """bf16 tokens with fp32 weights (or the reverse) ran on cpu but raised a bare matmul error on the plain-op
    backends; every backend now refuses it by name, and autocast still runs it."""
    force_backend(backend)
    p = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in make_problem().items()}
    mixed = dict(p, **{cast: p[cast].bfloat16()})
    weight, tokens = ("float32", "bfloat16") if cast == "tokens" else ("bfloat16", "float32")
    with pytest.raises(ValueError, match=rf"^multi_scan_inner: x_proj_weight is torch.{weight} but tokens are "
                                         rf"torch.{tokens}: cast them to one dtype, or run under torch.autocast$"):
        multi_scan_inner_fn(**mixed, gate=True)
    if cast == "tokens":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = multi_scan_inner_fn(**mixed, gate=True)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("backend", ["reference", "composed", "cpu"])
def test_multi_scan_inner_takes_fp32_scan_parameters_with_bf16_tokens(force_backend, backend):
    """A_log, D and dt_proj_bias kept in fp32 beside a bf16 model (as Mamba keeps them) run on every backend."""
    force_backend(backend)
    p = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in make_problem().items()}
    narrow = {k: p[k].bfloat16() for k in ("tokens", "x_proj_weight", "dt_proj_weight", "conv_weight", "conv_bias")}
    out = multi_scan_inner_fn(**dict(p, **narrow), gate=True)
    assert out.dtype == torch.bfloat16
    # bf16 rounding of the tokens and projections, carried through the scan: measured at most 0.018 x (1 + |fp32|)
    # over seeds 0-5 on these backends (0.011 at this seed)
    torch.testing.assert_close(out.float(), multi_scan_inner_fn(**p, gate=True), rtol=0.03, atol=0.03)


def test_attention_merge_refuses_integer_outputs_by_name(cpu_backend):
    weights = (torch.ones(4), torch.zeros(4), torch.ones(2, 4), torch.zeros(2), torch.ones(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"^attention_merge: y must be a floating-point tensor, got torch.int64$"):
        attention_merge_fn(torch.ones(1, 2, 3, 4, dtype=torch.long), *weights)


@pytest.mark.parametrize("fn, name", [(mamba_inner_fn, "out_proj_weight"), (bimamba_inner_fn, "out_proj_weight"),
                                      (bimamba_inner_fn, "A_b")])
def test_mamba_inner_functions_name_a_missing_out_proj_weight_or_A_b(cpu_backend, fn, name):
    args = dict(inner_args(), A_b=-torch.rand(4, 3)) if fn is bimamba_inner_fn else inner_args()
    args[name] = None
    with pytest.raises(TypeError, match=rf"^mamba_inner: {name} must be a torch.Tensor, got None$"):
        fn(**args)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_attention_merge_refuses_mixed_dtypes_outside_autocast(force_backend, backend):
    """bf16 outputs with fp32 attention weights raised a bare `mat1 and mat2` / `mixed dtype` error."""
    force_backend(backend)
    g = torch.Generator().manual_seed(0)
    dim, hidden = 8, 2
    weights = (torch.ones(dim), torch.zeros(dim), torch.randn(hidden, dim, generator=g), torch.zeros(hidden),
               torch.randn(dim, hidden, generator=g), torch.zeros(dim))
    y = torch.randn(2, 3, 5, dim, generator=g)
    with pytest.raises(ValueError, match=r"^attention_merge: norm_weight is torch.float32 but the outputs are "
                                         r"torch.bfloat16: cast them to one dtype, or run under torch.autocast$"):
        attention_merge_fn(y.bfloat16(), *weights)
    expected = attention_merge_fn(y, *weights)
    cast = attention_merge_fn(y.bfloat16(), *(w.bfloat16() for w in weights))
    assert cast.dtype == torch.bfloat16
    torch.testing.assert_close(cast.float(), expected, rtol=2e-2, atol=5e-2)


def test_index_table_value_above_the_padding_marker_is_refused():
    """T (=3) marks padding; 4 would read past the token rows."""
    check_index_table(torch.tensor([[0, 1, 2, 3]]), 3)
    with pytest.raises(ValueError, match=r"index values must lie in \[0, 3\]"):
        check_index_table(torch.tensor([[0, 1, 2, 4]]), 3)


def inner_inputs(batch=2, dim=4, seqlen=5, dstate=3, rank=2, width=3):
    """xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A of mamba_inner_fn_no_out_proj."""
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 2 * dim, seqlen, generator=g), torch.randn(dim, 1, width, generator=g),
            torch.randn(dim, generator=g), torch.randn(rank + 2 * dstate, dim, generator=g),
            torch.randn(dim, rank, generator=g), -torch.rand(dim, dstate, generator=g) - 0.5)


def _scan_call(name, value):
    args = dict(zip(("u", "delta", "A", "B", "C"), scan_inputs()))
    args[name] = value
    return lambda: selective_scan_fn(**args)


def _conv_call(name, value):
    u = scan_inputs()[0]
    args = dict(x=u, weight=torch.randn(3, 4), bias=torch.randn(3))
    args[name] = value
    return lambda: causal_conv1d_fn(**args)


def _update_call(name, value):
    args = dict(x=torch.randn(2, 3), conv_state=torch.zeros(2, 3, 4), weight=torch.randn(3, 4), bias=None)
    args[name] = value
    return lambda: causal_conv1d_update(**args)


def _inner_call(name, value):
    args = dict(zip(("xz", "conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "A"),
                    inner_inputs()))
    args[name] = value
    return lambda: mamba_inner_fn_no_out_proj(**args)


@pytest.mark.parametrize("call, op, name, value, expected", [
    (_scan_call, "selective_scan", "B", None, "a torch.Tensor, got None"),
    (_scan_call, "selective_scan", "u", [[0.0]], "a torch.Tensor, got list"),
    (_scan_call, "selective_scan", "D", 1.0, "a torch.Tensor or None, got float"),
    (_scan_call, "selective_scan", "z", 0, "a torch.Tensor or None, got int"),
    (_scan_call, "selective_scan", "delta_bias", "0", "a torch.Tensor or None, got str"),
    (_conv_call, "causal_conv1d_fn", "weight", None, "a torch.Tensor, got None"),
    (_conv_call, "causal_conv1d_fn", "bias", 0.5, "a torch.Tensor or None, got float"),
    (_update_call, "causal_conv1d_update", "conv_state", None, "a torch.Tensor, got None"),
    (_update_call, "causal_conv1d_update", "x", [1.0, 2.0], "a torch.Tensor, got list"),
    (_inner_call, "mamba_inner", "A", None, "a torch.Tensor, got None"),
    (_inner_call, "mamba_inner", "conv1d_bias", 1.0, "a torch.Tensor or None, got float"),
])
def test_an_argument_that_is_no_tensor_is_a_type_error_naming_it(cpu_backend, call, op, name, value, expected):
    """None for a required tensor, a Python number for D or a bias: an AttributeError from deep inside ('NoneType'
    object has no attribute 'shape'), which named neither the op nor the argument; now one TypeError that does."""
    with pytest.raises(TypeError, match=rf"^{op}: {name} must be {expected}$"):
        call(name, value)()


@pytest.mark.parametrize("name, value, message", [
    ("xz", inner_inputs()[0].long(), r"xz must be a floating-point tensor, got torch.int64"),
    ("conv1d_weight", torch.zeros(4, 1, 0), r"conv1d_weight must have shape \(E, W\) or \(E, 1, W\) with E=4 and "
                                            r"W >= 1, got \(4, 1, 0\)"),
])
def test_mamba_inner_names_itself_and_its_own_argument(cpu_backend, name, value, message):
    """Integer tokens, and a conv of width 0, were refused by the conv inside as 'causal_conv1d_fn: x ...' /
    'causal_conv1d_fn: weight ... got (4, 0)': an op and an argument the caller never called or passed."""
    args = dict(zip(("xz", "conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "A"),
                    inner_inputs()))
    if name == "xz":   # every weight in its dtype, so that the dtype check does not answer first
        args = {k: (v.long() if k != "A" else v) for k, v in args.items()}
    args[name] = value
    with pytest.raises(ValueError, match=rf"^mamba_inner: {message}$"):
        mamba_inner_fn_no_out_proj(**args)


@pytest.mark.parametrize("inner", [mamba_inner_fn, mamba_inner_fn_no_out_proj])
@pytest.mark.parametrize("name, value, error, message", [
    ("D", torch.ones(5), ValueError, r"D must have shape \(E,\)=\(4,\), got \(5\)"),
    ("delta_bias", torch.ones(1, 4), ValueError, r"delta_bias must have shape \(E,\)=\(4,\), got \(1, 4\)"),
    ("D", torch.ones(4, dtype=torch.long), ValueError, r"D must be a floating-point tensor, got torch.int64"),
    ("A", -torch.ones(4, 3, dtype=torch.long), ValueError, r"A must be a floating-point tensor, got torch.int64"),
    ("delta_bias", torch.ones(4, device="meta"), ValueError, r"delta_bias is on meta but xz is on cpu"),
    ("D", 1.0, TypeError, r"D must be a torch.Tensor or None, got float"),
])
def test_mamba_inner_names_its_scan_parameters(cpu_backend, inner, name, value, error, message):
    """A wrong D or delta_bias (or an integer A) ran the conv and projections, then was refused by the scan inside as
    'selective_scan: D must have shape (Dm,)=...' or 'delta_bias is on meta but u is on cpu': an op the caller
    never called, and an argument (u) it never passed; now refused first, by the function called."""
    args = dict(inner_args(), D=torch.ones(4), delta_bias=torch.zeros(4))
    if inner is mamba_inner_fn_no_out_proj:
        del args["out_proj_weight"], args["out_proj_bias"]
    args[name] = value
    with pytest.raises(error, match=rf"^mamba_inner: {message}$"):
        inner(**args)


@pytest.mark.parametrize("module, names", [
    ("localmamba_ssm.ops.selective_scan_interface",
     ("selective_scan_fn", "selective_scan_ref", "mamba_inner_fn", "mamba_inner_ref", "mamba_inner_fn_no_out_proj",
      "bimamba_inner_fn", "bimamba_inner_ref")),
    ("localmamba_conv1d.causal_conv1d_interface",
     ("causal_conv1d_fn", "causal_conv1d_ref", "causal_conv1d_update", "causal_conv1d_update_ref")),
])
def test_interface_modules_hold_the_official_modules_functions(module, names):
    """Code ported by renaming the package in its imports (mamba_ssm's own tests import selective_scan_fn,
    selective_scan_ref, mamba_inner_fn and mamba_inner_ref from mamba_ssm.ops.selective_scan_interface) finds every
    function there: mamba_inner_ref was only at the package's top level (ImportError)."""
    interface = importlib.import_module(module)
    assert [name for name in names if not callable(getattr(interface, name, None))] == []


@pytest.mark.parametrize("norm", [layer_norm_fn, rms_norm_fn])
def test_fused_norms_name_an_argument_that_is_no_tensor(norm):
    """weight=None, or a Python number for the residual, raised AttributeError ('NoneType' object has no attribute
    'shape'); now one TypeError naming the argument, and the function called (rms_norm_fn's errors named
    layer_norm_fn, which it calls)."""
    with pytest.raises(TypeError, match=rf"^{norm.__name__}: weight must be a torch.Tensor, got None$"):
        norm(torch.ones(2, 4), None, None)
    with pytest.raises(TypeError, match=rf"^{norm.__name__}: residual must be a torch.Tensor or None, got float$"):
        norm(torch.ones(2, 4), torch.ones(4), None, residual=0.0)
