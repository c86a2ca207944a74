"""Both model families with every op on the Triton kernels (CPU, under the Triton interpreter) against every op on
the reference: logits and every parameter's gradient (the cases: triton_model_checks.py). This is the GPU path of a
training step end to end, layer wiring included (token-major LocalVMamba, LocalVim's conv and class token).

TRITON_INTERPRET must be set before the kernels are defined, so the checks run in a subprocess.
"""
import importlib.util

import pytest
from interpreter_scripts import run_under_interpreter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_models_on_triton_match_the_reference_under_interpreter():
    result = run_under_interpreter("triton_model_checks.py", timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 2, result.stdout
