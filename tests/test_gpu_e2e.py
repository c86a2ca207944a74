"""The GPU end-to-end check's CPU-testable parts (``tools/gpu_check.py --e2e``: its plan, the verdict on each step's
output, the report and log, the runner's kill) and the ``--compile`` plumbing of tools/benchmark.py and
tools/test.py (with torch.compile replaced by a recorder: compiling is not what is tested)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from classification.benchmarks import gpu_e2e, images_per_second
from classification.benchmarks.gpu_e2e import Outcome, Step, run_command, run_e2e
from classification.benchmarks.gpu_report import log_devices
from classification.engine import evaluate as evaluate_module
from classification.engine.config import parse_args


MEMORY_TABLE = ("model           dtype  inference b2 peak MiB  train step b2 peak MiB\n"
                "local_vim_tiny  fp32   812  5120\n")
SWEEP_TITLE = "resolution sweep, {} against {}: inference at batch 1, fp32, cuda; peak MiB above weights and images:\n"
SWEEP_OUTPUT = MEMORY_TABLE + "".join(SWEEP_TITLE.format(*pair) + "img px  ...\n" for pair in gpu_e2e.PAIRS)


def fake_runner(outputs):
    """A runner that does not run anything: each step gets the output its name maps to (default: a successful run
    of that tool) and writes the checkpoints a real run would write."""
    seen = []

    def run(step):
        seen.append(step)
        if "--output" in step.argv:
            folder = os.path.join(step.argv[step.argv.index("--output") + 1], "run")
            os.makedirs(folder, exist_ok=True)
            open(os.path.join(folder, "last.pth.tar"), "w").close()
        default = ("metric ratio" if "benchmark.py" in step.argv[1] else SWEEP_OUTPUT if "--sweep" in step.argv else
                   "ALL CHECKS PASSED" if "gpu_check.py" in step.argv[1] else
                   "{'top1': 50.0}" if "test.py" in step.argv[1] else
                   "SIGTERM: stopping in epoch 1 after step 3 of 44" if step.stop_signal == signal.SIGTERM else
                   "Resumed x, starting training at epoch 1, step 3 of 44\nTrain: 2 [0/56] Speed: 123.4 img/s\n"
                   "Test(EMA): 0 [  11/12] Loss: 2.294 (2.316) Top-1: 12.500% (10.000%)")
        if "--grad-accum-steps" in step.argv:
            default = "--grad-accum-steps 2: an optimizer step of 2 batches of 32 on each of 1 process(es)\n" + default
        if step.stop_when is None:
            returncode = 0
        else:
            returncode = None if step.stop_signal == signal.SIGKILL else 128 + step.stop_signal
        return Outcome(returncode, outputs.get(step.name, default), 1.5)

    return run, seen


def test_e2e_plan_passes_on_good_outputs_and_writes_the_log(tmp_path, capsys):
    run, seen = fake_runner({})
    log = tmp_path / "e2e.log"
    assert run_e2e("cpu", quick=True, log_path=str(log), runner=run, workdir=str(tmp_path / "runs"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:4] in ("PASS", "FAIL")]
    assert len(lines) == len(seen) and all(line.startswith("PASS") for line in lines)
    names = [s.name for s in seen]
    for expected in ("train 1 epoch --amp (fp16 + GradScaler)", "train 1 epoch --amp --amp-dtype bfloat16 --model-ema",
                     "train 1 epoch --amp --grad-accum-steps 2",
                     "tools/dist_train.sh 1", "train, killed after its first epoch",
                     "the killed run continues with --resume", "tools/test.py on the resumed checkpoint",
                     "train, stopped by SIGTERM in its second epoch",
                     "the stopped run continues from its mid-epoch checkpoint",
                     "tools/test.py --compile reduce-overhead", "throughput local_vssm_tiny bf16",
                     "peak memory and resolution sweep"):
        assert expected in names
    by_name = {s.name: s for s in seen}
    fp16 = by_name["train 1 epoch --amp (fp16 + GradScaler)"].argv
    assert fp16[fp16.index("--device") + 1] == "cpu" and "--amp" in fp16 and "--amp-dtype" not in fp16
    bf16 = by_name["train 1 epoch --amp --amp-dtype bfloat16 --model-ema"].argv
    assert "bfloat16" in bf16 and "--model-ema" in bf16
    folders = [s.argv[s.argv.index("--output") + 1] for s in seen if "--output" in s.argv]
    resume = os.path.join(str(tmp_path / "runs"), "resume")
    stopped = os.path.join(str(tmp_path / "runs"), "stopped")
    assert folders.count(resume) == 2 and folders.count(stopped) == 2
    assert len(set(folders)) == len(folders) - 2   # fresh folders, but the resumed ones
    resumed = by_name["the killed run continues with --resume"].argv
    assert resumed[resumed.index("--resume") + 1] == os.path.join(resume, "run", "last.pth.tar")
    killed = by_name["train, killed after its first epoch"].stop_when
    os.makedirs(os.path.join(resume, "run"), exist_ok=True)
    with open(os.path.join(resume, "run", "last.pth.tar"), "w") as f:   # written before epoch 0's validation
        f.write("training of epoch 0, not yet validated")
    with open(os.path.join(resume, "run", "lr.csv"), "w") as f:
        f.write("epoch,step,lr\n0,0,0.1\n")
    assert not killed()
    with open(os.path.join(resume, "run", "lr.csv"), "a") as f:
        f.write("1,56,0.05\n")
    assert killed()   # epoch 0 is committed: the resume starts at epoch 1
    assert by_name["tools/test.py --compile reduce-overhead"].argv[-5:-4] == ["default"]   # CPU: inductor's mode
    runs = [s.argv for s in seen if "--output" in s.argv]   # training, dist_train and test: the one quickstart model
    models = {argv[argv.index("--model") + 1] if "--model" in argv else argv[argv.index("configs/quickstart.yaml") + 1]
              for argv in runs}
    assert models == {"local_vim_tiny_wo_search"}
    assert "last logged speed 123.4 img/s" in [line for line in lines if "--amp-dtype" in line][0]
    text = log.read_text()
    assert "===== summary" in text and f"{len(seen)}/{len(seen)} checks passed" in text


def test_e2e_fails_a_resume_that_starts_over_and_a_run_that_was_not_killed(tmp_path, capsys):
    run, _ = fake_runner({"the killed run continues with --resume": "Train: 0 [0/56]\nTrain: 2 [0/56]",
                          "train 1 epoch --amp --grad-accum-steps 2": "Train: 0 [0/22] Speed: 60.0 img/s",
                          "train 1 epoch --amp --amp-dtype bfloat16 --model-ema": "Test: 0 [  11/12] Loss: 0.777"})
    assert not run_e2e("cpu", quick=True, runner=run, workdir=str(tmp_path))
    out = capsys.readouterr().out
    assert "train 1 epoch --amp --amp-dtype bfloat16 --model-ema  (output does not show the EMA's validation)" in out
    assert "FAIL" in out and "the killed run continues with --resume  (output does not show 'starting training" in out
    assert "train 1 epoch --amp --grad-accum-steps 2  (output does not show '--grad-accum-steps 2: an optimizer" in out
    step = [s for s in gpu_e2e.plan("cpu", str(tmp_path), quick=True) if s.stop_when is not None][0]
    assert gpu_e2e.report_line(step, Outcome(0, "", 3.0)).startswith("FAIL")     # ended before the kill


def test_budget_cuts_each_limit_and_skips_what_no_longer_fits(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_e2e, "MIN_STEP_SECONDS", 0.2)
    fake, seen = fake_runner({})

    def slow(step):
        time.sleep(0.3)
        return fake(step)

    log = tmp_path / "e2e.log"
    assert not run_e2e("cpu", quick=True, log_path=str(log), runner=slow, workdir=str(tmp_path / "runs"), budget=0.9)
    out = capsys.readouterr().out
    ran = [line for line in out.splitlines() if line.startswith("PASS")]
    skips = [line for line in out.splitlines() if line.startswith("SKIP")]
    assert 2 <= len(ran) <= 3 and len(ran) == len(seen) and len(ran) + len(skips) == len(gpu_e2e.plan("cpu", "x", True))
    assert 0.8 < seen[0].timeout <= 0.9 and all(step.timeout <= 0.9 for step in seen)  # cut to what was left
    assert all("(time budget spent)" in line for line in skips)
    rerun = [line for line in out.splitlines() if line.startswith("not run for the time budget")][0]
    assert "--only" in rerun and "'the killed run continues with --resume'" in rerun
    text = log.read_text()
    assert all(f"===== {step.name}:" in text for step in seen) and "SKIP" in text and "===== summary" in text


def test_the_command_for_what_the_budget_left_keeps_the_log_and_the_sizes(tmp_path, capsys):
    """The printed command ran the rest without --quick (the full-size plan on a CPU) and into the same default log,
    which it replaced: the finished part's transcript was lost. It also ran without --budget, so that on the same
    time-limited machine the rest was killed at the machine's limit instead of ending within the budget."""
    fake, _ = fake_runner({})
    log = tmp_path / "e2e.log"
    (tmp_path / "e2e_part2.log").write_text("an earlier run's rest\n")
    assert not run_e2e("cpu", quick=True, log_path=str(log), runner=fake, workdir=str(tmp_path / "runs"), budget=1e-9)
    rerun = [line for line in capsys.readouterr().out.splitlines() if line.startswith("not run for the time budget")]
    assert rerun[0].startswith("not run for the time budget; to run them: python tools/gpu_check.py --e2e --device "
                               "cpu --quick --budget 1e-09 --only ")
    assert rerun[0].endswith(f" --log {tmp_path / 'e2e_part3.log'}")


