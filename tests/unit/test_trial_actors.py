"""Tune's trial actors get no runtime environment of their own, so they can start in Ray's idle workers."""

from __future__ import annotations

from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE, _ActorClassCache

from tl_ray.tune.actors import trial_actors_in_idle_workers


def _options(cls) -> dict:
    """The options Tune gives the actors of a trainable class (``ray.remote`` without a cluster)."""
    return _ActorClassCache().get(cls)._default_options


def test_inside_the_context_trial_actors_have_no_runtime_environment_and_tunes_default_is_restored(monkeypatch):
    for name in ENV_VARS_TO_PROPAGATE:
        monkeypatch.delenv(name, raising=False)
    class Trainable:
        pass

    class Later:
        pass

    before = dict(DEFAULT_ENV_VARS)
    assert "PL_DISABLE_FORK" in before  # what Tune gives every trial actor, which the context takes off
    with trial_actors_in_idle_workers():
        assert _options(Trainable)["runtime_env"] == {}
    assert DEFAULT_ENV_VARS == before
    assert _options(Later)["runtime_env"] == {"env_vars": before}


def test_the_drivers_credentials_still_reach_the_trial_actors(monkeypatch):
    class Trainable:
        pass

    for name in ENV_VARS_TO_PROPAGATE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    with trial_actors_in_idle_workers():
        assert _options(Trainable)["runtime_env"] == {"env_vars": {"AWS_ACCESS_KEY_ID": "test-key"}}


def test_a_failing_sweep_restores_tunes_default():
    before = dict(DEFAULT_ENV_VARS)
    try:
        with trial_actors_in_idle_workers():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert DEFAULT_ENV_VARS == before


def test_run_tuner_fits_inside_the_context():
    import inspect

    from tl_ray.tune import sweep

    source = inspect.getsource(sweep.run_tuner)
    fit = source.index("grid = tuner.fit()")
    assert "trial_actors_in_idle_workers()" in source[source.rindex("with ", 0, fit):fit]
