"""The 224-px case of ``bench_sweep.py cache --size 224``: its data, its backbone and the build's peak memory.

Data: Fashion-MNIST classes 5-9 (the quickstart's target task), resized from 28 to 224 px, made RGB and
stored as JPEG in an image folder (``<store>/images224``), then ingested with tl-ray's own
``ingest_folder``: 20 training and 20 validation images per class for the sweep (``--smoke``: 4 and 4),
and 100 other images per class (``--smoke``: 6) for the build's peak memory.

Backbone: mobilenet_v2 α 1.0 at 224×224 from a weights file this module makes: random convolution
weights (seed 0) whose BatchNorm statistics were adapted on 64 images of classes 0-4 (the quickstart's
source task) in one training-mode pass, the last BatchNorm's set to sparse outputs (``_sparse_last_bn``). It is
not pretrained: ImageNet weights cannot be downloaded
on the machine the benchmark runs on, and what the benchmark measures (the backbone's cost per
image, which the cache saves) does not depend on the weights' values.

Peak memory: a cache build of the memory dataset in a spawned process of its own, its peak RSS
(``VmHWM``; TensorFlow's allocations are invisible to ``tracemalloc``), once with the build's former fixed batch
of 256 images and once with the memory budget (``tl_ray.feature_cache.build_batch_size``).
"""

from __future__ import annotations

import multiprocessing
import queue
import sys
import tempfile
from pathlib import Path

import numpy as np

from tl_ray import feature_cache as features
from tl_ray import store as storage

SIZE = 224
CLASSES = [5, 6, 7, 8, 9]
SWEEP_PER_CLASS = {False: 40, True: 8}  # --smoke: half to training, half to validation
MEMORY_PER_CLASS = {False: 100, True: 6}
ADAPT_IMAGES = 64  # BatchNorm statistics from this many source-task images
WEIGHTS = "weights/mobilenet_v2_a1_224_bn_adapted_sparse.weights.h5"


def _to_224(pixels: np.ndarray) -> np.ndarray:
    """A 28×28 grey image as 224×224 RGB uint8 (bilinear)."""
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize((SIZE, SIZE), Image.BILINEAR).convert("RGB"))


def _write_folder(folder: Path, images: np.ndarray, picks: dict[int, np.ndarray]) -> None:
    """``folder/<class>/<index>.jpg`` for the picked indices of each class (kept when there)."""
    from PIL import Image

    from tl_ray.data.sources import FASHION_MNIST_CLASSES

    for c, indices in picks.items():
        sub = folder / f"{c}-{FASHION_MNIST_CLASSES[c].replace('/', '-')}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in indices:
            path = sub / f"{i:05d}.jpg"
            if not path.exists():
                Image.fromarray(_to_224(images[i])).save(path, quality=90)


def _picks(labels: np.ndarray, counts: list[int], seed: int) -> list[dict[int, np.ndarray]]:
    """Disjoint random picks per class of the target's classes, ``counts[k]`` images each in pick ``k``."""
    rng = np.random.default_rng(seed)
    out: list[dict[int, np.ndarray]] = [{} for _ in counts]
    for c in CLASSES:
        order = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for k, n in enumerate(counts):
            out[k][c] = order[start:start + n]
            start += n
    return out


def prepare_data(store: str, smoke: bool) -> dict[str, str]:
    """The sweep's training and validation datasets and the memory dataset, ingested when missing."""
    from tl_ray.data.ingest import ingest_folder
    from tl_ray.data.manifest import has_manifest
    from tl_ray.data.sources import load_fashion_mnist

    tag = "smoke" if smoke else "full"
    uris = {role: storage.join(store, f"datasets/fashion224-{tag}/{role}") for role in ("train", "val", "memory")}
    if all(has_manifest(uri) for uri in uris.values()):
        return uris
    images, labels = load_fashion_mnist(split="train")
    sweep, memory = _picks(labels, [SWEEP_PER_CLASS[smoke], MEMORY_PER_CLASS[smoke]], seed=0)
    folders = {name: Path(store) / f"images224-{tag}" / name for name in ("sweep", "memory")}
    _write_folder(folders["sweep"], images, sweep)
    _write_folder(folders["memory"], images, memory)
    progress = sys.stderr.isatty()
    ingest_folder(str(folders["sweep"]), uris["train"], validation_to=uris["val"], validation_fraction=0.5,
                  overwrite=True, progress=progress)
    ingest_folder(str(folders["memory"]), uris["memory"], overwrite=True, progress=progress)
    return uris


