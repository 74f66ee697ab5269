"""The scene-graph encoder without PyTorch: SGEncoder's forward (sg2im GraphTripleConv stack) in array-module
style, run with numpy on the CPU or with CuPy and the CUDA kernels in `cuda/` on the GPU.

One forward (`encoder_forward`) serves both: it takes an `ops` object that supplies the array module and the
two graph operations (gather-concat of subject, predicate and object vectors; ScatterMeanPool). `NumpyOps` is
the reference (np.add.at), `CupyOps` launches the kernels. Weights are SGEncoder's state dict as float32
arrays, as the bundle ships them in `encoder_weights.npz` (docs/ARCHITECTURE.md, "Bundle").
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, require
from sg2v.io import load_npz_checked

LAYERNORM_EPS = 1e-5  # sg2v.models.layers.TokenNorm default (= torch.nn.LayerNorm), which SGEncoder uses
_LAYER_KEY = re.compile(r"^layers\.([0-9]{1,9})\.")
MAX_LAYERS = 256  # GraphTripleConv layers an encoder_weights.npz may name


def _layer_keys(i: int) -> list[str]:
    p = f"layers.{i}."
    return [p + k for k in ("net1.0.weight", "net1.0.bias", "net1.2.weight", "net1.2.bias", "net2.0.weight",
                            "net2.0.bias", "net2.2.weight", "net2.2.bias", "norm_obj.weight", "norm_obj.bias",
                            "norm_pred.weight", "norm_pred.bias")]


_HEAD_KEYS = ["obj_embed.weight", "pred_embed.weight", "global_head.0.weight", "global_head.0.bias",
              "global_head.2.weight", "global_head.2.bias", "local_head.0.weight", "local_head.0.bias",
              "local_head.2.weight", "local_head.2.bias", "global_norm.weight", "global_norm.bias",
              "local_norm.weight", "local_norm.bias"]


def num_layers(weights: dict[str, Any]) -> int:
    """Number of GraphTripleConv layers in an SGEncoder state dict."""
    found = {int(m.group(1)) for k in weights if (m := _LAYER_KEY.match(k))}
    return max(found) + 1 if found else 0


def check_weights(weights: dict[str, Any], source: str = "encoder weights") -> dict[str, Any]:
    """Validate an SGEncoder state dict (names, shapes); strips an `encoder.` prefix (SG2V's state dict)."""
    if weights and all(k.startswith("encoder.") for k in weights):
        weights = {k[len("encoder."):]: v for k, v in weights.items()}
    _check_names(weights, source)
    for key, want in _expected_shapes(weights, source).items():
        got = tuple(weights[key].shape)
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
            raise BundleError(f"{source}: {key} has shape {got}, expected {want} (None: any); "
                              "the file does not match one SGEncoder")
    return weights


def _check_names(weights: dict[str, Any], source: str) -> None:
    """BundleError unless `weights` holds every SGEncoder key (at most MAX_LAYERS layers), each numeric."""
    if num_layers(weights) > MAX_LAYERS:
        raise BundleError(f"{source}: names layer {num_layers(weights) - 1}, more than {MAX_LAYERS} layers; "
                          "the file does not match one SGEncoder")
    expected = list(_HEAD_KEYS)
    for i in range(num_layers(weights)):
        expected += _layer_keys(i)
    missing = [k for k in expected if k not in weights]
    if missing or num_layers(weights) == 0:
        raise BundleError(f"{source}: not an SGEncoder state dict, missing {missing[:4] or ['layers.0.*']}; "
                          "re-export the bundle with this sg2v version")
    for key in expected:  # shapes are read below: each a numeric array
        if not hasattr(weights[key], "shape") or not hasattr(weights[key], "dtype") \
                or weights[key].dtype.kind not in "fiu":
            raise BundleError(f"{source}: {key} is not a numeric array; the file does not match one "
                              "SGEncoder")


def _expected_shapes(weights: dict[str, Any], source: str) -> dict[str, tuple[Any, ...]]:
    """Every key's shape (None: any size) implied by the embedding, hidden and output widths in `weights`."""
    for key in ("obj_embed.weight", "layers.0.net1.0.weight", "global_head.0.weight", "global_head.2.weight",
                "local_head.0.weight"):
        if weights[key].ndim != 2 or 0 in weights[key].shape:
            raise BundleError(f"{source}: {key} has shape {tuple(weights[key].shape)}, expected a non-empty "
                              "matrix; the file does not match one SGEncoder")
    d = weights["obj_embed.weight"].shape[1]
    h = weights["layers.0.net1.0.weight"].shape[0]
    c = weights["global_head.2.weight"].shape[0]
    gh, lh = weights["global_head.0.weight"].shape[0], weights["local_head.0.weight"].shape[0]
    shapes = {"obj_embed.weight": (None, d), "pred_embed.weight": (None, d),
              "global_head.0.weight": (gh, 2 * d), "global_head.0.bias": (gh,),
              "global_head.2.weight": (c, gh), "global_head.2.bias": (c,),
              "local_head.0.weight": (lh, 3 * d), "local_head.0.bias": (lh,),
              "local_head.2.weight": (c, lh), "local_head.2.bias": (c,),
              "global_norm.weight": (c,), "global_norm.bias": (c,), "local_norm.weight": (c,),
              "local_norm.bias": (c,)}
    for i in range(num_layers(weights)):
        p = f"layers.{i}."
        shapes.update({p + "net1.0.weight": (h, 3 * d), p + "net1.0.bias": (h,),
                       p + "net1.2.weight": (2 * h + d, h), p + "net1.2.bias": (2 * h + d,),
                       p + "net2.0.weight": (h, h), p + "net2.0.bias": (h,), p + "net2.2.weight": (d, h),
                       p + "net2.2.bias": (d,), p + "norm_obj.weight": (d,), p + "norm_obj.bias": (d,),
                       p + "norm_pred.weight": (d,), p + "norm_pred.bias": (d,)})
    return shapes


def load_encoder_weights(path: str | os.PathLike[str]) -> dict[str, NDArray[Any]]:
    """Read `encoder_weights.npz` (SGEncoder state dict as float32 arrays) without unpickling anything."""
    try:
        weights = {k: np.asarray(v, dtype=np.float32) for k, v in load_npz_checked(path).items()}
    except FileNotFoundError:
        raise BundleError(f"{path}: encoder weights not found; export the bundle again") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise BundleError(f"{path}: not a readable .npz of arrays ({e}); export the bundle again") from None
    return check_weights(weights, str(path))


class NumpyOps:
    """Reference graph operations on the CPU (numpy), same contract as the CUDA kernels."""

    xp = np

    @staticmethod
    def gather_concat(obj_vecs: Any, pred_vecs: Any, triples: Any) -> Any:
        """cat(obj[b, s], pred[b, t], obj[b, o]) per triple; indices outside [0, O) give zeros."""
        b, o = obj_vecs.shape[:2]
        rows = np.arange(b)[:, None]  # (B, 1)
        parts = []
        for col in (0, 2):
            idx = triples[..., col]  # (B, T)
            ok = (idx >= 0) & (idx < o)
            parts.append(np.where(ok[..., None], obj_vecs[rows, np.where(ok, idx, 0)], 0))
        out = np.concatenate([parts[0], pred_vecs, parts[1]], axis=-1)  # (B, T, 2 Do + Dp)
        return out.astype(obj_vecs.dtype)

    @staticmethod
    def scatter_mean_pool(values: Any, index: Any, mask: Any, num_segments: int) -> Any:
        """ScatterMeanPool (docs/ARCHITECTURE.md) with np.add.at; indices outside [0, O) are dropped."""
        b, n, d = values.shape
        hit = (mask != 0) & (index >= 0) & (index < num_segments)  # (B, N)
        rows = np.broadcast_to(np.arange(b)[:, None], (b, n))
        sums = np.zeros((b, num_segments, d), dtype=np.float32)
        counts = np.zeros((b, num_segments), dtype=np.float32)
        np.add.at(sums, (rows[hit], index[hit]), values[hit].astype(np.float32))
        np.add.at(counts, (rows[hit], index[hit]), 1.0)
        return (sums / np.maximum(counts, 1.0)[..., None]).astype(values.dtype)  # (B, O, D)


class CupyOps:
    """Graph operations on the GPU: the CUDA kernels of `cuda/scatter_pool.cuh`, launched on `stream`."""

    def __init__(self, stream: Any = None) -> None:
        from sg2v.runtime import cuda_kernels

        self.xp = require("cupy", "gpu")
        self._kernels = cuda_kernels
        self.stream = stream

    def gather_concat(self, obj_vecs: Any, pred_vecs: Any, triples: Any) -> Any:
        xp = self.xp
        return self._kernels.gather_concat(xp.ascontiguousarray(obj_vecs), xp.ascontiguousarray(pred_vecs),
                                           xp.ascontiguousarray(triples), stream=self.stream)

    def scatter_mean_pool(self, values: Any, index: Any, mask: Any, num_segments: int) -> Any:
        xp = self.xp
        return self._kernels.scatter_mean_pool(xp.ascontiguousarray(values), xp.ascontiguousarray(index),
                                               xp.ascontiguousarray(mask), num_segments, stream=self.stream)


def _linear(xp: Any, x: Any, w: Any, b: Any) -> Any:
    return xp.matmul(x, w.T) + b  # torch.nn.Linear: x W^T + b


def _mlp2(xp: Any, w: dict[str, Any], prefix: str, x: Any) -> Any:
    """SGEncoder's two-layer MLPs: Linear, ReLU, Linear."""
    hidden = xp.maximum(_linear(xp, x, w[prefix + ".0.weight"], w[prefix + ".0.bias"]), 0)
    return _linear(xp, hidden, w[prefix + ".2.weight"], w[prefix + ".2.bias"])


def _layer_norm(xp: Any, x: Any, weight: Any, bias: Any) -> Any:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased, as torch.nn.LayerNorm
    return (x - mean) / xp.sqrt(var + LAYERNORM_EPS) * weight + bias


def _masked_mean(xp: Any, x: Any, mask: Any) -> Any:
    keep = (mask != 0).astype(x.dtype)[..., None]  # (B, N, 1)
    return (x * keep).sum(axis=1) / xp.maximum(keep.sum(axis=1), 1)  # (B, D)


def encoder_forward(weights: dict[str, Any], objs: Any, obj_mask: Any, triples: Any, triple_mask: Any,
                    ops: type[NumpyOps] | CupyOps
                    ) -> tuple[Any, Any, Any]:
    """SGEncoder.encode_all (sg2im GraphTripleConv stack, SGDiff tokens) on `ops.xp` arrays.

    objs (B, O) int, obj_mask (B, O), triples (B, T, 3) int, triple_mask (B, T) -> context (B, 1 + T, C)
    float32, context_mask (B, 1 + T) float32 and the object vectors after the conv stack (B, O, d) float32,
    padded slots zero (what a layout-grounded model's layout stage and UNet read). `weights` are float32
    arrays of `ops.xp`, as `check_weights` names them.
    """
    xp, w = ops.xp, weights
    om = obj_mask.astype(xp.float32)  # (B, O)
    tm = triple_mask.astype(xp.float32)  # (B, T)
    s_idx, o_idx = triples[..., 0], triples[..., 2]  # (B, T)
    obj = w["obj_embed.weight"][objs] * om[..., None]  # (B, O, d)
    pred = w["pred_embed.weight"][triples[..., 1]] * tm[..., None]  # (B, T, d)
    pooled_index = xp.concatenate([s_idx, o_idx], axis=1)  # (B, 2T): subject messages, then object messages
    pooled_mask = xp.concatenate([tm, tm], axis=1)  # (B, 2T)
    num_objects = objs.shape[1]
    for i in range(num_layers(w)):
        p = f"layers.{i}."
        h = w[p + "net1.0.weight"].shape[0]
        out = _mlp2(xp, w, p + "net1", ops.gather_concat(obj, pred, triples))  # (B, T, 2H + d)
        messages = xp.concatenate([out[..., :h], out[..., -h:]], axis=1)  # (B, 2T, H)
        pooled = ops.scatter_mean_pool(messages, pooled_index, pooled_mask, num_objects)  # (B, O, H)
        update = _mlp2(xp, w, p + "net2", xp.maximum(pooled, 0))  # (B, O, d)
        obj = _layer_norm(xp, obj + update, w[p + "norm_obj.weight"], w[p + "norm_obj.bias"]) * om[..., None]
        pred = _layer_norm(xp, pred + out[..., h:-h], w[p + "norm_pred.weight"], w[p + "norm_pred.bias"])
        pred = pred * tm[..., None]  # (B, T, d)
    pooled_graph = xp.concatenate([_masked_mean(xp, obj, om), _masked_mean(xp, pred, tm)], axis=-1)  # (B, 2d)
    glob = _layer_norm(xp, _mlp2(xp, w, "global_head", pooled_graph), w["global_norm.weight"],
                       w["global_norm.bias"])  # (B, C)
    local = _mlp2(xp, w, "local_head", ops.gather_concat(obj, pred, triples))  # (B, T, C)
    local = _layer_norm(xp, local, w["local_norm.weight"], w["local_norm.bias"]) * tm[..., None]
    context = xp.concatenate([glob[:, None], local], axis=1).astype(xp.float32)  # (B, 1 + T, C)
    context_mask = xp.concatenate([xp.ones_like(tm[:, :1]), tm], axis=1)  # (B, 1 + T)
    return context, context_mask, obj.astype(xp.float32)


def check_against_config(weights: dict[str, Any], num_layers_: int, context_dim: int, source: str,
                         num_objs: int | None = None, num_preds: int | None = None) -> None:
    """BundleError unless the weights are of the bundle's encoder: its layer count, context width and (when
    given) one embedding row per object and predicate class."""
    got = (num_layers(weights), int(weights["local_norm.weight"].shape[0]))
    if got != (num_layers_, context_dim):
        raise BundleError(f"{source}: {got[0]} layers of width {got[1]}, the bundle's config says "
                          f"{num_layers_} of {context_dim}; the bundle was assembled from different exports: "
                          "re-export it")
    for key, rows in (("obj_embed.weight", num_objs), ("pred_embed.weight", num_preds)):
        if rows is not None and weights[key].shape[0] != rows:
            raise BundleError(f"{source}: {key} has {weights[key].shape[0]} rows, the bundle's config has "
                              f"{rows} classes; the bundle was assembled from different exports: "
                              "re-export it")


class NumpyEncoder:
    """Encoder stage on the CPU (stage protocol): `encoder_forward` with `NumpyOps`, numpy in and out; with
    `objects` (a layout-grounded bundle) the object vectors are a third output."""

    inputs = spec.ENCODER_INPUTS

    def __init__(self, weights: dict[str, NDArray[Any]], objects: bool = False) -> None:
        weights = check_weights(weights)
        self.weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        self.outputs = spec.GROUNDED_ENCODER_OUTPUTS if objects else spec.ENCODER_OUTPUTS

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in self.inputs if k not in feeds]
        if missing:
            raise BundleError(f"encoder stage: missing inputs {missing}; pass {list(self.inputs)}")
        objs = np.asarray(feeds["objs"], dtype=np.int64)
        triples = np.asarray(feeds["triples"], dtype=np.int64)
        out = encoder_forward(self.weights, objs, np.asarray(feeds["obj_mask"], np.float32), triples,
                              np.asarray(feeds["triple_mask"], np.float32), NumpyOps)
        return {name: value.astype(np.float32, copy=False) for name, value in zip(self.outputs, out)}


