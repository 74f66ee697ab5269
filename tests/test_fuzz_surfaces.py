"""Seeded fuzzing of the surfaces that read untrusted data: the COCO segmentation decoder, the COCO / Visual
Genome / Action Genome planners and jobs on mutated annotation files, the ONNX guard on mutated and
bomb-carrying graphs, graph-layout keys, and plugin bundles' encoder_weights.npz.

Each surface runs in a child process under resource limits (address space, CPU seconds): a case that asked for
gigabytes or looped would kill the child, and the test fails. Every case must end in success or in one sg2v
error line (no traceback, no MemoryError); where a case is accepted, what it computed is checked against what
the case was built to hold (mask shapes, bounded tensor sizes, layouts, encoder outputs). The fast run tries a
few hundred cases per surface; SG2V_FUZZ_LONG=1 multiplies the counts by 20 (and the CPU limit likewise).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LONG = os.environ.get("SG2V_FUZZ_LONG") == "1"
SCALE = 20 if LONG else 1
MEMORY_LIMIT = 3 << 30  # bytes of address space for a child (numpy and onnxruntime fit well within it)
CPU_SECONDS = 120 * SCALE

HOSTILE = [None, True, -1, 0, 1.5, -1e30, 1e308, 2 ** 63, 2 ** 64, 10 ** 30, 10 ** 400, "", "²", "٣",
           "../x", "x" * 1000, [], {}, [[]], [0] * 5000, {"a": 1}, [1, 2, 3, 4], [10 ** 400] * 4,
           [float("nan")] * 4]


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS + 5))


def _one_line(e: BaseException) -> str:
    from sg2v.errors import Sg2vError

    text = str(e)
    if not isinstance(e, Sg2vError) or "\n" in text or not text:
        raise AssertionError(f"not one sg2v error line: {type(e).__name__}: {text[:300]!r}")
    return "refused"


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:50]):
            yield from _paths(v, (*prefix, i))


def _mutate(data, rng: np.random.Generator):
    """`data` with 1-3 spots replaced by hostile values (or deleted)."""
    for _ in range(int(rng.integers(1, 4))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            return data
        path = paths[int(rng.integers(len(paths)))]
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        if rng.random() < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(HOSTILE[int(rng.integers(len(HOSTILE)))])
    return data


# ------------------------------------------------------------------------------------------------ surfaces
def fuzz_segmentation(rng: np.random.Generator, n: int, work: Path) -> Counter:
    """Random RLEs and polygons, plausible and hostile: a (h, w) bool mask or MaskError."""
    from sg2v.dataset.coco import MaskError, segmentation_mask

    out: Counter = Counter()
    for _ in range(n):
        h, w = int(rng.integers(1, 64)), int(rng.integers(1, 64))
        kind = int(rng.integers(6))
        mask = None
        if kind == 0:  # a valid uncompressed RLE of a random mask
            mask = rng.random((h, w)) < 0.5
            flat = mask.T.ravel()
            change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
            runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
            seg = {"size": [h, w], "counts": ([0] if flat[0] else []) + runs}
        elif kind == 1:  # hostile RLE numbers
            counts = [HOSTILE[int(rng.integers(len(HOSTILE)))] for _ in range(int(rng.integers(1, 5)))]
            seg = {"size": [int(rng.choice([h, -1, 0, 10 ** 5, 2 ** 40])), w], "counts": counts}
        elif kind == 2:  # huge counts that sum wrongly or overflow int64
            seg = {"size": [h, w], "counts": [*(int(v) for v in rng.integers(0, 2 ** 62, 3)), 2 ** 64]}
        elif kind == 3:  # random RLE strings
            seg = {"size": [h, w], "counts": "".join(chr(int(c)) for c in rng.integers(40, 120, 40))}
        elif kind == 4:  # polygons of random points, sometimes hostile values
            polys = [rng.uniform(-10, 70, 2 * int(rng.integers(0, 12))).tolist()
                     for _ in range(int(rng.integers(0, 4)))]
            if polys and polys[0] and rng.random() < 0.5:
                polys[0][0] = HOSTILE[int(rng.integers(len(HOSTILE)))]
            seg = polys
        else:  # too many polygons or points
            seg = [[0.0, 0.0, 5.0, 0.0, 5.0, 5.0]] * int(rng.choice([1001, 5000])) if rng.random() < 0.5 \
                else [[1.0] * int(rng.choice([2 ** 15 + 2, 2 ** 17]))]
        try:
            got = segmentation_mask(seg, h, w)
        except MaskError:
            assert kind != 0, seg  # a valid RLE decodes
            out["refused"] += 1
            continue
        assert got.shape == (h, w) and got.dtype == bool, (seg, got.shape)
        if mask is not None:
            assert np.array_equal(got, mask), seg
        out["ok"] += 1
    return out


def _plan_and_jobs(fmt: str, src: Path, rng_seed: int) -> str:
    from sg2v.dataset.common import JobContext, set_context
    from sg2v.dataset.convert import make_plan
    from sg2v.dataset.options import AGOptions, CocoOptions, VGOptions
    from sg2v.errors import Sg2vError

    options = {"coco-stuff": CocoOptions(val_images=1),
               "vg": VGOptions(splits_json=str(src / "vg_splits.json"), min_object_instances=2,
                               min_relationship_instances=2),
               "action-genome": AGOptions(val_fraction=0.5)}[fmt]
    try:
        plan = make_plan(fmt, src, options, rng_seed, 2)
        set_context(JobContext(height=16, width=16, frames=2, seed=rng_seed, skip_unreadable=True,
                               extra={"centers": "mask"}))
        for payload in plan.payloads:
            res = plan.job(payload)
            for _, record, frames in res.samples:
                boxes = np.asarray(record["boxes"], dtype=np.float64)
                assert np.isfinite(boxes).all() and (boxes >= 0).all() and (boxes <= 1).all(), record
                assert frames.dtype == np.uint8 and frames.shape[1:] == (16, 16, 3)
    except Sg2vError as e:
        return _one_line(e)
    return "ok"


def _fuzz_json_source(fmt: str, files: list[str], rng: np.random.Generator, n: int, work: Path) -> Counter:
    from dataset_fixtures import write_coco, write_vg

    base = work / f"{fmt}-base"
    if not base.exists():
        (write_coco if fmt == "coco-stuff" else write_vg)(base)
    out: Counter = Counter()
    for i in range(n):
        src = work / f"{fmt}-{i}"
        shutil.copytree(base, src)
        name = files[int(rng.integers(len(files)))]
        data = _mutate(json.loads((src / name).read_text()), rng)
        (src / name).write_text(json.dumps(data))
        out[_plan_and_jobs(fmt, src, i)] += 1
        shutil.rmtree(src)
    return out


def fuzz_coco(rng, n, work):
    return _fuzz_json_source("coco-stuff", ["annotations/instances_train2017.json",
                                            "annotations/stuff_train2017.json",
                                            "annotations/instances_val2017.json"], rng, n, work)


def fuzz_vg(rng, n, work):
    return _fuzz_json_source("vg", ["image_data.json", "objects.json", "relationships.json"], rng, n, work)


def fuzz_ag(rng: np.random.Generator, n: int, work: Path) -> Counter:
    from dataset_fixtures import write_ag

    base = work / "ag-base"
    if not base.exists():
        write_ag(base)
    out: Counter = Counter()
    for i in range(n):
        src = work / f"ag-{i}"
        shutil.copytree(base, src)
        name = ["person_bbox.pkl", "object_bbox_and_relationship.pkl"][int(rng.integers(2))]
        path = src / "annotations" / name
        data = pickle.loads(path.read_bytes())
        keys = sorted(data)
        key = keys[int(rng.integers(len(keys)))]
        entry = data[key]
        if isinstance(entry, dict):  # a person entry: its fields as plain lists, then mutated
            entry = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in entry.items()}
        else:
            entry = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in o.items()}
                     for o in entry]
        data[key] = _mutate(entry, rng)
        objs = data[key]
        if rng.random() < 0.3 and isinstance(objs, list) and objs and isinstance(objs[0], dict):
            field = ["attention_relationship", "spatial_relationship", "bbox"][int(rng.integers(3))]
            arrays = [np.array(["looking_at"]), np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([np.inf] * 4)]
            objs[0][field] = arrays[int(rng.integers(3))]
        path.write_bytes(pickle.dumps(data, protocol=3))
        out[_plan_and_jobs("action-genome", src, i)] += 1
        shutil.rmtree(src)
    return out


def fuzz_onnx(rng: np.random.Generator, n: int, work: Path) -> Counter:
    """Graphs carrying a shape-computing bomb (Tile / Expand / ConstantOfShape / Range / Pad / Reshape fed by
    Mul of random constants, or by the batch size): refused, or accepted only when the node's true output
    (computed here) is within the bound. Plus byte-level mutations of a real exported encoder."""
    from onnx import TensorProto, helper, numpy_helper

    from sg2v.runtime.onnx_guard import MAX_ELEMENTS, OnnxGuardError, check_onnx_file

    out: Counter = Counter()
    one = numpy_helper.from_array(np.ones([1], np.float32), "one")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    for i in range(n):
        a, b = (int(v) for v in rng.choice([1, 3, 7, 1 << 10, 1 << 14, 1 << 16, 1 << 20], 2))
        op = ["Tile", "Expand", "ConstantOfShape", "Range", "Pad", "Reshape"][i % 6]
        by_batch = rng.random() < 0.3
        rows = int(rng.integers(1, 40))
        nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["bsz"])]
        inits = [one, numpy_helper.from_array(np.array([0], np.int64), "i0"),
                 numpy_helper.from_array(np.array([a], np.int64), "a"),
                 numpy_helper.from_array(np.array([b], np.int64), "b")]
        nodes.append(helper.make_node("Mul", ["a", "bsz" if by_batch else "b"], ["n"]))
        true_n = _bomb(op, nodes, inits, a * (rows if by_batch else b), rows)
        graph = helper.make_graph(nodes, "g", [x], y, initializer=inits)
        path = work / f"m{i}.onnx"
        path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                         .SerializeToString())
        try:
            check_onnx_file(path, max_rows=rows)
        except OnnxGuardError as e:
            out[_one_line(e)] += 1
            continue
        assert true_n <= MAX_ELEMENTS, (op, a, b, by_batch, rows)
        out["ok"] += 1
    out.update(_mutated_encoders(rng, n, work))
    return out


def _bomb(op: str, nodes: list, inits: list, n: int, rows: int) -> int:
    """Append the `op` node fed by the computed size "n" (at most `n`) to `nodes` and `inits`; returns the
    true largest output size at any batch size 1..rows."""
    from onnx import helper, numpy_helper

    if op == "Tile":
        nodes.append(helper.make_node("Tile", ["one", "n"], ["y"]))
    elif op == "Expand":
        nodes.append(helper.make_node("Expand", ["one", "n"], ["y"]))
    elif op == "ConstantOfShape":
        nodes.append(helper.make_node("ConstantOfShape", ["n"], ["y"]))
    elif op == "Range":
        inits += [numpy_helper.from_array(np.array(0, np.int64), "r0"),
                  numpy_helper.from_array(np.array(1, np.int64), "r1")]
        nodes += [helper.make_node("Squeeze", ["n"], ["lim"]),
                  helper.make_node("Range", ["r0", "lim", "r1"], ["y"])]
    elif op == "Pad":
        nodes += [helper.make_node("Concat", ["i0", "n"], ["p"], axis=0),
                  helper.make_node("Pad", ["one", "p"], ["y"])]
        return n + 1
    else:  # Reshape of x (batch, 3) to (n, -1): refused unless it divides at every batch size
        nodes.append(helper.make_node("Concat", ["n", "m1"], ["shape"], axis=0))
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "m1"))
        nodes.append(helper.make_node("Reshape", ["x", "shape"], ["y"]))
        return 3 * rows
    return n


def _mutated_encoders(rng: np.random.Generator, n: int, work: Path) -> Counter:
    """Byte-level mutations (and truncations) of a real exported encoder: refused or accepted whole."""
    from sg2v.runtime.onnx_guard import OnnxGuardError, check_onnx_file

    out: Counter = Counter()
    real = (ROOT / "models" / "demo-ungrounded" / "encoder.onnx").read_bytes()
    for i in range(max(n // 10, 4)):
        raw = bytearray(real)
        for _ in range(int(rng.integers(1, 20))):
            raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
        if rng.random() < 0.3:
            raw = raw[: int(rng.integers(len(raw)))]
        path = work / f"real{i}.onnx"
        path.write_bytes(bytes(raw))
        try:
            check_onnx_file(path, max_rows=1)
            out["ok"] += 1
        except OnnxGuardError as e:
            out[_one_line(e)] += 1
    return out


def fuzz_layout_keys(rng: np.random.Generator, n: int, work: Path) -> Counter:
    """Graph layout keys and layout files of random ASCII / unicode digits: parsed by index or GraphError."""
    from sg2v.errors import GraphError
    from sg2v.graph import load_layout, parse_graph
    from sg2v.vocab import shapes_vocab

    vocab = shapes_vocab()
    alphabet = list("0123456789") + ["²", "٣", "１", "𝟙", "߀", "x", " ", "-", "+"]
    out: Counter = Counter()
    base = {"objects": ["red circle", "blue square", "green triangle"], "relationships": []}
    g = parse_graph(base, vocab)
    for i in range(n):
        key = "".join(alphabet[int(k)] for k in rng.integers(len(alphabet), size=int(rng.integers(1, 4))))
        want = int(key) if key.isascii() and key.isdigit() and (key == "0" or key[0] != "0") \
            and int(key) < 3 else None
        box = [0.1, 0.2, 0.4, 0.5]
        try:
            if i % 2:
                got = dict(parse_graph({**base, "layout": {key: box}}, vocab, frames=4).layout)
            else:
                path = work / "layout.json"
                path.write_text(json.dumps({key: box}), encoding="utf-8")
                got = load_layout(path, g, frames=4)
        except GraphError as e:
            assert want is None, key
            out[_one_line(e)] += 1
            continue
        assert want is not None and list(got) == [want], key
        out["ok"] += 1
    return out


def fuzz_bundle_npz(rng: np.random.Generator, n: int, work: Path) -> Counter:
    """A plugin copy of the ungrounded demo with its encoder_weights.npz mutated (shapes, rows, dtypes,
    values, extra and missing keys): refused when it opens, or it opens and sg2v's numpy encoder runs."""
    from helpers import write_manifest

    from sg2v.errors import BundleError
    from sg2v.runtime import gpu_encoder as ge
    from sg2v.runtime.bundle import Bundle

    root = work / "plugin"
    if not root.exists():
        shutil.copytree(ROOT / "models" / "demo-ungrounded", root)
        m = json.loads((root / "manifest.json").read_text())
        m["pooling"] = "plugin"
        write_manifest(root, m)
    with np.load(root / "encoder_weights.npz") as z:
        good = {k: z[k] for k in z.files}
    out: Counter = Counter()
    for _ in range(n):
        w = _mutated_weights(rng, good)
        np.savez(root / "encoder_weights.npz", **w)
        m = json.loads((root / "manifest.json").read_text())
        write_manifest(root, m)
        try:
            bundle = Bundle.open(root)
        except BundleError as e:
            out[_one_line(e)] += 1
            continue
        enc = ge.NumpyEncoder(ge.load_encoder_weights(root / "encoder_weights.npz"))
        o, t = bundle.shapes["padded_objects"], bundle.shapes["padded_triples"]
        objs = rng.integers(0, bundle.config.encoder.num_objs, (2, o))
        preds = rng.integers(0, bundle.config.encoder.num_preds, (2, t))
        triples = np.stack([rng.integers(0, o, (2, t)), preds, rng.integers(0, o, (2, t))], axis=-1)
        res = enc.run({"objs": objs, "obj_mask": np.ones((2, o), np.float32), "triples": triples,
                       "triple_mask": np.ones((2, t), np.float32)})
        assert res["context"].shape == (2, bundle.shapes["context_tokens"], bundle.shapes["context_dim"])
        out["ok"] += 1
    np.savez(root / "encoder_weights.npz", **good)
    return out


