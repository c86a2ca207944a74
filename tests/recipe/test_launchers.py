"""The shell launchers build the expected torchrun / srun command lines (stub `python` and `srun` print their argv)."""
import os
import shutil
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TORCHRUN = ["python", os.path.join(REPO, "tools", "torchrun.py")]
SHELLS = [s for s in ("sh", "bash") if shutil.which(s)]
# configs that exist (the launchers refuse a missing one before any process starts), from any folder
CFG = os.path.join(REPO, "configs", "quickstart.yaml")
MM_CFG = os.path.join(REPO, "detection", "configs", "local_mamba", "mask_rcnn_local_vssm_small_fpn_coco.py")

STUB = """#!/bin/sh
echo "{name}"
for arg in "$@"; do echo "$arg"; done
echo "PYTHONPATH=$PYTHONPATH"
echo "MASTER_PORT=$MASTER_PORT"
"""


@pytest.fixture
def stub_path(tmp_path):
    """A PATH whose `python` and `srun` print their name, their arguments one per line, then two env vars."""
    for name in ("python", "srun"):
        path = tmp_path / name
        path.write_text(STUB.format(name=name))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return f"{tmp_path}{os.pathsep}{os.environ['PATH']}"


def run(shell, stub_path, script, *args, cwd=REPO, **env):
    unset = ("MASTER_PORT", "PORT", "NNODES", "PYTHONPATH", "CPUS_PER_TASK", "SRUN_ARGS")
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    environ.update(PATH=stub_path, **env)
    proc = subprocess.run([shell, os.path.join(REPO, script), *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    return lines[:-2], dict(line.split("=", 1) for line in lines[-2:])


def torchrun(gpus, entry, *args, nnodes="1", node_rank="0", addr="127.0.0.1", port="auto"):
    return [*TORCHRUN, f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--nproc_per_node={gpus}",
            f"--master_addr={addr}", f"--master_port={port}", entry, *args]


@pytest.mark.parametrize("shell", SHELLS)
def test_dist_run_runs_the_originals_readme_command_from_the_root(shell, stub_path):
    config = "configs/strategies/local_mamba/config.yaml"
    argv, env = run(shell, stub_path, "tools/dist_run.sh", "tools/test.py", "8", config, "local_vim_tiny",
                    "--resume", "my ckpt.pth")
    assert argv == torchrun("8", "tools/test.py", "-c", config, "--model", "local_vim_tiny", "--resume", "my ckpt.pth")
    assert env == {"PYTHONPATH": REPO, "MASTER_PORT": ""}      # one node: torchrun.py takes a free port


@pytest.mark.parametrize("shell", SHELLS)
def test_dist_train_and_test_wrap_dist_run_with_multi_node_env(shell, stub_path, tmp_path):
    """From another directory the entry resolves against the repository root."""
    nodes = dict(NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="1234")
    argv, _ = run(shell, stub_path, "tools/dist_train.sh", "4", CFG, "m", "-b", "8", cwd=tmp_path, **nodes)
    assert argv == torchrun("4", os.path.join(REPO, "tools/train.py"), "-c", CFG, "--model", "m", "-b", "8",
                            nnodes="2", node_rank="1", addr="10.0.0.1", port="1234")
    argv, _ = run(shell, stub_path, "tools/dist_test.sh", "1", CFG, "m", "--resume", "x.pth")
    assert argv == torchrun("1", os.path.join(REPO, "tools/test.py"), "-c", CFG, "--model", "m", "--resume",
                            "x.pth")
    nodes.pop("MASTER_PORT")      # several nodes agree on torchrun's default port
    argv, _ = run(shell, stub_path, "tools/dist_train.sh", "4", CFG, "m", **nodes)
    assert "--master_port=29500" in argv


@pytest.mark.parametrize("shell", SHELLS)
def test_the_train_and_test_scripts_run_ours_from_a_folder_with_its_own_tools(shell, stub_path, tmp_path):
    """From detection/ (or a project of the user's) the cwd's tools/train.py and tools/test.py were run instead."""
    (tmp_path / "tools").mkdir()
    for name in ("train.py", "test.py"):
        (tmp_path / "tools" / name).write_text("")
    argv, _ = run(shell, stub_path, "tools/dist_train.sh", "2", CFG, "m", cwd=tmp_path)
    assert argv == torchrun("2", os.path.join(REPO, "tools/train.py"), "-c", CFG, "--model", "m")
    argv, _ = run(shell, stub_path, "tools/dist_test.sh", "2", CFG, "m", cwd=tmp_path)
    assert argv == torchrun("2", os.path.join(REPO, "tools/test.py"), "-c", CFG, "--model", "m")
    argv, _ = run(shell, stub_path, "tools/slurm_train.sh", "p", "2", CFG, "m", cwd=tmp_path)
    assert argv[8:12] == ["--signal=USR1@120", "python", "-u", os.path.join(REPO, "tools/train.py")]


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "NODE_RANK"])
def test_several_nodes_without_the_master_address_or_node_rank_are_refused(stub_path, missing):
    """torchrun would wait for a master at 127.0.0.1, or start every node as rank 0, until its timeout."""
    nodes = {k: v for k, v in dict(NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1").items() if k != missing}
    environ = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "NODE_RANK")}
    proc = subprocess.run(["sh", os.path.join(REPO, "tools/dist_train.sh"), "8", CFG, "m"], capture_output=True,
                          text=True, env={**environ, **nodes, "PATH": stub_path})
    assert proc.returncode == 2 and proc.stdout == ""
    assert "NNODES=2 needs MASTER_ADDR (the address of the node with NODE_RANK=0) and NODE_RANK" in proc.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_slurm_run_and_slurm_train(shell, stub_path):
    argv, env = run(shell, stub_path, "tools/slurm_run.sh", "tools/test.py", "part", "16", CFG, "m", "--amp")
    assert argv == ["srun", "--job-name", "train", "--partition=part", "-n16", "--gres=gpu:8", "--ntasks-per-node=8",
                    "--cpus-per-task=5", "python", "-u", "tools/test.py", "-c", CFG, "--model", "m", "--slurm",
                    "--amp"]
    assert env == {"PYTHONPATH": REPO, "MASTER_PORT": ""}     # the tasks take --dist-port (or the user's MASTER_PORT)
    _, env = run(shell, stub_path, "tools/slurm_run.sh", "tools/test.py", "part", "16", CFG, "m",
                 MASTER_PORT="4321")
    assert env["MASTER_PORT"] == "4321"
    argv, _ = run(shell, stub_path, "tools/slurm_train.sh", "p", "2", CFG, "m")
    assert argv[4:10] == ["-n2", "--gres=gpu:2", "--ntasks-per-node=2", "--cpus-per-task=5", "--signal=USR1@120",
                          "python"]                                                            # training
    assert argv[11:] == [os.path.join(REPO, "tools/train.py"), "-c", CFG, "--model", "m", "--slurm"]


