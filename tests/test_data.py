"""Task loaders (GLUE folders, generic files, IMDB, digits), sampling and validation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transferlab.data import TASKS, Split, Task, build_task
from transferlab.data.build import validate
from transferlab.data.common import stratified_indices
from transferlab.data.glue import GLUE, load_glue_file
from transferlab.data.images import patchify
from transferlab.errors import DataError, SpecError
from transferlab.spec import TaskSpec

GLUE_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason="shared GLUE data not present")


# --------------------------------------------------------------------------- real GLUE folders


@needs_glue
@pytest.mark.parametrize(
    "name, folder, sizes, num_labels",
    [
        ("rte", "RTE", {"train": 2490, "dev": 277, "test": 3000}, 2),
        ("mrpc", "MRPC", {"train": 3668, "dev": 408, "test": 1725}, 2),
        ("cola", "CoLA", {"train": 8551, "dev": 1043, "test": 1063}, 2),
        ("sts-b", "STS-B", {"train": 5749, "dev": 1500, "test": 1379}, 1),
    ],
)
def test_glue_folders_row_counts_and_labels(name, folder, sizes, num_labels):
    task = build_task(TaskSpec(name=name, path=str(GLUE_DIR / folder)))
    assert {k: len(v) for k, v in task.splits.items()} == sizes
    assert task.num_labels == num_labels and task.extra["skipped_rows"] == {}
    train, dev, test = task.splits["train"], task.splits["dev"], task.splits["test"]
    assert train.labelled and dev.labelled and not test.labelled
    if task.problem == "regression":
        assert train.labels.dtype == np.float32 and 0 <= train.labels.min() and train.labels.max() <= 5
        assert np.isnan(test.labels).all()
    else:
        assert set(np.unique(train.labels)) == {0, 1} and (test.labels == -1).all()
    assert (train.text_pairs is None) == (name == "cola")
    assert all(isinstance(t, str) and t for t in train.texts)


@needs_glue
def test_glue_quirks_bare_quotes_and_root_folder():
    task = build_task(TaskSpec(name="mrpc", path=str(GLUE_DIR)))  # the GLUE root holding MRPC/
    assert len(task.splits["train"]) == 3668
    assert task.splits["dev"].text_pairs[0].startswith('"The foodservice pie business')  # QUOTE_NONE
    assert task.splits["train"].labels[:2].tolist() == [1, 0]
    rte = build_task(TaskSpec(name="rte", path=str(GLUE_DIR)))
    assert rte.splits["train"].labels[0] == 1  # not_entailment
    assert rte.label_names == ["entailment", "not_entailment"]


@needs_glue
def test_qnli_dev_and_missing_train():
    dev, skipped = load_glue_file("qnli", GLUE_DIR / "QNLI" / "dev.tsv", "dev")
    assert len(dev) == 5463 and skipped == 0 and set(np.unique(dev.labels)) == {0, 1}
    test, _ = load_glue_file("qnli", GLUE_DIR / "QNLI" / "test.tsv", "test")
    assert len(test) == 5463 and not test.labelled
    with pytest.raises(DataError, match=r"QNLI/train\.tsv does not exist"):
        build_task(TaskSpec(name="qnli", path=str(GLUE_DIR / "QNLI")))


# --------------------------------------------------------------------------- generated GLUE folders

# headers of the GLUE files (train/dev, test); None: CoLA's headerless train/dev
HEADERS = {
    "cola": (None, ["index", "sentence"]),
    "sst-2": (["sentence", "label"], ["index", "sentence"]),
    "mrpc": (
        ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    ),
    "qqp": (
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        ["id", "question1", "question2"],
    ),
    "sts-b": (
        [
            "index",
            "genre",
            "filename",
            "year",
            "old_index",
            "source1",
            "source2",
            "sentence1",
            "sentence2",
            "score",
        ],
        ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"],
    ),
    "mnli": (
        [
            "index",
            "promptID",
            "pairID",
            "genre",
            "sentence1_binary_parse",
            "sentence2_binary_parse",
            "sentence1_parse",
            "sentence2_parse",
            "sentence1",
            "sentence2",
            "label1",
            "gold_label",
        ],
        [
            "index",
            "promptID",
            "pairID",
            "genre",
            "sentence1_binary_parse",
            "sentence2_binary_parse",
            "sentence1_parse",
            "sentence2_parse",
            "sentence1",
            "sentence2",
        ],
    ),
    "qnli": (["index", "question", "sentence", "label"], ["index", "question", "sentence"]),
    "rte": (["index", "sentence1", "sentence2", "label"], ["index", "sentence1", "sentence2"]),
    "wnli": (["index", "sentence1", "sentence2", "label"], ["index", "sentence1", "sentence2"]),
}
HEADERS["mnli-mm"] = HEADERS["mnli"]


def write_glue(root: Path, name: str, n: int = 6, bad_label: str | None = None) -> Path:
    """A tiny GLUE-layout folder for ``name``; returns the folder."""
    g = GLUE[name]
    folder = root / g.folder
    folder.mkdir(parents=True, exist_ok=True)
    labelled, unlabelled = HEADERS[name]
    for split, file, _ in g.files:
        header = unlabelled if split.startswith("test") else labelled
        lines = [] if header is None else ["\t".join(header)]
        for i in range(n):
            label = f"{i * 0.7:.3f}" if g.file_labels is None else g.file_labels[i % len(g.file_labels)]
            if bad_label is not None and split == "train" and i == 2:
                label = bad_label
            texts = [f'{split} text {i} with a "bare quote', f"{split} other {i}"]
            if header is None:
                lines.append(f"src\t{label}\t\t{texts[0]}")
                continue
            row = {c: texts[k] for k, c in enumerate(g.columns)} | {g.label_column: label}
            lines.append("\t".join(row.get(c, "x") for c in header))
        (folder / file).write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("name", sorted(GLUE))
def test_every_glue_task_reads_its_layout(tmp_path, name):
    write_glue(tmp_path, name)
    task = build_task(TaskSpec(name=name, path=str(tmp_path)))
    g = GLUE[name]
    assert set(task.splits) == {s for s, _, _ in g.files}
    assert all(len(s) == 6 for s in task.splits.values())
    train = task.splits["train"]
    assert train.texts[0] == 'train text 0 with a "bare quote'
    assert (train.text_pairs is not None) == g.pair == task.extra["pair"]
    if g.file_labels is None:
        assert task.problem == "regression" and train.labels[1] == pytest.approx(0.7)
    else:
        assert train.labels.tolist() == [i % len(g.file_labels) for i in range(6)]
        assert task.num_labels == len(g.label_names)
    assert not task.splits["test"].labelled
    assert task.main_metric in task.metrics


def test_mnli_matched_and_mismatched(tmp_path):
    write_glue(tmp_path, "mnli")
    (tmp_path / "MNLI" / "dev_mismatched.tsv").write_text(
        "\t".join(HEADERS["mnli"][0])
        + "\n"
        + "\t".join(["0"] * 8 + ["mm premise", "mm hyp", "x", "neutral"])
        + "\n"
    )
    m = build_task(TaskSpec(name="mnli", path=str(tmp_path / "MNLI")))
    assert len(m.splits["dev"]) == 6 and len(m.splits["dev_mm"]) == 1
    assert m.splits["dev_mm"].texts == ["mm premise"] and m.splits["dev_mm"].labels.tolist() == [1]
    mm = build_task(TaskSpec(name="mnli-mm", path=str(tmp_path / "MNLI")))
    assert mm.splits["dev"].texts == ["mm premise"] and "dev_mm" not in mm.splits


def test_glue_bad_label_names_file_line_and_allowed(tmp_path):
    write_glue(tmp_path, "rte", bad_label="maybe")
    with pytest.raises(
        DataError,
        match=r"RTE/train\.tsv, line 4: label 'maybe' is not one of entailment, "
        r"not_entailment",
    ):
        build_task(TaskSpec(name="rte", path=str(tmp_path)))
    write_glue(tmp_path, "sts-b", bad_label="")
    with pytest.raises(DataError, match=r"STS-B/train\.tsv, line 4: score '' is not a finite number"):
        build_task(TaskSpec(name="sts-b", path=str(tmp_path)))


def test_glue_missing_column_and_short_rows(tmp_path):
    folder = write_glue(tmp_path, "rte")
    (folder / "dev.tsv").write_text("index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(
        DataError, match=r"dev\.tsv: no column 'sentence2'; columns present: index, sentence1"
    ):
        build_task(TaskSpec(name="rte", path=str(folder)))
    (folder / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tshort\n")
    with pytest.warns(UserWarning, match="skipped 1 short rows"):
        task = build_task(TaskSpec(name="rte", path=str(folder)))
    assert len(task.splits["dev"]) == 1 and task.extra["skipped_rows"] == {"dev": 1}


def test_glue_spec_errors(tmp_path):
    write_glue(tmp_path, "cola")
    with pytest.raises(SpecError, match="task.text_pair_column: cola is a single-sentence task"):
        build_task(TaskSpec(name="cola", path=str(tmp_path), text_pair_column="sentence2"))
    with pytest.raises(SpecError, match="task.text_pair_column: sst-2 is a single-sentence task"):
        build_task(TaskSpec(name="sst2", path=str(tmp_path), text_pair_column="b"))
    with pytest.raises(SpecError, match="task.problem: cola is a classification task"):
        build_task(TaskSpec(name="cola", path=str(tmp_path), problem="regression"))
    with pytest.raises(SpecError, match="task.options: unknown key 'foo'"):
        build_task(TaskSpec(name="cola", path=str(tmp_path), options={"foo": 1}))
    with pytest.raises(SpecError, match="task.name: unknown task 'glue-x'"):
        build_task(TaskSpec(name="glue-x"))
    with pytest.raises(DataError, match="task.path: folder .*nowhere does not exist"):
        build_task(TaskSpec(name="rte", path=str(tmp_path / "nowhere")))


def test_hub_offline_without_cache_is_a_clear_error(tmp_path):
    pytest.importorskip("datasets", reason="the hub task's datasets package (the `hub` extra) is not installed")
    code = (
        "from transferlab.data import build_task\nfrom transferlab.spec import TaskSpec\n"
        "from transferlab.errors import DataError\n"
        "for name in ('rte', 'imdb'):\n"
        "    try:\n        build_task(TaskSpec(name=name))\n"
        "    except DataError as e:\n        print('DataError:', e)\n"
    )
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "d")
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("DataError:")]
    assert len(lines) == 2, out.stdout + out.stderr
    assert "nyu-mll/glue/rte" in lines[0] and "stanfordnlp/imdb" in lines[1]
    for line in lines:
        assert "Hugging Face hub" in line and "HF_HUB_OFFLINE" in line and "task.path" in line


# --------------------------------------------------------------------------- generic files


def write_table(path: Path, rows: list[dict], fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    sep = "," if fmt == "csv" else "\t"
    cols = list(rows[0])
    lines = [sep.join(cols)] + [sep.join(str(r[c]) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def toy_rows(n: int, labels=("neg", "pos", "mid")) -> list[dict]:
    return [{"text": f"text {i}", "other": f"pair {i}", "label": labels[i % len(labels)]} for i in range(n)]


def write_split_files(root: Path, fmt: str, labels=("neg", "pos", "mid"), test=True) -> Path:
    write_table(root / f"train.{fmt}", toy_rows(12, labels), fmt)
    write_table(root / f"dev.{fmt}", toy_rows(6, labels), fmt)
    if test:
        write_table(root / f"test.{fmt}", [{"text": f"t {i}", "other": "o"} for i in range(4)], fmt)
    return root


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_generic_classification(tmp_path, fmt):
    write_split_files(tmp_path, fmt)
    task = build_task(TaskSpec(name=fmt, path=str(tmp_path)))
    assert task.problem == "classification" and task.label_names == ["mid", "neg", "pos"]
    assert task.metrics == ("accuracy",) and task.main_metric == "accuracy"
    assert task.splits["train"].labels[:3].tolist() == [1, 2, 0]
    assert task.splits["train"].text_pairs is None and task.extra["pair"] is False
    assert len(task.splits["test"]) == 4 and (task.splits["test"].labels == -1).all()
    fixed = build_task(
        TaskSpec(name=fmt, path=str(tmp_path), labels=["neg", "pos", "mid"], text_pair_column="other")
    )
    assert fixed.splits["train"].labels[:3].tolist() == [0, 1, 2]
    assert fixed.splits["dev"].text_pairs[1] == "pair 1" and fixed.extra["pair"] is True


def test_generic_numeric_labels_and_regression(tmp_path):
    write_split_files(tmp_path / "int", "csv", labels=(10, 2, 9))
    task = build_task(TaskSpec(name="csv", path=str(tmp_path / "int")))
    assert task.problem == "classification" and task.label_names == ["2", "9", "10"]
    write_split_files(tmp_path / "bin", "jsonl", labels=(0, 1))
    assert build_task(TaskSpec(name="jsonl", path=str(tmp_path / "bin"), labels=[0, 1])).metrics == (
        "accuracy",
        "f1",
    )
    write_split_files(tmp_path / "reg", "tsv", labels=(0.5, 1, 2.25))
    reg = build_task(TaskSpec(name="tsv", path=str(tmp_path / "reg")))
    assert (
        reg.problem == "regression" and reg.num_labels == 1 and reg.splits["train"].labels.dtype == np.float32
    )
    assert (
        reg.splits["train"].labels[:3].tolist() == [0.5, 1.0, 2.25]
        and np.isnan(reg.splits["test"].labels).all()
    )
    forced = build_task(TaskSpec(name="csv", path=str(tmp_path / "int"), problem="regression"))
    assert forced.problem == "regression" and forced.splits["dev"].labels[0] == 10.0


def test_generic_explicit_files_and_dev_fraction(tmp_path):
    write_table(tmp_path / "a" / "mine.csv", toy_rows(40), "csv")
    write_table(tmp_path / "b" / "held.csv", toy_rows(9), "csv")
    spec = TaskSpec(
        name="csv", train_file=str(tmp_path / "a" / "mine.csv"), dev_file=str(tmp_path / "b" / "held.csv")
    )
    assert {k: len(v) for k, v in build_task(spec).splits.items()} == {"train": 40, "dev": 9}
    spec = TaskSpec(
        name="csv", path=str(tmp_path / "a"), train_file="mine.csv", options={"dev_fraction": 0.25}
    )
    task = build_task(spec)
    assert len(task.splits["train"]) == 30 and len(task.splits["dev"]) == 10
    assert sorted(np.bincount(task.splits["dev"].labels).tolist()) == [3, 3, 4]  # stratified
    assert task.splits["dev"].texts == build_task(spec, seed=5).splits["dev"].texts  # not the run seed


def test_generic_csv_quoting(tmp_path):
    (tmp_path / "train.csv").write_text('text,label\n"hello, world",a\n"say ""hi""",b\n')
    (tmp_path / "dev.csv").write_text("text,label\nx,a\n")
    task = build_task(TaskSpec(name="csv", path=str(tmp_path)))
    assert task.splits["train"].texts == ["hello, world", 'say "hi"']


