"""A researcher's own image folders: what real data holds (mixed formats and modes, links, stray files, odd names, a
meta list saved by another editor) is listed as torchvision's ImageFolder lists it, refused at start in one line, or
labelled the same way in training, resuming and tools/test.py."""
import codecs
import logging
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from classification.data import DataError, build_datasets, build_eval_dataset
from classification.data.defaults import resolve_dataset_defaults
from classification.data.class_folders import first_few, scan_class_folders
from classification.data.image_decoding import load_image
from classification.data.image_list import build_imagenet_val
from classification.data.transforms import build_transform
from classification.engine.config import ConfigError, parse_args
from classification.engine.evaluate import test as evaluate
from classification.engine.model_builder import build_model
from classification.engine.scheduler import WarmupScheduler
from classification.engine.trainer import train

from training_helpers import (REPO, TINY_MODEL, TOOLS, assert_same_run, make_folder_tree, make_meta_tree, rows,
                              snapshot, tool_env, write_image)

MODES = ("RGB", "L", "P", "RGBA", "CMYK", "I;16")


def write_mode_image(path: str, mode: str, seed: int) -> None:
    """A 12x12 image of Pillow mode `mode` saved as the extension of `path` says (JPEG for CMYK, PNG otherwise)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (12, 12), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).convert(mode)
    img.save(path)


def make_own_tree(root: str) -> None:
    """train/ and val/ class folders named with a space and an accent, images of every mode with upper-case
    extensions, stray files (.DS_Store, a .txt), a linked image and a linked sub-folder; 'dog' has no val folder."""
    for split, n in (("train", 4), ("val", 2)):
        for c, name in enumerate(("Banana split", "apple", "café", "dog")):
            if split == "val" and name == "dog":
                continue
            for i in range(n):
                mode = MODES[(c + i) % len(MODES)]
                ext = ".JPG" if mode == "CMYK" else (".PNG" if i % 2 else ".png")
                write_mode_image(os.path.join(root, split, name, f"{i}{ext}"), mode, seed=10 * c + i)
        with open(os.path.join(root, split, "apple", ".DS_Store"), "wb") as f:
            f.write(b"\0\1\2")
        with open(os.path.join(root, split, "apple", "notes.txt"), "w") as f:
            f.write("shot on a sunny day")
    write_image(os.path.join(root, "elsewhere", "extra.jpeg"), seed=99)
    os.symlink(os.path.join(root, "elsewhere"), os.path.join(root, "train", "dog", "more"))
    os.symlink(os.path.join(root, "train", "apple", "0.png"), os.path.join(root, "train", "dog", "copy.png"))


@pytest.fixture(scope="module")
def own_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("own"))
    make_own_tree(root)
    return root


def test_the_images_and_classes_are_imagefolders(own_tree):
    """Same classes, files and labels as torchvision's ImageFolder: linked folders are followed, stray files
    skipped; val takes train's class indices."""
    train_dir = os.path.join(own_tree, "train")
    samples, classes = scan_class_folders(train_dir)
    reference = ImageFolder(train_dir)
    assert classes == reference.classes == ["Banana split", "apple", "café", "dog"]
    assert samples == reference.samples and len(samples) == 18
    assert os.path.join(train_dir, "dog", "more", "extra.jpeg") in [p for p, _ in samples]
    cfg = parse_args(["--data-path", own_tree, "-j", "0", "--img-size", "16"])
    train_set, val_set = build_datasets(cfg)
    assert cfg.num_classes == 4 and train_set.classes == val_set.classes == classes
    assert sorted(y for _, y in val_set.samples) == [0, 0, 1, 1, 2, 2]
    transform = build_transform(cfg, training=False)
    assert all(transform(image).shape == (3, 16, 16) for image, _ in train_set)  # every mode decodes


def test_a_broken_link_is_refused_at_start(tmp_path):
    root = tmp_path / "data"
    make_own_tree(str(root))
    link = root / "train" / "dog" / "gone.jpg"
    os.symlink(tmp_path / "deleted.jpg", link)
    with pytest.raises(DataError, match=rf"^broken link {link} -> {tmp_path / 'deleted.jpg'}: the image it points "
                                        rf"to does not exist; remove the link or restore the image$"):
        build_datasets(parse_args(["--data-path", str(root), "-j", "0"]))


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_class_folder_linked_from_a_missing_drive_is_refused_not_dropped(tmp_path, split, localmamba_log):
    """A class folder that is a broken link (its drive not mounted) was dropped unseen, as ImageFolder drops it:
    training built a model of one class fewer, every later class's label shifted, and evaluation left it out."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("cat", "eel"), per_class=2, val_per_class=1)
    for side in ("train", "val"):
        os.symlink(tmp_path / "data2" / side / "dog", root / side / "dog")
        if side != split:
            shutil.copytree(root / side / "cat", tmp_path / "data2" / side / "dog")
    link = root / split / "dog"
    message = (rf"^broken link {link} -> {tmp_path / 'data2' / split / 'dog'}: what it points to does not exist \(a "
               rf"folder on a drive that is not mounted\?\); restore it, or remove the link if it is no class$")
    with pytest.raises(DataError, match=message):
        build_datasets(parse_args(["--data-path", str(root), "-j", "0"]))
    if split == "val":
        with pytest.raises(DataError, match=message):
            build_eval_dataset(parse_args(["--data-path", str(root), "-j", "0"]), classes=["cat", "dog", "eel"])
    else:  # a checkpoint's classes label val/; the broken train/ link is only logged
        assert len(build_eval_dataset(parse_args(["--data-path", str(root), "-j", "0"]),
                                      classes=["cat", "dog", "eel"])) == 3
        assert f"broken link {link}" in localmamba_log.text
    shutil.copytree(root / split / "cat", tmp_path / "data2" / split / "dog")  # the drive is back
    train_set, val_set = build_datasets(parse_args(["--data-path", str(root), "-j", "0"]))
    assert train_set.classes == ["cat", "dog", "eel"] and sorted(label for _, label in val_set.samples) == [0, 1, 2]


def test_a_broken_link_to_a_folder_inside_a_class_is_refused(tmp_path):
    """A sub-folder of a class linked from a drive that is not mounted lost its images unseen."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("cat", "dog"), per_class=2, val_per_class=1)
    link = root / "train" / "dog" / "batch2"
    os.symlink(tmp_path / "drive2" / "dog", link)
    with pytest.raises(DataError, match=rf"^broken link {link} -> {tmp_path / 'drive2' / 'dog'}: what it points to "
                                        rf"does not exist \(a folder on a drive that is not mounted\?\); restore "
                                        rf"it, or remove the link$"):
        build_datasets(parse_args(["--data-path", str(root), "-j", "0"]))


def test_an_unreadable_image_says_what_to_do(tmp_path):
    path = tmp_path / "half.jpg"
    write_image(str(tmp_path / "full.jpg"), seed=1, size=64)
    path.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    with pytest.raises(DataError, match=rf"^cannot read image {path}: .*; replace the file with a readable image, or "
                                        rf"remove it \(the data's order then changes\)$"):
        load_image(str(path))


@pytest.mark.parametrize("content", [b"", b"not an image\n"])
def test_a_file_of_no_image_type_names_its_path_once(tmp_path, content):
    """An empty file or text named .jpg: Pillow's reason repeated the path as its open file's repr
    (`cannot identify image file <_io.BufferedReader name='...'>`)."""
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError) as refused:
        load_image(str(path))
    assert str(refused.value) == (f"cannot read image {path}: cannot identify image file (empty, cut short, or of a "
                                  f"type Pillow does not read); replace the file with a readable image, or remove it "
                                  f"(the data's order then changes)")


