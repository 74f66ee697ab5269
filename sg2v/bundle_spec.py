"""The bundle layout shared by the exporter and the runtime (torch-free): names, file names, stage I/O.

docs/ARCHITECTURE.md ("Bundle") is the contract; this module is its one copy in code, so `sg2v.export` writes
and `sg2v.runtime` reads the same names. Shapes depend only on the model's `DataConfig`/`EncoderConfig`.
"""

from __future__ import annotations

from typing import Any

from sg2v.config import DataConfig, EncoderConfig
from sg2v.graph import GRAPH_TENSORS

FORMAT = "sg2v-bundle"
FORMAT_VERSION = 2  # bump on an incompatible change of the layout or the manifest keys
# Format 1: fixed batch, the encoder at 1 graph and the UNet at 2 rows (one video per call). Format 2: a
# batch axis (dim 0 of every stage input and output, named BATCH_DIM / UNET_BATCH_DIM in the graphs and the
# manifest) from 1 to `shapes.max_batch` videos; the UNet takes 2 rows per video: the B conditional rows,
# then the B unconditional ones.

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

ENCODER_INPUTS = GRAPH_TENSORS
ENCODER_OUTPUTS = ("context", "context_mask")
UNET_INPUTS = ("x", "t", "context", "context_mask")
UNET_OUTPUTS = ("v",)

ENCODER_BATCH = 1  # format 1's fixed batches
UNET_BATCH = 2  # classifier-free guidance: (cond, uncond) as one batch
BATCH_DIM = "batch"  # format 2: videos per call, 1 .. max_batch
UNET_BATCH_DIM = "unet_batch"  # format 2: 2 x batch rows (cond rows, then uncond rows)
MAX_BATCH = 32  # the exporter's default max_batch
MAX_BATCH_LIMIT = 4096  # a manifest asking for more is refused before anything is allocated

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


def shapes(data: DataConfig, encoder: EncoderConfig, max_batch: int | None = MAX_BATCH) -> dict[str, int]:
    """The manifest's `shapes` entry from a model's `DataConfig` and `EncoderConfig`: format 2 with a batch
    axis up to `max_batch` videos, or format 1's fixed batches with `max_batch=None`."""
    out = {
        "frames": int(data.frames),
        "height": int(data.height),
        "width": int(data.width),
        "channels": int(data.channels),
        "max_objects": int(data.max_objects),
        "max_relationships": int(data.max_relationships),
        "padded_objects": data.padded_objects,
        "padded_triples": data.padded_triples,
        "context_tokens": data.context_tokens,
        "context_dim": int(encoder.context_dim),
    }
    if max_batch is None:
        return {**out, "unet_batch": UNET_BATCH, "encoder_batch": ENCODER_BATCH}
    return {**out, "max_batch": int(max_batch)}


def max_batch(s: dict[str, Any]) -> int:
    """Videos one stage call takes at most: `max_batch` (format 2), or 1 (format 1's fixed batch)."""
    return int(s.get("max_batch", ENCODER_BATCH))


def stage_io(s: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Each stage's inputs and outputs (`name`, `dtype`, `shape`) for the `shapes` entry `s`; dim 0 is the
    batch: a name (format 2) or a fixed size (format 1)."""
    dynamic = "max_batch" in s
    b = BATCH_DIM if dynamic else s["encoder_batch"]
    n = UNET_BATCH_DIM if dynamic else s["unet_batch"]
    o, t = s["padded_objects"], s["padded_triples"]
    f, c, h, w = s["frames"], s["channels"], s["height"], s["width"]
    length, d = s["context_tokens"], s["context_dim"]

    def io(name: str, dtype: str, shape: list[Any]) -> dict[str, Any]:
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
