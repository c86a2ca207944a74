"""The README's GPU figures from the logs of ``gpu_check --e2e`` (``python tools/gpu_check.py --report LOG ...``).

Issue 12's targets come first, each with the measured figure and whether it holds: the model throughput ratios
against timm's baselines (``tools/benchmark.py`` tables, fp32 and bf16) and the Triton selective scan at
8x384x196x16 fp32 (the op table of the kernel check, per call and per CUDA-graph replay). Then the same ratio
tables, the fused mixer ops' timings, the peak memory and the resolution sweep as Markdown, and the training speed
of ``tools/dist_train.sh 1``.
A run split over several logs (``--only``) is read as one: where a step is in more than one log, the last log wins.
The logs must be of one device (their header lines name it): a CPU's ratios are not judged against a GPU's targets,
nor two GPUs' figures put in one table. Logs of one device but of different torch versions are reported together
with a note naming which steps came from which version. The targets are for an H100 / H200: logs of a CPU run (a
rehearsal) get their figures without verdicts. A verdict is on the figure as the log printed it (a ratio to 3
decimals, milliseconds to 3): a figure printed exactly at its target is said to meet it as printed, the unrounded one
may be just on the other side.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .mixer_ops import MIXER_BATCHES, MIXER_HEADER

SECTION = re.compile(r"^===== (?P<name>[^:]+?)(?:: .*)?$")
RATIO_ROW = re.compile(r"^(?P<metric>inference b\d+|train step b\d+)\s+(?P<ours>[\d.]+)\s+(?P<base>[\d.]+)\s+"
                       r"(?P<ratio>[\d.]+)x\s*$")
THROUGHPUT = re.compile(r"^throughput (?P<model>\S+) (?P<dtype>fp32|bf16|fp16)(?P<compiled> --compile \S+)?$")
SCAN_SHAPE = "dtype=fp32 batch=8 dim=384 seqlen=196 dstate=16"
E2E_HEADER = re.compile(r"^gpu_check --e2e  (?P<date>.*?)  device (?P<device>.+?)  torch (?P<torch>\S+)",
                        re.M)  # the log's first line, again in its summary
MEMORY_HEADER = re.compile(r"^model\s{2,}dtype\s{2,}inference b\d+ peak MiB\s{2,}train step b\d+ peak MiB\s*$")
SWEEP_TITLE = re.compile(r"^resolution sweep, (?P<model>\S+) against (?P<baseline>\S+): inference at batch "
                         r"(?P<batch>\d+), (?P<dtype>\w+), (?P<device>\w+)")


@dataclass(frozen=True)
class Target:
    """A throughput target: ``model``'s img/s over its baseline's at ``metric`` (a row of the ratio table)."""

    model: str
    metric: str
    minimum: float


TARGETS = (Target("local_vssm_tiny", "inference b64", 0.6), Target("local_vssm_tiny", "train step b64", 0.3),
           Target("local_vssm_tiny", "inference b1", 0.5), Target("local_vim_tiny", "inference b64", 0.3),
           Target("local_vim_tiny", "train step b64", 0.25), Target("local_vim_tiny", "inference b1", 0.5))
SCAN_LIMITS_MS = (("fwd", 0.1), ("fwd+bwd", 0.4))
UNNAMED_DEVICE = "no device named"


def log_devices(text: str) -> List[str]:
    """The devices an e2e log names in its header lines ('cpu', 'NVIDIA H200'; the summary repeats the header, and
    logs joined into one file bring one header each), each once, or [:data:`UNNAMED_DEVICE`] where it has none."""
    return list(dict.fromkeys(m["device"] for m in E2E_HEADER.finditer(text))) or [UNNAMED_DEVICE]


def _log_names(logs: Sequence[str], names: Optional[Sequence[str]]) -> Sequence[str]:
    """The logs' names for a message: ``names`` (their files) where given, else 'log 1', 'log 2', ..."""
    return names or [f"log {i}" for i in range(1, len(logs) + 1)]


