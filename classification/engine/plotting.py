"""Curves of a run (loss, learning rate, accuracy) drawn from its metrics.csv and lr.csv into a PNG."""
from __future__ import annotations

import csv
import os
from typing import TYPE_CHECKING, Optional, Sequence

import yaml

from ..common.csv_log import LR_CSV, LR_HEADER, METRICS_CSV, METRICS_HEADER
from ..common.plots import pyplot, save_figure
from .config import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS_COLUMNS = METRICS_HEADER[:4]  # top5 is drawn when present


def read_csv(path: str, allow_empty: bool = False) -> dict[str, list[float]]:
    """Columns of a numeric CSV file with a header row; a row with a missing or empty cell (the partial last row
    a killed run can leave) and a repeated header row (the original code wrote one at every start) are skipped, a
    cell that is not a number is refused. A file without data rows is refused unless ``allow_empty`` (then its
    columns are empty)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames or []}
            for row in reader:
                partial = None in row or any(value in (None, "") for value in row.values())
                if partial or list(row.values()) == reader.fieldnames:
                    continue
                try:
                    values = {name: float(value) for name, value in row.items()}
                except ValueError as err:
                    raise ConfigError(f"{path}, line {reader.line_num}: {err}") from None
                for name, value in values.items():
                    columns[name].append(value)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{path} is not a CSV text file ({err})") from None
    if not columns:
        raise ConfigError(f"{path} has no header row")
    if not allow_empty and not next(iter(columns.values())):
        raise ConfigError(f"{path} has no data rows")
    return columns


def _require(columns: dict, names: Sequence[str], path: str) -> None:
    """Refuse, in one line, a CSV file that lacks a column the figure needs."""
    missing = [name for name in names if name not in columns]
    if missing:
        raise ConfigError(f"{path} has no column {', '.join(missing)} (columns: {', '.join(columns)})")


def epoch_positions(epochs: Sequence[float], steps: Sequence[float], finished: Sequence[float] = ()) -> list[float]:
    """Where each lr.csv row falls on an epoch axis: epoch + (step - the epoch's first step) / (steps in the epoch).

    Every epoch's first and last iterations are logged, so the span of a finished epoch's rows is its length; it
    differs between epochs when a run was resumed with another batch size, which is why the global step cannot be the
    axis. An epoch not in `finished` (in progress) is taken to be as long as the last finished epoch before it.
    """
    first: dict[float, float] = {}
    last: dict[float, float] = {}
    for epoch, step in zip(epochs, steps):
        first.setdefault(epoch, step)
        last[epoch] = step
    length: dict[float, float] = {}
    finished_length = 0.0
    for epoch in first:
        length[epoch] = max(last[epoch] - first[epoch] + 1, 0.0 if epoch in finished else finished_length)
        if epoch in finished:
            finished_length = length[epoch]
    return [epoch + (step - first[epoch]) / length[epoch] for epoch, step in zip(epochs, steps)]


EPOCH_AXIS = "epochs trained"
FIRST_EPOCH_AXIS = "iterations (no epoch finished yet)"


def draw_run(m: dict[str, list[float]], lr: Optional[dict[str, list[float]]], ema: bool = False) -> Figure:
    """The 3-panel figure (loss, LR, top-1/top-5) of a run's metrics.csv and lr.csv columns (``lr`` may be None),
    on one axis of epochs trained: epoch e's metrics at e + 1 (its end), its learning rates from e to e + 1. `ema`:
    the validation columns are the EMA weights' (a --model-ema run), as the titles then say. Curves carry a marker,
    so a run of one epoch shows its points; a run stopped in its first epoch (no metrics rows) shows its learning
    rates against its iterations, and the other panels say that no epoch has finished."""
    fig, axes = pyplot().subplots(1, 3, figsize=(15, 4))
    ends = [epoch + 1 for epoch in m["epoch"]]
    of = " (test: the EMA weights)" if ema else ""
    axes[0].plot(ends, m["train_loss"], marker=".", label="train")
    axes[0].plot(ends, m["test_loss"], marker=".", label="test")
    axes[0].set(title="loss" + of, xlabel=EPOCH_AXIS)
    axes[0].legend()
    if lr is not None:
        # no finished epoch gives an epoch's length: the first epoch's rows are drawn at their iterations
        at, xlabel = ((epoch_positions(lr["epoch"], lr["step"], finished=m["epoch"]), EPOCH_AXIS) if ends
                      else (lr["step"], FIRST_EPOCH_AXIS))
        axes[1].plot(at, lr["lr"], marker="." if len(lr["lr"]) == 1 else None)
        axes[1].set(title="learning rate", xlabel=xlabel)
    else:
        axes[1].set(title="learning rate (no lr.csv)")
    axes[2].plot(ends, m["top1"], marker=".", label="top-1")
    if "top5" in m:
        axes[2].plot(ends, m["top5"], marker=".", label="top-5")
    axes[2].set(title="accuracy (%)" + (" of the EMA weights" if ema else ""), xlabel=EPOCH_AXIS)
    axes[2].legend()
    if not ends:
        for ax in (axes[0], axes[2]):
            ax.text(0.5, 0.5, "no epoch finished yet", ha="center", va="center", transform=ax.transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def figure_path(out: str) -> str:
    """The file matplotlib writes for `out`: `.png` is added to a name without an extension; an extension that is
    not a format matplotlib writes is refused."""
    from matplotlib.backend_bases import FigureCanvasBase

    ext = os.path.splitext(out)[1]
    if not ext:
        return out + ".png"
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if ext[1:].lower() not in formats:
        raise ConfigError(f"{out}: matplotlib cannot write {ext!r} files (formats: {', '.join(formats)})")
    return out


def _run_used_ema(folder: str) -> bool:
    """Whether the run in `folder` validated its EMA weights (`model_ema` of its args.yaml; False without one); an
    args.yaml that is no YAML text is refused in one line."""
    path = os.path.join(folder or ".", "args.yaml")
    if not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            saved = yaml.safe_load(f)
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]}): it says whether the run's "
                          f"validation columns are its EMA's; repair it or move it away") from err
    return isinstance(saved, dict) and bool(saved.get("model_ema"))


def plot_run(metrics_path: str, out: Optional[str] = None) -> str:
    """Write a 3-panel figure (loss, LR, top-1/top-5) to `out` (`figure_path`; default curves.png beside
    metrics.csv; a folder, existing or ending in `/`, gets curves.png; missing folders are created) and return its
    path. `metrics_path` is a run's metrics.csv or the run's folder. A figure that cannot be written is refused naming
    `out`."""
    if not os.path.exists(metrics_path) and not metrics_path.endswith(".csv"):   # a mistyped run folder
        raise FileNotFoundError(f"folder or file not found: {metrics_path}")
    if os.path.isdir(metrics_path):
        metrics_path = os.path.join(metrics_path, METRICS_CSV)
    out = out or os.path.dirname(metrics_path) or "."
    out = figure_path(os.path.join(out, "curves.png") if os.path.isdir(out) or out.endswith(os.sep) else out)
    if not metrics_path.endswith(".csv"):
        raise ConfigError(f"{metrics_path} is not a run's {METRICS_CSV}: give the run's folder or its {METRICS_CSV}")
    m = read_csv(metrics_path, allow_empty=True)
    _require(m, METRICS_COLUMNS, metrics_path)
    lr_path = os.path.join(os.path.dirname(metrics_path), LR_CSV)
    lr = read_csv(lr_path, allow_empty=True) if os.path.isfile(lr_path) else None
    if lr is not None:
        _require(lr, LR_HEADER, lr_path)
    if not m["epoch"] and not (lr and lr["lr"]):
        beside = (f"no {LR_CSV} is beside it" if lr is None else
                  f"its {LR_CSV} has none either (the run stopped before its first step)")
        raise ConfigError(f"{metrics_path} has no data rows (no epoch has finished) and {beside}: nothing to draw yet")
    fig = draw_run(m, lr, ema=_run_used_ema(os.path.dirname(metrics_path)))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    try:
        save_figure(fig, out, dpi=100)
    except OSError as err:   # named by the figure's path, not by the temporary file the write goes through
        raise ConfigError(f"cannot write {out}: {err.strerror or err}") from err
    finally:
        pyplot().close(fig)
    return out
