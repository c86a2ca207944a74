"""Knowledge distillation on the logits (`--kd`): the losses against hand-computed values, the weighted sum of a run's
training loss, the teacher on the student's mixed batch, the refusals, and `args.yaml`."""
import logging
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import timm
import torch
import yaml
from torch import nn

from classification.common.checkpoint_io import CheckpointError, atomic_save
from classification.engine.cli import run_cli
from classification.engine.config import ConfigError, parse_args, save_config
from classification.engine.distillation import DIST, Distillation, KLDivergence, build_distillation, distillation_loss
from classification.engine.trainer import train
from classification.models.directions import scan_directions

from training_helpers import SIGNAL_AT_SCRIPT, TINY_MODEL, make_folder_tree, rows, tool_env

TEACHER = ["--teacher-model", "vit_tiny_patch16_224"]
# LR 0 through the whole epoch (its one warmup epoch at --warmup-lr 0): every batch's loss is that of the initial
# weights, so that the losses of runs that differ only in their loss weights add up linearly
FROZEN = [*TINY_MODEL, "-b", "4", "--epochs", "1", "-j", "0", "--opt", "adamw", "--lr", "1e-3", "--warmup-epochs", "1",
          "--warmup-lr", "0", "--mixup", "0.8", "--cutmix", "1.0", "--log-interval", "1"]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(logits, tau):
    exps = [math.exp(x / tau) for x in logits]
    return [e / sum(exps) for e in exps]


def test_kl_divergence_is_tau_squared_times_the_batch_mean_of_kl_teacher_to_student():
    student, teacher = [[0.0, 0.0, 1.0], [2.0, -1.0, 0.5]], [[math.log(3), 0.0, 0.0], [0.0, 1.0, 0.0]]
    for tau in (1.0, 4.0):
        by_hand = tau ** 2 * sum(_kl(_softmax(t, tau), _softmax(s, tau)) for s, t in zip(student, teacher)) / 2
        loss = KLDivergence(tau)(torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64))
        assert loss.item() == pytest.approx(by_hand, rel=1e-12)


def test_dist_on_a_hand_example():
    """Probabilities given as log-logits: per image, Pearson correlations -0.5 and 1 (inter-class loss 0.75); per
    class over the two images, +1, -1, +1 (intra-class loss 2/3). At tau 2, logits twice as large give the same
    probabilities and the loss is 4 times as large."""
    student = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]], dtype=torch.float64).log()
    teacher = torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.3, 0.5]], dtype=torch.float64).log()
    assert DIST()(student, teacher).item() == pytest.approx(0.75 + 2 / 3, abs=1e-6)
    assert DIST(tau=2.0)(2 * student, 2 * teacher).item() == pytest.approx(4 * (0.75 + 2 / 3), abs=1e-6)
    assert DIST(beta=2.0, gamma=0.0)(student, teacher).item() == pytest.approx(1.5, abs=1e-6)


@pytest.mark.parametrize("method, kind, tau", [
    ("kd", KLDivergence, 4.0), ("kdt2.5", KLDivergence, 2.5), ("dist", DIST, 1.0), ("dist_t3", DIST, 3.0)])
def test_the_methods_losses_and_temperatures(method, kind, tau):
    loss = distillation_loss(method)
    assert type(loss) is kind and loss.tau == tau
    assert kind is KLDivergence or (loss.beta, loss.gamma) == (1.0, 1.0)


@pytest.mark.parametrize("method, message", [
    ("kdx", r"^--kd kdx: unknown distillation method; give kd, kdt<tau> \(e\.g\. kdt4\), dist or dist_t<tau>$"),
    ("kdt0", r"^--kd kdt0: the temperature after 'kdt' must be a positive number \(e\.g\. kdt4\)$"),
    ("dist_tx", r"^--kd dist_tx: the temperature after 'dist_t' must be a positive number"),
    ("mse", r"^--kd mse: the original's feature distillation \(it hooks CNN modules named in its KD_MODULES table: "
            r"ResNets, MobileNets, Swins\) is not part of this code; give a logit method: kd, kdt<tau>"),
    ("diffkd", r"^--kd diffkd: the original's feature distillation")])
def test_unknown_and_feature_methods_are_refused(method, message):
    with pytest.raises(ConfigError, match=message):
        distillation_loss(method)


def test_the_loss_weights_and_the_teacher_in_eval_mode_without_gradients():
    teacher = nn.Sequential(nn.Dropout(0.5), nn.Linear(5, 5))
    distillation = Distillation(teacher, "kdt1", ori_loss_weight=0.25, kd_loss_weight=3.0)
    images = torch.randn(4, 5, requires_grad=True)
    teacher.train()   # as a training loop might; the teacher's forward is in eval mode all the same
    logits = distillation.teacher_logits(images)
    assert torch.equal(logits, teacher[1](images).detach()) and not logits.requires_grad
    assert not any(p.requires_grad for p in teacher.parameters())
    student, target_loss = torch.randn(4, 5), torch.tensor(2.0)
    expected = 0.25 * 2.0 + 3.0 * KLDivergence(1.0)(student, logits)
    assert torch.allclose(distillation.loss(target_loss, student, logits), expected, rtol=0, atol=0)


