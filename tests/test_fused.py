"""The fused stacked encoder (train/fused.py) and the engine choice (train/support.py: choose_engine).

Each seed's logits and gradients must be those its own Hugging Face model gives (float64), for every
head that declares ``fused``, padded and unpadded; training on the fused path must equal the
general stacked path; an unsupported part falls back (auto) or is refused (``train.engine: fused``).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import tiny_spec_dict, write_sentiment_csv
from test_parallel import close

from transferlab.cli import main
from transferlab.models.backbone import load_backbone
from transferlab.models.heads import HEADS, build_head
from transferlab.models.model import TransferModel
from transferlab.spec import ModelSpec, load_spec, run_id, spec_hash
from transferlab.store import Store
from transferlab.train.fused import FusedModel, fused_layer, pack_index, pack_offsets, pack_seqlens
from transferlab.train.loop import Unsupported, run, run_seeds
from transferlab.train.support import choose_engine

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
FUSED_HEADS = sorted(n for n in HEADS.primary_names() if HEADS.supports(n, "fused"))


def _model(name: str, seed: int, head: str) -> TransferModel:
    backbone = load_backbone(ModelSpec(name=name, init="random", max_length=16, dropout=0.0), seed=seed)
    torch.manual_seed(seed)
    return TransferModel(backbone, build_head(head, backbone.hidden_size, backbone.num_layers, 3, 0.0))


def _batch(seeds: int, unpad: bool | str) -> dict[str, torch.Tensor]:
    """unpad: False (padded rows), True (packed; attention block by block) or "jagged" (packed; attention
    over a jagged nested tensor)."""
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (seeds, 3, 7))
    mask = torch.ones(seeds, 3, 7, dtype=torch.long)
    mask[0, 1, 4:] = 0
    mask[-1, 2, 2:] = 0
    mask[-1, 0, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    types = torch.zeros_like(ids)
    types[:, :, 3:] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if not unpad:
        return batch
    index = pack_index(mask)
    offsets = pack_offsets(mask, index.shape[1])
    jagged = {"pack_offsets": offsets, "pack_seqlens": pack_seqlens(offsets)} if unpad == "jagged" else {}
    return {**batch, "pack_index": index, **jagged}


@pytest.mark.parametrize("unpad", [False, True, "jagged"], ids=["padded", "unpadded", "jagged"])
@pytest.mark.parametrize("name,head", [("tiny-bert", h) for h in FUSED_HEADS] + [("tiny-roberta", "mean_max")])
def test_logits_and_gradients_equal_each_seeds_library_model(name, head, unpad, float64):
    models = [_model(name, seed, head) for seed in (0, 1)]
    reference = [copy.deepcopy(m).train() for m in models]  # the fused model keeps models[0] as its template
    fused = FusedModel(models[0], seeds=2)
    fused.load_slot(1, models[1])
    fused.train()
    batch = _batch(2, unpad)
    logits = fused(batch)
    weights = torch.randn_like(logits)
    (logits * weights).sum().backward()
    mine = dict(fused.named_parameters())
    for s, ref in enumerate(reference):
        out = ref(batch["input_ids"][s], batch["attention_mask"][s], batch["token_type_ids"][s])
        (out * weights[s]).sum().backward()
        torch.testing.assert_close(logits[s], out, rtol=1e-8, atol=1e-12)
        scale = max(p.grad.abs().max() for p in ref.parameters() if p.grad is not None)
        for n, p in ref.named_parameters():
            got = mine[n].grad
            if p.grad is None:  # the pooler when the head does not use it
                assert got is None or not got[s].any(), n
                continue
            # atol relative to the largest gradient: a key bias's gradient is zero up to rounding
            torch.testing.assert_close(got[s], p.grad, rtol=1e-8, atol=1e-10 * scale, msg=f"{head} seed {s} {n}")


def test_unpadded_and_padded_losses_agree_and_pack_drops_padding(float64):
    models = [_model("tiny-bert", seed, "cls") for seed in (0, 1, 2)]
    fused = FusedModel(models[0], seeds=3)
    for slot in (1, 2):
        fused.load_slot(slot, models[slot])
    fused.eval()
    padded, unpadded = _batch(3, False), _batch(3, True)
    index = unpadded["pack_index"]
    real = padded["attention_mask"].sum((1, 2))
    assert index.shape == (3, int(real.max())) and int((index < 21).sum()) == int(real.sum())  # B*T = 21
    labels = torch.tensor([0, 1, 2])
    jagged = _batch(3, "jagged")
    offsets = jagged["pack_offsets"]  # each seed's 3 sequences, then its filler: segments cover all 3 x N slots
    assert int(offsets[-1]) == 3 * index.shape[1] and bool((offsets.diff() > 0).all())
    losses = [torch.nn.functional.cross_entropy(fused(b).flatten(0, 1), labels.repeat(3))
              for b in (padded, unpadded, jagged)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(losses[0], losses[2], rtol=1e-12, atol=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The toy sentiment task with sentences of 2 to 11 words, so batches carry padding and the fused
    engine trains on packed (unpadded) batches."""
    import random

    folder = write_sentiment_csv(tmp_path_factory.mktemp("fused") / "toy", n_train=40, n_dev=16)
    rng = random.Random(1)
    for split in ("train", "dev"):
        path = folder / f"{split}.csv"
        head, *lines = path.read_text().splitlines()
        lines = [" ".join(t.split()[:rng.randint(1, 6)] + ["and"] * rng.randint(0, 5)) + "," + y
                 for t, y in (line.rsplit(",", 1) for line in lines)]
        path.write_text("\n".join([head, *lines]) + "\n")
    return folder


