"""Checkpoint -> bundle: the encoder, the layout network (grounded models) and the UNet to ONNX, each graph
checked against PyTorch.

Two graphs per bundle, three for a layout-grounded model (docs/ARCHITECTURE.md "ONNX stages"), static but for
a batch axis: the encoder on B graphs, the layout network on K candidate layouts, and the UNet on 2B rows
(CFG's B conditional rows, then the B unconditional ones; a guidance-distilled student's UNet on the B rows
with the guidance weight per row), B from 1 to the manifest's `max_batch` and K to
its `max_layout_batch`. A grounded model's encoder also outputs its object vectors, which the layout network
and the UNet (with the boxes) take. Pooling `portable` is the one-hot MatMul form of `scatter_mean_pool`;
`plugin` puts one `sg2v::ScatterMeanPool` node per graph convolution of the encoder (a custom op with an ONNX
symbolic); the layout network always pools in the one-hot form. fp16 exports convert weights and compute to
float16 inside the graph, with float32 graph I/O (Casts at the boundary) and float32 islands where fp16 would
overflow or lose the signal: GroupNorm, LayerNorm, the token norms and the sinusoidal timestep embeddings; the
softmax of attention is float32 by construction.
Every export checks itself: ONNX checker and shape inference, ONNX Runtime CPU vs PyTorch float32 on fresh
random inputs, and the TensorRT operator check (`sg2v.export.opcheck`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import io
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sg2v import bundle_spec as spec
from sg2v import kinds
from sg2v.config import BOUNDS
from sg2v.errors import Sg2vError
from sg2v.export import bundle_writer
from sg2v.export.opcheck import check_model, format_report
from sg2v.io import sha256_file
from sg2v.kinds import CONDITIONING, grounding_for, guidance_for, kinds_of_config
from sg2v.models.backend import UNetCall

MAX_LAYOUT_TRIES = BOUNDS["LayoutConfig.default_tries"][1]  # what a model config may declare
OPSET_RANGE = (17, 20)  # 17: native LayerNormalization; 20: the newest opset TensorRT 10.3 parses
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}  # max error relative to the reference's largest magnitude
PARITY_TRIALS = 3
REL_ERR = "max |onnx - torch| / max |torch| per output, worst over outputs and trials"
PLUGIN_IMPLS = ("aot", "jit")  # sg2v::ScatterMeanPool: ahead-of-time PTX in the engine, or Python per enqueue
# The first TensorRT each plugin form builds on (tensorrt.plugin in 10.6, aot_impl in 10.9): the op check's
# default target for plugin bundles.
PLUGIN_TRT_TARGET = {"aot": "10.9", "jit": "10.6"}


class ExportError(Sg2vError):
    """An export that cannot be made or fails its own checks (parity, strict TensorRT op check)."""


@dataclass
class ExportResult:
    """What `export_bundle` wrote: the bundle folder, its manifest, and which stages came from the cache."""

    path: Path
    manifest: dict[str, Any]
    reused: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------- fp16 islands

class _Float32Island(nn.Module):
    """Run `module` in float32 inside a float16 graph (upcast in, downcast out)."""

    def __init__(self, module: nn.Module, out_dtype: torch.dtype):
        super().__init__()
        self.inner = module.float()
        if hasattr(module, "ort_fusable"):  # TokenNorm: keep ONNX Runtime's LayerNorm fusion off the Cast
            module.ort_fusable = False
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(self.out_dtype)


def _island_types() -> tuple[type, ...]:
    from sg2v.models import unet

    types: list[type] = [nn.GroupNorm, nn.LayerNorm]
    # The UNet's own float32 pieces: LayerNorm written as reductions, and the sin/cos of a timestep up to
    # ~1000 (fp16 has 0.5 resolution there, so the embedding would be wrong at every timestep).
    types += [getattr(unet, name) for name in ("TokenNorm", "SinusoidalEmbedding") if hasattr(unet, name)]
    return tuple(types)


def to_half(module: nn.Module) -> nn.Module:
    """A float16 copy of `module` whose normalisations and timestep embedding run in float32."""
    islands = _island_types()
    half = copy.deepcopy(module)

    def swap(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, islands):
                setattr(parent, name, _Float32Island(child, torch.float16))
            else:
                swap(child)

    swap(half)
    islands_ = [m for m in half.modules() if isinstance(m, _Float32Island)]
    kept = {id(m) for island in islands_ for m in island.modules()}
    for m in half.modules():
        if id(m) in kept:
            continue
        for p in m.parameters(recurse=False):
            p.data = p.data.half()
        for name, b in list(m.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point():
                setattr(m, name, b.half())
    return half


# ------------------------------------------------------------------------------------------- stage modules

class EncoderGraph(nn.Module):
    """The encoder stage: float32 masks in, float32 context (and, `grounded`, object vectors) out, compute in
    the export precision."""

    def __init__(self, encoder: nn.Module, precision: str, grounded: bool = False):
        super().__init__()
        self.encoder = to_half(encoder) if precision == "fp16" else encoder
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.call = grounding_for(grounded).encoder_call  # the encoder method giving the stage's outputs

    def forward(self, objs, obj_mask, triples, triple_mask):
        obj_mask, triple_mask = obj_mask.to(self.dtype), triple_mask.to(self.dtype)
        out = getattr(self.encoder, self.call)(objs, obj_mask, triples, triple_mask)
        return tuple(o.float() for o in out)  # (B, L, D), (B, L)[, (B, O, d)]


class LayoutGraph(nn.Module):
    """The layout stage: float32 tracks and conditioning in, float32 v out; t stays float32 throughout."""

    def __init__(self, layout_net: nn.Module, precision: str):
        super().__init__()
        self.net = to_half(layout_net) if precision == "fp16" else layout_net
        self.dtype = torch.float16 if precision == "fp16" else torch.float32

    def forward(self, x, t, objects, track_mask, context, context_mask, triples, known, known_mask):
        d = self.dtype
        v = self.net(x.to(d), t, objects.to(d), track_mask.to(d), context.to(d), context_mask.to(d), triples,
                     known.to(d), known_mask.to(d))
        return v.float()  # (K, O, F, 4)


class UNetGraph(nn.Module):
    """The UNet stage: float32 x/t/context (and a grounded UNet's objects and boxes, a student's guidance)
    in, float32 v out; the timestep and the guidance weight stay float32 throughout."""

    def __init__(self, unet: nn.Module, precision: str):
        super().__init__()
        self.unet = to_half(unet) if precision == "fp16" else unet
        self.dtype = torch.float16 if precision == "fp16" else torch.float32

    def forward(self, x, t, context, context_mask, objects=None, boxes=None, guidance=None):
        d = self.dtype
        layout = () if objects is None else (objects.to(d), boxes.to(d))  # (N, O, d), (N, O, F, 4)
        v = self.unet(x.to(d), t, context.to(d), context_mask.to(d), *layout, guidance=guidance)  # (N,)
        return v.float()  # (N, F, C, H, W)


class StudentUNetGraph(UNetGraph):
    """The UNet stage of a guidance-distilled student without a layout: (x, t, context, context_mask,
    guidance), the stage's input order."""

    def forward(self, x, t, context, context_mask, guidance):
        return super().forward(x, t, context, context_mask, guidance=guidance)


