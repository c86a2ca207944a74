"""Run tools/train.py with a training loss that is not finite (the distributed divergence test).

Usage: LOSS_FAILS_AT="N RANK" python loss_fails_at.py [train.py flags], or loss_fails_at.py as the ENTRY of
tools/dist_run.sh: on rank RANK, once the optimizer step that brings the schedule to iteration N is done, the
training loss of the next batch is NaN (the model and its gradients are left as they are).
"""
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from classification.engine.scheduler import WarmupScheduler  # noqa: E402

N, RANK = (int(value) for value in os.environ["LOSS_FAILS_AT"].split())
BROKEN = os.environ.get("RANK", "0") == str(RANK)
reached = False
step, cross_entropy = WarmupScheduler.step, nn.CrossEntropyLoss.forward


def step_and_count(scheduler):
    global reached
    step(scheduler)
    reached = reached or scheduler.t == N


def nan_once_reached(loss_module, logits, target):
    loss = cross_entropy(loss_module, logits, target)
    return loss * float("nan") if BROKEN and reached and torch.is_grad_enabled() else loss  # not validation


WarmupScheduler.step = step_and_count
nn.CrossEntropyLoss.forward = nan_once_reached

train = os.path.join(REPO, "tools", "train.py")
sys.argv = [train, *sys.argv[1:]]
runpy.run_path(train, run_name="__main__")