def _run(folder_tree, out, experiment, *argv):
    train(parse_args([*FROZEN, "--data-path", folder_tree, "--output", str(out), "--experiment", experiment, *argv]))
    return float(rows(os.path.join(out, experiment, "metrics.csv"))[1][1])   # the epoch's train_loss


def _logs(folder):
    """The text of the log files of the run in `folder`."""
    return "".join((folder / name).read_text() for name in sorted(os.listdir(folder)) if name.startswith("log_"))


def test_a_distilled_runs_loss_is_the_weighted_sum_and_the_teacher_sees_the_mixed_batch(folder_tree, tmp_path):
    """With the weights frozen (LR 0) and the same batches, mixup draws and augmentations in every run: the loss of
    0.5 x the run's loss + 2 x DIST is 0.5 x that of the run without a teacher + 2 x that of DIST alone; a teacher of
    the student's own weights gives a KL divergence of 0, so it saw the very images the student saw, mixed. The
    run's args.yaml reruns it; a resume with another loss weight uses it and says so, as for any other flag."""
    out = tmp_path / "out"
    plain = _run(folder_tree, out, "plain")
    initial = str(out / "plain" / "last.pth.tar")   # the student's initial weights (LR 0)
    alone = _run(folder_tree, out, "self", "--kd", "kd", *TEACHER, "--teacher-ckpt", initial, "--ori-loss-weight", "0")
    assert alone == pytest.approx(0.0, abs=1e-6)
    other = torch.load(initial, map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    other["model"] = {key: value + 0.3 * torch.randn_like(value) for key, value in other["model"].items()}
    atomic_save(other, str(tmp_path / "teacher.pth.tar"))
    kd_args = ["--kd", "dist_t2", *TEACHER, "--teacher-ckpt", str(tmp_path / "teacher.pth.tar")]
    kd_alone = _run(folder_tree, out, "kd", *kd_args, "--ori-loss-weight", "0")
    weighted = _run(folder_tree, out, "weighted", *kd_args, "--ori-loss-weight", "0.5", "--kd-loss-weight", "2")
    assert kd_alone > 0.01
    assert weighted == pytest.approx(0.5 * plain + 2 * kd_alone, rel=1e-5)
    saved = torch.load(out / "weighted" / "last.pth.tar", map_location="cpu", weights_only=True)
    assert list(saved["model"]) == list(other["model"])   # the student's weights alone: no teacher in the checkpoint
    assert not any("teacher" in key for key in saved)
    run_config = out / "weighted" / "args.yaml"
    recorded = yaml.safe_load(run_config.read_text())
    assert {key: recorded[key] for key in ("kd", "teacher_model", "teacher_ckpt", "teacher_pretrained",
                                           "ori_loss_weight", "kd_loss_weight")} == {
        "kd": "dist_t2", "teacher_model": "vit_tiny_patch16_224", "teacher_ckpt": str(tmp_path / "teacher.pth.tar"),
        "teacher_pretrained": True, "ori_loss_weight": 0.5, "kd_loss_weight": 2.0}
    again = parse_args(["-c", str(run_config)])
    assert (again.kd, again.teacher_ckpt, again.ori_loss_weight, again.kd_loss_weight) == (
        "dist_t2", str(tmp_path / "teacher.pth.tar"), 0.5, 2.0)
    train(parse_args(["-c", str(run_config), "--resume", "auto", "--epochs", "2", "--kd-loss-weight", "3"]))
    logs = "".join((out / "weighted" / name).read_text() for name in os.listdir(out / "weighted")
                   if name.startswith("log_"))
    assert "--kd-loss-weight changed on resume: 2.0 -> 3.0 (the new value is used)" in logs
    assert logs.count("Top-1 accuracy of the teacher: ") == 2   # validated at each start, as the original does


def test_a_resume_that_switches_distillation_on_or_off_says_so_in_one_line(folder_tree, tmp_path):
    """A distilled run resumed without the distillation flags, and a plain run resumed with them: one line says the
    run goes on without (with) its teacher, where each teacher flag and loss weight had its own line with an empty
    value, or a weight that is not used."""
    _run(folder_tree, tmp_path, "plain")
    teacher = tmp_path / "teacher.pth.tar"
    shutil.copy(tmp_path / "plain" / "last.pth.tar", teacher)
    kd = ["--kd", "kdt2", *TEACHER, "--teacher-ckpt", str(teacher), "--kd-loss-weight", "2"]
    _run(folder_tree, tmp_path, "kd", *kd)
    _run(folder_tree, tmp_path, "kd", "--resume", "auto", "--epochs", "2")
    _run(folder_tree, tmp_path, "plain", "--resume", "auto", "--epochs", "2", *kd)

    def changes(experiment):
        return [line.split(" INFO ", 1)[1] for line in _logs(tmp_path / experiment).splitlines()
                if "changed on resume" in line]

    epochs = "--epochs changed on resume: 1 -> 2 (the new value is used)"
    assert changes("kd") == [epochs, f"--kd changed on resume: kdt2 -> off (the run goes on without distillation, on "
                                     f"its own loss alone; the teacher vit_tiny_patch16_224 of {teacher} is not used)"]
    assert changes("plain") == [epochs, f"--kd changed on resume: off -> kdt2 (the run goes on distilled from the "
                                        f"teacher vit_tiny_patch16_224 of {teacher})"]


@pytest.mark.parametrize("argv, message", [
    (["--kd", "kdt4", *TEACHER], r"^--kd kdt4: give the teacher's weights with --teacher-ckpt FILE \(a checkpoint of "
                                 r"vit_tiny_patch16_224, e\.g\. a run's best\.pth\.tar\); --teacher-pretrained would "
                                 r"download its weights, and nothing is downloaded here$"),
    (["--kd", "kd"], r"^--kd kd distills from a teacher: give --teacher-model NAME and --teacher-ckpt FILE$"),
    (["--kd", "kd", "--teacher-model", "vit_tiniest", "--teacher-ckpt", "t.pth"], r"^--teacher-model: unknown model "),
    (["--kd", "mse", *TEACHER], r"^--kd mse: the original's feature distillation"),
    (["--kd", "kdx", *TEACHER], r"^--kd kdx: unknown distillation method"),
    (["--kd", "kd", *TEACHER, "--teacher-ckpt", "t.pth", "--teacher-model-kwargs", "deph=2"],
     r"^--teacher-model-kwargs: model vit_tiny_patch16_224 does not take 'deph'; did you mean depth\?$"),
    (["--kd", "kd", *TEACHER, "--teacher-ckpt", "t.pth", "--teacher-model-kwargs", "img_size=32"],
     r"^--teacher-model-kwargs img_size: the teacher is built for --img-size, as the student, whose images it sees "
     r"and whose logits it teaches: leave img_size out$"),
    (["--kd", "kd", *TEACHER, "--teacher-ckpt", "t.pth", "--teacher-model-kwargs", "num_classes=5"],
     r"^--teacher-model-kwargs num_classes: the teacher is built for the run's classes, as the student, whose images "
     r"it sees and whose logits it teaches: leave num_classes out$")])
def test_refused_before_the_run_starts(folder_tree, tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message):
        train(parse_args([*FROZEN, "--data-path", folder_tree, "--output", str(tmp_path), *argv]))
    assert not os.path.exists(tmp_path / "exp")


def test_overwrite_refuses_to_delete_the_teacher_checkpoint_in_the_run_folder(folder_tree, tmp_path):
    """A teacher copied into the folder that `--overwrite` empties (a checkpoint file the run itself never writes)
    would be deleted once loaded, and args.yaml would then name a file that is gone."""
    _run(folder_tree, tmp_path, "exp")
    teacher = tmp_path / "exp" / "teacher.pth.tar"
    shutil.copy(tmp_path / "exp" / "best.pth.tar", teacher)
    before = teacher.read_bytes()
    with pytest.raises(ConfigError, match=rf"^--overwrite would delete --teacher-ckpt {teacher}, which lies in the run "
                                          rf"folder {tmp_path / 'exp'}: move it out of the folder first"):
        _run(folder_tree, tmp_path, "exp", "--overwrite", "--kd", "kd", *TEACHER, "--teacher-ckpt", str(teacher))
    assert teacher.read_bytes() == before


def test_a_teacher_file_that_its_own_run_replaces_or_deletes_is_refused(folder_tree, tmp_path):
    """The run's last.pth.tar, best.pth.tar, a checkpoint-N.pth.tar (or a link to one) as the teacher of the run in
    that folder: loaded at the start, replaced or deleted later, so that a resume from args.yaml would load another
    teacher, or none; refused before anything is written. A copy of it in the folder, which the run never touches,
    teaches the resumed run."""
    _run(folder_tree, tmp_path, "exp")
    folder = tmp_path / "exp"
    (tmp_path / "link.pth.tar").symlink_to(folder / "best.pth.tar")
    files = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    resume = [*FROZEN, "--data-path", folder_tree, "--output", str(tmp_path), "--experiment", "exp", "--resume", "auto",
              "--epochs", "2", "--kd", "kd", *TEACHER, "--teacher-ckpt"]
    for teacher, name in ((folder / "last.pth.tar", "last.pth.tar"), (folder / "best.pth.tar", "best.pth.tar"),
                          (folder / "checkpoint-0.pth.tar", "checkpoint-0.pth.tar"),
                          (tmp_path / "link.pth.tar", "best.pth.tar")):
        with pytest.raises(ConfigError, match=rf"^--teacher-ckpt {re.escape(str(teacher))} is the {name} of this "
                                              rf"run's folder {re.escape(str(folder))}, which the run replaces or "
                                              rf"deletes as it trains \(a resume would load another teacher, or "
                                              rf"none\): copy it out of the run folder and give the copy$"):
            train(parse_args([*resume, str(teacher)]))
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == files
    shutil.copy(folder / "best.pth.tar", folder / "teacher.pth.tar")
    train(parse_args([*resume, str(folder / "teacher.pth.tar")]))
    assert f"Distillation --kd kd: teacher vit_tiny_patch16_224 from {folder / 'teacher.pth.tar'}, " in _logs(folder)


def test_the_files_a_run_replaces_are_told_by_name_however_its_folder_is_named(tmp_path, monkeypatch):
    """Its last.pth.tar, best.pth.tar, checkpoint-<epoch>.pth.tar and the temporary files of its writes, with the run
    folder named relative to the working folder, through a link or absolute; not files whose names only start or
    end alike, which the run never touches."""
    from classification.engine.experiment import replaced_run_file

    folder = tmp_path / "exp"
    folder.mkdir()
    (tmp_path / "linked").symlink_to(folder)
    monkeypatch.chdir(tmp_path)
    replaced = ["last.pth.tar", "best.pth.tar", "checkpoint-12.pth.tar", ".tmp-last.pth.tar"]
    kept = ["teacher.pth.tar", "checkpoint-best.pth.tar", "checkpoint-1.pth.tar.bak", "my-best.pth.tar"]
    for name in replaced + kept:
        (folder / name).write_bytes(b"")
    for run_folder in ("exp", "linked", str(folder)):
        assert [replaced_run_file(os.path.join("exp", name), run_folder) for name in replaced + kept] == [
            *replaced, None, None, None, None], run_folder


def test_a_teacher_trained_on_other_class_folders_is_refused(folder_tree, tmp_path):
    """A teacher of as many classes, trained on other class folders (ant cat dog, the run's cat dog eel): its logits
    fit the head and would stand for other classes."""
    other = tmp_path / "other_classes"
    make_folder_tree(str(other), classes=("ant", "cat", "dog"))
    train(parse_args([*FROZEN, "--data-path", str(other), "--output", str(tmp_path), "--experiment", "teacher"]))
    teacher = tmp_path / "teacher" / "last.pth.tar"
    with pytest.raises(CheckpointError, match=rf"^--teacher-ckpt {teacher} was trained on other class folders than "
                                              rf"this run's data \(added \['eel'\], removed \['ant'\]\): its "
                                              rf"logits would stand for other classes; give a teacher trained on "
                                              rf"these classes$"):
        _run(folder_tree, tmp_path, "student", "--kd", "kd", *TEACHER, "--teacher-ckpt", str(teacher))


def test_a_teacher_of_another_normalization_is_named_in_a_warning(folder_tree, tmp_path):
    """A teacher trained on images normalized otherwise (--image-mean 0.5 0.5 0.5 --image-std 0.25 0.25 0.25, the
    run's ImageNet defaults) sees the run's images as they are: the run says so."""
    _run(folder_tree, tmp_path, "teacher", "--image-mean", "0.5", "0.5", "0.5", "--image-std", "0.25", "0.25", "0.25")
    teacher = tmp_path / "teacher" / "last.pth.tar"
    _run(folder_tree, tmp_path, "student", "--kd", "kd", *TEACHER, "--teacher-ckpt", str(teacher))
    logs = _logs(tmp_path / "student")
    assert (f"--teacher-ckpt {teacher}: its run normalized the images with --image-mean [0.5, 0.5, 0.5] --image-std "
            f"[0.25, 0.25, 0.25], this run with [0.485, 0.456, 0.406] [0.229, 0.224, 0.225]: the teacher sees this "
            f"run's images") in logs
    student = tmp_path / "student" / "last.pth.tar"
    _run(folder_tree, tmp_path, "alike", "--kd", "kd", *TEACHER, "--teacher-ckpt", str(student))
    assert "normalized" not in _logs(tmp_path / "alike")


def test_an_rgb_teacher_of_a_gray_student_is_refused_saying_which_teacher_fits(folder_tree, tmp_path):
    _run(folder_tree, tmp_path, "teacher")
    teacher = tmp_path / "teacher" / "last.pth.tar"
    with pytest.raises(ConfigError, match=rf"^--teacher-ckpt {teacher} holds a teacher of 3-channel \(RGB\) images, "
                                          rf"the run's model takes 1-channel \(gray\) ones, which the teacher sees: "
                                          rf"give a teacher trained on 1-channel \(gray\) images \(model_kwargs "
                                          rf"in_chans=1\)$"):
        _run(folder_tree, tmp_path, "gray", "--model-kwargs", *TINY_MODEL[3:TINY_MODEL.index("--img-size")],
             "in_chans=1", "--kd", "kd", *TEACHER, "--teacher-ckpt", str(teacher))


@pytest.mark.parametrize("argv, message", [
    ([*TEACHER], r"^--teacher-model vit_tiny_patch16_224: distillation is off without --kd; give --kd kd, kdt<tau> "
                 r"\(e\.g\. kdt4\), dist or dist_t<tau>, or drop it$"),
    (["--teacher-ckpt", "t.pth", "--kd-loss-weight", "2"], r"^--teacher-ckpt t\.pth, --kd-loss-weight 2\.0: "
                                                           r"distillation is off without --kd; .*, or drop them$"),
    (["--ori-loss-weight", "0.5"], r"^--ori-loss-weight 0\.5: distillation is off without --kd"),
    (["--teacher-model-kwargs", "depth=2", "qkv_bias=false"],
     r"^--teacher-model-kwargs depth=2 qkv_bias=False: distillation is off without --kd; .*, or drop it$")])
def test_teacher_flags_and_loss_weights_without_kd_are_refused(folder_tree, tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message):
        train(parse_args([*FROZEN, "--data-path", folder_tree, "--output", str(tmp_path), *argv]))
    assert not os.path.exists(tmp_path / "exp")


def test_a_teacher_checkpoint_that_does_not_fit_is_one_line(folder_tree, tmp_path):
    with pytest.raises(CheckpointError, match=rf"^--teacher-ckpt: checkpoint not found: {tmp_path / 'gone.pth'}$"):
        train(parse_args([*FROZEN, "--data-path", folder_tree, "--output", str(tmp_path), "--kd", "kd", *TEACHER,
                          "--teacher-ckpt", str(tmp_path / "gone.pth")]))
    weights = {"head.weight": torch.zeros(3, 8), "head.bias": torch.zeros(3)}
    atomic_save({"state_dict": weights}, str(tmp_path / "other.pth"))
    with pytest.raises(CheckpointError, match=r"^--teacher-ckpt: .*other\.pth does not fit this model \(another "
                                              r"model\?\): missing .*\(the teacher is --teacher-model "
                                              r"vit_tiny_patch16_224, built for 3 classes; the file records no "
                                              r"model_kwargs: weights of another size of it need those they were "
                                              r"trained with, as --teacher-model-kwargs KEY=VALUE\)$"):
        train(parse_args([*FROZEN, "--data-path", folder_tree, "--output", str(tmp_path), "--kd", "kd", *TEACHER,
                          "--teacher-ckpt", str(tmp_path / "other.pth")]))
    atomic_save({"model": weights, "model_name": "resnet18"}, str(tmp_path / "resnet.pth"))
    with pytest.raises(CheckpointError, match=r"resnet\.pth is a checkpoint of resnet18, not of the teacher "
                                              r"vit_tiny_patch16_224: give --teacher-model resnet18$"):
        train(parse_args([*FROZEN, "--data-path", folder_tree, "--output", str(tmp_path), "--kd", "kd", *TEACHER,
                          "--teacher-ckpt", str(tmp_path / "resnet.pth")]))


def test_a_teacher_is_built_without_the_recorded_config_keys_its_model_does_not_take(folder_tree, tmp_path):
    """A teacher trained from a config written for another family (configs/quickstart.yaml's patch_size for a
    resnet18): its run dropped those model_kwargs, and so does the teacher's build; the teacher then computes what
    the saved model computes."""
    saved = timm.create_model("resnet18", num_classes=3).eval()
    atomic_save({"model": saved.state_dict(), "model_name": "resnet18", "directions": None,
                 "config": {"model_kwargs": {"patch_size": 4, "dims": [8, 16]}}}, str(tmp_path / "resnet.pth"))
    cfg = parse_args([*FROZEN, "--data-path", folder_tree, "--kd", "kd", "--teacher-model", "resnet18",
                      "--teacher-ckpt", str(tmp_path / "resnet.pth")])
    cfg.num_classes = 3
    distillation = build_distillation(cfg, torch.device("cpu"), logging.getLogger("test"))
    images = torch.randn(2, 3, 16, 16)
    assert torch.equal(distillation.teacher_logits(images), saved(images).detach())


def test_a_supernet_teacher_is_built_with_the_candidates_its_file_records(folder_tree, tmp_path):
    """A search supernet's file that records its candidates but not the model_kwargs that chose them: the teacher
    searches over the same candidates (the default eight would not fit, or would compute something else)."""
    saved = timm.create_model("local_vim_tiny_search", img_size=16, num_classes=3, depth=2, embed_dim=16,
                              patch_size=8, candidates=["h", "v_flip"]).eval()
    path = str(tmp_path / "supernet.pth")
    record = {"model_name": "local_vim_tiny_search", "directions": None, "candidates": ["h", "v_flip"],
              "config": {"model_kwargs": {"depth": 2, "embed_dim": 16, "patch_size": 8}}}
    atomic_save({"model": saved.state_dict(), **record}, path)
    cfg = parse_args([*FROZEN, "--data-path", folder_tree, "--kd", "kd", "--teacher-model", "local_vim_tiny_search",
                      "--teacher-ckpt", path])
    cfg.num_classes = 3
    distillation = build_distillation(cfg, torch.device("cpu"), logging.getLogger("test"))
    images = torch.randn(2, 3, 16, 16)
    assert list(distillation.teacher.candidates) == ["h", "v_flip"]
    assert torch.equal(distillation.teacher_logits(images), saved(images).detach())


def test_teacher_model_kwargs_are_read_and_recorded_as_model_kwargs(tmp_path, capsys):
    """--teacher-model-kwargs reads its values as --model-kwargs does (YAML scalars), args.yaml records them for -c,
    and the command line updates a config's dict key by key; a config's value that is no mapping, and a value that
    is no YAML, are refused as for model_kwargs."""
    items = ["lr=0.001", "flag=false", "depths=[1, 2]", "name=20240501", "text=abc"]
    cfg = parse_args(["--model-kwargs", *items, "--teacher-model-kwargs", *items])
    expected = {"lr": 0.001, "flag": False, "depths": [1, 2], "name": 20240501, "text": "abc"}
    assert cfg.teacher_model_kwargs == cfg.model_kwargs == expected
    save_config(cfg, str(tmp_path / "args.yaml"))
    assert parse_args(["-c", str(tmp_path / "args.yaml")]).teacher_model_kwargs == expected
    again = parse_args(["-c", str(tmp_path / "args.yaml"), "--teacher-model-kwargs", "flag=true"])
    assert again.teacher_model_kwargs == {**expected, "flag": True} and again.model_kwargs == expected
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher_model_kwargs: [1, 2]\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: key 'teacher_model_kwargs': teacher_model_kwargs "
                                          rf"must be a mapping, got \[1, 2\]$"):
        parse_args(["-c", str(bad)])
    with pytest.raises(SystemExit):
        parse_args(["--teacher-model-kwargs", "depths=[1"])
    assert capsys.readouterr().err.endswith(
        "error: --teacher-model-kwargs depths=[1: the value is not YAML (expected ',' or ']', but got '<stream end>'), "
        "as a config file's teacher_model_kwargs value must be (e.g. depths=[1, 2])\n")