UNET_GRAPHS = {(*spec.UNET_INPUTS, spec.STUDENT_INPUT): StudentUNetGraph}  # by input names; else UNetGraph


def unet_graph(unet: nn.Module, precision: str, grounded: bool, student: bool) -> UNetGraph:
    """The UNet stage module whose positional inputs are `bundle_spec.unet_inputs` of such a model."""
    names = (*grounding_for(grounded).unet_inputs, *guidance_for(student).unet_extra_inputs)
    return UNET_GRAPHS.get(names, UNetGraph)(unet, precision)


# The plugin form: a custom op that computes the real pooling in eager mode (so tracing sees true values) and
# exports as one `sg2v::ScatterMeanPool` node. Registered once, under a namespace only the exporter uses.
@torch.library.custom_op("sg2v_export::scatter_mean_pool", mutates_args=())
def _scatter_mean_pool_op(values: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                          num_segments: int, aot: int) -> torch.Tensor:
    from sg2v.models.pooling import scatter_mean_pool

    return scatter_mean_pool(values, index, mask, num_segments, form="scatter")


@_scatter_mean_pool_op.register_fake
def _(values, index, mask, num_segments, aot):
    return values.new_empty(values.shape[0], num_segments, values.shape[2])


def plugin_node_attributes(num_segments: int, impl: str) -> dict[str, Any]:
    """The `sg2v::ScatterMeanPool` node's attributes (runtime/trt_plugin.py says why each is there)."""
    if impl not in PLUGIN_IMPLS:
        raise ExportError(f"--plugin-impl {impl!r}: choose one of {list(PLUGIN_IMPLS)}")
    return {"num_segments": int(num_segments), "plugin_namespace": spec.PLUGIN_DOMAIN,
            "plugin_version": spec.PLUGIN_VERSION, "aot": int(impl == "aot")}


@torch.onnx.symbolic_helper.parse_args("v", "v", "v", "i", "i")
def _scatter_mean_pool_symbolic(g, values, index, mask, num_segments, aot):
    attrs = plugin_node_attributes(num_segments, "aot" if aot else "jit")
    out = g.op(f"{spec.PLUGIN_DOMAIN}::{spec.PLUGIN_OP}", values, index, mask,
               num_segments_i=attrs["num_segments"], plugin_namespace_s=attrs["plugin_namespace"],
               plugin_version_s=attrs["plugin_version"], aot_i=attrs["aot"])
    sizes = values.type().varyingSizes()  # (B, N, D), B None on the batch axis
    out.setType(values.type().with_sizes([sizes[0], num_segments, sizes[2]]))  # (B, O, D)
    return out


torch.onnx.register_custom_op_symbolic("sg2v_export::scatter_mean_pool", _scatter_mean_pool_symbolic,
                                       OPSET_RANGE[0])


def _plugin_pool(values: torch.Tensor, index: torch.Tensor, mask: torch.Tensor, num_segments: int,
                 form: str = "plugin", aot: bool = True) -> torch.Tensor:
    """`sg2v::ScatterMeanPool` as one ONNX node (contract: ARCHITECTURE.md "ScatterMeanPool")."""
    return torch.ops.sg2v_export.scatter_mean_pool(values, index, mask, int(num_segments), int(aot))


@contextlib.contextmanager
def _pooling(encoder: nn.Module, pooling: str, plugin_impl: str = "aot") -> Any:
    """Switch the encoder's pooling for export: the one-hot MatMul form, or the plugin node.

    The plugin form swaps `sg2v.models.encoder.scatter_mean_pool` process-wide while the graph is traced (the
    encoder has no hook for a third form); the original is restored on exit, even on error.
    """
    import sg2v.models.encoder as encoder_module

    previous_form = encoder.pooling_form
    encoder.set_pooling_form("onehot")
    original = encoder_module.scatter_mean_pool
    if pooling == "plugin":
        encoder_module.scatter_mean_pool = functools.partial(_plugin_pool, aot=plugin_impl == "aot")
    try:
        yield
    finally:
        encoder_module.scatter_mean_pool = original
        encoder.pooling_form = previous_form


# ------------------------------------------------------------------------------------------------- inputs

def random_graph_feeds(vocab: Any, data: Any, rng: np.random.Generator,
                       trials: int) -> list[dict[str, np.ndarray]]:
    """Encoder feeds (batch 1) of real graphs: full, one object, random sizes; random names from `vocab`."""
    from sg2v.graph import pad_graphs, parse_graph

    names, preds = list(vocab.object_names), list(vocab.pred_names)
    feeds = []
    for i in range(trials):
        if i == 0:
            n, r = data.max_objects, data.max_relationships
        elif i == 1:
            n, r = 1, 0
        else:
            n = int(rng.integers(1, data.max_objects + 1))
            r = int(rng.integers(0, data.max_relationships + 1)) if n > 1 else 0
        # Distinct (subject, predicate, object) triples between two different objects, as the format demands.
        candidates = [(s, p, o) for s in range(n) for o in range(n) if s != o for p in preds]
        picks = rng.choice(len(candidates), size=min(r, len(candidates)), replace=False)
        rels = [[int(candidates[k][0]), str(candidates[k][1]), int(candidates[k][2])] for k in picks]
        graph = {"objects": [str(x) for x in rng.choice(names, size=n)], "relationships": rels}
        g = parse_graph(graph, vocab, data.max_objects, data.max_relationships)
        feeds.append(pad_graphs([g], data.max_objects, data.max_relationships).as_feeds())
    return feeds


