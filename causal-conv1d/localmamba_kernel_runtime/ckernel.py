"""Compile the C kernels on first use, load them with ctypes, check their argument structs.

Each kernel library is built from ``.c`` files shipped with its package, plus this package's ``csrc/`` (the headers
``vector_math.h`` and ``kernel_args.h``, and ``task_runner.c``, linked into every library), with warnings on. A
library goes to a per-user cache directory (``LOCALMAMBA_CACHE_DIR``, else ``$XDG_CACHE_HOME/localmamba``, else
``~/.cache/localmamba``) under a name hashed from its sources and headers, the compiler and the flags; it is written
to a temporary file and renamed into place, so concurrent processes are safe; a cached file that does not load
(truncated or overwritten) is rebuilt. A build the compiler refuses is remembered there too (a ``.failed`` file
holding its output): no process compiles it again until its sources, headers, compiler or flags change or that
file is deleted. The headers hashed are every ``*.h`` of ``csrc/`` and of each source's folder
(a header beside a kernel's ``.c`` that changes rebuilds it). A build (seconds to a minute) logs one INFO line on the
``localmamba`` logger, naming the library and instruction set. Only a C compiler is needed (``$CC``, else ``cc``,
``gcc`` or ``clang``; a ``$CC`` may hold a launcher, as ``ccache gcc``; one whose first word names no executable
raises :class:`KernelSettingError`), no torch headers.

``LOCALMAMBA_CPU_KERNEL``: unset, empty, ``1`` (or true / on / yes) builds the kernels, and a library that does not
build or load leaves its cpu backend on its PyTorch implementation, with one warning holding the compiler's errors;
``require`` builds them too, but such a library (or no C compiler) raises :class:`KernelBuildError`, carrying the
compiler's full output (the fallback to a lower instruction set still applies); ``0`` (or false / off / no) disables
every kernel (the cpu backends then use their PyTorch implementations). Any other value raises
:class:`KernelSettingError`, listing these.

Instruction sets: on x86-64 each library is built for one of ``baseline`` (the compiler's default target),
``avx2`` (AVX2 + FMA, 8-lane vectors) and ``avx512`` (AVX-512 F/BW/VL/DQ, 16-lane vectors); the best one the CPU
reports (``/proc/cpuinfo`` flags) is chosen at load. When that build fails (a compiler or assembler without AVX-512,
say), the library is built for the next lower instruction set the CPU runs, with one warning naming both and the
compiler's errors (at most :data:`ERROR_LINES` lines). ``LOCALMAMBA_CPU_ISA=baseline|avx2|avx512`` forces one
(an unknown value, or one this CPU lacks, raises :class:`UnsupportedISAError`), and a forced build that fails falls
back to PyTorch (or raises, under ``require``), not to another instruction set. Other machines build ``baseline``
only. Each library tells its vector width (:func:`vector_width`) and the instruction set it was built for
(``lib.lm_isa``; :func:`isa_summary` for all of them); callers pad per-channel buffers to the width.

Each kernel's argument struct is checked against its ctypes mirror at load (:mod:`.kernel_args`).

Where torch runs its own ops on GNU OpenMP (Linux builds), each library is built with ``-fopenmp`` on the OpenMP
runtime torch loaded (:func:`openmp_flags`; without OpenMP when that build fails); :mod:`.task_runner` runs its
kernels on threads.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import torch

from .kernel_args import check_args_layout
from .task_runner import openmp_runner

logger = logging.getLogger("localmamba")
T = TypeVar("T")

DISABLE_VAR = "LOCALMAMBA_CPU_KERNEL"
ISA_VAR = "LOCALMAMBA_CPU_ISA"
COMPILER_VAR = "CC"
SWITCH_ON: Tuple[str, ...] = ("1", "true", "on", "yes")
SWITCH_OFF: Tuple[str, ...] = ("0", "false", "off", "no")
SWITCH_REQUIRE: Tuple[str, ...] = ("require",)  # on, and a library that does not build raises KernelBuildError
ERROR_LINES = 20  # of compiler output in the warning of a failed build (KernelBuildError carries it all)
NO_COMPILER = "no C compiler found"
ISAS: Tuple[str, ...] = ("baseline", "avx2", "avx512")  # worst to best
ISA_FLAGS: Dict[str, Tuple[str, ...]] = {
    "baseline": (),
    "avx2": ("-mavx2", "-mfma"),
    "avx512": ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"),
}
ISA_CPU_FLAGS: Dict[str, Tuple[str, ...]] = {  # the /proc/cpuinfo flags each ISA needs
    "baseline": (),
    "avx2": ("avx2", "fma"),
    "avx512": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"),
}
RUNTIME_SOURCES = Path(__file__).resolve().with_name("csrc")
TASK_RUNNER = RUNTIME_SOURCES / "task_runner.c"
# -Wno-psabi: vector values pass only between static inline functions, never through an exported function
WARNING_FLAGS = ("-Wall", "-Wextra", "-Wno-psabi")
_LOCK = threading.Lock()
_LIBS: Dict[Tuple[str, str], Optional[ctypes.CDLL]] = {}  # (name, requested isa) -> library, None: PyTorch
_NO_COMPILER: set = set()  # the (name, requested isa) keys of _LIBS left on PyTorch because no compiler was found
_FAILURES: Dict[Tuple[str, str], str] = {}  # (name, requested isa) -> why no library loaded (full compiler output)


class UnsupportedISAError(ValueError):
    """``LOCALMAMBA_CPU_ISA`` names an unknown instruction set or one this CPU lacks."""


class KernelSettingError(ValueError):
    """``LOCALMAMBA_CPU_KERNEL`` is not one of its spellings, or ``$CC`` names no executable."""


class KernelBuildError(RuntimeError):
    """Under ``LOCALMAMBA_CPU_KERNEL=require``, a kernel library did not build or load (the message holds the
    compiler's full output), or no C compiler was found."""


def kernels_enabled() -> bool:
    """False when ``LOCALMAMBA_CPU_KERNEL`` is 0 / false / off / no, True when it is unset, empty, 1 / true / on /
    yes or require (any case); any other value raises :class:`KernelSettingError`."""
    value = os.environ.get(DISABLE_VAR, "").strip().lower()
    if value in ("", *SWITCH_ON, *SWITCH_REQUIRE):
        return True
    if value in SWITCH_OFF:
        return False
    raise KernelSettingError(f"{DISABLE_VAR}={value!r} is not a valid value; valid values are: "
                             f"{', '.join(SWITCH_ON)} (the C kernels on), {', '.join(SWITCH_REQUIRE)} (on, and a "
                             f"kernel that does not build raises an error), {', '.join(SWITCH_OFF)} (off)")


def kernels_required() -> bool:
    """True under ``LOCALMAMBA_CPU_KERNEL=require``: a library that does not build or load raises
    :class:`KernelBuildError` instead of leaving its backend on PyTorch (a bad value raises
    :class:`KernelSettingError`)."""
    return kernels_enabled() and os.environ.get(DISABLE_VAR, "").strip().lower() in SWITCH_REQUIRE


def build_failures() -> Dict[Tuple[str, str], str]:
    """Why each library that did not build or load since :func:`reset` did not: the compiler's full output (or
    that no compiler was found), by (name, requested instruction set)."""
    return dict(_FAILURES)


def compiler() -> Optional[Tuple[str, ...]]:
    """The C compiler command to use: ``$CC`` when set, split as a shell would (``ccache gcc`` works; one whose
    first word names no executable raises :class:`KernelSettingError`, as a bad ``LOCALMAMBA_CPU_ISA`` does), else
    the first of cc, gcc, clang found; None without one."""
    words = shlex.split(os.environ.get(COMPILER_VAR, ""))
    if words:
        path = shutil.which(words[0])
        if path is None:
            raise KernelSettingError(f"{COMPILER_VAR}={os.environ[COMPILER_VAR]!r} is not an executable C compiler "
                                     "(a name on PATH or a path); point it at one, or unset it to use cc, gcc or "
                                     "clang")
        return (path, *words[1:])
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path is not None:
            return (path,)
    return None


@functools.lru_cache(maxsize=None)
def supported_isas() -> Tuple[str, ...]:
    """The instruction sets of :data:`ISAS` this CPU runs (x86-64 Linux: from ``/proc/cpuinfo``), worst to best;
    ``("baseline",)`` elsewhere."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ("baseline",)
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ("baseline",)
    return tuple(isa for isa in ISAS if flags.issuperset(ISA_CPU_FLAGS[isa]))


def selected_isa() -> str:
    """The instruction set the kernels are built for: ``LOCALMAMBA_CPU_ISA`` when set (checked against the CPU),
    else the best of :func:`supported_isas`."""
    requested = os.environ.get(ISA_VAR, "").strip().lower()
    supported = supported_isas()
    if not requested:
        return supported[-1]
    if requested not in ISAS:
        raise UnsupportedISAError(f"{ISA_VAR}={requested!r} is not an instruction set; valid values are: "
                                  f"{', '.join(ISAS)}")
    if requested not in supported:
        raise UnsupportedISAError(f"{ISA_VAR}={requested!r}: this CPU lacks it (it runs: {', '.join(supported)})")
    return requested


def isa_summary() -> str:
    """The instruction set the loaded kernels were built for, e.g. ``avx512``; ``avx2 (avx512 build failed)`` after
    a fallback, ``pytorch (avx512 build failed)`` when no library loaded, ``pytorch (no C compiler found)`` when none
    was built for want of a compiler, ``avx512 (multi_scan: avx2; avx512 build failed)`` when only some fell back;
    ``off`` when ``LOCALMAMBA_CPU_KERNEL`` disables them. Before any kernel has loaded: the instruction set they will
    be built for (nothing is built here)."""
    if not kernels_enabled():
        return "off"
    requested = selected_isa()
    used = {name: "pytorch" if lib is None else lib.lm_isa for (name, isa), lib in list(_LIBS.items())
            if isa == requested}
    fallbacks = {name: isa for name, isa in sorted(used.items()) if isa != requested}
    if not fallbacks:
        return requested
    reasons = sorted({NO_COMPILER if (name, requested) in _NO_COMPILER else f"{requested} build failed"
                      for name in fallbacks})
    if len(fallbacks) == len(used) and len(set(fallbacks.values())) == 1:
        return f"{next(iter(fallbacks.values()))} ({'; '.join(reasons)})"
    parts = ", ".join(f"{name}: {isa}" for name, isa in fallbacks.items())
    return f"{requested} ({parts}; {'; '.join(reasons)})"


def compile_flags(isa: Optional[str] = None) -> List[str]:
    """Flags used for every kernel built for ``isa`` (default :func:`selected_isa`): optimised, FMA contraction
    allowed, no -ffast-math, warnings on."""
    isa = selected_isa() if isa is None else isa
    return ["-O3", "-std=c11", "-ffp-contract=fast", "-shared", "-fPIC", *WARNING_FLAGS, *ISA_FLAGS[isa]]


def torch_uses_gnu_openmp() -> bool:
    """True when torch's intra-op threads are GNU OpenMP's (the Linux wheels), which kernels can share."""
    return sys.platform.startswith("linux") and "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


# auditwheel's copy of libgomp inside a wheel (torch's aarch64 wheels: torch.libs/libgomp-f3febf51.so.1.0.0), whose
# SONAME is that file name
RENAMED_GOMP = re.compile(r"libgomp-[0-9a-f]{8}\.so")


def loaded_libraries(stem: str) -> List[str]:
    """The files of the shared libraries this process has mapped whose names begin with ``stem`` (Linux:
    ``/proc/self/maps``; empty elsewhere), sorted."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(maxsplit=5)[-1].strip() for line in maps}
    except OSError:
        return []
    return sorted(path for path in paths if os.path.basename(path).startswith(stem) and ".so" in path)


def openmp_flags() -> List[str]:
    """The flags that build a kernel on the GNU OpenMP runtime torch loaded, so that both share one thread pool:
    ``-fopenmp``, and where torch's runtime is a renamed copy (:data:`RENAMED_GOMP`) that file by path.
    ``-fopenmp`` alone links ``libgomp.so.1``, which is torch's own on x86-64 but the system's beside torch's
    renamed copy: a second runtime, whose idle threads spin beside torch's."""
    loaded = loaded_libraries("libgomp")
    if len(loaded) == 1 and RENAMED_GOMP.match(os.path.basename(loaded[0])):
        return ["-fopenmp", "-Wl,--as-needed", loaded[0]]
    return ["-fopenmp"]


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    if os.environ.get("LOCALMAMBA_CACHE_DIR"):
        return Path(os.environ["LOCALMAMBA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "localmamba"


def _build(cc: Sequence[str], flags: List[str], sources: Sequence[Path], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_lib = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        # the flags after the sources: a library among them (openmp_flags) must follow the objects that use it
        result = subprocess.run([*cc, "-I", str(RUNTIME_SOURCES), *map(str, sources), *flags, "-o", tmp_lib],
                                check=True, capture_output=True, text=True, timeout=120)
        if result.stderr.strip():
            logger.warning("compiler warnings building %s:\n%s", target.name, result.stderr.strip())
        os.replace(tmp_lib, target)
    finally:
        if os.path.exists(tmp_lib):
            os.remove(tmp_lib)


def _source_digest(sources: Sequence[Path]) -> bytes:
    """The library's identity: its sources and every header it can include (each ``*.h`` of this package's
    ``csrc/`` and of each source's directory)."""
    folders = dict.fromkeys([RUNTIME_SOURCES, *(Path(source).parent for source in sources)])
    headers = dict.fromkeys(header for folder in folders for header in sorted(folder.glob("*.h")))
    files = [*sources, *headers]
    return b"\0".join(path.name.encode() + b"\0" + path.read_bytes() for path in files)


def _error_excerpt(output: str, limit: int = ERROR_LINES) -> str:
    """Compiler output for a warning: all of it when it has at most ``limit`` lines, else ``limit`` lines from its
    first error on (its first lines when none reports one) and how many lines are left out."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    if not lines:
        return "no output"
    if len(lines) > limit:
        start = next((i for i, line in enumerate(lines) if "error" in line.lower()), 0)
        start = min(start, len(lines) - limit)
        shown = lines[start:start + limit]
        lines = [*shown, f"... ({len(lines) - limit} more lines; {DISABLE_VAR}=require raises an error holding "
                         "them all)"]
    return "\n".join(lines)


def _compile_and_load(cc: Sequence[str], name: str, sources: Sequence[Path],
                      isa: str) -> Tuple[Optional[ctypes.CDLL], str]:
    """(the library built for ``isa`` and loaded, "") or (None, the compiler's full output, or why it did not
    load). Built with OpenMP where torch uses GNU OpenMP, else (or when that build fails) without."""
    sources = [*sources, TASK_RUNNER]
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    flags = compile_flags(isa)
    variants = [flags + openmp_flags(), flags] if torch_uses_gnu_openmp() else [flags]
    detail = ""
    for i, flags in enumerate(variants):
        try:
            return _load_cached(name, cc, version, flags, sources, isa), ""
        except (OSError, subprocess.SubprocessError) as err:
            detail = (getattr(err, "stderr", "") or str(err)).strip()
            if i + 1 < len(variants):
                logger.debug("building the CPU kernel %s with %s failed (%s); trying without", name, flags, detail)
    return None, detail or "no output"


def _load_first_that_builds(name: str, sources: Sequence[Path], isas: Sequence[str]) -> Optional[ctypes.CDLL]:
    """The library built for the first of ``isas`` that builds and loads (``lib.lm_isa`` says which), or None
    (why, noted in ``_FAILURES``); one warning with the compiler's errors when the first fails, or when there is no
    compiler (then the key is noted in ``_NO_COMPILER``); none under ``LOCALMAMBA_CPU_KERNEL=require`` when nothing
    loaded (:func:`load_library` raises)."""
    required = kernels_required()
    cc = compiler()
    if cc is None:
        if not required:
            logger.warning("%s: the cpu backend of %s uses its (slower) PyTorch implementation", NO_COMPILER, name)
        _NO_COMPILER.add((name, isas[0]))
        _FAILURES[(name, isas[0])] = (f"{NO_COMPILER} to build the CPU kernel {name} (set {COMPILER_VAR}, or "
                                      "install cc, gcc or clang)")
        return None
    failed, first_error = [], ""
    for isa in isas:
        lib, error = _compile_and_load(cc, name, sources, isa)
        if lib is not None:
            lib.lm_isa = isa
            break
        failed.append(isa)
        first_error = first_error or error
    retry = f"(remembered: delete {name}_*.failed in {cache_dir()} to build it again)"
    if failed and lib is not None:
        logger.warning("building the CPU kernel %s for %s failed %s; using its %s build instead; the compiler "
                       "said:\n%s", name, " and ".join(failed), retry, lib.lm_isa, _error_excerpt(first_error))
    elif failed:
        _FAILURES[(name, isas[0])] = (f"building the CPU kernel {name} for {' and '.join(failed)} failed; the "
                                      f"compiler said:\n{first_error}")
        forced = f" ({ISA_VAR} asks for that one only)" if os.environ.get(ISA_VAR, "").strip() else ""
        if not required:
            logger.warning("building the CPU kernel %s for %s failed%s %s; using the PyTorch implementation; the "
                           "compiler said:\n%s", name, " and ".join(failed), forced, retry,
                           _error_excerpt(first_error))
    return lib


def _note_failed_build(marker: Path, output: str) -> None:
    """Keep the compiler's output of a failed build in ``marker`` (written whole or not at all; an unwritable cache
    keeps nothing)."""
    try:
        fd, tmp = tempfile.mkstemp(suffix=".failed.tmp", dir=marker.parent)
        with os.fdopen(fd, "w") as file:
            file.write(output)
        os.replace(tmp, marker)
    except OSError:
        pass


def _cached_build(name: str, cc: Sequence[str], version: str, flags: List[str], sources: Sequence[Path],
                  isa: str, rebuild: bool = False) -> Path:
    """Path of the library built from ``sources`` with ``flags`` (for ``isa``), building it unless it is in the
    cache (or ``rebuild``: the cached file replaced by a new build); a build logs one INFO line. A build the compiler
    refused is remembered beside where its library would be (``.failed``, holding the compiler's output) and raises
    again without compiling, in every process, until its sources, headers, compiler or flags change or the file is
    deleted (a compiler without AVX-512 would otherwise be run again at every start)."""
    key_parts = [_source_digest(sources), *(part.encode() for part in (*cc, version, *flags, platform.machine()))]
    key = hashlib.sha256(b"\0".join(key_parts)).hexdigest()[:16]
    filename = f"{name}_{key}.so"
    target = cache_dir() / filename
    failed = target.with_suffix(".failed")
    if not rebuild and not target.exists() and failed.exists():
        raise subprocess.CalledProcessError(1, [*cc, *flags], stderr=f"{failed.read_text().rstrip()}\n(this build "
                                            f"failed before, with this output; delete {failed} to try it again)")
    if rebuild or not target.exists():
        logger.info("compiling the CPU kernel %s for %s%s (seconds to a minute; it is cached afterwards, in %s)",
                    name, isa, " with OpenMP" if "-fopenmp" in flags else "", target.parent)
        try:
            _build(cc, flags, sources, target)
        except subprocess.CalledProcessError as err:
            _note_failed_build(failed, err.stderr or "")
            raise
        except OSError:  # cache directory not writable: build in a per-user temporary directory
            user = getattr(os, "getuid", lambda: "user")()
            target = Path(tempfile.gettempdir()) / f"localmamba-{user}" / filename
            if rebuild or not target.exists():
                _build(cc, flags, sources, target)
    return target


def _load_cached(name: str, cc: Sequence[str], version: str, flags: List[str], sources: Sequence[Path],
                 isa: str) -> ctypes.CDLL:
    """Load the library of :func:`_cached_build`; a cached file that does not load (truncated, overwritten) is
    rebuilt once, rather than leaving the kernels on a build without OpenMP or for a lower instruction set."""
    path = _cached_build(name, cc, version, flags, sources, isa)
    try:
        return ctypes.CDLL(str(path))
    except OSError as err:
        logger.warning("the cached CPU kernel %s does not load (%s); rebuilding it", path, err)
    return ctypes.CDLL(str(_cached_build(name, cc, version, flags, sources, isa, rebuild=True)))


def load_library(name: str, sources: Sequence[Path],
                 kernels: Mapping[str, Type[ctypes.Structure]], isa: Optional[str] = None) -> Optional[ctypes.CDLL]:
    """Compile (once per process and requested instruction set, cached on disk) and load the C ``sources`` for
    ``isa``; None when disabled or building fails (under ``LOCALMAMBA_CPU_KERNEL=require``, a failed build or no
    compiler raises :class:`KernelBuildError` with the compiler's full output, at every call). With neither ``isa``
    nor ``LOCALMAMBA_CPU_ISA`` given, the best instruction set of the CPU is requested, and a failed build falls back
    to the next lower one the CPU runs (``lib.lm_isa`` is the one built); a requested instruction set gets no
    fallback.

    ``kernels`` maps each exported kernel to its argument struct's ctypes mirror: every kernel is
    ``int kernel(const Args *args, int64_t start, int64_t end)``, returning a status
    (:func:`.task_runner.check_status`). Each mirror is checked against the library
    (:func:`.kernel_args.check_args_layout`) before the library is returned.
    """
    if not kernels_enabled():
        return None
    automatic = isa is None and not os.environ.get(ISA_VAR, "").strip()
    isa = selected_isa() if isa is None else isa
    if isa not in supported_isas():
        raise UnsupportedISAError(f"instruction set {isa!r}: this CPU runs {', '.join(supported_isas())}")
    key = (name, isa)
    if key not in _LIBS:
        with _LOCK:
            if key not in _LIBS:
                fallbacks = [lower for lower in reversed(supported_isas()) if ISAS.index(lower) < ISAS.index(isa)]
                lib = _load_first_that_builds(name, sources, [isa, *fallbacks] if automatic else [isa])
                if lib is not None:
                    for struct in set(kernels.values()):
                        check_args_layout(lib, struct)
                    runner = openmp_runner(lib)
                    for fn_name, struct in kernels.items():
                        fn = getattr(lib, fn_name)
                        fn.argtypes = [ctypes.POINTER(struct), ctypes.c_int64, ctypes.c_int64]
                        fn.restype = ctypes.c_int
                        fn.lm_runner = runner
                    lib.lm_vector_width.restype = ctypes.c_int64
                _LIBS[key] = lib
    lib = _LIBS[key]
    if lib is None and kernels_required():
        reason = _FAILURES.get(key, f"the CPU kernel {name} did not load")
        raise KernelBuildError(f"{DISABLE_VAR}=require, but {reason}")
    return lib


def vector_width(lib: ctypes.CDLL) -> int:
    """Float lanes per vector in ``lib`` (8, or 16 when built for AVX-512): per-channel buffers are padded to it."""
    return int(lib.lm_vector_width())


def constant_under_compile(fn: Callable[..., T]) -> Callable[..., T]:
    """``torch.compiler.assume_constant_result(fn)`` without importing dynamo (which imports triton) at package
    import: dynamo then runs ``fn`` at trace time, so a kernel load (a build under a lock) stays out of the graph."""
    fn._dynamo_marked_constant = True
    return fn


def reset() -> None:
    """Forget loaded kernels so that the next call re-reads the environment (for tests)."""
    with _LOCK:
        _LIBS.clear()
        _NO_COMPILER.clear()
        _FAILURES.clear()
