"""The install: every imported distribution is declared (core or an extra), the optional backends are
extras only, and .ci/run runs exactly the README's install and test commands."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = {"ray", "tensorboard", "mlflow-skinny", "wandb", "pyarrow"}  # extras, never the core


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imported_modules() -> set[str]:
    mods = set()
    for path in (ROOT / "src" / "transferlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return mods - set(sys.stdlib_module_names) - {"transferlab", "__future__"}


def test_every_imported_distribution_is_declared():
    project = _project()
    core = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    dists = packages_distributions()
    undeclared = []
    for mod in sorted(_imported_modules()):
        names = {d.lower().replace("_", "-") for d in dists.get(mod, [mod])}
        if mod not in dists:  # not installed here (the GPU image has no mlflow): an extra named for it declares it
            names.add(mod)
            extras_named = set(project["optional-dependencies"])
        else:
            extras_named = set()
        if not names & (core | extras | extras_named):
            undeclared.append(f"{mod} ({', '.join(sorted(names))})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_optional_backends_are_extras_not_core():
    project = _project()
    core = {_name(r) for r in project["dependencies"]}
    assert not core & OPTIONAL
    extras = project["optional-dependencies"]
    tracking = " ".join(extras["tracking"])
    assert all(x in tracking for x in ("tensorboard", "mlflow", "wandb"))
    test = " ".join(extras["test"])
    assert "pytest" in test and "ray" in test and "tracking" in test


def test_the_gpu_images_missing_packages_are_not_core_and_the_floor_is_its_versions():
    """The GPU image (Python 3.12, torch 2.11, transformers 5.17) lacks datasets, seqeval and deepsig: none
    is a core dependency, and the declared floor of torch and transformers is what the image ships."""
    project = _project()
    core = {_name(r): r for r in project["dependencies"]}
    assert not set(core) & {"datasets", "seqeval", "deepsig"}
    assert core["torch"] == "torch>=2.11" and core["transformers"] == "transformers>=5.17"
    assert "datasets" in " ".join(project["optional-dependencies"]["hub"])
    assert "transferlab[" in " ".join(project["optional-dependencies"]["test"]) and "hub" in \
        " ".join(project["optional-dependencies"]["test"])


def _commands(text: str) -> list[str]:
    """Shell commands split on && (leading `cd`, venv creation and activation dropped), -q removed."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        for cmd in (c.strip() for c in line.split("&&")):
            if cmd.startswith(("pip install", "python -m pytest")):
                out.append(re.sub(r"\s+", " ", cmd.replace(" -q", "")))
    return out


def test_ci_mirrors_the_readme_install_and_test_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Three commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    readme_cmds = _commands(block)
    assert readme_cmds == ['pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu',
                           'pip install -e . -c constraints.txt',
                           'pip install -e ".[test]" -c constraints.txt', 'python -m pytest']
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _commands(ci) == readme_cmds
    assert (ROOT / "constraints.txt").is_file() and "constraints.txt" in readme
