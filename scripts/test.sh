#!/usr/bin/env bash
# Set up a fresh machine and run the test suite: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the interop packages setup.sh installs (insightface, scikit-image) must import: their tests run
export FACELT_INTEROP=required
exec .venv/bin/python -m pytest -q -rs tests "$@"
