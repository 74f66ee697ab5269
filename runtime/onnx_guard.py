"""Bounds on what an untrusted ONNX file makes its runtime allocate, checked before ONNX Runtime or TensorRT
loads it (torch-free and onnx-free: a reader of the protobuf wire format for the few ONNX fields it needs).

ONNX Runtime folds constants while it creates a session, so a `ConstantOfShape` whose constant shape asks for
terabytes is allocated before any inference; TensorRT's builder folds it too. `check_onnx_file` refuses:
- tensors declared larger than `MAX_ELEMENTS` (graph inputs, outputs, value_info; initializers, sparse
  initializers and every tensor attribute), and tensors whose data does not match their dims or lives in
  external files: sg2v exports are self-contained (the exporter stops if torch writes external data), so every
  byte a backend loads is covered by the manifest's sha256, and a file naming external data is refused rather
  than read unverified from beside (or, by its `location`, outside) the bundle;
- `ConstantOfShape` whose shape is computed rather than a constant, unless it is the shape of a tensor that
  exists (a `Shape` node's output: no more values than that tensor; sg2v's exports with a batch axis make
  these), or whose constant shape exceeds `MAX_ELEMENTS`; `Expand`, `Tile` and `Range` with constant
  arguments beyond it;
- subgraphs (If/Loop/Scan bodies) and model-local functions are checked the same way;
- a main graph that is not static at the bundle's bounds (`sg2v.runtime.onnx_shapes`): every tensor's shape
  is inferred from the stage's input shapes with the batch axis at each size 1..max_rows, shape-computing
  constants folded; an operator outside the set sg2v's exports use (If, Loop, Scan, custom domains among
  them), a shape computed from run-time data, or a tensor over `MAX_ELEMENTS` at any batch size is refused.
The field numbers are those of onnx.proto (ModelProto.graph = 7, GraphProto.node = 1, ...).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Iterator, Set
from pathlib import Path
from typing import Any, NoReturn

from sg2v.errors import BundleError, first_line
from sg2v.safety import read_input

MAX_ELEMENTS = 1 << 28  # values in one tensor: 1 GiB of float32
MAX_FILE_BYTES = 2 << 30  # protobuf's own limit for one message
# (sha256 of the file, inputs, max_rows) of files that passed, oldest first
STATIC_CHUNK = 256  # batch sizes the static pass takes at once (its arrays have one column per size)
_PASSED: dict[tuple[Any, ...], bool] = {}

_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}  # TensorProto
_INT_TYPES = {6: "<i4", 7: "<i8"}
_NP_TYPES = {1: "<f4", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "u1", 10: "<f2",
             11: "<f8", 12: "<u4", 13: "<u8"}
_SMALL = 4096  # values decoded for the static pass (shape constants are a handful)


class OnnxGuardError(BundleError):
    """An ONNX file that declares more than the runtime allocates, or cannot be read as ONNX."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    if pos < len(buf) and buf[pos] < 0x80:  # most keys and lengths fit one byte
        return buf[pos], pos + 1
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message: ints for varint/fixed, memoryviews for bytes."""
    if not isinstance(buf, memoryview):  # a number where ONNX has a message: a crafted wire type
        raise ValueError("a message field holds a number")
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("a length-delimited field runs past its message")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"wire type {wire} is not used by ONNX")
        yield field, wire, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(wire: int, value: Any) -> list[int]:
    """A repeated int64 field's entries, packed (wire 2) or not."""
    if wire == 0:
        return [_signed(value)]
    if not isinstance(value, memoryview):  # wire 1 or 5: a fixed-width number where int64s belong
        raise ValueError(f"an int64 field with wire type {wire}")
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(_signed(v))
    return out


def _string(value: Any) -> str:
    return _bytes(value).tobytes().decode("utf-8", errors="replace")


def _bytes(value: Any) -> memoryview:
    """A length-delimited field's bytes; a number there (bytes(n) would allocate n bytes) is refused."""
    if not isinstance(value, memoryview):
        raise ValueError("a bytes field holds a number")
    return value


