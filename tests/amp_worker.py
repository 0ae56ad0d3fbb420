"""Run under torchrun (gloo, CPU) by tests/test_amp.py: the GradScaler step equals the float32
step (tests/amp_steps.py) with the replicated head (DDP) and the class-sharded head, for both
centroid updates. Prints ``AMP-OK <rank>``; a mismatch raises (non-zero exit)."""
from __future__ import annotations

import sys

from facelt.config import load_config
from facelt.parallel import process as D
from tests.amp_steps import compare_updates


def main() -> None:
    config, *overrides = sys.argv[1:]
    dist = D.setup("cpu")
    bad = []
    for shard in ("false", "true"):
        for update in ("reference", "autograd"):
            cfg = load_config(config, overrides + [f"stage2.shard_head={shard}",
                                                   f"stage2.centroid_loss.update={update}"])
            bad += compare_updates(cfg, dist, f"rank {dist.rank} shard_head={shard} "
                                              f"update={update}")
    if bad:
        raise SystemExit("\n".join(bad))
    print(f"AMP-OK {dist.rank}", flush=True)
    D.teardown()


if __name__ == "__main__":
    main()
