"""tl-ray's own sweep console (Tune's tables go to ``tl-ray.log`` unless ``tl-ray -v``)."""

from __future__ import annotations

import sys
from ray import tune


class SweepProgress(tune.Callback):
    """Prints one line per trial that ends (its best metric, the epoch promotion uses, or that it failed) and
    the sweep's best so far; a progress bar of ended trials on a terminal."""

    def __init__(self, metric: str, mode: str, total: int | None, epochs: int):
        # No printing function kept: Tune saves its callbacks with the experiment's state (pickled).
        self.metric, self.mode, self.total, self.epochs = metric, mode, total, epochs
        self.best: dict[str, float] = {}  # trial id -> its best metric so far
        self.ended = 0
        self._bar = None

    def setup(self, **info) -> None:
        from tqdm import tqdm

        # A bar only where a person watches: a pipe or a CI log gets the lines alone.
        self._bar = tqdm(total=self.total, unit="trial", desc="trials ended", file=sys.stderr,
                         disable=not sys.stderr.isatty(), leave=False)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            old = self.best.get(trial.trial_id)
            if old is None or (value > old if self.mode == "max" else value < old):
                self.best[trial.trial_id] = float(value)

    def _leader(self) -> str:
        if not self.best:
            return ""
        pick = max if self.mode == "max" else min
        trial_id = pick(self.best, key=self.best.get)
        return f"; best so far {self.metric} {self.best[trial_id]:.4f} ({trial_id})"

    def _ended(self, trial, how: str) -> None:
        self.ended += 1
        of = f"/{self.total}" if self.total else ""
        value = self.best.get(trial.trial_id)
        score = f": {self.metric} {value:.4f}" if value is not None else ""
        line = f"[tune] {self.ended}{of} trial {trial.trial_id} {how}{score}{self._leader()}"
        if self._bar is not None:
            self._bar.update(1)
            self._bar.clear()
        print(line, flush=True)
        if self._bar is not None:
            self._bar.refresh()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # A scheduler's early stop ends a trial as TERMINATED too, before its last epoch (STOPPED in the table).
        epochs = (trial.last_result or {}).get("training_iteration", 0)
        how = "done after" if epochs >= self.epochs else "stopped by the scheduler after"
        self._ended(trial, f"{how} {epochs} epoch{'s' if epochs != 1 else ''}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "failed (its cause is said below; its traceback is in the full log and its error.txt)")

    def on_experiment_end(self, trials, **info) -> None:
        if self._bar is not None:
            self._bar.close()
