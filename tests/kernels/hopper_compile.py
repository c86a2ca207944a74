"""Compile a Triton kernel for an H100/H200 (sm_90) without a GPU: PTX, then a cubin with the ptxas that ships with
triton. The interpreter runs kernels but never lowers them; this catches what only the compiler rejects."""
import re
import subprocess
import tempfile
from pathlib import Path
from typing import List, Tuple


def compile_for_hopper(kernel, constexprs: dict, num_warps: int = 4):
    """The compiled kernel; pointer arguments (names ending in ``_ptr``) are fp32 except ``index_ptr`` (int32),
    ``eps`` is fp32 and every other argument an int32."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*i32" if name == "index_ptr" else "*fp32"
        else:
            signature[name] = "fp32" if name == "eps" else "i32"
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def register_usage(compiled) -> Tuple[int, int]:
    """(registers per thread, bytes of spill stores) of a kernel from :func:`compile_for_hopper`, as triton's own
    ptxas reports them for its PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        report = subprocess.run([get_ptxas(90).path, "-v", "-arch=sm_90a", str(ptx), "-o", str(ptx.with_suffix(".o"))],
                                capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", report).group(1))
    return registers, spills


def scan_axis_spread(compiled) -> List[Tuple[int, int, int]]:
    """For every ``tt.scan`` of a compiled kernel, (elements per thread, lanes, warps) along its scan axis, read from
    the operand's blocked layout in the TTGIR. A scan whose axis has one lane and one warp runs as a sequential loop
    in each thread's registers."""
    ttgir = compiled.asm["ttgir"]
    layouts = {}
    for name, body in re.findall(r"^#(\w+) = #ttg\.blocked<\{(.*)\}>", ttgir, re.M):
        fields = {key: [int(v) for v in values.split(",")]
                  for key, values in re.findall(r"(\w+) = \[([\d, ]+)\]", body)}
        layouts[name] = fields
    spreads = []
    for axis, shape, layout in re.findall(
            r'"tt\.scan"\(.*?<\{axis = (\d+) : i32.*?\}> \(\{.*?\}\) : \(tensor<([\dx]+)xf32, #(\w+)>', ttgir, re.S):
        axis, fields = int(axis), layouts[layout]
        lanes, warps = fields["threadsPerWarp"][axis], fields["warpsPerCTA"][axis]
        size = int(shape.split("x")[axis])
        spreads.append((size // (lanes * warps), lanes, warps))
    scans = ttgir.count('"tt.scan"')
    if len(spreads) != scans:   # a TTGIR this reader does not parse must not pass unread
        raise ValueError(f"read {len(spreads)} of the {scans} tt.scan layouts in the TTGIR")
    return spreads


def assert_compiles_well(kernel, constexprs: dict, num_warps: int = 4) -> int:
    """Compile ``kernel`` for sm_90 and fail if ptxas spills registers to local memory or a scan's axis is spread
    over lanes or warps (shuffles at every level instead of a loop in registers); its registers per thread."""
    compiled = compile_for_hopper(kernel, constexprs, num_warps)
    registers, spills = register_usage(compiled)
    where = f"{kernel.fn.__name__} {constexprs}"
    assert spills == 0, f"{where}: {spills} bytes of register spills ({registers} registers)"
    for per_thread, lanes, warps in scan_axis_spread(compiled):
        assert lanes == warps == 1, f"{where}: a scan axis over {lanes} lanes x {warps} warps ({per_thread} per thread)"
    return registers