def expect(error, match, **spec):
    with pytest.raises(error, match=match):
        build_task(TaskSpec(**spec))


def test_generic_file_errors(tmp_path):
    p = str(tmp_path)
    expect(SpecError, "task.path: the csv task needs", name="csv")
    expect(DataError, r"train file .*train\.csv does not exist", name="csv", path=p)
    write_table(tmp_path / "train.csv", toy_rows(6), "csv")
    expect(
        DataError,
        r"dev file .*dev\.csv does not exist \(or set task.options.dev_fraction",
        name="csv",
        path=p,
    )
    (tmp_path / "dev.csv").write_text("text,label\n")
    expect(DataError, r"dev\.csv: the dev file holds no examples", name="csv", path=p)
    write_table(tmp_path / "dev.csv", toy_rows(3), "csv")
    expect(
        DataError,
        r"train\.csv: no column 'review' \(task.text_column\); columns present: text, other, label",
        name="csv",
        path=p,
        text_column="review",
    )
    expect(
        DataError,
        r"train\.csv: no column 'b' \(task.text_pair_column\)",
        name="csv",
        path=p,
        text_pair_column="b",
    )
    expect(
        DataError,
        r"train\.csv, line 3: label 'pos' is not one of the labels neg, mid",
        name="csv",
        path=p,
        labels=["neg", "mid"],
    )
    expect(
        SpecError,
        "task.options.dev_fraction: there is a dev file",
        name="csv",
        path=p,
        options={"dev_fraction": 0.1},
    )
    expect(SpecError, "task.options: unknown key 'sep'", name="csv", path=p, options={"sep": ";"})
    expect(DataError, r"test file .*nope\.csv does not exist", name="csv", path=p, test_file="nope.csv")
    (tmp_path / "dev.csv").write_text("text,label\na,neg\nb,pos,extra\n")
    expect(DataError, r"dev\.csv, line 3: 3 fields, the header has 2", name="csv", path=p)