def mixed_devices(logs: Sequence[str], names: Optional[Sequence[str]] = None) -> Optional[str]:
    """Why the texts of these e2e logs cannot be reported together (they name more than one device), naming each log
    (``names``, else 'log 1', 'log 2', ...) and its device; None where they are all of one device."""
    names = _log_names(logs, names)
    devices = [log_devices(text) for text in logs]
    if len({device for found in devices for device in found}) < 2:
        return None
    listed = ", ".join(f"{name} ({' + '.join(found)})" for name, found in zip(names, devices))
    return (f"these logs are of different devices: {listed}; a CPU's figures are not judged against the GPU "
            "targets, nor two devices' figures put in one table: report each device's logs on their own")


def torch_versions_note(logs: Sequence[str], names: Optional[Sequence[str]] = None) -> Optional[str]:
    """Where these e2e logs ran on more than one torch version: a sentence naming each version, its logs (``names``,
    else 'log 1', 'log 2', ...) and the steps the report takes from them (a step in several logs is taken from the
    last); None where they name one version or none."""
    names = _log_names(logs, names)
    if len({m["torch"] for text in logs for m in E2E_HEADER.finditer(text)}) < 2:
        return None
    taken_from = {step: i for i, text in enumerate(logs) for step in read_sections([text])}
    parts = []
    for i, name in enumerate(names):
        steps = [step for step, source in taken_from.items() if source == i]
        runs = " + ".join(dict.fromkeys(f"torch {m['torch']}, {m['date']}" for m in E2E_HEADER.finditer(logs[i])))
        given = ", ".join(steps) if steps else "no step (each is in a later log)"
        parts.append(f"{name} ({runs or 'no header'}): {given}")
    return ("these logs ran on different torch versions, so the tables below may mix their figures; the steps each "
            "log gives: " + "; ".join(parts))


def read_sections(logs: Iterable[str]) -> Dict[str, str]:
    """Step name -> its output, from the texts of one or more e2e logs (a later log's step replaces an earlier's)."""
    sections: Dict[str, str] = {}
    for text in logs:
        name: Optional[str] = None
        lines: List[str] = []
        for line in text.splitlines() + ["===== summary"]:
            header = SECTION.match(line)
            if header:
                if name is not None:
                    sections[name] = "\n".join(lines)
                name, lines = (None if header["name"] == "summary" else header["name"]), []
            elif name is not None:
                lines.append(line)
    return sections


def _cells(line: str) -> List[str]:
    """The cells of one line of a text table (``tables.render_table`` separates them by two or more spaces)."""
    return re.split(r"\s{2,}", line.strip())


def table_rows(text: str, first_line: int = 0) -> List[List[str]]:
    """The text table (``tables.render_table``) starting at line ``first_line`` of ``text``: header and rows, each
    a list of cells; it ends at the first line that is not a row of
    the header's width (a blank line, the step's PASS line)."""
    lines = text.splitlines()[first_line:]
    rows: List[List[str]] = []
    for i, line in enumerate(lines):
        if i == 1 and line.strip() and set(line.replace(" ", "")) == {"-"}:
            continue
        cells = _cells(line)
        if not line.strip() or (rows and len(cells) != len(rows[0])):
            break
        rows.append(cells)
    return rows


def markdown(rows: List[List[str]]) -> str:
    """Rows (header first) as a Markdown table (a '|' inside a cell escaped)."""
    def line(cells: List[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(rows[0]), "|" + "|".join("---" for _ in rows[0]) + "|"] + [line(row) for row in rows[1:]])


def throughput(sections: Dict[str, str]) -> Dict[Tuple[str, str, bool], Dict[str, Tuple[float, float, float]]]:
    """(model, dtype, compiled) -> metric -> (ours img/s, baseline img/s, ratio), from the throughput steps."""
    found = {}
    for name, text in sections.items():
        step = THROUGHPUT.match(name)
        if step:
            rows = {m["metric"]: (float(m["ours"]), float(m["base"]), float(m["ratio"]))
                    for m in map(RATIO_ROW.match, text.splitlines()) if m}
            found[(step["model"], step["dtype"], bool(step["compiled"]))] = rows
    return found


