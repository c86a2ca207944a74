"""tools/gpu_check.py's refusals of input that cannot give a result: one `error: ...` line on stderr and exit status 2
before anything runs (nothing here runs a check: dry runs, logs written under tmp_path, the kernel check replaced);
and the layout of its correctness table."""
import importlib.util
from pathlib import Path

import pytest
import torch

from classification.benchmarks.gpu_check import CHECK_HEADER, check_line, checked_models, column_widths
from classification.benchmarks.gpu_check import correctness_cases, ema_check
from classification.engine.ema import ForeachModelEma

TOOL = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check_tool", TOOL)
gpu_check_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check_tool)

E2E_LOG = ("gpu_check --e2e  2026-01-01 00:00 UTC  device cpu  torch 2.0  run folders /tmp/runs\n\n"
           "===== tools/dist_train.sh 1: sh tools/dist_train.sh 1\nTrain: 0 [0/56] Speed: 12.5 img/s\n"
           "PASS      1.0 s  tools/dist_train.sh 1\n")


@pytest.fixture
def kernel_check_calls(monkeypatch):
    """The tool's kernel check replaced by a recorder that passes."""
    calls = []
    monkeypatch.setattr(gpu_check_tool, "run_gpu_check", lambda *args, **kwargs: calls.append(args) or True)
    return calls


def test_an_only_word_that_matches_no_check_is_refused_with_the_check_names(tmp_path, capsys):
    log = tmp_path / "e2e.log"
    assert gpu_check_tool.main(["--e2e", "--device", "cpu", "--quick", "--only", "nomatch", "--log", str(log)]) == 2
    out = capsys.readouterr().err.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error: --only nomatch matches no check; the checks: ")
    assert "tools/dist_train.sh 1; train, killed after its first epoch" in out[0] and not log.exists()
    # one unknown word beside a known one is refused too, dry run or not
    assert gpu_check_tool.main(["--e2e", "--device", "cpu", "--quick", "--dry-run", "--only", "throughput",
                                "trian"]) == 2
    assert capsys.readouterr().err.startswith("error: --only trian matches no check; the checks: kernel checks")


def test_a_part_rerun_with_only_keeps_the_whole_runs_default_log(tmp_path, monkeypatch):
    """`--e2e --only WORD` wrote its part into the default log, replacing the whole run's transcript; a whole run
    still replaces it, and --log is taken as given."""
    whole = tmp_path / "cpu_e2e.log"
    whole.write_text(E2E_LOG)
    logs = []
    monkeypatch.setattr(gpu_check_tool, "default_log_path", lambda device: str(whole))
    monkeypatch.setattr(gpu_check_tool, "run_e2e", lambda *args, **kwargs: logs.append(args[3]) or True)
    for extra in (["--only", "sweep"], [], ["--only", "sweep", "--log", str(whole)]):
        assert gpu_check_tool.main(["--e2e", "--device", "cpu", "--quick", *extra]) == 0
    assert logs == [str(tmp_path / "cpu_e2e_part2.log"), str(whole), str(whole)]


def test_report_refuses_a_log_that_is_not_from_e2e(tmp_path, capsys):
    e2e, kernels = tmp_path / "e2e.log", tmp_path / "kernels.log"
    e2e.write_text(E2E_LOG)
    kernels.write_text("torch 2.11.0, device NVIDIA H200\ncase  out err  grad err  result\nALL CHECKS PASSED\n")
    assert gpu_check_tool.main(["--report", str(e2e), str(kernels)]) == 2
    assert capsys.readouterr().err == f"error: not a --e2e log (no '===== <check>' output in it): {kernels}\n"
    assert gpu_check_tool.main(["--report", str(e2e)]) == 0
    assert "tools/dist_train.sh 1 (quickstart config): 12.5 img/s" in capsys.readouterr().out


def test_the_cpu_kernel_check_needs_the_triton_interpreter(monkeypatch, capsys, kernel_check_calls):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert gpu_check_tool.main(["--device", "cpu", "--quick"]) == 2
    out = capsys.readouterr().err.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error: ") and "set TRITON_INTERPRET=1" in out[0]
    assert kernel_check_calls == []
    # --e2e sets it for its kernel step itself
    assert gpu_check_tool.main(["--e2e", "--device", "cpu", "--quick", "--dry-run", "--only", "kernel"]) == 0
    assert "TRITON_INTERPRET=1 " in capsys.readouterr().out
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert gpu_check_tool.main(["--device", "cpu", "--quick"]) == 0 and len(kernel_check_calls) == 1


