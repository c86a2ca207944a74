"""A few cases of the randomised differential fuzz of every op's Triton backend (kernel_fuzz_checks.py, which runs
for minutes on its own) under the Triton interpreter: random odd shapes, optional arguments, dtypes and memory
layouts (transposed, sliced, stride-0, permuted views), outputs and every input's gradient against the reference,
and no input modified in place. This keeps the fuzz itself working; its findings are the fixed cases of
triton_interpreter_checks.py and triton_multi_scan_checks.py.

TRITON_INTERPRET must be set before the kernels are defined, so the fuzz runs in a subprocess.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

ROOT = Path(__file__).resolve().parents[2]


def test_triton_fuzz_smoke(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    script = Path(__file__).with_name("kernel_fuzz_checks.py")
    log = tmp_path / "fuzz.jsonl"
    result = subprocess.run([sys.executable, str(script), "--backend", "triton", "--seed", "0", "--max-cases", "10",
                             "--log", str(log)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "10 cases in" in result.stdout and "0 failing" in result.stdout, result.stdout[-5000:]
    assert len(log.read_text().splitlines()) == 10
