"""An interrupted sweep: how the driver tells it from a finished one.

On the first Ctrl-C (SIGINT) Ray Tune saves the experiment state, stops the
trials and returns from ``Tuner.fit()`` as if the sweep had ended; it raises
nothing. ``run_sweep`` counts the trials the saved state leaves unfinished and
raises :class:`SweepInterrupted`, so nothing downstream (promotion,
``tl-ray run``) treats a partial sweep as a finished one.
"""

from __future__ import annotations

import logging

from tl_ray.errors import TLRayError


class SweepInterrupted(TLRayError):
    """The sweep stopped before every trial finished; its state is saved and it can be resumed.

    Args:
        experiment: the experiment folder name.
        experiment_path: where Tune saved the experiment.
        unfinished: trials not finished (running, pending or not created yet).
        stage: the stage of a staged sweep that was running.
    """

    exit_code = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

    def __init__(self, experiment: str, experiment_path: str = "", unfinished: int = 0, stage: str = ""):
        where = f" in its stage {stage!r}" if stage else ""
        super().__init__(
            f"sweep {experiment!r} was interrupted{where} with {unfinished} trial(s) unfinished; its state and "
            f"checkpoints are saved in {experiment_path}"
        )
        self.experiment, self.experiment_path, self.unfinished = experiment, experiment_path, unfinished
        self.stage = stage

    def __reduce__(self):
        return (type(self), (self.experiment, self.experiment_path, self.unfinished, self.stage))


def saved_trial_statuses(experiment_path: str, filesystem=None) -> dict[str, str]:
    """Each trial's status in the experiment state Tune saved last (what ``--resume`` continues), by trial id.

    Not the ResultGrid's statuses: after an interrupt Tune marks the trials it
    stops TERMINATED in memory, but saves the state before stopping them.
    """
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(experiment_path, storage_filesystem=filesystem)
    return {t.trial_id: t.status for t in analysis.trials}


def count_unfinished(spec, statuses: list[str], planned: int | None = None) -> int:
    """Trials neither finished nor errored, plus trials of the sweep not created yet.

    ``planned`` is how many trials the experiment runs (default: the spec's sweep; a later
    stage of a staged sweep runs one trial per promoted parent).
    """
    from tl_ray.spec.space import grid_size

    if planned is None:
        planned = spec.tune.num_samples * (1 if spec.tune.search == "optuna" else grid_size(spec.tune.space))
    settled = sum(s in ("TERMINATED", "ERROR") for s in statuses)
    return len(statuses) - settled + max(planned - len(statuses), 0)


class quiet_ray_resume_hint:
    """Context manager dropping Tune's "Resume experiment with: Tuner.restore(...)" warning.

    The command line prints its own resume command (``tl-ray tune SPEC --resume``),
    which is the one that works for a tl-ray sweep.
    """

    def __enter__(self):
        self._logger = logging.getLogger("ray.tune.tune")
        self._logger.addFilter(self._drop)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeFilter(self._drop)

    @staticmethod
    def _drop(record: logging.LogRecord) -> bool:
        return "has been interrupted" not in record.getMessage()
