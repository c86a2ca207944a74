"""Config handling: YAML then command line, the command line wins; unknown keys are errors naming the key."""
import glob
import os

import pytest
import yaml

from classification.data import build_datasets
from classification.data.defaults import CIFAR_MEAN, resolve_dataset_defaults
from classification.engine.config import ConfigError, parse_args, save_config
from classification.engine.flags import EVALUATION_FLAGS, build_parser
from classification.engine.model_builder import build_model

from training_helpers import REPO, make_cifar, make_folder_tree

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
    assert (args.threads, args.keep_num, args.amp_dtype, args.honor_no_weight_decay) == (0, 10, None, False)


def test_shipped_recipe_values():
    args = parse_args(["-c", RECIPE])
    assert args.lr == 1e-3 and isinstance(args.lr, float)  # YAML reads '1e-3' as text; it must become a float
    assert (args.min_lr, args.warmup_lr, args.opt_eps) == (1e-6, 1e-7, 1e-8)
    assert (args.opt, args.sched, args.warmup_epochs, args.epochs) == ("adamw", "cosine", 20, 300)
    assert args.weight_decay == 0.04 and args.opt_betas is None  # opt_betas: null keeps the default
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


@pytest.mark.parametrize("item, problem", [
    ("depths=[1,1,1", "expected ',' or ']', but got '<stream end>'"),
    ("directions=[[h,v]]*4", "expected '<document start>', but found '<alias>'"),
])
def test_a_model_kwargs_value_that_is_not_yaml_is_one_line(capsys, item, problem):
    """It was yaml's ParserError traceback."""
    with pytest.raises(SystemExit) as stop:
        parse_args(["--model-kwargs", item])
    assert stop.value.code == 2
    key = item.split("=")[0]
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: --model-kwargs {item}: the value is not YAML ({problem}), as a config file's model_kwargs value "
        f"must be (e.g. {key}=[1, 2])")


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


def test_paths_starting_with_a_tilde_are_under_the_home_folder(tmp_path, monkeypatch):
    """No shell expands `~` in a config file's value or in `--flag=~/x`: `output: ~/runs` wrote the run into a folder
    named `~` in the working directory (and a `rm -rf ~` to clean it up would hit the home folder)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "c.yaml"
    config.write_text("output: ~/runs\ndata_path: ~/data\ndirections: ~/directions.yaml\nfinetune: ~/released.pth\n")
    cfg = parse_args(["-c", str(config), "--resume=~/runs/a/last.pth.tar"])
    assert (cfg.output, cfg.data_path, cfg.directions, cfg.finetune, cfg.resume) == (
        str(tmp_path / "runs"), str(tmp_path / "data"), str(tmp_path / "directions.yaml"),
        str(tmp_path / "released.pth"), str(tmp_path / "runs" / "a" / "last.pth.tar"))
    assert parse_args(["--resume", "auto", "--output", "runs~"]).resume == "auto"
    assert parse_args(["--output", "runs~"]).output == "runs~"


def test_unknown_key_names_key_and_file(tmp_path):
    cfg = write_yaml(tmp_path / "bad.yaml", {"lr": 0.1, "warmup_epoch": 3})
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'warmup_epoch'.*did you mean warmup_epochs\?"):
        parse_args(["-c", cfg])


def test_the_originals_args_yaml_keys_of_features_left_out_are_skipped_while_off(tmp_path):
    """An original run's args.yaml lists every flag of its toolbox, feature distillation, DyRep, DBB, the auxiliary
    tower and the rest included (unknown keys here): off, they are skipped, so `-c` of that file works; switched on,
    refused by name."""
    off = {"teacher_module": "", "student_module": "", "kd_loss_kwargs": None, "dyrep": False,
           "dyrep_adjust_interval": 10, "dbb": False, "auxiliary": False, "auxiliary_weight": 0.4,
           "drop_path_strategy": "const", "edgenn_config": "", "model_config": ""}
    cfg = parse_args(["-c", write_yaml(tmp_path / "args.yaml", {"model": "timm_local_vim_tiny", "lr": 5e-4, **off})])
    assert (cfg.model, cfg.lr) == ("timm_local_vim_tiny", 5e-4) and not hasattr(cfg, "dyrep")
    assert not hasattr(cfg, "teacher_module")
    with pytest.raises(ConfigError, match=r"args2\.yaml: key 'dyrep' is True: the original's DyRep is not part of "
                                          r"this code \(remove the key, or give it False\)"):
        parse_args(["-c", write_yaml(tmp_path / "args2.yaml", {**off, "dyrep": True})])


@pytest.mark.parametrize("data, pattern", [
    ({"opt": "adam"}, r"'opt'.*not one of"),
    ({"lr": "fast"}, r"'lr'.*bad value"),
    ({"model_ema": "yes"}, r"'model_ema'.*true or false"),
    ({"model_kwargs": [1, 2]}, r"model_kwargs must be a mapping"),
    ({"image_mean": 0.5}, r"'image_mean'.*expected a list of one or more values, got 0.5"),
    ({"image_mean": [0.5, 0.5]}, r"^--image-mean takes 3 values \(RGB images\) or 1 \(gray images, a model of "
                                 r"in_chans=1\), got \[0.5, 0.5\]$"),
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


@pytest.mark.parametrize("text, problem", [
    ("epochs:\t3\n", "at line 1, column 8: while scanning for the next token, found character '\\t' that cannot start "
                     "any token (YAML indents and separates with spaces, not tabs)"),
    ("epochs: 3\n---\nlr: 0.1\n", "at line 2, column 1: expected a single document in the stream, but found another "
                                  "document"),
])
def test_a_config_that_is_not_valid_yaml_is_one_line(tmp_path, text, problem):
    """PyYAML's error spans lines (context, problem, the file and mark again): the message is one line."""
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        parse_args(["-c", str(tmp_path / "bad.yaml")])
    assert str(err.value) == f"{tmp_path / 'bad.yaml'}: not valid YAML {problem}"


