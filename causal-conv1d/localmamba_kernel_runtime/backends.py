"""Per-call backend selection shared by ``localmamba_conv1d`` and ``localmamba_ssm``.

Every op registers the backends it implements, each with a check that says whether it can run on a device (and, at
call time, on the given inputs). ``select`` picks the first usable backend in the order ``cuda`` (the official
``mamba_ssm`` / ``causal_conv1d`` packages) -> ``triton`` (our kernels) -> ``cpu`` (our optimized CPU path) ->
``composed`` -> ``reference`` (plain PyTorch). ``composed`` is not a kernel: an op registers it when it can run as a
composition of other dispatching ops (which then choose their own backends), and the log says so.

``LOCALMAMBA_BACKEND`` (``auto``, one of the kernel backends ``cuda``, ``triton``, ``cpu``, ``reference``, or
``composed``: the fused multi-direction ops as compositions whose parts choose automatically) forces a backend; it
is read once, at the first choice, and can be changed afterwards only through :func:`force_backend` /
:func:`forced_backend` (what tests and tools that time each backend in turn use). A forced backend that an op
implements but cannot run on the given inputs raises :class:`BackendUnavailableError`, which names what forced it
(the variable, or a call of :func:`force_backend`) and why it cannot run; a forced backend that an op
does not implement makes the op use its ``composed`` path, so that the forced backend reaches the ops it is composed
of, or else its automatic choice. During an ONNX export every op runs its ``reference`` (the kernels' custom ops have
no ONNX form), whatever is forced. The choice is logged once per (op, backend, device type) on the ``localmamba``
logger.

Nothing here imports triton or the official packages at import time.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import threading
from types import ModuleType
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch

ENV_VAR = "LOCALMAMBA_BACKEND"
COMPOSED = "composed"
REFERENCE = "reference"
KERNEL_BACKENDS: Tuple[str, ...] = ("cuda", "triton", "cpu", REFERENCE)
BACKENDS: Tuple[str, ...] = ("cuda", "triton", "cpu", COMPOSED, REFERENCE)  # automatic-selection order
CHOICES: Tuple[str, ...] = ("auto",) + KERNEL_BACKENDS + (COMPOSED,)

logger = logging.getLogger("localmamba")

# A check returns None when the backend can run, otherwise a short reason why not.
Check = Callable[[torch.device, bool], Optional[str]]

_REGISTRY: Dict[str, Dict[str, Check]] = {}
_LOGGED: set = set()
_LOCK = threading.Lock()
_MODULES: Dict[str, Optional[ModuleType]] = {}  # import name -> module, or None when it cannot be imported
_IMPORT_ERRORS: Dict[str, str] = {}  # import name -> why an installed module failed to import (absent ones: none)
_TRITON: Dict[str, bool] = {}  # "installed": whether the triton package is (`_find_triton`)
# "choice" -> the requested backend, once read or forced; "source" -> what forced it, as error messages name it
_REQUESTED: Dict[str, str] = {}
FORCED_IN_PYTHON = "forced in Python by force_backend() or forced_backend()"
# why the official CUDA kernels are passed over for an empty input: they launch a (batch, dim) grid, 0 blocks of it
OFFICIAL_EMPTY_GRID = "the official kernel cannot launch an empty grid (0 batch elements or channels)"


class BackendUnavailableError(RuntimeError):
    """Raised when ``LOCALMAMBA_BACKEND`` forces a backend that cannot run the given inputs."""


class BackendChoiceError(ValueError):
    """``LOCALMAMBA_BACKEND`` (or a forced value) names no backend."""


def _parse_choice(value: str, source: str) -> str:
    value = value.strip().lower() or "auto"
    if value not in CHOICES:
        raise BackendChoiceError(f"{source}={value!r} is not a valid backend; valid values are: {', '.join(CHOICES)}")
    return value


def _environment_choice() -> str:
    """``LOCALMAMBA_BACKEND`` as set now: a constant to dynamo, which then need not trace ``os.environ`` (torch 2.4's
    cannot) where the first choice happens inside a compiled function."""
    return os.environ.get(ENV_VAR, "auto")


# What torch.compiler.assume_constant_result(fn) sets; calling it here would import dynamo (and triton) at import.
_environment_choice._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _functorch_transforms_active() -> bool:
    """Whether a ``torch.func`` transform is running: a constant to dynamo as well (torch 2.4's breaks the graph at
    this call, so a compiled model ran in pieces)."""
    return torch._C._are_functorch_transforms_active()


_functorch_transforms_active._dynamo_marked_constant = True  # type: ignore[attr-defined]


def requested_backend() -> str:
    """The forced backend (``auto`` when none): ``LOCALMAMBA_BACKEND`` as read at the first choice, or the value
    given to :func:`force_backend` since; unknown values are refused."""
    if "choice" not in _REQUESTED:
        choice = _parse_choice(_environment_choice(), ENV_VAR)
        _REQUESTED["choice"], _REQUESTED["source"] = choice, f"{ENV_VAR}={choice}"  # no update(): torch 2.4's dynamo
    return _REQUESTED["choice"]


def force_backend(name: Optional[str]) -> None:
    """Force backend ``name`` (``auto``: the automatic choice) for every op from now on; None forgets the forced
    value, so that the next choice reads ``LOCALMAMBA_BACKEND`` again."""
    if name is None:
        _REQUESTED.clear()
    else:
        choice = _parse_choice(name, "forced backend")
        _REQUESTED.update(choice=choice, source=f"backend {choice!r} ({FORCED_IN_PYTHON})")


@contextlib.contextmanager
def restoring_choice() -> Iterator[None]:
    """Put the forced backend (and what forced it) back as it was on exit (for tools that force each backend in
    turn)."""
    previous = dict(_REQUESTED)
    try:
        yield
    finally:
        _REQUESTED.clear()
        _REQUESTED.update(previous)


@contextlib.contextmanager
def forced_backend(name: str) -> Iterator[None]:
    """Force backend ``name`` inside the block, then restore the previous choice."""
    with restoring_choice():
        force_backend(name)
        yield


def register(op: str, backend: str, check: Check) -> None:
    """Declare that ``op`` implements ``backend``; ``check(device, forced)`` says whether it can run."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends are: {', '.join(BACKENDS)}")
    _REGISTRY.setdefault(op, {})[backend] = check


