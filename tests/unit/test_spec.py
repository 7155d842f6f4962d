"""The experiment spec: good and bad spec files, --set overrides, search-space parsing."""

from pathlib import Path

import pytest

from tl_ray.errors import ConfigError
from tl_ray.spec import apply_overrides, load_spec, parse_override, validate
from tl_ray.spec.space import grid_size, parse_distribution

SPECS = Path(__file__).resolve().parents[1] / "data" / "specs"
GOOD = sorted((SPECS / "good").glob("*.yaml"))
BAD = sorted((SPECS / "bad").glob("*.yaml"))


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_specs_load(path):
    spec = load_spec(path)
    assert spec.name
    assert spec.data.train


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_specs_name_the_problem(path):
    expected = path.read_text().splitlines()[0].removeprefix("# expect:").strip()
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_backbone_error_names_field_rule_and_value():
    with pytest.raises(ConfigError) as info:
        load_spec(SPECS / "bad" / "unknown_backbone.yaml")
    msg = str(info.value)
    assert "model.backbone" in msg and "must be one of" in msg and "'mobilenetv2'" in msg


def test_missing_spec_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec("no/such/spec.yaml")


def test_set_overrides_are_typed():
    spec = load_spec(
        SPECS / "good" / "quickstart_target.yaml",
        overrides=["train.epochs=2", "model.head.dense=[32, 16]", "model.freeze.mode=fine_tune", "storage=s3://b/p"],
    )
    assert spec.train.epochs == 2
    assert spec.model.head.dense == [32, 16]
    assert spec.model.freeze.mode == "fine_tune"
    assert spec.storage == "s3://b/p"


def test_set_into_free_form_mapping():
    spec = load_spec(SPECS / "good" / "minimal.yaml", overrides=["model.backbone_args.alpha=0.5"])
    assert spec.model.backbone_args == {"alpha": 0.5}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochz=3", "Did you mean 'epochs'?"),
        ("train.epochs", "expects KEY=VALUE"),
        ("train.epochs.x=1", "has no sub-fields"),
        ("train.epochs=-1", "train.epochs: Input should be greater than 0"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        load_spec(SPECS / "good" / "minimal.yaml", overrides=[override])


def test_apply_overrides_does_not_touch_input():
    data = {"train": {"epochs": 1}}
    out = apply_overrides(data, {"train.epochs": 5})
    assert data == {"train": {"epochs": 1}} and out == {"train": {"epochs": 5}}


def test_parse_override_yaml_values():
    assert parse_override("train.learning_rate=1e-3") == ("train.learning_rate", 1e-3)
    assert parse_override("data.image_size=[64, 64]") == ("data.image_size", [64, 64])


@pytest.mark.parametrize(
    "expr, kind, args",
    [
        ("uniform(0.0, 0.5)", "uniform", (0.0, 0.5)),
        ("loguniform(1e-4, 1e-2)", "loguniform", (1e-4, 1e-2)),
        ("randint(1, 10)", "randint", (1, 10)),
        ("choice([feature_extraction, fine_tune])", "choice", (("feature_extraction", "fine_tune"),)),
        ("grid([[64], [128, 64]])", "grid", (([64], [128, 64]),)),
        (0.3, "fixed", (0.3,)),
    ],
)
def test_distributions(expr, kind, args):
    dist = parse_distribution("k", expr)
    assert dist.kind == kind and dist.args == args


@pytest.mark.parametrize(
    "expr, message",
    [
        ("normal(0, 1)", "unknown distribution 'normal'"),
        ("uniform(1, 0)", "LOW < HIGH"),
        ("choice(a, b)", "one non-empty list"),
        ("randint(0.5, 3)", "randint takes integers"),
    ],
)
def test_bad_distributions(expr, message):
    with pytest.raises(ValueError, match=message):
        parse_distribution("k", expr)


def test_grid_size():
    assert grid_size({"a": "grid([1, 2, 3])", "b": "grid([x, y])", "c": "uniform(0, 1)"}) == 6


def test_relative_local_store_is_made_absolute_where_the_spec_is_loaded(tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    spec = load_spec(SPECS / "good" / "minimal.yaml")
    assert spec.storage == os.path.join(str(tmp_path), "tlray-store")
    assert load_spec(SPECS / "good" / "minimal.yaml", overrides=["storage=s3://b/p"]).storage == "s3://b/p"


def test_a_spec_choosing_layers_by_pattern_or_block_validates_again_after_to_dict():
    """Trials validate the spec the driver wrote back (to_dict): one selector stays one selector."""
    for freeze in ({"mode": "fine_tune", "pattern": "block_1[3-6]"}, {"mode": "fine_tune", "from_block": "block_13"}):
        spec = validate({"name": "x", "data": {"train": "d"}, "model": {"backbone": "mobilenet_v2", "freeze": freeze}})
        again = validate(spec.to_dict())
        assert again.model.freeze == spec.model.freeze


def test_storage_as_a_mapping_sets_the_locking(tmp_path):
    spec = load_spec(SPECS / "good" / "minimal.yaml", overrides={"storage": {"uri": "s3://b/p", "locking": "lease"}})
    assert (spec.storage, spec.storage_locking) == ("s3://b/p", "lease")
    again = validate(spec.to_dict())  # trials validate the dumped spec: the choice travels with it
    assert (again.storage, again.storage_locking) == ("s3://b/p", "lease")
    assert load_spec(SPECS / "good" / "minimal.yaml").storage_locking is None
    with pytest.raises(ConfigError, match="storage as a mapping takes the keys uri .required. and locking"):
        load_spec(SPECS / "good" / "minimal.yaml", overrides={"storage": {"url": "s3://b/p"}})
    with pytest.raises(ConfigError, match="storage_locking: Input should be 'conditional' or 'lease'"):
        load_spec(SPECS / "good" / "minimal.yaml", overrides={"storage": {"uri": "s3://b/p", "locking": "fenced"}})
