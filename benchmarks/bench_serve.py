"""Serving benchmark: in-process predict vs the tl-ray Serve endpoint vs a naive FastAPI server,
plus autoscaling under a step load. One run, side by side, same model, loopback only.

    .venv/bin/python benchmarks/bench_serve.py                  # everything (~7 min on 2 cores)
    .venv/bin/python benchmarks/bench_serve.py --skip-autoscale
    .venv/bin/python benchmarks/bench_serve.py --smoke          # 1 s per level, no (b') nor autoscaling

Model: ``fashion-transfer:production`` from ./tlray-store when the quickstart has promoted it;
otherwise a MobileNetV2 (alpha 0.35, 32x32, random weights) published in a temporary store. The
output says which. Every client request carries one 32x32 PNG (``image/png``).

(a) ``Predictor.predict`` in this process on batches of ``max_batch_size`` (the limit), and on one
    image (the latency floor); (b) the tl-ray endpoint over HTTP at concurrency 1, 8, 32 (one
    replica holding both cores); (c) one uvicorn process whose FastAPI handler calls
    ``model.predict`` once per request, at the same concurrencies. (b) runs twice: batch wait
    2 ms (latency-oriented) and 20 ms (b', throughput-oriented), each with the ceiling of Serve's
    HTTP path here (``GET /healthz``, no model). Then a step load against an autoscaling
    deployment (1 → 2 replicas of one core each); the replica curve goes to a PNG.
Loops are bounded by both request count and time. ``--smoke`` checks that the benchmark runs: 1 s
per measurement, (b) at one batch wait, no autoscaling, and no JSON unless ``--json`` is given.
"""


import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE = (32, 32)
CONCURRENCY = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*SIZE, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# -- the model ---------------------------------------------------------------------------
def find_model(tmp: str) -> tuple[str, str, str]:
    """(storage, ref, description): the quickstart's promoted model, or a stand-in published in ``tmp``."""
    from tl_ray.errors import RegistryError
    from tl_ray.registry.store import Registry

    store = str(ROOT / "tlray-store")
    try:
        name, version = Registry(store).resolve("fashion-transfer:production")
        return store, f"{name}:v{version}", f"quickstart's promoted model fashion-transfer:v{version} from ./tlray-store"
    except RegistryError:
        pass
    from tl_ray.models.build import build_model
    from tl_ray.models.export import export_model
    from tl_ray.spec import ModelSpec

    model = build_model(ModelSpec(backbone="mobilenet_v2", backbone_args={"alpha": 0.35}, weights="none"), 5, SIZE, seed=0)
    export_model(model, Path(tmp) / "export")
    registry = Registry(tmp)
    version = registry.publish("bench", Path(tmp) / "export",
                               {"image_size": list(SIZE), "class_names": [f"c{i}" for i in range(5)]})
    registry.set_alias("bench", "production", version)
    return tmp, f"bench:v{version}", (
        "./tlray-store has no fashion-transfer:production: built MobileNetV2 alpha 0.35, 32x32, "
        "weights none, 5 classes, published in a temporary store (same architecture as the quickstart's)"
    )


# -- (a) in process ------------------------------------------------------------------------
def in_process(storage: str, ref: str, batch_size: int, seconds: float = 10.0) -> dict:
    from tl_ray.serving.predictor import Predictor

    predictor = Predictor.load(storage, ref)
    batch = predictor.parse(png_bytes(0), "image/png", 1).repeat(batch_size, axis=0)
    one = batch[:1]
    for _ in range(5):
        predictor.predict(batch), predictor.predict(one)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds and n < 2000:
        predictor.predict(batch)
        n += 1
    throughput = n * batch_size / (time.perf_counter() - t0)
    single = []
    for _ in range(300):
        t = time.perf_counter()
        predictor.predict(one)
        single.append((time.perf_counter() - t) * 1000)
    return {"throughput": throughput, "single_p50_ms": float(np.median(single)), "batch_size": batch_size}


# -- HTTP load -----------------------------------------------------------------------------
def load(url: str, concurrency: int, seconds: float, max_requests: int) -> dict:
    """Closed-loop load: ``concurrency`` clients posting one PNG each, back to back."""
    import requests

    body = png_bytes(1)
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    count = [0]

    def client(_):
        session = requests.Session()
        while time.perf_counter() < deadline:
            with lock:
                if count[0] >= max_requests:
                    return
                count[0] += 1
            t = time.perf_counter()
            try:
                ok = session.post(f"{url}/predict", data=body, headers={"Content-Type": "image/png"}, timeout=60).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                latencies.append((time.perf_counter() - t) * 1000) if ok else None
                failures[0] += not ok

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"concurrency": concurrency, "requests": len(latencies), "failed": failures[0],
            "throughput": len(latencies) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


