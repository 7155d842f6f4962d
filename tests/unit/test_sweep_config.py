"""Sweep configuration without Ray: schedulers, search algorithms and their bad combinations."""

from pathlib import Path

import pytest

from tl_ray.errors import ConfigError
from tl_ray.spec import load_spec

MINIMAL = Path(__file__).resolve().parents[1] / "data" / "specs" / "good" / "minimal.yaml"
SPACE = ["tune.space={train.learning_rate: 'loguniform(1.0e-4, 1.0e-2)'}"]


@pytest.mark.parametrize(
    "scheduler, cls",
    [
        ("asha", "AsyncHyperBandScheduler"),
        ("hyperband", "HyperBandScheduler"),
        ("median", "MedianStoppingRule"),
        ("pbt", "PopulationBasedTraining"),
        ("fifo", "FIFOScheduler"),
    ],
)
def test_scheduler_kinds(scheduler, cls):
    from tl_ray.tune.tuner import _scheduler

    spec = load_spec(MINIMAL, overrides=SPACE + [f"tune.scheduler={scheduler}"])
    assert type(_scheduler(spec)).__name__ == cls


def test_pbt_mutates_the_searched_dimensions():
    from tl_ray.tune.tuner import _scheduler

    spec = load_spec(MINIMAL, overrides=SPACE + ["tune.scheduler=pbt"])
    assert set(_scheduler(spec)._hyperparam_mutations) == {"train.learning_rate"}


def test_pbt_perturbations_stay_within_what_each_dimension_can_give():
    """Ray's own explore step (×0.8 / ×1.2, integers truncated), repeated from values at the ranges' ends,
    with the scheduler's settings: every value stays one the dimension (and so its field) can take."""
    import random

    from ray.tune.schedulers.pbt import _explore

    from tl_ray.spec.space import parse_space
    from tl_ray.tune.tuner import _scheduler

    space = {"train.learning_rate": "loguniform(1.0e-4, 1.0e-2)", "model.head.dropout": "uniform(0.0, 0.9)",
             "train.batch_size": "randint(16, 20)", "train.label_smoothing": "quniform(0.0, 0.3, 0.1)"}
    spec = load_spec(MINIMAL, overrides=[f"tune.space={space}", "tune.scheduler=pbt"])
    pbt = _scheduler(spec)
    dists = parse_space(space)
    random.seed(0)
    for start in ({"train.learning_rate": 9.9e-3, "model.head.dropout": 0.89, "train.batch_size": 19,
                   "train.label_smoothing": 0.3},
                  {"train.learning_rate": 1.0e-4, "model.head.dropout": 0.0, "train.batch_size": 16,
                   "train.label_smoothing": 0.0}):
        config = dict(start)
        for _ in range(50):
            config, _ = _explore(config, pbt._hyperparam_mutations, pbt._resample_probability,
                                 pbt._perturbation_factors, pbt._custom_explore_fn)
            for key, value in config.items():
                assert dists[key].can_take(value), (key, value)
        assert config != start  # it did perturb them
    high = {"train.learning_rate": 9.0e-3, "model.head.dropout": 0.85, "train.batch_size": 19,
            "train.label_smoothing": 0.3}
    up, _ = _explore(high, pbt._hyperparam_mutations, 0.0, (1.2,), pbt._custom_explore_fn)
    # Without the bound: 0.0108, 1.02, 22, 0.36.
    assert up == {"train.learning_rate": dists["train.learning_rate"].extremes()[1],
                  "model.head.dropout": dists["model.head.dropout"].extremes()[1], "train.batch_size": 19,
                  "train.label_smoothing": pytest.approx(0.3)}


def test_pbt_refuses_multi_worker_trials():
    from tl_ray.tune.tuner import _scheduler

    spec = load_spec(MINIMAL, overrides=SPACE + ["tune.scheduler=pbt", "train.workers=2"])
    with pytest.raises(ConfigError, match="single-worker trials"):
        _scheduler(spec)


def test_pbt_without_a_space_is_a_config_error():
    with pytest.raises(ConfigError, match="pbt needs at least one searched dimension"):
        load_spec(MINIMAL, overrides=["tune.scheduler=pbt"])


def test_optuna_search():
    from tl_ray.tune.tuner import _search_alg

    spec = load_spec(MINIMAL, overrides=SPACE + ["tune.search=optuna"])
    assert type(_search_alg(spec)).__name__ == "OptunaSearch"


def test_optuna_refuses_grid_dimensions():
    with pytest.raises(ConfigError, match="optuna cannot sample grid"):
        load_spec(MINIMAL, overrides=["tune.search=optuna", "tune.space={train.batch_size: 'grid([32, 64])'}"])


