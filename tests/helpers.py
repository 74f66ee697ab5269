"""Shared test helpers: small real bundles (toy ONNX graphs) with float64 references, random graphs, and a
tiny random SG2V exported by the real exporter, ungrounded (format 2) and layout-grounded (format 3), cached
for the session by the `real_bundle` and `grounded_bundle` fixtures.

Test modules import these (`from helpers import ...`); fixtures built on them live in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sg2v import bundle_spec as spec
from sg2v.config import DataConfig, EncoderConfig, LayoutConfig, ModelConfig, UNetConfig
from sg2v.vocab import shapes_vocab

try:  # the toy bundles are ONNX graphs; the other helpers (graphs, models) need no onnx
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:
    onnx = None


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


def _encoder_model(cfg: ModelConfig, w: dict[str, np.ndarray], b: int | str):
    """The toy encoder at batch `b`: an int (format 1) or the batch axis' name (format 2)."""
    s = spec.shapes(cfg.data, cfg.encoder)
    o, t, d = s["padded_objects"], s["padded_triples"], s["context_dim"]
    nodes = [
        helper.make_node("Gather", ["E", "objs"], ["obj_emb"]),  # (B, O, D)
        helper.make_node("Unsqueeze", ["obj_mask", "ax2"], ["m"]),  # (B, O, 1)
        helper.make_node("Mul", ["obj_emb", "m"], ["obj_w"]),
        helper.make_node("ReduceSum", ["obj_w", "ax1"], ["pooled"], keepdims=1),  # (B, 1, D)
        helper.make_node("ReduceSum", ["m", "ax1"], ["cnt"], keepdims=1),  # (B, 1, 1)
        helper.make_node("Max", ["cnt", "one"], ["cnt1"]),
        helper.make_node("Div", ["pooled", "cnt1"], ["mean"]),
        helper.make_node("Tanh", ["mean"], ["glob"]),
        helper.make_node("Gather", ["triples", "i0"], ["subj"], axis=2),  # (B, T)
        helper.make_node("Gather", ["triples", "i1"], ["pred"], axis=2),  # (B, T)
        helper.make_node("GatherElements", ["objs", "subj"], ["subj_cls"], axis=1),  # (B, T)
        helper.make_node("Gather", ["E", "subj_cls"], ["subj_emb"]),  # (B, T, D)
        helper.make_node("Gather", ["P", "pred"], ["pred_emb"]),  # (B, T, D)
        helper.make_node("Add", ["subj_emb", "pred_emb"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["act"]),
        helper.make_node("Unsqueeze", ["triple_mask", "ax2"], ["tm"]),
        helper.make_node("Mul", ["act", "tm"], ["local"]),
        helper.make_node("Concat", ["glob", "local"], ["context"], axis=1),  # (B, L, D)
        helper.make_node("Slice", ["triple_mask", "i0s", "i1s", "ax1"], ["tm0"]),  # (B, 1)
        helper.make_node("Mul", ["tm0", "zero"], ["tm00"]),
        helper.make_node("Add", ["tm00", "one"], ["ones"]),  # (B, 1): the global token is always valid
        helper.make_node("Concat", ["ones", "triple_mask"], ["context_mask"], axis=1),  # (B, L)
    ]
    inits = [_const("E", w["E"]), _const("P", w["P"]), _const("ax1", np.array([1], np.int64)),
             _const("ax2", np.array([2], np.int64)), _const("one", np.array(1.0, np.float32)),
             _const("zero", np.array(0.0, np.float32)), _const("i0", np.array(0, np.int64)),
             _const("i1", np.array(1, np.int64)), _const("i0s", np.array([0], np.int64)),
             _const("i1s", np.array([1], np.int64))]
    graph = helper.make_graph(
        nodes, "fake_encoder",
        [helper.make_tensor_value_info("objs", TensorProto.INT64, [b, o]),
         helper.make_tensor_value_info("obj_mask", TensorProto.FLOAT, [b, o]),
         helper.make_tensor_value_info("triples", TensorProto.INT64, [b, t, 3]),
         helper.make_tensor_value_info("triple_mask", TensorProto.FLOAT, [b, t])],
        [helper.make_tensor_value_info("context", TensorProto.FLOAT, [b, 1 + t, d]),
         helper.make_tensor_value_info("context_mask", TensorProto.FLOAT, [b, 1 + t])],
        inits)
    return _model(graph)


def _unet_model(cfg: ModelConfig, w: dict[str, np.ndarray], n: int | str):
    """The toy UNet at `n` rows: an int (format 1) or the batch axis' name (format 2)."""
    s = spec.shapes(cfg.data, cfg.encoder)
    x_shape = [n, s["frames"], s["channels"], s["height"], s["width"]]
    length, d = s["context_tokens"], s["context_dim"]
    nodes = [
        helper.make_node("Unsqueeze", ["context_mask", "ax2"], ["cm"]),  # (N, L, 1)
        helper.make_node("Mul", ["context", "cm"], ["cw"]),
        helper.make_node("ReduceSum", ["cw", "ax1"], ["csum"], keepdims=0),  # (N, D)
        helper.make_node("ReduceSum", ["cm", "ax1"], ["ccnt"], keepdims=0),  # (N, 1)
        helper.make_node("Div", ["csum", "ccnt"], ["c"]),
        helper.make_node("MatMul", ["c", "Wg"], ["g"]),  # (N, C)
        helper.make_node("Reshape", ["g", "gshape"], ["g5"]),  # (N, 1, C, 1, 1)
        helper.make_node("Mul", ["t", "tscale"], ["ts"]),
        helper.make_node("Reshape", ["ts", "tshape"], ["t5"]),  # (N, 1, 1, 1, 1)
        helper.make_node("Mul", ["x", "xscale"], ["xs"]),
        helper.make_node("Add", ["xs", "g5"], ["a"]),
        helper.make_node("Add", ["a", "t5"], ["b"]),
        helper.make_node("Tanh", ["b"], ["v"]),
    ]
    inits = [_const("Wg", w["Wg"]), _const("ax1", np.array([1], np.int64)),
             _const("ax2", np.array([2], np.int64)),
             _const("gshape", np.array([-1, 1, s["channels"], 1, 1], np.int64)),
             _const("tshape", np.array([-1, 1, 1, 1, 1], np.int64)),
             _const("tscale", np.array(0.001, np.float32)),
             _const("xscale", np.array(0.8, np.float32))]
    graph = helper.make_graph(
        nodes, "fake_unet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [n]),
         helper.make_tensor_value_info("context", TensorProto.FLOAT, [n, length, d]),
         helper.make_tensor_value_info("context_mask", TensorProto.FLOAT, [n, length])],
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


def make_fake_bundle(root: Path, seed: int = 0, version: int = spec.UNGROUNDED_FORMAT_VERSION,
                     max_batch: int = 4
                     ) -> tuple[Path, dict[str, np.ndarray]]:
    """A small real bundle at `root` (toy ONNX graphs, real hashes); returns it and its weights. Format 2
    has a batch axis up to `max_batch` videos; format 1 the fixed batches of 1 graph and 2 UNet rows."""
    if onnx is None:
        pytest.skip("onnx is not installed (the toy bundles are ONNX graphs)")
    cfg = fake_config()
    vocab = shapes_vocab()
    w = fake_weights(cfg, seed)
    root.mkdir(parents=True)
    dynamic = version >= 2
    b, n = (spec.BATCH_DIM, spec.UNET_BATCH_DIM) if dynamic else (spec.ENCODER_BATCH, spec.UNET_BATCH)
    (root / spec.ENCODER_ONNX).write_bytes(_encoder_model(cfg, w, b).SerializeToString())
    (root / spec.UNET_ONNX).write_bytes(_unet_model(cfg, w, n).SerializeToString())
    length = cfg.data.context_tokens
    np.save(root / spec.NULL_CONTEXT, w["null"])
    null_mask = np.zeros((1, length), np.float32)
    null_mask[0, 0] = 1.0
    np.save(root / spec.NULL_CONTEXT_MASK, null_mask)
    shapes = spec.shapes(cfg.data, cfg.encoder, max_batch if dynamic else None)
    io = spec.stage_io(shapes)
    d = cfg.diffusion
    manifest = {
        "format": spec.FORMAT, "format_version": version, "model_config": cfg.to_dict(),
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


def json_paths(value, prefix=()):
    """Every path (a tuple of keys and indices) into a JSON value, the root's () first, depth first."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from json_paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from json_paths(v, (*prefix, i))


def random_graph(rng: np.random.Generator, max_objects: int = 3, max_relationships: int = 2) -> dict:
    """A valid shapes-vocabulary graph of random size: 1..max_objects objects, distinct relationships."""
    vocab = shapes_vocab()
    n = int(rng.integers(1, max_objects + 1))
    objects = [str(o) for o in rng.choice(vocab.object_names, n)]
    rels: list[list] = []
    for _ in range(int(rng.integers(0, max_relationships + 1)) if n > 1 else 0):
        s, o = rng.choice(n, 2, replace=False)
        rel = [int(s), str(rng.choice(vocab.pred_names)), int(o)]
        if rel not in rels:  # the graph format rejects duplicate relationships
            rels.append(rel)
    return {"objects": objects, "relationships": rels}


def checked_graphs(seed: int, n: int = 3) -> tuple[list[dict], list[int], np.random.Generator]:
    """n random graphs whose first always has two relations the layout stage checks, n noise seeds, and the
    generator they came from (for further draws)."""
    rng = np.random.default_rng(seed)
    graphs = [random_graph(rng) for _ in range(n)]
    graphs[0] = {"objects": ["red circle", "blue square", "green triangle"],
                 "relationships": [[0, "left of", 1], [2, "above", 0]]}
    return graphs, [int(s) for s in rng.integers(1 << 20, size=n)], rng


def checkpoint_generator(checkpoint) -> tuple:
    """(the in-memory model's generation loop on torch tensors, its config) for a checkpoint: the contract
    every backend is held to."""
    from sg2v.training.backend import model_generator
    from sg2v.training.checkpoint import load_model

    model, cfg, vocab = load_model(checkpoint)
    return model_generator(model, cfg, vocab), cfg


def tiny_config(name: str = "test-tiny", frames: int = 2) -> ModelConfig:
    """A SG2V small enough for a CPU test in seconds: (frames, 8, 8) video, 3 objects, 2 relationships."""
    vocab = shapes_vocab()
    return ModelConfig(
        name=name,
        data=DataConfig(frames=frames, height=8, width=8, max_objects=3, max_relationships=2),
        encoder=EncoderConfig(num_objs=vocab.num_objs, num_preds=vocab.num_preds, embed_dim=16, hidden_dim=16,
                              num_layers=1, context_dim=16),
        unet=UNetConfig(base_channels=8, channel_mult=(1, 2), attention_levels=(1,), num_heads=2,
                        norm_groups=4),
    )


def grounded_tiny_config(name: str = "test-tiny-grounded", frames: int = 2) -> ModelConfig:
    """`tiny_config` grounded on a layout: object maps in the UNet and a one-block layout network."""
    import dataclasses

    cfg = tiny_config(name, frames)
    return cfg.replace(unet=dataclasses.replace(cfg.unet, layout_dim=4, layout_head=8),
                       layout=LayoutConfig(dim=16, layers=1, heads=2, default_steps=4, default_tries=12))


def random_model(cfg: ModelConfig, seed: int):
    """SG2V of `cfg` with seeded random weights, the zero-initialised temporal outputs included."""
    import torch

    from sg2v.models.sg2v import build_model

    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():  # never test on zeros: every parameter gets a random offset
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def export_random_bundle(root: Path, seed: int = 1234, grounded: bool = False) -> tuple[Path, Path]:
    """`random_model(tiny_config())` (or `grounded_tiny_config()`) saved as a checkpoint and exported with
    weights: (bundle, checkpoint)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from sg2v.export import export_bundle
    from sg2v.training.checkpoint import save_checkpoint

    cfg = grounded_tiny_config() if grounded else tiny_config()
    ckpt = save_checkpoint(root / "tiny.pt", random_model(cfg, seed), cfg, shapes_vocab())
    export_bundle(ckpt, root / "bundle", include_weights=True)
    return root / "bundle", ckpt


STUDENT_DISTILL = dict(guidance_min=1.5, guidance_max=5.0, guidance_rescale=0.7, grid_steps=4)


def student_tiny_config(grounded: bool = True):
    """`grounded_tiny_config` (or `tiny_config`) as a guidance-distilled student (named like its teacher,
    "-student"): DDIM on 2 of its grid's 4 steps, guidance in [1.5, 5] at rescale 0.7."""
    from sg2v.config import DistillConfig, student_config

    teacher = grounded_tiny_config() if grounded else tiny_config()
    return student_config(teacher, DistillConfig(**STUDENT_DISTILL), steps=2)


def export_student_bundle(root: Path, seed: int = 777, grounded: bool = True, **options) -> tuple[Path, Path]:
    """`random_model(student_tiny_config())` (every weight random, the guidance embedding included) saved as
    a checkpoint and exported with weights and `options`: (bundle, checkpoint)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from sg2v.export import export_bundle
    from sg2v.training.checkpoint import save_checkpoint

    cfg = student_tiny_config(grounded=grounded)
    ckpt = save_checkpoint(root / "student.pt", random_model(cfg, seed), cfg, shapes_vocab())
    export_bundle(ckpt, root / "bundle", include_weights=True, **options)
    return root / "bundle", ckpt


def convert_fixtures(root: Path) -> dict[str, Path]:
    """The four source fixtures of tests/dataset_fixtures.py converted at the `tiny` size as their own tests
    convert them, plus "stills": three still images of the folder format converted with the folder set's
    vocabulary (an image set to mix with its clips). Returns name -> converted folder."""
    import importlib.util

    from dataset_fixtures import solid, write_ag, write_coco, write_folder, write_vg

    from sg2v.dataset import AGOptions, CocoOptions, CommonOptions, FolderOptions, VGOptions, convert

    root = Path(root)
    quiet = {"log": lambda line: None}
    tiny = CommonOptions(size="tiny")
    write_vg(root / "src" / "vg")
    write_coco(root / "src" / "coco")
    write_ag(root / "src" / "ag")
    write_folder(root / "src" / "folder", mp4=importlib.util.find_spec("imageio_ffmpeg") is not None)
    out = {name: root / name for name in ("vg", "coco", "ag", "folder", "stills")}
    convert("vg", root / "src" / "vg", out["vg"], tiny,
            VGOptions(splits_json=str(root / "src" / "vg" / "vg_splits.json"), min_object_instances=2,
                      min_relationship_instances=2), **quiet)
    convert("coco-stuff", root / "src" / "coco", out["coco"], tiny, CocoOptions(val_images=1), **quiet)
    convert("action-genome", root / "src" / "ag", out["ag"], CommonOptions(size="tiny", frames=2),
            AGOptions(val_fraction=0.5), **quiet)
    convert("folder", root / "src" / "folder", out["folder"], CommonOptions(size="tiny", frames=4),
            FolderOptions(), **quiet)
    stills = root / "src" / "stills"
    graphs = [{"objects": ["cup", "table"], "relationships": [[0, "on", 1]],
               "layout": {"0": [0.25, 0.25, 0.5, 0.5], "1": [0.0, 0.5, 1.0, 1.0]}},
              {"objects": ["lamp", "table", "cup"], "relationships": [[0, "on", 1], [2, "on", 1]],
               "layout": {"0": [0.0, 0.0, 0.25, 0.5], "2": [0.5, 0.25, 0.75, 0.5]}},
              {"objects": ["robot arm", "cup"], "relationships": [[0, "holding", 1]]}]
    for i, g in enumerate(graphs):
        solid(stills / f"still{i}.png", 32, 32, 80 + i, "PNG")
        (stills / f"still{i}.json").write_text(json.dumps(g), encoding="utf-8")
    convert("folder", stills, out["stills"], CommonOptions(size="tiny", frames=4),
            FolderOptions(vocab=str(out["folder"] / "vocab.json"), val_fraction=0.0, test_fraction=0.0),
            **quiet)
    return out
