#!/usr/bin/env bash
# Set up a fresh machine and run the built-in demo (no downloads): bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/facelt demo --out "${1:-facelt_demo}"
