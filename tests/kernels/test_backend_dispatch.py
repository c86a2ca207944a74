"""Backend selection: env-var validation, forced backends, and dispatch to (fake) official packages."""
import importlib.util
import logging
import sys
import types

import pytest
import torch

import localmamba_ssm
from localmamba_conv1d import causal_conv1d_fn, causal_conv1d_update
from localmamba_kernel_runtime import backends, ckernel
from localmamba_ssm import selected_backend, selective_scan_fn
from localmamba_ssm.ops import selective_scan_interface


@pytest.fixture(autouse=True)
def clean_caches(monkeypatch):
    monkeypatch.delenv("LOCALMAMBA_BACKEND", raising=False)
    backends.reset_caches()
    yield
    backends.reset_caches()


def scan_inputs(batch=2, dim=4, seqlen=5, dstate=3):
    return (torch.randn(batch, dim, seqlen), torch.rand(batch, dim, seqlen), -torch.rand(dim, dstate),
            torch.randn(batch, 1, dstate, seqlen), torch.randn(batch, 1, dstate, seqlen))


def install_fake(monkeypatch, dotted, **attrs):
    """Put a fake module (and its parents) into sys.modules."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name, types.ModuleType(name)))
    for key, value in attrs.items():
        setattr(sys.modules[dotted], key, value)


def test_unknown_backend_value_lists_valid_ones(force_backend):
    force_backend("gpu")
    with pytest.raises(ValueError, match="auto, cuda, triton, cpu, reference, composed"):
        selective_scan_fn(*scan_inputs())
    with pytest.raises(ValueError, match="LOCALMAMBA_BACKEND"):
        selected_backend("causal_conv1d", "cpu")


def test_auto_on_cpu_never_picks_gpu_backends():
    for op in localmamba_ssm.MODEL_OPS:
        assert selected_backend(op, "cpu") in ("cpu", "reference")
    assert localmamba_ssm.backend_summary("cpu")["causal_conv1d"] == "cpu"


def test_env_value_is_case_insensitive(force_backend):
    force_backend(" Reference ")
    assert selected_backend("selective_scan", "cpu") == "reference"


@pytest.mark.parametrize("value, interprets", [("1", True), ("true", True), ("YES", True), ("on", True),
                                               ("0", False), ("false", False), ("", False), ("2", False)])
def test_the_interpreter_switch_reads_the_values_triton_reads(monkeypatch, value, interprets):
    """Triton >= 3.3 runs its interpreter for TRITON_INTERPRET=true / yes / on as for 1; the check that lets forced
    Triton kernels take CPU tensors read only "1", and refused them under an interpreter that was running."""
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert backends.triton_interpreter() is interprets


def test_forced_backend_that_cannot_run_raises(force_backend):
    force_backend("cuda")
    with pytest.raises(backends.BackendUnavailableError, match="cuda.*selective_scan"):
        selective_scan_fn(*scan_inputs())
    force_backend("cpu")
    with pytest.raises(backends.BackendUnavailableError, match="CPU tensors only"):
        selected_backend("causal_conv1d", "cuda")


@pytest.mark.parametrize("forced", ["cpu", "triton", "cuda"])
def test_an_onnx_export_runs_the_reference_whatever_backend_is_forced(force_backend, monkeypatch, forced):
    """A forced kernel backend's custom ops have no ONNX form (the export failed in the exporter: "unrecognized
    namespace localmamba::causal_conv1d_cpu_fwd"); during an export the ops run their reference, as on auto."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    force_backend(forced)
    assert selected_backend("causal_conv1d", "cpu") == "reference"
    torch.testing.assert_close(causal_conv1d_fn(torch.ones(1, 1, 3), torch.ones(1, 2)), torch.tensor([[[1., 2., 2.]]]))


