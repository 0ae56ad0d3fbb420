"""Instance-balanced and class-aware samplers, single process and strided across ranks."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import facelt.data.samplers as samplers
from facelt.data.samplers import ClassAwareSampler, InstanceSampler
from facelt.errors import DataError


def _labels(counts, seed=0, open_items=0):
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)] + [np.full(open_items, -1)])
    np.random.default_rng(seed).shuffle(labels)
    return labels.astype(np.int64)


def test_class_aware_balances_classes_in_runs_and_cycles_small_classes():
    labels = _labels([1000, 50, 3])
    s = ClassAwareSampler(labels, samples_per_class=4, num_samples=1200, seed=3)
    idx = np.array(list(s))
    assert len(idx) == len(s) == 1200
    drawn = labels[idx]
    per_class = np.bincount(drawn, minlength=3)
    assert np.all(np.abs(per_class - 400) <= 4), per_class
    runs = drawn.reshape(-1, 4)
    assert np.all(runs == runs[:, :1]), "each pick must be 4 consecutive samples of one class"
    small = Counter(idx[drawn == 2].tolist())
    assert set(small) == set(np.flatnonzero(labels == 2).tolist())
    assert set(small.values()) <= {133, 134}


def test_class_cycle_and_item_cycles_follow_the_reference_process():
    counts = [40, 7, 5, 2, 1]
    labels = _labels(counts, seed=1)
    s = ClassAwareSampler(labels, samples_per_class=3, num_samples=3 * 5 * 20, seed=11)
    idx = s.indices()
    picks = labels[idx].reshape(-1, 3)[:, 0]
    # The class order is a sequence of shuffled full cycles: each block of 5 picks has every class.
    for block in picks.reshape(-1, 5):
        assert sorted(block.tolist()) == [0, 1, 2, 3, 4]
    # Each class's draws walk its items in shuffled full cycles: each block of n_c is a permutation.
    for c, n in enumerate(counts):
        mine = idx[labels[idx] == c]
        own = sorted(np.flatnonzero(labels == c).tolist())
        full = len(mine) // n
        for b in range(full):
            assert sorted(mine[b * n:(b + 1) * n].tolist()) == own
    # The cycles are really shuffled: the big class does not come out in index order.
    big = idx[labels[idx] == 0][:40]
    assert big.tolist() != sorted(big.tolist())


def test_class_aware_defaults_to_dataset_size_and_skips_open_and_empty_classes():
    labels = _labels([0, 30, 0, 10], open_items=25)
    s = ClassAwareSampler(labels, samples_per_class=4, seed=0)
    idx = s.indices()
    assert len(idx) == len(labels) == 65
    assert set(labels[idx].tolist()) == {1, 3}
    assert np.all(labels[idx] >= 0)


def test_class_aware_needs_labelled_items():
    with pytest.raises(DataError):
        ClassAwareSampler(np.full(5, -1))


@pytest.mark.parametrize("make", [
    lambda **kw: InstanceSampler(101, **kw),
    lambda **kw: ClassAwareSampler(_labels([60, 30, 11]), **kw),
])
def test_deterministic_per_seed_and_epoch(make):
    a, b, c = make(seed=5), make(seed=5), make(seed=6)
    first = list(a)
    assert first == list(b)
    assert first != list(c)
    a.set_epoch(1)
    second = list(a)
    assert second != first
    b.set_epoch(1)
    assert list(b) == second
    a.set_epoch(0)
    assert list(a) == first


def test_instance_sampler_covers_every_index_once_per_epoch():
    s = InstanceSampler(257, seed=2)
    for epoch in range(3):
        s.set_epoch(epoch)
        order = list(s)
        assert sorted(order) == list(range(257))
        assert order != list(range(257))
    assert list(InstanceSampler(9, shuffle=False)) == list(range(9))


@pytest.mark.parametrize("make", [
    lambda **kw: InstanceSampler(11, **kw),
    lambda **kw: ClassAwareSampler(_labels([7, 3, 2]), samples_per_class=4, num_samples=13, **kw),
])
def test_two_ranks_interleave_to_the_single_process_sequence(make):
    single = make(num_replicas=1, rank=0, seed=9)
    r0 = make(num_replicas=2, rank=0, seed=9)
    r1 = make(num_replicas=2, rank=1, seed=9)
    for epoch in (0, 4):
        for s in (single, r0, r1):
            s.set_epoch(epoch)
        g = list(single)
        a, b = list(r0), list(r1)
        assert len(a) == len(b) == len(r0) == len(r1) == (len(g) + 1) // 2
        padded = g + g[:1]  # odd length: padded by repeating the head
        inter = [x for pair in zip(a, b) for x in pair]
        assert inter == padded
        assert a == padded[0::2] and b == padded[1::2]


def test_more_replicas_than_items_still_gives_equal_shares():
    shares = [list(InstanceSampler(3, shuffle=False, num_replicas=4, rank=r)) for r in range(4)]
    assert shares == [[0], [1], [2], [0]]


def test_replicas_and_rank_come_from_torch_distributed_when_initialised(monkeypatch):
    monkeypatch.setattr(samplers.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(samplers.dist, "get_world_size", lambda: 3)
    monkeypatch.setattr(samplers.dist, "get_rank", lambda: 2)
    s = InstanceSampler(10, shuffle=False)
    assert (s.num_replicas, s.rank) == (3, 2)
    assert list(s) == [2, 5, 8, 1]  # 10 padded to 12 with the head [0, 1]


def test_invalid_rank_is_rejected():
    with pytest.raises(ValueError):
        InstanceSampler(10, num_replicas=2, rank=2)
