"""The checkpoint files a user evaluates or converts, beside ours: safetensors weights, files of the weights alone and
timm's training checkpoints, through tools/test.py (`evaluate`) and tools/convert_ckpt.py (`convert_checkpoint`)."""
import pytest
import timm
import torch
from safetensors.torch import save_file

import classification  # noqa: F401  (registers the models)
from classification.common.checkpoint_io import CheckpointError, load_checkpoint
from classification.engine.checkpoint import convert_checkpoint
from classification.engine.config import parse_args
from classification.engine.evaluate import test as evaluate

VIM = dict(depth=2, embed_dim=16, patch_size=4, img_size=16, num_classes=10)
RUN = ["--dataset", "digits", "--model", "local_vim_tiny_wo_search", "--model-kwargs", "depth=2", "embed_dim=16",
       "patch_size=4", "--img-size", "16", "-b", "256", "-j", "0"]


@pytest.fixture(scope="module", autouse=True)
def single_threaded(one_thread):
    """Every test of this file on one compute thread (tests/conftest.py)."""


def _weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("local_vim_tiny_wo_search", **VIM).state_dict()


def _evaluate(path: str, output, *flags: str) -> dict:
    return evaluate(parse_args([*RUN, "--resume", path, "--output", str(output), *flags]))


def test_a_safetensors_file_of_the_weights_is_read_as_the_released_form(tmp_path):
    """timm's format (model.safetensors of the Hugging Face hub, which timm's pretrained_cfg_overlay takes): every
    tool refused it as 'not a PyTorch checkpoint (neither a torch.save archive nor a pickle; it starts with ...)'."""
    weights = _weights(1)
    released, safetensors = str(tmp_path / "released.ckpt"), str(tmp_path / "model.safetensors")
    torch.save({"state_dict": weights}, released)
    save_file(weights, safetensors)
    read = load_checkpoint(safetensors)
    assert read.keys() == weights.keys() and all(torch.equal(read[key], value) for key, value in weights.items())
    assert _evaluate(safetensors, tmp_path / "a") == _evaluate(released, tmp_path / "b")


def test_a_safetensors_file_cut_short_is_named_in_one_line(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_weights(1), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"^cannot read the safetensors file {path}: .*\(cut short"):
        load_checkpoint(str(path))


def test_the_ema_of_a_timm_training_checkpoint_is_its_state_dict_ema(tmp_path):
    """timm's train.py keeps its EMA under 'state_dict_ema' (the model under 'state_dict'): --model-ema said the file
    held no 'ema_model' weights, and convert_ckpt.py ... ema_model called it 'in the released form already'."""
    model, ema = _weights(1), _weights(2)
    timm_run, released = str(tmp_path / "model_best.pth.tar"), str(tmp_path / "ema.ckpt")
    torch.save({"epoch": 7, "arch": "local_vim_tiny_wo_search", "state_dict": model, "state_dict_ema": ema}, timm_run)
    torch.save({"state_dict": ema}, released)
    assert _evaluate(timm_run, tmp_path / "a", "--model-ema") == _evaluate(released, tmp_path / "b")
    converted = str(tmp_path / "converted.ckpt")
    assert convert_checkpoint(timm_run, converted, "ema_model") == (len(ema), None)
    written = torch.load(converted, weights_only=True)["state_dict"]
    assert all(torch.equal(written[key], value) for key, value in ema.items())


@pytest.mark.parametrize("form", ["pth", "safetensors"])
def test_a_file_of_the_weights_alone_converts_to_the_released_form(form, tmp_path):
    """`torch.save(model.state_dict())` or a safetensors file: convert_ckpt.py said it held no 'model' weights,
    listing the weights' own names as the file's keys."""
    weights = {f"module.{key}": value for key, value in _weights(1).items()}
    src, dst = str(tmp_path / f"weights.{form}"), str(tmp_path / "released.ckpt")
    torch.save(weights, src) if form == "pth" else save_file(weights, src)
    assert convert_checkpoint(src, dst) == (len(weights), None)
    written = torch.load(dst, weights_only=True)
    assert list(written) == ["state_dict"]
    assert all(torch.equal(written["state_dict"][key], value) for key, value in _weights(1).items())
    with pytest.raises(CheckpointError, match=r"no 'ema_model' weights, nor timm's 'state_dict_ema' / 'model_ema'"):
        convert_checkpoint(src, str(tmp_path / "ema.ckpt"), "ema_model")
