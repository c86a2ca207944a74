"""Datasets in every layout on tiny trees of real image files, the sampler's sharding, and per-sample seeding."""
import logging
import multiprocessing
import os

import numpy as np
import pytest
import torch

from classification.data import DataError, ShardedSampler, build_datasets, build_eval_dataset, build_loaders
from classification.data.defaults import resolve_dataset_defaults
from classification.data.image_list import imagenet_layout
from classification.data.loader import _quiet_when_main_process_left, build_loader
from classification.data.transforms import build_transform
from classification.engine.config import parse_args

from training_helpers import TINY_MODEL, make_cifar, make_meta_tree, write_image


def cfg_for(*argv):
    return parse_args(["-j", "0", *argv])


def test_meta_layout(meta_tree):
    root, lists = meta_tree
    assert imagenet_layout(root) == "meta"
    cfg = cfg_for("--data-path", root, "--img-size", "16")
    train, val = build_datasets(cfg)
    assert (len(train), len(val), cfg.num_classes) == (12, 6, 3)
    rel, label = lists["train"][5]
    assert train.samples[5] == (os.path.join(root, "train", rel), label)
    image, lbl = val[3]
    assert image.size == (20, 20) and image.mode == "RGB" and lbl == lists["val"][3][1]


def test_folder_layout_classes_follow_sorted_train_folders(folder_tree):
    assert imagenet_layout(folder_tree) == "folders"
    cfg = cfg_for("--data-path", folder_tree, "--img-size", "16")
    train, val = build_datasets(cfg)
    assert (len(train), len(val), cfg.num_classes) == (12, 6, 3)
    labels = {os.path.basename(os.path.dirname(p)): y for p, y in train.samples}
    assert labels == {"cat": 0, "dog": 1, "eel": 2}
    assert sorted(y for _, y in val.samples) == [0, 0, 1, 1, 2, 2]


def test_loader_gives_normalised_tensors_of_the_asked_size(folder_tree):
    cfg = cfg_for("--data-path", folder_tree, "--img-size", "16", "-b", "4", "--aa", "rand-m9-mstd0.5",
                  "--reprob", "0.25", "--interpolation", "bicubic")
    train, val = build_datasets(cfg)
    train_loader, val_loader = build_loaders(cfg, train, val, 1, 0)
    images, target = next(iter(train_loader))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32 and target.dtype == torch.int64
    assert len(train_loader) == 3 and len(val_loader) == 2  # 12 // 4 (drop last); ceil(6 / 4)
    assert cfg.crop_pct == 0.875 and cfg.image_mean == [0.485, 0.456, 0.406]  # ImageNet defaults filled in


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickles(tmp_path, name, classes):
    data, labels = make_cifar(str(tmp_path), name)
    cfg = cfg_for("--dataset", name, "--data-path", str(tmp_path))
    train, val = build_datasets(cfg)
    n_train = 50 if name == "cifar10" else 10
    assert (len(train), len(val), cfg.num_classes, cfg.img_size) == (n_train, 4, classes, 32)
    image, label = train[0]
    expected = data[0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(image), expected) and label == labels[0]