def test_the_log_for_the_rest_of_a_part_is_the_next_part_of_the_same_name(tmp_path):
    """A part's own rest went to e2e_part2_part2.log."""
    (tmp_path / "e2e_part2.log").write_text("the second part\n")
    assert gpu_e2e.next_part_path(str(tmp_path / "e2e_part2.log")) == str(tmp_path / "e2e_part3.log")
    assert gpu_e2e.next_part_path(str(tmp_path / "e2e.log")) == str(tmp_path / "e2e_part3.log")
    assert gpu_e2e.next_part_path(str(tmp_path / "my_part2_run.log")) == str(tmp_path / "my_part2_run_part2.log")


def test_log_keeps_the_finished_steps_of_a_run_killed_from_outside(tmp_path):
    """The steps that ended are in the log with their verdicts; the one running when the run died, by its title
    alone (no verdict, no summary)."""
    fake, _ = fake_runner({})
    calls = []

    def dies_at_the_third(step):
        calls.append(step.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fake(step)

    log = tmp_path / "e2e.log"
    with pytest.raises(KeyboardInterrupt):
        run_e2e("cpu", quick=True, log_path=str(log), runner=dies_at_the_third, workdir=str(tmp_path / "runs"))
    text = log.read_text()
    assert text.startswith("gpu_check --e2e") and f"===== {calls[0]}:" in text and f"===== {calls[1]}:" in text
    assert text.rstrip().splitlines()[-1].startswith(f"===== {calls[2]}: ") and "===== summary" not in text


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_run_killed_mid_step_keeps_that_steps_output_beside_the_log(tmp_path):
    """A run SIGKILLed from outside (a lease's time limit) lost the output of the step it was in: the step wrote into
    a temporary file, gone with the process. Now the log ends with the step's title and <log>.running holds what the
    step printed; a step that ends moves its output into the log and removes that file."""
    log, ready = tmp_path / "e2e.log", tmp_path / "ready"
    # each step prints, then makes its file (the slow step's: `ready`) and sleeps
    script = (
        "import sys\nfrom classification.benchmarks import gpu_e2e\n"
        "printer = [sys.executable, '-c', \"print('resolution 224 done', flush=True); import os, sys, time; "
        "os.close(os.open(sys.argv[1], os.O_CREAT)); time.sleep(float(sys.argv[2]))\"]\n"
        "steps = [gpu_e2e.Step(name, printer + [made, wait], 60, lambda outcome: None) for name, made, wait in "
        "(('quick step', sys.argv[2] + '.quick', '0'), ('slow step', sys.argv[2], '60'))]\n"
        "gpu_e2e.plan = lambda device, workdir, quick=False: steps\n"
        "gpu_e2e.run_e2e('cpu', quick=True, log_path=sys.argv[1], workdir=sys.argv[3])\n")
    run = subprocess.Popen([sys.executable, "-c", script, str(log), str(ready), str(tmp_path / "runs")],
                           cwd=gpu_e2e.REPO, stdout=subprocess.DEVNULL)
    try:
        end = time.perf_counter() + 60
        while not ready.exists() and time.perf_counter() < end:
            time.sleep(0.05)
        steps_running = gpu_e2e._descendants(run.pid)
    finally:
        run.kill()
        run.wait()
    for pid in steps_running:
        os.kill(pid, signal.SIGKILL)
    lines = log.read_text().splitlines()
    assert lines[2].startswith("===== quick step: ") and lines[3] == "resolution 224 done"
    assert lines[4].startswith("PASS ") and lines[4].endswith("  quick step")
    assert lines[5:] == ["", lines[6]] and lines[6].startswith("===== slow step: ")
    assert (tmp_path / "e2e.log.running").read_text() == "resolution 224 done\n"


def test_a_step_that_ends_moves_its_output_into_the_log(tmp_path, monkeypatch):
    printer = Step("printer", [sys.executable, "-c", "print('case scan ok')"], 60, lambda outcome: None)
    monkeypatch.setattr(gpu_e2e, "plan", lambda device, workdir, quick=False: [printer])
    log = tmp_path / "e2e.log"
    assert run_e2e("cpu", quick=True, log_path=str(log), workdir=str(tmp_path / "runs"))
    lines = log.read_text().splitlines()
    assert lines[2:4] == [f"===== printer: {sys.executable} -c print('case scan ok')", "case scan ok"]
    assert lines[4].startswith("PASS ") and lines[4].endswith("  printer")
    assert not (tmp_path / "e2e.log.running").exists()


def test_only_brings_the_steps_a_step_needs():
    steps = gpu_e2e.plan("cpu", "runs", quick=True)
    chosen = [s.name for s in gpu_e2e.select_steps(steps, ["test.py on the resumed"])]
    assert chosen == ["train, killed after its first epoch", "tools/test.py on the resumed checkpoint"]
    assert [s.name for s in gpu_e2e.select_steps(steps, ["throughput"])] == [
        s.name for s in steps if s.name.startswith("throughput")]


def test_only_refuses_a_word_in_no_step_name_before_making_a_folder(tmp_path, monkeypatch):
    steps = gpu_e2e.plan("cpu", "runs", quick=True)
    with pytest.raises(gpu_e2e.UnknownCheck, match=r"^--only nomatch matches no check; the checks: kernel checks"):
        gpu_e2e.select_steps(steps, ["throughput", "nomatch"])
    monkeypatch.setattr(gpu_e2e.tempfile, "mkdtemp", lambda **kwargs: pytest.fail("made a run folder"))
    with pytest.raises(gpu_e2e.UnknownCheck):
        run_e2e("cpu", quick=True, log_path=str(tmp_path / "e2e.log"), only=["nomatch"],
                runner=lambda step: pytest.fail("ran a step"))
    assert not (tmp_path / "e2e.log").exists()


def test_runner_kills_on_its_condition_and_at_its_limit():
    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    start = time.perf_counter()
    stopped = run_command(Step("stop", sleeper, 30, lambda o: None, stop_when=lambda: time.perf_counter() - start > 1))
    assert stopped.returncode is None and stopped.seconds < 20 and "up" in stopped.output
    late = run_command(Step("limit", sleeper, 1, lambda o: None))
    assert late.returncode is not None and late.returncode < 0 and "killed after the 1 s limit" in late.output


def test_runner_reads_a_stop_condition_often_enough_to_stop_within_an_epoch():
    """The stop meant for epoch 1 (SIGTERM once lr.csv has a row of it) must land before that epoch's end, and a
    quickstart epoch of 44 steps at 16 px may take about a second on a GPU: read every 0.2 s, the condition could
    see the epoch only after a good part of it had passed. It is now read every 0.02 s (counted here over a command
    of 1 s: at least 10 reads, about 50 unloaded, where 0.2 s gave 6)."""
    reads = []
    sleeper = [sys.executable, "-c", "import time; time.sleep(1)"]
    run_command(Step("polled", sleeper, 30, lambda o: None, stop_when=lambda: reads.append(1) and False))
    assert len(reads) >= 10


def test_runner_sends_a_handled_signal_and_awaits_the_exit(tmp_path):
    """SIGTERM to the process group once the condition holds; the command's own exit status is the outcome."""
    ready = tmp_path / "ready"
    handler = [sys.executable, "-c", "import signal, sys, time\n"
               "signal.signal(signal.SIGTERM, lambda *a: (print('stopping', flush=True), sys.exit(143)))\n"
               f"open({str(ready)!r}, 'w').close()\ntime.sleep(60)"]
    stopped = run_command(Step("term", handler, 30, lambda o: None, stop_when=ready.exists,
                               stop_signal=signal.SIGTERM))
    assert stopped.returncode == 143 and "stopping" in stopped.output and stopped.seconds < 20
    assert gpu_e2e._exited_with(143)(stopped) is None
    assert gpu_e2e._exited_with(143)(Outcome(0, "done", 1.0)) == "exit status 0, not 143: done"


def test_peak_memory_cell_is_a_dash_off_cuda_without_running_the_step():
    calls = []
    assert gpu_e2e.peak_mib_cell(lambda: calls.append(1), torch.device("cpu")) == "-"
    assert calls == []


def test_dry_run_lists_the_commands(capsys):
    assert run_e2e("cuda", dry_run=True)
    out = capsys.readouterr().out
    assert "tools/gpu_check.py --device cuda" in out and "--compile reduce-overhead" in out
    assert "tools/benchmark.py --model local_vim_tiny --device cuda --dtype bf16 --batch-sizes 1 64" in out


@pytest.fixture
def compile_calls(monkeypatch):
    calls = []

    def record(model, mode=None, **kwargs):
        calls.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", record)
    return calls


def test_benchmark_compiles_inference_only(compile_calls):
    models = {"m": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 1000))}
    images_per_second(models, batch=2, img_size=8, repeats=1, warmup=2, compile_mode="reduce-overhead")
    assert compile_calls == ["reduce-overhead"]
    with pytest.raises(ValueError, match="torch.compile compiles in the warmup calls: 1 would time the compilation"):
        images_per_second(models, batch=2, img_size=8, repeats=1, warmup=1, compile_mode="default")
    images_per_second(models, batch=2, img_size=8, train=True, repeats=1, warmup=0, compile_mode="reduce-overhead")
    assert compile_calls == ["reduce-overhead"]


