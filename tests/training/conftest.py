"""Fixtures of the training tests."""
import pytest
import torch

from training_helpers import make_folder_tree, make_meta_tree


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core machine does not oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def meta_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagenet_meta"))
    return root, make_meta_tree(root)


@pytest.fixture(scope="session")
def folder_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagenet_folders"))
    make_folder_tree(root)
    return root
