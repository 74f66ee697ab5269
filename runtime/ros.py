"""sg2v-ros: a ROS 2 node that turns scene-graph requests into video frames (rclpy, from the `ros` extra).

Topics (names are parameters; relative names follow the node's namespace and remappings):
- graphs (std_msgs/String, in): one request as JSON, `{"graph": {...}, "id": "r1", "futures": 4, "seed": 7}`
  (or a bare graph). Optional keys: "id" (a string or integer echoed in every answer; default "sg2v-<n>"),
  "futures" (videos of this graph, default the `futures` parameter), "seeds" (one per future) or "seed"
  (futures j = seed + j; default the `seed` parameter), "layout" (given tracks for a layout-grounded bundle,
  as `sg2v-run --layout` takes them) and "stamp" ({"sec", "nanosec"}: the request time; default the time the
  node received it). Unknown keys are errors.
- images (sensor_msgs/Image, out): each video's frames as rgb8, video 0 first; frame k of every video is
  stamped request time + k / fps, `header.frame_id` the `frame_id` parameter.
- results (std_msgs/String, out): one JSON per request after its images: id, stamp, seeds, frame size and
  for a layout-grounded bundle each video's tracks with its relation checks; the answer to "N futures of
  this graph", keyed by the request id.
- errors (std_msgs/String, out): one JSON per bad request, failed generation or request dropped from the
  full queue: {"id", "kind", "error", "dropped"}; the node logs the same one line and keeps serving.

Requests wait in a bounded queue (`queue_depth`) for one worker thread; a request that arrives when it is full
drops the oldest waiting one (counted in "dropped"). SIGINT or SIGTERM stops the worker (a generation under
way at its next sampler step), destroys the node and shuts rclpy down (exit status 0).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sg2v.errors import ConfigError, GraphError, MissingDependencyError, Sg2vError, first_line, require
from sg2v.runtime.backends import BACKENDS

NODE_NAME = "sg2v"
MAX_FUTURES = 64  # videos per request: one request is one batched generation call
MAX_REQUEST_BYTES = 1 << 20
REQUEST_KEYS = ("graph", "id", "futures", "seeds", "seed", "layout", "stamp")
SPIN_POLL_S = 0.1  # the executor waits at most this long, so a SIGINT is seen within it


@dataclass(frozen=True)
class Parameter:
    """One node parameter: its name, default (which fixes its ROS type) and help."""

    name: str
    default: Any
    help: str


PARAMETERS = (
    Parameter("bundle", "", "bundle folder written by sg2v-export (empty: models/demo when it exists)"),
    Parameter("backend", "auto", f"{', '.join(BACKENDS)} (as sg2v-run --backend)"),
    Parameter("device", "", "cpu, cuda or cuda:N (empty: the backend's choice)"),
    Parameter("threads", 0, "CPU threads for ONNX Runtime / torch (0: one per core)"),
    Parameter("verify", True, "check the bundle's sha256 hashes when it is opened"),
    Parameter("steps", 0, "sampler steps (0: the bundle's)"),
    Parameter("guidance", -1.0, "classifier-free guidance weight (negative: the bundle's)"),
    Parameter("layout_tries", 0, "layouts drawn per video at most until its relations hold (0: the "
              "bundle's)"),
    Parameter("futures", 1, f"videos per request when the request does not say (1..{MAX_FUTURES})"),
    Parameter("seed", 0, "seed of future 0 when the request gives none; future j gets seed + j"),
    Parameter("fps", 8.0, "frames per second of the videos: frame k is stamped request time + k / fps"),
    Parameter("queue_depth", 4, "requests waiting at most; a new one drops the oldest waiting one"),
    Parameter("frame_id", "sg2v", "header.frame_id of the images"),
    Parameter("graph_topic", "graphs", "requests in (std_msgs/String, JSON)"),
    Parameter("image_topic", "images", "frames out (sensor_msgs/Image, rgb8)"),
    Parameter("result_topic", "results", "one JSON report per request out (std_msgs/String)"),
    Parameter("error_topic", "errors", "one JSON entry per bad, failed or dropped request (std_msgs/String)"),
    Parameter("image_depth", 256, "history depth of the reliable image publisher (frames kept for resend)"),
)


@dataclass(frozen=True)
class Request:
    """One parsed request: the graph, one seed per future, the request time (ns; None: on receipt)."""

    id: str | int
    graph: Any  # sg2v.graph.SceneGraph
    seeds: tuple[int, ...]
    stamp_ns: int | None


class DropOldestQueue:
    """A bounded FIFO: `put` on a full queue drops the oldest item (returned, and counted in `dropped`)."""

    def __init__(self, depth: int):
        self.depth = depth
        self.dropped = 0
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Any) -> Any | None:
        """Append `item`; the item dropped to make room, or None."""
        with self._cond:
            gone = None
            if len(self._items) >= self.depth:
                gone = self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()
            return gone

    def get(self) -> Any | None:
        """The oldest item, waiting for one; None once the queue is closed."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            return None if self._closed else self._items.popleft()

    def close(self) -> int:
        """Wake every `get` with None; the number of items left unserved."""
        with self._cond:
            self._closed = True
            left = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return left

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