def _specs(data, seeds=(0, 1, 2), **over):
    d = tiny_spec_dict(data, epochs=1, batch_size=16, num_evals=2, log_every=1)
    d["model"].update(init="random", dropout=0.0, max_length=16)
    d["head"]["dropout"] = 0.0
    d["train"].update(max_steps=4, device="cpu")
    return [load_spec(d, {**over, "seed": s}) for s in seeds]


@pytest.mark.parametrize("over", [
    {"optim.name": "adamw", "optim.layer_decay": 0.8},
    {"optim.name": "bertadam", "freeze.name": "gradual", "freeze.options": {"every_steps": 1}},
    {"optim.name": "adabelief", "freeze.name": "bitfit", "model.name": "tiny-roberta", "train.length_bucketing": True},
], ids=["adamw-decay", "bertadam-gradual", "adabelief-bitfit-roberta"])
def test_fused_training_equals_the_general_path(over, data, tmp_path, float64):
    general, fused = Store(tmp_path / "g.db"), Store(tmp_path / "f.db")
    g = run_seeds(_specs(data, **over, **{"train.engine": "general"}), general, progress=False)
    f = run_seeds(_specs(data, **over, **{"train.engine": "fused"}), fused, progress=False)
    for a, b in zip(g, f):
        assert a.run_id != b.run_id  # a forced engine is part of the recipe (its dropout draws differ)
        assert a.summary.engine.kind == "stacked" and b.summary.engine.kind == "fused"
        close(general.curve(a.uid), fused.curve(b.uid), "curve")
        close(general.evals(a.uid), fused.evals(b.uid), "evals")


def test_auto_selection_falls_back_with_a_stored_reason(data, tmp_path, caplog):
    specs = _specs(data, seeds=(0, 1))
    assert choose_engine(specs) == ("fused", None)
    assert choose_engine(specs[:1]) == ("single", None)  # auto: a single run keeps the plain model
    assert choose_engine(_specs(data, seeds=(0,), **{"train.engine": "fused"})) == ("fused", None)
    assert choose_engine(_specs(data, seeds=(0, 1), **{"train.engine": "general"})) == ("stacked", None)
    kind, why = choose_engine(_specs(data, seeds=(0, 1), **{"head.name": "lstm"}))
    assert kind == "stacked" and why == "fused encoder not used: head.name: 'lstm' does not declare 'fused'"
    assert "family does not declare 'layer_loop'" in choose_engine(_specs(data, seeds=(0, 1),
                                                                          **{"model.name": "tiny-gpt2"}))[1]
    assert "task: a vectors task" in choose_engine(specs, modality="vectors")[1]
    with caplog.at_level(logging.WARNING, logger="transferlab.train.loop"):
        results = run_seeds(_specs(data, seeds=(0, 1), **{"head.name": "conv1d", "train.max_steps": 1}),
                            Store(tmp_path / "s.db"), progress=False)
    reason = "fused encoder not used: head.name: 'conv1d' does not declare 'fused'"
    assert [r.summary.engine.reason for r in results] == [reason, reason]
    assert sum(reason in r.message for r in caplog.records) == 1  # once per group


