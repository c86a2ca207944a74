"""A run killed after an epoch and resumed ends bit-identical to an uninterrupted run (on CPU)."""
import csv
import os
import signal
import subprocess
import sys
import time

import torch

from training_helpers import TINY_MODEL, TOOLS, run_tool, tool_env

EPOCHS = 2
# every source of randomness on: RandAugment, random erasing, mixup/cutmix, drop path, EMA, a loader worker
RECIPE = ["--dataset", "digits", *TINY_MODEL, "-b", "64", "--epochs", str(EPOCHS), "--opt", "adamw", "--lr", "2e-3",
          "--weight-decay", "0.05", "--sched", "cosine", "--warmup-epochs", "1", "--aa", "rand-m9-mstd0.5",
          "--reprob", "0.25", "--remode", "pixel", "--mixup", "0.2", "--cutmix", "1.0", "--drop-path-rate", "0.1",
          "--model-ema", "--model-ema-decay", "0.99", "-j", "1", "--log-interval", "10"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_kill_and_resume_is_bit_exact(tmp_path):
    out = str(tmp_path)
    run_tool("train.py", *RECIPE, "--output", out, "--experiment", "straight")

    # kill the second run as soon as its first epoch is committed (last.pth.tar; SIGKILL: no clean-up code runs)
    exp = os.path.join(out, "killed")
    proc = subprocess.Popen([sys.executable, os.path.join(TOOLS, "train.py"), *RECIPE, "--output", out,
                             "--experiment", "killed"], env=tool_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = os.path.join(exp, "metrics.csv")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(os.path.join(exp, "last.pth.tar")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    survivor = load(os.path.join(exp, "last.pth.tar"))  # the last good checkpoint is intact
    resumed_from = survivor["epoch"]
    assert resumed_from < EPOCHS - 1, "the run finished before it could be killed"

    run_tool("train.py", *RECIPE, "--output", out, "--experiment", "killed", "--resume",
             os.path.join(exp, "last.pth.tar"))

    a, b = load(os.path.join(out, "straight", "last.pth.tar")), load(os.path.join(exp, "last.pth.tar"))
    assert a["epoch"] == b["epoch"] == EPOCHS - 1
    for key in ("model", "ema_model"):
        assert list(a[key]) == list(b[key])
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["state"][0].values(),
                                                 b["optimizer"]["state"][0].values()))
    assert rows(os.path.join(out, "straight", "metrics.csv")) == rows(metrics)
