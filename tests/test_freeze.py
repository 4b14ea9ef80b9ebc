"""Freezing policies in the loop, optimizer state, trainable counts, LoRA merge, checkpoint + resume."""

import re

import pytest
import torch
from conftest import tiny_spec_dict, write_sentiment_csv
from safetensors.torch import load_file

from transferlab.errors import SpecError
from transferlab.models.artifacts import load_run_model
from transferlab.models.schema import SCHEMAS
from transferlab.recipes.freeze import FREEZERS, build_freezer
from transferlab.spec import FreezeSpec, load_spec
from transferlab.store import Store
from transferlab.train.loop import run

ATTENTION = re.compile(r"\.attention\.(self|output\.dense)\.")
FFN = re.compile(r"\.intermediate\.dense\.|\.layer\.\d+\.output\.dense\.")
LAYER_NORM = re.compile(r"LayerNorm")


class Recorder:
    """A hook that keeps the model, the optimizer, and every parameter and trainable set at each step."""

    def on_train_start(self, model, optimizer, total_steps):
        self.model, self.optimizer = model, optimizer
        self.snaps, self.trainable = {}, {}
        self.start = self._snap()

    def on_step_start(self, step):
        self.snaps[step] = self._snap()
        self.trainable[step] = {n for n, p in self.model.named_parameters() if p.requires_grad}

    def _snap(self):
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}


def train(tmp_path, data_dir, freeze: dict, steps: int = 4, **train_opts):
    spec = tiny_spec_dict(data_dir, **{"max_steps": steps, "num_evals": 1, "restore_best": False,
                                       "save_model": False, **train_opts})
    spec["freeze"] = freeze
    rec, store = Recorder(), Store(tmp_path / "s.db")
    result = run(load_spec(spec), store, progress=False, hooks=[rec])
    assert result.status == "finished"
    return rec, store, result


POLICIES = {
    "none": ({"name": "none"}, lambda n: False),
    "linear_probe": ({"name": "linear_probe"}, lambda n: not n.startswith("head.")),
    "bitfit": ({"name": "bitfit"}, lambda n: not (n.startswith("head.") or n.endswith(".bias"))),
    "fpt": ({"name": "fpt"}, lambda n: bool(ATTENTION.search(n) or FFN.search(n)) or ".pooler." in n),
    "fpt_train_ffn": ({"name": "fpt", "options": {"train_ffn": True}},
                      lambda n: bool(ATTENTION.search(n)) or ".pooler." in n),
    "fpt_attention_no_pos_no_ln": (
        {"name": "fpt", "options": {"train_attention": True, "freeze_positions": True, "freeze_layernorm": True}},
        lambda n: bool(FFN.search(n) or LAYER_NORM.search(n)) or "position_embeddings" in n or ".pooler." in n),
}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_frozen_stay_bit_identical_and_trainable_change(tmp_path, toy_task_dir, policy):
    """Acceptance 5: frozen parameters are bit-identical, trainable ones changed, no optimizer state for
    parameters that were never trainable, and the run stores its trainable count and share."""
    freeze, frozen = POLICIES[policy]
    rec, store, result = train(tmp_path, toy_task_dir, freeze)
    n_frozen = 0
    for name, p in rec.model.named_parameters():
        unused = ".pooler." in name or "token_type_embeddings" in name and not frozen(name)  # no gradient reaches
        if frozen(name):
            n_frozen += 1
            assert torch.equal(p, rec.start[name]), name
            assert not p.requires_grad and p not in rec.optimizer.state, name
        elif ".pooler." not in name:
            assert not torch.equal(p, rec.start[name]), name
            assert p in rec.optimizer.state, name
        assert unused or frozen(name) or p.requires_grad
    assert (n_frozen > 0) == (policy != "none")
    want = sum(p.numel() for n, p in rec.model.named_parameters() if not frozen(n))
    row = store.get(result.uid)
    assert row.n_trainable == want == row.summary["n_trainable"]
    assert row.summary["trainable_share"] == pytest.approx(want / row.n_params)


def test_backbone_for_steps_unfreezes_exactly_at_step_n(tmp_path, toy_task_dir):
    rec, store, result = train(tmp_path, toy_task_dir, {"name": "backbone_for_steps", "steps": 2}, steps=4)
    q = "backbone.model.encoder.layer.0.attention.self.query.weight"
    for step in (0, 1, 2):  # weights before step `step` runs: after 0, 1, 2 updates
        assert torch.equal(rec.snaps[step][q], rec.start[q])
        assert (q in rec.trainable[step]) == (step >= 2)
    assert not torch.equal(rec.snaps[3][q], rec.start[q])  # the update of step 2 moved it
    assert not torch.equal(rec.snaps[1]["head.out.weight"], rec.start["head.out.weight"])
    params = dict(rec.model.named_parameters())
    assert float(rec.optimizer.state[params[q]]["step"]) == 2  # its moments start at step N
    assert float(rec.optimizer.state[params["head.out.weight"]]["step"]) == 4
    summary = store.get(result.uid).summary
    head = sum(p.numel() for n, p in params.items() if n.startswith("head."))
    assert summary["n_trainable_start"] == head and summary["n_trainable"] == sum(p.numel() for p in params.values())