class _Tensor:
    """The parts of a TensorProto the checks need: name, dims, type, where its data is, int values."""

    def __init__(self, buf: memoryview):
        self.name, self.dims, self.data_type, self.external = "", [], 0, False
        self.raw: memoryview | None = None
        self.packed_ints: list[int] = []
        self.floats: list[bytes] = []  # float_data / double_data as little-endian bytes
        self.count = 0  # values in the typed (non-raw) data fields
        for field, wire, value in _fields(buf):
            if field == 1:
                self.dims += _ints(wire, value)
            elif field == 2:
                self.data_type = value
            elif field == 8:
                self.name = _string(value)
            elif field == 9:
                self.raw = _bytes(value)
            elif field == 14:
                self.external = value == 1
            elif field == 13:
                self.external = True
            else:
                self._typed_data(field, wire, value)

    def _typed_data(self, field: int, wire: int, value: Any) -> None:
        """Count (and keep, where small) the values of one typed data field; other fields are skipped."""
        if field in (5, 7, 11):  # int32_data, int64_data, uint64_data
            vals = _ints(wire, value)
            self.packed_ints += vals
            self.count += len(vals)
        elif field in (4, 10):  # float_data, double_data: packed fixed-width
            self.count += len(value) // (4 if field == 4 else 8) if wire == 2 else 1
            if self.count <= _SMALL:
                self.floats.append(value.tobytes() if wire == 2
                                   else value.to_bytes(4 if wire == 5 else 8, "little"))
        elif field == 6:  # string_data
            self.count += 1

    @classmethod
    def of_ints(cls, values: list[int], scalar: bool) -> _Tensor:
        t = cls(memoryview(b""))
        t.dims = [] if scalar else [len(values)]
        t.data_type, t.packed_ints, t.count = 7, values, len(values)
        return t

    def elements(self) -> int:
        return math.prod(self.dims) if self.dims else 1

    def array(self) -> Any:
        """The values as a numpy array (ints int64, floats float64, bool), `(dims,)` for a tensor of more
        than a few thousand values or of a type the static pass does not fold, None when unreadable."""
        import numpy as np

        if self.elements() > _SMALL or self.data_type not in _NP_TYPES:
            return (tuple(self.dims),)
        n, dtype = self.elements(), _NP_TYPES[self.data_type]
        if self.raw is not None:
            flat = np.frombuffer(bytes(self.raw), dtype=dtype)
        elif self.data_type in (1, 11):
            flat = np.frombuffer(b"".join(self.floats), dtype="<f4" if self.data_type == 1 else "<f8")
        elif self.data_type == 10:
            flat = np.asarray(self.packed_ints, np.uint16).view("<f2")
        else:
            flat = np.asarray(self.packed_ints, np.int64)
        if flat.size != n:
            return None
        flat = flat.reshape(self.dims)
        kind = flat.dtype.kind
        return flat.astype(bool) if self.data_type == 9 else \
            flat.astype(np.float64) if kind == "f" else flat.astype(np.int64)

    def int_values(self) -> list[int] | None:
        if self.data_type not in _INT_TYPES:
            return None
        if self.raw is not None:
            size = int(_INT_TYPES[self.data_type][2])
            n = len(self.raw) // size
            return list(struct.unpack(f"<{n}{'iq'[size == 8]}", bytes(self.raw[:n * size])))
        return list(self.packed_ints)


def _type_shape(buf: memoryview, dims: list[int],
                full: list[int | str | None] | None) -> list[int | str | None] | None:
    """A TypeProto's tensor shape, each dim an int, a dim_param name or None (`full` when it declares none);
    the dim values are also appended to `dims`."""
    for f2, _, v2 in _fields(buf):
        if f2 != 1:  # tensor_type
            continue
        for f3, _, v3 in _fields(v2):
            if f3 != 2:  # shape
                continue
            full = []
            for f4, _, v4 in _fields(v3):
                if f4 == 1:  # dim
                    full.append(_dim(v4, dims))
    return full