def test_abbreviations_of_config_are_read_as_the_parser_reads_them(tmp_path, capsys):
    """`-c/--config` was read by a first parser of its own: `--co default` (ambiguous: --compile, --color-jitter, ...)
    was taken as a config path, ending in a misleading "config file not found: default"."""
    with pytest.raises(SystemExit) as stop:
        parse_args(["--co", "default"])
    assert stop.value.code == 2
    assert "error: ambiguous option: --co could match --config, " in capsys.readouterr().err
    cfg = write_yaml(tmp_path / "c.yaml", {"lr": 0.5})
    assert parse_args(["--conf", cfg]).lr == parse_args([f"--config={cfg}"]).lr == parse_args([f"-c{cfg}"]).lr == 0.5


def test_saved_config_round_trips(tmp_path):
    args = parse_args(["-c", RECIPE, "--model-kwargs", "img_size=28", "--lr", "2e-3"])
    save_config(args, str(tmp_path / "args.yaml"))
    again = parse_args(["-c", str(tmp_path / "args.yaml")])
    assert vars(again) == {**vars(args), "config": str(tmp_path / "args.yaml"), "cli_model_kwargs": [],
                           "config_model": args.model,  # args.yaml names the model its model_kwargs are for
                           "output": os.path.abspath(args.output)}  # and the folder of its run from anywhere


def test_a_runs_args_yaml_for_another_dataset_fills_that_datasets_defaults(tmp_path):
    """args.yaml records the values its run filled from its dataset; they were kept for another --dataset (a CIFAR
    run's 32-pixel size, CIFAR mean and 10 classes for ImageNet)."""
    make_cifar(str(tmp_path), "cifar10")
    run = parse_args(["--dataset", "cifar10", "--data-path", str(tmp_path), "--hflip", "0.25"])
    build_datasets(run)
    assert run.filled_from_dataset == ["crop_pct", "image_mean", "image_std", "img_size", "num_classes"]
    save_config(run, str(tmp_path / "args.yaml"))
    other = parse_args(["-c", str(tmp_path / "args.yaml"), "--dataset", "imagenet", "--crop-pct", "1.0"])
    assert (other.img_size, other.image_mean, other.num_classes, other.filled_from_dataset) == (None, None, None, [])
    assert (other.crop_pct, other.hflip, other.data_path) == (1.0, 0.25, str(tmp_path))  # given, not filled
    resolve_dataset_defaults(other)
    assert (other.img_size, other.image_std, other.crop_pct) == (224, [0.229, 0.224, 0.225], 1.0)
    assert other.filled_from_dataset == ["image_mean", "image_std", "img_size", "scale"]
    same = parse_args(["-c", str(tmp_path / "args.yaml"), "--img-size", "64"])  # its own dataset keeps them
    assert (same.img_size, same.image_mean, same.num_classes) == (64, list(CIFAR_MEAN), 10)
    assert same.filled_from_dataset == ["crop_pct", "image_mean", "image_std", "num_classes"]


