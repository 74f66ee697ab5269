"""Crafted bundles and checkpoints end in one sg2v error line, before anything of a declared size is
allocated: symlink loops, wrong-typed manifest entries, huge declared sizes (.npy headers, .npz members, ONNX
ConstantOfShape / Range / initializers, num_train_timesteps), wrong-typed or negative checkpoint steps, bad
optimizer or RNG state, and JSON nested 100k deep. Each crafted file is built by a fixture below; a manifest
fuzz test mutates a real manifest at random."""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import json_paths, make_fake_bundle, write_manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, CheckpointError, Sg2vError
from sg2v.io import load_npy_checked, load_npz_checked
from sg2v.runtime.bundle import Bundle
from sg2v.runtime.onnx_guard import MAX_ELEMENTS, OnnxGuardError, check_onnx_file

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _manifest(root: Path) -> dict:
    return json.loads((root / spec.MANIFEST).read_text())


def _rewrite(root: Path, change) -> None:
    m = _manifest(root)
    change(m)
    (root / spec.MANIFEST).write_text(json.dumps(m))


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and isinstance(e, Sg2vError), text
    return text


@pytest.fixture
def bundle(tmp_path) -> Path:
    return make_fake_bundle(tmp_path / "bundle", seed=11)[0]


# ------------------------------------------------------------------------------------------- symlink loops
def test_symlink_loop_inside_a_bundle(bundle):
    (bundle / "loop_a").symlink_to("loop_b")
    (bundle / "loop_b").symlink_to("loop_a")
    _rewrite(bundle, lambda m: m["files"].update({"loop_a": {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(BundleError, match=r"files\['loop_a'\].*cannot be resolved.*symlink loop") as e:
        Bundle.open(bundle)
    _one_line(e.value)


def test_symlink_loop_as_the_bundle_or_its_manifest(tmp_path, bundle):
    (tmp_path / "x").symlink_to("y")
    (tmp_path / "y").symlink_to("x")
    with pytest.raises(BundleError, match="does not exist"):
        Bundle.open(tmp_path / "x")
    (bundle / spec.MANIFEST).unlink()
    (bundle / spec.MANIFEST).symlink_to(spec.MANIFEST)
    with pytest.raises(BundleError, match="has no manifest.json"):
        Bundle.open(bundle)


# ------------------------------------------------------------------------------- manifest entries and types
@pytest.mark.parametrize("key, value, why", [
    ("sampler_defaults", [1, 2], "sampler_defaults .* is not an object"),
    ("sampler_defaults", {"sampler": "dpmpp2m", "steps": "8", "guidance": 3.0, "guidance_rescale": 0.7},
     "steps '8' is not an integer"),
    ("sampler_defaults", {"sampler": "euler", "steps": 8, "guidance": 3.0, "guidance_rescale": 0.7},
     "sampler 'euler' is not one of"),
    ("sampler_defaults", {"sampler": "ddim", "steps": 8, "guidance": float("nan"), "guidance_rescale": 0.7},
     "guidance nan is not a finite number"),
    ("sampler_defaults", {"sampler": "ddim", "steps": 10**9, "guidance": 3.0, "guidance_rescale": 0.7},
     "steps 1000000000 is not an integer in"),
    ("schedule", "cosine", "schedule 'cosine' is not the model config's"),
    ("schedule", {"kind": "cosine_zsnr", "num_train_timesteps": 10**12}, "schedule .* is not the model"),
])
def test_wrong_typed_sampler_defaults_and_schedule(bundle, key, value, why):
    _rewrite(bundle, lambda m: m.update({key: value}))
    with pytest.raises(BundleError, match=why) as e:
        Bundle.open(bundle)
    _one_line(e.value)


@pytest.mark.parametrize("path, value, why", [
    (("diffusion", "num_train_timesteps"), 10**12, r"num_train_timesteps = 1000000000000: outside"),
    (("data", "frames"), "16", r"data.frames|DataConfig.frames = '16': expected int"),
    (("data", "height"), 10**6, r"DataConfig.height = 1000000: outside"),
    (("encoder", "context_dim"), True, r"EncoderConfig.context_dim = True: expected int"),
    (("unet", "channel_mult"), [1] * 1000, r"channel_mult = .* at most 64 integers"),
    (("diffusion", "default_guidance"), float("inf"), "default_guidance = inf: expected float"),
    (("distill", "guidance_max"), "", "DistillConfig.guidance_max = '': expected float"),
    (("distill", "grid_steps"), None, "DistillConfig.grid_steps = None: expected int"),
    (("distill", "guidance_min"), 9.0, "guidance_min 9.0 is above guidance_max 8.0"),
])
def test_model_config_bounds_what_a_bundle_may_declare(bundle, path, value, why):
    def change(m):
        m["model_config"][path[0]][path[1]] = value

    _rewrite(bundle, change)
    with pytest.raises(BundleError, match=why) as e:
        Bundle.open(bundle)
    _one_line(e.value)


@pytest.fixture
def grounded(tmp_path, grounded_bundle) -> Path:
    """A copy of the session's layout-grounded bundle (format 3) to tamper with."""
    import shutil

    return Path(shutil.copytree(grounded_bundle, tmp_path / "grounded"))


def _layout(**changes):
    return lambda m: m["layout"].update(changes)


def _rule(pred, rule):
    return lambda m: m["layout"]["relation_rules"].update({pred: rule})


@pytest.mark.parametrize("change, why", [
    (lambda m: m.pop("layout"), "manifest 'layout' is missing"),
    (lambda m: m.update(layout=[8, 16]), "manifest 'layout' is not an object"),
    (lambda m: m["layout"].pop("sampler"), r"manifest 'layout' has keys .*, expected \['steps'"),
    (_layout(bomb=1), r"manifest 'layout' has keys \['bomb',"),
    (_layout(steps=0), r"steps 0 is not an integer in \[1, 1000\]"),
    (_layout(steps="8"), r"steps '8' is not an integer"),
    (_layout(steps=10**12), r"steps 1000000000000 is not an integer"),
    (_layout(tries=10**9), r"tries 1000000000 is not an integer in \[1, 4096\]"),
    (_layout(tries=True), r"tries True is not an integer"),
    (_layout(tries=12.0), r"tries 12.0 is not an integer"),
    (_layout(per_round=13), r"per_round 13 is not an integer in \[1, 12\]"),  # more than its tries
    (_layout(per_round=-1), r"per_round -1 is not an integer"),
    (_layout(sampler="euler"), r"sampler 'euler' is not one of \['ddim', 'ddpm', 'dpmpp2m'\]"),
    (_layout(sampler=None), r"sampler None is not one of"),
    (_layout(relation_rules=["left of"]), r"relation_rules \['left of'\] is not an object"),
    (_rule("left of", "shapes/inside"), r"relation_rules\['left of'\] = 'shapes/inside' is not a known rule"),
    (_rule("left of", 3), r"relation_rules\['left of'\] = 3 is not a known rule"),
    (_rule("near", "shapes/left of"), r"relation_rules names 'near', not a predicate of the vocabulary"),
    (lambda m: m.update(format_version=2), "a layout-grounded model in a format-2 bundle"),
    (lambda m: m["shapes"].update(max_layout_batch=10**9), r"max_layout_batch=1000000000 \(config says"),
    (lambda m: m["shapes"].pop("object_dim"), r"object_dim=None \(config says 16\)"),
    (lambda m: m["stages"].pop("layout"), "stage 'layout' is missing from the manifest"),
    (lambda m: m["stages"]["layout"].update(file="x.onnx"), r"stage 'layout' file 'x.onnx' is not listed"),
    (lambda m: m["stages"]["encoder"]["outputs"].pop(), r"stage 'encoder' outputs .* differ from"),
    (lambda m: m["model_config"]["layout"].update(dim=0), "layout.dim 0 and unet.layout_dim 4"),
    (lambda m: m["model_config"]["layout"].update(dim=10**9), r"LayoutConfig.dim = 1000000000: outside"),
    (lambda m: m["model_config"]["layout"].update(layers="2"), r"LayoutConfig.layers = '2': expected int"),
    (lambda m: m["model_config"]["layout"].update(rules="magic"), r"LayoutConfig.rules = 'magic': choose"),
    (lambda m: m["model_config"]["unet"].update(layout_dim=-4), r"UNetConfig.layout_dim = -4: outside"),
])
def test_a_bad_layout_entry_or_grounded_shape_is_one_line(grounded, change, why):
    Bundle.open(grounded)  # untouched, it opens
    _rewrite(grounded, change)
    with pytest.raises(BundleError, match=why) as e:
        Bundle.open(grounded)
    _one_line(e.value)


def test_a_layout_stage_pointing_at_another_graph_stops_at_load(grounded):
    pytest.importorskip("onnxruntime")
    from sg2v.runtime import Pipeline

    _rewrite(grounded, lambda m: m["stages"]["layout"].update(file="unet.onnx"))
    why = r"unet.onnx: graph inputs? .*(differ from the manifest's|is not one of the stage's inputs)"
    with pytest.raises(BundleError, match=why) as e:
        Pipeline.from_bundle(grounded, backend="ort")
    _one_line(e.value)


def test_a_format_3_manifest_without_a_grounded_model_is_refused(bundle):
    _rewrite(bundle, lambda m: m.update(format_version=3))
    with pytest.raises(BundleError, match="format 3 without a layout-grounded model") as e:
        Bundle.open(bundle)
    _one_line(e.value)


def test_oversized_manifest_and_file_table(bundle):
    original = (bundle / spec.MANIFEST).read_text()
    _rewrite(bundle, lambda m: m["files"].update({f"f{i}": {"sha256": "0", "bytes": 1} for i in range(1001)}))
    with pytest.raises(BundleError, match="not an object of 1 to 1000 entries"):
        Bundle.open(bundle)
    (bundle / spec.MANIFEST).write_text(original)
    _rewrite(bundle, lambda m: m["files"].update({"null_context.npy": {"sha256": "0", "bytes": -1}}))
    with pytest.raises(BundleError, match=r"'bytes' \(int >= 0\)"):
        Bundle.open(bundle)
    with open(bundle / spec.MANIFEST, "r+b") as f:
        f.truncate(65 << 20)  # sparse: 65 MiB that the reader must not load
    with pytest.raises(BundleError, match="more than the 67108864 a manifest may have"):
        Bundle.open(bundle)


def test_manifest_numbers_python_will_not_read(bundle):
    """An integer of 5000 digits: json.loads raises a plain ValueError (not a JSONDecodeError)."""
    text = (bundle / spec.MANIFEST).read_text()
    huge = re.sub(r'"format_version": \d+', '"format_version": ' + "9" * 5000, text)
    assert huge != text
    (bundle / spec.MANIFEST).write_text(huge)
    with pytest.raises(BundleError, match="manifest.json is corrupt .*4300 digits") as e:
        Bundle.open(bundle)
    _one_line(e.value)


def test_manifest_nested_100k_deep(bundle):
    (bundle / spec.MANIFEST).write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(BundleError, match="manifest.json is corrupt"):
        Bundle.open(bundle)


# --------------------------------------------------------------------------------- arrays declaring too much
def _npy_with_header(path: Path, shape: tuple[int, ...], dtype: str = "<f4", payload: bytes = b"\0" * 64):
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload)


def test_npy_header_declaring_a_huge_shape(bundle, tmp_path):
    _npy_with_header(bundle / spec.NULL_CONTEXT, (10**6, 10**6, 8))
    write_manifest(bundle, _manifest(bundle))
    with pytest.raises(BundleError, match=r"null_context.npy is float32 \(1000000, 1000000, 8\), expected"):
        Bundle.open(bundle)
    _npy_with_header(tmp_path / "big.npy", (1 << 40,))
    with pytest.raises(ValueError, match="declares .* more than the"):
        load_npy_checked(tmp_path / "big.npy")
    _npy_with_header(tmp_path / "short.npy", (5, 5))  # 100 bytes declared, 64 present
    with pytest.raises(ValueError, match="truncated"):
        load_npy_checked(tmp_path / "short.npy")


def test_npz_member_declaring_a_huge_shape(tmp_path):
    from sg2v.runtime.gpu_encoder import load_encoder_weights

    _npy_with_header(tmp_path / "m.npy", (1 << 20, 1 << 20))
    with zipfile.ZipFile(tmp_path / "w.npz", "w") as z:
        z.write(tmp_path / "m.npy", "obj_embed.weight.npy")
    with pytest.raises(BundleError, match="not a readable .npz.*declares .* more than") as e:
        load_encoder_weights(tmp_path / "w.npz")
    _one_line(e.value)
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal(8).astype(np.float32))
    with zipfile.ZipFile(tmp_path / "many.npz", "w") as z:
        for i in range(20):
            z.writestr(f"a{i}.npy", buf.getvalue())
    with pytest.raises(ValueError, match="20 members, more than 10"):
        load_npz_checked(tmp_path / "many.npz", max_members=10)


# ---------------------------------------------------------------------------- plugin encoder weights, names
@pytest.fixture
def plugin_bundle(tmp_path) -> Path:
    """A copy of the shipped ungrounded demo marked plugin pooling (its encoder runs on the .npz weights)."""
    import shutil

    root = tmp_path / "plugin"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "demo-ungrounded", root)
    _rewrite(root, lambda m: m.update(pooling="plugin"))
    write_manifest(root, _manifest(root))
    return root


def _weights(root: Path) -> dict[str, np.ndarray]:
    with np.load(root / spec.ENCODER_WEIGHTS) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("change, why", [
    (lambda w: w.update({"obj_embed.weight": w["obj_embed.weight"].ravel()}),
     r"obj_embed.weight has shape \(\d+,\), expected a non-empty matrix"),
    (lambda w: w.update({"layers.0.net1.0.bias": np.ones(w["layers.0.net1.0.bias"].size + 1, np.float32)}),
     r"layers.0.net1.0.bias has shape \(\d+,\), expected"),
    (lambda w: w.update({"global_head.2.bias": np.ones((2, 3), np.float32)}),
     r"global_head.2.bias has shape"),
    (lambda w: w.update({"obj_embed.weight": w["obj_embed.weight"][:-3]}), r"obj_embed.weight has \d+ rows"),
    (lambda w: w.update({"pred_embed.weight": w["pred_embed.weight"][:1]}), r"pred_embed.weight has 1 rows"),
    (lambda w: w.update({"layers.99999999.x": np.ones(1, np.float32)}), r"more than 256 layers"),
    (lambda w: w.pop("local_norm.bias"), r"missing \['local_norm.bias'\]"),
])
def test_crafted_plugin_encoder_weights_are_refused_when_the_bundle_opens(plugin_bundle, change, why):
    weights = _weights(plugin_bundle)
    Bundle.open(plugin_bundle)  # the unmodified weights open
    change(weights)
    np.savez(plugin_bundle / spec.ENCODER_WEIGHTS, **weights)
    write_manifest(plugin_bundle, _manifest(plugin_bundle))
    with pytest.raises(BundleError, match=why) as e:
        Bundle.open(plugin_bundle)
    _one_line(e.value)


@pytest.mark.parametrize("name", ["encoder.onnx\x00.txt", "unet\n.onnx", "a" * 300])
def test_a_manifest_file_name_with_a_nul_byte_or_control_character(bundle, name):
    _rewrite(bundle, lambda m: m["files"].update({name: {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(BundleError, match="control characters .* or is over 255 characters") as e:
        Bundle.open(bundle)
    _one_line(e.value)
    _rewrite(bundle, lambda m: (m["files"].pop(name), m["stages"]["unet"].update(file=name)))
    with pytest.raises(BundleError, match="stages\\['unet'\\].file path .*control characters") as e:
        Bundle.open(bundle)
    _one_line(e.value)


# ----------------------------------------------------------------------------------------- ONNX allocations
def _onnx(tmp_path: Path, nodes, inits=(), inputs=(), name="m.onnx") -> Path:
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", list(inputs), out, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _const(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def _external_sparse(tmp_path: Path, dense_dims=(4, 4)):
    """A sparse tensor whose values live in `weights.bin` beside the model (ONNX external data)."""
    values = numpy_helper.from_array(np.array([5.0, 7.0], np.float32), "w_values")
    (tmp_path / "weights.bin").write_bytes(values.raw_data)
    onnx.external_data_helper.set_external_data(values, location="weights.bin", offset=0, length=8)
    values.ClearField("raw_data")
    values.data_location = TensorProto.EXTERNAL
    indices = numpy_helper.from_array(np.array([1, 6], np.int64), "w_indices")
    return helper.make_sparse_tensor(values, indices, list(dense_dims))


@pytest.mark.parametrize("where", ["sparse_initializer", "sparse_attribute"])
def test_external_data_in_sparse_tensors_is_refused(tmp_path, where):
    """External data is never read: the bundle's hashes cover the .onnx files only, and a sparse tensor's
    values can name a file as well as a dense initializer can (ONNX Runtime 1.2x reads weights.bin into a
    sparse initializer: checked by hand)."""
    sparse = _external_sparse(tmp_path)
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if where == "sparse_initializer":
        graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [], out)
        sparse.values.name = "w"
        graph.sparse_initializer.append(sparse)
    else:
        graph = helper.make_graph([helper.make_node("Constant", [], ["y"], sparse_value=sparse)], "g", [],
                                  out)
    path = _save(graph, tmp_path / "sparse.onnx")
    with pytest.raises(OnnxGuardError, match="values 'w(_values)?' keeps its data in an external file") as e:
        check_onnx_file(path)
    _one_line(e.value)


def test_a_bundle_whose_graph_reads_external_data_does_not_load(bundle):
    """Even with weights.bin listed (and hashed) in the manifest, a graph that would read bytes from another
    file is not an sg2v export: the ONNX Runtime backend refuses it before creating a session."""
    from sg2v.runtime import Pipeline

    model = onnx.load(str(bundle / spec.UNET_ONNX))
    model.graph.sparse_initializer.append(_external_sparse(bundle))
    (bundle / spec.UNET_ONNX).write_bytes(model.SerializeToString())
    write_manifest(bundle, _manifest(bundle))
    assert "weights.bin" in _manifest(bundle)["files"]
    with pytest.raises(OnnxGuardError, match="unet.onnx: sparse initializer values .* external file") as e:
        Pipeline.from_bundle(bundle, backend="ort")
    _one_line(e.value)


def test_sparse_tensors_declaring_a_huge_dense_shape_are_refused(tmp_path):
    values = numpy_helper.from_array(np.array([1.0], np.float32), "v")
    indices = numpy_helper.from_array(np.array([0], np.int64), "i")
    sparse = helper.make_sparse_tensor(values, indices, [1 << 20, 1 << 20])
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph([helper.make_node("Constant", [], ["y"], sparse_value=sparse)], "g", [], out)
    path = _save(graph, tmp_path / "dense.onnx")
    with pytest.raises(OnnxGuardError, match=r"declares dense shape \[1048576, 1048576\]"):
        check_onnx_file(path)


@pytest.mark.parametrize("case", ["initializer", "constant_node", "constant_ints"])
def test_constant_of_shape_bomb(tmp_path, case):
    shape = [1 << 15, 1 << 15]  # 2^30 values: four times the bound
    node = helper.make_node("ConstantOfShape", ["s"], ["y"],
                            value=numpy_helper.from_array(np.array([1], np.uint8)))
    if case == "initializer":
        path = _onnx(tmp_path, [node], [_const("s", shape)])
    elif case == "constant_node":
        c = helper.make_node("Constant", [], ["s"], value=_const("v", shape))
        path = _onnx(tmp_path, [c, node])
    else:
        c = helper.make_node("Constant", [], ["s"], value_ints=shape)
        path = _onnx(tmp_path, [c, node])
    with pytest.raises(OnnxGuardError, match=r"ConstantOfShape node asks for shape \[32768, 32768\]") as e:
        check_onnx_file(path)
    _one_line(e.value)
    ok = _onnx(tmp_path, [node], [_const("s", [4, 8])], name="ok.onnx")
    check_onnx_file(ok)


def test_computed_constant_of_shape_and_range_and_external_data(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Mul", ["s", "k"], ["s2"]),
             helper.make_node("ConstantOfShape", ["s2"], ["y"])]
    with pytest.raises(OnnxGuardError, match="takes a computed shape"):
        check_onnx_file(_onnx(tmp_path, nodes, [_const("k", [1 << 20, 1 << 20])], inputs=[x],
                              name="computed.onnx"))
    # another tensor's own shape (what a batch axis makes the exporter write) is as large as that tensor
    same = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ConstantOfShape", ["s"], ["y"])]
    check_onnx_file(_onnx(tmp_path, same, inputs=[x], name="shape_of.onnx"))
    rng = helper.make_node("Range", ["a", "b", "c"], ["y"])
    with pytest.raises(OnnxGuardError, match="Range node spans 0..1099511627776 by 1"):
        check_onnx_file(_onnx(tmp_path, [rng], [_const("a", 0), _const("b", 1 << 40), _const("c", 1)],
                              name="range.onnx"))
    ext = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    onnx.external_data_helper.set_external_data(ext, location="weights.bin")
    ext.ClearField("raw_data")
    with pytest.raises(OnnxGuardError, match="keeps its data in an external file"):
        check_onnx_file(_onnx(tmp_path, [helper.make_node("Identity", ["w"], ["y"])], [ext], name="ext.onnx"))
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20], raw_data=b"\0" * 16)
    with pytest.raises(OnnxGuardError, match="declares .* more than"):
        check_onnx_file(_onnx(tmp_path, [helper.make_node("Identity", ["w"], ["y"])], [huge], name="h.onnx"))
    big_io = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1 << 20, 1 << 20])
    with pytest.raises(OnnxGuardError, match="declares shape"):
        check_onnx_file(_onnx(tmp_path, [helper.make_node("Identity", ["x"], ["y"])], inputs=[big_io],
                              name="io.onnx"))
    for seed in range(300):  # junk of every kind: one line each, whatever its bytes happen to declare
        junk = np.random.default_rng(seed).bytes(64)
        (tmp_path / "junk.onnx").write_bytes(junk + b"\xff" * 16 if seed % 2 else junk)
        with pytest.raises(OnnxGuardError, match="not a readable ONNX file|graphs, an ONNX model has one"):
            check_onnx_file(tmp_path / "junk.onnx")


