"""``transferlab bench`` on CPU with a tiny model: every row is produced, with sane numbers."""

import json

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

from transferlab.bench import Row, Timer, WeightBytes, flops_per_sample, format_rows, matmul_peak
from transferlab.cli import main
from transferlab.models.backbone import load_backbone
from transferlab.spec import ModelSpec

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
    assert rows["trainer"]["weight_mb"] is None  # Trainer's optimizer runs outside our hooks: not counted
    n = sum(p.numel() for p in load_backbone(ModelSpec(name="tiny-bert", init="random")).parameters())
    for name in ("single", "parallel S=1", "parallel S=3"):  # forward, backward, clipping, fused AdamW: ~50 B/param
        assert 30 * n < rows[name]["weight_mb"] * 1e6 < 120 * n, (name, rows[name]["weight_mb"], n)
    setup = result["setup"]
    assert setup["device"] == "cpu" and setup["peak_flops"] > 0 and setup["flops_per_sample"] > 0
    printed = capsys.readouterr().out
    assert printed.count("| parallel S=") == 2 and "| trainer |" in printed and "matmul peak" in printed


def test_weight_bytes_counts_weight_side_reads_and_writes_only():
    """Reads and writes of weight-side tensors at their size; activations, views and allocations are free; the
    result of an operator on weights alone (a concatenation, a cast) is weight-side too."""
    w1, w2 = torch.randn(6, 4), torch.randn(6, 4)
    x = torch.randn(5, 4)
    with WeightBytes({w1.numel()}) as counter:
        w1.mul_(0.5)  # read + write: 2 x 96 bytes
        assert counter.bytes == 2 * 96
        y = x @ w1.t()  # the weight read (96); x and y are activations; .t() is a view
        assert counter.bytes == 3 * 96
        both = torch.cat([w1, w2])  # two reads, one weight-side write of 192 bytes
        assert counter.bytes == 3 * 96 + 2 * 96 + 192
        half = both.to(torch.bfloat16)  # a derived tensor read (192) and its cast written (96)
        assert counter.bytes == 3 * 96 + 2 * 96 + 192 + 192 + 96
        torch.zeros_like(w1)  # an allocation
        assert counter.bytes == 3 * 96 + 2 * 96 + 192 + 192 + 96
    assert y.shape == (5, 6) and half.dtype == torch.bfloat16


def test_bench_user_errors(capsys):
    assert main(["bench", "--model", "tiny-bert", "--rows", "trainer,turbo"]) == 2
    assert "--rows: 'turbo'" in capsys.readouterr().err
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
    assert line == "| single | 1 | 10.0 | 9.0-11.0 | 10.0 |  | 0 | 0.0% | 1.0% | n/a | n/a | 3 x 2 steps, 0.8s |"


def test_bench_profile_writes_a_trace(tmp_path, capsys):
    argv = ["bench", "--model", "tiny-bert", "--batch", "2", "--seq", "8", "--steps", "1", "--warmup", "1",
            "--rows", "single,parallel", "--seeds", "2", "--profile", str(tmp_path / "traces")]
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "traces").iterdir()) == ["parallel_S2.json", "single.json"]
    assert "profile of parallel S=2" in capsys.readouterr().out


def _share_from_data(data, seq: int, batch: int, seeds: int, steps: range, unpad: bool) -> float:
    """The padded-token share of the given steps, counted from the task's own lengths: each seed's
    batches in its own order (train/batches.epoch_batches), stacked to the widest, packed when unpad."""
    from transferlab.data.build import build_task
    from transferlab.models.backbone import load_backbone
    from transferlab.spec import ModelSpec, TaskSpec
    from transferlab.train.batches import encode, epoch_batches

    task = build_task(TaskSpec(name="rte", path=str(data)), seed=0)
    enc = encode(task.splits["train"], task, load_backbone(ModelSpec(name="tiny-bert")).tokenizer, seq)
    real = computed = 0
    for step in steps:
        lengths = [enc.lengths[epoch_batches(enc, batch, s, 0)[step]] for s in range(seeds)]
        real += sum(int(x.sum()) for x in lengths)
        computed += seeds * (max(int(x.sum()) for x in lengths) if unpad else batch * max(int(x.max()) for x in lengths))
    return 1 - real / computed


