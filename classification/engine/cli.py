"""Shared start-up of the command-line tools: user errors become one-line messages instead of tracebacks."""
from __future__ import annotations

import sys
from typing import Callable

from ..data import DataError
from .checkpoint import CheckpointError
from .config import ConfigError

USER_ERRORS = (ConfigError, DataError, CheckpointError, FileNotFoundError)


def run_cli(main: Callable[[], object]) -> None:
    """Call `main`; bad input (config, data, checkpoint, missing file) exits with `error: <message>`, status 2."""
    try:
        main()
    except USER_ERRORS as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(2)