def test_a_meta_list_saved_with_a_byte_order_mark_is_read(tmp_path):
    root = str(tmp_path)
    lists = make_meta_tree(root)
    meta = tmp_path / "meta" / "train.txt"
    meta.write_text(meta.read_text(), encoding="utf-8-sig")  # as Windows Notepad saves it
    train_set, _ = build_datasets(parse_args(["--data-path", root, "-j", "0"]))
    assert train_set.samples == [(os.path.join(root, "train", rel), y) for rel, y in lists["train"]]


def test_a_meta_list_that_is_not_utf8_is_one_line(tmp_path):
    root = str(tmp_path)
    make_meta_tree(root)
    meta = tmp_path / "meta" / "val.txt"
    original = meta.read_bytes()
    for bom in (b"", codecs.BOM_UTF8):   # the line and byte named are the file's, with or without a leading BOM
        meta.write_bytes(bom + original + "caf\u00e9/1.JPEG 0\n".encode("latin-1"))
        with pytest.raises(DataError, match=rf"^{meta}:7: not UTF-8 text \(byte 0xe9\); save the list as UTF-8$"):
            build_datasets(parse_args(["--data-path", root, "-j", "0"]))


def test_model_kwargs_of_another_depth_than_the_searched_directions_are_a_config_error():
    cfg = parse_args(["--model", "local_vim_tiny", "--model-kwargs", "depth=2", "embed_dim=16", "--num-classes", "4"])
    with pytest.raises(ConfigError, match=r"^model local_vim_tiny with depth=2 embed_dim=16: .*has 20 "
                                          r"layers, but the model has 2 layers; give --directions FILE with one list "
                                          r"of directions per layer \(tools/vis_search_prob.py writes one\)$"):
        build_model(cfg)


def test_the_checkpoint_keeps_its_class_names_for_test_and_resume(tmp_path):
    """A class folder added to train/ after training ('aardvark', sorted first): tools/test.py labels val by the
    checkpoint's classes (the log warns), --resume is refused."""
    root = tmp_path / "data"
    make_own_tree(str(root))
    run = [*TINY_MODEL, "--data-path", str(root), "-b", "4", "-j", "0", "--warmup-epochs", "0", "--output",
           str(tmp_path / "out"), "--experiment", "own"]
    train(parse_args([*run, "--epochs", "1"]))
    last = str(tmp_path / "out" / "own" / "last.pth.tar")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["classes"] == ["Banana split", "apple", "café", "dog"]
    write_image(str(root / "train" / "aardvark" / "0.jpg"), seed=7)
    metrics = evaluate(parse_args([*run, "--resume", last, "--experiment", "eval"]))
    model = build_model(parse_args([*TINY_MODEL, "--num-classes", "4"])).eval()
    model.load_state_dict(ckpt["model"])
    eval_cfg = parse_args([*TINY_MODEL, "--data-path", str(root)])
    resolve_dataset_defaults(eval_cfg)
    transform = build_transform(eval_cfg, training=False)
    losses, correct = [], []
    for label, name in enumerate(ckpt["classes"][:3]):  # no val/dog/
        for fname in sorted(os.listdir(root / "val" / name)):
            if fname.lower().endswith((".png", ".jpg")):
                with torch.no_grad():
                    logits = model(transform(load_image(str(root / "val" / name / fname)))[None])[0]
                losses.append(-torch.log_softmax(logits, 0)[label].item())
                correct.append(logits.argmax().item() == label)
    assert len(losses) == 6 and metrics["test_loss"] == pytest.approx(np.mean(losses), abs=1e-5)
    assert metrics["top1"] == pytest.approx(100 * np.mean(correct))
    log_text = next((tmp_path / "out" / "eval").glob("eval_*.txt")).read_text()
    assert "its class folders are not those the checkpoint was trained on (added ['aardvark'], removed [])" in log_text
    with pytest.raises(DataError, match=rf"^{last} was trained on other class folders than those of the data \(added "
                                        rf"\['aardvark'\], removed \[\]\): its labels would change meaning; "
                                        rf"restore the folders or start a new run \(--finetune {last}\)$"):
        train(parse_args([*run, "--epochs", "2", "--resume", last]))


def test_an_unreadable_val_image_loses_no_training(tmp_path):
    """An image that cannot be decoded shows only when validation reads it, after a whole epoch of training: the
    epoch's training is in last.pth.tar (marked as stopped after its last step), and --resume, once the file is
    fixed, validates without training the epoch again."""
    root = tmp_path / "data"
    make_folder_tree(str(root), per_class=3, val_per_class=1)
    bad = root / "val" / "dog" / "0.png"
    good = bad.read_bytes()
    bad.write_bytes(good[:40])
    run = [*TINY_MODEL, "--data-path", str(root), "-b", "3", "-j", "0", "--warmup-epochs", "0", "--output",
           str(tmp_path / "out"), "--experiment", "run", "--epochs", "1"]
    with pytest.raises(DataError, match=r"cannot read image .*0\.png"):
        train(parse_args(run))
    last = tmp_path / "out" / "run" / "last.pth.tar"
    ckpt = torch.load(last, weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["steps_per_epoch"]) == (0, 3, 3)  # 9 images, batches of 3: all trained
    log = next((tmp_path / "out" / "run").glob("log_*.txt")).read_text()
    assert f"Validation of epoch 0 failed; its training is saved: once the cause is fixed, continue with --resume " \
           f"{last}" in log
    lr_rows = rows(tmp_path / "out" / "run" / "lr.csv")
    bad.write_bytes(good)
    metrics = train(parse_args([*run, "--resume", str(last)]))
    assert metrics["train_loss"] == pytest.approx(ckpt["train_loss_sums"][0][0] / ckpt["train_loss_sums"][0][1])
    assert rows(tmp_path / "out" / "run" / "lr.csv") == lr_rows                  # no step was trained again
    assert [row[0] for row in rows(tmp_path / "out" / "run" / "metrics.csv")[1:]] == ["0"]
    assert torch.load(last, weights_only=True)["step"] is None
    logs = "".join(path.read_text() for path in (tmp_path / "out" / "run").glob("log_*.txt"))
    assert f"Resumed {last}: the training of epoch 0 is done, validating it" in logs  # not "starting training"


def break_the_images_after_step_two(root, run, monkeypatch) -> dict:
    """Train `run` as experiment 'broken' on `root`, whose training images become unreadable after step 2; returns
    their contents, to put back."""
    images = {path: path.read_bytes() for path in (root / "train").rglob("*.png")}
    step = WarmupScheduler.step

    def step_then_break_the_images(scheduler):
        step(scheduler)
        if scheduler.t == 2:
            for path in images:
                path.write_bytes(b"not an image")

    monkeypatch.setattr(WarmupScheduler, "step", step_then_break_the_images)
    with pytest.raises(DataError, match=r"^cannot read image .*\.png"):
        train(parse_args([*run, "--experiment", "broken"]))
    monkeypatch.undo()
    return images


