"""Helpers of the training tests: tiny real image trees, CIFAR pickles, a tiny model, tool runners, and snapshots of a
run's folder to compare runs bit for bit."""
from __future__ import annotations

import csv
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(REPO, "tools")
# tools/train.py with a signal sent at a chosen moment (see its docstring)
SIGNAL_AT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "signal_at.py")
READ_FAILS_AT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "read_fails_at.py")
LOSS_FAILS_AT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loss_fails_at.py")

# A small timm ViT on 16x16 inputs: quick on two CPU cores, deterministic, no batch norm (so that a batch split over
# two processes gives the same gradients as one process).
TINY_MODEL = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=16", "patch_size=4", "depth=1",
              "embed_dim=32", "num_heads=2", "class_token=false", "global_pool=avg", "--img-size", "16"]


def write_image(path: str, seed: int, size: int = 20, fmt: str = "JPEG") -> None:
    """A real image file of random colours."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, fmt)


def make_meta_tree(root: str, classes: int = 3, per_class: int = 4, val_per_class: int = 2) -> dict:
    """The original ImageNet layout: train/, val/, meta/{train,val}.txt. Returns {split: [(rel, label), ...]}."""
    lists = {}
    for split, n in (("train", per_class), ("val", val_per_class)):
        rows = []
        for c in range(classes):
            for i in range(n):
                rel = f"n{c:04d}/img_{i}.JPEG" if split == "train" else f"ILSVRC_val_{c}_{i}.JPEG"
                write_image(os.path.join(root, split, rel), seed=1000 * c + i + (500 if split == "val" else 0))
                rows.append((rel, c))
        lists[split] = rows
        os.makedirs(os.path.join(root, "meta"), exist_ok=True)
        with open(os.path.join(root, "meta", f"{split}.txt"), "w") as f:
            f.writelines(f"{rel} {label}\n" for rel, label in rows)
    return lists


def make_folder_tree(root: str, classes=("cat", "dog", "eel"), per_class: int = 4, val_per_class: int = 2) -> None:
    """The class-folder layout: train/<class>/*.png, val/<class>/*.png."""
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            for i in range(n):
                write_image(os.path.join(root, split, name, f"{i}.png"), seed=c * 100 + i, fmt="PNG")


def make_cifar(root: str, name: str = "cifar10", train: int = 10, test: int = 4) -> tuple[np.ndarray, list]:
    """CIFAR python-pickle files with few images; returns the first train batch's data and labels."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, files, key = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    else:
        folder, files, key = "cifar-100-python", ["train", "test"], b"fine_labels"
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    first = None
    for fname in files:
        n = test if "test" in fname else train
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n)]
        with open(os.path.join(root, folder, fname), "wb") as f:
            pickle.dump({b"data": data, key: labels}, f)
        if first is None:
            first = (data, labels)
    return first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool_env() -> dict:
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    env.pop("LOCAL_RANK", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_tool(script: str, *args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python tools/<script> args` and return the completed process (stdout+stderr captured)."""
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, script), *args], capture_output=True, text=True,
                          env=tool_env(), timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def rows(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def snapshot(folder) -> dict:
    """What a finished run leaves: CSV rows, checkpoint file names, the kept list, best's epoch, the weights."""
    last = torch.load(os.path.join(folder, "last.pth.tar"), map_location="cpu", weights_only=True)
    best = torch.load(os.path.join(folder, "best.pth.tar"), map_location="cpu", weights_only=True)
    return {
        "metrics": rows(os.path.join(folder, "metrics.csv")),
        "lr": rows(os.path.join(folder, "lr.csv")),
        "files": sorted(n for n in os.listdir(folder) if n.endswith(".pth.tar")),
        "kept": last["checkpoints"],
        "best": best["epoch"],
        "weights": {k: v for key in ("model", "ema_model") for k, v in
                    ((f"{key}.{n}", t) for n, t in last[key].items())},
    }


def assert_same_run(a: dict, b: dict) -> None:
    """Two snapshots are equal, the weights bit for bit."""
    assert {k: v for k, v in a.items() if k != "weights"} == {k: v for k, v in b.items() if k != "weights"}
    assert list(a["weights"]) == list(b["weights"])
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


class WrappedFile:
    """An open file whose methods are its own but those a subclass defines (`write`, to make it fail as a full disk or
    a Ctrl-C would); a context manager that closes it."""

    def __init__(self, f):
        self.f = f

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