def test_a_teacher_whose_file_records_no_model_kwargs_is_built_with_teacher_model_kwargs(folder_tree, tmp_path):
    """The weights of a ViT of depth 2 saved by hand (the file records nothing of its run) do not fit the default
    teacher (depth 12): the refusal names --teacher-model-kwargs. With depth=2 the teacher loads, the build line
    says how it was built, args.yaml records it, and `-c args.yaml --resume` builds the same teacher again."""
    saved = timm.create_model("vit_tiny_patch16_224", img_size=16, num_classes=3, depth=2)
    path = tmp_path / "depth2.pth"
    torch.save(saved.state_dict(), path)
    kd = ["--kd", "kd", *TEACHER, "--teacher-ckpt", str(path)]
    refusal = (rf"^--teacher-ckpt: {re.escape(str(path))} does not fit this model \(another model\?\): missing "
               rf"\(120\): blocks\.2\.norm1\.weight, .* \(the teacher is --teacher-model vit_tiny_patch16_224, built "
               rf"for 3 classes; the file records no model_kwargs: weights of another size of it need those they were "
               rf"trained with, as --teacher-model-kwargs KEY=VALUE\)$")
    with pytest.raises(CheckpointError, match=refusal):
        _run(folder_tree, tmp_path, "kd", *kd)
    _run(folder_tree, tmp_path, "kd", *kd, "--teacher-model-kwargs", "depth=2", "--overwrite")
    line = (f"Distillation --kd kd: teacher vit_tiny_patch16_224 from {path} with --teacher-model-kwargs depth=2, "
            f"params: 1.039 M; loss = 1.0 x the run's loss + 1.0 x the distillation loss")
    assert _logs(tmp_path / "kd").count(line) == 1
    run_config = tmp_path / "kd" / "args.yaml"
    assert yaml.safe_load(run_config.read_text())["teacher_model_kwargs"] == {"depth": 2}
    train(parse_args(["-c", str(run_config), "--resume", "auto", "--epochs", "2"]))
    logs = _logs(tmp_path / "kd")
    assert logs.count(line) == 2 and "--teacher-model-kwargs changed" not in logs