def test_a_removed_image_warns_that_the_resumed_epoch_has_another_order(tmp_path, monkeypatch):
    """The unreadable file removed instead of replaced: the epoch's order is drawn from the data's size, so the
    epoch resumed at step 2 is not the one it began; the resume says so (it said nothing)."""
    root = tmp_path / "data"
    make_folder_tree(str(root), per_class=4, val_per_class=1)
    run = [*TINY_MODEL, "--data-path", str(root), "-b", "3", "-j", "0", "--warmup-epochs", "0", "--epochs", "1",
           "--output", str(tmp_path / "out")]
    images = break_the_images_after_step_two(root, run, monkeypatch)
    removed, *kept = sorted(images)
    removed.unlink()
    for path in kept:
        path.write_bytes(images[path])
    last = tmp_path / "out" / "broken" / "last.pth.tar"
    train(parse_args([*run, "--experiment", "broken", "--resume", str(last)]))
    log = "".join(path.read_text() for path in (tmp_path / "out" / "broken").glob("log_*.txt"))
    assert (f"WARNING {last} stopped in the middle of epoch 0 with 12 training images, the data now has 11: the rest "
            f"of the epoch follows another order") in log


def test_an_unreadable_train_image_loses_no_step(tmp_path, monkeypatch):
    """The images become unreadable after step 2 of 4: the two steps are saved in last.pth.tar, the log says how
    to continue, and --resume, once the files are back, ends with the weights of a run that never failed."""
    root = tmp_path / "data"
    make_folder_tree(str(root), per_class=4, val_per_class=1)
    run = [*TINY_MODEL, "--data-path", str(root), "-b", "3", "-j", "0", "--warmup-epochs", "0", "--epochs", "1",
           "--model-ema", "--output", str(tmp_path / "out")]
    train(parse_args([*run, "--experiment", "whole"]))
    images = break_the_images_after_step_two(root, run, monkeypatch)
    folder = tmp_path / "out" / "broken"
    last = folder / "last.pth.tar"
    assert (torch.load(last, weights_only=True)["epoch"], torch.load(last, weights_only=True)["step"]) == (0, 2)
    assert (f"Reading the training data of epoch 0 failed after step 2 of 4; its training up to step 2 is saved: "
            f"once the cause is fixed, continue with --resume {last}") in next(folder.glob("log_*.txt")).read_text()
    for path, data in images.items():
        path.write_bytes(data)
    train(parse_args([*run, "--experiment", "broken", "--resume", str(last)]))
    assert_same_run(snapshot(folder), snapshot(tmp_path / "out" / "whole"))
    assert "another order" not in "".join(path.read_text() for path in folder.glob("log_*.txt"))


def test_an_unreadable_train_image_with_loader_workers_ends_the_run(tmp_path):
    """With loader workers (-j 2) the run printed its error line and then never exited: the workers, kept alive by
    the error's traceback, ignore SIGTERM, and multiprocessing waited for them at exit."""
    root = tmp_path / "data"
    make_folder_tree(str(root), per_class=4, val_per_class=1)
    empty = sorted((root / "train" / "dog").glob("*.png"))[0]
    empty.write_bytes(b"")
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, "train.py"), *TINY_MODEL, "--data-path", str(root),
                           "-b", "3", "-j", "2", "--epochs", "1", "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, env=tool_env(), timeout=180, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: cannot read image {empty}: "), proc.stderr[-2000:]


def test_an_unreadable_train_image_at_an_epochs_start_names_the_last_epoch_end(tmp_path, monkeypatch):
    """The first batch of epoch 1 cannot be read: nothing of epoch 1 is trained, last.pth.tar stays epoch 0's end,
    and the log says so (not "up to step 0")."""
    root = tmp_path / "data"
    make_folder_tree(str(root), per_class=4, val_per_class=1)
    step = WarmupScheduler.step

    def step_then_break_the_images(scheduler):
        step(scheduler)
        if scheduler.t == 4:  # the last step of epoch 0 (12 images, batches of 3)
            for path in (root / "train").rglob("*.png"):
                path.write_bytes(b"not an image")

    monkeypatch.setattr(WarmupScheduler, "step", step_then_break_the_images)
    with pytest.raises(DataError, match=r"^cannot read image "):
        train(parse_args([*TINY_MODEL, "--data-path", str(root), "-b", "3", "-j", "0", "--warmup-epochs", "0",
                          "--epochs", "2", "--output", str(tmp_path / "out"), "--experiment", "run"]))
    folder = tmp_path / "out" / "run"
    ckpt = torch.load(folder / "last.pth.tar", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (0, None)
    assert (f"Reading the training data of epoch 1 failed after step 0 of 4; the epochs before it are saved: once "
            f"the cause is fixed, continue with --resume {folder / 'last.pth.tar'}"
            ) in next(folder.glob("log_*.txt")).read_text()


def test_a_folder_linked_twice_is_listed_once_under_its_first_name(tmp_path, monkeypatch):
    """Two links in one class to the same real folder: its images are listed once, under the link that sorts first
    (os.scandir's order is the file system's); a folder that cannot be listed is one line, not a traceback."""
    write_image(str(tmp_path / "shared" / "x.jpg"), seed=1)
    write_image(str(tmp_path / "train" / "cat" / "y.jpg"), seed=2)
    for name in ("zz_link", "aa_link", "mm_link"):
        os.symlink(tmp_path / "shared", tmp_path / "train" / "cat" / name)
    samples, classes = scan_class_folders(str(tmp_path / "train"))
    assert classes == ["cat"]
    assert samples == [(str(tmp_path / "train" / "cat" / "y.jpg"), 0),
                       (str(tmp_path / "train" / "cat" / "aa_link" / "x.jpg"), 0)]
    scandir = os.scandir

    def unreadable(path):
        if os.path.basename(path) == "aa_link":
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", unreadable)
    with pytest.raises(DataError, match=r"^cannot list .*aa_link: Permission denied$"):
        scan_class_folders(str(tmp_path / "train"))


@pytest.mark.parametrize("leftover", [".ipynb_checkpoints", "__MACOSX"])
def test_a_folder_left_by_a_tool_is_a_class_with_a_warning(tmp_path, localmamba_log, leftover):
    """As in ImageFolder, a notebook's or an archiver's folder with images is a class (index 0: sorted first), so every
    real class moves up one label; the warning names it and the class count it makes."""
    localmamba_log.set_level(logging.WARNING, logger="localmamba")
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("cat", "dog"), per_class=2)
    write_image(str(root / "train" / leftover / "copy.png"), seed=5)
    samples, classes = scan_class_folders(str(root / "train"))
    assert classes == ImageFolder(str(root / "train")).classes and classes[0] == leftover and len(classes) == 3
    warnings = [r.getMessage() for r in localmamba_log.records if r.levelno == logging.WARNING]
    assert warnings == [f"{root / 'train'}: the folders ['{leftover}'] count as classes (as in torchvision's "
                        f"ImageFolder), making 3 classes; remove them if they hold no class of your data"]


def test_meta_lists_take_paths_with_spaces_and_the_train_lists_class_count(tmp_path):
    """A listed path may hold spaces (the label is the last field); evaluation counts the classes of train.txt, so a
    val list without the highest class keeps the model's class count and its label check."""
    from classification.data.image_list import read_meta_file
    root = tmp_path / "data"
    make_meta_tree(str(root), classes=4, per_class=1, val_per_class=1)
    write_image(str(root / "val" / "my photos" / "a b.JPEG"), seed=7)
    (root / "meta" / "val.txt").write_text("my photos/a b.JPEG 2\nILSVRC_val_0_0.JPEG 0\nILSVRC_val_1_0.JPEG 1\n")
    assert read_meta_file(str(root / "meta" / "val.txt"), str(root / "val"))[0] == (
        os.path.join(str(root / "val"), "my photos/a b.JPEG"), 2)
    val = build_imagenet_val(str(root))
    assert val.num_classes == 4 and len(val) == 3
    (root / "meta" / "val.txt").write_text("ILSVRC_val_0_0.JPEG 4\n")
    with pytest.raises(DataError, match=r"label 4 of .* is not a train label \(train has 4 classes\)"):
        build_imagenet_val(str(root))