def batched_feeds(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feed dict of several, stacked along the batch axis (dim 0)."""
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def _encode(model: nn.Module, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's encoder (scatter pooling, float32) on encoder feeds: context, context_mask and, for a
    grounded model, objects."""
    args = [torch.from_numpy(feeds[k]) for k in spec.ENCODER_INPUTS]
    with torch.no_grad():
        if model.layout_net is not None:
            out = model.encoder.encode_all(*args)
            names = spec.GROUNDED_ENCODER_OUTPUTS
        else:
            out = model.encoder(*args)
            names = spec.ENCODER_OUTPUTS
    return {name: v.float().numpy() for name, v in zip(names, out)}


def user_objects(obj_mask: np.ndarray) -> np.ndarray:
    """(B, O) 1 where a slot holds one of the graph's own objects: the real slots but the last, which is
    `__image__` (`sg2v.graph.pad_graphs`)."""
    real = (np.asarray(obj_mask) != 0).astype(np.float32)  # (B, O)
    count = real.sum(1).astype(np.int64)  # (B,): n user objects + __image__
    return (np.arange(real.shape[1])[None, :] < (count - 1)[:, None]).astype(np.float32)


def random_tracks(rng: np.random.Generator, shape: tuple[int, ...], frames: int) -> np.ndarray:
    """Random valid tracks (*shape, F, 4) in [0, 1]: each box 5-60% of the frame per side, anywhere."""
    size = rng.uniform(0.05, 0.6, size=(*shape, frames, 2))
    lo = rng.uniform(0.0, 1.0, size=(*shape, frames, 2)) * (1.0 - size)
    return np.concatenate([lo, lo + size], axis=-1).astype(np.float32)  # [x0, y0, x1, y1]


def _unet_feeds(model: nn.Module, enc_feeds: list[dict[str, np.ndarray]], cfg: Any,
                rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """UNet feeds per encoder feed of B graphs, in the rows the model's guidance lays out (`Guidance.fill`,
    as the loop feeds them): random x and t per row, context = the encoder on the graphs (then, with CFG, B
    learned null contexts); a grounded model's objects are the encoder's with random tracks for the graphs'
    own objects in the conditional rows (zeros in unconditional ones); the guidance's extra inputs random
    (`Guidance.random_extra_inputs`: a student's weight per row in its distilled range)."""
    d = cfg.data
    guidance = kinds_of_config(cfg)[0]
    null = guidance.unconditional(model.null_context_arrays(), np)
    out = []
    for feeds in enc_feeds:
        enc = _encode(model, feeds)
        b = enc["context"].shape[0]
        rows = guidance.rows_per_video * b
        row = {"x": rng.standard_normal((rows, d.frames, d.channels, d.height, d.width)).astype(np.float32),
               "t": rng.integers(0, cfg.diffusion.num_train_timesteps, size=rows).astype(np.float32)}
        cond = {name: enc[name] for name in CONDITIONING}
        if "objects" in enc:
            o = enc["objects"].shape[1]
            boxes = random_tracks(rng, (b, o), d.frames) * user_objects(feeds["obj_mask"])[..., None, None]
            cond.update(objects=enc["objects"], boxes=boxes)
        row.update({name: np.empty((rows, *v.shape[1:]), np.float32) for name, v in cond.items()})
        guidance.fill(row, cond, null, b)
        row.update(guidance.random_extra_inputs(rng, b))
        out.append(row)
    return out


def _layout_feeds(model: nn.Module, enc_feeds: list[dict[str, np.ndarray]], cfg: Any,
                  rng: np.random.Generator, per_graph: int = 2) -> list[dict[str, np.ndarray]]:
    """Layout-stage feeds per encoder feed of B graphs: `per_graph` candidate rows each, random noisy tracks
    x and timesteps, the encoder's object vectors and context on the graph, random pinned tracks (each of the
    graph's objects pinned with probability 1/2)."""
    f = cfg.data.frames
    out = []
    for feeds in enc_feeds:
        enc = _encode(model, feeds)
        rows = np.repeat(np.arange(enc["context"].shape[0]), per_graph)  # (K,): the graph of each row
        k, o = len(rows), enc["objects"].shape[1]
        track_mask = user_objects(feeds["obj_mask"])[rows]  # (K, O)
        known_mask = track_mask * (rng.random((k, o)) < 0.5)
        known = (2.0 * random_tracks(rng, (k, o), f) - 1.0) * known_mask[..., None, None]
        out.append({"x": rng.standard_normal((k, o, f, 4)).astype(np.float32),
                    "t": rng.integers(0, cfg.diffusion.num_train_timesteps, size=k).astype(np.float32),
                    "objects": enc["objects"][rows], "track_mask": track_mask.astype(np.float32),
                    "context": enc["context"][rows], "context_mask": enc["context_mask"][rows],
                    "triples": feeds["triples"][rows], "known": known.astype(np.float32),
                    "known_mask": known_mask.astype(np.float32)})
    return out


# ------------------------------------------------------------------------------------------------- export

def export_onnx(module: nn.Module, args: tuple, input_names: tuple[str, ...], output_names: tuple[str, ...],
                opset: int, plugin: bool = False, batch_dim: str | None = None) -> Any:
    """One graph as a self-contained `onnx.ModelProto` (weights inside, no external data), static but for
    dim 0 of every input and output, named `batch_dim` when given.

    TorchScript-based exporter (`dynamo=False`), present in torch 2.11 - 2.13: it emits the requested opset
    natively, while the torch.export-based exporter builds opset 18 and cannot convert the UNet's ReduceMean
    down to 17, and takes about three times as long on these models.
    """
    import onnx

    buf, log = io.BytesIO(), io.StringIO()
    with torch.no_grad(), contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = module.eval()(*args)
        torch.onnx.export(
            module, args, buf, dynamo=False, opset_version=opset, input_names=list(input_names),
            output_names=list(output_names), do_constant_folding=True,
            custom_opsets={spec.PLUGIN_DOMAIN: 1} if plugin else None,
            dynamic_axes={n: {0: batch_dim} for n in (*input_names, *output_names)} if batch_dim else None,
        )
    model = onnx.load_from_string(buf.getvalue())
    _pin_output_dims(model, traced if isinstance(traced, tuple) else (traced,), batch_dim)
    _check_graph(model, input_names, output_names, opset)
    return model


def _pin_output_dims(model: Any, outputs: tuple[torch.Tensor, ...], batch_dim: str | None) -> None:
    """Write the traced outputs' sizes into the graph's output shapes where the exporter left a dimension
    symbolic (it does behind some Casts): every dim but the batch axis is static in a bundle; strict shape
    inference (`_check_graph`) then checks the graph agrees."""
    for value, out in zip(model.graph.output, outputs):
        dims = value.type.tensor_type.shape.dim
        for i, (dim, size) in enumerate(zip(dims, out.shape)):
            if i == 0 and batch_dim:
                continue
            if not dim.HasField("dim_value"):
                dim.dim_value = int(size)


def _check_graph(model: Any, input_names: tuple[str, ...], output_names: tuple[str, ...], opset: int) -> None:
    import onnx

    got_opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if got_opset != opset:
        raise ExportError(f"exported graph has opset {got_opset}, asked for {opset}")
    got_in = tuple(i.name for i in model.graph.input)
    got_out = tuple(o.name for o in model.graph.output)
    if got_in != input_names or got_out != output_names:
        raise ExportError(f"exported graph has I/O {got_in} -> {got_out}, expected {input_names} -> "
                          f"{output_names}; the exporter dropped or renamed a tensor")
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"initializer {init.name} was written as external data; a bundle holds one "
                              "file per stage")
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def io_signature(model: Any) -> dict[str, list[dict[str, Any]]]:
    """Graph inputs and outputs as the manifest writes them (`name`, `dtype`, `shape`)."""
    import onnx

    def entry(v: Any) -> dict[str, Any]:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        return {"name": v.name, "dtype": dtype, "shape": dims}

    g = model.graph
    return {"inputs": [entry(v) for v in g.input], "outputs": [entry(v) for v in g.output]}


def fp32_islands(model: Any) -> list[str]:
    """Softmax and normalisation nodes whose input is not float32 (the fp16 contract says there are none)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    watched = {"Softmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization"}
    return [f"{n.op_type} {n.name}" for n in inferred.graph.node
            if n.op_type in watched and types.get(n.input[0]) != onnx.TensorProto.FLOAT]


WEIGHT_STORAGES = ("fp32", "fp16")
FP16_STORE_MIN_ELEMENTS = 64  # smaller float constants (epsilons, scales, mask bias) stay float32


def round_weights_fp16(model: nn.Module) -> None:
    """Round every floating parameter and buffer of `model` to the nearest float16, in place (kept float32).

    Done before tracing when the bundle stores fp16 weights, so the graph's float32 values are exactly the
    stored float16 ones and parity, quality and the torch reference all describe the weights that ship.
    """
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())


def store_weights_fp16(model: Any, min_elements: int = FP16_STORE_MIN_ELEMENTS) -> int:
    """Store float32 initializers of >= `min_elements` as float16, each behind a Cast back to float32.

    Halves the file; the compute precision is unchanged (ONNX Runtime and TensorRT fold the Cast of a constant
    at load). Values must already be float16-representable (`round_weights_fp16`): a value that is not is
    refused rather than silently rounded. Returns the number of initializers converted.
    """
    import onnx
    from onnx import numpy_helper

    g = model.graph
    casts, kept, converted = [], [], 0
    for init in g.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            kept.append(init)
            continue
        arr = numpy_helper.to_array(init)
        half = arr.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), arr):
            raise ExportError(f"initializer {init.name} is not float16-representable; round the model's "
                              "weights first (round_weights_fp16)")
        stored = f"{init.name}__fp16"
        kept.append(numpy_helper.from_array(half, stored))
        casts.append(onnx.helper.make_node("Cast", [stored], [init.name], name=f"{init.name}__to_fp32",
                                           to=onnx.TensorProto.FLOAT))
        converted += 1
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)  # Casts first: the graph stays topologically sorted
    onnx.checker.check_model(model)
    return converted


# ------------------------------------------------------------------------------------------------- parity

def run_ort(model_bytes: bytes, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Run an ONNX graph on ONNX Runtime's CPU provider for each feed dict."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("the export checks each graph on ONNX Runtime, and none is installed: pip install "
                          "'sg2v[cpu]' (or 'sg2v[gpu]' on NVIDIA GPUs)") from None

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, f))) for f in feeds]


def parity(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]], tolerance: float,
           note: str) -> dict[str, Any]:
    """Worst absolute and relative error over trials and outputs; `ok`: finite and within `tolerance`."""
    max_abs, max_rel, finite = 0.0, 0.0, True
    for g, w in zip(got, want):
        for name, ref in w.items():
            out = np.asarray(g[name], dtype=np.float64)
            ref = np.asarray(ref, dtype=np.float64)
            if out.shape != ref.shape:
                raise ExportError(f"output {name} has shape {out.shape}, PyTorch gives {ref.shape}")
            finite = finite and bool(np.isfinite(out).all())
            err = float(np.max(np.abs(out - ref))) if out.size else 0.0
            scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-12)
            max_abs, max_rel = max(max_abs, err), max(max_rel, err / scale)
    ok = finite and max_rel <= tolerance
    return {"max_abs_err": max_abs, "max_rel_err": max_rel, "tolerance": tolerance, "ok": ok,
            "finite": finite, "trials": len(want), "definition": REL_ERR, "checked": note}


def _torch_outputs(fn: Callable, feeds: list[dict[str, np.ndarray]], names: tuple[str, ...],
                   outputs: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
    res = []
    with torch.no_grad():
        for f in feeds:
            out = fn(*(torch.from_numpy(f[n]) for n in names))
            out = out if isinstance(out, tuple) else (out,)
            res.append({k: v.float().numpy() for k, v in zip(outputs, out)})
    return res


# ------------------------------------------------------------------------------------------------ loading

def load_for_export(ckpt: str | Path, ema: bool) -> tuple[nn.Module, Any, Any, dict[str, Any]]:
    """(SG2V, ModelConfig, Vocab, source_checkpoint entry), float32 on CPU, eval mode, from a checkpoint or
    from a bundle folder exported with --include-weights (its model.safetensors: re-export in this format)."""
    from sg2v.training.checkpoint import load_bundle_model, load_checkpoint, model_from_checkpoint

    path = Path(ckpt)
    if path.is_dir():
        model, cfg, vocab = load_bundle_model(path)
        old = bundle_writer.read_bundle_manifest(path) or {}
        before = old.get("source_checkpoint", {})
        weights = path / spec.MODEL_WEIGHTS
        source = {"sha256": sha256_file(weights), "step": int(before.get("step", 0)),
                  "ema": bool(before.get("ema", False)), "file": f"{path.name}/{spec.MODEL_WEIGHTS}"}
        if isinstance(before.get("sha256"), str):  # the training checkpoint behind the bundle's weights
            source["trained_checkpoint"] = before.get("trained_checkpoint") or {
                k: before[k] for k in ("file", "sha256", "step", "ema") if k in before}
        return model.float().eval(), _bundle_defaults(cfg, old), vocab, source
    loaded = load_checkpoint(path)  # CheckpointError: missing, corrupt, not sg2v, newer format
    model, cfg, vocab, which = model_from_checkpoint(loaded, path, ema)
    source = {"sha256": sha256_file(path), "step": int(loaded.get("step", 0)), "ema": which == "ema",
              "file": path.name}
    return model.float().eval(), cfg, vocab, source


def _bundle_defaults(cfg: Any, manifest: Mapping[str, Any]) -> Any:
    """`cfg` with a re-exported bundle's own defaults, chosen when it was exported (e.g. the student's
    validated step count): its sampler's steps and guidance and its layout check's tries, each where the
    manifest states it as a number the config accepts."""
    def number(entry: Any, key: str) -> Any:
        v = entry.get(key) if isinstance(entry, dict) else None
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    sampler = manifest.get("sampler_defaults")
    steps, guidance = number(sampler, "steps"), number(sampler, "guidance")
    tries = number(manifest.get("layout"), "tries")
    d, lay = cfg.diffusion, cfg.layout
    if isinstance(steps, int) and 1 <= steps <= d.num_train_timesteps:
        d = dataclasses.replace(d, default_steps=steps)
    if guidance is not None:
        d = dataclasses.replace(d, default_guidance=float(guidance))
    if lay.dim and isinstance(tries, int) and 1 <= tries <= MAX_LAYOUT_TRIES:
        lay = dataclasses.replace(lay, default_tries=tries)
    return dataclasses.replace(cfg, diffusion=d, layout=lay)


# ----------------------------------------------------------------------------------------------- the bundle

@functools.cache
def _graph_code_digest() -> str:
    """sha256 (16 hex digits) of the source that shapes the exported graphs (the model modules and this
    exporter), so a graph from an edited model is never kept for the same checkpoint and sg2v version."""
    import hashlib

    import sg2v.models

    h = hashlib.sha256()
    files = sorted(Path(sg2v.models.__file__).parent.glob("*.py")) + [Path(__file__)]
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _cache_key(stage: str, source: dict[str, Any], precision: str, pooling: str,
               opset: int) -> dict[str, Any]:
    versions = bundle_writer.exporting_versions()
    key = {"checkpoint_sha256": source["sha256"], "ema": source["ema"], "precision": precision,
           "graph_code": _graph_code_digest(),
           "opset": opset, "sg2v": versions["sg2v"], "torch": versions["torch"], "onnx": versions["onnx"]}
    if stage == spec.ENCODER_STAGE:
        key["pooling"] = pooling
    return key


def _reusable(old: dict[str, Any] | None, out: Path, stage: str, key: dict[str, Any], tmp: Path) -> bool:
    if old is None:
        return False
    entry = old.get("stages", {}).get(stage, {})
    if not isinstance(entry, dict) or entry.get("cache_key") != key or stage not in old.get("parity", {}):
        return False
    if stage not in old.get("trt_op_check", {}).get("stages", {}):
        return False
    return bundle_writer.reuse_file(out, old, spec.GROUNDED_STAGE_FILES[stage], tmp)


def export_bundle(
    ckpt: str | Path,
    out: str | Path,
    precision: str = "fp32",
    pooling: str = "portable",
    opset: int = 17,
    include_weights: bool = False,
    ema: bool = True,
    strict_trt: bool = False,
    allow_parity_failure: bool = False,
    force: bool = False,
    trt_target: str | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    weights: str = "fp32",
    guidance: float | None = None,
    plugin_impl: str = "aot",
    max_batch: int = spec.MAX_BATCH,
    steps: int | None = None,
    layout_tries: int | None = None,
) -> ExportResult:
    """Export checkpoint `ckpt` to the bundle folder `out` (ARCHITECTURE.md "Bundle"), checking each graph.

    `trt_target` is the TensorRT version the operator check reads the graphs against: 10.3 (JetPack 6) for
    portable pooling, and for plugin pooling the first version with that plugin form (`PLUGIN_TRT_TARGET`).
    The graphs take 1 to `max_batch` videos per call; parity is checked at one video and at several.
    `steps` overrides the config's default sampler step count in `sampler_defaults` (a student's must be one
    it was distilled for), as `guidance` overrides its default guidance; `layout_tries` the layout check's
    most draws per graph (the manifest's `layout.tries`).
    """
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    if precision == "int8":  # the fp32 bundle, then its UNet quantised (export/quantize.py)
        from sg2v.export.quantize import quantize_bundle

        bundle_writer.check_output(out, force=force, reads=[ckpt])
        with tempfile.TemporaryDirectory(prefix="sg2v-fp32-") as tmp:
            fp32 = export_bundle(ckpt, Path(tmp) / "fp32", "fp32", pooling, opset, include_weights, ema,
                                 strict_trt, allow_parity_failure, False, trt_target, seed, log, weights,
                                 guidance, plugin_impl, max_batch, steps, layout_tries)
            result = quantize_bundle(fp32.path, out, seed=seed, force=force, strict_trt=strict_trt,
                                     trt_target=trt_target, log=log)
        result.seconds = time.perf_counter() - t0
        return result
    _check_options(precision, pooling, plugin_impl, opset, weights, guidance, max_batch)
    if trt_target is None:
        trt_target = PLUGIN_TRT_TARGET[plugin_impl] if pooling == "plugin" else "10.3"
    opset, out = int(opset), Path(out)
    old = bundle_writer.check_output(out, force=force, reads=[ckpt])
    model, cfg, vocab, source = load_for_export(ckpt, ema)
    if weights == "fp16":
        round_weights_fp16(model)
    _check_student_guidance(cfg, guidance)
    cfg = _with_layout_tries(_with_default_steps(cfg, steps), layout_tries)
    stage_files = spec.stage_files(_model_shapes(cfg, max_batch))
    feeds = _parity_feeds(model, cfg, vocab, seed, max_batch)
    tol = TOLERANCE[precision]
    parity_report: dict[str, Any] = {}
    op_reports: dict[str, Any] = {}
    stage_extra: dict[str, dict[str, Any]] = {}
    reused: list[str] = []
    with bundle_writer.staging(out) as tmp:
        for stage, file in stage_files.items():
            key = _stage_key(stage, source, precision, pooling, opset, weights, max_batch, plugin_impl)
            stage_extra[stage] = {"cache_key": key}
            kept = _reused_reports(old, out, stage, key, tmp, file, trt_target, say)
            if kept is not None:
                parity_report[stage], op_reports[stage] = kept
                reused.append(stage)
                continue
            ts = time.perf_counter()
            graph, parity_report[stage] = _export_stage(stage, model, cfg, precision, pooling, opset, feeds,
                                                        tol, plugin_impl, weights, allow_parity_failure)
            op_reports[stage] = _checked_ops(graph, stage, trt_target, strict_trt)
            path = tmp / file
            path.write_bytes(graph.SerializeToString())
            say(f"{stage}: exported {path.name} in {time.perf_counter() - ts:.1f}s")
        trt = _trt_summary(op_reports, trt_target, strict_trt, say)
        _write_arrays(tmp, model, include_weights, weights)
        manifest = bundle_writer.build_manifest(
            cfg=cfg, vocab=vocab, precision=precision, pooling=pooling, opset=opset, root=tmp,
            parity=parity_report, trt_op_check=trt, source_checkpoint=source, stage_extra=stage_extra,
            weight_storage=weights, guidance=guidance, plugin_impl=plugin_impl, max_batch=max_batch,
        )
        bundle_writer.write_manifest(tmp, manifest)
    return ExportResult(out, manifest, reused, time.perf_counter() - t0)


def _check_options(precision: str, pooling: str, plugin_impl: str, opset: int, weights: str,
                   guidance: float | None, max_batch: int) -> None:
    """ExportError naming the first export option outside what the exporter supports."""
    if precision not in spec.PRECISIONS:
        raise ExportError(f"--precision {precision!r}: choose one of {list(spec.PRECISIONS)}")
    if pooling not in spec.POOLINGS:
        raise ExportError(f"--pooling {pooling!r}: choose one of {list(spec.POOLINGS)}")
    if plugin_impl not in PLUGIN_IMPLS:
        raise ExportError(f"--plugin-impl {plugin_impl!r}: choose one of {list(PLUGIN_IMPLS)}")
    if not OPSET_RANGE[0] <= int(opset) <= OPSET_RANGE[1]:
        raise ExportError(f"--opset {opset}: choose {OPSET_RANGE[0]}..{OPSET_RANGE[1]} (17 has "
                          "LayerNormalization; TensorRT 10.3 parses up to 20)")
    if weights not in WEIGHT_STORAGES:
        raise ExportError(f"--weights {weights!r}: choose one of {list(WEIGHT_STORAGES)}")
    if guidance is not None and not (math.isfinite(guidance) and 0 <= guidance <= 1e6):
        raise ExportError(f"--guidance {guidance}: the bundle's default guidance must be a finite number "
                          "in [0, 1e6], sg2v-run's range (1 = no guidance, 0 = unconditional)")
    if not isinstance(max_batch, int) or not 1 <= max_batch <= spec.MAX_BATCH_LIMIT:
        raise ExportError(f"--max-batch {max_batch}: choose 1..{spec.MAX_BATCH_LIMIT} videos per call")


def _parity_feeds(model: Any, cfg: Any, vocab: Any, seed: int, max_batch: int) -> dict[str, list[Any]]:
    """Each stage's parity inputs: random graphs (and, above one video per call, the same as one batch)
    through the encoder, then the UNet's and the layout network's feeds from them."""
    rng = np.random.default_rng(seed)
    enc_feeds = random_graph_feeds(vocab, cfg.data, rng, PARITY_TRIALS)
    if max_batch > 1:  # and the same graphs as one batch: the batch axis must give what single calls give
        enc_feeds.append(batched_feeds(enc_feeds[:max_batch]))
    feeds = {spec.ENCODER_STAGE: enc_feeds, spec.UNET_STAGE: _unet_feeds(model, enc_feeds, cfg, rng)}
    if model.layout_net is not None:
        feeds[spec.LAYOUT_STAGE] = _layout_feeds(model, enc_feeds, cfg, rng)
    return feeds


def _stage_key(stage: str, source: dict[str, Any], precision: str, pooling: str, opset: int, weights: str,
               max_batch: int, plugin_impl: str) -> dict[str, Any]:
    """What a stage's graph depends on: a bundle at `out` with the same key can keep that graph."""
    key = _cache_key(stage, source, precision, pooling, opset)
    key.update(weights=weights, max_batch=max_batch)
    if stage == spec.ENCODER_STAGE and pooling == "plugin":
        key["plugin_impl"] = plugin_impl
    return key


def _reused_reports(old: dict[str, Any] | None, out: Path, stage: str, key: dict[str, Any], tmp: Path,
                    file: str, trt_target: str, say: Callable[[str], None]) -> tuple[Any, Any] | None:
    """The parity and operator reports of a stage kept from the bundle at `out` (its graph copied into
    `tmp`); None when the stage must be exported again."""
    if old is None or not _reusable(old, out, stage, key, tmp):
        return None
    report = old["trt_op_check"]["stages"][stage]
    if report.get("target") != trt_target:  # same graph, read for another TensorRT
        report = check_model(tmp / file, target=trt_target)
    say(f"{stage}: reused {file} from {out} (same checkpoint and options)")
    return old["parity"][stage], report


def _export_stage(stage: str, model: Any, cfg: Any, precision: str, pooling: str, opset: int,
                  feeds: dict[str, list[Any]], tol: float, plugin_impl: str, weights: str,
                  allow_parity_failure: bool) -> tuple[Any, dict[str, Any]]:
    """One stage's ONNX graph and its parity report; ExportError when parity fails (unless allowed)."""
    if stage == spec.ENCODER_STAGE:
        graph, par = _export_encoder(model, cfg, precision, pooling, opset, feeds[stage], tol, plugin_impl)
    elif stage == spec.LAYOUT_STAGE:
        graph, par = _export_layout(model, precision, opset, feeds[stage], tol)
    else:
        graph, par = _export_unet(model, precision, opset, feeds[stage], tol)
    if not par["ok"] and not allow_parity_failure:
        raise ExportError(
            f"{stage} parity failed: max relative error {par['max_rel_err']:.3g} (tolerance "
            f"{tol:g}), finite={par['finite']}; nothing was written. Pass --allow-parity-failure to "
            "keep it anyway"
        )
    if weights == "fp16":
        _store_fp16_checked(graph, stage, feeds[stage],
                            runnable=stage != spec.ENCODER_STAGE or pooling == "portable")
    return graph, par


def _checked_ops(graph: Any, stage: str, trt_target: str, strict_trt: bool) -> dict[str, Any]:
    """The operator check of a stage's graph at `trt_target`; with `strict_trt`, ExportError if it fails."""
    report = check_model(graph, target=trt_target)
    if strict_trt and not report["ok"]:
        first = report["unsupported"][0]
        raise ExportError(
            f"--strict-trt: {stage} has {len(report['unsupported'])} node(s) TensorRT {trt_target} "
            f"cannot parse, e.g. {first['op']} ({first['reason']}); nothing was written"
        )
    return report


def _trt_summary(op_reports: dict[str, Any], trt_target: str, strict_trt: bool,
                 say: Callable[[str], None]) -> dict[str, Any]:
    """The manifest's trt_op_check over all stages (each stage's report said); with `strict_trt`,
    ExportError for any unsupported node, a reused stage's included."""
    for stage, report in op_reports.items():
        say(f"[{stage}] " + format_report(report))
    unsupported = [dict(u, stage=s) for s, r in op_reports.items() for u in r["unsupported"]]
    trt = {"target": trt_target, "ok": not unsupported, "unsupported": unsupported,
           "plugins": [dict(p, stage=s) for s, r in op_reports.items() for p in r["plugins"]],
           "stages": op_reports}
    if strict_trt and unsupported:  # a stage reused from a bundle exported without --strict-trt
        first = unsupported[0]
        raise ExportError(f"--strict-trt: {len(unsupported)} node(s) TensorRT {trt_target} cannot parse, "
                          f"e.g. {first['stage']}: {first['op']} ({first['reason']}); nothing written")
    return trt


def _with_default_steps(cfg: Any, steps: int | None) -> Any:
    """`cfg` with `steps` as its default sampler step count (ExportError unless the model samples there)."""
    if steps is None:
        return cfg
    num_train = cfg.diffusion.num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_train:
        raise ExportError(f"--steps {steps}: the default sampler step count must be an integer in "
                          f"[1, {num_train}] (the model's training timesteps)")
    if cfg.unet.guidance_embed:
        allowed = spec.student_entry(cfg.distill, num_train)["steps"]
        if steps not in allowed:
            raise ExportError(f"--steps {steps}: this student was distilled for {allowed} steps; pass one "
                              "of those")
    return dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, default_steps=steps))


