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


@pytest.fixture(params=[*ckernel.ISAS, "off"])
def c_kernel(request, monkeypatch):
    """The CPU C kernels built for each instruction set (``LOCALMAMBA_CPU_ISA``; one this CPU lacks is skipped), or
    disabled with LOCALMAMBA_CPU_KERNEL=0 (PyTorch fallback)."""
    ckernel.reset()
    if request.param == "off":
        monkeypatch.setenv(ckernel.DISABLE_VAR, "0")
    elif request.param not in ckernel.supported_isas():
        pytest.skip(f"this CPU lacks {request.param} (it runs {', '.join(ckernel.supported_isas())})")
    else:
        monkeypatch.setenv(ckernel.ISA_VAR, request.param)
    yield request.param
    ckernel.reset()


@pytest.fixture(params=ckernel.ISAS)
def cpu_isa(request, monkeypatch):
    """The cpu backend forced, with its C kernels built for each instruction set (one this CPU lacks is skipped)."""
    if request.param not in ckernel.supported_isas():
        pytest.skip(f"this CPU lacks {request.param} (it runs {', '.join(ckernel.supported_isas())})")
    monkeypatch.setenv(ckernel.ISA_VAR, request.param)
    monkeypatch.setenv("LOCALMAMBA_BACKEND", "cpu")
    ckernel.reset()
    yield request.param
    ckernel.reset()
