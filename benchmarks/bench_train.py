"""Trainer throughput, side by side in one run: a tl-ray trial against plain Keras.

    .venv/bin/python benchmarks/bench_train.py            # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_train.py --steps 10 --epochs 2   # quicker
    .venv/bin/python benchmarks/bench_train.py --smoke    # rows 1-3, 2 steps x 2 epochs: does it run?

Same model everywhere: mobilenet_v2 (alpha 0.35, random weights, every layer
training), 32x32 Fashion-MNIST images, global batch 128, Adam. Rows:

1. plain Keras ``model.fit`` on in-memory numpy arrays in a plain process
   (no Ray), TensorFlow threads = the CPUs given to the trial;
2. a tl-ray trial: 1 Ray worker, data streamed from the store by the reader,
   ``configure_tensorflow`` sizing TensorFlow's pools from Ray's CPUs;
3. the same trial with threads left at Ray's default (the worker keeps
   ``OMP_NUM_THREADS=1``; no ``configure_tensorflow``);
4. MultiWorkerMirroredStrategy over 2 Ray workers (1 CPU each), same global batch;
5. MirroredStrategy over 2 logical CPU devices in one worker, same global batch.

images/s is measured over the steps of the epochs after the first (tracing
excluded). On a 2-core machine rows 4-5 measure synchronisation overhead, not
speed-up. Peak RSS is the worker process's (rank 0 for row 4).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tl_ray import store as storage

BATCH = 128
GOAL = 0.9


def base_spec(store: str, name: str, steps: int, epochs: int, **train) -> dict:
    return {
        "name": name,
        "storage": store,
        "data": {"train": "datasets/bench/train", "image_size": [32, 32]},
        "model": {"backbone": "mobilenet_v2", "backbone_args": {"alpha": 0.35}, "weights": "none",
                  "head": {"dropout": 0.0}, "freeze": {"mode": "full"}},
        "train": {"epochs": epochs, "batch_size": BATCH, "learning_rate": 1e-3, "steps_per_epoch": steps,
                  "cpus_per_worker": 2, **train},
        "tune": {"num_samples": 1, "scheduler": "fifo", "metric": "loss", "mode": "min"},
    }


# -- plain Keras, in its own process --------------------------------------------------------
def keras_child(store: str, steps: int, epochs: int, threads: int) -> None:
    from tl_ray.train.runtime import configure_tensorflow

    configure_tensorflow(threads)
    import keras
    import numpy as np

    from tl_ray.data.reader import make_dataset
    from tl_ray.models.build import build_model
    from tl_ray.spec import validate
    from tl_ray.train.loop import peak_rss_mb
    from tl_ray.train.runtime import intra_op_threads

    spec = validate(base_spec(store, "keras", steps, epochs))
    xs, ys = [], []
    for images, labels in make_dataset(spec.resolve(spec.data.train), image_size=(32, 32), batch_size=512):
        xs.append(images.numpy())
        ys.append(labels.numpy())
    # Exactly `steps` full batches per epoch: with steps_per_epoch over a finite array, Keras ends an
    # epoch early when the array runs out, which would inflate images/s.
    x, y = np.concatenate(xs)[: steps * BATCH], np.concatenate(ys)[: steps * BATCH]
    if len(x) < steps * BATCH:
        raise SystemExit(f"the dataset holds {len(x)} images; {steps} steps of {BATCH} need {steps * BATCH}")
    keras.utils.set_random_seed(0)
    model = build_model(spec.model, 10, (32, 32), seed=0)  # Fashion-MNIST's 10 classes, as the trials
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0, callbacks=[Timer()])
    rates = [steps * BATCH / t for t in times[1:]]
    print(json.dumps({"images_per_s": statistics.median(rates), "threads": intra_op_threads(),
                      "peak_rss_mb": peak_rss_mb()}))


def run_keras(store: str, steps: int, epochs: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--keras-child", store, "--steps", str(steps), "--epochs", str(epochs),
         "--threads", str(threads)],
        check=True, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- tl-ray trials ---------------------------------------------------------------------------
def default_threads_trial(config: dict, base_spec: dict) -> None:
    """tl-ray's trial function without configure_tensorflow: TensorFlow as Ray leaves it."""
    from tl_ray.spec import validate
    from tl_ray.train.loop import train
    from tl_ray.tune.trainable import TuneReporter

    with TuneReporter() as reporter:
        train(validate(base_spec), reporter)


