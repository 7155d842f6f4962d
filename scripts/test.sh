#!/usr/bin/env bash
# The test suite on a fresh machine: set up, then unit tests (two at a time) and integration tests
# (one at a time: a local Ray cluster and an S3 API server on loopback are started by fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
unit=0
.venv/bin/python -m pytest tests/unit -n 2 -q --timeout 1200 --durations 10 "$@" || unit=$?
.venv/bin/python -m pytest tests/integration -v --timeout 1200 --durations 25 "$@"
exit "$unit"
