"""The package's import structure: no cycles, and no module imports a higher layer.

Every ``import transferlab...`` counts, also those inside functions. The one allowed
back-reference is a registry filling itself: a lower module never imports a higher one, and
parts register themselves where they are defined.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "transferlab"

# lowest first; a module may import its own layer and the ones below it
LAYERS = [
    ["errors", "registry", "checks", "spec", "store", "records", "provenance", "locations",
     "recorder", "fingerprint"],
    ["data"],
    ["models"],
    ["recipes"],
    ["train"],
    ["study"],
    ["report", "bench", "pretrain", "surgery", "predict", "card"],
    ["demo"],
    ["cli", "__init__", "__main__"],
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"transferlab.{module} is in no layer: add it to LAYERS in tests/test_layers.py")


def imports() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    stem = ".".join([*base, node.module] if node.module else base)
                    found = [f"transferlab.{stem}"]
                else:
                    found = [node.module or ""]
                found += [f"{found[0]}.{a.name}" for a in node.names]
            else:
                continue
            for full in found:
                if not full.startswith("transferlab."):
                    continue
                target = full[len("transferlab."):]
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def test_every_module_has_a_layer():
    for name in imports():
        if name != "__init__":
            layer_of(name)


def test_no_import_goes_up_a_layer():
    graph = imports()
    up = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                if a != "__init__" and layer_of(b) > layer_of(a))
    assert up == [], "imports of a higher layer:\n" + "\n".join(up)


def test_no_cycles():
    graph = imports()
    # a package's __init__ re-exporting its own modules is not a cycle of the code
    edges = {a: {b for b in bs if not (a.count(".") == 0 and b.startswith(a + ".") and
                                       (PACKAGE / a / "__init__.py").is_file())} for a, bs in graph.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The test above would fail on a planted cycle and a planted upward import."""
    pkg = tmp_path / "transferlab"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("from transferlab.data import a\n")
    (pkg / "data" / "a.py").write_text("def f():\n    from transferlab.data.b import g\n")
    (pkg / "data" / "b.py").write_text("from transferlab.data.a import f\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    graph = imports()
    assert "data" in graph["errors"] or "data.a" in graph["errors"]
    import pytest

    with pytest.raises(AssertionError, match="higher layer"):
        test_no_import_goes_up_a_layer()
    with pytest.raises(AssertionError, match="data.a <-> data.b"):
        test_no_cycles()
