"""Fixtures for the kernel tests: run a test under a forced ``LOCALMAMBA_BACKEND``."""
import pytest

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
