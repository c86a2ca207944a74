"""One training step as a run configures it: the label-smoothed losses (plain and with mixup) and gradient clipping,
against values computed by hand."""
import copy
import logging
import signal

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.utils import AverageMeter

from classification.data import build_mixup
from classification.engine.cli import RunInterrupted
from classification.engine.config import parse_args
from classification.engine.distributed import DistEnv
from classification.engine.logs import format_eta
from classification.engine import train_loop
from classification.engine.train_loop import EpochProgress, _add_step_loss, _forward_backward, _optimizer_step
from classification.engine.trainer import Run

from training_helpers import TINY_MODEL


def make_run(tmp_path, *flags):
    """The Run of a tiny model on the digits (10 classes), on the CPU, with `flags` added."""
    cfg = parse_args(["--dataset", "digits", *TINY_MODEL, "-b", "32", "-j", "0", "--device", "cpu",
                      "--output", str(tmp_path), *flags])
    return Run(cfg, DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")), str(tmp_path),
               logging.getLogger("localmamba.test"))


def test_train_loss_is_label_smoothed_as_configured(tmp_path):
    """--smoothing 0.1 without mixup: the train loss is cross-entropy against 0.9 on the label plus 0.1 / 10 on every
    class. A loss built without the flag's smoothing trained every run as --smoothing 0, unseen by any metric."""
    run = make_run(tmp_path, "--smoothing", "0.1")
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.0, -2.0, 0.3, 0.0, 1.5, -0.5]] * 2
                          + [[0.0] * 9 + [3.0], [1.0, 0.0, -1.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([0, 3, 9, 3])
    log_p = F.log_softmax(logits, dim=1)
    by_hand = (-(1 - 0.1) * log_p[torch.arange(4), target] - 0.1 / 10 * log_p.sum(1)).mean()
    assert run.mixup is None
    torch.testing.assert_close(run.train_loss(logits, target), by_hand)
    assert abs(by_hand - F.cross_entropy(logits, target)) > 0.05      # the smoothing is what is measured


@pytest.mark.parametrize("mixing", [False, True])
def test_the_validation_loss_is_smoothed_only_where_training_has_no_mixup(tmp_path, mixing):
    """--smoothing 0.1: without mixup the validation loss is the train loss's, smoothed (0.9 on the label, 0.01 on
    every class); with --mixup, whose targets carry the smoothing, it is the plain cross-entropy."""
    run = make_run(tmp_path, "--smoothing", "0.1", *(["--mixup", "0.8"] if mixing else []))
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.0, -2.0, 0.3, 0.0, 1.5, -0.5], [0.0] * 9 + [3.0]])
    target = torch.tensor([0, 3])
    log_p = F.log_softmax(logits, dim=1)
    plain = -log_p[torch.arange(2), target].mean()
    smoothed = (-(1 - 0.1) * log_p[torch.arange(2), target] - 0.1 / 10 * log_p.sum(1)).mean()
    torch.testing.assert_close(run.val_loss(logits, target), plain if mixing else smoothed)


def test_mixup_targets_are_label_smoothed(tmp_path):
    """--mixup 0.8 --smoothing 0.1 on 10 classes: timm's Mixup mixes one-hot targets of 0.91 on the label and 0.01
    elsewhere with weights lam (the sample) and 1 - lam (the batch flipped). Mixup built without the smoothing gave
    0 / 1 targets (smallest entry 0)."""
    cfg = parse_args(["--mixup", "0.8", "--smoothing", "0.1"])
    cfg.num_classes = 10
    mixup = build_mixup(cfg)
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])   # image 0 mixed reads 1 - lam everywhere
    np.random.seed(0)
    mixed, soft = mixup(images.clone(), torch.tensor([3, 5]))
    lam = 1 - mixed[0, 0, 0, 0].item()
    assert 0 < lam < 1 and torch.allclose(mixed[0], torch.full((3, 4, 4), 1 - lam))
    on, off = 1 - 0.1 + 0.1 / 10, 0.1 / 10
    expected = torch.full((2, 10), off)
    expected[0, 3] = expected[1, 5] = lam * on + (1 - lam) * off
    expected[0, 5] = expected[1, 3] = lam * off + (1 - lam) * on
    torch.testing.assert_close(soft, expected)
    assert soft.min().item() == np.float32(0.01)