def register_kernel_backends(op: str, official_module: str, cpu: bool = True) -> None:
    """Register the usual backends of a kernel op: ``cuda`` (the official ``official_module``), ``triton``,
    ``cpu`` (unless ``cpu=False``) and ``reference``."""
    register(op, "cuda", check_official(official_module))
    register(op, "triton", check_triton)
    if cpu:
        register(op, "cpu", check_cpu)
    register(op, REFERENCE, check_any)


def implemented_backends(op: str) -> Tuple[str, ...]:
    """Backends that ``op`` implements, in automatic-selection order."""
    return tuple(b for b in BACKENDS if b in _table(op))


def available_backends(op: str, device: Union[None, str, torch.device] = None) -> Tuple[str, ...]:
    """Backends of ``op`` that can run on ``device`` right now, in automatic-selection order."""
    device = _as_device(device)
    return tuple(b for b in implemented_backends(op) if _REGISTRY[op][b](device, False) is None)


def _table(op: str) -> Dict[str, Check]:
    table = _REGISTRY.get(op)
    if table is None:
        raise KeyError(f"unknown op {op!r}; registered ops: {', '.join(sorted(_REGISTRY))}")
    return table


def _as_device(device: Union[None, str, torch.device]) -> torch.device:
    if device is None:
        return torch.device("cpu")
    return torch.device(device)


def select(op: str, device: Union[None, str, torch.device],
           input_check: Optional[Callable[[str], Optional[str]]] = None, log: bool = True) -> str:
    """Choose the backend for one call of ``op`` on ``device`` (automatically, the first of ``BACKENDS`` that can
    run it; during an ONNX export or under a ``torch.func`` transform, the reference, whose plain ops export and
    transform, even where a backend is forced: custom ops have neither an ONNX form nor ``torch.func.grad``). The choice
    is logged once, naming the first backend passed over for these inputs rather than for the device, and why.

    ``input_check(backend)`` may add input-specific constraints (dtype, sizes); it returns None or a reason.
    """
    device = _as_device(device)
    requested = requested_backend()
    table = _table(op)

    def reason_against(backend: str, forced: bool) -> Optional[str]:
        reason = table[backend](device, forced)
        if reason is None and input_check is not None:
            reason = input_check(backend)
        return reason

    if REFERENCE in table and torch.onnx.is_in_onnx_export():
        chosen, how = REFERENCE, "ONNX export records plain PyTorch ops only, whatever backend is forced"
    elif REFERENCE in table and _functorch_transforms_active():
        chosen, how = REFERENCE, "torch.func transforms (grad, vmap, jvp) take plain PyTorch ops, whatever is forced"
    elif requested != "auto" and requested in table:
        reason = reason_against(requested, True)
        if reason is not None:
            raise BackendUnavailableError(
                f"{_REQUESTED['source']} cannot run op '{op}' on {device.type} inputs: {reason}")
        chosen, how = requested, "forced"
    elif requested != "auto" and COMPOSED in table and reason_against(COMPOSED, False) is None:
        chosen, how = COMPOSED, f"op has no '{requested}' backend; its parts run the forced one"
    else:
        chosen, passed_over = None, ""  # the first usable backend (a loop: torch 2.4's dynamo cannot trace next(it, d))
        for backend in BACKENDS:
            if backend not in table or table[backend](device, False) is not None:
                continue
            reason = input_check(backend) if input_check is not None else None
            if reason is None:
                chosen = backend
                break
            passed_over = passed_over or f"; not '{backend}': {reason}"  # it runs on the device, not these inputs
        if chosen is None:
            raise BackendUnavailableError(f"no backend of op '{op}' can run on {device.type} inputs")
        how = ("auto" if requested == "auto" else f"auto; op has no '{requested}' backend") + passed_over
    if log:
        _log_once(op, chosen, device, how)
    return chosen


