"""Text tables and CSV files of benchmark rows."""
from __future__ import annotations

import csv
from typing import Dict, List, Sequence


def render_table(lines: Sequence[Sequence[str]]) -> str:
    """Header line plus rows as aligned text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_csv(path: str, rows: List[Dict[str, object]]) -> None:
    """Rows (dicts with the same keys) as a CSV file with a header line."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
