"""Bad input to the tools (config files, output paths, sizes) ends in one line, `error: ...` and exit status 2, before
any work; `_base_` lists are merged in order."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys

import pytest
import torch

from classification.engine.config import parse_args

from training_helpers import REPO, TOOLS, tool_env

METRICS = "epoch,train_loss,test_loss,top1\n0,2.3,2.2,10\n1,2.0,1.9,12\n"
# small work wherever a tool would start it (where the check is missing)
QUICK_SPEED_TEST = ("--device", "cpu", "--iters", "1", "--warmup-iters", "0")
QUICK_BENCHMARK = ("--op", "scan", "--repeats", "1", "--warmup", "0", "--batch", "1", "--dim", "4", "--seqlen", "8")


def run_tool(monkeypatch, capsys, script: str, *argv: str) -> tuple[int, str]:
    """Run `script` (relative to the repository) as `python script argv` in this process; its exit status and last
    line of stderr (the tool must end with SystemExit)."""
    path = os.path.join(REPO, script)
    monkeypatch.setattr(sys, "argv", [path, *argv])
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("LOCALMAMBA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(path, run_name="__main__")
    err = capsys.readouterr().err.strip()
    return exit_info.value.code, err.splitlines()[-1] if err else ""


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def checkpoint(tmp_path) -> str:
    path = str(tmp_path / "last.pth.tar")
    torch.save({"epoch": 1, "model": {"w": torch.zeros(3)}}, path)
    return path


# --- tools/train.py -c (classification/engine/config.py) ---

def test_binary_config_is_not_a_yaml_text_file(tmp_path, monkeypatch, capsys):
    ckpt = checkpoint(tmp_path)
    code, line = run_tool(monkeypatch, capsys, "tools/train.py", "-c", ckpt, "--output", str(tmp_path / "out"))
    assert (code, line) == (2, f"error: {ckpt}: not a YAML text file (a checkpoint or other binary file?)")


@pytest.mark.parametrize("data, problem", [
    ("epochs: 3\n# r\xe9sum\xe9\n".encode("latin-1"), "not UTF-8 (byte 0xe9 on line 2): save it as UTF-8"),
    ("epochs: 3\n".encode("utf-16"), "saved as UTF-16, not UTF-8: save it as UTF-8"),
])
def test_a_config_text_in_another_encoding_is_not_called_binary(tmp_path, monkeypatch, capsys, data, problem):
    """A config saved as Latin-1 or UTF-16 (Windows editors) was called 'a checkpoint or other binary file?'."""
    (tmp_path / "c.yaml").write_bytes(data)
    code, line = run_tool(monkeypatch, capsys, "tools/train.py", "-c", str(tmp_path / "c.yaml"))
    assert (code, line) == (2, f"error: {tmp_path / 'c.yaml'}: {problem}")


@pytest.mark.parametrize("text, key, lines", [
    ("lr: 0.001\nepochs: 3\nlr: 0.005\n", "lr", (1, 3)),
    ("model_kwargs:\n  depth: 4\n  embed_dim: 32\n  depth: 6\n", "depth", (2, 4)),
])
def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path, monkeypatch, capsys, text, key, lines):
    """YAML keeps the last of two equal keys: the run trained at the second lr without a word."""
    config = write(tmp_path / "dup.yaml", text)
    code, line = run_tool(monkeypatch, capsys, "tools/train.py", "-c", config)
    assert (code, line) == (2, f"error: {config}: key {key!r} is given twice (lines {lines[0]} and {lines[1]}): "
                               f"keep one")


def test_base_list_is_merged_in_order_then_the_file(tmp_path):
    write(tmp_path / "a.yaml", "lr: 0.5\nepochs: 3\nseed: 1\n")
    write(tmp_path / "b.yaml", "epochs: 4\nwarmup_epochs: 1\n")
    config = write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\nseed: 7\n")
    args = parse_args(["-c", config])
    assert (args.lr, args.epochs, args.warmup_epochs, args.seed) == (0.5, 4, 1, 7)


def test_a_later_base_of_the_list_wins_inside_model_kwargs_too(tmp_path):
    """Guards against merging a `_base_` list's mappings in the reverse order: the scalars above are read again from
    their text (which was merged in order), a mapping is not. b.yaml, named after a.yaml, sets depth 2 over its 4;
    a.yaml's patch_size, which b.yaml leaves out, stays."""
    write(tmp_path / "a.yaml", "model_kwargs: {depth: 4, patch_size: 4}\n")
    write(tmp_path / "b.yaml", "model_kwargs: {depth: 2}\n")
    config = write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n")
    assert parse_args(["-c", config]).model_kwargs == {"depth": 2, "patch_size": 4}