def run_trial(spec_data: dict, default_threads: bool = False) -> dict:
    from ray import tune

    from tl_ray.spec import validate
    from tl_ray.tune.sweep import run_sweep
    from tl_ray.tune.tuner import run_tuner

    spec = validate(spec_data)
    name = f"{spec.name}-{int(time.time())}"
    if default_threads:  # the same Tune experiment as run_sweep's, with the trial function above
        result = run_tuner(spec, name, tune.with_parameters(default_threads_trial, base_spec=spec.to_dict()), {})
    else:
        result = run_sweep(spec, experiment=name)
    row = result.rows[0]
    if row.status != "DONE":
        raise RuntimeError(f"{spec.name}: {row.error}")
    rows = _results(result.experiment_path)
    rates = [r["images_per_s"] for r in rows[1:]]
    last = rows[-1]
    return {"images_per_s": statistics.median(rates), "threads": last.get("intra_op_threads"),
            "peak_rss_mb": last.get("peak_rss_mb")}


def _results(experiment_path: str) -> list[dict]:
    trials = [d for d in storage.list_dir(experiment_path)
              if storage.exists(storage.join(experiment_path, d, "result.json"))]
    text = storage.read_text(storage.join(experiment_path, trials[0], "result.json"))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keras-child", metavar="STORE", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help="steps per epoch (default 20; --smoke 2)")
    parser.add_argument("--epochs", type=int, help="epochs; the first is excluded (default 3; --smoke 2)")
    parser.add_argument("--threads", type=int, default=2, help="CPUs for the 1-worker runs (default 2)")
    parser.add_argument("--store", help="store folder (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="rows 1-3 at tiny sizes: checks the benchmark runs")
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.smoke else 20)
    args.epochs = args.epochs or (2 if args.smoke else 3)
    if args.keras_child:
        keras_child(args.keras_child, args.steps, args.epochs, args.threads)
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tmp = tempfile.TemporaryDirectory(prefix="tlray-bench-")
    store = args.store or tmp.name
    from tl_ray.data.ingest import FASHION_MNIST_DIR, ingest_fashion_mnist

    if not storage.exists(storage.join(store, "datasets/bench/train/_manifest.json")):
        ingest_fashion_mnist(storage.join(store, "datasets/bench/train"), path=FASHION_MNIST_DIR, per_class=300,
                             rows_per_shard=1024, overwrite=True)
    import ray

    load = os.getloadavg()
    started = time.perf_counter()
    rows = [("plain Keras model.fit, in-memory arrays", "OneDevice", "1 process x 2 CPU",
             run_keras(store, args.steps, args.epochs, args.threads))]
    # One logical CPU more than the cores: a multi-worker trial itself holds 0.01 CPU besides its workers.
    ray.init(address="local", num_cpus=args.threads + 1, include_dashboard=False, log_to_driver=False)
    try:
        s, e, t = args.steps, args.epochs, args.threads
        rows.append(("tl-ray trial, reader from store", "OneDevice", f"1 worker x {t} CPU",
                     run_trial(base_spec(store, "bench-one", s, e, cpus_per_worker=t))))
        rows.append(("tl-ray trial, Ray's default threads", "OneDevice", f"1 worker x {t} CPU",
                     run_trial(base_spec(store, "bench-default", s, e, cpus_per_worker=t), default_threads=True)))
        if not args.smoke:  # the same trial with another spec: bench_gpu.py's smoke runs both strategies
            rows.append(("tl-ray trial, 2 Ray workers", "MultiWorkerMirrored", "2 workers x 1 CPU",
                         run_trial(base_spec(store, "bench-mwms", s, e, workers=2, cpus_per_worker=1))))
            rows.append(("tl-ray trial, 2 logical CPU devices", "Mirrored", f"1 worker x {t} CPU",
                         run_trial(base_spec(store, "bench-mirrored", s, e, cpus_per_worker=t, cpu_devices=2))))
    finally:
        ray.shutdown()
    elapsed = time.perf_counter() - started

    keras_rate = rows[0][3]["images_per_s"]
    one = rows[1][3]["images_per_s"]
    print(f"\n# bench_train  {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  {os.cpu_count()} CPUs  "
          f"load before {load[0]:.2f}  wall {elapsed:.0f}s")
    print(f"mobilenet_v2 alpha 0.35, 32x32, global batch {BATCH}, {args.steps} steps x {args.epochs} epochs "
          "(first excluded), full fine-tuning, Adam\n")
    header = ("run", "strategy", "workers", "images/s", "vs Keras", "vs tl-ray 1 device", "TF intra-op", "peak RSS MB")
    table = [header]
    for label, strategy, workers, r in rows:
        table.append((label, strategy, workers, f"{r['images_per_s']:.0f}", f"{r['images_per_s'] / keras_rate:.2f}x",
                      f"{r['images_per_s'] / one:.2f}x", str(r["threads"] or "default"),
                      f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    ratio = one / keras_rate
    print(f"\ngoal tl-ray >= {GOAL}x plain Keras: {ratio:.3f}x -> {'MET' if ratio >= GOAL else 'MISSED'}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