def test_teacher_model_kwargs_are_used_over_the_files_record_and_the_build_line_says_so(folder_tree, tmp_path, caplog):
    """A file whose recorded model_kwargs (depth=3) do not fit its weights (of depth 2): refused as recorded; with
    --teacher-model-kwargs depth=2 the teacher computes the saved model's logits, and the build line names the
    recorded value it replaced (not qkv_bias, given as recorded)."""
    saved = timm.create_model("vit_tiny_patch16_224", img_size=16, num_classes=3, depth=2).eval()
    path = str(tmp_path / "teacher.pth")
    atomic_save({"model": saved.state_dict(), "model_name": "vit_tiny_patch16_224",
                 "config": {"model_kwargs": {"depth": 3, "qkv_bias": True}}}, path)
    argv = [*FROZEN, "--data-path", folder_tree, "--kd", "kd", *TEACHER, "--teacher-ckpt", path]
    cfg = parse_args(argv)
    cfg.num_classes = 3
    with pytest.raises(CheckpointError, match=r"teacher\.pth does not fit this model \(another model\?\): missing "
                                              r"\(12\): blocks\.2\.norm1\.weight, .*built for 3 classes\)$"):
        build_distillation(cfg, torch.device("cpu"), logging.getLogger("test"))
    cfg = parse_args([*argv, "--teacher-model-kwargs", "depth=4"])
    cfg.num_classes = 3
    with pytest.raises(CheckpointError, match=r"missing \(24\): blocks\.2\.norm1\.weight, .*built for 3 classes with "
                                              r"--teacher-model-kwargs depth=4 \(over depth=3, which the file "
                                              r"records\)\)$"):
        build_distillation(cfg, torch.device("cpu"), logging.getLogger("test"))
    cfg = parse_args([*argv, "--teacher-model-kwargs", "depth=2", "qkv_bias=true"])
    cfg.num_classes = 3
    with caplog.at_level(logging.INFO, logger="test"):
        distillation = build_distillation(cfg, torch.device("cpu"), logging.getLogger("test"))
    images = torch.randn(2, 3, 16, 16)
    assert torch.equal(distillation.teacher_logits(images), saved(images).detach())
    assert (f"Distillation --kd kd: teacher vit_tiny_patch16_224 from {path} with --teacher-model-kwargs depth=2 "
            f"qkv_bias=True (over depth=3, which the file records), params: 1.039 M;") in caplog.text


