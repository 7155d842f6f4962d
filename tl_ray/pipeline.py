"""The end-to-end job and the stage drivers the CLI calls.

``run_pipeline`` chains ingest → upstream model → sweep → promotion → test accuracy → serving (the
accuracy measured again over HTTP); each stage reuses what an earlier run left in the store.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from tl_ray import store
from tl_ray.data import ingest
from tl_ray.errors import ConfigError, RegistryError, error_summary
from tl_ray.promote import evaluate, promote_checkpoint
from tl_ray.registry.store import Registry
from tl_ray.seeds import SeedComparison, SeedRun, scratch_overrides, scratch_spec, seed_overrides
from tl_ray.spec import Spec, load_spec
from tl_ray.train.checkpoint import checkpoint_model
from tl_ray.tune import sweep
from tl_ray.tune.cluster import connect_ray
from tl_ray.tune.report import build_report

Out = Callable[[str], None]


def ensure_ray() -> None:
    """Connects to Ray (``tl_ray.tune.cluster.connect_ray``)."""
    connect_ray()


def ensure_data(spec: Spec, out: Out = print) -> None:
    """Ingests the spec's datasets from ``data.source`` when they are not in the store."""
    wanted = {"train": spec.data.train, "validation": spec.data.validation, "test": spec.data.test}
    missing = [k for k, v in wanted.items() if v and not store.exists(store.join(spec.resolve(v), "_manifest.json"))]
    if not missing:
        out(f"[data] reusing {', '.join(spec.resolve(v) for v in wanted.values() if v)}")
        return
    src = spec.data.source
    if src is None:
        raise ConfigError(
            f"data.{missing[0]} has no dataset at {spec.resolve(wanted[missing[0]])!r} and data.source is not set. "
            "Ingest it first (tl-ray data ingest ... --to URI) or add a data.source recipe."
        )
    store.ensure_bucket(spec.storage)
    validation = spec.resolve(spec.data.validation) if spec.data.validation else None
    train = dict(per_class=src.train_per_class, validation_to=validation, seed=src.seed, overwrite=True)
    if src.kind != "fashion-mnist":
        if "train" in missing or "validation" in missing:
            report = ingest.ingest_folder(src.path, spec.resolve(spec.data.train),
                                          validation_fraction=0.2 if validation else None, **train)
            out(f"[data] ingested {src.path}: {_rows(report)}")
        return
    path = src.path or ingest.FASHION_MNIST_DIR
    if "train" in missing or "validation" in missing:
        report = ingest.ingest_fashion_mnist(
            spec.resolve(spec.data.train), path=path, split="train", classes=src.classes,
            validation_per_class=src.validation_per_class, **train,
        )
        out(f"[data] ingested fashion-mnist train split: {_rows(report)}")
    if "test" in missing:
        report = ingest.ingest_fashion_mnist(spec.resolve(spec.data.test), path=path, split="test",
                                             classes=src.classes, seed=src.seed, overwrite=True)
        out(f"[data] ingested fashion-mnist test split: {report['train']['rows']} rows")


def _rows(report: dict) -> str:
    return ", ".join(f"{k} {v['rows']} rows" for k, v in report.items() if isinstance(v, dict) and "rows" in v)


def train_once(spec: Spec, experiment: str | None = None, out: Out = print):
    """One trial of the spec as written (no search space, no early stopping)."""
    single = spec.model_copy(deep=True)
    single.tune.space, single.tune.num_samples, single.tune.scheduler = {}, 1, "fifo"
    sweep.preflight(single)  # the spec as written: the space's values are not this trial's
    ensure_ray()
    result = sweep.run_sweep(single, experiment=experiment or f"{spec.name}-train-{int(time.time())}")
    out(result.table())
    return result.best


