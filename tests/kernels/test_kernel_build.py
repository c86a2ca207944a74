"""Building the C kernels: a source that does not compile fails the kernel tests and, under
``LOCALMAMBA_CPU_KERNEL=require``, raises with the compiler's full output; the fallback warning shows the compiler's
errors; a header beside a source is part of a library's identity; a build logs one INFO line. Every broken or tiny
source is written under tmp_path, built into a private cache."""
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localmamba_conv1d import cpu_conv1d
from localmamba_kernel_runtime import ckernel

HERE = Path(__file__).resolve().parent
needs_compiler = pytest.mark.skipif(ckernel.compiler() is None, reason="no C compiler")
TINY_C = '#include "tiny.h"\nint tiny_value(void) { return TINY_VALUE; }\n'


def broken_source(folder: Path, errors: int) -> Path:
    """A C file with ``errors`` functions, the i-th using the undeclared name ``undeclared_i`` (one error each)."""
    source = folder / "broken.c"
    source.write_text("".join(f"void broken_{i}(void) {{ undeclared_{i} = 0; }}\n" for i in range(errors)))
    return source


def tiny_library(folder: Path, value: int) -> Path:
    """``tiny.c`` returning ``TINY_VALUE`` from the header ``tiny.h`` beside it (= ``value``)."""
    folder.mkdir(exist_ok=True)
    (folder / "tiny.h").write_text(f"#define TINY_VALUE {value}\n")
    source = folder / "tiny.c"
    source.write_text(TINY_C)
    return source


# 1. the c_kernel and cpu_isa fixtures fail a test whose forced instruction set's library did not build

FIXTURE_TESTS = '''
import torch

from localmamba_conv1d import causal_conv1d_fn, cpu_conv1d


def break_conv1d(monkeypatch, tmp_path):
    """The conv1d kernel's source with two errors added, far apart."""
    text = cpu_conv1d.SOURCES[0].read_text()
    broken = tmp_path / "causal_conv1d.c"
    broken.write_text("int first_mistake(void) { return first_undeclared; }\\n" + text
                      + "int second_mistake(void) { return second_undeclared; }\\n")
    monkeypatch.setattr(cpu_conv1d, "SOURCES", (broken,))


def conv_matches_reference(force_backend):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 8, 13, generator=g), torch.randn(8, 4, generator=g), torch.randn(8, generator=g)
    force_backend("cpu")
    out = causal_conv1d_fn(x, w, b, activation="silu")
    force_backend("reference")
    torch.testing.assert_close(out, causal_conv1d_fn(x, w, b, activation="silu"))


def test_conv(c_kernel, force_backend, monkeypatch, tmp_path):
    break_conv1d(monkeypatch, tmp_path)
    conv_matches_reference(force_backend)


def test_conv_cpu_isa(cpu_isa, force_backend, monkeypatch, tmp_path):
    break_conv1d(monkeypatch, tmp_path)
    conv_matches_reference(force_backend)


def test_swallowed(c_kernel, monkeypatch, tmp_path):
    """The error is caught by the test itself: the fixture's check at teardown still fails it."""
    break_conv1d(monkeypatch, tmp_path)
    try:
        cpu_conv1d.load_kernel()
    except RuntimeError:
        pass
'''


@needs_compiler
def test_kernel_fixtures_fail_when_the_forced_isa_does_not_build(tmp_path):
    """A conv1d source that no longer compiles left every c_kernel / cpu_isa test passing on the PyTorch fallback;
    the fixtures (this folder's conftest.py, run on a test file of its own) now fail each instruction set's test
    with the compiler's full output (both errors), and the "off" parameter still passes."""
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_broken.py").write_text(FIXTURE_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "LOCALMAMBA_CACHE_DIR": str(tmp_path / "cache")}
    for name in (ckernel.ISA_VAR, ckernel.DISABLE_VAR, "LOCALMAMBA_BACKEND"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:warnings", "-q",
                             "-rA", "test_broken.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    outcomes = dict((test, outcome) for outcome, test in re.findall(r"^(PASSED|FAILED|ERROR|SKIPPED) "
                                                                    r"test_broken\.py::(\S+)", output, re.M))
    lacking = [isa for isa in ckernel.ISAS if isa not in ckernel.supported_isas()]
    expected = {"test_conv[off]": "PASSED", "test_swallowed[off]": "PASSED"}
    for isa in ckernel.supported_isas():
        expected.update({f"test_conv[{isa}]": "FAILED", f"test_conv_cpu_isa[{isa}]": "FAILED",
                         f"test_swallowed[{isa}]": "ERROR"})
    assert {test: outcome for test, outcome in outcomes.items() if not any(isa in test for isa in lacking)} \
        == expected, output
    assert result.returncode == 1, output
    assert "KernelBuildError: LOCALMAMBA_CPU_KERNEL=require, but building the CPU kernel causal_conv1d" in output
    assert "first_undeclared" in output and "second_undeclared" in output, output


