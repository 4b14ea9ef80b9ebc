import pytest

from transferlab.errors import SpecError
from transferlab.spec import RunSpec, load_spec, run_id, spec_hash, to_dict


def test_defaults_and_overrides():
    spec = load_spec({"task": {"name": "sts-b"}}, ["optim.lr=3e-5", "train.epochs=1", "head.options={k: 2}"])
    assert isinstance(spec, RunSpec)
    assert spec.task.name == "sts-b"
    assert spec.optim.lr == pytest.approx(3e-5)
    assert spec.train.epochs == 1.0
    assert spec.head.options == {"k": 2}
    assert spec.optim.betas == (0.9, 0.999)


def test_yaml_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: a\nseed: 3\noptim:\n  lr: 2e-5\n  betas: [0.9, 0.98]\n")
    spec = load_spec(path)
    assert spec.seed == 3 and spec.optim.lr == 2e-5 and spec.optim.betas == (0.9, 0.98)


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"optim": {"lrr": 1}}, "optim: unknown key 'lrr'; known keys: name, lr"),
        ({"bogus": 1}, "spec: unknown key 'bogus'"),
        ({"train": {"precision": "fp8"}}, "train.precision: 'fp8' is not allowed; allowed: 'auto', 'fp32'"),
        ({"model": {"init": "xavier-ish"}}, "model.init"),
        ({"train": {"batch_size": "many"}}, "train.batch_size: 'many' is not an integer"),
        ({"optim": {"lr": "fast"}}, "optim.lr: 'fast' is not a number"),
        ({"optim": {"betas": [0.9]}}, "optim.betas"),
        ({"model": "minilm"}, "model: expected a mapping"),
    ],
)
def test_bad_specs_name_the_field(data, needle):
    with pytest.raises(SpecError) as err:
        load_spec(data)
    assert needle in str(err.value)


def test_bad_override_and_files(tmp_path):
    with pytest.raises(SpecError, match="key=value"):
        load_spec({}, ["optim.lr"])
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SpecError, match="is empty"):
        load_spec(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1,\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(broken)


def test_hash_is_stable_and_ignores_seed_and_name():
    a = load_spec({"seed": 1, "name": "x"})
    b = load_spec({"seed": 2, "name": "y"})
    c = load_spec({"optim": {"lr": 1e-3}})
    assert spec_hash(a) == spec_hash(b) != spec_hash(c)
    assert run_id(a) != run_id(b) and run_id(a).endswith("-s1")
    assert load_spec(to_dict(a)) == a  # the stored dict rebuilds the same spec
