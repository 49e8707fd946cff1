"""Each library name is defined once in ``src/mot``: two top-level functions or classes of one name in two
modules are either one job written twice or two jobs under a misleading name."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mot"

def _definitions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        if module.startswith("cli/"):  # typer command functions (train, generate, chat...) may share names
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                found[node.name].append(module)
    return found


def test_each_public_name_is_defined_in_one_module():
    twice = {name: modules for name, modules in _definitions().items() if len(modules) > 1}
    assert twice == {}