def selected_backend(op: str, device: Union[None, str, torch.device] = None) -> str:
    """Backend that ``op`` would use for inputs on ``device`` (for logging at model build; logs nothing)."""
    return select(op, device, log=False)


def _log_once(op: str, backend: str, device: torch.device, how: str) -> None:
    key = (op, backend, device.type)
    if key in _LOGGED or torch.compiler.is_compiling():
        return
    with _LOCK:
        if key in _LOGGED:
            return
        _LOGGED.add(key)
    logger.info("op '%s' on %s uses backend '%s' (%s)", op, device.type, backend, how)


def optional_module(name: str) -> Optional[ModuleType]:
    """Import ``name`` if possible (cached); return None when it or one of its dependencies is missing. A module that
    is installed but fails to import (a CUDA build against another torch...) counts as absent too, with a warning
    the first time that names the error (`import_error` gives it later)."""
    if name not in _MODULES:
        try:
            _MODULES[name] = importlib.import_module(name)
        except Exception as err:
            _MODULES[name] = None
            if not _is_absent(name, err):
                _IMPORT_ERRORS[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                logger.warning("%s is installed but cannot be imported (%s): its kernels are not used",
                               name, _IMPORT_ERRORS[name])
    return _MODULES[name]


def _is_absent(name: str, err: Exception) -> bool:
    """True when `err`, raised importing `name`, says that `name` (or a package above it) is not installed, rather
    than that an installed module failed."""
    if not isinstance(err, ModuleNotFoundError):
        return False
    parts = name.split(".")
    return err.name is None or err.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_error(name: str) -> Optional[str]:
    """Why the installed module ``name`` failed to import in `optional_module` (None when it imported or is absent)."""
    return _IMPORT_ERRORS.get(name)


def _find_triton() -> None:
    """Look for the ``triton`` package (without importing it), once at import and at `reset_caches`: never inside a
    compiled model, where torch 2.11's dynamo cannot trace ``importlib.util.find_spec`` and breaks the graph."""
    _TRITON["installed"] = importlib.util.find_spec("triton") is not None


_find_triton()


def triton_importable() -> bool:
    """True when the ``triton`` package is installed (it is not imported here). Kept in a plain dict: dynamo warns
    about every ``functools`` cache it meets while compiling a model."""
    return _TRITON["installed"]


def triton_interpreter() -> bool:
    """True when ``TRITON_INTERPRET`` turns Triton's interpreter on (1, true, yes, on or y, any case, as Triton >= 3.3
    reads it): Triton kernels then run on CPU tensors (slowly; for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")


def reset_caches() -> None:
    """Forget cached imports, logged choices and the forced backend (for tests that install fake packages or set
    ``LOCALMAMBA_BACKEND``)."""
    _MODULES.clear()
    _IMPORT_ERRORS.clear()
    _find_triton()
    _LOGGED.clear()
    _REQUESTED.clear()


def official_module(module_names: Sequence[str], attribute: Optional[str] = None) -> Optional[ModuleType]:
    """The first of ``module_names`` that imports (and has ``attribute`` when given: official packages moved their
    ops between versions), or None."""
    for name in module_names:
        module = optional_module(name)
        if module is not None and (attribute is None or hasattr(module, attribute)):
            return module
    return None


def check_official(module_names: Union[str, Sequence[str]], attribute: Optional[str] = None) -> Check:
    """Check for the ``cuda`` backend: CUDA inputs and one of the official modules ``module_names`` importable (and
    holding ``attribute`` when given); the reason names the import error of an installed but broken one."""
    names = (module_names,) if isinstance(module_names, str) else tuple(module_names)

    def check(device: torch.device, forced: bool) -> Optional[str]:
        if device.type != "cuda":
            return "the official kernels need CUDA tensors"
        if official_module(names, attribute) is not None:
            return None
        errors = [f"{name}: {import_error(name)}" for name in names if import_error(name) is not None]
        return f"cannot import {' or '.join(names)}" + (f" ({'; '.join(errors)})" if errors else "")

    return check


def check_triton(device: torch.device, forced: bool) -> Optional[str]:
    """Check for the ``triton`` backend: CUDA inputs (or CPU inputs under the interpreter when forced)."""
    if not triton_importable():
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if forced and device.type == "cpu" and triton_interpreter():
        return None
    return "triton kernels need CUDA tensors (or TRITON_INTERPRET=1 with CPU tensors)"


def check_cpu(device: torch.device, forced: bool) -> Optional[str]:
    """Check for the ``cpu`` backend: CPU inputs."""
    return None if device.type == "cpu" else "the cpu backend runs CPU tensors only"


def check_any(device: torch.device, forced: bool) -> Optional[str]:
    """Check for the ``reference`` backend: runs everywhere."""
    return None