def test_an_op_without_the_forced_backend_exports_its_reference(force_backend, monkeypatch):
    """The automatic choice an op falls back to, lacking the forced backend, is the reference during an export."""
    monkeypatch.setitem(backends._REGISTRY, "export_probe", {"cuda": backends.check_any,
                                                             "reference": backends.check_any})
    force_backend("cpu")
    assert backends.select("export_probe", "cpu") == "cuda"
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert backends.select("export_probe", "cpu") == "reference"


def test_forced_backend_missing_from_op_falls_back(force_backend, caplog):
    force_backend("cpu")
    x, w, state = torch.randn(2, 3), torch.randn(3, 4), torch.zeros(2, 3, 4)
    with caplog.at_level(logging.INFO, logger="localmamba"):
        causal_conv1d_update(x, state, w)
    assert "op 'causal_conv1d_update' on cpu uses backend 'reference' (auto; op has no 'cpu' backend)" in caplog.text


def test_choice_is_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="localmamba"):
        selective_scan_fn(*scan_inputs())
        selective_scan_fn(*scan_inputs())
    # the dispatch lines only: a first call may also log that the CPU kernel is being compiled
    records = [r for r in caplog.records if r.getMessage().startswith("op 'selective_scan' on cpu uses backend")]
    assert len(records) == 1 and records[0].name == "localmamba"


def test_official_packages_preferred_on_cuda(monkeypatch, caplog):
    install_fake(monkeypatch, "mamba_ssm.ops.selective_scan_interface", selective_scan_fn=lambda *a: None)
    install_fake(monkeypatch, "causal_conv1d.causal_conv1d_interface", causal_conv1d_fn=lambda *a, **k: None)
    install_fake(monkeypatch, "mamba_ssm.ops.triton.layernorm", layer_norm_fn=lambda *a, **k: None)
    assert selected_backend("selective_scan", "cuda") == "cuda"
    assert selected_backend("causal_conv1d", "cuda") == "cuda"
    assert selected_backend("layer_norm", "cuda") == "cuda"
    assert selected_backend("selective_scan", "cpu") != "cuda"
    with caplog.at_level(logging.INFO, logger="localmamba"):
        assert backends.select("selective_scan", torch.device("cuda")) == "cuda"
    assert "op 'selective_scan' on cuda uses backend 'cuda' (auto)" in caplog.text


def test_without_official_packages_cuda_falls_to_next(monkeypatch):
    for name in ("mamba_ssm", "causal_conv1d"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
    chosen = selected_backend("selective_scan", "cuda")
    assert chosen in ("triton", "reference")
    monkeypatch.setattr(backends, "triton_importable", lambda: False)
    assert selected_backend("selective_scan", "cuda") == "reference"
    assert selected_backend("causal_conv1d", "cuda") == "reference"


def loaded_mamba_ssm_modules():
    return [name for name in sys.modules if name == "mamba_ssm" or name.startswith("mamba_ssm.")]


@pytest.fixture
def broken_official_package(tmp_path, monkeypatch):
    """Put an official-looking ``mamba_ssm`` on sys.path whose import fails the way a CUDA build for another torch
    does: one of its own extension modules cannot be found. Its modules leave sys.modules afterwards."""
    package = tmp_path / "mamba_ssm"
    (package / "ops").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "ops" / "__init__.py").write_text("")
    (package / "ops" / "selective_scan_interface.py").write_text("import selective_scan_cuda_missing_ext\n")
    for name in loaded_mamba_ssm_modules():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in loaded_mamba_ssm_modules():
        del sys.modules[name]


