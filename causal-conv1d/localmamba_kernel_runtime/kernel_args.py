"""Kernel argument structs: each kernel takes its arguments as one struct, declared in C with ``DECLARE_KERNEL_ARGS``
(``csrc/kernel_args.h``) and mirrored by a ``ctypes.Structure`` of the same name. When a library loads
(:func:`.ckernel.load_library`), the mirror's size and every field's name, offset and size are compared with the
layout the library reports, and a mismatch raises :class:`KernelArgsMismatchError`.
"""
from __future__ import annotations

import ctypes
from typing import List, Optional, Tuple, Type

import torch


class KernelArgsMismatchError(RuntimeError):
    """A ctypes mirror of a kernel argument struct does not match the struct the C library was built with."""


def data_ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    """A tensor's data address for a kernel argument; None (a NULL pointer) for a missing tensor."""
    return None if t is None else t.data_ptr()


def args_layout(lib: ctypes.CDLL, struct_name: str) -> Tuple[int, List[Tuple[str, int, int]]]:
    """(size, [(field name, offset, size), ...]) of the C struct ``struct_name`` as ``lib`` was built."""
    count = getattr(lib, f"{struct_name}_fields")
    count.restype = ctypes.c_int64
    layout = getattr(lib, f"{struct_name}_layout")
    layout.restype = ctypes.c_int64
    names = ctypes.POINTER(ctypes.c_char_p)()
    offsets, sizes = ctypes.POINTER(ctypes.c_int64)(), ctypes.POINTER(ctypes.c_int64)()
    size = layout(ctypes.byref(names), ctypes.byref(offsets), ctypes.byref(sizes))
    return size, [(names[i].decode(), offsets[i], sizes[i]) for i in range(count())]


def check_args_layout(lib: ctypes.CDLL, struct: Type[ctypes.Structure]) -> None:
    """Raise :class:`KernelArgsMismatchError` unless the ctypes ``struct`` has the layout of the C struct of the same
    name in ``lib``: the same size, and the same fields in the same order at the same offsets with the same sizes."""
    c_size, c_fields = args_layout(lib, struct.__name__)
    py_fields = [(name, getattr(struct, name).offset, getattr(struct, name).size) for name, *_ in struct._fields_]
    if c_size == ctypes.sizeof(struct) and c_fields == py_fields:
        return
    for i, (c_field, py_field) in enumerate(zip(c_fields, py_fields)):
        if c_field != py_field:
            difference = f"field {i} is {c_field} in C but {py_field} in Python (name, offset, size)"
            break
    else:
        difference = (f"C has {len(c_fields)} fields and {c_size} bytes, the mirror {len(py_fields)} fields and "
                      f"{ctypes.sizeof(struct)} bytes")
    raise KernelArgsMismatchError(f"the ctypes mirror of {struct.__name__} does not match the C struct: {difference}")
