"""Trial checkpoints: the whole model, the optimizer state and the loop state.

A checkpoint folder holds ``model.keras`` (the full model, which promotion
exports), ``optimizer.npz`` (every optimizer variable, in order) and
``state.json`` (epoch, metrics). Ray Train/Tune upload the folder to the
spec's storage; resuming rebuilds the model from the spec and loads both.
"""

from __future__ import annotations

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
    model.save(folder / MODEL_FILE)
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    np.savez(folder / OPTIMIZER_FILE, **arrays)
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
    return folder


def restore_checkpoint(folder: str | Path, model, optimizer) -> dict:
    """Loads model weights and optimizer state from ``folder``; returns the saved state.

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
    for var, value in zip(variables, values):
        var.assign(value)
    return json.loads((folder / STATE_FILE).read_text())


def read_state(folder: str | Path) -> dict:
    return json.loads((Path(folder) / STATE_FILE).read_text())