def test_a_cifar10_runs_args_yaml_for_cifar100_keeps_what_both_fill_alike(tmp_path, monkeypatch):
    """The cifar10 run's data folder (args.yaml names it by its absolute path) was replaced by cifar100's relative
    default, which names another folder from any other working directory; so were the size and mean, alike."""
    monkeypatch.chdir(tmp_path)
    make_cifar(str(tmp_path / "data" / "cifar"), "cifar10")
    make_cifar(str(tmp_path / "data" / "cifar"), "cifar100")
    run = parse_args(["--dataset", "cifar10"])
    build_datasets(run)
    assert run.filled_from_dataset == ["crop_pct", "data_path", "hflip", "image_mean", "image_std", "img_size",
                                       "num_classes"]
    save_config(run, str(tmp_path / "args.yaml"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    other = parse_args(["-c", str(tmp_path / "args.yaml"), "--dataset", "cifar100"])
    assert (other.data_path, other.img_size, other.image_mean, other.num_classes) == (
        str(tmp_path / "data" / "cifar"), 32, list(CIFAR_MEAN), None)
    assert other.filled_from_dataset == ["crop_pct", "data_path", "hflip", "image_mean", "image_std", "img_size"]
    train, _ = build_datasets(other)
    assert other.num_classes == train.num_classes == 100
    assert other.filled_from_dataset == ["crop_pct", "data_path", "hflip", "image_mean", "image_std", "img_size",
                                         "num_classes"]


def test_a_runs_args_yaml_with_another_data_path_counts_the_classes_of_that_data(tmp_path):
    """`-c RUN/args.yaml --data-path OTHER` kept the run's class count, found in its own data: 5-class data was
    refused for a `--num-classes 3` never given (and 2-class data would have trained a 3-way head)."""
    make_folder_tree(str(tmp_path / "three"), classes=("cat", "dog", "eel"))
    make_folder_tree(str(tmp_path / "five"), classes=("ant", "bee", "cow", "doe", "elk"))
    run = parse_args(["--data-path", str(tmp_path / "three")])
    build_datasets(run)
    save_config(run, str(tmp_path / "args.yaml"))
    other = parse_args(["-c", str(tmp_path / "args.yaml"), "--data-path", str(tmp_path / "five")])
    assert (other.num_classes, "num_classes" in other.filled_from_dataset) == (None, False)
    build_datasets(other)
    assert (other.num_classes, "num_classes" in other.filled_from_dataset) == (5, True)
    same = parse_args(["-c", str(tmp_path / "args.yaml"), "--data-path", str(tmp_path / "three") + "/"])
    assert (same.num_classes, "num_classes" in same.filled_from_dataset) == (3, True)
    # an evaluation keeps the class count of the checkpoint's run, whatever folder it reads
    evaluation = parse_args(["-c", str(tmp_path / "args.yaml"), "--data-path", str(tmp_path / "five")],
                            evaluation=True)
    assert evaluation.num_classes == 3


def test_filled_from_dataset_names_only_flags_a_dataset_fills(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: key 'filled_from_dataset': expected a list of the flags a "
                                          r"dataset fills \(crop_pct, data_path, .*got \['lr'\]"):
        parse_args(["-c", write_yaml(tmp_path / "c.yaml", {"filled_from_dataset": ["lr"]})])


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


def test_a_config_file_cannot_branch_a_run(tmp_path):
    """`branch: true` in a file held for every command reading it: the continue command printed after Ctrl-C keeps
    `-c` and drops --branch, and branched again from the branch's own checkpoint, which was refused."""
    cfg = write_yaml(tmp_path / "c.yaml", {"branch": True, "epochs": 2})
    with pytest.raises(ConfigError, match=r"c.yaml: key 'branch': a config file cannot branch a run \(the command "
                                          r"that continues the branch would branch it again\); give --branch on the "
                                          r"command line"):
        parse_args(["-c", cfg, "--resume", "experiments/exp/last.pth.tar"])
    assert not parse_args(["-c", write_yaml(tmp_path / "d.yaml", {"branch": False})]).branch
    assert parse_args(["-c", write_yaml(tmp_path / "e.yaml", {"epochs": 2}), "--resume",
                       "experiments/exp/last.pth.tar", "--branch"]).branch


def test_a_config_file_cannot_let_a_checkpoint_run_code(tmp_path):
    """--trust-checkpoint holds for its own command: args.yaml recorded it, and every later `-c args.yaml` (test.py
    of a downloaded file, a new run's --finetune) then unpickled any checkpoint without being asked."""
    args = parse_args(["-c", RECIPE, "--trust-checkpoint"])
    save_config(args, str(tmp_path / "args.yaml"))
    with open(tmp_path / "args.yaml") as f:
        assert "trust_checkpoint" not in yaml.safe_load(f)
    assert not parse_args(["-c", str(tmp_path / "args.yaml")]).trust_checkpoint
    cfg = write_yaml(tmp_path / "c.yaml", {"trust_checkpoint": True, "epochs": 2})
    with pytest.raises(ConfigError, match=r"c.yaml: key 'trust_checkpoint': a config file cannot let checkpoints "
                                          r"run code; remove the key and give --trust-checkpoint on the command "
                                          r"line for a file you trust"):
        parse_args(["-c", cfg])
    assert not parse_args(["-c", write_yaml(tmp_path / "d.yaml", {"trust_checkpoint": False})]).trust_checkpoint
    assert parse_args(["-c", write_yaml(tmp_path / "e.yaml", {"epochs": 2}), "--trust-checkpoint"]).trust_checkpoint


def test_cutmix_minmax_takes_two_values():
    with pytest.raises(ConfigError, match=r"--cutmix-minmax takes two values \(min max\), got \[0.3\]"):
        parse_args(["--cutmix-minmax", "0.3"])
    assert parse_args(["--cutmix-minmax", "0.3", "0.8"]).cutmix_minmax == [0.3, 0.8]


def parse_yaml_text(tmp_path, text):
    """parse_args on a config file holding `text` as written (not dumped by yaml, which would quote it)."""
    path = tmp_path / "t.yaml"
    path.write_text(text + "\n")
    return parse_args(["-c", str(path)])


@pytest.mark.parametrize("key, text, expected", [
    ("experiment", "20240501", "20240501"),   # YAML: the int 20240501 (os.path.join then failed)
    ("data_path", "2024-05-01", "2024-05-01"),  # YAML: a date
    ("output", "2024.10", "2024.10"),         # YAML: the float 2024.1
    ("model", "0300", "0300"),                # YAML 1.1: the octal 192
    ("dist_port", "29500", "29500"),
    ("epochs", "0300", 300),                  # argparse reads 300, YAML the octal 192
    ("lr", "1e-3", 1e-3),                     # YAML: the text '1e-3'
    ("image_mean", "[0.5, .25, 1]", [0.5, 0.25, 1.0]),
])
def test_yaml_value_is_read_as_the_command_line_reads_its_text(tmp_path, key, text, expected):
    from_yaml = getattr(parse_yaml_text(tmp_path, f"{key}: {text}"), key)
    words = text.strip("[]").split(", ") if text.startswith("[") else [text]
    from_cli = getattr(parse_args(["--" + key.replace("_", "-"), *words]), key)
    assert from_yaml == from_cli == expected and type(from_yaml) is type(expected)


@pytest.mark.parametrize("key, text", [("epochs", "7.9"), ("warmup_epochs", "2.5"), ("epochs", "300.0"),
                                       ("seed", "1e3"), ("lr", "fast")])
def test_yaml_refuses_what_the_command_line_refuses(tmp_path, key, text):
    # a float for an int flag was truncated (7.9 -> 7); a whole float (300.0) is refused as argparse refuses it
    with pytest.raises(SystemExit):
        parse_args(["--" + key.replace("_", "-"), text])
    kind = "a number" if key == "lr" else "an integer"
    with pytest.raises(ConfigError, match=rf"^\S*t\.yaml: key '{key}': bad value '{text}': expected {kind}$"):
        parse_yaml_text(tmp_path, f"{key}: {text}")


@pytest.mark.parametrize("text, pattern", [
    ("epochs: true", r"key 'epochs': true is a YAML boolean, not an integer$"),  # bool is an int: was 1
    ("lr: yes", r"key 'lr': yes is a YAML boolean, not a number$"),
    ("model: true", r"key 'model': true is a YAML boolean, not text \(quote it if you mean the word\)$"),
    ("experiment: no", r"key 'experiment': no is a YAML boolean, not text"),
    ("image_mean: [0.5, true, 0.5]", r"key 'image_mean': true is a YAML boolean, not a number$"),
    ("image_mean: [0.5, null, 0.5]", r"key 'image_mean': expected a number, got null$"),
])
def test_yaml_booleans_are_refused_for_value_flags(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=r"t\.yaml: " + pattern) as err:
        parse_yaml_text(tmp_path, text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, default", [("epochs: null", "200"), ("lr: ~", "0.01"), ("batch_size:", "32"),
                                           ("model: null", "'local_vim_tiny'"), ("resume: null", "''"),
                                           ("model_ema: null", "False")])
def test_null_is_refused_for_a_flag_that_needs_a_value(tmp_path, text, default):
    key = text.split(":")[0]
    with pytest.raises(ConfigError, match=rf"t\.yaml: key '{key}': null is not a value of this flag \(its default "
                                          rf"is {default}\): give a value or leave the key out$"):
        parse_yaml_text(tmp_path, text)


def test_null_is_taken_by_a_flag_whose_default_is_none(tmp_path):
    args = parse_yaml_text(tmp_path, "opt_betas: null\nnum_classes: ~\naa: null\ndecay_rate:\nimg_size: null")
    assert (args.opt_betas, args.num_classes, args.aa, args.decay_rate, args.img_size) == (None,) * 5


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)),
                         ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_config_parses(path):
    with open(path) as f:
        written = yaml.safe_load(f)
    args = parse_args(["-c", path])
    assert args.config == path and args.epochs >= 1 and isinstance(args.model, str)
    assert all(getattr(args, key) is None for key, value in written.items() if value is None)  # opt_betas: null


