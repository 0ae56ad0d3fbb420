"""ONNX both ways: export a facelt checkpoint's embedding network, run ONNX models (built here with
torch) wherever facelt embeds (extract-features, verify, ijb), checkpoint -> insightface weights."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from facelt.cli import main  # noqa: E402
from facelt.config import load_config  # noqa: E402
from facelt.models.build import build_net  # noqa: E402
from facelt.faces.onnx_io import OnnxEmbedder, export_onnx, normalisation_in_graph  # noqa: E402
from facelt.models.checkpoint import save_checkpoint  # noqa: E402
from tests.ijb_photos import tiny_112_network, write_self_aligned_ijb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def face_net(stage: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = load_config(ROOT / "configs" / "demo_faces.yaml", ["model.embedding_dim=16"])
    net = build_net(cfg, stage, 5).eval()
    with torch.no_grad():  # BN statistics away from the identity so eval mode matters
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net, cfg


def save_face_checkpoint(path: Path, stage: int) -> tuple[Path, torch.nn.Module]:
    net, cfg = face_net(stage)
    save_checkpoint(path, {"config": cfg.to_dict(), "stage": stage, "num_classes": 5,
                           "model": net.state_dict(), "class_counts": [1] * 5})
    return path, net


def torch_flip_sum(net, images: np.ndarray) -> np.ndarray:
    """Reference embedding written out: (x / 127.5 - 1), NCHW, embed(x) + embed(mirror(x))."""
    x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
    with torch.no_grad():
        return (net.embed(x) + net.embed(torch.flip(x, dims=[3]))).numpy()


def cosines(a, b):
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def stage2_checkpoint(tmp_path_factory):
    return save_face_checkpoint(tmp_path_factory.mktemp("ckpt") / "stage2.pt", stage=2)


@pytest.mark.parametrize("where", ["outside", "inside"])
def test_export_matches_facelt(where, stage2_checkpoint, tmp_path, capsys):
    ckpt, net = stage2_checkpoint  # a meta-embedding head: only the embedding network exports
    out = tmp_path / f"{where}.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--normalize", where]) == 0
    assert "min cosine" in capsys.readouterr().out
    model = onnx.load(str(out))
    assert len(model.graph.input) == 1 and len(model.graph.output) == 1
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    # insightface's ArcFaceONNX rule: Sub/Mul node names among the first 8 nodes
    names = [n.name for n in model.graph.node[:8]]
    insightface_inside = any(n.startswith("Sub") for n in names) and any(n.startswith("Mul") for n in names)
    assert insightface_inside == (where == "inside") == normalisation_in_graph(model)
    emb = OnnxEmbedder(out)
    assert (emb.mean, emb.std) == ((0.0, 1.0) if where == "inside" else (127.5, 127.5))
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
    with torch.no_grad():
        want = net.embed(x).numpy()
    got = emb(images)
    assert got.shape == (5, 16)
    assert cosines(got, want).min() >= 0.999


def _onnx_model(tmp_path, net, where="outside") -> Path:
    return export_onnx(net, tmp_path / "m.onnx", image_size=SIZE, normalize=where)


def test_extract_features_with_onnx(stage2_checkpoint, tmp_path):
    _, net = stage2_checkpoint
    model = _onnx_model(tmp_path, net, "inside")
    folder = tmp_path / "imgs"
    (folder / "p").mkdir(parents=True)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / "p" / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = tmp_path / "f.npy"
    assert main(["extract-features", "--onnx", str(model), "--images", str(folder),
                 "--out", str(out), "--batch-size", "2"]) == 0
    got = np.load(out)
    want = torch_flip_sum(net, images)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cosines(got, want).min() >= 0.999
    assert (tmp_path / "f.rows.txt").read_text().split() == [f"p/{i}.png" for i in range(5)]


def test_verify_with_checkpoint_and_onnx_agree(stage2_checkpoint, tmp_path, capsys):
    ckpt, net = stage2_checkpoint
    model = _onnx_model(tmp_path, net)
    rng = np.random.default_rng(3)
    # 40 images at 48x48 (resized to the model's 32x32), 20 pairs
    imgs = rng.integers(0, 256, (40, 48, 48, 3), dtype=np.uint8)
    bins = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in imgs]
    path = tmp_path / "set.bin"
    path.write_bytes(pickle.dumps((bins, [i % 2 == 0 for i in range(20)])))
    res = {}
    for flag, src in (("--checkpoint", ckpt), ("--onnx", model)):
        assert main(["verify", "--bin", str(path), flag, str(src), "--json", "--resize"]) == 0
        res[flag] = json.loads(capsys.readouterr().out)
    small = np.stack([cv2.resize(im, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for im in imgs])
    from facelt.faces.verification import verification_metrics
    want = verification_metrics(torch_flip_sum(net, small), np.array([i % 2 == 0 for i in range(20)]))
    for r in res.values():
        assert r["pairs"] == 20
        assert r["accuracy"] == pytest.approx(want["accuracy"])
        assert r["threshold"] == pytest.approx(want["threshold"])
    assert res["--checkpoint"]["xnorm"] == pytest.approx(res["--onnx"]["xnorm"], rel=1e-3)


def test_ijb_embeds_aligned_faces_with_onnx(stage2_checkpoint, tmp_path, capsys):
    _, net = stage2_checkpoint
    model = export_onnx(net, tmp_path / "m.onnx", image_size=SIZE)  # 32: not a multiple of 112
    root = tmp_path / "ijb"
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    (root / "meta" / "ijbb_name_5pts_score.txt").write_text("a.jpg " + " ".join(["1"] * 10) + " 1\n")
    (root / "meta" / "ijbb_face_tid_mid.txt").write_text("a.jpg 1 1\n")
    (root / "meta" / "ijbb_template_pair_label.txt").write_text("1 1 1\n")
    rc = main(["ijb", "--root", str(root), "--target", "IJBB", "--onnx", str(model),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "112x112" in capsys.readouterr().err


def test_ijb_with_a_112_onnx_model(tmp_path, capsys):
    """Photos whose landmarks sit on the ArcFace template align to themselves, so the expected raw
    features are the torch model's flip-sum of the photos, written out independently."""
    net = tiny_112_network()
    model = export_onnx(net, tmp_path / "m.onnx", image_size=112)
    root = tmp_path / "ijb"
    rng = np.random.default_rng(4)
    photos = rng.integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    # templates 1 (photos 0, 1), 2 (2, 3), 3 (4)
    scores = write_self_aligned_ijb(root, photos, [(1, 2, 1), (1, 3, 0), (2, 3, 0)])
    out = tmp_path / "o"
    assert main(["ijb", "--root", str(root), "--target", "IJBC", "--onnx", str(model),
                 "--out", str(out), "--json", "--batch-size", "2"]) == 0
    json.loads(capsys.readouterr().out)
    x = torch.from_numpy(photos.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
    with torch.no_grad():
        want = (net(x) + net(torch.flip(x, dims=[3]))).numpy()
    got = np.load(out / "features.npy")
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)  # raw: not normalised
    w = want * scores[:, None]
    t = [w[0] + w[1], w[2] + w[3], w[4]]  # one image per media: template = sum of its images
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    np.testing.assert_allclose(np.load(out / "pair_scores.npy"),
                               [cos(t[0], t[1]), cos(t[0], t[2]), cos(t[1], t[2])], atol=1e-4)


