"""Trial checkpoints: the whole model, the optimizer state and the loop state.

A checkpoint folder holds ``model.keras`` (the full model, which promotion
exports), ``optimizer.npz`` (every optimizer variable, in order) and
``state.json`` (epoch, metrics, the Tune trial that wrote it and a digest of
the model weights). Ray Train/Tune upload the folder to the spec's storage;
resuming rebuilds the model from the spec and loads both.

A restore keeps the learning rate the restoring trial was built with: under
PBT the restoring trial is another one (the exploiting trial, with a mutated
``train.learning_rate``), and the donor's rate must not overwrite its own.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

MODEL_FILE = "model.keras"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"


def save_checkpoint(folder: str | Path, model, optimizer, state: dict) -> Path:
    """Writes a checkpoint into ``folder`` (created if needed) and returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {**state, "weights_digest": weights_digest(model)}
    model.save(folder / MODEL_FILE)
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    np.savez(folder / OPTIMIZER_FILE, **arrays)
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
    return folder


def restore_checkpoint(folder: str | Path, model, optimizer) -> dict:
    """Loads model weights and optimizer state from ``folder``; returns the saved state.

    The optimizer's learning-rate variables keep their current values (the
    restoring trial's own rate); iterations and slots are loaded.

    Args:
        folder: a checkpoint folder written by ``save_checkpoint``.
        model: the rebuilt model.
        optimizer: the optimizer to load, or None to load the weights only (a
            checkpoint written at the end of a phase, when the next phase
            starts with a fresh optimizer).

    Raises:
        ValueError: the optimizer's variables do not match the checkpoint's.
    """
    folder = Path(folder)
    model.load_weights(folder / MODEL_FILE)
    if optimizer is None:
        return read_state(folder)
    with np.load(folder / OPTIMIZER_FILE) as data:
        values = [data[k] for k in sorted(data.files)]
    variables = optimizer.variables
    if len(values) != len(variables):
        raise ValueError(
            f"checkpoint {folder} holds {len(values)} optimizer variables, the optimizer has {len(variables)}: "
            "the spec changed since the checkpoint was written"
        )
    keep = {id(v) for v in _learning_rate_variables(optimizer)}
    for var, value in zip(variables, values):
        if id(var) not in keep:
            var.assign(value)
    return json.loads((folder / STATE_FILE).read_text())


def _learning_rate_variables(optimizer) -> list:
    """The learning-rate variables among ``optimizer.variables`` (a LossScaleOptimizer has its own and its inner one's)."""
    import keras

    found = []
    for opt in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        lr = getattr(opt, "_learning_rate", None)
        if isinstance(lr, keras.Variable):
            found.append(lr)
    return found


def weights_digest(model) -> str:
    """SHA-256 of every model weight (trainable or not), in order, with shapes and dtypes."""
    h = hashlib.sha256()
    for w in model.weights:
        a = np.ascontiguousarray(np.asarray(w.numpy()))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_state(folder: str | Path) -> dict:
    return json.loads((Path(folder) / STATE_FILE).read_text())
