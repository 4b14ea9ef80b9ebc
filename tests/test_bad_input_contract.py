"""The bad-input contract table (issue 25): every user mistake is one line on stderr naming the field,
file or line, exit code 2 (or a UserError from the Python API), no traceback, and no new row in a store
that already holds runs. A second table lists inputs that must be accepted (BOM, CRLF, large cells,
unicode, a huge grid's dry run).

The CLI runs in-process (``cli.main(argv)``); the models are tiny random ones built in-process.
``python tests/test_bad_input_contract.py`` prints the table's tally (clean / traceback / silent exit 0 /
rows written on rejection / other) against the code on the path: the figures of the issue's closing note.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_spec_dict, tiny_study_dict, write_sentiment_csv  # noqa: E402

from transferlab.cli import main  # noqa: E402
from transferlab.errors import UserError  # noqa: E402
from transferlab.store import Store  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the world the cases run in


def build_world(tmp: Path) -> dict:
    """A data folder, a spec, a store with two finished runs (a single-text and a sentence-pair model),
    a model folder without tokenizer files, a plain file, a folder of data files to break."""
    import transformers as tf

    data = write_sentiment_csv(tmp / "toy", n_train=32, n_dev=16)
    base = tiny_spec_dict(data, epochs=1, num_evals=1, log_every=1, save_model=True)
    base["model"]["max_length"] = 16
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump(base))
    db = tmp / "s.db"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(spec), "--store", str(db), "--quiet"]) == 0
        pair = tmp / "pair"
        pair.mkdir()
        for split in ("train", "dev"):
            rows = (data / f"{split}.csv").read_text().splitlines()[1:]
            (pair / f"{split}.csv").write_text(
                "text,text2,label\n" + "".join(f"{r.rsplit(',', 1)[0]},a film,{r.rsplit(',', 1)[1]}\n" for r in rows))
        pair_spec = tmp / "pair.yaml"
        pair_spec.write_text(yaml.safe_dump({**base, "task": {"name": "csv", "path": str(pair),
                                                                "text_pair_column": "text2"}}))
        assert main(["run", str(pair_spec), "--store", str(db), "--quiet"]) == 0
    finally:
        torch.set_num_threads(before)
    uids = {r.spec["task"]["path"]: r.uid for r in Store(db).runs()}
    no_tok = tmp / "no_tokenizer_model"
    config = tf.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32)
    tf.BertModel(config).save_pretrained(no_tok)
    (tmp / "a_file").write_text("not a folder\n")
    (tmp / "no_config").mkdir()
    return {"root": tmp, "data": data, "spec": spec, "base": base, "db": db, "uid": uids[str(data)],
            "pair_uid": uids[str(pair)], "no_tok": no_tok, "a_file": tmp / "a_file", "pair": pair}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("bad_input"))


def rows(db: Path) -> int:
    return len(Store(db, create=False).runs(latest=False)) if db.is_file() else 0


# --------------------------------------------------------------------------- how a case is built

# A case: (world, tmp) -> (argv or a callable, the text its one line must hold).


def fill(text: str, w: dict, tmp: Path) -> str:
    """``<name>`` replaced by the world's value of that name (``<tmp>``: the case's folder)."""
    for k, v in {**w, "tmp": tmp}.items():
        if isinstance(v, (str, Path)):
            text = text.replace(f"<{k}>", str(v))
    return text


def run_set(*sets: str, needle: str, extra=()):
    """`transferlab run SPEC --set ...` on the world's store."""
    def make(w, tmp):
        argv = ["run", str(w["spec"]), "--store", str(w["db"]), "--quiet", *extra]
        for s in sets:
            argv += ["--set", fill(s, w, tmp)]
        return [fill(a, w, tmp) for a in argv], fill(needle, w, tmp)
    return make


def data_files(files: dict[str, str | bytes], needle: str, task: str = "csv", *sets: str):
    """A task folder holding ``files`` (name -> text), run with ``task.name=task``; the needle may name
    ``{dir}``, the folder."""
    def make(w, tmp):
        folder = tmp / "data"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        argv = ["run", str(w["spec"]), "--store", str(w["db"]), "--quiet", "--set", f"task.path={folder}",
                "--set", f"task.name={task}"]
        for s in sets:
            argv += ["--set", s]
        return argv, needle.format(dir=folder)
    return make


def spec_text(text: str, needle: str, extra=()):
    """A spec file with this YAML text (``{data}`` is the world's data folder)."""
    def make(w, tmp):
        path = tmp / "spec.yaml"
        path.write_text(text.replace("{data}", str(w["data"])))
        return ["run", str(path), "--store", str(w["db"]), "--quiet", *extra], needle
    return make