def _with_layout_tries(cfg: Any, tries: int | None) -> Any:
    """`cfg` with `tries` as its layout check's most draws per graph (ExportError without a layout stage or
    outside [1, 4096])."""
    if tries is None:
        return cfg
    if not cfg.layout.dim:
        raise ExportError(f"--layout-tries {tries}: this model has no layout stage; drop the flag")
    if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= MAX_LAYOUT_TRIES:
        raise ExportError(f"--layout-tries {tries}: the layout check's draws per graph must be an integer in "
                          f"[1, {MAX_LAYOUT_TRIES}]")
    return dataclasses.replace(cfg, layout=dataclasses.replace(cfg.layout, default_tries=tries))


def _check_student_guidance(cfg: Any, guidance: float | None) -> None:
    """A student's default guidance (`--guidance`, else its config's) must lie in its distilled range."""
    if not cfg.unet.guidance_embed:
        return
    d = cfg.distill
    g = cfg.diffusion.default_guidance if guidance is None else guidance
    if not d.guidance_min <= g <= d.guidance_max:
        flag = f"--guidance {g:g}" if guidance is not None else f"the config's default guidance {g:g}"
        raise ExportError(f"{flag}: this student was distilled for guidance in [{d.guidance_min:g}, "
                          f"{d.guidance_max:g}]; pass --guidance within that range")


