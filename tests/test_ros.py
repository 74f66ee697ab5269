"""sg2v-ros with the real rclpy (the `ros` extra): a test node publishes requests to the sg2v node and checks
the Images (count, size, encoding, stamps, frames equal to `Pipeline`'s), the layout reports, bad requests, a
flood against the bounded queue, and SIGINT on the `sg2v-ros` process.

Each test gets its own ROS_DOMAIN_ID (drawn without repeats from 1..101, the ids safe on Linux) and discovery
on this host only: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (Iron and later) and ROS_LOCALHOST_ONLY=1 (Humble;
later versions ignore it or warn).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_fake_bundle, random_graph

from sg2v.errors import GraphError
from sg2v.generation import MAX_SEED
from sg2v.graph import parse_graph
from sg2v.layout import layout_json
from sg2v.runtime import Bundle, Pipeline
from sg2v.runtime import ros as sg2v_ros

try:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    from std_msgs.msg import String
except ImportError:
    rclpy = None
needs_rclpy = pytest.mark.skipif(rclpy is None, reason="rclpy is not installed: pip install 'sg2v[ros]' "
                                 "(x86-64 Linux) or source a ROS 2 installation")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "ros"
_DOMAINS = random.sample(range(1, 102), k=101)  # popped one per test: never two tests on one domain
TIMEOUT = 60.0  # seconds any one wait may take on a loaded CI machine


def _isolate(env) -> int:
    """Point `env` (os.environ or a dict) at a fresh ROS domain on localhost only; the domain id."""
    domain = _DOMAINS.pop()
    env["ROS_DOMAIN_ID"] = str(domain)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_LOCALHOST_ONLY"] = "1"
    return domain


@pytest.fixture
def context(monkeypatch):
    """An initialised rclpy context of its own on a fresh domain (no signal handlers: pytest keeps SIGINT)."""
    env: dict[str, str] = {}
    domain = _isolate(env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
    try:
        yield ctx
    finally:
        ctx.try_shutdown()


def wait_for(what: str, predicate, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


class Client:
    """A test node on `ctx`: publishes requests, collects images, results and errors; spins `nodes` too."""

    def __init__(self, ctx, *nodes):
        self.node = rclpy.create_node("sg2v_test_client", context=ctx)
        self.images: list[Image] = []
        self.results: list[dict] = []
        self.errors: list[dict] = []
        self.node.create_subscription(Image, "images", self.images.append, QoSProfile(depth=4096))
        for topic, into in (("results", self.results), ("errors", self.errors)):
            self.node.create_subscription(String, topic, lambda m, into=into: into.append(json.loads(m.data)),
                                          100)
        self.publisher = self.node.create_publisher(String, "graphs", 100)
        self.executor = SingleThreadedExecutor(context=ctx)
        for n in (self.node, *nodes):
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def ready(self, node=None) -> None:
        """Wait until the sg2v node subscribes to our requests and publishes to our three subscriptions (and,
        given the in-process `node`, until its publishers have matched them)."""
        def matched() -> bool:
            counts = [self.node.count_publishers(t) for t in ("images", "results", "errors")]
            if node is not None:
                counts += [p.get_subscription_count() for p in (node.images, node.results, node.errors)]
            return self.publisher.get_subscription_count() >= 1 and all(c >= 1 for c in counts)
        wait_for("the sg2v node's topics to match", matched)

    def send(self, request) -> None:
        self.publisher.publish(String(data=request if isinstance(request, str) else json.dumps(request)))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=10)
        self.thread.join(timeout=10)
        self.node.destroy_node()


@pytest.fixture(scope="module")
def pipe(grounded_bundle):
    """The reference: the grounded test bundle on ONNX Runtime CPU, one thread."""
    with Pipeline.from_bundle(grounded_bundle, backend="ort", threads=1) as p:
        yield p


def overrides(bundle, **values) -> list[Parameter]:
    values = {"bundle": str(bundle), "backend": "ort", "threads": 1, **values}
    return [Parameter(k, value=v) for k, v in values.items()]


def graph_for(rng, pipe) -> dict:
    """A random graph of 2 or 3 objects with one relation that has a geometric rule in the bundle's vocab."""
    names = pipe.bundle.vocab.object_names
    n = int(rng.integers(2, 4))
    objects = [str(x) for x in rng.choice(names, size=n, replace=False)]
    predicate = str(rng.choice(["left of", "right of", "above", "below"]))
    return {"objects": objects, "relationships": [[0, predicate, int(rng.integers(1, n))]]}


