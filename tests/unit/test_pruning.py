"""Which of a trial's checkpoints ``tune.keep_checkpoints`` keeps once the trial has ended."""

from tl_ray.tune.pruning import kept

CHECKPOINTS = [("c0", 0.5), ("c1", 0.7), ("c2", None), ("c3", 0.6), ("c4", 0.4)]


def test_the_best_by_the_metric_and_the_latest_are_kept_in_their_order():
    assert kept(CHECKPOINTS, 2, "max") == [("c1", 0.7), ("c3", 0.6), ("c4", 0.4)]
    assert kept(CHECKPOINTS, 1, "min") == [("c4", 0.4)]
    assert kept(CHECKPOINTS, 1, "max") == [("c1", 0.7), ("c4", 0.4)]


def test_zero_or_enough_room_keeps_every_checkpoint():
    assert kept(CHECKPOINTS, 0, "max") == CHECKPOINTS
    assert kept(CHECKPOINTS, 5, "min") == CHECKPOINTS


def test_a_checkpoint_without_a_metric_is_kept_only_as_the_latest():
    assert kept([("a", 0.1), ("b", float("nan")), ("c", None)], 1, "max") == [("a", 0.1), ("c", None)]


def test_an_ended_trials_checkpoints_go_once_a_saved_state_has_it_ended(tmp_path):
    """Tune calls get_state at each save of the experiment state; the trial ended before the first save."""
    from types import SimpleNamespace

    from ray.tune import Checkpoint

    from tl_ray.tune.pruning import KeepCheckpoints

    callback = KeepCheckpoints(1, "val_accuracy", "max")
    trial = SimpleNamespace(trial_id="t1", last_result={})
    folders = []
    for i, value in enumerate([0.5, 0.7, 0.6, 0.4]):
        folders.append(tmp_path / f"checkpoint_{i:06d}")
        folders[-1].mkdir()
        trial.last_result = {"val_accuracy": value}
        callback.on_checkpoint(i, [trial], trial, Checkpoint.from_directory(str(folders[-1])))
    callback.on_trial_complete(4, [trial], trial)
    state = callback.get_state()  # the save that records the trial as ended
    assert all(f.exists() for f in folders)
    restored = KeepCheckpoints(1, "val_accuracy", "max")  # a resumed driver's, from that save
    restored.set_state(state)
    restored.get_state()  # the next save
    assert [f.name for f in folders if f.exists()] == ["checkpoint_000001", "checkpoint_000003"]


def test_at_the_end_of_the_sweep_what_its_last_save_has_ended_is_deleted(tmp_path):
    from types import SimpleNamespace

    from ray.tune import Checkpoint

    from tl_ray.tune.pruning import KeepCheckpoints

    callback = KeepCheckpoints(1, "val_loss", "min")
    trial = SimpleNamespace(trial_id="t1", last_result={})
    for i, value in enumerate([0.5, 0.4, 0.6]):
        (tmp_path / str(i)).mkdir()
        trial.last_result = {"val_loss": value}
        callback.on_checkpoint(i, [trial], trial, Checkpoint.from_directory(str(tmp_path / str(i))))
    callback.on_trial_error(3, [trial], trial)
    callback.on_experiment_end([trial])  # no save since it ended: kept for a resume
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "2"]
    callback.get_state()  # the sweep's last save
    callback.on_experiment_end([trial])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]