def _export_encoder(model, cfg, precision, pooling, opset, feeds, tol, plugin_impl="aot"):
    grounding = kinds_of_config(cfg)[1]
    grounded, outputs = grounding.layout_stage, grounding.encoder_outputs
    fn = getattr(model.encoder, grounding.encoder_call)
    reference = _torch_outputs(fn, feeds, spec.ENCODER_INPUTS, outputs)
    args = tuple(torch.from_numpy(feeds[0][n]) for n in spec.ENCODER_INPUTS)
    encoder = copy.deepcopy(model.encoder)
    with _pooling(encoder, "portable"):
        portable = export_onnx(EncoderGraph(encoder, precision, grounded), args, spec.ENCODER_INPUTS,
                               outputs, opset, batch_dim=spec.BATCH_DIM)
    _check_precision(portable, precision, "encoder")
    got = run_ort(portable.SerializeToString(), feeds)
    if pooling == "portable":
        return portable, parity(got, reference, tol, "encoder.onnx on ONNX Runtime CPU vs PyTorch float32")
    with _pooling(encoder, "plugin", plugin_impl):
        graph = export_onnx(EncoderGraph(encoder, precision, grounded), args, spec.ENCODER_INPUTS, outputs,
                            opset, plugin=True, batch_dim=spec.BATCH_DIM)
    nodes = [n for n in graph.graph.node if n.domain == spec.PLUGIN_DOMAIN and n.op_type == spec.PLUGIN_OP]
    expected = cfg.encoder.num_layers
    if len(nodes) != expected:
        raise ExportError(f"plugin export has {len(nodes)} {spec.PLUGIN_OP} nodes, expected {expected} (one "
                          "per graph convolution); the encoder's pooling call changed")
    _check_precision(graph, precision, "encoder")
    note = ("portable twin (one-hot MatMul pooling, same weights and precision) on ONNX Runtime CPU vs "
            f"PyTorch float32: ONNX Runtime has no {spec.PLUGIN_DOMAIN}::{spec.PLUGIN_OP} kernel")
    par = parity(got, reference, tol, note)
    par["plugin_nodes"] = len(nodes)
    return graph, par


