#!/usr/bin/env bash
# Create ./.venv and install facelt (editable) with its test extras. Idempotent: when .venv already
# holds an install of this pyproject.toml (a stamp file keeps its hash), nothing is reinstalled.
# One line a step; pip's own output goes to .venv/setup.log and is shown only when a step fails.
# FORCE=1 reinstalls anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
LOG=$VENV/setup.log
STAMP=$VENV/.facelt-setup-stamp

step() { printf 'setup: %s\n' "$*"; }
run_logged() {  # run a command with its output appended to the log; on failure show the log's tail
  if ! "$@" >>"$LOG" 2>&1; then
    step "FAILED: $* (last lines of $LOG below)"
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
else
  step "$VENV exists"
fi

want=$( { cat pyproject.toml; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "${FORCE:-0}" != "1" ] && [ "$want" = "$have" ]; then
  step "facelt is installed and up to date (pyproject.toml unchanged; FORCE=1 reinstalls)"
  exit 0
fi

: >"$LOG"
rm -f "$STAMP"
step "upgrading pip (log: $LOG)"
run_logged "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip
# torch/torchvision resolve to the local wheels where this machine provides them
step "installing facelt[dev] (editable; log: $LOG)"
run_logged "$VENV/bin/python" -m pip install --disable-pip-version-check -e '.[dev]'
echo "$want" >"$STAMP"
step "done"
