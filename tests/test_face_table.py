"""The face table of ``facelt compare`` (the OLTR paper's Table 4, left): rows and columns of a
hand-written MegaFace report, the seed summary by the formula, and an end-to-end comparison on
SYNTHETIC identities whose buckets and verification are recomputed here from the features."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facelt.compare.tables import summarize_tables
from facelt.config import load_config
from facelt.errors import ConfigError
from facelt.jobs.face_table import face_inputs, megaface_row, row_columns

REPO = Path(__file__).resolve().parents[1]
METHODS = REPO / "configs" / "methods"
RECIPE = REPO / "configs" / "demo_faces.yaml"


def _result(g, rank1, shots, groups):
    return {"gallery": g, "rank1": rank1, "trials": 10, "cmc": [],
            "pseudo_shots": {k: {"rank1": v, "probes": 1} for k, v in shots.items()},
            "groups": groups}


def test_megaface_row_and_columns_from_a_hand_written_report():
    first = _result(10, 0.75, {"many": 1.0, "few": 0.5, "one": None, "zero": 0.25},
                    {"gender": {"female": 0.5, "male": 1.0}})
    second = _result(100, 0.5, {"many": 0.5, "few": 0.25, "one": None, "zero": 0.0},
                     {"gender": {"female": 0.25, "male": 0.75}})
    report = dict(first, results=[first, second])
    row = megaface_row(report)
    assert row == {"many": 1.0, "few": 0.5, "one": None, "zero": 0.25, "full": 0.75,
                   "groups": {"gender": {"female": 0.5, "male": 1.0}}, "gallery": 10}
    assert megaface_row(report, 100)["full"] == 0.5
    # one attribute column: its values are the column names (Table 4's male / female)
    assert list(row_columns(row)) == ["many", "few", "one", "zero", "full", "female", "male"]
    two = dict(row, groups={"gender": {"f": 0.1}, "seen": {"yes": 0.2}})
    assert list(row_columns(two))[5:] == ["gender=f", "seen=yes"]
    with pytest.raises(ConfigError, match="gallery size 1000"):
        megaface_row(report, 1000)


def test_seed_summary_is_the_mean_and_sample_std_per_cell():
    def rep(v):
        return {"tables": {"t": {"title": "T", "columns": ["full", "zero"],
                                 "rows": {"plain": {"full": v, "zero": None}}}}}
    s = summarize_tables({0: rep(0.2), 1: rep(0.4), 2: rep(0.9)})
    cell = s["t"]["rows"]["plain"]["full"]
    assert cell["values"] == [0.2, 0.4, 0.9]
    assert cell["mean"] == pytest.approx(0.5)
    # sample std: sqrt(((0.3)^2 + (0.1)^2 + (0.4)^2) / 2)
    assert cell["std"] == pytest.approx(np.sqrt((0.09 + 0.01 + 0.16) / 2))
    assert s["t"]["rows"]["plain"]["zero"]["mean"] is None


def test_partial_megaface_inputs_are_named():
    cfg = load_config(RECIPE, ["eval.faces.probes=p", "eval.faces.distractors=d"])
    with pytest.raises(ConfigError, match="eval.faces.probe_list"):
        face_inputs(cfg)
    assert face_inputs(load_config(RECIPE)) is None  # names nothing: no face table


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """A small SYNTHETIC face set made by the demo's steps: training rec, probes (+ csv with the
    synthetic group), distractors and a verification .bin."""
    from facelt.jobs.demo import (DemoOptions, sample_training_set, write_eval_sets,
                                  write_probes)
    from facelt.utils.progress import set_quiet
    from pipelines.synthetic_faces import write_synthetic_distractors
    set_quiet(True)
    root = tmp_path_factory.mktemp("faces")
    src = sample_training_set(root, 20, 0, 32)
    evd, unseen = write_eval_sets(root, src, 0, 32)
    probes = write_probes(evd, src, unseen, 0, 32)
    write_synthetic_distractors(root / "distractors" / "train", 40, seed=0, size=32)
    overrides = [f"data.root={src.folder}", "device=cpu", "stage1.epochs=1", "stage2.epochs=1",
                 f"eval.faces.probes={probes}", f"eval.faces.probe_list={evd / 'probes.csv'}",
                 f"eval.faces.distractors={root / 'distractors' / 'train'}",
                 "eval.faces.gallery_sizes=[10,40]",
                 f"eval.verification=[{evd / 'verification.bin'}]"]
    return root, src, evd, overrides


def _pseudo_shot_buckets(probes: np.ndarray, train: np.ndarray) -> list[str]:
    """By the paper's rule: training images with cosine > 0.7 (rows L2-normalised here)."""
    p = probes / np.linalg.norm(probes, axis=1, keepdims=True)
    t = train / np.linalg.norm(train, axis=1, keepdims=True)
    n = ((p @ t.T) > np.float32(0.7)).sum(1)
    return ["many" if c > 5 else "few" if c >= 2 else "one" if c == 1 else "zero" for c in n]