def _export_unet(model, precision, opset, feeds, tol):
    shapes = _model_shapes(model.cfg)
    inputs = spec.unet_inputs(shapes)
    extra = kinds.guidance_of(shapes).unet_extra_inputs
    reference = _torch_outputs(UNetCall(model.unet, extra), feeds, inputs, spec.UNET_OUTPUTS)
    args = tuple(torch.from_numpy(feeds[0][n]) for n in inputs)
    module = unet_graph(copy.deepcopy(model.unet), precision, spec.grounded(shapes), spec.is_student(shapes))
    graph = export_onnx(module, args, inputs, spec.UNET_OUTPUTS, opset,
                        batch_dim=spec.batch_dim(spec.UNET_STAGE, shapes))
    _check_precision(graph, precision, "unet")
    got = run_ort(graph.SerializeToString(), feeds)
    return graph, parity(got, reference, tol, "unet.onnx on ONNX Runtime CPU vs PyTorch float32")


def _model_shapes(cfg: Any, max_batch: int = spec.MAX_BATCH) -> dict[str, Any]:
    """The manifest's `shapes` entry of a model config (grounded: a layout network; student: guidance)."""
    return spec.shapes(cfg.data, cfg.encoder, max_batch, grounded=cfg.layout.dim > 0,
                       student=bool(cfg.unet.guidance_embed))