def test_base_that_is_not_a_file_name_is_refused(tmp_path, monkeypatch, capsys):
    config = write(tmp_path / "c.yaml", "_base_: [a.yaml, 3]\n")
    code, line = run_tool(monkeypatch, capsys, "tools/train.py", "-c", config)
    assert (code, line) == (2, f"error: {config}: _base_ must be a file name or a list of file names, "
                               f"got ['a.yaml', 3]")


def test_self_including_base_names_the_cycle(tmp_path, monkeypatch, capsys):
    config = write(tmp_path / "self.yaml", "_base_: self.yaml\n")
    code, line = run_tool(monkeypatch, capsys, "tools/train.py", "-c", config)
    assert (code, line) == (2, f"error: {config}: _base_ cycle: {config} -> {config}")


def test_base_cycle_through_two_files_names_the_chain(tmp_path, monkeypatch, capsys):
    a = write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    b = write(tmp_path / "b.yaml", "_base_: [a.yaml]\n")
    code, line = run_tool(monkeypatch, capsys, "tools/train.py", "-c", a)
    assert (code, line) == (2, f"error: {a}: _base_ cycle: {a} -> {b} -> {a}")


def test_a_base_read_twice_is_not_a_cycle(tmp_path):
    write(tmp_path / "a.yaml", "lr: 0.5\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\nepochs: 4\n")
    config = write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n")
    args = parse_args(["-c", config])
    assert (args.lr, args.epochs) == (0.5, 4)


@pytest.mark.parametrize("text, key", [("1: 2\n", "1"), ("null: 2\n", "None"), ("lr: 0.1\ntrue: 2\n", "True")])
def test_key_that_is_not_text_is_named(tmp_path, monkeypatch, capsys, text, key):
    config = write(tmp_path / "c.yaml", text)
    code, line = run_tool(monkeypatch, capsys, "tools/train.py", "-c", config)
    assert (code, line) == (2, f"error: {config}: key {key} is not a flag name")


# --- tools/speed_test.py -c ---

@pytest.mark.parametrize("text, message", [
    ("model: local_vim_tiny\nbatch_size: abc\n", "key 'batch_size': bad value 'abc': expected an integer"),
    ("model: [a]\n", "key 'model': expected one value, got the list ['a']"),
    ("model: local_vim_tiny\nimg_size: 7.9\n", "key 'img_size': bad value '7.9': expected an integer"),
    ("model: local_vim_tiny\nimg_size: 32\nbach_size: 1\n", "unknown key 'bach_size'; did you mean batch_size?"),
])
def test_speed_test_checks_its_config_as_train_does(tmp_path, monkeypatch, capsys, text, message):
    config = write(tmp_path / "speed.yaml", text)
    code, line = run_tool(monkeypatch, capsys, "tools/speed_test.py", "-c", config, *QUICK_SPEED_TEST)
    assert (code, line) == (2, f"error: {config}: {message}")


def test_speed_test_refuses_batch_zero_on_the_command_line(monkeypatch, capsys):
    code, line = run_tool(monkeypatch, capsys, "tools/speed_test.py", "--model", "local_vim_tiny", "-b", "0",
                          "--img-size", "32", *QUICK_SPEED_TEST)
    assert code == 2 and line.endswith("error: -b/--batch-size must be 1 or more, got 0")


# --- tools/plot_log.py ---