def sweep_and_promote(spec: Spec, promote: bool = True, resume: bool = False, out: Out = print):
    """Runs the sweep, prints its table and (optionally) promotes the best trial."""
    if promote and spec.promote is not None:
        Registry(spec.storage).check_writable()  # before the sweep, not after it
    sweep.preflight(spec)  # what every trial would fail on, said once before any starts
    ensure_ray()
    experiment = latest_experiment(spec) if resume else f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    exp_uri = store.join(spec.storage, "experiments", experiment)
    if resume:  # a new experiment is named by the sweep's own first line
        out(f"[tune] resuming {exp_uri}")
    result = sweep.run_sweep(spec, resume=resume, experiment=experiment)
    out(result.table())
    best = result.best
    out(f"[tune] best trial {best.trial_id}: {spec.tune.metric}={best.metric:.4f} ({result.wall_time_s:.0f}s)")
    planned = {st.name: st.epochs for st in spec.tune.stages} if spec.tune.stages else spec.train.epochs
    report = build_report(exp_uri, spec.tune.metric, spec.tune.mode, planned_epochs=planned)
    out(f"[tune] report: {', '.join(report.files)}  (tl-ray report {experiment} --storage {spec.storage})")
    # Tune writes each trial's TensorBoard event files into its folder of the experiment.
    sync = f"aws s3 sync {exp_uri} ./{experiment}, then " if store.is_s3(exp_uri) else ""
    out(f"[tune] curves in TensorBoard: {sync}tensorboard --logdir {'./' + experiment if sync else exp_uri}  "
        "(pip install 'tl-ray[tensorboard]')")
    promotion = promote_row(spec, best) if promote else None
    if promotion is not None:
        out(f"[promote] {promotion.message()}")
    return result, promotion


def latest_experiment(spec: Spec) -> str:
    """The newest sweep of ``spec.name`` in the store (what ``--resume`` continues)."""
    experiments = store.join(spec.storage, "experiments")
    pattern = re.compile(rf"^{re.escape(spec.name)}-\d{{8}}-\d{{6}}$")
    found = sorted(n for n in store.list_dir(experiments) if pattern.match(n))
    if not found:
        raise ConfigError(f"no sweep of {spec.name!r} to resume under {experiments}. "
                          "Start one with: tl-ray tune SPEC")
    return found[-1]


def promote_row(spec: Spec, row):
    parent = None
    if spec.model.weights.startswith("registry://"):
        name, version = Registry(spec.storage).resolve(spec.model.weights)
        parent = f"{name}:v{version}"
    with tempfile.TemporaryDirectory(prefix="tlray-best-") as tmp:
        ckpt = sweep.fetch_checkpoint(row.checkpoint, tmp)
        metrics = {spec.tune.metric: row.metric, "epochs": row.epochs, "params": row.params, "trial": row.trial_id}
        return promote_checkpoint(spec, ckpt, metrics, parent=parent)


def ensure_upstream(spec: Spec, out: Out = print) -> None:
    """Trains and registers the model ``model.weights`` names, if it is not registered yet."""
    if not spec.model.weights.startswith("registry://"):
        return
    try:
        name, version = Registry(spec.storage).resolve(spec.model.weights)
        out(f"[upstream] reusing {name}:v{version} ({spec.model.weights})")
        return
    except RegistryError:
        if not spec.run.upstream:
            raise
    upstream = load_spec(Path(spec._base_dir) / spec.run.upstream,
                         overrides={"storage": spec.storage, "storage_locking": spec.storage_locking})
    out(f"[upstream] {spec.model.weights} is not registered: training it from {spec.run.upstream}")
    ensure_data(upstream, out)
    ensure_upstream(upstream, out)
    sweep_and_promote(upstream, promote=True, out=out)


def test_accuracy(spec: Spec, model) -> float:
    return evaluate(model, spec.resolve(spec.data.test), spec.data.image_size)["accuracy"]


def from_scratch_baseline(spec: Spec, out: Out = print) -> float:
    """Trains the same network from random weights on the same data; returns its test accuracy."""
    out("[baseline] training the same network from scratch on the same images")
    row = train_once(scratch_spec(spec), experiment=f"{spec.name}-scratch-{int(time.time())}", out=out)
    return checkpoint_test_accuracy(spec, row.checkpoint)


