"""What the command groups share: the store default, the spec arguments and the error line."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tl_ray.errors import TLRayError

DEFAULT_STORAGE = os.environ.get("TLRAY_STORAGE", "./tlray-store")


def add_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="experiment spec (YAML)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field, e.g. train.epochs=3")


def add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="store root (default ./tlray-store or $TLRAY_STORAGE)")


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="text", choices=["text", "json"],
                   help="json: one JSON document on stdout, for scripts (progress lines go to stderr)")


def print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def load(args):
    """The spec named by ``add_spec``'s arguments, with its ``--set`` overrides."""
    from tl_ray import store
    from tl_ray.spec import load_spec

    spec = load_spec(args.spec, overrides=args.set or None)
    store.use_locking(spec.storage_locking)
    return spec


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with this process's native stderr closed: TensorFlow 2.21 prints its start-up lines
    (oneDNN, CUDA drivers) before its logging honours TF_CPP_MIN_LOG_LEVEL. An import error still raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def fail(exc: TLRayError) -> int:
    """Prints ``exc`` as one line on stderr; returns its exit code."""
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    return exc.exit_code