VIM_KWARGS = {"embed_dim": 16, "patch_size": 8}


@pytest.mark.parametrize("model, record, teacher, message", [
    ("local_vim_tiny", {"directions": None}, "local_vim_tiny",
     r"holds a search supernet \(it records no fixed scan directions\), --teacher-model local_vim_tiny has fixed "
     r"ones: give --teacher-model local_vim_tiny_search$"),
    ("local_vim_tiny", {}, "local_vim_tiny_search",
     r"holds a model of fixed scan directions, --teacher-model local_vim_tiny_search is a search supernet: give "
     r"--teacher-model local_vim_tiny$"),
    ("local_vim_tiny_wo_search", {"directions": None}, "local_vim_tiny_wo_search",
     r"records other scan directions than --teacher-model local_vim_tiny_wo_search has \(a search supernet vs this "
     r"model's fixed table\), built as the file records: give the --teacher-model it is a checkpoint of$"),
    ("local_vim_tiny", {"config": {"model_kwargs": {**VIM_KWARGS, "depth": 3}}}, "local_vim_tiny",
     r"--teacher-model local_vim_tiny cannot be built as the file records its run built it \(embed_dim=16 "
     r"patch_size=8 depth=3 20 layers of directions\): directions: has 20 layers, but the model has 3 layers; give "
     r"the model_kwargs its run was trained with as --teacher-model-kwargs KEY=VALUE \.\.\., or a checkpoint its "
     r"run saved \(e\.g\. best\.pth\.tar\) or tools/convert_ckpt\.py's file of one, which records them$")])
