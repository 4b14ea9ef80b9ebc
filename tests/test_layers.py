"""The package's import structure: no cycles, and no module imports a higher layer.

Every import of the package counts: those inside functions, relative ones, and a bare
``import transferlab`` or ``from transferlab import x`` (an edge to the package root,
``__init__``, which itself imports the recipes, the spec and the training loop). The one
allowed back-reference is a registry filling itself: a lower module never imports a higher
one, and parts register themselves where they are defined. Importing ``transferlab.x.y``
also runs the root's ``__init__``; that implicit step is not an edge (it is Python's, not
the code's), only naming the root is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "transferlab"
ROOT = "__init__"  # the package root's module name in the graph

# lowest first; a module may import its own layer and the ones below it
LAYERS = [
    ["_version", "errors", "registry", "checks", "spec", "store", "records", "provenance", "locations",
     "recorder", "fingerprint", "text_table"],
    ["data"],
    ["models"],
    ["recipes"],
    ["train"],
    ["study"],
    ["report", "bench", "pretrain", "surgery", "predict", "card"],
    ["demo"],
    ["cli", ROOT, "__main__"],
]


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"transferlab.{module} is in no layer: add it to LAYERS in tests/test_layers.py")


def _named(node: ast.AST, name: str, is_package: bool, modules: dict) -> list[str]:
    """The dotted names (``transferlab...``) an import statement imports, relative ones resolved:
    ``from P import x`` imports the module P.x where there is one, else P (x is a name in P)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: resolve against this module's package
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        first = ".".join(["transferlab", *base, *([node.module] if node.module else [])])
    else:
        first = node.module or ""
    stem = first[len("transferlab."):]
    return [f"{first}.{a.name}" if f"{stem}.{a.name}".lstrip(".") in modules else first for a in node.names]


def imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its code (in functions too)."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for full in _named(node, name, path.name == "__init__.py", modules):
                if full == "transferlab":  # ``import transferlab``, ``from transferlab import __version__``
                    targets.add(ROOT)
                if not full.startswith("transferlab."):
                    continue
                target = full[len("transferlab."):]
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target:
                    targets.add(target)
        targets.discard(name)
        graph[name] = targets
    return graph


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def cycles(graph: dict[str, set[str]], package: Path = PACKAGE) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    # a package's __init__ re-exporting its own modules is not a cycle of the code
    edges = {a: {b for b in bs if not (a.count(".") == 0 and b.startswith(a + ".") and
                                       (package / a / "__init__.py").is_file())} for a, bs in graph.items()}
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
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
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for name in imports():
        layer_of(name)


def test_no_import_goes_up_a_layer():
    up = upward(imports())
    assert up == [], "imports of a higher layer:\n" + "\n".join(up)


def test_no_cycles():
    found = cycles(imports())
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "transferlab"
    for rel, text in {"__init__.py": "", "data/__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


@pytest.mark.parametrize("code, up, cycle", [
    # an upward import at module level, and a cycle closed by an import inside a function
    ({"errors.py": "from transferlab.data import a\n",
      "data/a.py": "def f():\n    from transferlab.data.b import g\n",
      "data/b.py": "from transferlab.data.a import f\n"},
     ["errors -> data.a"], [["data.a", "data.b"]]),
    # an upward import inside a function only
    ({"store.py": "def f():\n    import transferlab.train.loop\n", "train/loop.py": ""},
     ["store -> train.loop"], []),
    # a relative import going up (from data/ into models/), and back down at module level: a cycle
    ({"data/c.py": "def f():\n    from ..models import m\n", "models/__init__.py": "",
      "models/m.py": "from transferlab.data import c\n"},
     ["data.c -> models.m"], [["data.c", "models.m"]]),
    # a bare ``import transferlab`` in a low module: up to the root, and a cycle through __init__
    ({"__init__.py": "def run():\n    from transferlab.train.loop import run\n",
      "train/loop.py": "from transferlab import provenance\n",
      "provenance.py": "def p():\n    import transferlab\n    return transferlab.__version__\n"},
     ["provenance -> __init__"], [["__init__", "provenance", "train.loop"]]),
    # ``from transferlab import __version__`` names the root as well
    ({"__init__.py": "from transferlab.errors import E\n__version__ = '0'\n",
      "errors.py": "from transferlab import __version__\nclass E(Exception): ...\n"},
     ["errors -> __init__"], [["__init__", "errors"]]),
])
def test_the_checker_sees_each_kind_of_fault(tmp_path, code, up, cycle):
    """The tests above would fail on each planted fault: the checker finds exactly what was planted."""
    pkg = _plant(tmp_path, code)
    graph = imports(pkg)
    assert upward(graph) == up
    assert cycles(graph, pkg) == cycle


def test_the_checker_passes_a_clean_package(tmp_path):
    """...and finds nothing where imports only go down (importing a submodule is no edge to the root)."""
    pkg = _plant(tmp_path, {"__init__.py": "from transferlab.spec import S\n", "spec.py": "S = 1\n",
                            "data/a.py": "import transferlab.spec\nfrom transferlab.errors import E\n",
                            "errors.py": "E = 1\n", "train/x.py": "def f():\n    from ..data import a\n"})
    graph = imports(pkg)
    assert upward(graph) == [] and cycles(graph, pkg) == []
    assert graph["data.a"] == {"spec", "errors"}
