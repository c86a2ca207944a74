"""Text tables and CSV files of benchmark rows."""
from __future__ import annotations

import csv
import io
import os
from typing import Dict, List, Optional, Sequence

from ..common.checkpoint_io import atomic_write_text


def render_table(lines: Sequence[Sequence[str]]) -> str:
    """Header line plus rows as aligned text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_csv(path: str, rows: List[Dict[str, object]]) -> None:
    """Rows (dicts with the same keys) as a CSV file with a header line, written through a temporary file and a
    rename: an interrupted or failed write leaves the file as it was, not half written."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


REPLACED = " (replaced the earlier file there)"  # after the line that names an output file a run replaced


def output_file_problem(flag: str, path: str) -> Optional[str]:
    """Why ``path``, given by option ``flag``, cannot be written (its folder missing, a folder itself, no
    permission: on the file, or on its folder, where it is written beside itself and renamed), as one line; ``None``
    when it can."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"{flag} {path}: its folder does not exist"
    if os.path.isdir(path):
        return f"{flag} {path}: is a folder, not a file"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"{flag} {path}: not writable"
    return None
