"""The C kernels built for each instruction set (baseline, AVX2+FMA, AVX-512) against the references, and the choice
of instruction set (``LOCALMAMBA_CPU_ISA``). A variant this CPU cannot run is skipped with that reason."""
from types import SimpleNamespace

import pytest
import torch

from kernel_formulas import direct_conv1d
from localmamba_conv1d import causal_conv1d_fn, cpu_conv1d
from localmamba_kernel_runtime import backends, ckernel
from localmamba_ssm import multi_scan_inner_fn, selective_scan_fn
from localmamba_ssm.ops.cpu import attention_merge_cpu, multi_scan_cpu, selective_scan_cpu, state_update_cpu
from test_multi_scan_inner import (assert_attention_merge_matches_reference, assert_backend_matches_reference,
                                   attention_problem, make_problem)

KERNEL_MODULES = (cpu_conv1d, selective_scan_cpu, multi_scan_cpu, attention_merge_cpu, state_update_cpu)
needs_compiler = pytest.mark.skipif(ckernel.compiler() is None, reason="no C compiler")


def test_unknown_isa_is_refused_with_the_valid_values(monkeypatch):
    monkeypatch.setenv(ckernel.ISA_VAR, "sse9")
    with pytest.raises(ckernel.UnsupportedISAError, match=r"'sse9' is not an instruction set; valid values are: "
                                                          r"baseline, avx2, avx512"):
        ckernel.selected_isa()


def test_isa_the_cpu_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(ckernel, "supported_isas", lambda: ("baseline", "avx2"))
    monkeypatch.setenv(ckernel.ISA_VAR, "AVX512")
    with pytest.raises(ckernel.UnsupportedISAError, match="'avx512': this CPU lacks it .it runs: baseline, avx2."):
        ckernel.selected_isa()
    with pytest.raises(ckernel.UnsupportedISAError, match="instruction set 'avx512'"):
        ckernel.load_library("selective_scan", selective_scan_cpu.SOURCES, {}, isa="avx512")


def test_best_supported_isa_is_the_default(monkeypatch):
    monkeypatch.delenv(ckernel.ISA_VAR, raising=False)
    monkeypatch.setattr(ckernel, "supported_isas", lambda: ("baseline", "avx2"))
    assert ckernel.selected_isa() == "avx2"
    monkeypatch.setenv(ckernel.ISA_VAR, "baseline")
    assert ckernel.selected_isa() == "baseline"


