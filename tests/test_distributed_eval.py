"""``torchrun ... -m facelt extract-features`` / ``megaface-eval``: the rows / the distractor
search split over processes give exactly what one process gives.

In-process: the ranks' shares of the distractor search (simulated one after the other) merged in
rank order equal :func:`stream_topk`, ties and nested galleries included. Under torchrun (gloo,
CPU): 2 processes extract the same bytes as one, 3 processes report the same rank-1 / CMC.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from eval_megaface.distributed import (chunk_plan, chunk_share, merge_rank_topk,
                                       stream_topk_share)
from eval_megaface.search import stream_topk
from facelt.cli import main
from facelt.features.distributed import batch_share
from facelt.features.files import FeatureFile
from tests.conftest import ROOT, run_torchrun



def _torchrun(nproc, args):
    res = run_torchrun(nproc, args)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def test_shares_by_hand():
    # 10 rows in batches of 3 -> batches [0,3) [3,6) [6,9) [9,10); 3 ranks: 2, 1, 1 batches
    assert [batch_share(10, 3, r, 3) for r in range(3)] == [(0, 6), (6, 9), (9, 10)]
    assert [batch_share(2, 4, r, 2) for r in range(2)] == [(0, 2), (2, 2)]   # rank 1: nothing
    # galleries 5 and 12 in chunks of 4: [0,4) [4,5) | [5,9) [9,12)
    assert chunk_plan([12, 5], 4) == [(0, 4, 5), (4, 5, 5), (5, 9, 12), (9, 12, 12)]
    assert [chunk_share(4, r, 3) for r in range(3)] == [(0, 2), (2, 3), (3, 4)]


def test_rank_shares_merge_to_the_one_process_topk(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((20, 8)).astype(np.float32)
    # every distractor appears three times: ties everywhere, also across chunk and rank borders
    feats = np.concatenate([base, base, base])[rng.permutation(60)]
    np.save(tmp_path / "d.npy", feats)
    ff = FeatureFile.open(tmp_path / "d.npy")
    q = rng.standard_normal((9, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    order = rng.permutation(60)
    sizes = [50, 7, 23]
    one = stream_topk(q, ff, order, sizes, k=10, chunk_rows=4, backend="numpy")
    for world in (2, 3, 5):
        parts = [stream_topk_share(q, ff, order, sizes, r, world, k=10, chunk_rows=4,
                                   backend="numpy") for r in range(world)]
        got = merge_rank_topk(parts, 10)
        for a, b in zip(one, got):
            assert np.array_equal(a.scores, b.scores) and np.array_equal(a.ids, b.ids)
    # the top-10 of gallery 7 hold 7 real rows and 3 pads
    assert (one[1].ids[:, 7:] == -1).all() and (one[1].ids[:, :7] >= 0).all()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_extract_and_megaface_equal_one_process(demo_data, tmp_path):
    from tests.conftest import demo_overrides
    cfg = str(ROOT / "configs" / "demo_list.yaml")
    over = demo_overrides(demo_data, epochs=1) + ["stage1.max_steps_per_epoch=1"]
    sets = [x for o in over for x in ("--set", o)]
    assert main(["train", "--config", cfg, "--stage", "1", "--out", str(tmp_path / "run"), *sets]) == 0
    ckpt = str(tmp_path / "run" / "stage1" / "checkpoint.pt")
    lst = str(demo_data / "demo_test.txt")
    common = ["extract-features", "--checkpoint", ckpt, "--list", lst, "--root", str(demo_data),
              "--batch-size", "7", "--device", "cpu"]
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    assert main([*common, "--out", str(tmp_path / "one.npy")]) == 0
    _torchrun(2, [*common, "--out", str(tmp_path / "two.npy")])
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert a.shape[0] == len(open(lst).read().splitlines()) and np.array_equal(a, b)
    assert (tmp_path / "two.rows.txt").read_text() == (tmp_path / "one.rows.txt").read_text()
    assert not list(tmp_path.glob("two.npy.progress*")) and not (tmp_path / "two.npy.partial").exists()

    # megaface: probes = the extracted test rows, distractors with exact duplicates (ties)
    rng = np.random.default_rng(1)
    labels = [int(line.split()[1]) for line in open(lst).read().splitlines()]
    with open(tmp_path / "probes.csv", "w") as fh:
        fh.write("path,identity\n")
        for i, y in enumerate(labels):
            fh.write(f"p{i}.jpg,{y}\n")
    noise = rng.standard_normal((40, a.shape[1])).astype(np.float32)
    np.save(tmp_path / "dist.npy", np.concatenate([noise, noise[:10], a[:5]]))
    mf = ["megaface-eval", "--gallery", "10,55", "--probe-features", str(tmp_path / "one.npy"),
          "--probe-list", str(tmp_path / "probes.csv"), "--distractor-features",
          str(tmp_path / "dist.npy"), "--chunk-rows", "6"]
    assert main([*mf, "--out", str(tmp_path / "mf1")]) == 0
    _torchrun(3, [*mf, "--out", str(tmp_path / "mf3")])
    r1 = json.loads((tmp_path / "mf1" / "report.json").read_text())
    r3 = json.loads((tmp_path / "mf3" / "report.json").read_text())
    assert len(r1["results"]) == 2 and r1["trials"] > 0
    for x, y in zip(r1["results"], r3["results"]):
        assert (x["gallery"], x["rank1"], x["cmc"], x["trials"]) == (y["gallery"], y["rank1"],
                                                                    y["cmc"], y["trials"])


def test_distributed_extraction_resumes_per_rank(tmp_path):
    """The ranks of a 2-process extraction run one after the other in this process (its barriers
    are no-ops outside torchrun): rank 0 cannot finish before rank 1 has written its rows, a
    rank that dies mid-share resumes after its last batch, and the finished file equals the
    one-process extraction's."""
    from facelt.features.distributed import extract_features_distributed
    from facelt.errors import DataError
    from facelt.features.files import extract_features
    from facelt.parallel.process import DistInfo
    rng = np.random.default_rng(0)
    x = rng.standard_normal((11, 5)).astype(np.float32)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    calls = []

    def embed(b):
        calls.append(len(b))
        return b @ w

    def batches(start, stop=11):              # batches of 3 rows, as one process cuts them
        for a in range(start, stop, 3):
            yield x[a:min(a + 3, stop)]

    ref = extract_features(embed, batches, tmp_path / "one.npy", 11, 3, flip=True)
    out = tmp_path / "two.npy"
    ranks = [DistInfo(rank=r, world_size=2) for r in range(2)]   # shares: rows 0..6, 6..11
    with pytest.raises(DataError, match="rank 1 of 2 has not finished"):
        extract_features_distributed(embed, batches, out, 11, 3, 3, ranks[0])

    def dies_after_one_batch(start, stop):
        yield from list(batches(start, stop))[:1]

    with pytest.raises(DataError, match="batches ended after row 9"):
        extract_features_distributed(embed, dies_after_one_batch, out, 11, 3, 3, ranks[1])
    calls.clear()
    extract_features_distributed(embed, batches, out, 11, 3, 3, ranks[1])
    assert calls == [2, 2]                    # only the last batch (2 rows), plain + flipped
    calls.clear()
    extract_features_distributed(embed, batches, out, 11, 3, 3, ranks[0])
    assert calls == []                        # rank 0's rows were already written
    assert np.array_equal(np.load(out), np.load(ref))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["one.npy", "one.npy.source.json", "two.npy", "two.npy.source.json"])
