"""The hub task: any data set datasets can read, from a save_to_disk folder, parquet files or the hub."""

import random

import numpy as np
import pytest
import yaml
from conftest import FILL, NEG, POS

from transferlab.cli import main
from transferlab.data.build import build_task
from transferlab.errors import DataError, SpecError
from transferlab.spec import TaskSpec, spec_from_dict

datasets = pytest.importorskip("datasets", reason="the hub task's datasets package (the `hub` extra) is not installed")


def toy_dataset(n_train=40, n_dev=12, n_test=6, seed=0) -> datasets.DatasetDict:
    rng = random.Random(seed)
    features = datasets.Features({"sentence": datasets.Value("string"), "score": datasets.Value("float32"),
                                  "sentiment": datasets.ClassLabel(names=["neg", "pos"])})

    def rows(n, labelled=True):
        out = {"sentence": [], "score": [], "sentiment": []}
        for i in range(n):
            label = i % 2
            words = rng.sample(FILL, 4) + [rng.choice(POS if label else NEG)]
            out["sentence"].append(" ".join(words))
            out["score"].append(0.5 + 2.25 * label + 0.1 * (i % 3))
            out["sentiment"].append(label if labelled else -1)
        return datasets.Dataset.from_dict(out, features=features)

    return datasets.DatasetDict({"train": rows(n_train), "validation": rows(n_dev), "test": rows(n_test, False)})


def task_spec(**fields) -> TaskSpec:
    return spec_from_dict({"name": "hub", "text_column": "sentence", "label_column": "sentiment", **fields}, TaskSpec)


def test_hub_task_from_a_save_to_disk_folder(tmp_path):
    data = toy_dataset()
    data.save_to_disk(str(tmp_path / "ds"))
    task = build_task(task_spec(path=str(tmp_path / "ds")))
    assert task.problem == "classification" and task.label_names == ["neg", "pos"]
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 40, "dev": 12, "test": 6}
    assert task.splits["train"].texts == data["train"]["sentence"]
    assert np.array_equal(task.splits["dev"].labels, data["validation"]["sentiment"])
    assert not task.splits["test"].labelled and task.metrics == ("accuracy", "f1")
    # the spelling: task.dataset (kept in task.options.dataset), here a folder too
    spec = task_spec(dataset=str(tmp_path / "ds"))
    assert spec.options == {"dataset": str(tmp_path / "ds")}
    assert build_task(spec).splits["train"].texts == task.splits["train"].texts
    # a single Dataset is the train split; dev is carved from it
    data["train"].save_to_disk(str(tmp_path / "one"))
    carved = build_task(task_spec(path=str(tmp_path / "one"), options={"dev_fraction": 0.25}))
    assert (len(carved.splits["train"]), len(carved.splits["dev"])) == (30, 10)


def test_hub_task_from_parquet_files(tmp_path):
    data = toy_dataset()
    data["train"].to_parquet(str(tmp_path / "train.parquet"))
    data["validation"].to_parquet(str(tmp_path / "dev.parquet"))
    task = build_task(task_spec(dataset=str(tmp_path / "train.parquet"), dev_file="dev.parquet"))
    assert task.label_names == ["neg", "pos"] and len(task.splits["dev"]) == 12
    assert task.splits["dev"].texts == data["validation"]["sentence"]
    reg = build_task(task_spec(path=str(tmp_path / "train.parquet"), dev_file=str(tmp_path / "dev.parquet"),
                               label_column="score"))
    assert reg.problem == "regression" and reg.metrics == ("pearson", "spearman", "rmse")
    assert np.allclose(reg.splits["train"].labels, data["train"]["score"])


def test_hub_task_mistakes_are_one_line(tmp_path, capsys, toy_task_dir):
    toy_dataset().save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"task.label_column: .* has no column 'stars'; columns: sentence, score"):
        build_task(task_spec(path=str(tmp_path / "ds"), label_column="stars"))
    with pytest.raises(SpecError, match="needs a dataset"):
        build_task(task_spec())
    with pytest.raises(DataError, match="dev_split: .* has no split 'val'"):
        build_task(task_spec(path=str(tmp_path / "ds"), options={"dev_split": "val"}))
    spec = {"name": "hub", "model": {"name": "tiny-bert", "max_length": 16},
            "task": {"name": "hub", "dataset": str(tmp_path / "ds"), "text_column": "review",
                     "label_column": "sentiment"},
            "train": {"epochs": 1, "num_evals": 1}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    assert main(["run", str(path), "--store", str(tmp_path / "s.db"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no column 'review'" in err[0]
    spec["task"]["text_column"] = "sentence"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--store", str(tmp_path / "s.db"), "--quiet"]) == 0  # and it trains
