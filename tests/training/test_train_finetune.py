"""--finetune: a fresh run initialised from another run's or a released checkpoint, at another image size and class
count (position tables resized to the model's grid, the classifier of another shape left at its initialisation)."""
import glob
import logging
import os
import shutil

import pytest
import timm
import torch
import yaml

import classification  # noqa: F401  (registers the models)
from classification.common.checkpoint_io import CheckpointError
from classification.engine.checkpoint import load_finetune_weights
from classification.engine.config import ConfigError, parse_args
from classification.engine.evaluate import test as evaluate
from classification.engine.trainer import train
from classification.models.directions import save_directions
from classification.models.rope import resize_grid_table

VIM = dict(depth=2, embed_dim=16, patch_size=4)
RUN = ["--dataset", "digits", "--model", "local_vim_tiny_wo_search", "--model-kwargs", "depth=2", "embed_dim=16",
       "patch_size=4", "--img-size", "16", "-b", "64", "--epochs", "1", "-j", "0", "--opt", "adamw",
       "--lr", "1e-30", "--warmup-lr", "0", "--min-lr", "0", "--weight-decay", "0", "--smoothing", "0"]  # weights stay


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A released-form ({'state_dict'}) LocalVim checkpoint for 32 px images (8x8 grid) and 1000 classes."""
    torch.manual_seed(1)
    model = timm.create_model("local_vim_tiny_wo_search", img_size=32, **VIM)
    path = str(tmp_path_factory.mktemp("released") / "local_vim.ckpt")
    torch.save({"state_dict": model.state_dict()}, path)
    return path, model.state_dict()


def test_weights_are_adapted_to_the_new_grid_and_class_count(released, localmamba_log):
    path, weights = released
    torch.manual_seed(2)
    model = timm.create_model("local_vim_tiny_wo_search", img_size=16, num_classes=10, **VIM)
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    with localmamba_log.at_level(logging.INFO, logger="localmamba"):
        kept = load_finetune_weights(model, torch.load(path, weights_only=True), path)
    assert kept == ["head.weight", "head.bias"]
    assert [r.getMessage() for r in localmamba_log.records] == [   # said once, not resized in silence
        "checkpoint weights resized to the model's token grid at this image size: pos_embed (1, 64, 16) -> "
        "(1, 16, 16), rope.freqs_cos (64, 16) -> (16, 16), rope.freqs_sin (64, 16) -> (16, 16)"]
    loaded = model.state_dict()
    for key, value in loaded.items():
        if key.startswith("head."):
            assert torch.equal(value, head[key])                       # the new classifier keeps its initialisation
        elif key in ("pos_embed", "rope.freqs_cos", "rope.freqs_sin"):  # 64 tokens' tables resized to 16 tokens
            assert value.shape[-2] == 16 and weights[key].shape[-2] == 64
            torch.testing.assert_close(value, resize_grid_table(weights[key], (8, 8), (4, 4)), rtol=0, atol=0)
        else:
            assert torch.equal(value, weights[key]), key


def test_a_checkpoint_of_another_model_is_refused_naming_the_file(released, tmp_path):
    path, _ = released
    model = timm.create_model("local_vim_tiny_wo_search", img_size=16, num_classes=10, depth=3, embed_dim=16,
                              patch_size=4)
    with pytest.raises(CheckpointError, match=r"local_vim.ckpt does not fit this model .*missing \(\d+\): layers.2"):
        load_finetune_weights(model, torch.load(path, weights_only=True), path)
    trained = {"model": torch.load(path, weights_only=True)["state_dict"], "epoch": 4, "model_name": "local_vim_tiny"}
    with pytest.raises(CheckpointError, match=r"local_vim.ckpt does not fit this model .*layers.2.*; it holds "
                                              r"local_vim_tiny's weights, this model is local_vim_tiny_wo_search$"):
        load_finetune_weights(model, trained, path, "local_vim_tiny_wo_search")


def test_a_fine_tuning_run_starts_afresh_from_the_weights(released, tmp_path):
    path, weights = released
    out = str(tmp_path / "out")
    metrics = train(parse_args([*RUN, "--finetune", path, "--output", out, "--experiment", "ft"]))
    assert 0 <= metrics["top1"] <= 100
    ckpt = torch.load(os.path.join(out, "ft", "last.pth.tar"), weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["model"]["head.weight"].shape == (10, 16)
    assert torch.equal(ckpt["model"]["layers.1.mixer.in_proj.weight"], weights["layers.1.mixer.in_proj.weight"])
    assert ckpt["config"]["finetune"] == path


def test_fine_tuning_a_run_of_other_directions_warns_naming_them(tmp_path):
    """A run trained with its own --directions, fine-tuned by a model of the default table (same shapes): the
    weights load, and the log says the directions differ (it said nothing)."""
    out = str(tmp_path / "out")
    table = tmp_path / "directions.yaml"
    save_directions(table, [["h", "v", "w2", "w2_flip"]] * 2)
    train(parse_args([*RUN, "--directions", str(table), "--output", out, "--experiment", "own"]))
    source = os.path.join(out, "own", "last.pth.tar")
    train(parse_args([*RUN, "--finetune", source, "--output", out, "--experiment", "ft"]))
    log = open(glob.glob(os.path.join(out, "ft", "log_*.txt"))[0]).read()
    assert (f"WARNING {source} was trained with other scan directions (layer 0: ['h', 'v', 'w2', 'w2_flip'] vs "
            f"['h', 'h_flip', 'w2', 'w2_flip'] here): its weights fine-tune this model's directions") in log
    train(parse_args([*RUN, "--directions", str(table), "--finetune", source, "--output", out, "--experiment",
                      "same"]))
    assert "other scan directions" not in open(glob.glob(os.path.join(out, "same", "log_*.txt"))[0]).read()


def test_finetune_with_resume(released, tmp_path):
    """A released file given to both is refused; a fine-tuning run continued with its command line plus --resume (the
    hint an interrupted run prints) resumes and does not read the --finetune file again."""
    path, _ = released
    out = str(tmp_path / "out")
    with pytest.raises(ConfigError, match="--finetune starts a run from weights and --resume .* does the same: give "
                                          "only one of them"):
        train(parse_args([*RUN, "--finetune", path, "--resume", path, "--output", out]))
    assert not os.path.exists(out)
    flags = [*RUN, "--finetune", path, "--output", out, "--experiment", "ft"]
    train(parse_args(flags))
    train(parse_args([*flags, "--epochs", "2", "--resume", os.path.join(out, "ft", "last.pth.tar")]))
    logs = "".join(open(log).read() for log in glob.glob(os.path.join(out, "ft", "log_*.txt")))
    assert f"--finetune {path} is not read: the run continues from" in logs
    assert torch.load(os.path.join(out, "ft", "last.pth.tar"), weights_only=True)["epoch"] == 1


def test_a_resumed_run_keeps_its_own_start_in_args_yaml(released, tmp_path):
    """args.yaml says what a run started from, whatever --finetune a resume is given (it is not read): a run copied
    from it with -c starts as the run did. It recorded the resume's --finetune, or '' for a resume without one."""
    path, _ = released
    out = str(tmp_path / "out")
    train(parse_args([*RUN, "--finetune", path, "--output", out, "--experiment", "ft"]))
    last, args_yaml = os.path.join(out, "ft", "last.pth.tar"), os.path.join(out, "ft", "args.yaml")
    train(parse_args([*RUN, "--epochs", "2", "--resume", last]))
    assert yaml.safe_load(open(args_yaml))["finetune"] == path
    other = os.path.join(out, "ft", "other.pth.tar")
    shutil.copy(path, other)
    train(parse_args([*RUN, "--epochs", "3", "--resume", last, "--finetune", other]))
    assert yaml.safe_load(open(args_yaml))["finetune"] == path
    logs = "".join(open(log).read() for log in glob.glob(os.path.join(out, "ft", "log_*.txt")))
    assert f"--finetune {other} is not read: the run continues from {last}, which started from {path}" in logs