def checkpoint_test_accuracy(spec: Spec, checkpoint: str) -> float:
    """Test accuracy of a trial's checkpoint (a head-only one is rebuilt in full)."""
    with tempfile.TemporaryDirectory(prefix="tlray-eval-") as tmp:
        return test_accuracy(spec, checkpoint_model(sweep.fetch_checkpoint(checkpoint, tmp), spec.storage))


def seeds_and_promote(spec: Spec, best, experiment: str, out: Out = print):
    """Trains the sweep's best configuration (and, with ``run.compare_from_scratch``, the from-scratch
    baseline) on ``run.seeds`` seeds and promotes the transferred seed with the best validation metric;
    the comparison goes into its registry metadata and the report folder. Returns (comparison, promotion).
    """
    n = spec.run.seeds
    variants = {}
    epochs = {k: v for k, v in best.params.items() if k == "train.epochs"}  # scratch: the same budget in epochs
    for i in range(n):
        variants[f"transferred-{i}"] = seed_overrides(spec, best.params, i)
        if spec.run.compare_from_scratch:  # the spec's network from random weights
            variants[f"scratch-{i}"] = {**scratch_overrides(spec), **epochs, **seed_overrides(spec, {}, i)}
    out(f"[seeds] training trial {best.trial_id}'s configuration"
        f"{' and the from-scratch baseline' if spec.run.compare_from_scratch else ''} on {n} seeds each")
    rows = sweep.run_variants(spec, f"{experiment}-seeds", variants)
    runs: dict[str, list[SeedRun]] = {"transferred": [], "scratch": []}
    for key, overrides in variants.items():
        group, i = key.rsplit("-", 1)
        row = rows[key]
        row.params = overrides  # what the run trained (promotion records it), not the variant's name
        test = checkpoint_test_accuracy(spec, row.checkpoint) if row.checkpoint else None
        runs[group].append(SeedRun(int(i), row.metric, test, row.trial_id, row.checkpoint))
    comparison = SeedComparison(spec.tune.metric, spec.tune.mode, runs["transferred"], runs["scratch"])
    for line in comparison.lines():
        out(line)
    chosen = comparison.promoted()
    promotion = promote_row(spec, next(r for r in rows.values() if r.trial_id == chosen.trial_id))
    Registry(spec.storage).update_metadata(promotion.name, promotion.version, {"seeds": comparison.to_metadata()})
    out(f"[promote] {promotion.message()}")
    uri = store.join(spec.storage, "experiments", experiment, "report", "seeds.png")
    with tempfile.TemporaryDirectory(prefix="tlray-seeds-") as tmp:
        store.write_bytes(uri, comparison.plot(Path(tmp) / "seeds.png").read_bytes())
    out(f"[seeds] report: {uri}")
    return comparison, promotion


def serve_forever(storage: str, ref: str, serve_spec, out: Out = print, follow: bool = False) -> None:
    """Serves ``ref`` until SIGTERM or Ctrl-C, then answers the requests in flight and stops; with ``follow``,
    swaps to the new version whenever the alias moves."""
    from tl_ray.serving import app
    from tl_ray.serving.process import StopSignals, serve_until

    ensure_ray()  # first: ray.init installs signal handlers of its own, which StopSignals replaces
    with StopSignals() as stop:
        url = app.run(storage, ref, serve_spec, blocking=False)
        out(f"[serve] {ref} at {url}/predict  (Ctrl-C or SIGTERM to stop)")
        out(f"        tl-ray predict {url} IMAGE.png")
        if follow:
            out(f"[serve] watching {ref}: checking the registry every {serve_spec.watch_interval_s:g}s")
        serve_until(stop, storage, ref, serve_spec, out=out, follow=follow)


