"""Helpers of the safety tests: a tiny recipe, tool runners, checkpoints that carry a code payload, file digests, a
file whose disk fills up."""
from __future__ import annotations

import errno
import hashlib
import os
import pickle
import subprocess
import sys
from typing import Optional

import torch

from training_helpers import REPO, TINY_MODEL, TOOLS, WrappedFile, tool_env

TRUST_FLAG = "--trust-checkpoint"
# tiny ViT on digits; 1437 // 256 = 5 iterations per epoch
TINY_RUN = ["--dataset", "digits", *TINY_MODEL, "-b", "256", "--opt", "adamw", "--lr", "3e-3", "--weight-decay",
            "0.05", "--sched", "cosine", "--warmup-epochs", "1", "-j", "0", "--log-interval", "2"]


def run_tool(script: str, *args: str, check: bool = True, timeout: int = 300, cwd: str = REPO,
             env: Optional[dict] = None, **popen) -> subprocess.CompletedProcess:
    """Run `python tools/<script> args`; stdout and stderr captured."""
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, script), *args], capture_output=True, text=True,
                          env=env or tool_env(), timeout=timeout, cwd=cwd, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2, and stderr is exactly one line `error: ...` containing `message` (no traceback)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert message in lines[0], lines[0]


class WritesMarker:
    """Unpickling this object runs code: it creates the file `path`."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('pwned')",)


def save_payload_checkpoint(path: str, marker: str, like: Optional[str] = None) -> None:
    """A checkpoint whose loading with pickle writes `marker`; `like` copies a real checkpoint's entries around it."""
    ckpt = torch.load(like, map_location="cpu", weights_only=True) if like else {"state_dict": {}}
    ckpt["payload"] = WritesMarker(marker)
    torch.save(ckpt, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)


def digests(folder: str) -> dict[str, tuple[str, int]]:
    """sha256 and mode of every file under `folder`, by relative path."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mode)
    return out


class FullDisk(WrappedFile):
    """A file that takes `room` bytes, then fails every write with `code` (default ENOSPC), as a file system that
    filled up."""

    def __init__(self, f, room: int, code: int = errno.ENOSPC):
        super().__init__(f)
        self.room, self.code = room, code

    def write(self, data):
        if len(data) > self.room:
            raise OSError(self.code, os.strerror(self.code))
        self.room -= len(data)
        return self.f.write(data)
