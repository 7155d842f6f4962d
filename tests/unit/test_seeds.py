"""``run.seeds``: the transferred-vs-scratch figures over seeds, the seed promoted, the report PNG and the
registry record (the runs themselves: tests/integration/test_seeds.py)."""

from __future__ import annotations

import pytest

from tl_ray.errors import TrialError
from tl_ray.seeds import SeedComparison, SeedRun, mean_std, scratch_spec, seed_overrides
from tl_ray.spec import validate

SPEC = {
    "name": "seeds", "data": {"train": "d/train", "validation": "d/val", "test": "d/test", "seed": 10},
    "model": {"backbone": "mobilenet_v2", "freeze": {"mode": "fine_tune"}},
    "train": {"epochs": 6, "seed": 3, "probe_epochs": 2},
    "tune": {"grace_period": 5, "space": {
        "model.freeze.mode": "choice([feature_extraction, fine_tune])",
        "train.recipe": {"when": {"model.freeze.mode": "fine_tune"}, "sample": "choice([plain, lp_ft])"},
        "train.learning_rate": "loguniform(1e-4, 1e-2)"}},
    "run": {"seeds": 3, "compare_from_scratch": True},
}


def comparison() -> SeedComparison:
    # Seed 2 has the best test accuracy, seed 1 the best validation accuracy.
    transferred = [SeedRun(0, 0.80, 0.81, "t0", "ck0"), SeedRun(1, 0.86, 0.79, "t1", "ck1"),
                   SeedRun(2, 0.84, 0.83, "t2", "ck2")]
    scratch = [SeedRun(0, 0.70, 0.70, "s0", "cs0"), SeedRun(1, 0.72, 0.74, "s1", "cs1"),
               SeedRun(2, None, None, "s2", None)]  # a failed run
    return SeedComparison("val_accuracy", "max", transferred, scratch)


def test_mean_and_sample_std_gap_and_the_seed_promoted_on_validation_never_on_test():
    c = comparison()
    assert c.summary(c.transferred) == (pytest.approx(0.81), pytest.approx(0.02), 3)
    assert c.summary(c.scratch) == (pytest.approx(0.72), pytest.approx(mean_std([0.70, 0.74])[1]), 2)
    assert c.gap == pytest.approx(0.09)
    assert c.promoted().seed == 1  # best val_accuracy, although seed 2 tests better
    assert SeedComparison("val_loss", "min", c.transferred).promoted().seed == 0


def test_console_lines_and_registry_record():
    c = comparison()
    lines = c.lines()
    assert lines[0] == "[seeds] transferred: test accuracy 0.8100 ± 0.0200 over 3 seeds (0.8100, 0.7900, 0.8300)"
    assert lines[1].startswith("[seeds] from scratch: test accuracy 0.7200 ± 0.0283 over 2 seeds (0.7000, 0.7400, "
                               "failed)")
    assert lines[2] == "[seeds] gap (transferred - from scratch): +9.0 points"
    assert "promoting seed 1 (trial t1): the best val_accuracy" in lines[3]
    meta = c.to_metadata()
    assert meta["promoted_seed"] == 1 and meta["promoted_trial"] == "t1"
    assert meta["transferred"] == {"mean": pytest.approx(0.81), "std": pytest.approx(0.02), "n": 3}
    assert meta["scratch"]["n"] == 2 and meta["gap"] == pytest.approx(0.09)
    assert [r["test_accuracy"] for r in meta["runs"]["scratch"]] == [0.70, 0.74, None]


def test_no_finished_transferred_seed_is_an_error_naming_the_metric():
    with pytest.raises(TrialError, match="no seed of the transferred configuration finished with 'val_accuracy'"):
        SeedComparison("val_accuracy", "max", [SeedRun(0, None, None)]).promoted()


def test_plot_writes_a_png(tmp_path):
    path = comparison().plot(tmp_path / "seeds.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_seed_run_is_the_trial_configuration_with_both_seeds_moved():
    spec = validate(SPEC)
    params = {"model.freeze.mode": "feature_extraction", "train.recipe": None, "train.learning_rate": 0.002}
    # The condition of train.recipe failed in that trial: the spec's default applies, as in the trial.
    assert seed_overrides(spec, params, 2) == {"model.freeze.mode": "feature_extraction",
                                               "train.learning_rate": 0.002, "train.seed": 5, "data.seed": 12}


def test_the_scratch_baseline_of_an_lp_ft_spec_trains_every_layer_from_random_weights_every_epoch():
    from tl_ray.train.loop import plan_phases

    spec = validate({**SPEC, "train": {"epochs": 6, "recipe": "lp_ft", "probe_epochs": 2}, "tune": {}})
    scratch = scratch_spec(spec)
    assert (scratch.model.weights, scratch.train.recipe, scratch.train.epochs) == ("none", "plain", 6)
    assert [(p.epochs, p.freeze.mode, p.augment) for p in plan_phases(scratch)] == [(6, "full", True)]


def test_models_show_sums_the_record_up_in_one_line():
    from tl_ray.cli.models import _seeds_line

    assert _seeds_line(comparison().to_metadata()) == (
        "test accuracy transferred 0.8100 ± 0.0200 (n=3), from scratch 0.7200 ± 0.0283 (n=2), gap +9.0 points; "
        "promoted seed 1 (best val_accuracy (max))")


def test_the_seed_runs_are_not_held_to_the_searchs_concurrency_limit(monkeypatch):
    from tl_ray.tune import sweep

    seen = {}

    def run_children(base, experiment, variants, parent):
        seen["base"] = base
        return type("Result", (), {"rows": []})()

    monkeypatch.setattr(sweep, "connect_ray", lambda: None)
    monkeypatch.setattr(sweep, "with_cluster_gpus", lambda spec: spec)
    monkeypatch.setattr(sweep, "run_children", run_children)
    spec = validate({**SPEC, "tune": {**SPEC["tune"], "scheduler": "asha", "max_concurrent_trials": 1}})
    sweep.run_variants(spec, "exp-seeds", {"transferred-0": seed_overrides(spec, {}, 0)})
    base = seen["base"]
    assert (base.tune.max_concurrent_trials, base.tune.scheduler, base.tune.space) == (0, "fifo", {})
    assert spec.tune.max_concurrent_trials == 1  # the caller's spec is left as it was
