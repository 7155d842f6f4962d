"""Staged sweeps without Ray: spec validation, promotion of the best fraction, stage overrides."""

from __future__ import annotations

import pytest

from tl_ray.errors import ConfigError
from tl_ray.spec import StageSpec, validate
from tl_ray.tune.staged import promoted, stage_overrides, stage_spec
from tl_ray.tune.tuner import TrialRow

STAGES = [
    {"name": "heads", "freeze": {"mode": "feature_extraction"}, "epochs": 3},
    {"name": "top", "freeze": {"mode": "fine_tune", "unfreeze_top": 10}, "epochs": 2, "keep": 0.25, "lr_factor": 0.1},
]


def spec(**tune):
    return validate({
        "name": "s", "storage": "/tmp/s", "data": {"train": "d/train"},
        "model": {"backbone": "mobilenet_v2", "weights": "none"},
        "train": {"learning_rate": 0.002, "epochs": 9},
        "tune": {"num_samples": 8, "space": {"train.learning_rate": "loguniform(1e-4, 1e-2)"}, "stages": STAGES, **tune},
    })


def row(i: int, metric: float | None, checkpoint: str | None = "ck") -> TrialRow:
    return TrialRow(f"t{i}", {"train.learning_rate": 0.001 * (i + 1)}, metric, 3, "DONE", checkpoint and f"{checkpoint}{i}")


def test_best_fraction_is_promoted_rounding_up_and_skipping_rows_without_checkpoints():
    rows = [row(0, 0.5), row(1, 0.9), row(2, 0.7), row(3, None), row(4, 0.8, None), row(5, 0.6)]
    assert [r.trial_id for r in promoted(rows, 0.4, "max")] == ["t1", "t2"]  # ceil(0.4 * 4 scored)
    assert [r.trial_id for r in promoted(rows, 0.4, "min")] == ["t0", "t5"]
    assert [r.trial_id for r in promoted(rows, 0.01, "max")] == ["t1"]  # at least one
    assert promoted([row(0, None)], 0.5, "max") == []


def test_stage_spec_sets_freeze_and_epochs_and_overrides_warm_start_from_the_parent():
    s = spec()
    top = s.tune.stages[1]
    base = stage_spec(s, top)
    assert base.model.freeze.mode == "fine_tune" and base.model.freeze.unfreeze_top == 10
    assert base.train.epochs == 2 and base.tune.stages == []
    over = stage_overrides(s, top, row(1, 0.9))
    assert over["train.init_from"] == "ck1"
    assert over["train.learning_rate"] == pytest.approx(0.002 * 0.1)
    fixed = StageSpec(name="deep", freeze={"mode": "fine_tune"}, epochs=1, learning_rate=1e-5)
    assert stage_overrides(s, fixed, row(1, 0.9))["train.learning_rate"] == 1e-5


@pytest.mark.parametrize("tune, message", [
    ({"space": {"model.freeze.mode": "choice([feature_extraction, fine_tune])"}}, "cannot search model.freeze.mode"),
    ({"scheduler": "pbt"}, "cannot run with scheduler pbt"),
    ({"stages": [STAGES[0], STAGES[0]]}, "names must differ"),
])
def test_bad_staged_specs_are_config_errors(tune, message):
    with pytest.raises(ConfigError, match=message):
        spec(**tune)


def test_head_only_trials_ask_for_their_own_resources_next_to_fine_tuning_trials():
    from tl_ray.tune.tuner import trial_resources

    s = validate({
        "name": "r", "storage": "/tmp/r", "data": {"train": "d/train"},
        "model": {"backbone": "mobilenet_v2", "weights": "none"},
        "train": {"gpus_per_worker": 1, "head_trial_gpus": 0.25, "cpus_per_worker": 2},
        "tune": {"space": {"model.freeze.mode": "choice([feature_extraction, fine_tune])"}},
    })
    assert trial_resources(s, {"model.freeze.mode": "feature_extraction"}) == {"CPU": 2, "GPU": 0.25}
    assert trial_resources(s, {"model.freeze.mode": "fine_tune"}) == {"CPU": 2, "GPU": 1}
    # Augmentation makes features differ per epoch: such a trial runs the base, on the fine-tuning resources.
    assert trial_resources(s, {"model.freeze.mode": "feature_extraction", "data.augment.flip": True}) == {"CPU": 2, "GPU": 1}
    cpu_heads = validate({**s.to_dict(), "train": {**s.to_dict()["train"], "head_trial_gpus": 0}})
    assert trial_resources(cpu_heads, {"model.freeze.mode": "feature_extraction"}) == {"CPU": 2}


def test_feature_cache_off_written_bare_in_yaml_means_off():
    from tl_ray.spec import load_spec

    s = spec()
    assert validate({**s.to_dict(), "train": {**s.to_dict()["train"], "feature_cache": False}}).train.feature_cache == "off"
    assert load_spec("jobs/quickstart/target.yaml", overrides=["train.feature_cache=off"]).train.feature_cache == "off"
