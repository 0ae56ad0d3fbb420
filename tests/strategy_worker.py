"""Run under torchrun (gloo, CPU) by tests/test_head_strategy.py. Prints ``STRATEGY-OK <rank>``.

``epochs CONFIG OUT OVERRIDE...``: train stage 2 twice over the same processes, with the
replicated head (DDP around the whole network) into ``OUT/replicated`` and with the class-sharded
head into ``OUT/sharded``, through the trainer itself (validation, checkpoints and the LR schedule
at every epoch boundary). The test compares the two runs' checkpoints.

``validate CONFIG OUT OVERRIDE...``: for ``stage2.fc_add`` 0, 128 (the small CNN's neck width) and
24, and each head strategy: build stage 2 from its public pieces, set the centroids, train one
short epoch, then write on rank 0 ``OUT/<fc_add>_<strategy>.pt`` with the validation logits of the
strategy's evaluation network, the checkpoint's model state (what ``checkpoint_state`` writes) and
the logits of a network rebuilt from that state alone (what ``facelt classify`` evaluates).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from facelt.config import load_config
from facelt.openset.evaluate import ClosedSetValidation
from facelt.parallel import process as D
from facelt.train.trainer import StageTrainer

FC_ADD_WIDTHS = (0, 128, 24)


def train_both(config: str, out: Path, overrides: list[str], dist: D.DistInfo) -> None:
    for name, shard in (("replicated", "false"), ("sharded", "true")):
        cfg = load_config(config, overrides + [f"stage2.shard_head={shard}"])
        StageTrainer(cfg, 2, out / name, dist=dist,
                     validation=ClosedSetValidation.from_config(cfg, dist.device)).run()


@torch.no_grad()
def logits_of(net: torch.nn.Module, dataset) -> torch.Tensor:
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    was = net.training
    net.eval()
    out = net(x)["logits"]
    net.train(was)
    return out


def validate_all(config: str, out: Path, overrides: list[str], dist: D.DistInfo) -> None:
    from facelt.models.build import build_net
    from facelt.models.state import load_model_state
    from facelt.train.loop import train_one_epoch
    from facelt.train.stage import build_stage, init_head_from_data
    from facelt.train.state import TrainState, checkpoint_state
    for width in FC_ADD_WIDTHS:
        for name, shard in (("replicated", "false"), ("sharded", "true")):
            cfg = load_config(config, overrides + [f"stage2.fc_add={width}",
                                                   f"stage2.shard_head={shard}"])
            parts = build_stage(cfg, 2, dist)
            init_head_from_data(parts)
            metrics = train_one_epoch(parts, 0)
            model = checkpoint_state(parts, TrainState(epoch=0))["model"]  # collective
            net = parts.strategy.evaluation_net(parts.net)                  # collective
            if not dist.is_primary:
                continue
            val = parts.data.val.dataset
            rebuilt = build_net(cfg, 2, parts.data.num_classes)
            load_model_state(rebuilt, model, "consolidated state")
            torch.save({"val_logits": logits_of(net, val), "model": model,
                        "rebuilt_logits": logits_of(rebuilt, val), "loss": metrics["loss"]},
                       out / f"{width}_{name}.pt")


def main() -> None:
    mode, config, out, *overrides = sys.argv[1:]
    dist = D.setup("cpu")
    if mode == "epochs":
        train_both(config, Path(out), overrides, dist)
    elif mode == "validate":
        validate_all(config, Path(out), overrides, dist)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(f"STRATEGY-OK {dist.rank}", flush=True)
    D.teardown()


if __name__ == "__main__":
    main()