def test_local_vmamba_keeps_its_new_classifier(tmp_path):
    """The classifier named by the model's pretrained_cfg ('classifier.head'); LocalVMamba has no position table."""
    vssm = dict(dims=8, depths=(1, 1, 1, 1), directions=[["h", "w7"]] * 4)
    torch.manual_seed(1)
    source = timm.create_model("local_vssm_tiny", **vssm)
    path = str(tmp_path / "vssm.pth.tar")
    torch.save({"epoch": 3, "model": source.state_dict()}, path)
    model = timm.create_model("local_vssm_tiny", num_classes=5, **vssm)
    kept = load_finetune_weights(model, torch.load(path, weights_only=True), path)
    assert kept == ["classifier.head.weight", "classifier.head.bias"] and model.classifier.head.out_features == 5
    assert all(torch.equal(value, source.state_dict()[key]) for key, value in model.state_dict().items()
               if not key.startswith("classifier.head."))


def test_evaluation_at_another_image_size_resizes_the_position_tables(tmp_path):
    """tools/test.py at another --img-size builds the model for that size and resizes the checkpoint's position
    tables to it: the same metrics as the model built for the checkpoint's size, which resizes them on the fly."""
    torch.manual_seed(3)
    model = timm.create_model("local_vim_tiny_wo_search", img_size=32, num_classes=10, **VIM)
    path = str(tmp_path / "at32.ckpt")
    torch.save({"state_dict": model.state_dict()}, path)
    common = [*RUN, "--resume", path, "--output", str(tmp_path / "eval")]
    at_16 = evaluate(parse_args(common))
    with_32_tables = evaluate(parse_args([*common, "--model-kwargs", "img_size=32"]))
    assert at_16 == with_32_tables and 0 <= at_16["top1"] <= 100


