"""Static shapes of an ONNX graph at every batch size a bundle allows, for `sg2v.runtime.onnx_guard` (numpy).

Every tensor's shape is inferred from the graph inputs' shapes, with each named (batch) dimension taking every
value of `rows` (a run of batch sizes) at once: a dimension is a numpy vector over those batch sizes, so one
pass over the nodes checks them all. Small integer/bool/float tensors that shapes are computed from (`Shape`,
`Gather`, `Concat`, arithmetic, ...) are constant-folded the same way. A node whose output shape depends on a
value the pass cannot fold, an op outside `OPS` (the operators sg2v's exports use, plus close relatives), a
subgraph (If/Loop/Scan) or a tensor over the element bound at any batch size is refused: the graph is not
static at the bundle's bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

MAX_FOLD = 4096  # values kept per folded tensor (per batch size); larger tensors keep their shape only

_UNARY = {"Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Cos", "Sin", "Exp", "Log", "Neg", "Abs", "Not", "Floor",
          "Ceil", "Round", "Reciprocal", "Sign", "Softplus", "Softsign", "Identity", "Cast", "IsNaN", "IsInf",
          "LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Mish", "Softmax", "LogSoftmax", "CumSum",
          "InstanceNormalization", "Dropout", "Trilu", "Celu", "ThresholdedRelu", "Clip",
          "BatchNormalization", "CastLike", "QuantizeLinear", "DequantizeLinear"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
           "And", "Or", "Xor", "Max", "Min", "Mod", "PRelu", "Sum", "Mean", "Where"}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceSumSquare", "ReduceLogSumExp", "ArgMax", "ArgMin"}
_SHAPED = {"Shape", "Size", "Gather", "GatherElements", "Unsqueeze", "Squeeze", "Concat", "Reshape", "Expand",
           "ConstantOfShape", "Slice", "Range", "Transpose", "MatMul", "Gemm", "Conv", "LayerNormalization",
           "Split", "Flatten", "Pad", "Tile", "ScatterElements", "ScatterND", "Constant", "OneHot",
           "sg2v::ScatterMeanPool"}
OPS = frozenset(_UNARY | _BINARY | _REDUCE | _SHAPED)

# TensorProto data types: numpy dtype of the values this pass folds (ints as int64, floats as float64)
_FOLD_KIND = {1: "f", 2: "i", 3: "i", 4: "i", 5: "i", 6: "i", 7: "i", 9: "b", 10: "f", 11: "f", 12: "i",
              13: "i", 16: "f"}


class NotStatic(Exception):
    """The graph's shapes cannot be inferred statically, or one exceeds the bound (the message says which)."""


class T:
    """A tensor at every batch size: `shape` (rank, n) int64 (n = 1 for a dim that never varies) and, when
    folded, `value` (n, *dims) with dims the same at every batch size."""

    __slots__ = ("shape", "value")

    def __init__(self, shape: NDArray[Any], value: NDArray[Any] | None = None):
        self.shape, self.value = shape, value

    @property
    def rank(self) -> int:
        return int(self.shape.shape[0])

    def dims(self) -> list[int] | None:
        """The shape when it is the same at every batch size."""
        if self.shape.size and not (self.shape == self.shape[:, :1]).all():
            return None
        return [int(d) for d in self.shape[:, 0]] if self.shape.size else []


def _shape(dims: list[Any]) -> NDArray[Any]:
    """A (rank, n) shape array from dims that are ints or (n,) vectors."""
    if not dims:
        return np.zeros((0, 1), np.int64)
    n = max(np.size(d) for d in dims)
    return np.stack([np.broadcast_to(np.asarray(d, np.int64).reshape(-1), (n,)) for d in dims])


def _const(value: NDArray[Any]) -> T:
    value = np.asarray(value)
    return T(_shape(list(value.shape)), value[None])


def _kind(dtype: int) -> str:
    return _FOLD_KIND.get(dtype, "")


def _cast(value: NDArray[Any], kind: str) -> NDArray[Any]:
    if kind == "b":
        out: NDArray[Any] = value != 0
        return out
    if kind == "i":
        if value.dtype.kind == "f":
            if not np.isfinite(value).all() or (np.abs(value) >= 2.0 ** 63).any():
                raise NotStatic("a Cast to an integer type of a value out of int64 range")
            out = np.trunc(value).astype(np.int64)
            return out
        return value.astype(np.int64)
    return value.astype(np.float64)


def _copy_zero_dims(want: NDArray[Any], x: T, n: int) -> None:
    """Reshape's 0 entries (allowzero off) take the input's dim at that index, in place in `want` (k, n)."""
    for i in range(want.shape[0]):
        zero = want[i] == 0
        if zero.any():
            if i >= x.rank:
                raise NotStatic("a Reshape node copies a dim its input does not have")
            want[i] = np.where(zero, np.broadcast_to(x.shape[i], (n,)), want[i])