# 2. LOCALMAMBA_CPU_KERNEL=require

@pytest.mark.parametrize("value", ["require", " REQUIRE "])
def test_require_is_a_spelling_of_on(fresh_kernels, monkeypatch, value):
    monkeypatch.setenv(ckernel.DISABLE_VAR, value)
    assert ckernel.kernels_enabled() and ckernel.kernels_required()
    monkeypatch.setenv(ckernel.DISABLE_VAR, "1")
    assert ckernel.kernels_enabled() and not ckernel.kernels_required()


@needs_compiler
def test_require_raises_with_the_compilers_full_output(fresh_kernels, monkeypatch, tmp_path, caplog):
    """A library that does not build left its backend on PyTorch with a warning only; under require it raises
    KernelBuildError holding every line the compiler wrote (here 30 errors, more than the warning shows), at every
    call, and logs no "using the PyTorch implementation" warning."""
    source = broken_source(tmp_path, 30)
    monkeypatch.setenv(ckernel.DISABLE_VAR, "require")
    with caplog.at_level("WARNING", logger="localmamba"):
        with pytest.raises(ckernel.KernelBuildError) as raised:
            ckernel.load_library("broken", [source], {}, isa="baseline")
    message = str(raised.value)
    assert message.startswith("LOCALMAMBA_CPU_KERNEL=require, but building the CPU kernel broken for baseline "
                              "failed; the compiler said:\n")
    assert all(f"undeclared_{i}" in message for i in range(30)), message
    assert not any("PyTorch" in record.getMessage() for record in caplog.records)
    with pytest.raises(ckernel.KernelBuildError, match="undeclared_29"):  # remembered: no second build
        ckernel.load_library("broken", [source], {}, isa="baseline")
    assert list(ckernel.build_failures()) == [("broken", "baseline")]
    monkeypatch.setenv(ckernel.DISABLE_VAR, "1")
    assert ckernel.load_library("broken", [source], {}, isa="baseline") is None