def test_gradual_unfreezes_one_group_per_interval_from_the_top(tmp_path, toy_task_dir):
    rec, _, _ = train(tmp_path, toy_task_dir, {"name": "gradual", "options": {"every_steps": 2}}, steps=6)
    top = "backbone.model.encoder.layer.1.output.dense.weight"
    low = "backbone.model.encoder.layer.0.output.dense.weight"
    emb = "backbone.model.embeddings.word_embeddings.weight"
    assert rec.trainable[0] == rec.trainable[1] == {"head.dense.weight", "head.dense.bias", "head.out.weight",
                                                    "head.out.bias"}
    assert top in rec.trainable[2] and low not in rec.trainable[3] and low in rec.trainable[4]
    assert torch.equal(rec.snaps[2][top], rec.start[top]) and not torch.equal(rec.snaps[3][top], rec.start[top])
    assert torch.equal(rec.snaps[4][low], rec.start[low]) and not torch.equal(rec.snaps[5][low], rec.start[low])
    params = dict(rec.model.named_parameters())
    assert torch.equal(params[emb], rec.start[emb]) and params[emb] not in rec.optimizer.state


def test_lora_trains_adapters_and_stores_a_merged_model(tmp_path, toy_task_dir):
    rec, store, result = train(tmp_path, toy_task_dir, {"name": "lora", "options": {"r": 4}}, save_model=True)
    lora = [p for n, p in rec.start.items() if ".lora_" in n]
    assert lora and all(".lora_" not in n for n, _ in rec.model.named_parameters())  # merged and unloaded
    for name, p in rec.model.named_parameters():
        base = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        before = rec.start.get(name, rec.start.get(base))
        if re.search(r"\.(query|value)\.weight$", name) or name.startswith("head."):
            assert not torch.equal(p, before), name
        else:
            assert torch.equal(p, before), name
    trainable = sum(p.numel() for n, p in rec.start.items() if ".lora_" in n or n.startswith("head."))
    assert store.get(result.uid).n_trainable == trainable
    loaded, _ = load_run_model(store, result.uid)  # the stored model is a plain one, head included
    for key, value in rec.model.state_dict().items():
        assert torch.equal(value.cpu(), loaded.state_dict()[key]), key


def test_lora_merge_keeps_the_function():
    from transferlab.models.artifacts import task_from_meta
    from transferlab.models.model import build_model
    from transferlab.spec import ModelSpec, RunSpec

    meta = {"name": "toy", "problem": "classification", "num_labels": 2, "metrics": ["accuracy"],
            "main_metric": "accuracy", "label_names": None, "modality": "text", "vocab_size": None, "input_dim": None}
    for name in ("tiny-bert", "tiny-gpt2"):
        model = build_model(RunSpec(model=ModelSpec(name=name, max_length=16)), task_from_meta(meta)).eval()
        freezer = build_freezer(FreezeSpec(name="lora", options={"r": 2}), model)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.5)  # a trained-looking adapter (B starts at zero)
        ids = torch.randint(1000, 2000, (2, 9))
        with torch.no_grad():
            before = model(input_ids=ids)
            freezer.on_finish(model)
            after = model(input_ids=ids)
        assert torch.allclose(before, after, atol=1e-5), name
        assert not any("lora" in n for n in model.state_dict())


