"""GPU scaling through tl-ray, measured on the machine it runs on.

    python benchmarks/bench_gpu.py                          # on a GPU node: every row at 224x224
    python benchmarks/bench_gpu.py --steps 10 --epochs 2    # quicker
    python benchmarks/bench_gpu.py --backbone resnet50 --json gpu.json   # another model; figures to a file
    python benchmarks/bench_gpu.py --smoke                  # tiny: does it run? (see below)

On a machine where TensorFlow sees no GPU it prints one line saying so and exits 0;
nothing is measured. The table it prints on a GPU node is what goes in
benchmarks/RESULTS.md.

Every row is one tl-ray trial through ``run_sweep`` on a local Ray, from one spec
that only the named fields change:

1. ``train.gpus_per_worker = k`` for k = 1, 2, ..., N (all the node's GPUs): one
   worker, MirroredStrategy over its k GPUs;
2. ``train.workers = 2`` x 1 GPU: two Ray Train workers under MultiWorkerMirroredStrategy
   (needs N >= 2);
3. the N-GPU row again with ``train.precision = mixed_float16``;
4. the reader alone (``make_dataset``, no model) in a process of its own with every
   CPU, on the same dataset at the same size, against the images/s the 1-GPU, N-GPU
   and mixed-precision trials consume: does the input keep up?

Columns: images/s (median over the epochs after the first: tracing excluded), speed-up
against 1 GPU, scaling efficiency = images/s / (k x 1-GPU images/s), and the largest
relative difference of the epoch loss curve from the 1-GPU curve.

The global batch is the same in every row (default 64 x N), so rows differ only in how
a batch is split; the data is one shard read in order (shuffle buffer 1), so every row
trains on the same global batches and the loss curves must agree up to round-off
(``--loss-rtol``; GPU kernels are not bit-deterministic and replicas sum in another
order). Model: mobilenet_v2 (``--backbone``, alpha 1.0) from its ImageNet weights (Keras
downloads them once; ``--weights none`` for random ones), fine-tuned with every
convolution and dense layer training and BatchNormalization frozen in inference mode
(tl-ray's ``fine_tune``, every layer unfrozen), as transfer learning does. Trained
BatchNormalization would normalise with each replica's own batch statistics (Keras'
is not synchronised across replicas), a real reason for the curves to differ; and a
random network whose BatchNormalization is frozen barely learns (its features fade
layer by layer), so its curves agree trivially. Adam 1e-3.

Data: Fashion-MNIST train images resized to 224x224 (bilinear) and stored as RGB JPEGs
(quality 90), ingested by ``ingest_folder`` into one Parquet shard; the reader decodes
them per example as in training. Decoding costs what a 224-px photo costs; the files
are smaller than photos (smooth, upscaled images), so reading bytes costs less.

``--smoke``: 2 steps x 2 epochs, mobilenet_v2 alpha 0.35 at 32x32 with random weights
(nothing to download), global batch 32. On a machine without GPUs it runs every row on
the CPU instead, 2 logical CPU devices (``train.cpu_devices = 2``) standing in for 2
GPUs; the table says so, and its figures are not GPU measurements (nor, at that size,
any measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_data import drain
from bench_sweep import trial_rows

ROOT = Path(__file__).resolve().parent.parent
LOSS_RTOL = 0.01
EVERY_LAYER = 10_000  # fine_tune's unfreeze_top: more weighted layers than any backbone has
NO_GPU = ("bench_gpu: no GPU on this machine: nothing measured. Run it on a GPU node; the table it prints goes in "
          "benchmarks/RESULTS.md.")


def tensorflow_gpus() -> int:
    """GPUs TensorFlow can use here; then hides them from this process's TensorFlow.

    This process is the sweep's driver, beside the trials on the same node: were anything in it to run a
    TensorFlow op, TensorFlow would take nearly all the memory of every GPU it sees until the driver exits.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    tf.config.set_visible_devices([], "GPU")
    return len(gpus)