def test_a_listed_path_with_a_leading_slash_is_under_the_root_as_in_the_original(tmp_path):
    """The original reads `root + '/' + path`: a list line `/n0/x.JPEG 0` names `root/n0/x.JPEG`. It was taken as an
    absolute path and refused (image not found)."""
    from classification.data.image_list import read_meta_file
    root = tmp_path / "data"
    write_image(str(root / "val" / "n0" / "x.JPEG"), seed=3)
    (tmp_path / "val.txt").write_text("/n0/x.JPEG 0\n//n0/x.JPEG 1\n")
    assert read_meta_file(str(tmp_path / "val.txt"), str(root / "val")) == [
        (os.path.join(str(root / "val"), "n0/x.JPEG"), 0), (os.path.join(str(root / "val"), "n0/x.JPEG"), 1)]


def test_evaluating_released_weights_warns_of_a_leftover_train_folder(tmp_path, localmamba_log):
    """Without the class names of a training checkpoint, tools/test.py numbers the classes by train/'s folders."""
    localmamba_log.set_level(logging.WARNING, logger="localmamba")
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("cat", "dog"), per_class=1)
    write_image(str(root / "train" / ".ipynb_checkpoints" / "copy.png"), seed=5)
    val = build_imagenet_val(str(root))
    assert val.classes == [".ipynb_checkpoints", "cat", "dog"]
    assert [r.getMessage() for r in localmamba_log.records if r.levelno == logging.WARNING] == [
        f"{root / 'train'}: the folders ['.ipynb_checkpoints'] count as classes (as in torchvision's ImageFolder), "
        f"making 3 classes; remove them if they hold no class of your data"]


def test_plain_class_folders_give_no_warning(own_tree, localmamba_log):
    localmamba_log.set_level(logging.WARNING, logger="localmamba")
    scan_class_folders(os.path.join(own_tree, "train"))
    assert [r for r in localmamba_log.records if r.levelno >= logging.WARNING] == []