@needs_shared_data
def test_bench_real_data_mode_counts_padding_as_the_data_does(tmp_path):
    """Real RTE lengths: every row runs; the padded-token share each row reports is the count from the data."""
    data = SHARED_DATA / "glue" / "RTE"
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", "tiny-bert", "--task", "rte", "--data", str(data), "--batch", "4", "--seq", "32",
            "--steps", "2", "--warmup", "1", "--seeds", "1,2", "--rows", "trainer,single,parallel,fast,fast-padded",
            "--threads", "1", "--device", "cpu", "--json", str(out)]
    assert main(argv) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["trainer", "single", "parallel S=1", "parallel S=2", "fast S=1", "fast S=2",
                          "fast-padded S=1", "fast-padded S=2"]
    timed = range(1, 3)  # step 0 is the warm-up
    for name, seeds, unpad in [("single", 1, False), ("parallel S=2", 2, False), ("fast S=1", 1, True),
                               ("fast S=2", 2, True), ("fast-padded S=2", 2, False)]:
        assert rows[name]["padded_share"] == pytest.approx(_share_from_data(data, 32, 4, seeds, timed, unpad)), name
    assert rows["fast S=1"]["padded_share"] == 0.0 and rows["single"]["padded_share"] > 0.05  # RTE pads a lot
    for r in rows.values():
        assert r["samples_s"] > 0 and r["tokens_s"] > 0 and 0 < r["mfu"] < 1
        assert 0 <= r["padded_share"] < 1
    assert main(["bench", "--model", "tiny-bert", "--task", "rte"]) == 2  # --data missing


def test_bench_checkpoint_layers_recomputes_in_every_row_but_trainer(tmp_path, monkeypatch):
    import torch.utils.checkpoint as tuc

    calls, inner = [0], tuc._checkpoint_without_reentrant_generator

    def counted(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    monkeypatch.setattr(tuc, "_checkpoint_without_reentrant_generator", counted)
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", "tiny-bert", "--batch", "4", "--seq", "16", "--steps", "2", "--warmup", "1",
            "--seeds", "2", "--rows", "single,parallel,fast", "--threads", "1", "--device", "cpu",
            "--checkpoint-layers", "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["setup"]["checkpoint_layers"] is True
    assert [r["name"] for r in result["rows"]] == ["single", "parallel S=2", "fast S=2"]
    assert calls[0] >= 3 * 3 * 2  # 3 rows x (1 warm-up + 2 timed steps) x tiny-bert's 2 layers


def test_bench_rows_reach_the_json_as_measured_and_survive_a_kill(tmp_path):
    """bench writes each row as soon as it is measured: killed (SIGKILL) right after its first row, the JSON
    file holds that row; a later bench with --append keeps it beside its own."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "transferlab.cli", "bench", "--model", "tiny-bert", "--batch", "2", "--seq", "8",
            "--steps", "2", "--warmup", "1", "--rows", "single,parallel", "--seeds", "8", "--threads", "1",
            "--device", "cpu", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("  single (1/1):"):  # printed right after the row is written
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["single"] and rows[0]["samples_s"] > 0
    assert rows[0]["model"] == "tiny-bert" and rows[0]["compile"] is False  # the row carries its setup
    assert main(["bench", "--model", "tiny-bert", "--batch", "2", "--seq", "8", "--steps", "1", "--warmup", "0",
                 "--rows", "single", "--threads", "1", "--device", "cpu", "--checkpoint-layers",
                 "--json", str(out), "--append"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["name"], r["checkpoint_layers"]) for r in rows] == [("single", False), ("single", True)]
    out.write_text("not json")
    assert main(["bench", "--model", "tiny-bert", "--rows", "single", "--json", str(out), "--append"]) == 2


def test_synthetic_rows_of_bert_base_and_tiny_bert_never_load_minilm(tmp_path, monkeypatch):
    """The GPU image lacks MiniLM's package: synthetic bench rows use a tokenizer built in-process. With MiniLM
    made unreachable (TRANSFERLAB_MINILM pointing nowhere), a tiny-bert row still runs and bert-base's folder
    has a full tokenizer."""
    import transformers as tf

    from transferlab.bench import bench, resolve_model
    from transferlab.errors import ModelError
    from transferlab.models.common import minilm_path

    monkeypatch.setenv("TRANSFERLAB_MINILM", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="TRANSFERLAB_MINILM"):
        minilm_path()
    result = bench("tiny-bert", batch=2, seq=8, steps=1, warmup=0, rows=("single",), device="cpu",
                   json_path=tmp_path / "rows.json", out=lambda *_: None)
    assert [r["name"] for r in result["rows"]] == ["single"] and result["rows"][0]["samples_s"] > 0
    tok = tf.AutoTokenizer.from_pretrained(resolve_model("bert-base", tmp_path))
    assert len(tok) == 30522 and (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (0, 101, 102)
    ids = tok("the film was good", add_special_tokens=False)["input_ids"]
    assert ids and tok.unk_token_id not in ids  # letters and ## pieces: no text is unknown
    assert tf.AutoConfig.from_pretrained(resolve_model("bert-base", tmp_path)).hidden_size == 768