class Shapes:
    """The static pass: `run(nodes)` over (op, inputs, outputs, attrs) in graph order."""

    def __init__(self, rows: Any, max_elements: int, fail: Callable[[str], None]):
        self.rows = np.arange(1, int(rows) + 1, dtype=np.int64) if np.ndim(rows) == 0 else \
            np.asarray(rows, dtype=np.int64)  # the batch sizes a named dimension takes
        self.n = len(self.rows)
        self.max_elements = max_elements
        self.fail = fail
        self.env: dict[str, T] = {}

    # ------------------------------------------------------------------------------------------- helpers
    def named_dim(self) -> NDArray[Any]:
        return self.rows

    def add(self, name: str, t: T, where: str) -> None:
        shape = t.shape
        if shape.size:
            if (shape < 0).any():
                raise NotStatic(f"{where} {name!r} gets a negative dimension")
            if (shape > self.max_elements).any() or \
                    np.prod(shape.astype(np.float64), axis=0).max() > self.max_elements:
                worst = int(np.argmax(np.prod(shape.astype(np.float64), axis=0)))
                dims = [int(d[min(worst, d.size - 1)]) for d in shape]
                at = f"batch {self.rows[worst]}" if shape.shape[1] > 1 else "its shape"
                raise NotStatic(f"{where} {name!r} would hold {dims} = {math.prod(dims)} values at {at}, "
                                f"more than {self.max_elements}")
        if t.value is not None and (t.value[0].size > MAX_FOLD or t.dims() is None):
            t.value = None
        self.env[name] = t

    def get(self, inputs: list[str], i: int) -> T | None:
        if i >= len(inputs) or not inputs[i]:
            return None
        t = self.env.get(inputs[i])
        if t is None:
            raise NotStatic(f"input {inputs[i]!r} is used before any node makes it (not a sorted graph)")
        return t

    def need(self, inputs: list[str], i: int, op: str) -> T:
        t = self.get(inputs, i)
        if t is None:
            raise NotStatic(f"a {op} node lacks its input {i}")
        return t

    def val(self, inputs: list[str], i: int, op: str, what: str) -> NDArray[Any]:
        """The folded value of input i, (n or 1, *dims); NotStatic when it is computed from data."""
        t = self.need(inputs, i, op)
        if t.value is None:
            raise NotStatic(f"a {op} node's {what} ({inputs[i]!r}) is computed at run time, not from the "
                            "graph's shapes and constants")
        return t.value

    @staticmethod
    def align(value: NDArray[Any], rank: int) -> NDArray[Any]:
        """`value` (lead, *dims) with 1-dims inserted after the lead to `rank` trailing dims."""
        extra = rank - (value.ndim - 1)
        return value.reshape((value.shape[0],) + (1,) * extra + value.shape[1:]) if extra > 0 else value

    def broadcast(self, shapes: list[NDArray[Any]], op: str) -> NDArray[Any]:
        rank = max(s.shape[0] for s in shapes)
        n = max(s.shape[1] for s in shapes)
        out = np.ones((rank, n), np.int64)
        for s in shapes:
            s = np.concatenate([np.ones((rank - s.shape[0], s.shape[1]), np.int64), s])
            s = np.broadcast_to(s, (rank, n))
            ok = (s == out) | (s == 1) | (out == 1)
            if not ok.all():
                raise NotStatic(f"a {op} node's input shapes do not broadcast")
            out = np.where(out == 1, s, out)
        return out

    @staticmethod
    def axis(a: int, rank: int, op: str) -> int:
        if not -rank <= a < max(rank, 1):
            raise NotStatic(f"a {op} node's axis {a} is outside rank {rank}")
        return a + rank if a < 0 else a

    @staticmethod
    def scalar_ints(value: NDArray[Any], op: str, what: str) -> NDArray[Any]:
        """A folded 1-D or scalar value as (lead, k) int64."""
        if value.dtype.kind not in "iub":
            raise NotStatic(f"a {op} node's {what} is not integer")
        return value.reshape(value.shape[0], -1).astype(np.int64)

    # ----------------------------------------------------------------------------------------------- run
    def run(self, nodes: list[tuple[str, list[str], list[str], dict[str, Any]]]) -> None:
        for op, inputs, outputs, attrs in nodes:
            if op not in OPS:
                raise NotStatic(f"operator {op!r} is not one sg2v exports (static shapes are checked for "
                                f"{len(OPS)} operators)")
            outs = self.node(op, inputs, outputs, attrs)
            for name, t in zip(outputs, outs):
                if name:
                    self.add(name, t, f"{op} output")

    def node(self, op: str, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        if op == "Constant":
            value = a.get("value_array")
            if value is None:
                raise NotStatic("a Constant node without a dense value this pass reads")
            if isinstance(value, tuple):  # a large tensor: its dims only
                return [T(_shape(list(value[0])))]
            return [_const(value)]
        if op in _UNARY:
            return self.unary(op, inputs, outputs, a)
        if op in _BINARY:
            return [self.binary(op, inputs, a)]
        if op in _REDUCE:
            return [self.reduce(op, inputs, a)]
        out: list[T] = getattr(self, "op_" + op.replace("sg2v::", "plugin_"))(inputs, outputs, a)
        return out

    def unary(self, op: str, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, op)
        value = None if x.value is None else self.fold_unary(op, inputs, a, x.value)
        out = [T(x.shape, value)]
        if op == "Dropout" and len(outputs) > 1:
            out.append(T(x.shape))
        if op == "BatchNormalization" and len(outputs) > 1:
            raise NotStatic("a BatchNormalization node in training mode")
        return out

    def fold_unary(self, op: str, inputs: list[str], a: dict[str, Any],
                   v: NDArray[Any]) -> NDArray[Any] | None:
        """The value of unary `op` on the known value `v`; None where this pass does not fold it."""
        value = None
        if op in ("Identity", "Dropout"):
            value = v
        elif op in ("Cast", "CastLike"):
            value = self.fold_cast(op, inputs, a, v)
        elif op == "Neg" and v.dtype.kind != "b":
            value = -v
        elif op == "Abs" and v.dtype.kind != "b":
            value = np.abs(v)
        elif op == "Not" and v.dtype.kind == "b":
            value = ~v
        elif op in ("Floor", "Ceil") and v.dtype.kind == "f":
            value = np.floor(v) if op == "Floor" else np.ceil(v)
        elif op == "Relu" and v.dtype.kind != "b":
            value = np.maximum(v, 0)
        elif op == "Sign" and v.dtype.kind != "b":
            value = np.sign(v)
        elif op == "Clip" and v.dtype.kind != "b":
            value = self.fold_clip(inputs, v)
        return value

    def fold_cast(self, op: str, inputs: list[str], a: dict[str, Any],
                  v: NDArray[Any]) -> NDArray[Any] | None:
        """Cast (to the `to` type) or CastLike (to the second input's kind) of `v`; None if unknown."""
        if op == "Cast":
            kind = _kind(int(a.get("to", 0)))
            return _cast(v, kind) if kind else None
        like = self.need(inputs, 1, op).value
        return None if like is None else _cast(v, like.dtype.kind if like.dtype.kind != "u" else "i")

    def fold_clip(self, inputs: list[str], v: NDArray[Any]) -> NDArray[Any] | None:
        """Clip of the known value `v` when its bounds are absent or known; None otherwise."""
        lo, hi = self.get(inputs, 1), self.get(inputs, 2)
        lo_v, hi_v = (None if lo is None else lo.value), (None if hi is None else hi.value)
        if not ((lo is None or lo_v is not None) and (hi is None or hi_v is not None)):
            return None
        value = v
        if lo_v is not None:
            value = np.maximum(value, lo_v.reshape(lo_v.shape[0], *([1] * (v.ndim - 1))))
        if hi_v is not None:
            value = np.minimum(value, hi_v.reshape(hi_v.shape[0], *([1] * (v.ndim - 1))))
        return value

    def binary(self, op: str, inputs: list[str], a: dict[str, Any]) -> T:
        ts = [self.need(inputs, i, op) for i in range(len(inputs)) if inputs[i]]
        if not ts or (op == "Where" and len(ts) != 3) or (op not in ("Max", "Min", "Sum", "Mean", "Where")
                                                          and len(ts) != 2):
            raise NotStatic(f"a {op} node with {len(ts)} inputs")
        shape = self.broadcast([t.shape for t in ts], op)
        value = None
        values = [t.value for t in ts if t.value is not None]
        if len(values) == len(ts):
            rank = shape.shape[0]
            vs = [self.align(v, rank) for v in values]
            value = self.fold_binary(op, vs)
        return T(shape, value)

    @staticmethod
    def fold_binary(op: str, vs: list[NDArray[Any]]) -> NDArray[Any] | None:
        x, y = vs[0], vs[-1]
        kinds = {v.dtype.kind for v in vs}
        with np.errstate(all="ignore"):
            if op == "Where":
                return np.where(vs[0], vs[1], vs[2]) if vs[0].dtype.kind == "b" else None
            if op in ("And", "Or", "Xor"):
                logical: dict[str, np.ufunc] = {"And": np.logical_and, "Or": np.logical_or,
                                                "Xor": np.logical_xor}
                out: NDArray[Any] = logical[op](x, y)
                return out
            if "b" in kinds:
                return None
            if op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
                compare: dict[str, np.ufunc] = {"Equal": np.equal, "Less": np.less, "Greater": np.greater,
                                                "LessOrEqual": np.less_equal,
                                                "GreaterOrEqual": np.greater_equal}
                out = compare[op](x, y)
                return out
            if op in ("Max", "Min"):
                out = vs[0]
                for v in vs[1:]:
                    out = np.maximum(out, v) if op == "Max" else np.minimum(out, v)
                return out
            return Shapes.fold_arithmetic(op, vs, kinds == {"i"})

    @staticmethod
    def fold_arithmetic(op: str, vs: list[NDArray[Any]], ints: bool) -> NDArray[Any] | None:
        """Add/Sub/Mul/Sum, Div (integer Div truncates) and integer Mod of numeric values; None where
        the result could overflow, divides by zero, or `op` is none of these."""
        x, y = vs[0], vs[-1]
        out: NDArray[Any]
        with np.errstate(all="ignore"):
            if op in ("Add", "Sub", "Mul", "Sum"):
                if ints and max(np.abs(v).max(initial=0) for v in vs) > 1 << 31:
                    return None  # could overflow int64: not a shape computation
                out = vs[0]
                for v in vs[1:]:
                    out = out - v if op == "Sub" else (out * v if op == "Mul" else out + v)
                return out
            if op == "Div":
                if ints:
                    if (y == 0).any():
                        return None
                    q = np.abs(x) // np.abs(y)
                    out = q * np.sign(x) * np.sign(y)  # ONNX integer Div truncates
                    return out
                out = x / y
                return out
            if op == "Mod" and ints:
                return None if (y == 0).any() else np.mod(x, y)
        return None

    def reduce(self, op: str, inputs: list[str], a: dict[str, Any]) -> T:
        x = self.need(inputs, 0, op)
        keep = int(a.get("keepdims", 1))
        if op in ("ArgMax", "ArgMin"):
            axes = [int(a.get("axis", 0))]
        elif op == "ReduceSum" and len(inputs) > 1 and inputs[1]:
            axes = [int(v) for v in np.unique(self.scalar_ints(self.val(inputs, 1, op, "axes"), op, "axes"))]
        elif "axes" in a:
            axes = [int(v) for v in a["axes"]]
        else:
            axes = []
        if not axes:
            if int(a.get("noop_with_empty_axes", 0)):
                return T(x.shape)
            axes = list(range(x.rank))
        axes = sorted({self.axis(ax, x.rank, op) for ax in axes})
        rows = [np.ones_like(x.shape[i]) if i in axes else x.shape[i] for i in range(x.rank)
                if keep or i not in axes]
        value = None
        if x.value is not None and op in ("ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin") and \
                x.value.dtype.kind in "if" and x.value[0].size:
            reducers: dict[str, Callable[..., Any]] = {"ReduceSum": np.sum, "ReduceProd": np.prod,
                                                       "ReduceMax": np.max, "ReduceMin": np.min}
            fn = reducers[op]
            value = fn(x.value, axis=tuple(i + 1 for i in axes), keepdims=bool(keep))
        return T(np.stack(rows) if rows else np.zeros((0, x.shape.shape[1]), np.int64), value)

    # ---------------------------------------------------------------------------------- shape operators
    def op_Shape(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Shape")
        start, end = int(a.get("start", 0)), int(a.get("end", x.rank))
        start = min(max(start + x.rank if start < 0 else start, 0), x.rank)
        end = min(max(end + x.rank if end < 0 else end, 0), x.rank)
        rows = x.shape[start:end]
        return [T(_shape([max(end - start, 0)]), np.ascontiguousarray(rows.T))]

    def op_Size(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Size")
        return [T(_shape([]), np.prod(x.shape, axis=0) if x.rank else np.ones(1, np.int64))]

    def op_Gather(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        data, idx = self.need(inputs, 0, "Gather"), self.need(inputs, 1, "Gather")
        ax = self.axis(int(a.get("axis", 0)), data.rank, "Gather")
        shape = _shape([*data.shape[:ax], *idx.shape, *data.shape[ax + 1:]])
        value = None
        if data.value is not None and idx.value is not None and idx.value.shape[0] == 1:
            d = data.value.shape[ax + 1]
            i = self.scalar_ints(idx.value, "Gather", "indices").reshape(idx.value.shape[1:])
            if ((i < -d) | (i >= d)).any():
                raise NotStatic(f"a Gather node's index {i.ravel()[:4].tolist()} is outside a dim of {d}")
            value = np.take(data.value, np.where(i < 0, i + d, i), axis=ax + 1)
        return [T(shape, value)]

    def op_GatherElements(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        data, idx = self.need(inputs, 0, "GatherElements"), self.need(inputs, 1, "GatherElements")
        if data.rank != idx.rank:
            raise NotStatic("a GatherElements node's indices differ in rank from its data")
        return [T(idx.shape)]

    def op_Unsqueeze(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Unsqueeze")
        if len(inputs) > 1 and inputs[1]:
            axes_v = self.scalar_ints(self.val(inputs, 1, "Unsqueeze", "axes"), "Unsqueeze", "axes")
            if axes_v.shape[0] != 1:
                raise NotStatic("an Unsqueeze node's axes vary with the batch size")
            axes = axes_v[0].tolist()
        else:
            axes = list(a.get("axes", []))
        rank = x.rank + len(axes)
        axes = sorted(self.axis(int(v), rank, "Unsqueeze") for v in axes)
        if len(set(axes)) != len(axes):
            raise NotStatic("an Unsqueeze node repeats an axis")
        rows, it = [], iter(range(x.rank))
        for i in range(rank):
            rows.append(np.ones(1, np.int64) if i in axes else x.shape[next(it)])
        value = None if x.value is None else np.expand_dims(x.value, tuple(i + 1 for i in axes))
        return [T(_shape(rows), value)]

    def op_Squeeze(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Squeeze")
        if len(inputs) > 1 and inputs[1]:
            axes_v = self.scalar_ints(self.val(inputs, 1, "Squeeze", "axes"), "Squeeze", "axes")
            if axes_v.shape[0] != 1:
                raise NotStatic("a Squeeze node's axes vary with the batch size")
            axes = [self.axis(int(v), x.rank, "Squeeze") for v in axes_v[0]]
        elif "axes" in a:
            axes = [self.axis(int(v), x.rank, "Squeeze") for v in a["axes"]]
        else:
            axes = [i for i in range(x.rank) if (x.shape[i] == 1).all()]
            if any((x.shape[i] == 1).any() for i in range(x.rank) if i not in axes):
                raise NotStatic("a Squeeze node without axes on a dim that is 1 at some batch sizes only")
        if any(not (x.shape[i] == 1).all() for i in axes):
            raise NotStatic("a Squeeze node on a dim that is not 1")
        rows = [x.shape[i] for i in range(x.rank) if i not in axes]
        value = None if x.value is None else np.squeeze(x.value, tuple(i + 1 for i in axes))
        return [T(_shape(rows) if rows else np.zeros((0, 1), np.int64), value)]

    def op_Concat(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        ts = [self.need(inputs, i, "Concat") for i in range(len(inputs)) if inputs[i]]
        if not ts or len({t.rank for t in ts}) != 1 or ts[0].rank == 0:
            raise NotStatic("a Concat node's inputs differ in rank (or are scalars)")
        rank = ts[0].rank
        ax = self.axis(int(a.get("axis", 0)), rank, "Concat")
        rows = []
        for i in range(rank):
            col = [t.shape[i] for t in ts]
            if i == ax:
                rows.append(sum(np.broadcast_arrays(*col)))
            else:
                b = np.broadcast_arrays(*col)
                if not all((c == b[0]).all() for c in b):
                    raise NotStatic("a Concat node's inputs differ outside the concatenation axis")
                rows.append(b[0])
        value = None
        values = [t.value for t in ts if t.value is not None]
        if len(values) == len(ts):
            lead = max(v.shape[0] for v in values)
            vs = [np.broadcast_to(v, (lead, *v.shape[1:])) for v in values]
            kinds = {v.dtype.kind for v in vs}
            if len(kinds) == 1:
                value = np.concatenate(vs, axis=ax + 1)
        return [T(_shape(rows), value)]

    def op_Reshape(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Reshape")
        want = self.scalar_ints(self.val(inputs, 1, "Reshape", "shape"), "Reshape", "shape")  # (lead, k)
        n = max(want.shape[0], x.shape.shape[1])
        want = np.broadcast_to(want, (n, want.shape[1])).T.copy()  # (k, n)
        if not int(a.get("allowzero", 0)):
            _copy_zero_dims(want, x, n)
        minus = want == -1
        if (minus.sum(axis=0) > 1).any() or ((want < 0) & ~minus).any():
            raise NotStatic("a Reshape node's shape has more than one -1 or a negative dim")
        total = np.prod(x.shape, axis=0) if x.rank else np.ones(1, np.int64)
        total = np.broadcast_to(total, (n,))
        known = np.prod(np.where(minus, 1, want), axis=0)
        if minus.any():
            row = np.nonzero(minus.any(axis=1))[0]
            if len(row) != 1 or not minus[row[0]].all():
                raise NotStatic("a Reshape node's -1 moves between batch sizes")
            if (known == 0).any() or (total % np.maximum(known, 1) != 0).any():
                raise NotStatic("a Reshape node's -1 does not divide its input")
            want[row[0]] = total // known
        elif (known != total).any():
            raise NotStatic(f"a Reshape node asks for {int(known.max())} values of a tensor of "
                            f"{int(total.max())}")
        value = None
        if x.value is not None and want.shape[1] == 1:
            value = x.value.reshape((x.value.shape[0], *want[:, 0].tolist()))
        return [T(want, value)]

    def op_Expand(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Expand")
        want = self.scalar_ints(self.val(inputs, 1, "Expand", "shape"), "Expand", "shape").T  # (k, lead)
        if (want < 0).any():
            raise NotStatic(f"an Expand node asks for a negative dim {want.min()}")
        shape = self.broadcast([x.shape, want], "Expand")
        value = None
        if x.value is not None and shape.shape[1] == 1:
            v = self.align(x.value, shape.shape[0])
            value = np.broadcast_to(v, (v.shape[0], *shape[:, 0].tolist())) \
                if shape[:, 0].prod() <= MAX_FOLD else None
        return [T(shape, value)]

    def op_ConstantOfShape(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        want = self.scalar_ints(self.val(inputs, 0, "ConstantOfShape", "shape"), "ConstantOfShape",
                                "shape").T
        if (want < 0).any():
            raise NotStatic("a ConstantOfShape node asks for a negative dim")
        if (want > self.max_elements).any() or np.prod(want.astype(np.float64), axis=0).max() > \
                self.max_elements:
            raise NotStatic(f"a ConstantOfShape node asks for shape {want[:, -1].tolist()[:8]}, more than "
                            f"{self.max_elements} values")
        fill = a.get("value_array")
        fill = np.zeros(1) if fill is None or isinstance(fill, tuple) else np.asarray(fill).reshape(-1)[:1]
        value = None
        if want.shape[1] == 1 and want[:, 0].prod() <= MAX_FOLD and fill.size:
            value = np.full((1, *want[:, 0].tolist()), fill[0])
        return [T(want.copy(), value)]

    def op_Slice(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Slice")
        starts = self.scalar_ints(self.val(inputs, 1, "Slice", "starts"), "Slice", "starts")
        ends = self.scalar_ints(self.val(inputs, 2, "Slice", "ends"), "Slice", "ends")
        k = starts.shape[1]
        axes = self.scalar_ints(self.val(inputs, 3, "Slice", "axes"), "Slice", "axes") \
            if len(inputs) > 3 and inputs[3] else np.arange(k)[None]
        steps = self.scalar_ints(self.val(inputs, 4, "Slice", "steps"), "Slice", "steps") \
            if len(inputs) > 4 and inputs[4] else np.ones((1, k), np.int64)
        if not (ends.shape[1] == axes.shape[1] == steps.shape[1] == k) or axes.shape[0] != 1:
            raise NotStatic("a Slice node's starts, ends, axes and steps differ in length (or its axes vary)")
        if (steps == 0).any():
            raise NotStatic("a Slice node with a step of 0")
        rows = [x.shape[i].copy() for i in range(x.rank)]
        params = []
        for j, ax in enumerate(axes[0].tolist()):
            ax = self.axis(int(ax), x.rank, "Slice")
            d = np.broadcast_to(x.shape[ax], (max(x.shape.shape[1], starts.shape[0], ends.shape[0]),))
            s, e, st = starts[:, j], ends[:, j], steps[:, j]
            s = np.where(s < 0, s + d, s)
            e = np.where(e < 0, e + d, e)
            s = np.where(st > 0, np.clip(s, 0, d), np.clip(s, 0, d - 1))
            e = np.where(st > 0, np.clip(e, 0, d), np.clip(e, -1, d - 1))
            length = np.maximum(-((e - s) // -st), 0)  # ceil((e - s) / st)
            rows[ax] = length
            params.append((ax, s, e, st))
        value = None
        if x.value is not None and all(p[1].size == 1 and p[2].size == 1 for p in params):
            index = [slice(None)] * x.value.ndim
            for ax, s, e, st in params:
                stop = None if int(e[0]) < 0 else int(e[0])
                index[ax + 1] = slice(int(s[0]), stop, int(st[0]))
            value = x.value[tuple(index)]
        return [T(_shape(rows), value)]

    def op_Range(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        vals = [self.val(inputs, i, "Range", what).reshape(-1 if i else -1)
                for i, what in enumerate(("start", "limit", "delta"))]
        start, limit, delta = (v.astype(np.float64) for v in vals)
        if (delta == 0).any():
            raise NotStatic("a Range node with a delta of 0")
        length = np.maximum(np.ceil((limit - start) / delta), 0)
        if length.max() > self.max_elements:
            raise NotStatic(f"a Range node spans {vals[0].ravel()[0]}..{vals[1].ravel()[-1]} by "
                            f"{vals[2].ravel()[0]}, more than {self.max_elements} values")
        length = length.astype(np.int64)
        value = None
        if length.size == 1 and vals[0].size == 1 and vals[2].size == 1 and length[0] <= MAX_FOLD:
            kind = vals[0].dtype.kind
            value = (vals[0][0] + np.arange(length[0]) * vals[2][0])[None]
            value = value.astype(np.int64) if kind in "iu" else value.astype(np.float64)
        return [T(_shape([length]), value)]

    def op_Transpose(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Transpose")
        perm = list(a.get("perm", range(x.rank - 1, -1, -1)))
        if sorted(perm) != list(range(x.rank)):
            raise NotStatic(f"a Transpose node's perm {perm[:8]} is not a permutation of {x.rank} axes")
        value = None if x.value is None else np.transpose(x.value, [0] + [p + 1 for p in perm])
        return [T(x.shape[perm], value)]

    def op_MatMul(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x, y = self.need(inputs, 0, "MatMul"), self.need(inputs, 1, "MatMul")
        if x.rank == 0 or y.rank == 0:
            raise NotStatic("a MatMul node on a scalar")
        xs = x.shape if x.rank > 1 else np.concatenate([np.ones((1, x.shape.shape[1]), np.int64), x.shape])
        ys = y.shape if y.rank > 1 else np.concatenate([y.shape, np.ones((1, y.shape.shape[1]), np.int64)])
        k1, k2 = np.broadcast_arrays(xs[-1], ys[-2])
        if (k1 != k2).any():
            raise NotStatic("a MatMul node's inner dims differ")
        batch = self.broadcast([xs[:-2], ys[:-2]], "MatMul") if xs.shape[0] > 2 or ys.shape[0] > 2 else None
        rows = [] if batch is None else list(batch)
        if x.rank > 1:
            rows.append(xs[-2])
        if y.rank > 1:
            rows.append(ys[-1])
        return [T(_shape(rows) if rows else np.zeros((0, 1), np.int64))]

    def op_Gemm(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x, y = self.need(inputs, 0, "Gemm"), self.need(inputs, 1, "Gemm")
        if x.rank != 2 or y.rank != 2:
            raise NotStatic("a Gemm node's inputs are not matrices")
        m, k1 = (x.shape[1], x.shape[0]) if int(a.get("transA", 0)) else (x.shape[0], x.shape[1])
        k2, n = (y.shape[1], y.shape[0]) if int(a.get("transB", 0)) else (y.shape[0], y.shape[1])
        if (np.broadcast_arrays(k1, k2)[0] != np.broadcast_arrays(k1, k2)[1]).any():
            raise NotStatic("a Gemm node's inner dims differ")
        shape = _shape([m, n])
        c = self.get(inputs, 2)
        if c is not None:
            self.broadcast([shape, c.shape], "Gemm")
        return [T(shape)]

    def op_Conv(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x, w = self.need(inputs, 0, "Conv"), self.need(inputs, 1, "Conv")
        wd = w.dims()
        if x.rank < 3 or wd is None or len(wd) != x.rank:
            raise NotStatic("a Conv node's weight is not static or differs in rank from its input")
        sp = x.rank - 2
        group = int(a.get("group", 1))
        if group < 1 or (x.shape[1] != wd[1] * group).any() or wd[0] % group:
            raise NotStatic("a Conv node's channels do not match its weight and group")
        kernel = list(a.get("kernel_shape", wd[2:]))
        strides = list(a.get("strides", [1] * sp))
        dil = list(a.get("dilations", [1] * sp))
        pads = list(a.get("pads", [0] * 2 * sp))
        auto = a.get("auto_pad", "NOTSET")
        if kernel != wd[2:] or len(strides) != sp or len(dil) != sp or len(pads) != 2 * sp or \
                min(strides + dil, default=1) < 1 or min(pads, default=0) < 0:
            raise NotStatic("a Conv node's kernel, strides, dilations or pads do not fit its input")
        rows = [x.shape[0], np.full(1, wd[0], np.int64)]
        for i in range(sp):
            d = x.shape[2 + i]
            if auto in ("SAME_UPPER", "SAME_LOWER"):
                rows.append(-(-d // strides[i]))
            else:
                pad = 0 if auto == "VALID" else pads[i] + pads[i + sp]
                span = d + pad - dil[i] * (kernel[i] - 1) - 1
                if (span < 0).any():
                    raise NotStatic("a Conv node's kernel is larger than its padded input")
                rows.append(span // strides[i] + 1)
        return [T(_shape(rows))]

    def op_LayerNormalization(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "LayerNormalization")
        ax = self.axis(int(a.get("axis", -1)), x.rank, "LayerNormalization")
        stat = _shape([*x.shape[:ax], *([1] * (x.rank - ax))])
        return [T(x.shape), T(stat), T(stat)][:max(len(outputs), 1)]

    def op_Split(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Split")
        ax = self.axis(int(a.get("axis", 0)), x.rank, "Split")
        k = len(outputs)
        if len(inputs) > 1 and inputs[1]:
            sizes = self.scalar_ints(self.val(inputs, 1, "Split", "split"), "Split", "split").T  # (k, lead)
        elif "split" in a:
            sizes = np.asarray(a["split"], np.int64)[:, None]
        else:
            d = x.shape[ax]
            if (d % k).any():
                raise NotStatic("a Split node's axis does not divide into its outputs")
            sizes = np.stack([d // k] * k)
        if sizes.shape[0] != k or (sizes < 0).any() or (sizes.sum(axis=0) != x.shape[ax]).any():
            raise NotStatic("a Split node's sizes do not add up to its axis")
        outs = []
        for i in range(k):
            rows = [sizes[i] if j == ax else x.shape[j] for j in range(x.rank)]
            outs.append(T(_shape(rows)))
        return outs

    def op_Flatten(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Flatten")
        ax = int(a.get("axis", 1))
        ax = ax + x.rank if ax < 0 else ax
        if not 0 <= ax <= x.rank:
            raise NotStatic("a Flatten node's axis is outside its input")
        one = np.ones(1, np.int64)
        lead = np.prod(x.shape[:ax], axis=0) if ax else one
        tail = np.prod(x.shape[ax:], axis=0) if ax < x.rank else one
        return [T(_shape([lead, tail]))]

    def op_Pad(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Pad")
        pads = self.scalar_ints(self.val(inputs, 1, "Pad", "pads"), "Pad", "pads").T  # (2r, lead)
        axes = list(range(x.rank))
        if len(inputs) > 3 and inputs[3]:
            av = self.scalar_ints(self.val(inputs, 3, "Pad", "axes"), "Pad", "axes")
            axes = [self.axis(int(v), x.rank, "Pad") for v in av[0]]
        r = len(axes)
        if pads.shape[0] != 2 * r:
            raise NotStatic("a Pad node's pads do not match its axes")
        rows = [x.shape[i] for i in range(x.rank)]
        for j, ax in enumerate(axes):
            rows[ax] = rows[ax] + pads[j] + pads[j + r]
        return [T(_shape(rows))]

    def op_Tile(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        x = self.need(inputs, 0, "Tile")
        reps = self.scalar_ints(self.val(inputs, 1, "Tile", "repeats"), "Tile", "repeats").T
        if reps.shape[0] != x.rank or (reps < 0).any():
            raise NotStatic("a Tile node's repeats do not match its input's rank")
        if (reps > self.max_elements).any():
            raise NotStatic(f"a Tile node repeats {int(reps.max())} times, more than {self.max_elements}")
        return [T(x.shape * reps)]

    def op_ScatterElements(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        return [T(self.need(inputs, 0, "ScatterElements").shape)]

    def op_ScatterND(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        return [T(self.need(inputs, 0, "ScatterND").shape)]

    def op_OneHot(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        idx = self.need(inputs, 0, "OneHot")
        depth = self.val(inputs, 1, "OneHot", "depth").reshape(-1).astype(np.int64)
        if (depth < 0).any() or depth.max(initial=0) > self.max_elements:
            raise NotStatic("a OneHot node's depth is out of bounds")
        ax = int(a.get("axis", -1))
        rank = idx.rank + 1
        ax = ax + rank if ax < 0 else ax
        rows = list(idx.shape)
        rows.insert(ax, depth)
        return [T(_shape(rows))]

    def op_plugin_ScatterMeanPool(self, inputs: list[str], outputs: list[str], a: dict[str, Any]) -> list[T]:
        values = self.need(inputs, 0, "ScatterMeanPool")
        segments = int(a.get("num_segments", -1))
        if values.rank != 3 or not 0 < segments <= self.max_elements:
            raise NotStatic("a ScatterMeanPool node's values are not (B, N, D) or its num_segments is out "
                            "of bounds")
        return [T(_shape([values.shape[0], segments, values.shape[2]]))]