def study(arms: dict | None = None, needle: str = "", extra=(), **fields):
    """A study over the world's data (two arms x the seeds) with ``arms`` added and ``fields`` replaced."""
    def make(w, tmp):
        s = tiny_study_dict(w["data"], name=f"bad-{tmp.name}", seeds=[0, 1])  # a study of its own per case
        s["arms"].update(arms or {})
        s.update(fields)
        path = tmp / "study.yaml"
        path.write_text(yaml.safe_dump(s))
        return ["run", str(path), "--store", str(w["db"]), *[fill(e, w, tmp) for e in extra]], needle
    return make


def argv_of(fn):
    def make(w, tmp):
        return fn(w, tmp)
    return make


def api(fn, needle: str):
    def make(w, tmp):
        return (lambda: fn(w, tmp)), needle
    return make


CSV = "text,label\n" + "".join(f"{w} film,{i % 2}\n" for i, w in enumerate(["good", "bad", "fine", "dull"] * 4))
DEV = CSV


def csv_with(train: str, dev: str = DEV) -> dict[str, str]:
    return {"train.csv": train, "dev.csv": dev}


def jsonl(objs) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs)


CONLL_SETS = ("conll", "task.options={num_columns: 2}", "head.name=token")
GOOD_JSONL = jsonl([{"text": f"w{i} film", "label": i % 2} for i in range(16)])
CONLL_OK = "EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n\n" * 4


def squad(answer_text="Denver", start=0, context="Denver Broncos won the game.") -> str:
    return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": f"q{i}", "question": "Who won?", "answers": [{"text": answer_text, "answer_start": start}]}
        for i in range(4)]}]}]})


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + f"\nname: *a{levels - 1}\n"


def _api_run_dict(w, tmp):
    import transferlab

    return transferlab.run(dict(w["base"]), Store(w["db"]))


def _api_run_path_store(w, tmp):
    import transferlab

    return transferlab.run(transferlab.load_spec(w["base"]), str(w["db"]))


def _api_load_spec(value):
    def fn(w, tmp):
        from transferlab import load_spec

        return load_spec(value)
    return fn


def _api_load_study(value):
    def fn(w, tmp):
        from transferlab.study.spec import load_study

        return load_study(value)
    return fn


def _api_run_study_dict(w, tmp):
    from transferlab.study.runner import run_study

    return run_study(tiny_study_dict(w["data"]), Store(w["db"]))


def _api_worker_file(name):
    def fn(w, tmp):
        from transferlab.locations import ArtifactLocation

        ArtifactLocation(str(tmp / "artifacts")).write_files("u1", {name: b"evil"})
    return fn


def _api_store_type(w, tmp):
    from transferlab import load_spec, run

    return run(load_spec(w["base"]), store=123)


def _predict_same_file(w, tmp):
    target = tmp / "in.csv"
    target.write_text("text\nthe film was good\n")
    return ["predict", w["uid"], "--input", str(target), "--output", str(target), "--store", str(w["db"]),
            "--quiet"], "--output"


def _predict_existing_output(w, tmp):
    src, out = tmp / "in.csv", tmp / "out.csv"
    src.write_text("text\nthe film was good\n")
    out.write_text("keep me\n")
    return ["predict", w["uid"], "--input", str(src), "--output", str(out), "--store", str(w["db"]),
            "--quiet"], "--force"


def _predict_pair_single(w, tmp):
    src = tmp / "in.csv"
    src.write_text("text\nthe film was good\n")
    return ["predict", w["pair_uid"], "--input", str(src), "--store", str(w["db"]), "--quiet"], "sentence pairs"


def _export_csv_over(w, tmp):
    out = tmp / "tables"
    out.mkdir()
    (out / "runs.csv").write_text("keep me\n")
    return ["export", "--csv", str(out), "--store", str(w["db"])], "--force"


def _predict_missing_column(w, tmp):
    src = tmp / "in.csv"
    src.write_text("body\nthe film was good\n")
    return ["predict", w["uid"], "--input", str(src), "--store", str(w["db"]), "--quiet"], "text"


def _export_nonempty(w, tmp):
    out = tmp / "model"
    out.mkdir()
    (out / "x").write_text("keep me\n")
    return ["export", w["uid"], "-o", str(out), "--store", str(w["db"])], "not empty"


def _report_onto_file(w, tmp):
    return ["report", "--store", str(w["db"]), "-o", str(w["a_file"])], "is a file"


def _tokenizer_folder(vocab: list[str]):
    def make(w, tmp):
        import transformers as tf

        folder = tmp / "m"
        shutil.copytree(w["no_tok"], folder)
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tf.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
        return ["run", str(w["spec"]), "--store", str(w["db"]), "--quiet", "--set", f"model.name={folder}"], \
            "model.name: the tokenizer of"
    return make


