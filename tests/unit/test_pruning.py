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
