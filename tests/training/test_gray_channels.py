"""Grayscale data end to end: a model of `in_chans=1` gets images decoded as gray (mode L), normalised by a
one-value mean / std (the dataset's default: the mean of its RGB values), trains, evaluates, exports and starts from
3-channel weights; channel counts other than 1 and 3 are refused. The 3-channel pipeline is unchanged (its tests:
test_data_mutants.py, test_own_data.py, test_train_data.py)."""
import logging
import os
import re

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import classification  # noqa: F401  (registers the models)
from classification.data import build_datasets, build_eval_dataset
from classification.data.image_decoding import load_image
from classification.data.rand_augment import RandAugment
from classification.data.small_datasets import ArrayImageDataset, build_digits
from classification.data.transforms import build_transform
from classification.common.checkpoint_io import CheckpointError
from classification.engine.checkpoint import load_evaluated_weights, load_finetune_weights
from classification.engine.config import ConfigError, parse_args
from classification.engine.evaluate import test as evaluate
from classification.engine.model_builder import build_model, check_model_flags, image_channels
from classification.engine.onnx_export import export_model, onnxruntime_difference
from classification.engine.trainer import train

IMAGENET_GRAY_MEAN = (0.485 + 0.456 + 0.406) / 3   # the mean of timm's ImageNet RGB values
IMAGENET_GRAY_STD = (0.229 + 0.224 + 0.225) / 3
VIM = ["local_vim_tiny_wo_search", "depth=2", "embed_dim=16", "patch_size=8"]
VSSM = ["local_vssm_tiny_search", "dims=[8,16]", "depths=[1,1]"]


def write_gray_tree(root: str, value: int = 200, per_class: int = 2) -> None:
    """train/ and val/ class folders `a` and `b` of 40 x 40 images: PNG gray files of one `value` (a: all pixels,
    b: the left half, the rest black), and one RGB file in each val class (a: pure red, its luminance 76)."""
    for split in ("train", "val"):
        for name in ("a", "b"):
            os.makedirs(os.path.join(root, split, name))
            for i in range(per_class):
                pixels = np.full((40, 40), value, np.uint8)
                if name == "b":
                    pixels[:, 20:] = 0
                Image.fromarray(pixels, "L").save(os.path.join(root, split, name, f"{i}.png"))
        for name in ("a", "b"):
            Image.new("RGB", (40, 40), (255, 0, 0)).save(os.path.join(root, split, name, "rgb.png"))


@pytest.fixture(scope="module")
def gray_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gray"))
    write_gray_tree(root)
    return root


def gray_run(model: list, root: str, *extra: str) -> list:
    """Flags of a run of `model` ([name, kwargs...]) built for 1-channel 32-pixel images of the tree at `root`."""
    return ["--data-path", root, "--model", model[0], "--model-kwargs", *model[1:], "in_chans=1", "--img-size", "32",
            "-b", "2", "--epochs", "1", "-j", "0", *extra]


