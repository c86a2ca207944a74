"""Run tools/train.py with a training loss that is not finite (the distributed divergence test).

Usage: LOSS_FAILS_AT="N RANK" python loss_fails_at.py [train.py flags], or loss_fails_at.py as the ENTRY of
tools/dist_run.sh: on rank RANK, once the optimizer step that brings the schedule to iteration N is done, the
training losses are NaN (the model and its gradients are left as they are).
"""
import torch
from fault_harness import Reached, run_train, step_and_faulty_rank
from torch import nn

N, BROKEN = step_and_faulty_rank("LOSS_FAILS_AT")
reached = Reached(N)
cross_entropy = nn.CrossEntropyLoss.forward


def nan_once_reached(loss_module, logits, target):
    loss = cross_entropy(loss_module, logits, target)
    return loss * float("nan") if BROKEN and reached and torch.is_grad_enabled() else loss  # not validation


nn.CrossEntropyLoss.forward = nan_once_reached
run_train()