def scan_op_ms(sections: Dict[str, str]) -> Dict[str, Optional[float]]:
    """The triton row of the selective scan's fp32 op table at the issue's shape: milliseconds of 'fwd', 'fwd+bwd'
    and, on CUDA, 'fwd graph' and 'fwd+bwd graph' (None where absent)."""
    text = sections.get("kernel checks and op timings", "")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("op=scan ") and SCAN_SHAPE in line:
            rows = table_rows(text, i + 1)   # none where the log ends at the title (a step killed there)
            header = rows[0] if rows else []
            for row in rows[1:]:
                if row[0] == "triton":
                    cells = dict(zip(header, row))

                    def ms(column: str) -> Optional[float]:
                        value = cells.get(column)
                        return None if value in (None, "-") else float(value)

                    return {"fwd": ms("fwd ms"), "fwd+bwd": ms("fwd+bwd ms"), "fwd graph": ms("fwd graph ms"),
                            "fwd+bwd graph": ms("fwd+bwd graph ms")}
    return {}


def target_lines(sections: Dict[str, str], judged: bool = True) -> List[str]:
    """One line per target: the figure as the log printed it, the target and MEETS / MISSES (or NOT MEASURED; NOT
    JUDGED unless ``judged``: figures of a CPU run); a figure printed exactly at its target meets it as printed, which
    the line says. The scan's verdict is on its time per call, as ``tools/benchmark.py`` measures it; the CUDA-graph
    replay is given beside it."""
    measured = throughput(sections)
    lines = []

    def verdict(holds: bool) -> str:    # as wide as "NOT MEASURED  "
        return (("MEETS" if holds else "MISSES") if judged else "NOT JUDGED").ljust(14)

    def as_printed(at_target: bool, unrounded: str) -> str:
        return f"; met as printed (to 3 decimals): the unrounded {unrounded}" if judged and at_target else ""

    for target in TARGETS:
        for dtype in ("fp32", "bf16"):
            row = measured.get((target.model, dtype, False), {}).get(target.metric)
            if row is None:
                lines.append(f"NOT MEASURED  {target.model} {dtype} {target.metric}: target >= {target.minimum}x")
                continue
            lines.append(f"{verdict(row[2] >= target.minimum)}{target.model} {dtype} {target.metric}: {row[2]:.3f}x "
                         f"({row[0]:.1f} vs {row[1]:.1f} img/s), target >= {target.minimum}x"
                         + as_printed(row[2] == target.minimum, "ratio may be just below it"))
    scan = scan_op_ms(sections)
    for step, limit in SCAN_LIMITS_MS:
        value, graph = scan.get(step), scan.get(step + " graph")
        if value is None:
            lines.append(f"NOT MEASURED  selective_scan_fn triton {SCAN_SHAPE} {step}: target <= {limit} ms")
            continue
        replay = "" if graph is None else (
            f" ({graph:.3f} ms per CUDA-graph replay, which {'misses' if graph > limit else 'meets'} it"
            f"{' as printed' if graph == limit else ''} without host overhead)")
        lines.append(f"{verdict(value <= limit)}selective_scan_fn triton {SCAN_SHAPE} {step}: {value:.3f} ms per "
                     f"call{replay}, target <= {limit} ms" + as_printed(value == limit, "time may be just above it"))
    return lines


def ratio_tables(sections: Dict[str, str]) -> str:
    """Every measured ratio as one Markdown table: model, dtype, compiled or not, metric, img/s of both, ratio (a
    line saying there is none when the logs hold no throughput step)."""
    rows = [["model", "dtype", "torch.compile", "metric", "img/s", "baseline img/s", "ratio"]]
    for (model, dtype, compiled), metrics in throughput(sections).items():
        for metric, (ours, base, ratio) in metrics.items():
            rows.append([model, dtype, "reduce-overhead" if compiled else "-", metric, f"{ours:.1f}", f"{base:.1f}",
                         f"{ratio:.3f}x"])
    return markdown(rows) if len(rows) > 1 else "(no throughput step in these logs)"


def mixer_rows(sections: Dict[str, str]) -> List[List[str]]:
    """The kernel check's table of the fused mixer ops (``mixer_ops.mixer_timings``): header, the rows of the ops at
    :data:`~.mixer_ops.MIXER_BATCHES` and those of the fused scan alone (its shape in the batch column), or []."""
    text = sections.get("kernel checks and op timings", "")
    batches = {str(batch) for batch in MIXER_BATCHES}
    for i, line in enumerate(text.splitlines()):
        if _cells(line) == MIXER_HEADER:
            header, *rows = table_rows(text, i)
            return [header] + [row for row in rows if row[2] in batches or row[0].startswith("fused scan ")]
    return []


