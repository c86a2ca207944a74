"""Fixtures for the kernel tests: run a test under a forced ``LOCALMAMBA_BACKEND``."""
import pytest

from localmamba_kernel_runtime import backends, ckernel

CPU_BACKENDS = ("reference", "cpu")


@pytest.fixture(autouse=True)
def fresh_backend_choice():
    """Every test reads ``LOCALMAMBA_BACKEND`` afresh at its first choice (the value is cached) and leaves no choice
    behind."""
    backends.force_backend(None)
    yield
    backends.force_backend(None)


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request, monkeypatch):
    """Each backend that runs CPU tensors, forced through the environment variable."""
    monkeypatch.setenv("LOCALMAMBA_BACKEND", request.param)
    return request.param


@pytest.fixture
def force_backend(monkeypatch):
    """Call with a value of ``LOCALMAMBA_BACKEND`` to set it for the rest of the test (read at the next choice)."""

    def force(name):
        monkeypatch.setenv("LOCALMAMBA_BACKEND", name)
        backends.force_backend(None)

    return force


@pytest.fixture(params=["on", "off"])
def c_kernel(request, monkeypatch):
    """The CPU C kernels enabled (the default) or disabled with LOCALMAMBA_CPU_KERNEL=0 (PyTorch fallback)."""
    ckernel.reset()
    if request.param == "off":
        monkeypatch.setenv(ckernel.DISABLE_VAR, "0")
    yield request.param
    ckernel.reset()