def test_plot_log_refuses_an_output_format_up_front(tmp_path, monkeypatch, capsys):
    metrics = write(tmp_path / "metrics.csv", METRICS)
    out = str(tmp_path / "curves.txt")
    code, line = run_tool(monkeypatch, capsys, "tools/plot_log.py", metrics, "--out", out)
    assert code == 2 and line.startswith(f"error: {out}: matplotlib cannot write '.txt' files (formats: ")
    assert "png" in line and not os.path.exists(out)


def test_plot_log_refuses_a_binary_file_in_one_line(tmp_path, monkeypatch, capsys):
    ckpt = checkpoint(tmp_path)
    code, line = run_tool(monkeypatch, capsys, "tools/plot_log.py", ckpt, "--out", str(tmp_path / "c.png"))
    assert (code, line) == (2, f"error: {ckpt} is not a run's metrics.csv: give the run's folder or its metrics.csv")
    binary = tmp_path / "metrics.csv"
    binary.write_bytes(open(ckpt, "rb").read())
    code, line = run_tool(monkeypatch, capsys, "tools/plot_log.py", str(binary), "--out", str(tmp_path / "c.png"))
    assert code == 2 and line.startswith(f"error: {binary} is not a CSV text file (")


def test_plot_log_refuses_a_run_log_and_an_output_below_a_file_in_one_line(tmp_path, monkeypatch, capsys):
    """A run's log_*.txt was read as CSV ('line 3: could not convert string to float'); --out below a file said
    only 'File exists'."""
    log = write(tmp_path / "log_20261205_070000.txt", "26-12-05 07:00:00 INFO Logging to x\n" * 3)
    code, line = run_tool(monkeypatch, capsys, "tools/plot_log.py", log)
    assert (code, line) == (2, f"error: {log} is not a run's metrics.csv: give the run's folder or its metrics.csv")
    metrics = write(tmp_path / "metrics.csv", METRICS)
    in_the_way = write(tmp_path / "plots", "")
    code, line = run_tool(monkeypatch, capsys, "tools/plot_log.py", metrics, "--out", f"{in_the_way}/c.png")
    assert (code, line) == (2, f"error: File exists: {in_the_way} (a file stands where the path needs a folder)")


def test_plot_log_says_a_path_that_is_not_there_is_not_found(tmp_path, monkeypatch, capsys):
    """A mistyped run folder (experiments/quickstrat) was refused as 'not a run's metrics.csv: give the run's folder',
    which the command did give."""
    typo = str(tmp_path / "quickstrat")
    code, line = run_tool(monkeypatch, capsys, "tools/plot_log.py", typo)
    assert (code, line) == (2, f"error: folder or file not found: {typo}")
    assert os.listdir(tmp_path) == []


def test_plot_log_of_a_run_stopped_before_its_first_step_has_nothing_to_draw(tmp_path, monkeypatch, capsys):
    """A run stopped by Ctrl-C before its first step leaves metrics.csv and lr.csv with their headers alone: the
    error was 'lr.csv has no data rows', as if that file were broken."""
    metrics = write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1,top5\n")
    write(tmp_path / "lr.csv", "epoch,step,lr\n")
    code, line = run_tool(monkeypatch, capsys, "tools/plot_log.py", str(tmp_path))
    assert (code, line) == (2, f"error: {metrics} has no data rows (no epoch has finished) and its lr.csv has none "
                               f"either (the run stopped before its first step): nothing to draw yet")
    assert sorted(os.listdir(tmp_path)) == ["lr.csv", "metrics.csv"]


def test_plot_log_of_a_run_without_an_lr_csv_and_no_epoch_says_that_none_is_beside_it(tmp_path, monkeypatch, capsys):
    """A metrics.csv with its header alone and no lr.csv beside it: the error says that no lr.csv is there, not that
    the run's lr.csv is empty (the message of a run stopped before its first step)."""
    metrics = write(tmp_path / "metrics.csv", "epoch,train_loss,test_loss,top1,top5\n")
    code, line = run_tool(monkeypatch, capsys, "tools/plot_log.py", str(tmp_path))
    assert (code, line) == (2, f"error: {metrics} has no data rows (no epoch has finished) and no lr.csv is beside "
                               f"it: nothing to draw yet")
    assert os.listdir(tmp_path) == ["metrics.csv"]


