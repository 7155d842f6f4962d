"""Data-plane benchmark: can tl-ray's readers feed the model from local disk and from S3?

    .venv/bin/python benchmarks/bench_data.py               # the full run (~6 min on 2 cores)
    .venv/bin/python benchmarks/bench_data.py --rows 12000  # a quick look
    .venv/bin/python benchmarks/bench_data.py --smoke       # 500 rows, 2 train steps: does it run?

One run, side by side, on the Fashion-MNIST train split read at 32x32 (stored as
28x28 PNG, decoded and resized in tf.data):

1. images/s delivered as batches of 128 by (a) in-memory tensors, (b) local Parquet,
   (c) local TFRecord, (d) Parquet on an S3 API server (moto) on loopback,
   (e) TFRecord on it;
2. images/s the benchmark model consumes in a train step (mobilenet_v2 alpha 0.35,
   weights none, freeze full, 32x32, batch 128; DistributedStep on OneDeviceStrategy);
3. a real training epoch fed from in-memory tensors and from S3 (each format): stall
   fraction = 1 - time(in-memory) / time(S3);
4. peak RSS of a process streaming a dataset 10x and 40x its shuffle buffer.

Then ratios against the goals: S3 >= 0.8x local per format; every reader >= 5x the
model's consumption; stall fraction < 5%; RSS flat as the dataset grows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 128
SIZE = (32, 32)
SHUFFLE = 2048


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"moto_server exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
    return proc, endpoint


def per_class_for(rows: int) -> int | None:
    return None if rows >= 60000 else max(1, rows // 10)


def drain(ds) -> tuple[int, float, float]:
    """(images, seconds, seconds to the first batch) of one pass over ``ds``."""
    start = time.perf_counter()
    first, n = None, 0
    for x, _ in ds:
        n += int(x.shape[0])
        if first is None:
            first = time.perf_counter() - start
    return n, time.perf_counter() - start, first or 0.0


def in_memory(images, labels):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(SHUFFLE, seed=0)
    return ds.batch(BATCH, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def model_and_step():
    import keras
    import tensorflow as tf

    from tl_ray.models.build import build_model
    from tl_ray.spec import ModelSpec
    from tl_ray.train.step import DistributedStep

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    spec = ModelSpec(backbone="mobilenet_v2", backbone_args={"alpha": 0.35}, weights="none",
                     freeze={"mode": "full"})
    with strategy.scope():
        model = build_model(spec, 10, SIZE, seed=0)
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(model.trainable_variables)
    return strategy, DistributedStep(strategy, model, optimizer, BATCH)


def train_epoch(strategy, step, dataset_fn, steps: int) -> float:
    """Seconds for ``steps`` train steps fed by ``dataset_fn`` (after one warm-up step)."""
    it = iter(strategy.distribute_datasets_from_function(dataset_fn))
    step.train_step(next(it)).numpy()
    start = time.perf_counter()
    for _ in range(steps):
        out = step.train_step(next(it))
    out.numpy()
    return time.perf_counter() - start


# A fresh process per measurement; VmHWM (peak RSS) starts anew at exec, unlike ru_maxrss.
RSS_CHILD = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, sys.argv[3])
from tl_ray.data.reader import make_dataset

def hwm_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

ds = make_dataset(sys.argv[1], image_size=(32, 32), batch_size=128, shuffle=True, shuffle_buffer=int(sys.argv[2]))
before = hwm_mib()
n = sum(int(x.shape[0]) for x, _ in ds)
print(json.dumps({"rows": n, "rss_before_mib": before, "peak_rss_mib": hwm_mib()}))
"""


