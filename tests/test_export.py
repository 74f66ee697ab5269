"""sg2v-export: checkpoint -> bundle, checked against PyTorch on fresh inputs; bad input; atomicity; cache."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sg2v import bundle_spec as spec  # noqa: E402
from sg2v.config import model_config  # noqa: E402
from sg2v.errors import CheckpointError  # noqa: E402
from sg2v.export import cli  # noqa: E402
from sg2v.export import onnx_export as ox  # noqa: E402
from sg2v.io import sha256_file  # noqa: E402
from sg2v.models.sg2v import build_model  # noqa: E402
from sg2v.training.checkpoint import save_checkpoint  # noqa: E402
from sg2v.vocab import shapes_vocab  # noqa: E402

STEP = 7


def _small_tiny():
    """The `tiny` model with one UNet level on 2 x 2 patches of 2 frames of 8 x 8, x0-parameterised: every
    block type, the patch (un)shuffle and the x0 -> v conversion, few nodes to export."""
    cfg = model_config("tiny")
    data = dataclasses.replace(cfg.data, frames=2, height=8, width=8, max_objects=3, max_relationships=2)
    unet = dataclasses.replace(cfg.unet, channel_mult=(1,), attention_levels=(0,), patch_size=2)
    diffusion = dataclasses.replace(cfg.diffusion, prediction="x0")  # the x0 -> v conversion is in the graph
    return cfg.replace(data=data, unet=unet, diffusion=diffusion)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A checkpoint with random weights and a distinct EMA (so tests can tell which one was exported)."""
    torch.manual_seed(1234)
    cfg = _small_tiny()
    model = build_model(cfg)
    ema = build_model(cfg)
    with torch.no_grad():
        for p in list(model.parameters()) + list(ema.parameters()):
            p.add_(0.05 * torch.randn_like(p))  # the zero-initialised temporal outputs become non-trivial
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, cfg, shapes_vocab(), ema=ema, step=STEP)
    return {"path": path, "cfg": cfg, "model": model.eval(), "ema": ema.eval()}


@pytest.fixture(scope="module")
def bundle(ckpt, tmp_path_factory):
    """fp32 portable bundle with weights, exported over a stray non-bundle folder with force=True."""
    out = tmp_path_factory.mktemp("out") / "bundle"
    out.mkdir()
    (out / "stray.txt").write_text("not a bundle")
    lines: list[str] = []
    result = ox.export_bundle(ckpt["path"], out, include_weights=True, force=True, log=lines.append)
    return {"out": out, "result": result, "log": lines}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _fresh_graph(cfg, seed):
    rng = np.random.default_rng(seed)
    return ox.random_graph_feeds(shapes_vocab(), cfg.data, rng, 3)[2]


# ------------------------------------------------------------------------------------------------ bundle

