"""Bundle reader: a valid bundle opens; missing, corrupt, tampered, escaping and newer bundles fail clearly.

The bundles here are small but real: ONNX graphs written with `onnx.helper` that run on ONNX Runtime (a toy
encoder and UNet with the contract's I/O), the manifest keys of docs/ARCHITECTURE.md, real sha256 hashes.
`make_fake_bundle` and the float64 references `ref_encoder` / `ref_unet` are shared with test_runtime.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from sg2v.runtime.bundle import Bundle

from sg2v import bundle_spec as spec
from sg2v.config import DataConfig, EncoderConfig, ModelConfig
from sg2v.errors import BundleError
from sg2v.vocab import shapes_vocab

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def fake_config() -> ModelConfig:
    vocab = shapes_vocab()
    return ModelConfig(
        name="fake",
        data=DataConfig(frames=2, height=8, width=8, max_objects=3, max_relationships=2),
        encoder=EncoderConfig(num_objs=vocab.num_objs, num_preds=vocab.num_preds, embed_dim=8, hidden_dim=8,
                              num_layers=1, context_dim=8),
    )


def fake_weights(cfg: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, c = cfg.encoder.context_dim, cfg.data.channels
    return {
        "E": rng.standard_normal((cfg.encoder.num_objs, d)).astype(np.float32),
        "P": rng.standard_normal((cfg.encoder.num_preds, d)).astype(np.float32),
        "Wg": (0.5 * rng.standard_normal((d, c))).astype(np.float32),
        "null": np.concatenate([rng.standard_normal((1, 1, d)),
                                np.zeros((1, cfg.data.context_tokens - 1, d))], axis=1).astype(np.float32),
    }


def ref_encoder(w: dict[str, np.ndarray], objs, obj_mask, triples, triple_mask):
    """float64 reference of the toy encoder graph: global = tanh(masked mean of object embeddings),
    local_i = tanh(P[pred_i] + E[objs[subj_i]]) * mask_i."""
    e, p = w["E"].astype(np.float64), w["P"].astype(np.float64)
    m = obj_mask[..., None].astype(np.float64)  # (B, O, 1)
    count = np.maximum(m.sum(1, keepdims=True), 1.0)  # (B, 1, 1)
    glob = np.tanh((e[objs] * m).sum(1, keepdims=True) / count)  # (B, 1, D)
    subj_cls = np.take_along_axis(objs, triples[..., 0], axis=1)  # (B, T)
    local = np.tanh(p[triples[..., 1]] + e[subj_cls]) * triple_mask[..., None]  # (B, T, D)
    ctx = np.concatenate([glob, local], axis=1)  # (B, L, D)
    mask = np.concatenate([np.ones_like(triple_mask[:, :1]), triple_mask], axis=1)  # (B, L)
    return ctx, mask


def ref_unet(w: dict[str, np.ndarray], x, t, context, context_mask):
    """float64 reference of the toy UNet: v = tanh(0.8 x + (masked mean context) Wg + 0.001 t)."""
    cm = context_mask[..., None].astype(np.float64)
    c = (context * cm).sum(1) / cm.sum(1)  # (B, D)
    g = (c @ w["Wg"].astype(np.float64))[:, None, :, None, None]  # (B, 1, C, 1, 1)
    return np.tanh(0.8 * x + g + 0.001 * np.asarray(t, np.float64)[:, None, None, None, None])


def _const(name: str, arr: np.ndarray):
    return numpy_helper.from_array(np.asarray(arr), name)


def _encoder_model(cfg: ModelConfig, w: dict[str, np.ndarray]):
    s = spec.shapes(cfg.data, cfg.encoder)
    o, t, d = s["padded_objects"], s["padded_triples"], s["context_dim"]
    nodes = [
        helper.make_node("Gather", ["E", "objs"], ["obj_emb"]),  # (1, O, D)
        helper.make_node("Unsqueeze", ["obj_mask", "ax2"], ["m"]),  # (1, O, 1)
        helper.make_node("Mul", ["obj_emb", "m"], ["obj_w"]),
        helper.make_node("ReduceSum", ["obj_w", "ax1"], ["pooled"], keepdims=1),  # (1, 1, D)
        helper.make_node("ReduceSum", ["m", "ax1"], ["cnt"], keepdims=1),  # (1, 1, 1)
        helper.make_node("Max", ["cnt", "one"], ["cnt1"]),
        helper.make_node("Div", ["pooled", "cnt1"], ["mean"]),
        helper.make_node("Tanh", ["mean"], ["glob"]),
        helper.make_node("Gather", ["triples", "i0"], ["subj"], axis=2),  # (1, T)
        helper.make_node("Gather", ["triples", "i1"], ["pred"], axis=2),  # (1, T)
        helper.make_node("GatherElements", ["objs", "subj"], ["subj_cls"], axis=1),  # (1, T)
        helper.make_node("Gather", ["E", "subj_cls"], ["subj_emb"]),  # (1, T, D)
        helper.make_node("Gather", ["P", "pred"], ["pred_emb"]),  # (1, T, D)
        helper.make_node("Add", ["subj_emb", "pred_emb"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["act"]),
        helper.make_node("Unsqueeze", ["triple_mask", "ax2"], ["tm"]),
        helper.make_node("Mul", ["act", "tm"], ["local"]),
        helper.make_node("Concat", ["glob", "local"], ["context"], axis=1),  # (1, L, D)
        helper.make_node("Concat", ["one2", "triple_mask"], ["context_mask"], axis=1),  # (1, L)
    ]
    inits = [_const("E", w["E"]), _const("P", w["P"]), _const("ax1", np.array([1], np.int64)),
             _const("ax2", np.array([2], np.int64)), _const("one", np.array(1.0, np.float32)),
             _const("one2", np.ones((1, 1), np.float32)), _const("i0", np.array(0, np.int64)),
             _const("i1", np.array(1, np.int64))]
    graph = helper.make_graph(
        nodes, "fake_encoder",
        [helper.make_tensor_value_info("objs", TensorProto.INT64, [1, o]),
         helper.make_tensor_value_info("obj_mask", TensorProto.FLOAT, [1, o]),
         helper.make_tensor_value_info("triples", TensorProto.INT64, [1, t, 3]),
         helper.make_tensor_value_info("triple_mask", TensorProto.FLOAT, [1, t])],
        [helper.make_tensor_value_info("context", TensorProto.FLOAT, [1, 1 + t, d]),
         helper.make_tensor_value_info("context_mask", TensorProto.FLOAT, [1, 1 + t])],
        inits)
    return _model(graph)


def _unet_model(cfg: ModelConfig, w: dict[str, np.ndarray]):
    s = spec.shapes(cfg.data, cfg.encoder)
    x_shape = [2, s["frames"], s["channels"], s["height"], s["width"]]
    length, d = s["context_tokens"], s["context_dim"]
    nodes = [
        helper.make_node("Unsqueeze", ["context_mask", "ax2"], ["cm"]),  # (2, L, 1)
        helper.make_node("Mul", ["context", "cm"], ["cw"]),
        helper.make_node("ReduceSum", ["cw", "ax1"], ["csum"], keepdims=0),  # (2, D)
        helper.make_node("ReduceSum", ["cm", "ax1"], ["ccnt"], keepdims=0),  # (2, 1)
        helper.make_node("Div", ["csum", "ccnt"], ["c"]),
        helper.make_node("MatMul", ["c", "Wg"], ["g"]),  # (2, C)
        helper.make_node("Reshape", ["g", "gshape"], ["g5"]),  # (2, 1, C, 1, 1)
        helper.make_node("Mul", ["t", "tscale"], ["ts"]),
        helper.make_node("Reshape", ["ts", "tshape"], ["t5"]),  # (2, 1, 1, 1, 1)
        helper.make_node("Mul", ["x", "xscale"], ["xs"]),
        helper.make_node("Add", ["xs", "g5"], ["a"]),
        helper.make_node("Add", ["a", "t5"], ["b"]),
        helper.make_node("Tanh", ["b"], ["v"]),
    ]
    inits = [_const("Wg", w["Wg"]), _const("ax1", np.array([1], np.int64)),
             _const("ax2", np.array([2], np.int64)),
             _const("gshape", np.array([2, 1, s["channels"], 1, 1], np.int64)),
             _const("tshape", np.array([2, 1, 1, 1, 1], np.int64)),
             _const("tscale", np.array(0.001, np.float32)),
             _const("xscale", np.array(0.8, np.float32))]
    graph = helper.make_graph(
        nodes, "fake_unet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("context", TensorProto.FLOAT, [2, length, d]),
         helper.make_tensor_value_info("context_mask", TensorProto.FLOAT, [2, length])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, x_shape)],
        inits)
    return _model(graph)


def _model(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model, full_check=True)
    return model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(root: Path, manifest: dict) -> None:
    """Rehash every file but the manifest, then write the manifest."""
    manifest["files"] = {
        p.relative_to(root).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(root.rglob("*")) if p.is_file() and p.name != spec.MANIFEST
    }
    (root / spec.MANIFEST).write_text(json.dumps(manifest, indent=1))


def make_fake_bundle(root: Path, seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
    """A small real bundle at `root` (toy ONNX graphs, real hashes); returns it and its weights."""
    cfg = fake_config()
    vocab = shapes_vocab()
    w = fake_weights(cfg, seed)
    root.mkdir(parents=True)
    (root / spec.ENCODER_ONNX).write_bytes(_encoder_model(cfg, w).SerializeToString())
    (root / spec.UNET_ONNX).write_bytes(_unet_model(cfg, w).SerializeToString())
    length = cfg.data.context_tokens
    np.save(root / spec.NULL_CONTEXT, w["null"])
    null_mask = np.zeros((1, length), np.float32)
    null_mask[0, 0] = 1.0
    np.save(root / spec.NULL_CONTEXT_MASK, null_mask)
    shapes = spec.shapes(cfg.data, cfg.encoder)
    io = spec.stage_io(shapes)
    d = cfg.diffusion
    manifest = {
        "format": spec.FORMAT, "format_version": spec.FORMAT_VERSION, "model_config": cfg.to_dict(),
        "vocab": vocab.to_dict(),
        "schedule": {"kind": d.schedule, "num_train_timesteps": d.num_train_timesteps},
        "sampler_defaults": {"sampler": "dpmpp2m", "steps": 4, "guidance": 3.0, "guidance_rescale": 0.7},
        "shapes": shapes, "precision": "fp32", "pooling": "portable", "opset": 17,
        "stages": {name: {"file": spec.STAGE_FILES[name], **io[name]} for name in spec.STAGE_FILES},
        "exported_by": {"sg2v": "test"}, "parity": {}, "trt_op_check": {"target": "10.3", "ok": True,
                                                                          "unsupported": []},
        "source_checkpoint": {"sha256": "0" * 64, "step": 0, "ema": False},
    }
    write_manifest(root, manifest)
    return root, w


def _manifest(root: Path) -> dict:
    return json.loads((root / spec.MANIFEST).read_text())


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return make_fake_bundle(tmp_path / "bundle", seed=int(np.random.SeedSequence().entropy % 1000))[0]


def test_valid_bundle_opens_with_its_contents(tmp_path):
    root, w = make_fake_bundle(tmp_path / "b", seed=7)
    b = Bundle.open(root)
    assert b.config == fake_config()
    assert b.vocab == shapes_vocab()
    assert b.shapes == spec.shapes(b.config.data, b.config.encoder)
    np.testing.assert_array_equal(b.null_context, w["null"])
    assert b.null_context_mask[0, 0] == 1 and not b.null_context_mask[0, 1:].any()
    assert not b.null_context.flags.writeable
    assert b.stage_file("unet") == root / "unet.onnx"
    assert b.alphas_cumprod().shape == (b.config.diffusion.num_train_timesteps,)


def test_missing_folder_and_missing_manifest(tmp_path, bundle_dir):
    with pytest.raises(BundleError, match="does not exist; pass the folder written by sg2v-export"):
        Bundle.open(tmp_path / "nowhere")
    (bundle_dir / spec.MANIFEST).unlink()
    with pytest.raises(BundleError, match="no manifest.json: not a bundle, or an interrupted export"):
        Bundle.open(bundle_dir)


def test_corrupt_manifest(bundle_dir):
    (bundle_dir / spec.MANIFEST).write_text('{"format": "sg2v-bundle", ')
    with pytest.raises(BundleError, match="manifest.json is corrupt"):
        Bundle.open(bundle_dir)


def test_newer_format_version_names_the_fix(bundle_dir):
    m = _manifest(bundle_dir)
    m["format_version"] = spec.FORMAT_VERSION + 1
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"by a newer sg2v; upgrade the runtime \(pip install -U sg2v\)"):
        Bundle.open(bundle_dir)


def test_other_format_is_refused(bundle_dir):
    m = _manifest(bundle_dir)
    m["format"] = "something-else"
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format is 'something-else'"):
        Bundle.open(bundle_dir)


def test_tampered_file_fails_sha256_but_not_without_verify(bundle_dir):
    path = bundle_dir / spec.UNET_ONNX
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="unet.onnx does not match its sha256"):
        Bundle.open(bundle_dir)
    Bundle.open(bundle_dir, verify=False)  # sizes still agree: only the hash check sees it


def test_truncated_and_missing_files(bundle_dir):
    path = bundle_dir / spec.ENCODER_ONNX
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BundleError, match="encoder.onnx has .* bytes, the manifest records"):
        Bundle.open(bundle_dir, verify=False)
    path.unlink()
    with pytest.raises(BundleError, match="encoder.onnx is missing"):
        Bundle.open(bundle_dir, verify=False)


@pytest.mark.parametrize("bad", ["../outside.npy", "/etc/hostname", "sub/../../outside.npy",
                                 "./null_context.npy", "a\\b.npy"])
def test_paths_must_stay_inside(bundle_dir, bad):
    m = _manifest(bundle_dir)
    m["files"][bad] = {"sha256": "0" * 64, "bytes": 1}
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="absolute|'..'|inside"):
        Bundle.open(bundle_dir)


def test_symlink_escaping_the_bundle_is_refused(tmp_path, bundle_dir):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(32))
    os.symlink(secret, bundle_dir / "weights.bin")
    m = _manifest(bundle_dir)
    write_manifest(bundle_dir, m)  # hashes through the link: only the path check can catch it
    assert "weights.bin" in _manifest(bundle_dir)["files"]
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        Bundle.open(bundle_dir)


def test_stage_path_outside_is_refused(bundle_dir):
    m = _manifest(bundle_dir)
    m["stages"]["unet"]["file"] = "../unet.onnx"
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"stages\['unet'\].file path '../unet.onnx' contains '..'"):
        Bundle.open(bundle_dir)


def test_unlisted_stage_file_is_refused(bundle_dir):
    m = _manifest(bundle_dir)
    del m["files"][spec.UNET_ONNX]
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="is not listed .* in 'files'"):
        Bundle.open(bundle_dir)


def test_pickled_null_context_is_refused(bundle_dir):
    np.save(bundle_dir / spec.NULL_CONTEXT, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    write_manifest(bundle_dir, _manifest(bundle_dir))
    with pytest.raises(BundleError, match="null_context.npy is not a plain .npy array"):
        Bundle.open(bundle_dir)


def test_wrong_null_context_shape_is_refused(bundle_dir):
    wrong = np.random.default_rng().standard_normal((1, 3, 8)).astype(np.float32)
    np.save(bundle_dir / spec.NULL_CONTEXT, wrong)
    write_manifest(bundle_dir, _manifest(bundle_dir))
    with pytest.raises(BundleError, match=r"null_context.npy is float32 \(1, 3, 8\), expected float32"):
        Bundle.open(bundle_dir)


def test_shapes_and_stage_io_must_match_the_config(bundle_dir):
    m = _manifest(bundle_dir)
    m["shapes"]["frames"] += 1
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest shapes disagree with model_config: frames=3"):
        Bundle.open(bundle_dir)
    m["shapes"]["frames"] -= 1
    m["stages"]["unet"]["inputs"][0]["shape"] = [1, 2, 3, 8, 8]
    (bundle_dir / spec.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="stage 'unet' inputs .* differ"):
        Bundle.open(bundle_dir)


def test_fake_graphs_match_their_float64_references(tmp_path):
    """The toy graphs used by the runtime tests compute what their references say (on fresh inputs)."""
    ort = pytest.importorskip("onnxruntime")
    root, w = make_fake_bundle(tmp_path / "b", seed=3)
    b = Bundle.open(root)
    rng = np.random.default_rng()
    s = b.shapes
    o, t = s["padded_objects"], s["padded_triples"]
    objs = rng.integers(0, b.config.encoder.num_objs, (1, o)).astype(np.int64)
    triples = np.stack([rng.integers(0, o, (1, t)), rng.integers(0, b.config.encoder.num_preds, (1, t)),
                        rng.integers(0, o, (1, t))], -1).astype(np.int64)
    feeds = {"objs": objs, "obj_mask": (rng.random((1, o)) > 0.3).astype(np.float32), "triples": triples,
             "triple_mask": (rng.random((1, t)) > 0.3).astype(np.float32)}
    enc = ort.InferenceSession(str(b.stage_file("encoder")), providers=["CPUExecutionProvider"])
    got = enc.run(None, feeds)
    want = ref_encoder(w, **feeds)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_, w_, rtol=1e-5, atol=1e-6)
    x = rng.standard_normal((2, s["frames"], s["channels"], s["height"], s["width"])).astype(np.float32)
    tt = rng.uniform(0, 999, 2).astype(np.float32)
    ctx = rng.standard_normal((2, s["context_tokens"], s["context_dim"])).astype(np.float32)
    cm = (rng.random((2, s["context_tokens"])) > 0.4).astype(np.float32)
    cm[:, 0] = 1.0
    unet = ort.InferenceSession(str(b.stage_file("unet")), providers=["CPUExecutionProvider"])
    (v,) = unet.run(None, {"x": x, "t": tt, "context": ctx, "context_mask": cm})
    np.testing.assert_allclose(v, ref_unet(w, x, tt, ctx, cm), rtol=1e-5, atol=1e-5)
