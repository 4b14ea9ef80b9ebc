"""Issue 22, lean imports: ``import transferlab``, ``--version`` and ``--help`` import no heavy library,
the spec's section checks still run wherever a spec is built, and the core paths work (or stop with one
line) in an environment without the optional packages the GPU image lacks (seqeval, datasets, deepsig)."""

from __future__ import annotations

import os
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pytest
import yaml
from conftest import tiny_spec_dict, write_sentiment_csv

from transferlab import spec as spec_module
from transferlab.errors import SpecError, UserError

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "transformers", "sklearn", "pandas", "matplotlib", "scipy", "seqeval", "datasets", "deepsig",
         "numpy", "peft", "accelerate", "PIL")
# what the GPU image lacks of the optional packages: a None in sys.modules makes each absent as Python sees
# it (``import`` raises ModuleNotFoundError, importlib.util.find_spec answers None, as transformers asks)
BLOCKER = '''
import sys
for name in ("seqeval", "datasets", "deepsig"):
    sys.modules[name] = None
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
    done = python(f"import sys\n{prelude}\nprint([m for m in {HEAVY!r} if sys.modules.get(m) is not None])")
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip().splitlines()[-1])


def test_import_transferlab_imports_no_heavy_library():
    assert imported_heavy("import transferlab\nassert transferlab.load_spec and transferlab.RunSpec") == []
    # a spec module on its own (the store, the spec reader) is as lean
    assert imported_heavy("import transferlab.spec, transferlab.store, transferlab.cli") == []


def test_listing_runs_imports_no_heavy_library(tmp_path):
    """`transferlab runs` answers in a fraction of a second: the store and a plain-text table, no numeric stack."""
    from transferlab.store import Store

    Store(tmp_path / "s.db").close()
    prelude = (f"from transferlab.cli import main\nassert main(['runs', '--store', {str(tmp_path / 's.db')!r}]) == 0\n"
               f"assert main(['runs', '--store', {str(tmp_path / 's.db')!r}, '--format', 'json']) == 0")
    assert imported_heavy(prelude) == []


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
    done = python("import importlib.util\nassert importlib.util.find_spec('datasets') is None\nimport seqeval",
                  blocker=blocker)
    assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr and "seqeval" in done.stderr


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
print(codes, sorted(r.status for r in Store(db).runs()), [m for m in ("seqeval", "datasets", "deepsig") if sys.modules.get(m) is not None])
from transferlab.data import build_task
from transferlab.errors import UserError
from transferlab.spec import TaskSpec
try:
    build_task(TaskSpec(name="rte"))  # no task.path: GLUE from the hub, through datasets
except UserError as e:
    print("UserError:", e)
"""
    done = python(code, blocker=blocker, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-2:] == [
        "[0, 0, 2] ['finished', 'finished'] []",
        "UserError: task rte (its data from the Hugging Face hub; or set task.path) needs the datasets package, "
        "which is not installed: pip install 'transferlab[hub]'"]
    err = [line for line in done.stderr.splitlines() if line.startswith("transferlab: error")]
    assert err == ["transferlab: error: task hub needs the datasets package, which is not installed: "
                   "pip install 'transferlab[hub]'"], done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_spec_error_classes_unchanged():
    """The lazy loading keeps the checks' error type: a bad section is a SpecError (exit 2 in the CLI)."""
    with pytest.raises(SpecError, match="freeze.name"):
        spec_module.load_spec({"freeze": {"name": "bogus"}})


# ----------------------------------------------------------------------------- the compatibility floor
# transformers 5.17 (the GPU image, the declared floor) has no activation_checkpointing_enable (5.18 on):
# Backbone.checkpoint_layers detects it and falls back to gradient_checkpointing_enable, else its own
# torch.utils.checkpoint per layer. Each branch gives the gradients of the plain model, dropout on.

def _backbone(seed: int = 0):
    from transferlab.models.backbone import load_backbone
    from transferlab.spec import ModelSpec

    return load_backbone(ModelSpec(name="tiny-bert", max_length=16), seed=seed)


def _batch(backbone, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, int(backbone.config.vocab_size), (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padding in one row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _grads_and_saved(backbone, batch, seed: int = 0) -> tuple[dict, int]:
    """Gradients of a fixed function of the last two hidden states (dropout on, torch seeded), and the bytes
    the autograd graph keeps for the backward."""
    import torch

    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    backbone.train()
    backbone.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden, _ = backbone(**batch)
    w = torch.linspace(-1, 1, hidden[-1].numel(), dtype=hidden[-1].dtype).view_as(hidden[-1])
    (hidden[-1] * w + hidden[-2] ** 2).sum().backward()
    return {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}, saved[0]


def _hide_newer(model, branch: str) -> list:
    """Make the HF model look like an older transformers: ``gradient`` hides activation_checkpointing_enable
    (5.17: only the old name; where the old name now delegates to the new one, it calls the library's own
    implementation), ``own`` hides both. Returns the calls the old name received."""
    calls: list = []
    if branch in ("gradient", "own"):
        impl = getattr(model, "_activation_checkpointing_enable", None) or model.gradient_checkpointing_enable

        def old_name(gradient_checkpointing_kwargs=None, **kw):
            calls.append(gradient_checkpointing_kwargs)
            return impl(gradient_checkpointing_kwargs, **kw)

        model.activation_checkpointing_enable = None  # an instance attribute: what the class has is hidden
        model.gradient_checkpointing_enable = old_name if branch == "gradient" else None
    return calls


def _mechanism(model) -> str:
    """Which checkpointing the layers of a HF model run: Hugging Face's flag, our own forward, or none."""
    from transferlab.models.backbone import recomputed_forward

    layers = list(model.base_model.encoder.layer)
    hf = [getattr(layer, "gradient_checkpointing", False) for layer in layers]
    own = [getattr(layer.forward, "__func__", None) is recomputed_forward and layer.forward.__self__ is layer
           for layer in layers]
    assert len(set(hf)) == 1 and len(set(own)) == 1 and not (hf[0] and own[0])
    return "hf" if hf[0] else "own" if own[0] else "none"


@pytest.mark.parametrize("branch", ["installed", "activation", "gradient", "own"])
def test_checkpoint_layers_fallbacks_give_the_plain_gradients(branch, float64):
    import torch

    plain = _backbone()
    assert _mechanism(plain.model) == "none"
    batch = _batch(plain)
    want, full = _grads_and_saved(plain, batch)
    other, _ = _grads_and_saved(plain, batch, seed=1)
    assert any(not torch.equal(want[n], other[n]) for n in want)  # dropout is on: the seed matters

    ckpt = _backbone()
    model = ckpt.model
    if branch == "activation" and not callable(getattr(model, "activation_checkpointing_enable", None)):
        pytest.skip("the installed transformers has no activation_checkpointing_enable (< 5.18)")
    calls = _hide_newer(model, branch)
    ckpt.checkpoint_layers()
    assert _mechanism(model) == ("own" if branch == "own" else "hf")
    assert calls == ([{"use_reentrant": False}] if branch == "gradient" else [])
    got, kept = _grads_and_saved(ckpt, batch)
    assert kept < full / 2  # the layers' activations are recomputed, not kept
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=name)
    ckpt.eval()
    with torch.no_grad():  # evaluation: no recomputation, the same outputs
        assert torch.equal(ckpt(**batch)[0][-1], plain.eval()(**batch)[0][-1])
    copy = deepcopy(ckpt)  # a copy (stacked seeds, EMA) recomputes with its own layers, not the original's
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(0.5)
    assert _mechanism(copy.model) == _mechanism(model)
    assert not torch.equal(copy(**batch)[0][-1], ckpt(**batch)[0][-1])


def test_checkpoint_layers_without_any_mechanism_is_one_line(monkeypatch):
    """No HF checkpointing and no layer schema: a ModelError naming the field, not an AttributeError."""
    from transferlab.errors import ModelError

    from transferlab.models import backbone as backbone_module

    backbone = _backbone()
    _hide_newer(backbone.model, "own")
    monkeypatch.setattr(backbone_module, "family_of", lambda model_type: None)
    with pytest.raises(ModelError, match="train.checkpoint_layers: .* no layer schema"):
        backbone.checkpoint_layers()


@pytest.mark.parametrize("branch", ["installed", "gradient", "own"])
def test_mlm_pretraining_checkpoints_by_the_same_detection(branch, float64):
    """The MLM model (a head on the base model) takes the same fallbacks: its layers recompute, same gradients."""
    import torch

    import transformers as tf

    from transferlab.models.backbone import _tiny_config
    from transferlab.pretrain.mlm import MaskedLM

    def model():
        torch.manual_seed(0)
        return MaskedLM(tf.AutoModelForMaskedLM.from_config(_tiny_config("tiny-bert")[0]))

    ids = torch.randint(5, 90, (2, 10), generator=torch.Generator().manual_seed(0))
    labels = torch.where(torch.arange(10) % 3 == 0, ids, torch.full_like(ids, -100))

    def grads(m):
        m.train()
        torch.manual_seed(1)
        loss = m(ids, torch.ones_like(ids), labels)[0]
        loss.sum().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    want = grads(model())
    ckpt = model()
    calls = _hide_newer(ckpt.backbone, branch)
    ckpt.checkpoint_layers()
    assert _mechanism(ckpt.backbone) == ("own" if branch == "own" else "hf")
    assert calls == ([{"use_reentrant": False}] if branch == "gradient" else [])
    got = grads(ckpt)
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, msg=name)


def test_libraries_stay_quiet_when_transformers_comes_after_the_cli():
    """The CLI no longer imports transformers to quiet it: the variables it sets do, on transformers' import."""
    code = """
import os
for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
    os.environ.pop(name, None)
import sys
from transferlab.cli import quiet_libraries
quiet_libraries()
assert "transformers" not in sys.modules
from transformers.utils import logging
print(logging.get_verbosity() == logging.ERROR, logging.is_progress_bar_enabled())
"""
    done = python(code)
    assert done.returncode == 0 and done.stdout.split() == ["True", "False"], done.stderr