def test_a_broken_official_install_is_named_not_taken_for_absent(broken_official_package, caplog, force_backend):
    """An installed mamba_ssm whose import fails (its CUDA extension missing) was silently treated as not installed,
    and forcing the cuda backend then said only "cannot import": the warning and the refusal now name the error."""
    with caplog.at_level(logging.WARNING, logger="localmamba"):
        assert selected_backend("selective_scan", "cuda") != "cuda"
        selected_backend("selective_scan", "cuda")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["mamba_ssm.ops.selective_scan_interface is installed but cannot be imported "
                        "(ModuleNotFoundError: No module named 'selective_scan_cuda_missing_ext'): its kernels are "
                        "not used"]
    force_backend("cuda")
    with pytest.raises(backends.BackendUnavailableError,
                       match=r"cannot import mamba_ssm.ops.selective_scan_interface \(mamba_ssm.ops.selective_scan"
                             r"_interface: ModuleNotFoundError: No module named 'selective_scan_cuda_missing_ext'\)"):
        selected_backend("selective_scan", "cuda")


def test_an_absent_official_package_is_no_warning(monkeypatch, caplog):
    for name in ("mamba_ssm", "causal_conv1d"):
        monkeypatch.setitem(sys.modules, name, None)
    with caplog.at_level(logging.WARNING, logger="localmamba"):
        for op in ("selective_scan", "causal_conv1d", "layer_norm"):
            assert selected_backend(op, "cuda") != "cuda"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert backends.import_error("mamba_ssm.ops.selective_scan_interface") is None


def test_layer_norm_takes_either_official_module_name(monkeypatch):
    """mamba_ssm renamed ops/triton/layernorm.py to layer_norm.py: either one, holding layer_norm_fn, is taken."""
    install_fake(monkeypatch, "mamba_ssm.ops.triton.layer_norm", layer_norm_fn=lambda *a, **k: None)
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.triton.layernorm", None)
    assert selected_backend("layer_norm", "cuda") == "cuda"
    backends.reset_caches()
    monkeypatch.delattr(sys.modules["mamba_ssm.ops.triton.layer_norm"], "layer_norm_fn")
    assert selected_backend("layer_norm", "cuda") == "reference"


def test_choosing_a_backend_never_looks_for_triton(monkeypatch):
    """The choice runs inside compiled models, where torch 2.11's dynamo cannot trace importlib.util.find_spec (a
    graph break on the first compile of a process): triton is looked for at import and by reset_caches only."""
    backends.reset_caches()
    found = backends.triton_importable()

    def traced_find_spec(name, *args):
        raise AssertionError(f"find_spec({name!r}) called while choosing a backend")

    with monkeypatch.context() as patched:  # undone before the teardown's reset_caches
        patched.setattr(importlib.util, "find_spec", traced_find_spec)
        for device in ("cpu", "cuda"):
            selected_backend("selective_scan", device)
        assert backends.triton_importable() == found


def test_fused_multi_scan_kernels_are_passed_over_beyond_their_limits():
    """The fused cpu kernels hold N <= 256 and R <= 256 (the Triton ones any); neither takes fp64 or E = 0; the plain
    backends take all of these."""
    from localmamba_ssm.ops import multi_scan_interface

    check, t = multi_scan_interface._fused_input_check, torch.zeros(2)
    assert check(t, 4, 256, 256)("cpu") is None
    limits = "the cpu kernels support N <= 256 and R <= 256"
    assert check(t, 4, 257, 1)("cpu") == check(t, 4, 1, 257)("cpu") == limits
    assert check(t, 4, 257, 257)("triton") is None
    assert check(t, 0)("cpu") == check(t, 0)("triton") == "there are no channels"
    fp64 = "the fused kernels compute in fp32, not fp64"
    assert check(t.double(), 4)("cpu") == check(t.double(), 4)("triton") == fp64
    assert all(check(t.double(), 0, 257, 257)(plain) is None for plain in ("composed", "reference"))

    seen = []

    def traced(x):
        seen.append(check(x, 4)("cpu"))
        return x * 2

    torch.jit.trace(traced, (t,), check_trace=False)
    assert seen == ["torch.jit is tracing (the plain ops are recorded instead)"]


