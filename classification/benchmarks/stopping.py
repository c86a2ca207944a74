"""How the benchmark tools (``tools/benchmark.py``, ``tools/flops.py``, ``tools/gpu_check.py``) end a run that stops
early: Ctrl-C, input that cannot be measured or CUDA out of memory end in one line on stderr instead of a traceback,
and the rows that ended are kept.

    rows = []
    failure, status = run_stopping_in_one_line(lambda: measure(finished=rows), (ConfigError,))
    print(format_table(rows))                               # the rows that ended, also those before a stop
    if failure:
        print(failure + where_rows_are(rows, csv_path), file=sys.stderr)
    sys.exit(status)                                        # 130 after Ctrl-C, 2 after an error
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Type

import torch

from ..engine.cli import raise_on_ctrl_c

INTERRUPTED = "interrupted (Ctrl-C)"
INTERRUPTED_STATUS = 130  # a shell's 128 + SIGINT
ERROR_STATUS = 2


def run_stopping_in_one_line(run: Callable[[], Optional[int]], errors: Tuple[Type[BaseException], ...] = ()
                             ) -> Tuple[Optional[str], int]:
    """Call ``run``: (None, the exit status it returns, 0 for None); where Ctrl-C, one of ``errors`` or CUDA out of
    memory stops it, (the one line that says so, 130 for Ctrl-C, else 2). Ctrl-C raises KeyboardInterrupt again in
    ``run`` where the tool let it stop the process quietly while it imported."""
    raise_on_ctrl_c()
    try:
        return None, run() or 0
    except errors as err:
        return f"error: {err}", ERROR_STATUS
    except torch.cuda.OutOfMemoryError as err:
        return f"error: {str(err).strip().splitlines()[0]}", ERROR_STATUS
    except KeyboardInterrupt:
        return INTERRUPTED, INTERRUPTED_STATUS


def where_rows_are(rows: Sequence[object], csv_path: Optional[str] = None) -> str:
    """The end of a stopped run's line that says where the rows that ended are (the table printed above, and the CSV
    file written); '' where none ended."""
    if not rows:
        return ""
    kept = f"; the {len(rows)} rows that ended are in the table above" if len(rows) > 1 else \
        "; the row that ended is in the table above"
    return kept + (f" and in {csv_path}" if csv_path else "")
