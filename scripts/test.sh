#!/usr/bin/env bash
# Set up a fresh machine and run the test suite: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -rs tests "$@"