def test_forced_fused_engine_with_an_unsupported_part(data, tmp_path, capsys):
    specs = _specs(data, seeds=(0, 1), **{"train.engine": "fused", "freeze.name": "lora"})
    with pytest.raises(Unsupported, match="lora"):
        run_seeds(specs, Store(tmp_path / "a.db"), progress=False)
    one = _specs(data, seeds=(0,), **{"train.engine": "fused", "head.name": "lstm"})[0]
    store = Store(tmp_path / "b.db")
    with pytest.raises(Unsupported, match="train.engine: fused: head.name: 'lstm' does not declare 'fused'"):
        run(one, store, progress=False)
    assert store.runs() == []  # refused before any run row
    spec_file = tmp_path / "spec.yaml"
    import yaml

    d = tiny_spec_dict(data, epochs=1)
    d["head"]["name"] = "lstm"
    d["train"]["engine"] = "fused"
    spec_file.write_text(yaml.safe_dump(d))
    assert main(["run", str(spec_file), "--store", str(tmp_path / "c.db")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.engine: fused: head.name: 'lstm' does not declare 'fused'" in err[0]


def test_engine_field_keeps_existing_run_ids(data):
    auto = _specs(data, seeds=(0,))[0]
    assert spec_hash(auto) == spec_hash(_specs(data, seeds=(0,), **{"train.engine": "auto"})[0])
    assert run_id(auto) != run_id(_specs(data, seeds=(0,), **{"train.engine": "general"})[0])
    assert auto.train.engine == "auto"


def test_single_run_takes_the_fused_path_when_asked(data, tmp_path, float64):
    plain = run(_specs(data, seeds=(0,), **{"train.engine": "general"})[0], Store(tmp_path / "p.db"), progress=False)
    fused = run(_specs(data, seeds=(0,), **{"train.engine": "fused"})[0], Store(tmp_path / "f.db"), progress=False)
    assert plain.summary.engine.kind == "single" and fused.summary.engine.kind == "fused"
    close(plain.dev, fused.dev, "dev")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs it)")
@pytest.mark.parametrize("unpad", [False, True, "jagged"], ids=["padded", "unpadded", "jagged"])
def test_fused_on_device_matches_the_library_model(unpad):
    """On CUDA: fp32 (TF32 off) close to each seed's library model; bf16 autocast close at bf16's precision."""
    torch.backends.cuda.matmul.allow_tf32 = False
    models = [_model("tiny-bert", seed, "mean") for seed in (0, 1)]
    reference = [copy.deepcopy(m).cuda().eval() for m in models]
    fused = FusedModel(models[0], seeds=2, device="cuda")
    fused.load_slot(1, models[1])
    fused.eval()
    batch = {k: v.cuda() for k, v in _batch(2, unpad).items()}
    for dtype, tol in ((None, 1e-4), (torch.bfloat16, 5e-2)):
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = fused(batch).float()
            for s, ref in enumerate(reference):
                out = ref(batch["input_ids"][s], batch["attention_mask"][s], batch["token_type_ids"][s]).float()
                torch.testing.assert_close(logits[s], out, rtol=tol, atol=tol)


def test_flash_attn_fallback_is_announced_once(data, tmp_path, recwarn):
    from transferlab.train import fused

    fused._SAID.clear()
    for i in range(2):
        run_seeds(_specs(data, seeds=(0, 1), **{"train.max_steps": 1}), Store(tmp_path / f"{i}.db"), progress=False)
    said = [w for w in recwarn if "unpadded attention runs block by block" in str(w.message)]
    assert len(said) == 1 and "flash-attn" in str(said[0].message)


@pytest.mark.parametrize("unpad", [False, True, "jagged"], ids=["padded", "unpadded", "jagged"])
def test_checkpointed_layers_give_the_same_gradients_with_dropout(unpad, float64):
    """Activation checkpointing recomputes each layer in the backward with the same dropout masks."""
    grads = []
    for checkpoint in (False, True):
        bb = load_backbone(ModelSpec(name="tiny-bert", init="random", max_length=16, dropout=0.2), seed=0)
        torch.manual_seed(0)
        fused = FusedModel(TransferModel(bb, build_head("mean", bb.hidden_size, bb.num_layers, 3, 0.0)), seeds=2)
        fused.checkpoint = checkpoint
        fused.train()
        torch.manual_seed(1)
        fused(_batch(2, unpad)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in fused.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.isfinite(grads[0][n]).all(), n  # dropout with padding: no NaN
        assert grads[0][n].abs().sum() > 0, n
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-10, atol=1e-12, msg=n)


def test_slots_not_yet_loaded_hold_seed_0s_weights_not_uninitialised_memory(float64):
    """The dropout 'NaN' of the fused encoder was a slot never loaded: torch.empty memory as weights."""
    model = _model("tiny-bert", 0, "mean")
    for stacked in (FusedModel(model, seeds=3),):
        for name, p in stacked.named_parameters():
            assert torch.equal(p[1], p[0]) and torch.equal(p[2], p[0]), name


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward of ``fn()`` (each saved storage counted once)."""
    storages: dict[int, int] = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("engine,seeds", [("general", (0,)), ("general", (0, 1)), ("fused", (0, 1))],
                         ids=["single", "stacked", "fused"])
def test_checkpoint_layers_gives_the_same_run_with_dropout(engine, seeds, data, tmp_path, float64, monkeypatch):
    """train.checkpoint_layers recomputes layers with the same dropout masks: the same curve, evaluations
    and run id; and it is really on (torch.utils.checkpoint runs once per layer and step)."""
    import torch.utils.checkpoint as tuc

    calls, inner = [0], tuc._checkpoint_without_reentrant_generator

    def counted(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    monkeypatch.setattr(tuc, "_checkpoint_without_reentrant_generator", counted)
    over = {"train.engine": engine, "model.dropout": 0.1, "head.dropout": 0.1}
    plain, ckpt = Store(tmp_path / "p.db"), Store(tmp_path / "c.db")
    train = run if len(seeds) == 1 else run_seeds
    arg = (lambda s: s[0]) if len(seeds) == 1 else (lambda s: s)
    a = train(arg(_specs(data, seeds, **over)), plain, progress=False)
    assert calls[0] == 0
    b = train(arg(_specs(data, seeds, **over, **{"train.checkpoint_layers": True})), ckpt, progress=False)
    assert calls[0] == 4 * 2  # 4 steps x tiny-bert's 2 layers
    for x, y in zip(*(([r] if not isinstance(r, list) else r) for r in (a, b))):
        assert x.run_id == y.run_id  # memory, not results: same run id
        close(plain.curve(x.uid), ckpt.curve(y.uid), "curve")
        close(plain.evals(x.uid), ckpt.evals(y.uid), "evals")


def test_checkpointing_keeps_only_layer_inputs(float64):
    """The fused encoder and the library's model both keep far less for the backward when checkpointing."""
    batch = _batch(2, unpad=False)
    fused = FusedModel(_model("tiny-bert", 0, "mean"), seeds=2)
    fused.train()
    full = _saved_bytes(lambda: fused(batch).sum())
    fused.checkpoint = True
    assert _saved_bytes(lambda: fused(batch).sum()) < full / 2
    single = _model("tiny-bert", 0, "mean").train()
    args = (batch["input_ids"][0], batch["attention_mask"][0], batch["token_type_ids"][0])
    full = _saved_bytes(lambda: single(*args).sum())
    single.backbone.checkpoint_layers()
    assert _saved_bytes(lambda: single(*args).sum()) < full / 2


def test_checkpoint_layers_on_a_model_without_layers_is_refused(data, tmp_path, capsys):
    import yaml

    d = tiny_spec_dict(data, epochs=1)
    d["model"]["name"] = "lstm"
    d["train"]["checkpoint_layers"] = True
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(d))
    assert main(["run", str(spec_file), "--store", str(tmp_path / "c.db")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.checkpoint_layers" in err[0] and "lstm" in err[0]
    assert Store(tmp_path / "c.db").runs() == []


@pytest.mark.parametrize("refuse", [False, True], ids=["jagged", "device-refuses-jagged"])
def test_jagged_attention_trains_as_block_attention(refuse, data, tmp_path, float64, monkeypatch, recwarn):
    """The CUDA default (jagged nested-tensor attention) forced on the CPU trains exactly as the block path;
    a device without a kernel for it falls back to blocks after saying so once, and the run is the same."""
    from transferlab.train import compute, fused

    over = {"train.engine": "fused", "model.dropout": 0.0}
    block = run_seeds(_specs(data, (0, 1), **over), Store(tmp_path / "b.db"), progress=False)
    monkeypatch.setattr(compute.FusedTrainee, "jagged_on", ("cuda", "cpu"))
    used = []
    real = fused._attend_jagged

    def jagged(*args):
        used.append(1)
        if refuse:
            raise RuntimeError("No viable backend for scaled_dot_product_attention was found.")
        return real(*args)

    monkeypatch.setattr(fused, "_attend_jagged", jagged)
    fused._SAID.clear()
    store = Store(tmp_path / "j.db")
    other = run_seeds(_specs(data, (0, 1), **over), store, progress=False)
    assert (1 <= len(used) <= 3) if refuse else len(used) >= 4 * 2  # refused: the first step only (its vmap probe tries 3 times)
    said = [w for w in recwarn if "jagged attention failed" in str(w.message)]
    assert len(said) == (1 if refuse else 0)
    for a, b in zip(block, other):
        close(Store(tmp_path / "b.db").curve(a.uid), store.curve(b.uid), "curve")
        close(Store(tmp_path / "b.db").evals(a.uid), store.evals(b.uid), "evals")


@pytest.mark.parametrize("over", [{"freeze.name": "lora"}, {"freeze.name": "fpt"}, {"freeze.name": "linear_probe"},
                                  {"model.name": "tiny-gpt2"}], ids=["lora", "fpt", "linear_probe", "gpt2"])
def test_checkpoint_layers_with_frozen_parts_and_other_families(over, data, tmp_path):
    """Recomputing layers whose weights (or inputs) need no gradient, and a causal family: runs finish."""
    plain = run(_specs(data, (0,), **over)[0], Store(tmp_path / "p.db"), progress=False)
    ckpt = run(_specs(data, (0,), **over, **{"train.checkpoint_layers": True})[0], Store(tmp_path / "c.db"),
               progress=False)
    assert ckpt.status == "finished" and ckpt.run_id == plain.run_id
    assert ckpt.dev == pytest.approx(plain.dev, abs=1e-6)  # dropout 0 in _specs: the same run


def test_jagged_layer_traces_as_one_graph_without_host_syncs(monkeypatch):
    """The fused layer on a jagged batch, as CUDA runs it, is one graph with no break: the segments' shortest and
    longest length come from the host (pack_seqlens, read while collating), so torch.nested needs no ``.item()``.

    What this covers: on the CPU torch's nested SDPA takes its per-sequence math fallback, which reads lengths
    with ``.item()`` by design; CUDA takes the varlen flash / memory-efficient branch. That branch is traced
    here on meta tensors (torch picks flash for them when told the run only counts, as its flop counter does),
    so the whole layer — projections, nested-tensor construction, SDPA preprocessing, dropout, LayerNorms — is
    what dynamo sees on CUDA; the kernels themselves are not run."""
    import torch.nested._internal.sdpa as nested_sdpa

    monkeypatch.setattr(nested_sdpa, "_is_computing_meta_flops", lambda x: x.device.type == "meta")
    models = [_model("tiny-bert", s, "cls") for s in range(2)]
    fused = FusedModel(models[0], 2)
    fused.load_slot(1, models[1])
    batch = _batch(2, "jagged")
    _, b, t = batch["input_ids"].shape
    x = fused.encode(batch["input_ids"], batch["token_type_ids"], batch["pack_index"], None)[0]

    def meta(z: torch.Tensor) -> torch.Tensor:
        return z.detach().to("meta").requires_grad_(z.is_floating_point())

    args = (meta(x), [meta(w) for w in fused.layer_weights[0]], batch["pack_index"].to("meta"), None, b, t,
            fused.heads, fused.eps, 0.1, 0.1, fused.act, True, batch["pack_offsets"].to("meta"), batch["pack_seqlens"])
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fused_layer)(*args)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    assert batch["pack_seqlens"] == (2, 7)  # seed 1's last row holds 2 real tokens; full rows 7