def sweep_rows(sections: Dict[str, str]) -> List[Dict[str, object]]:
    """The rows of every :func:`~.resolution_sweep.format_sweep_table` in the sweep step's output, as
    :func:`~.resolution_sweep.resolution_sweep` returned them (numbers as printed; ``None`` for ``-``)."""
    text = sections.get("peak memory and resolution sweep", "")
    rows: List[Dict[str, object]] = []
    for i, line in enumerate(text.splitlines()):
        title = SWEEP_TITLE.match(line)
        table = table_rows(text, i + 1) if title else []
        if not table or table[0][0] != "img px":
            continue
        for cells in table[1:]:
            size, ours, base, ratio, ours_mib, base_mib = cells
            rows.append({"model": title["model"], "baseline": title["baseline"], "device": title["device"],
                         "dtype": title["dtype"], "batch": int(title["batch"]), "img_size": int(size),
                         "model_img_s": float(ours), "baseline_img_s": float(base), "ratio": float(ratio.rstrip("x")),
                         "model_peak_mib": None if ours_mib == "-" else float(ours_mib),
                         "baseline_peak_mib": None if base_mib == "-" else float(base_mib)})
    return rows


def has_older_sweep_table(sections: Dict[str, str]) -> bool:
    """Whether the sweep step's output holds an older log's resolution sweep: one table of img/s and peak MiB per
    model and size (``resolution sweep, inference at batch N:``), without the baselines and ratios of
    :func:`sweep_rows`'s tables."""
    text = sections.get("peak memory and resolution sweep", "")
    return any(line.startswith("resolution sweep, inference at batch") for line in text.splitlines())


def report(logs: Iterable[str], names: Optional[Sequence[str]] = None) -> str:
    """The whole report of :mod:`gpu_report` for the texts of the e2e logs (``names``: their files, for the notes);
    ValueError (:func:`mixed_devices`'s sentence) where they are of more than one device."""
    logs = list(logs)
    mixed = mixed_devices(logs)
    if mixed:
        raise ValueError(mixed)
    sections = read_sections(logs)
    device = log_devices(logs[0])[0] if logs else UNNAMED_DEVICE
    judged = device not in ("cpu", UNNAMED_DEVICE)
    if judged:
        title = f"Targets (issue 12), device {device}:"
    elif device == "cpu":
        title = "Targets (issue 12), not judged: these logs are of a CPU run, and the targets are for an H100 / H200:"
    else:
        title = ("Targets (issue 12), not judged: these logs name no device (no 'gpu_check --e2e ... device ...' "
                 "header line), and the targets are for an H100 / H200:")
    versions = torch_versions_note(logs, names)
    parts = [title, *([f"Note: {versions}."] if versions else []), *target_lines(sections, judged), "",
             "Throughput against the baselines:",
             ratio_tables(sections)]
    mixers = mixer_rows(sections)
    if mixers:
        parts += ["", f"Fused mixer ops at batch {' and '.join(map(str, MIXER_BATCHES))}, and the fused scan alone "
                  "per tile (ms; [deterministic]: the backward's sums per block / direction, not atomic):",
                  markdown(mixers)]
    sweep = sections.get("peak memory and resolution sweep")
    if sweep:
        lines = sweep.splitlines()
        # the memory table's header, wherever it is: a warning (stderr goes to the log too) can come before it
        memory = next((i for i, line in enumerate(lines) if MEMORY_HEADER.match(line)), len(lines))
        starts = [memory] + [i + 1 for i, line in enumerate(lines) if line.startswith("resolution sweep")]
        titles = ["Peak memory:"] + [lines[i - 1].rstrip(":") + ":" for i in starts[1:]]
        for title, start in zip(titles, starts):
            rows = table_rows(sweep, start)
            parts += ["", title] + ([markdown(rows)] if rows else [])
            after = start + len(rows) + 1  # the crossing sentence under a model-against-baseline sweep table
            if start and rows and SWEEP_TITLE.match(lines[start - 1]) and after < len(lines) and lines[after].strip():
                parts.append(lines[after].strip())
    speeds = re.findall(r"Speed: ([0-9.]+) img/s", sections.get("tools/dist_train.sh 1", ""))
    if speeds:
        parts += ["", f"tools/dist_train.sh 1 (quickstart config): {speeds[-1]} img/s, its last logged training speed"]
    return "\n".join(parts)