def test_scan_kernels_on_the_gpu_are_passed_over_for_fp64_inputs():
    """The official and the Triton scan kernels take fp32/fp16/bf16 inputs: fp64 goes to the other backends."""
    u, delta, A, B, C = scan_inputs()
    check = selective_scan_interface._input_check(u.double(), A, (u.double(), delta, A, B, C), False)
    assert check("cuda") == check("triton") == "needs fp32/fp16/bf16 inputs, got torch.float64"
    assert check("cpu") is None and check("reference") is None


def test_official_scan_wrapper_casts_as_the_kernel_requires(monkeypatch):
    seen = {}

    def fake_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        seen.update(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, bias=delta_bias, sp=delta_softplus,
                    last=return_last_state)
        return u

    install_fake(monkeypatch, "mamba_ssm.ops.selective_scan_interface", selective_scan_fn=fake_scan)
    u, delta, A, B, C = scan_inputs()
    u = u.bfloat16()
    selective_scan_interface._scan_official(u, delta, A, B, C, torch.ones(4), u, torch.zeros(4, dtype=torch.float64),
                                            True, False)
    assert seen["delta"].dtype == seen["B"].dtype == seen["C"].dtype == seen["z"].dtype == torch.bfloat16
    assert seen["A"].dtype == seen["D"].dtype == seen["bias"].dtype == torch.float32
    assert seen["sp"] is True and seen["last"] is False
    constant = torch.randn(4, 3, dtype=torch.float64)     # a (Dm, N) B or C is a weight to the kernel: fp32, as A
    selective_scan_interface._scan_official(u, delta, A, constant, constant, None, None, None, False, False)
    assert seen["B"].dtype == seen["C"].dtype == torch.float32


def test_official_conv1d_called_with_keyword_activation(monkeypatch):
    calls = []

    def fake_conv(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                  final_states_out=None, activation=None):
        calls.append((weight.shape, activation))
        return x

    install_fake(monkeypatch, "causal_conv1d.causal_conv1d_interface", causal_conv1d_fn=fake_conv)
    from localmamba_conv1d import causal_conv1d_interface as conv_interface

    x, w = torch.randn(2, 3, 5), torch.randn(3, 1, 4)
    conv_interface._conv_official(x, w[:, 0], None, "silu")
    assert calls == [((3, 4), "silu")]


def test_packages_do_not_import_triton():
    code = ("import sys, localmamba_ssm, localmamba_conv1d; "
            "assert 'triton' not in sys.modules, 'triton imported at package import'")
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_conv1d_dispatch_on_cpu_runs(force_backend):
    x, w = torch.randn(2, 3, 5), torch.randn(3, 4)
    force_backend("cpu")
    out_cpu = causal_conv1d_fn(x, w)
    force_backend("reference")
    torch.testing.assert_close(causal_conv1d_fn(x, w), out_cpu)


def multi_scan_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    num_dirs, inner, rank, state = 2, 8, 1, 4
    return dict(tokens=torch.randn(1, 5, 2 * inner, generator=g).to(dtype),
                index=torch.stack([torch.arange(5), torch.arange(4, -1, -1)]),
                x_proj_weight=torch.randn(num_dirs, rank + 2 * state, inner, generator=g).to(dtype),
                dt_proj_weight=torch.randn(num_dirs, inner, rank, generator=g).to(dtype),
                dt_proj_bias=torch.randn(num_dirs, inner, generator=g).to(dtype),
                A_log=torch.randn(num_dirs, inner, state, generator=g).to(dtype), gate=True)


def test_fused_ops_register_only_what_runs():
    assert backends.implemented_backends("multi_scan_inner") == ("triton", "cpu", "composed", "reference")
    assert backends.implemented_backends("attention_merge") == ("triton", "cpu", "reference")
    assert backends.implemented_backends("selective_scan") == ("cuda", "triton", "cpu", "reference")
    triton = ("triton",) if backends.triton_importable() else ()
    assert backends.available_backends("multi_scan_inner", "cuda") == triton + ("composed", "reference")
    assert backends.available_backends("multi_scan_inner", "cpu") == ("cpu", "composed", "reference")