def _mutated_weights(rng: np.random.Generator, good: dict) -> dict:
    """`good` with one or two random changes: a key flattened, cut short, transposed, halved in precision,
    an extra layer, a key dropped, or NaN values."""
    w = dict(good)
    for _ in range(int(rng.integers(1, 3))):
        key = sorted(w)[int(rng.integers(len(w)))]
        a = w[key]
        change = int(rng.integers(7))
        if change == 0:
            w[key] = a.ravel()
        elif change == 1:
            w[key] = a[: max(a.shape[0] - int(rng.integers(1, 3)), 0)]
        elif change == 2:
            w[key] = a.T.copy() if a.ndim == 2 else np.stack([a, a])
        elif change == 3:
            w[key] = a.astype(np.float16)
        elif change == 4:
            w[f"layers.{int(rng.choice([5, 99999999, 10 ** 12]))}.extra"] = np.ones(2, np.float32)
        elif change == 5:
            del w[key]
        else:
            w[key] = np.full_like(a, np.nan)
    return w


SURFACES = {"coco-segmentation": (fuzz_segmentation, 300), "coco-convert": (fuzz_coco, 30),
            "vg-convert": (fuzz_vg, 30), "ag-convert": (fuzz_ag, 30), "onnx-guard": (fuzz_onnx, 120),
            "layout-keys": (fuzz_layout_keys, 200), "bundle-npz": (fuzz_bundle_npz, 12)}


