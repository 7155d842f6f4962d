"""The sweep report: a table of trials and PNG plots, written next to the experiment.

Reads what Ray Tune stored for each trial (``params.json``, ``result.json``)
from the store, local or S3, and writes ``report/trials.txt``,
``report/learning_curves.png`` and ``report/params.png`` into the experiment
folder. Tune's own TensorBoard event files sit in each trial's folder.

Example:

>>> report = build_report("./tlray-store/experiments/fashion-transfer-20261125-083335", "val_accuracy", "max")
>>> print(report.table)
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tl_ray import store
from tl_ray.errors import ConfigError


@dataclass
class TrialSummary:
    name: str
    params: dict
    history: list[dict]
    stage: str = ""
    failed: bool | None = False  # ended in error, as Tune saved it; None: failed once, how it ended unknown

    @property
    def started(self) -> float:
        return min((float(r.get("timestamp", 0.0)) for r in self.history), default=0.0)

    def best(self, metric: str, mode: str) -> float | None:
        values = [r[metric] for r in self.history if isinstance(r.get(metric), (int, float))]
        if not values:
            return None
        return max(values) if mode == "max" else min(values)

    @property
    def epochs(self) -> int:
        return max((int(r.get("training_iteration", 0)) for r in self.history), default=0)

    @property
    def wall_time_s(self) -> float:
        return max((float(r.get("time_total_s", 0.0)) for r in self.history), default=0.0)


@dataclass
class Report:
    experiment: str
    metric: str
    mode: str
    trials: list[TrialSummary] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    table: str = ""


def load_trials(experiment_uri: str) -> list[TrialSummary]:
    """Every trial folder of an experiment with its parameters and reported rows.

    A staged sweep's folder holds one experiment per stage; their trials come stage by stage.
    """
    names = [n for n in store.list_dir(experiment_uri) if is_trial_dir(n)]
    if not names:
        stages = [n for n in store.list_dir(experiment_uri)
                  if any(is_trial_dir(t) for t in store.list_dir(store.join(experiment_uri, n)))]
        if stages:
            # Stage folders sort by their first trial's start, which is the order they ran in.
            found = [(stage, _load(store.join(experiment_uri, stage), stage)) for stage in stages]
            found.sort(key=lambda item: min((t.started for t in item[1]), default=0.0))
            return [t for _, trials in found for t in trials]
    if not names:
        raise ConfigError(
            f"no trials under {experiment_uri!r}. Name an experiment folder of the store's experiments/, "
            "e.g. tl-ray report fashion-transfer-20261125-083335 --storage ./tlray-store"
        )
    return _load(experiment_uri, "")


def is_trial_dir(name: str) -> bool:
    """Tune names trial folders after the trial function: tune_trial_..., stage_trial_..."""
    return re.match(r"^(tune|stage)_trial_[0-9a-f]+_\d+", name) is not None


def _saved_statuses(experiment_uri: str) -> dict[str, str]:
    """Each trial's status in the experiment state Tune saved last, by trial id; empty when there is none."""
    from tl_ray.tune.interrupt import saved_trial_statuses

    try:
        fs, path = store.filesystem(experiment_uri)
        return saved_trial_statuses(path, fs if store.is_s3(experiment_uri) else None)
    except Exception:  # noqa: BLE001 - no state saved (or unreadable): the trial folders alone
        return {}


def _load(experiment_uri: str, stage: str) -> list[TrialSummary]:
    names = [n for n in store.list_dir(experiment_uri) if is_trial_dir(n)]
    statuses = _saved_statuses(experiment_uri)
    out = []
    for name in names:
        base = store.join(experiment_uri, name)
        params = json.loads(store.read_text(store.join(base, "params.json"))) if store.exists(
            store.join(base, "params.json")) else {}
        rows = []
        if store.exists(store.join(base, "result.json")):
            rows = [json.loads(line) for line in store.read_text(store.join(base, "result.json")).splitlines() if line.strip()]
        m = re.match(r"(?:tune|stage)_trial_([0-9a-f]+_\d+)", name)
        trial_id = m.group(1) if m else name
        # error.txt stays after a restart that recovered: Tune's saved status says how the trial ended. Without
        # one, a trial that failed and never trained its epochs is taken to have ended in error.
        if trial_id in statuses:
            failed: bool | None = statuses[trial_id] == "ERROR"
        else:
            failed = None if store.exists(store.join(base, "error.txt")) else False
        out.append(TrialSummary(trial_id, params, rows, stage, failed=failed))
    return out


