"""torchrun worker for tests/test_sharded_train.py: with AMP's GradScaler and a sharded head, an
overflow in ONE rank's table gradient makes EVERY rank skip the step (agree_on_overflow)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from facelt.parallel.sharded_losses import sharded_cross_entropy
from facelt.parallel.sharded_heads import ShardedLinearHead
from facelt.parallel.process import teardown
from facelt.parallel.strategy import agree_on_overflow


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = ShardedLinearHead(4, 5)


def step(net, opt, scaler, poison_rank):
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(dist.get_rank()))
    y = torch.tensor([0, 2, 4])
    logits, aux = net.head(net.body(x), y)
    opt.zero_grad()
    scaler.scale(sharded_cross_entropy(logits, aux["targets"])).backward()
    if dist.get_rank() == poison_rank:
        net.head.fc.weight.grad[0, 0] = float("inf")
    agree_on_overflow(net, scaler)
    before = [p.detach().clone() for p in net.parameters()]
    scaler.step(opt)
    scaler.update()
    return [not torch.equal(a, p) for a, p in zip(before, net.parameters())]


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    moved = step(net, opt, scaler, poison_rank=1)
    assert not any(moved), moved                    # every rank skipped
    assert scaler.get_scale() == 4.0, scaler.get_scale()
    moved = step(net, opt, scaler, poison_rank=-1)  # no overflow: every rank steps
    assert all(moved), moved
    print(f"OVERFLOW-OK {dist.get_rank()}", flush=True)
    teardown()


if __name__ == "__main__":
    main()
