"""Triton python-backend models of an sg2v model repository (written by `sg2v-export triton`).

- `OrchestratorModel` (the `sg2v` model): sg2v's one generation loop (`Pipeline` over `sg2v.generation`)
  whose stages are `BlsStage`s: each stage call is a BLS request to the stage's model, so Triton's dynamic
  batcher merges the stage calls (the UNet's sampler steps above all) of requests running at the same time
  in the model's instances. It opens the bundle copy in its version folder with every sha256 checked, and
  checks the stage models' files against the repository's record, refusing to load in one line otherwise.
- `OrtStageModel` (`--stage-backend python`): one stage on ONNX Runtime (CPU) for a server without the
  onnxruntime backend; it runs each batch the dynamic batcher forms as one call.

Requests carry one graph JSON and one seed per video and optionally steps, guidance, guidance_rescale,
sampler, layout_tries and per-video layout JSON; a response carries frames (B, F, H, W, 3) uint8 and one JSON
per video with the layout drawn (grounded bundles: tracks, object names, relation report) or null.

`triton_python_backend_utils` exists only inside Triton's python stub: it is imported when a model runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v.errors import BundleError, Sg2vError

REPOSITORY_FORMAT = "sg2v-triton-repository"
REPOSITORY_RECORD = "sg2v_repository.json"  # at the repository's root: what wrote it, the stage files' hashes
ORCHESTRATOR = "sg2v"
BUNDLE_DIR = "bundle"  # the bundle copy inside the orchestrator's version folder


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils

    return pb_utils


def _parameters(args: dict[str, Any]) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def read_record(repo: Path) -> dict[str, Any]:
    """The repository's record (`REPOSITORY_RECORD`), or BundleError."""
    try:
        record = json.loads((repo / REPOSITORY_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"model repository {repo}: cannot read {REPOSITORY_RECORD} ({e}); write it with "
                          "sg2v-export triton BUNDLE --out REPO") from None
    if not isinstance(record, dict) or record.get("format") != REPOSITORY_FORMAT:
        raise BundleError(f"model repository {repo}: {REPOSITORY_RECORD} is not an sg2v repository record; "
                          "write it with sg2v-export triton BUNDLE --out REPO")
    return record


def check_stage_files(repo: Path, record: dict[str, Any], manifest: dict[str, Any] | None = None) -> None:
    """BundleError (one line) unless every stage model's file matches the sha256 the record holds, and
    (ONNX stage files, with `manifest`) the bundle manifest's sha256 of that stage's graph."""
    from sg2v.io import sha256_file

    for model, entry in record.get("stage_files", {}).items():
        path = repo / entry["file"]
        digest = sha256_file(path) if path.is_file() else None
        want = [entry["sha256"]]
        if manifest is not None and path.suffix == ".onnx":
            stage = model.removeprefix("sg2v_")
            want.append(manifest["files"][manifest["stages"][stage]["file"]]["sha256"].lower())
        if digest is None or any(digest != w for w in want):
            raise BundleError(f"model repository {repo}: {entry['file']} is missing or does not match the "
                              "bundle manifest's sha256 (modified after it was written); write it again with "
                              "sg2v-export triton BUNDLE --out REPO")


class BlsStage:
    """A generation stage (`sg2v.generation.Stage`) that calls a stage model of the same server by BLS."""

    def __init__(self, model: str, io: dict[str, Any]):
        self.model = model
        self.inputs = [(d["name"], len(d["shape"])) for d in io["inputs"]]
        self.outputs = [d["name"] for d in io["outputs"]]

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        pb = _pb()
        tensors = []
        for name, ndim in self.inputs:
            a = np.ascontiguousarray(feeds[name])
            tensors.append(pb.Tensor(name, a.reshape(-1, 1) if ndim == 1 else a))  # (rows,): Triton's [1]
        host = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0)  # outputs in host memory (GPU stage models)
        response = pb.InferenceRequest(model_name=self.model, requested_output_names=self.outputs,
                                       inputs=tensors, preferred_memory=host).exec()
        if response.has_error():
            raise Sg2vError(f"stage model {self.model}: {response.error().message()}")
        return {name: pb.get_output_tensor_by_name(response, name).as_numpy() for name in self.outputs}


def _optional(request: Any, name: str) -> NDArray[Any] | None:
    tensor = _pb().get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _required(request: Any, name: str) -> NDArray[Any]:
    value = _optional(request, name)
    if value is None:  # the model config marks it required: Triton does not pass such a request on
        raise Sg2vError(f"the request has no {name!r} input")
    return value


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _json(value: Any, where: str) -> Any:
    """A request's JSON text (never a path: the server reads no files a client names)."""
    from sg2v.errors import GraphError

    try:
        return json.loads(_text(value))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise GraphError(f"{where}: not valid JSON ({e}); send the graph's JSON text") from None


def layout_result_json(result: Any, graph: Any) -> str:
    """One video's layout as JSON: its tracks (as --save-layout writes them), object names, the relation
    report and the one-line summary of relations not met (empty when all hold); "null" without a layout."""
    if result is None:
        return "null"
    from sg2v.layout import layout_json
    from sg2v.layout_sampler import relation_summary

    return json.dumps({"tracks": layout_json(result.tracks), "objects": list(graph.object_names),
                       "report": result.to_dict(), "summary": relation_summary(result)})


