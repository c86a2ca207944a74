"""Fixtures of the search tests."""
import pytest


@pytest.fixture(scope="module", autouse=True)
def single_threaded(one_thread):
    """Every test of this folder on one compute thread (tests/conftest.py)."""
