#!/usr/bin/env bash
# Create ./.venv and install facelt (editable) with its test extras, then insightface's pure-Python
# wheel without its dependencies (the interop tests run against it; its opencv-python requirement
# would replace opencv-python-headless). Idempotent: when .venv already holds an install of this
# pyproject.toml and insightface pin (a stamp file keeps their hash), nothing is reinstalled.
# One line a step; pip's own output goes to .venv/setup.log and is shown only when a step fails.
# FORCE=1 reinstalls anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
LOG=$VENV/setup.log
STAMP=$VENV/.facelt-setup-stamp
INSIGHTFACE_SPEC='insightface==2.1'   # pure-Python wheel; the interop tests are checked against it

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

want=$( { cat pyproject.toml; echo "$INSIGHTFACE_SPEC"; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)
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
step "installing $INSIGHTFACE_SPEC without its dependencies (interop tests; log: $LOG)"
run_logged "$VENV/bin/python" -m pip install --disable-pip-version-check --no-deps --only-binary=:all: "$INSIGHTFACE_SPEC"
echo "$want" >"$STAMP"
step "done"