def _shown(value: Any) -> str:
    plain = isinstance(value, (str, int, float, bool, type(None)))
    text = json.dumps(value) if plain else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise GraphError(f"{what} must be an integer in [{lo}, {hi}], got {_shown(value)}")
    return value


def parse_request(text: str, bundle: Any, futures: int, seed: int, number: int) -> Request:
    """A `Request` from a graphs-topic message (see the module note), checked against `bundle`'s vocabulary
    and sizes; `futures` and `seed` are the node's defaults, `number` names a request without an id.
    A bad request raises a one-line `GraphError` (its id, when readable, is in `.request_id`)."""
    rid: str | int = f"{NODE_NAME}-{number}"
    try:
        data = _request_object(text)
        if "id" in data:
            rid = _request_id(data["id"])
        unknown = sorted(set(data) - set(REQUEST_KEYS))
        if unknown:
            raise GraphError(f"request: unknown key(s) {', '.join(map(_shown, unknown))}; a request takes "
                             f"{', '.join(REQUEST_KEYS)}")
        parsed = _request_graph(data, bundle)
        seeds = _request_seeds(data, futures, seed)
        return Request(rid, parsed, tuple(seeds), _stamp(data["stamp"]) if "stamp" in data else None)
    except GraphError as e:
        e.request_id = rid  # type: ignore[attr-defined]  # read back with getattr by the node
        raise


def _request_object(text: str) -> dict[str, Any]:
    """The request's JSON object (a bare graph becomes {"graph": ...}); bounded in size, strictly decoded."""
    from sg2v.graph import _decode_json

    if len(text) > MAX_REQUEST_BYTES:
        raise GraphError(f"request of {len(text)} characters, more than {MAX_REQUEST_BYTES}; send "
                         "one graph per request")
    data = _decode_json(text, "request", "request", '{"graph": {"objects": [...], "relationships": '
                        '[...]}, "futures": N}')  # strict: no NaN, duplicate keys or deep nesting
    if not isinstance(data, dict):
        raise GraphError(f"request must be a JSON object, got {type(data).__name__}; send "
                         '{"graph": {...}, "futures": N}')
    if "objects" in data:  # a bare graph
        data = {"graph": data}
    return data


def _request_id(given: Any) -> str | int:
    """The request's own id: a string or an integer of at most 200 characters."""
    if isinstance(given, bool) or not isinstance(given, (str, int)) or len(str(given)) > 200:
        raise GraphError(f"request id must be a string or an integer (at most 200 characters), got "
                         f"{_shown(given)}")
    return given


def _request_graph(data: dict[str, Any], bundle: Any) -> Any:
    """The request's graph (with its layout, given apart or inside), parsed against `bundle`."""
    from sg2v.graph import parse_graph

    if "graph" not in data:
        raise GraphError('request has no "graph"; send {"graph": {"objects": [...], "relationships": '
                         '[...]}}')
    graph = data["graph"]
    if "layout" in data:
        if not bundle.grounded:
            raise GraphError(f"request gives a layout, but bundle {bundle.path} has no layout stage (not "
                             "layout-grounded); drop the layout or serve a layout-grounded bundle")
        if not isinstance(graph, Mapping) or "layout" in graph:
            raise GraphError('request gives a layout both in "layout" and in its graph; give it once')
        graph = {**graph, "layout": data["layout"]}
    cfg = bundle.config.data
    parsed = parse_graph(graph, bundle.vocab, cfg.max_objects, cfg.max_relationships, cfg.frames)
    if parsed.layout and not bundle.grounded:
        raise GraphError(f"graph has a layout, but bundle {bundle.path} has no layout stage (not "
                         "layout-grounded); drop the layout or serve a layout-grounded bundle")
    return parsed