def test_test_tool_evaluates_the_compiled_model(compile_calls, monkeypatch, tmp_path):
    """The compiled model gets every batch at the full batch size (a smaller last batch compiled it again), and the
    metrics are the eager model's."""
    model = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "img_size=16", "patch_size=4", "depth=1",
             "embed_dim=32", "num_heads=2", "class_token=false", "global_pool=avg", "--img-size", "16"]
    common = ["--dataset", "digits", *model, "-b", "256", "-j", "0", "--device", "cpu", "--output", str(tmp_path)]
    net = parse_args(common).model
    torch.manual_seed(0)
    from classification.engine.model_builder import create_model_at_size
    ckpt = tmp_path / "released.pth"
    torch.save({"state_dict": create_model_at_size(net, 16, patch_size=4, depth=1, embed_dim=32, num_heads=2,
                                                   class_token=False, global_pool="avg",
                                                   num_classes=10).state_dict()}, ckpt)
    eager = evaluate_module.test(parse_args([*common, "--resume", str(ckpt)]))
    assert compile_calls == []
    compiled_batches = []

    def compile_recording_batches(model, mode=None, **kwargs):
        compile_calls.append(mode)
        model.register_forward_pre_hook(lambda module, args: compiled_batches.append(args[0].shape[0]))
        return model

    monkeypatch.setattr(torch, "compile", compile_recording_batches)
    compiled = evaluate_module.test(parse_args([*common, "--resume", str(ckpt), "--compile", "reduce-overhead",
                                                "--experiment", "compiled"]))
    assert compile_calls == ["reduce-overhead"] and compiled == eager
    assert len(compiled_batches) > 1 and set(compiled_batches) == {256}, compiled_batches


