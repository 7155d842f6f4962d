"""What reading published objects back costs: ingest and promotion with and without it, side by side.

    .venv/bin/python benchmarks/bench_readback.py             # 7 rounds of each (~2 min on 2 cores)
    .venv/bin/python benchmarks/bench_readback.py --rounds 2  # a quick look
    .venv/bin/python benchmarks/bench_readback.py --smoke     # one round: does it run?

On an S3 API server on loopback (moto, started here on a free port), each round runs, in
alternating order so a noisy neighbour slows both alike:

1. ingest: Fashion-MNIST classes 0-1, 200 rows each, 100 rows per shard, Parquet (4 shards and a manifest);
2. promotion's store part: publish a 2 MiB model folder as v1 of a new model name (claim, upload,
   metadata.json) and point its production alias at it (a fresh name each time, so every run does
   the same requests).

with ``readback.ENABLED`` on and off. It prints the median seconds of each, their ratio, and the
requests each sent by kind (counted on the boto3 client's ``before-send`` event).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import start_moto  # noqa: E402 - after the path set-up above


def counted(job, counter: Counter) -> float:
    """Runs ``job``, counting each request the shared boto3 client sends by operation; returns its seconds."""
    from tl_ray.store import s3

    def on_send(request, **_):
        counter["LIST" if "list-type=" in request.url else request.method] += 1

    events = s3.client().meta.events
    events.register("before-send.s3.*", on_send)
    try:
        start = time.perf_counter()
        job()
        return time.perf_counter() - start
    finally:
        events.unregister("before-send.s3.*", on_send)


def ingest_once(root: str, fashion: str) -> None:
    from tl_ray.data.ingest import ingest_fashion_mnist

    ingest_fashion_mnist(f"{root}/datasets/{uuid.uuid4().hex[:8]}", path=fashion, classes=[0, 1], per_class=200,
                         rows_per_shard=100)


def promote_once(root: str, model_dir: Path) -> None:
    from tl_ray.registry.store import Registry

    registry, name = Registry(root), f"bench-{uuid.uuid4().hex[:8]}"
    version = registry.publish(name, model_dir, {"metrics": {"val_accuracy": 0.9}})
    registry.set_alias(name, "production", version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="rounds of each job (default 7; --smoke 1)")
    parser.add_argument("--smoke", action="store_true", help="one round: checks the benchmark runs")
    parser.add_argument("--fashion", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.smoke else 7)
    proc, endpoint = start_moto()
    try:
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_REGION="us-east-1")
        from tl_ray import store
        from tl_ray.store import readback

        root = f"s3://bench-readback-{uuid.uuid4().hex[:6]}/store"
        store.ensure_bucket(root)
        model_dir = Path(tempfile.mkdtemp()) / "model"
        (model_dir / "variables").mkdir(parents=True)
        (model_dir / "model.keras").write_bytes(os.urandom(2 << 20))
        (model_dir / "variables" / "variables.index").write_bytes(os.urandom(4096))
        jobs = {"ingest": lambda: ingest_once(root, args.fashion), "promotion": lambda: promote_once(root, model_dir)}
        for job in jobs.values():  # warm-up: imports, the client, the conditional-write probe
            job()
        seconds = {(name, on): [] for name in jobs for on in (True, False)}
        requests = {(name, on): Counter() for name in jobs for on in (True, False)}
        for r in range(args.rounds):
            for name, job in jobs.items():
                for on in ((True, False) if r % 2 == 0 else (False, True)):
                    readback.ENABLED = on
                    requests[(name, on)] = Counter()
                    seconds[(name, on)].append(counted(job, requests[(name, on)]))
        readback.ENABLED = True
        print(f"{'':<10} {'with read-back s':>16} {'without s':>10} {'ratio':>6}  added requests (per run)")
        for name in jobs:
            with_, without = (statistics.median(seconds[(name, on)]) for on in (True, False))
            added = requests[(name, True)] - requests[(name, False)]
            print(f"{name:<10} {with_:>16.3f} {without:>10.3f} {with_ / without:>6.3f}  {dict(added) or 'none'}")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
