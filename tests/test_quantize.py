"""INT8 Q/DQ export: the quantised UNet's graph (Q/DQ only on Conv/MatMul inputs, symmetric, the first and
last convs and the output float), its parity against fp32 on fresh inputs, the manifest entry, TensorRT's
operator check, and the runtime generating from the int8 bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from onnx import numpy_helper  # noqa: E402

from sg2v import bundle_spec as spec  # noqa: E402
from sg2v.errors import BundleError  # noqa: E402
from sg2v.export import quantize as q  # noqa: E402
from sg2v.export.onnx_export import ExportError, run_ort, store_weights_fp16  # noqa: E402
from sg2v.export.opcheck import check_model  # noqa: E402
from sg2v.runtime.bundle import Bundle, random_unet_feeds  # noqa: E402
from sg2v.runtime.pipeline import Pipeline  # noqa: E402


@pytest.fixture(scope="module")
def int8(student_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "bundle"
    result = q.quantize_bundle(student_bundle, out, graphs=4, parity_graphs=2, seed=5, threads=1)
    return {"out": out, "manifest": result.manifest, "src": student_bundle}


def test_qdq_sits_only_on_conv_and_matmul_inputs_and_is_symmetric(int8):
    graph = onnx.load(str(int8["out"] / spec.UNET_ONNX))
    inits = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    consumers: dict[str, list] = {}
    for n in graph.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"]
    qn = [n for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    assert dq and qn
    for n in dq + qn:
        assert len(n.input) == 3 and not inits[n.input[2]].any(), n.name  # zero point 0 (TensorRT)
        assert inits[n.input[2]].dtype == np.int8
    for n in dq:
        assert {c.op_type for c in consumers[n.output[0]]} <= {"Conv", "MatMul"}, n.name
    quantised = {c.name for n in dq for c in consumers[n.output[0]]}
    kept = q.kept_float(graph)
    assert kept and not quantised & set(kept)
    assert any("/conv_in/" in k for k in kept) and any("/conv_out/" in k for k in kept)
    assert any("/pixel_head/" in k for k in kept)
    # The output and the conversion to v are float: no Q/DQ node lies downstream of the last float conv.
    out = graph.graph.output[0].name
    producer = {o: n for n in graph.graph.node for o in n.output}
    seen, stack = set(), [out]
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or node.name in seen or "/conv_out/" in node.name:
            continue
        seen.add(node.name)
        assert node.op_type not in ("QuantizeLinear", "DequantizeLinear"), node.name
        stack.extend(node.input)
    weights = [n for n in dq if n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert weights and all(inits[n.input[1]].size > 1 for n in weights)  # conv weights per output channel


def test_int8_unet_matches_fp32_on_fresh_inputs(int8, rng):
    bundle = Bundle.open(int8["out"])
    feeds = [random_unet_feeds(bundle, rows, rng) for rows in (1, 3)]
    want = run_ort((int8["src"] / spec.UNET_ONNX).read_bytes(), feeds)
    got = run_ort((int8["out"] / spec.UNET_ONNX).read_bytes(), feeds)
    for g, w in zip(got, want):
        ref, out = w["v"], g["v"]
        rel = np.abs(out - ref).max() / np.abs(ref).max()
        assert 0 < rel < q.INT8_TOLERANCE, rel  # quantised (not equal), and close


def test_manifest_records_the_precision_quantization_and_parity(int8):
    m = int8["manifest"]
    on_disk = json.loads((int8["out"] / spec.MANIFEST).read_text())
    assert on_disk == m and m["precision"] == "int8"
    quant = m["quantization"]
    assert quant["ops"] == ["Conv", "MatMul"] and quant["quantized_nodes"] > 0 and quant["float_nodes"]
    assert quant["calibration_data"]["graphs"] == 4 and quant["calibration_data"]["unet_calls"] > 0
    par = m["parity"]["unet"]
    assert par["ok"] and 0 < par["max_rel_err"] <= q.INT8_TOLERANCE
    frames = par["frames"]
    assert frames["graphs"] == 2 and 0 <= frames["mean_abs_levels"] < 64
    assert set(frames["oracle_fp32"]) == set(frames["oracle_int8"]) and "presence" in frames["oracle_int8"]
    src = json.loads((int8["src"] / spec.MANIFEST).read_text())
    for stage in ("encoder", "layout"):  # untouched stages keep their files and parity
        assert m["files"][f"{stage}.onnx"] == src["files"][f"{stage}.onnx"]
        assert m["parity"][stage] == src["parity"][stage]
    assert m["files"][spec.UNET_ONNX] != src["files"][spec.UNET_ONNX]


def test_tensorrt_operator_check_accepts_the_qdq_graph(int8):
    report = check_model(int8["out"] / spec.UNET_ONNX, target="10.3")
    assert report["ok"], report["unsupported"][:3]
    assert report["op_counts"]["QuantizeLinear"] > 0 and report["op_counts"]["DequantizeLinear"] > 0
    assert int8["manifest"]["trt_op_check"]["stages"]["unet"]["ok"]


def test_operator_check_refuses_a_nonzero_zero_point(int8, tmp_path):
    graph = onnx.load(str(int8["out"] / spec.UNET_ONNX))
    dq = next(n for n in graph.graph.node if n.op_type == "DequantizeLinear")
    zp = next(i for i in graph.graph.initializer if i.name == dq.input[2])
    arr = numpy_helper.to_array(zp).copy()
    arr.flat[0] = 3
    zp.CopyFrom(numpy_helper.from_array(arr, zp.name))
    report = check_model(graph, target="10.3")
    assert not report["ok"] and any("zero_point" in u["reason"] for u in report["unsupported"])


def test_runtime_generates_from_the_int8_bundle_near_fp32(int8):
    rng = np.random.default_rng(11)
    from helpers import random_graph

    graph = random_graph(rng)
    a = Pipeline.from_bundle(int8["src"], backend="ort", threads=1)(graph, seed=2)
    b = Pipeline.from_bundle(int8["out"], backend="ort", threads=1)(graph, seed=2)
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() < 32


def test_readers_without_int8_refuse_the_bundle(int8, monkeypatch):
    monkeypatch.setattr(spec, "PRECISIONS", ("fp32", "fp16"))
    with pytest.raises(BundleError, match="precision 'int8'"):
        Bundle.open(int8["out"])


def test_only_an_fp32_bundle_is_quantised(int8, tmp_path):
    with pytest.raises(ExportError, match="quantize an fp32 bundle"):
        q.quantize_bundle(int8["out"], tmp_path / "again", graphs=1, parity_graphs=1)
    assert not (tmp_path / "again").exists()


def test_float16_stored_weights_are_unfolded_exactly(student_bundle):
    fp32 = onnx.load(str(student_bundle / spec.UNET_ONNX))
    stored = onnx.load(str(student_bundle / spec.UNET_ONNX))
    for init in stored.graph.initializer:  # make the weights float16-representable, as --weights fp16 does
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16)
                                                  .astype(np.float32), init.name))
    rounded = onnx.ModelProto()
    rounded.CopyFrom(stored)
    n = store_weights_fp16(stored)
    assert n > 0 and q.float32_weights(stored) == n
    assert not any(n.op_type == "Cast" and n.input[0].endswith("__fp16") for n in stored.graph.node)
    assert all(i.data_type != onnx.TensorProto.FLOAT16 for i in stored.graph.initializer)
    feeds = [random_unet_feeds(Bundle.open(student_bundle), 2, np.random.default_rng(3))]
    got = run_ort(stored.SerializeToString(), feeds)[0]["v"]
    want = run_ort(rounded.SerializeToString(), feeds)[0]["v"]
    np.testing.assert_array_equal(got, want)
    assert len(stored.graph.node) < len(onnx.load(str(student_bundle / spec.UNET_ONNX)).graph.node) + n
    del fp32


def test_export_cli_writes_an_int8_bundle(student_checkpoint, tmp_path, capsys):
    from sg2v.export.cli import main

    rc = main(["--ckpt", str(student_checkpoint), "--out", str(tmp_path / "b8"), "--precision", "int8"])
    assert rc == 0
    m = Bundle.open(tmp_path / "b8").manifest
    assert m["precision"] == "int8" and m["quantization"]["quantized_nodes"] > 0
    assert "int8" in capsys.readouterr().out


def test_bench_rows_int8_beside_fp32_and_openvino_beside_onnx_runtime(int8, tmp_path):
    """sg2v-bench --compare INT8_BUNDLE: the int8 bundle's row beside the fp32 one's on each backend, named
    with its precision; the openvino-cpu row beside ort-cpu where OpenVINO is installed."""
    import importlib.util

    from sg2v.export import bench

    backends = ["ort-cpu"] + (["openvino-cpu"] if importlib.util.find_spec("openvino") else [])
    argv = ["--bundle", str(int8["src"]), "--steps", "2", "--compare", str(int8["out"]), "--repeats", "1",
            "--warmup", "0", "--threads", "1", "--peak-size", "64", "--write", "none", "--backends",
            *backends, "--json", str(tmp_path / "b.json")]
    assert bench.main(argv) == 0
    rep = json.loads((tmp_path / "b.json").read_text())
    fp32, q8 = rep["compare"]["bundles"]
    assert (fp32["precision"], q8["precision"]) == ("fp32", "int8")
    assert sorted(q8["backends"]) == sorted(backends) == sorted(fp32["backends"])
    for name in backends:
        assert rep["backends"][name]["results"]["denoiser_step_s"] > 0
        x = fp32["backends"][name]["total_s"] / q8["backends"][name]["total_s"]
        assert q8["vs_first"]["total_speedup"][name] == pytest.approx(x)
    assert f"| {q8['name']} (int8) |" in rep["table"]