def scaled_copy(uri: str, times: int, shards: int, to: str) -> str:
    """A dataset at ``to`` listing copies of the first ``shards`` shards of ``uri``, each ``times`` times."""
    from tl_ray import store
    from tl_ray.data.manifest import read_manifest, write_manifest

    manifest = read_manifest(uri)
    manifest.shards = [s for _ in range(times) for s in manifest.shards[:shards]]
    manifest.num_rows = sum(s.rows for s in manifest.shards)
    write_manifest(to, manifest)
    for name in {s.path for s in manifest.shards}:
        if not store.exists(store.join(to, name)):
            store.write_bytes(store.join(to, name), store.read_bytes(store.join(uri, name)))
    return to


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, help="Fashion-MNIST train rows (default: all 60000; --smoke 500)")
    parser.add_argument("--train-steps", type=int, help="train steps per fed epoch (default: one epoch; --smoke 2)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    args = parser.parse_args()
    args.rows = args.rows or (500 if args.smoke else 60000)
    args.train_steps = args.train_steps or (2 if args.smoke else None)

    moto, endpoint = start_moto()
    work = Path(tempfile.mkdtemp(prefix="tlray-bench-"))
    try:
        run(args, work, endpoint)
    finally:
        moto.kill()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, endpoint: str) -> None:
    import numpy as np
    import tensorflow as tf

    from tl_ray import store
    from tl_ray.data.images import prepare_array
    from tl_ray.data.ingest import ingest_fashion_mnist
    from tl_ray.data.reader import make_dataset
    from tl_ray.data.sources import load_fashion_mnist

    figures: dict = {"rows": args.rows}
    bucket = "s3://tlray-bench/datasets"
    store.ensure_bucket(bucket)
    uris = {}
    for fmt in ("parquet", "tfrecord"):
        t = time.perf_counter()
        report = ingest_fashion_mnist(str(work / fmt), per_class=per_class_for(args.rows), format=fmt)
        figures[f"ingest_{fmt}_s"] = time.perf_counter() - t
        figures[f"{fmt}_shards"] = report["train"]["shards"]
        figures[f"{fmt}_mib"] = sum(p.stat().st_size for p in (work / fmt).iterdir()) / 2**20
        store.upload_dir(work / fmt, f"{bucket}/fm-{fmt}", marker="_manifest.json")
        uris[f"local {fmt}"], uris[f"S3 {fmt}"] = str(work / fmt), f"{bucket}/fm-{fmt}"
    rows = figures["rows"] = report["train"]["rows"]
    print(f"ingested {rows} rows: parquet {figures['ingest_parquet_s']:.1f}s, tfrecord "
          f"{figures['ingest_tfrecord_s']:.1f}s; S3 API at {endpoint}", file=sys.stderr)

    images, labels = load_fashion_mnist(split="train")
    if rows < len(labels):
        images, labels = images[:rows], labels[:rows]
    memory = (prepare_array(images, SIZE), labels.astype(np.int32))

    def reader(uri, epoch=0):
        return make_dataset(uri, image_size=SIZE, batch_size=BATCH, shuffle=True, seed=0, epoch=epoch,
                            shuffle_buffer=SHUFFLE, drop_remainder=True)

    readers = {"in-memory tensors": lambda: in_memory(*memory)}
    readers.update({name: (lambda uri=uri: reader(uri)) for name, uri in uris.items()})
    delivered = {}
    for name, make in readers.items():
        n, seconds, first = drain(make())
        delivered[name] = n / seconds
        figures[f"first_batch_s[{name}]"] = first
        print(f"  {name:18s} {n / seconds:9.0f} images/s (first batch after {first:.2f}s)", file=sys.stderr)
    figures["delivered"] = delivered

    strategy, step = model_and_step()
    batch = next(iter(in_memory(*memory)))
    for _ in range(3):
        step.train_step(batch).numpy()
    t = time.perf_counter()
    model_steps = 20
    for _ in range(model_steps):
        out = step.train_step(batch)
    out.numpy()
    consumes = figures["model_images_per_s"] = model_steps * BATCH / (time.perf_counter() - t)
    print(f"  model consumes     {consumes:9.0f} images/s", file=sys.stderr)

    steps = args.train_steps or rows // BATCH - 1
    epoch_s = {"in-memory tensors": train_epoch(strategy, step, lambda ctx: in_memory(*memory).repeat(), steps)}
    for fmt in ("parquet", "tfrecord"):
        epoch_s[f"S3 {fmt}"] = train_epoch(
            strategy, step, lambda ctx, fmt=fmt: reader(uris[f"S3 {fmt}"], epoch=1).repeat(), steps
        )
    figures["train_steps"], figures["train_epoch_s"] = steps, epoch_s
    stall = {k: 1 - epoch_s["in-memory tensors"] / v for k, v in epoch_s.items() if k != "in-memory tensors"}
    figures["stall_fraction"] = stall

    rss = {}
    for fmt in ("parquet", "tfrecord"):
        for times, shards in ((1, 5), (4, 5)):  # 20480 and 81920 rows: 10x and 40x the shuffle buffer
            target = f"{bucket}/rss-{fmt}-{times}x"
            scaled_copy(uris[f"S3 {fmt}"], times, min(shards, figures[f"{fmt}_shards"]), target)
            out = subprocess.run([sys.executable, "-c", RSS_CHILD, target, str(SHUFFLE), str(ROOT)],
                                 capture_output=True, text=True, env=os.environ, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rss[f"S3 {fmt}, {result['rows']} rows"] = result
            print(f"  RSS {fmt} {result['rows']:6d} rows: peak {result['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    figures["rss"] = rss
    report_table(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    tf.keras.backend.clear_session()


def report_table(f: dict) -> None:
    d, consumes = f["delivered"], f["model_images_per_s"]
    print(f"\nFashion-MNIST train, {f['rows']} rows, read at 32x32, batch {BATCH}, shuffle buffer {SHUFFLE}")
    print(f"{'source':20s} {'images/s':>10s} {'x model':>8s} {'x local':>8s}  goal")
    for name, rate in d.items():
        fmt = name.split()[-1]
        vs_local = f"{rate / d[f'local {fmt}']:.2f}" if name.startswith("S3") else "-"
        goals = [f"x model >= 5: {'met' if rate >= 5 * consumes else 'MISSED'}"]
        if name.startswith("S3"):
            goals.append(f"x local >= 0.8: {'met' if rate >= 0.8 * d[f'local {fmt}'] else 'MISSED'}")
        print(f"{name:20s} {rate:10.0f} {rate / consumes:8.2f} {vs_local:>8s}  {'; '.join(goals)}")
    print(f"{'model train step':20s} {consumes:10.0f}")
    print(f"\ntraining, {f['train_steps']} steps of {BATCH}:")
    for name, seconds in f["train_epoch_s"].items():
        stall = f["stall_fraction"].get(name)
        extra = f"  stall {stall:+.1%} ({'met' if stall < 0.05 else 'MISSED'} < 5%)" if stall is not None else ""
        print(f"  {name:18s} {seconds:7.1f} s{extra}")
    print("\npeak RSS streaming (shuffle buffer 2048):")
    for name, r in f["rss"].items():
        print(f"  {name:28s} peak {r['peak_rss_mib']:6.0f} MiB (after start-up {r['rss_before_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
