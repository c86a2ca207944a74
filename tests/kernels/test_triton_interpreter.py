"""Triton kernels (selective scan, causal conv1d) against the references on CPU, under the Triton interpreter.

TRITON_INTERPRET must be set before the kernels are defined, so the checks run in a subprocess; the rest of the
suite is unaffected.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_triton_kernels_match_reference_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", LOCALMAMBA_BACKEND="triton")
    script = Path(__file__).with_name("triton_interpreter_checks.py")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 8, result.stdout