def _key(field: int, wire: int) -> bytes:
    return _uvarint(field << 3 | wire)


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@pytest.mark.parametrize("field", [8, 9])  # an initializer's name, its raw data
def test_a_number_where_onnx_has_bytes_is_refused_without_allocating(tmp_path, field):
    """A varint of 2^40 in a bytes field: read as bytes(n), it would allocate a terabyte."""
    tensor = _key(field, 0) + _uvarint(1 << 40)
    graph = _key(5, 2) + _uvarint(len(tensor)) + tensor
    (tmp_path / "m.onnx").write_bytes(_key(7, 2) + _uvarint(len(graph)) + graph)
    with pytest.raises(OnnxGuardError, match="not a readable ONNX file .*bytes field holds a number") as e:
        check_onnx_file(tmp_path / "m.onnx")
    _one_line(e.value)
    (tmp_path / "g.onnx").write_bytes(_key(7, 0) + _uvarint(5))  # the graph itself a number
    with pytest.raises(OnnxGuardError, match="message field holds a number"):
        check_onnx_file(tmp_path / "g.onnx")


@pytest.mark.parametrize("wire, payload", [(5, b"\x01\x00\x00\x00"), (1, b"\x01" + b"\x00" * 7)])
def test_a_fixed_width_number_where_onnx_has_int64s_is_one_line(tmp_path, wire, payload):
    """An initializer's dims (repeated int64) sent as a fixed32 / fixed64 number: refused in one line (the
    fuzzer's find: before, a TypeError escaped)."""
    tensor = _key(1, wire) + payload
    graph = _key(5, 2) + _uvarint(len(tensor)) + tensor
    (tmp_path / "m.onnx").write_bytes(_key(7, 2) + _uvarint(len(graph)) + graph)
    why = f"not a readable ONNX file .*int64 field with wire type {wire}"
    with pytest.raises(OnnxGuardError, match=why) as e:
        check_onnx_file(tmp_path / "m.onnx")
    _one_line(e.value)