@pytest.mark.parametrize("shell", SHELLS)
def test_srun_asks_for_the_stop_warning_for_the_classification_train_py_only(shell, stub_path, tmp_path):
    """mmdet / mmseg's train.py has no SIGUSR1 handler: the warning would kill it two minutes before the time limit."""
    for task in ("detection", "segmentation"):
        argv, _ = run(shell, stub_path, "tools/launch.sh", "srun", "p", "2", f"{task}/tools/train.py", MM_CFG,
                      "--launcher", "slurm")
        assert argv[4:8] == ["-n2", "--gres=gpu:2", "--ntasks-per-node=2", "--cpus-per-task=5"] and argv[8] == "python"
    argv, _ = run(shell, stub_path, "tools/launch.sh", "srun", "p", "2", os.path.join(REPO, "tools", "train.py"),
                  cwd=tmp_path)
    assert argv[8:10] == ["--signal=USR1@120", "python"]


@pytest.mark.parametrize("shell", SHELLS)
def test_srun_gives_each_task_cpus_for_its_loader_and_takes_more_flags(shell, stub_path):
    """Slurm's default is one core per task, where a rank's 16 loader workers would share it; CPUS_PER_TASK and
    SRUN_ARGS (split on spaces) as mmdet's and mmseg's launchers take them."""
    argv, _ = run(shell, stub_path, "tools/slurm_run.sh", "tools/test.py", "p", "2", CFG, "m",
                  CPUS_PER_TASK="12", SRUN_ARGS="--mpi=pmi2 --time=2-00:00:00")
    assert argv[7:11] == ["--cpus-per-task=12", "--mpi=pmi2", "--time=2-00:00:00", "python"]