def test_ctrl_c_in_the_kernel_check_ends_in_one_line(monkeypatch, capsys, status_after_ctrl_c):
    """Ctrl-C in the kernel check ended in a traceback: now the lines printed so far stay, one line says it was
    interrupted, and the exit status is 130."""
    def run_gpu_check(*args):
        print("selective_scan fp32  1.2e-07  3.4e-07  ok")
        raise KeyboardInterrupt

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(gpu_check_tool, "run_gpu_check", run_gpu_check)
    assert status_after_ctrl_c(gpu_check_tool.main, ["--device", "cpu", "--quick"]) == 130
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["selective_scan fp32  1.2e-07  3.4e-07  ok"]
    assert captured.err.splitlines() == ["interrupted (Ctrl-C)"]


def test_ctrl_c_in_e2e_says_where_the_checks_that_ended_are(tmp_path, monkeypatch, capsys, status_after_ctrl_c):
    """Ctrl-C in `--e2e` ended in a traceback: now one line says it was interrupted and names the transcript, which
    holds the checks that ended; the exit status is 130."""
    log = tmp_path / "e2e.log"

    def run_e2e(device, quick, dry_run, log_path, **kwargs):
        Path(log_path).write_text(E2E_LOG)
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_check_tool, "run_e2e", run_e2e)
    assert status_after_ctrl_c(gpu_check_tool.main, ["--e2e", "--device", "cpu", "--quick", "--log", str(log)]) == 130
    assert capsys.readouterr().err.splitlines() == [f"interrupted (Ctrl-C); the checks that ended are in {log}"]
    assert log.read_text() == E2E_LOG