def test_bomb_inside_an_if_branch(tmp_path):
    bomb = helper.make_node("ConstantOfShape", ["s"], ["a"])
    out_a = helper.make_tensor_value_info("a", TensorProto.FLOAT, None)
    then_g = helper.make_graph([bomb], "then", [], [out_a], [_const("s", [MAX_ELEMENTS, 2])])
    else_g = helper.make_graph([helper.make_node("Identity", ["c"], ["b"])], "else", [],
                               [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    with pytest.raises(OnnxGuardError, match="ConstantOfShape"):
        check_onnx_file(_onnx(tmp_path, [node], inputs=[cond]))


def test_the_shipped_and_exported_graphs_pass(tmp_path, grounded_bundle):
    models = Path(__file__).resolve().parents[1] / "models"
    for root in (models / "demo", models / "demo-teacher", models / "demo-ungrounded"):
        for f in (spec.ENCODER_ONNX, spec.UNET_ONNX, spec.LAYOUT_ONNX):
            if f != spec.LAYOUT_ONNX or root.name != "demo-ungrounded":  # no layout stage there
                check_onnx_file(root / f)
    for f in spec.GROUNDED_STAGE_FILES.values():  # the layout network's graph among them
        check_onnx_file(grounded_bundle / f)


def test_a_bomb_in_a_bundle_stops_before_onnx_runtime(bundle):
    pytest.importorskip("onnxruntime")
    from sg2v.runtime import Pipeline

    shape = [1 << 15, 1 << 14]  # 2^29 uint8 values: refused; were it allocated, 512 MiB, not a crash
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["big"],
                              value=numpy_helper.from_array(np.array([0], np.uint8))),
             helper.make_node("Identity", ["x"], ["v"])]
    m = onnx.load(str(bundle / spec.UNET_ONNX))
    m.graph.initializer.append(_const("s", shape))
    m.graph.node.extend(nodes[:1])
    (bundle / spec.UNET_ONNX).write_bytes(m.SerializeToString())
    write_manifest(bundle, _manifest(bundle))
    with pytest.raises(BundleError, match=r"unet.onnx: a ConstantOfShape node asks for shape \[32768, 16384"):
        Pipeline.from_bundle(bundle, backend="ort")