@pytest.mark.slow
def test_manifest_has_every_contract_key(bundle, ckpt):
    """A layout-grounded model: format 3, three stages (encoder with object vectors, layout network, UNet
    with objects and boxes), the layout entry with the vocabulary's relation rules."""
    m = bundle["result"].manifest
    out = bundle["out"]
    assert json.loads((out / spec.MANIFEST).read_text()) == m
    assert set(spec.MANIFEST_KEYS) | set(spec.GROUNDED_MANIFEST_KEYS) <= set(m)
    assert m["format"] == spec.FORMAT and m["format_version"] == spec.GROUNDED_FORMAT_VERSION == 3
    cfg = ckpt["cfg"]
    assert m["model_config"] == cfg.to_dict() and m["vocab"] == shapes_vocab().to_dict()
    assert m["shapes"] == spec.shapes(cfg.data, cfg.encoder, grounded=True)
    assert m["shapes"]["object_dim"] == cfg.encoder.embed_dim
    assert m["shapes"]["max_layout_batch"] == spec.MAX_BATCH * spec.LAYOUT_PER_ROUND
    assert list(m["stages"]) == ["encoder", "layout", "unet"]
    assert {e["file"] for e in m["stages"].values()} == {"encoder.onnx", "layout.onnx", "unet.onnx"}
    from sg2v.geometry import shapes_geometry, to_entry
    from sg2v.relations import rules_for

    # the shapes world's constraints for this canvas: no overlap, its box sizes, inside the canvas
    assert m["layout"] == {"steps": cfg.layout.default_steps, "tries": cfg.layout.default_tries,
                           "per_round": min(cfg.layout.default_tries, spec.LAYOUT_DEFAULT_PER_ROUND),
                           "sampler": "dpmpp2m", "relation_rules": rules_for(shapes_vocab().pred_names),
                           "geometry": to_entry(shapes_geometry(cfg.data.height, cfg.data.width))}
    rules = m["layout"]["relation_rules"]
    assert len(rules) == 6 and rules["above"] == "shapes/above"
    assert m["schedule"] == {"kind": cfg.diffusion.schedule,
                             "num_train_timesteps": cfg.diffusion.num_train_timesteps}
    assert m["sampler_defaults"]["steps"] == cfg.diffusion.default_steps
    assert (m["precision"], m["pooling"], m["opset"]) == ("fp32", "portable", 17)
    io = spec.stage_io(m["shapes"])
    for stage, entry in m["stages"].items():
        assert entry["inputs"] == io[stage]["inputs"] and entry["outputs"] == io[stage]["outputs"]
        graph = onnx.load(str(out / entry["file"]))
        assert ox.io_signature(graph) == io[stage]  # the graph itself, not only the manifest
        assert graph.opset_import[0].version == 17
    assert m["source_checkpoint"] == {"sha256": sha256_file(ckpt["path"]), "step": STEP, "ema": True,
                                      "file": "model.pt"}
    assert set(m["exported_by"]) >= {"sg2v", "torch", "onnx", "onnxruntime", "python"}


@pytest.mark.slow
def test_files_hashed_and_nothing_else_left(bundle):
    out = bundle["out"]
    files = bundle["result"].manifest["files"]
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted([*files, spec.MANIFEST])  # the stray file of the forced folder is gone
    for rel, info in files.items():
        assert info == {"sha256": sha256_file(out / rel), "bytes": (out / rel).stat().st_size}
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"]  # no staging folder left


@pytest.mark.slow
def test_arrays_hold_the_ema_weights(bundle, ckpt):
    out, ema = bundle["out"], ckpt["ema"]
    ctx = np.load(out / spec.NULL_CONTEXT, allow_pickle=False)
    mask = np.load(out / spec.NULL_CONTEXT_MASK, allow_pickle=False)
    np.testing.assert_array_equal(ctx, ema.null_context.detach().numpy())
    assert mask.dtype == np.float32 and mask[0, 0] == 1 and not mask[0, 1:].any()
    with np.load(out / spec.ENCODER_WEIGHTS, allow_pickle=False) as weights:
        state = ema.encoder.state_dict()
        assert sorted(weights.files) == sorted(state)
        for k, v in state.items():
            assert weights[k].dtype == np.float32
            np.testing.assert_array_equal(weights[k], v.numpy())
    from safetensors.torch import load_file

    loaded = load_file(str(out / spec.MODEL_WEIGHTS))
    assert sorted(loaded) == sorted(ema.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in ema.state_dict().items())


@pytest.mark.slow
def test_encoder_graph_matches_pytorch_on_a_fresh_graph(bundle, ckpt):
    """Independent of the exporter's own parity: new graphs, the training (scatter) pooling as reference."""
    sess = _session(bundle["out"] / spec.ENCODER_ONNX)
    enc = ckpt["ema"].encoder
    for seed in (101, 202):
        feeds = _fresh_graph(ckpt["cfg"], seed)
        got = dict(zip(spec.ENCODER_OUTPUTS, sess.run(None, feeds)))
        with torch.no_grad():
            ctx, mask = enc(*(torch.from_numpy(feeds[k]) for k in spec.ENCODER_INPUTS))
        scale = float(ctx.abs().max())
        assert np.abs(got["context"] - ctx.numpy()).max() <= 1e-4 * scale
        np.testing.assert_array_equal(got["context_mask"], mask.numpy())


