"""selective_state_update (mamba_ssm 1.1.1's decoding step): the reference against a step computed by hand and
against the selective scan run one token at a time; the public op's dispatch, in-place update, argument checks and
inference-only contract; the C kernel of the cpu backend for each instruction set; the Triton kernel against the
reference under the interpreter (the cases: state_update_interpreter_checks.py) and compiled for sm_90."""
import importlib
import importlib.util
import math
import sys

import pytest
import torch
from interpreter_scripts import run_under_interpreter

from localmamba_kernel_runtime import backends, ckernel
from localmamba_ssm import selective_scan_ref, selective_state_update, selective_state_update_ref
from localmamba_ssm.ops.triton import selective_state_update as interface

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
needs_compiler = pytest.mark.skipif(ckernel.compiler() is None, reason="no C compiler")
OPTIONS = [dict(D=False, z=False, bias=False, softplus=False), dict(D=True, z=False, bias=True, softplus=False),
           dict(D=False, z=True, bias=False, softplus=True), dict(D=True, z=True, bias=True, softplus=True)]


def _silu(v: float) -> float:
    return v / (1.0 + math.exp(-v))


def test_reference_matches_a_step_computed_by_hand():
    """batch 1, Dm = 2, N = 2, every option on: h = e^{dt a} h + dt b x, out = (sum h c + d x) silu(z), with
    dt = log(1 + e^{dt + bias}), in Python floats."""
    state0 = [[0.5, -1.0], [2.0, 0.25]]
    x, dt, z = [1.5, -0.5], [0.3, -1.2], [0.7, -2.0]
    A, B, C = [[-1.0, -0.5], [-2.0, -0.25]], [0.4, -0.6], [1.1, 0.9]
    D, bias = [0.2, -0.3], [0.1, 0.8]
    state = torch.tensor([state0])
    out = selective_state_update_ref(state, torch.tensor([x]), torch.tensor([dt]), torch.tensor(A),
                                     torch.tensor([B]), torch.tensor([C]), torch.tensor(D), torch.tensor([z]),
                                     torch.tensor(bias), dt_softplus=True)
    for d in range(2):
        step = math.log1p(math.exp(dt[d] + bias[d]))
        total = 0.0
        for n in range(2):
            h = math.exp(step * A[d][n]) * state0[d][n] + step * B[n] * x[d]
            assert state[0, d, n].item() == pytest.approx(h, rel=1e-5)
            total += h * C[n]
        assert out[0, d].item() == pytest.approx((total + D[d] * x[d]) * _silu(z[d]), rel=1e-5)