@pytest.mark.parametrize("task", ["detection", "segmentation"])
@pytest.mark.parametrize("shell", SHELLS)
def test_mm_launchers_keep_the_mm_argument_order_and_port(shell, stub_path, task):
    argv, env = run(shell, stub_path, f"{task}/tools/dist_train.sh", MM_CFG, "2", "--amp", PORT="4321")
    assert argv == torchrun("2", f"{REPO}/{task}/tools/train.py", MM_CFG, "--launcher", "pytorch", "--amp",
                            port="4321")
    assert env["PYTHONPATH"] == REPO
    argv, _ = run(shell, stub_path, f"{task}/tools/dist_test.sh", MM_CFG, "w.pth", "8")
    assert argv == torchrun("8", f"{REPO}/{task}/tools/test.py", MM_CFG, "w.pth", "--launcher", "pytorch")
    # MASTER_PORT (the name tools/dist_*.sh take) when PORT is unset
    for script, args in (("dist_train.sh", [MM_CFG, "2"]), ("dist_test.sh", [MM_CFG, "w.pth", "8"])):
        argv, _ = run(shell, stub_path, f"{task}/tools/{script}", *args, MASTER_PORT="4322")
        assert "--master_port=4322" in argv
        argv, _ = run(shell, stub_path, f"{task}/tools/{script}", *args, MASTER_PORT="4322", PORT="4321")
        assert "--master_port=4321" in argv


