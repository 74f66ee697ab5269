"""Serving on Triton: the repository writer (configs parse with Triton's model-config protobuf, hashes, safe
writes), and the real CPU tritonserver of the nvidia-pytriton wheel on loopback running the repository: frames
equal to local `Pipeline` runs, UNet steps of concurrent requests merged by the dynamic batcher, errors that
leave the server serving, and `sg2v-run --server`."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import make_fake_bundle, random_graph

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, Sg2vError

SERVE = "the serve extra is not installed (pip install 'sg2v[serve]')"
pytest.importorskip("tritonclient.http", reason=SERVE)
pytest.importorskip("pytriton", reason=SERVE)
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason=SERVE)
text_format = pytest.importorskip("google.protobuf.text_format", reason=SERVE)

from sg2v.export.triton import stage_model, stage_rows, write_repository  # noqa: E402
from sg2v.runtime.triton_model import REPOSITORY_RECORD, check_stage_files, read_record  # noqa: E402

TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def parse_config(path: Path):
    """config.pbtxt parsed by Triton's own model-config protobuf (text_format.Parse raises on any error)."""
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def check_repository(repo: Path, bundle_path: Path, backend: str) -> None:
    """Every config.pbtxt parses, and each stage's matches the manifest's stage I/O."""
    from sg2v.runtime.bundle import Bundle

    bundle = Bundle.open(bundle_path)
    enum = model_config_pb2.DataType
    for stage, io in bundle.stages.items():
        cfg = parse_config(repo / stage_model(stage) / "config.pbtxt")
        assert cfg.name == stage_model(stage)
        assert cfg.max_batch_size == stage_rows(stage, bundle.shapes) > 1
        assert cfg.HasField("dynamic_batching")
        if backend == "onnxruntime":
            assert cfg.platform == "onnxruntime_onnx"
            accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator
            assert [a.name for a in accel] == ["tensorrt"]
        else:
            assert cfg.backend == "python" and cfg.parameters["io"].string_value
            assert json.loads(cfg.parameters["io"].string_value) == io
        for got, want in ((cfg.input, io["inputs"]), (cfg.output, io["outputs"])):
            assert [t.name for t in got] == [d["name"] for d in want]
            for t, d in zip(got, want):
                assert enum.Name(t.data_type) == TYPES[d["dtype"]]
                rest = [int(n) for n in d["shape"][1:]]
                assert (list(t.dims), list(t.reshape.shape)) == ((rest, []) if rest else ([1], []))
        assert cfg.parameters["sha256"].string_value == bundle.manifest["files"][io["file"]]["sha256"]
    top = parse_config(repo / "sg2v" / "config.pbtxt")
    assert top.backend == "python" and top.max_batch_size == 0
    assert [t.name for t in top.input][:2] == ["graphs", "seeds"]
    assert [t.name for t in top.output] == ["frames", "layout_results"]
    s = bundle.shapes
    assert list(top.output[0].dims) == [-1, s["frames"], s["height"], s["width"], 3]
    assert json.loads(top.parameters["stages"].string_value) == {k: stage_model(k) for k in bundle.stages}


@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_configs_parse_with_tritons_protobuf(tmp_path, test_seed, backend):
    bundle, _ = make_fake_bundle(tmp_path / "b", seed=test_seed % 1000)
    repo = write_repository(bundle, tmp_path / "repo", stage_backend=backend)
    check_repository(repo, bundle, backend)
    served = repo / stage_model("unet") / "1" / "model.onnx"
    assert served.read_bytes() == (bundle / "unet.onnx").read_bytes()
    assert ((repo / stage_model("unet") / "1" / "model.py").is_file()) == (backend == "python")


def test_configs_of_grounded_and_student_bundles_parse(tmp_path, grounded_bundle, student_bundle):
    for name, bundle in (("grounded", grounded_bundle), ("student", student_bundle)):
        repo = write_repository(bundle, tmp_path / name, stage_backend="python")
        assert {p.name for p in repo.iterdir() if p.is_dir()} == {"sg2v", "sg2v_encoder", "sg2v_layout",
                                                                  "sg2v_unet"}
        check_repository(repo, bundle, "python")


