"""FPT tasks: every generator and loader (shapes, label balance, determinism, hand-checked labels),
the bad inputs of issue 5, and short end-to-end runs on the shared MNIST and CIFAR-10."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
from conftest import SHARED_DATA, needs_shared_data
from PIL import Image

from transferlab.data import build_task
from transferlab.data.bits import xor_of
from transferlab.data.images import gray
from transferlab.data.listops import VOCAB, evaluate
from transferlab.data.protein import AMINO_ACIDS
from transferlab.errors import DataError, SpecError
from transferlab.spec import TaskSpec, load_spec

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def task(name, path=None, seed=0, **options):
    return build_task(TaskSpec(name=name, path=None if path is None else str(path), options=options), seed=seed)


def same(a, b) -> bool:
    return all(np.array_equal(a.splits[k].inputs, b.splits[k].inputs)
               and np.array_equal(a.splits[k].labels, b.splits[k].labels) for k in a.splits)


# ---------------------------------------------------------------- bits


def test_bit_memory_shapes_balance_and_query():
    t = task("bit_memory", num_train=2000, num_dev=200, num_test=200)
    train = t.splits["train"]
    assert train.inputs.shape == (2000, 24, 16) and train.labels.shape == (2000, 64)  # 6 strings x 64 bits / 16
    assert t.extra["output_tokens"] == 4 and t.extra["outputs_per_token"] == 16 and t.input_dim == 16
    assert abs(train.labels.mean() - 0.5) < 0.01  # bits are balanced
    strings = train.inputs.reshape(2000, 6, 64)
    memory, query = strings[:, :5], strings[:, 5]
    assert set(np.unique(memory)) == {-1.0, 1.0} and set(np.unique(query)) == {-1.0, 0.0, 1.0}
    assert abs((query == 0).mean() - 0.5) < 0.01  # masking rate 0.5
    target = 2 * train.labels - 1
    assert np.all((query == 0) | (query == target))  # the query is a masked copy of its target ...
    assert np.all((memory == target[:, None]).all(-1).any(1))  # ... which is one of the memorised strings


def test_bit_tasks_are_deterministic_by_data_seed_only():
    a, b = task("bit_memory", seed=0, num_train=50), task("bit_memory", seed=7, num_train=50)
    assert same(a, b)  # the run seed does not change the data
    assert not same(a, task("bit_memory", data_seed=1, num_train=50))
    assert same(task("bit_xor", num_train=40), task("bit_xor", seed=3, num_train=40))


def test_bit_xor_labels_on_hand_checked_cases():
    bits = np.array([[[1, 0, 1, 1, 0], [1, 1, 0, 1, 0]],
                     [[0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]])
    assert xor_of(bits).tolist() == [[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert xor_of(np.array([[[1, 1], [1, 0], [1, 0]]])).tolist() == [[1, 1]]  # three strings: odd count
    t = task("bit_xor", num_train=500)
    x = (t.splits["train"].inputs.reshape(500, 2, 5) > 0).astype(int)  # +1/-1 back to bits
    assert np.array_equal(t.splits["train"].labels, x[:, 0] ^ x[:, 1])
    assert t.splits["train"].inputs.shape == (500, 2, 5) and t.extra["output_tokens"] == 1
    assert abs(t.splits["train"].labels.mean() - 0.5) < 0.03


def test_bit_options_are_checked():
    with pytest.raises(SpecError, match="patch_size: 5 does not divide the string length 64"):
        task("bit_memory", patch_size=5)
    with pytest.raises(SpecError, match="mask_prob"):
        task("bit_memory", mask_prob=1.5)
    with pytest.raises(SpecError, match="unknown key 'strings'"):
        task("bit_xor", strings=3)


# ---------------------------------------------------------------- listops


@pytest.mark.parametrize("source,value", [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN 4 7 ]", 4),
    ("[MED 3 1 8 ]", 3),
    ("[MED 1 2 3 4 ]", 2),  # median 2.5, rounded down
    ("[SM 5 6 7 ]", 8),  # 18 mod 10
    ("[SM [MAX 9 1 ] [MED 8 2 6 ] 5 ]", 0),  # 9 + 6 + 5 = 20
    ("( ( ( ( ( [SM 6 ) 5 ) 9 ) 0 ) ] )", 0),  # the original release's brackets: 20 mod 10
    ("( ( ( ( ( [MIN 6 ) 3 ) 5 ) 0 ) ] )", 0),
])
def test_listops_evaluator_on_hand_checked_cases(source, value):
    assert evaluate(source.split()) == value


def test_listops_evaluator_rejects_malformed_expressions():
    for bad, why in (("[MAX 2 9", "not closed"), ("[MAX ]", "empty list"), ("[FOO 1 ]", "unknown symbol"),
                     ("1 2", "outside any list")):
        with pytest.raises(ValueError, match=why):
            evaluate(bad.split())


def test_listops_generator_shapes_balance_determinism_and_labels():
    t = task("listops", num_train=300, num_dev=50, num_test=50, max_tokens=60, max_depth=3)
    train = t.splits["train"]
    assert t.modality == "tokens" and t.vocab_size == len(VOCAB) and train.inputs.dtype == np.int64
    assert train.inputs.shape[0] == 300 and train.inputs.shape[1] <= 60
    assert np.bincount(train.labels, minlength=10).tolist() == [30] * 10  # balanced by default
    for ids, label in zip(train.inputs, train.labels):  # every label is the value of its expression
        tokens = [VOCAB[i] for i in ids if i != 0]
        assert evaluate(tokens) == label and tokens[0].startswith("[")
    assert same(t, task("listops", seed=5, num_train=300, num_dev=50, num_test=50, max_tokens=60, max_depth=3))
    other = task("listops", data_seed=1, num_train=300, num_dev=50, num_test=50, max_tokens=60, max_depth=3)
    assert not np.array_equal(other.splits["train"].labels, train.labels)


def test_listops_depth_and_operator_controls():
    t = task("listops", num_train=100, num_dev=10, num_test=10, max_depth=1, operators=["SM"], balance=False)
    for ids in t.splits["train"].inputs:
        tokens = [VOCAB[i] for i in ids if i != 0]
        assert tokens[0] == "[SM" and tokens.count("]") == 1  # depth 1: one flat list
    with pytest.raises(SpecError, match="operators"):
        task("listops", operators=["POW"])


def test_listops_tsv_files(tmp_path):
    rows = ["Target\tSource", "9\t[MAX 2 9 [MIN 4 7 ] 0 ]", "8\t( ( [SM 5 ) 6 7 ] )", "3\t[MED 3 1 8 ]"]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    t = build_task(TaskSpec(name="listops", path=str(tmp_path)))
    assert t.splits["train"].labels.tolist() == [9, 8, 3] and "test" not in t.splits
    assert t.splits["train"].inputs.shape == (3, 9)  # parentheses dropped, padded to the longest
    (tmp_path / "dev.tsv").write_text("Target\tSource\n7\t[MAX 2 9 ]\n")
    with pytest.raises(DataError, match=r"dev.tsv, line 2: target '7' but the expression evaluates to 9"):
        build_task(TaskSpec(name="listops", path=str(tmp_path)))


@needs_shared_data
def test_listops_shared_tsv_every_target_checked():
    t = task("listops", SHARED_DATA / "listops" / "test_d20s.tsv", max_tokens=512)
    n = sum(len(s) for s in t.splits.values())
    assert n + sum(t.extra["dropped_too_long"].values()) == 10000  # all read, all targets evaluated
    assert max(s.inputs.shape[1] for s in t.splits.values()) <= 512
    counts = np.bincount(t.splits["dev"].labels, minlength=10)
    assert counts.min() > 0.7 * counts.mean()  # stratified split keeps the near-balanced classes


# ---------------------------------------------------------------- images


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_with_train_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    t = task("mnist", tmp_path)
    assert {k: v.inputs.shape for k, v in t.splits.items()} == {
        "train": (180, 49, 16), "dev": (20, 49, 16), "test": (50, 49, 16)}
    assert np.bincount(t.splits["dev"].labels).tolist() == [2] * 10  # stratified dev out of train
    assert 0 <= t.splits["train"].inputs.min() and t.splits["train"].inputs.max() <= 1
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x01abcd"))
    with pytest.raises(DataError, match="not an idx file of unsigned bytes"):
        task("mnist", tmp_path)


@needs_shared_data
def test_mnist_shared_test_set_split_three_ways():
    t = task("mnist", SHARED_DATA / "mnist")
    assert {k: v.inputs.shape for k, v in t.splits.items()} == {
        "train": (7000, 49, 16), "dev": (1500, 49, 16), "test": (1500, 49, 16)}
    full = np.concatenate([s.labels for s in t.splits.values()])
    share = np.bincount(full) / len(full)
    for split in t.splits.values():
        assert np.abs(np.bincount(split.labels, minlength=10) / len(split) - share).max() < 0.005
    assert same(t, task("mnist", SHARED_DATA / "mnist", seed=3))
    assert task("mnist", SHARED_DATA / "mnist", pixels=True).splits["dev"].inputs.shape == (1500, 784, 1)


def write_cifar_folder(root, per_class=3, size=32):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i:04d}.png")


def test_cifar10_image_folders(tmp_path):
    write_cifar_folder(tmp_path, per_class=10)
    t = task("cifar10", tmp_path)
    assert {k: v.inputs.shape for k, v in t.splits.items()} == {
        "train": (90, 64, 48), "dev": (10, 64, 48), "test": (20, 64, 48)}
    assert np.bincount(t.splits["dev"].labels).tolist() == [1] * 10
    assert t.label_names == CLASSES and same(t, task("cifar10", tmp_path, seed=9))
    small = task("cifar10", tmp_path, max_per_class=5)
    assert len(small.splits["train"]) + len(small.splits["dev"]) == 50


def test_cifar10_torchvision_batches_and_a_refused_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 20) for i in range(1, 6)), ("test_batch", 30)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(np.arange(n) % 10)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    t = task("cifar10", tmp_path)
    assert len(t.splits["train"]) == 90 and len(t.splits["dev"]) == 10 and len(t.splits["test"]) == 30
    assert t.splits["test"].inputs.shape == (30, 64, 48)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(DataError, match=r"not a CIFAR-10 python batch \(global builtins.print is not allowed\)"):
        task("cifar10", tmp_path)


def test_cifar10_gray_pixel_tokens_and_values(tmp_path):
    write_cifar_folder(tmp_path, per_class=10)
    t = task("cifar10_gray", tmp_path)
    assert t.modality == "tokens" and t.vocab_size == 256 and t.splits["test"].inputs.shape == (20, 1024)
    img = Image.open(tmp_path / "test" / "airplane" / "0000.png")
    expected = np.asarray(img.convert("L")).reshape(-1)  # PIL's own gray conversion
    assert np.array_equal(t.splits["test"].inputs[0], expected)
    assert np.array_equal(gray(np.asarray(img)), np.asarray(img.convert("L")))
    values = task("cifar10_gray", tmp_path, pixels="values")
    assert values.modality == "vectors" and values.splits["test"].inputs.shape == (20, 1024, 1)
    assert task("cifar10_gray", tmp_path, pixels="values", patch_size=4).splits["test"].inputs.shape == (20, 64, 16)


@needs_shared_data
def test_cifar10_shared_archives():
    t = task("cifar10", SHARED_DATA / "cifar10", max_per_class=20)
    assert {k: v.inputs.shape for k, v in t.splits.items()} == {
        "train": (180, 64, 48), "dev": (20, 64, 48), "test": (200, 64, 48)}
    assert np.bincount(t.splits["test"].labels).tolist() == [20] * 10
    assert np.bincount(t.splits["dev"].labels).tolist() == [2] * 10


def test_digits_shapes_balance_determinism():
    t = task("digits", patch_size=4)
    assert t.splits["train"].inputs.shape[1:] == (4, 16) and sum(len(s) for s in t.splits.values()) == 1797
    counts = np.bincount(t.splits["test"].labels)
    assert counts.max() - counts.min() <= 2 and same(t, task("digits", seed=4, patch_size=4))


# ---------------------------------------------------------------- proteins


def write_fasta(path, n_per_class=12, seed=0, bad: str | None = None):
    """Two folds with their own motif; sequences wrap over lines as in real FASTA files."""
    rng = np.random.default_rng(seed)
    motifs = {"a.1": "WWCWW", "b.2": "PPGPP"}
    lines = []
    for i in range(n_per_class):
        for label, motif in motifs.items():
            seq = "".join(rng.choice(list(AMINO_ACIDS[:20]), 30)) + motif
            lines += [f">seq{i}_{label} {label}", seq[:20], seq[20:]]
    if bad:
        lines += [">broken label=a.1", "ACDE" + bad + "FGH"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_protein_fasta_folder(tmp_path):
    write_fasta(tmp_path / "train.fasta")
    write_fasta(tmp_path / "dev.fasta", n_per_class=4, seed=1)
    t = build_task(TaskSpec(name="protein", path=str(tmp_path)))
    assert t.modality == "tokens" and t.vocab_size == 26 and t.label_names == ["a.1", "b.2"]
    assert t.splits["train"].inputs.shape == (24, 35) and np.bincount(t.splits["train"].labels).tolist() == [12, 12]
    assert t.splits["train"].inputs[0, -5:].tolist() == [AMINO_ACIDS.index(a) + 1 for a in "WWCWW"]
    assert same(t, build_task(TaskSpec(name="protein", path=str(tmp_path)), seed=5))
    cropped = build_task(TaskSpec(name="protein", path=str(tmp_path), options={"max_tokens": 10}))
    assert cropped.splits["train"].inputs.shape == (24, 10)


def test_protein_tsv_single_file_split(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["sequence\tfold_label"] + [f"{''.join(rng.choice(list('ACDEFG'), 15))}\t{i % 3}" for i in range(60)]
    (tmp_path / "all.tsv").write_text("\n".join(rows) + "\n")
    t = build_task(TaskSpec(name="protein", path=str(tmp_path / "all.tsv"), label_column="fold_label"))
    assert {k: len(v) for k, v in t.splits.items()} == {"train": 48, "dev": 6, "test": 6}
    assert np.bincount(t.splits["test"].labels).tolist() == [2, 2, 2] and t.label_names == ["0", "1", "2"]


# ---------------------------------------------------------------- bad input (issue 5)


def test_unknown_amino_acid_names_file_line_and_symbol(tmp_path):
    write_fasta(tmp_path / "train.fasta", n_per_class=2, bad="J")
    write_fasta(tmp_path / "dev.fasta", n_per_class=2)
    with pytest.raises(DataError, match=r"train.fasta, line 13: unknown amino-acid symbol 'J' at position 5"):
        build_task(TaskSpec(name="protein", path=str(tmp_path)))


def test_image_size_not_divisible_by_patch_size(tmp_path):
    with pytest.raises(SpecError, match=r"patch_size: .*image size 8x8 is not divisible by patch size 3"):
        task("digits", patch_size=3)
    write_cifar_folder(tmp_path, per_class=2)
    with pytest.raises(SpecError, match=r"patch_size: .*image size 32x32 is not divisible by patch size 5"):
        task("cifar10", tmp_path, patch_size=5)


def test_sequence_longer_than_the_backbone_positions(tmp_path):
    from transferlab.models.model import build_model

    write_cifar_folder(tmp_path, per_class=2)
    base = {"task": {"name": "cifar10_gray", "path": str(tmp_path)}, "model": {"name": "tiny-bert"},
            "head": {"name": "mean"}}
    spec = load_spec(base)
    t = build_task(spec.task)
    with pytest.raises(SpecError, match=r"sequences of 1024 tokens, but bert has 512 positions; set "
                                        r"input_adapter.positions: new"):
        build_model(spec, t)
    with pytest.raises(SpecError, match="input_adapter.max_positions: 600 rows, but task cifar10_gray has "
                                        "sequences of 1024 tokens"):
        build_model(load_spec({**base, "input_adapter": {"positions": "new", "max_positions": 600}}), t)
    model = build_model(load_spec({**base, "input_adapter": {"positions": "new", "max_positions": 1024}}), t)
    x = __import__("torch").as_tensor(t.splits["test"].inputs[:2])
    assert model(inputs=x).shape == (2, 10)
    assert model.backbone.model.embeddings.position_embeddings.weight.shape == (1024, 32)


# ---------------------------------------------------------------- end to end on the shared images


@needs_shared_data
@pytest.mark.parametrize("name,options", [("mnist", {}), ("cifar10", {"max_per_class": 30})])
def test_shared_images_end_to_end(tmp_path, name, options):
    import torch

    from transferlab.store import Store
    from transferlab.train.loop import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a shared 2-core machine: one thread is ~10x faster

    path = SHARED_DATA / name
    spec = load_spec({
        "name": f"e2e-{name}", "model": {"name": "tiny-bert"}, "head": {"name": "mean", "dropout": 0.0},
        "task": {"name": name, "path": str(path), "options": options, "max_train_samples": 600,
                 "max_eval_samples": 300},
        "optim": {"lr": 3e-3, "weight_decay": 0.0}, "schedule": {"name": "constant", "warmup_steps": 5},
        "train": {"max_steps": 100, "batch_size": 32, "num_evals": 2, "log_every": 10, "save_model": False},
    })
    store = Store(tmp_path / "s.db")
    try:
        result = run(spec, store, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert result.status == "finished" and set(result.test) == {"accuracy"}
    curve = [loss for _, loss, *_ in store.curve(result.uid)]
    assert curve[-1] < curve[0]  # it learns
    if name == "mnist":
        assert result.dev["accuracy"] > 0.2  # chance is 0.1


# ---------------------------------------------------------------- the shipped examples


@pytest.mark.parametrize("name", ["fpt_digits", "fpt_table", "fpt_ablation", "fpt_depth", "fpt_bit_memory"])
def test_fpt_examples_expand(name):
    from pathlib import Path

    from transferlab.study.expand import expand
    from transferlab.study.spec import load_study

    study = load_study(Path(__file__).resolve().parents[1] / "examples" / f"{name}.yaml")
    planned = expand(study)
    assert len({p.run_id for p in planned}) == len(planned) > 0
    for p in planned:  # every run builds its task and names a model alias or the LSTM
        assert p.spec.model.name in ("minilm", "lstm")
    if name == "fpt_digits":
        assert sorted(study.arms) == ["frozen-pretrained", "frozen-random"] and len(study.seeds) >= 5
        assert {p.spec.model.init for p in planned} == {"pretrained", "random"} and planned[0].spec.freeze.name == "fpt"