@pytest.mark.parametrize("task", ["detection", "segmentation"])
@pytest.mark.parametrize("shell", SHELLS)
def test_mm_launchers_run_through_a_link_to_them_or_to_their_folder(shell, stub_path, tmp_path, task):
    """A link to detection/tools/dist_train.sh ended in 'cannot open .../../tools/mm_dist_run.sh', and its train.py
    was looked for beside the link."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "dist_train.sh").symlink_to(os.path.join(REPO, task, "tools", "dist_train.sh"))
    (tmp_path / "linked_tools").symlink_to(os.path.join(REPO, task, "tools"))
    for script in ("bin/dist_train.sh", "linked_tools/dist_train.sh"):
        argv, env = run(shell, stub_path, str(tmp_path / script), MM_CFG, "2", cwd=tmp_path)
        assert argv == torchrun("2", f"{REPO}/{task}/tools/train.py", MM_CFG, "--launcher", "pytorch")
        assert env["PYTHONPATH"] == REPO
    argv, _ = run(shell, stub_path, str(tmp_path / "linked_tools" / "dist_test.sh"), MM_CFG, "w.pth", "8",
                  cwd=tmp_path)
    assert argv == torchrun("8", f"{REPO}/{task}/tools/test.py", MM_CFG, "w.pth", "--launcher", "pytorch")


@pytest.mark.parametrize("script, args", [("tools/dist_run.sh", ["a", "1", "c"]), ("tools/slurm_run.sh", ["a"]),
                                          ("tools/dist_train.sh", []), ("detection/tools/dist_test.sh", ["c", "k"])])
def test_too_few_arguments_print_usage(stub_path, script, args):
    proc = subprocess.run(["sh", os.path.join(REPO, script), *args], capture_output=True, text=True,
                          env={**os.environ, "PATH": stub_path})
    assert proc.returncode == 2 and "usage:" in proc.stderr and proc.stdout == ""


def test_the_original_readme_evaluation_config_path_is_the_recipe():
    from classification.engine.config import parse_args

    named = vars(parse_args(["-c", os.path.join(REPO, "configs/strategies/local_vmamba/config.yaml")]))
    recipe = vars(parse_args(["-c", os.path.join(REPO, "configs/strategies/local_mamba/config.yaml")]))
    assert {k: v for k, v in named.items() if k != "config"} == {k: v for k, v in recipe.items() if k != "config"}
    assert (named["aa"], named["lr"], named["epochs"]) == ("rand-m9-mstd0.5", 1e-3, 300)


def test_install_mm_prints_its_usage_for_help_and_refuses_other_arguments():
    """`install_mm.sh --help` started the install (it read no argument); PYTHON=false: nothing may run past the
    argument check."""
    script, env = os.path.join(REPO, "tools", "install_mm.sh"), {**os.environ, "PYTHON": "false"}
    shown = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and shown.stderr == ""
    assert shown.stdout.startswith("Install the OpenMMLab stack used by detection/ and segmentation/:\n")
    assert "Usage: bash tools/install_mm.sh " in shown.stdout and "  FORCE_CUDA " in shown.stdout
    assert "#" not in shown.stdout.replace("<CUDA_HOME>", "") and "set -euo" not in shown.stdout
    refused = subprocess.run(["bash", script, "--cuda"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == ("install_mm.sh: unexpected argument(s) --cuda: it takes none; settings come from "
                              "environment variables (bash tools/install_mm.sh --help)\n")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("gpus", ["c.yaml", "0", "two", "-1", ""])
def test_a_process_count_that_is_not_a_whole_number_is_one_line(shell, stub_path, gpus):
    """mmdet's argument order given to tools/dist_train.sh put the config where the process count goes: torchrun
    failed with a 30-line traceback (a bare AssertionError for 0)."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ["PATH"] = stub_path
    proc = subprocess.run([shell, os.path.join(REPO, "tools/dist_train.sh"), gpus, CFG, "m"], cwd=REPO,
                          env=environ, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"error: the number of processes (GPUS) must be a whole number from 1, got '{gpus}': check "
                           f"the order of the arguments (tools/dist_train.sh GPUS CONFIG MODEL; tools/slurm_train.sh "
                           f"PARTITION GPUS CONFIG MODEL; the det/seg dist_train.sh CONFIG GPUS)\n")


def test_the_slurm_scripts_without_srun_say_what_to_use(tmp_path):
    """Without Slurm the script ended in the shell's 'exec: srun: not found' (status 127)."""
    bin_dir = tmp_path / "bin"                  # a PATH with python but no srun
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(shutil.which("python"))
    proc = subprocess.run(["sh", os.path.join(REPO, "tools/slurm_train.sh"), "part", "2", CFG, "m"], cwd=REPO,
                          env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == 127 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: srun not found: the slurm_*.sh scripts submit to Slurm; on a machine without it use "
        "tools/dist_train.sh / tools/dist_run.sh (torchrun)")