def http_accuracy(url: str, spec: Spec, batch: int = 64) -> float:
    """Accuracy on the test set, every image sent through the live endpoint as JSON."""
    import numpy as np
    from tqdm import tqdm

    from tl_ray.data.manifest import read_manifest
    from tl_ray.data.reader import make_dataset
    from tl_ray.serving.client import predict_instances

    uri = spec.resolve(spec.data.test)
    manifest = read_manifest(uri)
    # Send images at their stored size: the endpoint resizes them exactly as training did.
    size = tuple(manifest.image_shape[:2]) if manifest.image_shape else tuple(spec.data.image_size)
    correct = total = 0
    # A bar on a terminal only: a pipe or a CI log gets the result line alone.
    with tqdm(total=manifest.num_rows, unit="img", desc="[serve] test images over HTTP", file=sys.stderr,
              disable=not sys.stderr.isatty(), leave=False) as bar:
        for images, labels in make_dataset(uri, image_size=size, batch_size=batch):
            preds = predict_instances(url, np.round(images.numpy()).astype(np.uint8))
            correct += sum(int(p["class_id"] == int(y)) for p, y in zip(preds, labels.numpy()))
            total += len(preds)
            bar.update(len(preds))
    return correct / max(total, 1)


def _seed_figures(comparison) -> dict:
    figures = {}
    for name, runs in (("seeds", comparison.transferred), ("scratch_seeds", comparison.scratch)):
        stats = comparison.summary(runs)
        if stats:
            figures.update({f"{name}_test_accuracy_mean": stats[0], f"{name}_test_accuracy_std": stats[1]})
    if comparison.gap is not None:
        figures["seeds_gap"] = comparison.gap
    figures["promoted_seed"] = comparison.promoted().seed
    return figures


def run_pipeline(spec: Spec, keep_serving: bool = False, out: Out = print) -> dict:
    """The whole job; returns the figures it printed."""
    from tl_ray.models.export import load_model

    t0 = time.perf_counter()
    out(f"[run] {spec.name}: store {spec.storage}")
    store.use_locking(spec.storage_locking)
    store.ensure_bucket(spec.storage)
    ensure_ray()
    ensure_data(spec, out)
    ensure_upstream(spec, out)
    out(f"[tune] sweeping {spec.tune.num_samples} trials over {sorted(spec.tune.space)}")
    if spec.run.seeds > 1:  # the seeds promote after the sweep: a read-only registry fails now, not then
        Registry(spec.storage).check_writable()
    result, promotion = sweep_and_promote(spec, promote=spec.run.seeds == 1, out=out)
    comparison = None
    if spec.run.seeds > 1:  # the promoted model is one of the seeds
        experiment = result.experiment_path.rstrip("/").rsplit("/", 1)[-1]
        comparison, promotion = seeds_and_promote(spec, result.best, experiment, out)
    ref = f"{spec.promote.name}:{spec.promote.alias}"
    figures = {"promoted": f"{promotion.name}:v{promotion.version}", "accepted": promotion.accepted}
    failed = [r for r in result.rows if r.status == "ERROR"]
    if failed:  # the job goes on with the trials that finished; it ends with exit 8 (tl-ray run)
        figures.update(failed_trials=len(failed), trials=len(result.rows))
        for r in failed:
            out(f"[tune] trial {r.trial_id} ended in ERROR: {error_summary(r.error)}")
    if spec.data.test:
        model = load_model(Registry(spec.storage).fetch(ref) / "model.keras")
        figures["test_accuracy"] = test_accuracy(spec, model)
        out(f"[test] {ref} test accuracy: {figures['test_accuracy']:.4f}")
        if comparison is not None:
            figures.update(_seed_figures(comparison))
        elif spec.run.compare_from_scratch:
            figures["scratch_test_accuracy"] = from_scratch_baseline(spec, out)
            out(f"[test] from scratch on the same images: {figures['scratch_test_accuracy']:.4f}")
    if spec.run.serve:
        from tl_ray.serving import app

        url = app.run(spec.storage, ref, spec.serve)
        if spec.data.test:
            figures["http_test_accuracy"] = http_accuracy(url, spec)
            out(f"[serve] {ref} at {url}/predict: test accuracy over HTTP {figures['http_test_accuracy']:.4f}")
        figures["url"] = url
    figures["wall_time_s"] = round(time.perf_counter() - t0, 1)
    out("[run] summary: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    if spec.run.serve:
        if keep_serving:
            out(f"        query it: tl-ray predict {figures['url']} IMAGE.png")
            serve_forever(spec.storage, ref, spec.serve, out)
        else:
            out(f"        serve it again: tl-ray serve --storage {spec.storage} --model {ref}")
    return figures
