"""``tune.keep_checkpoints`` for single-worker trials: a trial's checkpoints beyond the kept ones are deleted
once it ends.

Tune's own ``num_to_keep`` deletes while a trial runs, so it forces a save of the whole experiment state each
time a trial has registered ``num_to_keep`` checkpoints since the last save: with short trials that is a
save every few seconds ("snapshotting ... bottleneck" warnings), and each save writes every trial's state.
A finished trial is not resumed, so deleting its checkpoints needs no such save. PBT keeps Tune's: its
trials run to the end of the sweep and exploit each other's latest checkpoints meanwhile.
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
    """Deletes an ended trial's checkpoints that ``kept`` drops (a failed delete is logged, not raised)."""

    def __init__(self, keep: int, metric: str, mode: str):
        self.keep, self.metric, self.mode = keep, metric, mode
        self._trials: dict[str, list] = {}  # trial id -> [(Checkpoint, metric)] of a running trial

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        value = (trial.last_result or {}).get(self.metric)  # the result the checkpoint came with
        self._trials.setdefault(trial.trial_id, []).append((checkpoint, value if isinstance(value, (int, float)) else None))

    def on_trial_complete(self, iteration, trials, trial, **info):
        saved = self._trials.pop(trial.trial_id, [])
        keep = {path for path, _ in kept([(c.path, v) for c, v in saved], self.keep, self.mode)}
        for ckpt, _ in saved:
            if ckpt.path not in keep:
                try:
                    ckpt.filesystem.delete_dir(ckpt.path)
                except OSError as exc:
                    log.warning("could not delete checkpoint %s of trial %s: %s", ckpt.path, trial.trial_id, exc)

    on_trial_error = on_trial_complete