def nvidia_smi(*query: str) -> list[str]:
    """Lines of ``nvidia-smi`` run with ``query``; none when it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    out = subprocess.run([exe, *query], capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


# -- data ------------------------------------------------------------------------------------
def jpeg_dataset(store: str, size: int, per_class: int) -> str:
    """Fashion-MNIST train images at ``size`` px as RGB JPEGs, ingested into one shard; returns its URI."""
    from PIL import Image

    from tl_ray import store as storage
    from tl_ray.data.ingest import ingest_folder
    from tl_ray.data.sources import load_fashion_mnist

    uri = storage.join(store, f"datasets/gpu-{size}px-{per_class}/train")
    if storage.exists(storage.join(uri, "_manifest.json")):
        return uri
    images, labels = load_fashion_mnist(split="train")
    with tempfile.TemporaryDirectory(prefix="tlray-bench-jpeg-") as folder:
        for label in range(10):
            (Path(folder) / f"class_{label}").mkdir()
            for i in [int(i) for i in (labels == label).nonzero()[0][:per_class]]:
                image = Image.fromarray(images[i]).resize((size, size), Image.BILINEAR).convert("RGB")
                image.save(Path(folder) / f"class_{label}" / f"{i:05d}.jpg", quality=90)
        ingest_folder(folder, uri, rows_per_shard=10 * per_class, target_shard_mb=4096, overwrite=True)
    return uri


def reader_child(uri: str, size: int, batch: int, batches: int) -> None:
    """Prints the reader's images/s on ``uri`` as one JSON line (run with no GPU visible: see ``run_reader``)."""
    from tl_ray.train.runtime import configure_tensorflow

    threads = os.cpu_count() or 1
    configure_tensorflow(threads)
    from tl_ray.data.reader import make_dataset

    ds = make_dataset(uri, image_size=(size, size), batch_size=batch, shuffle=True, shuffle_buffer=1,
                      drop_remainder=True, repeat=True).take(batches)
    images, seconds, first = drain(ds)
    # The first batch pays for opening the shard and filling tf.data's buffers: left out, as the trials leave
    # their first epoch out.
    print(json.dumps({"images_per_s": (images - batch) / (seconds - first), "threads": threads}))


