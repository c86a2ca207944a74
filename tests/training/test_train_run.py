"""One short CPU training run through tools/train.py, then evaluation, conversion and plotting of what it wrote."""
import csv
import math
import os
import runpy
import sys

import pytest
import timm.models
import torch
import yaml

from classification.engine.config import parse_args
from classification.engine.evaluate import test as evaluate

from training_helpers import TINY_MODEL, TOOLS, run_tool

EPOCHS = 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs"))
    proc = run_tool("train.py", "--dataset", "digits", *TINY_MODEL, "-b", "32", "--epochs", str(EPOCHS),
                    "--opt", "adamw", "--lr", "3e-3", "--weight-decay", "0.05", "--sched", "cosine",
                    "--warmup-epochs", "0", "--model-ema", "--model-ema-decay", "0.9", "-j", "0",
                    "--log-interval", "20", "--output", out, "--experiment", "tiny")
    return os.path.join(out, "tiny"), proc.stdout


def read_metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_outputs_of_a_run(run_dir):
    exp, log = run_dir
    rows = read_metrics(os.path.join(exp, "metrics.csv"))
    assert list(rows[0]) == ["epoch", "train_loss", "test_loss", "top1", "top5"]
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    assert float(rows[-1]["top1"]) > 15.0  # 10 classes: chance is 10%
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    for name in ("last.pth.tar", "best.pth.tar", "checkpoint-0.pth.tar", "checkpoint-1.pth.tar", "args.yaml"):
        assert os.path.isfile(os.path.join(exp, name)), name
    with open(os.path.join(exp, "args.yaml")) as f:
        saved = yaml.safe_load(f)
    assert (saved["num_classes"], saved["img_size"], saved["model_kwargs"]["embed_dim"]) == (10, 16, 32)
    assert "Train: 1 [  20/44]" in log and "Test(EMA): 1" in log and "img/s" in log and "ETA" in log
    assert log.count("INFO Checkpoints, by the EMA's top-1:\n") == EPOCHS     # the EMA's score ranks them
    assert not any(f.startswith(".tmp") for f in os.listdir(exp))
    assert "the whole run is warmup" not in log


