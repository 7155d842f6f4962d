#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run the quickstart end to end
# (local Ray, local store ./tlray-store). Extra arguments go to `tl-ray run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tl-ray run jobs/quickstart/target.yaml "$@"