def messages(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_meta_labels_with_gaps_warn_of_the_unused_ones(tmp_path, localmamba_log):
    """Labels 0, 5, 10: the head keeps the largest label + 1 = 11 outputs (as ImageNet's label files mean), and a
    warning names the unused labels (it said nothing); a train label without val images is named too."""
    root = str(tmp_path)
    lists = make_meta_tree(root)
    for split in ("train", "val"):
        (tmp_path / "meta" / f"{split}.txt").write_text("".join(f"{rel} {5 * y}\n" for rel, y in lists[split]
                                                                if split == "train" or y < 2))
    cfg = parse_args(["--data-path", root, "-j", "0"])
    train_set, val_set = build_datasets(cfg)
    assert cfg.num_classes == train_set.num_classes == 11 and [y for _, y in val_set.samples] == [0, 0, 5, 5]
    assert messages(localmamba_log, logging.WARNING) == [
        f"{tmp_path / 'meta' / 'train.txt'}: its labels use 3 of the 11 classes 0..10 (unused: 1, 2, 3, 4, 6, ...); "
        f"the model gets 11 outputs (largest label + 1), those of unused labels are never trained; renumber the "
        f"labels 0..2 for 3 outputs"]
    assert messages(localmamba_log, logging.INFO) == [
        f"{tmp_path / 'meta' / 'val.txt'}: no images of 1 of the 3 train labels (10): their accuracy is not measured"]


def test_an_image_missing_in_the_middle_of_a_meta_list_is_refused_at_start(tmp_path):
    """Only the first and the last listed images were checked: one in the middle failed when it was read (the val
    list's after a whole training epoch)."""
    root = str(tmp_path)
    lists = make_meta_tree(root)
    for i in (4, 6):  # lines 5 and 7
        os.remove(tmp_path / "train" / lists["train"][i][0])
    first = tmp_path / "train" / lists["train"][4][0]
    with pytest.raises(DataError, match=rf"^{tmp_path / 'meta' / 'train.txt'}:5: image not found: {first} \(the "
                                        rf"list's paths are relative to {tmp_path / 'train'}\); 2 of its 12 images "
                                        rf"are missing: restore them or remove their lines$"):
        build_datasets(parse_args(["--data-path", root, "-j", "0"]))
    missing = tmp_path / "val" / lists["val"][3][0]
    os.remove(missing)
    with pytest.raises(DataError, match=rf"^{tmp_path / 'meta' / 'val.txt'}:4: image not found: {missing} \(the "
                                        rf"list's paths are relative to {tmp_path / 'val'}\); restore it or remove "
                                        rf"its line$"):
        build_eval_dataset(parse_args(["--data-path", root, "-j", "0"]))


def test_a_listed_image_that_links_to_nothing_is_refused_at_start(tmp_path):
    """A listed image linked from a drive that is not mounted passed the listing and failed when it was first read."""
    root = str(tmp_path)
    lists = make_meta_tree(root)
    image = tmp_path / "val" / lists["val"][1][0]
    gone = tmp_path / "elsewhere" / "image.png"
    os.remove(image)
    os.symlink(gone, image)
    with pytest.raises(DataError, match=rf"^{tmp_path / 'meta' / 'val.txt'}:2: image not found: {image} -> {gone}, "
                                        rf"a link to nothing \(the list's paths are relative to {tmp_path / 'val'}\); "
                                        rf"restore it or remove its line$"):
        build_eval_dataset(parse_args(["--data-path", root, "-j", "0"]))
    gone.parent.mkdir()
    shutil.copy(tmp_path / "train" / lists["train"][0][0], gone)
    assert build_eval_dataset(parse_args(["--data-path", root, "-j", "0"])).samples[1][0] == str(image)


@pytest.mark.parametrize("label", ["\u00b2", "\u0663"], ids=["superscript_two", "arabic_indic_three"])
def test_a_unicode_digit_label_is_a_one_line_error(tmp_path, label):
    """Python's isdigit takes '²' (then int() raised a bare ValueError) and int() reads '٣' as 3: a label is ASCII
    digits, in training and evaluation alike."""
    root = str(tmp_path)
    make_meta_tree(root)
    meta = tmp_path / "meta" / "train.txt"
    with open(meta, "a", encoding="utf-8") as f:
        f.write(f"n0000/img_0.JPEG {label}\n")
    message = rf"^{meta}:13: expected '<relative/path> <label>' with a label >= 0, got 'n0000/img_0\.JPEG {label}'$"
    with pytest.raises(DataError, match=message):
        build_datasets(parse_args(["--data-path", root, "-j", "0"]))
    with pytest.raises(DataError, match=message):
        build_eval_dataset(parse_args(["--data-path", root, "-j", "0"]))


def test_the_training_log_names_the_classes(tmp_path):
    """The log said how many images were found, never which classes; a head larger than the classes is noted."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=tuple(f"c{i:02d}" for i in range(12)), per_class=1, val_per_class=1)
    train(parse_args([*TINY_MODEL, "--data-path", str(root), "-b", "4", "-j", "0", "--epochs", "1", "--num-classes",
                      "14", "--output", str(tmp_path / "out"), "--experiment", "run"]))
    log = next((tmp_path / "out" / "run").glob("log_*.txt")).read_text()
    assert " INFO Classes: 12 (c00, c01, c02, c03, c04, c05, c06, c07, c08, c09, ...)\n" in log
    assert f" INFO --num-classes 14 is more than the 12 classes of {root}: outputs 12 to 13 have no training data\n" \
        in log
    assert "top-5" not in log
    from classification.data.builders import class_summary
    from classification.data.image_list import ImageListDataset

    assert class_summary(ImageListDataset([], 11)) == "Classes: 11"  # a meta list: no names
    assert class_summary(ImageListDataset([], 2, ["cat", "dog"])) == "Classes: 2 (cat, dog)"


def test_hidden_files_in_class_folders_are_skipped(tmp_path, localmamba_log):
    """macOS's AppleDouble files ('._0.png', not images) were listed, and failed only when sampled."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("cat", "dog"), per_class=2, val_per_class=1)
    (root / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    write_image(str(root / "train" / "dog" / ".copy.jpg"), seed=3)
    samples, _ = scan_class_folders(str(root / "train"))
    assert samples == [(str(root / "train" / c / f"{i}.png"), y) for y, c in enumerate(("cat", "dog")) for i in (0, 1)]
    assert messages(localmamba_log, logging.INFO) == [
        f"{root / 'train'}: skipped 2 hidden files named like images (names starting with '.', such as the '._' "
        f"files macOS leaves), e.g. cat/._0.png"]


def test_hidden_folders_of_images_in_class_folders_are_skipped(tmp_path, localmamba_log):
    """A file manager's `.thumbnails` in a class folder added small copies of its images to the class, and a class
    of nothing but such a folder said it held no image files."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("cat", "dog"), per_class=2, val_per_class=1)
    write_image(str(root / "train" / "cat" / ".thumbnails" / "normal" / "0.png"), seed=5)
    (root / "train" / "dog" / ".git").mkdir()
    (root / "train" / "dog" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")  # holds no image: not mentioned
    write_image(str(root / "train" / "dog" / "more" / "2.png"), seed=6)               # a visible sub-folder: read
    samples, _ = scan_class_folders(str(root / "train"))
    assert [os.path.relpath(path, root / "train") for path, _ in samples] == [
        "cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", os.path.join("dog", "more", "2.png")]
    assert messages(localmamba_log, logging.INFO) == [
        f"{root / 'train'}: skipped 1 hidden folders holding images in class folders (names starting with '.', such "
        f"as .thumbnails), e.g. cat/.thumbnails"]
    for name in ("cat", "dog"):
        for path in list((root / "val" / name).iterdir()):
            os.renames(path, path.parent / ".cache" / path.name)
    with pytest.raises(DataError) as err:
        scan_class_folders(str(root / "val"), ["cat", "dog"])
    assert str(err.value) == (f"no image files found under {root / 'val'} (skipped: 2 hidden folders of images, "
                              f"names starting with '.')")


def test_skipped_image_types_and_loose_images_are_counted(tmp_path, localmamba_log):
    """Images of types not read, and images beside the class folders, were skipped without a word; well-known
    non-image files are still not mentioned."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("cat", "dog"), per_class=2, val_per_class=1)
    train_dir = root / "train"
    write_image(str(train_dir / "cat" / "a.gif"), seed=1, fmt="GIF")
    write_image(str(train_dir / "dog" / "b.GIF"), seed=2, fmt="GIF")
    write_image(str(train_dir / "dog" / "c.jfif"), seed=3)
    write_image(str(train_dir / "x.jpg"), seed=4)
    for name in ("cat/README.txt", "cat/Thumbs.db", "dog/desktop.ini", ".DS_Store", "notes.txt"):
        (train_dir / name).write_bytes(b"not an image")
    samples, _ = scan_class_folders(str(train_dir))
    assert len(samples) == 4
    assert messages(localmamba_log, logging.INFO) == [
        f"{train_dir}: skipped 3 image files of types that are not read (.gif: 2, .jfif: 1); convert them to one of "
        f".jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp to use them",
        f"{train_dir}: not used: 1 image files beside the class folders, in no class (x.jpg); move them into their "
        f"class folders"]


def test_a_class_folder_of_skipped_files_only_says_what_it_holds(tmp_path):
    """A train class of GIFs (a type not read) or a val split of hidden copies was refused as holding 'no image
    files', though the folder was full of them: the error names what was skipped there."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("cat", "dog"), per_class=2, val_per_class=1)
    shutil.rmtree(root / "train" / "dog")
    for i, ext in enumerate((".gif", ".GIF", ".jfif")):
        write_image(str(root / "train" / "dog" / f"{i}{ext}"), seed=i, fmt="GIF" if "gif" in ext.lower() else "JPEG")
    with pytest.raises(DataError) as err:
        scan_class_folders(str(root / "train"))
    assert str(err.value) == (
        f"class folder {root / 'train' / 'dog'} holds no image files it reads (skipped: 3 of types that are not "
        f"read, .gif: 2, .jfif: 1; convert them to one of .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp): "
        f"it would add a class that never appears in training; remove it or add images")
    for name in ("cat", "dog"):
        for path in (root / "val" / name).iterdir():
            path.rename(path.with_name("._" + path.name))
    with pytest.raises(DataError) as err:
        scan_class_folders(str(root / "val"), ["cat", "dog"])
    assert str(err.value) == (f"no image files found under {root / 'val'} (skipped: 2 hidden files, names starting "
                              f"with '.')")


def test_a_link_to_the_split_or_another_class_is_refused(tmp_path):
    """train/cat/up -> .. listed the other classes' images again, labelled cat."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("cat", "dog"), per_class=2, val_per_class=1)
    link = root / "train" / "cat" / "up"
    for target, what in ((os.path.join("..", ".."), f"holds the split folder {root / 'train'}"),
                         ("..", f"is the split folder {root / 'train'}"),
                         (os.path.join("..", "dog"), f"is the class folder {root / 'train' / 'dog'}")):
        os.symlink(target, link)
        with pytest.raises(DataError, match=rf"^{link} -> {re.escape(target)}: the linked folder {what}, whose images "
                                            rf"would be listed again as class 'cat'; remove the link \(links in a "
                                            rf"class folder must lead to images of that class only\)$"):
            build_datasets(parse_args(["--data-path", str(root), "-j", "0"]))
        os.remove(link)


def test_val_folders_without_images_are_ignored(tmp_path, localmamba_log):
    """A notebook's or an archiver's empty folder in val/ stopped training and evaluation; val's missing classes are
    named."""
    root = tmp_path / "data"
    make_folder_tree(str(root), per_class=2, val_per_class=1)
    val_dir = root / "val"
    (val_dir / ".ipynb_checkpoints").mkdir()
    (val_dir / "__MACOSX" / "cat").mkdir(parents=True)
    (val_dir / "__MACOSX" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    shutil.rmtree(val_dir / "eel")
    cfg = parse_args(["--data-path", str(root), "-j", "0"])
    _, val_set = build_datasets(cfg)
    assert sorted(y for _, y in val_set.samples) == [0, 1] and cfg.num_classes == 3
    assert messages(localmamba_log, logging.INFO) == [
        f"{val_dir}: ignoring the folders ['.ipynb_checkpoints', '__MACOSX']: they hold no image files and are not "
        f"classes of the train split",
        f"{val_dir}: no images of 1 of the 3 classes (eel): their accuracy is not measured"]
    write_image(str(val_dir / "__MACOSX" / "x.jpg"), seed=1)
    with pytest.raises(DataError, match=rf"^{val_dir}: class folders \['__MACOSX'\] are not classes of the train "
                                        rf"split$"):
        build_eval_dataset(parse_args(["--data-path", str(root), "-j", "0"]))


def test_a_val_class_folder_in_another_unicode_normalization_is_its_train_class(tmp_path, localmamba_log):
    """A val/ copied on macOS names `café` decomposed (NFD): it looks like the train class `café` (NFC) and was
    refused as no class of the train split."""
    import unicodedata
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("bee", composed, "eel"), per_class=2, val_per_class=1)
    os.rename(root / "val" / composed, root / "val" / decomposed)
    _, val_set = build_datasets(parse_args(["--data-path", str(root), "-j", "0"]))
    assert [(os.path.basename(os.path.dirname(p)), y) for p, y in val_set.samples] == [
        ("bee", 0), (decomposed, 1), ("eel", 2)]
    assert messages(localmamba_log, logging.INFO)[-1] == (
        f"{root / 'val'}: the folders [{decomposed!r}] are the classes [{composed!r}] of the train split in another "
        f"Unicode normalization (as a copy made on macOS names them)")


def test_a_val_class_folder_named_in_another_letter_case_names_its_train_class(tmp_path):
    """val/cat beside train/Cat was refused as no class of the train split, the two names side by side nowhere: the
    error now names the class it differs from in letter case only (labels are not guessed across cases)."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("Cat", "Dog"), per_class=1, val_per_class=1)
    os.rename(root / "val" / "Cat", root / "val" / "cat")
    with pytest.raises(DataError, match=rf"^{root / 'val'}: class folders \['cat'\] are not classes of the train "
                                        rf"split \('cat' differs from its class 'Cat' in letter case only: rename "
                                        rf"it\)$"):
        build_datasets(parse_args(["--data-path", str(root), "-j", "0"]))


def test_top5_of_five_classes_or_fewer_is_said_to_be_100_percent(tmp_path):
    """timm's accuracy takes the top min(5, classes): a 3-class run logged 'Top-5: 100.000%' with no word why."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("bee", "cat", "eel"), per_class=2, val_per_class=1)
    metrics = train(parse_args([*TINY_MODEL, "--data-path", str(root), "-b", "2", "-j", "0", "--epochs", "1",
                                "--output", str(tmp_path / "out"), "--experiment", "run"]))
    log = next((tmp_path / "out" / "run").glob("log_*.txt")).read_text()
    assert " INFO The model has 3 classes: its top-5 accuracy is 100 % by definition\n" in log
    assert metrics["top5"] == 100.0


def test_a_class_folder_name_that_is_not_utf8_is_logged_escaped(tmp_path, capsys):
    """A Latin-1 folder name (`caf\\xe9`, from an old archive) is a class; logging it printed '--- Logging error ---'
    with a UnicodeEncodeError traceback and left the line out of the log file."""
    from classification.data import class_summary
    from classification.engine.logs import setup_logging, start_log_file
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("bee", "eel"), per_class=2, val_per_class=1)
    for split in ("train", "val"):
        os.rename(os.path.join(os.fsencode(root), os.fsencode(split), b"eel"),
                  os.path.join(os.fsencode(root), os.fsencode(split), b"caf\xe9"))
    log = setup_logging(str(tmp_path / "run"), is_main=True)
    try:
        cfg = parse_args(["--data-path", str(root), "-j", "0"])
        train_set, _ = build_datasets(cfg)
        log.info(class_summary(train_set))
        start_log_file(log)
    finally:
        for handler in log.handlers:
            handler.close()
        log.handlers.clear()
    (log_file,) = (tmp_path / "run").iterdir()
    assert log_file.read_text(encoding="utf-8").splitlines()[0].endswith("Classes: 2 (bee, caf\\xe9)")
    out, err = capsys.readouterr()
    assert "Logging error" not in err and out.splitlines()[-2].endswith("Classes: 2 (bee, caf\\xe9)")


def test_a_checkpoint_of_named_classes_on_meta_lists_warns_that_labels_are_taken_by_order(tmp_path, localmamba_log):
    """Evaluated on a meta tree (numbers, no names), a class-folder checkpoint's names went unused without a word."""
    root = tmp_path / "data"
    make_meta_tree(str(root), classes=2, per_class=2, val_per_class=1)
    val = build_imagenet_val(str(root), None, ["cat", "dog"])
    assert val.num_classes == 2
    assert messages(localmamba_log, logging.WARNING) == [
        f"{root}: the checkpoint was trained on named classes (cat, dog), the meta lists give numbers: label i is "
        f"taken as its i-th class in that (sorted) order; the accuracy is right only if your labels were numbered so"]


def test_a_data_path_that_is_a_file_says_so(tmp_path):
    path = tmp_path / "train.tar"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^data path {path} is a file, not a folder: give the folder that holds "
                                        rf"train/ and val/ \(or meta/\) as --data-path$"):
        build_datasets(parse_args(["--data-path", str(path), "-j", "0"]))


