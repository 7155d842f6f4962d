"""The sweep report: ``trials.txt`` (the best trials), ``trials.csv`` (every trial) and the plots of
``tl_ray.tune.plots``, from what Ray Tune stored for each trial, written into ``<experiment>/report/``."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tl_ray import store
from tl_ray.errors import ConfigError
from tl_ray.tune.interrupt import saved_trial_statuses
from tl_ray.tune.plots import write_plots


@dataclass
class TrialSummary:
    name: str
    params: dict
    history: list[dict]
    stage: str = ""
    failed: bool | None = False  # ended in error, as Tune saved it; None: failed once, how it ended unknown
    saved: bool = True  # False: Tune's saved state does not hold it (a folder an interrupted driver left)

    @property
    def started(self) -> float:
        return min((float(r.get("timestamp", 0.0)) for r in self.history), default=0.0)

    def best(self, metric: str, mode: str) -> float | None:
        values = [r[metric] for r in self.history if isinstance(r.get(metric), (int, float))]
        return (max if mode == "max" else min)(values, default=None)

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
    """Every trial folder of an experiment with its parameters and rows (a staged sweep's stage by stage)."""
    listing = store.list_dir(experiment_uri)
    if any(is_trial_dir(n) for n in listing):
        return _load(experiment_uri, "", listing)
    stages = [n for n in listing
              if any(is_trial_dir(t) for t in store.list_dir(store.join(experiment_uri, n)))]
    if not stages:
        raise ConfigError(
            f"no trials under {experiment_uri!r}. Name an experiment folder of the store's experiments/, "
            "e.g. tl-ray report fashion-transfer-20261125-083335 --storage ./tlray-store")
    # Stage folders sort by their first trial's start, which is the order they ran in.
    found = [_load(store.join(experiment_uri, stage), stage) for stage in stages]
    found.sort(key=lambda trials: min((t.started for t in trials), default=0.0))
    return [t for trials in found for t in trials]


# Tune names trial folders after the trial function: tune_trial_<id>_..., stage_trial_<id>_...
_TRIAL_DIR = re.compile(r"^(?:tune|stage)_trial_([0-9a-f]+_\d+)")


def is_trial_dir(name: str) -> bool:
    return _TRIAL_DIR.match(name) is not None


def _saved_statuses(experiment_uri: str, listing: list[str]) -> dict[str, str]:
    """Each trial's status in the experiment state Tune saved last, by folder name; empty when there is none."""
    if not any(n.startswith("experiment_state") for n in listing):
        return {}  # Tune saved no state here: no need to import Ray to read it
    try:
        fs, path = store.filesystem(experiment_uri)
        return saved_trial_statuses(path, fs if store.is_s3(experiment_uri) else None)
    except Exception:  # noqa: BLE001 - no state saved (or unreadable): the trial folders alone
        return {}


def _latest_per_epoch(rows: list[dict]) -> list[dict]:
    """One row per ``training_iteration``, the last: a resumed trial reports its later epochs again."""
    if not all("training_iteration" in r for r in rows):
        return rows
    return sorted({r["training_iteration"]: r for r in rows}.values(), key=lambda r: r["training_iteration"])


def _read(folder: str, name: str) -> str:
    """The text of a file of ``folder``; empty when it does not exist."""
    path = store.join(folder, name)
    return store.read_text(path) if store.exists(path) else ""


def _load(experiment_uri: str, stage: str, listing: list[str] | None = None) -> list[TrialSummary]:
    listing = store.list_dir(experiment_uri) if listing is None else listing
    statuses = _saved_statuses(experiment_uri, listing)
    out = []
    for name in filter(is_trial_dir, listing):
        base = store.join(experiment_uri, name)
        rows = [json.loads(line) for line in _read(base, "result.json").splitlines() if line.strip()]
        # error.txt stays after a restart that recovered: Tune's saved status says how the trial ended. Without
        # one, a trial that failed and never trained its epochs is taken to have ended in error.
        if name in statuses:
            failed: bool | None = statuses[name] == "ERROR"
        else:
            failed = None if store.exists(store.join(base, "error.txt")) else False
        out.append(TrialSummary(_TRIAL_DIR.match(name).group(1), json.loads(_read(base, "params.json") or "{}"),
                                _latest_per_epoch(rows), stage, failed=failed, saved=name in statuses or not statuses))
    return out


TOP_K = 20  # trials the table lists and the learning curves draw, best first


def _ranked(trials: list[TrialSummary], metric: str, mode: str) -> list[TrialSummary]:
    """The trials best first by their best ``metric`` (``mode``), stage by stage; trials without it last."""
    order = [t.stage for t in trials]
    sign = -1 if mode == "max" else 1

    def key(t: TrialSummary):
        best = t.best(metric, mode)
        return order.index(t.stage), best is None, sign * (best or 0)

    return sorted(trials, key=key)


def _status(t: TrialSummary, planned: int | None) -> str:
    finished = bool(t.history) and not (planned and t.epochs < planned)
    if t.failed or (t.failed is None and not finished):
        return "error"
    return "no results" if not t.history else ("done" if finished else "stopped early")


def _table(trials: list[TrialSummary], metric: str, mode: str, planned_epochs: int | dict | None,
           top: int = TOP_K) -> str:
    """The ``top`` best trials of each stage, best first; a last line counts the rest and the errors."""
    keys = sorted({k for t in trials for k in t.params})
    staged = any(t.stage for t in trials)
    head = ["trial", *(["stage"] if staged else []), *keys, f"best {metric}", "epochs", "wall s", "status"]
    rows, shown, statuses = [], {}, []
    for t in _ranked(trials, metric, mode):
        planned = planned_epochs.get(t.stage) if isinstance(planned_epochs, dict) else planned_epochs
        status = _status(t, planned)
        statuses.append(status)
        shown[t.stage] = shown.get(t.stage, 0) + 1
        if shown[t.stage] > top:
            continue
        rows.append([t.name, *([t.stage] if staged else []), *(fmt(t.params.get(k)) for k in keys),
                     fmt(t.best(metric, mode)), str(t.epochs), f"{t.wall_time_s:.0f}", status])
    lines = text_table(head, rows)
    if len(rows) < len(trials):
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in ("done", "stopped early", "error", "no results")
                           if statuses.count(s))
        lines.append(f"... the best {top}{' of each stage' if staged else ''} of {len(trials)} trials "
                     f"({counts}); every trial in trials.csv")
    return "\n".join(lines)