@pytest.mark.parametrize("shell", SHELLS)
def test_the_scripts_run_through_a_link_to_them_or_to_their_folder(shell, stub_path, tmp_path):
    """A link to dist_train.sh ended in 'cannot open .../dist_run.sh'; through a linked tools/ folder the folder
    above the link went on PYTHONPATH as the repository root (an installed checkout's code ran instead)."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "dist_train.sh").symlink_to(os.path.join(REPO, "tools", "dist_train.sh"))
    (tmp_path / "linked_tools").symlink_to(os.path.join(REPO, "tools"))
    for script in ("bin/dist_train.sh", "linked_tools/dist_train.sh"):
        argv, env = run(shell, stub_path, str(tmp_path / script), "2", CFG, "m", cwd=tmp_path)
        assert argv == torchrun("2", os.path.join(REPO, "tools", "train.py"), "-c", CFG, "--model", "m")
        assert env["PYTHONPATH"] == REPO
    argv, _ = run(shell, stub_path, str(tmp_path / "linked_tools" / "slurm_train.sh"), "p", "2", CFG, "m",
                  cwd=tmp_path)
    assert argv[10:12] == ["-u", os.path.join(REPO, "tools", "train.py")]


def launch_error(stub_path, **env):
    """tools/dist_train.sh 2 CFG m with `env` (the node variables unset otherwise): status, stdout, stderr."""
    node_variables = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
    environ = {k: v for k, v in os.environ.items() if k not in node_variables}
    proc = subprocess.run(["sh", os.path.join(REPO, "tools/dist_train.sh"), "2", CFG, "m"], capture_output=True,
                          text=True, env={**environ, **env, "PATH": stub_path})
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("nnodes", ["two", "0", "1:2"])
def test_a_node_count_that_is_not_a_whole_number_is_one_line(stub_path, nnodes):
    """torchrun ended in a ValueError or AssertionError traceback."""
    assert launch_error(stub_path, NNODES=nnodes, NODE_RANK="0", MASTER_ADDR="10.0.0.1") == (
        2, "", f"error: NNODES (the number of nodes) must be a whole number from 1, got '{nnodes}'\n")


@pytest.mark.parametrize("nnodes, node_rank", [("2", "2"), ("2", "x"), (None, "1"), ("1", "1")])
def test_a_node_rank_outside_the_nodes_is_one_line(stub_path, nnodes, node_rank):
    """torchrun waited for the missing nodes without a word (NODE_RANK=1 left from a multi-node shell: forever)."""
    env = dict(NODE_RANK=node_rank, MASTER_ADDR="10.0.0.1", **({"NNODES": nnodes} if nnodes else {}))
    assert launch_error(stub_path, **env) == (
        2, "", f"error: NODE_RANK (this node's, from 0) must be a whole number below NNODES ({nnodes or 1}: set it to "
               f"the number of nodes on every node), got '{node_rank}'\n")


@pytest.mark.parametrize("shell", SHELLS)
def test_one_node_is_its_own_master_whatever_master_addr_says(shell, stub_path):
    """A MASTER_ADDR left in the environment (a cluster's, another job's) sent the workers of a one-node launch to
    that address, where they waited without a word."""
    for nodes in ({}, {"NNODES": "1", "NODE_RANK": "0"}):
        argv, _ = run(shell, stub_path, "tools/dist_train.sh", "2", CFG, "m", MASTER_ADDR="10.0.0.1", **nodes)
        assert argv == torchrun("2", os.path.join(REPO, "tools/train.py"), "-c", CFG, "--model", "m")


@pytest.mark.parametrize("port", ["abc", "70000", "0", "1234567890123456789012"])
def test_a_master_port_that_is_no_port_number_is_one_line(stub_path, port):
    """torchrun printed its whole usage (not a number) or a ValueError traceback (past 65535)."""
    assert launch_error(stub_path, MASTER_PORT=port) == (
        2, "", f"error: MASTER_PORT (the det/seg scripts: PORT) must be a port number from 1 to 65535, got '{port}'\n")


@pytest.mark.parametrize("mode", [["torchrun", "2"], ["srun", "p", "2"]])
def test_an_entry_found_nowhere_is_one_line_naming_both_places(stub_path, tmp_path, mode):
    """Each worker printed python's "can't open file" naming the current directory only (the root was tried too)."""
    environ = {**os.environ, "PATH": stub_path}
    proc = subprocess.run(["sh", os.path.join(REPO, "tools/launch.sh"), *mode, "tools/tset.py", "-c", CFG],
                          cwd=tmp_path, env=environ, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"error: entry script tools/tset.py not found, neither from the current directory "
                           f"{tmp_path} nor from the repository root {REPO}\n")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("launcher", [["tools/dist_train.sh", "2"], ["tools/slurm_train.sh", "p", "2"]])
