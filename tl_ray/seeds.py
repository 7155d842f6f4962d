"""Transferred vs from scratch over seeds: the runs `tl-ray run` trains after the sweep (``run.seeds``).

Seed offset ``i`` is added to ``train.seed`` and ``data.seed``; each run keeps its best-validation checkpoint,
scored on ``data.test``. The seed promoted is chosen on the validation metric, never on test accuracy.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tl_ray.errors import TrialError
from tl_ray.spec import Spec, apply_overrides, validate
from tl_ray.spec.space import trial_overrides


@dataclass
class SeedRun:
    """One seed's run: its best ``tune.metric``, that epoch's checkpoint and test accuracy (None: failed)."""

    seed: int
    val_metric: float | None
    test_accuracy: float | None
    trial_id: str = ""
    checkpoint: str | None = None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_overrides(spec: Spec, params: dict, seed: int) -> dict:
    """Overrides of one seed's run of a configuration: its sampled fields, the seeds moved by ``seed``."""
    return {**trial_overrides(spec.tune.space, params),
            "train.seed": spec.train.seed + seed, "data.seed": spec.data.seed + seed}


def scratch_overrides(spec: Spec) -> dict:
    """What turns the spec into the same network trained from random weights: every layer trains, every epoch."""
    out = {"model.weights": "none", "model.freeze.mode": "full", "train.recipe": "plain", "train.phases": [],
           "train.init_from": None}
    if spec.model.batchnorm_momentum is None:
        out["model.batchnorm_momentum"] = 0.9  # BatchNorm statistics must settle within a short run
    return out


def scratch_spec(spec: Spec) -> Spec:
    """The spec with :func:`scratch_overrides` applied."""
    return validate(apply_overrides(spec.to_dict(), scratch_overrides(spec)), source="from-scratch baseline")


@dataclass
class SeedComparison:
    """The transferred configuration's runs and the from-scratch baseline's, one per seed."""

    metric: str
    mode: str
    transferred: list[SeedRun]
    scratch: list[SeedRun] = field(default_factory=list)

    @staticmethod
    def _done(runs: list[SeedRun]) -> list[SeedRun]:
        return [r for r in runs if r.test_accuracy is not None and r.checkpoint]

    def summary(self, runs: list[SeedRun]) -> tuple[float, float, int] | None:
        """(mean, std, n) of the finished runs' test accuracy; None when none finished."""
        done = self._done(runs)
        return (*mean_std([r.test_accuracy for r in done]), len(done)) if done else None

    @property
    def gap(self) -> float | None:
        """Mean transferred test accuracy minus mean from-scratch test accuracy."""
        ours, theirs = self.summary(self.transferred), self.summary(self.scratch)
        return ours[0] - theirs[0] if ours and theirs else None

    def promoted(self) -> SeedRun:
        """The transferred run with the best validation metric (ties: the lowest seed).

        Raises:
            TrialError: no transferred run finished with the metric.
        """
        done = [r for r in self._done(self.transferred) if r.val_metric is not None]
        if not done:
            raise TrialError(f"no seed of the transferred configuration finished with '{self.metric}'.")
        sign = -1 if self.mode == "max" else 1
        return min(done, key=lambda r: (sign * r.val_metric, r.seed))

    def lines(self) -> list[str]:
        """What `tl-ray run` prints."""
        out = []
        for name, runs in (("transferred", self.transferred), ("from scratch", self.scratch)):
            stats = self.summary(runs)
            if stats is None:
                if runs:
                    out.append(f"[seeds] {name}: no seed finished")
                continue
            each = ", ".join(f"{r.test_accuracy:.4f}" if r.test_accuracy is not None else "failed" for r in runs)
            out.append(f"[seeds] {name}: test accuracy {stats[0]:.4f} ± {stats[1]:.4f} over {stats[2]} "
                       f"seed{'s' if stats[2] > 1 else ''} ({each})")
        if self.gap is not None:
            out.append(f"[seeds] gap (transferred - from scratch): {self.gap * 100:+.1f} points")
        best = self.promoted()
        out.append(f"[seeds] promoting seed {best.seed} (trial {best.trial_id}): the best {self.metric} of the "
                   f"transferred seeds ({best.val_metric:.4f}); test accuracy is never used to choose")
        return out

    def to_metadata(self) -> dict:
        """The record kept in the promoted version's registry metadata (``seeds``)."""
        def stats(runs):
            found = self.summary(runs)
            return None if found is None else {"mean": found[0], "std": found[1], "n": found[2]}

        best = self.promoted()
        return {
            "metric": self.metric, "selected_on": f"best {self.metric} ({self.mode})", "promoted_seed": best.seed,
            "promoted_trial": best.trial_id, "transferred": stats(self.transferred), "scratch": stats(self.scratch),
            "gap": self.gap, "runs": {"transferred": [asdict(r) for r in self.transferred],
                                      "scratch": [asdict(r) for r in self.scratch]},
        }

    def plot(self, path: str | Path) -> Path:
        """A PNG of each seed's test accuracy, transferred and from scratch side by side, with mean ± std."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        groups = [("transferred", self.transferred, "tab:blue"), ("from scratch", self.scratch, "tab:gray")]
        groups = [g for g in groups if self._done(g[1])]
        fig, ax = plt.subplots(figsize=(5, 4))
        pairs: dict[int, list[tuple[int, float]]] = {}
        ticks = []
        for x, (name, runs, color) in enumerate(groups):
            done = self._done(runs)
            ys = [r.test_accuracy for r in done]
            mean, std = mean_std(ys)
            ax.errorbar([x + 0.25], [mean], yerr=[std], fmt="s", color=color, capsize=6)
            ticks.append(f"{name}\n{mean:.3f} ± {std:.3f} (n={len(ys)})")
            ax.scatter([x] * len(ys), ys, color=color, zorder=3)
            for r in done:
                ax.annotate(f"seed {r.seed}", (x, r.test_accuracy), xytext=(-48, 0), textcoords="offset points",
                            fontsize=7, va="center")
                pairs.setdefault(r.seed, []).append((x, r.test_accuracy))
        for points in pairs.values():  # a seed's two runs, joined
            if len(points) == 2:
                ax.plot(*zip(*points), color="lightgray", zorder=1)
        ax.set_xticks(range(len(groups)), ticks)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylabel("test accuracy")
        gap = f", gap {self.gap * 100:+.1f} points" if self.gap is not None else ""
        ax.set_title(f"test accuracy per seed{gap}", fontsize=10)
        ax.margins(y=0.15)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return Path(path)