def _export_layout(model, precision, opset, feeds, tol):
    reference = _torch_outputs(model.layout_net, feeds, spec.LAYOUT_INPUTS, spec.LAYOUT_OUTPUTS)
    args = tuple(torch.from_numpy(feeds[0][n]) for n in spec.LAYOUT_INPUTS)
    graph = export_onnx(LayoutGraph(copy.deepcopy(model.layout_net), precision), args, spec.LAYOUT_INPUTS,
                        spec.LAYOUT_OUTPUTS, opset, batch_dim=spec.LAYOUT_BATCH_DIM)
    _check_precision(graph, precision, "layout")
    got = run_ort(graph.SerializeToString(), feeds)
    return graph, parity(got, reference, tol, "layout.onnx on ONNX Runtime CPU vs PyTorch float32")


def _store_fp16_checked(graph: Any, stage: str, feeds: list[dict[str, np.ndarray]], runnable: bool) -> None:
    """`store_weights_fp16` on a stage's graph, checking on ONNX Runtime that its outputs did not move."""
    before = run_ort(graph.SerializeToString(), feeds) if runnable else None
    n = store_weights_fp16(graph)
    if before is None:  # the plugin encoder: its portable twin's weights were checked the same way
        return
    after = run_ort(graph.SerializeToString(), feeds)
    for b, a in zip(before, after):
        for name in b:
            if not np.allclose(a[name], b[name], rtol=1e-5, atol=1e-6):
                raise ExportError(f"{stage}: storing {n} weights as float16 changed ONNX Runtime's output "
                                  f"{name!r}; nothing was written")