def test_a_teacher_record_of_other_scan_directions_names_the_teacher_model(folder_tree, tmp_path, model, record,
                                                                           teacher, message):
    """A teacher checkpoint saved without its model's name, whose directions record does not fit --teacher-model:
    the advice names the teacher's flag (the student's --directions would change nothing), and a record that cannot
    build the teacher is one line, not a traceback."""
    built = timm.create_model(model, img_size=16, num_classes=3, **VIM_KWARGS)
    ckpt = {"model": built.state_dict(), "directions": scan_directions(built), "config": {"model_kwargs": VIM_KWARGS},
            **record}
    atomic_save(ckpt, str(tmp_path / "teacher.pth"))
    with pytest.raises(CheckpointError, match=rf"^--teacher-ckpt {tmp_path / 'teacher.pth'}:? {message}"):
        train(parse_args([*FROZEN, "--data-path", folder_tree, "--output", str(tmp_path), "--kd", "kd",
                          "--teacher-model", teacher, "--teacher-ckpt", str(tmp_path / "teacher.pth")]))


def test_a_teacher_that_teacher_model_kwargs_cannot_build_is_one_line_naming_them(folder_tree, tmp_path):
    """--teacher-model-kwargs depth=4 over a record of 20 layers of scan directions: the line says the teacher was
    built with them over the record, and lists every keyword it was built with."""
    built = timm.create_model("local_vim_tiny", img_size=16, num_classes=3, **VIM_KWARGS)
    path = tmp_path / "teacher.pth"
    atomic_save({"model": built.state_dict(), "directions": scan_directions(built),
                 "config": {"model_kwargs": VIM_KWARGS}}, str(path))
    message = (rf"^--teacher-ckpt {re.escape(str(path))}: --teacher-model local_vim_tiny cannot be built with "
               rf"--teacher-model-kwargs over what the file records \(embed_dim=16 patch_size=8 20 layers of "
               rf"directions depth=4\): directions: has 20 layers, but the model has 4 layers; give ")
    with pytest.raises(CheckpointError, match=message):
        train(parse_args([*FROZEN, "--data-path", folder_tree, "--output", str(tmp_path), "--kd", "kd",
                          "--teacher-model", "local_vim_tiny", "--teacher-ckpt", str(path), "--teacher-model-kwargs",
                          "depth=4"]))


