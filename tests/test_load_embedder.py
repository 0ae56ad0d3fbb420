"""``facelt.load_embedder(path)``: a checkpoint made here and an ONNX file exported here embed
face crops into L2-normalised float32 rows equal to the flip-sum formula written out."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import facelt  # noqa: E402
from facelt.errors import FaceltError  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.test_onnx import SIZE, save_face_checkpoint, torch_flip_sum  # noqa: E402


def test_import_facelt_stays_light():
    code = "import sys, facelt; print('torch' in sys.modules, callable(facelt.load_embedder))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "False"  # the attribute itself is imported lazily
    with pytest.raises(AttributeError, match="no attribute 'embedder_of'"):
        facelt.embedder_of  # noqa: B018


def test_checkpoint_and_onnx_embed_to_unit_rows(tmp_path):
    from facelt.faces.onnx_io import export_onnx
    ckpt, net = save_face_checkpoint(tmp_path / "stage2.pt", stage=2)
    images = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    ref = torch_flip_sum(net, images)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    emb = facelt.load_embedder(ckpt, device="cpu")
    got = emb.embed(images)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert emb.input_size == (SIZE, SIZE)
    assert emb.embed(images[0]).shape == (1, ref.shape[1])  # one (H, W, 3) image
    model = export_onnx(net, tmp_path / "model.onnx", image_size=SIZE)
    onnx_rows = facelt.load_embedder(model).embed(images)
    np.testing.assert_allclose(np.linalg.norm(onnx_rows, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(onnx_rows * ref, axis=1)) > 0.9999
    with pytest.raises(FaceltError, match="not a file"):
        facelt.load_embedder(tmp_path / "missing.pt")
