"""matplotlib for the figures the tools write to files (run curves, search heat maps, the README's assets)."""
from __future__ import annotations

import io
import os
from types import ModuleType
from typing import TYPE_CHECKING

from .checkpoint_io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: str, dpi: int) -> None:
    """``fig.savefig(path, dpi=dpi)`` (the format of ``path``'s extension) through a temporary file and a rename: an
    interrupted or failed write leaves the previous figure, not a half-written one."""
    image = io.BytesIO()
    fig.savefig(image, format=os.path.splitext(path)[1][1:].lower() or None, dpi=dpi)
    atomic_write_bytes(path, image.getvalue())