def test_require_without_a_compiler_raises_naming_it(fresh_kernels, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv(ckernel.DISABLE_VAR, "require")
    with pytest.raises(ckernel.KernelBuildError, match=r"^LOCALMAMBA_CPU_KERNEL=require, but no C compiler found to "
                                                       r"build the CPU kernel causal_conv1d \(set CC, or install cc, "
                                                       r"gcc or clang\)$"):
        cpu_conv1d.load_kernel()
    assert ckernel.isa_summary() == "pytorch (no C compiler found)"


@needs_compiler
def test_require_loads_a_library_that_builds(fresh_kernels, monkeypatch):
    monkeypatch.setenv(ckernel.DISABLE_VAR, "require")
    lib = cpu_conv1d.load_kernel()
    assert lib is not None and ckernel.isa_summary() == lib.lm_isa and ckernel.build_failures() == {}


# 3. the fallback warning shows the compiler's errors, not its first error line only

@needs_compiler
def test_fallback_warning_shows_every_error(fresh_kernels, tmp_path, caplog):
    """Three errors: the warning used to name the first only."""
    source = broken_source(tmp_path, 3)
    with caplog.at_level("WARNING", logger="localmamba"):
        assert ckernel.load_library("broken", [source], {}, isa="baseline") is None
    warnings = [r.getMessage() for r in caplog.records if "CPU kernel broken" in r.getMessage()]
    assert len(warnings) == 1
    assert "using the PyTorch implementation" in warnings[0]
    assert all(f"undeclared_{i}" in warnings[0] for i in range(3)), warnings[0]
    assert "more lines" not in warnings[0]


@needs_compiler
def test_fallback_warning_caps_long_compiler_output(fresh_kernels, tmp_path, caplog):
    """Thirty errors: the warning shows ERROR_LINES lines of the compiler's output from its first error on, and
    says how many more there are."""
    source = broken_source(tmp_path, 30)
    with caplog.at_level("WARNING", logger="localmamba"):
        assert ckernel.load_library("broken", [source], {}, isa="baseline") is None
    [warning] = [r.getMessage() for r in caplog.records if "CPU kernel broken" in r.getMessage()]
    said = warning.split("the compiler said:\n", 1)[1].splitlines()
    assert len(said) == ckernel.ERROR_LINES + 1 and "error" in said[0].lower(), warning
    assert re.fullmatch(r"\.\.\. \(\d+ more lines; LOCALMAMBA_CPU_KERNEL=require raises an error holding them all\)",
                        said[-1]), said[-1]
    assert "undeclared_0" in warning and "undeclared_29" not in warning


def test_error_excerpt_starts_at_the_first_error():
    warnings = [f"x.c:{i}:1: warning: unused variable 'w{i}'" for i in range(25)]
    errors = [f"x.c:{i}:1: error: 'e{i}' undeclared" for i in range(30)]
    excerpt = ckernel._error_excerpt("\n".join(warnings + errors)).splitlines()
    assert excerpt[:-1] == errors[:ckernel.ERROR_LINES] and excerpt[-1].startswith("... (35 more lines")
    assert ckernel._error_excerpt("a\n\nb error\n") == "a\nb error"
    assert ckernel._error_excerpt("") == "no output"


@needs_compiler
def test_a_failed_build_is_remembered_across_processes(fresh_kernels, monkeypatch, tmp_path, caplog):
    """A build the compiler refused ran again in every new process (seconds per library where the compiler lacks
    AVX-512): it is remembered in the cache with the compiler's output, which a new process (here: after
    ckernel.reset()) reports without compiling; deleting the .failed files builds again, as does a changed source."""
    builds = []
    real_build = ckernel._build
    monkeypatch.setattr(ckernel, "_build", lambda *args: builds.append(args) or real_build(*args))
    source = broken_source(tmp_path, 2)
    with caplog.at_level("WARNING", logger="localmamba"):
        assert ckernel.load_library("broken", [source], {}, isa="baseline") is None
    variants = len(builds)          # with and without OpenMP where torch uses GNU OpenMP
    markers = sorted((tmp_path / "cache").glob("broken_*.failed"))
    assert variants >= 1 and len(markers) == variants and "undeclared_1" in markers[0].read_text()
    assert f"(remembered: delete broken_*.failed in {tmp_path / 'cache'} to build it again)" in caplog.text
    ckernel.reset()
    monkeypatch.setenv(ckernel.DISABLE_VAR, "require")
    with pytest.raises(ckernel.KernelBuildError) as raised:
        ckernel.load_library("broken", [source], {}, isa="baseline")
    assert len(builds) == variants, "compiled again"
    message = str(raised.value)
    assert "undeclared_1" in message and any(f"failed before, with this output; delete {m}" in message
                                             for m in markers), message
    for marker in markers:
        marker.unlink()
    ckernel.reset()
    with pytest.raises(ckernel.KernelBuildError, match="undeclared_1"):
        ckernel.load_library("broken", [source], {}, isa="baseline")
    assert len(builds) == 2 * variants
    source.write_text("int broken_fixed(void) { return 7; }\n")
    ckernel.reset()
    assert ckernel.load_library("broken", [source], {}, isa="baseline").broken_fixed() == 7


# 4. a header beside a source is part of the library's identity

@needs_compiler
def test_a_changed_header_beside_a_source_rebuilds(fresh_kernels, tmp_path):
    """Only the .c files and the runtime's csrc/*.h were hashed: a header beside a kernel's .c that changed left the
    stale library in use."""
    source = tiny_library(tmp_path / "src", 1)
    assert ckernel.load_library("tiny", [source], {}, isa="baseline").tiny_value() == 1
    before = set((tmp_path / "cache").glob("tiny_*.so"))
    (tmp_path / "src" / "tiny.h").write_text("#define TINY_VALUE 2\n")
    ckernel.reset()
    assert ckernel.load_library("tiny", [source], {}, isa="baseline").tiny_value() == 2
    assert len(set((tmp_path / "cache").glob("tiny_*.so")) - before) == 1


@needs_compiler
def test_source_digest_covers_the_headers_beside_each_source(tmp_path):
    source = tiny_library(tmp_path, 1)
    before = ckernel._source_digest([source])
    (tmp_path / "other.h").write_text("/* not included, but it could be */\n")
    assert ckernel._source_digest([source]) != before


# 5. a build logs one INFO line

@needs_compiler
def test_a_build_logs_one_info_line(fresh_kernels, tmp_path, caplog):
    """A first build (9-60 s for a real kernel) said nothing: it logs which library it compiles, for which
    instruction set, and that it is cached afterwards; a cached library logs nothing."""
    source = tiny_library(tmp_path / "src", 3)
    with caplog.at_level("INFO", logger="localmamba"):
        assert ckernel.load_library("tiny", [source], {}, isa="baseline") is not None
        ckernel.reset()
        assert ckernel.load_library("tiny", [source], {}, isa="baseline") is not None
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name == "localmamba"]
    assert len(infos) == 1, infos
    assert infos[0].startswith("compiling the CPU kernel tiny for baseline")
    assert f"it is cached afterwards, in {tmp_path / 'cache'}" in infos[0]


