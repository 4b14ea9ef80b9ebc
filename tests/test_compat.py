"""Issue 22, lean imports: ``import transferlab``, ``--version`` and ``--help`` import no heavy library,
the spec's section checks still run wherever a spec is built, and the core paths work (or stop with one
line) in an environment without the optional packages the GPU image lacks (seqeval, datasets, deepsig)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_spec_dict, write_sentiment_csv

from transferlab import spec as spec_module
from transferlab.errors import SpecError, UserError

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "transformers", "sklearn", "pandas", "matplotlib", "scipy", "seqeval", "datasets", "deepsig",
         "numpy", "peft", "accelerate", "PIL")
# what the GPU image lacks of the optional packages; a meta-path finder makes them unimportable
BLOCKER = '''
import sys
BLOCKED = {"seqeval", "datasets", "deepsig"}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
'''


def python(code: str | None, *args: str, blocker: Path | None = None, timeout: int = 300,
           cwd: Path | None = None) -> subprocess.CompletedProcess:
    """This checkout's package in a fresh interpreter (``-c code``, or ``args`` as they are)."""
    paths = [str(blocker)] if blocker else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([*paths, str(SRC), os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, *(["-c", code] if code is not None else []), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def imported_heavy(prelude: str) -> list[str]:
    done = python(f"import sys\n{prelude}\nprint([m for m in {HEAVY!r} if m in sys.modules])")
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip().splitlines()[-1])


def test_import_transferlab_imports_no_heavy_library():
    assert imported_heavy("import transferlab\nassert transferlab.load_spec and transferlab.RunSpec") == []
    # a spec module on its own (the store, the spec reader) is as lean
    assert imported_heavy("import transferlab.spec, transferlab.store, transferlab.cli") == []


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_import_no_heavy_library(flag):
    prelude = (f"from transferlab.cli import main\ntry:\n    main([{flag!r}])\nexcept SystemExit as e:\n"
               "    assert e.code == 0, e.code")
    assert imported_heavy(prelude) == []
    done = python(None, "-m", "transferlab.cli", flag)
    assert done.returncode == 0 and ("transferlab 0." in done.stdout if flag == "--version" else
                                     "fine-tune and evaluate" in done.stdout), done.stderr


def test_section_checks_run_where_only_the_spec_module_is_imported():
    """The recipes register the checks on the first spec built, not on import: a spec built through
    ``transferlab.spec`` alone is still checked in full (here the freeze policy and a distill field)."""
    code = """
import sys
from transferlab.errors import SpecError
from transferlab.spec import load_spec
assert "torch" not in sys.modules
for section, needle in (({"freeze": {"name": "bogus"}}, "freeze.name"), ({"distill": {"kind": "kd"}},
                        "distill.teacher")):
    try:
        load_spec(section)
    except SpecError as e:
        assert needle in str(e), e
    else:
        raise SystemExit(f"{section}: not checked")
print("checked")
"""
    done = python(code)
    assert done.returncode == 0 and done.stdout.strip() == "checked", done.stderr


def test_a_check_loader_that_fails_is_tried_again(monkeypatch):
    """A loader that raises stays pending: the next section check tries it again, never skips the checks."""
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ImportError("not yet")

    monkeypatch.setattr(spec_module, "_CHECK_LOADERS", [flaky])
    with pytest.raises(ImportError):
        spec_module.FreezeSpec()
    spec_module.FreezeSpec()
    spec_module.FreezeSpec()
    assert len(calls) == 2 and spec_module._CHECK_LOADERS == []


def test_optional_module_names_what_needs_it():
    from transferlab.checks import optional_module

    assert optional_module("json", "x", "y").dumps([1]) == "[1]"
    with pytest.raises(UserError, match=r"task hub needs the no_such_pkg_zz package, which is not installed: "
                                        r"pip install 'transferlab\[hub\]'"):
        optional_module("no_such_pkg_zz.sub", "task hub", "transferlab[hub]")


@pytest.fixture
def blocker(tmp_path) -> Path:
    folder = tmp_path / "blocker"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER)
    return folder


def test_blocker_blocks(blocker):
    done = python("import seqeval", blocker=blocker)
    assert done.returncode == 1 and "No module named 'seqeval'" in done.stderr


def test_core_run_works_without_seqeval_datasets_deepsig(tmp_path, blocker):
    """The single-run path on a tiny random model, a token task scored without seqeval, and the hub task
    stopping with one line naming the missing package: in one process without the optional packages."""
    data = write_sentiment_csv(tmp_path / "toy", n_train=32, n_dev=16)
    conll = tmp_path / "conll"
    conll.mkdir()
    rows = "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"
    (conll / "train.txt").write_text(rows)
    (conll / "valid.txt").write_text(rows)
    specs = {"csv": tiny_spec_dict(data, epochs=1, num_evals=1),
             "token": {**tiny_spec_dict(data, epochs=1, num_evals=1), "head": {"name": "token"},
                       "task": {"name": "conll2003", "path": str(conll)}},
             "hub": {**tiny_spec_dict(data), "task": {"name": "hub", "path": str(data / "train.csv")}}}
    for name, spec in specs.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    code = f"""
import sys
from transferlab.cli import main
from transferlab.store import Store
db = {str(tmp_path / "s.db")!r}
codes = [main(["run", {str(tmp_path)!r} + f"/{{n}}.yaml", "--store", db, "--quiet"]) for n in ("csv", "token", "hub")]
print(codes, sorted(r.status for r in Store(db).runs()), [m for m in ("seqeval", "datasets", "deepsig") if m in sys.modules])
"""
    done = python(code, blocker=blocker, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[0, 0, 2] ['finished', 'finished'] []"
    err = [line for line in done.stderr.splitlines() if line.startswith("transferlab: error")]
    assert err == ["transferlab: error: task hub needs the datasets package, which is not installed: "
                   "pip install 'transferlab[hub]'"], done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_spec_error_classes_unchanged():
    """The lazy loading keeps the checks' error type: a bad section is a SpecError (exit 2 in the CLI)."""
    with pytest.raises(SpecError, match="freeze.name"):
        spec_module.load_spec({"freeze": {"name": "bogus"}})
