"""The interpreter tests' faster ``tl.associative_scan`` (fast_interpreter.py) gives bit for bit the results of the
Triton interpreter's own for our combine functions, and its mask check refuses a mask that is not boolean data, as
triton 3.9's interpreter does (the cases: fast_interpreter_checks.py).

TRITON_INTERPRET must be set before the kernels are defined, so the checks run in a subprocess.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

ROOT = Path(__file__).resolve().parents[2]


def test_slice_by_slice_scan_is_bitwise_the_interpreters():
    here = Path(__file__).parent
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, str(here / "fast_interpreter_checks.py")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refused a mask of int32 data" in result.stdout, result.stdout
    if "unsupported: " in result.stdout:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.stdout.count("same ") == 9, result.stdout
