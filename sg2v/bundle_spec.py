"""The bundle layout shared by the exporter and the runtime (torch-free): names, file names, stage I/O.

docs/ARCHITECTURE.md ("Bundle") is the contract; this module is its one copy in code, so `sg2v.export` writes
and `sg2v.runtime` reads the same names. Shapes depend only on the model's `DataConfig`/`EncoderConfig`.
"""

from __future__ import annotations

from typing import Any

FORMAT = "sg2v-bundle"
FORMAT_VERSION = 1  # bump on an incompatible change of the layout or the manifest keys

MANIFEST = "manifest.json"
ENCODER_ONNX = "encoder.onnx"
UNET_ONNX = "unet.onnx"
NULL_CONTEXT = "null_context.npy"  # float32 (1, L, D)
NULL_CONTEXT_MASK = "null_context_mask.npy"  # float32 (1, L)
ENCODER_WEIGHTS = "encoder_weights.npz"  # SGEncoder state dict, float32
MODEL_WEIGHTS = "model.safetensors"  # optional: SG2V state dict for the torch reference backend
ENGINES_DIR = "engines"  # engines/<fingerprint>/: TensorRT plans + timing cache

ENCODER_STAGE = "encoder"
UNET_STAGE = "unet"
STAGE_FILES = {ENCODER_STAGE: ENCODER_ONNX, UNET_STAGE: UNET_ONNX}

ENCODER_INPUTS = ("objs", "obj_mask", "triples", "triple_mask")
ENCODER_OUTPUTS = ("context", "context_mask")
UNET_INPUTS = ("x", "t", "context", "context_mask")
UNET_OUTPUTS = ("v",)

ENCODER_BATCH = 1
UNET_BATCH = 2  # classifier-free guidance: (cond, uncond) as one batch

PRECISIONS = ("fp32", "fp16")
POOLINGS = ("portable", "plugin")
PLUGIN_DOMAIN = "sg2v"
PLUGIN_OP = "ScatterMeanPool"  # attribute num_segments; contract in docs/ARCHITECTURE.md ("ScatterMeanPool")
PLUGIN_VERSION = "1"  # the version TensorRT's Python plugin API registers every plugin under

MANIFEST_KEYS = (
    "format", "format_version", "model_config", "vocab", "schedule", "sampler_defaults", "shapes",
    "precision", "pooling", "opset", "stages", "files", "exported_by", "parity", "trt_op_check",
    "source_checkpoint",
)


def shapes(data: Any, encoder: Any) -> dict[str, int]:
    """The manifest's `shapes` entry from a `DataConfig` and an `EncoderConfig` (or their dicts)."""
    get = (lambda o, k: o[k]) if isinstance(data, dict) else getattr
    max_objects = int(get(data, "max_objects"))
    max_relationships = int(get(data, "max_relationships"))
    padded_objects = max_objects + 1
    padded_triples = max_relationships + max_objects
    return {
        "frames": int(get(data, "frames")),
        "height": int(get(data, "height")),
        "width": int(get(data, "width")),
        "channels": int(get(data, "channels")),
        "max_objects": max_objects,
        "max_relationships": max_relationships,
        "padded_objects": padded_objects,
        "padded_triples": padded_triples,
        "context_tokens": 1 + padded_triples,
        "context_dim": int(get(encoder, "context_dim")),
        "unet_batch": UNET_BATCH,
        "encoder_batch": ENCODER_BATCH,
    }


def stage_io(s: dict[str, int]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Each stage's inputs and outputs (`name`, `dtype`, `shape`) for the `shapes` entry `s`."""
    b, o, t = s["encoder_batch"], s["padded_objects"], s["padded_triples"]
    n, f, c, h, w = s["unet_batch"], s["frames"], s["channels"], s["height"], s["width"]
    length, d = s["context_tokens"], s["context_dim"]

    def io(name: str, dtype: str, shape: list[int]) -> dict[str, Any]:
        return {"name": name, "dtype": dtype, "shape": shape}

    return {
        ENCODER_STAGE: {
            "inputs": [io("objs", "int64", [b, o]), io("obj_mask", "float32", [b, o]),
                       io("triples", "int64", [b, t, 3]), io("triple_mask", "float32", [b, t])],
            "outputs": [io("context", "float32", [b, length, d]), io("context_mask", "float32", [b, length])],
        },
        UNET_STAGE: {
            "inputs": [io("x", "float32", [n, f, c, h, w]), io("t", "float32", [n]),
                       io("context", "float32", [n, length, d]), io("context_mask", "float32", [n, length])],
            "outputs": [io("v", "float32", [n, f, c, h, w])],
        },
    }


def engine_fingerprint(gpu_name: str, compute_capability: tuple[int, int] | str, trt_version: str,
                       precision: str) -> str:
    """`gpu-name_sm<cc>_trt<ver>_<precision>`, the engines/ subfolder name (filesystem-safe)."""
    if isinstance(compute_capability, str):
        cc = compute_capability.replace(".", "")
    else:
        cc = f"{compute_capability[0]}{compute_capability[1]}"
    gpu = "".join(ch if ch.isalnum() else "-" for ch in gpu_name.strip().lower()).strip("-")
    while "--" in gpu:
        gpu = gpu.replace("--", "-")
    return f"{gpu}_sm{cc}_trt{trt_version}_{precision}"
