"""Both model families with every op on the Triton kernels (CPU, under the Triton interpreter) against every op on
the reference: logits and every parameter's gradient (the cases: triton_model_checks.py). This is the GPU path of a
training step end to end, layer wiring included (token-major LocalVMamba, LocalVim's conv and class token).

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


def test_models_on_triton_match_the_reference_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    script = Path(__file__).with_name("triton_model_checks.py")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 2, result.stdout
