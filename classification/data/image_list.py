"""ImageNet-style datasets: the original meta-list layout, read here, and the common class-folder layout (listed by
`class_folders`); images are decoded by `image_decoding.load_image`
(RGB, or gray for a 1-channel model).

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

from torch.utils.data import Dataset

from .class_folders import (IMAGE_EXTENSIONS, broken_link, class_folder_names, first_few, has_class_folders,
                            note_hidden_class_folders, note_unmeasured, scan_class_folders)
from .errors import DataError
from .image_decoding import load_image

logger = logging.getLogger("localmamba")


class ImageListDataset(Dataset):
    """(image file, label) pairs decoded lazily; `__getitem__` returns (PIL image, int label), the image RGB for
    `channels` 3 and gray (mode L) for 1. `classes` names the labels in order (the class-folder layout; None for a
    meta list)."""

    def __init__(self, samples: Sequence[tuple[str, int]], num_classes: int, classes: Optional[Sequence[str]] = None,
                 channels: int = 3):
        self.samples = list(samples)
        self.num_classes = num_classes
        self.classes = list(classes) if classes is not None else None
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return load_image(path, self.channels), label


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


def _label(text: str) -> Optional[int]:
    """The label written as `text` if it is a decimal number in ASCII digits ('²' or '٣' are digits to Python)."""
    return int(text) if text.isascii() and text.isdigit() else None


def _meta_entries(meta_path: str) -> list[tuple[str, int, int]]:
    """The (relative path, label, line number) entries of a `relative/path label` list; a bad line is refused."""
    entries = []
    for lineno, line in enumerate(_meta_lines(meta_path), 1):
        text = line.strip()
        if not text:
            continue
        parts = text.rsplit(maxsplit=1)
        label = _label(parts[-1]) if len(parts) == 2 else None
        if label is None:
            raise DataError(f"{meta_path}:{lineno}: expected '<relative/path> <label>' with a label >= 0, "
                            f"got {text!r}")
        entries.append((parts[0], label, lineno))
    if not entries:
        raise DataError(f"meta file is empty: {meta_path}")
    return entries


def _existing_names(folder: str) -> Optional[set[str]]:
    """The names in `folder` that are there to read: a link to nothing is left out (only links cost a file-system call
    beyond the listing); None when the folder cannot be listed."""
    try:
        with os.scandir(folder or ".") as entries:
            return {entry.name for entry in entries if not broken_link(entry)}
    except OSError:
        return None


def _missing_files(paths: Sequence[str]) -> list[int]:
    """Indices of the `paths` not found in their folders, or links to nothing. Each folder is listed once instead of
    one file-system call per path: ImageNet's 1.28M training images lie in 1,000 folders, and a stat each costs minutes
    on a cluster's file system."""
    listed: dict[str, Optional[set[str]]] = {}
    missing = []
    for i, path in enumerate(paths):
        folder, name = os.path.split(path)
        if folder not in listed:
            listed[folder] = _existing_names(folder)
        names = listed[folder]
        if names is None or name not in names:
            missing.append(i)
    return missing


def read_meta_file(meta_path: str, image_root: str) -> list[tuple[str, int]]:
    """Parse a `relative/path label` list; the image path is `image_root/relative/path`, also for a path written
    with a leading `/` (the original joins `root + '/' + path`). Every listed image must exist (checked at start, not
    when it is first read: the val list's only after a whole training epoch)."""
    entries = _meta_entries(meta_path)
    samples = [(os.path.join(image_root, rel.lstrip("/")), label) for rel, label, _ in entries]
    missing = _missing_files([path for path, _ in samples])
    if missing:
        first = missing[0]
        more = (f"; {len(missing)} of its {len(samples)} images are missing: restore them or remove their lines"
                if len(missing) > 1 else "; restore it or remove its line")
        path = samples[first][0]
        link = f" -> {os.readlink(path)}, a link to nothing" if os.path.islink(path) else ""
        raise DataError(f"{meta_path}:{entries[first][2]}: image not found: {path}{link} (the list's paths are "
                        f"relative to {image_root}){more}")
    return samples


def _meta_num_classes(meta_path: str, labels: set[int]) -> int:
    """The class count of a train list's `labels`: the largest + 1, as ImageNet's label files mean; a warning names
    the labels below it that are never used (their outputs get no training data)."""
    count = max(labels) + 1
    if len(labels) < count:
        unused = sorted(set(range(count)) - labels)
        logger.warning(f"{meta_path}: its labels use {len(labels)} of the {count} classes 0..{count - 1} (unused: "
                       f"{first_few(unused)}); the model gets {count} outputs (largest label + 1), those of unused "
                       f"labels are never trained; renumber the labels 0..{len(labels) - 1} for {len(labels)} outputs")
    return count


