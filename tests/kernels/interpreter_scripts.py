"""Running a check script of this folder under the Triton interpreter: in a subprocess, because TRITON_INTERPRET must
be set before the kernels are defined."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def run_under_interpreter(script: str, *args: str, timeout: int,
                          backend: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run ``script`` (a file name in tests/kernels) with ``args`` under TRITON_INTERPRET=1, the repository first on
    PYTHONPATH and, if given, ``backend`` forced for every op (LOCALMAMBA_BACKEND); its output captured as text."""
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if backend is not None:
        env["LOCALMAMBA_BACKEND"] = backend
    return subprocess.run([sys.executable, str(HERE / script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