@pytest.mark.slow
def test_unet_graph_carries_no_shape_arithmetic(bundle):
    """Only the batch axis is dynamic and the UNet writes it as -1: no Gather, Slice or arithmetic reads a
    Shape (GroupNorm's own reshape back to its input's shape is the one use left), so ONNX Runtime runs no
    per-call shape bookkeeping."""
    graph = onnx.load(str(bundle["out"] / spec.UNET_ONNX)).graph
    shape_outputs = {n.output[0] for n in graph.node if n.op_type == "Shape"}
    readers = {n.op_type for n in graph.node if shape_outputs & set(n.input)}
    assert readers <= {"Reshape"}, readers
    norms = sum(n.op_type == "InstanceNormalization" for n in graph.node)
    assert len(shape_outputs) <= norms
    assert not any(n.op_type in ("Gather", "Unsqueeze", "Concat") and shape_outputs & set(n.input)
                   for n in graph.node)


@pytest.mark.slow
def test_unet_graph_matches_pytorch_on_fresh_inputs(bundle, ckpt):
    sess = _session(bundle["out"] / spec.UNET_ONNX)
    cfg, d = ckpt["cfg"], ckpt["cfg"].data
    rng = np.random.default_rng(303)
    ctx = rng.standard_normal((2, d.context_tokens, cfg.encoder.context_dim)).astype(np.float32)
    boxes = ox.random_tracks(rng, (2, d.padded_objects), d.frames)
    boxes[:, -1] = 0.0  # a padded slot paints nothing
    feeds = {"x": rng.standard_normal((2, d.frames, d.channels, d.height, d.width)).astype(np.float32),
             "t": np.array([17.0, 911.0], np.float32), "context": ctx,
             "context_mask": (rng.random((2, d.context_tokens)) < 0.6).astype(np.float32),
             "objects": rng.standard_normal((2, d.padded_objects, cfg.encoder.embed_dim)).astype(np.float32),
             "boxes": boxes}
    (v,) = sess.run(None, feeds)
    with torch.no_grad():
        ref = ckpt["ema"].unet(*(torch.from_numpy(feeds[k]) for k in spec.GROUNDED_UNET_INPUTS)).numpy()
        moved = ckpt["ema"].unet(*(torch.from_numpy(feeds[k]) for k in spec.UNET_INPUTS),
                                 torch.from_numpy(feeds["objects"]), torch.from_numpy(boxes[:, ::-1].copy()))
    assert np.isfinite(v).all() and np.abs(v - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.abs(moved.numpy() - ref).max() > 1e-3  # the boxes matter: the comparison is not vacuous


@pytest.mark.slow
def test_layout_graph_matches_pytorch_on_fresh_inputs(bundle, ckpt):
    """layout.onnx against the layout network on new inputs: the encoder's object vectors and context on a
    random graph, random noisy tracks, timesteps and pinned tracks."""
    sess = _session(bundle["out"] / spec.LAYOUT_ONNX)
    cfg, model = ckpt["cfg"], ckpt["ema"]
    rng = np.random.default_rng(404)
    enc = [_fresh_graph(cfg, seed) for seed in (41, 42)]
    for feeds in ox._layout_feeds(model, enc, cfg, rng, per_graph=3):
        assert feeds["known_mask"].any() and feeds["objects"].std() > 0.1
        (v,) = sess.run(None, feeds)
        with torch.no_grad():
            ref = model.layout_net(*(torch.from_numpy(feeds[k]) for k in spec.LAYOUT_INPUTS)).numpy()
        assert v.shape == feeds["x"].shape and np.isfinite(v).all()
        assert np.abs(v - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.slow
def test_self_checks_recorded(bundle):
    m = bundle["result"].manifest
    assert set(m["parity"]) == set(spec.GROUNDED_STAGE_FILES)
    for stage in spec.GROUNDED_STAGE_FILES:
        p = m["parity"][stage]
        # 3 single graphs, then the same 3 as one batch (the batch axis)
        assert p["ok"] and p["finite"] and p["max_rel_err"] <= p["tolerance"] == 1e-4 and p["trials"] == 4
        assert p["max_rel_err"] > 0  # really computed on both sides
    trt = m["trt_op_check"]
    assert trt["target"] == "10.3" and trt["ok"] and trt["unsupported"] == [] and trt["plugins"] == []
    assert set(trt["stages"]) == set(spec.GROUNDED_STAGE_FILES)
    assert any("op check: OK" in line for line in bundle["log"])


@pytest.mark.slow
def test_batch_axis_rows_equal_single_calls(bundle, ckpt):
    """Format 2: dim 0 of every stage I/O is a named batch axis up to shapes.max_batch; a batch of 3 graphs
    (6 UNet rows) gives, row for row, what 3 single calls give (ONNX Runtime CPU: bit for bit)."""
    m = bundle["result"].manifest
    assert m["shapes"]["max_batch"] == spec.MAX_BATCH and "unet_batch" not in m["shapes"]
    for stage, names in ((spec.ENCODER_ONNX, spec.BATCH_DIM), (spec.UNET_ONNX, spec.UNET_BATCH_DIM)):
        sig = ox.io_signature(onnx.load(str(bundle["out"] / stage)))
        assert {e["shape"][0] for e in sig["inputs"] + sig["outputs"]} == {names}
    singles = [_fresh_graph(ckpt["cfg"], seed) for seed in (11, 12, 13)]
    enc = _session(bundle["out"] / spec.ENCODER_ONNX)
    batch = enc.run(None, ox.batched_feeds(singles))
    for i, f in enumerate(singles):
        for got, want in zip(batch, enc.run(None, f)):
            np.testing.assert_array_equal(got[i:i + 1], want)
    rng = np.random.default_rng(505)
    unet_feeds = ox._unet_feeds(ckpt["ema"], singles, ckpt["cfg"], rng)  # 2 rows each
    unet = _session(bundle["out"] / spec.UNET_ONNX)
    (v,) = unet.run(None, ox.batched_feeds(unet_feeds))
    for i, f in enumerate(unet_feeds):
        np.testing.assert_array_equal(v[2 * i:2 * i + 2], unet.run(None, f)[0])
    layout_feeds = ox._layout_feeds(ckpt["ema"], singles, ckpt["cfg"], rng)  # 2 candidate rows each
    layout = _session(bundle["out"] / spec.LAYOUT_ONNX)
    sig = ox.io_signature(onnx.load(str(bundle["out"] / spec.LAYOUT_ONNX)))
    assert {e["shape"][0] for e in sig["inputs"] + sig["outputs"]} == {spec.LAYOUT_BATCH_DIM}
    (v,) = layout.run(None, ox.batched_feeds(layout_feeds))
    for i, f in enumerate(layout_feeds):
        np.testing.assert_array_equal(v[2 * i:2 * i + 2], layout.run(None, f)[0])


@pytest.mark.slow
def test_reexport_from_a_bundle_folder(bundle, ckpt, tmp_path):
    """--ckpt BUNDLE: the bundle's model.safetensors re-exported (e.g. a format-1 bundle into this format),
    the same graphs' outputs, its source recorded."""
    out = tmp_path / "again"
    result = ox.export_bundle(bundle["out"], out, max_batch=4)
    m, old = result.manifest, bundle["result"].manifest
    assert m["shapes"]["max_batch"] == 4 and m["model_config"] == old["model_config"]
    assert m["source_checkpoint"]["sha256"] == old["files"][spec.MODEL_WEIGHTS]["sha256"]
    assert m["source_checkpoint"]["step"] == STEP
    assert m["source_checkpoint"]["file"].endswith(spec.MODEL_WEIGHTS)
    for rel in (spec.NULL_CONTEXT, spec.NULL_CONTEXT_MASK):
        np.testing.assert_array_equal(np.load(out / rel), np.load(bundle["out"] / rel))
    feeds = _fresh_graph(ckpt["cfg"], 606)
    for a, b in zip(_session(out / spec.ENCODER_ONNX).run(None, feeds),
                    _session(bundle["out"] / spec.ENCODER_ONNX).run(None, feeds)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ox.ExportError, match="--max-batch 0"):
        ox.export_bundle(bundle["out"], tmp_path / "none", max_batch=0)


@pytest.mark.slow
def test_runtime_reader_accepts_the_bundle(bundle):
    reader = pytest.importorskip("sg2v.runtime.bundle")
    opened = reader.Bundle.open(bundle["out"])
    assert opened.shapes == bundle["result"].manifest["shapes"]
    assert opened.null_context.shape == (1, opened.shapes["context_tokens"], opened.shapes["context_dim"])


# ------------------------------------------------------------------------------------ cache and variants

@pytest.mark.slow
def test_plugin_export_reuses_the_unet_and_emits_the_plugin(bundle, ckpt, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(bundle["out"], out)
    lines: list[str] = []
    result = ox.export_bundle(ckpt["path"], out, pooling="plugin", log=lines.append)
    assert result.reused == ["layout", "unet"] and any("reused unet.onnx" in s for s in lines)
    m = result.manifest
    for rel in (spec.UNET_ONNX, spec.LAYOUT_ONNX):
        assert m["files"][rel] == bundle["result"].manifest["files"][rel]
    assert spec.MODEL_WEIGHTS not in m["files"] and not (out / spec.MODEL_WEIGHTS).exists()
    graph = onnx.load(str(out / spec.ENCODER_ONNX))
    pools = [n for n in graph.graph.node if (n.domain, n.op_type) == ("sg2v", "ScatterMeanPool")]
    assert len(pools) == ckpt["cfg"].encoder.num_layers
    o = ckpt["cfg"].data.padded_objects
    assert all(_attrs(n) == {"num_segments": o, "plugin_namespace": "sg2v", "plugin_version": "1", "aot": 1}
               for n in pools)
    assert "portable twin" in m["parity"]["encoder"]["checked"] and m["parity"]["encoder"]["ok"]
    assert m["trt_op_check"]["target"] == "10.9" and m["plugin_impl"] == "aot"  # the first TensorRT with AOT
    assert m["trt_op_check"]["ok"] and m["trt_op_check"]["plugins"][0]["count"] == len(pools)
    assert m["trt_op_check"]["stages"]["unet"]["target"] == "10.9"  # reused graph, read again for 10.9
    assert m["trt_op_check"]["stages"]["layout"]["target"] == "10.9"
    assert "objects" in [o.name for o in graph.graph.output]
    assert m["stages"]["encoder"]["cache_key"]["pooling"] == "plugin"
    at_103 = ox.check_model(graph, target="10.3")  # JetPack 6's TensorRT has no Python plugins
    assert not at_103["ok"] and {u["fixed_in"] for u in at_103["unsupported"]} == {"10.6"}

    # ONNX Runtime cannot run the plugin node; the ort backend runs sg2v's own encoder on the bundle's
    # weights, so the plugin bundle gives the portable bundle's frames.
    from sg2v.errors import BundleError
    from sg2v.runtime import Pipeline
    from sg2v.runtime.backends.ort import OrtStage
    from sg2v.runtime.bundle import Bundle

    opened = Bundle.open(out)
    with pytest.raises(BundleError, match=r"no kernel for the sg2v::ScatterMeanPool.*--pooling portable"):
        OrtStage(opened.stage_file("encoder"), opened.stages["encoder"], ["CPUExecutionProvider"])
    plugin_pipe = Pipeline.from_bundle(out, backend="ort")
    assert any("numpy encoder" in note for note in plugin_pipe.backend.notes)
    graph_in = _fresh_graph_dict(np.random.default_rng(31))
    got = plugin_pipe(graph_in, seed=3, steps=2)
    want = Pipeline.from_bundle(bundle["out"], backend="ort")(graph_in, seed=3, steps=2)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    jit = ox.export_bundle(ckpt["path"], tmp_path / "jit", pooling="plugin", plugin_impl="jit")
    assert jit.manifest["trt_op_check"]["target"] == "10.6" and jit.manifest["plugin_impl"] == "jit"
    jit_pools = [n for n in onnx.load(str(tmp_path / "jit" / spec.ENCODER_ONNX)).graph.node
                 if n.op_type == "ScatterMeanPool"]
    assert jit_pools and all(_attrs(n)["aot"] == 0 for n in jit_pools)


def _attrs(node):
    return {a.name: (lambda v: v.decode() if isinstance(v, bytes) else v)(onnx.helper.get_attribute_value(a))
            for a in node.attribute}


def _fresh_graph_dict(rng):
    names = shapes_vocab().object_names
    objs = [str(x) for x in rng.choice(names, size=3)]
    return {"objects": objs, "relationships": [[0, "left of", 1], [2, "above", 0]]}


@pytest.mark.slow
def test_fp16_export_keeps_io_float32_and_norms_float32(ckpt, tmp_path):
    result = ox.export_bundle(ckpt["path"], tmp_path / "b16", precision="fp16", ema=False)
    m = result.manifest
    assert m["precision"] == "fp16" and m["source_checkpoint"]["ema"] is False
    for stage in spec.GROUNDED_STAGE_FILES:
        graph = onnx.load(str(tmp_path / "b16" / spec.GROUNDED_STAGE_FILES[stage]))
        assert ox.io_signature(graph) == spec.stage_io(m["shapes"])[stage]
        assert ox.fp32_islands(graph) == []
        dtypes = {i.data_type for i in graph.graph.initializer if len(i.dims) >= 2}
        assert onnx.TensorProto.FLOAT16 in dtypes  # weight matrices and kernels are float16
        p = m["parity"][stage]
        assert p["tolerance"] == 1e-2 and p["ok"] and p["max_rel_err"] > 1e-6  # really computed in fp16
    # A fresh check against the raw (non-EMA) weights that this export used.
    sess = _session(tmp_path / "b16" / spec.ENCODER_ONNX)
    feeds = _fresh_graph(ckpt["cfg"], 404)
    got = sess.run(None, feeds)[0]
    with torch.no_grad():
        ref = ckpt["model"].encoder(*(torch.from_numpy(feeds[k]) for k in spec.ENCODER_INPUTS))[0].numpy()
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()


def test_fp16_weight_storage_halves_the_bundle_and_keeps_fp32_parity(ckpt, bundle, tmp_path):
    """--weights fp16: initializers float16 behind Casts, half the bytes, and the graphs compute exactly what
    the fp16-rounded model computes in float32 (the torch reference backend gets the same weights)."""
    out = tmp_path / "w16"
    result = ox.export_bundle(ckpt["path"], out, weights="fp16", include_weights=True, guidance=4.5)
    m = result.manifest
    assert m["sampler_defaults"]["guidance"] == 4.5  # --guidance: the bundle's default, not the config's
    assert bundle["result"].manifest["sampler_defaults"]["guidance"] == ckpt["cfg"].diffusion.default_guidance
    assert m["weight_storage"] == "fp16" and m["precision"] == "fp32"
    assert all(p["ok"] for p in m["parity"].values()) and len(m["parity"]) == 3
    old = bundle["result"].manifest["files"]
    # This toy model has many small float32 constants and graph overhead (the batch axis' shape arithmetic
    # among them); the demo's unet.onnx is 0.5x.
    for rel, ratio in ((spec.UNET_ONNX, 0.8), (spec.LAYOUT_ONNX, 0.8), (spec.MODEL_WEIGHTS, 0.6)):
        assert m["files"][rel]["bytes"] < ratio * old[rel]["bytes"], rel
    graph = onnx.load(str(out / spec.UNET_ONNX))
    big = [i for i in graph.graph.initializer if int(np.prod(i.dims)) >= ox.FP16_STORE_MIN_ELEMENTS]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    assert sum(n.op_type == "Cast" and n.name.endswith("__to_fp32") for n in graph.graph.node) == len(big)
    rounded = build_model(ckpt["cfg"])
    rounded.load_state_dict(ckpt["ema"].state_dict())
    ox.round_weights_fp16(rounded)
    rng = np.random.default_rng(77)
    feeds = ox._unet_feeds(rounded, ox.random_graph_feeds(shapes_vocab(), ckpt["cfg"].data, rng, 1),
                           ckpt["cfg"], rng)[0]
    got = _session(out / spec.UNET_ONNX).run(None, feeds)[0]
    with torch.no_grad():
        want = rounded.eval().unet(*(torch.from_numpy(feeds[k]) for k in spec.GROUNDED_UNET_INPUTS)).numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    from safetensors.torch import load_file

    state = load_file(str(out / spec.MODEL_WEIGHTS))
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    from sg2v.runtime import Pipeline

    pipe = Pipeline.from_bundle(out, backend="ort")
    frames_ort = pipe(_demo_graph(), seed=5, steps=2)
    assert np.array_equal(frames_ort, pipe(_demo_graph(), seed=5, steps=2, guidance=4.5))  # bundle default
    assert not np.array_equal(frames_ort, pipe(_demo_graph(), seed=5, steps=2, guidance=3.0))
    frames_torch = Pipeline.from_bundle(out, backend="torch")(_demo_graph(), seed=5, steps=2)
    assert np.abs(frames_ort.astype(int) - frames_torch.astype(int)).max() <= 2


def _demo_graph():
    return {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}


def test_store_weights_fp16_refuses_unrounded_values():
    from onnx import helper, numpy_helper

    w = np.full((8, 8), 0.1, np.float32)  # 0.1 is not a float16 value
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])],
                          [numpy_helper.from_array(w, "w")])
    with pytest.raises(ox.ExportError, match="float16-representable"):
        ox.store_weights_fp16(helper.make_model(g))


