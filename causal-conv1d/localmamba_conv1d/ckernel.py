"""Compile small C kernels on first use, load them with ctypes, and run them on several threads.

A library goes to a per-user cache directory (``LOCALMAMBA_CACHE_DIR``, else ``$XDG_CACHE_HOME/localmamba``, else
``~/.cache/localmamba``) under a name hashed from its source, the compiler and the flags; it is written to a
temporary file and renamed into place, so concurrent processes are safe. Only a C compiler is needed (``$CC``,
``cc``, ``gcc`` or ``clang``), no torch headers. ``LOCALMAMBA_CPU_KERNEL=0`` disables every kernel (the cpu
backends then use their PyTorch implementations).

Threads: where torch runs its own ops on GNU OpenMP (Linux builds), each library is built with ``-fopenmp`` and
runs its tasks on OpenMP threads. The loader resolves ``libgomp.so.1`` to the copy torch already loaded, so the
kernels and torch share one thread team: no thread of ours competes with torch's workers while they spin-wait after
an op (with a separate pool that contention made a whole model a third slower on 2 cores). Elsewhere, or when the
compiler lacks OpenMP, the tasks run on a Python thread pool (ctypes releases the GIL).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

logger = logging.getLogger("localmamba")

DISABLE_VAR = "LOCALMAMBA_CPU_KERNEL"
_LOCK = threading.Lock()
_LIBS: Dict[str, Optional[ctypes.CDLL]] = {}
_POOL: dict = {"pool": None, "size": 0}


def kernels_enabled() -> bool:
    """False when ``LOCALMAMBA_CPU_KERNEL`` is 0 / false / off / no."""
    return os.environ.get(DISABLE_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


def _compiler() -> Optional[str]:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _arch_flags() -> List[str]:
    """-mavx2 -mfma on x86-64 CPUs that report both (Linux); otherwise the compiler's baseline."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return ["-mavx2", "-mfma"] if "avx2" in flags and "fma" in flags else []


def compile_flags() -> List[str]:
    """Flags used for every kernel: optimised, FMA contraction allowed, no -ffast-math."""
    return ["-O3", "-std=c11", "-ffp-contract=fast", "-shared", "-fPIC", *_arch_flags()]


# Appended to every library: run fn(args[i], start_i, end_i) over ``tasks`` contiguous slices of range(items).
TASK_RUNNER = r"""
typedef void (*lm_task_fn)(const void *, long, long);
int lm_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
void lm_run_tasks(lm_task_fn fn, void **args, long tasks, long items) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(tasks) schedule(static, 1)
#endif
    for (long i = 0; i < tasks; i++) fn(args[i], items * i / tasks, items * (i + 1) / tasks);
}
"""


