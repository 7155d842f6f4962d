"""The sweep's console lines: one per ended trial, with its best objective and the best trial so far."""

from __future__ import annotations

from types import SimpleNamespace

from tl_ray.tune.progress import SweepProgress


def test_one_line_per_ended_trial_naming_early_stops_and_the_leader(capsys):
    progress = SweepProgress("val_loss", "min", total=3, epochs=3)
    progress.setup()
    a, b, c = (SimpleNamespace(trial_id=t, last_result={"training_iteration": n}) for t, n in (("a", 3), ("b", 1), ("c", 2)))
    for trial, losses in ((a, [0.9, 0.5, 0.6]), (b, [0.4]), (c, [1.0, 1.1])):
        for loss in losses:
            progress.on_trial_result(0, [], trial, {"val_loss": loss})
    progress.on_trial_complete(0, [], b)
    progress.on_trial_complete(0, [], a)
    progress.on_trial_error(0, [], c)
    progress.on_experiment_end([])
    assert capsys.readouterr().out.splitlines() == [
        "[tune] 1/3 trial b stopped by the scheduler after 1 epoch: val_loss 0.4000; best so far val_loss 0.4000 (b)",
        "[tune] 2/3 trial a done after 3 epochs: val_loss 0.5000; best so far val_loss 0.4000 (b)",
        "[tune] 3/3 trial c failed (its cause is said below; its traceback is in the full log and its error.txt): "
        "val_loss 1.0000; best so far val_loss 0.4000 (b)",
    ]