def test_lr_csv_holds_the_lr_each_logged_step_trained_with(run_dir):
    """The run above: 2 epochs of 44 steps, --lr 3e-3, cosine to the default --min-lr 1e-5 over 88 iterations
    without warmup. The rows of the logged steps (0, 20, 40, 43 of each epoch) name iteration t and the LR its
    step took: min + (lr - min) (1 + cos(pi u / 88)) / 2 with u = t, and u = 1 at t = 0 (the original's scheduler had
    stepped once). The schedule stepped before the LR is read (or twice an iteration) logs and trains another."""
    exp, _ = run_dir
    with open(os.path.join(exp, "lr.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "step", "lr"]
    steps = [epoch * 44 + update for epoch in range(EPOCHS) for update in (0, 20, 40, 43)]
    assert [(int(epoch), int(step)) for epoch, step, _ in rows[1:]] == [(t // 44, t) for t in steps]
    for (_, _, lr), t in zip(rows[1:], steps):
        u = max(t, 1)
        assert float(lr) == pytest.approx(1e-5 + (3e-3 - 1e-5) * (1 + math.cos(math.pi * u / 88)) / 2, rel=1e-9)


def test_a_run_that_is_all_warmup_says_so(tmp_path):
    """--epochs 1 with a recipe's --warmup-epochs (20 in the original's) never reaches --lr: the log says so."""
    proc = run_tool("train.py", "--dataset", "digits", *TINY_MODEL, "-b", "512", "--epochs", "1", "--warmup-epochs",
                    "2", "-j", "0", "--output", str(tmp_path), "--experiment", "warm")
    assert "--warmup-epochs 2 >= --epochs 1: the whole run is warmup, its learning rate stays below --lr" in proc.stdout
    assert "INFO Checkpoints, by top-1:\n" in proc.stdout       # no EMA: the model's own score


def test_checkpoint_contents(run_dir):
    exp, _ = run_dir
    ckpt = torch.load(os.path.join(exp, "last.pth.tar"), map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == EPOCHS - 1 and ckpt["model_name"] == "vit_tiny_patch16_224"
    assert ckpt["scheduler"] == {"t": EPOCHS * 44}  # 1437 // 32 iterations per epoch
    assert len(ckpt["rng"]) == 1 and set(ckpt["rng"][0]) >= {"python", "numpy", "torch"}
    assert set(ckpt["ema_model"]) == set(ckpt["model"])
    assert not torch.equal(ckpt["ema_model"]["head.weight"], ckpt["model"]["head.weight"])
    best = max(read_metrics(os.path.join(exp, "metrics.csv")), key=lambda r: float(r["top1"]))
    assert [p for p, _ in ckpt["checkpoints"]][0] == f"checkpoint-{best['epoch']}.pth.tar"  # relative to the run


def test_timm_load_checkpoint_reads_the_ema_of_a_training_checkpoint(run_dir):
    """timm's `load_checkpoint` / `load_state_dict` take the EMA by default (`use_ema=True`) from `state_dict_ema`:
    ours is the `ema_model` dict itself, stored once; `use_ema=False` gives the model's weights."""
    exp, _ = run_dir
    path = os.path.join(exp, "last.pth.tar")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["state_dict_ema"] is ckpt["ema_model"]    # one pickled object: the file holds the EMA once
    for use_ema, key in ((True, "ema_model"), (False, "model")):
        weights = timm.models.load_state_dict(path, use_ema=use_ema)
        assert weights.keys() == ckpt[key].keys()
        assert all(torch.equal(weights[name], ckpt[key][name]) for name in weights)


def run_script(monkeypatch, name, *argv):
    """Execute tools/<name> in this process (as `python tools/<name> argv`)."""
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(os.path.join(TOOLS, name), run_name="__main__")


def test_evaluation_reproduces_the_logged_metrics_for_both_checkpoint_forms(run_dir, tmp_path, monkeypatch):
    exp, _ = run_dir
    last = read_metrics(os.path.join(exp, "metrics.csv"))[-1]
    common = ["--dataset", "digits", *TINY_MODEL, "-b", "64", "-j", "0", "--output", str(tmp_path)]
    ema_metrics = evaluate(parse_args([*common, "--resume", os.path.join(exp, "last.pth.tar"), "--model-ema"]))
    # the EMA's metrics ranked the checkpoints and went to metrics.csv (its loss there is label-smoothed)
    assert ema_metrics["top1"] == float(last["top1"]) and ema_metrics["top5"] == float(last["top5"])

    released = str(tmp_path / "released.pth")
    run_script(monkeypatch, "convert_ckpt.py", os.path.join(exp, "last.pth.tar"), released, "ema_model")
    conv = torch.load(released, map_location="cpu")
    ema = torch.load(os.path.join(exp, "last.pth.tar"), map_location="cpu", weights_only=True)["ema_model"]
    assert list(conv["state_dict"]) == list(ema)
    run = torch.load(os.path.join(exp, "last.pth.tar"), map_location="cpu", weights_only=True)
    assert {key: conv[key] for key in conv if key != "state_dict"} == {  # the run's record, without its paths
        "model_name": "vit_tiny_patch16_224", "directions": None, "candidates": None, "classes": None,
        "config": {key: run["config"][key] for key in ("model", "model_kwargs", "directions", "num_classes",
                                                       "img_size", "crop_pct", "interpolation", "image_mean",
                                                       "image_std")}}
    assert all(torch.equal(conv["state_dict"][k], v) for k, v in ema.items())
    out = run_tool("test.py", *common, "--resume", released).stdout
    assert f"'top1': {float(last['top1'])!r}" in out and "EMA: {" not in out and "Model: {" not in out
    assert f"Loaded {released} (released weights) into" in out and "Test: [   0/" in out  # no epoch in that file

    # both results of --model-ema on lines of their own, named (the model's was not in the summary at all)
    both = run_tool("test.py", *common, "--resume", os.path.join(exp, "last.pth.tar"), "--model-ema").stdout
    model_line = next(line for line in both.splitlines() if " Model: {" in line)
    ema_line = next(line for line in both.splitlines() if " EMA: {" in line)
    assert f"'top1': {ema_metrics['top1']!r}" in ema_line and "'top1': " in model_line
    plain = run_tool("test.py", *common, "--resume", os.path.join(exp, "last.pth.tar")).stdout
    model_metrics = next(line for line in plain.splitlines() if "{'test_loss'" in line).split(" INFO ", 1)[1]
    assert model_line.split(" Model: ", 1)[1] == model_metrics


def test_plot_log_draws_a_png(run_dir, tmp_path, monkeypatch):
    exp, _ = run_dir
    png = str(tmp_path / "curves.png")
    run_script(monkeypatch, "plot_log.py", os.path.join(exp, "metrics.csv"), "--out", png)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10_000