class GpuEncoder:
    """Encoder stage on the GPU (stage protocol `run(feeds) -> outputs`): CuPy matmuls + the CUDA kernels.

    Weights are uploaded once; inputs may be numpy or CuPy; outputs are CuPy arrays on the stage's device;
    with `objects` (a layout-grounded bundle) the object vectors are a third output.
    """

    inputs = spec.ENCODER_INPUTS

    def __init__(self, weights: dict[str, NDArray[Any]], device: int = 0, stream: Any = None,
                 objects: bool = False) -> None:
        cp = require("cupy", "gpu")
        weights = check_weights(weights)
        self.device = device
        self.outputs = spec.GROUNDED_ENCODER_OUTPUTS if objects else spec.ENCODER_OUTPUTS
        with cp.cuda.Device(device):
            self.ops = CupyOps(stream)
            self.weights = {k: cp.asarray(np.ascontiguousarray(v, dtype=np.float32))
                            for k, v in weights.items()}

    @classmethod
    def from_npz(cls, path: str | os.PathLike[str], device: int = 0, stream: Any = None, objects: bool = False
                 ) -> GpuEncoder:
        """From a bundle's `encoder_weights.npz`."""
        return cls(load_encoder_weights(path), device=device, stream=stream, objects=objects)

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        cp = self.ops.xp
        missing = [k for k in self.inputs if k not in feeds]
        if missing:
            raise BundleError(f"encoder stage: missing inputs {missing}; pass {list(self.inputs)}")
        with cp.cuda.Device(self.device):
            objs = cp.asarray(feeds["objs"]).astype(cp.int64, copy=False)
            triples = cp.ascontiguousarray(cp.asarray(feeds["triples"]).astype(cp.int64, copy=False))
            obj_mask = cp.asarray(feeds["obj_mask"], dtype=cp.float32)
            triple_mask = cp.asarray(feeds["triple_mask"], dtype=cp.float32)
            stream = self.ops.stream
            if isinstance(stream, int):
                stream = cp.cuda.ExternalStream(stream)
            with stream if stream is not None else cp.cuda.get_current_stream():
                out = encoder_forward(self.weights, objs, obj_mask, triples, triple_mask, self.ops)
        return dict(zip(self.outputs, out))