def test_a_data_path_at_a_split_or_a_flat_val_folder_says_what_to_give(tmp_path):
    """--data-path data/val (the split, not its parent), ImageNet's val/ as it comes (50,000 images, no class
    folders; alone or beside train/<class>/) and class folders without a split were told only the layouts expected
    or that val/ held no images; the error now says what the folder given is."""
    root = tmp_path / "data"
    make_folder_tree(str(root), classes=("cat", "dog"), per_class=1, val_per_class=1)
    expected = (rf"^{root / 'val'}: expected meta/train.txt and meta/val.txt with train/ and val/ images, or "
                rf"train/<class>/ and val/<class>/ folders \(val/<class>/ alone to evaluate\); it holds class "
                rf"folders itself, as a split does: give the folder that holds it, {root}, as --data-path$")
    with pytest.raises(DataError, match=expected):
        build_eval_dataset(parse_args(["--data-path", str(root / "val"), "-j", "0"]))
    flat = tmp_path / "imagenet"
    for i in range(3):
        write_image(str(flat / "val" / f"ILSVRC2012_val_{i:08d}.JPEG"), seed=i)
    expected = (rf"^{flat}: expected .*alone to evaluate\); {flat / 'val'} holds 3 images but no class folders "
                rf"\(as ImageNet's val/ comes\): list them with their labels in {flat / 'meta' / 'val.txt'}, or move "
                rf"them into val/<class>/ folders$")
    with pytest.raises(DataError, match=expected):
        build_eval_dataset(parse_args(["--data-path", str(flat), "-j", "0"]))
    write_image(str(flat / "train" / "n01440764" / "0.JPEG"), seed=0)
    write_image(str(flat / "train" / "n01443537" / "0.JPEG"), seed=1)
    with pytest.raises(DataError, match=rf"^no image files found under {flat / 'val'}; its 3 images lie in it "
                                        rf"directly, in no class folder \(as ImageNet's val/ comes\): move them "
                                        rf"into {flat / 'val' / '<class>'} folders$"):
        build_datasets(parse_args(["--data-path", str(flat), "-j", "0"]))
    unsplit = tmp_path / "flowers"
    write_image(str(unsplit / "rose" / "0.jpg"), seed=0)
    expected = (rf"^{unsplit}: expected .*alone to evaluate\); its folders are no split: put the class folders "
                rf"under {unsplit / 'val'} \(and {unsplit / 'train'} to train\)$")
    with pytest.raises(DataError, match=expected):
        build_eval_dataset(parse_args(["--data-path", str(unsplit), "-j", "0"]))