def test_composed_path_is_named_and_logged(caplog):
    """fp64 inputs cannot run the fused fp32 kernels: the op runs composed, and the log says so."""
    with caplog.at_level(logging.INFO, logger="localmamba"):
        localmamba_ssm.multi_scan_inner_fn(**multi_scan_inputs(torch.float64))
        localmamba_ssm.multi_scan_inner_fn(**multi_scan_inputs())
    assert ("op 'multi_scan_inner' on cpu uses backend 'composed' (auto; not 'cpu': the fused kernels compute in "
            "fp32, not fp64)") in caplog.text
    assert "op 'multi_scan_inner' on cpu uses backend 'cpu' (auto)" in caplog.text
    assert "op 'selective_scan' on cpu uses backend 'cpu' (auto)" in caplog.text   # a part of the composition


def test_a_rank_past_the_cpu_kernels_limit_runs_composed(caplog):
    """The dt rank R of a multi-direction scan is checked against the cpu kernels' limit as its state N is."""
    from localmamba_ssm.ops.reference import multi_scan_inner_ref
    from test_multi_scan_inner import make_problem

    p = {name: t.detach() for name, t in make_problem(batch=1, num_tokens=3, length=4, num_dirs=1, inner=2, rank=257,
                                                      state=2, width=2).items()}
    with caplog.at_level(logging.INFO, logger="localmamba"):
        out = localmamba_ssm.multi_scan_inner_fn(**p, gate=True)
    assert ("op 'multi_scan_inner' on cpu uses backend 'composed' (auto; not 'cpu': the cpu kernels support N <= 256 "
            "and R <= 256)") in caplog.text
    torch.testing.assert_close(out, multi_scan_inner_ref(**p, gate=True))


def test_a_backend_passed_over_for_the_inputs_is_named_with_its_reason(caplog):
    """A backend that runs on the device but not on these inputs is named; one that cannot run on the device is not
    (on the CPU, cuda and triton: every line would name them)."""
    with caplog.at_level(logging.INFO, logger="localmamba"):
        chosen = backends.select("attention_merge", "cpu", lambda backend: "traced" if backend == "cpu" else None)
    assert chosen == "reference"
    assert "op 'attention_merge' on cpu uses backend 'reference' (auto; not 'cpu': traced)" in caplog.text


def test_cpu_without_its_kernels_is_composed_not_cpu(monkeypatch, force_backend):
    monkeypatch.setenv("LOCALMAMBA_CPU_KERNEL", "0")
    ckernel.reset()
    try:
        assert selected_backend("multi_scan_inner", "cpu") == "composed"
        assert selected_backend("attention_merge", "cpu") == "reference"
        force_backend("cpu")
        with pytest.raises(backends.BackendUnavailableError, match="LOCALMAMBA_CPU_KERNEL=0"):
            localmamba_ssm.multi_scan_inner_fn(**multi_scan_inputs())
    finally:
        monkeypatch.delenv("LOCALMAMBA_CPU_KERNEL")
        ckernel.reset()


def test_forcing_a_backend_an_op_lacks_runs_its_composition(force_backend, caplog):
    force_backend("reference")
    assert selected_backend("multi_scan_inner", "cpu") == "reference"
    force_backend("cuda")
    with caplog.at_level(logging.INFO, logger="localmamba"):
        assert backends.select("multi_scan_inner", torch.device("cpu")) == "composed"
    assert "uses backend 'composed' (op has no 'cuda' backend; its parts run the forced one)" in caplog.text
    assert selected_backend("attention_merge", "cpu") == "cpu"        # no composition: its automatic choice