def _running(pid, wait=5.0):
    """Whether process ``pid`` still exists, not as a zombie, ``wait`` seconds on (a SIGKILL takes effect when the
    process is next scheduled)."""
    end = time.perf_counter() + wait
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                alive = f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            alive = False
        if not alive or time.perf_counter() > end:
            return alive
        time.sleep(0.05)


def _launcher(tmp_path):
    """A command that starts a worker in a session of its own, as torchrun starts its workers, writes the worker's
    pid to tmp_path/pid, prints 'up' and waits."""
    return [sys.executable, "-c", "import subprocess, sys, time\n"
            "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],\n"
            "                          start_new_session=True)\n"
            f"open({str(tmp_path / 'pid.tmp')!r}, 'w').write(str(worker.pid))\n"
            f"import os; os.replace({str(tmp_path / 'pid.tmp')!r}, {str(tmp_path / 'pid')!r})\n"
            "print('up', flush=True)\ntime.sleep(120)"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_runner_kills_the_workers_a_launcher_started_in_their_own_sessions(tmp_path):
    """A step killed at its limit left a launcher's workers running (torchrun starts each in a session of its own,
    out of reach of the kill of the launcher's process group), and Ctrl-C left the step itself running. Now both
    end with it, and Ctrl-C's exception carries the output so far."""
    pid = tmp_path / "pid"
    workers = []
    try:
        late = run_command(Step("limit", _launcher(tmp_path), 3, lambda o: None))
        workers.append(int(pid.read_text()))
        assert "killed after the 3 s limit" in late.output and not _running(workers[-1])
        pid.unlink()

        def ctrl_c_once_up():
            if pid.exists():
                raise KeyboardInterrupt
            return False

        with pytest.raises(KeyboardInterrupt) as stopped:
            run_command(Step("ctrl-c", _launcher(tmp_path), 30, lambda o: None, stop_when=ctrl_c_once_up))
        workers.append(int(pid.read_text()))
        assert not _running(workers[-1])
        assert stopped.value.outcome.returncode is None and stopped.value.outcome.seconds < 20
    finally:
        for worker in workers:
            if _running(worker, wait=0):
                os.kill(worker, signal.SIGKILL)


def test_a_handled_stop_signal_is_awaited_no_longer_than_the_step_limit(tmp_path):
    """A command that did not exit on SIGTERM was awaited 120 s whatever its limit, past --budget (a step cut to the
    31 s left of a 540 s budget could end 120 s later, past the lent machine's 600 s). Now the wait ends at the
    limit."""
    ready = tmp_path / "ready"
    deaf = [sys.executable, "-c", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"open({str(ready)!r}, 'w').close()\ntime.sleep(300)"]
    start = time.perf_counter()
    stopped = run_command(Step("term", deaf, 4, lambda o: None, stop_when=ready.exists, stop_signal=signal.SIGTERM))
    assert time.perf_counter() - start < 15 and stopped.returncode is None
    assert "[gpu_check --e2e] no exit" in stopped.output and "after SIGTERM" in stopped.output


def test_cuda_steps_run_without_the_triton_interpreter_and_dist_train_with_this_python(monkeypatch, tmp_path):
    """On CUDA a TRITON_INTERPRET=1 left in the caller's environment reached every step, whose Triton kernels then ran
    under the interpreter (minutes each: the kernel check and the training runs met their limits); now no CUDA step
    has it. tools/dist_train.sh ran `python` from PATH (launch.sh's default), not the interpreter of the check: where
    `python` is missing or another one (a machine with python3 only) the step failed; now it gets PYTHON."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    show = [sys.executable, "-c", "import os; print(os.environ.get('TRITON_INTERPRET'), os.environ.get('PYTHON'))"]
    for step in gpu_e2e.plan("cuda", str(tmp_path)):
        out = run_command(gpu_e2e.replace(step, argv=show)).output.split()
        assert out[0] == "None", step.name
        assert out[1] == (sys.executable if step.name.startswith("tools/dist_train.sh") else "None"), step.name
    kernels = gpu_e2e.plan("cpu", str(tmp_path), quick=True)[0]
    assert run_command(gpu_e2e.replace(kernels, argv=show)).output.split()[0] == "1"   # the CPU's kernel check


def test_ctrl_c_keeps_the_output_of_the_step_it_stopped_in_the_log(tmp_path):
    """Ctrl-C during a step left the transcript without that step: what it had printed (the correctness table of a
    kernel check minutes long) was lost. Now its output so far is in the log, marked STOPPED."""
    ready = tmp_path / "ready"
    halfway = [sys.executable, "-c", f"print('case scan ok', flush=True); open({str(ready)!r}, 'w').close()\n"
               "import time; time.sleep(60)"]

    def stop_once_ready():
        if ready.exists():
            raise KeyboardInterrupt
        return False

    def runner(step):
        return run_command(gpu_e2e.replace(step, argv=halfway, stop_when=stop_once_ready))

    log = tmp_path / "e2e.log"
    with pytest.raises(KeyboardInterrupt):
        run_e2e("cpu", quick=True, log_path=str(log), runner=runner, workdir=str(tmp_path / "runs"))
    text = log.read_text()
    assert "===== kernel checks and op timings: " in text and "\ncase scan ok\n" in text
    assert "STOPPED" in text.splitlines()[-1] and "kernel checks and op timings  (interrupted" in text


def test_a_sweep_step_that_measured_nothing_fails(tmp_path, capsys):
    """The sweep step passed with an error in every cell of its memory table and no resolution sweep (its verdict
    looked for the words 'peak MiB', which the table's header holds). Now an error cell or a pair without a sweep
    fails it; a sweep that failed at a later size (out of memory at 1024 px) keeps its rows and passes."""
    name = "peak memory and resolution sweep"
    step = [s for s in gpu_e2e.plan("cpu", str(tmp_path), quick=True) if s.name == name][0]
    vssm = SWEEP_TITLE.format(*gpu_e2e.PAIRS[1])
    error_cell = SWEEP_OUTPUT.replace("fp32   812  5120", "fp32   error: RuntimeError  -")
    assert gpu_e2e.report_line(step, Outcome(0, error_cell, 9.0)).endswith(
        "(the memory table has an error: local_vim_tiny fp32 error: RuntimeError -)")
    no_vssm = SWEEP_OUTPUT.replace(vssm, "resolution sweep, local_vssm_tiny against swin_tiny_patch4_window7_224: "
                                         "error: OutOfMemoryError: CUDA out of memory\n")
    assert gpu_e2e.report_line(step, Outcome(0, no_vssm, 9.0)).endswith(
        "(no resolution sweep of local_vssm_tiny against swin_tiny_patch4_window7_224 (it failed at its first size))")
    later_size = SWEEP_OUTPUT + "\nresolution sweep, local_vssm_tiny against swin_tiny_patch4_window7_224: error: " \
                                "OutOfMemoryError: CUDA out of memory\n"
    assert gpu_e2e.report_line(step, Outcome(0, later_size, 9.0)).startswith("PASS")


def test_the_compiled_evaluation_must_give_the_eager_top1(tmp_path, capsys):
    """tools/test.py --compile reduce-overhead passed on any accuracy it printed: CUDA graphs that gave wrong logits
    (a replay's outputs overwritten) passed. Now its top-1 must be within 1 point of the eager evaluation's of the
    same checkpoint."""
    run, _ = fake_runner({"tools/test.py on the resumed checkpoint": "{'test_loss': 0.17, 'top1': 98.056, 'top5': 100}",
                          "tools/test.py --compile reduce-overhead": "{'test_loss': 2.3, 'top1': 9.722, 'top5': 50}"})
    assert not run_e2e("cpu", quick=True, runner=run, workdir=str(tmp_path), only=["tools/test.py"])
    assert "tools/test.py --compile reduce-overhead  (top-1 9.722 % compiled, 98.056 % eager on the same " \
           "checkpoint)" in capsys.readouterr().out
    close, _ = fake_runner({"tools/test.py on the resumed checkpoint": "{'test_loss': 0.17, 'top1': 98.056}",
                            "tools/test.py --compile reduce-overhead": "{'test_loss': 0.17, 'top1': 97.778}"})
    assert run_e2e("cpu", quick=True, runner=close, workdir=str(tmp_path), only=["tools/test.py"])


def test_a_step_the_budget_cut_short_is_in_the_command_for_the_rest(tmp_path, capsys, monkeypatch):
    """A step started with 35 s of the budget left and killed there failed like a broken one and was missing from the
    printed --only command for the rest, so that a rerun of that command left it out. Now its line says the budget's
    end killed it, and the command runs it again (with the steps after it)."""
    clock = [0.0]
    monkeypatch.setattr(gpu_e2e, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock[0])}))
    fake, _ = fake_runner({})

    def fifty_seconds_each(step):   # every step needs 50 s: killed at a limit below that
        clock[0] += min(step.timeout, 50)
        if step.timeout < 50:
            return Outcome(-signal.SIGKILL, f"\n[gpu_check --e2e] killed after the {step.timeout:.0f} s limit\n",
                           step.timeout)
        return fake(step)

    assert not run_e2e("cpu", quick=True, runner=fifty_seconds_each, workdir=str(tmp_path / "runs"), budget=135)
    out = capsys.readouterr().out.splitlines()
    steps = gpu_e2e.plan("cpu", "x", quick=True)
    third = steps[2].name
    assert [line.split()[0] for line in out[1:4]] == ["PASS", "PASS", "FAIL"]
    assert out[3].endswith(f"{third}  (killed at the end of the time budget, 35 s into its 900 s limit)")
    rerun = [line for line in out if line.startswith("not run for the time budget")][0]
    assert rerun.split(" --only ", 1)[1].startswith(f"'{third}' ")


def test_the_nccl_step_of_a_check_on_one_named_gpu_runs_on_every_gpu(monkeypatch, tmp_path):
    """--e2e --device cuda:0 on a machine of two GPUs gave `tools/dist_train.sh 2` --device cuda:0, which train.py
    refuses (two processes on one GPU); now that step gets --device cuda (GPU LOCAL_RANK each), the one-process steps
    keep cuda:0."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    steps = {s.name: s.argv for s in gpu_e2e.plan("cuda:0", str(tmp_path))}
    two, one = steps["tools/dist_train.sh 2 (NCCL)"], steps["tools/dist_train.sh 1"]
    assert two[two.index("--device") + 1] == "cuda" and one[one.index("--device") + 1] == "cuda:0"
    from classification.engine.config import ConfigError
    from classification.engine.distributed import init_distributed
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="would put all 2 processes on one GPU"):
        init_distributed("cuda:0")


def test_the_log_names_the_gpu_in_the_header_lines_the_report_reads(monkeypatch, tmp_path, capsys):
    """gpu_report tells logs of different devices apart by the device their header lines name (the first line
    and the summary's): a GPU's full name, spaces and all, is read back whole."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    run, _ = fake_runner({})
    log = tmp_path / "h100.log"
    assert run_e2e("cuda", log_path=str(log), runner=run, workdir=str(tmp_path / "runs"), only=["throughput"])
    text = log.read_text()
    assert text.count("  device NVIDIA H100 80GB HBM3  torch ") == 2
    assert log_devices(text) == ["NVIDIA H100 80GB HBM3"]