def prepare_weights(store: str) -> str:
    """The backbone's weights file (made once): random weights, BatchNorm statistics adapted on the source task."""
    import keras

    from tl_ray.data.sources import load_fashion_mnist
    from tl_ray.models.build import build_model
    from tl_ray.models.weights import save_backbone_weights
    from tl_ray.spec import ModelSpec

    path = Path(store) / WEIGHTS
    if path.exists():
        return str(path)
    images, labels = load_fashion_mnist(split="train")
    rng = np.random.default_rng(1)
    picked = rng.choice(np.flatnonzero(labels < 5), ADAPT_IMAGES, replace=False)
    x = np.stack([_to_224(images[i]) for i in picked]).astype("float32")
    # momentum 0.01: the moving statistics become this one batch's, layer after layer.
    model = build_model(ModelSpec(backbone="mobilenet_v2", weights="none", backbone_args={"alpha": 1.0},
                                  batchnorm_momentum=0.01, freeze={"mode": "full"}), 5, (SIZE, SIZE), seed=0)
    model(x, training=True)
    _sparse_last_bn(model, x)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_backbone_weights(model, str(path))
    keras.backend.clear_session()
    return str(path)


def _sparse_last_bn(model, x: np.ndarray) -> None:
    """Sets the last BatchNorm (``Conv_1_bn``) so that each channel fires on its top 3% of positions in ``x``
    (its 97th percentile becomes 0, its standard deviation 1). With statistics over positions, as the other
    layers have, the pooled features vary between images by about 0.4% of their mean: they separate the
    classes, but a head cannot learn from them in a few steps; from sparse ones it can."""
    import keras

    backbone = model.get_layer("backbone")
    conv = keras.Model(backbone.input, backbone.get_layer("Conv_1").output)
    z = np.asarray(conv(model.get_layer("preprocess")(x), training=False))
    z = z.reshape(-1, z.shape[-1])
    threshold, var = np.quantile(z, 0.97, axis=0), z.var(axis=0)
    bn = backbone.get_layer("Conv_1_bn")
    bn.moving_mean.assign(threshold)
    bn.moving_variance.assign(var)
    bn.gamma.assign(np.sqrt(var + bn.epsilon) / np.sqrt(var + 1e-12))  # folds BatchNorm's epsilon away
    bn.beta.assign(np.zeros_like(var))


def sets(store: str, uris: dict[str, str], weights: str) -> list[str]:
    """Spec overrides that turn the quickstart target into the 224-px case."""
    return [f"data.train={uris['train']}", f"data.validation={uris['val']}", "data.test=null", "data.source=null",
            f"data.image_size=[{SIZE}, {SIZE}]", "model.backbone_args={alpha: 1.0}", f"model.weights={weights}",
            "model.feature_layer=null", "model.head.pooling=avg", "run.seeds=1"]  # the whole backbone, pooled


def peak_rss_mib() -> float:
    """This process's peak RSS since it started its program (``VmHWM``). Not ``ru_maxrss``: Linux carries that
    over ``fork`` and ``exec``, so a spawned child would report at least its parent's RSS at the fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _build_in_child(spec_data: dict, dataset_uri: str, weights: str, budget_mib: float, out) -> None:
    """Builds one cache entry in this (spawned) process; puts ``(peak RSS MiB, batch size)`` on ``out``."""
    from tl_ray.data.manifest import read_manifest
    from tl_ray.spec import validate
    from tl_ray.train.runtime import configure_tensorflow

    spec = validate(spec_data)
    configure_tensorflow(spec.train.cpus_per_worker, 0)  # as a trial runs it
    features.ensure_features(spec, dataset_uri, weights, log=lambda *a: None, budget_mib=budget_mib)
    peak = peak_rss_mib()
    classes = len(read_manifest(dataset_uri).class_names)
    out.put((peak, features.build_batch_size(features._extractor(spec, classes, weights), budget_mib)))


def build_peak_rss(spec, dataset_uri: str, weights: str, budget_mib: float) -> tuple[float, int]:
    """Peak RSS (MiB) of a process that builds the cache entry of ``dataset_uri`` with ``budget_mib``, and the
    batch size it used. The entry goes to a store of its own, so every call builds."""
    ctx = multiprocessing.get_context("spawn")  # a new process: TensorFlow's memory starts from nothing
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        data = spec.to_dict()
        data["storage"] = tmp
        proc = ctx.Process(target=_build_in_child, args=(data, dataset_uri, weights, budget_mib, out))
        proc.start()
        while True:
            try:
                result = out.get(timeout=5)
                break
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"the cache build exited with {proc.exitcode}") from None
        proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"the cache build exited with {proc.exitcode}")
    return result
