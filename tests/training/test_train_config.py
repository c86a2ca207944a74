"""Config handling: YAML then command line, the command line wins; unknown keys are errors naming the key."""
import os

import pytest
import yaml

from classification.engine.config import ConfigError, parse_args, save_config
from classification.engine.model_builder import build_model

from training_helpers import REPO

RECIPE = os.path.join(REPO, "configs", "strategies", "local_mamba", "config.yaml")


def write_yaml(path, data):
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


def test_defaults_without_config_are_the_originals():
    args = parse_args([])
    assert (args.opt, args.lr, args.sched, args.epochs, args.warmup_epochs) == ("sgd", 0.01, "step", 200, 3)
    assert (args.batch_size, args.smoothing, args.model_ema_decay, args.workers) == (32, 0.1, 0.9998, 4)
    assert (args.output, args.experiment, args.device, args.num_classes) == ("experiments", "exp", "auto", None)
    assert (args.threads, args.keep_num, args.amp_dtype, args.honor_no_weight_decay) == (0, 10, "float16", False)


def test_shipped_recipe_values():
    args = parse_args(["-c", RECIPE])
    assert args.lr == 1e-3 and isinstance(args.lr, float)  # YAML reads '1e-3' as text; it must become a float
    assert (args.min_lr, args.warmup_lr, args.opt_eps) == (1e-6, 1e-7, 1e-8)
    assert (args.opt, args.sched, args.warmup_epochs, args.epochs, args.weight_decay) == ("adamw", "cosine", 20, 300,
                                                                                           0.04)
    assert (args.aa, args.reprob, args.remode, args.mixup, args.cutmix) == ("rand-m9-mstd0.5", 0.25, "pixel", 0.2, 1.0)
    assert (args.interpolation, args.batch_size, args.workers, args.model_ema_decay) == ("bicubic", 128, 16, 0.999)


def test_command_line_wins_over_yaml_for_every_kind_of_flag():
    # the original let its last YAML key (workers) override -j; here the command line always wins
    args = parse_args(["-c", RECIPE, "-j", "2", "--lr", "5e-4", "--model-ema", "--opt", "sgd", "-b", "7",
                       "--image-mean", "0.1", "0.2", "0.3"])
    assert (args.workers, args.lr, args.model_ema, args.opt, args.batch_size) == (2, 5e-4, True, "sgd", 7)
    assert args.image_mean == [0.1, 0.2, 0.3]
    assert args.epochs == 300  # untouched YAML values stay


def test_model_kwargs_merge_key_by_key(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", {"model_kwargs": {"img_size": 28, "patch_size": 4}})
    args = parse_args(["-c", cfg, "--model-kwargs", "patch_size=2", "depth=3"])
    assert args.model_kwargs == {"img_size": 28, "patch_size": 2, "depth": 3}
    assert sorted(args.cli_model_kwargs) == ["depth", "patch_size"]


def test_quickstart_config_is_local_vim_tiny_on_digits():
    args = parse_args(["-c", os.path.join(REPO, "configs", "quickstart.yaml"), "--model", "local_vim_small"])
    assert (args.model, args.dataset, args.img_size, args.threads) == ("local_vim_small", "digits", 16, 1)
    assert args.model_kwargs == {"patch_size": 4} and args.cli_model_kwargs == []
    quickstart = parse_args(["-c", os.path.join(REPO, "configs", "quickstart.yaml")])
    assert quickstart.model == "local_vim_tiny"
    assert build_model(quickstart).grid == (4, 4)  # 16 px images in 4 px patches: --img-size builds the model


def test_base_inheritance_of_the_search_config():
    args = parse_args(["-c", os.path.join(REPO, "configs", "strategies", "local_mamba", "search.yaml")])
    assert (args.model, args.epochs, args.lr, args.warmup_epochs) == ("local_vim_tiny_search", 100, 1e-3, 20)


def test_unknown_key_names_key_and_file(tmp_path):
    cfg = write_yaml(tmp_path / "bad.yaml", {"lr": 0.1, "warmup_epoch": 3})
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'warmup_epoch'.*did you mean 'warmup_epochs'"):
        parse_args(["-c", cfg])


@pytest.mark.parametrize("data, pattern", [
    ({"opt": "adam"}, r"'opt'.*not one of"),
    ({"lr": "fast"}, r"'lr'.*bad value"),
    ({"model_ema": "yes"}, r"'model_ema'.*true or false"),
    ({"model_kwargs": [1, 2]}, r"model_kwargs must be a mapping"),
    ({"image_mean": 0.5}, r"'image_mean'.*expected a list of 3 values, got 0.5"),
    ({"image_mean": [0.5, 0.5]}, r"'image_mean'.*expected a list of 3 values, got \[0.5, 0.5\]"),
    ({"scale": [0.08]}, r"'scale'.*expected a list of 2 values"),
    ({"cutmix_minmax": 0.3}, r"'cutmix_minmax'.*expected a list of one or more values"),
    ({"lr": [0.1]}, r"'lr'.*expected one value, got the list \[0.1\]"),
])
def test_bad_values_name_the_key(tmp_path, data, pattern):
    cfg = write_yaml(tmp_path / "v.yaml", data)
    with pytest.raises(ConfigError, match=pattern):
        parse_args(["-c", cfg])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        parse_args(["-c", str(tmp_path / "nope.yaml")])


def test_saved_config_round_trips(tmp_path):
    args = parse_args(["-c", RECIPE, "--model-kwargs", "img_size=28", "--lr", "2e-3"])
    save_config(args, str(tmp_path / "args.yaml"))
    again = parse_args(["-c", str(tmp_path / "args.yaml")])
    assert vars(again) == {**vars(args), "config": str(tmp_path / "args.yaml"), "cli_model_kwargs": []}


@pytest.mark.parametrize("flags", [["--overwrite"], ["--resume", "experiments/exp/last.pth.tar"]])
def test_saved_config_leaves_out_what_the_command_did_to_its_folder(tmp_path, flags):
    # reusing a run's args.yaml must start a new run, not delete or continue the one it came from
    args = parse_args(["-c", RECIPE, "--lr", "2e-3", *flags])
    save_config(args, str(tmp_path / "args.yaml"))
    with open(tmp_path / "args.yaml") as f:
        saved = yaml.safe_load(f)
    assert "overwrite" not in saved and "resume" not in saved and saved["lr"] == 2e-3
    again = parse_args(["-c", str(tmp_path / "args.yaml")])
    assert (again.overwrite, again.resume, again.lr) == (False, "", 2e-3)


def test_a_config_file_cannot_delete_a_run(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", {"overwrite": True, "epochs": 2})
    with pytest.raises(ConfigError, match=r"c.yaml: key 'overwrite': a config file cannot delete a run; give "
                                          r"--overwrite on the command line"):
        parse_args(["-c", cfg])
    assert not parse_args(["-c", write_yaml(tmp_path / "d.yaml", {"overwrite": False})]).overwrite
    assert parse_args(["-c", write_yaml(tmp_path / "e.yaml", {"epochs": 2}), "--overwrite"]).overwrite


def test_cutmix_minmax_takes_two_values():
    with pytest.raises(ConfigError, match=r"--cutmix-minmax takes two values \(min max\), got \[0.3\]"):
        parse_args(["--cutmix-minmax", "0.3"])
    assert parse_args(["--cutmix-minmax", "0.3", "0.8"]).cutmix_minmax == [0.3, 0.8]
