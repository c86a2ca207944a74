"""Backend selection: env-var validation, forced backends, and dispatch to (fake) official packages."""
import logging
import sys
import types

import pytest
import torch

import localmamba_ssm
from localmamba_conv1d import backends, causal_conv1d_fn, causal_conv1d_update
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


def test_unknown_backend_value_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("LOCALMAMBA_BACKEND", "gpu")
    with pytest.raises(ValueError, match="auto, cuda, triton, cpu, reference"):
        selective_scan_fn(*scan_inputs())
    with pytest.raises(ValueError, match="LOCALMAMBA_BACKEND"):
        selected_backend("causal_conv1d", "cpu")


def test_auto_on_cpu_never_picks_gpu_backends():
    for op in localmamba_ssm.MODEL_OPS:
        assert selected_backend(op, "cpu") in ("cpu", "reference")
    assert localmamba_ssm.backend_summary("cpu")["causal_conv1d"] == "cpu"


def test_env_value_is_case_insensitive(monkeypatch):
    monkeypatch.setenv("LOCALMAMBA_BACKEND", " Reference ")
    assert selected_backend("selective_scan", "cpu") == "reference"


def test_forced_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setenv("LOCALMAMBA_BACKEND", "cuda")
    with pytest.raises(backends.BackendUnavailableError, match="cuda.*selective_scan"):
        selective_scan_fn(*scan_inputs())
    monkeypatch.setenv("LOCALMAMBA_BACKEND", "cpu")
    with pytest.raises(backends.BackendUnavailableError, match="CPU tensors only"):
        selected_backend("causal_conv1d", "cuda")


def test_forced_backend_missing_from_op_falls_back(monkeypatch, caplog):
    monkeypatch.setenv("LOCALMAMBA_BACKEND", "cpu")
    x, w, state = torch.randn(2, 3), torch.randn(3, 4), torch.zeros(2, 3, 4)
    with caplog.at_level(logging.INFO, logger="localmamba"):
        causal_conv1d_update(x, state, w)
    assert "op 'causal_conv1d_update' on cpu uses backend 'reference' (auto; op has no 'cpu' backend)" in caplog.text


def test_choice_is_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="localmamba"):
        selective_scan_fn(*scan_inputs())
        selective_scan_fn(*scan_inputs())
    records = [r for r in caplog.records if "selective_scan" in r.getMessage()]
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


def test_conv1d_dispatch_on_cpu_runs(monkeypatch):
    x, w = torch.randn(2, 3, 5), torch.randn(3, 4)
    monkeypatch.setenv("LOCALMAMBA_BACKEND", "cpu")
    out_cpu = causal_conv1d_fn(x, w)
    monkeypatch.setenv("LOCALMAMBA_BACKEND", "reference")
    torch.testing.assert_close(causal_conv1d_fn(x, w), out_cpu)