@pytest.mark.parametrize("argv, message", [
    (["--dry-run"], "--dry-run needs --e2e"),
    (["--device", "cpu", "--only", "kernel"], "--only needs --e2e"),
    (["--log", "e2e.log"], "--log needs --e2e"),
    (["--budget", "0"], "--budget needs --e2e"),
    (["--e2e", "--dry-run", "--budget", "-5"], "--budget must be a positive number of seconds, got -5"),
    (["--report", "e2e.log", "--e2e"], "--report reads logs and runs nothing: drop --e2e"),
    (["--device", "foo"], "--device 'foo' is not one of cpu, cuda, cuda:N"),
    (["--device", "cuda:x", "--e2e", "--dry-run"], "--device 'cuda:x' is not one of cpu, cuda, cuda:N"),
    (["--device", "meta"], "--device 'meta' is not one of cpu, cuda, cuda:N"),
    (["--device", "cpu", "--repeats", "0"], "--repeats must be at least 1"),
    (["--device", "cpu", "--quick", "--repeats", "-2"], "--repeats must be at least 1"),
    (["--device", "cpu", "--plot", "sweep.png"], "--plot draws the sweep of --report logs: give --report LOG ..."),
    (["--report", "e2e.log", "--plot", "no_dir/sweep.png"], "--plot no_dir/sweep.png: its folder does not exist"),
    (["--e2e", "--dry-run", "--repeats", "50"],
     "--repeats is not an option of --e2e: it times the kernel check and --sweep"),
    (["--report", "e2e.log", "--repeats", "50"],
     "--repeats is not an option of --report: it times the kernel check and --sweep"),
])
def test_arguments_that_cannot_run_are_refused_in_one_line(argv, message, monkeypatch, capsys, kernel_check_calls):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert gpu_check_tool.main(argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert kernel_check_calls == []


def test_a_plot_format_matplotlib_cannot_write_is_refused_before_the_logs_are_read(capsys, kernel_check_calls):
    assert gpu_check_tool.main(["--report", "e2e.log", "--plot", "sweep.txt"]) == 2   # a traceback after the report
    err = capsys.readouterr().err
    assert err.startswith("error: --plot sweep.txt: matplotlib cannot write '.txt' files (formats: ")


@pytest.mark.parametrize("argv, repeats", [(["--quick"], 1), ([], 20), (["--quick", "--repeats", "3"], 3)])
def test_the_kernel_check_times_the_repeats_asked_for(argv, repeats, monkeypatch, kernel_check_calls):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert gpu_check_tool.main(["--device", "cpu"] + argv) == 0
    assert kernel_check_calls == [("cpu", "--quick" in argv, repeats, False, True)]


@pytest.mark.parametrize("argv, repeats", [([], 5), (["--repeats", "12"], 12)])
def test_the_sweep_times_the_repeats_asked_for(argv, repeats, monkeypatch, capsys):
    """`--sweep --repeats 12` timed 5 repeats per figure, the flag dropped without a word."""
    calls = []
    monkeypatch.setattr(gpu_check_tool, "memory_and_resolution_sweep",
                        lambda device, quick, repeats=5: calls.append((device, quick, repeats)) or ["table"])
    assert gpu_check_tool.main(["--device", "cpu", "--sweep"] + argv) == 0
    assert calls == [("cpu", False, repeats)] and capsys.readouterr().out == "table\n"


def test_the_sweep_prints_each_table_when_it_ends(monkeypatch, capsys):
    """`--sweep` printed nothing until every table was done (minutes on a GPU; a step of --e2e cut at its time limit
    kept none of them)."""
    printed = []

    def tables(device, quick, repeats=5):
        for name in ("memory", "vim sweep", "vssm sweep"):
            printed.append(capsys.readouterr().out)     # what the tool had printed before this table was computed
            yield name

    monkeypatch.setattr(gpu_check_tool, "memory_and_resolution_sweep", tables)
    assert gpu_check_tool.main(["--device", "cpu", "--sweep"]) == 0
    assert printed == ["", "memory\n", "\nvim sweep\n"] and capsys.readouterr().out == "\nvssm sweep\n"


def test_correctness_table_columns_line_up_whatever_the_case_name():
    widths = column_widths([("conv1d W=2 silu=True", "float32"), ("multi_scan_inner token-major, determ.", "float32"),
                            ("attention_merge K=4", "bfloat16")])
    assert widths == (37, 8)
    assert [check_line(cells, widths) for cells in [
        CHECK_HEADER,
        ("conv1d W=2 silu=True", "float32", "7.26e-08", "2.50e-07", "ok"),
        ("multi_scan_inner token-major, determ.", "float32", "1.27e-07", "3.88e-07", "ok"),
        ("attention_merge K=4", "bfloat16", "-", "-", "ERROR RuntimeError: boom"),
    ]] == [
        "case                                   dtype       out err   grad err  result",
        "conv1d W=2 silu=True                   float32    7.26e-08   2.50e-07  ok",
        "multi_scan_inner token-major, determ.  float32    1.27e-07   3.88e-07  ok",
        "attention_merge K=4                    bfloat16          -          -  ERROR RuntimeError: boom",
    ]


def test_every_row_of_the_quick_correctness_table_lines_up_with_its_header():
    cases, deterministic = correctness_cases(torch.device("cpu"), quick=True)    # makers only: nothing runs
    labels = [(case, dtype) for case, dtype, _ in cases + deterministic]
    labels += [(f"model {name}", "float32") for name in checked_models(quick=True)]
    assert {"conv1d W=2 silu=True", "multi_scan_inner K=4 cls, gate", "model local_vssm_tiny"} <= dict(labels).keys()
    widths = column_widths(labels)
    header = check_line(CHECK_HEADER, widths)
    dtype_at, result_at = header.index("dtype"), header.index("result")
    out_err_end, grad_err_end = header.index("out err") + len("out err"), header.index("grad err") + len("grad err")
    for case, dtype in labels:
        line = check_line((case, dtype, "1.00e-07", "2.00e-07", "ok"), widths)
        assert line[:dtype_at].rstrip() == case and line[dtype_at:].startswith(dtype + " ")
        assert line[out_err_end - 8:out_err_end] == "1.00e-07" and line[grad_err_end - 8:grad_err_end] == "2.00e-07"
        assert line[result_at:] == "ok"


def test_the_ema_row_passes_only_for_the_values_of_timms_ema(monkeypatch, capsys):
    """The GPU check's EMA row (run on the CPU here): 0 difference from ModelEmaV2 passes; an update that rounds
    otherwise (a fused multiply-add) fails it."""
    widths = (40, 8)
    assert ema_check(torch.device("cpu"), quick=True, widths=widths)
    assert capsys.readouterr().out.split() == ["EMA", "update", "local_vim_tiny_wo_search", "float32", "0.00e+00",
                                               "-", "ok"]

    def fused_update(self, model):
        with torch.no_grad():
            for ema_v, model_v in zip(self.module.state_dict().values(), model.state_dict().values()):
                ema_v.mul_(self.decay).add_(model_v, alpha=1. - self.decay)

    monkeypatch.setattr(ForeachModelEma, "update", fused_update)
    assert not ema_check(torch.device("cpu"), quick=True, widths=widths)
    assert capsys.readouterr().out.split()[-1] == "FAIL"


def test_sigterm_during_e2e_stops_the_running_step_and_keeps_its_output(tmp_path):
    """A time limit's SIGTERM (the lent machine's `timeout`: exit 124) ended `--e2e` at once: the running step's
    processes, in a session of their own, went on, and its output was lost. Now the step and what it started are
    killed, its output so far is in the transcript, one line says where, and the exit status is 143."""
    import os
    import signal
    import subprocess
    import sys
    import time

    log, ready, pid = tmp_path / "e2e.log", tmp_path / "ready", tmp_path / "pid"
    step = ("import os, subprocess, sys, time\nprint('case scan ok', flush=True)\n"
            "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid)!r}, 'w').write(f'{{os.getpid()}} {{worker.pid}}')\nopen({str(ready)!r}, 'w').close()\n"
            "time.sleep(120)")
    script = (
        "import importlib.util, sys\nfrom dataclasses import replace\n"
        "from classification.benchmarks import gpu_e2e\n"
        f"spec = importlib.util.spec_from_file_location('tool', {str(TOOL)!r})\n"
        "tool = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(tool)\n"
        "def run_e2e(device, quick, dry_run, log_path, **kwargs):\n"
        "    return gpu_e2e.run_e2e(device, quick, dry_run, log_path, workdir=" + repr(str(tmp_path / "runs")) + ",\n"
        "        runner=lambda s: gpu_e2e.run_command(replace(s, argv=[sys.executable, '-c', " + repr(step) + "])),\n"
        "        **kwargs)\n"
        "tool.run_e2e = run_e2e\n"
        f"sys.exit(tool.main(['--e2e', '--device', 'cpu', '--quick', '--log', {str(log)!r}, '--only', 'kernel']))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TOOL.parents[1])] + sys.path))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=str(TOOL.parents[1]), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = []
    try:
        end = time.perf_counter() + 60
        while not ready.exists() and proc.poll() is None and time.perf_counter() < end:
            time.sleep(0.1)
        assert ready.exists(), proc.communicate()
        started = [int(p) for p in pid.read_text().split()]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err
        assert err.splitlines()[-1] == f"interrupted by SIGTERM; the checks that ended are in {log}"
        text = log.read_text()
        assert "\ncase scan ok\n" in text and "STOPPED" in text.splitlines()[-1]
        time.sleep(0.5)
        try:
            with open(f"/proc/{started[1]}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "reaped"
        assert state in ("Z", "reaped")
    finally:
        if proc.poll() is None:
            proc.kill()
        for left in started:   # the step and its worker, where the tool left them running
            try:
                os.kill(left, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_decoding_step_row_compares_two_calls_from_the_same_state():
    """The state-update row calls its problem once per backend: each call must start from the same state (the op
    updates it in place), so both give one step from it, and the row has outputs but no gradients."""
    import inspect

    from classification.benchmarks.gpu_check import _run
    from classification.benchmarks.op_problems import state_update_problem
    from localmamba_kernel_runtime import backends
    from localmamba_ssm import selective_state_update_ref

    fn, inputs, weights = state_update_problem(torch.device("cpu"), torch.float32, dim=6, dstate=3)
    with backends.restoring_choice():
        backends.force_backend("reference")
        first, first_grads = _run(fn, inputs, weights)
        second, _ = _run(fn, inputs, weights)
    assert [tuple(t.shape) for t in first] == [(2, 6), (2, 6, 3)] and first_grads == [None]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    given = inspect.getclosurevars(fn).nonlocals
    state = given["state"].clone()
    out = selective_state_update_ref(state, inputs[0], given["dt"], given["A"], given["B"], given["C"], given["D"],
                                     z=given["z"], dt_bias=given["dt_bias"], dt_softplus=True)
    assert torch.allclose(first[0], out) and torch.allclose(first[1], state)
    assert not torch.allclose(first[1], given["state"])     # the step changed the copy, not the problem's state