def torch_uses_gnu_openmp() -> bool:
    """True when torch's intra-op threads are GNU OpenMP's (the Linux wheels), which kernels can share."""
    return sys.platform.startswith("linux") and "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    if os.environ.get("LOCALMAMBA_CACHE_DIR"):
        return Path(os.environ["LOCALMAMBA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "localmamba"


def _build(cc: str, flags: List[str], source: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_src = tempfile.mkstemp(suffix=".c", dir=target.parent)
    tmp_lib = tmp_src[:-2] + ".so"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(source)
        subprocess.run([cc, *flags, tmp_src, "-o", tmp_lib], check=True, capture_output=True, text=True,
                       timeout=120)
        os.replace(tmp_lib, target)
    finally:
        for leftover in (tmp_src, tmp_lib):
            if os.path.exists(leftover):
                os.remove(leftover)


def _compile_and_load(name: str, source: str) -> Optional[ctypes.CDLL]:
    cc = _compiler()
    if cc is None:
        logger.warning("no C compiler found: the cpu backend of %s uses its (slower) PyTorch implementation", name)
        return None
    source = source + TASK_RUNNER
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    variants = [compile_flags() + ["-fopenmp"], compile_flags()] if torch_uses_gnu_openmp() else [compile_flags()]
    for i, flags in enumerate(variants):
        try:
            return ctypes.CDLL(str(_cached_build(name, cc, version, flags, source)))
        except (OSError, subprocess.SubprocessError) as err:
            detail = (getattr(err, "stderr", "") or str(err)).strip()
            if i + 1 < len(variants):
                logger.debug("building the CPU kernel %s with %s failed (%s); trying without", name, flags, detail)
            else:
                logger.warning("building the CPU kernel %s failed (%s); using the PyTorch implementation", name,
                               detail)
    return None


def _cached_build(name: str, cc: str, version: str, flags: List[str], source: str) -> Path:
    """Path of the library built from ``source`` with ``flags``, building it unless it is in the cache."""
    key = hashlib.sha256("\0".join([source, cc, version, *flags, platform.machine()]).encode()).hexdigest()[:16]
    filename = f"{name}_{key}.so"
    target = cache_dir() / filename
    if not target.exists():
        try:
            _build(cc, flags, source, target)
        except OSError:  # cache directory not writable: build in a per-user temporary directory
            user = getattr(os, "getuid", lambda: "user")()
            target = Path(tempfile.gettempdir()) / f"localmamba-{user}" / filename
            if not target.exists():
                _build(cc, flags, source, target)
    return target


def load_library(name: str, source: str, functions: Dict[str, Sequence]) -> Optional[ctypes.CDLL]:
    """Compile (once per process, cached on disk) and load ``source``; None when disabled or building fails.

    ``functions`` maps each exported C function to its ctypes argument types (all return void).
    """
    if not kernels_enabled():
        return None
    if name not in _LIBS:
        with _LOCK:
            if name not in _LIBS:
                lib = _compile_and_load(name, source)
                if lib is not None:
                    runner = _openmp_runner(lib)
                    for fn_name, argtypes in functions.items():
                        fn = getattr(lib, fn_name)
                        fn.argtypes = list(argtypes)
                        fn.restype = None
                        fn.lm_runner = runner
                _LIBS[name] = lib
    return _LIBS[name]


def _openmp_runner(lib: ctypes.CDLL):
    """The library's ``lm_run_tasks`` when it was built with OpenMP, else None."""
    lib.lm_openmp.restype = ctypes.c_int
    if not lib.lm_openmp():
        return None
    runner = lib.lm_run_tasks
    runner.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_long, ctypes.c_long]
    runner.restype = None
    return runner


def data_ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    """A tensor's data address for a kernel argument; None (a NULL pointer) for a missing tensor."""
    return None if t is None else t.data_ptr()


def constant_under_compile(fn):
    """``torch.compiler.assume_constant_result(fn)`` without importing dynamo (which imports triton) at package
    import: dynamo then runs ``fn`` at trace time, so a kernel load (a build under a lock) stays out of the graph."""
    fn._dynamo_marked_constant = True
    return fn


def uses_openmp(fn) -> bool:
    """Whether a loaded kernel function runs its tasks on OpenMP threads (shared with torch)."""
    return getattr(fn, "lm_runner", None) is not None


def reset() -> None:
    """Forget loaded kernels so that the next call re-reads the environment (for tests)."""
    with _LOCK:
        _LIBS.clear()


def num_tasks(items: int, min_items_per_task: int) -> int:
    """How many parallel calls to split ``items`` into: at most ``torch.get_num_threads()``."""
    return max(1, min(torch.get_num_threads(), items // min_items_per_task))


def _pool(workers: int) -> ThreadPoolExecutor:
    with _LOCK:
        if _POOL["size"] < workers:
            if _POOL["pool"] is not None:
                _POOL["pool"].shutdown(wait=False)
            _POOL["pool"] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="localmamba-kernel")
            _POOL["size"] = workers
        return _POOL["pool"]


def run_parallel(fn, args: List[ctypes.Structure], items: int) -> None:
    """Call ``fn(byref(args[i]), start_i, end_i)`` on len(args) contiguous slices of range(items), in parallel:
    on OpenMP threads when the library has them, else on a thread pool (ctypes releases the GIL during each call).
    """
    tasks = len(args)
    if tasks == 1:
        fn(ctypes.byref(args[0]), 0, items)
        return
    if uses_openmp(fn):
        pointers = (ctypes.c_void_p * tasks)(*[ctypes.addressof(a) for a in args])
        fn.lm_runner(ctypes.cast(fn, ctypes.c_void_p), pointers, tasks, items)
        return
    bounds = [items * i // tasks for i in range(tasks + 1)]
    futures = [_pool(tasks - 1).submit(fn, ctypes.byref(args[i]), bounds[i], bounds[i + 1]) for i in range(1, tasks)]
    fn(ctypes.byref(args[0]), bounds[0], bounds[1])
    for future in futures:
        future.result()
