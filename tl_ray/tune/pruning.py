"""``tune.keep_checkpoints`` for single-worker trials: an ended trial's checkpoints beyond the kept ones go.

Tune's own ``num_to_keep`` saves the whole experiment state every ``num_to_keep`` checkpoints of a trial
(every few seconds with short trials). PBT keeps Tune's: its trials exploit each other's latest.
"""

from __future__ import annotations

import logging

from ray import tune

log = logging.getLogger(__name__)


def kept(checkpoints: list[tuple[str, float | None]], keep: int, mode: str) -> list[tuple[str, float | None]]:
    """The ``(path, metric)`` of ``checkpoints`` (oldest first) that ``keep`` keeps, in their order: the
    ``keep`` best by the metric and the latest; all of them when ``keep`` is 0."""
    if not keep or len(checkpoints) <= keep:
        return list(checkpoints)
    scored = [c for c in checkpoints if c[1] is not None and c[1] == c[1]]
    best = {path for path, _ in sorted(scored, key=lambda c: c[1], reverse=mode == "max")[:keep]}
    return [c for i, c in enumerate(checkpoints) if c[0] in best or i == len(checkpoints) - 1]


class KeepCheckpoints(tune.Callback):
    """Deletes the checkpoints ``kept`` drops of an ended trial, once a saved experiment state has it ended
    (before that, a resumed driver could restart it from a checkpoint that is gone).

    Tune calls ``get_state`` at each save, after writing the trials' statuses: what ended before the previous
    save is deleted there, the rest at ``on_experiment_end``. A failed delete is logged, not raised.
    """

    def __init__(self, keep: int, metric: str, mode: str):
        self.keep, self.metric, self.mode = keep, metric, mode
        self._running: dict[str, list] = {}  # trial id -> [(Checkpoint, metric)] of a running trial
        self._ended: list = []  # Checkpoints to delete of trials that ended since the last save
        self._saved_ended: list = []  # ... of trials the last saved state has ended

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        value = (trial.last_result or {}).get(self.metric)  # the result the checkpoint came with
        self._running.setdefault(trial.trial_id, []).append((checkpoint, value if isinstance(value, (int, float)) else None))

    def on_trial_complete(self, iteration, trials, trial, **info):
        saved = self._running.pop(trial.trial_id, [])
        keep = {path for path, _ in kept([(c.path, v) for c, v in saved], self.keep, self.mode)}
        self._ended += [c for c, _ in saved if c.path not in keep]

    on_trial_error = on_trial_complete

    def get_state(self) -> dict:
        self._delete(self._saved_ended)
        self._saved_ended, self._ended = self._ended, []
        return {"running": self._running, "saved_ended": self._saved_ended}

    def set_state(self, state: dict) -> None:
        self._running, self._saved_ended = state["running"], state["saved_ended"]

    def on_experiment_end(self, trials, **info):
        self._delete(self._saved_ended)
        self._saved_ended = []

    @staticmethod
    def _delete(checkpoints: list) -> None:
        for ckpt in checkpoints:
            try:
                ckpt.filesystem.delete_dir(ckpt.path)
            except OSError as exc:
                log.warning("could not delete checkpoint %s: %s", ckpt.path, exc)
