"""Token and span tasks in the seed-parallel engine: the same runs as the sequential loop (float64)."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, needs_shared_data
from test_parallel import check

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_shared_data]


def conll_subset(folder):
    folder.mkdir()
    sentences = (SHARED_DATA / "conll2003" / "train.txt").read_text().split("\n\n")[1:31]
    (folder / "train.txt").write_text("\n\n".join(sentences[:20]) + "\n")
    (folder / "valid.txt").write_text("\n\n".join(sentences[20:]) + "\n")
    return folder


def squad_subset(folder):
    folder.mkdir()
    articles = json.loads((SHARED_DATA / "squad" / "dev-v1.1.json").read_text())["data"][:2]
    for a in articles:
        a["paragraphs"] = a["paragraphs"][:2]
        for p in a["paragraphs"]:
            p["qas"] = p["qas"][:4]
    (folder / "dev-v1.1.json").write_text(json.dumps({"data": articles}))
    return folder


def test_token_task_seed_parallel_matches_sequential(tmp_path, float64):
    task = {"name": "conll2003", "path": str(conll_subset(tmp_path / "c"))}
    _, _, results = check(None, tmp_path, **{"task": task, "head.name": "token"})
    assert all(r.status == "finished" for r in results) and "entity_f1" in results[0].dev


def test_span_task_seed_parallel_matches_sequential(tmp_path, float64):
    task = {"name": "squad", "path": str(squad_subset(tmp_path / "s")), "options": {"dev_articles": 0.5}}
    _, _, results = check(None, tmp_path, **{"task": task, "head.name": "span"})
    assert all(r.status == "finished" for r in results) and "span_f1" in results[0].dev