def _check_precision(graph: Any, precision: str, stage: str) -> None:
    bad = fp32_islands(graph)
    if bad:
        raise ExportError(f"{stage} {precision} graph runs {bad[0]} (and {len(bad) - 1} more) below float32; "
                          "the fp16 contract keeps normalisations and softmax in float32")
    sig = io_signature(graph)
    if any(e["dtype"] not in ("float32", "int64") for e in sig["inputs"] + sig["outputs"]):
        raise ExportError(f"{stage} graph I/O is {sig}; graph I/O stays float32/int64 in every precision")


def _write_arrays(root: Path, model: nn.Module, include_weights: bool, weights: str = "fp32") -> None:
    for rel, array in zip(kinds_of_config(model.cfg)[0].null_context_files, model.null_context_arrays()):
        np.save(root / rel, array)  # the learned null context of CFG (a student has no unconditional rows)
    arrays = {k: v.detach().float().cpu().numpy() for k, v in model.encoder.state_dict().items()}
    np.savez(root / spec.ENCODER_WEIGHTS, **arrays)
    if include_weights:
        from safetensors.torch import save_file

        dtype = torch.float16 if weights == "fp16" else torch.float32  # exact: the model was rounded
        state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
                 for k, v in model.state_dict().items()}
        save_file(state, str(root / spec.MODEL_WEIGHTS), metadata={"format": "sg2v SG2V state dict"})
