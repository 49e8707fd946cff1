"""The import graph of ``src/mot``: no import cycle, and no import that climbs a layer.

Every ``import``/``from ... import`` counts, at module level, inside functions and under
``TYPE_CHECKING`` alike: a function-level import only hides a cycle, it does not remove it.  A name
imported from a package resolves to the module that defines it (the package's ``__init__`` re-exports
it, eagerly or through a lazy ``_EXPORTS`` table), so a package's own re-export plumbing is not a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Layers, low to high.  A module may import from its own layer or a lower one, never a higher one.
# ``mot.evaluation`` is split: its scorers, metrics, runner and benchmark evaluators sit below the
# model kinds, whose own scorers (``mot.thoughts.scoring``, ``mot.moellama.evaluate``) build on them;
# the lm-evaluation-harness bridge, which opens every kind, sits above them beside ``mot.loading``.
# The longest matching prefix names a module's layer.
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["mot", "mot.errors", "mot.config", "mot.io", "mot.log", "mot.layers", "mot.generation", "mot.chat"]),
    ("components", ["mot.routing", "mot.experts", "mot.data", "mot.training", "mot.testing"]),
    ("evaluators", ["mot.evaluation"]),
    ("model kinds", ["mot.thoughts", "mot.moellama", "mot.multitoken"]),
    ("assembly", ["mot.loading", "mot.evaluation.harness", "mot.evaluation.harness_tasks"]),
    ("applications", ["mot.serve", "mot.demo"]),
    ("command line", ["mot.cli", "mot.__main__"]),
]

# Packages of one layer that must not import one another: each model kind stands on the shared
# layers below it (``mot.layers``, ``mot.generation``, ``mot.training``...), never on another kind.
INDEPENDENT: list[str] = ["mot.thoughts", "mot.moellama", "mot.multitoken"]

# Imports the layers allow but the map does not: the server reaches models through ``mot.loading``
# and ``mot.generation``, never through the evaluators.
FORBIDDEN: list[tuple[str, str]] = [("mot.serve", "mot.evaluation")]

def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted((SRC / "mot").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _existing(name: str) -> str | None:
    """The module ``name`` is, or the nearest package/module above it that exists."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if _is_package(module) else module.rpartition(".")[0]
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _reexports(package: str) -> dict[str, str]:
    """``name -> module`` for the names a package's ``__init__`` imports from elsewhere, eagerly or
    through a lazy ``_EXPORTS = {name: module}`` table."""
    tree = ast.parse(MODULES[package].read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            source = _existing(_absolute(package, node))
            for alias in node.names:
                out[alias.asname or alias.name] = _existing(f"{source}.{alias.name}") or source
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS"
                                                  for t in node.targets):
            table = ast.literal_eval(node.value)
            for name, target in table.items():
                full = target if target.startswith("mot.") or target == "mot" else f"{package}.{target}"
                out[name] = _existing(full) or package
    return out


def _targets(module: str, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [t for a in node.names if a.name.split(".")[0] == "mot" and (t := _existing(a.name))]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = _absolute(module, node)
    if base.split(".")[0] != "mot":
        return []
    source = _existing(base)
    if source is None:
        return []
    out = []
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        if sub in MODULES:
            out.append(sub)
        elif _is_package(source) and source != module:
            out.append(_reexports(source).get(alias.name, source))
        else:
            out.append(source)
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _targets(module, node):
                # a module's own ancestor packages are already being imported when it runs: plumbing
                if target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _rank(module: str) -> int | None:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


GRAPH = _graph()


def test_the_graph_sees_function_level_and_reexported_imports():
    # function-level: the CLI imports its libraries inside the commands
    assert "mot.thoughts.run" in GRAPH["mot.cli.thoughts_cmd"]
    # a name imported from a package resolves to the module defining it, not to the package
    assert "mot.thoughts.model" in GRAPH["mot.thoughts.run"]
    assert "mot.generation.params" in GRAPH["mot.thoughts.model"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if _rank(m) is None)
    assert not missing, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {missing}"


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _violations() -> list[str]:
    bad = []
    for a, targets in sorted(GRAPH.items()):
        for b in sorted(targets):
            ra, rb = _rank(a), _rank(b)
            if ra is not None and rb is not None and rb > ra:
                bad.append(f"{a} ({LAYERS[ra][0]}) -> {b} ({LAYERS[rb][0]}): climbs a layer")
            kinds = [k for k in INDEPENDENT if _within(a, k)], [k for k in INDEPENDENT if _within(b, k)]
            if kinds[0] and kinds[1] and kinds[0] != kinds[1]:
                bad.append(f"{a} -> {b}: one model kind imports another")
            if any(_within(a, x) and _within(b, y) for x, y in FORBIDDEN):
                bad.append(f"{a} -> {b}: forbidden by the map")
    return bad


def test_no_import_climbs_a_layer():
    bad = _violations()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)