def _csv(trials: list[TrialSummary], metric: str, mode: str) -> str:
    """Every trial, best first: its id, stage, parameters, best metric, epochs and wall time."""
    keys = sorted({k for t in trials for k in t.params})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", "stage", *keys, f"best {metric}", "epochs", "wall_s"])
    for t in _ranked(trials, metric, mode):
        writer.writerow([t.name, t.stage, *(t.params.get(k, "") for k in keys), t.best(metric, mode), t.epochs,
                         round(t.wall_time_s, 3)])
    return out.getvalue()


def fmt(v) -> str:
    """A table cell: ``-`` for None, 4 significant digits for a float."""
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def text_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a table whose columns are padded to their widest cell."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in [head, *rows]]


def build_report(
    experiment_uri: str, metric: str, mode: str = "max", planned_epochs: int | dict[str, int] | None = None,
    top: int = TOP_K,
) -> Report:
    """Writes the table, ``trials.csv`` and the plots into ``<experiment>/report/`` and returns them.

    Args:
        planned_epochs: one number, or one per stage; tells stopped trials from finished ones. None: a trial
            with results is done.
        top: trials the table lists (per stage) and the learning curves draw.

    Raises:
        ConfigError: the folder holds no trials, or ``top`` is below 1.
    """
    if top < 1:
        raise ConfigError(f"the report's top must be at least 1. Received: {top}")
    found = load_trials(experiment_uri)
    # A driver killed after creating trials it had not saved leaves their folders; a resume runs others instead.
    trials = [t for t in found if t.saved]
    report = Report(experiment_uri, metric, mode, trials)
    report.table = _table(trials, metric, mode, planned_epochs, top)
    if len(trials) < len(found):
        report.table += (f"\n({len(found) - len(trials)} trial folder(s) not in Tune's saved state, left by an "
                         "interrupted driver, are not counted)")
    scored = [t for t in _ranked(trials, metric, mode) if t.best(metric, mode) is not None]
    best = sorted(scored, key=lambda t: t.best(metric, mode), reverse=mode == "max")[:top]
    with tempfile.TemporaryDirectory(prefix="tlray-report-") as tmp:
        out = Path(tmp)
        (out / "trials.txt").write_text(report.table + "\n")
        (out / "trials.csv").write_text(_csv(trials, metric, mode))
        for path in [out / "trials.txt", out / "trials.csv", *write_plots(trials, best, metric, mode, out)]:
            uri = store.join(experiment_uri, "report", path.name)
            store.write_bytes(uri, path.read_bytes())
            report.files.append(uri)
    return report