# ---------------------------------------------------------------------------------------------- checkpoints
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    from sg2v.config import model_config
    from sg2v.models.sg2v import build_model
    from sg2v.training.checkpoint import save_checkpoint
    from sg2v.vocab import shapes_vocab

    torch.manual_seed(3)
    cfg = model_config("tiny")
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    d = cfg.data
    layout = (torch.zeros(1, d.padded_objects, cfg.encoder.embed_dim),
              torch.zeros(1, d.padded_objects, d.frames, 4))
    model(torch.zeros(1, d.frames, 3, d.height, d.width), torch.zeros(1), *model.null_context_batch(1),
          *layout).square().mean().backward()
    opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_checkpoint(path, model, cfg, shapes_vocab(), ema=model, step=5, optimizer=opt)
    return path


def _crafted(tmp_path: Path, good: Path, change) -> Path:
    ckpt = torch.load(good, weights_only=True)
    change(ckpt)
    path = tmp_path / "crafted.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("change, why", [
    (lambda c: c.update(step="7"), r"step '7' is not an integer"),
    (lambda c: c.update(step=-3), r"step -3 is not an integer in \[0,"),
    (lambda c: c.update(step=True), r"step True is not an integer"),
    (lambda c: c.update(optimizer=[1, 2]), "'optimizer' is not an optimizer state dict"),
    (lambda c: c["optimizer"]["param_groups"][0].update(params=["a"]), "'optimizer' is not an optimizer"),
    (lambda c: c.update(rng={"torch": torch.zeros(7, dtype=torch.uint8)}), "'rng' torch state is not a"),
    (lambda c: c.update(rng={"torch": torch.zeros(5056)}), "'rng' torch state"),
    (lambda c: c.update(rng={"cuda": [torch.zeros(16)]}), "'rng' cuda states are not uint8"),
    (lambda c: c.update(rng="seed"), "'rng' is not a dict"),
    (lambda c: c["model"].update({"x": 3}), "'model' is not a state dict"),
    (lambda c: c.update(ema=[1]), "'ema' is not a state dict"),
])
def test_crafted_training_state_is_one_line(tmp_path, good_ckpt, change, why):
    from sg2v.training.checkpoint import load_checkpoint

    path = _crafted(tmp_path, good_ckpt, change)
    with pytest.raises(CheckpointError, match=why) as e:
        load_checkpoint(path)
    _one_line(e.value)