def test_generic_regression_and_json_errors(tmp_path):
    p = str(tmp_path)
    write_table(tmp_path / "train.jsonl", toy_rows(6, labels=(0.5, 1.5)), "jsonl")
    (tmp_path / "dev.jsonl").write_text('{"text": "a", "label": 0.5}\n{"text": "b", "label": null}\n')
    expect(
        DataError, r"dev\.jsonl, line 2: regression target '' is not a finite number", name="jsonl", path=p
    )
    (tmp_path / "dev.jsonl").write_text('{"text": "a", "label": 0.5}\n{"text": "b", "label": NaN}\n')
    expect(DataError, r"dev\.jsonl, line 2: regression target 'nan'", name="jsonl", path=p)
    (tmp_path / "dev.jsonl").write_text('{"text": "a", "label": 0.5}\n\n{"text": "b", "label": 1\n')
    expect(DataError, r"dev\.jsonl, line 3: not valid JSON", name="jsonl", path=p)
    (tmp_path / "dev.jsonl").write_text('{"text": "a", "label": 0.5}\n{"label": 1.5}\n')
    expect(DataError, r"dev\.jsonl, line 2: no value in column 'text'", name="jsonl", path=p)
    (tmp_path / "dev.jsonl").write_text("[1, 2]\n")
    expect(DataError, r"dev\.jsonl, line 1: expected a JSON object", name="jsonl", path=p)


