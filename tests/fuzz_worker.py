"""Seeded mutations of valid inputs through the real commands (issue 20's fuzz test).

Run by tests/test_fuzz.py in a subprocess with a memory limit:
``python tests/fuzz_worker.py --seed S --work DIR [--scale X]``.  It builds one valid input of
each kind (a verification ``.bin``, IJB meta files, an insightface RecordIO set, a YAML recipe,
an ONNX model, report.json files), then, per iteration, mutates a copy (byte-level damage or a
format-aware change), runs the command that reads it (``facelt.cli.main`` in this process) and
classifies the outcome.  An outcome is good when the command returns 0 or 2 (a FaceltError), its
stderr holds no traceback and no "internal error", it finishes within its alarm, and no input
file changed.  Prints one JSON line: counts per kind and every bad outcome (kind, iteration,
mutation, return code, stderr tail).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import struct
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FACELT_QUIET", "1")

import cv2  # noqa: E402

from facelt.cli import main as cli_main  # noqa: E402

SIDE = 8
INTERESTING_INTS = [0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1,
                    10 ** 10, 2 ** 63 - 1, 2 ** 64 - 1]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


# ------------------------------------------------------------------------------- byte mutations

def mutate_bytes(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    """One to three random byte-level changes; returns the new bytes and what was done."""
    b = bytearray(data)
    done = []
    for _ in range(int(rng.integers(1, 4))):
        if not b:
            b += bytes(rng.integers(0, 256, 8, dtype=np.uint8))
            done.append("refill")
            continue
        op = int(rng.integers(0, 7))
        pos = int(rng.integers(0, len(b)))
        if op == 0:
            b[pos] ^= 1 << int(rng.integers(0, 8))
            done.append(f"flip@{pos}")
        elif op == 1:
            b[pos] = int(rng.choice([0, 0xFF, 0x7F, 0x80, 0x0A, 0x22]))
            done.append(f"set@{pos}")
        elif op == 2:
            width = int(rng.choice([4, 8]))
            v = int(rng.choice(INTERESTING_INTS)) & ((1 << (8 * width)) - 1)
            b[pos:pos + width] = v.to_bytes(width, "little")
            done.append(f"int{width}@{pos}={v}")
        elif op == 3:
            del b[pos:pos + int(rng.integers(1, 64))]
            done.append(f"delete@{pos}")
        elif op == 4:
            n = int(rng.integers(1, 64))
            b[pos:pos] = b[pos:pos + n]
            done.append(f"dup@{pos}")
        elif op == 5:
            del b[pos:]
            done.append(f"truncate@{pos}")
        else:
            b[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
            done.append(f"insert@{pos}")
    return bytes(b), "+".join(done)


def mutate_tokens(rng: np.random.Generator, text: str, snippets: list[str]) -> tuple[str, str]:
    """Replace, delete or duplicate a whitespace-separated token or a line of ``text``."""
    lines = text.split("\n")
    i = int(rng.integers(0, len(lines)))
    op = int(rng.integers(0, 4))
    if op == 0:
        del lines[i]
        return "\n".join(lines), f"del line {i}"
    if op == 1:
        lines.insert(i, lines[i])
        return "\n".join(lines), f"dup line {i}"
    toks = lines[i].split(" ")
    j = int(rng.integers(0, len(toks)))
    new = str(rng.choice(snippets))
    if op == 2:
        toks[j] = new
    else:
        toks.insert(j, new)
    lines[i] = " ".join(toks)
    return "\n".join(lines), f"line {i} token {j} -> {new[:30]!r}"


# ------------------------------------------------------------------------------- valid inputs

def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def make_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = np.random.default_rng(1).standard_normal((3 * SIDE * SIDE, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["embedding"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def make_inputs(work: Path) -> dict:
    rng = np.random.default_rng(0)
    inp = work / "valid"
    inp.mkdir(parents=True)
    imgs = rng.integers(0, 256, (20, SIDE, SIDE, 3), dtype=np.uint8)
    bins = [_png(im) for im in imgs]
    flavours = {
        "bytes_p4": pickle.dumps((bins, [True, False] * 5), protocol=4),
        "numpy_p2": pickle.dumps(([np.frombuffer(b, np.uint8) for b in bins], [True, False] * 5),
                                 protocol=2),
        "numpy_p5": pickle.dumps(([np.frombuffer(b, np.uint8) for b in bins],
                                  np.array([True, False] * 5)), protocol=5),
    }
    for name, data in flavours.items():
        (inp / f"{name}.bin").write_bytes(data)
    # IJB: 6 images, 3 templates, 4 pairs, precomputed features
    ijb = inp / "ijb" / "meta"
    ijb.mkdir(parents=True)
    names = [f"{c}.jpg" for c in "abcdef"]
    (ijb / "ijbc_name_5pts_score.txt").write_text(
        "".join(f"{n} " + " ".join(["50.0"] * 10) + " 0.9\n" for n in names))
    (ijb / "ijbc_face_tid_mid.txt").write_text(
        "".join(f"{n} {1 + i // 2} {10 + i}\n" for i, n in enumerate(names)))
    (ijb / "ijbc_template_pair_label.txt").write_text("1 2 1\n1 3 0\n2 3 0\n3 1 1\n")
    np.save(inp / "ijb_features.npy", rng.standard_normal((6, 4)).astype(np.float32))
    # RecordIO
    from pipelines.synthetic_faces import write_synthetic_rec
    write_synthetic_rec(inp / "rec" / "train", counts=[2, 2, 1], seed=3, size=SIDE)
    # YAML
    shutil.copy(ROOT / "configs" / "demo_list.yaml", inp / "recipe.yaml")
    make_onnx(inp / "model.onnx")
    img_dir = inp / "images"
    img_dir.mkdir()
    for i in range(3):
        (img_dir / f"{i}.png").write_bytes(bins[i])
    # reports
    closed = {"overall": 0.5, "many": 0.6, "medium": 0.5, "few": 0.25}
    opened = dict(closed, f_measure=0.4)
    reports = {
        "cls": {"closed_set": closed, "open_set": opened, "threshold": 0.1, "stage": 2,
                "per_class": [{"class": k, "train_count": 5 + k, "accuracy": 0.5} for k in range(3)],
                "threshold_sweep": [{"threshold": 0.1, "f_measure": 0.4,
                                     "closed_accuracy_known": 0.5, "open_rejection": 0.2}]},
        "mf": {"gallery": 10, "rank1": 0.8, "trials": 4, "cmc": [0.8] * 10,
               "meta": {"stage": 2, "pseudo_shot_threshold": 0.7},
               "pseudo_shots": {b: {"rank1": 0.5, "probes": 3} for b in ("many", "few", "one", "zero")}},
        "cmp": {"recipe": "r.yaml", "threshold": 0.1, "protocol": "p", "shot_rule": "s",
                "methods": {"plain": {"closed_set": closed, "open_set": opened}}},
    }
    for name, rep in reports.items():
        (inp / "reports" / name).mkdir(parents=True)
        (inp / "reports" / name / "report.json").write_text(json.dumps(rep))
    return {"dir": inp, "bins": sorted(inp.glob("*.bin")), "reports": reports}


# ------------------------------------------------------------------------------- one outcome

def digest(paths) -> dict:
    out = {}
    for p in paths:
        for f in ([p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())):
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], alarm_s: int) -> tuple[int, str, float]:
    err, out = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    signal.alarm(alarm_s)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = cli_main(["--quiet"] + argv)
    except Hang:
        rc = "hang"
    except BaseException:  # noqa: BLE001 -- an exception out of main is a failure to report
        rc = "raised"
        err.write(traceback.format_exc())
    finally:
        signal.alarm(0)
    return rc, err.getvalue(), time.monotonic() - t0


class Fuzzer:
    def __init__(self, seed: int, work: Path, alarm_s: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.work = work
        self.alarm_s = alarm_s
        self.valid = make_inputs(work)
        self.counts: dict[str, dict] = {}
        self.bad: list[dict] = []

    def case_dir(self, kind: str, i: int) -> Path:
        d = self.work / "cases" / f"{kind}{i}"
        d.mkdir(parents=True)
        return d

    def outcome(self, kind: str, i: int, what: str, argv: list[str], inputs: list[Path]) -> None:
        before = digest(inputs)
        rc, err, secs = run_cli(argv, self.alarm_s)
        changed = [k for k, v in digest(inputs).items() if before.get(k) != v] + \
            [k for k in before if not Path(k).exists()]
        c = self.counts.setdefault(kind, {"runs": 0, "ok": 0, "refused": 0})
        c["runs"] += 1
        ok = rc in (0, 2) and "Traceback" not in err and "internal error" not in err and not changed
        if ok:
            c["ok" if rc == 0 else "refused"] += 1
            shutil.rmtree(self.work / "cases" / f"{kind}{i}", ignore_errors=True)
        else:  # the case stays in WORK/cases for a look
            self.bad.append({"kind": kind, "iteration": i, "mutation": what, "rc": rc,
                             "changed": changed, "seconds": round(secs, 2),
                             "argv": argv, "stderr": err[-1500:]})

    # --- one kind each
    PICKLE_SPLICES = [b"R", b"b", b"\x81", b"}", b"s", b"cnumpy\nndarray\n", b"cos\nsystem\n",
                      b"\x8e" + struct.pack("<Q", 10 ** 10), b"r\xff\xff\xff\xff", b"h\x05",
                      b"(", b"t", b"l", b"e", b"0", b"2", b"\x88", b"N", b"\x82\x01", b"Q"]

    def _bin_object(self, src: Path) -> tuple[bytes, str]:
        """A format-aware change: the pickled images or flags replaced, then pickled again."""
        from facelt.faces.verification import read_bin
        bins, same = read_bin(src)
        bins, same = list(bins), [bool(x) for x in same]
        rng = self.rng
        op = int(rng.integers(0, 6))
        k = int(rng.integers(0, len(bins)))
        if op == 0:
            bins[k], what = mutate_bytes(rng, bins[k])
            what = f"image {k}: {what}"
        elif op == 1:
            bins[k], what = b"", f"image {k} empty"
        elif op == 2:
            w, h = (int(v) for v in rng.choice([1, 8, 9000, 30000, 2 ** 31 - 1], 2))
            bins[k] = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
                       + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0) + b"\0" * 4)
            what = f"image {k} declares {w}x{h}"
        elif op == 3:
            same = same[:int(rng.integers(0, len(same)))]
            what = f"{len(same)} flags"
        elif op == 4:
            same = [int(rng.integers(-3, 3)) for _ in same] if rng.random() < 0.5 \
                else ["yes"] * len(same)
            what = "flags of another type"
        else:
            bins = np.stack([np.frombuffer(bins[0], np.uint8)] * len(bins))
            what = "images as one 2-D array"
        return pickle.dumps((bins, same), protocol=int(rng.integers(2, 6))), what

    def bin_case(self, i: int) -> None:
        d = self.case_dir("bin", i)
        src = self.valid["bins"][i % len(self.valid["bins"])]
        r = self.rng.random()
        if r < 0.4:
            data, what = mutate_bytes(self.rng, src.read_bytes())
        elif r < 0.7:
            data, what = self._bin_object(src)
        else:
            raw = src.read_bytes()
            pos = int(self.rng.integers(2, len(raw) - 1))
            splice = self.PICKLE_SPLICES[int(self.rng.integers(0, len(self.PICKLE_SPLICES)))]
            data, what = raw[:pos] + splice + raw[pos:], f"splice {splice[:12]!r}@{pos}"
        p = d / src.name
        p.write_bytes(data)
        model = self.valid["dir"] / "model.onnx"
        self.outcome("bin", i, f"{src.name}: {what}",
                     ["verify", "--bin", str(p), "--onnx", str(model), "--batch-size", "8"],
                     [p, model])

    IJB_SNIPPETS = ["", "x", "-1", "nan", "inf", "1e999", "9" * 30, "0", "3", "999999999999",
                    "\t", "a.jpg", "0.5", "\xe9", "2 2", "1 1 1"]

    def ijb_case(self, i: int) -> None:
        d = self.case_dir("ijb", i)
        shutil.copytree(self.valid["dir"] / "ijb", d / "ijb")
        feats = d / "features.npy"
        shutil.copy(self.valid["dir"] / "ijb_features.npy", feats)
        target = [*(d / "ijb" / "meta").iterdir(), feats][int(self.rng.integers(0, 4))]
        raw = target.read_bytes()
        if target.suffix == ".txt" and self.rng.random() < 0.7:
            text, what = mutate_tokens(self.rng, raw.decode(), self.IJB_SNIPPETS)
            data = text.encode("utf-8", "surrogateescape")
        else:
            data, what = mutate_bytes(self.rng, raw)
        target.write_bytes(data)
        self.outcome("ijb", i, f"{target.name}: {what}",
                     ["ijb", "--root", str(d / "ijb"), "--target", "IJBC", "--features",
                      str(feats), "--json"], [d / "ijb", feats])

    def rec_case(self, i: int) -> None:
        d = self.case_dir("rec", i)
        shutil.copytree(self.valid["dir"] / "rec", d / "rec")
        files = sorted((d / "rec").iterdir())
        files = [f for f in files if f.suffix in (".rec", ".idx") or f.name == "property"]
        target = files[int(self.rng.integers(0, len(files)))]
        raw = target.read_bytes()
        if target.suffix == ".idx" and self.rng.random() < 0.5:
            text, what = mutate_tokens(self.rng, raw.decode(), ["-1", "x", "0", "99", "1e3",
                                                                 "18446744073709551616", "4\t0"])
            data = text.encode()
        else:
            data, what = mutate_bytes(self.rng, raw)
        target.write_bytes(data)
        out = self.work / "out" / f"rec{i}.npy"
        prefix = str(d / "rec" / "train")
        if i % 2:
            argv = ["rec", "inspect", prefix, "--json"]
        else:
            argv = ["extract-features", "--onnx", str(self.valid["dir"] / "model.onnx"), "--rec",
                    prefix, "--out", str(out), "--batch-size", "4"]
        self.outcome("rec", i, f"{target.name}: {what}", argv, [d / "rec"])

    YAML_SNIPPETS = ["&a [*a]", "*nope", "!!python/object/apply:os.system ['true']", "{a: 1, a: 2}",
                     "1e999", "-1", "[" * 80, "'\x00'", "!!binary aGVsbG8=", "2001-12-14",
                     "~", "9" * 5000, "{<<: *x}", "? [a]", "!!set {a, b}", "\"\\ud800\"", "|",
                     "&b [a, *b]", "{x: &c [1], y: *c}"]

    def yaml_case(self, i: int) -> None:
        d = self.case_dir("yaml", i)
        raw = (self.valid["dir"] / "recipe.yaml").read_bytes()
        if self.rng.random() < 0.7:
            text, what = mutate_tokens(self.rng, raw.decode(), self.YAML_SNIPPETS)
            data = text.encode("utf-8", "surrogatepass")
        else:
            data, what = mutate_bytes(self.rng, raw)
        p = d / "recipe.yaml"
        p.write_bytes(data)
        self.outcome("yaml", i, what, ["config", "--config", str(p)], [p])

    def onnx_case(self, i: int) -> None:
        import onnx
        from onnx import TensorProto
        d = self.case_dir("onnx", i)
        model = onnx.load(str(self.valid["dir"] / "model.onnx"))
        m = copy.deepcopy(model)
        rng = self.rng
        op = int(rng.integers(0, 9))
        dims = [-5, 0, 1, 2, 3, 4, 7, SIDE, 112, 1024, 1025, 11200, 2 ** 31 - 1]
        if op == 0:
            dim = m.graph.input[0].type.tensor_type.shape.dim[int(rng.integers(0, 4))]
            dim.dim_value = int(rng.choice(dims))
            what = f"input dim {dim.dim_value}"
        elif op == 1:
            t = int(rng.choice([TensorProto.UINT8, TensorProto.INT64, TensorProto.DOUBLE,
                                TensorProto.FLOAT16, TensorProto.STRING, 0]))
            m.graph.input[0].type.tensor_type.elem_type = t
            what = f"input type {t}"
        elif op == 2:
            m.graph.output.append(copy.deepcopy(m.graph.output[0]))
            m.graph.output[-1].name = "flat"
            what = "second output"
        elif op == 3:
            dim = m.graph.output[0].type.tensor_type.shape.dim[int(rng.integers(0, 2))]
            dim.dim_value = int(rng.choice(dims))
            what = f"output dim {dim.dim_value}"
        elif op == 4:
            node = m.graph.node[int(rng.integers(0, len(m.graph.node)))]
            node.op_type = str(rng.choice(["Foo", "Relu", "Gemm", "", "Loop"]))
            node.domain = str(rng.choice(["", "com.example", "ai.onnx.ml"]))
            what = f"node {node.op_type}@{node.domain}"
        elif op == 5:
            del m.graph.node[int(rng.integers(0, len(m.graph.node)))]
            what = "node deleted"
        elif op == 6:
            m.opset_import[0].version = int(rng.integers(1, 40))
            what = f"opset {m.opset_import[0].version}"
        elif op == 7:
            init = m.graph.initializer[0]
            init.dims[0] = int(rng.choice(dims))
            what = f"initializer dims {list(init.dims)}"
        else:
            m.graph.ClearField("output")
            what = "no outputs"
        data = m.SerializeToString()
        if rng.random() < 0.3:
            data, extra = mutate_bytes(rng, data)
            what += f" + {extra}"
        p = d / "model.onnx"
        p.write_bytes(data)
        out = self.work / "out" / f"onnx{i}.npy"
        images = self.valid["dir"] / "images"
        self.outcome("onnx", i, what, ["extract-features", "--onnx", str(p), "--images",
                                        str(images), "--out", str(out), "--batch-size", "2"],
                     [p, images])

    JSON_VALUES = [None, "x", -1, 0, 10 ** 400, 1e308, [], {}, [1, 2], {"a": 1}, True, "", 0.5,
                   [[[[[]]]]], 2 ** 63]

    def _mutate_json(self, obj):
        """Replace or delete one random value somewhere in ``obj`` (in place)."""
        rng = self.rng
        node, path = obj, []
        while isinstance(node, (dict, list)) and node and rng.random() < 0.75:
            key = (list(node)[int(rng.integers(0, len(node)))] if isinstance(node, dict)
                   else int(rng.integers(0, len(node))))
            if not isinstance(node[key], (dict, list)) or not node[key] or rng.random() < 0.3:
                break
            node, path = node[key], path + [key]
        if not isinstance(node, (dict, list)) or not node:
            return "nothing"
        key = list(node)[int(rng.integers(0, len(node)))] if isinstance(node, dict) \
            else int(rng.integers(0, len(node)))
        if rng.random() < 0.3:
            del node[key]
            return f"delete {path + [key]}"
        value = self.JSON_VALUES[int(rng.integers(0, len(self.JSON_VALUES)))]
        node[key] = copy.deepcopy(value)
        return f"{path + [key]} = {str(value)[:20]}"

    def report_case(self, i: int) -> None:
        d = self.case_dir("report", i)
        name = ("cls", "mf", "cmp")[i % 3]
        rep = copy.deepcopy(self.valid["reports"][name])
        p = d / name / "report.json"
        p.parent.mkdir()
        if self.rng.random() < 0.75:
            what = self._mutate_json(rep)
            data = json.dumps(rep).encode()
        else:
            data, what = mutate_bytes(self.rng, json.dumps(rep).encode())
        p.write_bytes(data)
        self.outcome("report", i, f"{name}: {what}", ["report", str(d)], [p])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--scale", type=float, default=1.0, help="iterations x this")
    ap.add_argument("--alarm", type=int, default=20, help="seconds one command may take")
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    fz = Fuzzer(args.seed, args.work, args.alarm)
    plan = [("bin", fz.bin_case, 90), ("ijb", fz.ijb_case, 90), ("rec", fz.rec_case, 90),
            ("yaml", fz.yaml_case, 150), ("onnx", fz.onnx_case, 90),
            ("report", fz.report_case, 45)]
    t0 = time.monotonic()
    for kind, case, n in plan:
        for i in range(max(1, int(n * args.scale))):
            case(i)
    print(json.dumps({"seconds": round(time.monotonic() - t0, 1), "counts": fz.counts,
                      "bad": fz.bad}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
