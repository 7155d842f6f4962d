"""Conditional dimensions of ``tune.space``: parsing, validation, and sampling through
Ray Tune's variant generator and through the Optuna define-by-run space (no Ray cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tl_ray.errors import ConfigError
from tl_ray.spec import apply_overrides, load_spec, validate
from tl_ray.spec.space import parse_space, pbt_dimensions, trial_overrides
from tl_ray.tune.space import optuna_space, to_param_space

MINIMAL = Path(__file__).resolve().parents[1] / "data" / "specs" / "good" / "minimal.yaml"

MODE = "model.freeze.mode"
TOP = "model.freeze.unfreeze_top"
# The gated key sorts before its controller ("model" < "train"), so Ray's resolver meets it first.
SPACE = {
    "train.optimizer": "choice([adam, sgd])",
    "model.head.dropout": {"when": {"train.optimizer": "sgd"}, "sample": "uniform(0.1, 0.5)"},
    MODE: "choice([feature_extraction, fine_tune, full])",
    TOP: {"when": {MODE: "fine_tune"}, "sample": "randint(10, 60)"},
    # A chain: only where the block above was sampled (fine_tune) and the optimizer is adam.
    "train.backbone_lr_multiplier": {
        "when": {MODE: ["fine_tune", "full"], "train.optimizer": "adam"}, "sample": "loguniform(0.01, 1.0)"
    },
    "train.learning_rate": "loguniform(1e-4, 1e-2)",
}


def expected_present(cfg: dict) -> dict[str, bool]:
    return {
        "model.head.dropout": cfg["train.optimizer"] == "sgd",
        TOP: cfg[MODE] == "fine_tune",
        "train.backbone_lr_multiplier": cfg[MODE] in ("fine_tune", "full") and cfg["train.optimizer"] == "adam",
    }


def test_parse_conditional_entry():
    dists = parse_space(SPACE)
    assert dists[TOP].kind == "randint" and dists[TOP].args == (10, 60)
    assert dists[TOP].when == ((MODE, ("fine_tune",)),)
    assert dict(dists["train.backbone_lr_multiplier"].when)[MODE] == ("fine_tune", "full")
    assert not dists[MODE].conditional


def test_spec_with_conditional_space_loads():
    spec = load_spec(MINIMAL, overrides=[f"tune.space={SPACE}"])
    assert spec.tune.space[TOP]["sample"] == "randint(10, 60)"


def test_ray_variant_generator_samples_conditionals_exactly_when_their_condition_holds():
    from ray.tune.search.variant_generator import generate_variants

    param_space = to_param_space(SPACE)
    seen = {key: set() for key in ("model.head.dropout", TOP, "train.backbone_lr_multiplier")}
    for i in range(200):
        # What BasicVariantGenerator passes: the experiment spec with the param space under "config".
        ((_, resolved),) = list(generate_variants({"config": param_space}, random_state=i))
        cfg = resolved["config"]
        for key, present in expected_present(cfg).items():
            assert (cfg[key] is not None) == present, (key, cfg)
            seen[key].add(present)
        if cfg[TOP] is not None:
            assert isinstance(cfg[TOP], int) and 10 <= cfg[TOP] < 60
    assert all(s == {True, False} for s in seen.values()), seen  # both branches of every condition occurred


def test_optuna_define_by_run_samples_conditionals_exactly_when_their_condition_holds():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = optuna_space(SPACE)
    seen = {key: set() for key in ("model.head.dropout", TOP, "train.backbone_lr_multiplier")}
    for _ in range(200):
        trial = study.ask()
        cfg = space(trial)
        study.tell(trial, 0.0)
        for key, present in expected_present(cfg).items():
            assert (key in cfg) == present, (key, cfg)
            assert (key in trial.params) == present  # Optuna itself only saw the dimensions drawn
            seen[key].add(present)
    assert all(s == {True, False} for s in seen.values()), seen


def test_optuna_search_suggests_through_the_define_by_run_space():
    from tl_ray.tune.tuner import _search_alg

    spec = load_spec(MINIMAL, overrides=[f"tune.space={SPACE}", "tune.search=optuna"])
    searcher = _search_alg(spec)
    assert callable(searcher._space)
    for i in range(30):
        cfg = searcher.suggest(f"t{i}")
        for key, present in expected_present(cfg).items():
            assert (key in cfg) == present, (key, cfg)
        searcher.on_trial_complete(f"t{i}", {spec.tune.metric: 0.5, "training_iteration": 1})


def test_optuna_list_valued_choice_reaches_the_config():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    space = optuna_space({"model.head.dense": "choice([[64], [128, 64]])"})
    drawn = set()
    for _ in range(20):
        trial = study.ask()
        drawn.add(tuple(space(trial)["model.head.dense"]))
        study.tell(trial, 0.0)
    assert drawn == {(64,), (128, 64)}


def test_failed_condition_leaves_the_spec_default():
    base = load_spec(MINIMAL, overrides=[f"tune.space={SPACE}"]).to_dict()
    config = {MODE: "feature_extraction", TOP: None, "train.optimizer": "adam", "model.head.dropout": None,
              "train.backbone_lr_multiplier": None, "train.learning_rate": 1e-3}
    overrides = trial_overrides(SPACE, config)
    assert TOP not in overrides and "model.head.dropout" not in overrides
    spec = validate(apply_overrides(base, overrides))
    assert spec.model.freeze.unfreeze_top == 20  # FreezeSpec's default
    sampled = validate(apply_overrides(base, trial_overrides(SPACE, {**config, MODE: "fine_tune", TOP: 33})))
    assert sampled.model.freeze.unfreeze_top == 33


def test_absent_conditional_shows_as_dash_in_the_table():
    from tl_ray.tune.tuner import SweepResult, TrialRow

    result = SweepResult("val_accuracy", "max", rows=[
        TrialRow("a", {MODE: "fine_tune", TOP: 33}, 0.5, 1, "DONE"),
        TrialRow("b", {MODE: "feature_extraction", TOP: None}, 0.4, 1, "DONE"),
        TrialRow("c", {MODE: "full"}, 0.3, 1, "DONE"),  # Optuna leaves the key out
    ])
    lines = result.table().splitlines()
    col = lines[0].index(TOP)
    assert lines[1][col:].split()[0] == "33"
    assert lines[2][col:].split()[0] == "-" and lines[3][col:].split()[0] == "-"


def test_pbt_leaves_conditional_and_gating_dimensions_alone():
    from tl_ray.tune.tuner import _scheduler

    mutable, excluded = pbt_dimensions(SPACE)
    assert mutable == ["train.learning_rate"]
    assert set(excluded) == {"train.optimizer", "model.head.dropout", MODE, TOP, "train.backbone_lr_multiplier"}
    spec = load_spec(MINIMAL, overrides=[f"tune.space={SPACE}", "tune.scheduler=pbt"])
    assert set(_scheduler(spec)._hyperparam_mutations) == {"train.learning_rate"}


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"when": {"model.freeze.mod": "fine_tune"}, "sample": "randint(10, 60)"},
         "tune.space.model.freeze.unfreeze_top: 'when' names 'model.freeze.mod', which is not in tune.space"),
        ({"when": {MODE: "finetune"}, "sample": "randint(10, 60)"}, "can never be 'finetune'"),
        ({"when": {MODE: ["fine_tune", 3]}, "sample": "randint(10, 60)"}, "can never be 3"),
        ({"when": {MODE: "fine_tune"}, "sample": "grid([10, 20])"}, "a conditional dimension cannot be grid()"),
        ({"when": {MODE: "fine_tune"}}, "exactly the keys 'when' and 'sample'"),
        ({"when": {MODE: "fine_tune"}, "sample": "randint(10, 60)", "if": 1}, "exactly the keys 'when' and 'sample'"),
        ({"when": [MODE], "sample": "randint(10, 60)"}, "'when' maps fields of tune.space"),
        ({"when": {MODE: []}, "sample": "randint(10, 60)"}, "'when' lists no value"),
        ({"when": {MODE: "fine_tune"}, "sample": "randint(60, 10)"}, "randint needs LOW < HIGH"),
    ],
)
def test_bad_conditions_name_the_key(entry, message):
    space = {MODE: "choice([feature_extraction, fine_tune])", TOP: entry}
    with pytest.raises(ConfigError) as info:
        load_spec(MINIMAL, overrides=[f"tune.space={space}"])
    assert message in str(info.value)


def test_numeric_conditions_check_the_controlling_range():
    ok = {"train.batch_size": "randint(16, 65)", TOP: {"when": {"train.batch_size": [16, 64]}, "sample": 30}}
    assert parse_space(ok)[TOP].when == (("train.batch_size", (16, 64)),)
    with pytest.raises(ValueError, match="can never be 65"):
        parse_space({**ok, TOP: {"when": {"train.batch_size": 65}, "sample": 30}})
    with pytest.raises(ValueError, match="can never be 0.05"):
        parse_space({"train.learning_rate": "uniform(0.1, 0.2)",
                     TOP: {"when": {"train.learning_rate": 0.05}, "sample": 30}})


def test_cyclic_conditions_are_refused():
    space = {
        "train.optimizer": {"when": {MODE: "fine_tune"}, "sample": "choice([adam, sgd])"},
        MODE: {"when": {"train.optimizer": "adam"}, "sample": "choice([fine_tune, full])"},
    }
    with pytest.raises(ValueError, match="conditions form a cycle"):
        parse_space(space)


def test_a_mapping_without_when_is_still_a_fixed_value():
    assert parse_space({"model.backbone_args": {"alpha": 0.35}})["model.backbone_args"].kind == "fixed"


@pytest.mark.parametrize(
    "key, expr, message",
    [
        ("model.head.dropout", "grid([0.0, 1.5])", "grid([0.0, 1.5]) gives 1.5, which model.head.dropout does not take"),
        ("model.head.dropout", "uniform(0.0, 1.2)", "uniform(0.0, 1.2) reaches 1.2"),
        ("train.batch_size", "randint(0, 64)", "randint(0, 64) reaches 0, which train.batch_size does not take"),
        ("train.optimizer", "choice([adam, adamw2])", "gives 'adamw2', which train.optimizer does not take"),
        ("train.learning_rate", -0.1, "gives -0.1, which train.learning_rate does not take"),
        # A conditional dimension is checked where its condition holds.
        (TOP, {"when": {MODE: "fine_tune"}, "sample": "randint(-5, 60)"}, "randint(-5, 60) reaches -5"),
    ],
)
def test_a_space_value_its_field_refuses_fails_at_load_naming_dimension_value_and_rule(key, expr, message):
    space = {MODE: "choice([feature_extraction, fine_tune])", key: expr}
    with pytest.raises(ConfigError) as info:
        load_spec(MINIMAL, overrides=[f"tune.space={space}"])
    text = str(info.value)
    assert f"tune.space.{key}: " in text and message in text and "Narrow it to values the field accepts" in text
    assert "Received: {'name'" not in text  # not the whole spec


def test_ranges_whose_open_end_the_field_refuses_still_load():
    # uniform never gives HIGH (dropout < 1), randint never gives HIGH (latency_repeats <= 1000).
    space = {"model.head.dropout": "uniform(0.0, 1.0)", "promote.latency_repeats": "randint(3, 1001)"}
    spec = load_spec(MINIMAL, overrides={"promote": {"name": "m"}, "tune.space": space})
    assert set(spec.tune.space) == set(space)
    with pytest.raises(ConfigError, match=r"randint\(3, 1002\) reaches 1001, which promote.latency_repeats"):
        load_spec(MINIMAL, overrides={"promote": {"name": "m"},
                                      "tune.space": {"promote.latency_repeats": "randint(3, 1002)"}})


def test_a_list_fields_bad_element_and_a_conditional_null_sample():
    with pytest.raises(ConfigError, match=r"choice\(\[\[64\], \[64, -1\]\]\) gives \[64, -1\]"):
        load_spec(MINIMAL, overrides=["tune.space={'model.head.dense': 'choice([[64], [64, -1]])'}"])
    # None where the condition holds: the field keeps its default, as in the trial.
    space = {MODE: "choice([feature_extraction, fine_tune])", TOP: {"when": {MODE: "fine_tune"}, "sample": None}}
    assert TOP in load_spec(MINIMAL, overrides={"tune.space": space}).tune.space


def test_tune_seed_repeats_every_dimension_conditional_ones_included():
    """What BasicVariantGenerator(random_state=tune.seed) draws: the same trials for the same seed,
    whatever NumPy's global state (a conditional dimension once drew from it)."""
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    def draw(seed: int, global_seed: int) -> list[dict]:
        np.random.seed(global_seed)
        state = np.random.RandomState(seed)  # one state for the whole sweep, as the generator keeps it
        return [resolved["config"] for _ in range(12)
                for _, resolved in generate_variants({"config": to_param_space(SPACE)}, random_state=state)]

    first = draw(seed=7, global_seed=0)
    assert draw(seed=7, global_seed=1) == first
    assert any(cfg[TOP] is not None for cfg in first)  # the conditional dimension was drawn
    assert draw(seed=8, global_seed=0) != first