# --------------------------------------------------------------------------- imdb


def write_imdb(root: Path, n: int = 10) -> Path:
    for split in ("train", "test"):
        for label in ("neg", "pos"):
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}_{3 if label == 'neg' else 8}.txt").write_text(
                    f"{split} {label} review {i}<br />"
                )
    return root


def test_imdb_from_folder(tmp_path):
    write_imdb(tmp_path)
    task = build_task(TaskSpec(name="imdb", path=str(tmp_path)))
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 18, "dev": 2, "test": 20}
    assert np.bincount(task.splits["dev"].labels).tolist() == [1, 1]  # class-balanced
    assert task.splits["test"].texts[0] == "test neg review 0<br />" and task.label_names == ["neg", "pos"]
    assert (
        task.splits["dev"].texts
        == build_task(TaskSpec(name="imdb", path=str(tmp_path)), seed=3).splits["dev"].texts
    )
    other = build_task(TaskSpec(name="imdb", path=str(tmp_path / "aclImdb"), options={"dev_from": "test"}))
    assert set(other.splits) == {"train", "dev"} and len(other.splits["train"]) == 20
    with pytest.raises(SpecError, match="task.options.dev_from"):
        build_task(TaskSpec(name="imdb", path=str(tmp_path), options={"dev_from": "val"}))
    with pytest.raises(DataError, match=r"train/neg does not exist"):
        build_task(TaskSpec(name="imdb", path=str(tmp_path / "aclImdb" / "test")))