def test_the_same_spec_and_tune_seed_draw_the_same_trials():
    """The quickstart's sweep (a conditional LP-FT dimension included) as ``tune.Tuner`` runs it: Tune first
    swaps non-primitive values for placeholders that each trial resolves (``tune.run``, then the controller),
    then the search draws. The same trials on every run, whatever NumPy's global state; another tune.seed
    draws others."""
    import copy

    import numpy as np
    from ray import tune
    from ray.tune.impl.placeholder import create_resolvers_map, inject_placeholders, resolve_placeholders

    from tl_ray.tune.space import to_param_space
    from tl_ray.tune.tuner import _search_alg

    tune.register_trainable("tlray_seed_probe", lambda config: None)

    def trials(seed: int, global_seed: int) -> list[dict]:
        spec = load_spec("jobs/quickstart/target.yaml", overrides={"tune.seed": seed})
        np.random.seed(global_seed)
        resolvers = create_resolvers_map()
        config = inject_placeholders(copy.deepcopy(to_param_space(spec.tune.space)), resolvers)
        search = _search_alg(spec)
        search.add_configurations({"sweep": {"run": "tlray_seed_probe", "num_samples": spec.tune.num_samples,
                                             "config": config}})
        out = []
        while (trial := search.next_trial()) is not None:
            resolve_placeholders(trial.config, resolvers)
            out.append(trial.config)
        return out

    first = trials(seed=0, global_seed=0)
    assert len(first) == 8 and trials(seed=0, global_seed=1) == first
    assert {c["train.recipe"] for c in first} == {None, "plain", "lp_ft"}  # the conditional dimension was drawn
    assert trials(seed=1, global_seed=0) != first


def test_a_seeded_random_search_keeps_the_concurrency_limit():
    """Tune ignores TuneConfig's max_concurrent_trials for a search generator (the seeded random search)."""
    from tl_ray.tune.tuner import _search_alg

    spec = load_spec(MINIMAL, overrides=SPACE + ["tune.seed=0", "tune.max_concurrent_trials=2"])
    assert _search_alg(spec, 2).max_concurrent == 2


def test_every_backbone_and_size_the_space_lists_is_checked_before_any_trial(monkeypatch):
    """A searched backbone that refuses a searched image size fails the preflight, not one trial of the sweep;
    a pair a ``when`` condition rules out is not checked."""
    from tl_ray.tune import sweep

    space = {"model.backbone": "choice([resnet50, xception])", "data.image_size": "choice([[32, 32], [96, 96]])"}
    spec = load_spec(MINIMAL, overrides=[f"tune.space={space}"])
    assert set(sweep.backbones_and_sizes(spec)) == {("resnet50", (32, 32)), ("resnet50", (96, 96)),
                                                    ("xception", (32, 32)), ("xception", (96, 96))}
    monkeypatch.setattr(sweep, "check_reachable", lambda address: None)
    monkeypatch.setattr(sweep, "read_manifest", lambda uri: None)  # the spec's dataset does not exist here
    with pytest.raises(ConfigError, match=r"at least 71x71 for backbone 'xception'\. Received: \[32, 32\]"):
        sweep.preflight(spec)

    space["model.backbone"] = {"when": {"data.image_size": [[96, 96]]}, "sample": "choice([resnet50, xception])"}
    spec = load_spec(MINIMAL, overrides=[f"tune.space={space}", "model.weights=none"])
    assert set(sweep.backbones_and_sizes(spec)) == {("resnet50", (32, 32)), ("resnet50", (96, 96)), ("xception", (96, 96))}
    sweep.preflight(spec)


def test_every_dataset_the_space_lists_is_checked_before_any_trial(monkeypatch):
    from tl_ray.tune import sweep

    read = []
    monkeypatch.setattr(sweep, "check_reachable", lambda address: None)
    monkeypatch.setattr(sweep, "read_manifest", read.append)
    space = {"data.validation": "choice([datasets/x/val, datasets/x/val2])"}
    spec = load_spec(MINIMAL, overrides=[f"tune.space={space}", "model.weights=none", "storage=/s"])
    sweep.preflight(spec)
    assert read == ["/s/datasets/x/train", "/s/datasets/x/val", "/s/datasets/x/val2"]


def test_tl_ray_train_checks_the_spec_as_written_not_the_values_of_its_space(monkeypatch):
    """`tl-ray train` runs one trial of the spec as written: a backbone its space lists is not that trial's."""
    from tl_ray import pipeline

    checked = []
    monkeypatch.setattr(pipeline.sweep, "check_reachable", lambda address: None)
    monkeypatch.setattr(pipeline.sweep, "read_manifest", lambda uri: None)
    real = pipeline.sweep.get_backbone
    monkeypatch.setattr(pipeline.sweep, "get_backbone", lambda name: checked.append(name) or real(name))

    def stop():
        raise KeyboardInterrupt  # the preflight passed: Ray would start here

    monkeypatch.setattr(pipeline, "ensure_ray", stop)
    spec = load_spec(MINIMAL, overrides=["tune.space={model.backbone: 'choice([resnet50, xception])'}",
                                         "model.weights=none"])
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_once(spec)
    assert checked == ["resnet50"]
