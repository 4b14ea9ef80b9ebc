"""``transferlab bench`` on CPU with a tiny model: every row is produced, with sane numbers."""

import json

import pytest
import torch

from transferlab.bench import Row, Timer, flops_per_sample, format_rows, matmul_peak
from transferlab.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_bench_cli_produces_every_row(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", "tiny-bert", "--batch", "4", "--seq", "16", "--steps", "2", "--warmup", "1",
            "--seeds", "1,3", "--threads", "1", "--repeat", "2", "--device", "cpu", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["trainer", "single", "parallel S=1", "parallel S=3"]
    for r in rows.values():
        assert r["samples_s"] > 0 and 0 < r["mfu"] < 1 and r["steps"] == 2 and r["seconds"] > 0
        assert r["repeats"] == 2 and r["low"] <= r["samples_s"] <= r["high"]
        assert r["per_seed"] == pytest.approx(r["samples_s"] / r["seeds"])
    assert rows["single"]["vs_trainer"] == pytest.approx(rows["single"]["samples_s"] / rows["trainer"]["samples_s"])
    setup = result["setup"]
    assert setup["device"] == "cpu" and setup["peak_flops"] > 0 and setup["flops_per_sample"] > 0
    printed = capsys.readouterr().out
    assert printed.count("| parallel S=") == 2 and "| trainer |" in printed and "matmul peak" in printed


def test_bench_user_errors(capsys):
    assert main(["bench", "--model", "tiny-bert", "--rows", "trainer,fast"]) == 2
    assert "--rows: 'fast'" in capsys.readouterr().err
    assert main(["bench", "--model", "tiny-bert", "--seeds", "1,x"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_flops_of_bert_base_shape_and_timer():
    import transformers as tf

    from transferlab.models.backbone import Backbone
    from transferlab.models.heads import build_head
    from transferlab.models.model import TransferModel

    config = tf.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    with torch.device("meta"):
        hf = tf.BertModel(config)
        model = TransferModel(Backbone(hf, None, 128), build_head("cls", 768, 12, 2, 0.1))
    assert flops_per_sample(model, 128) / 1e9 == pytest.approx(67.1, abs=0.1)  # the 67 GFLOP
    assert matmul_peak(torch.device("cpu"), torch.float32, seconds=0.01, trials=1) > 1e8
    timer = Timer(1, 2, torch.device("cpu"))
    for step in range(4):
        timer.on_step_start(step)
    assert timer.seconds >= 0 and timer.t1 >= timer.t0
    line = format_rows([Row("single", 1, 10.0, 10.0, None, 0.01, None, 2, 0.8, 9.0, 11.0, 3)], header=False)
    assert line == "| single | 1 | 10.0 | 9.0-11.0 | 10.0 |  | 0 | 0.0% | 1.0% | n/a | 3 x 2 steps, 0.8s |"


def test_bench_profile_writes_a_trace(tmp_path, capsys):
    argv = ["bench", "--model", "tiny-bert", "--batch", "2", "--seq", "8", "--steps", "1", "--warmup", "1",
            "--rows", "single,parallel", "--seeds", "2", "--profile", str(tmp_path / "traces")]
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "traces").iterdir()) == ["parallel_S2.json", "single.json"]
    assert "profile of parallel S=2" in capsys.readouterr().out
