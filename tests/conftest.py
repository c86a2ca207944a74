"""Fixtures shared by every test folder."""
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