def test_feature_distillation_flags_are_refused_by_name(tmp_path, capsys):
    reason = ("feature distillation (it hooks CNN modules named in its KD_MODULES table: ResNets, "
              "MobileNets, Swins)")
    for flag, value in (("--teacher-module", "layer4"), ("--student-module", "layer4"), ("--kd-loss-kwargs", "tau=1")):
        with pytest.raises(SystemExit) as exit_info:
            parse_args([flag, value])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.endswith(f"error: {flag}: the original's {reason} is not part of this code: "
                                                f"distill the logits with --kd\n")
    config = tmp_path / "feature.yaml"
    config.write_text(yaml.safe_dump({"kd": "kd", "student_module": "layer4"}))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: parse_args(["-c", str(config)]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"error: {config}: key 'student_module' is 'layer4': the original's {reason} "
                                       f"is not part of this code (remove the key, or give it '')\n")


def test_a_stop_signal_during_the_teachers_validation_ends_the_run_in_one_line(folder_tree, tmp_path):
    """SIGTERM at the teacher's first validation batch (the run's first): the run stops as at any other validation,
    saying so in its log and in one line (exit status 143), in a fresh run (nothing to resume) and in a resumed one
    (its last.pth.tar, untouched, continues it)."""
    out = tmp_path / "out"
    _run(folder_tree, out, "plain")
    shutil.copy(out / "plain" / "last.pth.tar", tmp_path / "teacher.pth.tar")   # the run's own would be refused
    teacher = ["--kd", "kd", *TEACHER, "--teacher-ckpt", str(tmp_path / "teacher.pth.tar")]

    def stopped_run(experiment, *argv):
        proc = subprocess.run([sys.executable, SIGNAL_AT_SCRIPT, *FROZEN, "--data-path", folder_tree, "--output",
                               str(out), "--experiment", experiment, *teacher, *argv], capture_output=True, text=True,
                              timeout=300, env={**tool_env(), "SIGNAL_AT": "SIGTERM test 1"})
        return proc, _logs(out / experiment)

    proc, logs = stopped_run("fresh")
    assert proc.returncode == 143 and "Traceback" not in proc.stderr
    assert proc.stderr.endswith("\ninterrupted by SIGTERM; no checkpoint was written yet, nothing to resume\n")
    assert "SIGTERM: stopping the teacher's validation before epoch 0; nothing was trained yet" in logs
    assert not os.path.exists(out / "fresh" / "last.pth.tar")
    last = out / "plain" / "last.pth.tar"
    before = last.read_bytes()
    proc, logs = stopped_run("plain", "--resume", str(last), "--epochs", "2")
    assert proc.returncode == 143 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("interrupted by SIGTERM; continue with: ")
    assert proc.stderr.strip().endswith(f"--resume {last}")
    assert (f"SIGTERM: stopping the teacher's validation before epoch 1; nothing was trained since {last}, from "
            f"which --resume continues") in logs
    assert last.read_bytes() == before and len(rows(str(out / "plain" / "metrics.csv"))) == 2