def test_the_command_line_switches_off_what_a_yaml_file_switches_on(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model_ema: true\namp: true\nclip_grad_norm: true\n")
    args = parse_args(["-c", str(cfg_file), "--no-model-ema", "--no-clip-grad-norm"])
    assert (args.model_ema, args.amp, args.clip_grad_norm) == (False, True, False)
    assert parse_args([]).model_ema is False and parse_args(["--model-ema"]).model_ema is True


def test_evaluation_help_lists_only_what_changes_an_evaluation():
    help_text = build_parser("LocalMamba evaluation", evaluation=True).format_help()
    for flag in ("--resume", "--crop-pct", "--interpolation", "--amp-eval", "--model-ema", "--data-path"):
        assert flag in help_text
    for flag in ("--lr", "--opt", "--mixup", "--sched", "--warmup-epochs", "--overwrite", "--aa", "--reprob"):
        assert flag not in help_text, flag
    assert "schedule:" not in help_text and "mixup:" not in help_text  # groups with no listed flag are gone
    train_help = build_parser().format_help()
    assert "--lr" in train_help and "--mixup" in train_help
    assert EVALUATION_FLAGS <= {action.dest for action in build_parser()._actions}  # no stale names


def test_evaluation_parser_still_reads_a_training_config():
    args = parse_args(["-c", RECIPE, "--lr", "0.5"], evaluation=True)
    assert (args.opt, args.sched, args.lr, args.interpolation) == ("adamw", "cosine", 0.5, "bicubic")


def test_label_smoothing_of_one_is_refused():
    assert parse_args(["--smoothing", "0.99"]).smoothing == 0.99
    with pytest.raises(ConfigError, match=r"--smoothing must be in \[0, 1\), got 1\.0"):
        parse_args(["--smoothing", "1"])
