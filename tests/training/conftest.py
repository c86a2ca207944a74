"""Fixtures of the training tests."""
import pytest

from training_helpers import make_folder_tree, make_meta_tree


@pytest.fixture(scope="module", autouse=True)
def single_threaded(one_thread):
    """Every test of this folder on one compute thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def meta_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagenet_meta"))
    return root, make_meta_tree(root)


@pytest.fixture(scope="session")
def folder_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagenet_folders"))
    make_folder_tree(root)
    return root