def test_a_data_path_under_the_home_folder_may_start_with_a_tilde(tmp_path, monkeypatch):
    """`data_path: ~/data` in a config (no shell expands it there) was refused as a folder that does not exist."""
    make_folder_tree(str(tmp_path / "data"), classes=("cat", "dog"), per_class=1, val_per_class=1)
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "config.yaml"
    config.write_text("data_path: ~/data\n")
    cfg = parse_args(["-c", str(config), "-j", "0"])
    train_set, val_set = build_datasets(cfg)
    assert cfg.data_path == str(tmp_path / "data")
    assert [path for path, _ in val_set.samples] == [str(tmp_path / "data" / "val" / c / "0.png")
                                                     for c in ("cat", "dog")]
    assert build_eval_dataset(parse_args(["-c", str(config), "-j", "0"])).samples == val_set.samples


def test_float_and_32_bit_images_are_scaled_by_their_range_or_refused(tmp_path):
    """A float TIFF in 0..1 became black (Pillow clips to 0..255), and 32-bit integers were scaled as 16-bit; a
    16-bit PGM (which Pillow opens as 32-bit mode I) is still scaled by 1/257."""
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert Image.open(tmp_path / "unit.tif").mode == "F"
    rgb = np.asarray(load_image(str(tmp_path / "unit.tif")))
    assert rgb.shape == (8, 8, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
    assert np.array_equal(rgb[..., 0], np.round(unit.astype(np.float64) * 255).astype(np.uint8))
    byte_range = (np.arange(64, dtype=np.float32) * 4).reshape(8, 8)  # 0 .. 252, as Pillow reads it
    Image.fromarray(byte_range).save(tmp_path / "bytes.tif")
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "bytes.tif")))[..., 1], byte_range.astype(np.uint8))
    Image.fromarray(unit * 3 - 1).save(tmp_path / "wide.tif")
    with pytest.raises(DataError, match=rf"^cannot use image {tmp_path / 'wide.tif'}: its float pixels \(Pillow mode "
                                        rf"F\) range from -1 to 2, within neither 0\.\.1 nor 0\.\.255, so they have no "
                                        rf"defined 8-bit scale; rescale them to 0\.\.1 or save the image with 8 or 16 "
                                        rf"bits per sample$"):
        load_image(str(tmp_path / "wide.tif"))
    Image.fromarray(np.where(unit > 0.5, np.nan, unit).astype(np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=rf"^cannot use image {tmp_path / 'nan.tif'}: its float pixels \(Pillow mode "
                                        rf"F\) hold NaN or infinite values; save it with finite values in 0\.\.1, or "
                                        rf"with 8 or 16 bits per sample$"):
        load_image(str(tmp_path / "nan.tif"))
    Image.fromarray((np.arange(64, dtype=np.int32) * 1000).reshape(8, 8)).save(tmp_path / "deep.tif")
    assert Image.open(tmp_path / "deep.tif").mode == "I"
    with pytest.raises(DataError, match=rf"^cannot use image {tmp_path / 'deep.tif'}: its 32-bit integer pixels "
                                        rf"\(Pillow mode I\) have no defined 8-bit scale; save it with 8 or 16 bits "
                                        rf"per sample$"):
        load_image(str(tmp_path / "deep.tif"))
    sixteen = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)
    Image.fromarray(sixteen).save(tmp_path / "deep.pgm")
    assert Image.open(tmp_path / "deep.pgm").mode == "I"
    rgb = np.asarray(load_image(str(tmp_path / "deep.pgm")))
    assert np.array_equal(rgb[..., 0], np.round(sixteen / 257.0).astype(np.uint8))


def write_tiff(path: str, samples: np.ndarray, bits: int, signed: bool = False, alpha: str = "",
               photometric: int = 1, listed_bits: tuple[int, ...] = ()) -> None:
    """An uncompressed little-endian TIFF of `samples`: (H, W) gray, (H, W, 2) gray + alpha (`alpha` 'associated' or
    'unassociated') or, with `photometric` 2, (H, W, 3) RGB; `bits` per sample 8, 12 (packed, most significant bit
    first, W even) or 16. BitsPerSample holds `bits` once, or the values `listed_bits` gives (one per sample)."""
    height, width = samples.shape[:2]
    per_pixel = samples.shape[2] if samples.ndim == 3 else 1
    if bits == 12:
        pairs = samples.astype(np.uint16).reshape(-1, 2)
        data = np.stack([pairs[:, 0] >> 4, (pairs[:, 0] & 15) << 4 | pairs[:, 1] >> 8, pairs[:, 1] & 255],
                        axis=1).astype(np.uint8).tobytes()
    else:
        data = samples.astype(f"<{'i' if signed else 'u'}{bits // 8}").tobytes()
    tags = {256: width, 257: height, 258: bits, 259: 1, 262: photometric, 273: 0, 277: per_pixel, 278: height,
            279: len(data), 339: 2 if signed else 1}
    if alpha:
        tags[338] = 1 if alpha == "associated" else 2  # ExtraSamples
    start = 8 + 2 + 12 * len(tags) + 4
    listed = struct.pack(f"<{len(listed_bits)}H", *listed_bits)
    overflow = listed if len(listed) > 4 else b""  # SHORT values: two fit in their entry, more follow the directory
    tags[273] = start + len(overflow)  # StripOffsets: the pixels follow
    entries = {tag: struct.pack("<HHII", tag, 4, 1, value) for tag, value in tags.items()}
    if listed:
        place = struct.pack("<I", start) if overflow else listed.ljust(4, b"\0")
        entries[258] = struct.pack("<HHI", 258, 3, len(listed_bits)) + place
    directory = b"".join(entries[tag] for tag in sorted(entries))
    with open(path, "wb") as f:
        f.write(b"II*\0" + struct.pack("<IH", 8, len(tags)) + directory + struct.pack("<I", 0) + overflow + data)


def test_twelve_bit_signed_and_premultiplied_gray_tiffs_are_read_by_their_depth(tmp_path):
    """A 12-bit TIFF (microscopes, X-ray) was scaled as 16-bit, its white becoming 16 of 255; a signed 16-bit one
    lost its sign (negative values became black, white 127); gray with premultiplied alpha (Pillow mode La) ended the
    run with a traceback (Pillow converts it to LA only)."""
    twelve = np.array([[0, 1000, 2048, 4095]])
    write_tiff(str(tmp_path / "twelve.tif"), twelve, 12)
    assert Image.open(tmp_path / "twelve.tif").mode == "I;16"
    rgb = np.asarray(load_image(str(tmp_path / "twelve.tif")))
    assert rgb.shape == (1, 4, 3) and rgb[..., 0].tolist() == [[0, 62, 128, 255]]  # round(v * 255 / 4095)
    write_tiff(str(tmp_path / "signed.tif"), np.array([[0, 1000, 32767]]), 16, signed=True)
    assert Image.open(tmp_path / "signed.tif").mode == "I"
    assert np.asarray(load_image(str(tmp_path / "signed.tif")))[..., 2].tolist() == [[0, 8, 255]]  # v * 255 / 32767
    write_tiff(str(tmp_path / "negative.tif"), np.array([[-1000, 0, 32767]]), 16, signed=True)
    with pytest.raises(DataError, match=rf"^cannot use image {tmp_path / 'negative.tif'}: its signed 16-bit pixels go "
                                        rf"down to -1000, and negative values have no defined 8-bit scale; save it "
                                        rf"unsigned, with 8 or 16 bits per sample$"):
        load_image(str(tmp_path / "negative.tif"))
    write_tiff(str(tmp_path / "minus_one.tif"), np.array([[-1, 0, 32767]]), 16, signed=True)
    with pytest.raises(DataError, match=r"signed 16-bit pixels go down to -1, and negative values"):
        load_image(str(tmp_path / "minus_one.tif"))
    gray_alpha = np.array([[[50, 128], [200, 255]]])  # gray premultiplied by alpha: 50 at alpha 128 is 99.6 unmixed
    write_tiff(str(tmp_path / "premultiplied.tif"), gray_alpha, 8, alpha="associated")
    assert Image.open(tmp_path / "premultiplied.tif").mode == "La"
    assert np.asarray(load_image(str(tmp_path / "premultiplied.tif")))[..., 1].tolist() == [[99, 200]]
    write_tiff(str(tmp_path / "straight.tif"), gray_alpha, 8, alpha="unassociated")
    assert np.asarray(load_image(str(tmp_path / "straight.tif")))[..., 1].tolist() == [[50, 200]]


