"""Check an ONNX graph against the operators TensorRT's ONNX parser imports (10.3, JetPack 6, and later).

The table is data (`trt_ops.json`, derived from `specs/tensorrt-onnx-operators.md`): per op whether it is
supported, the tensor types of its row, and the row's restrictions as rules this module evaluates. A target
after 10.3 applies the table's recorded later changes (ops added, types widened, restrictions lifted). Types
come from ONNX shape inference (`value_info`), so the check sees the graph the parser sees. Needs `onnx` only.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

TABLE_FILE = "trt_ops.json"

# onnx.TensorProto.DataType -> the table's type names (numbers are fixed by the ONNX IR spec).
_TYPE_NAMES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING", 9: "BOOL",
    10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128", 16: "BF16",
    17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8", 21: "UINT4", 22: "INT4", 23: "FP4",
}
_STANDARD_DOMAINS = ("", "ai.onnx")


def load_table() -> dict[str, Any]:
    """The operator table shipped with the package (`sg2v/export/trt_ops.json`)."""
    text = resources.files("sg2v.export").joinpath(TABLE_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def _version(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(v).split("."))
    except ValueError:
        raise ValueError(f"TensorRT version {v!r} is not of the form MAJOR.MINOR (e.g. 10.3)") from None


def table_for(target: str, table: dict[str, Any] | None = None) -> dict[str, Any]:
    """The op rows as of TensorRT `target` (>= the table's base version): later changes applied in order."""
    table = table or load_table()
    base = table["target"]
    if _version(target) < _version(base):
        raise ValueError(f"the operator table starts at TensorRT {base}; target {target} is older")
    ops = {name: dict(row) for name, row in table["ops"].items()}
    for change in sorted(table.get("later", []), key=lambda c: _version(c["version"])):
        if _version(change["version"]) > _version(target):
            continue
        row = ops.setdefault(change["op"], {"supported": False, "types": [], "restrictions": ""})
        row.update({k: v for k, v in change.items() if k not in ("version", "op")})
        row["since"] = change["version"]
    opset_max = max((m for v, m in table["opset_max"].items() if _version(v) <= _version(target)))
    return {"ops": ops, "opset_max": opset_max, "opset_min": table["opset_min"], "plugins": table["plugins"],
            "boundary_only_types": table["boundary_only_types"], "narrowed_types": table["narrowed_types"]}


def _first_supported(op: str, table: dict[str, Any]) -> str | None:
    """The first later TensorRT version whose table supports `op` (None if none recorded)."""
    versions = [c["version"] for c in table.get("later", []) if c["op"] == op and c.get("supported")]
    return min(versions, key=_version) if versions else None


class _Graph:
    """Tensor types, ranks and constant values of one (inferred) ONNX graph and its subgraphs."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.types: dict[str, int] = {}
        self.ranks: dict[str, int] = {}
        self.shapes: dict[str, list[int | None]] = {}
        self.consts: dict[str, Any] = {}
        self.boundary: set[str] = set()
        g = model.graph
        self._collect(g, numpy_helper)
        self.boundary = {v.name for v in list(g.input) + list(g.output)}

    def _collect(self, g, numpy_helper) -> None:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            tt = vi.type.tensor_type
            if tt.elem_type:
                self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                self.ranks[vi.name] = len(dims)
                self.shapes[vi.name] = dims
        for init in g.initializer:
            self.types[init.name] = init.data_type
            self.ranks[init.name] = len(init.dims)
            self.shapes[init.name] = list(init.dims)
            self.consts[init.name] = numpy_helper.to_array(init)
        for node in g.node:
            self._collect_node(node, numpy_helper)

    def _collect_node(self, node, numpy_helper) -> None:
        """A Constant node's value and type; the subgraphs of an If/Loop/Scan node."""
        if node.op_type == "Constant" and node.domain in _STANDARD_DOMAINS:
            for a in node.attribute:
                if a.name == "value":
                    self.consts[node.output[0]] = numpy_helper.to_array(a.t)
                    self.types[node.output[0]] = a.t.data_type
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                self._collect(sub, numpy_helper)

    def nodes(self, g=None):
        """Every node, subgraph nodes included (If/Loop/Scan bodies are parsed too)."""
        for node in g.node:
            yield node
            for a in node.attribute:
                subs = ([a.g] if a.HasField("g") else []) + list(a.graphs)
                for sub in subs:
                    yield from self.nodes(sub)


def _attr(node, name: str):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return None


def _input(node, i: int) -> str | None:
    return node.input[i] if i < len(node.input) and node.input[i] else None


def _rule_issue(rule: dict[str, Any], node, g: _Graph) -> str | None:  # noqa: C901  one flat branch per trt_ops.json rule kind
    """The restriction `rule` violated by `node`, as a message; None if it holds or cannot be decided."""
    kind = rule["rule"]
    if kind == "input_constant":
        name = _input(node, rule["input"])
        if name is not None and name not in g.consts:
            return f"`{rule['what']}` input must be an initializer or Constant, got computed tensor {name!r}"
    elif kind == "input_max":
        name = _input(node, rule["input"])
        if name in g.consts and int(g.consts[name].max()) >= rule["below"]:
            return f"`{rule['what']}` = {int(g.consts[name].max())} must be < {rule['below']}"
    elif kind == "input_false":
        name = _input(node, rule["input"])
        if name is not None and (name not in g.consts or bool(g.consts[name].any())):
            return f"`{rule['what']}` must be a constant False (inference only)"
    elif kind == "input_zero":
        name = _input(node, rule["input"])
        if name is not None and (name not in g.consts or bool(g.consts[name].any())):
            return f"`{rule['what']}` must be a constant 0"
    elif kind == "attr_absent":
        if _attr(node, rule["attr"]) is not None:
            return f"attribute `{rule['attr']}` must be absent"
    elif kind == "attr_in":
        value = _attr(node, rule["attr"])
        value = rule["default"] if value is None else value
        if value not in rule["values"]:
            return f"attribute `{rule['attr']}` = {value!r} not in {rule['values']}"
    elif kind == "attr_all_ones":
        value = _attr(node, rule["attr"])
        if value is not None and any(int(v) != 1 for v in value):
            return f"attribute `{rule['attr']}` = {list(value)} must be absent or all 1"
    elif kind == "max_outputs":
        used = [o for o in node.output if o]
        if len(used) > rule["n"]:
            extra = used[rule["n"]:]
            return f"only {rule['n']} output(s) supported, node has {len(used)} ({extra} unsupported)"
    elif kind == "input_rank":
        name = _input(node, rule["input"])
        rank = g.ranks.get(name) if name else None
        if rank is not None and rank not in rule["ranks"]:
            return f"{rule['what']} only: input {rule['input']} has rank {rank}, needs {rule['ranks']}"
    elif kind == "group_norm_per_group":
        groups = _attr(node, "num_groups")
        for i, what in ((1, "scale"), (2, "bias")):
            shape = g.shapes.get(_input(node, i) or "")
            if shape and groups is not None and shape[0] is not None and shape[0] != groups:
                return (f"`{what}` has {shape[0]} entries but num_groups = {groups}: opset-21 per-channel "
                        "form; 10.3 reads one value per group (emit per-group 1/0 and a Mul/Add after)")
    elif kind == "einsum_equation":
        eq = (_attr(node, "equation") or "").replace(" ", "")
        letters = set(eq) - set(",->.")
        if any(not ch.islower() for ch in letters):
            return f"equation {eq!r}: only lower-case labels are parsed"
        for operand in eq.split("->")[0].split(","):
            labels = operand.replace(".", "")
            if len(set(labels)) != len(labels):
                return f"equation {eq!r}: repeated label within operand {operand!r} (diagonal) unsupported"
    elif kind == "warn":
        return None
    else:
        raise ValueError(f"trt_ops.json has unknown rule {kind!r}")
    return None


def check_model(model, target: str = "10.3", plugins: dict[str, Any] | None = None) -> dict[str, Any]:
    """Report every node TensorRT `target`'s ONNX parser would reject: op, types, restrictions, opset.

    `model` is an `onnx.ModelProto` or a path. Custom-domain ops count as supported only if they are
    registered plugins (the table's `plugins`, e.g. `sg2v::ScatterMeanPool`, plus `plugins`).
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    full = load_table()
    table = table_for(target, full)
    known_plugins = dict(table["plugins"])
    known_plugins.update(plugins or {})
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = _Graph(inferred)
    unsupported: list[dict[str, Any]] = []
    warnings: list[str] = []
    op_counts: dict[str, int] = {}
    plugin_counts: dict[str, int] = {}

    def issue(node, op: str, reason: str, fixed_in: str | None = None) -> None:
        entry = {"node": node.name or (node.output[0] if node.output else ""), "op": op, "reason": reason}
        if fixed_in:
            entry["fixed_in"] = fixed_in
        unsupported.append(entry)

    opset = next((o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS), None)
    if opset is not None and not table["opset_min"] <= opset <= table["opset_max"]:
        unsupported.append({"node": "", "op": "opset", "reason": f"opset {opset} outside the parser's range "
                            f"{table['opset_min']}..{table['opset_max']} at TensorRT {target}"})

    for node in g.nodes(inferred.graph):
        standard = node.domain in _STANDARD_DOMAINS
        op = node.op_type if standard else f"{node.domain}::{node.op_type}"
        op_counts[op] = op_counts.get(op, 0) + 1
        if not standard:
            plugin = known_plugins.get(op)
            if plugin is None:
                issue(node, op, "custom-domain op with no registered plugin creator of that name")
                continue
            plugin_counts[op] = plugin_counts.get(op, 0) + 1
            _check_plugin_node(node, op, plugin, target, g, table, issue, warnings)
        else:
            _check_standard_node(node, op, target, full, g, table, issue, warnings)

    return {
        "target": target,
        "ok": not unsupported,
        "opset": opset,
        "nodes": sum(op_counts.values()),
        "op_counts": dict(sorted(op_counts.items())),
        "unsupported": unsupported,
        "plugins": [{"op": k, "count": v, "note": known_plugins[k].get("note", "registered plugin")}
                    for k, v in sorted(plugin_counts.items())],
        "warnings": sorted(set(warnings)),
    }


def _check_plugin_node(node, op: str, plugin: dict[str, Any], target: str, g: _Graph, table: dict[str, Any],
                       issue, warnings: list[str]) -> None:
    """Report what keeps TensorRT `target` from running a registered plugin's node."""
    since = plugin.get("since")
    if since and _version(target) < _version(since):
        issue(node, op, f"TensorRT {target} has no Python plugin API (tensorrt.plugin arrives in "
              f"{since}); export with --pooling portable for this TensorRT", since)
        return
    _check_types(node, op, plugin.get("types", []), plugin, g, table, issue, warnings)
    for reason in _plugin_attr_issues(node, plugin, target):
        issue(node, op, reason)
    if plugin.get("aot_since") and _attr(node, "aot") == 1 \
            and _version(target) < _version(plugin["aot_since"]):
        warnings.append(f"{op}: aot=1 is ignored before TensorRT {plugin['aot_since']} (no "
                        "ahead-of-time plugins): the JIT implementation runs, with Python and CuPy "
                        "at inference")


def _check_standard_node(node, op: str, target: str, full: dict[str, Any], g: _Graph, table: dict[str, Any],
                         issue, warnings: list[str]) -> None:
    """Report a standard-domain node the table lists as unsupported, or whose types or restrictions fail."""
    row = table["ops"].get(op)
    if row is None or not row["supported"]:
        later = _first_supported(op, full)
        where = "not listed" if row is None else "listed as not supported"
        issue(node, op, f"{where} by the TensorRT {target} ONNX parser", later)
        return
    types = row.get("code_types") or row["types"]
    _check_types(node, op, types, row, g, table, issue, warnings)
    for rule in row.get("checks", []):
        if "until" in rule and _version(target) >= _version(rule["until"]):
            continue
        if rule["rule"] == "warn":
            warnings.append(f"{op}: {rule['message']}")
            continue
        reason = _rule_issue(rule, node, g)
        if reason:
            issue(node, op, reason, rule.get("until"))


def _plugin_attr_issues(node, plugin: dict[str, Any], target: str) -> list[str]:
    """What a plugin node's attributes lack for the parser to find and create the plugin at `target`."""
    out = []
    for name in plugin.get("attributes", []):
        if _attr(node, name) is None:
            out.append(f"attribute `{name}` is missing (a field of the plugin)")
    namespace = plugin.get("namespace")
    if namespace is not None and _attr(node, "plugin_namespace") != namespace:
        out.append(f"attribute `plugin_namespace` = {_attr(node, 'plugin_namespace')!r}, needs "
                   f"{namespace!r}: the 10.6 parser's fallback importer finds plugins by it, not by the "
                   "node's domain")
    version = plugin.get("version")
    if version is not None and _attr(node, "plugin_version") not in (None, version):
        out.append(f"attribute `plugin_version` = {_attr(node, 'plugin_version')!r}, the plugin registers "
                   f"version {version!r}")
    aot_since = plugin.get("aot_since")
    if aot_since is not None:
        aot = _attr(node, "aot")
        if aot is not None and aot not in (0, 1):
            out.append(f"attribute `aot` = {aot!r}, needs 0 (JIT) or 1 (AOT)")
        elif aot is None and _version(target) >= _version(aot_since):
            out.append(f"no attribute `aot` (0 or 1): from TensorRT {aot_since} the plugin has JIT and AOT "
                       "implementations and creating it fails unless the node (or a PREFER_*_PYTHON_PLUGINS "
                       "network flag) says which to use")
    return out


def _check_types(node, op, types, row, g: _Graph, table, issue, warnings) -> None:
    names = []
    inputs = row.get("typed_inputs")
    idx = range(len(node.input)) if inputs is None else inputs
    names += [_input(node, i) for i in idx]
    names += [node.output[i] for i in row.get("typed_outputs", []) if i < len(node.output)]
    for name in names:
        if not name:
            continue
        code = g.types.get(name)
        if code is None:
            warnings.append(f"{op} ({node.name}): type of {name!r} unknown after shape inference")
            continue
        tname = _TYPE_NAMES.get(code, f"type{code}")
        if tname in table["narrowed_types"] and table["narrowed_types"][tname] in types:
            warnings.append(f"{op} ({node.name}): {tname} tensor {name!r} is narrowed to "
                            f"{table['narrowed_types'][tname]} with clamping")
        elif tname not in types:
            issue(node, op, f"tensor {name!r} is {tname}; supported: {', '.join(types) or 'none'}")
        elif tname in table["boundary_only_types"] and name not in g.boundary:
            issue(node, op, f"tensor {name!r} is {tname}, allowed only on network inputs and outputs")


def format_report(report: dict[str, Any]) -> str:
    """A few human lines: verdict, op histogram, plugins, each unsupported node, warnings."""
    verdict = "OK" if report["ok"] else f"{len(report['unsupported'])} problem(s)"
    head = f"TensorRT {report['target']} op check: {verdict}"
    lines = [f"{head} ({report['nodes']} nodes, opset {report['opset']})"]
    for p in report["plugins"]:
        lines.append(f"  plugin {p['op']} x{p['count']}: {p['note']}")
    for u in report["unsupported"]:
        later = f" (accepted from TensorRT {u['fixed_in']})" if u.get("fixed_in") else ""
        lines.append(f"  UNSUPPORTED {u['op']} {u['node']}: {u['reason']}{later}")
    for w in report["warnings"]:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