def test_megaface_eval_with_onnx(stage2_checkpoint, tmp_path):
    """megaface-eval --onnx: probe files named by the probe CSV and a distractor folder are
    embedded by onnxruntime (flip-sum + L2) into OUT/features, then scored."""
    import csv
    _, net = stage2_checkpoint
    model = _onnx_model(tmp_path, net)
    rng = np.random.default_rng(4)
    probes = rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)  # 3 identities x 2
    distractors = rng.integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)
    (tmp_path / "p").mkdir()
    (tmp_path / "d" / "x").mkdir(parents=True)
    rows = [f"id{i // 2}/{i}.png" for i in range(6)]
    for r, img in zip(rows, probes):
        (tmp_path / "p" / r).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "p" / r), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    for i, img in enumerate(distractors):
        cv2.imwrite(str(tmp_path / "d" / "x" / f"{i:02d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    with open(tmp_path / "probes.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "identity"])
        w.writerows([r, i // 2] for i, r in enumerate(rows))
    out = tmp_path / "mf"
    assert main(["megaface-eval", "--gallery", "10", "--onnx", str(model), "--probe-images",
                 str(tmp_path / "p"), "--probe-list", str(tmp_path / "probes.csv"),
                 "--distractor-images", str(tmp_path / "d"), "--batch-size", "4",
                 "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["trials"] == 3 * 2 * 1  # every ordered pair of two images of one identity
    for name, imgs in (("probes", probes), ("distractors", distractors)):
        got = np.load(out / "features" / f"{name}.npy")
        want = torch_flip_sum(net, imgs)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert cosines(got, want).min() >= 0.999
    assert (out / "features" / "distractors.rows.txt").read_text().split() == \
        [f"x/{i:02d}.png" for i in range(12)]
    assert main(["megaface-eval", "--gallery", "10", "--onnx", str(model), "--checkpoint", "c.pt",
                 "--probe-list", str(tmp_path / "probes.csv"), "--out", str(tmp_path / "x")]) == 2
