"""Fixtures for the kernel tests: run a test under a forced ``LOCALMAMBA_BACKEND``."""
import pytest

from localmamba_conv1d import ckernel

CPU_BACKENDS = ("reference", "cpu")


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request, monkeypatch):
    """Each backend that runs CPU tensors, forced through the environment variable."""
    monkeypatch.setenv("LOCALMAMBA_BACKEND", request.param)
    return request.param


@pytest.fixture
def force_backend(monkeypatch):
    """Call with a backend name to force it for the rest of the test."""

    def force(name):
        monkeypatch.setenv("LOCALMAMBA_BACKEND", name)

    return force


@pytest.fixture(params=["on", "off"])
def c_kernel(request, monkeypatch):
    """The CPU C kernels enabled (the default) or disabled with LOCALMAMBA_CPU_KERNEL=0 (PyTorch fallback)."""
    ckernel.reset()
    if request.param == "off":
        monkeypatch.setenv(ckernel.DISABLE_VAR, "0")
    yield request.param
    ckernel.reset()
