"""ImageNet-style datasets: the original meta-list layout and the common class-folder layout.

Original layout: `<root>/{train,val}/...` images and `<root>/meta/{train,val}.txt`, one `relative/path label` per line.
Class-folder layout: `<root>/{train,val}/<class>/<image>`; classes are the sorted train folder names. Evaluation
also takes `<root>/val/<class>/` alone (ImageNet val extracted to check released weights): classes are then the
sorted val folder names, as torchvision's ImageFolder. `imagenet_layout` picks the layout automatically.
"""
from __future__ import annotations

import codecs
import logging
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Pillow's modes of 16-bit grayscale files (PNG, TIFF, PGM); "I" is how some Pillow versions open them.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
logger = logging.getLogger("localmamba")


class DataError(ValueError):
    """Unusable dataset input; the message names the file or folder."""


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit grayscale image scaled to 8 bits (value / 257, rounded); Pillow's own conversion clips at 255."""
    values = np.asarray(img, dtype=np.float64)
    return Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")


def load_rgb(path: str) -> Image.Image:
    """Decode an image file as RGB (16-bit grayscale scaled to 8 bits); errors name the file."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            if img.mode in SIXTEEN_BIT_MODES:
                img = to_8bit(img)
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}; replace the file with a readable image, or remove it "
                        f"(the data's order then changes)") from err


class ImageListDataset(Dataset):
    """(image file, label) pairs decoded lazily; `__getitem__` returns (PIL RGB image, int label). `classes` names
    the labels in order (the class-folder layout; None for a meta list)."""

    def __init__(self, samples: Sequence[tuple[str, int]], num_classes: int, classes: Optional[Sequence[str]] = None):
        self.samples = list(samples)
        self.num_classes = num_classes
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return load_rgb(path), label


def _meta_lines(meta_path: str) -> list[str]:
    """The lines of a meta list read as UTF-8 text (a leading byte-order mark, as Windows editors write, dropped)."""
    if not os.path.isfile(meta_path):
        raise DataError(f"meta file not found: {meta_path}")
    with open(meta_path, "rb") as f:
        data = f.read()
    data = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        lineno = data[:err.start].count(b"\n") + 1
        raise DataError(f"{meta_path}:{lineno}: not UTF-8 text (byte {data[err.start]:#04x}); save the list as "
                        f"UTF-8") from None


def read_meta_file(meta_path: str, image_root: str) -> list[tuple[str, int]]:
    """Parse a `relative/path label` list; the image path is `image_root/relative/path`. The first and the last listed
    images must exist (two file checks catch a list written for another root before a whole epoch has run)."""
    samples, lines = [], []
    for lineno, line in enumerate(_meta_lines(meta_path), 1):
        text = line.strip()
        if not text:
            continue
        parts = text.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise DataError(f"{meta_path}:{lineno}: expected '<relative/path> <label>' with a label >= 0, "
                            f"got {text!r}")
        samples.append((os.path.join(image_root, parts[0]), int(parts[1])))
        lines.append(lineno)
    if not samples:
        raise DataError(f"meta file is empty: {meta_path}")
    for index in (0, -1):
        if not os.path.isfile(samples[index][0]):
            raise DataError(f"{meta_path}:{lines[index]}: image not found: {samples[index][0]} (the list's paths are "
                            f"relative to {image_root})")
    return samples


def has_class_folders(split_dir: str) -> bool:
    """Whether `split_dir` exists and holds at least one sub-folder."""
    return os.path.isdir(split_dir) and any(e.is_dir() for e in os.scandir(split_dir))


def class_folder_names(split_dir: str) -> list[str]:
    """The sorted sub-folder names of a split: the classes of the class-folder layout."""
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def _image_files(folder: str) -> list[str]:
    """The image files under `folder` in torchvision ImageFolder's order (sub-folders by path, files by name), linked
    folders followed as it does, but each real folder once (by its first path in sorted order; ImageFolder would
    list it again, or loop). A link to an image that does not exist, or a folder that cannot be read, is refused
    here rather than when it is first read; only links cost a file-system call beyond listing the folders."""
    by_folder, seen, pending = [], set(), [folder]
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if real in seen:  # a link back up the tree, or a second link to the same folder
            continue
        seen.add(real)
        files = []
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name, reverse=True)   # popped in order
        except OSError as err:
            raise DataError(f"cannot list {current}: {err.strerror or err}") from None
        for entry in entries:
            if entry.is_dir():
                pending.append(entry.path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                if entry.is_symlink() and not os.path.exists(entry.path):
                    raise DataError(f"broken link {entry.path} -> {os.readlink(entry.path)}: the image it points to "
                                    f"does not exist; remove the link or restore the image")
                files.append(entry.path)
        by_folder.append((current, sorted(files)))
    return [path for _, files in sorted(by_folder) for path in files]


def _note_hidden_class_folders(split_dir: str, classes: Sequence[str]) -> None:
    """Warn about class folders that tools leave behind (`.ipynb_checkpoints`, `__MACOSX`, any dot-folder): like
    torchvision's ImageFolder we keep them as classes, which shifts the labels of every class sorted after them."""
    hidden = [name for name in classes if name.startswith(".") or name == "__MACOSX"]
    if hidden:
        logger.warning(f"{split_dir}: the folders {hidden[:5]} count as classes (as in torchvision's ImageFolder), "
                       f"making {len(classes)} classes; remove them if they hold no class of your data")