def test_plot_log_names_its_figure_when_the_folder_cannot_be_written(tmp_path, monkeypatch, capsys):
    """--out in a folder the user cannot write named the temporary file the write goes through, which never exists
    (`error: Permission denied: DIR/.tmp-x1y2.png`). mkstemp mocked: this may run as root."""
    import tempfile

    metrics = write(tmp_path / "metrics.csv", METRICS)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".tmp-x1y2.png"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, line = run_tool(monkeypatch, capsys, "tools/plot_log.py", metrics)
    assert (code, line) == (2, f"error: cannot write {tmp_path / 'curves.png'}: Permission denied")
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv"]


def test_plot_log_prints_the_file_it_wrote_for_a_name_without_extension(tmp_path, monkeypatch, capsys):
    metrics = write(tmp_path / "metrics.csv", METRICS)
    monkeypatch.setattr(sys, "argv", ["plot_log.py", metrics, "--out", str(tmp_path / "noext")])
    monkeypatch.setattr(sys, "path", list(sys.path))
    runpy.run_path(os.path.join(TOOLS, "plot_log.py"), run_name="__main__")
    assert capsys.readouterr().out == f"wrote {tmp_path / 'noext.png'}\n"
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv", "noext.png"]


@pytest.mark.parametrize("out, written", [("new/", "new/curves.png"), ("new/deeper/run.svg", "new/deeper/run.svg")])
def test_plot_log_writes_into_a_folder_it_creates(tmp_path, monkeypatch, capsys, out, written):
    """`--out plots/` for a folder not there yet wrote `plots/.png.png`, which failed (no such folder)."""
    metrics = write(tmp_path / "metrics.csv", METRICS)
    monkeypatch.setattr(sys, "argv", ["plot_log.py", metrics, "--out", os.path.join(str(tmp_path), out)])
    monkeypatch.setattr(sys, "path", list(sys.path))
    runpy.run_path(os.path.join(TOOLS, "plot_log.py"), run_name="__main__")
    assert capsys.readouterr().out == f"wrote {tmp_path / written}\n"
    assert os.path.getsize(tmp_path / written) > 1000


# --- tools/benchmark.py --csv ---

def test_benchmark_refuses_a_csv_path_that_is_a_folder(tmp_path, monkeypatch, capsys):
    code, line = run_tool(monkeypatch, capsys, "tools/benchmark.py", *QUICK_BENCHMARK, "--csv", str(tmp_path))
    assert (code, line) == (2, f"benchmark.py: error: --csv {tmp_path}: is a folder, not a file")


def test_benchmark_refuses_an_unwritable_csv_path(tmp_path, monkeypatch, capsys):
    # root may write anywhere: the permission check itself is what is tested
    folder = str(tmp_path)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: path != folder and real_access(path, mode))
    out = str(tmp_path / "out.csv")
    code, line = run_tool(monkeypatch, capsys, "tools/benchmark.py", *QUICK_BENCHMARK, "--csv", out)
    assert (code, line) == (2, f"benchmark.py: error: --csv {out}: not writable")


# --- sizes and counts ---

def test_draw_assets_refuses_an_empty_grid(tmp_path, monkeypatch, capsys):
    out = tmp_path / "assets"
    code, line = run_tool(monkeypatch, capsys, "tools/draw_assets.py", "--grid", "0", "0", "--out", str(out))
    assert (code, line) == (2, "draw_assets.py: error: --grid must be two positive sizes (H W), got 0 0")
    assert not out.exists()


