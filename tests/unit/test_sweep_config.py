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
    from tl_ray.tune.sweep import _scheduler

    spec = load_spec(MINIMAL, overrides=SPACE + [f"tune.scheduler={scheduler}"])
    assert type(_scheduler(spec)).__name__ == cls


def test_pbt_mutates_the_searched_dimensions():
    from tl_ray.tune.sweep import _scheduler

    spec = load_spec(MINIMAL, overrides=SPACE + ["tune.scheduler=pbt"])
    assert set(_scheduler(spec)._hyperparam_mutations) == {"train.learning_rate"}


def test_pbt_refuses_multi_worker_trials():
    from tl_ray.tune.sweep import _scheduler

    spec = load_spec(MINIMAL, overrides=SPACE + ["tune.scheduler=pbt", "train.workers=2"])
    with pytest.raises(ConfigError, match="single-worker trials"):
        _scheduler(spec)


def test_pbt_without_a_space_is_a_config_error():
    with pytest.raises(ConfigError, match="pbt needs at least one searched dimension"):
        load_spec(MINIMAL, overrides=["tune.scheduler=pbt"])


def test_optuna_search():
    from tl_ray.tune.sweep import _search_alg

    spec = load_spec(MINIMAL, overrides=SPACE + ["tune.search=optuna"])
    assert type(_search_alg(spec)).__name__ == "OptunaSearch"


def test_optuna_refuses_grid_dimensions():
    with pytest.raises(ConfigError, match="optuna cannot sample grid"):
        load_spec(MINIMAL, overrides=["tune.search=optuna", "tune.space={train.batch_size: 'grid([32, 64])'}"])
