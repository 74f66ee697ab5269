"""The bundle layout shared by the exporter and the runtime (torch-free): names, file names, stage I/O.

docs/ARCHITECTURE.md ("Bundle") is the contract; this module is its one copy in code, so `sg2v.export` writes
and `sg2v.runtime` reads the same names. Shapes depend only on the model's `DataConfig`/`EncoderConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sg2v.config import DataConfig, EncoderConfig
from sg2v.graph import GRAPH_TENSORS

if TYPE_CHECKING:
    from sg2v.kinds import Grounding, Guidance

FORMAT = "sg2v-bundle"
FORMAT_VERSION = 4  # bump on an incompatible change of the layout or the manifest keys
# Format 1: fixed batch, the encoder at 1 graph and the UNet at 2 rows (one video per call). Format 2: a
# batch axis (dim 0 of every stage input and output, named BATCH_DIM / UNET_BATCH_DIM in the graphs and the
# manifest) from 1 to `shapes.max_batch` videos; the UNet takes 2 rows per video: the B conditional rows,
# then the B unconditional ones. Format 3: a layout-grounded model: a third stage (the layout network), the
# encoder also outputs the object vectors and the UNet also takes objects and boxes (`grounded` below).
# Format 4: a guidance-distilled student (grounded or not): its UNet takes one row per video (batch axis
# BATCH_DIM) and the guidance weight (`STUDENT_INPUT`), and the manifest's "student" entry says how it may
# be sampled; a reader that does not know students refuses it (a newer format) rather than run it with CFG.
# The exporter writes the lowest format that describes the model, so older readers keep reading the rest.
READABLE_VERSIONS = (1, 2, 3, 4)
UNGROUNDED_FORMAT_VERSION = 2  # what the exporter writes for a model without a layout stage
GROUNDED_FORMAT_VERSION = 3  # a layout-grounded teacher
STUDENT_FORMAT_VERSION = 4  # a guidance-distilled student

MANIFEST = "manifest.json"
ENCODER_ONNX = "encoder.onnx"
UNET_ONNX = "unet.onnx"
LAYOUT_ONNX = "layout.onnx"
NULL_CONTEXT = "null_context.npy"  # float32 (1, L, D)
NULL_CONTEXT_MASK = "null_context_mask.npy"  # float32 (1, L)
ENCODER_WEIGHTS = "encoder_weights.npz"  # SGEncoder state dict, float32
MODEL_WEIGHTS = "model.safetensors"  # optional: SG2V state dict for the torch reference backend
ENGINES_DIR = "engines"  # engines/<fingerprint>/: TensorRT plans + timing cache

ENCODER_STAGE = "encoder"
UNET_STAGE = "unet"
LAYOUT_STAGE = "layout"
STAGE_FILES = {ENCODER_STAGE: ENCODER_ONNX, UNET_STAGE: UNET_ONNX}  # an ungrounded bundle's stages
GROUNDED_STAGE_FILES = {ENCODER_STAGE: ENCODER_ONNX, LAYOUT_STAGE: LAYOUT_ONNX, UNET_STAGE: UNET_ONNX}

ENCODER_INPUTS = GRAPH_TENSORS
ENCODER_OUTPUTS = ("context", "context_mask")
UNET_INPUTS = ("x", "t", "context", "context_mask")
UNET_OUTPUTS = ("v",)
# Layout-grounded models (format 3): the encoder's object vectors (B, O, object_dim) feed the layout stage and
# the UNet; boxes (B, O, F, 4) are [x0, y0, x1, y1] in [0, 1], all zero for padded slots, `__image__` and the
# unconditional rows.
GROUNDED_ENCODER_OUTPUTS = ("context", "context_mask", "objects")
GROUNDED_UNET_INPUTS = ("x", "t", "context", "context_mask", "objects", "boxes")
LAYOUT_INPUTS = ("x", "t", "objects", "track_mask", "context", "context_mask", "triples", "known",
                 "known_mask")
LAYOUT_OUTPUTS = ("v",)
LAYOUT_BATCH_DIM = "layout_batch"  # candidate layouts per call, 1 .. shapes.max_layout_batch
# A guidance-distilled student's UNet runs once per video (batch B, no unconditional rows) and takes the
# guidance weight per video; its manifest's "student" entry says how it may be sampled.
STUDENT_INPUT = "guidance"

ENCODER_BATCH = 1  # format 1's fixed batches
UNET_BATCH = 2  # classifier-free guidance: (cond, uncond) as one batch
BATCH_DIM = "batch"  # format 2: videos per call, 1 .. max_batch
UNET_BATCH_DIM = "unet_batch"  # format 2: 2 x batch rows (cond rows, then uncond rows)
MAX_BATCH = 32  # the exporter's default max_batch
MAX_BATCH_LIMIT = 4096  # a manifest asking for more is refused before anything is allocated

# int8: the UNet is an explicit Q/DQ graph (Conv/MatMul inputs int8, the rest float32; the manifest's
# `quantization` entry says how); readers that predate it refuse the bundle by this value.
PRECISIONS = ("fp32", "fp16", "int8")
POOLINGS = ("portable", "plugin")
PLUGIN_DOMAIN = "sg2v"
PLUGIN_OP = "ScatterMeanPool"  # attribute num_segments; contract in docs/ARCHITECTURE.md ("ScatterMeanPool")
PLUGIN_VERSION = "1"  # the version TensorRT's Python plugin API registers every plugin under

MANIFEST_KEYS = (
    "format", "format_version", "model_config", "vocab", "schedule", "sampler_defaults", "shapes",
    "precision", "pooling", "opset", "stages", "files", "exported_by", "parity", "trt_op_check",
    "source_checkpoint",
)
GROUNDED_MANIFEST_KEYS = ("layout",)  # format 3 adds: {steps, tries, per_round, sampler, relation_rules}
# (and optionally geometry)
STUDENT_MANIFEST_KEYS = ("student",)  # format 4 adds: STUDENT_KEYS
STUDENT_KEYS = ("guidance_distilled", "guidance_range", "guidance_rescale", "grid_steps", "steps", "sampler",
                "method")
MAX_STUDENT_STEP_COUNTS = 64  # entries of the "student" entry's `steps` a reader accepts


def is_student(s: Mapping[str, Any]) -> bool:
    """Whether a `shapes` entry describes a guidance-distilled student (UNet batch B, a guidance input)."""
    return bool(s.get("student", False))


def student_entry(distill: Any, num_train: int) -> dict[str, Any]:
    """The manifest's `student` entry from a `DistillConfig`: what the student was distilled for."""
    grid = int(distill.grid_steps)
    return {"guidance_distilled": True, "guidance_range": [float(distill.guidance_min),
                                                           float(distill.guidance_max)],
            "guidance_rescale": float(distill.guidance_rescale), "grid_steps": grid,
            "steps": [n for n in range(1, grid + 1) if grid % n == 0 and num_train % n == 0],
            "sampler": "ddim", "method": "consistency distillation"}