def _child(surface: str, n: int, seed: int, work: str, report: str) -> None:
    """Run one surface's cases (in the limited child) and write {outcome: count} or the failure."""
    fn, _ = SURFACES[surface]
    try:
        counts = fn(np.random.default_rng(seed), n, Path(work))
        result = {"counts": dict(counts)}
    except BaseException as e:  # the failure is the report: a traceback-free assertion text or the escape
        import traceback

        result = {"failure": f"{type(e).__name__}: {str(e)[:500]}",
                  "where": traceback.format_exc(limit=-3)[-1500:]}
    Path(report).write_text(json.dumps(result))


@pytest.mark.parametrize("surface", sorted(SURFACES))
def test_fuzz_surface(surface, tmp_path, test_seed):
    if surface in ("onnx-guard",):
        pytest.importorskip("onnx")
    n = SURFACES[surface][1] * SCALE
    report = tmp_path / "report.json"
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_fuzz_surfaces as t; "
            f"t._child({surface!r}, {n}, {test_seed}, {str(tmp_path)!r}, {str(report)!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, preexec_fn=_limits, capture_output=True,
                          text=True, timeout=CPU_SECONDS * 4)
    assert proc.returncode == 0, (f"child died (rc {proc.returncode}: memory or CPU limit?): "
                                  f"{proc.stderr[-2000:]}")
    result = json.loads(report.read_text())
    assert "failure" not in result, result
    counts = result["counts"]
    assert sum(counts.values()) >= n and set(counts) <= {"ok", "refused"}, counts
    print(f"{surface}: {n} cases (seed {test_seed}): {counts}")
