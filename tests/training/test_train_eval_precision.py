"""Evaluation runs in fp32 even when training uses --amp (as the original); --amp-eval evaluates under autocast. Its
log lines give the time left."""
from types import SimpleNamespace

import pytest
import torch

import classification.engine.evaluate as evaluate_mod
import classification.engine.trainer as trainer_mod
from classification.engine.config import parse_args

from training_helpers import TINY_MODEL

RUN = ["--dataset", "digits", *TINY_MODEL, "-b", "512", "--epochs", "1", "--opt", "adamw", "--lr", "1e-3", "-j", "0",
       "--warmup-epochs", "0", "--amp"]


def recording(build, seen):
    """A build_model that records, per forward, (training mode, CPU autocast on, dtype of the logits)."""
    def build_and_hook(cfg):
        model = build(cfg)
        model.register_forward_hook(lambda m, args, out: seen.append(
            (m.training, torch.is_autocast_enabled("cpu"), out.dtype)))
        return model
    return build_and_hook


@pytest.mark.parametrize("amp_eval", [False, True])
def test_precision_of_training_and_evaluation(amp_eval, monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(trainer_mod, "build_model", recording(trainer_mod.build_model, seen))
    monkeypatch.setattr(evaluate_mod, "build_model", recording(evaluate_mod.build_model, seen))
    flags = [*RUN, "--output", str(tmp_path)] + (["--amp-eval"] if amp_eval else [])
    trainer_mod.train(parse_args([*flags, "--experiment", "run"]))
    train_calls = [s for s in seen if s[0]]
    eval_calls = [s for s in seen if not s[0]]
    assert train_calls and set(train_calls) == {(True, True, torch.bfloat16)}  # 2 steps, bf16 autocast on CPU
    expected = (False, True, torch.bfloat16) if amp_eval else (False, False, torch.float32)
    assert len(eval_calls) == 1 and eval_calls[0] == expected  # 360 validation images: one batch of 512
    seen.clear()
    evaluate_mod.test(parse_args([*flags, "--resume", str(tmp_path / "run" / "last.pth.tar")]))
    assert seen == [expected]


def test_fp16_on_the_cpu_trains_under_fp16_autocast_with_a_grad_scaler(monkeypatch, tmp_path):
    """--amp-dtype float16 is honoured on the CPU (it used to run bf16 while args.yaml said float16), with a
    GradScaler whose state the checkpoint keeps; the log names the precision."""
    seen = []
    monkeypatch.setattr(trainer_mod, "build_model", recording(trainer_mod.build_model, seen))
    trainer_mod.train(parse_args([*RUN, "--amp-dtype", "float16", "--output", str(tmp_path), "--experiment", "r"]))
    assert {s for s in seen if s[0]} == {(True, True, torch.float16)}
    scaler = torch.load(tmp_path / "r" / "last.pth.tar", weights_only=True)["scaler"]
    assert scaler is not None and scaler["scale"] > 0
    log_text = next((tmp_path / "r").glob("log_*.txt")).read_text()
    assert "Precision on cpu: training in float16 autocast with a GradScaler, evaluation in fp32" in log_text


@pytest.mark.parametrize("device, given, expected, scaled", [
    ("cpu", None, torch.bfloat16, False), ("cuda", None, torch.float16, True), ("cpu", "float16", torch.float16, True),
    ("cuda", "bfloat16", torch.bfloat16, False)])
def test_amp_dtype_defaults_per_device(device, given, expected, scaled):
    from classification.engine.amp import amp_dtype, make_scaler

    assert amp_dtype(torch.device(device), given) == expected
    if device == "cpu" or not scaled:
        assert (make_scaler(torch.device(device), True, given) is not None) == scaled
        assert make_scaler(torch.device(device), False, given) is None


def test_emulated_half_precision_on_the_cpu_is_warned_about(monkeypatch):
    from classification.engine import amp

    warnings = []
    log = SimpleNamespace(info=lambda line: None, warning=warnings.append)
    monkeypatch.setattr(amp, "_cpu_computes_natively", lambda dtype: False)
    amp.log_precision(log, torch.device("cpu"), True, False, None)
    assert warnings and "no native bfloat16 matrix products" in warnings[0]
    monkeypatch.setattr(amp, "_cpu_computes_natively", lambda dtype: True)
    warnings.clear()
    amp.log_precision(log, torch.device("cpu"), True, True, None)
    assert warnings == []


def test_validation_logs_its_eta(monkeypatch):
    """Each Test line gives the time left at the mean batch time so far (a clock that advances 1 s a reading makes
    every batch take 1 s: 3 batches left after the first of 4)."""
    clock = iter(range(100))
    monkeypatch.setattr(evaluate_mod, "time", SimpleNamespace(time=lambda: float(next(clock))))
    lines = []
    log = SimpleNamespace(info=lines.append)
    model = torch.nn.Linear(3, 5)
    loader = [(torch.randn(2, 3), torch.tensor([0, 4])) for _ in range(4)]
    env = SimpleNamespace(device=torch.device("cpu"), is_main=True, world_size=1)
    evaluate_mod.validate(model, loader, torch.nn.CrossEntropyLoss(), env, epoch=7, log=log, log_interval=2)
    etas = ["1.00s ETA: 0:00:03", "1.00s ETA: 0:00:01", "1.00s ETA: 0:00:00"]
    assert [line.split("Time: ")[1] for line in lines] == etas
    assert [line.split(" [")[0] for line in lines] == ["Test: 7"] * 3


def test_validation_eta_leaves_out_the_first_batchs_start_up(monkeypatch):
    """The first batch waits for the loader workers to start (here 20 s, the others 1 s): counted in the mean, it made
    the ETAs after it too long (1:43 left after 4 of 22 batches, where 18 batches of 1 s are)."""
    ends = [20.0 + i for i in range(22)]   # the clock when each batch is done; read again as the next one starts
    readings = iter([0.0] + [t for end in ends for t in (end, end)])
    monkeypatch.setattr(evaluate_mod, "time", SimpleNamespace(time=lambda: next(readings)))
    lines = []
    model = torch.nn.Linear(3, 5)
    loader = [(torch.randn(2, 3), torch.tensor([0, 4])) for _ in range(22)]
    env = SimpleNamespace(device=torch.device("cpu"), is_main=True, world_size=1)
    evaluate_mod.validate(model, loader, torch.nn.CrossEntropyLoss(), env, epoch=None,
                          log=SimpleNamespace(info=lines.append), log_interval=3)
    assert [line.split("Time: ")[1] for line in lines[:3]] == [
        "20.00s ETA: 0:07:00", "1.00s ETA: 0:00:18", "1.00s ETA: 0:00:15"]


def test_a_compiled_evaluation_pads_no_batch_beyond_the_data(monkeypatch, tmp_path):
    """With --compile every batch is padded to one size; a val set smaller than -b (360 digits, -b 512) was padded
    to 512 images, 42 % of each forward spent on zeros; the size is now the data's."""
    from classification.engine.model_builder import create_model_at_size

    ckpt = tmp_path / "released.pth"
    torch.save({"state_dict": create_model_at_size("vit_tiny_patch16_224", 16, patch_size=4, depth=1, embed_dim=32,
                                                   num_heads=2, class_token=False, global_pool="avg",
                                                   num_classes=10).state_dict()}, ckpt)
    batches = []

    def compile_recording_batches(model, mode=None):
        model.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
        return model

    monkeypatch.setattr(torch, "compile", compile_recording_batches)
    common = ["--dataset", "digits", *TINY_MODEL, "-j", "0", "--device", "cpu", "--output", str(tmp_path), "--resume",
              str(ckpt), "--compile", "default"]
    evaluate_mod.test(parse_args([*common, "-b", "512"]))
    evaluate_mod.test(parse_args([*common, "-b", "256"]))
    assert batches == [360, 256, 256]


def test_a_stop_signal_during_an_epochs_validation_stops_it_at_the_next_batch(folder_tree, monkeypatch, tmp_path):
    """A Ctrl-C while training validated only took effect once the validation (and the EMA's) and the epoch's writes
    were done: on ImageNet, minutes, more than Slurm waits between its SIGTERM and SIGKILL. It now stops the validation
    after its batch in progress; the epoch's training is saved, and --resume validates it: the run then ends with the
    same metrics.csv as one never stopped."""
    import csv
    import os
    import signal

    from classification.engine.cli import RunInterrupted

    real_validate, calls = trainer_mod.validate, []

    def validate_after_a_ctrl_c(*args, **kwargs):
        calls.append(kwargs.get("suffix", ""))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_validate(*args, **kwargs)

    run = [*TINY_MODEL, "--data-path", folder_tree, "-b", "2", "-j", "0", "--epochs", "2", "--warmup-epochs", "0",
           "--model-ema", "--output", str(tmp_path)]
    monkeypatch.setattr(trainer_mod, "validate", validate_after_a_ctrl_c)
    with pytest.raises(RunInterrupted) as stopped:
        trainer_mod.train(parse_args([*run, "--experiment", "stopped"]))
    monkeypatch.undo()
    folder = tmp_path / "stopped"
    last = folder / "last.pth.tar"
    assert stopped.value.signum == signal.SIGINT and stopped.value.resume_path == str(last)
    assert calls == [""]                                               # the EMA's validation never started
    (log_file,) = folder.glob("log_*.txt")
    said = [line.split(" INFO ", 1)[-1] for line in log_file.read_text().splitlines()]
    tests = [line for line in said if line.startswith("Test")]
    assert len(tests) == 1 and tests[0].startswith("Test: 0 [   0/3]")  # one of the 3 batches, then the stop
    assert said[said.index(tests[0]) + 1] == (
        f"SIGINT: stopping the validation of epoch 0; the epoch's training is saved in {last}, from which --resume "
        f"validates it")
    ckpt = torch.load(last, weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (0, ckpt["steps_per_epoch"])
    assert not (folder / "metrics.csv").exists() or len((folder / "metrics.csv").read_text().splitlines()) == 1

    trainer_mod.train(parse_args([*run, "--experiment", "stopped", "--resume", str(last)]))
    trainer_mod.train(parse_args([*run, "--experiment", "whole"]))

    def metrics(name):
        with open(tmp_path / name / "metrics.csv") as f:
            return list(csv.reader(f))

    assert [row[0] for row in metrics("stopped")[1:]] == ["0", "1"]
    assert metrics("stopped") == metrics("whole")


def test_validation_asks_to_stop_only_after_the_batches_every_rank_has(monkeypatch):
    """Validation shares are not padded: a rank may have one batch more than another, whose stop check (a collective)
    it must not wait for. With 3 batches here and 2 on the rank with the fewest, the stop is asked after 2; a stop
    it answers ends the validation there."""
    import logging
    from torch.utils.data import DataLoader, TensorDataset

    from classification.engine.distributed import DistEnv

    monkeypatch.setattr(evaluate_mod, "all_reduce", lambda values, device, op: [max(values[0], -2)])  # max of -count
    loader = DataLoader(TensorDataset(torch.randn(9, 10), torch.arange(9) % 10), batch_size=4)         # 3 batches
    env = DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    asked = []
    evaluate_mod.validate(torch.nn.Identity(), loader, torch.nn.CrossEntropyLoss(), env, 0, logging.getLogger("test"),
                          stop=lambda: asked.append(len(asked)))
    assert asked == [0, 1]
    with pytest.raises(evaluate_mod.ValidationStopped) as stopped:
        evaluate_mod.validate(torch.nn.Identity(), loader, torch.nn.CrossEntropyLoss(), env, 0,
                              logging.getLogger("test"), stop=lambda: 15)
    assert stopped.value.signum == 15


@pytest.mark.parametrize("batch", [7, 16, 360])
def test_validation_accuracy_is_the_exact_share_at_any_batch_size(batch):
    """337 of 360 right: top-1 is 100 * 337 / 360 to the last bit at every batch size (timm's float32 percentages,
    summed per batch, drifted by ~4e-7 with the batch size)."""
    import logging
    from torch.utils.data import DataLoader, TensorDataset

    from classification.engine.distributed import DistEnv

    labels = torch.arange(360) % 10
    predicted = labels.clone()
    predicted[::17] = (predicted[::17] + 1) % 10                 # 22 wrong, and 1 more
    predicted[5] = (predicted[5] + 1) % 10
    logits = torch.nn.functional.one_hot(predicted, 10) + 0.5 * torch.nn.functional.one_hot(labels, 10)  # 2nd
    loader = DataLoader(TensorDataset(logits, labels), batch_size=batch)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    result = evaluate_mod.validate(torch.nn.Identity(), loader, torch.nn.CrossEntropyLoss(), env, 0,
                                   logging.getLogger("test"))
    assert int((predicted == labels).sum()) == 337
    assert result["top1"] == 100 * 337 / 360 and result["top5"] == 100.0


def test_top5_counts_labels_ranked_up_to_fifth_and_the_loss_is_the_mean_over_images():
    """10 classes, 12 images whose logits rank class c at place c + 1; image k's label is k % 6, ranked (k % 6) + 1.
    Top-1: the 2 labels ranked first (k = 0, 6); top-5: all but the 2 ranked sixth (k = 5, 11), 10 of 12. The loss,
    over batches of 5, 5 and 2, is the cross-entropy averaged over the 12 images (not over the 3 batches)."""
    import logging
    from torch.utils.data import DataLoader, TensorDataset

    from classification.engine.distributed import DistEnv

    logits = torch.arange(10, 0, -1, dtype=torch.float32).repeat(12, 1)
    labels = torch.arange(12) % 6
    loader = DataLoader(TensorDataset(logits, labels), batch_size=5)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    result = evaluate_mod.validate(torch.nn.Identity(), loader, torch.nn.CrossEntropyLoss(), env, 0,
                                   logging.getLogger("test"))
    assert result["top1"] == 100 * 2 / 12 and result["top5"] == 100 * 10 / 12
    assert result["test_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)


class BFloat16Logits(torch.nn.Module):
    """Logits in bfloat16, as a model under --amp-eval's autocast gives them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16)


def test_the_validation_loss_of_bfloat16_logits_is_computed_in_float32():
    """Under --amp-eval the logits come in bfloat16; the loss is the float32 cross-entropy of them (here 0.88184),
    not one rounded to bfloat16 (0.88672, 0.6 % off)."""
    import logging
    import torch.nn.functional as F

    from classification.engine.distributed import DistEnv

    logits = torch.tensor([[1.0, 2.0, 0.5], [0.25, -1.0, 3.0], [0.1, 0.2, 0.3]]).to(torch.bfloat16).float()
    labels = torch.tensor([0, 2, 1])
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    result = evaluate_mod.validate(BFloat16Logits(), [(logits, labels)], torch.nn.CrossEntropyLoss(), env, 0,
                                   logging.getLogger("test"))
    assert result["test_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert result["top1"] == 100 * 1 / 3     # only the second image's label ranks first


@pytest.mark.parametrize("classes, said", [(5, True), (6, False)])
def test_top5_is_said_to_mean_nothing_up_to_five_classes(classes, said):
    lines = []
    evaluate_mod.log_top5_meaning(SimpleNamespace(info=lines.append), classes)
    assert lines == ([f"The model has {classes} classes: its top-5 accuracy is 100 % by definition"] if said else [])


def test_an_input_flag_its_run_recorded_as_unset_is_no_other_input():
    """The warning about other inputs names only flags whose run recorded a value: a None is no value to compare."""
    from classification.engine.config import parse_args

    cfg = parse_args(["--crop-pct", "0.9", "--interpolation", "bicubic"])
    assert evaluate_mod.other_inputs(cfg, {"crop_pct": None, "interpolation": "bicubic"}) == []
    assert evaluate_mod.other_inputs(cfg, {"crop_pct": 0.875}) == ["--crop-pct 0.875 -> 0.9"]
