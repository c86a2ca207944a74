"""A few cases of the randomised differential fuzz of every op's cpu backend (kernel_fuzz_checks.py --backend cpu,
which runs for minutes on its own): random odd shapes, optional arguments, dtypes (fp64 included), memory layouts
(transposed, sliced, stride-0, permuted views) and thread counts, outputs (with and without autograd) and every
input's gradient against the reference, and no input modified in place. This keeps the fuzz itself working; its
findings are the fixed cases in the test_cpu_*.py files.

The fuzz sets the C kernels' instruction set and thread counts for its whole process, so it runs in a subprocess.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localmamba_kernel_runtime import ckernel

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("isa", [ckernel.supported_isas()[-1], "off"])
def test_cpu_fuzz_smoke(tmp_path, isa):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("LOCALMAMBA_BACKEND", None)
    script = Path(__file__).with_name("kernel_fuzz_checks.py")
    log = tmp_path / "fuzz.jsonl"
    result = subprocess.run([sys.executable, str(script), "--backend", "cpu", "--isa", isa, "--seed", "0",
                             "--max-cases", "10", "--log", str(log)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "10 cases in" in result.stdout and "0 failing" in result.stdout, result.stdout[-5000:]
    assert len(log.read_text().splitlines()) == 10