def serve_sweep(storage: str, ref: str, port: int, max_batch: int, wait_s: float, seconds: float, tag: str) -> dict:
    """(b): one replica holding every core, batching up to ``max_batch`` with ``wait_s``, at each concurrency.

    Also measures the ceiling of Serve's HTTP path on this machine: ``GET /healthz`` (no model) at c=8.
    """
    from ray import serve

    from tl_ray.serving.app import run
    from tl_ray.spec import ServeSpec

    spec = ServeSpec(port=port, max_batch_size=max_batch, batch_wait_timeout_s=wait_s,
                     cpus_per_replica=os.cpu_count(), autoscaling={"min_replicas": 1, "max_replicas": 1})
    url = run(storage, ref, spec, name="bench")
    rows = sweep(url, seconds)
    for r in rows:
        print(f"[{tag}] tl-ray wait {wait_s * 1000:g} ms c={r['concurrency']}: {r['throughput']:.0f} req/s "
              f"p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms failed {r['failed']}", flush=True)
    ceiling = healthz_rate(url, 8, min(seconds, 8))
    stats = requests_get_json(url + "/metadata")["serving"]
    print(f"[{tag}] Serve HTTP path ceiling (GET /healthz, c=8): {ceiling:.0f} req/s; "
          f"{stats['requests'] / max(stats['batches'], 1):.1f} requests per batch on average", flush=True)
    serve.delete("bench")
    return {"wait_ms": wait_s * 1000, "rows": rows, "healthz_c8": ceiling,
            "requests_per_batch": stats["requests"] / max(stats["batches"], 1)}


def requests_get_json(url: str) -> dict:
    import requests

    return requests.get(url, timeout=30).json()


def healthz_rate(url: str, concurrency: int, seconds: float) -> float:
    import requests

    deadline, counts = time.perf_counter() + seconds, [0] * concurrency

    def client(i):
        session = requests.Session()
        while time.perf_counter() < deadline and counts[i] < 5000:
            session.get(f"{url}/healthz", timeout=30)
            counts[i] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return sum(counts) / (time.perf_counter() - t0)


def sweep(url: str, seconds: float) -> list[dict]:
    load(url, 4, 3, 100)  # warm-up
    return [load(url, c, seconds, 4000) for c in CONCURRENCY]


