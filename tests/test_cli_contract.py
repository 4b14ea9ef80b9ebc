"""The CLI contract: a user's mistake is one line on stderr, exit 2, no traceback, and no run row.

Exit codes (transferlab/cli.py): 0 done, 1 ran but could not give what was asked (failed study runs,
a report of nothing), 2 a mistake in what was given, 130 Ctrl-C, 141 stdout closed early.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_spec_dict, tiny_study_dict, write_sentiment_csv

from transferlab.cli import main
from transferlab.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data folder, a spec, a store with one finished run, a damaged model folder, a plain file."""
    import transformers as tf

    from transferlab.models.common import minilm_path

    tmp = tmp_path_factory.mktemp("contract")
    data = write_sentiment_csv(tmp / "toy", n_train=32, n_dev=16)
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec_dict(data, epochs=1, save_model=True)))
    db = tmp / "s.db"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(spec), "--store", str(db), "--quiet"]) == 0
    finally:
        torch.set_num_threads(before)
    bad_data = tmp / "bad_data"
    shutil.copytree(data, bad_data)
    (bad_data / "dev.csv").write_bytes(b"text,label\nthe film was good,1\ncaf\xe9 was bad,0\n")
    bad_spec = tmp / "latin1.yaml"
    bad_spec.write_bytes(yaml.safe_dump(tiny_spec_dict(data)).encode() + b"name: caf\xe9\n")
    model = tmp / "damaged_model"
    config = tf.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32)
    tf.BertModel(config).save_pretrained(model)
    tf.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a half-copied file
    (tmp / "a_file").write_text("not a folder\n")
    return {"tmp": tmp, "data": data, "spec": spec, "db": db, "bad_data": bad_data, "bad_spec": bad_spec,
            "model": model, "uid": Store(db).runs()[0].uid}


def _make_readonly(folder: Path) -> bool:
    """Make ``folder`` unwritable for this process: immutable for root (chattr +i), mode 555 otherwise;
    returns whether chattr was used."""
    immutable = bool(os.geteuid() == 0 and shutil.which("chattr") and subprocess.run(
        ["chattr", "+i", str(folder)], capture_output=True).returncode == 0)
    if not immutable:
        folder.chmod(0o555)
    return immutable


