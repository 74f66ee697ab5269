"""A client of the `sg2v` model on Triton Inference Server (`sg2v-run --server URL`), over HTTP.

`TritonClient(url).generate(graphs, seeds, ...)` sends graph JSON and seeds (and optionally steps, guidance,
guidance rescale, sampler and given layouts) and returns the frames (B, F, H, W, 3) uint8 and each video's
layout (a dict: tracks, objects, report, summary; None for a bundle without a layout stage): what
`Pipeline.run` gives for the same graphs and seeds. One client per thread (tritonclient's HTTP client is not
thread-safe). The server parses and checks the graphs with its bundle's vocabulary; its one-line errors come
back as `Sg2vError`s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.errors import GraphError, Sg2vError, require

MODEL = "sg2v"
MAX_GRAPH_FILE_BYTES = 16 << 20


class ServerError(Sg2vError):
    """The server refused a request or could not be reached."""


def _host(url: str) -> tuple[str, bool]:
    """host:port and whether to use TLS, from "host:port", "http://host:port" or "https://host:port"."""
    text = url.strip().rstrip("/")
    for scheme, ssl in (("http://", False), ("https://", True)):
        if text.startswith(scheme):
            return text[len(scheme):], ssl
    if "://" in text or not text:
        raise Sg2vError(f"--server {url!r}: give host:port or http://host:port of Triton's HTTP endpoint")
    return text, False


class TritonClient:
    """Requests to the `sg2v` model of a Triton server at `url` (host:port of its HTTP endpoint)."""

    def __init__(self, url: str, model: str = MODEL, timeout: float = 600.0):
        http = require("tritonclient.http", "serve")
        host, ssl = _host(url)
        self.url, self.model = url, model
        self._utils = require("tritonclient.utils", "serve")
        self.client = http.InferenceServerClient(url=host, ssl=ssl, connection_timeout=timeout,
                                                 network_timeout=timeout)
        self._http = http

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._utils.InferenceServerException as e:
            raise ServerError(f"Triton at {self.url}: {e.message() or e}") from None
        except OSError as e:
            raise ServerError(f"cannot reach Triton at {self.url} for {what} ({e}); start the server (README "
                              "\"Serving on Triton\") or check --server") from None

    def ready(self) -> bool:
        """Whether the server is up and the `sg2v` model is ready."""
        try:
            return bool(self.client.is_model_ready(self.model))
        except Exception:  # tritonclient raises its own and gevent's socket errors when nothing listens
            return False

    def statistics(self, model: str = "") -> dict[str, Any]:
        """Triton's statistics endpoint (every model's, or `model`'s)."""
        stats: dict[str, Any] = self._call("statistics", self.client.get_inference_statistics,
                                           model_name=model)
        return stats

    def generate(self, graphs: Sequence[Any], seeds: Sequence[int], steps: int | None = None,
                 guidance: float | None = None, guidance_rescale: float | None = None,
                 sampler: str | None = None, layouts: Sequence[Any] | None = None,
                 layout_tries: int | None = None) -> tuple[NDArray[Any], list[dict[str, Any] | None]]:
        """Frames (B, F, H, W, 3) uint8 and B layouts for B graphs (dicts or JSON text), graph i from seed
        i; `layouts[i]` is a layout mapping (or a graph with a "layout" key) for graph i, or None;
        `layout_tries` caps a grounded bundle's layout draws per graph (default: the bundle's)."""
        http = self._http
        texts = [g if isinstance(g, str) else json.dumps(g) for g in graphs]
        if len(seeds) != len(texts):
            raise Sg2vError(f"{len(seeds)} seeds for {len(texts)} graphs; pass one seed per graph")
        tensors = [("graphs", np.array([t.encode() for t in texts], dtype=np.object_), "BYTES"),
                   ("seeds", np.asarray(seeds, dtype=np.int64).reshape(-1), "INT64")]
        for name, value, dtype, kind in (("steps", steps, np.int32, "INT32"),
                                         ("layout_tries", layout_tries, np.int32, "INT32"),
                                         ("guidance", guidance, np.float64, "FP64"),
                                         ("guidance_rescale", guidance_rescale, np.float64, "FP64")):
            if value is not None:
                tensors.append((name, np.array([value], dtype=dtype), kind))
        if sampler is not None:
            tensors.append(("sampler", np.array([sampler.encode()], dtype=np.object_), "BYTES"))
        if layouts is not None:
            if len(layouts) != len(texts):
                raise Sg2vError(f"{len(layouts)} layouts for {len(texts)} graphs; pass one (maybe None) per "
                                "graph")
            tensors.append(("layouts", np.array([json.dumps(m or {}).encode() for m in layouts],
                                                dtype=np.object_), "BYTES"))
        inputs = []
        for name, array, kind in tensors:
            tensor = http.InferInput(name, list(array.shape), kind)
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        outputs = [http.InferRequestedOutput(n, binary_data=True) for n in ("frames", "layout_results")]
        result = self._call("inference", self.client.infer, self.model, inputs, outputs=outputs)
        frames = result.as_numpy("frames")
        drawn = [json.loads(v.decode() if isinstance(v, bytes) else v)
                 for v in result.as_numpy("layout_results").reshape(-1)]
        return frames, drawn

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_graph_files(paths: Sequence[str | Path]) -> list[Any]:
    """The graphs of graph files as JSON data (one graph or a list per file), for the server to check."""
    graphs: list[Any] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise GraphError(f"{path}: no such file; pass a scene-graph JSON file")
        if p.stat().st_size > MAX_GRAPH_FILE_BYTES:
            raise GraphError(f"{path}: more than {MAX_GRAPH_FILE_BYTES} bytes; a graph file is a few KiB")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise GraphError(f"{path}: not valid JSON ({e}); pass a scene-graph JSON file") from None
        graphs.extend(data if isinstance(data, list) else [data])
    return graphs


