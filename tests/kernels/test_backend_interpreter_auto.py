"""The Triton interpreter (TRITON_INTERPRET=1) serves CPU tensors only to a forced triton backend, never to the
automatic choice."""
import pytest

import localmamba_ssm
from localmamba_kernel_runtime import backends
from localmamba_ssm import selected_backend


@pytest.fixture(autouse=True)
def interpreter_on(monkeypatch):
    monkeypatch.delenv("LOCALMAMBA_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    backends.reset_caches()
    yield
    backends.reset_caches()


TRITON_OPS = [op for op in localmamba_ssm.MODEL_OPS if "triton" in backends._table(op)]


def test_some_model_op_has_a_triton_backend():
    """The test below checks something: the model ops include ones that Triton implements."""
    assert backends.triton_importable() and TRITON_OPS


@pytest.mark.parametrize("op", TRITON_OPS)
def test_auto_choice_on_cpu_skips_triton_under_the_interpreter(op, force_backend):
    """Guards against check_triton ignoring `forced`: with TRITON_INTERPRET=1 the automatic choice for CPU inputs
    would run the (very slow) interpreter in every CPU model; only a forced triton backend may use it."""
    assert selected_backend(op, "cpu") in ("cpu", backends.COMPOSED, "reference")
    assert backends.check_triton(backends._as_device("cpu"), False) is not None
    force_backend("triton")
    assert selected_backend(op, "cpu") == "triton"