def stamp_ns(msg: Image) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@needs_rclpy
def test_images_stamps_frames_and_layouts(context, pipe, grounded_bundle, rng):
    fps = float(rng.choice([5.0, 12.5, 30.0]))
    node = sg2v_ros.Sg2vNode(context, overrides(grounded_bundle, fps=fps, frame_id="cam_test", futures=3,
                                                seed=int(rng.integers(0, 1000))))
    client = Client(context, node.node)
    try:
        client.ready(node)
        g1, g2 = graph_for(rng, pipe), graph_for(rng, pipe)
        given = {"sec": int(rng.integers(1, 2**31 - 1)), "nanosec": int(rng.integers(0, 10**9))}
        seed1 = int(rng.integers(0, 10**6))
        seeds2 = [int(s) for s in rng.integers(0, 10**6, size=2)]
        client.send({"id": "first", "graph": g1, "seed": seed1, "stamp": given})
        before = time.time_ns()
        lo = rng.uniform(0.0, 0.5, size=2)
        box = [float(v) for v in (*lo, *(lo + rng.uniform(0.2, 0.5, size=2)))]  # object 0 pinned here
        client.send({"id": 2, "graph": g2, "seeds": seeds2, "layout": {"0": box}})
        wait_for("two results", lambda: len(client.results) == 2)
        after = time.time_ns()
        f, h, w = (pipe.bundle.shapes[k] for k in ("frames", "height", "width"))
        wait_for("all images", lambda: len(client.images) == 5 * f)
        assert client.errors == []
        first, second = client.results
        assert first["id"] == "first" and second["id"] == 2
        assert first["seeds"] == [seed1, seed1 + 1, seed1 + 2] and second["seeds"] == seeds2
        assert (first["frames"], first["height"], first["width"]) == (f, h, w)
        t1 = given["sec"] * 10**9 + given["nanosec"]
        t2 = second["stamp"]["sec"] * 10**9 + second["stamp"]["nanosec"]
        assert before <= t2 <= after  # stamped on receipt: the node's clock is the system clock
        spacing = [round(k * 1e9 / fps) for k in range(f)]
        for msg in client.images:
            assert (msg.encoding, msg.height, msg.width, msg.step) == ("rgb8", h, w, 3 * w)
            assert msg.header.frame_id == "cam_test" and msg.is_bigendian == 0
        got = np.stack([np.frombuffer(bytes(m.data), np.uint8).reshape(h, w, 3) for m in client.images])
        start = 0
        pinned = {**g2, "layout": {"0": box}}
        for graph, t0, result in ((g1, t1, first), (pinned, t2, second)):
            for video in result["videos"]:
                msgs = client.images[start:start + f]
                assert [stamp_ns(m) - t0 for m in msgs] == spacing
                expected = pipe(graph, seed=video["seed"])  # (F, H, W, 3): the same seed, a single call
                np.testing.assert_array_equal(got[start:start + f], expected)
                drawn = pipe.last_generation.layouts[0]
                assert video["layout"] == layout_json(drawn.tracks)  # the tracks exactly
                assert video["relations"] == [c.to_dict() for c in drawn.relations]
                assert video["satisfied"] == drawn.satisfied
                assert video["pinned"] == ([0] if graph is pinned else [])
                start += f
    finally:
        client.close()
        node.close()