# -- (c) the naive server ----------------------------------------------------------------
def naive_server(model_dir: str, port: int) -> None:
    """What a user might write: one uvicorn process, ``model.predict`` once per request."""
    import keras
    import uvicorn
    from fastapi import FastAPI, Request
    from PIL import Image

    import tl_ray.models.preprocess  # noqa: F401  (registers the custom layer the model uses)

    model = keras.saving.load_model(Path(model_dir) / "model.keras", safe_mode=True)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request):
        image = Image.open(io.BytesIO(await request.body())).convert("RGB").resize(SIZE)
        probs = model.predict(np.asarray(image, np.float32)[None], verbose=0)[0]
        return {"predictions": [{"class_id": int(probs.argmax()), "probabilities": probs.tolist()}]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def wait_for(url: str, timeout: float = 120) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.post(f"{url}/predict", data=png_bytes(2), headers={"Content-Type": "image/png"}, timeout=10)
            return
        except requests.RequestException:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


# -- autoscaling -----------------------------------------------------------------------------
def autoscale(storage: str, ref: str, port: int, png: str, step_s: float, idle_s: float) -> dict:
    from ray import serve

    from tl_ray.serving.app import run
    from tl_ray.spec import ServeSpec

    spec = ServeSpec(
        port=port, route_prefix="/scale", max_batch_size=32, batch_wait_timeout_s=0.01, cpus_per_replica=1,
        autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4,
                     "upscale_delay_s": 2, "downscale_delay_s": 10, "look_back_period_s": 11},
    )
    url = run(storage, ref, spec, name="bench-scale")
    samples: list[tuple[float, int, int]] = []  # (t, replicas, clients)
    clients = [0]
    stop = threading.Event()

    def sample():
        t0 = time.monotonic()
        while not stop.is_set():
            deps = serve.status().applications["bench-scale"].deployments["ModelReplica"]
            samples.append((time.monotonic() - t0, deps.replica_states.get("RUNNING", 0), clients[0]))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(3)
    t_step = samples[-1][0]
    clients[0] = 24
    result = load(url, 24, step_s, 100_000)
    clients[0] = 0
    t_stop = samples[-1][0]
    deadline = time.monotonic() + idle_s
    while time.monotonic() < deadline and samples[-1][1] > 1:
        time.sleep(1)
    time.sleep(2)
    stop.set()
    sampler.join()
    serve.delete("bench-scale")
    up = next((t - t_step for t, r, _ in samples if t >= t_step and r >= 2), None)
    down = next((t - t_stop for t, r, _ in samples if t >= t_stop and r <= 1), None)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ts = [s[0] for s in samples]
    ax.step(ts, [s[1] for s in samples], where="post", label="running replicas")
    ax.step(ts, [s[2] / 12 for s in samples], where="post", linestyle="--", label="load (24 clients = 2)")
    ax.axvline(t_step, color="grey", lw=0.5)
    ax.axvline(t_stop, color="grey", lw=0.5)
    ax.set_xlabel("seconds")
    ax.set_ylabel("replicas")
    ax.set_ylim(0, 2.5)
    fmt = lambda v: "never" if v is None else f"{v:.1f} s"  # noqa: E731
    ax.set_title(f"tl-ray autoscaling, step load of 24 clients: up in {fmt(up)}, down in {fmt(down)}")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return {"scale_up_s": up, "scale_down_s": down, "failed": result["failed"], "requests": result["requests"],
            "throughput_under_step": result["throughput"], "png": png}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, help="time per concurrency level (default 15; --smoke 1)")
    parser.add_argument("--skip-autoscale", action="store_true")
    parser.add_argument("--png", default=str(ROOT / "benchmarks" / "serve_autoscaling.png"))
    parser.add_argument("--json", help="where the figures go (default: benchmarks/serve_results.json; "
                                       "--smoke: nowhere)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    parser.add_argument("--naive-server", nargs=2, metavar=("MODEL_DIR", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.seconds = args.seconds or (1 if args.smoke else 15)
    if not args.smoke:
        args.json = args.json or str(ROOT / "benchmarks" / "serve_results.json")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.naive_server:
        naive_server(args.naive_server[0], int(args.naive_server[1]))
        return 0

    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "load_before": os.getloadavg()}
    from tl_ray.serving.predictor import configure_threads

    configure_threads(os.cpu_count() or 1)  # before TensorFlow runs anything: (a) gets the whole machine
    with tempfile.TemporaryDirectory(prefix="tlray-bench-") as tmp:
        os.environ.setdefault("TLRAY_CACHE", str(Path(tmp) / "cache"))
        storage, ref, what = find_model(tmp)
        print(f"[model] {what}", flush=True)
        out["model"] = what
        max_batch = 32
        out["a"] = in_process(storage, ref, max_batch, 1 if args.smoke else 10)
        print(f"[a] in-process: {out['a']['throughput']:.0f} img/s at batch {max_batch}; "
              f"one image p50 {out['a']['single_p50_ms']:.2f} ms", flush=True)

        import ray
        from ray import serve

        from tl_ray.registry.store import Registry

        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        port = free_port()
        out["b"] = serve_sweep(storage, ref, port, max_batch, 0.002, args.seconds, "b")
        if not args.smoke:
            out["b_wait20"] = serve_sweep(storage, ref, port, max_batch, 0.02, args.seconds, "b'")

        name, version = Registry(storage).resolve(ref)
        model_dir = Registry(storage).fetch(f"{name}:v{version}")
        naive_port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--naive-server", str(model_dir), str(naive_port)])
        try:
            wait_for(f"http://127.0.0.1:{naive_port}")
            out["c"] = sweep(f"http://127.0.0.1:{naive_port}", args.seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        for r in out["c"]:
            print(f"[c] naive c={r['concurrency']}: {r['throughput']:.0f} req/s p50 {r['p50_ms']:.1f} ms "
                  f"p99 {r['p99_ms']:.1f} ms failed {r['failed']}", flush=True)

        if not (args.skip_autoscale or args.smoke):
            out["autoscale"] = autoscale(storage, ref, port, args.png, step_s=40, idle_s=60)
            print(f"[autoscale] {out['autoscale']}", flush=True)
        serve.shutdown()
        ray.shutdown()

    out["goals"] = {}
    for key in [k for k in ("b", "b_wait20") if k in out]:
        b32, c32, b1 = out[key]["rows"][-1], out["c"][-1], out[key]["rows"][0]
        g = out["goals"][key] = {
            "b_vs_a_at_32": b32["throughput"] / out["a"]["throughput"],
            "b_vs_c_at_32": b32["throughput"] / c32["throughput"],
            "b_p50_c1_minus_single_ms": b1["p50_ms"] - out["a"]["single_p50_ms"],
        }
        print(f"[goals {key}] (b)/(a) at c=32: {g['b_vs_a_at_32']:.2f} (goal >= 0.7); (b)/(c) at c=32: "
              f"{g['b_vs_c_at_32']:.2f} (goal >= 3); (b) p50 c=1 - in-process one image: "
              f"{g['b_p50_c1_minus_single_ms']:.1f} ms (goal <= 5)")
    out["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