def imagenet_layout(root: str) -> str:
    """'meta' when `root/meta/` holds train.txt or val.txt, else 'folders' when train/ or val/ holds class folders
    (a meta/ folder of other files beside them, such as a dataset's notes, does not count); a DataError says what was
    expected."""
    if os.path.isfile(root):
        raise DataError(f"data path {root} is a file, not a folder: give the folder that holds train/ and val/ (or "
                        f"meta/) as --data-path")
    if not os.path.isdir(root):
        where = "" if os.path.isabs(root) else f", relative to the current directory {os.getcwd()}"
        raise DataError(f"data path does not exist: {root} (set --data-path{where})")
    if any(os.path.isfile(os.path.join(root, "meta", name)) for name in ("train.txt", "val.txt")):
        return "meta"
    if has_class_folders(os.path.join(root, "train")) or has_class_folders(os.path.join(root, "val")):
        if os.path.isdir(os.path.join(root, "meta")):
            logger.info(f"{root}: meta/ holds no train.txt or val.txt: the images are read from the class folders "
                        f"of train/ and val/")
        return "folders"
    raise DataError(f"{root}: expected meta/train.txt and meta/val.txt with train/ and val/ images, "
                    f"or train/<class>/ and val/<class>/ folders (val/<class>/ alone to evaluate){_layout_hint(root)}")


def _layout_hint(root: str) -> str:
    """What the folder `root`, in neither layout, is instead, when it is recognised: a split given in place of its
    parent, a split of images without class folders (ImageNet's val/ as it comes), or class folders without a
    split; empty otherwise."""
    if os.path.basename(os.path.normpath(root)) in ("train", "val") and has_class_folders(root):
        parent = os.path.dirname(os.path.normpath(root)) or "."
        return (f"; it holds class folders itself, as a split does: give the folder that holds it, {parent}, as "
                f"--data-path")
    for split in ("val", "train"):
        split_dir = os.path.join(root, split)
        images = os.path.isdir(split_dir) and sum(
            entry.name.lower().endswith(IMAGE_EXTENSIONS) for entry in os.scandir(split_dir))
        if images:
            return (f"; {split_dir} holds {images} images but no class folders (as ImageNet's val/ comes): list them "
                    f"with their labels in {os.path.join(root, 'meta', split + '.txt')}, or move them into "
                    f"{split}/<class>/ folders")
    if not any(os.path.isdir(os.path.join(root, split)) for split in ("train", "val")) and has_class_folders(root):
        return (f"; its folders are no split: put the class folders under {os.path.join(root, 'val')} (and "
                f"{os.path.join(root, 'train')} to train)")
    return ""


def _meta_class_count(meta_path: str) -> int:
    """Largest label + 1 of a meta list, read without checking its images."""
    return max(label for _, label, _ in _meta_entries(meta_path)) + 1


def build_imagenet_val(root: str, num_classes: Optional[int] = None, classes: Optional[Sequence[str]] = None,
                       channels: int = 3) -> ImageListDataset:
    """The val dataset of an ImageNet-style tree (evaluation); the class count or order comes from the train split's
    list or folder names, without listing its images, or from val's folder names when there is no train/<class>/.
    `classes`, the class names a checkpoint was trained with, fix the order of the class-folder layout instead.
    `channels`: the model's input channels (3: RGB images, 1: gray)."""
    if imagenet_layout(root) == "meta":
        val_meta, train_meta = os.path.join(root, "meta", "val.txt"), os.path.join(root, "meta", "train.txt")
        val = read_meta_file(val_meta, os.path.join(root, "val"))
        if classes is not None:
            logger.warning(f"{root}: the checkpoint was trained on named classes ({first_few(list(classes), 3)}), "
                           f"the meta lists give numbers: label i is taken as its i-th class in that (sorted) order; "
                           f"the accuracy is right only if your labels were numbered so")
        if not os.path.isfile(train_meta):
            if num_classes is None:
                raise DataError(f"meta file not found: {train_meta}: evaluation reads the class count from it; "
                                f"without it, give --num-classes (the model's number of classes)")
            return ImageListDataset(val, max(label for _, label in val) + 1, channels=channels)
        count = _meta_class_count(train_meta)
        bad = [(p, lbl) for p, lbl in val if lbl >= count]
        if bad:
            raise DataError(f"{val_meta}: label {bad[0][1]} of {bad[0][0]} is not a train label "
                            f"(train has {count} classes)")
        return ImageListDataset(val, count, channels=channels)
    val_dir = os.path.join(root, "val")
    if not os.path.isdir(val_dir):
        raise DataError(f"validation folder not found: {val_dir}")
    source, val_names_classes = "the train split", False
    if classes is not None:
        _note_changed_train_folders(os.path.join(root, "train"), classes)
        source = "the checkpoint"
    elif has_class_folders(os.path.join(root, "train")):
        classes = class_folder_names(os.path.join(root, "train"))
        note_hidden_class_folders(os.path.join(root, "train"), classes)
    else:
        classes = class_folder_names(val_dir)
        note_hidden_class_folders(val_dir, classes)
        note = (f"{root}: no train/<class>/ folders: the {len(classes)} classes are the sorted folder names of val/ "
                f"(as torchvision's ImageFolder); the labels are the model's only if val/ has a folder for every "
                f"class it was trained on")
        if num_classes is not None and num_classes != len(classes):
            logger.warning(f"{note}; --num-classes {num_classes} differs from that count")
        else:
            logger.info(note)
        val_names_classes = True
    val, _ = scan_class_folders(val_dir, classes, source)
    if val_names_classes:
        _refuse_empty_val_classes(val_dir, classes, {label for _, label in val})
    return ImageListDataset(val, len(classes), classes, channels)