def _undo_readonly(folder: Path, immutable: bool) -> None:
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def _can_make_readonly() -> bool:
    """Whether this user on this file system can make a folder it cannot write to (root without chattr
    support cannot)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "probe"
        folder.mkdir()
        immutable = _make_readonly(folder)
        try:
            return not os.access(folder, os.W_OK)
        finally:
            _undo_readonly(folder, immutable)


needs_readonly = pytest.mark.skipif(not _can_make_readonly(),
                                    reason="this user cannot make a read-only folder on this file system")


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder this process cannot write into (tests using it carry ``needs_readonly``)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    immutable = _make_readonly(folder)
    try:
        assert not os.access(folder, os.W_OK)
        yield folder
    finally:
        _undo_readonly(folder, immutable)


def _rows(db: Path) -> int:
    return len(Store(db).runs()) if db.is_file() else 0


def _one_line_error(code: int, err: str, needle: str, expected: int = 2) -> None:
    assert code == expected, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]


RUN_MISTAKES = {  # --set value -> what the one line must name
    "batch_size 0": ("train.batch_size=0", "train.batch_size"),
    "grad_accum 0": ("train.grad_accum=0", "train.grad_accum"),
    "log_every 0": ("train.log_every=0", "train.log_every"),
    "eval_batch_size 0": ("train.eval_batch_size=0", "train.eval_batch_size"),
    "device tpu": ("train.device=tpu", "train.device: 'tpu'"),
    "epochs 0": ("train.epochs=0", "train.epochs"),
}


@pytest.mark.parametrize("case", list(RUN_MISTAKES))
def test_bad_value_is_one_line_exit_2_and_no_row(world, case, capsys):
    override, needle = RUN_MISTAKES[case]
    before = _rows(world["db"])
    code = main(["run", str(world["spec"]), "--store", str(world["db"]), "--quiet", "--set", override])
    _one_line_error(code, capsys.readouterr().err, needle)
    assert _rows(world["db"]) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is a valid precision on a CUDA machine")
def test_bf16_on_cpu_is_refused_not_ignored(world, capsys):
    before = _rows(world["db"])
    code = main(["run", str(world["spec"]), "--store", str(world["db"]), "--set", "train.precision=bf16"])
    _one_line_error(code, capsys.readouterr().err, "train.precision: 'bf16'")
    assert _rows(world["db"]) == before


def test_non_utf8_data_file_names_file_and_line(world, capsys):
    before = _rows(world["db"])
    code = main(["run", str(world["spec"]), "--store", str(world["db"]), "--set", f"task.path={world['bad_data']}"])
    _one_line_error(code, capsys.readouterr().err, f"{world['bad_data'] / 'dev.csv'}, line 3: not UTF-8")
    assert _rows(world["db"]) == before


def test_non_utf8_spec_file_names_file_and_line(world, capsys):
    code = main(["run", str(world["bad_spec"]), "--store", str(world["db"])])
    lines = world["bad_spec"].read_bytes().count(b"\n")
    _one_line_error(code, capsys.readouterr().err, f"{world['bad_spec']}, line {lines}: not UTF-8")


def test_damaged_safetensors_model_is_one_line(world, capsys):
    before = _rows(world["db"])
    code = main(["run", str(world["spec"]), "--store", str(world["db"]), "--set", f"model.name={world['model']}"])
    _one_line_error(code, capsys.readouterr().err, "model.safetensors is damaged or incomplete")
    assert _rows(world["db"]) == before


@needs_readonly
def test_read_only_store_folder(world, readonly_dir, capsys):
    code = main(["run", str(world["spec"]), "--store", str(readonly_dir / "s.db")])
    _one_line_error(code, capsys.readouterr().err, f"the folder {readonly_dir} is not writable")
    assert not (readonly_dir / "s.db").exists()


def test_export_onto_a_file(world, capsys):
    target = world["tmp"] / "a_file"
    code = main(["export", world["uid"], "-o", str(target), "--store", str(world["db"])])
    _one_line_error(code, capsys.readouterr().err, f"export -o: {target} is a file")
    assert target.read_text() == "not a folder\n"


@needs_readonly
def test_export_into_a_read_only_folder(world, readonly_dir, capsys):
    code = main(["export", world["uid"], "-o", str(readonly_dir / "model"), "--store", str(world["db"])])
    _one_line_error(code, capsys.readouterr().err, f"the folder {readonly_dir} is not writable")


@pytest.mark.parametrize("command", ["runs", "report"])
def test_a_store_typo_creates_nothing(world, command, capsys):
    typo = world["tmp"] / "typo" / "s.db"
    argv = [command, "--store", str(typo)] + (["-o", str(world["tmp"] / "rep")] if command == "report" else [])
    _one_line_error(main(argv), capsys.readouterr().err, f"store {typo} does not exist")
    assert not typo.exists() and not typo.parent.exists()


def test_report_of_an_empty_store_says_so_and_exits_1(tmp_path, capsys):
    db = tmp_path / "empty.db"
    Store(db).close()
    _one_line_error(main(["report", "--store", str(db), "-o", str(tmp_path / "rep")]), capsys.readouterr().err,
                    "holds no runs; nothing to report", expected=1)
    assert not (tmp_path / "rep").exists()


def test_report_of_an_unknown_study_is_a_mistake(world, capsys):
    code = main(["report", "--store", str(world["db"]), "--study", "nope", "-o", str(world["tmp"] / "rep")])
    _one_line_error(code, capsys.readouterr().err, "--study: no study 'nope'")


def test_runs_of_an_unknown_study_is_a_mistake(world, capsys):
    _one_line_error(main(["runs", "--store", str(world["db"]), "--study", "nope"]), capsys.readouterr().err,
                    "--study: no study 'nope'")


def test_study_whose_runs_all_fail_exits_1_with_a_summary(tmp_path, capsys, monkeypatch):
    """Runs that fail during training are a result, not a spec mistake: exit 1 and one summary line.
    (The failure is injected where the loop builds the model, after every up-front check has passed.)"""
    import transferlab.train.engine as loop  # the Engine builds the optimizer

    data = write_sentiment_csv(tmp_path / "d", n_train=16, n_dev=8)
    study = tiny_study_dict(data, name="doomed", seeds=[0])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    db = tmp_path / "s.db"

    def broken(*args, **kwargs):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(loop, "build_optimizer", broken)  # after the run rows exist
    code = main(["run", str(path), "--store", str(db)])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err
    (line,) = captured.err.strip().splitlines()
    assert "doomed: 2 of 2 runs failed" in line and "the GPU caught fire" in line
    assert {r.status for r in Store(db).runs()} == {"failed"}


def test_dry_run_of_a_single_run_trains_nothing(world, capsys):
    before = _rows(world["db"])
    assert main(["run", str(world["spec"]), "--store", str(world["db"]), "--dry-run", "--set", "seed=7"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and "# run id " in out and "-s7  state todo" in out
    assert _rows(world["db"]) == before
    # a mistake is still found
    code = main(["run", str(world["spec"]), "--store", str(world["db"]), "--dry-run", "--set", "train.grad_accum=0"])
    _one_line_error(code, capsys.readouterr().err, "train.grad_accum")


def test_version(capsys):
    from transferlab import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"transferlab {__version__}"


def test_closed_pipe_is_quiet(world):
    """`transferlab runs | head -1`: no BrokenPipeError traceback, the SIGPIPE exit code."""
    many = world["tmp"] / "many.db"
    store = Store(many)
    for i in range(3000):  # enough output to overflow the pipe buffer after the reader is gone
        store.start_run(f"r{i:05d}", "h", 0, {"task": {"name": "csv"}, "optim": {"lr": i}}, name=f"n{i}")
    store.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(f"{sys.executable} -m transferlab.cli runs --store {many} | head -1; "
                          "echo \"rc=${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("uid") and proc.stdout.strip().endswith("rc=141")


def test_dry_run_of_a_study_checks_every_run(world, tmp_path, capsys):
    study = tiny_study_dict(world["data"], name="dry", seeds=[0, 1])
    study["arms"]["bad"] = {"train.batch_size": 0}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    code = main(["run", str(path), "--store", str(world["db"]), "--dry-run"])
    _one_line_error(code, capsys.readouterr().err, "train.batch_size: must be at least 1")
    del study["arms"]["bad"]
    path.write_text(yaml.safe_dump(study))
    assert main(["run", str(path), "--store", str(world["db"]), "--dry-run"]) == 0
    assert "dry: 4 of 4 runs to do" in capsys.readouterr().out