@pytest.mark.parametrize("dropout_rng", ["global", "run"])
def test_stopped_and_resumed_equals_uninterrupted(dropout_rng, tmp_path):
    """Acceptance 5: a run stopped half-way and resumed ends with the same weights (CPU, same seed); with
    train.dropout_rng: run the run's own dropout stream resumes where it stopped."""
    data = write_sentiment_csv(tmp_path / "data", n_train=40, n_dev=16)  # 3 batches an epoch: crosses epochs
    spec = load_spec({**tiny_spec_dict(data, max_steps=8, num_evals=4, checkpoint_every=3, dropout_rng=dropout_rng),
                      "freeze": {"name": "backbone_for_steps", "steps": 4}})

    class Stop:
        def on_step_start(self, step):
            if step == 5:
                raise KeyboardInterrupt

    whole = Store(tmp_path / "a" / "s.db")
    done = run(spec, whole, progress=False)
    halves = Store(tmp_path / "b" / "s.db")
    with pytest.raises(KeyboardInterrupt):
        run(spec, halves, progress=False, hooks=[Stop()])
    first = halves.runs()[0]
    assert first.status == "failed" and (halves.artifact_dir(first.uid) / "checkpoint.pt").is_file()
    resumed = run(spec, halves, progress=False)
    assert resumed.uid != first.uid and resumed.status == "finished"
    a = load_file(str(whole.artifact_dir(done.uid) / "model.safetensors"))
    b = load_file(str(halves.artifact_dir(resumed.uid) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.dev == done.dev and resumed.best_step == done.best_step
    assert halves.curve(resumed.uid) == whole.curve(done.uid)  # history carried over, then continued
    assert not (halves.artifact_dir(first.uid) / "checkpoint.pt").exists()  # cleaned once finished


def test_freeze_spec_errors():
    with pytest.raises(SpecError, match="unknown freeze policy 'frozen'; known: .*backbone_for_steps.*bitfit.*fpt"):
        load_spec({"freeze": {"name": "frozen"}})
    with pytest.raises(SpecError, match="options.train_mlp: unknown option for policy 'fpt'; allowed: train_ffn"):
        FreezeSpec(name="fpt", options={"train_mlp": True})
    with pytest.raises(SpecError, match="freeze.options.train_ffn: 'yes' is not a bool"):
        FreezeSpec(name="fpt", options={"train_ffn": "yes"})
    with pytest.raises(SpecError, match="freeze.steps: 0 must be > 0 for backbone_for_steps"):
        FreezeSpec(name="backbone_for_steps")
    with pytest.raises(SpecError, match="freeze.steps: only used by backbone_for_steps"):
        FreezeSpec(name="bitfit", steps=3)
    assert {"none", "backbone_for_steps", "fpt", "gradual", "linear_probe", "bitfit", "lora"} <= set(FREEZERS.names())


LORA_FAMILIES = [n for n in SCHEMAS.names() if SCHEMAS.get(n).tiny is not None]  # every row with a tiny config


@pytest.mark.parametrize("model_type", LORA_FAMILIES)
def test_lora_keeps_the_schema_of_every_family(model_type):
    """Every registered family with LoRA injected (its row's LoRA targets): the schema still reads the
    adapted modules (under peft's ``base_layer``) and gives each adapter the layer and role it adapts."""
    from peft import LoraConfig, inject_adapter_in_model

    from transferlab.models.backbone import model_from_config
    from transferlab.models.schema import schema_of

    family = SCHEMAS.get(model_type)
    torch.manual_seed(0)
    model = model_from_config(family.tiny_config(model_type))
    before = schema_of(model).read()
    transpose = any(s.transpose for s in family.layer_slots(model.config).values())
    inject_adapter_in_model(LoraConfig(r=2, target_modules=list(family.lora_targets), fan_in_fan_out=transpose),
                            model)
    schema = schema_of(model)
    after = schema.read()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    adapters = [n for n in schema.roles if ".lora_" in n]
    assert adapters and all(schema.roles[n][0] is not None for n in adapters)
    for name in adapters:
        base = name.split(".lora_")[0] + ".base_layer.weight"
        assert schema.roles[name] == schema.roles[base] and schema.depth(name) == schema.depth(base)


@pytest.mark.parametrize("options", [{}, {"r": 2, "alpha": 4}, {"dropout": 0.1},
                                     {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}])
def test_vit_trains_with_lora(tmp_path, options):
    """ViT + LoRA (issue 26: ``vit schema: layers.0.attention.q_proj.weight is not in the vit model``): an
    image run trains its adapters and stores a merged model that differs from the pretrained one."""
    from transferlab.models.artifacts import load_run_model
    from transferlab.models.model import build_model

    spec = load_spec({"model": {"name": "tiny-vit"}, "task": {"name": "digits", "max_train_samples": 64,
                                                            "max_eval_samples": 32},
                      "head": {"name": "mean"}, "freeze": {"name": "lora", "options": {"r": 4, **options}},
                      "optim": {"lr": 1e-2}, "train": {"max_steps": 4, "batch_size": 16, "num_evals": 1}})
    store = Store(tmp_path / "s.db")
    result = run(spec, store, progress=False)
    assert result.status == "finished"
    stored, task = load_run_model(store, result.uid)
    assert not any(".lora_" in n for n, _ in stored.named_parameters())
    pretrained = build_model(spec, task).state_dict()
    q = "backbone.model.layers.0.attention.q_proj.weight"
    k = "backbone.model.layers.0.attention.k_proj.weight"
    assert not torch.equal(stored.state_dict()[q], pretrained[q])  # the merged adapter moved q
    adapted_k = "k_proj" in str(options.get("target_modules"))
    assert torch.equal(stored.state_dict()[k], pretrained[k]) != adapted_k
