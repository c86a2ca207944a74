"""Per-iteration learning-rate schedule of the original: per-epoch-constant warmup, then cosine, step or linear.

With W warmup steps, E steps per epoch and N total steps, the LR used by (0-based) iteration t is

    t <= W, W > 0:  warmup_lr + (lr - warmup_lr) * floor(t / E) * E / W          (constant within an epoch)
    otherwise:      after(u) with u = t - W - 1 (u = t when W = 0, but u = 1 at t = 0), u rounded down to a
                    multiple of E with decay_by_epoch (cosine and linear; step keeps its own step_size)
             cosine: min_lr + (lr - min_lr) * (1 + cos(pi * u / (N - W))) / 2
             step:   lr * decay_rate ** floor(u / step_size)     (step_size = decay_epochs * E, not rounded)
             linear: lr * (N - W - u) / (N - W)

which is the value the original's GradualWarmupScheduler sets when stepped with `epoch * E + batch + 1` after every
iteration. The schedule is a pure function of t, so its whole state is the step counter.
Not timm's schedulers: their warmup ramps every step and their cosine skips the original's off-by-one (u = t - W - 1).
"""
from __future__ import annotations

import math
from argparse import Namespace

import torch


class WarmupScheduler:
    """Sets every param group's `lr` to `lr_at(t)` scaled by the group's `initial_lr / lr`."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, lr: float, steps_per_epoch: int, epochs: int,
                 warmup_epochs: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0, decay_epochs: float = 1.0,
                 decay_rate: float = 0.1, decay_by_epoch: bool = False):
        if kind not in ("cosine", "step", "linear"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.optimizer, self.kind, self.lr = optimizer, kind, lr
        self.steps_per_epoch = steps_per_epoch
        self.total = epochs * steps_per_epoch
        self.warmup = warmup_epochs * steps_per_epoch
        self.warmup_lr, self.min_lr = warmup_lr, min_lr
        # a float, as the original's StepLR: --decay-epochs 2.4 of 7 iterations decays at 17, 34, 51 (not 16, 32, 48)
        self.step_size = decay_epochs * steps_per_epoch
        self.decay_rate = decay_rate
        self.decay_by_epoch = decay_by_epoch and kind != "step"
        self.t = 0
        self._apply()

    def lr_at(self, t: int) -> float:
        """Learning rate of iteration t (0-based, counted over the whole run)."""
        e, w = self.steps_per_epoch, self.warmup
        if w > 0 and t <= w:
            return self.warmup_lr + (self.lr - self.warmup_lr) * (t // e * e) / w
        if w > 0:
            u = t - w - 1
        elif t == 0:
            return self._after(1)  # the original's constructor already stepped the schedule once
        else:
            u = t
        if self.decay_by_epoch:
            u = u // e * e
        return self._after(u)

    def _after(self, u: int) -> float:
        w = self.warmup
        span = max(self.total - w, 1)
        if self.kind == "cosine":
            return self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * u / span)) / 2
        if self.kind == "step":
            return self.lr * self.decay_rate ** (u // self.step_size)
        return self.lr * (span - u) / span

    def _apply(self) -> None:
        value = self.lr_at(self.t)
        for group in self.optimizer.param_groups:
            group["lr"] = value * group.get("initial_lr", self.lr) / self.lr if self.lr else value

    def step(self) -> None:
        """Advance one iteration."""
        self.t += 1
        self._apply()

    def set_step(self, t: int) -> None:
        """Jump to iteration t (resume)."""
        self.t = t
        self._apply()

    def state_dict(self) -> dict[str, int]:
        return {"t": self.t}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.set_step(int(state["t"]))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Namespace, steps_per_epoch: int) -> WarmupScheduler:
    """The schedule of `cfg.sched` for a loader of `steps_per_epoch` batches."""
    decay_rate = cfg.decay_rate if cfg.decay_rate is not None else 0.1
    return WarmupScheduler(optimizer, cfg.sched, cfg.lr, steps_per_epoch, cfg.epochs, cfg.warmup_epochs,
                           cfg.warmup_lr, cfg.min_lr, cfg.decay_epochs, decay_rate, cfg.decay_by_epoch)
