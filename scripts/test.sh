#!/usr/bin/env bash
# The test suite on a fresh machine: set up, then unit tests and integration tests, two at a time
# (integration tests by file: each file's fixtures start its own local Ray and S3 API servers on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
unit=0
.venv/bin/python -m pytest tests/unit -n 2 -q --timeout 1200 --durations 10 "$@" || unit=$?
.venv/bin/python -m pytest tests/integration -n 2 --dist loadfile -v --timeout 1200 --durations 25 "$@"
exit "$unit"
