"""The CLI starts without torch: `facelt verify --features`, `facelt ijb --features`, `facelt stats`
and `--help` do not pay torch's import (about 2 s and 0.5 GiB here); issue 12 asks `facelt verify`
on a 6,000-pair bin from features to finish in under 2 s."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_building_the_parser_does_not_import_torch():
    code = ("import sys; import facelt.cli as c; c.build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
