"""``mot.generation`` is a low layer: it imports no model kind and nothing above them, anywhere in a file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mot.generation

SRC = Path(mot.generation.__file__).parents[1]  # src/mot
ABOVE = ("mot.thoughts", "mot.moellama", "mot.multitoken", "mot.evaluation", "mot.serve", "mot.cli",
         "mot.loading", "mot.training")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):  # module level and inside functions alike
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _climbs(names: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == b or n.startswith(b + ".") for b in banned))


@pytest.mark.parametrize("path", sorted((SRC / "generation").glob("*.py")), ids=lambda p: p.name)
def test_generation_imports_no_model_kind(path):
    assert _climbs(_imports(path), ABOVE) == []


def test_the_upward_imports_it_replaced_are_gone():
    assert _climbs(_imports(SRC / "serve" / "hf_generator.py"), ("mot.evaluation",)) == []
    assert _climbs(_imports(SRC / "evaluation" / "babeltower.py"), ("mot.thoughts",)) == []


def test_every_name_the_old_module_exported_is_still_there():
    for name in ("GREEDY_BELOW", "CancelOnEvent", "GenerationParams", "Message", "Piece", "TextGenerator",
                 "TokenQueueStreamer", "first_stop", "generate_in_thread"):
        assert hasattr(mot.generation, name), name