def test_compare_face_table_end_to_end(faces):
    from facelt.compare import compare
    from facelt.jobs.face_table import face_tables
    root, src, evd, overrides = faces
    out = root / "cmp"
    rep = compare(RECIPE, ["plain", "oltr"], out, METHODS, overrides, log=lambda s: None,
                  tables=face_tables)
    assert rep["methods"] == {}  # the recipe has no data.test: judged by the face table alone
    tables = rep["tables"]
    assert list(tables) == ["megaface_10", "megaface_40", "face_verification"]
    t = tables["megaface_10"]
    assert t["columns"] == ["many", "few", "one", "zero", "full", "seen_in_training=no",
                            "seen_in_training=yes", "synthetic_group=A", "synthetic_group=B"]
    assert list(t["rows"]) == ["plain", "oltr"]
    for m in ("plain", "oltr"):
        feats = out / "face_features" / m
        mf = json.loads((feats / "megaface" / "report.json").read_text())
        res = {r["gallery"]: r for r in mf["results"]}
        assert t["rows"][m]["full"] == pytest.approx(res[10]["rank1"], abs=1e-6)
        assert tables["megaface_40"]["rows"][m]["full"] == pytest.approx(res[40]["rank1"],
                                                                        abs=1e-6)
        # the buckets' probe counts, recomputed from the method's own feature files
        probes, train = np.load(feats / "probes.npy"), np.load(feats / "train.npy")
        assert len(train) == src.manifest["totals"]["images"]
        buckets = _pseudo_shot_buckets(probes, train)
        for b in ("many", "few", "one", "zero"):
            assert res[10]["pseudo_shots"][b]["probes"] == buckets.count(b)
            assert (t["rows"][m][b] is None) == (buckets.count(b) == 0)
        for c in t["columns"]:
            v = t["rows"][m][c]
            assert v is None or 0.0 <= v <= 1.0
    # verification: each method's accuracy by insightface's protocol on its checkpoint
    from facelt.features.embed import embedder_for_checkpoint
    from facelt.faces.verification import VerificationSet
    from facelt.models.checkpoint import net_from_checkpoint
    ck = out / "runs" / "oltr" / "stage2" / "checkpoint.pt"
    net, cfg, _ = net_from_checkpoint(ck, "cpu")
    ref = VerificationSet.load(evd / "verification.bin", 32).evaluate_model(
        embedder_for_checkpoint(net, cfg, "cpu"), "cpu", 64)
    v = tables["face_verification"]
    assert v["columns"] == ["verification acc"]
    assert v["rows"]["oltr"]["verification acc"] == pytest.approx(ref["accuracy"], abs=1e-6)
    md = (out / "report.md").read_text()
    assert "| method | many | few | one | zero | full |" in md and "| oltr |" in md
    for name in tables:
        assert (out / f"report_{name}.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun reuses every method's features (extracted once, fingerprinted)
    stamp = (out / "face_features" / "plain" / "distractors.npy").stat().st_mtime_ns
    compare(RECIPE, ["plain", "oltr"], out, METHODS, overrides, log=lambda s: None,
            tables=face_tables)
    assert (out / "face_features" / "plain" / "distractors.npy").stat().st_mtime_ns == stamp


def _face_checkpoint_112(path: Path, seed: int) -> tuple[Path, "torch.nn.Module"]:
    """A 112-px face network (IJB aligns to the 112x112 template) saved as a stage-1 checkpoint."""
    import torch
    from facelt.models.build import build_net
    from facelt.models.checkpoint import save_checkpoint
    torch.manual_seed(seed)
    cfg = load_config(RECIPE, ["model.embedding_dim=16", "data.image_size=112"])
    net = build_net(cfg, 1, 5).eval()
    save_checkpoint(path, {"config": cfg.to_dict(), "stage": 1, "num_classes": 5,
                           "model": net.state_dict(), "class_counts": [1] * 5})
    return path, net


def test_face_table_ijb_columns_are_each_checkpoints_tar_at_far(tmp_path):
    """eval.faces.ijb_root alone: each method's checkpoint embeds the IJB photos (landmarks on the
    ArcFace template, so each photo aligns to itself), and its row holds TAR@FAR over the pairs
    scored here from a flip-sum of the network written out independently (detector score x
    feature, one image per media, templates the sum of their media)."""
    import torch
    from facelt.faces.ijb import FARS, far_key, roc_points, tar_at_far
    from facelt.jobs.face_table import face_tables
    from tests.ijb_photos import write_self_aligned_ijb
    root = tmp_path / "ijb"
    rng = np.random.default_rng(7)
    photos = rng.integers(0, 256, (6, 112, 112, 3), dtype=np.uint8)
    pairs = [(1, 2, 1), (1, 3, 0), (2, 3, 0), (3, 1, 1), (2, 1, 0)]
    scores = write_self_aligned_ijb(root, photos, pairs)  # templates 1 (0, 1), 2 (2, 3), 3 (4, 5)
    ckpts, nets = {}, {}
    for m, seed in (("plain", 0), ("oltr", 1)):
        ckpts[m], nets[m] = _face_checkpoint_112(tmp_path / f"{m}.pt", seed)
    cfg = load_config(RECIPE, ["device=cpu", f"eval.faces.ijb_root={root}",
                               "eval.faces.ijb_target=IJBC", "eval.batch_size=4"])
    out = tmp_path / "cmp"
    tables = face_tables(ckpts, cfg, out, log=lambda s: None)
    assert [t.name for t in tables] == ["face_verification"]
    table = tables[0]
    assert table.columns == [f"IJBC TAR@FAR={far_key(f)}" for f in FARS]
    x = torch.from_numpy(photos.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
    labels = np.array([l for _, _, l in pairs])
    for m, net in nets.items():
        with torch.no_grad():
            raw = (net.embed(x) + net.embed(torch.flip(x, dims=[3]))).numpy()
        np.testing.assert_allclose(np.load(out / "face_features" / m / "ijb" / "features.npy"),
                                   raw, rtol=1e-4, atol=1e-5)  # raw: before any scaling
        w = raw * scores[:, None]
        t = {1: w[0] + w[1], 2: w[2] + w[3], 3: w[4] + w[5]}
        cos = np.array([t[a] @ t[b] / np.linalg.norm(t[a]) / np.linalg.norm(t[b])
                        for a, b, _ in pairs])
        fpr, tpr, _ = roc_points(cos, labels)
        want = tar_at_far(fpr, tpr)
        got = {c.split("=", 1)[1]: v for c, v in table.rows[m].items()}
        assert got == pytest.approx(want), m
    # a rerun reuses the IJB features (fingerprinted)
    feats = out / "face_features" / "plain" / "ijb" / "features.npy"
    stamp = feats.stat().st_mtime_ns
    again = face_tables(ckpts, cfg, out, log=lambda s: None)
    assert again[0].rows == table.rows and feats.stat().st_mtime_ns == stamp
