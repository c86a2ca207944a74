"""Fixtures shared by every test folder, and the number of test processes."""
import logging
import os

import pytest
import torch

MAX_TEST_PROCESSES = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """The processes of pytest.ini's `-n auto`: one per CPU this process may use, at most `MAX_TEST_PROCESSES` (each
    imports torch, and many tests start training processes of their own). pytest-xdist's hook."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MAX_TEST_PROCESSES, cpus)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one compute thread: tiny models run fastest that way, and a busy 2-core machine is not
    oversubscribed. A folder's conftest makes it autouse for its tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def localmamba_log(caplog, monkeypatch):
    """caplog, holding each record of the "localmamba" logger once, from INFO up. A run's setup_logging turns the
    logger's propagation off; pytest >= 9.2 then hangs its capture handler on the logger itself, older pytest needs
    the propagation back (doing both would capture every record twice)."""
    logger = logging.getLogger("localmamba")
    if caplog.handler not in logger.handlers:
        monkeypatch.setattr(logger, "propagate", True)
    caplog.set_level(logging.INFO, logger="localmamba")
    return caplog


@pytest.fixture
def status_after_ctrl_c():
    """``status_after_ctrl_c(main, argv)``: a tool's ``main(argv)`` exit status, for a test whose stand-in raises
    KeyboardInterrupt; an interrupt that escapes ``main`` (the traceback the tool would end in) fails the test instead
    of stopping pytest."""

    def status(main, argv):
        try:
            return main(argv)
        except KeyboardInterrupt:
            pytest.fail("Ctrl-C escaped main(): the tool ends in a traceback")

    return status
