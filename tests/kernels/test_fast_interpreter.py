"""The interpreter tests' faster ``tl.associative_scan`` (fast_interpreter.py) gives bit for bit the results of the
Triton interpreter's own for our combine functions, and its mask check refuses a mask that is not boolean data, as
triton 3.9's interpreter does (the cases: fast_interpreter_checks.py).

TRITON_INTERPRET must be set before the kernels are defined, so the checks run in a subprocess.
"""
import importlib.util

import pytest
from interpreter_scripts import run_under_interpreter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_slice_by_slice_scan_is_bitwise_the_interpreters():
    result = run_under_interpreter("fast_interpreter_checks.py", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refused a mask of int32 data" in result.stdout, result.stdout
    if "unsupported: " in result.stdout:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.stdout.count("same ") == 9, result.stdout
