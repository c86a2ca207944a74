"""The fused Triton mixer kernels (multi_scan_inner, attention_merge) against their references on CPU, under the
Triton interpreter: outputs and all gradients, fp32 and bf16 (the cases: triton_multi_scan_checks.py).

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


def test_fused_mixer_kernels_match_reference_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", LOCALMAMBA_BACKEND="triton",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    script = Path(__file__).with_name("triton_multi_scan_checks.py")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 5, result.stdout