def test_cifar_missing_files_are_named_and_never_downloaded(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*data_batch_1.*nothing is downloaded"):
        build_datasets(cfg_for("--dataset", "cifar10", "--data-path", str(tmp_path)))


def test_digits_split_is_deterministic_and_stratified():
    cfg = cfg_for("--dataset", "digits", "--img-size", "24")
    train, val = build_datasets(cfg)
    assert (len(train), len(val), cfg.num_classes) == (1437, 360, 10)
    per_class = np.bincount(train.labels) + np.bincount(val.labels)
    assert per_class.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # scikit-learn's digits
    assert np.all(np.abs(np.bincount(val.labels) - 0.2 * per_class) <= 1)  # stratified 80/20
    assert train.images.shape == (1437, 24, 24, 3)
    train2, _ = build_datasets(cfg_for("--dataset", "digits", "--img-size", "24"))
    assert np.array_equal(train.labels, train2.labels) and np.array_equal(train.images, train2.images)


def test_two_shards_together_are_the_single_process_batches():
    one = list(ShardedSampler(20, 1, 0, shuffle=True, seed=3))
    r0 = list(ShardedSampler(20, 2, 0, shuffle=True, seed=3))
    r1 = list(ShardedSampler(20, 2, 1, shuffle=True, seed=3))
    for t in range(5):  # global batch 4 = 2 per rank
        assert sorted(r0[2 * t:2 * t + 2] + r1[2 * t:2 * t + 2]) == sorted(one[4 * t:4 * t + 4])
    s = ShardedSampler(20, 1, 0, shuffle=True, seed=3)
    s.set_epoch(1)
    assert [i for _, i in s] != [i for _, i in one] and all(e == 1 for e, _ in s)


def test_a_resumed_epoch_starts_its_order_further_on_for_that_epoch_only():
    sampler = ShardedSampler(20, 2, 1, shuffle=True, seed=3)
    sampler.set_epoch(1)
    whole = list(sampler)
    sampler.set_epoch(1, start=4)  # two batches of 2 done
    assert list(sampler) == whole[4:] and len(sampler) == len(whole) - 4
    sampler.set_epoch(2)
    assert len(list(sampler)) == len(sampler) == len(whole)


def test_an_epoch_seed_decides_the_order_of_its_epoch_only():
    """An epoch resumed in its middle with a new --seed keeps the order of the seed it began with (epoch_seeds); the
    epochs after it follow the new seed."""
    began, new = ShardedSampler(20, 2, 1, seed=3), ShardedSampler(20, 2, 1, seed=4)
    new.epoch_seeds[1] = 3
    for epoch, expected in ((1, began), (2, ShardedSampler(20, 2, 1, seed=4))):
        for sampler in (new, expected):
            sampler.set_epoch(epoch)
        assert list(new) == list(expected)
    began.set_epoch(2)
    assert list(new) != list(began)


def test_eval_shards_cover_every_sample_once():
    parts = [[i for _, i in ShardedSampler(7, 3, r, shuffle=False)] for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(7))


def test_augmentation_does_not_depend_on_workers_or_global_rng(folder_tree):
    """The images do not depend on the worker count or the global RNG; a new epoch augments the SAME sample anew
    (guards against a per-sample seed that ignores the epoch, which a changed order alone would hide)."""
    cfg = cfg_for("--data-path", folder_tree, "--img-size", "16", "-b", "4", "--aa", "rand-m9-mstd0.5",
                  "--reprob", "0.5")
    train, val = build_datasets(cfg)
    loader0, _ = build_loaders(cfg, train, val, 1, 0)
    torch.manual_seed(123)
    first = [x for x, _ in loader0]
    cfg.workers = 2
    loader2, _ = build_loaders(cfg, train, val, 1, 0)
    torch.manual_seed(999)
    second = [x for x, _ in loader2]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    data = loader2.dataset  # the same sample in two epochs (the loader's order changes between epochs as well)
    assert torch.equal(data[(0, 5)][0], data[(0, 5)][0])
    assert not torch.equal(data[(1, 5)][0], data[(0, 5)][0])  # a new epoch draws new augmentations


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_loader_workers_started_by_forkserver_or_spawn_give_the_same_images(folder_tree, start_method):
    """Python 3.14 starts processes by forkserver on Linux (macOS by spawn): the dataset and its transform are pickled
    to the workers, which must give the images of the main process."""
    cfg = cfg_for("--data-path", folder_tree, "--img-size", "16", "-b", "4", "--aa", "rand-m9-mstd0.5",
                  "--reprob", "0.5")
    train, val = build_datasets(cfg)
    expected = [x for x, _ in build_loaders(cfg, train, val, 1, 0)[0]]
    cfg.workers = 1
    previous = multiprocessing.get_start_method()
    multiprocessing.set_start_method(start_method, force=True)
    try:
        loader, _ = build_loaders(cfg, train, val, 1, 0)
        got = [x for x, _ in loader]
        worker = loader._iterator._workers[0]     # started the asked way (multiprocessing.popen_forkserver, ...)
        assert f"popen_{start_method}" in type(worker._popen).__module__
    finally:
        multiprocessing.set_start_method(previous, force=True)
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))


