"""Fixtures shared by every test folder."""
import logging

import pytest
import torch


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
