#!/usr/bin/env bash
# The synthetic face table of docs/COMPARISON.md: `facelt demo` renders the SYNTHETIC identities
# (training set, MegaFace-style probes with a synthetic_group column, distractors, a
# verification .bin), then `facelt compare` trains plain, range, OLTR, ArcFace and CosFace on
# them and judges each the face way, over the seeds given (default 0,1,2).
#   scripts/face_table.sh OUT [SEEDS]
set -euo pipefail
out=${1:?usage: scripts/face_table.sh OUT [SEEDS]}
seeds=${2:-0,1,2}
facelt demo --out "$out/data"
d="$out/data"
facelt compare --config configs/demo_faces.yaml --methods plain,range,oltr,arcface,cosface \
  --seeds "$seeds" --out "$out/compare" \
  --set "data.root=$d/ms1m_lt" \
  --set "eval.faces.probes=$d/eval_sets/probes" \
  --set "eval.faces.probe_list=$d/eval_sets/probes.csv" \
  --set "eval.faces.distractors=$d/distractors/train" \
  --set "eval.verification=[$d/eval_sets/verification.bin]"
