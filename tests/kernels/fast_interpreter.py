"""The Triton interpreter made faster for the interpreter tests, with the same results.

- ``tl.associative_scan``: the interpreter calls a user combine function once per element: a (16, 8, 16) tile is
  2048 Python calls of it per scan, where our scan kernels spent nearly all their interpreted time. The combine
  function is elementwise, so the same scan can call it once per position along the scanned axis on the whole slice
  across the other axes: the same operations on every element in the same order, each partial result rounded to the
  input's dtype as the interpreter stores it, so bit for bit the same values (fast_interpreter_checks.py compares).
- Each call of a ``@triton.jit`` device function inside a kernel (ours, or triton's own ``tl.zeros``, ``tl.sum``)
  patched the ``triton.language`` namespaces for the interpreter again: thousands of times per launch, a third of
  the time left. They are patched once per launch instead, ``triton.language`` and ``triton.language.core`` both.
- The int32 overflow check of every integer add, subtract and multiply (a third of the rest): the tests' shapes are
  tiny, so no index comes near 2^31 and the check cannot fire.

One check is added, not removed (:func:`require_boolean_masks`): a load or store whose mask holds other data than
booleans is refused, as triton 3.9's interpreter refuses it. Up to 3.8 the interpreter labels a comparison of scalars
with its operands' type, so a tensor mask and-ed with one (``dmask & (k < width)``, ``width`` a runtime argument) held
int32 data, which 3.8 took and 3.9 refuses ("mask has unsupported dtype"): with the check the kernels stay runnable
under both.
"""
import dataclasses
import importlib

import numpy as np
import triton.language as tl
from triton.language import core
from triton.runtime import interpreter


def _scan_slice_by_slice(self, inputs):
    """``ScanOps.generic_scan`` with one combine call per position along ``self.axis`` (the reversal, if any, is
    done by the caller, as for the method this replaces)."""
    dtypes = [arg.dtype for arg in inputs]
    data = [np.moveaxis(arg.handle.data, self.axis, 0) for arg in inputs]
    outputs = [np.empty_like(d) for d in data]
    for position in range(len(data[0])):
        current = [d[position] for d in data]
        if position > 0:
            accumulated = [self.to_tensor(o[position - 1], t) for o, t in zip(outputs, dtypes)]
            combined = self.combine_fn.fn(*accumulated, *(self.to_tensor(c, t) for c, t in zip(current, dtypes)))
            combined = combined if isinstance(combined, tuple) else (combined,)
            current = [c.handle.data if hasattr(c, "handle") else c for c in combined]
        for output, value in zip(outputs, current):
            row = output[position:position + 1]
            row[...] = np.reshape(value, row.shape) if np.size(value) == row.size else value
    return [self.to_tensor(np.moveaxis(o, 0, self.axis), t) for o, t in zip(outputs, dtypes)]


def _sees_both_languages():
    """A function whose globals hold both language modules, for ``interpreter._patch_lang`` to patch both."""
    return tl, core


_LAUNCH = interpreter.GridExecutor.__call__


def _launch_with_languages_patched(self, *args, **kwargs):
    """``GridExecutor.__call__`` (a kernel launch) inside one patch of both language modules."""
    scope = interpreter._patch_lang(_sees_both_languages)
    try:
        return _LAUNCH(self, *args, **kwargs)
    finally:
        scope.restore()


def _import_gluon_unpatched() -> None:
    """Import ``triton.experimental.gluon`` now if this triton has it. Triton imports it on the first kernel launch,
    while converting the arguments, inside the launch's patch; gluon reads ``triton.language.core.static_print``,
    which our patch (unlike triton's, which leaves ``core`` alone) has replaced by the builtin ``print``, and Python
    3.10's ``inspect`` cannot read print's signature: every interpreted kernel failed with ``no signature found for
    builtin``."""
    try:
        importlib.import_module("triton.experimental.gluon")
    except ImportError:
        pass


def _call_device_function(self, *args, **kwargs):
    """``InterpretedFunction.__call__`` (a device function called by a kernel) without patching the languages: the
    launch has."""
    try:
        return self.rewrite()(*args, **kwargs)
    except Exception as e:
        raise interpreter.InterpreterError(repr(e)) from e


class MaskDataError(ValueError):
    """A load or store under the interpreter got a mask whose data is not boolean."""


def _with_boolean_mask(method, mask_position: int):
    """``method`` of the interpreter's builder (a masked load or store) that first refuses a mask (its positional
    argument ``mask_position``) holding other data than booleans."""
    def checked(self, *args, **kwargs):
        mask = args[mask_position]
        if mask.data.dtype != np.bool_:
            raise MaskDataError(f"{method.__name__}: the mask holds {mask.data.dtype} data, not booleans (triton 3.9's "
                                f"interpreter refuses it): build it from tensor comparisons only")
        return method(self, *args, **kwargs)
    checked.checks_masks = True
    return checked


def require_boolean_masks() -> None:
    """Make every masked load and store of the interpreter refuse a mask that is not boolean data (see the module
    docstring), in every triton version; once is enough."""
    builder = type(interpreter.interpreter_builder)
    for name, mask_position in (("create_masked_load", 1), ("create_masked_store", 2)):
        method = getattr(builder, name, None)
        if method is not None and not getattr(method, "checks_masks", False):
            setattr(builder, name, _with_boolean_mask(method, mask_position))


def fast_interpreter_supported() -> bool:
    """True when this triton's interpreter has what is replaced here: language patches that can be undone, the
    device functions' ``rewrite`` and the overflow check's option (3.6 and 3.8 have; 3.0 to 3.2 do not)."""
    options = interpreter.interpreter_builder.options
    return (hasattr(interpreter, "_LangPatchScope") and hasattr(interpreter.InterpretedFunction, "rewrite")
            and dataclasses.is_dataclass(options)
            and "sanitize_overflow" in {field.name for field in dataclasses.fields(options)})


def use_fast_interpreter() -> bool:
    """Scan slice by slice, patch the language once per launch and skip the int32 overflow check (see the module
    docstring); call before any kernel runs. False, with the interpreter left as it is (the same results, slower),
    where :func:`fast_interpreter_supported` is not. Masks are checked in either case (:func:`require_boolean_masks`).
    """
    require_boolean_masks()
    if not fast_interpreter_supported():
        return False
    _import_gluon_unpatched()
    interpreter.ScanOps.generic_scan = _scan_slice_by_slice
    interpreter.GridExecutor.__call__ = _launch_with_languages_patched
    interpreter.InterpretedFunction.__call__ = _call_device_function
    builder = interpreter.interpreter_builder
    builder.options = dataclasses.replace(builder.options, sanitize_overflow=False)
    return True
