"""Issue 20's fuzz test: seeded mutations of valid verification .bin files, IJB meta files,
RecordIO sets, YAML recipes, ONNX models and report.json files through the commands that read
them (tests/fuzz_worker.py), in a subprocess with a memory cap and an alarm per command.  Every
outcome must be a result (exit 0) or a FaceltError (exit 2): never a traceback, an internal
error, a hang or a change to an input file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
MEMORY_MB = 3072
SEED = 20


def _cap_memory() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_MB << 20, MEMORY_MB << 20))


def test_mutated_inputs_end_in_a_result_or_a_facelt_error(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1",
           "FACELT_QUIET": "1"}
    env.pop("FACELT_DEBUG", None)
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz_worker.py"), "--seed", str(SEED),
                        "--work", str(tmp_path / "work"), "--alarm", "20"],
                       capture_output=True, text=True, timeout=170, env=env,
                       preexec_fn=_cap_memory, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    bad = summary["bad"]
    shown = "\n".join(f"{b['kind']} #{b['iteration']} ({b['mutation']}): rc {b['rc']}, changed "
                      f"{b['changed']}\n{b['stderr'][-600:]}" for b in bad[:10])
    assert not bad, f"{len(bad)} bad outcomes (cases kept in {tmp_path / 'work' / 'cases'}):\n{shown}"
    counts = summary["counts"]
    assert set(counts) == {"bin", "ijb", "rec", "yaml", "onnx", "report"}
    for kind, c in counts.items():
        assert c["runs"] >= 45 and c["refused"] > 0, (kind, c)
    # some mutations leave a valid input: the commands' success path is exercised too
    assert sum(c["ok"] for c in counts.values()) > 50, counts
    assert not list(tmp.glob("facelt-internal-error-*")), "internal errors were written"
