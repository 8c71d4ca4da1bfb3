#!/usr/bin/env bash
# Run the test suite (all tests, slow ones included) after making sure the environment exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