def test_mixup_prob_and_switch_prob_decide_each_batch():
    """--mixup-prob 0.5: a batch whose first NumPy draw is 0.549 (seed 0), not below 0.5, is left as it is, targets
    one-hot. --mixup-switch-prob 0 beside --cutmix 1: a batch whose switch draw is 0.026 (seed 2) is blended by mixup
    (image 0, of zeros, reads 1 - lam everywhere), never cut. A Mixup built without the flags mixed both."""
    images, labels = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)]), torch.tensor([0, 1])
    cfg = parse_args(["--mixup", "0.8", "--mixup-prob", "0.5", "--smoothing", "0"])
    cfg.num_classes = 2
    np.random.seed(0)
    assert np.random.rand() == pytest.approx(0.549, abs=1e-3)
    np.random.seed(0)
    mixed, soft = build_mixup(cfg)(images.clone(), labels)
    assert torch.equal(mixed, images) and torch.equal(soft, torch.eye(2))
    cfg = parse_args(["--mixup", "0.8", "--cutmix", "1.0", "--mixup-switch-prob", "0", "--smoothing", "0"])
    cfg.num_classes = 2
    np.random.seed(2)
    assert np.random.rand(2)[1] == pytest.approx(0.026, abs=1e-3)
    np.random.seed(2)
    mixed, soft = build_mixup(cfg)(images.clone(), labels)
    lam = soft[0, 0].item()
    assert 0 < lam < 1 and torch.allclose(mixed[0], torch.full((3, 8, 8), 1 - lam))