@needs_rclpy
def test_bad_requests_get_error_entries_and_the_node_keeps_serving(context, pipe, grounded_bundle, rng):
    node = sg2v_ros.Sg2vNode(context, overrides(grounded_bundle))
    client = Client(context, node.node)
    try:
        client.ready(node)
        graph = graph_for(rng, pipe)
        bad = [
            "{not json",
            "[" * 100_000 + "]" * 100_000,
            json.dumps([graph]),
            json.dumps({"id": "b1", "graph": {"objects": ["no such object"], "relationships": []}}),
            json.dumps({"id": "b2", "graph": graph, "futrues": 2}),
            json.dumps({"id": "b3", "graph": graph, "futures": 0}),
            json.dumps({"id": "b4", "graph": graph, "seeds": [1, -1]}),
            json.dumps({"id": "b5", "graph": graph, "stamp": 12}),
            json.dumps({"id": "b6"}),
        ]
        for text in bad:
            client.send(text)
        seed = int(rng.integers(0, 10**6))
        client.send({"id": "good", "graph": graph, "seed": seed})
        wait_for("the good request's result", lambda: len(client.results) == 1)
        wait_for("one error per bad request", lambda: len(client.errors) == len(bad))
        assert client.results[0]["id"] == "good"
        assert [e["id"] for e in client.errors][3:] == ["b1", "b2", "b3", "b4", "b5", "b6"]
        words = ("JSON", "nested too deeply", "object", "no such object", "futrues", "futures", "seeds[1]",
                 "stamp", "graph")
        for entry, word in zip(client.errors, words, strict=True):
            assert entry["kind"] == "bad_request" and entry["dropped"] == 0
            assert word in entry["error"] and "\n" not in entry["error"]
        f, h, w = (pipe.bundle.shapes[k] for k in ("frames", "height", "width"))
        wait_for("the good request's images", lambda: len(client.images) == f)
        got = np.stack([np.frombuffer(bytes(m.data), np.uint8).reshape(h, w, 3) for m in client.images])
        np.testing.assert_array_equal(got, pipe(graph, seed=seed))
    finally:
        client.close()
        node.close()


