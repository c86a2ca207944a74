"""Fixtures for the kernel tests: run a test under a forced ``LOCALMAMBA_BACKEND``, with the C kernels of each
instruction set required to build, or with no kernel loaded and a private cache."""

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


def require_c_kernels(isa, monkeypatch):
    """Force the C kernels built for ``isa`` under ``LOCALMAMBA_CPU_KERNEL=require``: a library that does not build
    or load raises ``KernelBuildError`` with the compiler's full output, where the test used to pass on the PyTorch
    fallback. An instruction set this CPU lacks, or no C compiler, skips the test."""
    if isa not in ckernel.supported_isas():
        pytest.skip(f"this CPU lacks {isa} (it runs {', '.join(ckernel.supported_isas())})")
    if ckernel.compiler() is None:
        pytest.skip(f"{ckernel.NO_COMPILER}: the C kernels for {isa} cannot be built here")
    monkeypatch.setenv(ckernel.ISA_VAR, isa)
    monkeypatch.setenv(ckernel.DISABLE_VAR, "require")


def check_c_kernels(request, expected):
    """Fail the test, with the compiler's full output, unless every kernel library it loaded is built for
    ``expected`` (or the kernels are ``off`` as asked), as :func:`ckernel.isa_summary` reports; a test that failed
    already (on the ``KernelBuildError`` itself, say) is not failed twice."""
    report = getattr(request.node, "kernel_call_report", None)
    if report is not None and report.failed:
        return
    summary = ckernel.isa_summary()
    if summary != expected:
        failures = "\n\n".join(ckernel.build_failures().values())
        pytest.fail(f"the C kernels were to be {'off' if expected == 'off' else 'built for ' + expected}, but the "
                    f"summary says {summary!r}\n{failures}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each test's call report on its item, for :func:`check_c_kernels` at teardown."""
    report = yield
    if report.when == "call":
        item.kernel_call_report = report
    return report


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path, localmamba_log):
    """No kernel loaded yet, an empty private kernel cache, no forced instruction set or switch, the "localmamba"
    logger's records reaching caplog; reset again afterwards."""
    monkeypatch.setenv("LOCALMAMBA_CACHE_DIR", str(tmp_path / "cache"))
    for name in (ckernel.ISA_VAR, ckernel.DISABLE_VAR, "CC"):
        monkeypatch.delenv(name, raising=False)
    ckernel.reset()
    yield
    ckernel.reset()


@pytest.fixture(params=[*ckernel.ISAS, "off"])
def c_kernel(request, monkeypatch):
    """The CPU C kernels built for each instruction set (``LOCALMAMBA_CPU_ISA``; one this CPU lacks is skipped), a
    library that does not build failing the test (:func:`require_c_kernels`), or disabled with LOCALMAMBA_CPU_KERNEL=0
    (PyTorch fallback)."""
    ckernel.reset()
    if request.param == "off":
        monkeypatch.setenv(ckernel.DISABLE_VAR, "0")
    else:
        require_c_kernels(request.param, monkeypatch)
    yield request.param
    try:
        check_c_kernels(request, request.param)
    finally:
        ckernel.reset()


@pytest.fixture(params=ckernel.ISAS)
def cpu_isa(request, monkeypatch):
    """The cpu backend forced, with its C kernels built for each instruction set (one this CPU lacks is skipped), a
    library that does not build failing the test (:func:`require_c_kernels`)."""
    require_c_kernels(request.param, monkeypatch)
    monkeypatch.setenv("LOCALMAMBA_BACKEND", "cpu")
    ckernel.reset()
    yield request.param
    try:
        check_c_kernels(request, request.param)
    finally:
        ckernel.reset()