def test_huge_num_train_timesteps_in_a_checkpoint(tmp_path, good_ckpt):
    from sg2v.training.checkpoint import load_model

    path = _crafted(tmp_path, good_ckpt,
                    lambda c: c["config"]["diffusion"].update(num_train_timesteps=10**11))
    with pytest.raises(CheckpointError, match="num_train_timesteps = 100000000000: outside") as e:
        load_model(path)
    _one_line(e.value)


def test_optimizer_state_of_another_model_on_resume(tmp_path, good_ckpt):
    from sg2v.training.checkpoint import load_optimizer_state

    def drop_group_params(c):
        c["optimizer"]["param_groups"][0]["params"] = c["optimizer"]["param_groups"][0]["params"][:3]

    state = torch.load(_crafted(tmp_path, good_ckpt, drop_group_params), weights_only=True)["optimizer"]
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2)) for _ in range(5)])
    with pytest.raises(CheckpointError, match="its optimizer state does not fit this model's optimizer") as e:
        load_optimizer_state(opt, state, "x.pt")
    _one_line(e.value)


def test_resume_from_a_crafted_optimizer_state_is_one_line(tmp_path, good_ckpt):
    from sg2v.training.train import TrainConfig, train

    out = tmp_path / "run"
    out.mkdir()

    def shrink(c):
        c["optimizer"]["param_groups"][0]["params"] = c["optimizer"]["param_groups"][0]["params"][:3]
        c["train_config"] = {}

    torch.save(torch.load(_crafted(tmp_path, good_ckpt, shrink), weights_only=True), out / "last.pt")
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        train(TrainConfig(steps=6, batch=2, workers=0, eval_every=0, out=str(out), threads=1), progress=False)


