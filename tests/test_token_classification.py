"""Token classification (issue 16): CoNLL column files and hub-style data, subword label alignment,
entity-level scores equal to seqeval's (where seqeval is installed: the reference, not a dependency), bad files (file and line, exit 2), and learning on CoNLL-2003."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import SHARED_DATA, needs_shared_data

from transferlab.cli import main
from transferlab.data import build_task
from transferlab.data.conll import CONLL2003_TAGS, from_hub_dataset
from transferlab.data.metrics import baseline
from transferlab.data.tagging import tag_metrics
from transferlab.data.task import IGNORE
from transferlab.errors import DataError
from transferlab.models.backbone import load_backbone
from transferlab.spec import ModelSpec, TaskSpec, load_spec
from transferlab.store import Store
from transferlab.train.batches import collate, encode
from transferlab.train.loop import run

pytestmark = pytest.mark.usefixtures("one_thread")
CONLL = SHARED_DATA / "conll2003"

GOLD = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "I-ORG", "I-ORG", "O"], ["O", "B-MISC", "B-MISC"]]
PRED = [["B-PER", "I-PER", "O", "B-ORG", "O"], ["B-ORG", "I-ORG", "O", "O"], ["O", "B-MISC", "I-MISC"]]
IOB1_GOLD = [["I-PER", "I-PER", "O", "I-LOC", "B-LOC"], ["O", "I-ORG", "I-ORG"]]
IOB1_PRED = [["I-PER", "I-PER", "O", "I-LOC", "I-LOC"], ["O", "I-ORG", "O"]]


def random_tags(rng: np.random.Generator, n: int) -> list[list[str]]:
    """Sentences of IOB1/IOB2/IOBES-like tags in any order (ill-formed ones too: I- after O, E- alone)."""
    tags = ["O", "O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "I-ORG", "S-ORG"]
    return [[tags[i] for i in rng.integers(0, len(tags), rng.integers(1, 9))] for _ in range(n)]


@pytest.mark.parametrize("gold,pred", [(GOLD, PRED), (IOB1_GOLD, IOB1_PRED)] + [
    (random_tags(np.random.default_rng(seed), 12), random_tags(np.random.default_rng(seed + 100), 12))
    for seed in range(20)], ids=["iob2", "iob1"] + [f"random{seed}" for seed in range(20)])
def test_entity_scores_equal_seqeval(gold, pred):
    sq = pytest.importorskip("seqeval.metrics", reason="seqeval (the reference implementation) is not installed")
    pred = [p[: len(g)] + ["O"] * (len(g) - len(p)) for g, p in zip(gold, pred)]  # seqeval needs equal lengths
    ours = tag_metrics(gold, pred)
    assert ours["entity_f1"] == pytest.approx(sq.f1_score(gold, pred))
    assert ours["entity_precision"] == pytest.approx(sq.precision_score(gold, pred))
    assert ours["entity_recall"] == pytest.approx(sq.recall_score(gold, pred))
    assert ours["token_accuracy"] == pytest.approx(sq.accuracy_score(gold, pred))


def test_entity_scores_by_hand():
    # gold entities: PER, LOC, ORG(3), MISC, MISC = 5; predicted: PER, ORG@3, ORG(2), MISC(2) = 4; right: PER
    m = tag_metrics(GOLD, PRED)
    assert m["entity_precision"] == pytest.approx(1 / 4) and m["entity_recall"] == pytest.approx(1 / 5)
    assert m["entity_f1"] == pytest.approx(2 * (1 / 4) * (1 / 5) / (1 / 4 + 1 / 5))
    assert m["token_accuracy"] == pytest.approx(9 / 12)  # one wrong word per sentence
    # IOB1: "I-LOC B-LOC" are two entities; predicting "I-LOC I-LOC" is one wrong entity
    m = tag_metrics(IOB1_GOLD, IOB1_PRED)
    assert m["entity_recall"] == pytest.approx(1 / 4) and m["entity_precision"] == pytest.approx(1 / 3)
    # a truncated prediction is padded with O: the cut-off gold entity counts as missed
    assert tag_metrics([["O", "B-PER"]], [["O"]])["entity_recall"] == 0.0


def write_conll(folder, rows_train, rows_dev=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text(rows_train)
    (folder / "valid.txt").write_text(rows_dev if rows_dev is not None else rows_train)
    return folder


GOOD = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n"


def test_conll_files_are_read(tmp_path):
    task = build_task(TaskSpec(name="conll2003", path=str(write_conll(tmp_path / "c", GOOD))))
    train = task.splits["train"]
    assert task.kind == "token" and task.label_names == CONLL2003_TAGS and task.main_metric == "entity_f1"
    assert train.words == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]  # -DOCSTART- skipped
    assert train.labels.tolist() == [[3, 0, 7], [1, 2, IGNORE]]


@pytest.mark.parametrize("text,needle", [
    ("EU NNP B-NP B-ORG\nrejects VBZ O\n", "train.txt, line 2: 3 columns, expected 4"),
    ("EU NNP B-NP B-ORG\n\nrejects VBZ B-VP B-FOO\n", "train.txt, line 3: unknown tag 'B-FOO'"),
])
def test_bad_conll_file_names_file_and_line(tmp_path, capsys, text, needle):
    folder = write_conll(tmp_path / "c", text, GOOD)
    with pytest.raises(DataError, match=needle):
        build_task(TaskSpec(name="conll2003", path=str(folder)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"model": {"name": "tiny-bert"}, "head": {"name": "token"},
                                    "task": {"name": "conll2003", "path": str(folder)}}))
    assert main(["run", str(spec), "--store", str(tmp_path / "s.db"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_hub_style_dataset():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=CONLL2003_TAGS))})
    rows = {"tokens": [["EU", "rejects", "German"], ["Peter", "Blackburn"]], "ner_tags": [[3, 0, 7], [1, 2]]}
    ds = datasets.DatasetDict({s: datasets.Dataset.from_dict(rows, features=features) for s in ("train", "validation")})
    task = from_hub_dataset(ds, "conll2003")
    assert task.label_names == CONLL2003_TAGS and task.splits["dev"].words[1] == ["Peter", "Blackburn"]
    assert task.splits["train"].labels.tolist() == [[3, 0, 7], [1, 2, IGNORE]]


@pytest.mark.parametrize("mode", ["first", "all"])
def test_subword_alignment(tmp_path, mode):
    text = "Schwarzenegger NNP B-NP B-PER\nvisited VBD B-VP O\nKarlsruhe NNP B-NP B-LOC\n"
    task = build_task(TaskSpec(name="conll2003", path=str(write_conll(tmp_path / "c", text)),
                               options={"subwords": mode}))
    tok = load_backbone(ModelSpec(name="tiny-bert")).tokenizer
    enc = encode(task.splits["train"], task, tok, 32)
    ids = enc.ids[enc.offsets[0]:enc.offsets[1]]
    pieces = tok.convert_ids_to_tokens(ids.tolist())
    labels = collate(enc, np.array([0]), False)["labels"][0].tolist()
    assert len(labels) == len(pieces)
    name = {i: n for i, n in enumerate(CONLL2003_TAGS)}
    got = [(p, name.get(y, "-")) for p, y in zip(pieces, labels)]
    assert got[0] == ("[CLS]", "-") and got[-1] == ("[SEP]", "-")
    words = tok(["Schwarzenegger"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    n = len(words)
    assert n > 1  # the word is split, so the alignment matters
    expect_rest = "I-PER" if mode == "all" else "-"
    assert got[1] == (pieces[1], "B-PER") and all(y == expect_rest for _, y in got[2 : 1 + n])
    assert enc.extra["first"][0].tolist()[:2] == [1, 1 + n]


def tiny_ner_spec(path, **train):
    return {"name": "ner", "model": {"name": "tiny-bert", "max_length": 48}, "head": {"name": "token"},
            "task": {"name": "conll2003", "path": str(path), "max_train_samples": 300, "max_eval_samples": 100},
            "optim": {"lr": 3e-3}, "schedule": {"name": "constant", "warmup_ratio": 0.0},
            "train": {"max_steps": 40, "batch_size": 16, "num_evals": 1, "log_every": 5, "save_model": False, **train}}


@needs_shared_data
def test_tiny_model_loss_falls_on_conll(tmp_path):
    store = Store(tmp_path / "s.db")
    result = run(load_spec(tiny_ner_spec(CONLL)), store, progress=False)
    assert result.status == "finished"
    losses = [loss for _, loss, _, _ in store.curve(result.uid)]
    assert losses[-1] < 0.6 * losses[0]
    assert set(result.dev) == {"entity_f1", "entity_precision", "entity_recall", "token_accuracy"}
    assert result.summary["baseline"]["entity_f1"] == 0.0  # all "O"


@needs_shared_data
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_minilm_learns_conll_ner(tmp_path):
    spec = tiny_ner_spec(CONLL, max_steps=150, batch_size=16, num_evals=1)
    spec["model"] = {"name": "minilm", "max_length": 48}
    spec["optim"] = {"lr": 1e-4}
    spec["schedule"] = {"name": "linear", "warmup_ratio": 0.1}
    spec["task"].update(max_train_samples=2400, max_eval_samples=300)
    result = run(load_spec(spec), Store(tmp_path / "s.db"), progress=False)
    base = baseline(build_task(TaskSpec(name="conll2003", path=str(CONLL), max_eval_samples=300)))
    assert base["entity_f1"] == 0.0
    assert result.dev["entity_f1"] > 0.4, result.dev  # the all-"O" baseline scores 0
    assert result.dev["token_accuracy"] > base["token_accuracy"]