def test_mm_flops_refuses_a_non_positive_shape(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mmengine")
    config = write(tmp_path / "cfg.py", "model = dict(type='Nothing')\n")
    code, line = run_tool(monkeypatch, capsys, "detection/tools/analysis_tools/mamba_get_flops.py", config,
                          "--shape", "0", "64")
    assert (code, line) == (2, "mamba_get_flops.py: error: --shape must be two positive sizes (H W), got 0 64")


def test_flops_refuses_a_negative_class_count(monkeypatch, capsys):
    code, line = run_tool(monkeypatch, capsys, "tools/flops.py", "local_vim_tiny", "--num-classes", "-1",
                          "--img-size", "32")
    assert (code, line) == (2, "flops.py: error: --num-classes must be 0 (no classifier) or more, got -1")


# --- detection / segmentation tools (classification/dense/launch.py), in a process of their own ---

@pytest.mark.parametrize("script, name, text, message", [
    ("detection/tools/train.py", "nosuch.py", None, "config file not found: {config}"),
    ("detection/tools/train.py", "empty.yaml", "", "{config}: the config is empty"),
    ("segmentation/tools/test.py", "empty.py", "# nothing set\n\n", "{config}: the config is empty"),
])
def test_dense_tools_refuse_a_missing_or_empty_config(tmp_path, script, name, text, message):
    pytest.importorskip("mmengine")
    config = str(tmp_path / name)
    if text is not None:
        write(tmp_path / name, text)
    argv = [config, "--work-dir", str(tmp_path / "work")] if "train" in script else [config, "ckpt.pth"]
    proc = subprocess.run([sys.executable, os.path.join(REPO, script), *argv], capture_output=True, text=True,
                          env=tool_env(), timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == "error: " + message.format(config=config)


def test_a_missing_config_names_the_directory_it_was_looked_for_in(tmp_path, monkeypatch):
    """A relative -c path is taken from the current directory (not the repository, as the launchers' entry scripts
    are): the error says where it looked."""
    from classification.engine.config import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"config file not found: configs/quickstart.yaml \\(relative to the current "
                                          f"directory {tmp_path}\\)"):
        parse_args(["-c", "configs/quickstart.yaml"])


def test_a_run_folder_given_as_config_names_its_args_yaml(tmp_path, monkeypatch, capsys):
    """`-c experiments/NAME` (the run's folder, not its args.yaml) said 'config file not found', of a folder that is
    there; tools/speed_test.py, tools/export_onnx.py and tools/train.py read -c alike."""
    run = tmp_path / "run"
    run.mkdir()
    code, line = run_tool(monkeypatch, capsys, "tools/speed_test.py", "-c", str(run), *QUICK_SPEED_TEST)
    assert (code, line) == (2, f"error: config {run} is a folder, not a YAML file")
    write(run / "args.yaml", "model: local_vim_tiny\n")
    code, line = run_tool(monkeypatch, capsys, "tools/speed_test.py", "-c", str(run), *QUICK_SPEED_TEST)
    assert (code, line) == (2, f"error: config {run} is a folder, not a YAML file: its run's config is "
                               f"{run / 'args.yaml'}")


def test_a_base_that_is_a_folder_is_named_a_folder(tmp_path, monkeypatch, capsys):
    """`_base_: strategies` (a folder, not its config.yaml) said the base 'is not there', of a folder that is."""
    (tmp_path / "strategies").mkdir()
    config = write(tmp_path / "child.yaml", "_base_: strategies\nepochs: 3\n")
    code, line = run_tool(monkeypatch, capsys, "tools/train.py", "-c", config)
    assert (code, line) == (2, f"error: {config}: its _base_ strategies is a folder ({tmp_path / 'strategies'}), "
                               f"not a YAML file")


def test_config_given_twice_is_refused(tmp_path, monkeypatch, capsys):
    """`-c a.yaml -c b.yaml` trained with b.yaml alone: a.yaml's epochs were dropped without a word."""
    first = write(tmp_path / "a.yaml", "epochs: 7\n")
    second = write(tmp_path / "b.yaml", "lr: 0.5\n")
    code, line = run_tool(monkeypatch, capsys, "tools/train.py", "-c", first, "--config", second)
    assert (code, line) == (2, f"train.py: error: -c/--config is given twice ({first} and {second}): give one file "
                               f"(a file may name others as its _base_)")


def test_an_empty_config_name_is_refused(monkeypatch, capsys):
    """`-c "$CONFIG"` of an unset variable trained on the defaults (ImageNet, 300 epochs) without a word."""
    code, line = run_tool(monkeypatch, capsys, "tools/train.py", "-c", "")
    assert (code, line) == (2, "train.py: error: -c: the file name is empty (an unset shell variable?)")


def test_test_py_names_the_model_kwargs_of_a_checkpoint_built_otherwise(monkeypatch, capsys, tmp_path):
    """tools/test.py --resume of a run's checkpoint without the --model-kwargs its run gave (the quick start's
    patch_size=4, without -c) said only 'does not fit this model (another model?)', though it is that model; it now
    names the run's kwargs, as tools/export_onnx.py does."""
    import timm

    from training_helpers import TINY_MODEL

    run_kwargs = {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2, "class_token": False,
                  "global_pool": "avg"}
    model = timm.create_model(TINY_MODEL[1], num_classes=10, **run_kwargs)
    path = str(tmp_path / "best.pth.tar")
    torch.save({"epoch": 0, "model": model.state_dict(), "config": {"model_kwargs": run_kwargs}}, path)
    flags = ["embed_dim=48" if flag == "embed_dim=32" else flag for flag in TINY_MODEL]
    status, line = run_tool(monkeypatch, capsys, "tools/test.py", *flags, "--dataset", "digits", "--workers", "0",
                            "--resume", path, "--output", str(tmp_path / "out"))
    assert status == 2 and line.startswith(f"error: {path} does not fit this model (another model?): ")
    assert line.endswith("; its run built the model with --model-kwargs img_size=16 patch_size=4 depth=1 embed_dim=32 "
                         "num_heads=2 class_token=False global_pool=avg: give them")


@pytest.mark.parametrize("released, hint", [
    (True, ""), (False, "; its run built the model with no --model-kwargs: leave them out")])
def test_weights_that_record_no_model_kwargs_give_no_empty_ones_to_give(released, hint):
    """Released weights ({'state_dict': ...}, no run config) that do not fit a command's --model-kwargs ended their
    error with 'its run built the model with --model-kwargs : give them'; now they name no kwargs (the error is the
    shape mismatch alone), and a run that gave none says to leave them out."""
    import timm

    from classification.common.checkpoint_io import CheckpointError
    from classification.engine.checkpoint import load_evaluated_weights

    weights = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, embed_dim=32,
                                num_heads=2).state_dict()
    ckpt = {"state_dict": weights} if released else {"model": weights, "config": {"model_kwargs": {}}}
    kwargs = {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 48, "num_heads": 2}
    with pytest.raises(CheckpointError) as refused:
        load_evaluated_weights(timm.create_model("vit_tiny_patch16_224", **kwargs), "vit_tiny_patch16_224", kwargs,
                               ckpt, weights, "w.pth")
    message = str(refused.value)
    assert message.startswith("w.pth does not fit this model (another model?): shape mismatch (")
    assert message.count(";") == hint.count(";") and message.endswith(hint)


def test_test_py_gives_no_model_kwargs_hint_when_the_command_gives_the_runs_own(monkeypatch, capsys, tmp_path):
    """tools/test.py with the very --model-kwargs the checkpoint's run recorded, of weights that fit them not (another
    file under its name): the refusal says they do not fit and names no kwargs to give, as the command gives them."""
    import timm

    from training_helpers import TINY_MODEL

    run_kwargs = parse_args([*TINY_MODEL, "--dataset", "digits"], evaluation=True).model_kwargs
    other = timm.create_model(TINY_MODEL[1], num_classes=10, **{**run_kwargs, "embed_dim": 48})
    path = str(tmp_path / "best.pth.tar")
    torch.save({"epoch": 0, "model": other.state_dict(), "config": {"model_kwargs": run_kwargs}}, path)
    status, line = run_tool(monkeypatch, capsys, "tools/test.py", *TINY_MODEL, "--dataset", "digits", "--workers",
                            "0", "--resume", path, "--output", str(tmp_path / "out"))
    assert status == 2 and line.startswith(f"error: {path} does not fit this model (another model?): ")
    assert "--model-kwargs" not in line and "args.yaml" not in line