def on_grid(num_train: int, grid_steps: int, steps: int) -> bool:
    """Whether every trailing timestep of `steps` sampler steps is one of the `grid_steps` trailing timesteps
    a consistency student was distilled on (its DDIM jumps then land where it learned to be consistent)."""
    from sg2v.schedule import timesteps

    return set(timesteps(num_train, steps).tolist()) <= set(timesteps(num_train, grid_steps).tolist())


def grounded(s: Mapping[str, Any]) -> bool:
    """Whether a `shapes` entry describes a layout-grounded model (a layout stage, objects and boxes)."""
    return "object_dim" in s


def _kinds(s: dict[str, Any] | None) -> tuple[Guidance, Grounding]:
    """The `sg2v.kinds` guidance and grounding of a `shapes` entry `s` (None: a format-2 teacher)."""
    from sg2v.kinds import UNGROUNDED, grounding_of, guidance_of

    return guidance_of(s), UNGROUNDED if s is None else grounding_of(s)


def stage_files(s: dict[str, Any]) -> dict[str, str]:
    """Stage name -> ONNX file of a bundle with `shapes` entry `s`, in the order the loop runs them."""
    return dict(_kinds(s)[1].stage_files)


def encoder_outputs(s: dict[str, Any]) -> tuple[str, ...]:
    return _kinds(s)[1].encoder_outputs


def unet_inputs(s: dict[str, Any]) -> tuple[str, ...]:
    guidance, grounding = _kinds(s)
    return (*grounding.unet_inputs, *guidance.unet_extra_inputs)


def format_version(s: dict[str, Any]) -> int:
    """The format version the exporter writes for a bundle with `shapes` entry `s`: 4 for a student, 3 for
    a grounded teacher, else 2."""
    guidance, grounding = _kinds(s)
    return guidance.format_version or grounding.format_version