@pytest.mark.parametrize("accum", [1, 2, 4])
@pytest.mark.parametrize("clip", [True, False])
def test_one_optimizer_step_from_the_batch_or_its_parts(tmp_path, accum, clip):
    """An fp32 step of plain SGD (no GradScaler) moves the weights by lr x the batch's mean-loss gradient. With
    --clip-grad-norm that gradient is rescaled to norm 0.01 (torch's clip: factor max_norm / (norm + 1e-6)), so the
    weights move by lr x 0.01 in all; clipping done only in the AMP branch let fp32 runs step with the raw gradient
    (here a norm over 100 times larger). With --grad-accum-steps the batch of 8 comes as `accum` parts and the step
    is the same: the mean of the parts' gradients (a sum moves the weights `accum` times as far without clipping),
    clipped as a whole (clipping each part's gives another step)."""
    torch.manual_seed(0)
    clipping = ["--clip-grad-norm", "--clip-grad-max-norm", "0.01"] if clip else []
    run = make_run(tmp_path, "--opt", "sgd", "--lr", "1.0", "--momentum", "0", "--sgd-no-nesterov",
                   "--weight-decay", "0", "--warmup-epochs", "0", "--smoothing", "0", "--grad-accum-steps",
                   str(accum), *clipping)
    assert run.scaler is None
    images, target = torch.randn(8, 3, 16, 16), torch.arange(8)
    reference = copy.deepcopy(run.model)
    F.cross_entropy(reference(images), target).backward()
    grads = [p.grad for p in reference.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    lr = run.optimizer.param_groups[0]["lr"]
    factor = 0.01 / (norm + 1e-6) if clip else 1.0
    expected = [p.detach() - lr * g * factor for p, g in zip(reference.parameters(), grads)]
    before = [p.detach().clone() for p in run.model.parameters()]

    run.optimizer.zero_grad(set_to_none=True)
    for part_images, part_target in zip(images.chunk(accum), target.chunk(accum)):
        _forward_backward(run, part_images, part_target, sync=True)
    _optimizer_step(run)

    assert norm > 1.0 and 0.9 < lr <= 1.0
    steps = [(p.detach() - b).flatten() for p, b in zip(run.model.parameters(), before)]
    assert torch.linalg.vector_norm(torch.cat(steps)).item() == pytest.approx((0.01 if clip else norm.item()) * lr,
                                                                              rel=1e-3)
    for param, want in zip(run.model.parameters(), expected):
        torch.testing.assert_close(param.detach(), want, rtol=1e-5, atol=2e-7)


def test_clipping_under_a_grad_scaler_clips_the_unscaled_gradient(tmp_path):
    """--amp-dtype float16 (a GradScaler, the loss scaled by 2 ** 16) with --clip-grad-norm 0.01: plain SGD moves the
    weights by lr x 0.01 in all, as in fp32. Clipping the gradient still scaled, and the scaler dividing it after,
    moved them 2 ** 16 times less."""
    torch.manual_seed(0)
    run = make_run(tmp_path, "--opt", "sgd", "--lr", "1.0", "--momentum", "0", "--sgd-no-nesterov",
                   "--weight-decay", "0", "--warmup-epochs", "0", "--smoothing", "0", "--amp", "--amp-dtype",
                   "float16", "--clip-grad-norm", "--clip-grad-max-norm", "0.01")
    assert run.scaler is not None and run.scaler.get_scale() == 2.0 ** 16
    images, target = torch.randn(8, 3, 16, 16), torch.arange(8)
    before = [p.detach().clone() for p in run.model.parameters()]
    lr = run.optimizer.param_groups[0]["lr"]

    run.optimizer.zero_grad(set_to_none=True)
    _forward_backward(run, images, target, sync=True)
    _optimizer_step(run)

    steps = [(p.detach() - b).flatten() for p, b in zip(run.model.parameters(), before)]
    assert 0.9 < lr <= 1.0
    assert torch.linalg.vector_norm(torch.cat(steps)).item() == pytest.approx(0.01 * lr, rel=1e-3)


def test_the_loss_of_bfloat16_logits_is_computed_in_float32(tmp_path):
    """--amp (bfloat16 autocast on the CPU): the model's logits come out in bfloat16 and the train loss is the
    float32 cross-entropy of them, to float32's precision; the loss taken of the bfloat16 logits themselves is
    rounded to bfloat16 (8 significant bits, up to 0.4 %), and so is its gradient."""
    torch.manual_seed(0)
    run = make_run(tmp_path, "--amp", "--smoothing", "0")
    images, target = torch.randn(8, 3, 16, 16), torch.arange(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = copy.deepcopy(run.model)(images)
    assert logits.dtype == torch.bfloat16
    expected = F.cross_entropy(logits.float(), target).item()
    loss = _forward_backward(run, images, target, sync=True)
    assert loss == pytest.approx(expected, rel=1e-6)


def test_the_running_loss_takes_a_steps_batches_as_one():
    """The log line's loss (`val`) of an accumulated step is its batches' mean over their images (it was the last
    batch's); the running sums are the images'; a loss that is not finite stays out; one batch is taken as it is."""
    meter = AverageMeter()
    _add_step_loss(meter, [(2.0, 8), (1.0, 8), (4.0, 4)])
    assert (meter.val, meter.sum, meter.count) == (2.0, 40.0, 20)
    _add_step_loss(meter, [(float('nan'), 8), (3.0, 8)])
    assert (meter.val, meter.sum, meter.count) == (3.0, 64.0, 28)
    _add_step_loss(meter, [(0.1, 3)])
    assert (meter.val, meter.sum, meter.count) == (0.1, 64.0 + 0.1 * 3, 31)
    _add_step_loss(meter, [(float('inf'), 3)])
    assert meter.count == 31


def test_the_training_eta_leaves_out_the_epochs_first_step(tmp_path, monkeypatch, caplog):
    """The first step of an epoch also waits for the loader's workers (and kernel builds, compilation): here 20 s,
    every other 1 s. Counted in the mean, it made every ETA of the epoch too long (4.8 s a step after 5 steps)."""
    run = make_run(tmp_path, "--log-interval", "4", "--epochs", "3", "--warmup-epochs", "0")
    run.lr_log = []
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(train_loop, "time", SimpleNamespace(time=lambda: clock.now))

    def forward_backward(run, images, target, sync):
        clock.now += 20.0 if clock.now == 0 else 1.0
        return 1.0

    monkeypatch.setattr(train_loop, "_forward_backward", forward_backward)
    with caplog.at_level(logging.INFO, logger="localmamba.test"):
        train_loop.train_one_epoch(run, 0)
    steps = run.updates_per_epoch
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Train: 0 [")]
    assert lines[0].startswith("Train: 0 [   0/") and "Time: 20.00s (20.00s)" in lines[0]
    left = (steps - 5) * 1.0
    assert "Time: 1.00s (1.00s)" in lines[1]
    assert lines[1].endswith(f"ETA: {format_eta(left)} (run {format_eta(left + 2 * steps)})")


def test_the_training_speed_counts_every_batch_of_an_accumulated_step(tmp_path, monkeypatch, caplog):
    """With --grad-accum-steps 2 a step of 1 s trains two batches of 32 images: 64 img/s (not the 32 of one batch)."""
    run = make_run(tmp_path, "--grad-accum-steps", "2", "--epochs", "1", "--warmup-epochs", "0")
    run.lr_log = []
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(train_loop, "time", SimpleNamespace(time=lambda: clock.now))

    def forward_backward(run, images, target, sync):
        clock.now += 0.5
        return 1.0

    monkeypatch.setattr(train_loop, "_forward_backward", forward_backward)
    with caplog.at_level(logging.INFO, logger="localmamba.test"):
        train_loop.train_one_epoch(run, 0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Train: 0 [")]
    assert "Time: 1.00s (1.00s)" in lines[0] and "Speed: 64.0 img/s" in lines[0]


def test_a_stop_agreed_before_the_first_step_of_a_launch_stops_after_that_step(tmp_path):
    """A signal that arrives after the epoch began but before its first step here (its first batch loading) stops the
    run after that step, not before it: every launch trains at least one step, and the stop saves it."""
    run = make_run(tmp_path, "--epochs", "1", "--warmup-epochs", "0")
    run.lr_log = []
    progress = EpochProgress()
    always_signalled = SimpleNamespace(agreed_with=lambda failed: (signal.SIGTERM, failed))
    with pytest.raises(RunInterrupted):
        train_loop.train_one_epoch(run, 0, progress, always_signalled)
    assert (progress.step, run.scheduler.t, progress.loss.count) == (1, 1, 32)


def test_a_stop_agreed_between_the_batches_of_a_step_stops_after_that_step(tmp_path):
    """--grad-accum-steps 2, a signal seen first at the second batch of step 1: the run finishes step 1 and stops
    before step 2 (4 batches trained), rather than dropping step 1's first batch and stopping after step 0."""
    run = make_run(tmp_path, "--epochs", "1", "--warmup-epochs", "0", "--grad-accum-steps", "2")
    run.lr_log = []
    progress, polls = EpochProgress(), []

    def agreed_with(failed):
        polls.append(failed)
        return (signal.SIGTERM if len(polls) >= 4 else None), failed

    with pytest.raises(RunInterrupted):
        train_loop.train_one_epoch(run, 0, progress, SimpleNamespace(agreed_with=agreed_with))
    assert (len(polls), progress.step, run.scheduler.t, progress.loss.count) == (5, 4, 2, 4 * 32)