def _request_seeds(data: dict[str, Any], futures: int, seed: int) -> list[int]:
    """One seed per future: the request's "seeds", or "futures" consecutive ones from its "seed" (defaults:
    the node's `futures` and `seed`)."""
    from sg2v.config import MAX_SEED

    if "seeds" not in data:
        n = _int(data.get("futures", futures), "futures", 1, MAX_FUTURES)
        first = _int(data.get("seed", seed), "seed", 0, MAX_SEED - n + 1)
        return list(range(first, first + n))
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds:
        raise GraphError(f"seeds must be a non-empty list of integers, got {_shown(seeds)}")
    if "futures" in data and data["futures"] != len(seeds):
        raise GraphError(f"futures {_shown(data['futures'])} but {len(seeds)} seeds; give one seed "
                         "per future (or only one of the two)")
    if "seed" in data:
        raise GraphError('request gives both "seed" and "seeds"; give one of them')
    _int(len(seeds), "the number of seeds", 1, MAX_FUTURES)
    return [_int(s, f"seeds[{i}]", 0, MAX_SEED) for i, s in enumerate(seeds)]


def _stamp(value: Any) -> int:
    """A {"sec", "nanosec"} stamp in nanoseconds."""
    if not isinstance(value, dict) or set(value) != {"sec", "nanosec"}:
        raise GraphError('stamp must be {"sec": S, "nanosec": N} (builtin_interfaces/Time), got '
                         + _shown(value))
    sec = _int(value["sec"], "stamp.sec", 0, 2**31 - 1)
    return sec * 1_000_000_000 + _int(value["nanosec"], "stamp.nanosec", 0, 999_999_999)


def frame_stamps(stamp_ns: int, frames: int, fps: float) -> list[int]:
    """Frame k's stamp in nanoseconds: the request time + k / fps."""
    return [stamp_ns + round(k * 1e9 / fps) for k in range(frames)]


def report(request: Request, result: Any, stamp_ns: int, dropped: int) -> dict[str, Any]:
    """The results-topic JSON of one finished request."""
    from sg2v.layout import layout_json
    from sg2v.layout_sampler import relation_summary

    _, f, h, w, _ = result.frames.shape
    videos = []
    for j, s in enumerate(request.seeds):
        video: dict[str, Any] = {"index": j, "seed": s}
        if result.layouts is not None:
            drawn = result.layouts[j]
            video.update(drawn.to_dict(), layout=layout_json(drawn.tracks), summary=relation_summary(drawn))
        videos.append(video)
    t = result.timings
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return {"id": request.id, "stamp": {"sec": sec, "nanosec": nanosec},
            "futures": len(request.seeds), "seeds": list(request.seeds), "frames": f, "height": h, "width": w,
            "total_s": t.get("total_s"), "dropped": dropped, "videos": videos}