class OrchestratorModel:
    """The `sg2v` model: a request's graphs and seeds -> frames and layouts, stages called through BLS."""

    def initialize(self, args: dict[str, Any]) -> None:
        from sg2v.generation import Backend
        from sg2v.runtime.bundle import Bundle
        from sg2v.runtime.pipeline import Pipeline

        model_dir = Path(args["model_repository"])
        repo = model_dir.parent
        try:
            bundle = Bundle.open(model_dir / args["model_version"] / BUNDLE_DIR, verify=True)
            check_stage_files(repo, read_record(repo), bundle.manifest)
            names = json.loads(_parameters(args)["stages"])
            stages = {s: BlsStage(names[s], bundle.stages[s]) for s in bundle.stages}
            backend = Backend("triton-bls", stages["encoder"], stages["unet"], np, max_batch=bundle.max_batch,
                              layout=stages.get("layout"))
            self.pipe: Pipeline | None = Pipeline(bundle, backend)
        except Sg2vError as e:
            raise RuntimeError(f"sg2v: {e}") from None

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        responses = []
        for request in requests:
            try:
                frames, layouts = self.generate(request)
                responses.append(pb.InferenceResponse([
                    pb.Tensor("frames", frames),
                    pb.Tensor("layout_results", np.array([s.encode() for s in layouts], dtype=np.object_))]))
            except Sg2vError as e:
                responses.append(pb.InferenceResponse(error=pb.TritonError(str(e))))
        return responses

    def generate(self, request: Any) -> tuple[NDArray[Any], list[str]]:
        """Frames (B, F, H, W, 3) uint8 and B layout JSONs for one request."""
        from sg2v.errors import GraphError
        from sg2v.layout import expand_layout, layout_from_file_data

        pipe = self.pipe
        if pipe is None:
            raise Sg2vError("the sg2v model has been finalized")
        graphs = [pipe.parse(_json(g, f"graphs[{i}]"))
                  for i, g in enumerate(_required(request, "graphs").reshape(-1))]
        seeds = [int(s) for s in _required(request, "seeds").reshape(-1)]
        options: dict[str, Any] = {}
        for name, cast in (("steps", int), ("guidance", float), ("guidance_rescale", float),
                           ("sampler", _text), ("layout_tries", int)):
            value = _optional(request, name)
            if value is not None:
                options[name] = cast(value.reshape(-1)[0])
        given = _optional(request, "layouts")
        layouts = None
        if given is not None:
            given_json = [_json(v, f"layouts[{i}]") for i, v in enumerate(given.reshape(-1))]
            if len(given_json) != len(graphs):
                raise GraphError(f"{len(given_json)} layouts for {len(graphs)} graphs; send one (maybe {{}}) "
                                 "per graph")
            frames_n = pipe.bundle.config.data.frames
            layouts = [expand_layout(layout_from_file_data(d, g.num_objects, frames_n, f"layouts[{i}]"),
                                     frames_n, f"layouts[{i}]") if d else {}
                       for i, (d, g) in enumerate(zip(given_json, graphs))]
        result = pipe.run(graphs, seeds, layouts=layouts, **options)
        drawn = result.layouts or [None] * len(graphs)
        return (np.ascontiguousarray(result.frames),
                [layout_result_json(r, g) for r, g in zip(drawn, graphs)])

    def finalize(self) -> None:
        self.pipe = None


class OrtStageModel:
    """A stage model on ONNX Runtime (CPU): each batch of requests the dynamic batcher hands it runs as one
    call on their concatenated rows."""

    def initialize(self, args: dict[str, Any]) -> None:
        from sg2v.io import sha256_file
        from sg2v.runtime.backends.ort import OrtStage

        params = _parameters(args)
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        if not path.is_file() or sha256_file(path) != params["sha256"]:
            raise RuntimeError(f"sg2v: {path} is missing or does not match its sha256 in config.pbtxt "
                               "(modified after the repository was written); write it again with sg2v-export "
                               "triton BUNDLE --out REPO")
        self.io = json.loads(params["io"])
        try:
            rows = int(json.loads(args["model_config"])["max_batch_size"])  # the most rows a batch has
            self.stage = OrtStage(path, self.io, ["CPUExecutionProvider"], max_rows=rows)
        except Sg2vError as e:
            raise RuntimeError(f"sg2v: {e}") from None

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        parts: dict[str, list[NDArray[Any]]] = {d["name"]: [] for d in self.io["inputs"]}
        rows = []
        for request in requests:
            for d in self.io["inputs"]:
                a = pb.get_input_tensor_by_name(request, d["name"]).as_numpy()
                parts[d["name"]].append(a.reshape(a.shape[0], *d["shape"][1:]))
            rows.append(parts[self.io["inputs"][0]["name"]][-1].shape[0])
        out = self.stage.run({name: np.concatenate(p) for name, p in parts.items()})
        responses, lo = [], 0
        for n in rows:
            responses.append(pb.InferenceResponse([pb.Tensor(name, np.ascontiguousarray(value[lo:lo + n]))
                                                   for name, value in out.items()]))
            lo += n
        return responses