def scan_class_folders(split_dir: str, classes: Sequence[str] | None = None,
                       source: str = "the train split") -> tuple[list[tuple[str, int]], list[str]]:
    """List `split_dir/<class>/<image>` files; `classes` fixes the class order (those of `source`)."""
    found = class_folder_names(split_dir)
    defines_classes = classes is None
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{split_dir}: class folders {unknown[:5]} are not classes of {source}")
    if defines_classes:
        _note_hidden_class_folders(split_dir, found)
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for name in found:
        before = len(samples)
        samples += [(path, index[name]) for path in _image_files(os.path.join(split_dir, name))]
        if defines_classes and len(samples) == before:
            raise DataError(f"class folder {os.path.join(split_dir, name)} holds no image files: it would add a "
                            f"class that never appears in training; remove it or add images")
    if not samples:
        raise DataError(f"no image files found under {split_dir}")
    return samples, list(classes)


def imagenet_layout(root: str) -> str:
    """'meta' or 'folders', from what lies under `root`; a DataError says what was expected."""
    if not os.path.isdir(root):
        raise DataError(f"data path does not exist: {root} (set --data-path)")
    if os.path.isdir(os.path.join(root, "meta")):
        return "meta"
    if has_class_folders(os.path.join(root, "train")) or has_class_folders(os.path.join(root, "val")):
        return "folders"
    raise DataError(f"{root}: expected meta/train.txt and meta/val.txt with train/ and val/ images, "
                    f"or train/<class>/ and val/<class>/ folders (val/<class>/ alone to evaluate)")


def _meta_class_count(meta_path: str) -> int:
    """Largest label + 1 of a meta list, read without building its samples."""
    labels = [line.rsplit(maxsplit=1)[-1] for line in _meta_lines(meta_path) if line.strip()]
    if not labels or not all(lbl.isdigit() for lbl in labels):
        raise DataError(f"{meta_path}: expected '<relative/path> <label>' lines with labels >= 0")
    return max(int(lbl) for lbl in labels) + 1