def _refuse_empty_val_classes(val_dir: str, classes: Sequence[str], labels: set[int]) -> None:
    """Where val/'s folder names are the classes (no train/<class>/), refuse a class folder without images (whose
    `labels` index is absent): a folder that is no class of the model shifts the labels of those after it."""
    empty = [name for i, name in enumerate(classes) if i not in labels]
    if empty:
        raise DataError(f"{val_dir}: class folder(s) {first_few(empty)} hold no image files; without train/<class>/ "
                        f"folders the classes are val/'s folder names, and one that is no class of the model shifts "
                        f"the labels after it: remove it, or name every class of the model by train/<class>/ folders "
                        f"(empty ones do)")


def _note_changed_train_folders(train_dir: str, classes: Sequence[str]) -> None:
    """Log a warning when the class folders of `train_dir` are no longer the `classes` a checkpoint was trained on."""
    if not has_class_folders(train_dir):
        return
    try:
        now = class_folder_names(train_dir)
    except DataError as err:  # a broken link: evaluation reads no training image
        logger.warning(f"{err}; the labels follow the checkpoint's {len(classes)} classes")
        return
    if now != list(classes):
        added, gone = sorted(set(now) - set(classes)), sorted(set(classes) - set(now))
        logger.warning(f"{train_dir}: its class folders are not those the checkpoint was trained on (added "
                       f"{added[:5]}, removed {gone[:5]}); the labels follow the checkpoint's {len(classes)} classes")


def build_imagenet(root: str, channels: int = 3) -> tuple[ImageListDataset, ImageListDataset]:
    """Train and val datasets of an ImageNet-style tree in either layout, decoded for a model of `channels` input
    channels (3: RGB, 1: gray)."""
    if imagenet_layout(root) == "meta":
        train_meta, val_meta = os.path.join(root, "meta", "train.txt"), os.path.join(root, "meta", "val.txt")
        train = read_meta_file(train_meta, os.path.join(root, "train"))
        val = read_meta_file(val_meta, os.path.join(root, "val"))
        labels = {label for _, label in train}
        num_classes = _meta_num_classes(train_meta, labels)
        bad = [(p, lbl) for p, lbl in val if lbl >= num_classes]
        if bad:
            raise DataError(f"{val_meta}: label {bad[0][1]} of {bad[0][0]} "
                            f"is not a train label (train has {num_classes} classes)")
        note_unmeasured(val_meta, sorted(labels - {label for _, label in val}), len(labels), "train labels")
    else:
        val_dir, train_dir = os.path.join(root, "val"), os.path.join(root, "train")
        if not has_class_folders(train_dir):
            raise DataError(f"{train_dir}: no class folders: training needs train/<class>/ images (tools/test.py "
                            f"evaluates with val/<class>/ alone)")
        if not os.path.isdir(val_dir):
            raise DataError(f"validation folder not found: {val_dir}")
        train, classes = scan_class_folders(train_dir)
        val, _ = scan_class_folders(val_dir, classes)
        return (ImageListDataset(train, len(classes), classes, channels),
                ImageListDataset(val, len(classes), classes, channels))
    return (ImageListDataset(train, num_classes, channels=channels),
            ImageListDataset(val, num_classes, channels=channels))