class ExcepthookReport(torch.utils.data.Dataset):
    """Item i: (what the worker's `sys.excepthook` prints for an error of kind i, i); kinds: 0 the main process closed
    a resource-sharer connection, 1 a main process gone mid-transfer, 2 any other error."""

    errors = (ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(32, "Broken pipe"),
              ValueError("a real bug"))

    def __len__(self):
        return len(self.errors)

    def __getitem__(self, index):
        import io
        import sys
        err, printed = self.errors[index], io.StringIO()
        previous, sys.stderr = sys.stderr, printed
        try:
            sys.excepthook(type(err), err, None)
        finally:
            sys.stderr = previous
        return printed.getvalue(), index


def test_loader_workers_print_no_traceback_for_a_main_process_that_stopped_mid_transfer():
    """Ctrl-C while the main process fetches a batch closes its connection to a worker's resource-sharer thread,
    which printed a ConnectionResetError traceback after the one-line 'interrupted'; other errors still print."""
    loader = build_loader(ExcepthookReport(), lambda image: image, 1, 1, False, 1, 0, 0)
    printed = [text for (text,), _ in loader]
    assert printed[:2] == ["", ""]
    assert printed[2].rstrip().endswith("ValueError: a real bug")


@pytest.mark.parametrize("error, reported", [(ConnectionResetError, False), (BrokenPipeError, False),
                                             (EOFError, False), (ValueError, True)])
def test_a_worker_reports_every_error_but_a_connection_its_main_process_dropped(error, reported):
    """A connection reset, a broken pipe or an end of file met mid-transfer is the main process stopping: not
    reported; any other error is."""
    reports = []
    _quiet_when_main_process_left(error, error("x"), None, report=lambda *args: reports.append(args[0]))
    assert reports == ([error] if reported else [])