def test_safetensors_config_nested_100k_deep(tmp_path, good_ckpt):
    from safetensors.torch import save_file

    from sg2v.training.checkpoint import load_checkpoint

    path = tmp_path / "deep.safetensors"
    deep = "[" * 100_000 + "]" * 100_000
    save_file({"model.w": torch.zeros(2)}, str(path),
              metadata={"sg2v_format": "1", "config": deep, "vocab": "{}", "step": "0"})
    with pytest.raises(CheckpointError, match="broken sg2v metadata") as e:
        load_checkpoint(path)
    _one_line(e.value)
    save_file({"model.w": torch.zeros(2)}, str(path),
              metadata={"sg2v_format": "1", "config": "{}", "vocab": "{}", "step": "-4"})
    with pytest.raises(CheckpointError, match="step -4 is not an integer"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------- manifest fuzz
# Numbers the manifest's JSON text can hold but json.dumps cannot write: placeholders replaced in the text
# by an integer of 5000 digits (Python's reader refuses over 4300) and by 1e999 (read as inf).
RAW_NUMBERS = {"<huge int>": "9" * 5000, "<overflowing float>": "-1e999"}
LEAVES = (st.none() | st.booleans() | st.integers(-3, 10**13) | st.floats(allow_nan=True)
          | st.text(max_size=8) | st.sampled_from(sorted(RAW_NUMBERS))
          | st.sampled_from(["dpmpp2m", "cosine_zsnr", "../x", "/etc/passwd", "fp16", "plugin"]))
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                          inner, max_size=3),
                      max_leaves=8)


