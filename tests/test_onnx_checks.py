"""Issue 20, ONNX models: a graph is checked against the model-zoo convention (one NCHW float
input of a sane size, one (N, d) float output, or the one ``--onnx-output NAME`` names, standard
operators) before any work, and what is wrong is said; a fixed-batch model is run in chunks of
its batch."""
from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from facelt.cli import main as cli_main  # noqa: E402
from facelt.errors import CheckpointError  # noqa: E402
from tests.linear_embedding import linear_flip_sum  # noqa: E402

SIDE = 8
DIM = 4
RNG = np.random.default_rng(3)
W_EMB = RNG.standard_normal((3 * SIDE * SIDE, DIM)).astype(np.float32)
W_Q = RNG.standard_normal((3 * SIDE * SIDE, 1)).astype(np.float32)


def _model(path: Path, batch="N", side=SIDE, in_type=TensorProto.FLOAT, outputs=("embedding",),
           extra_nodes=(), out_type=TensorProto.FLOAT, opset=17, pool=False) -> Path:
    """x (batch, 3, side, side) -> Flatten -> MatMul W: 'embedding' (N, 4); 'quality' (N, 1);
    'scalar' () ; 'map' (N, 3, side, side); 'custom' through an op of an unknown domain.
    ``pool``: global average pooling first (any side; W then has 3 rows)."""
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT)]
    if pool:
        nodes += [helper.make_node("GlobalAveragePool", ["xf"], ["gap"]),
                  helper.make_node("Flatten", ["gap"], ["flat"], axis=1)]
    else:
        nodes.append(helper.make_node("Flatten", ["xf"], ["flat"], axis=1))
    rows = 3 if pool else 3 * SIDE * SIDE
    inits = [numpy_helper.from_array(W_EMB[:rows], "w_emb"), numpy_helper.from_array(W_Q[:rows], "w_q")]
    outs = []
    shapes = {"embedding": [batch, DIM], "quality": [batch, 1], "scalar": [], "map":
              [batch, 3, side, side], "custom": [batch, DIM], "int": [batch, DIM]}
    for name in outputs:
        if name == "embedding":
            nodes.append(helper.make_node("MatMul", ["flat", "w_emb"], ["embedding"]))
        elif name == "quality":
            nodes.append(helper.make_node("MatMul", ["flat", "w_q"], ["quality"]))
        elif name == "scalar":
            nodes.append(helper.make_node("ReduceSum", ["flat"], ["scalar"], keepdims=0))
        elif name == "map":
            nodes.append(helper.make_node("Identity", ["xf"], ["map"]))
        elif name == "custom":
            nodes.append(helper.make_node("FancyEmbed", ["flat"], ["custom"], domain="com.example"))
        elif name == "int":
            nodes.append(helper.make_node("MatMul", ["flat", "w_emb"], ["emb_f"]))
            nodes.append(helper.make_node("Cast", ["emb_f"], ["int"], to=TensorProto.INT64))
        typ = TensorProto.INT64 if name == "int" else out_type
        outs.append(helper.make_tensor_value_info(name, typ, shapes[name]))
    nodes += list(extra_nodes)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type,
                                                                          [batch, 3, side, side])],
                              outs, inits)
    imports = [helper.make_opsetid("", opset)]
    if "custom" in outputs:
        imports.append(helper.make_opsetid("com.example", 1))
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _reference(images: np.ndarray) -> np.ndarray:
    """flip-sum of (x - 127.5) / 127.5 flattened NCHW @ W_EMB, L2-normalised (by hand)."""
    return linear_flip_sum(images, W_EMB)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    imgs = RNG.integers(0, 256, (5, SIDE, SIDE, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        cv2.imwrite(str(d / f"{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    return d, imgs


def _extract(tmp_path, model, folder, capsys, *extra) -> tuple[int, str, Path]:
    out = tmp_path / f"feats_{model.stem}.npy"
    capsys.readouterr()
    rc = cli_main(["extract-features", "--onnx", str(model), "--images", str(folder[0]), "--out",
                   str(out), "--batch-size", "2", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err, out


def test_a_model_zoo_graph_embeds_as_computed_by_hand(tmp_path, folder, capsys):
    rc, err, out = _extract(tmp_path, _model(tmp_path / "good.onnx"), folder, capsys)
    assert rc == 0, err
    np.testing.assert_allclose(np.load(out), _reference(folder[1]), rtol=1e-4, atol=1e-5)


def test_several_outputs_need_onnx_output(tmp_path, folder, capsys):
    # the quality score comes first: output[0] used to be taken as the embedding
    model = _model(tmp_path / "two.onnx", outputs=("quality", "embedding"))
    rc, err, out = _extract(tmp_path, model, folder, capsys)
    assert rc == 2 and "two.onnx" in err and "2 outputs" in err and "--onnx-output" in err
    assert "quality" in err and "embedding" in err and not out.exists()
    rc, err, out = _extract(tmp_path, model, folder, capsys, "--onnx-output", "embedding")
    assert rc == 0, err
    np.testing.assert_allclose(np.load(out), _reference(folder[1]), rtol=1e-4, atol=1e-5)
    rc, err, _ = _extract(tmp_path, model, folder, capsys, "--onnx-output", "quality")
    assert rc == 2 and "quality" in err and "(N, 1)" in err and "score" in err
    rc, err, _ = _extract(tmp_path, model, folder, capsys, "--onnx-output", "nope")
    assert rc == 2 and "'nope'" in err and "quality, embedding" in err


def test_onnx_output_without_onnx_is_refused(tmp_path, capsys):
    capsys.readouterr()
    rc = cli_main(["verify", "--bin", str(tmp_path / "x.bin"), "--features", str(tmp_path / "f.npy"),
                   "--onnx-output", "embedding"])
    assert rc == 2 and "--onnx-output" in capsys.readouterr().err


def test_a_fixed_batch_of_one_runs_in_chunks(tmp_path, folder, capsys):
    rc, err, out = _extract(tmp_path, _model(tmp_path / "b1.onnx", batch=1), folder, capsys)
    assert rc == 0, err
    np.testing.assert_allclose(np.load(out), _reference(folder[1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind, words", [
    ("scalar", ["scalar", "(N, d)"]),
    ("map", ["4-D", "(N, d)"]),
    ("int", ["INT64", "float"]),
    ("custom", ["FancyEmbed", "com.example"]),
])
def test_outputs_and_operators_off_the_convention_are_named(tmp_path, folder, capsys, kind, words):
    model = _model(tmp_path / f"{kind}.onnx", outputs=(kind,))
    rc, err, out = _extract(tmp_path, model, folder, capsys)
    assert rc == 2 and f"{kind}.onnx" in err and not out.exists(), err
    for w in words:
        assert w in err, err


def test_inputs_off_the_convention_are_named(tmp_path, folder, capsys):
    rc, err, _ = _extract(tmp_path, _model(tmp_path / "u8.onnx", in_type=TensorProto.UINT8),
                          folder, capsys)
    assert rc == 2 and "u8.onnx" in err and "UINT8" in err and "float" in err
    m = _model(tmp_path / "two_in.onnx")
    model = onnx.load(str(m))
    model.graph.input.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]))
    onnx.save(model, str(m))
    rc, err, _ = _extract(tmp_path, m, folder, capsys)
    assert rc == 2 and "2 inputs" in err and "'x', 'y'" in err


def test_a_model_declaring_an_11200_square_input_is_refused_before_allocating(tmp_path, folder):
    from tests.test_hostile_files import limited_python
    model = _model(tmp_path / "huge.onnx", side=11200, pool=True)
    r = limited_python(f"""
        from facelt.errors import FaceltError
        from facelt.faces.onnx_io import extract_onnx_features
        try:
            extract_onnx_features({str(model)!r}, {str(tmp_path / "f.npy")!r},
                                  images={str(folder[0])!r}, batch_size=64)
        except FaceltError as exc:
            print("REFUSED", exc)
        """, mem_mb=1500)
    assert r.returncode == 0, r.stderr
    assert "REFUSED" in r.stdout and "huge.onnx" in r.stdout and "11200x11200" in r.stdout


def test_verify_with_a_multi_output_model(tmp_path, capsys):
    imgs = RNG.integers(0, 256, (20, SIDE, SIDE, 3), dtype=np.uint8)
    bins = [cv2.imencode(".png", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in imgs]
    b = tmp_path / "set.bin"
    b.write_bytes(pickle.dumps((bins, [True, False] * 5), protocol=4))
    model = _model(tmp_path / "two.onnx", outputs=("quality", "embedding"))
    capsys.readouterr()
    assert cli_main(["verify", "--bin", str(b), "--onnx", str(model)]) == 2
    assert "--onnx-output" in capsys.readouterr().err
    assert cli_main(["verify", "--bin", str(b), "--onnx", str(model), "--onnx-output", "embedding",
                     "--json"]) == 0
    import json
    got = json.loads(capsys.readouterr().out)
    from facelt.faces.verification import verification_metrics
    want = verification_metrics(_reference(imgs), np.array([True, False] * 5))
    assert got["accuracy"] == pytest.approx(want["accuracy"]) and got["pairs"] == 10


def test_embedder_refuses_a_graph_without_shapes_or_outputs(tmp_path):
    from facelt.faces.onnx_io import OnnxEmbedder
    m = _model(tmp_path / "noshape.onnx")
    model = onnx.load(str(m))
    model.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(model, str(m))
    with pytest.raises(CheckpointError, match=r"noshape\.onnx.*input 'x'.*no declared shape"):
        OnnxEmbedder(m)


def test_a_fixed_batch_too_large_to_hold_is_refused(tmp_path):
    from facelt.faces.onnx_io import OnnxEmbedder
    with pytest.raises(CheckpointError, match=r"batch\.onnx.*fixed batch of 2,147,483,647.*needs"):
        OnnxEmbedder(_model(tmp_path / "batch.onnx", batch=2 ** 31 - 1))