def test_forcing_composed_runs_the_fused_ops_as_compositions_of_automatic_parts(force_backend, caplog):
    force_backend("composed")
    with caplog.at_level(logging.INFO, logger="localmamba"):
        assert backends.select("multi_scan_inner", torch.device("cpu")) == "composed"
        assert backends.select("selective_scan", torch.device("cpu")) == "cpu"
    assert "op 'multi_scan_inner' on cpu uses backend 'composed' (forced)" in caplog.text
    assert "op 'selective_scan' on cpu uses backend 'cpu' (auto; op has no 'composed' backend)" in caplog.text


def test_environment_is_read_once_per_choice_and_forced_through_the_api(monkeypatch):
    monkeypatch.setenv("LOCALMAMBA_BACKEND", "reference")
    assert selected_backend("selective_scan", "cpu") == "reference"
    monkeypatch.setenv("LOCALMAMBA_BACKEND", "cpu")
    assert selected_backend("selective_scan", "cpu") == "reference"    # cached: no os.environ read per call
    with backends.forced_backend("cpu"):
        assert selected_backend("selective_scan", "cpu") == "cpu"
        with backends.forced_backend("auto"):
            assert backends.requested_backend() == "auto"
        assert backends.requested_backend() == "cpu"
    assert selected_backend("selective_scan", "cpu") == "reference"
    backends.force_backend(None)                                     # forget: the next choice reads the variable
    assert selected_backend("selective_scan", "cpu") == "cpu"
    with pytest.raises(ValueError, match="forced backend='gpu' is not a valid backend"):
        backends.force_backend("gpu")


def test_restoring_choice_puts_back_what_was_forced():
    backends.force_backend("reference")
    with backends.restoring_choice():
        backends.force_backend("cpu")
        assert backends.requested_backend() == "cpu"
    assert backends.requested_backend() == "reference"


LAST_STATE_REASON = "the official kernel does not backpropagate through the last state"


def test_official_scan_is_skipped_when_the_last_state_needs_a_gradient(monkeypatch, force_backend):
    """mamba_ssm's selective_scan_fn ignores the last state's gradient (its 1.1.1 docstring says so); our other
    backends propagate it, so the automatic choice passes over `cuda` then, and a forced `cuda` says why."""
    install_fake(monkeypatch, "mamba_ssm.ops.selective_scan_interface", selective_scan_fn=lambda *a: None)
    u, delta, A, B, C = scan_inputs()
    inputs = (u, delta, A, B, C, None, None, None)

    def reason(return_last_state):
        return selective_scan_interface._input_check(u, A, inputs, return_last_state)("cuda")

    assert reason(True) is None and reason(False) is None          # nothing requires grad
    delta.requires_grad_()
    assert reason(False) is None
    assert reason(True) == LAST_STATE_REASON
    with torch.no_grad():
        assert reason(True) is None
    for backend in ("triton", "cpu", "reference"):
        assert selective_scan_interface._input_check(u, A, inputs, True)(backend) is None

    cuda = torch.device("cuda")
    assert backends.select("selective_scan", cuda, selective_scan_interface._input_check(u, A, inputs, False)) == "cuda"
    check = selective_scan_interface._input_check(u, A, inputs, True)
    assert backends.select("selective_scan", cuda, check) in ("triton", "reference")
    force_backend("cuda")
    with pytest.raises(backends.BackendUnavailableError,
                       match=rf"^LOCALMAMBA_BACKEND=cuda cannot run op 'selective_scan' on cuda inputs: "
                             rf"{LAST_STATE_REASON}$"):
        backends.select("selective_scan", cuda, check)


