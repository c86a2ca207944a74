"""The code style every contributor's editor can check: flake8 with the settings in the repository's `.flake8`."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flake8_finds_nothing():
    """pycodestyle's layout rules and pyflakes' unused or undefined names, 120 columns (`.flake8`)."""
    pytest.importorskip("flake8", reason="flake8 is a test dependency: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "flake8", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr
