"""AntiBERTy (antiberty==0.1.3, the `protein` extra) as `model.name: antiberty`: safe loading, its MLM
head on real antibody sequences, its layers in a text BERT of its shape, and the user's mistakes."""

import importlib.util
import logging

import pytest
import torch

from transferlab import cli
from transferlab.errors import ModelError, SpecError
from transferlab.models import antiberty as ab
from transferlab.models.backbone import load_backbone
from transferlab.models.schema import schema_of
from transferlab.pretrain.mlm import load_mlm_model
from transferlab.pretrain.spec import PretrainSpec
from transferlab.recipes.transplant import transplant
from transferlab.spec import ModelSpec

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("antiberty") is None,
                       reason="antiberty==0.1.3 is not installed (pip install 'transferlab[protein]')"),
    pytest.mark.usefixtures("one_thread", "antiberty_cache"),
]

# Antibody variable domains from the antiberty 0.1.3 README (a human heavy chain and a kappa light
# chain) and trastuzumab's heavy chain (DrugBank DB00072 / IMGT mAb-DB).
HEAVY = "EVQLVQSGPEVKKPGTSVKVSCKASGFTFMSSAVQWVRQARGQRLEWIGWIVIGSGNTNYAQKFQERVTITRDMSTSTAYMELSSLRSEDTAVYYCAAPYCSSISCNDGFDIWGQGTMVTVS"  # noqa: E501
LIGHT = "DVVMTQTPFSLPVSLGDQASISCRSSQSLVHSNGNTYLHWYLQKPGQSPKLLIYKVSNRFSGVPDRFSGSGSGTDFTLKISRVEAEDLGVYFCSQSTHVPYTFGGGTKLEIK"  # noqa: E501
TRASTUZUMAB_VH = "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS"  # noqa: E501


@pytest.fixture(scope="session")
def antiberty_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("transferlab-cache")


@pytest.fixture
def antiberty_cache(antiberty_cache_dir, monkeypatch):
    """The conversion goes to a test folder (once per session), never into the user's cache."""
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(antiberty_cache_dir))


@pytest.fixture(scope="module")
def antiberty_mlm(antiberty_cache_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("TRANSFERLAB_CACHE", str(antiberty_cache_dir))
    spec = PretrainSpec(model=ModelSpec(name="antiberty", max_length=160), out="unused")
    model, tokenizer, info = load_mlm_model(spec)
    mp.undo()
    return model.eval(), tokenizer, info


def test_loads_through_model_name(antiberty_cache_dir, tmp_path):
    backbone = load_backbone(ModelSpec(name="antiberty", max_length=160))
    assert (backbone.family, backbone.hidden_size, backbone.num_layers) == ("bert", 512, 8)
    assert backbone.config.num_attention_heads == 8 and backbone.config.intermediate_size == 2048
    tok = backbone.tokenizer
    assert len(tok) == 25 and tok.mask_token_id == 4 and tok.pad_token_id == 0
    # the package's convention (space-separated residues) and plain sequences give the same ids
    assert tok("EVQLV")["input_ids"] == tok("E V Q L V")["input_ids"] == [2, 8, 22, 18, 14, 22, 3]
    assert (antiberty_cache_dir / "antiberty-0.1.3" / "model.safetensors").is_file()
    tok.save_pretrained(tmp_path / "tok")  # saved as a plain fast tokenizer: loads without transferlab
    import transformers as tf

    assert tf.AutoTokenizer.from_pretrained(tmp_path / "tok")("EVQLV")["input_ids"] == [2, 8, 22, 18, 14, 22, 3]
    # the packaged pooler came along (a fresh one would be N(0, 0.02): norm ~ 0.02 * 512 = 10)
    packaged = ab.read_state(ab.packaged_files()["weights"])
    assert torch.equal(backbone.model.pooler.dense.weight, packaged["bert.pooler.dense.weight"])
    assert torch.equal(backbone.model.encoder.layer[7].output.dense.weight,
                       packaged["bert.encoder.layer.7.output.dense.weight"])


def _masked_accuracy(model, tokenizer, sequence: str, every: int = 6) -> tuple[float, int]:
    """Mask every ``every``-th residue (one pass per offset) and count top-1 hits among residues."""
    ids = torch.tensor([tokenizer(sequence)["input_ids"]])
    residues = torch.arange(1, ids.shape[1] - 1)
    hits, total = 0, 0
    for offset in range(every):
        pos = residues[offset::every]
        masked = ids.clone()
        masked[0, pos] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=masked).logits[0, pos]
        logits[:, tokenizer.all_special_ids] = -float("inf")
        hits += int((logits.argmax(-1) == ids[0, pos]).sum())
        total += len(pos)
    return hits / total, total


@pytest.mark.parametrize("sequence", [HEAVY, LIGHT, TRASTUZUMAB_VH])
def test_mlm_head_predicts_masked_residues(antiberty_mlm, sequence):
    model, tokenizer, info = antiberty_mlm
    assert info["mlm_head"] == "loaded"
    accuracy, n = _masked_accuracy(model, tokenizer, sequence)
    chance = 1 / len(tokenizer)  # 25 tokens; even the 20 residues alone give 0.05
    assert n == len(sequence)
    assert accuracy > 10 * chance, accuracy  # antibody frameworks are highly conserved: AntiBERTy gets most


def test_pretrain_with_the_packaged_head(tmp_path):
    """`transferlab pretrain` on AntiBERTy: the packaged MLM head is used and two steps run."""
    from transferlab.pretrain.mlm import train_mlm

    corpus = tmp_path / "antibodies.txt"
    corpus.write_text("\n".join([HEAVY, LIGHT, TRASTUZUMAB_VH, HEAVY[10:], LIGHT[5:], TRASTUZUMAB_VH[3:]]))
    spec = PretrainSpec(model=ModelSpec(name="antiberty", max_length=130), out=str(tmp_path / "out"))
    spec.corpus.files = [str(corpus)]
    spec.corpus.heldout = 0.34
    spec.train.max_steps, spec.train.batch_size, spec.train.num_evals = 2, 2, 0
    summary = train_mlm(spec, progress=False)
    assert summary["mlm_head"] == "loaded" and summary["steps"] == 2
    # the packaged head predicts antibody residues: the held-out loss is far below uniform over the residues (ln 20 = 3.0)
    assert summary["heldout_before"] < 2.2, summary["heldout_before"]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_layers_transplanted_into_a_text_bert_compute_the_same_function(float64):
    """Acceptance 1: each of AntiBERTy's 8 layers, in a random text BERT of its shape (MiniLM's
    WordPiece vocabulary, fresh embeddings), computes what it computes in AntiBERTy (float64)."""
    source = load_backbone(ModelSpec(name="antiberty")).double().eval()
    target = load_backbone(ModelSpec(name="antiberty-text", init="random"), seed=3).double().eval()
    assert target.tokenizer.vocab_size == 30522 and target.model.embeddings.word_embeddings.num_embeddings == 30522
    fresh = target.model.embeddings.word_embeddings.weight.detach().clone()
    ts, ss = schema_of(target), schema_of(source)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 11, 512, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1] * 11, [1] * 7 + [0] * 4])
    with torch.no_grad():
        assert (ts.call_layer(0, x, mask) - ss.call_layer(0, x, mask)).abs().max() > 0.1  # different before
        report = transplant(target, source, layers="all", source_name="antiberty")
        for layer in range(8):
            diff = (ts.call_layer(layer, x, mask) - ss.call_layer(layer, x, mask))[mask.bool()].abs().max().item()
            assert diff < 1e-10, (layer, diff)
    assert report["layers"] == [[i, i] for i in range(8)] and not report["function_changes"]
    assert torch.equal(target.model.embeddings.word_embeddings.weight, fresh)  # the text embeddings stay fresh


def test_transplant_into_another_width_names_both_widths():
    source = load_backbone(ModelSpec(name="antiberty"))
    minilm = load_backbone(ModelSpec(name="minilm"))
    with pytest.raises(ModelError) as err:
        transplant(minilm, source, layers="0-5", source_name="antiberty")
    line = str(err.value)
    assert "\n" not in line and "512 wide" in line and "384 wide" in line and "antiberty" in line


