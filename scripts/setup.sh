#!/usr/bin/env bash
# Prepares a fresh machine: Debian's Fashion-MNIST package, a virtualenv in .venv
# with tl-ray and its test extra, and s3rver for the tests. Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

FASHION=/usr/share/datasets/fashion-mnist
if [ ! -f "$FASHION/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "setup: Fashion-MNIST is missing and installing it needs root: run 'apt-get install dataset-fashion-mnist' as root." >&2
        exit 1
      fi
    fi
    echo "setup: installing the Debian package dataset-fashion-mnist"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: apt-get is not available here. Install Fashion-MNIST's IDX files (Debian package" >&2
    echo "       dataset-fashion-mnist) under $FASHION, or set data.source.path in the spec." >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import tl_ray, tensorflow, ray, moto" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: installing tl-ray and its dependencies into .venv"
  # uv installs the same packages from PyPI in about a third of pip's time on a fresh machine. Compiled to
  # bytecode here, as pip does: otherwise, with PYTHONDONTWRITEBYTECODE set, every Ray worker and trial
  # process compiles Ray, Keras and TensorFlow from source again (a trial takes 2.5 times as long to start).
  .venv/bin/python -m pip install -q uv
  .venv/bin/python -m uv pip install -q --compile-bytecode --python .venv/bin/python -e ".[test]"
  touch .venv/.installed
fi

# The second S3 API server of the test suite (s3rver, from the npm registry): its lock file pins it.
if [ ! -x tests/s3rver/node_modules/.bin/s3rver ] || [ tests/s3rver/package-lock.json -nt tests/s3rver/node_modules ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: npm is missing; the S3 tests need Node.js 18+ with npm (Debian: apt-get install nodejs npm)." >&2
    exit 1
  fi
  echo "setup: installing s3rver into tests/s3rver"
  npm ci --prefix tests/s3rver --no-audit --no-fund --loglevel=error >/dev/null
  touch tests/s3rver/node_modules
fi