# --------------------------------------------------------------------------- digits and patchify


def test_digits_shapes_and_split():
    task = build_task(TaskSpec(name="digits"))
    sizes = {k: len(v) for k, v in task.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["dev"] == sizes["test"] == 270
    train = task.splits["train"]
    assert (
        task.modality == "vectors" and task.input_dim == 4 and train.inputs.shape == (sizes["train"], 16, 4)
    )
    assert train.inputs.dtype == np.float32 and 0 <= train.inputs.min() and train.inputs.max() <= 1
    assert train.texts is None and task.num_labels == 10
    assert np.bincount(task.splits["test"].labels).min() >= 26  # stratified: about 27 per class
    pixels = build_task(TaskSpec(name="digits", options={"pixels": True}))
    assert pixels.input_dim == 1 and pixels.splits["dev"].inputs.shape == (270, 64, 1)


def test_digits_split_is_seeded_by_split_seed_only():
    a = build_task(TaskSpec(name="digits"), seed=0).splits["dev"]
    b = build_task(TaskSpec(name="digits"), seed=7).splits["dev"]
    c = build_task(TaskSpec(name="digits", options={"split_seed": 1})).splits["dev"]
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.inputs, c.inputs)
    with pytest.raises(
        SpecError, match="patch_size: patchify: image size 8x8 is not divisible by patch size 3"
    ):
        build_task(TaskSpec(name="digits", options={"patch_size": 3}))


