"""Append-only CSV files of a run (metrics.csv, lr.csv, search_probs.csv) that a resumed run rewinds exactly."""
from __future__ import annotations

import csv
import io
import os
from typing import Optional, Sequence

from .checkpoint_io import TMP_PREFIX

# The CSV files of a run folder, and the headers of the two the training loop writes.
METRICS_CSV, LR_CSV, SEARCH_PROBS_CSV = "metrics.csv", "lr.csv", "search_probs.csv"
RUN_CSV_FILES = (METRICS_CSV, LR_CSV, SEARCH_PROBS_CSV)
METRICS_HEADER = ("epoch", "train_loss", "test_loss", "top1", "top5")
LR_HEADER = ("epoch", "step", "lr")


def _complete_rows(rows: list[list[str]], header: Sequence[str]) -> list[list[str]]:
    """The rows of a CSV file read as `rows` (its first one the header line), less that first one, that have as many
    fields as `header`: a killed write leaves a partial last row."""
    return [row for row in rows[1:] if len(row) == len(header)]


class CsvLog:
    """A CSV file with a fixed header whose rows start with the epoch; `truncate_from` drops the rows a resumed run
    writes again.

    Each row goes to the file in one write, so a killed process leaves at most one partial last row, which
    `truncate_from` drops as well.
    """

    def __init__(self, path: str, header: Sequence[str], enabled: bool = True):
        self.path, self.header, self.enabled = path, list(header), enabled
        if enabled and (not os.path.exists(path) or os.path.getsize(path) == 0):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._write_rows([self.header], "w")

    def _write_rows(self, rows: list[list], mode: str) -> None:
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        with open(self.path, mode, newline="") as f:
            f.write(text.getvalue())

    def append(self, row: Sequence) -> None:
        if self.enabled:
            self._write_rows([list(row)], "a")

    def truncate_from(self, epoch: int, step: Optional[int] = None) -> None:
        """Keep only complete rows of epochs before `epoch`; with `step` (a run resumed in the middle of `epoch`), also
        the rows of `epoch` whose second column (lr.csv's iteration) is below `step`."""
        if not self.enabled:
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        complete = [r for r in _complete_rows(rows, self.header) if r[0].isdigit()]
        kept = [self.header] + [r for r in complete if int(r[0]) < epoch or (
            step is not None and int(r[0]) == epoch and r[1].isdigit() and int(r[1]) < step)]
        folder, name = os.path.split(self.path)
        tmp = os.path.join(folder, TMP_PREFIX + name)
        text = io.StringIO()
        csv.writer(text).writerows(kept)
        with open(tmp, "w", newline="") as f:
            f.write(text.getvalue())
        os.replace(tmp, self.path)


def epoch_scores(path: str, column: str = "top1") -> dict[int, float]:
    """`column` of each epoch's row of a metrics.csv (the last row of an epoch written twice), skipping what is no
    complete data row: a repeated header (the original code wrote one at every start), a partial last row. Empty when
    the file does not exist or has no such column."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0] if rows else []
    if "epoch" not in header or column not in header:
        return {}
    epoch_at, value_at = header.index("epoch"), header.index(column)
    scores = {}
    for row in _complete_rows(rows, header):
        try:
            scores[int(row[epoch_at])] = float(row[value_at])
        except ValueError:
            continue
    return scores