def stage_names(s: dict[str, Any]) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Stage -> (input names, output names) in graph order, for a bundle with `shapes` entry `s`."""
    out = {ENCODER_STAGE: (ENCODER_INPUTS, encoder_outputs(s)), LAYOUT_STAGE: (LAYOUT_INPUTS, LAYOUT_OUTPUTS),
           UNET_STAGE: (unet_inputs(s), UNET_OUTPUTS)}
    return {name: out[name] for name in stage_files(s)}


def batch_dim(stage: str, s: dict[str, Any] | None = None) -> str:
    """The name of a stage's batch axis (dim 0 of each of its inputs and outputs) in format 2 and later,
    for a bundle with `shapes` entry `s` (a student's UNet has one row per video: BATCH_DIM)."""
    dims: dict[str, str] = {ENCODER_STAGE: BATCH_DIM, UNET_STAGE: _kinds(s)[0].unet_batch_dim(),
                            LAYOUT_STAGE: LAYOUT_BATCH_DIM}
    return dims[stage]


def rows_per_video(stage: str, s: dict[str, Any] | None = None) -> int:
    """Rows of a stage's batch axis per video: 1 graph, 2 UNet rows (cond, uncond; 1 for a student, whose
    `shapes` entry `s` says so), LAYOUT_PER_ROUND candidate layouts (the layout stage's most for one graph in
    one call when it draws a full round)."""
    return {ENCODER_STAGE: 1, UNET_STAGE: _kinds(s)[0].rows_per_video, LAYOUT_STAGE: LAYOUT_PER_ROUND}[stage]


def layout_defaults(layout: Any, relation_rules: dict[str, str], geometry: Any = None) -> dict[str, Any]:
    """The manifest's `layout` entry from a `LayoutConfig`, the vocabulary's rule table and the data's
    geometric constraints (a `sg2v.geometry.Geometry`; None: the entry has no `geometry`)."""
    out = {"steps": int(layout.default_steps), "tries": int(layout.default_tries),
           "per_round": int(min(layout.default_tries, LAYOUT_DEFAULT_PER_ROUND)), "sampler": LAYOUT_SAMPLER,
           "relation_rules": dict(sorted(relation_rules.items()))}
    if geometry is not None:
        from sg2v.geometry import to_entry

        out[LAYOUT_GEOMETRY] = to_entry(geometry)
    return out


LAYOUT_PER_ROUND = 8  # candidate layouts per graph one layout-stage call takes at most (max_layout_batch)
LAYOUT_DEFAULT_PER_ROUND = 2  # candidate layouts drawn per graph per round of the check (the manifest's)
LAYOUT_SAMPLER = "dpmpp2m"
LAYOUT_KEYS = ("steps", "tries", "per_round", "sampler", "relation_rules")  # the manifest's "layout" entry
LAYOUT_GEOMETRY = "geometry"  # optional in "layout": the data's constraints (`sg2v.geometry.to_entry`)
MAX_LAYOUT_STEPS = 1000
MAX_LAYOUT_TRIES = 4096


def shapes(data: DataConfig, encoder: EncoderConfig, max_batch: int | None = MAX_BATCH,
           grounded: bool = False, student: bool = False) -> dict[str, int]:
    """The manifest's `shapes` entry from a model's `DataConfig` and `EncoderConfig`: format 2 with a batch
    axis up to `max_batch` videos, or format 1's fixed batches with `max_batch=None`; a `grounded` model
    (format 3) adds the object width and the layout stage's largest batch, a guidance-distilled `student`
    (format 4) `"student": true`."""
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
    from sg2v.kinds import grounding_for, guidance_for

    out["max_batch"] = int(max_batch)
    out.update(grounding_for(grounded).shapes_entry(encoder, max_batch))
    return {**out, **guidance_for(student).shapes_entry()}


def max_batch(s: dict[str, Any]) -> int:
    """Videos one stage call takes at most: `max_batch` (format 2), or 1 (format 1's fixed batch)."""
    return int(s.get("max_batch", ENCODER_BATCH))


def stage_io(s: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Each stage's inputs and outputs (`name`, `dtype`, `shape`) for the `shapes` entry `s`; dim 0 is the
    batch: a name (format 2) or a fixed size (format 1)."""
    guidance, grounding = _kinds(s)
    b = BATCH_DIM if "max_batch" in s else s["encoder_batch"]
    n = guidance.unet_batch_dim(s)
    o, t = s["padded_objects"], s["padded_triples"]
    f, c, h, w = s["frames"], s["channels"], s["height"], s["width"]
    length, d = s["context_tokens"], s["context_dim"]
    io = io_entry
    out = {
        ENCODER_STAGE: {
            "inputs": [io("objs", "int64", [b, o]), io("obj_mask", "float32", [b, o]),
                       io("triples", "int64", [b, t, 3]), io("triple_mask", "float32", [b, t])],
            "outputs": [io("context", "float32", [b, length, d]), io("context_mask", "float32", [b, length])],
        },
        UNET_STAGE: {
            "inputs": [io("x", "float32", [n, f, c, h, w]), io("t", "float32", [n]),
                       io("context", "float32", [n, length, d]), io("context_mask", "float32", [n, length]),
                       *guidance.unet_extra_io(n)],
            "outputs": [io("v", "float32", [n, f, c, h, w])],
        },
    }
    return grounding.stage_io(out, s, b, n)


def io_entry(name: str, dtype: str, shape: list[Any]) -> dict[str, Any]:
    """One stage input or output of `stage_io`."""
    return {"name": name, "dtype": dtype, "shape": shape}


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