class Gated:
    """`pipe` whose `run` waits for `gate`: requests pile up in the node's queue while the first one runs."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.bundle = pipe.bundle
        self.backend_name = pipe.backend_name
        self.entered = threading.Event()
        self.gate = threading.Event()

    def run(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(TIMEOUT)
        return self.pipe.run(*args, **kwargs)


class FailsOnce:
    """`pipe` whose first `run` raises as a backend failing mid-generation would."""

    def __init__(self, pipe):
        self.pipe, self.bundle, self.backend_name = pipe, pipe.bundle, pipe.backend_name
        self.calls = 0

    def run(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("device lost\nsecond line")
        return self.pipe.run(*args, **kwargs)


@needs_rclpy
def test_a_failed_generation_is_an_error_entry_and_the_node_serves_on(context, pipe, grounded_bundle, rng):
    node = sg2v_ros.Sg2vNode(context, overrides(grounded_bundle), pipeline=FailsOnce(pipe))
    client = Client(context, node.node)
    try:
        client.ready(node)
        graph = graph_for(rng, pipe)
        client.send({"id": "lost", "graph": graph})
        client.send({"id": "next", "graph": graph, "seed": 3})
        wait_for("the second request's result", lambda: len(client.results) == 1)
        lost = {"id": "lost", "kind": "generation_failed", "error": "RuntimeError: device lost", "dropped": 0}
        assert client.errors == [lost]
        assert client.results[0]["id"] == "next"
    finally:
        client.close()
        node.close()


@needs_rclpy
def test_flood_drops_the_oldest_and_counts(context, pipe, grounded_bundle, rng):
    depth = int(rng.integers(2, 5))
    flood = depth + int(rng.integers(3, 8))
    gated = Gated(pipe)
    node = sg2v_ros.Sg2vNode(context, overrides(grounded_bundle, queue_depth=depth), pipeline=gated)
    client = Client(context, node.node)
    try:
        client.ready(node)
        graph = graph_for(rng, pipe)
        client.send({"id": "r0", "graph": graph})
        wait_for("the worker to take r0", gated.entered.is_set)
        for i in range(1, flood + 1):
            client.send({"id": f"r{i}", "graph": graph, "seed": i})
        lost = flood - depth
        wait_for("the drops", lambda: len(client.errors) == lost)
        gated.gate.set()
        wait_for("the kept requests' results", lambda: len(client.results) == 1 + depth)
        assert [e["id"] for e in client.errors] == [f"r{i}" for i in range(1, lost + 1)]  # the oldest first
        assert [e["dropped"] for e in client.errors] == list(range(1, lost + 1))
        assert all(e["kind"] == "dropped" for e in client.errors)
        kept = ["r0"] + [f"r{i}" for i in range(lost + 1, flood + 1)]
        assert [r["id"] for r in client.results] == kept  # served in arrival order
        assert client.results[-1]["dropped"] == lost == node.dropped
        f = pipe.bundle.shapes["frames"]
        wait_for("the kept requests' images", lambda: len(client.images) == (1 + depth) * f)
    finally:
        gated.gate.set()
        client.close()
        node.close()


def test_drop_oldest_queue(rng):
    depth = int(rng.integers(1, 6))
    items = [int(x) for x in rng.integers(0, 1000, size=depth + 7)]
    q = sg2v_ros.DropOldestQueue(depth)
    dropped = [q.put(x) for x in items]
    assert dropped == [None] * depth + items[:7] and q.dropped == 7 and len(q) == depth
    assert [q.get() for _ in range(depth)] == items[7:]
    waiter = threading.Thread(target=lambda: dropped.append(q.get()))
    waiter.start()
    assert q.close() == 0
    waiter.join(TIMEOUT)
    assert not waiter.is_alive() and dropped[-1] is None


def test_parse_request_defaults_seeds_stamps_and_errors(tmp_path, rng):
    root, _ = make_fake_bundle(tmp_path / "bundle")
    bundle = Bundle.open(root)
    graph = random_graph(rng)
    parsed = parse_graph(graph, bundle.vocab, 3, 2, 2)
    futures, seed = int(rng.integers(1, 5)), int(rng.integers(0, 1000))
    r = sg2v_ros.parse_request(json.dumps(graph), bundle, futures, seed, 7)  # a bare graph: every default
    assert (r.id, r.graph, r.stamp_ns) == ("sg2v-7", parsed, None)
    assert r.seeds == tuple(range(seed, seed + futures))
    sec, nanosec = int(rng.integers(0, 2**31)), int(rng.integers(0, 10**9))
    request = {"id": 3, "graph": graph, "futures": 2, "seed": 9, "stamp": {"sec": sec, "nanosec": nanosec}}
    r = sg2v_ros.parse_request(json.dumps(request), bundle, futures, seed, 8)
    assert (r.id, r.graph, r.seeds, r.stamp_ns) == (3, parsed, (9, 10), sec * 10**9 + nanosec)
    seeds = [int(x) for x in rng.integers(0, MAX_SEED, size=3)]
    r = sg2v_ros.parse_request(json.dumps({"graph": graph, "seeds": seeds}), bundle, 1, 0, 9)
    assert r.seeds == tuple(seeds)
    box = [0.1, 0.1, 0.3, 0.3]
    bad = [
        ("x" * (sg2v_ros.MAX_REQUEST_BYTES + 1), "sg2v-1", "characters"),
        ('{"graph": {}, "graph": {}}', "sg2v-1", "duplicate"),
        ({"id": True, "graph": graph}, "sg2v-1", "request id"),
        ({"id": "a", "graph": graph, "layout": {"0": box}}, "a", "no layout stage"),
        ({"id": "b", "graph": {**graph, "layout": {"0": box}}}, "b", "no layout stage"),
        ({"id": "c", "graph": graph, "futures": 2, "seed": MAX_SEED}, "c", "seed must be"),
        ({"id": "d", "graph": graph, "futures": sg2v_ros.MAX_FUTURES + 1}, "d", "futures must be"),
        ({"id": "e", "graph": graph, "futures": 2, "seeds": [1]}, "e", "one seed per future"),
        ({"id": "f", "graph": graph, "seed": 1, "seeds": [1]}, "f", "both"),
        ({"id": "g", "graph": graph, "stamp": {"sec": -1, "nanosec": 0}}, "g", "stamp.sec"),
    ]
    for request, rid, words in bad:
        text = request if isinstance(request, str) else json.dumps(request)
        with pytest.raises(GraphError, match=words) as e:
            sg2v_ros.parse_request(text, bundle, 1, 0, 1)
        assert e.value.request_id == rid and "\n" not in str(e.value)


def test_frame_stamps_step_by_one_over_fps(rng):
    t0 = int(rng.integers(0, 2**62))
    fps = float(rng.uniform(0.5, 120.0))
    frames = int(rng.integers(2, 40))
    stamps = np.array(sg2v_ros.frame_stamps(t0, frames, fps), dtype=np.int64)
    exact = t0 + np.arange(frames, dtype=np.float64) * (1e9 / fps)  # float64 reference
    assert stamps[0] == t0 and np.abs(stamps - exact).max() <= 1 + t0 * 2**-52


def test_without_rclpy_sg2v_ros_names_the_extra_in_one_line():
    block = ("import sys\n"
             "class Block:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] == 'rclpy':\n"
             "            raise ImportError(f'No module named {name!r}')\n"
             "sys.meta_path.insert(0, Block())\n"
             "from sg2v.runtime.ros import main\n"
             "sys.exit(main(['--ros-args', '-p', 'futures:=2']))\n")
    r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "sg2v[ros]" in r.stderr and "ROS 2 installation" in r.stderr


def test_example_params_are_node_parameters():
    yaml = pytest.importorskip("yaml", reason="pyyaml is not installed (the ros extra brings it)")
    params = yaml.safe_load((EXAMPLES / "sg2v.params.yaml").read_text())["/**"]["ros__parameters"]
    declared = {p.name: p.default for p in sg2v_ros.PARAMETERS}
    assert set(params) <= set(declared)
    for name, value in params.items():
        assert type(value) is type(declared[name]), name  # ROS parameters keep the type they were declared
    compile((EXAMPLES / "sg2v.launch.py").read_text(), "sg2v.launch.py", "exec")


@needs_rclpy
def test_sigint_shuts_sg2v_ros_down_cleanly(grounded_bundle, pipe, rng, tmp_path):
    """`sg2v-ros` with the example parameter file serves a request, then exits 0 on SIGINT mid-generation."""
    script = Path(sys.executable).with_name("sg2v-ros")
    assert script.exists(), "sg2v-ros is not installed: pip install -e '.[ros]'"
    env = dict(os.environ)
    domain = _isolate(env)
    log = tmp_path / "node.log"
    cmd = [str(script), "--ros-args", "--params-file", str(EXAMPLES / "sg2v.params.yaml"),
           "-p", f"bundle:={grounded_bundle}", "-p", "backend:=ort", "-p", "threads:=1", "-p", "futures:=1"]
    ctx = rclpy.Context()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    client = None
    try:
        rclpy.init(context=ctx, domain_id=domain, signal_handler_options=SignalHandlerOptions.NO)
        client = Client(ctx)
        client.ready()
        graph = graph_for(rng, pipe)
        client.send({"id": "one", "graph": graph, "seed": 5})
        wait_for("the node's answer", lambda: len(client.results) == 1)
        assert client.results[0]["futures"] == 1  # the command line's -p overrides the parameter file
        client.send({"id": "long", "graph": graph, "futures": sg2v_ros.MAX_FUTURES})
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=TIMEOUT)
        text = log.read_text()
        assert rc == 0, text
        assert "sg2v-ros: shut down" in text and "Traceback" not in text, text
        assert [r["id"] for r in client.results] == ["one"]  # stopped with "long" under way, unanswered
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if client is not None:
            client.close()
        ctx.try_shutdown()
