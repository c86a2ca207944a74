"""Fixtures of the safety tests: one compute thread, and a finished tiny run whose files the tests read."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training"))

from safety_helpers import TINY_RUN, run_tool  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core machine does not oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A 2-epoch tiny run on digits: its folder (last.pth.tar, best.pth.tar, metrics.csv, ...)."""
    out = tmp_path_factory.mktemp("finished")
    run_tool("train.py", *TINY_RUN, "--epochs", "2", "--output", str(out), "--experiment", "run")
    return out / "run"