def _typed(p: Parameter, value: Any) -> Any:
    """`value` given for `p` as its default's type (an integer for a float), or a one-line ConfigError."""
    kind = type(p.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise ConfigError(f"parameter {p.name}: {_shown(value)} is not {names[kind]}; e.g. -p {p.name}:="
                          f"{_shown(p.default) if kind is not str else 'VALUE'}")
    return value


def _check_settings(values: Mapping[str, Any]) -> None:
    """One-line `ConfigError` naming a parameter outside its range."""
    from sg2v.bundle_spec import MAX_LAYOUT_TRIES
    from sg2v.config import MAX_SEED
    from sg2v.video import VideoError, check_fps

    if values["backend"] not in BACKENDS:
        raise ConfigError(f"parameter backend: {_shown(values['backend'])} is not one of {list(BACKENDS)}")
    ranges = (("threads", 0, 1024), ("steps", 0, 10_000), ("layout_tries", 0, MAX_LAYOUT_TRIES),
              ("futures", 1, MAX_FUTURES), ("seed", 0, MAX_SEED), ("queue_depth", 1, 100_000),
              ("image_depth", 1, 100_000))
    for name, lo, hi in ranges:
        if not lo <= values[name] <= hi:
            raise ConfigError(f"parameter {name}: {values[name]} is outside [{lo}, {hi}]")
    if not math.isfinite(values["guidance"]):
        raise ConfigError(f"parameter guidance: {values['guidance']} is not a number; set a weight, or a "
                          "negative value for the bundle's")
    try:
        check_fps(values["fps"])
    except VideoError as e:
        raise ConfigError(f"parameter {e}") from None
    for name in ("graph_topic", "image_topic", "result_topic", "error_topic", "frame_id"):
        if not values[name]:
            raise ConfigError(f"parameter {name} is empty; give a name")


class Sg2vNode:
    """The sg2v node (see the module note): an rclpy node, its topics, the request queue and one worker.

    `context` and `parameter_overrides` go to `rclpy.create_node`; `pipeline` serves an already open
    `sg2v.runtime.Pipeline` instead of opening the `bundle` parameter (then bundle, backend, device, threads
    and verify are not read). `close()` stops the worker and destroys the node.
    """

    def __init__(self, context: Any = None, parameter_overrides: Sequence[Any] | None = None,
                 pipeline: Any = None):
        import rclpy
        from rcl_interfaces.msg import ParameterDescriptor
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self.node = rclpy.create_node(NODE_NAME, context=context, parameter_overrides=parameter_overrides)
        self._own_pipeline = pipeline is None
        self.pipe = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._number = 0
        try:
            values = {p.name: _typed(p, self.node.declare_parameter(p.name, p.default, ParameterDescriptor(
                description=p.help, read_only=True, dynamic_typing=True)).value) for p in PARAMETERS}
            _check_settings(values)
            self.values = values
            self.pipe = self._open(values) if pipeline is None else pipeline
            bundle = self.pipe.bundle
            bundle.settings(steps=values["steps"] or None,
                            guidance=values["guidance"] if values["guidance"] >= 0 else None)
            self.queue = DropOldestQueue(values["queue_depth"])
            self._Image, self._String = Image, String
            self.images = self.node.create_publisher(Image, values["image_topic"],
                                                     QoSProfile(depth=values["image_depth"]))
            self.results = self.node.create_publisher(String, values["result_topic"], QoSProfile(depth=100))
            self.errors = self.node.create_publisher(String, values["error_topic"], QoSProfile(depth=100))
            self.node.create_subscription(String, values["graph_topic"], self._on_graph,
                                          QoSProfile(depth=100))
        except BaseException:
            self.close()
            raise
        self._worker = threading.Thread(target=self._serve, name="sg2v-ros-worker", daemon=True)
        self._worker.start()
        s = bundle.shapes
        topic = self.node.resolve_topic_name(values["graph_topic"])
        self.node.get_logger().info(
            f"serving bundle {bundle.path} on {self.pipe.backend_name}: {s['frames']} frames of "
            f"{s['width']}x{s['height']} per video; requests on {topic}")

    @staticmethod
    def _open(values: Mapping[str, Any]) -> Any:
        from sg2v.runtime.cli import default_bundle
        from sg2v.runtime.pipeline import Pipeline

        path = values["bundle"] or default_bundle()
        if not path:
            raise ConfigError("parameter bundle is not set and there is no demo bundle at models/demo; run "
                              "with --ros-args -p bundle:=BUNDLE_FOLDER")
        return Pipeline.from_bundle(path, backend=values["backend"], device=values["device"] or None,
                                    threads=values["threads"] or None, verify=values["verify"])

    @property
    def dropped(self) -> int:
        """Requests dropped from the full queue so far."""
        return self.queue.dropped

    def _on_graph(self, msg: Any) -> None:
        self._number += 1
        pipe = self.pipe
        if pipe is None:  # closed
            return
        try:
            request = parse_request(msg.data, pipe.bundle, self.values["futures"], self.values["seed"],
                                    self._number)
        except GraphError as e:
            self._error(getattr(e, "request_id", None), "bad_request", first_line(e))
            return
        except Exception as e:  # whatever a message does to the parser, the node keeps serving
            self._error(None, "bad_request", f"request could not be read ({type(e).__name__}: "
                        f"{first_line(e)})")
            return
        if request.stamp_ns is None:
            now = self.node.get_clock().now().nanoseconds
            request = Request(request.id, request.graph, request.seeds, now)
        gone = self.queue.put(request)
        if gone is not None:
            self._error(gone.id, "dropped", f"request {_shown(gone.id)} dropped: {self.queue.depth} newer "
                        f"request(s) filled the queue (queue_depth); {self.queue.dropped} dropped so far")

    def _error(self, rid: Any, kind: str, text: str) -> None:
        """Log one line and publish it on the error topic."""
        line = text if rid is None else f"request {_shown(rid)}: {text}"
        (self.node.get_logger().warning if kind == "dropped" else self.node.get_logger().error)(line)
        self._publish(self.errors, self._String(data=json.dumps(
            {"id": rid, "kind": kind, "error": text, "dropped": self.queue.dropped})))

    def _publish(self, publisher: Any, msg: Any) -> None:
        """Publish `msg`; a failure is logged, never raised into the executor or the worker (and not even
        logged while shutting down: a SIGINT shuts the context down before the worker stops)."""
        try:
            publisher.publish(msg)
        except Exception as e:
            if not self._stop.is_set():
                self.node.get_logger().error(f"publishing on {publisher.topic_name} failed: "
                                             f"{type(e).__name__}: {first_line(e)}")

    def _serve(self) -> None:
        while not self._stop.is_set():
            request = self.queue.get()
            if request is None:
                return
            n, v, pipe = len(request.seeds), self.values, self.pipe
            if pipe is None:  # closed
                return
            try:
                result = pipe.run([request.graph] * n, list(request.seeds), steps=v["steps"] or None,
                                       guidance=v["guidance"] if v["guidance"] >= 0 else None,
                                       layout_tries=v["layout_tries"] or None, cancel=self._stop)
                if self._stop.is_set():
                    return
                self._answer(request, result)
            except Exception as e:  # a failed generation fails its request, not the node
                if self._stop.is_set():
                    return
                what = "" if isinstance(e, Sg2vError) else f"{type(e).__name__}: "
                self._error(request.id, "generation_failed", what + first_line(e))

    def _answer(self, request: Request, result: Any) -> None:
        """Publish a finished request's images, video by video, then its report."""
        import numpy as np
        from builtin_interfaces.msg import Time

        frames = np.ascontiguousarray(result.frames)  # (B, F, H, W, 3) uint8
        _, f, h, w, _ = frames.shape
        stamp_ns = request.stamp_ns
        assert stamp_ns is not None  # _on_graph stamps every request it queues
        stamps = frame_stamps(stamp_ns, f, self.values["fps"])
        for video in frames:
            for k in range(f):
                msg = self._Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w)
                msg.header.frame_id = self.values["frame_id"]
                msg.header.stamp = Time(sec=stamps[k] // 1_000_000_000, nanosec=stamps[k] % 1_000_000_000)
                msg.data = video[k].tobytes()
                self._publish(self.images, msg)
        self._publish(self.results, self._String(data=json.dumps(
            report(request, result, stamp_ns, self.queue.dropped))))

    def close(self) -> None:
        """Stop the worker (a generation under way stops at its next step), destroy the node, release the
        pipeline."""
        self._stop.set()
        left = self.queue.close() if hasattr(self, "queue") else 0
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        if left:
            self.node.get_logger().info(f"shutting down: {left} queued request(s) not served")
        if self.node is not None:
            self.node.destroy_node()
            self.node = None
        if self.pipe is not None and self._own_pipeline:
            self.pipe.close()
        self.pipe = None


def build_parser() -> argparse.ArgumentParser:
    width = max(len(p.name) for p in PARAMETERS)
    table = "\n".join(f"  {p.name:<{width}}  {p.help} (default: {_shown(p.default)})" for p in PARAMETERS)
    return argparse.ArgumentParser(
        prog="sg2v-ros", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A ROS 2 node: scene-graph requests (std_msgs/String JSON) in, each video's frames "
                    "(sensor_msgs/Image rgb8) and a JSON report per request out. Parameters are ROS "
                    "parameters: sg2v-ros --ros-args -p bundle:=models/demo -p futures:=4 (or --params-file "
                    "params.yaml).",
        epilog=f"parameters:\n{table}\n\nrequest (on graph_topic): "
               '{"graph": {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}, '
               '"id": "r1", "futures": 4, "seed": 7}')


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node until SIGINT or SIGTERM; 0 after a clean shutdown, 1 or 2 for a bad setting (one line,
    `sg2v.options.run_cli`)."""
    from sg2v.options import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli("sg2v-ros", lambda: _serve(argv))


def _serve(argv: list[str]) -> int:
    """Check our flags, start rclpy and spin the node until a shutdown; 0 then."""
    ours = argv[:argv.index("--ros-args")] if "--ros-args" in argv else argv
    build_parser().parse_args(ours)
    try:
        rclpy = require("rclpy", "ros")
        from rclpy.executors import ExternalShutdownException
    except Sg2vError as e:
        raise MissingDependencyError(f"{first_line(e)} (on Jetson and other non-x86 machines: source your "
                                     "ROS 2 installation, e.g. /opt/ros/jazzy/setup.bash)") from None
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    # Our own SIGINT/SIGTERM handlers and a polling spin: rclpy's handler shuts the context down from C while
    # the worker may still be generating, and a spin blocked without a timeout can miss the shutdown; polling
    # every SPIN_POLL_S lets Python's handler run, and close() then cancels the generation at its next step.
    rclpy.init(args=["sg2v-ros", *argv], signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    node = None
    try:
        node = Sg2vNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node.node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_POLL_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if node is not None:
            start = time.monotonic()
            node.close()
            print(f"sg2v-ros: shut down ({node.dropped} request(s) dropped; worker stopped in "
                  f"{time.monotonic() - start:.2f} s)", file=sys.stderr)
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
