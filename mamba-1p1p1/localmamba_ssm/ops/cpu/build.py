"""Compile the CPU scan kernel on first use and load it with ctypes.

The shared library goes to a per-user cache directory (``LOCALMAMBA_CACHE_DIR``, else ``$XDG_CACHE_HOME/localmamba``,
else ``~/.cache/localmamba``) under a name hashed from the source, compiler and flags; it is written to a temporary
file and renamed into place, so concurrent processes are safe. Set ``LOCALMAMBA_CPU_KERNEL=0`` to disable the kernel
(the cpu backend then uses its PyTorch implementation). Building needs only a C compiler (``$CC``, ``cc``, ``gcc`` or
``clang``), no torch headers.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import List, Optional

from .kernel_source import SOURCE

logger = logging.getLogger("localmamba")

DISABLE_VAR = "LOCALMAMBA_CPU_KERNEL"
_LOCK = threading.Lock()
_STATE = {"tried": False, "lib": None}


class ScanArgs(ctypes.Structure):
    """Mirror of the C ``ScanArgs`` struct (see ``kernel_source.py``)."""

    _fields_ = ([(name, ctypes.c_long) for name in
                 ("batch", "dim", "seqlen", "nstate", "groups_b", "groups_c", "softplus")]
                + [(name, ctypes.c_void_p) for name in
                   ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "out", "last_state", "dout", "dlast", "du",
                    "ddelta", "dz", "dA", "dB", "dC", "dD", "ddelta_bias")])


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


def _cache_dir() -> Path:
    if os.environ.get("LOCALMAMBA_CACHE_DIR"):
        return Path(os.environ["LOCALMAMBA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "localmamba"


def kernel_enabled() -> bool:
    """False when ``LOCALMAMBA_CPU_KERNEL`` is set to 0 / false / off."""
    return os.environ.get(DISABLE_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


def _build(cc: str, flags: List[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_src = tempfile.mkstemp(suffix=".c", dir=target.parent)
    tmp_lib = tmp_src[:-2] + ".so"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(SOURCE)
        subprocess.run([cc, *flags, tmp_src, "-o", tmp_lib], check=True, capture_output=True, text=True,
                       timeout=120)
        os.replace(tmp_lib, target)
    finally:
        for leftover in (tmp_src, tmp_lib):
            if os.path.exists(leftover):
                os.remove(leftover)


def load_kernel() -> Optional[ctypes.CDLL]:
    """The compiled kernel library, building it if needed; None when disabled or no compiler works."""
    if not kernel_enabled():
        return None
    if _STATE["tried"]:
        return _STATE["lib"]
    with _LOCK:
        if not _STATE["tried"]:
            _STATE["lib"] = _load()
            _STATE["tried"] = True
    return _STATE["lib"]


def _load() -> Optional[ctypes.CDLL]:
    cc = _compiler()
    if cc is None:
        logger.warning("no C compiler found: the cpu backend uses its (slower) PyTorch implementation")
        return None
    flags = ["-O3", "-std=c11", "-ffp-contract=fast", "-shared", "-fPIC", *_arch_flags()]
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    key = hashlib.sha256("\0".join([SOURCE, cc, version, *flags, platform.machine()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"selective_scan_{key}.so"
    try:
        if not target.exists():
            try:
                _build(cc, flags, target)
            except PermissionError:
                user = getattr(os, "getuid", lambda: "user")()
                target = Path(tempfile.gettempdir()) / f"localmamba-{user}" / target.name
                if not target.exists():
                    _build(cc, flags, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        logger.warning("building the CPU scan kernel failed (%s); using the PyTorch implementation", detail.strip())
        return None
    for name in ("scan_fwd", "scan_bwd"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.POINTER(ScanArgs), ctypes.c_long, ctypes.c_long]
        fn.restype = None
    return lib


def reset() -> None:
    """Forget the loaded kernel so that the next call re-reads the environment (for tests)."""
    with _LOCK:
        _STATE["tried"] = False
        _STATE["lib"] = None