def test_tiffs_of_several_16_bit_samples_are_read_by_pillow_and_listed_bits_by_the_first(tmp_path):
    """Pillow opens a TIFF as integer grayscale only with one sample per pixel, and decodes the first value of a
    BitsPerSample tag that lists one per sample: a 12-bit image listed as (12, 16) was scaled by the largest, as 16-bit
    (its white 16 of 255). Several 16-bit samples: RGB is Pillow's 8 bits (each sample's high byte, not scaled as
    gray is), gray + alpha a file Pillow cannot read, refused naming it."""
    write_tiff(str(tmp_path / "twelve.tif"), np.array([[0, 1000, 2048, 4095]]), 12, listed_bits=(12, 16))
    assert Image.open(tmp_path / "twelve.tif").mode == "I;16"
    assert np.asarray(load_image(str(tmp_path / "twelve.tif"), 1)).tolist() == [[0, 62, 128, 255]]  # v * 255 / 4095
    write_tiff(str(tmp_path / "sixteen.tif"), np.array([[0, 1000, 32896, 65535]]), 16, listed_bits=(16, 12))
    assert np.asarray(load_image(str(tmp_path / "sixteen.tif"), 1)).tolist() == [[0, 4, 128, 255]]  # v / 257
    rgb = np.array([[[0, 200, 65535], [32768, 257, 1000]]])
    write_tiff(str(tmp_path / "rgb.tif"), rgb, 16, photometric=2, listed_bits=(16, 16, 16))
    assert Image.open(tmp_path / "rgb.tif").mode == "RGB"
    assert np.asarray(load_image(str(tmp_path / "rgb.tif"))).tolist() == [[[0, 0, 255], [128, 1, 3]]]  # v >> 8
    assert np.asarray(load_image(str(tmp_path / "rgb.tif"), 1)).tolist() == [[29, 39]]  # .299 R + .587 G + .114 B
    write_tiff(str(tmp_path / "gray_alpha.tif"), np.array([[[1000, 65535]]]), 16, alpha="unassociated",
               listed_bits=(16, 16))
    with pytest.raises(DataError, match=rf"^cannot read image {tmp_path / 'gray_alpha.tif'}: cannot identify image "
                                        rf"file \(empty, cut short, or of a type Pillow does not read\)"):
        load_image(str(tmp_path / "gray_alpha.tif"))


def test_a_meta_folder_of_other_files_beside_class_folders_leaves_them_the_layout(tmp_path, localmamba_log):
    """A meta/ folder holding a dataset's own notes (no train.txt or val.txt) made class folders a meta-list tree:
    training stopped on 'meta file not found: .../meta/train.txt'."""
    root = str(tmp_path / "data")
    make_folder_tree(root, classes=("cat", "dog"), per_class=2, val_per_class=1)
    os.makedirs(os.path.join(root, "meta"))
    with open(os.path.join(root, "meta", "classes.csv"), "w") as f:
        f.write("cat,dog\n")
    train_set, val_set = build_datasets(parse_args(["--data-path", root, "-j", "0"]))
    assert train_set.classes == ["cat", "dog"] and (len(train_set), len(val_set)) == (4, 2)
    assert f"{root}: meta/ holds no train.txt or val.txt: the images are read from the class folders of train/ and " \
           f"val/" in localmamba_log.text
    assert build_eval_dataset(parse_args(["--data-path", root, "-j", "0"])).classes == ["cat", "dog"]


def test_an_images_exif_orientation_is_not_applied_as_torchvision_and_the_original_read_it(tmp_path):
    """docs/training.md: a photo stored sideways with EXIF orientation 6 is read as stored, pixel for pixel what
    torchvision's default loader gives (evaluations of the released weights then match the original's)."""
    from torchvision.datasets.folder import default_loader

    pixels = np.array([[[10, 10, 10], [20, 20, 20], [30, 30, 30]], [[40, 40, 40], [50, 50, 50], [60, 60, 60]]],
                      dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6      # Orientation: rotate 90 degrees clockwise to view
    path = str(tmp_path / "sideways.png")
    Image.fromarray(pixels).save(path, exif=exif)
    assert Image.open(path).getexif()[0x0112] == 6
    ours = np.asarray(load_image(path))
    assert ours.shape == (2, 3, 3) and np.array_equal(ours, pixels)
    assert np.array_equal(ours, np.asarray(default_loader(path)))


def test_sub_folders_are_listed_in_imagefolders_order_of_their_paths(tmp_path):
    """ImageFolder lists a class's folders by path: `a`, `a-c`, then `a/b` ('-' sorts before '/'), not depth first
    (`a`, `a/b`, `a-c`)."""
    for rel, seed in (("cat/a/1.png", 1), ("cat/a/b/2.png", 2), ("cat/a-c/3.png", 3), ("dog/4.png", 4)):
        write_image(str(tmp_path / "train" / rel), seed=seed, size=4, fmt="PNG")
    samples, _ = scan_class_folders(str(tmp_path / "train"))
    assert samples == ImageFolder(str(tmp_path / "train")).samples
    assert [os.path.relpath(path, tmp_path / "train") for path, _ in samples[:3]] == [
        os.path.join("cat", "a", "1.png"), os.path.join("cat", "a-c", "3.png"), os.path.join("cat", "a", "b", "2.png")]


def test_a_link_to_a_folder_whose_path_begins_the_splits_is_followed(tmp_path):
    """A class folder's link to `<root>/tra`, a folder beside `<root>/train` whose path is the start of the split's
    path but does not hold it: its images are the class's (only a linked folder that holds the split is refused)."""
    write_image(str(tmp_path / "tra" / "extra.png"), seed=1, size=4, fmt="PNG")
    write_image(str(tmp_path / "train" / "cat" / "1.png"), seed=2, size=4, fmt="PNG")
    write_image(str(tmp_path / "train" / "dog" / "2.png"), seed=3, size=4, fmt="PNG")
    os.symlink(tmp_path / "tra", tmp_path / "train" / "dog" / "more")
    samples, _ = scan_class_folders(str(tmp_path / "train"))
    assert samples == ImageFolder(str(tmp_path / "train")).samples
    assert (str(tmp_path / "train" / "dog" / "more" / "extra.png"), 1) in samples


def test_first_few_adds_an_ellipsis_only_when_names_are_left_out():
    assert (first_few(["a", "b"], 2), first_few(["a", "b", "c"], 2), first_few([], 2)) == ("a, b", "a, b, ...", "")


def test_the_letter_case_hint_compares_names_case_folded(tmp_path):
    """'STRAßE' and 'Strasse' differ in letter case only under Unicode case folding (ß folds to 'ss'), which
    `str.lower` does not apply."""
    write_image(str(tmp_path / "val" / "STRAßE" / "1.png"), seed=1, size=4, fmt="PNG")
    with pytest.raises(DataError, match=r"\('STRAßE' differs from its class 'Strasse' in letter case only: "
                                        r"rename it\)$"):
        scan_class_folders(str(tmp_path / "val"), ["Strasse"])