@pytest.mark.parametrize("model", [VIM, VSSM], ids=["local_vim", "local_vmamba"])
def test_a_gray_model_trains_a_step_and_evaluates_with_the_recipes_augmentations(model, gray_tree, tmp_path):
    """`in_chans=1` was refused ('the data pipeline gives RGB images'); now a LocalVim and a LocalVMamba train on gray
    images with RandAugment, random erasing, Mixup / CutMix, and tools/test.py's evaluation of the checkpoint gives
    the run's own validation loss; the run records the one-value mean / std it normalised with."""
    out = str(tmp_path / "out")
    metrics = train(parse_args(gray_run(model, gray_tree, "--aa", "rand-m9-mstd0.5", "--reprob", "0.5", "--mixup",
                                        "0.8", "--cutmix", "1.0", "--output", out, "--experiment", "gray")))
    ckpt = torch.load(os.path.join(out, "gray", "last.pth.tar"), weights_only=True)
    first_conv = "patch_embed.proj.weight" if model is VIM else "patch_embed.0.weight"
    assert ckpt["model"][first_conv].shape[1] == 1
    with open(os.path.join(out, "gray", "args.yaml")) as f:
        saved = yaml.safe_load(f)
    assert (saved["image_mean"], saved["image_std"]) == ([IMAGENET_GRAY_MEAN], [IMAGENET_GRAY_STD])
    evaluated = evaluate(parse_args(gray_run(model, gray_tree, "--resume", os.path.join(out, "gray", "last.pth.tar"),
                                             "--output", str(tmp_path / "eval"))))
    assert evaluated["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-6)
    assert evaluated["top1"] == metrics["top1"]


def test_a_gray_image_is_one_channel_normalised_by_the_one_value_mean_and_std(gray_tree):
    """The decoded image is gray (mode L), and its tensor of one channel holds (value / 255 - mean) / std: the
    default mean / std of a 1-channel model is the mean of the dataset's RGB values; a given one wins."""
    cfg = parse_args(gray_run(VIM, gray_tree))
    train_set, val_set = build_datasets(cfg, image_channels(cfg))
    image, label = val_set[0]                                # val/a/0.png: 200 everywhere
    assert (image.mode, label) == ("L", 0)
    assert (cfg.image_mean, cfg.image_std) == ([IMAGENET_GRAY_MEAN], [IMAGENET_GRAY_STD])
    tensor = build_transform(cfg, training=False)(image)
    assert tensor.shape == (1, 32, 32)
    torch.testing.assert_close(tensor, torch.full((1, 32, 32), (200 / 255 - 0.449) / 0.226))
    assert build_transform(cfg, training=True)(train_set[0][0]).shape == (1, 32, 32)
    cfg = parse_args(gray_run(VIM, gray_tree, "--image-mean", "0.5", "--image-std", "0.25"))
    val_set = build_eval_dataset(cfg, channels=image_channels(cfg))
    tensor = build_transform(cfg, training=False)(val_set[0][0])
    torch.testing.assert_close(tensor, torch.full((1, 32, 32), (200 / 255 - 0.5) / 0.25))


def test_every_op_of_our_rand_augment_keeps_a_gray_image_gray_filling_with_the_gray_mean(gray_tree):
    """The original's RandAugment (`--aa rand-...`) on a 1-channel run fills with its one-value mean x 255 (0.449:
    114), and each of its ops gives a gray image back: a rotated image of 200s has 114 in its corners."""
    cfg = parse_args(gray_run(VIM, gray_tree, "--aa", "rand-m9-mstd0.5"))
    build_datasets(cfg, image_channels(cfg))
    rand_augment = next(step for step in build_transform(cfg, training=True).transforms
                        if isinstance(step, RandAugment))
    assert {op.fill for op in rand_augment.ops} == {(114,)}
    image = Image.new("L", (32, 32), 200)
    for op in rand_augment.ops:
        assert op.apply(image, 9.0).mode == "L", op.name
    rotate = next(op for op in rand_augment.ops if op.name == "Rotate")
    assert np.asarray(rotate.apply(image, 10.0))[0, 0] == 114


def test_a_colour_file_for_a_gray_model_is_gray_by_pillows_luminance(tmp_path):
    """L = (299 R + 587 G + 114 B) / 1000, rounded; a 16-bit gray file is scaled by 255 / 65535 as for RGB."""
    colours = Image.new("RGB", (4, 1))
    colours.putdata([(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 200, 30)])
    colours.save(tmp_path / "colours.png")
    gray = load_image(str(tmp_path / "colours.png"), 1)
    assert gray.mode == "L" and np.asarray(gray).tolist() == [[76, 150, 29, 124]]  # 76.2, 149.7, 29.1, 123.8
    Image.fromarray(np.array([[0, 1000, 32896, 65535]], np.uint16)).save(tmp_path / "sixteen.png")
    assert np.asarray(load_image(str(tmp_path / "sixteen.png"), 1)).tolist() == [[0, 4, 128, 255]]
    assert np.asarray(load_image(str(tmp_path / "sixteen.png"), 3))[..., 1].tolist() == [[0, 4, 128, 255]]


def test_a_cielab_tiff_for_a_gray_model_is_gray_by_the_luminance_of_its_rgb(tmp_path):
    """A CIELab TIFF (Pillow mode LAB, which Pillow converts to RGB only) ended a gray run with Pillow's
    'conversion from LAB to RGB not supported'; now it is taken to RGB as for an RGB model, then to its luminance."""
    Image.new("LAB", (2, 1), (50, 10, 10)).save(tmp_path / "lab.tif")
    rgb = load_image(str(tmp_path / "lab.tif"), 3)
    red, green, blue = rgb.getpixel((0, 0))
    gray = load_image(str(tmp_path / "lab.tif"), 1)
    luminance = round((299 * red + 587 * green + 114 * blue) / 1000)
    assert gray.mode == "L" and np.asarray(gray).tolist() == [[luminance, luminance]]


def test_small_datasets_give_gray_images_to_a_gray_model():
    """scikit-learn's digits are gray: the 1-channel images are the RGB ones' single channel; CIFAR's colour arrays
    become gray by luminance."""
    gray_train, gray_val = build_digits(16, channels=1)
    rgb_train, _ = build_digits(16)
    assert len(gray_val) == 360 and gray_train[5][0].mode == "L" and gray_train[5][1] == rgb_train[5][1]
    assert np.array_equal(np.asarray(gray_train[5][0]), np.asarray(rgb_train[5][0])[..., 0])
    cifar = ArrayImageDataset(np.array([[[[255, 0, 0], [10, 200, 30]]]]), np.array([3]), 10, channels=1)
    image, label = cifar[0]
    assert (image.mode, label, np.asarray(image).tolist()) == ("L", 3, [[76, 124]])


@pytest.mark.parametrize("model, kwargs", [("local_vim_tiny_search", ["in_chans=4", "depth=2", "embed_dim=16"]),
                                           ("local_vim_tiny_search", ["channels=2", "depth=2", "embed_dim=16"]),
                                           ("local_vssm_tiny_search", ["in_chans=4", "dims=8"]),
                                           ("resnet10t", ["in_chans=2"]),
                                           ("local_vssm_tiny_search", ["in_chans=true", "dims=8"]),
                                           ("local_vim_tiny_search", ["in_chans=1.0", "depth=2", "embed_dim=16"])])
def test_input_channels_other_than_one_and_three_are_refused_saying_which_are(model, kwargs):
    """The data pipeline decodes gray images (1 channel) and RGB ones (3): any other count is refused before
    anything is built, in one line; so are `true` and `1.0`, which passed as 1 (equal to it in Python)."""
    channels = re.escape(str(yaml.safe_load(kwargs[0].split("=")[1])))
    message = (rf"^model {model}: in_chans={channels} is not supported: the data pipeline decodes images as gray for "
               r"in_chans=1 or as RGB for in_chans=3 \(the default\)$")
    with pytest.raises(ConfigError, match=message):
        check_model_flags(parse_args(["--model", model, "--model-kwargs", *kwargs]))
    with pytest.raises(ConfigError, match=message):
        build_model(parse_args(["--model", model, "--model-kwargs", *kwargs]))


def test_an_rgb_mean_for_a_gray_model_is_refused_and_one_filled_by_the_dataset_refilled(gray_tree, tmp_path):
    """A 3-value --image-mean (a recipe's ImageNet values) for a 1-channel model is a ConfigError naming the flag, and
    so is a 1-value std for an RGB model; an args.yaml of an RGB run, whose mean and std its dataset filled, is filled
    again with gray values."""
    flags = gray_run(VIM, gray_tree, "--image-mean", "0.485", "0.456", "0.406")
    with pytest.raises(ConfigError, match=r"^--image-mean 0\.485 0\.456 0\.406: 3 value\(s\) for a model of 1-channel "
                                          r"\(gray\) images \(in_chans=1\): give 1, or leave --image-mean unset for "
                                          r"the dataset's default$"):
        image_channels(parse_args(flags))
    with pytest.raises(ConfigError, match=r"^--image-std 0\.5: 1 value\(s\) for a model of 3-channel \(RGB\) images "
                                          r"\(in_chans=3\): give 3, or leave --image-std unset"):
        image_channels(parse_args(["--image-std", "0.5"]))
    rgb_run = parse_args(["--data-path", gray_tree, "--img-size", "32"])
    build_datasets(rgb_run)
    assert rgb_run.image_mean == [0.485, 0.456, 0.406]
    config = tmp_path / "args.yaml"
    config.write_text(yaml.safe_dump({key: value for key, value in vars(rgb_run).items()
                                      if key in ("image_mean", "image_std", "img_size", "filled_from_dataset")}))
    cfg = parse_args(["-c", str(config), *gray_run(VIM, gray_tree)])
    build_datasets(cfg, image_channels(cfg))
    assert (cfg.image_mean, cfg.image_std) == ([IMAGENET_GRAY_MEAN], [IMAGENET_GRAY_STD])


@pytest.mark.parametrize("name, kwargs, first_conv", [
    ("local_vim_tiny_wo_search", dict(depth=2, embed_dim=16, patch_size=8, img_size=32), "patch_embed.proj.weight"),
    ("local_vssm_tiny_search", dict(dims=(8, 16), depths=(1, 1)), "patch_embed.0.weight")])
def test_finetuning_a_gray_model_from_rgb_weights_sums_the_first_conv_over_rgb(
        name, kwargs, first_conv, tmp_path, localmamba_log):
    """--finetune of a 3-channel checkpoint into a 1-channel model stopped on the first conv's shape; now that conv
    takes the sum of the RGB filters (timm's rule, as timm's own pretrained loading: test_pretrained.py) and every
    other weight loads as it is."""
    torch.manual_seed(0)
    rgb = timm.create_model(name, **kwargs)
    path = str(tmp_path / "rgb.pth.tar")
    torch.save({"epoch": 2, "model": rgb.state_dict()}, path)
    gray = timm.create_model(name, in_chans=1, **kwargs)
    with localmamba_log.at_level(logging.INFO, logger="localmamba"):
        assert load_finetune_weights(gray, torch.load(path, weights_only=True), path) == []
    weights = rgb.state_dict()
    torch.testing.assert_close(gray.state_dict()[first_conv], weights[first_conv].sum(dim=1, keepdim=True))
    assert all(torch.equal(value, weights[key]) for key, value in gray.state_dict().items() if key != first_conv)
    assert f"{path}: {first_conv} of 3 input channels adapted to the model's 1 (timm's adapt_input_conv)" in [
        record.getMessage() for record in localmamba_log.records]


@pytest.mark.parametrize("name, kwargs, first_conv", [
    ("local_vim_tiny_wo_search", dict(depth=2, embed_dim=16, patch_size=8, img_size=32), r"patch_embed\.proj\.weight"),
    ("local_vssm_tiny_search", dict(dims=(8, 16), depths=(1, 1)), r"patch_embed\.0\.weight")])
def test_weights_of_the_other_channel_count_are_refused_naming_the_channels(name, kwargs, first_conv):
    """Released weights of a gray model given to an RGB command (and the reverse) said only 'shape mismatch' of the
    first conv; the error now says which images each takes and the in_chans to give. --finetune of gray weights into
    an RGB model (timm adapts only RGB ones to gray) says so too."""
    gray, rgb = timm.create_model(name, in_chans=1, **kwargs), timm.create_model(name, **kwargs)
    for model, weights, saved, wanted in ((rgb, gray.state_dict(), "1-channel \\(gray\\)", "3-channel \\(RGB\\)"),
                                          (gray, rgb.state_dict(), "3-channel \\(RGB\\)", "1-channel \\(gray\\)")):
        channels = saved[0]
        message = (rf"^w\.pth does not fit this model \(another model\?\): shape mismatch \(1\): {first_conv}: "
                   rf"\(\d+, {channels}, \d+, \d+\) vs \(\d+, {wanted[0]}, \d+, \d+\); it takes {saved} images, "
                   rf"this model {wanted} ones: give --model-kwargs in_chans={channels}$")
        with pytest.raises(CheckpointError, match=message):
            load_evaluated_weights(model, name, kwargs, {"state_dict": weights}, weights, "w.pth")
    with pytest.raises(CheckpointError, match=r"it takes 1-channel \(gray\) images, this model 3-channel \(RGB\) ones"):
        load_finetune_weights(rgb, {"state_dict": gray.state_dict()}, "w.pth")


def test_a_gray_model_exports_to_onnx_for_one_channel_images(tmp_path):
    """The export traced 3-channel images for every model: a 1-channel one failed in its first convolution."""
    model = timm.create_model(VIM[0], depth=2, embed_dim=16, patch_size=8, img_size=32, in_chans=1).eval()
    path = str(tmp_path / "gray.onnx")
    export_model(model, path, 32, exporter="torchscript")
    assert onnxruntime_difference(model, path, 32, batch=2) < 1e-4