def _dim(buf: memoryview, dims: list[int]) -> int | str | None:
    """A TensorShapeProto.Dimension: its value (also appended to `dims`), its dim_param name, or None."""
    dim: int | str | None = None
    for f5, w5, v5 in _fields(buf):
        if f5 == 1 and w5 == 0:  # dim_value
            dims.append(_signed(v5))
            dim = _signed(v5)
        elif f5 == 2:  # dim_param
            dim = _string(v5)
    return dim


def _plain_value(field: int, wire: int, value: Any, ints: list[int], floats: list[float], plain: Any) -> Any:
    """An attribute's value after one of its scalar or list fields (i, ints, f, floats, s); `ints` and
    `floats` gather the repeated ones in place; any other field leaves `plain` as it was."""
    if field in (3, 8):  # i, ints (Constant's value_int / value_ints)
        ints += _ints(wire, value)
        return ints if field == 8 else ints[-1]
    if field == 2 and wire == 5:  # f
        return struct.unpack("<f", value.to_bytes(4, "little"))[0]
    if field == 7:  # floats
        floats += (list(struct.unpack(f"<{len(value) // 4}f", value[:len(value) // 4 * 4]))
                   if wire == 2 else [struct.unpack("<f", value.to_bytes(4, "little"))[0]])
        return floats
    if field == 4:  # s
        return _string(value)
    return plain


def _constant_arrays(parsed: list[Any]) -> None:
    """Give each node with a tensor value (and each Constant with a scalar or list one) its `value_array`."""
    import numpy as np

    for op, _, _, attrs in parsed:
        for key in ("value", "sparse_value"):
            if isinstance(attrs.get(key), _Tensor):
                attrs["value_array"] = attrs[key].array()
        if op == "Constant" and "value_array" not in attrs:
            for key in ("value_int", "value_ints"):
                if isinstance(attrs.get(key), _Tensor):
                    attrs["value_array"] = attrs[key].array()
            for key in ("value_float", "value_floats"):
                if key in attrs:
                    attrs["value_array"] = np.asarray(attrs[key], np.float64)


class _Checker:
    def __init__(self, path: Path, inputs: list[dict[str, Any]] | None = None, max_rows: int = 1):
        self.path = path
        self.inputs = None if inputs is None else {d["name"]: list(d["shape"]) for d in inputs}
        self.max_rows = max_rows

    def fail(self, what: str) -> NoReturn:
        raise OnnxGuardError(f"{self.path}: {what}; the file is not an sg2v export (crafted or corrupt): "
                             "re-export the bundle")

    def tensor(self, t: _Tensor, where: str) -> None:
        if any(d < 0 for d in t.dims):
            self.fail(f"{where} {t.name!r} has negative dims {t.dims}")
        n = t.elements()
        if n > MAX_ELEMENTS:
            self.fail(f"{where} {t.name!r} declares {t.dims} = {n} values, more than {MAX_ELEMENTS}")
        if t.external:
            self.fail(f"{where} {t.name!r} keeps its data in an external file, which the bundle's hashes do "
                      "not cover")
        if t.raw is not None:
            size = _ITEMSIZE.get(t.data_type)
            if size is not None and len(t.raw) != n * size:
                self.fail(f"{where} {t.name!r} holds {len(t.raw)} bytes for dims {t.dims}")
        elif t.count and t.count != n:
            self.fail(f"{where} {t.name!r} holds {t.count} values for dims {t.dims}")

    def sparse(self, buf: memoryview, where: str) -> None:
        """A SparseTensorProto: its values (1) and indices (2) as tensors, its dense dims (3) bounded."""
        dims: list[int] = []
        for field, wire, value in _fields(buf):
            if field in (1, 2):
                self.tensor(_Tensor(value), f"{where} {'values' if field == 1 else 'indices'}")
            elif field == 3:
                dims += _ints(wire, value)
        if any(d < 0 for d in dims) or math.prod(dims) > MAX_ELEMENTS:
            self.fail(f"{where} declares dense shape {dims[:8]}, more than {MAX_ELEMENTS} values")

    def value_info(self, buf: memoryview, where: str) -> tuple[str, list[int | str | None] | None]:
        """Bounds a declared shape; returns the name and dims (ints, dim_param names, None for an unnamed
        unknown dim; None for no shape at all)."""
        name = ""
        dims: list[int] = []
        full: list[int | str | None] | None = None
        for field, _, value in _fields(buf):
            if field == 1:
                name = _string(value)
            elif field == 2:  # TypeProto
                full = _type_shape(value, dims, full)
        if any(d < 0 for d in dims) or math.prod(dims) > MAX_ELEMENTS:
            self.fail(f"{where} {name!r} declares shape {dims}, more than {MAX_ELEMENTS} values")
        return name, full

    def graph(self, buf: memoryview, depth: int = 0) -> None:
        if depth > 16:
            self.fail("subgraphs nest more than 16 deep")
        consts, nodes, inputs, sparse = self._graph_fields(buf)
        parsed = [self.node(n, depth) for n in nodes]
        for op, _, outputs, attrs in parsed:  # Constant outputs are constants of the whole graph
            value = attrs.get("value", attrs.get("value_ints", attrs.get("value_int")))
            if op == "Constant" and value is not None and outputs:
                consts[outputs[0]] = value
        shapes = {outputs[0] for op, _, outputs, _ in parsed if op == "Shape" and outputs}
        for op, node_inputs, _, _ in parsed:
            self.allocation(op, node_inputs, consts, shapes)
        if depth == 0:
            if sparse:
                self.fail("the graph has sparse initializers, which sg2v exports do not write")
            self.static(inputs, consts, parsed)

    def _graph_fields(self, buf: memoryview) -> tuple[dict[str, _Tensor], list[memoryview],
                                                      list[tuple[str, Any]], bool]:
        """A GraphProto's initializers (checked), raw nodes, declared inputs, and whether any are sparse."""
        consts: dict[str, _Tensor] = {}
        nodes, inputs, sparse = [], [], False
        for field, _, value in _fields(buf):
            if field == 5:  # initializer
                t = _Tensor(value)
                self.tensor(t, "initializer")
                consts[t.name] = t
            elif field == 15:  # sparse_initializer
                self.sparse(value, "sparse initializer")
                sparse = True
            elif field in (11, 12, 13):  # input, output, value_info
                info = self.value_info(value, {11: "input", 12: "output", 13: "value_info"}[field])
                if field == 11:
                    inputs.append(info)
            elif field == 1:
                nodes.append(value)
        return consts, nodes, inputs, sparse

    def static(self, inputs: list[tuple[str, Any]], consts: dict[str, _Tensor], parsed: list[Any]) -> None:
        """Every tensor's shape at every batch size 1..max_rows (`sg2v.runtime.onnx_shapes`), bounded; the
        batch sizes are taken STATIC_CHUNK at a time, so memory stays bounded whatever max_rows is."""
        import numpy as np

        from sg2v.runtime import onnx_shapes as osh

        last = max(self.max_rows, 1)
        where = f"at batch sizes 1..{last}" if last > 1 else "at its input shapes"
        try:
            with np.errstate(all="ignore"):
                values = self._const_values(consts)
                fed = self._fed_inputs(inputs, consts)
                _constant_arrays(parsed)
                for lo in range(1, last + 1, STATIC_CHUNK):
                    rows = np.arange(lo, min(lo + STATIC_CHUNK - 1, last) + 1, dtype=np.int64)
                    self._run_shapes(rows, values, fed, parsed)
        except osh.NotStatic as e:
            self.fail(f"not static {where}: {e}")
        except (ValueError, TypeError, IndexError, OverflowError, KeyError) as e:
            self.fail(f"shapes cannot be inferred {where} ({type(e).__name__}: {first_line(e)})")

    def _const_values(self, consts: dict[str, _Tensor]) -> dict[str, Any]:
        """Each initializer's values (or `(dims,)` for a large one); fails for one that cannot be read."""
        values = {}
        for name, t in consts.items():
            value = t.array()
            if value is None:
                self.fail(f"initializer {name!r} cannot be read")
            values[name] = value
        return values

    def _fed_inputs(self, inputs: list[tuple[str, Any]],
                    consts: dict[str, _Tensor]) -> dict[str, list[int | str]]:
        """The dims of each graph input fed at run time (the stage's, else as declared), each static."""
        fed = {}
        for name, declared in inputs:
            if name in consts and (self.inputs is None or name not in self.inputs):
                continue
            dims = declared if self.inputs is None else self.inputs.get(name)
            if self.inputs is not None and name not in self.inputs:
                self.fail(f"graph input {name!r} is not one of the stage's inputs "
                          f"{sorted(self.inputs)}")
            if dims is None or any(d is None or (isinstance(d, int) and d < 0) for d in dims):
                self.fail(f"graph input {name!r} has no static shape ({declared})")
            fed[name] = dims
        return fed

    def _run_shapes(self, rows: Any, values: dict[str, Any], fed: dict[str, list[int | str]],
                    parsed: list[Any]) -> None:
        """Run the static shape pass over `parsed` at the batch sizes `rows`."""
        from sg2v.runtime import onnx_shapes as osh

        shapes = osh.Shapes(rows, MAX_ELEMENTS, self.fail)
        for name, value in values.items():
            shapes.env[name] = osh.T(osh._shape(list(value[0] if isinstance(value, tuple)
                                                     else value.shape)),
                                     None if isinstance(value, tuple) else value[None])
        for name, dims in fed.items():
            shape = [rows if isinstance(d, str) else d for d in dims]  # named: the batch
            shapes.env[name] = osh.T(osh._shape(shape))
        shapes.run(parsed)

    def node(self, buf: memoryview, depth: int) -> tuple[str, list[str], list[str], dict[str, _Tensor]]:
        op, domain, inputs, outputs = "", "", [], []
        attrs: dict[str, _Tensor] = {}
        for field, _, value in _fields(buf):
            if field == 1:
                inputs.append(_string(value))
            elif field == 2:
                outputs.append(_string(value))
            elif field == 4:
                op = _string(value)
            elif field == 7:
                domain = _string(value)
            elif field == 5:  # AttributeProto
                self.attribute(value, op, depth, attrs)
        return (op if domain in ("", "ai.onnx") else f"{domain}::{op}"), inputs, outputs, attrs

    def attribute(self, buf: memoryview, op: str, depth: int, attrs: dict[str, _Tensor]) -> None:
        """An AttributeProto into `attrs` (ints, floats, string, tensor); checks its tensors and subgraphs."""
        name = ""
        ints: list[int] = []
        floats: list[float] = []
        plain: Any = None
        for f2, w2, v2 in _fields(buf):
            if f2 == 1:
                name = _string(v2)
            elif f2 in (5, 10):  # t, tensors
                t = _Tensor(v2)
                self.tensor(t, f"attribute {name!r} of {op or 'a node'}")
                attrs[name] = t
            elif f2 in (6, 11):  # g, graphs
                self.graph(v2, depth + 1)
            elif f2 in (22, 23):  # sparse_tensor, sparse_tensors
                self.sparse(v2, f"attribute {name!r} of {op or 'a node'}")
            else:
                plain = _plain_value(f2, w2, v2, ints, floats, plain)
        if name in ("value_int", "value_ints"):
            attrs[name] = _Tensor.of_ints(ints, scalar=name == "value_int")
        elif plain is not None and name not in attrs:
            attrs[name] = plain

    def allocation(self, op: str, inputs: list[str], consts: dict[str, _Tensor],
                   shapes: Set[str] = frozenset()) -> None:
        """Fail for a node that would allocate beyond the bounds; `shapes` are `Shape` nodes' outputs."""
        def const_ints(i: int) -> list[int] | None:
            t = consts.get(inputs[i]) if i < len(inputs) and inputs[i] else None
            return None if t is None else t.int_values()

        if op == "ConstantOfShape":
            if inputs and inputs[0] in shapes:
                return  # another tensor's shape: as many values as that tensor, which exists already
            shape = const_ints(0)
            if shape is None:
                self.fail("a ConstantOfShape node takes a computed shape (unbounded before it runs)")
            self._bounded(op, shape)
        elif op in ("Expand", "Tile"):
            values = const_ints(1)
            if values is not None:
                self._bounded(op, values)
        elif op == "Range":
            self._range(inputs, consts)

    def _range(self, inputs: list[str], consts: dict[str, _Tensor]) -> None:
        """Fail for a Range node whose constant start, limit and delta span more than the bound."""
        args = [consts.get(inputs[i]) if i < len(inputs) else None for i in range(3)]
        if all(a is not None for a in args):
            vals = [a.int_values() for a in args if a is not None]
            ints = [v[0] for v in vals if v is not None and len(v) == 1]
            if len(ints) == 3:
                start, limit, delta = ints
                if delta == 0 or max(math.ceil((limit - start) / delta), 0) > MAX_ELEMENTS:
                    self.fail(f"a Range node spans {start}..{limit} by {delta}, more than {MAX_ELEMENTS} "
                              "values")

    def _bounded(self, op: str, values: list[int]) -> None:
        if any(v < 0 for v in values) or math.prod(values) > MAX_ELEMENTS:
            self.fail(f"a {op} node asks for shape {values[:8]}, more than {MAX_ELEMENTS} values")


def _check_model(checker: _Checker, buf: memoryview) -> int:
    """Check a ModelProto's graphs and functions' nodes; returns how many graphs it has."""
    graphs = 0
    for field, _, value in _fields(buf):
        if field == 7:  # graph
            checker.graph(value)
            graphs += 1
        elif field == 25:  # functions: FunctionProto.node = 7
            for f2, _, v2 in _fields(value):
                if f2 == 7:
                    op, node_inputs, _, _ = checker.node(v2, 1)
                    checker.allocation(op, node_inputs, {})
    return graphs


def check_onnx_file(path: str | os.PathLike[str], inputs: list[dict[str, Any]] | None = None,
                    max_rows: int = 1) -> None:
    """OnnxGuardError (one line) unless the ONNX file at `path` stays within the bounds in the module note.

    `inputs` are the stage's inputs as the manifest gives them ({"name", "shape"}; a named dim is the batch
    axis, taking every value 1..`max_rows`); without them the graph's own declared input shapes are used,
    named dims likewise.
    """
    path = Path(path)
    checker = _Checker(path, inputs, max_rows)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            checker.fail(f"{size} bytes, more than protobuf's {MAX_FILE_BYTES}")
        raw = read_input(path, MAX_FILE_BYTES)  # a regular file, bounded by the bytes actually read
        key = (hashlib.sha256(raw).digest(), repr(inputs), int(max_rows))
        if key in _PASSED:  # the same bytes checked at the same bounds: a bundle opened again
            return
        graphs = _check_model(checker, memoryview(raw))
        if graphs != 1:
            checker.fail(f"{graphs} graphs, an ONNX model has one")
        if len(_PASSED) >= 64:
            _PASSED.pop(next(iter(_PASSED)))
        _PASSED[key] = True
    except OnnxGuardError:
        raise
    except (ValueError, IndexError, struct.error, OSError) as e:
        raise OnnxGuardError(f"{path}: not a readable ONNX file ({e}); copy the bundle again or re-export "
                             "it") from None
