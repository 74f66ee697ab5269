"""TensorRT ONNX operator check: tiny hand-built graphs, one per rule of the 10.3 table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sg2v.export.opcheck import check_model, format_report, load_table, table_for  # noqa: E402

F, F16, I64, U8 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.UINT8
SPEC = Path(__file__).resolve().parents[2] / "shared" / "specs" / "tensorrt-onnx-operators.md"


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _reasons(report):
    return [(u["op"], u["reason"]) for u in report["unsupported"]]


def test_supported_attention_block_passes():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Softmax", ["h"], ["p"], axis=-1),
        helper.make_node("LayerNormalization", ["p", "g", "b"], ["y"], axis=-1),
    ]
    inits = [_init("w", rng.standard_normal((8, 8)).astype(np.float32)),
             _init("g", np.ones(8, np.float32)), _init("b", np.zeros(8, np.float32))]
    report = check_model(_model(nodes, [_vi("x", F, [2, 4, 8])], [_vi("y", F, [2, 4, 8])], inits))
    assert report["ok"], report
    assert report["op_counts"] == {"LayerNormalization": 1, "MatMul": 1, "Softmax": 1}
    assert report["nodes"] == 3 and report["opset"] == 17


def test_row_marked_n_and_unlisted_op_are_unsupported():
    m = _model([helper.make_node("Unique", ["x"], ["y"])], [_vi("x", F, [4])], [_vi("y", F, None)])
    r = check_model(m)
    assert not r["ok"] and r["unsupported"][0]["op"] == "Unique"
    assert "listed as not supported" in r["unsupported"][0]["reason"]


def test_op_added_later_names_the_version_and_passes_there():
    node = helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=-1)
    m = _model([node], [_vi("x", F, [2, 8])], [_vi("y", F, [2, 8])], [_init("s", np.ones(8, np.float32))],
               opset=23)
    r = check_model(m, target="10.3")
    ops = {u["op"]: u for u in r["unsupported"]}
    assert ops["RMSNormalization"]["fixed_in"] == "10.15"
    assert "opset" in ops  # opset 23 is beyond 10.3's range 9..20
    assert check_model(m, target="10.15")["ok"]


def test_integer_matmul_and_fp16_range_are_type_errors():
    mm = _model([helper.make_node("MatMul", ["a", "b"], ["c"])],
                [_vi("a", I64, [2, 2]), _vi("b", I64, [2, 2])], [_vi("c", I64, [2, 2])])
    r = check_model(mm)
    assert not r["ok"] and all(op == "MatMul" and "INT64" in why for op, why in _reasons(r))
    inits = [_init("s", np.array(0, np.float16)), _init("l", np.array(4, np.float16)),
             _init("d", np.array(1, np.float16))]
    rg = _model([helper.make_node("Range", ["s", "l", "d"], ["y"])], [], [_vi("y", F16, [4])], inits)
    r = check_model(rg)
    assert not r["ok"] and "FP16" in r["unsupported"][0]["reason"]  # the 10.3 importer code is FP32/INT only


def test_double_is_a_warning_and_uint8_only_at_the_boundary():
    nodes = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["d"], ["y"], to=F)]
    r = check_model(_model(nodes, [_vi("x", F, [3])], [_vi("y", F, [3])]))
    assert r["ok"] and any("narrowed" in w for w in r["warnings"])
    nodes = [helper.make_node("Cast", ["x"], ["u"], to=U8), helper.make_node("Cast", ["u"], ["y"], to=F)]
    r = check_model(_model(nodes, [_vi("x", F, [3])], [_vi("y", F, [3])]))
    assert not r["ok"] and "network inputs and outputs" in r["unsupported"][0]["reason"]
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=U8)]
    assert check_model(_model(nodes, [_vi("x", F, [3])], [_vi("y", U8, [3])]))["ok"]


@pytest.mark.parametrize("axes_source", ["initializer", "constant", "computed"])
def test_reducesum_axes_must_be_constant(axes_source):
    inputs, inits, nodes = [_vi("x", F, [2, 3])], [], []
    if axes_source == "initializer":
        inits.append(_init("axes", np.array([1], np.int64)))
    elif axes_source == "constant":
        nodes.append(helper.make_node("Constant", [], ["axes"], value=_init("c", np.array([1], np.int64))))
    else:
        inputs.append(_vi("axes", I64, [1]))
    nodes.append(helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0))
    r = check_model(_model(nodes, inputs, [_vi("y", F, [2])], inits, opset=18))
    assert r["ok"] is (axes_source != "computed")
    if axes_source == "computed":
        assert "initializer or Constant" in r["unsupported"][0]["reason"]


def test_groupnorm_scale_must_be_per_group_until_10_9():
    def gn(n_scale):
        inits = [_init("s", np.ones(n_scale, np.float32)), _init("b", np.zeros(n_scale, np.float32))]
        node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)
        return _model([node], [_vi("x", F, [1, 8, 4, 4])], [_vi("y", F, [1, 8, 4, 4])], inits, opset=18)

    assert check_model(gn(2))["ok"]
    r = check_model(gn(8))
    assert not r["ok"] and "num_groups = 2" in r["unsupported"][0]["reason"]
    assert r["unsupported"][0]["fixed_in"] == "10.9"
    assert check_model(gn(8), target="10.9")["ok"]


def test_layernorm_single_output_and_strongly_typed_warning():
    inits = [_init("g", np.ones(4, np.float32)), _init("b", np.zeros(4, np.float32))]
    one = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"])
    r = check_model(_model([one], [_vi("x", F, [2, 4])], [_vi("y", F, [2, 4])], inits))
    assert r["ok"] and any("strongly typed" in w for w in r["warnings"])
    assert not check_model(_model([one], [_vi("x", F, [2, 4])], [_vi("y", F, [2, 4])], inits),
                           target="10.7")["warnings"]
    three = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y", "mean", "inv"])
    r = check_model(_model([three], [_vi("x", F, [2, 4])], [_vi("y", F, [2, 4])], inits))
    assert not r["ok"] and "only 1 output" in r["unsupported"][0]["reason"]


def test_slice_with_runtime_axes_is_accepted_at_10_3():
    node = helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"])
    inputs = [_vi("x", F, [4, 6]), _vi("ax", I64, [1])]
    inits = [_init("st", np.array([1], np.int64)), _init("en", np.array([3], np.int64))]
    assert check_model(_model([node], inputs, [_vi("y", F, None)], inits))["ok"]


def test_squeeze_runtime_axes_rejected_until_10_7():
    node = helper.make_node("Squeeze", ["x", "ax"], ["y"])
    m = _model([node], [_vi("x", F, [1, 4]), _vi("ax", I64, [1])], [_vi("y", F, None)])
    r = check_model(m)
    assert not r["ok"] and r["unsupported"][0]["fixed_in"] == "10.7"
    assert check_model(m, target="10.7")["ok"]


def test_scatternd_reduction_attribute():
    def snd(**attrs):
        node = helper.make_node("ScatterND", ["x", "i", "u"], ["y"], **attrs)
        inputs = [_vi("x", F, [4]), _vi("i", I64, [1, 1]), _vi("u", F, [1])]
        return _model([node], inputs, [_vi("y", F, [4])], opset=18)

    assert check_model(snd())["ok"]
    assert not check_model(snd(reduction="none"))["ok"]  # 10.3 rejects the attribute even as "none"
    assert check_model(snd(reduction="none"), target="10.9")["ok"]
    assert not check_model(snd(reduction="add"), target="10.16")["ok"]


def test_topk_sorted_and_k_limits():
    def topk(k, sorted_):
        node = helper.make_node("TopK", ["x", "k"], ["v", "i"], sorted=sorted_)
        return _model([node], [_vi("x", F, [1, 5000])], [_vi("v", F, None), _vi("i", I64, None)],
                      [_init("k", np.array([k], np.int64))])

    assert check_model(topk(8, 1))["ok"]
    assert "sorted" in check_model(topk(8, 0))["unsupported"][0]["reason"]
    assert "< 3840" in check_model(topk(4000, 1))["unsupported"][0]["reason"]


def _pool_model(dtype=F, **attrs):
    attrs = {"num_segments": 3, "plugin_namespace": "sg2v", "plugin_version": "1", "aot": 1, **attrs}
    pool = helper.make_node("ScatterMeanPool", ["v", "i", "m"], ["y"], domain="sg2v",
                            **{k: v for k, v in attrs.items() if v is not None})
    inputs = [_vi("v", dtype, [1, 6, 4]), _vi("i", I64, [1, 6]), _vi("m", F, [1, 6])]
    return _model([pool], inputs, [_vi("y", dtype, [1, 3, 4])], extra_opsets=[("sg2v", 1)])


def test_plugin_counted_and_unknown_custom_op_rejected():
    r = check_model(_pool_model(), target="10.9")
    assert r["ok"] and r["plugins"][0]["op"] == "sg2v::ScatterMeanPool" and r["plugins"][0]["count"] == 1
    assert not check_model(_pool_model(I64), target="10.9")["ok"]
    inputs = [_vi("v", F, [1, 6, 4])]
    other = helper.make_node("Bar", ["v"], ["y"], domain="com.foo")
    r = check_model(_model([other], inputs, [_vi("y", F, None)], extra_opsets=[("com.foo", 1)]))
    assert not r["ok"] and "no registered plugin" in r["unsupported"][0]["reason"]
    r = check_model(_model([other], inputs, [_vi("y", F, None)], extra_opsets=[("com.foo", 1)]),
                    plugins={"com.foo::Bar": {"types": ["FP32"]}})
    assert r["ok"]


def test_plugin_needs_tensorrt_10_6_and_aot_10_9():
    r = check_model(_pool_model(), target="10.3")  # JetPack 6: no tensorrt.plugin at all
    assert not r["ok"] and r["unsupported"][0]["fixed_in"] == "10.6"
    assert "no Python plugin API" in r["unsupported"][0]["reason"]
    r = check_model(_pool_model(aot=1), target="10.6")  # the parser ignores aot and runs the JIT form
    assert r["ok"] and any("aot=1 is ignored before TensorRT 10.9" in w for w in r["warnings"])
    assert check_model(_pool_model(aot=0), target="10.6")["warnings"] == []
    assert check_model(_pool_model(aot=None), target="10.6")["ok"]  # one implementation: nothing to choose
    for target in ("10.9", "11.1"):
        r = check_model(_pool_model(aot=None), target=target)
        assert not r["ok"] and "no attribute `aot`" in r["unsupported"][0]["reason"]
        assert check_model(_pool_model(aot=0), target=target)["ok"]


@pytest.mark.parametrize("attrs, why", [
    ({"plugin_namespace": None}, "`plugin_namespace` = None, needs 'sg2v'"),
    ({"plugin_namespace": "other"}, "`plugin_namespace` = 'other'"),
    ({"plugin_version": "2"}, "`plugin_version` = '2'"),
    ({"aot": 2}, "`aot` = 2, needs 0 (JIT) or 1 (AOT)"),
    ({"num_segments": None}, "`num_segments` is missing"),
])
def test_plugin_node_attributes_are_checked(attrs, why):
    r = check_model(_pool_model(**attrs), target="10.9")
    assert not r["ok"] and any(why in u["reason"] for u in r["unsupported"]), r["unsupported"]


def test_nodes_inside_if_branches_are_checked():
    then_g = helper.make_graph([helper.make_node("Unique", ["x"], ["a"])], "then", [], [_vi("a", F, None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["b"])], "else", [], [_vi("b", F, None)])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    r = check_model(_model([node], [_vi("c", TensorProto.BOOL, []), _vi("x", F, [4])], [_vi("y", F, None)]))
    assert [u["op"] for u in r["unsupported"]] == ["Unique"]


def test_einsum_and_pool_restrictions():
    e = helper.make_node("Einsum", ["a", "b"], ["c"], equation="IJ,JK->IK")
    r = check_model(_model([e], [_vi("a", F, [2, 2]), _vi("b", F, [2, 2])], [_vi("c", F, [2, 2])]))
    assert not r["ok"] and "lower-case" in r["unsupported"][0]["reason"]
    p = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2], dilations=[2])
    r = check_model(_model([p], [_vi("x", F, [1, 2, 8])], [_vi("y", F, None)]))
    reasons = " ".join(why for _, why in _reasons(r))
    assert "2-D or 3-D" in reasons and "dilations" in reasons


def test_report_formats_every_problem():
    m = _model([helper.make_node("Unique", ["x"], ["y"])], [_vi("x", F, [4])], [_vi("y", F, None)])
    text = format_report(check_model(m))
    assert text.splitlines()[0].startswith("TensorRT 10.3 op check: 1 problem")
    assert "UNSUPPORTED Unique" in text


def test_target_before_the_table_is_refused():
    with pytest.raises(ValueError, match="starts at TensorRT 10.3"):
        table_for("10.1")


def test_table_matches_the_spec_rows():
    table = load_table()["ops"]
    assert len(table) == 196 and sum(r["supported"] for r in table.values()) == 150
    if not SPEC.is_file():
        pytest.skip(f"spec {SPEC} not present outside the development tree")
    for line in SPEC.read_text().splitlines():
        m = re.match(r"^\| (\w+) \| ([YN]) \| ([^|]*) \|", line)
        if m and m.group(1) != "Operator":
            row = table[m.group(1)]
            assert row["supported"] is (m.group(2) == "Y"), m.group(1)
            assert row["types"] == [t.strip() for t in m.group(3).split(",") if t.strip()], m.group(1)
