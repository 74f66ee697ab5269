"""The ONNX guard's static shapes: sg2v's graphs are static at every batch size their manifest allows (each
shape the same as onnx.shape_inference gives at a fixed batch), and graphs whose shapes are computed at run
time or exceed the bound at some batch size (Tile/Expand/Range/Pad/ConstantOfShape from computed constants,
If/Loop, data-dependent reshapes) are refused in one line before ONNX Runtime sees them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, Sg2vError
from sg2v.runtime import onnx_guard, onnx_shapes
from sg2v.runtime.onnx_guard import MAX_ELEMENTS, OnnxGuardError, check_onnx_file

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper, shape_inference  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"
SHIPPED = ("demo", "demo-teacher", "demo-ungrounded")


def _rows(shapes: dict, stage: str, first) -> int:
    if isinstance(first, int):
        return first
    return spec.max_batch(shapes) * spec.rows_per_video(stage, shapes)


def _stages(root: Path):
    m = json.loads((root / spec.MANIFEST).read_text())
    for stage, entry in m["stages"].items():
        rows = _rows(m["shapes"], stage, entry["inputs"][0]["shape"][0])
        yield stage, root / entry["file"], entry["inputs"], rows


def _inferred(path: Path, inputs, rows: int, monkeypatch) -> dict[str, onnx_shapes.T]:
    seen = {}
    run = onnx_shapes.Shapes.run

    def keep(self, nodes):
        run(self, nodes)
        seen.update(self.env)

    monkeypatch.setattr(onnx_shapes.Shapes, "run", keep)
    monkeypatch.setattr(onnx_guard, "_PASSED", {})  # no earlier pass of the same file: infer again
    check_onnx_file(path, inputs, rows)
    monkeypatch.setattr(onnx_shapes.Shapes, "run", run)
    return seen


def _reference(path: Path, batch: int) -> dict[str, list[int]]:
    """onnx.shape_inference's shapes with the batch axis fixed to `batch` (the export-side reference)."""
    model = onnx.load(str(path))
    for i in model.graph.input:
        for d in i.type.tensor_type.shape.dim:
            if d.dim_param:
                d.ClearField("dim_param")
                d.dim_value = batch
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if dims and None not in dims:
            out[vi.name] = dims
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_graphs_are_static_and_match_onnx_shape_inference(name, monkeypatch, rng):
    for stage, path, inputs, rows in _stages(MODELS / name):
        env = _inferred(path, inputs, rows, monkeypatch)
        for batch in sorted({1, int(rng.integers(1, rows + 1)), rows}):
            ref = _reference(path, batch)
            assert len(ref) > 100, (name, stage)
            for tensor, dims in ref.items():
                got = [int(r[min(batch - 1, r.size - 1)]) for r in env[tensor].shape]
                assert got == dims, (name, stage, tensor, batch)


def test_exported_graphs_pass_at_their_bounds(grounded_bundle, student_bundle, real_bundle):
    for root in (grounded_bundle, student_bundle, real_bundle):
        for _, path, inputs, rows in _stages(root):
            check_onnx_file(path, inputs, rows)


# ------------------------------------------------------------------------------------------ crafted graphs
def _i64(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _model(tmp_path: Path, nodes, inits=(), inputs=(), name="m.onnx", opset=17) -> Path:
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", list(inputs), out, initializer=list(inits))
    path = tmp_path / name
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
                     .SerializeToString())
    return path


def _refused(path: Path, why: str, **kw) -> str:
    with pytest.raises(OnnxGuardError, match=why) as e:
        check_onnx_file(path, **kw)
    assert "\n" not in str(e.value) and isinstance(e.value, Sg2vError)
    return str(e.value)


ONE = numpy_helper.from_array(np.ones([1], np.float32), "one")
BIG = [_i64("a", [65536]), _i64("b", [65536])]  # their product: 2^32 values


