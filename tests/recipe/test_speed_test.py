"""tools/speed_test.py on a tiny CPU run prints the model's own parameter and FLOP counts, then a throughput."""
import logging
import os
import re
import runpy
import subprocess
import sys

import pytest
import timm
import torch

from classification.engine.model_builder import create_model_at_size

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def speed_test_log(config, *flags: str) -> str:
    """stdout and stderr of tools/speed_test.py -c CONFIG FLAGS on the CPU with one thread, which must succeed."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "speed_test.py"), "-c", str(config), *flags,
                           "--device", "cpu", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def logged_counts(log: str, model: str) -> tuple[int, int]:
    """The parameter and FLOP counts speed_test logged for `model`."""
    return tuple(map(int, re.search(rf"Model {model} created, params: (\d+), FLOPs: (\d+)", log).groups()))


def test_speed_test_prints_params_flops_and_throughput(tmp_path):
    config = tmp_path / "speed.yaml"
    config.write_text("model: timm_local_vim_tiny_wo_search\nmodel_kwargs: {embed_dim: 16, depth: 2}\nbatch_size: 3\n"
                      "img_size: 224\n")
    log = speed_test_log(config, "--img-size", "32", "--iters", "2", "--warmup-iters", "1")
    params, flops = logged_counts(log, "local_vim_tiny_wo_search")
    model = create_model_at_size("local_vim_tiny_wo_search", 32, embed_dim=16, depth=2)
    assert params == sum(p.numel() for p in model.parameters())
    assert flops == int(model.flops((3, 32, 32)))  # the original's get_flops: the model's own flops()
    assert "Done, n_iters: 2, batch size: 3, image shape: (3, 32, 32), device: cpu" in log  # -c, then the CLI wins
    assert "total samples: 6," in log
    assert float(re.search(r"throughput: ([\d.]+) samples/second", log)[1]) > 0


@pytest.mark.parametrize("model, kwargs", [("local_vim_tiny_wo_search", ["embed_dim=16", "depth=2"]),
                                           ("deit_tiny_patch16_224", ["embed_dim=16", "depth=1", "num_heads=1"])])
def test_an_img_size_in_model_kwargs_is_the_size_counted_and_timed(tmp_path, model, kwargs):
    """The model is built for model_kwargs' img_size and its FLOPs counted there: the images are of that size too (they
    were 224 pixels: a LocalVim was timed at another size than counted, a DeiT failed in a traceback)."""
    config = tmp_path / "speed.yaml"
    config.write_text(f"model: {model}\nbatch_size: 1\n")
    size = "[32,32]" if model.startswith("local") else "32"   # LocalVim takes a pair too
    log = speed_test_log(config, "--model-kwargs", f"img_size={size}", *kwargs, "--iters", "1", "--warmup-iters", "0")
    built = create_model_at_size(model, 32, **{k: int(v) for k, v in (kv.split("=") for kv in kwargs)})
    params, flops = logged_counts(log, model)
    assert params == sum(p.numel() for p in built.parameters())
    if hasattr(built, "flops"):
        assert flops == int(built.flops((3, 32, 32)))
    assert "Done, n_iters: 1, batch size: 1, image shape: (3, 32, 32), device: cpu" in log


@pytest.mark.parametrize("options, message", [
    (["--model-kwargs", "img_size=[32,48]"],
     "model_kwargs img_size=[32, 48]: the images timed and counted are square: give one size"),
    (["--model-kwargs", "img_size=-32"], "model_kwargs img_size=-32: an image side must be at least 1 pixel"),
    (["--model-kwargs", "img_size=32", "--img-size", "64"], "--img-size 64 and model_kwargs img_size=32: the model is "
                                                            "built for the images it is timed on: give one size"),
])
def test_an_img_size_the_images_cannot_take_is_refused_in_one_line(monkeypatch, capsys, options, message):
    """A pair ended in a TypeError traceback; an --img-size beside model_kwargs' was dropped without a word."""
    monkeypatch.setattr(sys, "argv", ["speed_test.py", "--model", "local_vim_tiny", *options])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(os.path.join(REPO, "tools", "speed_test.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(f"error: {message}")


def test_speed_test_refuses_an_unknown_device_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["speed_test.py", "--model", "local_vim_tiny", "--device", "foo"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(os.path.join(REPO, "tools", "speed_test.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("--device 'foo' is not one of auto, cpu, cuda, cuda:N")


def test_speed_test_times_the_model_a_run_config_describes(tmp_path):
    """A run's args.yaml (`-c`) gives the model's kwargs, its directions file and class count, as training built it:
    the parameter and FLOP counts are those of that model, and progress with an ETA is logged as the forwards run."""
    directions = tmp_path / "directions.yaml"
    directions.write_text("supernet: local_vim_tiny_search\ntopk: 2\ndirections:\n- [h, w2]\n- [v_flip, w7]\n")
    config = tmp_path / "args.yaml"
    config.write_text(f"model: local_vim_tiny\nmodel_kwargs: {{patch_size: 4, embed_dim: 16, depth: 3}}\n"
                      f"directions: {directions}\nnum_classes: 3\nimg_size: 16\nbatch_size: 2\n")
    log = speed_test_log(config, "--model-kwargs", "depth=2", "--iters", "3", "--warmup-iters", "1")
    params, flops = logged_counts(log, "local_vim_tiny")
    model = create_model_at_size("local_vim_tiny", 16, patch_size=4, embed_dim=16, depth=2, num_classes=3,
                                 directions=str(directions))               # --model-kwargs updates the config's
    assert params == sum(p.numel() for p in model.parameters())
    assert flops == int(model.flops((3, 16, 16)))
    assert re.findall(r"forwards (\d+)/4, elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d", log) == ["1", "2", "3", "4"]
    assert "Done, n_iters: 3, batch size: 2, image shape: (3, 16, 16), device: cpu" in log


def test_speed_test_refuses_model_kwargs_the_model_does_not_take_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["speed_test.py", "--model", "local_vssm_tiny", "--model-kwargs", "dim=16",
                                      "--device", "cpu"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(os.path.join(REPO, "tools", "speed_test.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("error: --model-kwargs: model local_vssm_tiny does not take 'dim'; did you "
                                            "mean dims?")


def test_speed_test_drops_config_model_kwargs_another_model_does_not_take(tmp_path, monkeypatch, localmamba_log):
    """A LocalVim config (embed_dim) timed with `--model local_vssm_tiny`: as training does, the keys the
    model does not take are dropped with a warning naming each (speed_test refused the whole run), the rest kept."""
    config = tmp_path / "args.yaml"
    config.write_text("model: local_vim_tiny\nmodel_kwargs: {embed_dim: 16, dims: [8, 16, 24, 32]}"
                      "\nimg_size: 32\nbatch_size: 1\nnum_classes: 3\n")
    monkeypatch.setattr(sys, "argv", ["speed_test.py", "-c", str(config), "--model", "local_vssm_tiny", "--iters",
                                      "1", "--warmup-iters", "0", "--device", "cpu", "--threads", "1"])
    with localmamba_log.at_level(logging.INFO):
        runpy.run_path(os.path.join(REPO, "tools", "speed_test.py"), run_name="__main__")
    warnings = [r.getMessage() for r in localmamba_log.records if r.levelno == logging.WARNING]
    assert warnings == ["model local_vssm_tiny does not take 'embed_dim' from the config's model_kwargs; ignored"]
    model = timm.create_model("local_vssm_tiny", dims=[8, 16, 24, 32], num_classes=3)
    params = sum(p.numel() for p in model.parameters())
    created = f"Model local_vssm_tiny created, params: {params}, "
    assert any(r.getMessage().startswith(created) for r in localmamba_log.records)


def test_speed_test_refuses_negative_threads_before_building_anything(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["speed_test.py", "--model", "local_vim_tiny", "--threads", "-1",
                                      "--img-size", "16", "-b", "1", "--iters", "1", "--warmup-iters", "0"])
    with pytest.raises(SystemExit) as stop:             # -1 was a traceback from torch
        runpy.run_path(os.path.join(REPO, "tools", "speed_test.py"), run_name="__main__")
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("speed_test.py: error: --threads must be 0 (torch's default) "
                                                        "or more, got -1")


def test_speed_test_refuses_a_compiled_model_without_the_warmup_it_compiles_in(monkeypatch, capsys):
    """With --warmup-iters 0 the compilation fell into the timed forwards: the speed was the compiler's."""
    monkeypatch.setattr(sys, "argv", ["speed_test.py", "--model", "local_vim_tiny", "--compile", "default",
                                      "--img-size", "16", "-b", "1", "--iters", "1", "--warmup-iters", "0"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(os.path.join(REPO, "tools", "speed_test.py"), run_name="__main__")
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "speed_test.py: error: --compile default compiles in the warmup forwards: --warmup-iters 0 would time the "
        "compilation; give --warmup-iters 2 or more")


def test_speed_test_runs_on_the_config_threads_unless_told_otherwise(tmp_path, monkeypatch):
    """A run's args.yaml holds the thread count it trained with (on a busy 2-core machine, two threads ran a tiny
    model 10x slower than one); --threads still wins, 0 (torch's default, as tools/train.py takes it) too."""
    config = tmp_path / "args.yaml"
    config.write_text("model: local_vim_tiny\nmodel_kwargs: {patch_size: 4, embed_dim: 16}\nimg_size: 16\n"
                      "batch_size: 1\nthreads: 1\n")
    before = torch.get_num_threads()
    try:
        for extra, expected in (([], 1), (["--threads", "3"], 3), (["--threads", "0"], 2)):   # 2: left as it was
            torch.set_num_threads(2)
            monkeypatch.setattr(sys, "argv", ["speed_test.py", "-c", str(config), "--iters", "1", "--warmup-iters",
                                              "0", "--device", "cpu", *extra])
            runpy.run_path(os.path.join(REPO, "tools", "speed_test.py"), run_name="__main__")
            assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_speed_test_reads_the_args_yaml_a_run_writes(tmp_path, monkeypatch):
    """A run trained without --threads writes threads: 0 (torch's default), which speed_test refused as a thread
    count; it now keeps torch's thread count, and times the run's model."""
    from classification.engine.config import parse_args, save_config

    config = tmp_path / "args.yaml"
    save_config(parse_args(["--model", "local_vim_tiny_wo_search", "--model-kwargs", "patch_size=4", "embed_dim=16",
                            "depth=2", "--img-size", "16", "-b", "1", "--num-classes", "3"]), str(config))
    before = torch.get_num_threads()
    lines = []
    monkeypatch.setattr(logging.Logger, "info", lambda self, message, *a, **k: lines.append(message))
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(sys, "argv", ["speed_test.py", "-c", str(config), "--iters", "1", "--warmup-iters", "0",
                                          "--device", "cpu"])
        runpy.run_path(os.path.join(REPO, "tools", "speed_test.py"), run_name="__main__")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    params = sum(p.numel() for p in timm.create_model("local_vim_tiny_wo_search", patch_size=4, embed_dim=16, depth=2,
                                                      img_size=16, num_classes=3).parameters())
    created = [line for line in lines if str(line).startswith("Model ")]
    assert len(created) == 1 and created[0].startswith(f"Model local_vim_tiny_wo_search created, params: {params}, ")


def test_speed_test_takes_debug_for_the_traceback(monkeypatch):
    from classification.engine.model_builder import UnknownModelError

    monkeypatch.setattr(sys, "argv", ["speed_test.py", "--model", "local_vim_tny", "--debug"])
    with pytest.raises(UnknownModelError, match="did you mean local_vim_tiny"):
        runpy.run_path(os.path.join(REPO, "tools", "speed_test.py"), run_name="__main__")