LOCAL_ONLY = "sets up a local run; with --server the server's repository decides it (drop the flag, or run " \
    "locally without --server)"
SERVER_REFUSES = (("--ckpt", "ckpt", None, LOCAL_ONLY), ("--device", "device", None, LOCAL_ONLY),
                  ("--threads", "threads", None, LOCAL_ONLY), ("--batch", "batch", None, LOCAL_ONLY),
                  ("--backend", "backend", "auto", LOCAL_ONLY),
                  ("--no-verify", "no_verify", False, LOCAL_ONLY),
                  ("--progress", "progress", False, "shows a local run's stages; a Triton request answers "
                   "once its videos are done (drop --progress with --server)"))


def run_cli(args: Any) -> int:
    """`sg2v-run --server URL`: the graphs generated by the server, written as a local run writes them."""
    from sg2v.runtime.cli import FlagError, _write_outputs, check_outputs

    for flag, attr, default, why in SERVER_REFUSES:
        if getattr(args, attr, default) != default:
            raise FlagError(f"{flag} {why}")
    if args.draw_layout and not args.contact_sheet:
        raise FlagError("--draw-layout draws the boxes on the contact sheet; add --contact-sheet SHEET.png")
    graphs = read_graph_files(args.graphs)
    layouts = None
    if args.layout is not None:
        if len(args.layout) != len(graphs):
            raise FlagError(f"{len(args.layout)} --layout file(s) for {len(graphs)} graph(s); give one "
                            "layout file per graph, in the order the graphs are given")
        layouts = read_graph_files(args.layout)
    check_outputs(args, len(graphs))
    with TritonClient(args.server) as client:
        print(f"sg2v-run: server {args.server}, model {client.model}")
        frames, drawn = client.generate(graphs, [args.seed] * len(graphs), steps=args.steps,
                                        guidance=args.guidance, guidance_rescale=args.guidance_rescale,
                                        sampler=args.sampler, layouts=layouts,
                                        layout_tries=args.layout_tries)
    n = len(graphs)
    if (args.save_layout or args.draw_layout) and any(d is None for d in drawn):
        raise FlagError("--save-layout / --draw-layout: the server's bundle has no layout stage")
    for i, video in enumerate(frames):
        graph, result = layout_result(drawn[i])
        _write_outputs(args, Path(args.out), i, n, video, graph, result)
    return 0


def layout_result(drawn: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """A server's layout JSON of one video as (an object with the graph's `object_names`, the
    `LayoutResult`), what a local run writes its outputs from; (None, None) without a layout."""
    if drawn is None:
        return None, None
    import dataclasses
    import typing
    from types import SimpleNamespace

    from sg2v.layout_sampler import LayoutResult

    hints = typing.get_type_hints(LayoutResult)
    report = drawn["report"]
    values: dict[str, Any] = {"tracks": _tracks(drawn["tracks"])}
    for f in dataclasses.fields(LayoutResult):
        if f.name == "tracks" or f.name not in report:
            continue
        value, kind = report[f.name], typing.get_args(hints[f.name])
        # a list of checks, each its to_dict()
        if kind and isinstance(kind[0], type) and dataclasses.is_dataclass(kind[0]):
            value = [kind[0](**item) for item in value]
        values[f.name] = value
    return SimpleNamespace(object_names=list(drawn["objects"])), LayoutResult(**values)


def _tracks(mapping: Mapping[str, Any]) -> NDArray[Any]:
    """A layout mapping of F boxes per object ("0": [[x0, y0, x1, y1], ...]) as (n, F, 4) float32."""
    return np.asarray([mapping[str(k)] for k in range(len(mapping))], dtype=np.float32)