def test_the_command_shown_before_the_launch_reads_back_as_the_command_run(shell, stub_path, tmp_path, launcher):
    """`sh`'s trace showed `-c my cfg.yaml` without quotes: copied from the log, it ran with other arguments."""
    import shlex

    environ = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "PORT", "NNODES", "SRUN_ARGS")}
    (tmp_path / "my cfg.yaml").write_text("seed: 1\n")
    proc = subprocess.run([shell, os.path.join(REPO, launcher[0]), *launcher[1:], "my cfg.yaml", "m", "--experiment",
                           "it's $HOME", "--opt", ""], cwd=tmp_path, env={**environ, "PATH": stub_path},
                          capture_output=True, text=True, check=True)
    shown = [line for line in proc.stderr.splitlines() if line.startswith("+ ")]
    assert len(shown) == 1 and shlex.split(shown[0][2:]) == proc.stdout.splitlines()[:-2]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_ctrl_c_while_the_launcher_imports_stops_it_quietly(tmp_path):
    """Ctrl-C in the first seconds of a launch (the launcher still importing torch and the models) printed a
    KeyboardInterrupt traceback of some 30 lines."""
    import signal
    import time

    (tmp_path / "x.py").write_text("")
    environ = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "NNODES", "NODE_RANK")}
    proc = subprocess.Popen(["sh", os.path.join(REPO, "tools/launch.sh"), "torchrun", "1", str(tmp_path / "x.py")],
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    cmdline = f"/proc/{proc.pid}/cmdline"
    deadline = time.time() + 30
    while time.time() < deadline and b"torchrun.py" not in open(cmdline, "rb").read():  # sh exec'd python
        time.sleep(0.01)
    time.sleep(0.3)                                   # python is up, importing
    os.killpg(proc.pid, signal.SIGINT)                # the terminal's Ctrl-C goes to the whole group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT          # the shell reports 130
    assert [line for line in stderr.splitlines() if not line.startswith("+ ")] == []


def test_the_launcher_starts_without_importing_the_models():
    """tools/torchrun.py imported classification.engine.torchrun through classification/__init__.py: timm,
    torchvision and every model, some 3 s of each launch before any worker started, in a process that uses none of
    them (its workers are new interpreters)."""
    import sys

    proc = subprocess.run([sys.executable, "-X", "importtime", os.path.join(REPO, "tools", "torchrun.py"), "--help"],
                          capture_output=True, text=True, timeout=120, check=True)
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert {"torch.distributed.run", "classification.engine.torchrun", "classification.common.signals"} <= imported
    assert {"classification", "timm", "torchvision"} & imported == set()
    assert [name for name in imported if name.startswith(("classification.models", "classification.data"))] == []
    assert proc.stdout.startswith("usage: torchrun.py") and "--nproc-per-node" in proc.stdout   # torchrun's help


# Imports the launcher's wrapper as tools/torchrun.py does, then the real package in the same process.
WRAPPER_THEN_THE_PACKAGE = """
import runpy, sys
main = runpy.run_path(sys.argv[1])["wrapper_main"]()
assert main.__module__ == "classification.engine.torchrun"
assert "classification" not in sys.modules and "classification.engine" not in sys.modules, "bare packages left"
import classification, timm
from classification.engine.torchrun import main as imported_main
assert imported_main is main and "local_vim_tiny" in timm.list_models(), "the real package after the wrapper"
print("ok")
"""


def test_the_launchers_bare_packages_leave_the_real_package_to_later_imports():
    """The packages tools/torchrun.py imports the wrapper through, without their __init__.py, are gone once it has
    it: an `import classification` after it in the launcher's process registers the models as usual."""
    import sys

    proc = subprocess.run([sys.executable, "-c", WRAPPER_THEN_THE_PACKAGE, os.path.join(REPO, "tools", "torchrun.py")],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stderr[-3000:]


def test_the_interpreter_is_python_or_the_one_python_names(tmp_path):
    """Where PATH has no `python` (python3 only, no environment active) the launch ended in 'exec: python: not
    found'; PYTHON names another interpreter, as for tools/install_mm.sh (srun's tasks run it too)."""
    bin_dir = tmp_path / "bin"                   # the commands the scripts use, stubs for srun and the interpreter
    bin_dir.mkdir()
    for name in ("sh", "dirname", "readlink", "sed", "basename"):
        (bin_dir / name).symlink_to(shutil.which(name))
    for name in ("my-python", "srun"):
        (bin_dir / name).write_text(STUB.format(name=name))
        (bin_dir / name).chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "NNODES", "PYTHON", "SRUN_ARGS")}
    environ["PATH"] = str(bin_dir)
    train = [os.path.join(REPO, "tools/dist_train.sh"), "2", CFG, "m"]
    missing = subprocess.run(["sh", *train], env=environ, capture_output=True, text=True)
    assert (missing.returncode, missing.stdout) == (127, "")
    assert missing.stderr == ("error: python not found on PATH: activate the environment that has torch, or name its "
                              "interpreter in PYTHON (e.g. PYTHON=python3)\n")
    for script in (train, [os.path.join(REPO, "tools/slurm_train.sh"), "p", "2", CFG, "m"]):
        named = subprocess.run(["sh", *script], env={**environ, "PYTHON": "my-python"}, capture_output=True,
                               text=True)
        argv = named.stdout.splitlines()[:-2]
        assert named.returncode == 0 and "my-python" in argv and "python" not in argv