def test_patchify():
    images = np.arange(2 * 4 * 6 * 3).reshape(2, 4, 6, 3)
    out = patchify(images, 2)
    assert out.shape == (2, 6, 12)
    assert np.array_equal(out[1, 4], images[1, 2:4, 2:4].reshape(-1))  # second patch row, second column
    assert patchify(images[..., 0], 2).shape == (2, 6, 4)
    with pytest.raises(DataError, match="image size 4x6 is not divisible by patch size 4"):
        patchify(images, 4)
    with pytest.raises(DataError, match=r"expected images of shape"):
        patchify(np.zeros((4, 4)), 2)


# --------------------------------------------------------------------------- sampling and validation


def test_stratified_indices():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    idx = stratified_indices(labels, 20, seed=1)
    assert len(idx) == 20 and len(set(idx)) == 20 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [16, 3, 1]
    assert np.array_equal(idx, stratified_indices(labels, 20, seed=1))
    assert not np.array_equal(idx, stratified_indices(labels, 20, seed=2))
    assert len(stratified_indices(labels, 7, seed=0)) == 7  # rounding still gives exactly n
    assert np.array_equal(stratified_indices(labels, 500, seed=0), np.arange(100))


def test_max_samples(tmp_path):
    write_table(tmp_path / "train.csv", toy_rows(60, labels=("a", "a", "b")), "csv")
    write_table(tmp_path / "dev.csv", toy_rows(30, labels=("a", "b")), "csv")
    spec = TaskSpec(name="csv", path=str(tmp_path), max_train_samples=15, max_eval_samples=9)
    t0, t0b, t1 = build_task(spec, seed=0), build_task(spec, seed=0), build_task(spec, seed=1)
    assert np.bincount(t0.splits["train"].labels).tolist() == [10, 5]
    assert t0.splits["train"].texts == t0b.splits["train"].texts != t1.splits["train"].texts
    assert len(t0.splits["dev"]) == 9 and t0.splits["dev"].texts == t1.splits["dev"].texts  # same eval set
    fixed = TaskSpec(name="csv", path=str(tmp_path), max_train_samples=15, options={"sample_seed": 4})
    assert build_task(fixed, seed=0).splits["train"].texts == build_task(fixed, seed=1).splits["train"].texts
    with pytest.raises(SpecError, match="task.max_train_samples: must be at least 1"):
        build_task(TaskSpec(name="csv", path=str(tmp_path), max_train_samples=0))


def test_validate_catches_bad_tasks():
    good = {"train": Split(np.array([0, 1])), "dev": Split(np.array([1, 0]))}
    validate(Task("t", dict(good), "classification", 2, ("accuracy",), "accuracy"))
    cases = [
        ({"train": Split(np.array([], dtype=np.int64))}, "split 'train': the split is empty"),
        ({"dev": Split(np.array([0, 2]))}, "split 'dev': label id 2 at example 1 is outside 0..1"),
        ({"dev": Split(np.array([0, -1]))}, "split 'dev': label id -1"),
        ({"test": Split(np.array([0, -1]))}, "split 'test': label id -1"),
        ({"dev": Split(np.array([0, 1]), texts=["a"])}, "1 texts for 2 labels"),
    ]
    for change, message in cases:
        with pytest.raises(DataError, match=message):
            validate(Task("t", good | change, "classification", 2, ("accuracy",), "accuracy"))
    validate(Task("t", good | {"test": Split(np.array([-1, -1]))}, "classification", 2, ("accuracy",), "accuracy"))
    reg = {"train": Split(np.array([0.5, 1.0])), "dev": Split(np.array([np.nan, 1.0]))}
    with pytest.raises(DataError, match="split 'dev': regression target nan at example 0 is not finite"):
        validate(Task("r", reg, "regression", 1, ("rmse",), "rmse"))


MY_MODULES = {f"transferlab.data.{m}" for m in ("glue", "files", "imdb", "images")}


def test_registry_names_and_aliases():
    mine = [n for n in TASKS.names() if TASKS.get(n).__module__ in MY_MODULES]
    expected = {
        "rte",
        "mrpc",
        "sts-b",
        "stsb",
        "cola",
        "sst-2",
        "sst2",
        "qnli",
        "qqp",
        "mnli",
        "mnli-mm",
        "wnli",
        "csv",
        "tsv",
        "jsonl",
        "imdb",
        "digits",
        "mnist",
        "cifar10",
        "cifar10_gray",
    }
    assert set(mine) == expected


