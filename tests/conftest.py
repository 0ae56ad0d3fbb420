"""Shared fixtures: a small generated long-tailed open-set dataset and a fast recipe over it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("FACELT_QUIET", "1")

ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    from pipelines.demo_data import DemoSpec, make_demo_dataset
    out = tmp_path_factory.mktemp("demo_data")
    make_demo_dataset(out, DemoSpec(num_classes=6, open_classes=2, max_count=120, min_count=4,
                                    val_per_class=3, test_per_class=6, open_per_class=6,
                                    image_size=24, seed=0))
    return out


@pytest.fixture(scope="session")
def seven_class_data(tmp_path_factory) -> Path:
    """7 classes of 16x16 images (4 to 40 a class), 2 val / 2 test a class, 1 open class: not
    divisible by 2 or 3 processes (the class-sharded heads: 4 + 3, 3 + 2 + 2 classes)."""
    from pipelines.demo_data import DemoSpec, make_demo_dataset
    out = tmp_path_factory.mktemp("demo7")
    make_demo_dataset(out, DemoSpec(num_classes=7, open_classes=1, max_count=40, min_count=4,
                                    val_per_class=2, test_per_class=2, open_per_class=2,
                                    image_size=16, seed=1))
    return out


def demo_overrides(data: Path, epochs: int = 2) -> list[str]:
    return [f"data.root={data}", f"data.splits_dir={data}", "data.image_size=24",
            "data.num_workers=0", f"stage1.epochs={epochs}", f"stage2.epochs={epochs}",
            "stage1.batch_size=32", "stage2.batch_size=32", "device=cpu", "eval.batch_size=64"]


@pytest.fixture
def demo_config_path() -> Path:
    return ROOT / "configs" / "demo_list.yaml"


#: scripts/test.sh (and so CI) sets FACELT_INTEROP=required: the interop packages it installs
#: (insightface without its dependencies, scikit-image) must import, so their tests run
INTEROP_REQUIRED = os.environ.get("FACELT_INTEROP") == "required"


def interop_import(module: str, reason: str):
    """``pytest.importorskip(module)``, except where the interop packages are required
    (``FACELT_INTEROP=required``): there a missing package fails the test instead of skipping it."""
    if INTEROP_REQUIRED:
        import importlib
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a torchrun rendezvous."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_args(overrides) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [a for o in overrides for a in ("--set", o)]


def run_torchrun(nproc: int, args, timeout: int = 300):
    """``python -m torch.distributed.run`` of ``facelt ARGS`` on ``nproc`` CPU processes (gloo),
    with this checkout on PYTHONPATH; returns the CompletedProcess (output captured)."""
    import subprocess
    import sys
    env = dict(os.environ, FACELT_QUIET="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", "--master_addr=127.0.0.1", "-m", "facelt", *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
