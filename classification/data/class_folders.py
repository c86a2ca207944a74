"""The class-folder layout of a split, `<split>/<class>/<image>`, listed in torchvision ImageFolder's order: classes
are the sorted folder names (or a given order, matched in any Unicode normalization); links are followed, hidden
files and folders and unread image types skipped and counted."""
from __future__ import annotations

import logging
import os
import unicodedata
from typing import Callable, Optional, Sequence

from .errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Image types that are not read (torchvision's ImageFolder skips them too); the listing says how many were skipped.
UNREAD_IMAGE_EXTENSIONS = (".gif", ".jfif", ".jpe", ".jp2", ".j2k", ".jxl", ".heic", ".heif", ".avif", ".svg", ".ico",
                           ".tga", ".psd", ".dng", ".cr2", ".nef", ".arw", ".exr", ".hdr", ".apng", ".dib", ".pcx")
logger = logging.getLogger("localmamba")


def first_few(names: Sequence, count: int = 5) -> str:
    """The first `count` of `names`, comma-separated, with ', ...' when there are more."""
    return ", ".join(str(name) for name in names[:count]) + (", ..." if len(names) > count else "")


def note_unmeasured(where: str, absent: Sequence, total: int, kind: str = "classes") -> None:
    """Log the `absent` classes (of `total`) that the val split `where` has no image of: their accuracy is not
    measured."""
    if absent:
        logger.info(f"{where}: no images of {len(absent)} of the {total} {kind} ({first_few(absent)}): "
                    f"their accuracy is not measured")


def broken_link(entry: os.DirEntry) -> bool:
    """Whether a folder entry is a link to nothing (its target removed, or on a drive that is not mounted)."""
    return entry.is_symlink() and not os.path.exists(entry.path)


def _broken_folder_link(path: str, unless: str = "") -> DataError:
    """The error of a broken link `path` that is not named like an image: most likely a linked folder."""
    return DataError(f"broken link {path} -> {os.readlink(path)}: what it points to does not exist (a folder on a "
                     f"drive that is not mounted?); restore it, or remove the link{unless}")


def has_class_folders(split_dir: str) -> bool:
    """Whether `split_dir` exists and holds at least one sub-folder (or a broken link, which `class_folder_names`
    refuses)."""
    return os.path.isdir(split_dir) and any(e.is_dir() or broken_link(e) for e in os.scandir(split_dir))


def class_folder_names(split_dir: str) -> list[str]:
    """The sorted sub-folder names of a split: the classes of the class-folder layout. A broken link in the split is
    refused: ImageFolder drops it unseen, so a class folder linked from a drive that is not mounted left the classes,
    shifting the labels of those after it."""
    entries = sorted(os.scandir(split_dir), key=lambda entry: entry.name)
    broken = [entry.path for entry in entries if broken_link(entry)]
    if broken:
        raise _broken_folder_link(broken[0], " if it is no class")
    return [entry.name for entry in entries if entry.is_dir()]


def _inside(path: str, folder: str) -> bool:
    """Whether real path `path` is `folder` or lies under it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_link(link: str, real: str, guards: dict[str, str], folder: str) -> None:
    """Refuse a linked folder (at real path `real`) that is or holds the split folder or a class folder other than
    the class `folder` it lies in (`guards`: real path -> what to call it): its images would be listed again."""
    own = os.path.realpath(folder)
    for guarded, shown in guards.items():
        if guarded != own and _inside(guarded, real):
            target = f" -> {os.readlink(link)}" if os.path.islink(link) else ""
            what = "is" if guarded == real else "holds"
            raise DataError(f"{link}{target}: the linked folder {what} {shown}, whose images would be listed again "
                            f"as class {os.path.basename(folder)!r}; remove the link (links in a class folder must "
                            f"lead to images of that class only)")


def _image_files(folder: str, guards: dict[str, str], skipped: list[str]) -> list[str]:
    """The image files under `folder` in torchvision ImageFolder's order (sub-folders by path, files by name), linked
    folders followed as it does, but each real folder once (by its first path in sorted order; ImageFolder would
    list it again, or loop). A link to an image that does not exist, a linked folder that is or holds a folder of
    `guards` (real path -> folder as named: the split and the other classes), or a folder that cannot be read, is
    refused here rather than when it is first read; only links cost a file-system call beyond listing the folders.
    Hidden files ('.' names, such as macOS's '._x.jpg') and images of types not read are added to `skipped`, and so
    are hidden sub-folders that hold images (`.thumbnails`, `.ipynb_checkpoints`: copies, not more of the class)."""
    by_folder, seen, pending = [], set(), [(folder, os.path.islink(folder))]
    while pending:
        current, linked = pending.pop()
        real = os.path.realpath(current)
        if real in seen:  # a link back up the tree, or a second link to the same folder
            continue
        if linked:
            _check_link(current, real, guards, folder)
        seen.add(real)
        files = []
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name, reverse=True)   # popped in order
        except OSError as err:
            raise DataError(f"cannot list {current}: {err.strerror or err}") from None
        for entry in entries:
            lower = entry.name.lower()
            if entry.is_dir():
                if not entry.name.startswith("."):
                    pending.append((entry.path, entry.is_symlink()))
                elif _holds_images(entry.path):
                    skipped.append(entry.path)
            elif broken_link(entry) and not entry.name.startswith("."):
                if lower.endswith(IMAGE_EXTENSIONS + UNREAD_IMAGE_EXTENSIONS):
                    raise DataError(f"broken link {entry.path} -> {os.readlink(entry.path)}: the image it points to "
                                    f"does not exist; remove the link or restore the image")
                raise _broken_folder_link(entry.path)
            elif not lower.endswith(IMAGE_EXTENSIONS + UNREAD_IMAGE_EXTENSIONS):
                continue  # not an image (notes, .DS_Store, Thumbs.db): nothing to say
            elif entry.name.startswith(".") or lower.endswith(UNREAD_IMAGE_EXTENSIONS):
                skipped.append(entry.path)
            else:
                files.append(entry.path)
        by_folder.append((current, sorted(files)))
    return [path for _, files in sorted(by_folder) for path in files]


def _holds_images(folder: str) -> bool:
    """Whether a file named like an image lies anywhere under `folder` (links not followed)."""
    return any(name.lower().endswith(IMAGE_EXTENSIONS + UNREAD_IMAGE_EXTENSIONS)
               for _, _, names in os.walk(folder) for name in names)


def _hidden_files_and_folders(skipped: Sequence[str]) -> tuple[list[str], list[str]]:
    """The hidden files of `skipped`, and its hidden folders (those holding images, `_image_files` adds)."""
    hidden = [path for path in skipped if os.path.basename(path).startswith(".")]
    folders = [path for path in hidden if os.path.isdir(path)]
    return [path for path in hidden if path not in folders], folders


def _skipped_types(skipped: Sequence[str]) -> dict[str, int]:
    """How many of the `skipped` files that are not hidden have each (lower-case) extension."""
    types: dict[str, int] = {}
    for path in skipped:
        if not os.path.basename(path).startswith("."):
            ext = os.path.splitext(path)[1].lower()
            types[ext] = types.get(ext, 0) + 1
    return dict(sorted(types.items()))


def _what_was_skipped(skipped: Sequence[str]) -> str:
    """` (skipped: ...)`, saying how many hidden files and files of each unread type `skipped` holds; empty for
    none: the end of an error about a folder without images to read."""
    hidden, hidden_folders = _hidden_files_and_folders(skipped)
    types = _skipped_types(skipped)
    parts = [f"{len(hidden)} hidden files, names starting with '.'"] if hidden else []
    if hidden_folders:
        parts.append(f"{len(hidden_folders)} hidden folders of images, names starting with '.'")
    if types:
        counts = ", ".join(f"{ext}: {n}" for ext, n in types.items())
        parts.append(f"{sum(types.values())} of types that are not read, {counts}; convert them to one of "
                     f"{', '.join(IMAGE_EXTENSIONS)}")
    return f" (skipped: {'; '.join(parts)})" if parts else ""


def _note_skipped_files(split_dir: str, skipped: Sequence[str]) -> None:
    """Log how many files named like images were skipped under `split_dir`: hidden ones (and hidden folders of
    them), unread types, and images that lie in the split folder itself, beside the class folders (well-known
    non-image files are not counted)."""
    hidden, hidden_folders = _hidden_files_and_folders(skipped)
    if hidden:
        logger.info(f"{split_dir}: skipped {len(hidden)} hidden files named like images (names starting with '.', "
                    f"such as the '._' files macOS leaves), e.g. {os.path.relpath(hidden[0], split_dir)}")
    if hidden_folders:
        logger.info(f"{split_dir}: skipped {len(hidden_folders)} hidden folders holding images in class folders "
                    f"(names starting with '.', such as .thumbnails), e.g. "
                    f"{os.path.relpath(hidden_folders[0], split_dir)}")
    types = _skipped_types(skipped)
    if types:
        counts = ", ".join(f"{ext}: {n}" for ext, n in types.items())
        logger.info(f"{split_dir}: skipped {sum(types.values())} image files of types that are not read ({counts}); "
                    f"convert them to one of {', '.join(IMAGE_EXTENSIONS)} to use them")
    loose = _loose_images(split_dir)
    if loose:
        logger.info(f"{split_dir}: not used: {len(loose)} image files beside the class folders, in no class "
                    f"({first_few(loose, 3)}); move them into their class folders")


def _loose_images(split_dir: str) -> list[str]:
    """The sorted names of the image files that lie in the split folder itself, beside the class folders."""
    return sorted(e.name for e in os.scandir(split_dir) if not e.is_dir() and not e.name.startswith(".")
                  and e.name.lower().endswith(IMAGE_EXTENSIONS + UNREAD_IMAGE_EXTENSIONS))


def note_hidden_class_folders(split_dir: str, classes: Sequence[str]) -> None:
    """Warn about class folders that tools leave behind (`.ipynb_checkpoints`, `__MACOSX`, any dot-folder): like
    torchvision's ImageFolder we keep them as classes, which shifts the labels of every class sorted after them."""
    hidden = [name for name in classes if name.startswith(".") or name == "__MACOSX"]
    if hidden:
        logger.warning(f"{split_dir}: the folders {hidden[:5]} count as classes (as in torchvision's ImageFolder), "
                       f"making {len(classes)} classes; remove them if they hold no class of your data")


def _class_labels(classes: Sequence[str]) -> Callable[[str], Optional[int]]:
    """The label of a folder name among `classes`: the class of that name, else the class whose name is the same
    text in another Unicode normalization (a copy made on macOS names `café` with a combining accent, NFD, which
    looks the same as the composed NFC name another system wrote); None for no class."""
    index = {name: i for i, name in enumerate(classes)}
    composed: dict[str, int] = {}
    for name, i in index.items():
        composed.setdefault(unicodedata.normalize("NFC", name), i)
    return lambda name: index[name] if name in index else composed.get(unicodedata.normalize("NFC", name))


def _case_hint(names: Sequence[str], classes: Sequence[str]) -> str:
    """` (...)` naming, for the first of the folder `names` that differs from a class of `classes` in letter case
    only, that class; empty when none does."""
    by_case = {name.casefold(): name for name in classes}
    for name in names:
        if name.casefold() in by_case:
            return f" ({name!r} differs from its class {by_case[name.casefold()]!r} in letter case only: rename it)"
    return ""


def scan_class_folders(split_dir: str, classes: Sequence[str] | None = None,
                       source: str = "the train split") -> tuple[list[tuple[str, int]], list[str]]:
    """List `split_dir/<class>/<image>` files; `classes` fixes the class order (those of `source`; a folder name
    matches its class in any Unicode normalization): then folders of other names that hold no image files (left by
    tools) are ignored, and the classes without images are logged."""
    found = class_folder_names(split_dir)
    defines_classes = classes is None
    if classes is None:
        classes = found
    label_of = _class_labels(classes)
    unknown = sorted(name for name in found if label_of(name) is None)
    renamed = [name for name in found if name not in unknown and classes[label_of(name)] != name]
    if renamed:
        logger.info(f"{split_dir}: the folders {renamed[:5]} are the classes "
                    f"{[classes[label_of(name)] for name in renamed[:5]]} of {source} in another Unicode "
                    f"normalization (as a copy made on macOS names them)")
    if unknown:
        empty = [name for name in unknown if not _image_files(os.path.join(split_dir, name), {}, [])]
        if len(empty) < len(unknown):
            named = [name for name in unknown if name not in empty]
            raise DataError(f"{split_dir}: class folders {named[:5]} are not classes of {source}"
                            f"{_case_hint(named, classes)}")
        logger.info(f"{split_dir}: ignoring the folders {empty[:5]}: they hold no image files and are not classes of "
                    f"{source}")
        found = [name for name in found if name not in unknown]
    if defines_classes:
        note_hidden_class_folders(split_dir, found)
    guards = {os.path.realpath(split_dir): f"the split folder {split_dir}"}  # named first when a link holds it
    guards.update((os.path.realpath(os.path.join(split_dir, name)), f"the class folder {os.path.join(split_dir, name)}")
                  for name in found)
    samples, skipped, with_images = [], [], set()
    for name in found:
        before, skipped_before, folder = len(samples), len(skipped), os.path.join(split_dir, name)
        samples += [(path, label_of(name)) for path in _image_files(folder, guards, skipped)]
        if len(samples) > before:
            with_images.add(label_of(name))
        elif defines_classes:
            what = " it reads" + _what_was_skipped(skipped[skipped_before:]) if len(skipped) > skipped_before else ""
            raise DataError(f"class folder {folder} holds no image files{what}: it would add a class that never "
                            f"appears in training; remove it or add images")
    _note_skipped_files(split_dir, skipped)
    if not samples:
        loose = len(_loose_images(split_dir))
        flat = (f"; its {loose} images lie in it directly, in no class folder (as ImageNet's val/ comes): move them "
                f"into {os.path.join(split_dir, '<class>')} folders") if loose else ""
        raise DataError(f"no image files found under {split_dir}{_what_was_skipped(skipped)}{flat}")
    if not defines_classes:
        note_unmeasured(split_dir, [name for i, name in enumerate(classes) if i not in with_images], len(classes))
    return samples, list(classes)