def test_writer_refuses_tampered_bundles_and_foreign_folders(tmp_path):
    from sg2v.export.cli import build_parser, main

    bundle, _ = make_fake_bundle(tmp_path / "b")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not a repository")
    with pytest.raises(Sg2vError, match="not an earlier sg2v output; pass --force"):
        write_repository(bundle, foreign)
    assert (foreign / "keep.txt").read_text() == "not a repository"
    # the bundle, a folder holding it, or a folder inside it: never, even with --force
    for out, why in ((bundle, "would replace the bundle being served"),
                     (tmp_path, "would replace the bundle being served"),
                     (bundle / "repo", "lies inside the bundle being served")):
        with pytest.raises(Sg2vError, match=why):
            write_repository(bundle, out, force=True)
    from sg2v.runtime.bundle import Bundle

    Bundle.open(bundle)  # untouched
    write_repository(bundle, foreign, force=True)
    assert read_record(foreign)["stage_backend"] == "onnxruntime"
    write_repository(bundle, foreign, stage_backend="python")  # an sg2v repository is replaced
    assert read_record(foreign)["stage_backend"] == "python"
    with pytest.raises(Sg2vError, match="--engines"):
        write_repository(bundle, tmp_path / "trt", stage_backend="tensorrt")
    assert not (tmp_path / "trt").exists()

    # A stage file changed after writing: refused when the model loads (as the sg2v model checks it).
    record = read_record(foreign)
    unet = foreign / record["stage_files"][stage_model("unet")]["file"]
    data = bytearray(unet.read_bytes())
    unet.unlink()  # a hard link to the bundle copy: write a new file
    data[-1] ^= 1
    unet.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        check_stage_files(foreign, record)

    # A bundle whose file no longer matches its manifest: nothing written.
    tampered = bytearray((bundle / spec.UNET_ONNX).read_bytes())
    tampered[-1] ^= 1
    (bundle / spec.UNET_ONNX).write_bytes(bytes(tampered))
    with pytest.raises(BundleError, match="sha256"):
        write_repository(bundle, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert main(["triton", str(bundle), "--out", str(tmp_path / "never")]) == 1
    assert not (tmp_path / "never").exists()
    assert build_parser().parse_args(["--ckpt", "model.pt"]).ckpt == "model.pt"  # sg2v-export as before


def test_tensorrt_plans_are_served_only_when_built_from_this_bundle(tmp_path, rng):
    """--stage-backend tensorrt: the engines folder's plans (checked against its engine.json and the bundle's
    ONNX hashes) become model.plan with platform tensorrt_plan; stale or altered plans are refused."""
    from sg2v.export.tensorrt import ENGINE_INFO, engine_sources
    from sg2v.io import sha256_file
    from sg2v.runtime.bundle import Bundle

    bundle, _ = make_fake_bundle(tmp_path / "b")
    opened = Bundle.open(bundle)
    engines = bundle / spec.ENGINES_DIR / "nvidia-h100_sm90_trt10.5.0_fp32"
    engines.mkdir(parents=True)
    plans = {}
    for stage in opened.stages:  # stand-in plan bytes: Triton's TensorRT backend is not on this machine
        (engines / f"{stage}.plan").write_bytes(rng.bytes(256))
        plans[stage] = sha256_file(engines / f"{stage}.plan")
    info = {"fingerprint": engines.name, "route": "onnx", "plan_sha256": plans,
            "onnx_sha256": engine_sources(opened)["onnx_sha256"]}
    (engines / ENGINE_INFO).write_text(json.dumps(info))
    repo = write_repository(bundle, tmp_path / "repo", stage_backend="tensorrt", engines=engines)
    for stage in opened.stages:
        cfg = parse_config(repo / stage_model(stage) / "config.pbtxt")
        assert cfg.platform == "tensorrt_plan" and cfg.HasField("dynamic_batching")
        plan = repo / stage_model(stage) / "1" / "model.plan"
        assert plan.read_bytes() == (engines / f"{stage}.plan").read_bytes()
        assert read_record(repo)["stage_files"][stage_model(stage)]["sha256"] == plans[stage]
    check_stage_files(repo, read_record(repo))

    (engines / "unet.plan").write_bytes(rng.bytes(256))  # not the plan engine.json records
    with pytest.raises(BundleError, match="unet.plan"):
        write_repository(bundle, tmp_path / "repo", stage_backend="tensorrt", engines=engines)
    info["onnx_sha256"]["unet"] = "0" * 64  # plans of another export of the model
    (engines / ENGINE_INFO).write_text(json.dumps(info))
    with pytest.raises(BundleError, match="other ONNX graphs"):
        write_repository(bundle, tmp_path / "repo", stage_backend="tensorrt", engines=engines)
    assert parse_config(repo / stage_model("unet") / "config.pbtxt").platform == "tensorrt_plan"  # kept


STEPS = 6
CLIENTS = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    """The toy bundle's python-stage repository on the wheel's tritonserver (free loopback ports), stopped
    at the end; its log is printed when a test of this module failed."""
    from sg2v.runtime.triton_server import TritonServer

    root = tmp_path_factory.mktemp("triton")
    bundle, _ = make_fake_bundle(root / "bundle", seed=11, max_batch=8)
    repo = write_repository(bundle, root / "repo", stage_backend="python", instances=CLIENTS,
                            queue_delay_us=20_000)
    failed = request.session.testsfailed
    server = TritonServer(repo, log_path=root / "tritonserver.log")
    try:
        server.start(timeout=90)
        yield bundle, server
    finally:
        server.stop()
        if request.session.testsfailed > failed:
            print(f"tritonserver log ({server.log_path}):\n{server.log()}")


def test_concurrent_clients_get_local_frames_and_unet_steps_are_batched(served, test_seed):
    from sg2v.runtime.pipeline import Pipeline
    from sg2v.runtime.triton_client import TritonClient

    bundle, server = served
    rng = np.random.default_rng(test_seed)
    graphs = [random_graph(rng) for _ in range(CLIENTS)]
    seeds = [int(s) for s in rng.integers(0, 2**31, CLIENTS)]
    with TritonClient(server.url) as c:
        before = c.statistics(stage_model("unet"))["model_stats"][0]
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(CLIENTS)

    def client(i: int) -> None:
        try:
            with TritonClient(server.url) as c:
                start.wait()
                results[i] = c.generate([graphs[i]], [seeds[i]], steps=STEPS, guidance=2.5)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with Pipeline.from_bundle(bundle, backend="ort") as pipe:
        for i in range(CLIENTS):
            frames, layouts = results[i]
            local = pipe.generate([graphs[i]], [seeds[i]], steps=STEPS, guidance=2.5)
            assert frames.dtype == np.uint8 and frames.shape == local.shape
            np.testing.assert_array_equal(frames, local)  # bit for bit: the same ORT math, row for row
            assert layouts == [None]
    with TritonClient(server.url) as c:
        after = c.statistics(stage_model("unet"))["model_stats"][0]
    requests = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests == CLIENTS * STEPS  # one UNet call (2 rows: cond, uncond) per step and client
    assert executions < requests  # the dynamic batcher merged steps of concurrent requests
    sizes = [b["batch_size"] for b in after["batch_stats"]]
    assert max(sizes) > 2, sizes  # a batch of more than one request's 2 rows


def test_bad_request_gets_one_line_and_the_server_keeps_serving(served, test_seed):
    from sg2v.runtime.pipeline import Pipeline
    from sg2v.runtime.triton_client import ServerError, TritonClient

    bundle, server = served
    graph = random_graph(np.random.default_rng(test_seed))
    with TritonClient(server.url) as c:
        with pytest.raises(ServerError, match="not in vocabulary"):
            c.generate([{"objects": ["purple unicorn"], "relationships": []}], [0])
        with pytest.raises(ServerError, match="seed"):
            c.generate([graph], [-1])
        frames, _ = c.generate([graph, graph], [5, 6], steps=2)
    with Pipeline.from_bundle(bundle, backend="ort") as pipe:
        np.testing.assert_array_equal(frames, pipe.generate([graph, graph], [5, 6], steps=2))


def test_sg2v_run_server_writes_what_a_local_run_writes(served, tmp_path, test_seed, capsys):
    from sg2v.runtime.cli import main

    bundle, server = served
    graphs = [random_graph(np.random.default_rng(test_seed + k)) for k in range(2)]
    (tmp_path / "g.json").write_text(json.dumps(graphs))
    common = [str(tmp_path / "g.json"), "--seed", "7", "--steps", "3", "--guidance-rescale", "0.3"]
    local = ["--bundle", str(bundle), "--backend", "ort", "--out", str(tmp_path / "local.npy")]
    assert main([*common, *local]) == 0
    assert main([*common, "--server", server.url, "--out", str(tmp_path / "served.npy")]) == 0
    for i in range(2):
        got, want = np.load(tmp_path / f"served_{i}.npy"), np.load(tmp_path / f"local_{i}.npy")
        np.testing.assert_array_equal(got, want)
    for flag in (["--threads", "2"], ["--progress"], ["--backend", "ort"]):
        assert main([*common, "--server", server.url, *flag, "--out", str(tmp_path / "x.npy")]) == 2
        assert flag[0] in capsys.readouterr().err
    assert main([*common, "--server", "127.0.0.1:1", "--out", str(tmp_path / "y.npy")]) == 1
    assert "cannot reach Triton" in capsys.readouterr().err
    assert not (tmp_path / "y_0.npy").exists()


def test_grounded_bundle_served_gives_local_frames_and_layouts(grounded_bundle, tmp_path, test_seed):
    """The layout stage through BLS too: concurrent requests of a layout-grounded bundle get the frames, the
    tracks and the relation reports of local runs; a port taken after it was chosen is chosen again."""
    from helpers import checked_graphs

    from sg2v.runtime.pipeline import Pipeline
    from sg2v.runtime.triton_client import TritonClient, layout_result
    from sg2v.runtime.triton_server import TritonServer

    graphs, seeds, rng = checked_graphs(test_seed, 4)
    box = [round(float(v), 3) for v in np.sort(rng.uniform(0.05, 0.95, (2, 2)), axis=0).T.reshape(-1)]
    box = [box[0], box[2], box[1], box[3]]  # x0, y0, x1, y1 with x0 < x1, y0 < y1
    given = [None, {"0": box}, None, {}]  # video 1: object 0's track given, as sg2v-run --layout gives it
    tries = [None, None, 2, 1]
    repo = write_repository(grounded_bundle, tmp_path / "repo", stage_backend="python", instances=4)
    results: dict[int, tuple] = {}
    server = TritonServer(repo, log_path=tmp_path / "tritonserver.log")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = server.http_port = blocker.getsockname()[1]  # taken since it was chosen: chosen again
    try:
        server.start(timeout=90)
        assert server.http_port != taken

        def client(i: int) -> None:
            with TritonClient(server.url) as c:
                results[i] = c.generate([graphs[i]], [seeds[i]], steps=3, layouts=[given[i]],
                                        layout_tries=tries[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with TritonClient(server.url) as c:
            layout_stats = c.statistics(stage_model("layout"))["model_stats"][0]
    except BaseException:
        print(f"tritonserver log:\n{server.log()}")
        raise
    finally:
        server.stop()
        blocker.close()
    assert sorted(results) == [0, 1, 2, 3]
    assert layout_stats["execution_count"] >= 1
    with Pipeline.from_bundle(grounded_bundle, backend="ort") as pipe:
        for i in range(4):
            frames, drawn = results[i]
            frames_n = pipe.bundle.config.data.frames
            pinned = {int(k): np.tile(np.float32(v), (frames_n, 1)) for k, v in (given[i] or {}).items()}
            local = pipe.run([graphs[i]], [seeds[i]], steps=3, layouts=[pinned], layout_tries=tries[i])
            np.testing.assert_array_equal(frames, local.frames)
            graph, result = layout_result(drawn[0])
            want = local.layouts[0]
            np.testing.assert_array_equal(result.tracks, want.tracks)
            assert result.to_dict() == want.to_dict()
            assert graph.object_names == list(graphs[i]["objects"])
            assert result.pinned == ([0] if given[i] else [])


def test_record_marks_the_repository(tmp_path):
    bundle, _ = make_fake_bundle(tmp_path / "b")
    repo = write_repository(bundle, tmp_path / "repo", stage_backend="python", instances=3)
    record = json.loads((repo / REPOSITORY_RECORD).read_text())
    assert record["models"] == ["sg2v", "sg2v_encoder", "sg2v_unet"]
    top = parse_config(repo / "sg2v" / "config.pbtxt")
    assert [g.count for g in top.instance_group] == [3]
    check_stage_files(repo, record)
