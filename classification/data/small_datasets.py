"""Small datasets held in memory: CIFAR-10/100 from their python-pickle files, and scikit-learn's digits.

CIFAR is never downloaded: the extracted `cifar-10-batches-py/` or `cifar-100-python/` folder must be on disk.
Digits are the 1,797 real 8x8 handwritten digits bundled with scikit-learn, split 80/20 (stratified, fixed seed) and
upsampled to the model's input size.
"""
from __future__ import annotations

import os
import pickle

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .errors import DataError

CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


class ArrayImageDataset(Dataset):
    """uint8 images (N, H, W, 3) and labels (N,); `__getitem__` returns (PIL RGB image, int label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int):
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return Image.fromarray(self.images[index]), int(self.labels[index])


def _read_cifar_batches(folder: str, names: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
            raise DataError(f"cannot read CIFAR batch {path}: {err!r}") from err
        images.append(data)
    return np.concatenate(images), np.concatenate(labels)


def _cifar_folder(root: str, name: str, files: list[str]) -> str:
    folder_name = CIFAR_FILES[name][0]
    folder = root if os.path.basename(os.path.normpath(root)) == folder_name else os.path.join(root, folder_name)
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise DataError(f"{name} files not found in {folder}: missing {missing}; extract the python version from "
                        f"https://www.cs.toronto.edu/~kriz/cifar.html there (nothing is downloaded)")
    return folder


def build_cifar(root: str, name: str) -> tuple[ArrayImageDataset, ArrayImageDataset]:
    """Train/test sets from `root/<extracted folder>` (or `root` itself being that folder)."""
    _, train_files, test_files, label_key, num_classes = CIFAR_FILES[name]
    folder = _cifar_folder(root, name, train_files + test_files)
    train = _read_cifar_batches(folder, train_files, label_key)
    test = _read_cifar_batches(folder, test_files, label_key)
    return ArrayImageDataset(*train, num_classes), ArrayImageDataset(*test, num_classes)


def build_cifar_test(root: str, name: str) -> ArrayImageDataset:
    """The test set alone (evaluation reads no training batch)."""
    _, _, test_files, label_key, num_classes = CIFAR_FILES[name]
    folder = _cifar_folder(root, name, test_files)
    return ArrayImageDataset(*_read_cifar_batches(folder, test_files, label_key), num_classes)


def build_digits(size: int, val_fraction: float = 0.2) -> tuple[ArrayImageDataset, ArrayImageDataset]:
    """scikit-learn digits as RGB images of `size` x `size` (bicubic upsampling), split train/val deterministically."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BICUBIC)) for p in pixels])
    rgb = np.repeat(big[..., None], 3, axis=-1)
    idx_train, idx_val = train_test_split(np.arange(len(pixels)), test_size=val_fraction, random_state=0,
                                          stratify=digits.target)
    return (ArrayImageDataset(rgb[idx_train], digits.target[idx_train], 10),
            ArrayImageDataset(rgb[idx_val], digits.target[idx_val], 10))