def run_reader(uri: str, size: int, batch: int, batches: int) -> dict:
    """``reader_child`` in a process of its own, GPUs hidden so it takes no GPU memory from the trials."""
    out = subprocess.run(
        [sys.executable, __file__, "--reader-child", uri, "--size", str(size), "--batch", str(batch),
         "--steps", str(batches)],
        check=True, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- trials ----------------------------------------------------------------------------------
def base_spec(args, store: str, uri: str) -> dict:
    return {
        "name": "bench-gpu",
        "storage": store,
        "data": {"train": uri, "image_size": [args.size, args.size], "shuffle_buffer": 1},
        "model": {"backbone": args.backbone, "backbone_args": {"alpha": args.alpha} if args.alpha else {},
                  "weights": args.weights, "head": {"dropout": 0.0},
                  "freeze": {"mode": "fine_tune", "unfreeze_top": EVERY_LAYER}},
        "train": {"epochs": args.epochs, "batch_size": args.batch, "learning_rate": 1e-3,
                  "steps_per_epoch": args.steps, "checkpoint_every": args.epochs},
        "tune": {"num_samples": 1, "scheduler": "fifo", "metric": "loss", "mode": "min"},
    }


def run_row(base: dict, name: str, **train) -> dict:
    """One trial of ``base`` with ``train`` fields set: its images/s and loss curve, or the error it failed with."""
    from tl_ray.spec import validate
    from tl_ray.tune.sweep import run_sweep

    spec = validate({**base, "name": name, "train": {**base["train"], **train}})
    try:
        result = run_sweep(spec, experiment=f"{name}-{int(time.time())}")
    except Exception as exc:  # noqa: BLE001 - one failed row (say, out of GPU memory) leaves the others
        return {"error": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"}
    row = result.rows[0]
    if row.status != "DONE":
        return {"error": (row.error or row.status).strip().splitlines()[-1].strip()}
    epochs = trial_rows(result)[0]
    return {"images_per_s": statistics.median(r["images_per_s"] for r in epochs[1:] or epochs),
            "loss": [r["loss"] for r in epochs], "peak_rss_mb": epochs[-1].get("peak_rss_mb")}


def plan_rows(gpus: int, cpus: int, stand_in: int, batch: int) -> list[tuple[str, str, int, dict]]:
    """(label, strategy, devices, train fields) of every trial row: on ``gpus`` GPUs, or with no GPU on
    ``stand_in`` logical CPU devices standing in for them. A device count that does not divide the global
    ``batch`` has no row (``main`` makes sure the largest does)."""
    n = gpus or stand_in
    unit = "GPU" if gpus else "CPU device"

    def devices(k: int) -> dict:
        if gpus:
            return {"gpus_per_worker": k}
        return {"gpus_per_worker": 0, "cpu_devices": k if k > 1 else 0}

    rows = [(f"{k} {unit}{'s' if k > 1 else ''}", "Mirrored" if gpus or k > 1 else "OneDevice", k,
             {**devices(k), "cpus_per_worker": cpus}) for k in range(1, n + 1) if batch % k == 0]
    _, strategy, _, widest = rows[-1]  # n devices in one worker
    if n >= 2:
        rows.append((f"2 Ray workers x 1 {unit}", "MultiWorkerMirrored", 2,
                     {**devices(1), "workers": 2, "cpus_per_worker": max(1, cpus // 2)}))
    rows.append((f"{n} {unit}{'s' if n > 1 else ''}, mixed_float16", strategy, n,
                 {**widest, "precision": "mixed_float16"}))
    return rows


def input_verdict(ratio: float) -> str:
    """What reader images/s / trial images/s says. The trial reads through the same reader, so it cannot
    consume more than its reader delivers: near 1, the reader may be what sets the trial's pace."""
    if ratio >= 1.5:
        return "keeps up"
    return "at the edge: the trial may be waiting on input" if ratio >= 1 else "does NOT keep up: input-bound"


def max_rel_diff(curve: list[float], reference: list[float]) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(curve, reference))


# -- the report ------------------------------------------------------------------------------
def print_table(table: list[tuple[str, ...]]) -> None:
    """A Markdown table, header first, columns padded (paste it as it is)."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for i, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def report(args, figures: dict) -> None:
    rows, reader = figures["rows"], figures["reader"]
    one = rows[0].get("images_per_s")
    n_row = next(r for r in rows if r["devices"] == figures["devices"] and r["precision"] == "float32"
                 and r["strategy"] != "MultiWorkerMirrored")
    unit = figures["unit"]
    table = [("run", "strategy", "precision", "images/s", f"vs 1 {unit}", "scaling efficiency",
              f"loss max rel diff vs 1 {unit} (tol {args.loss_rtol:g})")]
    for r in rows:
        if "error" in r:
            table.append((r["label"], r["strategy"], r["precision"], "failed", "-", "-", r["error"][:80]))
            continue
        rate, fp32 = r["images_per_s"], r["precision"] == "float32"
        diff = max_rel_diff(r["loss"], rows[0]["loss"]) if "loss" in rows[0] else None
        verdict = "-" if diff is None else f"{diff:.2e}" + (
            (" ok" if diff <= args.loss_rtol else " OVER") if fp32 else " (float16: not held to it)")
        table.append((r["label"], r["strategy"], r["precision"], f"{rate:.0f}", f"{rate / one:.2f}x" if one else "-",
                      f"{rate / (r['devices'] * one):.0%}" if one and fp32 else "-", verdict))
    table.append((f"reader alone, {args.size} px JPEG", "-", "-", f"{reader['images_per_s']:.0f}", "-", "-", "-"))
    print_table(table)
    mixed = rows[-1]
    if "images_per_s" in mixed and "images_per_s" in n_row:
        print(f"\nmixed precision speed-up at {figures['devices']} {unit}s: "
              f"{mixed['images_per_s'] / n_row['images_per_s']:.2f}x (mixed_float16 vs float32)")
    print(f"input at {args.size} px: the reader alone delivers {reader['images_per_s']:.0f} images/s "
          f"({reader['threads']} CPUs)")
    for r in (rows[0], n_row, mixed):
        if "images_per_s" in r:
            ratio = reader["images_per_s"] / r["images_per_s"]
            print(f"  {ratio:6.2f}x what {r['label']} consumes ({r['images_per_s']:.0f} images/s): "
                  f"{input_verdict(ratio)}")


def header(args, figures: dict) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"\n# bench_gpu  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  commit {commit.strip() or '?'}  "
          f"{platform.node()}  {os.cpu_count()} CPUs  wall {figures['wall_s']:.0f}s")
    if figures["unit"] == "GPU":
        print("GPUs: " + "; ".join(figures["gpu_names"]))
    else:
        print(f"CPU STAND-IN, NOT A GPU MEASUREMENT: no GPU here; {figures['devices']} logical CPU devices "
              "(train.cpu_devices) stand in for GPUs, to show the benchmark runs end to end.")
    weights = "ImageNet weights" if args.weights == "imagenet" else f"weights {args.weights}"
    print(f"{args.backbone}{f' alpha {args.alpha}' if args.alpha else ''}, {weights}, fine_tune every layer (BatchNorm "
          f"frozen), {args.size}x{args.size} JPEG, global batch {args.batch} in every row, {args.steps} steps x "
          f"{args.epochs} epochs (first excluded), Adam 1e-3")
    skipped = [k for k in range(1, figures["devices"]) if args.batch % k]
    if skipped:
        print(f"no row for {', '.join(map(str, skipped))} {figures['unit']}s: the global batch {args.batch} does not "
              "split evenly (--batch sets it)")
    if args.weights == "none":
        print("random weights with BatchNorm frozen barely learn: the loss column checks little here")
    print()


def measure(args, store: str, gpus: int) -> dict:
    import ray

    cpus = os.cpu_count() or 1
    uri = jpeg_dataset(store, args.size, args.per_class)
    plan = plan_rows(gpus, cpus, 2, args.batch)
    started = time.perf_counter()
    # One logical CPU more than the cores: a multi-worker trial itself holds 0.01 CPU besides its workers.
    ray.init(address="local", num_cpus=cpus + 1, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    try:
        base = base_spec(args, store, uri)
        rows = []
        for label, strategy, devices, train in plan:
            print(f"bench_gpu: {label} ...", file=sys.stderr, flush=True)
            rows.append({"label": label, "strategy": strategy, "devices": devices,
                         "precision": train.get("precision", "float32"), "train": train,
                         **run_row(base, f"bench-gpu-{len(rows)}", **train)})
    finally:
        ray.shutdown()
    reader = run_reader(uri, args.size, args.batch, 3 * args.steps)
    return {"unit": "GPU" if gpus else "CPU device", "devices": gpus or 2, "rows": rows, "reader": reader,
            "gpu_names": nvidia_smi("--query-gpu=name,memory.total", "--format=csv,noheader"),
            "wall_s": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reader-child", metavar="URI", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help="steps per epoch (default 20; --smoke 2)")
    parser.add_argument("--epochs", type=int, help="epochs; the first is excluded from images/s (default 3; --smoke 2)")
    parser.add_argument("--batch", type=int, help="global batch of every row (default 64 x GPUs; --smoke 32)")
    parser.add_argument("--size", type=int, help="image size in px (default 224; --smoke 32)")
    parser.add_argument("--backbone", default="mobilenet_v2", help="keras.applications backbone (default mobilenet_v2)")
    parser.add_argument("--weights", help="imagenet or none (default imagenet; --smoke none)")
    parser.add_argument("--alpha", type=float, help="mobilenet width multiplier (default 1.0; --smoke 0.35)")
    parser.add_argument("--per-class", type=int, help="images per class in the dataset (default 100; --smoke 10)")
    parser.add_argument("--loss-rtol", type=float, default=LOSS_RTOL,
                        help=f"largest relative loss difference from the 1-device curve (default {LOSS_RTOL})")
    parser.add_argument("--store", help="store folder, the dataset reused (default: a temporary folder)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes; without a GPU, 2 logical CPU devices stand in: checks the benchmark runs")
    args = parser.parse_args()
    smoke = args.smoke
    args.steps = args.steps or (2 if smoke else 20)
    args.epochs = args.epochs or (2 if smoke else 3)
    args.size = args.size or (32 if smoke else 224)
    args.per_class = args.per_class or (10 if smoke else 100)
    args.weights = args.weights or ("none" if smoke else "imagenet")
    if args.alpha is None and args.backbone.startswith("mobilenet"):
        args.alpha = 0.35 if smoke else 1.0
    if args.reader_child:
        reader_child(args.reader_child, args.size, args.batch, args.steps)
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    gpus = tensorflow_gpus()
    listed = nvidia_smi("-L")
    if not gpus and listed and not smoke:
        print(f"bench_gpu: nvidia-smi lists {len(listed)} GPU(s) but TensorFlow sees none (a CPU-only build, or "
              "CUDA libraries missing: pip install 'tensorflow[and-cuda]'): nothing measured.")
        return 1
    if not gpus and not smoke:
        print(NO_GPU)
        return 0
    args.batch = args.batch or (32 if smoke else 64 * gpus)
    if args.batch % (gpus or 2):
        parser.error(f"--batch must be a multiple of the {gpus or 2} devices. Received: {args.batch}.")
    with tempfile.TemporaryDirectory(prefix="tlray-bench-") as tmp:
        figures = measure(args, args.store or tmp, gpus)
    header(args, figures)
    report(args, figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 1 if any("error" in r for r in figures["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
