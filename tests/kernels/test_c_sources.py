"""The C kernels as files: every source compiles without a warning, every ctypes mirror of an argument struct matches
its C struct (a wrong mirror is refused by name), and the install ships every source."""
import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localmamba_conv1d import cpu_conv1d
from localmamba_kernel_runtime import ckernel, kernel_args
from localmamba_ssm.ops.cpu import attention_merge_cpu, multi_scan_cpu, selective_scan_cpu, state_update_cpu

REPO = Path(__file__).resolve().parents[2]
KERNEL_MODULES = (cpu_conv1d, selective_scan_cpu, multi_scan_cpu, attention_merge_cpu, state_update_cpu)
C_SOURCES = sorted({*(REPO / "causal-conv1d").rglob("*.c"), *(REPO / "mamba-1p1p1").rglob("*.c")})
needs_compiler = pytest.mark.skipif(ckernel.compiler() is None, reason="no C compiler")
ARM_COMPILER = shutil.which("aarch64-linux-gnu-gcc")


def test_every_c_source_is_a_kernel_source():
    """No C file lies unused beside the packages: each is the source of a kernel library or the task runner."""
    used = {ckernel.TASK_RUNNER, *(path for module in KERNEL_MODULES for path in module.SOURCES)}
    assert set(C_SOURCES) == used and len(C_SOURCES) == 6


@needs_compiler
@pytest.mark.parametrize("isa", ckernel.ISAS)
@pytest.mark.parametrize("source", C_SOURCES, ids=lambda p: p.name)
def test_c_source_compiles_without_warnings(source, isa, tmp_path):
    """-Wall -Wextra -Werror with the flags the kernels are built with, for every instruction set (compiling needs
    no CPU support for it)."""
    flags = [f for f in ckernel.compile_flags(isa) if f not in ("-shared",)]
    assert set(ckernel.ISA_FLAGS[isa]) <= set(flags)
    cmd = [*ckernel.compiler(), *flags, "-fopenmp", "-Werror", "-I", str(ckernel.RUNTIME_SOURCES), "-c", str(source),
           "-o", str(tmp_path / "out.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.skipif(ARM_COMPILER is None, reason="no aarch64 cross compiler (aarch64-linux-gnu-gcc; .ci/run installs "
                                                 "Debian's gcc-aarch64-linux-gnu where it can)")
@pytest.mark.parametrize("source", C_SOURCES, ids=lambda p: p.name)
def test_c_source_compiles_for_arm_without_warnings(source, tmp_path):
    """What an ARM machine (aarch64 Linux) builds: the baseline flags, the generic vector code on NEON registers,
    -Werror; linked into a shared library with the task runner, as the kernels are."""
    sources = {source, ckernel.TASK_RUNNER}
    cmd = [ARM_COMPILER, *ckernel.compile_flags("baseline"), "-fopenmp", "-Werror", "-I", str(ckernel.RUNTIME_SOURCES),
           *map(str, sorted(sources)), "-o", str(tmp_path / "kernel.so")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    assert (tmp_path / "kernel.so").read_bytes()[18] == 183         # ELF e_machine: EM_AARCH64


@needs_compiler
@pytest.mark.parametrize("module", KERNEL_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_args_mirrors_match_the_c_structs(module):
    lib = module.load_kernel()
    assert lib is not None
    mirrors = {cls for cls in vars(module).values()
               if isinstance(cls, type) and issubclass(cls, ctypes.Structure) and cls.__module__ == module.__name__}
    assert mirrors
    for struct in mirrors:
        kernel_args.check_args_layout(lib, struct)
        size, fields = kernel_args.args_layout(lib, struct.__name__)
        assert size == ctypes.sizeof(struct) and [name for name, _, _ in fields] == [f[0] for f in struct._fields_]


@needs_compiler
def test_multi_scan_args_has_its_36_fields_with_an_int64_index():
    size, fields = kernel_args.args_layout(multi_scan_cpu.load_kernel(), "MultiScanArgs")
    assert len(fields) == 36 and size == 13 * 8 + 23 * ctypes.sizeof(ctypes.c_void_p)
    assert dict((name, offset) for name, offset, _ in fields)["index"] == 13 * 8


@needs_compiler
def test_a_wrong_mirror_is_refused_by_field():
    lib = multi_scan_cpu.load_kernel()
    fields = list(multi_scan_cpu.MultiScanArgs._fields_)
    swapped = fields[:2] + [fields[3], fields[2]] + fields[4:]
    wrong = type("MultiScanArgs", (ctypes.Structure,), {"_fields_": swapped})
    with pytest.raises(kernel_args.KernelArgsMismatchError,
                       match=r"MultiScanArgs.*field 2 is \('seqlen', 16, 8\) in C but \('ntok', 16, 8\) in Python"):
        kernel_args.check_args_layout(lib, wrong)
    short = type("MultiScanArgs", (ctypes.Structure,), {"_fields_": fields[:-1]})
    with pytest.raises(kernel_args.KernelArgsMismatchError,
                       match="C has 36 fields and 288 bytes, the mirror 35 fields"):
        kernel_args.check_args_layout(lib, short)
    narrow = type("AttentionMergeArgs", (ctypes.Structure,),
                  {"_fields_": [(n, ctypes.c_int32) if t is ctypes.c_int64 else (n, t)
                                for n, t in attention_merge_cpu.AttentionMergeArgs._fields_]})
    with pytest.raises(kernel_args.KernelArgsMismatchError,
                       match=r"field 0 is \('batch', 0, 8\) in C but \('batch', 0, 4\)"):
        kernel_args.check_args_layout(attention_merge_cpu.load_kernel(), narrow)


@pytest.mark.parametrize("setup_dir", [REPO, REPO / "causal-conv1d", REPO / "mamba-1p1p1"],
                         ids=["root", "conv1d", "ssm"])
def test_install_ships_every_c_source(setup_dir, tmp_path):
    """What ``pip install`` copies (setuptools' build_py) holds every .c / .h of the packages it installs."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=setup_dir,
                   check=True, capture_output=True, text=True)
    shipped = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.suffix in (".c", ".h")}
    expected = {
        "localmamba_conv1d/csrc/causal_conv1d.c",
        "localmamba_kernel_runtime/csrc/task_runner.c",
        "localmamba_kernel_runtime/csrc/vector_math.h",
        "localmamba_kernel_runtime/csrc/kernel_args.h",
        "localmamba_ssm/ops/cpu/csrc/selective_scan.c",
        "localmamba_ssm/ops/cpu/csrc/multi_scan.c",
        "localmamba_ssm/ops/cpu/csrc/attention_merge.c",
        "localmamba_ssm/ops/cpu/csrc/state_update.c",
    }
    if setup_dir.name == "causal-conv1d":
        expected = {p for p in expected if not p.startswith("localmamba_ssm")}
    elif setup_dir.name == "mamba-1p1p1":
        expected = {p for p in expected if p.startswith("localmamba_ssm")}
    assert shipped == expected
