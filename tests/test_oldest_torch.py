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