@pytest.mark.parametrize("script, args", [
    ("tools/dist_train.sh", ["8", "{config}", "m"]),
    ("tools/dist_test.sh", ["8", "{config}", "m", "--resume", "x.pth"]),
    ("tools/slurm_train.sh", ["p", "16", "{config}", "m"]),
    ("detection/tools/dist_train.sh", ["{config}", "8"]),
    ("segmentation/tools/dist_test.sh", ["{config}", "w.pth", "8"]),
])
@pytest.mark.parametrize("config", ["configs/no_such.yaml", "/no/such/config.py"])
def test_a_missing_config_is_one_line_before_any_process_starts(stub_path, tmp_path, script, args, config):
    """Every torchrun process (or srun task) printed the same error, after seconds of imports each, with torchrun's
    report below; now the launcher says it once and starts nothing (the stub python and srun would print)."""
    proc = subprocess.run(["sh", os.path.join(REPO, script), *(arg.format(config=config) for arg in args)],
                          cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PATH": stub_path})
    where = "" if config.startswith("/") else f" (relative to the current directory {tmp_path})"
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: config file not found: {config}{where}\n")


def test_the_launchers_config_setting_does_not_reach_the_processes(tmp_path):
    """LAUNCH_CONFIG is the launcher's own: a process that starts another launch must not inherit it."""
    python = tmp_path / "python"            # a stub that prints its environment
    python.write_text("#!/bin/sh\nenv\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    for script, args in (("tools/dist_train.sh", ["2", CFG, "m"]), ("detection/tools/dist_train.sh", [MM_CFG, "2"])):
        proc = subprocess.run(["sh", os.path.join(REPO, script), *args], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}, check=True)
        assert "PET_SIGNALS_TO_HANDLE=" in proc.stdout                    # the stub ran, showing what it was given
        assert "LAUNCH_CONFIG=" not in proc.stdout
