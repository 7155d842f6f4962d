"""tune.checkpoint_on: which due checkpoints a trial writes."""

from __future__ import annotations

import pytest

from tl_ray.spec.tune import TuneSpec
from tl_ray.train.loop import writes_checkpoint


@pytest.mark.parametrize("mode, values, written", [
    ("max", [0.5, 0.6, 0.55, 0.6, 0.7], [True, True, False, False, True]),
    ("min", [0.9, 0.7, 0.8, 0.6], [True, True, False, True]),
])
def test_improvement_writes_only_epochs_that_beat_the_best_checkpoint(mode, values, written):
    tune = TuneSpec(mode=mode, checkpoint_on="improvement")
    best, out = None, []
    for value in values:
        out.append(writes_checkpoint(tune, value, best))
        best = value if out[-1] else best
    assert out == written


@pytest.mark.parametrize("settings", [{"checkpoint_on": "every"},
                                      {"scheduler": "pbt", "space": {"train.learning_rate": "uniform(0.1, 0.2)"}}])
def test_every_and_pbt_write_each_due_checkpoint(settings):
    assert writes_checkpoint(TuneSpec(**settings), 0.1, 0.9)


def test_improvement_is_the_default():
    assert not writes_checkpoint(TuneSpec(), 0.1, 0.9)


def test_an_epoch_without_the_metric_writes_its_checkpoint():
    assert writes_checkpoint(TuneSpec(checkpoint_on="improvement"), None, 0.9)