def _damaged_transplant(w, tmp):
    folder = tmp / "src"
    shutil.copytree(w["no_tok"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return ["run", str(w["spec"]), "--store", str(w["db"]), "--quiet", "--set",
            f"transplant=[{{source: {folder}, layers: all}}]"], "transplant[0].source"


def _teacher_folder_missing(w, tmp):
    return ["run", str(w["spec"]), "--store", str(w["db"]), "--quiet", "--set", "distill.kind=kd",
            "--set", f"distill.teacher={tmp / 'no_teacher'}"], "distill.teacher"


def _many_overrides_grid(n_axes: int, n_values: int, extra=()):
    def make(w, tmp):
        s = tiny_study_dict(w["data"], name="huge", seeds=[0])
        s["grid"] = {f"train.{k}": list(range(1, n_values + 1)) for k in
                     ("batch_size", "eval_batch_size", "log_every", "num_evals", "grad_accum", "max_steps")[:n_axes]}
        path = tmp / "huge.yaml"
        path.write_text(yaml.safe_dump(s))
        return ["run", str(path), "--store", str(w["db"]), *extra], "--yes"
    return make


BAD: dict = {
    # ---- every section's values, checked before the first row (single runs)
    "init.reinit_layers negative": run_set("init.reinit_layers=-1", needle="init.reinit_layers"),
    "init.reinit_layers beyond the model": run_set("init.reinit_layers=99", needle="init.reinit_layers"),
    "init.std negative": run_set("init.reinit_layers=1", "init.std=-0.5", needle="init.std"),
    "init rule unknown scheme": run_set("init.rules=[{scheme: nope}]", needle="unknown init scheme 'nope'"),
    "init rule layer beyond the model": run_set("init.rules=[{select: {layers: [40]}, scheme: xavier_uniform}]",
                                                needle="layers"),
    "model.num_layers beyond the model": run_set("model.num_layers=99", needle="model.num_layers"),
    "model.num_layers 0": run_set("model.num_layers=0", needle="model.num_layers"),
    "model.max_length 0": run_set("model.max_length=0", needle="model.max_length"),
    "model.dropout 1.5": run_set("model.dropout=1.5", needle="model.dropout"),
    "model.init unknown": run_set("model.init=zeros", needle="model.init"),
    "schedule.name unknown": run_set("schedule.name=nope", needle="schedule.name"),
    "schedule.num_cycles negative": run_set("schedule.name=cosine", "schedule.num_cycles=-1",
                                            needle="schedule.num_cycles"),
    "schedule.cut_frac above 1": run_set("schedule.name=slanted_triangular", "schedule.cut_frac=1.5",
                                         needle="schedule.cut_frac"),
    "schedule.cut_frac 0": run_set("schedule.name=slanted_triangular", "schedule.cut_frac=0",
                                   needle="schedule.cut_frac"),
    "schedule.ratio below 1": run_set("schedule.name=slanted_triangular", "schedule.ratio=0.5",
                                      needle="schedule.ratio"),
    "schedule.warmup_ratio 1.5": run_set("schedule.warmup_ratio=1.5", needle="schedule.warmup_ratio"),
    "schedule.warmup_steps negative": run_set("schedule.warmup_steps=-3", needle="schedule.warmup_steps"),
    "freeze lora r 0": run_set("freeze.name=lora", "freeze.options={r: 0}", needle="freeze.options.r"),
    "freeze lora r negative": run_set("freeze.name=lora", "freeze.options={r: -4}", needle="freeze.options.r"),
    "freeze lora alpha 0": run_set("freeze.name=lora", "freeze.options={alpha: 0}", needle="freeze.options.alpha"),
    "freeze lora dropout 1.5": run_set("freeze.name=lora", "freeze.options={dropout: 1.5}",
                                       needle="freeze.options.dropout"),
    "freeze unknown policy": run_set("freeze.name=nope", needle="freeze.name"),
    "freeze steps negative": run_set("freeze.name=backbone_for_steps", "freeze.steps=-1", needle="freeze.steps"),
    "freeze unknown option": run_set("freeze.name=lora", "freeze.options={rank: 4}", needle="rank"),
    "seed negative": run_set("seed=-1", needle="seed"),
    "seed huge": run_set("seed=1099511627776", needle="seed"),
    "seed not an integer": run_set("seed=1.5", needle="seed"),
    "optim.lr 0": run_set("optim.lr=0", needle="optim.lr"),
    "optim.lr nan": run_set("optim.lr=.nan", needle="optim.lr"),
    "optim.lr a word": run_set("optim.lr=fast", needle="optim.lr"),
    "optim.betas out of range": run_set("optim.betas=[1.5, 0.9]", needle="optim.betas[0]"),
    "optim.betas one value": run_set("optim.betas=[0.9]", needle="optim.betas"),
    "optim.name unknown": run_set("optim.name=nope", needle="optim.name"),
    "optim.weight_decay negative": run_set("optim.weight_decay=-1", needle="optim.weight_decay"),
    "optim.layer_decay 0": run_set("optim.layer_decay=0", needle="optim.layer_decay"),
    "optim.head_lr negative": run_set("optim.head_lr=-1", needle="optim.head_lr"),
    "head.name unknown": run_set("head.name=nope", needle="head.name"),
    "head.dropout 1.5": run_set("head.dropout=1.5", needle="head.dropout"),
    "train.epochs negative": run_set("train.epochs=-1", needle="train.epochs"),
    "train.max_steps 0": run_set("train.max_steps=0", needle="train.max_steps"),
    "train.early_stopping_patience 0": run_set("train.early_stopping_patience=0",
                                               needle="train.early_stopping_patience"),
    "train.divergence_factor negative": run_set("train.divergence_factor=-1", needle="train.divergence_factor"),
    "train.unknown key": run_set("train.bogus=1", needle="bogus"),
    "task.name unknown": run_set("task.name=nope", needle="task.name"),
    "task.few_sample 0": run_set("task.few_sample=0", needle="task.few_sample"),
    "task.problem unknown": run_set("task.problem=ranking", needle="task.problem"),
    "distill kd without a teacher": run_set("distill.kind=kd", needle="distill.teacher"),
    "distill kind unknown": run_set("distill.kind=nope", needle="distill.kind"),
    "distill temperature 0": run_set("distill.kind=kd", "distill.teacher=<uid>", "distill.temperature=0",
                                     needle="distill.temperature"),
    "distill alpha 2": run_set("distill.kind=kd", "distill.teacher=<uid>", "distill.alpha=2", needle="distill.alpha"),
    "stabiliser unknown": run_set("stabilisers=[{name: nope}]", needle="stabilisers.name"),
    "stabiliser mixout p 1.5": run_set("stabilisers=[{name: mixout, options: {p: 1.5}}]",
                                       needle="stabilisers[mixout].options.p"),
    "multitask one task": run_set("multitask={tasks: [{name: csv}]}", needle="multitask.tasks"),
    "intermediate steps 0": run_set("intermediate={task: {name: csv}, steps: 0}", needle="intermediate.steps"),
    "override without =": run_set("optim.lr", needle="--set"),
    "override into a value": run_set("optim.lr.x=1", needle="--set optim.lr.x"),
    # ---- every file and folder
    "transplant source missing": run_set("transplant=[{source: <tmp>/no_model}]", needle="transplant[0].source"),
    "transplant source damaged": argv_of(_damaged_transplant),
    "transplant run unknown": run_set("transplant=[{run: feedbeef}]", needle="transplant[0].run"),
    "transplant store missing": run_set("transplant=[{run: <uid>, store: <tmp>/none.db}]",
                                        needle="transplant[0].store"),
    "teacher run unknown": run_set("distill.kind=kd", "distill.teacher=feedbeef", needle="distill.teacher"),
    "teacher folder missing": argv_of(_teacher_folder_missing),
    "teacher store missing": run_set("distill.kind=kd", "distill.teacher=<uid>",
                                     "distill.teacher_store=<tmp>/none.db", needle="distill.teacher_store"),
    "artifacts location is a file": run_set("seed=3", needle="--artifacts", extra=("--artifacts", "<a_file>")),
    "artifacts location under a file": run_set("seed=3", needle="--artifacts", extra=("--artifacts", "<a_file>/x")),
    "model folder without tokenizer": run_set("model.name=<no_tok>", needle="model.name: the tokenizer of"),
    "model folder with a 5-token vocabulary": _tokenizer_folder(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    "model folder whose tokenizer knows no word": _tokenizer_folder(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"zz{i}" for i in range(200))]),
    "model folder missing": run_set("model.name=/no/such/model", needle="model.name"),
    "model folder without config": run_set("model.name=<root>/no_config", needle="config.json"),
    "task.path missing": run_set("task.path=/no/such/data", needle="task.path"),
    "task.path a file": run_set("task.path=<a_file>", needle="task.path"),
    "task.train_file missing": run_set("task.train_file=nope.csv", needle="nope.csv"),
    # ---- studies: all runs validated before any is claimed
    "study arm re-init beyond the model": study({"deep": {"init.reinit_layers": 99}}, needle="init.reinit_layers"),
    "study arm lora r 0": study({"lora": {"freeze.name": "lora", "freeze.options": {"r": 0}}},
                                needle="freeze.options.r"),
    "study arm cut_frac 2": study({"stlr": {"schedule.name": "slanted_triangular", "schedule.cut_frac": 2}},
                                  needle="schedule.cut_frac"),
    "study arm tokenizer-less model": study(needle="tokenizer", extra=("--set", "base.model.name=<no_tok>")),
    "study arm transplant source missing": study({"tp": {"transplant": [{"source": "/no/such/model"}]}},
                                                 needle="transplant[0].source"),
    "study arm teacher unknown": study({"kd": {"distill.kind": "kd", "distill.teacher": "feedbeef"}},
                                       needle="distill.teacher"),
    "study seeds negative": study(needle="seeds: seed -1", seeds=[-1, 0]),
    "study seeds huge": study(needle="seeds: seed 1099511627776", seeds=[0, 2 ** 40]),
    "study seeds repeat": study(needle="seeds: seeds repeat", seeds=[0, 0]),
    "study grid unknown field": study(needle="grid: unknown field 'train.bogus'", grid={"train.bogus": [1, 2]}),
    "study grid empty axis": study(needle="grid", grid={"train.batch_size": []}),
    "study artifacts a file": study(needle="--artifacts", extra=("--artifacts", "<a_file>")),
    "study baseline unknown": study(needle="baseline: 'nope' is not an arm", baseline="nope"),
    "study task.path missing": study(needle="task.path", extra=("--set", "base.task.path=/no/such")),
    # ---- data contracts
    "csv unterminated quote": data_files(csv_with(CSV + '"open quote,1\ngood film,0\n'), "{dir}/train.csv, line"),
    "csv duplicate label column": data_files(csv_with("text,label,label\n" + "".join(
        f"w{i},{i % 2},{1 - i % 2}\n" for i in range(16))), "line 1: column 'label' appears twice"),
    "csv duplicate text column": data_files(csv_with("text,text,label\n" + "".join(
        f"a,b{i},{i % 2}\n" for i in range(16))), "line 1: column 'text' appears twice"),
    "csv text_column == label_column": data_files(csv_with(CSV), "task.text_column", "csv",
                                                  "task.text_column=label"),
    "csv text_pair_column == text_column": data_files(csv_with(CSV), "task.text_pair_column", "csv",
                                                      "task.text_pair_column=text"),
    "csv NaN label": data_files(csv_with(CSV + "odd film,NaN\n"), "{dir}/train.csv, line 18"),
    "csv empty label": data_files(csv_with(CSV + "odd film,\n"), "{dir}/train.csv, line 18"),
    "csv empty text": data_files(csv_with(CSV + ",1\n"), "{dir}/train.csv, line 18"),
    "csv blank text": data_files(csv_with(CSV + '"   ",1\n'), "{dir}/train.csv, line 18"),
    "csv empty text in dev": data_files(csv_with(CSV, CSV + ",0\n"), "{dir}/dev.csv, line 18"),
    "csv too many fields": data_files(csv_with(CSV + "a,b,1\n"), "{dir}/train.csv, line 18"),
    "csv no label column": data_files(csv_with("text,y\n" + "a,1\nb,0\n"), "task.label_column"),
    "csv empty train file": data_files(csv_with(""), "{dir}/train.csv"),
    "csv header only": data_files(csv_with("text,label\n"), "{dir}/train.csv"),
    "csv one class": data_files(csv_with("text,label\na,1\nb,1\n"), "task.labels"),
    "csv label not in task.labels": data_files(csv_with(CSV + "x,7\n"), "line 18", "csv", "task.labels=[0, 1]"),
    "csv regression nan target": data_files(csv_with("text,label\n" + "".join(
        f"w{i},{i / 3:.2f}\n" for i in range(16)) + "x,nan\n", "text,label\n" + "a,0.5\nb,1.5\n"), "line 18", "csv",
        "task.problem=regression"),
    "csv not UTF-8": data_files(csv_with(CSV.encode() + b"caf\xe9,1\n"), "line 18"),
    "tsv too few fields": data_files({"train.tsv": CSV.replace(",", "\t") + "lonely\n",
                                      "dev.tsv": CSV.replace(",", "\t")}, "{dir}/train.tsv, line 18", "tsv"),
    "tsv empty text": data_files({"train.tsv": CSV.replace(",", "\t") + "\t1\n",
                                  "dev.tsv": CSV.replace(",", "\t")}, "{dir}/train.tsv, line 18", "tsv"),
    "jsonl text is an object": data_files({"train.jsonl": GOOD_JSONL + jsonl([{"text": {"a": 1}, "label": 0}]),
                                           "dev.jsonl": GOOD_JSONL}, "{dir}/train.jsonl, line 17", "jsonl"),
    "jsonl text is a list": data_files({"train.jsonl": GOOD_JSONL + jsonl([{"text": ["a"], "label": 0}]),
                                        "dev.jsonl": GOOD_JSONL}, "{dir}/train.jsonl, line 17", "jsonl"),
    "jsonl text is a number": data_files({"train.jsonl": GOOD_JSONL + jsonl([{"text": 3, "label": 0}]),
                                          "dev.jsonl": GOOD_JSONL}, "{dir}/train.jsonl, line 17", "jsonl"),
    "jsonl text is null": data_files({"train.jsonl": GOOD_JSONL + jsonl([{"text": None, "label": 0}]),
                                      "dev.jsonl": GOOD_JSONL}, "{dir}/train.jsonl, line 17", "jsonl"),
    "jsonl label is null": data_files({"train.jsonl": GOOD_JSONL + jsonl([{"text": "a", "label": None}]),
                                       "dev.jsonl": GOOD_JSONL}, "{dir}/train.jsonl, line 17", "jsonl"),
    "jsonl label NaN": data_files({"train.jsonl": GOOD_JSONL + '{"text": "a", "label": NaN}\n',
                                   "dev.jsonl": GOOD_JSONL}, "{dir}/train.jsonl, line 17", "jsonl"),
    "jsonl label is an object": data_files({"train.jsonl": GOOD_JSONL + jsonl([{"text": "a", "label": {"x": 1}}]),
                                            "dev.jsonl": GOOD_JSONL}, "{dir}/train.jsonl, line 17", "jsonl"),
    "jsonl duplicate key": data_files({"train.jsonl": GOOD_JSONL + '{"text": "a", "label": 0, "label": 1}\n',
                                       "dev.jsonl": GOOD_JSONL}, "{dir}/train.jsonl, line 17", "jsonl"),
    "jsonl not an object": data_files({"train.jsonl": GOOD_JSONL + "[1, 2]\n", "dev.jsonl": GOOD_JSONL},
                                      "{dir}/train.jsonl, line 17", "jsonl"),
    "jsonl broken JSON": data_files({"train.jsonl": GOOD_JSONL + "{oops\n", "dev.jsonl": GOOD_JSONL},
                                    "{dir}/train.jsonl, line 17", "jsonl"),
    "conll tag not IOB": data_files({"train.txt": CONLL_OK + "Paris LOCATION\n\n", "dev.txt": CONLL_OK},
                                    "{dir}/train.txt, line 33", *CONLL_SETS),
    "conll I- without type": data_files({"train.txt": CONLL_OK + "Paris B-\n\n", "dev.txt": CONLL_OK},
                                        "{dir}/train.txt, line 33", *CONLL_SETS),
    "conll wrong column count": data_files({"train.txt": CONLL_OK + "Paris B-LOC extra\n\n", "dev.txt": CONLL_OK},
                                           "{dir}/train.txt, line 33", *CONLL_SETS),
    "squad empty answer": data_files({"train-v1.1.json": squad(answer_text="", start=0),
                                      "dev-v1.1.json": squad()}, "q0", "squad", "head.name=span"),
    "squad answer outside its context": data_files({"train-v1.1.json": squad(start=400),
                                                    "dev-v1.1.json": squad()}, "q0", "squad", "head.name=span"),
    "squad answer not at its start": data_files({"train-v1.1.json": squad(start=3),
                                                 "dev-v1.1.json": squad()}, "q0", "squad", "head.name=span"),
    "squad not JSON": data_files({"train-v1.1.json": "{", "dev-v1.1.json": squad()}, "train-v1.1.json",
                                 "squad", "head.name=span"),
    # ---- bounded inputs
    "yaml alias bomb": spec_text(alias_bomb(), "alias"),
    "yaml date": spec_text("name: 2024-01-01\nmodel: {name: tiny-bert}\n", "date"),
    "yaml date in an override": run_set("name=2024-01-01", needle="date"),
    "yaml recursive alias": spec_text("name: &a [*a]\n", "recursive"),
    "yaml python tag": spec_text("name: !!python/object:os.system ls\n", "spec file"),
    "yaml not a mapping": spec_text("- a\n- b\n", "mapping"),
    "yaml syntax error": spec_text("name: [\n", "not valid YAML"),
    "grid above the limit without --yes": _many_overrides_grid(6, 10),
    # ---- never overwrite a user's file
    "predict output == input": argv_of(_predict_same_file),
    "predict output exists": argv_of(_predict_existing_output),
    "predict single text for a pair model": argv_of(_predict_pair_single),
    "predict input lacks the text column": argv_of(_predict_missing_column),
    "export --csv over runs.csv": argv_of(_export_csv_over),
    "export -o a non-empty folder": argv_of(_export_nonempty),
    "report -o a file": argv_of(_report_onto_file),
    # ---- the Python API
    "api run(dict)": api(_api_run_dict, "RunSpec"),
    "api run(spec, path)": api(_api_run_path_store, "Store"),
    "api run(spec, store=123)": api(_api_store_type, "Store"),
    "api load_spec(123)": api(_api_load_spec(123), "load_spec"),
    "api load_spec(None)": api(_api_load_spec(None), "load_spec"),
    "api load_spec(missing file)": api(_api_load_spec("/no/such.yaml"), "/no/such.yaml"),
    "api load_study(123)": api(_api_load_study(123), "load_study"),
    "api run_study(dict)": api(_api_run_study_dict, "StudySpec"),
    "worker file name ..": api(_api_worker_file("../../escape.txt"), "escape.txt"),
    "worker file name absolute": api(_api_worker_file("/tmp/escape_abs.txt"), "escape_abs.txt"),
}


# --------------------------------------------------------------------------- running a case


def outcome(w: dict, make, tmp: Path, capsys) -> tuple[str, str]:
    """(verdict, detail): clean | traceback | exit0 | rows | other."""
    target, needle = make(w, tmp)
    before = rows(w["db"])
    code, err = None, ""
    try:
        if callable(target):
            try:
                target()
                code = 0
            except UserError as e:
                code, err = 2, f"transferlab: error: {' '.join(str(e).split())}"
        else:
            code = main(target)
    except SystemExit as e:  # argparse
        code = e.code
    except BaseException as e:  # noqa: BLE001 - a traceback the user would see
        import traceback

        err = traceback.format_exc()
        captured = capsys.readouterr()
        return "traceback", f"{type(e).__name__}: {e}"[:300] + captured.err[-200:]
    captured = capsys.readouterr()
    err = err or captured.err
    added = rows(w["db"]) - before
    if "Traceback" in err:
        return "traceback", err[-300:]
    if code == 0:
        return "exit0", (captured.out + err)[-300:]
    if added:
        return "rows", f"exit {code}, {added} rows: {err.strip()[:200]}"
    lines = err.strip().splitlines()
    if code != 2 or len(lines) != 1 or needle not in lines[0]:
        return "other", f"exit {code}: {err.strip()[:300]} (wanted {needle!r})"
    return "clean", lines[0]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(world, case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    verdict, detail = outcome(world, BAD[case], tmp_path, capsys)
    assert verdict == "clean", detail


# --------------------------------------------------------------------------- what must be accepted

BIG = "word " * (1 << 20)  # a 5 MB cell


def good_files(files: dict[str, str | bytes], task: str = "csv", *sets: str):
    def make(w, tmp):
        folder = tmp / "data"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        argv = ["run", str(w["spec"]), "--store", str(w["db"]), "--dry-run", "--set", f"task.path={folder}",
                "--set", f"task.name={task}"]
        for s in sets:
            argv += ["--set", s]
        return argv
    return make


GOOD = {
    "csv with a BOM": good_files(csv_with("\ufeff" + CSV)),
    "csv with CRLF": good_files(csv_with(CSV.replace("\n", "\r\n"))),
    "csv with a 5 MB cell": good_files(csv_with(CSV + f'"{BIG}",1\n')),
    "csv with unicode": good_files(csv_with(CSV + "ein schöner Film 🎬,1\n映画は良い,0\n")),
    "csv quoted newline and comma": good_files(csv_with(CSV + '"a good, long\nfilm",1\n')),
    "csv labels 1 and 1.0": good_files(csv_with(CSV + "w,1.0\n")),
    "tsv with CRLF and BOM": good_files({"train.tsv": "\ufeff" + CSV.replace(",", "\t").replace("\n", "\r\n"),
                                         "dev.tsv": CSV.replace(",", "\t")}, "tsv"),
    "jsonl with a BOM and unicode": good_files({"train.jsonl": "\ufeff" + GOOD_JSONL + jsonl(
        [{"text": "très bien 😀", "label": 1}]), "dev.jsonl": GOOD_JSONL}, "jsonl"),
    "jsonl with CRLF": good_files({"train.jsonl": GOOD_JSONL.replace("\n", "\r\n"), "dev.jsonl": GOOD_JSONL}, "jsonl"),
    "conll IOB2": good_files({"train.txt": CONLL_OK, "dev.txt": CONLL_OK}, *CONLL_SETS),
    "yaml with aliases": lambda w, tmp: _spec_file(tmp, w, yaml.safe_dump(
        {k: v for k, v in w["base"].items() if k not in ("optim", "schedule")})
        + "schedule: {name: linear, warmup_ratio: &w 0.1}\noptim: {lr: 0.003, weight_decay: *w}\n"),
    "yaml with a quoted date": lambda w, tmp: _spec_file(tmp, w, yaml.safe_dump(
        {**w["base"], "name": "2024-01-01"})),
}


def _spec_file(tmp: Path, w: dict, text: str) -> list[str]:
    path = tmp / "s.yaml"
    path.write_text(text)
    return ["run", str(path), "--store", str(w["db"]), "--dry-run"]


@pytest.mark.parametrize("case", list(GOOD))
def test_accepted_input(world, case, tmp_path, capsys):
    argv = GOOD[case](world, tmp_path)
    before = rows(world["db"])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    assert rows(world["db"]) == before


def test_dry_run_of_a_huge_grid_is_summarised_in_constant_time(world, tmp_path, capsys):
    make = _many_overrides_grid(6, 10, extra=("--dry-run",))  # 10^6 runs x 2 arms
    argv, _ = make(world, tmp_path)
    start = time.perf_counter()
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0
    assert time.perf_counter() - start < 10
    assert "2000000 runs" in out


# --------------------------------------------------------------------------- the tally (acceptance 5)


def tally(timeout_s: int = 60) -> dict[str, int]:
    """Run every BAD case against the code on the path; print each verdict and the counts."""
    import tempfile

    import pytest as _pytest

    class Cap:  # a minimal capsys: stdout/stderr into buffers
        def __init__(self):
            import io

            self.out, self.err = io.StringIO(), io.StringIO()
            sys.stdout, sys.stderr = self.out, self.err

        def readouterr(self):
            class R:
                pass
            r = R()
            r.out, r.err = self.out.getvalue(), self.err.getvalue()
            self.out.seek(0), self.out.truncate(), self.err.seek(0), self.err.truncate()
            return r

    del _pytest
    torch.set_num_threads(1)
    counts: dict[str, int] = {}
    real_out, real_err = sys.stdout, sys.stderr
    with tempfile.TemporaryDirectory() as tmp:
        w = build_world(Path(tmp) / "world")
        for i, (name, make) in enumerate(BAD.items()):
            case_dir = Path(tmp) / f"case{i}"
            case_dir.mkdir()
            os.chdir(case_dir)

            def alarm(*_):
                raise TimeoutError("hung")
            signal.signal(signal.SIGALRM, alarm)
            signal.alarm(timeout_s)
            cap = Cap()
            try:
                verdict, detail = outcome(w, make, case_dir, cap)
            except TimeoutError:
                verdict, detail = "hang", ""
            finally:
                signal.alarm(0)
                sys.stdout, sys.stderr = real_out, real_err
            if "hung" in detail:
                verdict = "hang"
            counts[verdict] = counts.get(verdict, 0) + 1
            print(f"{verdict:9s} {name}: {' '.join(detail.split())[:160]}", flush=True)
    print(json.dumps({"cases": len(BAD), **counts}))
    return counts


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tally()


# --------------------------------------------------------------------------- hardening of what we write


def _store_with_hostile_names(tmp_path: Path) -> Path:
    """A copy of a store with one run whose name and error carry HTML, a pipe and a formula."""
    from transferlab.records import RunSummary

    db = tmp_path / "hostile.db"
    store = Store(db)
    uid = store.start_run("r1-s0", "h", 0, {"task": {"name": "csv"}, "optim": {"lr": 1e-3}},
                          name="<script>alert(1)</script>|x", study="=HYPERLINK(\"http://evil\")")
    store.finish_run(uid, "finished", summary=RunSummary.from_dict({"dev": {"accuracy": 0.5}, "steps": 1}),
                     duration_s=1.0)
    store.close()
    return db


def test_report_md_escapes_html_and_pipes(tmp_path, capsys):
    db = _store_with_hostile_names(tmp_path)
    assert main(["report", "--store", str(db), "-o", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "<script>" not in md and "&lt;script>" in md
    for line in md.splitlines():  # every table row keeps its column count: a | in a name is escaped
        if line.startswith("|") and "&lt;script>" in line:
            assert "\\|x" in line


def test_csv_export_defuses_formula_cells(tmp_path, capsys):
    import csv

    db = _store_with_hostile_names(tmp_path)
    out = tmp_path / "tables"
    assert main(["export", "--csv", str(out), "--store", str(db)]) == 0
    cells = [c for row in csv.reader((out / "runs.csv").open()) for c in row]
    assert "'=HYPERLINK(\"http://evil\")" in cells
    assert not any(c.startswith(("=", "+", "@")) for c in cells)
    # and --force replaces the tables
    assert main(["export", "--csv", str(out), "--store", str(db)]) == 2
    assert main(["export", "--csv", str(out), "--store", str(db), "--force"]) == 0


def test_worker_files_are_written_inside_the_folder(tmp_path):
    from transferlab.locations import ArtifactLocation

    loc = ArtifactLocation(str(tmp_path / "artifacts"))
    loc.write_files("u1", {"weights/model.safetensors": b"ok", "transfer.json": b"{}"})
    folder = tmp_path / "artifacts"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "u1/transfer.json", "u1/weights/model.safetensors"]
    with pytest.raises(UserError):
        loc.write_files("u2", {"ok.txt": b"x", "../u1/transfer.json": b"evil"})
    assert (folder / "u1" / "transfer.json").read_bytes() == b"{}" and not (folder / "u2").exists()
