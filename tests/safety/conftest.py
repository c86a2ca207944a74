"""Fixtures of the safety tests: one compute thread, and a finished tiny run whose files the tests read."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training"))

from safety_helpers import TINY_RUN, run_tool  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def single_threaded(one_thread):
    """Every test of this folder on one compute thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A 2-epoch tiny run on digits: its folder (last.pth.tar, best.pth.tar, metrics.csv, ...)."""
    out = tmp_path_factory.mktemp("finished")
    run_tool("train.py", *TINY_RUN, "--epochs", "2", "--output", str(out), "--experiment", "run")
    return out / "run"