def test_official_conv1d_gets_a_layout_its_kernel_accepts(monkeypatch):
    """The official kernel TORCH_CHECKs a channel-last x (a (B, L, D) tensor transposed) unless D % 8 == 0 and its
    batch and time strides are multiples of 8: such an x is passed contiguous; one it accepts keeps its layout."""
    seen = []

    def fake_conv(x, weight, bias=None, activation=None):
        seen.append((x.stride(), None if bias is None else bias.dtype))
        return x

    install_fake(monkeypatch, "causal_conv1d.causal_conv1d_interface", causal_conv1d_fn=fake_conv)
    from localmamba_conv1d import causal_conv1d_interface as conv_interface

    for dim in (6, 8):
        x = torch.randn(2, 5, dim).transpose(1, 2)         # channel-last (B, D, L) view
        out = conv_interface._conv_official(x, torch.randn(dim, 4), torch.randn(dim, dtype=torch.float64), "silu")
        torch.testing.assert_close(out, x, rtol=0, atol=0)
    assert seen == [((30, 5, 1), torch.float32), ((40, 1, 8), torch.float32)]
    seen.clear()
    odd_batch_stride = torch.randn(100).as_strided((2, 8, 5), (44, 1, 8))   # channel-last, batch stride 44
    time_strided = torch.randn(2, 8, 10)[..., ::2]                           # time stride 2
    for x in (odd_batch_stride, time_strided):
        torch.testing.assert_close(conv_interface._conv_official(x, torch.randn(8, 4), None, None), x, rtol=0, atol=0)
    assert seen == [((40, 5, 1), None), ((40, 5, 1), None)]


def test_official_conv1d_is_passed_over_for_widths_its_kernel_lacks():
    from localmamba_conv1d import causal_conv1d_interface as conv_interface

    x = torch.randn(2, 3, 5)
    reasons = [conv_interface._input_check(x, torch.randn(3, width))("cuda") for width in (1, 2, 4, 5)]
    assert reasons == ["the official kernel supports widths 2 to 4, got 1", None, None,
                       "the official kernel supports widths 2 to 4, got 5"]
    assert conv_interface._input_check(x, torch.randn(3, 5))("triton") is None


def test_official_conv1d_update_needs_the_state_in_x_dtype(monkeypatch, force_backend):
    """The official update TORCH_CHECKs conv_state's dtype against x's (the state is updated in place, so it is not
    cast: the next backend runs) and bias's against weight's (cast)."""
    from localmamba_conv1d import causal_conv1d_interface as conv_interface

    calls = []

    def fake_update(x, conv_state, weight, bias=None, activation=None):
        calls.append((conv_state.dtype, bias.dtype))
        return x

    install_fake(monkeypatch, "causal_conv1d.causal_conv1d_interface", causal_conv1d_update=fake_update)
    x, weight = torch.randn(2, 3), torch.randn(3, 4)
    state = torch.zeros(2, 3, 4, dtype=torch.bfloat16)
    check = conv_interface._update_input_check(x, state, weight)
    assert check("cuda") == "the official kernel needs conv_state in x's dtype torch.float32, got torch.bfloat16"
    assert check("reference") is None
    assert conv_interface._update_input_check(x, state.float(), weight)("cuda") is None
    assert backends.select("causal_conv1d_update", torch.device("cuda"), check) == "reference"
    conv_interface._update_official(x, state.float(), weight, torch.zeros(3, dtype=torch.float64), "silu")
    assert calls == [(torch.float32, torch.float32)]


def test_a_backend_forced_in_python_is_named_as_such(force_backend):
    """`with forced_backend("triton")` on fp64 inputs said "LOCALMAMBA_BACKEND=triton cannot run ..." with the
    variable unset."""
    u, delta, A, B, C = (t.double() for t in scan_inputs())
    with backends.forced_backend("triton"):
        with pytest.raises(backends.BackendUnavailableError,
                           match=r"^backend 'triton' \(forced in Python by force_backend\(\) or forced_backend\(\)\) "
                                 r"cannot run op 'selective_scan' on cpu inputs: ") as info:
            selective_scan_fn(u, delta, A, B, C)
    assert "LOCALMAMBA_BACKEND" not in str(info.value)
    force_backend("triton")
    with pytest.raises(backends.BackendUnavailableError, match=r"^LOCALMAMBA_BACKEND=triton cannot run op"):
        selective_scan_fn(u, delta, A, B, C)
    with backends.forced_backend("cpu"):
        pass
    with pytest.raises(backends.BackendUnavailableError, match=r"^LOCALMAMBA_BACKEND=triton cannot run op"):
        selective_scan_fn(u, delta, A, B, C)   # the restored choice keeps its source