def test_a_cpu_run_on_a_machine_with_cuda_pins_no_memory(folder_tree, tmp_path, monkeypatch):
    """--device cpu where CUDA is present pinned every batch through CUDA anyway: it took GPU memory, and on a GPU
    that is busy or whose driver is broken (why one asks for the CPU) training and tools/test.py failed. Here CUDA is
    said to be present but absent, as a broken driver makes it."""
    from classification.engine.evaluate import test as evaluate
    from classification.engine.trainer import train

    run = [*TINY_MODEL, "--data-path", folder_tree, "-b", "4", "-j", "0", "--device", "cpu", "--warmup-epochs", "0",
           "--smoothing", "0", "--output", str(tmp_path), "--experiment", "cpu"]
    expected = train(parse_args([*run, "--epochs", "1"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    last = str(tmp_path / "cpu" / "last.pth.tar")
    evaluated = evaluate(parse_args([*run, "--resume", last, "--experiment", "eval"]))
    assert evaluated == pytest.approx({key: expected[key] for key in ("test_loss", "top1", "top5")})
    again = train(parse_args([*run, "--epochs", "1", "--experiment", "again"]))
    assert again["train_loss"] == expected["train_loss"]


def test_loader_workers_are_cut_to_the_usable_cpus(folder_tree, monkeypatch, localmamba_log):
    """-j 16 (the shipped ImageNet config) on a process that may use 2 CPUs starts 2 workers per loader, and says so;
    -j within the CPUs is kept as asked."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5})
    cfg = cfg_for("--data-path", folder_tree, "--img-size", "16", "-b", "4")
    train, val = build_datasets(cfg)
    cfg.workers = 16
    with localmamba_log.at_level(logging.INFO, logger="localmamba"):
        loaders = build_loaders(cfg, train, val, 1, 0)
    assert [loader.num_workers for loader in loaders] == [2, 2]
    assert "-j 16: this process may use 2 CPUs, so each loader starts 2 worker processes" in localmamba_log.text
    localmamba_log.clear()
    cfg.workers = 1
    with localmamba_log.at_level(logging.INFO, logger="localmamba"):
        loaders = build_loaders(cfg, train, val, 1, 0)
    assert [loader.num_workers for loader in loaders] == [1, 1] and "-j" not in localmamba_log.text


def transform_names(cfg, training=True):
    resolve_dataset_defaults(cfg)
    return [type(t).__name__ for t in build_transform(cfg, training).transforms]


def test_colour_jitter_only_without_randaugment_as_the_original():
    with_aa = cfg_for("--aa", "rand-m9-mstd0.5", "--color-jitter", "0.3", "--reprob", "0.25", "--remode", "pixel",
                      "--interpolation", "bicubic")
    names = transform_names(with_aa)
    assert names[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert "ColorJitter" not in names and names[-1] == "RandomErasing"
    without_aa = cfg_for("--color-jitter", "0.3")
    assert "ColorJitter" in transform_names(without_aa) and "RandAugment" not in transform_names(without_aa)
    # eval: resize to 224 / 0.875 = 256, centre crop 224
    names = transform_names(without_aa, training=False)
    resize, crop = build_transform(without_aa, False).transforms[:2]
    assert names[:2] == ["Resize", "CenterCrop"] and resize.size in (256, [256], (256,))
    assert tuple(crop.size) == (224, 224)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_transform_is_the_originals(dataset):
    cfg = cfg_for("--dataset", dataset, "--cutout-length", "16")
    assert transform_names(cfg) == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize", "Cutout"]
    assert transform_names(cfg, training=False) == ["ToTensor", "Normalize"]


def test_a_cifar_run_warns_of_the_augmentation_flags_its_transform_does_not_apply(tmp_path, localmamba_log):
    """The recipe config's aa and reprob (docs/training.md: fine-tuning on cifar100 with it) were dropped without a
    word."""
    make_cifar(str(tmp_path), "cifar10")
    cfg = cfg_for("--dataset", "cifar10", "--data-path", str(tmp_path), "--aa", "rand-m9-mstd0.5", "--reprob",
                  "0.25", "--color-jitter", "0.3", "--cutout-length", "8")
    train, val = build_datasets(cfg)
    with localmamba_log.at_level(logging.INFO, logger="localmamba"):
        build_loaders(cfg, train, val, 1, 0)
    assert [(r.levelname, r.getMessage()) for r in localmamba_log.records] == [
        ("WARNING", "--dataset cifar10 trains with the original's CIFAR transform (random crop with 4-pixel padding, "
                    "flip, --cutout-length): --aa rand-m9-mstd0.5, --reprob 0.25, --color-jitter 0.3 not applied")]
    localmamba_log.clear()
    plain = cfg_for("--dataset", "cifar10", "--data-path", str(tmp_path))
    resolve_dataset_defaults(plain)
    with localmamba_log.at_level(logging.INFO, logger="localmamba"):
        build_loaders(plain, train, val, 1, 0)
        build_loaders(cfg, None, val, 1, 0)     # evaluation
    assert not localmamba_log.records


def test_a_cifar_run_warns_of_the_crop_range_it_does_not_read(tmp_path, localmamba_log):
    """--scale / --ratio (random-resized crop) were dropped without a word: the filled-in default scale hid them."""
    make_cifar(str(tmp_path), "cifar10")
    cfg = cfg_for("--dataset", "cifar10", "--data-path", str(tmp_path), "--scale", "0.5", "1.0", "--ratio", "0.9",
                  "1.1")
    train, val = build_datasets(cfg)
    with localmamba_log.at_level(logging.INFO, logger="localmamba"):
        build_loaders(cfg, train, val, 1, 0)
    assert [r.getMessage() for r in localmamba_log.records] == [
        "--dataset cifar10 trains with the original's CIFAR transform (random crop with 4-pixel padding, flip, "
        "--cutout-length): --scale 0.5 1.0, --ratio 0.9 1.1 not applied"]
    assert transform_names(cfg) == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]


def test_a_cifar_run_warns_of_a_centre_crop_it_does_not_take(tmp_path, localmamba_log):
    """--crop-pct on CIFAR was dropped without a word, and the evaluation's log line named it as if applied."""
    make_cifar(str(tmp_path), "cifar10")
    cfg = cfg_for("--dataset", "cifar10", "--data-path", str(tmp_path), "--crop-pct", "0.875")
    train, val = build_datasets(cfg)
    warning = ("--dataset cifar10 evaluates the whole image, as the original's CIFAR transform does (no centre crop): "
               "--crop-pct 0.875 not applied")
    for training in (train, None):
        localmamba_log.clear()
        with localmamba_log.at_level(logging.INFO, logger="localmamba"):
            build_loaders(cfg, training, val, 1, 0)
        assert [r.getMessage() for r in localmamba_log.records] == [warning]
    assert transform_names(cfg, training=False) == ["ToTensor", "Normalize"]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from classification.data.image_decoding import load_image

    values = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)  # 0 .. 65520
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    rgb = np.asarray(load_image(str(tmp_path / "deep.png")))
    assert rgb.shape == (8, 8, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
    assert np.array_equal(rgb[..., 0], np.round(values / 257.0).astype(np.uint8))  # 65520 -> 255, 1040 -> 4


def test_evaluation_does_not_build_the_training_set(folder_tree, meta_tree, monkeypatch):
    from classification.data import builders, image_list

    def no_train_set(*args, **kwargs):
        raise AssertionError("the training set was built")

    scanned = []
    scan = image_list.scan_class_folders
    monkeypatch.setattr(builders, "build_imagenet", no_train_set)
    monkeypatch.setattr(builders, "build_cifar", no_train_set)
    monkeypatch.setattr(image_list, "scan_class_folders",
                        lambda split_dir, *rest: scanned.append(split_dir) or scan(split_dir, *rest))
    cfg = cfg_for("--data-path", folder_tree, "--img-size", "16")
    val = build_eval_dataset(cfg)
    assert (len(val), cfg.num_classes) == (6, 3) and sorted(y for _, y in val.samples) == [0, 0, 1, 1, 2, 2]
    assert scanned == [os.path.join(folder_tree, "val")]  # the train images are never listed
    root, lists = meta_tree
    cfg = cfg_for("--data-path", root, "--img-size", "16")
    val = build_eval_dataset(cfg)
    assert (len(val), cfg.num_classes) == (6, 3) and val.samples[3][1] == lists["val"][3][1]


@pytest.mark.parametrize("layout", ["meta", "folders"])
def test_num_classes_below_the_datasets_labels_is_refused(layout, meta_tree, folder_tree):
    root = meta_tree[0] if layout == "meta" else folder_tree
    with pytest.raises(DataError, match="--num-classes 2 is fewer than the 3 classes"):
        build_datasets(cfg_for("--data-path", root, "--img-size", "16", "--num-classes", "2"))
    with pytest.raises(DataError, match="--num-classes 2 is fewer than the 3 classes"):
        build_eval_dataset(cfg_for("--data-path", root, "--img-size", "16", "--num-classes", "2"))
    cfg = cfg_for("--data-path", root, "--img-size", "16", "--num-classes", "5")  # a larger head is allowed
    assert len(build_eval_dataset(cfg)) == 6 and cfg.num_classes == 5


def test_num_classes_below_the_cifar_classes_is_refused(tmp_path):
    make_cifar(str(tmp_path), "cifar100")
    with pytest.raises(DataError, match="--num-classes 10 is fewer than the 100 classes"):
        build_datasets(cfg_for("--dataset", "cifar100", "--data-path", str(tmp_path), "--num-classes", "10"))


def make_val_only_tree(root: str, train_leftover: bool) -> None:
    """ImageNet val extracted as val/<class>/*.JPEG and no train/<class>/ folders (train/ absent, or holding only the
    unextracted class tarballs)."""
    for c, name in enumerate(("eel", "cat", "dog")):
        for i in range(2):
            write_image(os.path.join(root, "val", name, f"{i}.JPEG"), seed=10 * c + i)
    if train_leftover:
        os.makedirs(os.path.join(root, "train"))
        open(os.path.join(root, "train", "n01440764.tar"), "wb").close()


@pytest.mark.parametrize("train_leftover", [False, True], ids=["no_train", "train_tarballs"])
def test_evaluation_takes_the_classes_of_a_val_only_tree_from_its_folders(tmp_path, localmamba_log, train_leftover):
    root = str(tmp_path)
    make_val_only_tree(root, train_leftover)
    cfg = cfg_for("--data-path", root, "--img-size", "16")
    val = build_eval_dataset(cfg)
    labels = {os.path.basename(os.path.dirname(p)): y for p, y in val.samples}
    assert labels == {"cat": 0, "dog": 1, "eel": 2} and (len(val), cfg.num_classes) == (6, 3)  # sorted, as ImageFolder
    assert val[5][0].size == (20, 20)
    assert [(r.levelname, r.getMessage()) for r in localmamba_log.records] == [
        ("INFO", f"{root}: no train/<class>/ folders: the 3 classes are the sorted folder names of val/ (as "
                 f"torchvision's ImageFolder); the labels are the model's only if val/ has a folder for every class "
                 f"it was trained on")]
    with pytest.raises(DataError, match=rf"^{os.path.join(root, 'train')}: no class folders: training needs "
                                        rf"train/<class>/ images \(tools/test.py evaluates with val/<class>/ alone\)$"):
        build_datasets(cfg_for("--data-path", root, "--img-size", "16"))


def test_a_val_only_tree_refuses_an_empty_class_folder(tmp_path):
    """An empty val/ folder (no class of the model) would shift the labels of the classes after it: refused by name;
    with train/<class>/ folders naming the classes (empty ones do) it is a class without images, as anywhere."""
    root = str(tmp_path)
    make_val_only_tree(root, train_leftover=False)
    os.makedirs(os.path.join(root, "val", "ant"))
    with pytest.raises(DataError, match=rf"^{os.path.join(root, 'val')}: class folder\(s\) ant hold no image files; "
                                        rf"without train/<class>/ folders the classes are val/'s folder names"):
        build_eval_dataset(cfg_for("--data-path", root, "--img-size", "16"))
    for name in ("ant", "cat", "dog", "eel"):
        os.makedirs(os.path.join(root, "train", name))
    cfg = cfg_for("--data-path", root, "--img-size", "16")
    assert len(build_eval_dataset(cfg)) == 6 and cfg.num_classes == 4


def test_a_val_only_tree_warns_when_num_classes_differs_from_its_folders(tmp_path, localmamba_log):
    make_val_only_tree(str(tmp_path), train_leftover=False)
    cfg = cfg_for("--data-path", str(tmp_path), "--img-size", "16", "--num-classes", "5")
    assert len(build_eval_dataset(cfg)) == 6 and cfg.num_classes == 5
    (record,) = localmamba_log.records
    assert record.levelname == "WARNING" and record.getMessage().endswith("; --num-classes 5 differs from that count")


def test_tools_test_evaluates_released_weights_on_a_val_only_tree(tmp_path):
    from classification.engine.evaluate import test as evaluate
    from classification.engine.model_builder import build_model

    root = str(tmp_path / "imagenet")
    make_val_only_tree(root, train_leftover=False)
    released = str(tmp_path / "released.pth")
    torch.save({"state_dict": build_model(cfg_for(*TINY_MODEL, "--num-classes", "3")).state_dict()}, released)
    out = tmp_path / "out"
    metrics = evaluate(cfg_for(*TINY_MODEL, "--data-path", root, "--resume", released, "--output", str(out)))
    assert set(metrics) == {"test_loss", "top1", "top5"} and metrics["top5"] == 100.0  # 3 classes: all in the top 5
    (log_file,) = (out / "exp").glob("eval_*.txt")
    log = log_file.read_text()
    assert "no train/<class>/ folders: the 3 classes are the sorted folder names of val/" in log
    assert " INFO Classes: 3 (cat, dog, eel)\n" in log  # their order, the labels' (docs/training.md)


def test_meta_tree_without_train_list_evaluates_with_num_classes(tmp_path):
    root = str(tmp_path)
    lists = make_meta_tree(root)
    os.remove(os.path.join(root, "meta", "train.txt"))
    with pytest.raises(DataError, match=r"meta file not found: .*train\.txt: evaluation reads the class count from "
                                        r"it; without it, give --num-classes \(the model's number of classes\)$"):
        build_eval_dataset(cfg_for("--data-path", root, "--img-size", "16"))
    cfg = cfg_for("--data-path", root, "--img-size", "16", "--num-classes", "3")
    val = build_eval_dataset(cfg)
    assert (len(val), cfg.num_classes) == (6, 3) and [y for _, y in val.samples] == [y for _, y in lists["val"]]
