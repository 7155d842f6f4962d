"""params.png ranks trials by tune.mode: a loss swept with mode min plots each trial's lowest value."""

from __future__ import annotations

import json

import matplotlib.axes
import pytest

from tl_ray.tune.report import build_report


def _trial(root, name: str, dropout: float, losses: list[float]) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"model.head.dropout": dropout}))
    rows = [{"training_iteration": e, "val_loss": v, "time_total_s": float(e)} for e, v in enumerate(losses, 1)]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("mode, best", [("min", [0.3, 0.6]), ("max", [0.9, 0.95])])
def test_params_png_plots_each_trials_best_by_the_mode(tmp_path, monkeypatch, mode, best):
    exp = tmp_path / "exp"
    _trial(exp, "tune_trial_a1b2c_00000_0", 0.1, [0.9, 0.3, 0.5])
    _trial(exp, "tune_trial_a1b2c_00001_1", 0.4, [0.95, 0.6])
    plotted = []
    real_scatter = matplotlib.axes.Axes.scatter

    def scatter(ax, xs, ys, *args, **kwargs):
        plotted.append(sorted(zip(xs, ys)))
        return real_scatter(ax, xs, ys, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    report = build_report(str(exp), "val_loss", mode)
    assert [(0.1, best[0]), (0.4, best[1])] in plotted  # params.png's one panel: model.head.dropout
    assert (exp / "report" / "params.png").stat().st_size > 0
    # The table ranks by the same mode: the first row is the trial with the best point.
    assert report.table.splitlines()[1].split()[0] == ("a1b2c_00000" if mode == "min" else "a1b2c_00001")
