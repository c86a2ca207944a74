"""tools/speed_test.py on a tiny CPU run prints the model's own parameter and FLOP counts, then a throughput."""
import os
import re
import subprocess
import sys

from classification.engine.model_builder import create_model_at_size

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_speed_test_prints_params_flops_and_throughput(tmp_path):
    config = tmp_path / "speed.yaml"
    config.write_text("model: timm_local_vim_tiny\nbatch_size: 3\nimg_size: 224\n")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "speed_test.py"), "-c", str(config),
                           "--img-size", "32", "--iters", "2", "--warmup-iters", "1", "--device", "cpu",
                           "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    params, flops = map(int, re.search(r"Model local_vim_tiny created, params: (\d+), FLOPs: (\d+)", log).groups())
    model = create_model_at_size("local_vim_tiny", 32)
    assert params == sum(p.numel() for p in model.parameters())
    assert flops == int(model.flops((3, 32, 32)))  # the original's get_flops: the model's own flops()
    assert "Done, n_iters: 2, batch size: 3, image shape: (3, 32, 32), device: cpu" in log  # -c, then the CLI wins
    assert "total samples: 6," in log
    assert float(re.search(r"throughput: ([\d.]+) samples/second", log)[1]) > 0


def test_speed_test_refuses_an_unknown_device_in_one_line():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "speed_test.py"), "--model", "local_vim_tiny",
                           "--device", "foo"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("--device 'foo' is not one of auto, cpu, cuda, cuda:N")