# ------------------------------------------------------------------------------------------- bad input

def test_missing_checkpoint(tmp_path, capsys):
    rc = cli.main(["--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "does not exist" in err
    assert not (tmp_path / "b").exists()


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    rc = cli.main(["--ckpt", str(bad), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "corrupt" in err
    with pytest.raises(CheckpointError):
        ox.export_bundle(bad, tmp_path / "b")


def test_newer_format_checkpoint(tmp_path, ckpt, capsys):
    data = torch.load(ckpt["path"], weights_only=True)
    data["sg2v_format"] = 99
    newer = tmp_path / "newer.pt"
    torch.save(data, newer)
    rc = cli.main(["--ckpt", str(newer), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "newer" in err and "upgrade" in err


def test_unwritable_output_folder(tmp_path, ckpt, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = cli.main(["--ckpt", str(ckpt["path"]), "--out", str(blocker / "bundle")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "cannot create output folder" in err


def test_existing_non_bundle_folder_needs_force(tmp_path, ckpt, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    rc = cli.main(["--ckpt", str(ckpt["path"]), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "--force" in err and (out / "thesis.tex").read_text() == "keep me"


def test_bad_options(tmp_path, ckpt):
    with pytest.raises(ox.ExportError, match="--opset 21"):
        ox.export_bundle(ckpt["path"], tmp_path / "b", opset=21)
    with pytest.raises(ox.ExportError, match="--precision"):
        ox.export_bundle(ckpt["path"], tmp_path / "b", precision="int4")
    for g in (-1.0, float("nan")):
        with pytest.raises(ox.ExportError, match="--guidance"):
            ox.export_bundle(ckpt["path"], tmp_path / "b", guidance=g)
    assert not (tmp_path / "b").exists()
    with pytest.raises(SystemExit):
        cli.main(["--ckpt", "x", "--pooling", "magic"])


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for default in ("default: fp32", "default: portable", "default: 17", "default: 10.3", "default: bundle"):
        assert default in text


def test_no_ema_loads_the_raw_weights(ckpt):
    model, _, _, source = ox.load_for_export(ckpt["path"], ema=False)
    assert source["ema"] is False
    assert torch.equal(model.null_context, ckpt["model"].null_context)
    model, _, _, source = ox.load_for_export(ckpt["path"], ema=True)
    assert source["ema"] is True and torch.equal(model.null_context, ckpt["ema"].null_context)


@pytest.mark.slow
def test_interrupted_export_leaves_the_old_bundle(bundle, ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "bundle"
    shutil.copytree(bundle["out"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ox, "_write_arrays", interrupt)  # after the stages, before the manifest
    rc = cli.main(["--ckpt", str(ckpt["path"]), "--out", str(out), "--include-weights"])
    err = capsys.readouterr().err.strip()
    assert rc == 130 and err == f"sg2v-export: interrupted; nothing was written to {out}"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # staging folder removed
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(ox, "check_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError, match="crash"):
        ox.export_bundle(ckpt["path"], fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.slow
def test_cli_reexport_reuses_both_stages_and_prints_a_summary(bundle, ckpt, tmp_path, capsys):
    out = tmp_path / "bundle"
    shutil.copytree(bundle["out"], out)
    rc = cli.main(["--ckpt", str(ckpt["path"]), "--out", str(out), "--include-weights"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "reused stages: encoder, layout, unet" in text and "parity layout: max rel err" in text
    assert ("layout stage: dpmpp2m, 8 steps, up to 16 draws per graph (2 per round at first) until the "
            "relations of the 6 predicates with a geometric rule hold and the boxes keep the data's geometry "
            "(shapes world: overlap <= 0.0, sizes, inside the canvas)") in text
    assert "TensorRT 10.3 op check: all nodes supported" in text and "model.safetensors" in text
    manifest = json.loads((out / spec.MANIFEST).read_text())
    assert manifest["files"] == bundle["result"].manifest["files"]


@pytest.mark.slow
def test_parity_failure_is_an_error_and_writes_nothing(ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(ox.TOLERANCE, "fp32", 1e-12)  # below float32 round-off: parity must fail
    with pytest.raises(ox.ExportError, match="encoder parity failed.*--allow-parity-failure"):
        ox.export_bundle(ckpt["path"], tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_strict_trt_fails_on_an_unsupported_op(ckpt, tmp_path, monkeypatch):
    from sg2v.export import opcheck

    table = opcheck.load_table()
    table["ops"]["GatherElements"] = dict(table["ops"]["GatherElements"], supported=False)
    monkeypatch.setattr(opcheck, "load_table", lambda: table)
    with pytest.raises(ox.ExportError, match="--strict-trt: encoder .*GatherElements"):
        ox.export_bundle(ckpt["path"], tmp_path / "b", strict_trt=True)
    assert list(tmp_path.iterdir()) == []


def test_package_import_is_lean():
    code = ("import sys, sg2v.export, sg2v.bundle_spec; "
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_entry_point_is_declared():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'sg2v-export = "sg2v.export.cli:main"' in text
    assert '"sg2v.export" = ["*.json"]' in text