@pytest.mark.parametrize("loaded, expected", [
    # x86-64 torch ships libgomp.so.1 itself: -fopenmp links it
    (["/site-packages/torch/lib/libgomp.so.1"], ["-fopenmp"]),
    # the system's runtime (the maps name the file behind the libgomp.so.1 link)
    (["/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0"], ["-fopenmp"]),
    # torch's aarch64 wheels: auditwheel's renamed copy, linked by path so that the kernel loads no second runtime
    (["/site-packages/torch.libs/libgomp-f3febf51.so.1.0.0"],
     ["-fopenmp", "-Wl,--as-needed", "/site-packages/torch.libs/libgomp-f3febf51.so.1.0.0"]),
    # two runtimes already: no way to tell torch's
    (["/a/libgomp-f3febf51.so.1.0.0", "/b/libgomp.so.1"], ["-fopenmp"]),
    ([], ["-fopenmp"]),
])
def test_the_kernels_link_the_openmp_runtime_torch_loaded(monkeypatch, loaded, expected):
    monkeypatch.setattr(ckernel, "loaded_libraries", lambda stem: loaded if stem == "libgomp" else [])
    assert ckernel.openmp_flags() == expected


@pytest.mark.skipif(not os.path.isfile("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
def test_loaded_libraries_names_the_files_this_process_mapped():
    mapped = ckernel.loaded_libraries("libc")
    assert any(re.match(r"libc(\.so|-)", os.path.basename(path)) for path in mapped)    # the C library runs here
    assert all(os.path.isabs(path) and os.path.isfile(path) for path in mapped)
    assert ckernel.loaded_libraries("no_such_library_here") == []


def test_a_library_among_the_flags_follows_the_sources(tmp_path, monkeypatch):
    """torch's renamed libgomp given before the sources was dropped by --as-needed (nothing used it yet) and the
    kernel linked the system's libgomp.so.1 after all: two OpenMP runtimes in the process (seen on aarch64)."""
    commands = []

    def compile_into_target(cmd, **kwargs):
        commands.append(cmd)
        Path(cmd[cmd.index("-o") + 1]).write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ckernel.subprocess, "run", compile_into_target)
    library = "/site-packages/torch.libs/libgomp-f3febf51.so.1.0.0"
    sources = [tmp_path / "kernel.c", tmp_path / "task_runner.c"]
    ckernel._build(["cc"], ["-O3", "-fopenmp", "-Wl,--as-needed", library], sources, tmp_path / "kernel.so")
    (cmd,) = commands
    assert cmd.index(library) > max(cmd.index(str(source)) for source in sources)
    assert cmd.index("-Wl,--as-needed") < cmd.index(library) and (tmp_path / "kernel.so").exists()
