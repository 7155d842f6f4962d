"""An interrupted sweep, told from a finished one: on Ctrl-C Ray Tune saves the experiment and returns from
``Tuner.fit()`` as if the sweep had ended; ``run_tuner`` then raises :class:`SweepInterrupted`."""

from __future__ import annotations

import contextlib
import logging

from tl_ray.errors import TLRayError


class SweepInterrupted(TLRayError):
    """The sweep stopped before every trial finished; its state is saved and it can be resumed.

    Args:
        experiment: the experiment folder name; ``experiment_path``: where Tune saved it.
        unfinished: trials running, pending or not created yet.
    """

    exit_code = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

    def __init__(self, experiment: str, experiment_path: str = "", unfinished: int = 0, stage: str = ""):
        where = f" in its stage {stage!r}" if stage else ""
        super().__init__(
            f"sweep {experiment!r} was interrupted{where} with {unfinished} trial(s) unfinished; its state and "
            f"checkpoints are saved in {experiment_path}")
        self.experiment, self.experiment_path, self.unfinished = experiment, experiment_path, unfinished
        self.stage = stage

    def __reduce__(self):
        return (type(self), (self.experiment, self.experiment_path, self.unfinished, self.stage))


def saved_trial_statuses(experiment_path: str, filesystem=None) -> dict[str, str]:
    """Each trial's status in the experiment state Tune saved last (what ``--resume`` continues), by the name of
    the trial's folder (an unsaved folder can carry a saved trial's id). Not the ResultGrid's: after an
    interrupt Tune saves the state, then marks the trials TERMINATED in memory."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(experiment_path, storage_filesystem=filesystem)
    return {t.path.rstrip("/").rsplit("/", 1)[-1]: t.status for t in analysis.trials}


def count_unfinished(spec, statuses: list[str], planned: int | None = None) -> int:
    """Trials neither finished nor errored, plus those of the ``planned`` trials (default: the spec's sweep's)
    not created yet."""
    from tl_ray.spec.space import grid_size

    if planned is None:
        planned = spec.tune.num_samples * (1 if spec.tune.search == "optuna" else grid_size(spec.tune.space))
    settled = sum(s in ("TERMINATED", "ERROR") for s in statuses)
    return len(statuses) - settled + max(planned - len(statuses), 0)


@contextlib.contextmanager
def quiet_ray_resume_hint():
    """Drops Tune's "Resume experiment with: Tuner.restore(...)" warning: tl-ray prints its own command."""
    logger = logging.getLogger("ray.tune.tune")

    def drop(record: logging.LogRecord) -> bool:
        return "has been interrupted" not in record.getMessage()

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