def test_supported_isas_follow_the_cpu_flags():
    supported = ckernel.supported_isas()
    assert supported[0] == "baseline" and list(supported) == [isa for isa in ckernel.ISAS if isa in supported]
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    assert ("avx512" in supported) == ({"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
                                       and "avx2" in supported)


def test_summary_names_the_isa(cpu_isa):
    import localmamba_ssm

    assert localmamba_ssm.backend_summary("cpu")["cpu_isa"] == cpu_isa


@needs_compiler
@pytest.mark.parametrize("module", KERNEL_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_each_library_is_built_for_the_isa_with_its_vector_width(cpu_isa, module):
    lib = module.load_kernel()
    assert lib is not None and lib.lm_isa == cpu_isa
    assert ckernel.vector_width(lib) == (16 if cpu_isa == "avx512" else 8)


@needs_compiler
@pytest.mark.parametrize("gate, conv", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("shape", [dict(), dict(batch=3, num_tokens=9, length=9, num_dirs=2, inner=19, rank=2, state=16,
                                                width=3), dict(batch=1, num_tokens=40, length=45, inner=37, state=9)])
def test_multi_scan_matches_reference(cpu_isa, gate, conv, shape):
    assert multi_scan_cpu.kernel_available()
    assert_backend_matches_reference(make_problem(gate=gate, conv=conv, **shape), gate)


@needs_compiler
@pytest.mark.parametrize("shape", [dict(), dict(batch=1, num_dirs=4, num_tokens=7, dim=37, hidden=3)])
def test_attention_merge_matches_reference(cpu_isa, shape):
    assert attention_merge_cpu.load_kernel() is not None
    assert_attention_merge_matches_reference(attention_problem(**shape))


@needs_compiler
@pytest.mark.parametrize("conv", [True, False])
def test_multi_scan_backward_recomputes_the_states_the_forward_did_not_save(cpu_isa, conv):
    """The backward from the forward's chunk-start states equals the backward that recomputes them (the forward
    saves them only when a gradient is to follow), with a conv (sequences gathered) and without (token rows read in
    place)."""
    p = make_problem(batch=2, num_tokens=40, length=45, inner=37, state=9, conv=conv)
    args = [p["tokens"], p["index"], p["conv_weight"].flatten(2) if conv else None, p["conv_bias"], p["x_proj_weight"],
            p["dt_proj_weight"], p["dt_proj_bias"], p["A_log"], p["D"]]
    args = [None if a is None else a.detach().contiguous() for a in args]
    op = torch.ops.localmamba
    y, u, xdbl, ckpt = op.multi_scan_cpu_fwd(*args, True, True)
    y_again, _, _, no_ckpt = op.multi_scan_cpu_fwd(*args, True, False)
    assert ckpt.numel() > 0 and no_ckpt.numel() == 0
    torch.testing.assert_close(y_again, y, rtol=0, atol=0)
    dy = torch.randn_like(y)
    saved = op.multi_scan_cpu_bwd(dy, *args, True, u, xdbl, ckpt)
    recomputed = op.multi_scan_cpu_bwd(dy, *args, True, u, xdbl, no_ckpt)
    for got, want in zip(saved, recomputed):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.fixture
def failing_top_isa(monkeypatch, tmp_path, localmamba_log):
    """The best instruction set of this CPU made to fail to build (an option no compiler knows), with a fresh
    kernel cache and the "localmamba" logger's records reaching caplog (a training test before may have stopped
    their propagation); yields (that isa, the next lower one the CPU runs)."""
    supported = ckernel.supported_isas()
    if len(supported) < 2:
        pytest.skip(f"this CPU runs only {supported[0]}: no lower instruction set to fall back to")
    top, lower = supported[-1], supported[-2]
    monkeypatch.setitem(ckernel.ISA_FLAGS, top, (*ckernel.ISA_FLAGS[top], "-mthis-flag-does-not-exist"))
    monkeypatch.setenv("LOCALMAMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(ckernel.ISA_VAR, raising=False)
    monkeypatch.delenv(ckernel.DISABLE_VAR, raising=False)
    ckernel.reset()
    yield top, lower
    ckernel.reset()


@needs_compiler
def test_failed_build_of_the_best_isa_falls_back_to_the_next_lower(failing_top_isa, monkeypatch, caplog):
    top, lower = failing_top_isa
    with caplog.at_level("WARNING", logger="localmamba"):
        lib = cpu_conv1d.load_kernel()
    assert lib is not None and lib.lm_isa == lower
    assert ckernel.vector_width(lib) == (16 if lower == "avx512" else 8)
    assert cpu_conv1d.load_kernel() is lib  # cached per (name, requested isa): no second attempt
    fallback_warnings = [r.getMessage() for r in caplog.records if "-mthis-flag-does-not-exist" in r.getMessage()]
    assert len(fallback_warnings) == 1
    assert f"causal_conv1d for {top} failed" in fallback_warnings[0]
    assert f"using its {lower} build instead" in fallback_warnings[0]
    assert ckernel.isa_summary() == f"{lower} ({top} build failed)"

    monkeypatch.setenv("LOCALMAMBA_BACKEND", "cpu")
    x, w, b = (torch.randn(2, 6, 13, generator=torch.Generator().manual_seed(0)), torch.randn(6, 4), torch.randn(6))
    torch.testing.assert_close(causal_conv1d_fn(x, w, b, activation="silu").double(),
                               direct_conv1d(x, w, b, silu=True), rtol=1e-5, atol=1e-5)


@needs_compiler
def test_forced_isa_whose_build_fails_does_not_fall_back(failing_top_isa, monkeypatch, caplog):
    top, _ = failing_top_isa
    monkeypatch.setenv(ckernel.ISA_VAR, top)
    with caplog.at_level("WARNING", logger="localmamba"):
        assert cpu_conv1d.load_kernel() is None
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"causal_conv1d for {top} failed" in m and "-mthis-flag-does-not-exist" in m
               and f"{ckernel.ISA_VAR} asks for that one only" in m for m in messages), messages
    assert not any("instead" in m for m in messages)
    assert ckernel.isa_summary() == f"pytorch ({top} build failed)"


def test_summary_names_the_libraries_that_fell_back(monkeypatch):
    """Only some libraries built for a lower instruction set (fake loaded libraries; nothing is built)."""
    monkeypatch.delenv(ckernel.ISA_VAR, raising=False)
    monkeypatch.delenv(ckernel.DISABLE_VAR, raising=False)
    monkeypatch.setattr(ckernel, "supported_isas", lambda: ("baseline", "avx2", "avx512"))
    built = {"causal_conv1d": "avx512", "multi_scan": "avx2", "selective_scan": None}
    libs = {(name, "avx512"): None if isa is None else SimpleNamespace(lm_isa=isa) for name, isa in built.items()}
    monkeypatch.setattr(ckernel, "_LIBS", libs)
    assert ckernel.isa_summary() == "avx512 (multi_scan: avx2, selective_scan: pytorch; avx512 build failed)"
    monkeypatch.setenv(ckernel.DISABLE_VAR, "0")
    assert ckernel.isa_summary() == "off"


def nan_pattern(call, backend):
    """Where ``call()`` gives NaN under ``backend`` (the C kernels' ISA kept as the fixture set it)."""
    backends.force_backend(backend)
    with torch.no_grad():
        return call().isnan()


@needs_compiler
@pytest.mark.parametrize("softplus", [True, False])
def test_a_nan_in_delta_reaches_the_scan_output_as_in_the_reference(cpu_isa, softplus):
    """A NaN step size makes that channel's outputs NaN from its step on, as torch computes them; the kernels' clamps
    (exp's input range, softplus's max) used to turn it into a decay of about 0, hiding a diverged run."""
    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 3, 21, generator=g), torch.rand(2, 3, 21, generator=g)
    A, B, C = -torch.rand(3, 4, generator=g), torch.randn(2, 4, 21, generator=g), torch.randn(2, 4, 21, generator=g)
    delta[1, 2, 5] = float("nan")

    def call():
        return selective_scan_fn(u, delta, A, B, C, delta_softplus=softplus)

    expected = nan_pattern(call, "reference")
    assert expected[1, 2, 5:].all() and expected.sum() == 16
    assert torch.equal(nan_pattern(call, "cpu"), expected)


@needs_compiler
def test_a_nan_weight_reaches_the_multi_scan_output_as_in_the_reference(cpu_isa):
    p = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in make_problem(conv=True).items()}
    p["A_log"][1, 4, 2] = float("nan")
    p["dt_proj_bias"][2, 7] = float("nan")

    def call():
        return multi_scan_inner_fn(**p, gate=True)

    expected = nan_pattern(call, "reference")
    assert expected.any() and not expected.all()
    assert torch.equal(nan_pattern(call, "cpu"), expected)


def padded_conv_args() -> list:
    """The arguments of the cpu multi-scan ops (tokens ... D) for 11 tokens over 14 steps with a conv, 2 directions:
    the first with three padding positions at the end, the second with the padding first."""
    p = make_problem(batch=2, num_tokens=11, length=14, num_dirs=2, inner=12)
    index = torch.full((2, 14), 11)
    index[0, :11] = torch.arange(11)
    index[1, 3:] = torch.arange(10, -1, -1)
    args = [p["tokens"], index, p["conv_weight"].flatten(2), p["conv_bias"], p["x_proj_weight"], p["dt_proj_weight"],
            p["dt_proj_bias"], p["A_log"], p["D"]]
    return [a.detach().contiguous() for a in args]


@needs_compiler
def test_the_conv_sequences_past_the_last_token_are_zero(cpu_isa):
    """With a conv, the forward keeps the conv's sequences u (K, Bt, L, E) for the backward, whose x_proj weight
    gradient is dxdbl^T u over every position: past a direction's last real token (trailing padding, never scanned)
    u must be 0, not the memory of a fresh buffer, which may hold NaN (0 * NaN poisons the gradient). Memory filled
    with NaN is freed just before each call, so that the allocator is likely to hand it back for u."""
    args = padded_conv_args()
    for _ in range(3):
        torch.full((2, 2, 14, 12), float("nan"))
        _, u, _, _ = torch.ops.localmamba.multi_scan_cpu_fwd(*args, True, True)
        assert torch.equal(u[0, :, 11:], torch.zeros(2, 3, 12))
        assert u.isfinite().all()


@needs_compiler
def test_the_kernels_elementwise_math_is_accurate_to_1e_6(cpu_isa):
    """The explicit polynomials of vector_math.h against float64, each read off a kernel whose output is that
    function alone: SiLU (sigmoid, exp) from a width-1 conv of weight 1; softplus from one scan step with u, B, C = 1;
    the decay exp(dt A) from the ratio of two scan steps (the second with u = 0). Relative error below 1e-6 (the
    header's claim; the decays' own 1.5e-7 plus the rounding of their fp32 argument dt A), over the ranges the
    models reach."""
    x = torch.linspace(-30.0, 30.0, 601).reshape(1, 1, -1)
    silu = causal_conv1d_fn(x, torch.ones(1, 1), None, "silu").double()
    expected = torch.nn.functional.silu(x.double())
    assert ((silu - expected).abs() / expected.abs().clamp_min(1e-30)).max() < 1e-6

    delta = torch.linspace(-15.0, 15.0, 301).reshape(1, -1, 1)
    dim = delta.shape[1]
    BC = torch.zeros(dim, 8)
    BC[:, 0] = 1.0
    softplus = selective_scan_fn(torch.ones(1, dim, 1), delta, -torch.ones(dim, 8), BC, BC, delta_softplus=True)
    expected = torch.nn.functional.softplus(delta.double())
    assert ((softplus.double() - expected).abs() / expected).max() < 1e-6

    A = -torch.linspace(0.0, 10.0, 257)[:, None].expand(257, 8).contiguous()     # decays down to e^-7.5
    u = torch.tensor([1.0, 0.0]).expand(1, 257, 2).contiguous()
    step = torch.full((1, 257, 2), 0.75)
    y = selective_scan_fn(u, step, A, BC[:1].expand(257, 8), BC[:1].expand(257, 8)).double()
    expected = torch.exp(0.75 * A[:, 0].double())
    assert ((y[0, :, 1] / y[0, :, 0] - expected).abs() / expected).max() < 1e-6