def _table(trials: list[TrialSummary], metric: str, mode: str, planned_epochs: int | dict | None) -> str:
    keys = sorted({k for t in trials for k in t.params})
    staged = any(t.stage for t in trials)
    head = ["trial", *(["stage"] if staged else []), *keys, f"best {metric}", "epochs", "wall s", "status"]
    rows = []
    order = [t.stage for t in trials]
    for t in sorted(trials, key=lambda t: (order.index(t.stage), t.best(metric, mode) is None, -(t.best(metric, mode) or 0) if mode == "max" else (t.best(metric, mode) or 0))):
        best = t.best(metric, mode)
        planned = planned_epochs.get(t.stage) if isinstance(planned_epochs, dict) else planned_epochs
        finished = bool(t.history) and not (planned and t.epochs < planned)
        ended_in_error = t.failed or (t.failed is None and not finished)
        status = "error" if ended_in_error else "no results" if not t.history else (
            "done" if finished else "stopped early")
        rows.append([t.name, *([t.stage] if staged else []), *(_fmt(t.params.get(k)) for k in keys), _fmt(best),
                     str(t.epochs), f"{t.wall_time_s:.0f}", status])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in [head, *rows])


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _param_points(trials: list[TrialSummary], key: str, metric: str, mode: str) -> list[tuple]:
    """``(value of key, best metric)`` of each trial that has both: one point of params.png's panel for ``key``.

    A trial's best is its highest ``metric`` when ``mode`` is max, its lowest when min. A conditional dimension
    is absent (None) in trials where its condition failed; they give no point.
    """
    return [(t.params.get(key), t.best(metric, mode)) for t in trials
            if t.best(metric, mode) is not None and t.params.get(key) is not None]


def _plots(trials: list[TrialSummary], metric: str, mode: str, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trials:
        xs = [r.get("training_iteration") for r in t.history if metric in r]
        ys = [r[metric] for r in t.history if metric in r]
        if xs:
            ax.plot(xs, ys, marker=".", label=t.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"learning curves ({len(trials)} trials)")
    if len(trials) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    files.append(out_dir / "learning_curves.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    keys = sorted({k for t in trials for k in t.params})
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
        for ax, key in zip(axes[0], keys):
            pts = _param_points(trials, key, metric, mode)
            xs = [p[0] for p in pts]
            numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
            if numeric:
                ax.scatter(xs, [p[1] for p in pts])
                if key.endswith("learning_rate"):
                    ax.set_xscale("log")
            else:
                labels = sorted({str(x) for x in xs})
                ax.scatter([labels.index(str(x)) for x in xs], [p[1] for p in pts])
                ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=7)
            ax.set_xlabel(key)
            ax.set_ylabel(f"best {metric} ({mode})")
        fig.tight_layout()
        files.append(out_dir / "params.png")
        fig.savefig(files[-1], dpi=100)
        plt.close(fig)
    return files


def build_report(
    experiment_uri: str, metric: str, mode: str = "max", planned_epochs: int | dict[str, int] | None = None
) -> Report:
    """Writes the table and plots into ``<experiment>/report/`` and returns them.

    ``planned_epochs`` (one number, or one per stage of a staged sweep) tells stopped trials from finished ones.

    Raises:
        ConfigError: the folder holds no trials.
    """
    trials = load_trials(experiment_uri)
    report = Report(experiment_uri, metric, mode, trials)
    report.table = _table(trials, metric, mode, planned_epochs)
    with tempfile.TemporaryDirectory(prefix="tlray-report-") as tmp:
        out = Path(tmp)
        (out / "trials.txt").write_text(report.table + "\n")
        for path in [out / "trials.txt", *_plots(trials, metric, mode, out)]:
            uri = store.join(experiment_uri, "report", path.name)
            store.write_bytes(uri, path.read_bytes())
            report.files.append(uri)
    return report
