"""The kernels' environment variables checked in one call, so that a tool can refuse a bad value before it starts."""
from __future__ import annotations

from typing import Union

import torch

from . import backends, ckernel

# What a bad LOCALMAMBA_BACKEND / LOCALMAMBA_CPU_ISA / LOCALMAMBA_CPU_KERNEL / CC raises, here or at an op's first
# call (the forced backend's inability to run an op is known only then, and so is a C kernel that does not build
# under LOCALMAMBA_CPU_KERNEL=require, whose error carries the compiler's output).
SETTING_ERRORS = (backends.BackendChoiceError, backends.BackendUnavailableError, ckernel.UnsupportedISAError,
                  ckernel.KernelSettingError, ckernel.KernelBuildError)


def check_settings(device: Union[str, torch.device]) -> None:
    """Raise :class:`backends.BackendChoiceError` for a ``LOCALMAMBA_BACKEND`` that names no backend,
    :class:`ckernel.KernelSettingError` for a ``LOCALMAMBA_CPU_KERNEL`` that is neither on nor off, and, for ops on a
    CPU ``device`` with the C kernels enabled, :class:`ckernel.UnsupportedISAError` for a ``LOCALMAMBA_CPU_ISA`` this
    CPU cannot run and :class:`ckernel.KernelSettingError` for a ``$CC`` that names no executable; nothing is
    built."""
    backends.requested_backend()
    if ckernel.kernels_enabled() and torch.device(device).type == "cpu":
        ckernel.selected_isa()
        ckernel.compiler()