def test_hub_rows_are_converted(monkeypatch):
    """The hub path without the hub: a fake DatasetDict in the hub's column layout."""
    datasets = pytest.importorskip("datasets", reason="the hub task's datasets package (the `hub` extra) is not installed")

    from transferlab.data import glue, imdb

    def fake(columns: dict[str, dict[str, list]]):
        return lambda repo, config, spec: datasets.DatasetDict(
            {k: datasets.Dataset.from_dict(v) for k, v in columns.items()}
        )

    rows = {"sentence1": ["a", "b"], "sentence2": ["c", "d"]}
    monkeypatch.setattr(
        glue,
        "load_hub",
        fake(
            {
                "train": rows | {"label": [1.5, 4.0]},
                "validation": rows | {"label": [0.0, 5.0]},
                "test": rows | {"label": [-1.0, -1.0]},
            }
        ),
    )
    task = build_task(TaskSpec(name="stsb"))
    assert task.splits["train"].labels.tolist() == [1.5, 4.0] and task.splits["dev"].text_pairs == ["c", "d"]
    assert np.isnan(task.splits["test"].labels).all() and task.extra["source"] == "hub:nyu-mll/glue/stsb"
    nli = {"premise": ["p", "q"], "hypothesis": ["h", "i"], "label": [2, 0]}
    monkeypatch.setattr(
        glue, "load_hub", fake({"train": nli, "validation_matched": nli, "validation_mismatched": nli})
    )
    task = build_task(TaskSpec(name="mnli"))
    assert set(task.splits) == {"train", "dev", "dev_mm"} and task.splits["dev_mm"].texts == ["p", "q"]
    reviews = {"text": [f"r{i}" for i in range(20)], "label": [0, 1] * 10}
    monkeypatch.setattr(imdb, "load_hub", fake({"train": reviews, "test": reviews}))
    task = build_task(TaskSpec(name="imdb"))
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 18, "dev": 2, "test": 20}


def test_an_mnli_run_evaluates_matched_and_mismatched(tmp_path, one_thread):
    """Selection and the main metric on dev (matched); dev_mm (mismatched) evaluated at the end too, both stored."""
    from conftest import tiny_spec_dict

    from transferlab.spec import load_spec
    from transferlab.store import Store
    from transferlab.train.loop import run

    write_glue(tmp_path, "mnli", n=12)
    spec = tiny_spec_dict(tmp_path / "MNLI", max_steps=2, num_evals=1, save_model=False, batch_size=4)
    spec["task"] = {"name": "mnli", "path": str(tmp_path / "MNLI")}
    store = Store(tmp_path / "s.db")
    result = run(load_spec(spec), store, progress=False)
    assert result.status == "finished" and result.summary["main_metric"] == "accuracy"
    mismatched = result.summary["extra_evals"]["dev_mm"]
    assert set(mismatched) == set(result.dev) and 0.0 <= mismatched["accuracy"] <= 1.0
    splits = {split for _, split, _, _ in store.evals(result.uid)}
    assert {"dev", "dev_mm"} <= splits
    assert not build_task(TaskSpec(name="rte", path=str(write_glue(tmp_path, "rte")))).extra["eval_splits"]


def test_glue_path_of_another_tasks_folder_is_one_line(tmp_path, capsys):
    """task.path naming another GLUE task's folder is refused before anything runs (never read as this
    task's data); the GLUE root still leads to the task's own folder, which the task records as its source."""
    import yaml

    from transferlab.cli import main
    from transferlab.errors import SpecError

    write_glue(tmp_path / "glue", "rte")
    write_glue(tmp_path / "glue", "mrpc")
    with pytest.raises(SpecError, match=r"task.path: .*RTE is the GLUE RTE folder, but task.name is wnli"):
        build_task(TaskSpec(name="wnli", path=str(tmp_path / "glue" / "RTE")))
    assert build_task(TaskSpec(name="mrpc", path=str(tmp_path / "glue"))).extra["source"] == \
        str(tmp_path / "glue" / "MRPC")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"model": {"name": "tiny-bert"}, "head": {"name": "cls"},
                                    "task": {"name": "mrpc", "path": str(tmp_path / "glue" / "RTE")}}))
    capsys.readouterr()
    assert main(["run", str(spec), "--store", str(tmp_path / "s.db"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GLUE RTE folder" in err[0] and "task.name is mrpc" in err[0]
    if (tmp_path / "s.db").exists():
        from transferlab.store import Store

        assert Store(tmp_path / "s.db").runs() == []  # refused before any run row
