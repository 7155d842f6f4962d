"""``tune.keep_checkpoints`` for single-worker trials: a trial's checkpoints beyond the kept ones are deleted
once it has ended.

Tune's own ``num_to_keep`` deletes while a trial runs, so it forces a save of the whole experiment state each
time a trial has registered ``num_to_keep`` checkpoints since the last save: with short trials that is a
save every few seconds ("snapshotting ... bottleneck" warnings), and each save writes every trial's state.
A trial that a saved state has ended is not resumed, so deleting its checkpoints then needs no save of its
own. PBT keeps Tune's: its trials run to the end of the sweep and exploit each other's latest checkpoints.
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
    """Deletes the checkpoints ``kept`` drops of an ended trial, once a saved experiment state has it ended.

    Until then the saved state can have it running, and a resumed driver would restart it from its latest
    checkpoint then (Tune refuses one that is gone). Tune calls ``get_state`` each time it saves the experiment
    state, after writing the trials' statuses: what ended before the previous save is deleted there, and the
    rest once the sweep's last save is done (``on_experiment_end``). A failed delete is logged, not raised.
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