def test_tile_expand_range_pad_from_computed_constants(tmp_path):
    mul = helper.make_node("Mul", ["a", "b"], ["n"])
    cases = {
        "Tile": [helper.make_node("Tile", ["one", "n"], ["y"])],
        "Expand": [helper.make_node("Expand", ["one", "n"], ["y"])],
        "ConstantOfShape": [helper.make_node("ConstantOfShape", ["n"], ["y"])],
        "Range": [helper.make_node("Squeeze", ["n"], ["s"]), helper.make_node("Squeeze", ["z"], ["s0"]),
                  helper.make_node("Squeeze", ["u"], ["s1"]),
                  helper.make_node("Range", ["s0", "s", "s1"], ["y"])],
        "Pad": [helper.make_node("Concat", ["z", "n"], ["p"], axis=0),
                helper.make_node("Pad", ["one", "p"], ["y"])],
    }
    for op, nodes in cases.items():
        inits = [ONE, *BIG, _i64("z", [0]), _i64("u", [1])]
        path = _model(tmp_path, [mul, *nodes], inits, name=f"{op}.onnx")
        _refused(path, f"(not static .*(a {op} node|{op} output 'y').*(more than {MAX_ELEMENTS}|4294967296)"
                       "|ConstantOfShape node takes a computed shape)")