def _step_inputs(batch, dim, dstate, seqlen, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(u=torch.randn(batch, dim, seqlen, generator=g), delta=torch.randn(batch, dim, seqlen, generator=g),
                A=-torch.rand(dim, dstate, generator=g) - 0.2, B=torch.randn(batch, dstate, seqlen, generator=g),
                C=torch.randn(batch, dstate, seqlen, generator=g), D=torch.randn(dim, generator=g),
                z=torch.randn(batch, dim, seqlen, generator=g), bias=torch.rand(dim, generator=g) * 0.5)


@pytest.mark.parametrize("update, backend", [(selective_state_update_ref, None), (selective_state_update, "reference"),
                                             (selective_state_update, "cpu")])
@pytest.mark.parametrize("options", OPTIONS)
def test_steps_from_zero_equal_the_selective_scan(update, backend, options, monkeypatch):
    """L steps from a zero state give the scan's L outputs and its last state (the scan reference is an independent
    implementation: all decays first, then its own loop); the cpu backend with its C kernel required to build."""
    if backend is not None:
        monkeypatch.setenv("LOCALMAMBA_BACKEND", backend)
        monkeypatch.setenv("LOCALMAMBA_CPU_KERNEL", "require" if ckernel.compiler() is not None else "0")
    p = _step_inputs(batch=2, dim=3, dstate=5, seqlen=6)
    if not options["softplus"]:
        p["delta"] = p["delta"].abs()
    D = p["D"] if options["D"] else None
    bias = p["bias"] if options["bias"] else None
    z = p["z"] if options["z"] else None
    expected, last = selective_scan_ref(p["u"], p["delta"], p["A"], p["B"], p["C"], D, z, bias, options["softplus"],
                                        return_last_state=True)
    state = torch.zeros(2, 3, 5)
    outs = [update(state, p["u"][..., t], p["delta"][..., t], p["A"], p["B"][..., t], p["C"][..., t], D,
                   None if z is None else z[..., t], bias, options["softplus"]) for t in range(6)]
    torch.testing.assert_close(torch.stack(outs, dim=-1), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, last, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_state_is_updated_in_place_in_its_dtype(cpu_backend, dtype):
    """The same tensor (storage, dtype) holds the new state, a strided view of a larger cache included (the cpu
    backend's kernel runs on an fp32 copy, written back); out has x's dtype; out is read from the fp32 state before it
    is rounded to bf16."""
    p = _step_inputs(batch=2, dim=3, dstate=4, seqlen=1)
    cache = torch.randn(2, 3, 8, dtype=dtype)
    state = cache[:, :, ::2]
    before, pointer = state.float().clone(), state.data_ptr()
    args = (p["u"][..., 0].half(), p["delta"][..., 0].abs(), p["A"], p["B"][..., 0], p["C"][..., 0])
    out = selective_state_update(state, *args, D=p["D"])
    expected_state = before.clone()
    expected_out = selective_state_update_ref(expected_state, *args, D=p["D"])
    assert state.data_ptr() == pointer and state.dtype == dtype and out.dtype == torch.float16
    tol = dict(rtol=0, atol=0) if cpu_backend == "reference" else {}      # the C kernel: the dtype's defaults
    torch.testing.assert_close(cache[:, :, ::2], expected_state.to(dtype), **tol)
    torch.testing.assert_close(out, expected_out, **tol)
    assert not torch.equal(state.float(), before)
    untouched = cache[:, :, 1::2].clone()
    selective_state_update(state, *args)
    assert torch.equal(cache[:, :, 1::2], untouched)


def test_on_cpu_the_cpu_backend_runs_and_says_so(caplog):
    backends.reset_caches()
    caplog.set_level("INFO", logger="localmamba")
    assert backends.implemented_backends("selective_state_update") == ("cuda", "triton", "cpu", "reference")
    p = _step_inputs(batch=1, dim=2, dstate=3, seqlen=1)
    selective_state_update(torch.zeros(1, 2, 3), p["u"][..., 0], p["delta"][..., 0], p["A"], p["B"][..., 0],
                           p["C"][..., 0])
    assert "op 'selective_state_update' on cpu uses backend 'cpu' (auto)" in caplog.text


def test_the_official_op_gets_the_call_on_cuda(monkeypatch):
    """With mamba_ssm installed, CUDA inputs go to its op with every argument; fp64 ones go to the reference."""
    calls = []

    def fake(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
        calls.append((state, x, dt, A, B, C, D, z, dt_bias, dt_softplus))
        return x

    backends.reset_caches()
    dotted = interface.OFFICIAL_MODULE
    for i in range(1, dotted.count(".") + 2):
        name = ".".join(dotted.split(".")[:i])
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name, type(sys)(name)))
    monkeypatch.setattr(sys.modules[dotted], "selective_state_update", fake, raising=False)
    try:
        assert backends.select("selective_state_update", "cuda", interface._input_check(
            torch.zeros(1), (torch.zeros(1),))) == "cuda"
        reason = interface._input_check(torch.zeros(1, dtype=torch.float64), (torch.zeros(1),))("cuda")
        assert reason == "needs fp32/fp16/bf16 state and activations, got torch.float64"
        tensors = [torch.full((1,), float(i)) for i in range(9)]
        interface._IMPLS["cuda"](*tensors, True)
        assert len(calls) == 1 and all(a is b for a, b in zip(calls[0][:9], tensors)) and calls[0][9] is True
    finally:
        backends.reset_caches()


def _valid_args():
    return dict(state=torch.zeros(2, 3, 4), x=torch.randn(2, 3), dt=torch.rand(2, 3), A=-torch.rand(3, 4),
                B=torch.randn(2, 4), C=torch.randn(2, 4), D=torch.randn(3), z=torch.randn(2, 3),
                dt_bias=torch.randn(3))


@pytest.mark.parametrize("name, value, error, message", [
    ("x", torch.randn(2, 4), ValueError, r"x must have shape \(Bt, Dm\)=\(2, 3\) for a state of shape \(2, 3, 4\), "
                                         r"got \(2, 4\)"),
    ("dt", torch.randn(3), ValueError, r"dt must have shape \(Bt, Dm\)=\(2, 3\) for a state of shape \(2, 3, 4\), "
                                       r"got \(3\)"),
    ("A", torch.randn(4, 3), ValueError, r"A must have shape \(Dm, N\)=\(3, 4\) for a state of shape \(2, 3, 4\), "
                                         r"got \(4, 3\)"),
    ("B", torch.randn(2, 1, 4), ValueError, r"B must have shape \(Bt, N\)=\(2, 4\) for a state of shape "
                                            r"\(2, 3, 4\), got \(2, 1, 4\)"),
    ("C", torch.randn(1, 4), ValueError, r"C must have shape \(Bt, N\)=\(2, 4\) for a state of shape \(2, 3, 4\), "
                                         r"got \(1, 4\)"),
    ("D", torch.randn(4), ValueError, r"D must have shape \(Dm,\)=\(3,\) for a state of shape \(2, 3, 4\), got \(4\)"),
    ("z", torch.randn(2, 3, 1), ValueError, r"z must have shape \(Bt, Dm\)=\(2, 3\) for a state of shape "
                                            r"\(2, 3, 4\), got \(2, 3, 1\)"),
    ("dt_bias", torch.randn(1, 3), ValueError, r"dt_bias must have shape \(Dm,\)=\(3,\) for a state of shape "
                                               r"\(2, 3, 4\), got \(1, 3\)"),
    ("state", torch.zeros(2, 3), ValueError, r"state must have shape \(Bt, Dm, N\), got \(2, 3\)"),
    ("state", torch.zeros(2, 3, 0), ValueError, r"state needs at least one state \(N >= 1\), got \(2, 3, 0\)"),
    ("state", torch.zeros(2, 3, 4, dtype=torch.long), ValueError,
     r"state must be a floating-point tensor, got torch.int64"),
    ("dt_bias", torch.zeros(3, device="meta"), ValueError, r"dt_bias is on meta but state is on cpu"),
    ("dt_softplus", 2, ValueError, r"dt_softplus must be a bool \(or 0 / 1\), got 2"),
    ("C", None, TypeError, r"C must be a torch.Tensor, got None"),
    ("D", 1.0, TypeError, r"D must be a torch.Tensor or None, got float"),
    ("A", torch.zeros(3, 4, dtype=torch.complex64), NotImplementedError,
     r"complex A is not supported \(A must be real, of shape \(Dm, N\)\)"),
])
def test_bad_arguments_are_refused_in_one_line(name, value, error, message):
    args = dict(_valid_args(), **{name: value})
    state = args["state"].clone() if isinstance(args["state"], torch.Tensor) else None
    with pytest.raises(error, match=rf"^selective_state_update: {message}$"):
        selective_state_update(**args)
    assert state is None or torch.equal(args["state"], state)      # refused before any write


@pytest.mark.parametrize("name", ["state", "A", "x", "dt_bias"])
def test_inference_only_inputs_that_require_grad_are_refused(name):
    """No backward exists (the official kernel's output has no gradient, and the state is overwritten): an input that
    requires grad is refused while grad mode is on, and runs under no_grad / inference_mode."""
    args = _valid_args()
    args[name].requires_grad_()
    with pytest.raises(RuntimeError, match=rf"^selective_state_update: {name} requires grad, but this op is "
                                           r"inference only \(no backward; the state is overwritten\): call it under "
                                           r"torch.no_grad\(\) or torch.inference_mode\(\)$"):
        selective_state_update(**args)
    with torch.no_grad():
        out = selective_state_update(**args)
    assert out.shape == (2, 3) and not out.requires_grad


@needs_compiler
@pytest.mark.parametrize("dstate", [16, 37])
def test_the_c_kernel_matches_the_reference_for_each_instruction_set(cpu_isa, dstate):
    """Every option on and off, N = 16 (Mamba's) and 37 (full vectors and a partial one at 8 and 16 lanes)."""
    for i, options in enumerate(OPTIONS):
        args = _valid_args()
        g = torch.Generator().manual_seed(i)
        args.update(state=torch.randn(2, 3, dstate, generator=g), A=-torch.rand(3, dstate, generator=g) - 0.2,
                    B=torch.randn(2, dstate, generator=g), C=torch.randn(2, dstate, generator=g),
                    dt=torch.randn(2, 3, generator=g) if options["softplus"] else torch.rand(2, 3, generator=g))
        for name, key in (("D", "D"), ("z", "z"), ("dt_bias", "bias")):
            args[name] = args[name] if options[key] else None
        state_ref = args["state"].clone()
        out = selective_state_update(**args, dt_softplus=options["softplus"])
        out_ref = selective_state_update_ref(**dict(args, state=state_ref), dt_softplus=options["softplus"])
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(args["state"], state_ref, rtol=1e-5, atol=1e-5)


def test_empty_batch_gives_an_empty_output():
    args = dict(_valid_args(), state=torch.zeros(0, 3, 4), x=torch.zeros(0, 3), dt=torch.zeros(0, 3),
                B=torch.zeros(0, 4), C=torch.zeros(0, 4), z=torch.zeros(0, 3))
    assert selective_state_update(**args).shape == (0, 3)


def test_ported_imports_find_both_functions():
    """mamba_ssm 1.1.1 keeps the op and its reference in mamba_ssm.ops.triton.selective_state_update; the same path
    under our package holds both (and importing it does not import triton)."""
    module = importlib.import_module("localmamba_ssm.ops.triton.selective_state_update")
    assert module.selective_state_update is selective_state_update
    assert module.selective_state_update_ref is selective_state_update_ref


@needs_triton
def test_triton_kernel_matches_reference_under_interpreter():
    result = run_under_interpreter("state_update_interpreter_checks.py", timeout=600, backend="triton")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 10, result.stdout


@needs_triton
@pytest.mark.parametrize("dstate", [16, 4, 128])
def test_triton_kernel_compiles_for_hopper(dstate):
    """The interpreter does not lower kernels: compile the kernel for an H100/H200 (sm_90) at the launch's tiles for
    N = 16 (Mamba's), 4 and 128 (two tiles of state lanes), every option on and off, without register spills."""
    pytest.importorskip("triton.backends.nvidia", reason="triton's NVIDIA backend is not installed")
    from hopper_compile import assert_compiles_well

    from localmamba_ssm.ops.triton import state_update_triton as kernel

    block_d, block_n, warps = kernel.tiles(dstate)
    for on in (True, False):
        flags = dict(HAS_D=on, HAS_Z=on, HAS_BIAS=on, SOFTPLUS=on, BD=block_d, BN=block_n)
        assert_compiles_well(kernel._state_update_kernel, flags, warps)
