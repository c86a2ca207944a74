"""What the oldest torch that setup.py allows (2.4) needs of our code, which CI, on the newest, cannot see."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("classification", "mamba-1p1p1", "causal-conv1d")


def modules_defining_custom_ops() -> list[Path]:
    """The library's Python files that register a ``torch.library.custom_op``."""
    return [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            if "torch.library.custom_op(" in path.read_text(encoding="utf-8")]


def stringifies_annotations(path: Path) -> bool:
    """True when the module starts with ``from __future__ import annotations``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
               and any(alias.name == "annotations" for alias in node.names) for node in tree.body)


def test_custom_op_signatures_are_real_annotations():
    """torch 2.4's custom_op reads a signature's annotations as types, and 2.5's evaluates strings without
    ``typing.Tuple``: with ``from __future__ import annotations`` in these modules, importing the library raised a
    ValueError on both (measured: torch 2.4.1 and 2.5.1)."""
    modules = modules_defining_custom_ops()
    assert len(modules) >= 9, modules   # scan maps, three cpu ops, three triton ops, two conv1d ops
    assert [m for m in modules if stringifies_annotations(m)] == []


def torch_c_attributes_read_in(path: Path, function: str) -> list[str]:
    """The ``torch._C.NAME`` attributes that the module-level function ``function`` of ``path`` reads."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == function)
    return [node.attr for node in ast.walk(body) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute) and node.value.attr == "_C"
            and isinstance(node.value.value, ast.Name) and node.value.value.id == "torch"]


def test_backend_choice_reads_torch_state_through_dynamo_constants():
    """Every op chooses its backend inside a compiled model; torch 2.4's dynamo breaks the graph at a call of
    ``torch._C._are_functorch_transforms_active()`` there ("torch.* op returned non-Tensor bool": 22 graph breaks in
    a compiled LocalVim, measured on torch 2.4.1), so ``select`` reads it through a function dynamo takes as a
    constant, as it does the environment variable."""
    from localmamba_kernel_runtime import backends

    assert torch_c_attributes_read_in(ROOT / "causal-conv1d/localmamba_kernel_runtime/backends.py", "select") == []
    assert backends._functorch_transforms_active._dynamo_marked_constant is True
    assert backends._environment_choice._dynamo_marked_constant is True