def _batch_bomb(tmp_path: Path, at: int) -> Path:
    """Tile repeats that are 2^30 at batch size `at` only, 0 at every other."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["b"]),
             helper.make_node("Equal", ["b", "at"], ["hit"]), helper.make_node("Cast", ["hit"], ["hi"], to=7),
             helper.make_node("Mul", ["hi", "big"], ["r"]), helper.make_node("Tile", ["one", "r"], ["y"])]
    return _model(tmp_path, nodes, [ONE, _i64("i0", [0]), _i64("at", [at]), _i64("big", [1 << 30])], [x],
                  name=f"batch{at}.onnx")


def test_a_bomb_at_one_batch_size_is_found_at_every_bound_that_includes_it(tmp_path, rng):
    at = int(rng.integers(2, 40))
    path = _batch_bomb(tmp_path, at)
    _refused(path, f"not static at batch sizes 1..{at + 3}: .*Tile", max_rows=at + 3)
    check_onnx_file(path, max_rows=at - 1)  # never at batch `at`: a zero-length tile at every size allowed


def test_control_flow_and_run_time_shapes_are_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    body = helper.make_graph([helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("c_in", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("c_out", TensorProto.BOOL, [])])
    loop = helper.make_node("Loop", ["trips", ""], ["y"], body=body)
    _refused(_model(tmp_path, [loop], [_i64("trips", 1 << 40)], name="loop.onnx"), "operator 'Loop'")
    tile = helper.make_graph([helper.make_node("Tile", ["one", "n"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["one"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    branch = helper.make_node("If", ["c"], ["y"], then_branch=tile, else_branch=other)
    _refused(_model(tmp_path, [helper.make_node("Mul", ["a", "b"], ["n"]), branch], [ONE, *BIG], [cond],
                    name="if.onnx"), "operator 'If'")
    data = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Cast", ["s"], ["k"], to=7),
            helper.make_node("Unsqueeze", ["k", "z"], ["k1"]), helper.make_node("Tile", ["one", "k1"], ["y"])]
    _refused(_model(tmp_path, data, [ONE, _i64("z", [0])], [x], name="data.onnx"),
             "Tile node's repeats .* computed at run time", max_rows=4)
    custom = helper.make_node("Bomb", ["x"], ["y"], domain="evil")
    _refused(_model(tmp_path, [custom], [], [x], name="custom.onnx"), "operator 'evil::Bomb' is not one")
    no_shape = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    _refused(_model(tmp_path, [helper.make_node("Identity", ["x"], ["y"])], [], [no_shape], name="ns.onnx"),
             "graph input 'x' has no static shape")


def test_a_tile_bomb_in_a_rehashed_encoder_stops_before_onnx_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    import shutil

    from helpers import write_manifest

    from sg2v.runtime import Pipeline

    root = tmp_path / "b"
    shutil.copytree(MODELS / "demo-ungrounded", root)
    m = onnx.load(str(root / spec.ENCODER_ONNX))
    m.graph.initializer.extend([ONE, *BIG])
    m.graph.node.extend([helper.make_node("Mul", ["a", "b"], ["n"]),
                         helper.make_node("Tile", ["one", "n"], ["t"])])
    (root / spec.ENCODER_ONNX).write_bytes(m.SerializeToString())
    write_manifest(root, json.loads((root / spec.MANIFEST).read_text()))
    why = "encoder.onnx: not static at its input shapes: a Tile node repeats"
    with pytest.raises(BundleError, match=why) as e:
        Pipeline.from_bundle(root, backend="ort")
    assert "\n" not in str(e.value)


def test_an_onnx_runtime_run_error_is_one_line(tmp_path, capfd):
    """A manifest whose num_train_timesteps (100000) is over the graph's 1000-step table: ONNX Runtime fails
    inside a Gather at run time; the user gets one sg2v line."""
    pytest.importorskip("onnxruntime")
    import shutil

    from helpers import write_manifest

    from sg2v.runtime import Pipeline

    root = tmp_path / "b"
    shutil.copytree(MODELS / "demo-ungrounded", root)
    m = json.loads((root / spec.MANIFEST).read_text())
    m["schedule"]["num_train_timesteps"] = m["model_config"]["diffusion"]["num_train_timesteps"] = 100000
    write_manifest(root, m)
    pipe = Pipeline.from_bundle(root, backend="ort")
    graph = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}
    with pytest.raises(BundleError, match="ONNX Runtime failed running unet.onnx .*Gather") as e:
        pipe.run([graph], [1], steps=2)
    assert "\n" not in str(e.value)
    assert "Gather" not in capfd.readouterr().err  # ONNX Runtime's own log stays quiet


def test_a_file_that_passed_is_not_checked_again_but_a_changed_one_is(tmp_path, monkeypatch):
    """The pass is remembered by the file's sha256 and the bounds: the same bytes at the same bounds skip
    the inference; other bounds or other bytes run it again."""
    runs = []
    run = onnx_shapes.Shapes.run
    def counted(self, nodes):
        runs.append(self.n)
        run(self, nodes)

    monkeypatch.setattr(onnx_shapes.Shapes, "run", counted)
    monkeypatch.setattr(onnx_guard, "_PASSED", {})
    path = _batch_bomb(tmp_path, 50)
    check_onnx_file(path, max_rows=5)
    check_onnx_file(path, max_rows=5)
    check_onnx_file(path, max_rows=6)
    assert runs == [5, 6]
    bomb = _batch_bomb(tmp_path, 4)
    path.write_bytes(bomb.read_bytes())  # the same name, other bytes: a bomb at batch 4
    _refused(path, "not static at batch sizes 1..5", max_rows=5)


def test_a_large_batch_bound_is_checked_in_chunks_of_batch_sizes(tmp_path, monkeypatch):
    """max_rows over STATIC_CHUNK: the batch sizes are checked a chunk at a time (bounded memory), every one
    of them: a bomb at the last batch size of the last chunk is found."""
    chunks = []
    run = onnx_shapes.Shapes.run

    def counted(self, nodes):
        chunks.append((int(self.rows[0]), int(self.rows[-1])))
        run(self, nodes)

    monkeypatch.setattr(onnx_shapes.Shapes, "run", counted)
    monkeypatch.setattr(onnx_guard, "_PASSED", {})
    rows = 2 * onnx_guard.STATIC_CHUNK + 7
    _refused(_batch_bomb(tmp_path, rows), f"not static at batch sizes 1..{rows}: a Tile node repeats",
             max_rows=rows)
    assert chunks[0][0] == 1 and chunks[-1][1] == rows and len(chunks) == 3
    assert all(b + 1 == c for (_, b), (c, _) in zip(chunks, chunks[1:]))