def test_official_wrappers_pass_a_strided_bias_contiguous(monkeypatch):
    """The official kernels TORCH_CHECK ``delta_bias.stride(-1) == 1`` (selective scan) and ``bias.stride(-1) == 1``
    (conv update), which their Python functions do not ensure: a strided bias already in the kernel's dtype (a
    column of a parameter table, a slice with a step) reached them as it was and failed there, where every other
    backend takes it."""
    from localmamba_conv1d import causal_conv1d_interface as conv_interface

    def unit_stride(name, t):
        if t is not None and t.stride(-1) != 1 and t.size(-1) != 1:
            raise RuntimeError(f"{name}.stride(-1) == 1 INTERNAL ASSERT FAILED")   # what the official kernel raises

    def fake_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        unit_stride("delta_bias", delta_bias)
        return u

    def fake_update(x, conv_state, weight, bias=None, activation=None):
        unit_stride("bias", bias)
        return x

    install_fake(monkeypatch, "mamba_ssm.ops.selective_scan_interface", selective_scan_fn=fake_scan)
    install_fake(monkeypatch, "causal_conv1d.causal_conv1d_interface", causal_conv1d_update=fake_update)
    u, delta, A, B, C = scan_inputs()
    table = torch.randn(4, 2)                      # fp32, as the kernel wants it: not cast, so not copied either
    selective_scan_interface._scan_official(u, delta, A, B, C, None, None, table[:, 0], True, False)
    x, weight = torch.randn(2, 3), torch.randn(3, 4)
    conv_interface._update_official(x, torch.zeros(2, 3, 4), weight, torch.randn(3, 2)[:, 1], "silu")


def test_official_kernels_are_passed_over_for_an_empty_input(monkeypatch):
    """The official scan and conv kernels launch a grid of (batch, dim) blocks with no check for 0: an empty batch
    (or no channels) is CUDA's 'invalid configuration argument' there, where the other backends return an empty
    result. The next backend runs such a call."""
    from localmamba_conv1d import causal_conv1d_interface as conv_interface

    reason = "the official kernel cannot launch an empty grid (0 batch elements or channels)"
    u, delta, A, B, C = scan_inputs(batch=0)
    inputs = (u, delta, A, B, C, None, None, None)
    assert selective_scan_interface._input_check(u, A, inputs, False)("cuda") == reason
    assert selective_scan_interface._input_check(u, A, inputs, False)("triton") is None
    full = scan_inputs()
    assert selective_scan_interface._input_check(full[0], full[2], full + (None,) * 3, False)("cuda") is None
    x, weight = torch.randn(0, 8, 5), torch.randn(8, 4)
    assert conv_interface._input_check(x, weight)("cuda") == reason
    assert conv_interface._input_check(torch.randn(2, 8, 5), weight)("cuda") is None
    state = torch.zeros(0, 8, 4)
    assert conv_interface._update_input_check(x[:, :, 0], state, weight)("cuda") == reason


@pytest.mark.parametrize("dstate, official", [(256, True), (257, False)])
def test_official_scan_takes_states_up_to_256(dstate, official):
    """The official kernel supports N <= 256: N = 256 goes to it, N = 257 is passed over with that reason."""
    u = torch.zeros(1, 2, 3)
    A = torch.zeros(2, dstate)
    inputs = (u, u, A, torch.zeros(2, dstate), torch.zeros(2, dstate), None, None, None)
    reason = selective_scan_interface._input_check(u, A, inputs, False)("cuda")
    assert reason == (None if official else "the official kernel supports N <= 256, got N=257")
