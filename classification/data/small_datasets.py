"""Small datasets held in memory: CIFAR-10/100 from their python-pickle files, and scikit-learn's digits.

CIFAR is never downloaded: the extracted `cifar-10-batches-py/` or `cifar-100-python/` folder must be on disk.
Digits are the 1,797 real 8x8 handwritten digits bundled with scikit-learn, split 80/20 (stratified, fixed seed) and
upsampled to the model's input size. A 1-channel model gets gray images (CIFAR's by Pillow's luminance).
"""
from __future__ import annotations

import os
import pickle

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .errors import DataError
from .image_decoding import IMAGE_MODES

CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


class ArrayImageDataset(Dataset):
    """uint8 images, RGB (N, H, W, 3) or gray (N, H, W), and labels (N,); `__getitem__` returns (PIL image, int
    label), the image RGB for `channels` 3 and gray (mode L) for 1, converted by Pillow when the array is the other."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, channels: int = 3):
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = num_classes
        self.mode = IMAGE_MODES[channels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        return img if img.mode == self.mode else img.convert(self.mode), int(self.labels[index])


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


def build_cifar(root: str, name: str, channels: int = 3) -> tuple[ArrayImageDataset, ArrayImageDataset]:
    """Train/test sets from `root/<extracted folder>` (or `root` itself being that folder), for a model of `channels`
    input channels."""
    _, train_files, test_files, label_key, num_classes = CIFAR_FILES[name]
    folder = _cifar_folder(root, name, train_files + test_files)
    train = _read_cifar_batches(folder, train_files, label_key)
    test = _read_cifar_batches(folder, test_files, label_key)
    return ArrayImageDataset(*train, num_classes, channels), ArrayImageDataset(*test, num_classes, channels)


def build_cifar_test(root: str, name: str, channels: int = 3) -> ArrayImageDataset:
    """The test set alone (evaluation reads no training batch)."""
    _, _, test_files, label_key, num_classes = CIFAR_FILES[name]
    folder = _cifar_folder(root, name, test_files)
    return ArrayImageDataset(*_read_cifar_batches(folder, test_files, label_key), num_classes, channels)


def build_digits(size: int, val_fraction: float = 0.2,
                 channels: int = 3) -> tuple[ArrayImageDataset, ArrayImageDataset]:
    """scikit-learn digits as images of `size` x `size` (bicubic upsampling), split train/val deterministically:
    RGB with the gray in all three channels for `channels` 3, gray for 1."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BICUBIC)) for p in pixels])
    images = big if channels == 1 else np.repeat(big[..., None], 3, axis=-1)
    idx_train, idx_val = train_test_split(np.arange(len(pixels)), test_size=val_fraction, random_state=0,
                                          stratify=digits.target)
    return (ArrayImageDataset(images[idx_train], digits.target[idx_train], 10, channels),
            ArrayImageDataset(images[idx_val], digits.target[idx_val], 10, channels))