def test_resuming_at_another_image_size_is_refused_naming_the_flag(tmp_path):
    torch.manual_seed(3)
    model = timm.create_model("local_vim_tiny_wo_search", img_size=32, num_classes=10, **VIM)
    path = str(tmp_path / "at32.ckpt")
    torch.save({"state_dict": model.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"pos_embed: \(1, 64, 16\) vs \(1, 16, 16\).*its position tables are of "
                                              r"another image size: give the --img-size it was trained at.*; --resume "
                                              rf"trains released weights on .*, give --finetune {path} instead$"):
        train(parse_args([*RUN, "--resume", path, "--output", str(tmp_path / "out")]))
    out = str(tmp_path / "run")
    train(parse_args([*RUN, "--output", out, "--experiment", "r"]))   # a run's checkpoint, resumed at another size
    last = os.path.join(out, "r", "last.pth.tar")
    with pytest.raises(CheckpointError, match=rf"{last} does not fit .*; to continue its run, give its config: -c "
                                              rf"{os.path.join(out, 'r', 'args.yaml')} --resume {last}$"):
        train(parse_args([*RUN, "--img-size", "32", "--epochs", "2", "--resume", last]))


def test_a_run_resumed_from_released_weights_records_them_as_its_start(tmp_path):
    """--resume of a released file starts a fresh run from its weights, as --finetune of that file does: args.yaml
    records it as --finetune, so a run copied with -c starts from the same weights."""
    torch.manual_seed(4)
    path = str(tmp_path / "at16.ckpt")
    torch.save({"state_dict": timm.create_model("local_vim_tiny_wo_search", img_size=16, num_classes=10,
                                                **VIM).state_dict()}, path)
    out = str(tmp_path / "out")
    first = train(parse_args([*RUN, "--resume", path, "--output", out, "--experiment", "a"]))
    args_yaml = os.path.join(out, "a", "args.yaml")
    assert yaml.safe_load(open(args_yaml))["finetune"] == path
    logs = "".join(open(log).read() for log in glob.glob(os.path.join(out, "a", "log_*.txt")))
    assert "starting at epoch 0 (args.yaml records it as the run's --finetune" in logs
    copy = train(parse_args(["-c", args_yaml, "--experiment", "b"]))
    assert first == copy
    scratch = train(parse_args([*RUN, "--output", out, "--experiment", "d"]))
    assert scratch != first
