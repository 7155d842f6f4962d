#!/usr/bin/env bash
# The test suite on a fresh machine: set up, then unit and integration tests
# (a local Ray cluster and an S3 API server on loopback are started by fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest tests -v --timeout 1200 --durations 25 "$@"
