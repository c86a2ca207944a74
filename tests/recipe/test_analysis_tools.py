"""The analysis tools on a researcher's own searched model and run: tools/flops.py counts the model as trained
(--directions, --model-kwargs), tools/plot_log.py takes a run's folder, tools/convert_ckpt.py refuses a folder as
its output in one line."""
import importlib.util
import os
import runpy
import sys
from pathlib import Path

import pytest
import timm
import torch

import classification  # noqa: F401  (registers the models)
from classification.benchmarks import build_model
from classification.engine.config import ConfigError
from classification.engine.plotting import plot_run
from localmamba_kernel_runtime.backends import forced_backend

REPO = Path(__file__).resolve().parents[2]
SEARCHED = "supernet: local_vim_tiny_search\ntopk: 2\ndirections:\n- [h, w2]\n- [v_flip, w7, w7_flip]\n"


@pytest.fixture(scope="module")
def flops_tool():
    spec = importlib.util.spec_from_file_location("flops_tool", REPO / "tools" / "flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_counts_a_searched_model_built_as_trained(flops_tool, tmp_path, capsys):
    directions = tmp_path / "directions.yaml"
    directions.write_text(SEARCHED)
    assert flops_tool.main(["local_vim_tiny", "--img-size", "16", "--num-classes", "3", "--model-kwargs",
                            "patch_size=4", "embed_dim=16", "depth=2", "--directions", str(directions)]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    model = timm.create_model("local_vim_tiny", img_size=16, patch_size=4, embed_dim=16, depth=2, num_classes=3,
                              directions=str(directions))
    assert [list(d) for d in model.directions] == [["h", "w2"], ["v_flip", "w7", "w7_flip"]]
    assert row[:3] == ["local_vim_tiny", "16", f"{sum(p.numel() for p in model.parameters()):,}"]
    assert row[3] == f"{model.flops((3, 16, 16)) / 1e9:.3f}"


def test_flops_refuses_a_directions_file_of_another_depth_in_one_line(flops_tool, tmp_path, capsys):
    directions = tmp_path / "directions.yaml"
    directions.write_text(SEARCHED)
    assert flops_tool.main(["local_vim_tiny", "--img-size", "16", "--directions", str(directions)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: model local_vim_tiny with directions={directions}: "
                                               f"{directions}: has 2 layers, but the model has 20 layers: build "
                                               f"the model with the 2 layers of the supernet that searched them "
                                               f"(LocalVim: depth=2; LocalVMamba: depths summing to 2)")


def test_build_model_names_the_keyword_a_model_refuses(tmp_path):
    with pytest.raises(ConfigError, match=r"^--model-kwargs: model local_vssm_tiny does not take 'embed_dim'$"):
        build_model("local_vssm_tiny", 32, model_kwargs={"embed_dim": 16})
    with pytest.raises(ConfigError, match=r"^--model-kwargs: model local_vim_tiny does not take 'dpeth'; did you "
                                          r"mean depth\?$"):   # as tools/train.py says it (flops.py, speed_test.py)
        build_model("local_vim_tiny", 32, model_kwargs={"dpeth": 3})
    with pytest.raises(ConfigError, match=r"^model local_vssm_tiny with dims=\[8, 16\] depths=\[1, 1, 1\]: dims "
                                          r"\[8, 16\] and depths \(1, 1, 1\) must have one entry per stage$"):
        build_model("local_vssm_tiny", 32, model_kwargs={"dims": [8, 16], "depths": [1, 1, 1]})
    directions = tmp_path / "directions.yaml"
    directions.write_text(SEARCHED)
    model = build_model("local_vim_tiny", 32, model_kwargs={"img_size": 16, "patch_size": 4, "embed_dim": 16,
                                                            "depth": 2}, directions=str(directions))
    assert model.patch_embed.grid_size == (4, 4) and not model.training        # model_kwargs' img_size wins


def write_run(folder: Path) -> Path:
    folder.mkdir()
    (folder / "metrics.csv").write_text("epoch,train_loss,test_loss,top1,top5\n0,1.2,1.1,40.0,90.0\n"
                                        "1,1.0,0.9,55.0,95.0\n")
    (folder / "lr.csv").write_text("epoch,step,lr\n0,0,0.001\n0,5,0.0009\n1,6,0.0005\n1,11,0.0001\n")
    return folder


def test_plot_log_takes_a_run_folder_and_an_out_folder(tmp_path):
    run = write_run(tmp_path / "run")
    assert plot_run(str(run)) == str(run / "curves.png")
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    figures = tmp_path / "figures"
    figures.mkdir()
    assert plot_run(str(run / "metrics.csv"), str(figures)) == str(figures / "curves.png")
    assert sorted(os.listdir(figures)) == ["curves.png"] and not (tmp_path / "figures.png").exists()


def run_tool(monkeypatch, capsys, script, *argv):
    """Run tools/<script> in this process; returns (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [script, *argv])
    try:
        runpy.run_path(str(REPO / "tools" / script), run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = stop.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_plot_log_tool_on_a_run_folder(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run")
    assert run_tool(monkeypatch, capsys, "plot_log.py", str(run)) == (0, f"wrote {run / 'curves.png'}\n", "")


def test_convert_ckpt_refuses_a_folder_as_its_output_in_one_line(tmp_path, monkeypatch, capsys):
    src = tmp_path / "best.pth.tar"
    torch.save({"model": {"head.weight": torch.ones(2, 2)}, "epoch": 0}, src)
    for extra in ([], ["--overwrite"]):
        status, _, err = run_tool(monkeypatch, capsys, "convert_ckpt.py", str(src), str(tmp_path), *extra)
        assert status == 2
        assert err == f"error: {tmp_path} is a folder: give the output file's path, e.g. {tmp_path / 'released.ckpt'}\n"
    assert sorted(os.listdir(tmp_path)) == ["best.pth.tar"]


def test_convert_ckpt_names_a_released_file_and_the_keys_it_takes(tmp_path, monkeypatch, capsys):
    src, out = tmp_path / "best.pth.tar", tmp_path / "released.ckpt"
    torch.save({"model": {"head.weight": torch.ones(2, 2)}, "ema_model": None, "epoch": 0}, src)
    assert run_tool(monkeypatch, capsys, "convert_ckpt.py", str(src), str(out)) == (
        0, f"wrote the model weights of {src} (1 tensor) to {out}\n", "")
    status, _, err = run_tool(monkeypatch, capsys, "convert_ckpt.py", str(out), str(tmp_path / "again.ckpt"))
    assert status == 2 and err == (f"error: {out} is in the released form already ({{'state_dict': weights}}): it "
                                   f"loads as it is (tools/test.py --resume, --finetune, timm's "
                                   f"pretrained_cfg_overlay)\n")
    status, _, err = run_tool(monkeypatch, capsys, "convert_ckpt.py", str(src), str(tmp_path / "x.ckpt"), "modle")
    assert status == 2 and "invalid choice: 'modle' (choose from" in err and "'ema_model'" in err
    status, _, err = run_tool(monkeypatch, capsys, "convert_ckpt.py", str(src), str(tmp_path / "x.ckpt"), "ema_model")
    assert status == 2 and err == f"error: {src}: holds no EMA weights (its run was trained without --model-ema)\n"
    assert sorted(os.listdir(tmp_path)) == ["best.pth.tar", "released.ckpt"]


def test_convert_ckpt_says_which_weights_it_wrote_wherever_the_file_keeps_them(tmp_path, monkeypatch, capsys):
    """timm's train.py keeps the EMA under 'state_dict_ema': the line said the weights came from the file's
    'ema_model', a key it does not have."""
    src, out = tmp_path / "model_best.pth.tar", tmp_path / "ema.ckpt"
    ema = {"head.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}
    torch.save({"state_dict": {"head.weight": torch.ones(2, 2)}, "state_dict_ema": ema}, src)
    assert run_tool(monkeypatch, capsys, "convert_ckpt.py", str(src), str(out), "ema_model") == (
        0, f"wrote the EMA weights of {src} (2 tensors) to {out}\n", "")


def test_convert_ckpt_notes_a_checkpoint_saved_in_the_middle_of_an_epoch(tmp_path, monkeypatch, capsys):
    """A stopped run's last.pth.tar holds the weights of a part of an epoch: converted without a word, they could pass
    for an epoch's (vis_search_prob.py notes the same)."""
    src, out = tmp_path / "last.pth.tar", tmp_path / "released.ckpt"
    torch.save({"model": {"head.weight": torch.ones(2, 2)}, "epoch": 3, "step": 8, "steps_per_epoch": 44}, src)
    assert run_tool(monkeypatch, capsys, "convert_ckpt.py", str(src), str(out)) == (
        0, f"note: {src} was saved in the middle of epoch 3, after its step 8 of 44: the weights are of a part of that "
           f"epoch\nwrote the model weights of {src} (1 tensor) to {out}\n", "")


def test_convert_ckpt_keeps_the_runs_record_and_reads_a_pickled_file_only_when_trusted(tmp_path, monkeypatch, capsys):
    """The released file holds the weights (prefixes stripped) and the run's record: model name, directions, classes
    and the config entries that rebuild the model, not the rest (learning rate, optimizer). An epoch's last step is no
    partial epoch. A checkpoint that needs pickle (timm's keep an argparse Namespace) is converted with
    --trust-checkpoint only."""
    import argparse

    src, out = tmp_path / "last.pth.tar", tmp_path / "released.ckpt"
    torch.save({"model": {"module.head.weight": torch.ones(2, 2)}, "optimizer": {"state": {}}, "epoch": 3,
                "step": 44, "steps_per_epoch": 44, "model_name": "local_vim_tiny", "directions": [["h", "v"]],
                "classes": ["a", "b"], "config": {"model": "local_vim_tiny", "num_classes": 2, "lr": 0.1}}, src)
    assert run_tool(monkeypatch, capsys, "convert_ckpt.py", str(src), str(out)) == (
        0, f"wrote the model weights of {src} (1 tensor) to {out}\n", "")
    released = torch.load(out, weights_only=True)
    assert list(released) == ["state_dict", "model_name", "directions", "classes", "config"]
    assert list(released["state_dict"]) == ["head.weight"]
    assert torch.equal(released["state_dict"]["head.weight"], torch.ones(2, 2))
    assert (released["model_name"], released["directions"], released["classes"], released["config"]) == (
        "local_vim_tiny", [["h", "v"]], ["a", "b"], {"model": "local_vim_tiny", "num_classes": 2})
    pickled = tmp_path / "timm.pth.tar"
    torch.save({"state_dict": {"head.weight": torch.ones(2, 2)}, "state_dict_ema": {"head.weight": torch.zeros(2, 2)},
                "args": argparse.Namespace(lr=0.1)}, pickled)
    status, _, err = run_tool(monkeypatch, capsys, "convert_ckpt.py", str(pickled), str(tmp_path / "a.ckpt"),
                              "ema_model")
    assert status == 2 and "--trust-checkpoint" in err and not (tmp_path / "a.ckpt").exists()
    assert run_tool(monkeypatch, capsys, "convert_ckpt.py", str(pickled), str(tmp_path / "a.ckpt"), "ema_model",
                    "--trust-checkpoint")[0] == 0
    assert torch.equal(torch.load(tmp_path / "a.ckpt", weights_only=True)["state_dict"]["head.weight"],
                       torch.zeros(2, 2))


def test_debug_shows_the_error_itself_in_plot_log(tmp_path, monkeypatch, capsys):
    """`--debug` (cli.py: every tool's way to the traceback) is a flag of the tool, not an unrecognized argument."""
    missing = str(tmp_path / "metrics.csv")
    assert run_tool(monkeypatch, capsys, "plot_log.py", missing) == (2, "", f"error: file not found: {missing}\n")
    with pytest.raises(FileNotFoundError, match="file not found"):
        run_tool(monkeypatch, capsys, "plot_log.py", missing, "--debug")


def test_an_image_size_a_model_cannot_take_ends_in_one_line(flops_tool, capsys):
    """LocalVMamba needs one whole 4x4 patch: a 2x2 image is refused by name instead of a traceback from the trace."""
    assert flops_tool.main(["local_vssm_tiny", "--img-size", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --img-size 2: model local_vssm_tiny cannot take 2x2 images (LocalVMamba: images must be "
        "(B, C, H, W) with H, W >= 4 (the patch size), got shape (1, 3, 2, 2))")


def test_a_kernel_setting_the_model_cannot_run_is_not_blamed_on_the_image_size(flops_tool, monkeypatch, capsys):
    """A forced backend that cannot run on these inputs (LOCALMAMBA_BACKEND=triton on a CPU) fails the size check's
    forward: the tool says so as tools/train.py does, not that the model cannot take images of that size."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with forced_backend("triton"):
        assert flops_tool.main(["local_vssm_tiny", "--img-size", "32"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: backend 'triton' (forced in Python by force_backend() or forced_backend()) cannot run op "
        "'multi_scan_inner' on cpu inputs: triton kernels need CUDA tensors (or TRITON_INTERPRET=1 with CPU tensors)")