@pytest.fixture(scope="module")
def fuzz_bundle(tmp_path_factory):
    root, _ = make_fake_bundle(tmp_path_factory.mktemp("fuzz") / "bundle", seed=5)
    return root, (root / spec.MANIFEST).read_text()


@pytest.fixture(scope="module")
def grounded_fuzz_bundle(tmp_path_factory, grounded_bundle):
    import shutil

    root = Path(shutil.copytree(grounded_bundle, tmp_path_factory.mktemp("fuzz_grounded") / "bundle"))
    return root, (root / spec.MANIFEST).read_text()


@settings(derandomize=True, max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_manifests_give_bundle_errors_only(fuzz_bundle, data):
    _open_mutated(*fuzz_bundle, data)


@settings(derandomize=True, max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_grounded_manifests_give_bundle_errors_only(grounded_fuzz_bundle, data):
    """The same on a layout-grounded bundle (format 3), its layout entry and stage among the targets."""
    _open_mutated(*grounded_fuzz_bundle, data)


@pytest.fixture(scope="module")
def student_fuzz_bundle(tmp_path_factory, student_bundle):
    import shutil

    root = Path(shutil.copytree(student_bundle, tmp_path_factory.mktemp("fuzz_student") / "bundle"))
    return root, (root / spec.MANIFEST).read_text()


@settings(derandomize=True, max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_student_manifests_give_bundle_errors_only(student_fuzz_bundle, data):
    """The same on a guidance-distilled student (format 4), its student entry among the targets."""
    _open_mutated(*student_fuzz_bundle, data)


def _open_mutated(root: Path, text: str, data) -> None:
    manifest = json.loads(text)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in json_paths(manifest) if p]
        path = data.draw(st.sampled_from(paths))
        parent = manifest
        for step in path[:-1]:
            parent = parent[step]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(VALUES)
        elif isinstance(parent, dict):
            del parent[path[-1]]
    raw = json.dumps(manifest)
    for mark, number in RAW_NUMBERS.items():
        raw = raw.replace(json.dumps(mark), number)
    (root / spec.MANIFEST).write_text(raw)
    try:
        Bundle.open(root)
    except BundleError as e:
        _one_line(e)
    finally:
        (root / spec.MANIFEST).write_text(text)


@pytest.mark.parametrize("change, why", [
    (lambda c: c.update(step=-1), r"step -1 is not an integer"),
    (lambda c: c.update(optimizer={"state": {}, "param_groups": "x"}), "'optimizer' is not an optimizer"),
    (lambda c: c.update(rng={"torch": torch.zeros(3, dtype=torch.uint8)}), "'rng' torch state"),
])
def test_crafted_pretraining_checkpoint_is_one_line(tmp_path, change, why):
    from sg2v.config import model_config
    from sg2v.training.pretrain import (
        PretrainConfig,
        build_pretrain_models,
        load_pretrain_checkpoint,
        save_pretrain_checkpoint,
    )

    model, cfg = model_config("tiny"), PretrainConfig()
    encoder, video, heads = build_pretrain_models(model, cfg)
    path = save_pretrain_checkpoint(tmp_path / "pretrain.pt", model, cfg, encoder, video, heads, 2, None)
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=why) as e:
        load_pretrain_checkpoint(path)
    _one_line(e.value)