def build_imagenet_val(root: str, num_classes: Optional[int] = None,
                       classes: Optional[Sequence[str]] = None) -> ImageListDataset:
    """The val dataset of an ImageNet-style tree (evaluation); the class count or order comes from the train split's
    list or folder names, without listing its images, or from val's folder names when there is no train/<class>/.
    `classes`, the class names a checkpoint was trained with, fix the order of the class-folder layout instead."""
    if imagenet_layout(root) == "meta":
        val_meta, train_meta = os.path.join(root, "meta", "val.txt"), os.path.join(root, "meta", "train.txt")
        val = read_meta_file(val_meta, os.path.join(root, "val"))
        if not os.path.isfile(train_meta):
            if num_classes is None:
                raise DataError(f"meta file not found: {train_meta}: evaluation reads the class count from it; "
                                f"without it, give --num-classes (the model's number of classes)")
            return ImageListDataset(val, max(label for _, label in val) + 1)
        count = _meta_class_count(train_meta)
        bad = [(p, lbl) for p, lbl in val if lbl >= count]
        if bad:
            raise DataError(f"{val_meta}: label {bad[0][1]} of {bad[0][0]} is not a train label "
                            f"(train has {count} classes)")
        return ImageListDataset(val, count)
    val_dir = os.path.join(root, "val")
    if not os.path.isdir(val_dir):
        raise DataError(f"validation folder not found: {val_dir}")
    source = "the train split"
    if classes is not None:
        _note_changed_train_folders(os.path.join(root, "train"), classes)
        source = "the checkpoint"
    elif has_class_folders(os.path.join(root, "train")):
        classes = class_folder_names(os.path.join(root, "train"))
        _note_hidden_class_folders(os.path.join(root, "train"), classes)
    else:
        classes = class_folder_names(val_dir)
        _note_hidden_class_folders(val_dir, classes)
        note = (f"{root}: no train/<class>/ folders: the {len(classes)} classes are the sorted folder names of val/ "
                f"(as torchvision's ImageFolder); the labels are the model's only if val/ has a folder for every "
                f"class it was trained on")
        if num_classes is not None and num_classes != len(classes):
            logger.warning(f"{note}; --num-classes {num_classes} differs from that count")
        else:
            logger.info(note)
    val, _ = scan_class_folders(val_dir, classes, source)
    return ImageListDataset(val, len(classes), classes)


def _note_changed_train_folders(train_dir: str, classes: Sequence[str]) -> None:
    """Log a warning when the class folders of `train_dir` are no longer the `classes` a checkpoint was trained on."""
    if not has_class_folders(train_dir):
        return
    now = class_folder_names(train_dir)
    if now != list(classes):
        added, gone = sorted(set(now) - set(classes)), sorted(set(classes) - set(now))
        logger.warning(f"{train_dir}: its class folders are not those the checkpoint was trained on (added "
                       f"{added[:5]}, removed {gone[:5]}); the labels follow the checkpoint's {len(classes)} classes")


def build_imagenet(root: str) -> tuple[ImageListDataset, ImageListDataset]:
    """Train and val datasets of an ImageNet-style tree in either layout."""
    if imagenet_layout(root) == "meta":
        train = read_meta_file(os.path.join(root, "meta", "train.txt"), os.path.join(root, "train"))
        val = read_meta_file(os.path.join(root, "meta", "val.txt"), os.path.join(root, "val"))
        num_classes = max(label for _, label in train) + 1
        bad = [(p, lbl) for p, lbl in val if lbl >= num_classes]
        if bad:
            raise DataError(f"{os.path.join(root, 'meta', 'val.txt')}: label {bad[0][1]} of {bad[0][0]} "
                            f"is not a train label (train has {num_classes} classes)")
    else:
        val_dir, train_dir = os.path.join(root, "val"), os.path.join(root, "train")
        if not has_class_folders(train_dir):
            raise DataError(f"{train_dir}: no class folders: training needs train/<class>/ images (tools/test.py "
                            f"evaluates with val/<class>/ alone)")
        if not os.path.isdir(val_dir):
            raise DataError(f"validation folder not found: {val_dir}")
        train, classes = scan_class_folders(train_dir)
        val, _ = scan_class_folders(val_dir, classes)
        return ImageListDataset(train, len(classes), classes), ImageListDataset(val, len(classes), classes)
    return ImageListDataset(train, num_classes), ImageListDataset(val, num_classes)
