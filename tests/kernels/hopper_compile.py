"""Compile a Triton kernel for an H100/H200 (sm_90) without a GPU: PTX, then a cubin with the ptxas that ships with
triton. The interpreter runs kernels but never lowers them; this catches what only the compiler rejects.

Works with triton 3.0 (torch 2.4's) to 3.8, whose compile entry points differ: constexprs inside the signature in 3.6
and 3.8, beside it in 3.0 to 3.2 (keyed by argument name in 3.2, by position in 3.0 and 3.1)."""
import inspect
import re
import subprocess
import tempfile
from pathlib import Path
from typing import List, Tuple


def triton_version() -> Tuple[int, int]:
    """(major, minor) of the installed triton."""
    import triton

    major, minor = triton.__version__.split(".")[:2]
    return int(major), int(minor)


def _argument_type(name: str) -> str:
    if name.endswith("_ptr"):
        return "*i32" if name == "index_ptr" else "*fp32"
    return "fp32" if name == "eps" else "i32"


def compile_for_hopper(kernel, constexprs: dict, num_warps: int = 4):
    """The compiled kernel; pointer arguments (names ending in ``_ptr``) are fp32 except ``index_ptr`` (int32),
    ``eps`` is fp32 and every other argument an int32."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "constexprs" in inspect.signature(ASTSource).parameters:
        signature = {name: "constexpr" if name in constexprs else _argument_type(name) for name in kernel.arg_names}
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    else:
        key = (lambda position, name: name) if triton_version() >= (3, 2) else (lambda position, name: position)
        signature = {key(i, name): _argument_type(name) for i, name in enumerate(kernel.arg_names)
                     if name not in constexprs}
        constants = {key(i, name): constexprs[name] for i, name in enumerate(kernel.arg_names) if name in constexprs}
        source = ASTSource(fn=kernel, signature=signature, constants=constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def _ptxas() -> str:
    from triton.backends.nvidia import compiler

    if not hasattr(compiler, "get_ptxas"):
        return compiler._path_to_binary("ptxas")[0]        # triton 3.0 to 3.2
    takes_arch = bool(inspect.signature(compiler.get_ptxas).parameters)    # not in triton 3.4 and 3.5
    tool = compiler.get_ptxas(90) if takes_arch else compiler.get_ptxas()
    return tool[0] if isinstance(tool, tuple) else tool.path             # triton 3.3: (path, version)


def register_usage(compiled) -> Tuple[int, int]:
    """(registers per thread, bytes of spill stores) of a kernel from :func:`compile_for_hopper`, as triton's own
    ptxas reports them for its PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        report = subprocess.run([_ptxas(), "-v", "-arch=sm_90a", str(ptx), "-o", str(ptx.with_suffix(".o"))],
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
    for name, body in re.findall(r"^#(\w+) = #(?:ttg|triton_gpu)\.blocked<\{(.*)\}>", ttgir, re.M):
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


def allowed_spill_bytes() -> int:
    """Spills tolerated: none with the ptxas of triton >= 3.6 (the GPU image's 3.6, CI's 3.8); 16 bytes with older
    ones, whose ptxas (CUDA 12.4 in triton 3.0 to 3.2) spills 8 bytes at 40 registers in the conv backward's atomic
    variant, a spill that no register pressure explains."""
    return 0 if triton_version() >= (3, 6) else 16


def assert_compiles_well(kernel, constexprs: dict, num_warps: int = 4) -> int:
    """Compile ``kernel`` for sm_90 and fail if ptxas spills registers to local memory (beyond
    :func:`allowed_spill_bytes`) or a scan's axis is spread over lanes or warps (shuffles at every level instead of a
    loop in registers); its registers per thread."""
    compiled = compile_for_hopper(kernel, constexprs, num_warps)
    registers, spills = register_usage(compiled)
    where = f"{kernel.fn.__name__} {constexprs}"
    assert spills <= allowed_spill_bytes(), f"{where}: {spills} bytes of register spills ({registers} registers)"
    for per_thread, lanes, warps in scan_axis_spread(compiled):
        assert lanes == warps == 1, f"{where}: a scan axis over {lanes} lanes x {warps} warps ({per_thread} per thread)"
    return registers