def test_antiberty_text_has_no_pretrained_weights():
    with pytest.raises(SpecError, match="model.init: antiberty-text"):
        load_backbone(ModelSpec(name="antiberty-text"))


def test_english_text_warns_once_with_the_unknown_rate(caplog):
    tok = ab.antibody_tokenizer()
    with caplog.at_level(logging.WARNING, logger="transferlab.models.antiberty"):
        tok([HEAVY, LIGHT])
        assert not caplog.records  # antibodies: nothing unknown
        tok(["the cat sat on the mat", "a second english sentence"])
        tok(["and another one"])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "[UNK]" in warnings[0] and "English" in warnings[0], warnings


def _spec_file(tmp_path, name="antiberty"):
    data = tmp_path / "data"
    data.mkdir()
    spec = tmp_path / "run.yaml"
    spec.write_text(f"name: x\nmodel: {{name: {name}}}\ntask: {{name: bit_xor}}\ntrain: {{max_steps: 1}}\n")
    return spec


def test_without_the_extra_one_line_naming_it_exit_2(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(ab.importlib.util, "find_spec", lambda name, *a: None if name == "antiberty" else real(name, *a))
    with pytest.raises(ModelError, match=r"pip install 'transferlab\[protein\]'"):
        load_backbone(ModelSpec(name="antiberty"))
    code = cli.main(["run", str(_spec_file(tmp_path)), "--store", str(tmp_path / "runs.db")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "transferlab[protein]" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("damage", ["missing", "corrupted"])
def test_missing_or_corrupted_weights_one_line_exit_2(tmp_path, monkeypatch, capsys, damage):
    fake = tmp_path / "antiberty"
    (fake / ab.CHECKPOINT).mkdir(parents=True)
    real = ab.packaged_files()
    (fake / ab.CHECKPOINT / "config.json").write_text(real["config"].read_text())
    (fake / "trained_models" / "vocab.txt").write_text(real["vocab"].read_text())
    if damage == "corrupted":
        (fake / ab.CHECKPOINT / "pytorch_model.bin").write_bytes(real["weights"].read_bytes()[:100_000])
    monkeypatch.setattr(ab, "package_dir", lambda: fake)
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match="missing" if damage == "missing" else "cannot be read"):
        load_backbone(ModelSpec(name="antiberty"))
    code = cli.main(["run", str(_spec_file(tmp_path)), "--store", str(tmp_path / "runs.db")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pytorch_model.bin" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "cache" / "antiberty-0.1.3").exists()  # nothing half-converted is left behind


def test_cross_modal_study_dry_run_lists_its_runs(tmp_path, capsys):
    """examples/cross_modal_antiberty.yaml as shipped: 4 arms x 3 freeze settings, an LR search of
    3 LRs x 2 seeds per cell, then 10 seeds per cell at the chosen LR."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "cross_modal_antiberty.yaml"
    db = tmp_path / "s.db"
    assert cli.main(["run", str(path), "--store", str(db), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not db.exists()
    lines = [line.split() for line in out.splitlines()]
    search = [w for w in lines if w and w[0] == "lr"]
    assert len(search) == 72 and len({w[6] for w in search}) == 72  # 72 distinct run ids (then state, group)
    cells = {(w[2], w[3]) for w in search}
    freezes = {"freeze=none", "freeze=backbone_for_steps/300", "freeze=backbone_for_steps/600"}
    assert cells == {(a, f) for a in ("transplant", "xavier", "normal", "minilm") for f in freezes}
    assert {w[5] for w in search} == {"2e-05", "5e-05", "0.0001"}
    main = [w for w in lines if w and w[0] == "main"]
    assert len(main) == 12 and all(w[4] == "0,1,2,3,4,5,6,7,8,9" for w in main)
    assert "72 of 72 runs to do; then 12 cells x 10 seeds" in out


@pytest.mark.parametrize("example, runs", [("fpt_protein.yaml", 30), ("cross_modal_surgery.yaml", 5)])
def test_the_other_antiberty_examples_dry_run(tmp_path, capsys, example, runs):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / example
    assert cli.main(["run", str(path), "--store", str(tmp_path / "s.db"), "--dry-run"]) == 0
    assert f"{runs} of {runs} runs to do" in capsys.readouterr().out
