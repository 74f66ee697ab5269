"""Runtime: Pipeline and sg2v-run on ONNX Runtime, against float64 references and the PyTorch backend.

Fast tests run a small real bundle (toy ONNX graphs, test_bundle.py) and compare the whole pipeline (graph
padding, encoder, CFG pairing with the null context, x_T from the seed, sampler, decode) with a float64 numpy
re-implementation. The slow tests export a tiny random checkpoint with the real exporter (once per session,
the `real_bundle` fixture of conftest.py) and check ONNX Runtime against the PyTorch reference backend:
tolerance 1e-3 max abs on v and on the sampled x, and at most 1 level (of 255) on frames.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import make_fake_bundle, random_graph, ref_encoder, ref_unet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sg2v.errors import GraphError, Sg2vError
from sg2v.graph import pad_graphs, parse_graph
from sg2v.runtime import Pipeline
from sg2v.runtime.cli import main
from sg2v.sampling import SAMPLERS, cfg_denoiser
from sg2v.schedule import make_alphas_cumprod, timesteps
from sg2v.video import read_video, unit_to_frames

PARITY_ATOL = 1e-3  # ORT vs torch, float32 both: max abs error on v and on the sampled x


def reference_x0(bundle_dir: Path, w: dict, graph: dict, seed: int, steps: int, guidance: float,
                 rescale: float, sampler: str) -> np.ndarray:
    """The pipeline's flow in float64 numpy with the toy graphs' references: final x, (F, C, H, W)."""
    from sg2v.runtime.bundle import Bundle

    b = Bundle.open(bundle_dir)
    d = b.config.data
    feeds = pad_graphs([parse_graph(graph, b.vocab, d.max_objects, d.max_relationships)], d.max_objects,
                       d.max_relationships).as_feeds()
    ctx, cm = ref_encoder(w, **feeds)
    ctx2 = np.concatenate([ctx, b.null_context.astype(np.float64)])  # (2, L, D): cond, uncond
    cm2 = np.concatenate([cm, b.null_context_mask.astype(np.float64)])  # (2, L)

    def pair(x2, t):
        return ref_unet(w, x2, np.full(2, t), ctx2, cm2)

    x = np.random.default_rng(seed).standard_normal((1, d.frames, d.channels, d.height, d.width),
                                                    dtype=np.float32).astype(np.float64)
    num_train = b.config.diffusion.num_train_timesteps
    shape = (1, d.frames, d.channels, d.height, d.width)

    def noise(i):  # the seed contract of a stochastic sampler's step noise, written out
        return np.random.default_rng([seed, 1, i]).standard_normal(shape, dtype=np.float32).astype(np.float64)

    x = SAMPLERS[sampler](cfg_denoiser(pair, guidance, rescale), x, timesteps(num_train, steps, "trailing"),
                          make_alphas_cumprod(num_train, b.config.diffusion.schedule), noise=noise)
    return x[0]


@pytest.fixture
def fake(tmp_path, test_seed):
    seed = test_seed % 10_000
    return make_fake_bundle(tmp_path / "bundle", seed=seed)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_pipeline_matches_float64_reference(fake, sampler, rng):
    root, w = fake
    graph = random_graph(rng)
    seed, steps, guidance, rescale = int(rng.integers(1 << 30)), 4, float(rng.uniform(1, 5)), 0.7
    pipe = Pipeline.from_bundle(root, backend="ort", threads=1)
    xs = []
    frames = pipe(graph, seed=seed, steps=steps, guidance=guidance, guidance_rescale=rescale, sampler=sampler,
                  callback=lambda i, t, x, x0: xs.append(np.array(x)))
    want = reference_x0(root, w, graph, seed, steps, guidance, rescale, sampler)  # (F, C, H, W)
    assert len(xs) == steps
    np.testing.assert_allclose(xs[-1][0], want, atol=1e-4)
    ref_frames = np.asarray(unit_to_frames(want)).transpose(0, 2, 3, 1)  # (F, H, W, 3)
    assert frames.shape == ref_frames.shape and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - ref_frames).max() <= 1  # rounding at .5 may differ float32 vs float64
    assert frames.std() > 0  # the toy model does not collapse to a constant image


def test_generate_gives_the_frames_of_single_calls_bit_for_bit(fake, rng):
    """A batch through the bundle's batch axis (one UNet call of 2B rows per step; chunks of the bundle's
    max_batch 4 beyond that) is, video for video, B single calls: ONNX Runtime CPU computes the toy graphs'
    rows alone, bit for bit."""
    root, w = fake
    pipe = Pipeline.from_bundle(root, backend="ort", threads=1)
    graphs = [random_graph(rng) for _ in range(6)]
    seeds = [int(s) for s in rng.integers(1 << 30, size=6)]
    singles = np.stack([pipe(g, seed=s, steps=3) for g, s in zip(graphs, seeds)])
    four = pipe.generate(graphs[:4], seeds[:4], steps=3)
    assert pipe.last_timings["videos"] == 4 and pipe.last_timings["chunks"] == 1
    assert pipe.last_timings["unet_calls"] == 3
    np.testing.assert_array_equal(four, singles[:4])
    six = pipe.generate(graphs, seeds, steps=3)
    assert pipe.last_timings["chunks"] == 2 and pipe.max_batch == 4
    np.testing.assert_array_equal(six, singles)
    np.testing.assert_array_equal(pipe.generate(graphs[:3], seeds[:3], steps=3, max_batch=1), singles[:3])
    assert pipe.last_timings["chunks"] == 3
    for i in (0, 5):
        want = reference_x0(root, w, graphs[i], seeds[i], 3, 3.0, 0.7, "dpmpp2m")
        ref_frames = np.asarray(unit_to_frames(want)).transpose(0, 2, 3, 1)
        assert np.abs(six[i].astype(int) - ref_frames).max() <= 1


def test_format_1_bundles_run_batches_one_video_per_call(tmp_path, capsys, rng):
    root, _ = make_fake_bundle(tmp_path / "v1", seed=5, version=1)
    pipe = Pipeline.from_bundle(root, backend="ort")
    assert pipe.max_batch == 1 and pipe.backend.unet.inputs["x"].shape[0] == 2
    graphs = [random_graph(rng) for _ in range(3)]
    singles = np.stack([pipe(g, seed=7, steps=2) for g in graphs])
    np.testing.assert_array_equal(pipe.generate(graphs, [7, 7, 7], steps=2), singles)
    assert pipe.last_timings["chunks"] == 3 and pipe.last_timings["unet_calls"] == 6
    g = _write(tmp_path / "g.json", graphs)
    argv = [str(g), "--bundle", str(root), "--out", str(tmp_path / "v.npy"), "--steps", "2", "--seed", "7"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "takes one video per call (format 1)" in out and "sg2v-export --ckpt" in out
    np.testing.assert_array_equal(np.load(tmp_path / "v_2.npy"), singles[2])


def test_ancestral_sampler_keeps_the_seed_contract_in_batches(fake, rng):
    """A stochastic sampler's step noise is drawn per video from its seed on the host, like x_T: a batch
    gives the frames of single calls bit for bit, and the same seed the same frames."""
    root, _ = fake
    pipe = Pipeline.from_bundle(root, backend="ort", threads=1)
    graphs = [random_graph(rng) for _ in range(3)]
    seeds = [int(s) for s in rng.integers(1 << 30, size=3)]
    singles = np.stack([pipe(g, seed=s, steps=4, sampler="ddpm") for g, s in zip(graphs, seeds)])
    np.testing.assert_array_equal(pipe.generate(graphs, seeds, steps=4, sampler="ddpm"), singles)
    ddim = pipe(graphs[0], seed=seeds[0], steps=4, sampler="ddim")
    assert np.abs(ddim.astype(int) - singles[0]).max() > 0  # the step noise reaches the frames


def test_same_seed_same_frames_other_seed_other_frames(fake, rng):
    root, _ = fake
    pipe = Pipeline.from_bundle(root, backend="ort")
    graph = random_graph(rng)
    a, b = pipe(graph, seed=11), pipe(graph, seed=11)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, pipe(graph, seed=12))


def test_repeated_calls_reuse_the_bound_buffers(fake, rng):
    root, w = fake
    pipe = Pipeline.from_bundle(root, backend="ort")
    stages = (pipe.backend.encoder, pipe.backend.unet)
    loop = pipe.generator

    def addresses():
        return [(name, id(buf), buf.ctypes.data) for st in stages for bufs in (st.inputs, st.outputs)
                for name, buf in bufs.items()] + [(n, id(b), b.ctypes.data) for n, b in loop._bufs.items()]

    pipe(random_graph(rng), seed=1, steps=2)
    before = addresses()
    seen = []

    def remember(i, t, x, x0):
        seen.append(np.array(pipe.backend.unet.outputs["v"]))

    for seed in (2, 3):
        pipe(random_graph(rng), seed=seed, steps=3, callback=remember)
    assert addresses() == before
    # The bound output really is where ONNX Runtime writes: it holds the last step's v.
    unet_in = pipe.backend.unet.inputs
    last_v = ref_unet(w, unet_in["x"], unet_in["t"], unet_in["context"], unet_in["context_mask"])
    np.testing.assert_allclose(seen[-1], last_v, atol=1e-5)
    assert not np.array_equal(seen[0], seen[-1])


def test_concurrent_calls_equal_serial_calls(fake, rng):
    root, _ = fake
    pipe = Pipeline.from_bundle(root, backend="ort", threads=1)
    jobs = [(random_graph(rng), int(rng.integers(1000))) for _ in range(4)]
    serial = [pipe(g, seed=s, steps=3) for g, s in jobs]
    results: dict[int, np.ndarray] = {}

    def work(i):
        g, s = jobs[i]
        results[i] = pipe(g, seed=s, steps=3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(serial):
        np.testing.assert_array_equal(results[i], want)


def test_timings_cover_every_stage(fake, rng):
    root, _ = fake
    pipe = Pipeline.from_bundle(root, backend="ort")
    pipe(random_graph(rng), steps=5)
    t = pipe.last_timings
    assert t["backend"] == "ort-cpu" and t["unet_calls"] == 5 and len(t["denoiser_steps_s"]) == 5
    for key in ("encoder_s", "denoiser_s", "denoiser_per_step_s", "decode_s", "total_s"):
        assert t[key] >= 0
    assert abs(t["denoiser_s"] - sum(t["denoiser_steps_s"])) < 1e-9
    assert t["total_s"] >= t["encoder_s"] + t["denoiser_s"]


def test_auto_falls_back_to_ort_cpu_and_says_why(fake):
    from sg2v.runtime.backends.openvino import openvino_unavailable_reason

    root, _ = fake
    pipe = Pipeline.from_bundle(root)  # backend="auto"
    assert pipe.backend_name == ("ort-cpu" if openvino_unavailable_reason() else "openvino-cpu")
    if pipe.backend.notes:
        assert pipe.backend.notes[0].startswith("TensorRT skipped: ")


def test_bad_arguments_are_one_line_errors(fake):
    root, _ = fake
    pipe = Pipeline.from_bundle(root, backend="ort")
    graph = {"objects": ["red circle"], "relationships": []}
    with pytest.raises(Sg2vError, match="output='cupy' needs a GPU backend"):
        pipe(graph, output="cupy")
    with pytest.raises(Sg2vError, match=r"seed must be an integer in \[0, \d+\], got -"):
        pipe(graph, seed=-1)
    with pytest.raises(GraphError, match="red circel"):
        pipe({"objects": ["red circel"], "relationships": []})
    with pytest.raises(Sg2vError, match="unknown backend 'onnx'"):
        Pipeline.from_bundle(root, backend="onnx")
    with pytest.raises(Sg2vError, match="unknown sampler 'euler'"):
        pipe(graph, sampler="euler")
    with pytest.raises(Sg2vError, match="sampler steps must be an integer"):
        pipe(graph, steps=0)
    with pytest.raises(Sg2vError, match="guidance rescale must be in"):
        pipe(graph, guidance_rescale=2.0)
    with pytest.raises(Sg2vError, match="guidance must be a finite number >= 0"):
        pipe(graph, guidance=float("nan"))
    with pytest.raises(Sg2vError, match="2 seeds for 1 graphs"):
        pipe.generate([graph], [1, 2])
    pipe(graph, steps=1)  # the stages' buffers exist after a first call
    unet_in = pipe.backend.unet.inputs
    with pytest.raises(Sg2vError, match="feed has shape"):
        pipe.backend.unet.run({**unet_in, "x": np.zeros((unet_in["x"].shape[0], 2), np.float32)})
    with pytest.raises(Sg2vError, match="feed 't' is missing"):
        pipe.backend.unet.run({k: v for k, v in unet_in.items() if k != "t"})


# Values a careless or hostile caller passes for a number: integers Python will not print (over 4300
# digits) or convert to float, NaN and infinities, wrong types. Built by .map: hypothesis cannot print them.
HOSTILE_NUMBERS = (
    st.sampled_from([(10, 5000), (-10, 5001), (2, 64), (2, 63)]).map(lambda b: b[0] ** b[1])
    | st.sampled_from([float("nan"), float("inf"), -float("inf"), -1, 0, 1.5, True, "8", [2], None])
    | st.integers(-3, 3) | st.floats(-10, 10)
)


@pytest.fixture(scope="module")
def hostile_pipe(tmp_path_factory):
    root, _ = make_fake_bundle(tmp_path_factory.mktemp("hostile") / "bundle", seed=3)
    return Pipeline.from_bundle(root, backend="ort", threads=1)


@settings(derandomize=True, max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional={k: HOSTILE_NUMBERS for k in (
    "seed", "steps", "guidance", "guidance_rescale", "max_batch", "layout_tries")})
    | st.fixed_dictionaries({"sampler": HOSTILE_NUMBERS | st.text(max_size=8)})
    | st.fixed_dictionaries({"output": HOSTILE_NUMBERS | st.text(max_size=8)}))
def test_hostile_numbers_in_the_python_api_are_one_line_sg2v_errors(hostile_pipe, kwargs):
    """Every keyword of `Pipeline.generate` with a hostile value: frames, or a one-line Sg2vError (never
    Python's ValueError for >4300-digit integers, an OverflowError or a TypeError)."""
    graph = {"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}
    seed = kwargs.pop("seed", 0)
    steps = kwargs.pop("steps", 2)
    if isinstance(steps, int) and not isinstance(steps, bool) and 3 < steps < 10**6:
        steps = 3  # valid step counts run; keep them short
    try:
        frames = hostile_pipe.generate([graph], [seed], steps=steps, **kwargs)
    except Sg2vError as e:
        assert "\n" not in str(e) and len(str(e)) < 400, str(e)[:400]
        return
    assert frames.shape == (1, 2, 8, 8, 3) and frames.dtype == np.uint8


def test_absurd_thread_counts_are_refused_before_a_session_starts(fake):
    """1000 ONNX Runtime threads on a 2-core machine ran past two minutes; 10**6 never returns."""
    root, _ = fake
    for threads in (10**5000, 10**6, 0, -1, 1.5, "2"):
        with pytest.raises(Sg2vError, match=r"threads .*: must be an integer in \[1, \d+\], at most 4 per"):
            Pipeline.from_bundle(root, backend="ort", threads=threads)


# ------------------------------------------------------------------------------------------------ CLI
def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_cli_writes_the_pipeline_frames_and_reports_stages(fake, tmp_path, capsys, rng):
    root, _ = fake
    graph = random_graph(rng)
    g = _write(tmp_path / "g.json", graph)
    out = tmp_path / "new" / "video.npy"  # output folders that do not exist yet are made
    code = main([str(g), "--bundle", str(root), "--out", str(out), "--steps", "3", "--seed", "5",
                 "--backend", "ort", "--contact-sheet", str(tmp_path / "sheets" / "sheet.png")])
    text = capsys.readouterr().out
    assert code == 0
    want = Pipeline.from_bundle(root, backend="ort")(graph, seed=5, steps=3)
    np.testing.assert_array_equal(np.load(out), want)
    assert (tmp_path / "sheets" / "sheet.png").is_file()
    assert "backend ort-cpu" in text and f"wrote {out}" in text
    for stage in ("encoder", "denoiser", "/step", "sampler", "decode"):
        assert stage in text


def test_cli_numbers_outputs_for_several_graphs(fake, tmp_path, capsys, rng):
    """Several graphs: one batched call (or --batch videos per call), numbered outputs, each the video a
    single call gives."""
    root, _ = fake
    graphs = [random_graph(rng) for _ in range(3)]
    a = _write(tmp_path / "a.json", graphs[:2])  # a JSON list of graphs
    b = _write(tmp_path / "b.json", graphs[2])
    pipe = Pipeline.from_bundle(root, backend="ort")
    for batch, calls in ((None, 1), ("2", 2)):
        out = tmp_path / f"clip{calls}.gif"
        code = main([str(a), str(b), "--bundle", str(root), "--out", str(out), "--steps", "2", "--seed", "4",
                     *(["--batch", batch] if batch else [])])
        assert code == 0
        assert f"3 videos in {calls} call(s)" in capsys.readouterr().out
        for i, graph in enumerate(graphs):
            np.testing.assert_array_equal(read_video(tmp_path / f"clip{calls}_{i}.gif"),
                                          pipe(graph, seed=4, steps=2))
        assert not out.exists()


def test_cli_invalid_graph_exits_2_with_one_line(fake, tmp_path, capsys):
    root, _ = fake
    g = _write(tmp_path / "g.json", {"objects": ["red circel"], "relationships": []})
    assert main([str(g), "--bundle", str(root), "--out", str(tmp_path / "v.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "red circel" in err and err.startswith("sg2v-run: invalid graph:")
    assert not (tmp_path / "v.npy").exists()
    assert main([str(tmp_path / "missing.json"), "--bundle", str(root)]) == 2


def test_cli_bundle_errors_exit_1_with_one_line(fake, tmp_path, capsys):
    root, _ = fake
    g = _write(tmp_path / "g.json", {"objects": ["red circle"], "relationships": []})
    assert main([str(g), "--bundle", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not exist" in err
    path = root / "unet.onnx"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    assert main([str(g), "--bundle", str(root)]) == 1
    assert "sha256" in capsys.readouterr().err
    assert main([str(g), "--bundle", str(root), "--ckpt", "model.pt"]) == 1
    assert "--ckpt is for --backend torch" in capsys.readouterr().err
    (tmp_path / "file").write_text("not a folder")
    blocked = tmp_path / "file" / "v.npy"  # its folder would have to be a file's child
    assert main([str(g), "--bundle", str(root), "--no-verify", "--out", str(blocked)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot create output folder" in err


def _err_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "backend" not in captured.out, "the run must stop before it builds a backend"
    return err


def _tree(folder: Path) -> dict[str, bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def test_cli_never_replaces_a_folder_or_file_it_did_not_write_without_force(fake, tmp_path, capsys):
    """`--out <existing folder>` deleted the folder: now a folder of other files, or a file sg2v did not
    write, is refused (exit 2, one line, untouched) unless --force; an earlier sg2v output is replaced."""
    root, _ = fake
    g = _write(tmp_path / "g.json", {"objects": ["red circle"], "relationships": []})
    run = [str(g), "--bundle", str(root), "--steps", "1", "--backend", "ort"]
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "frame_0000.png").write_bytes(b"a file named like a frame")
    before = _tree(photos)
    assert main([*run, "--out", str(photos)]) == 2
    err = _err_line(capsys)
    assert f"--out {photos} exists and is a folder that is not an earlier sg2v output; pass --force" in err
    assert _tree(photos) == before
    notes = tmp_path / "notes.npy"
    np.save(notes, np.arange(5.0))  # an .npy sg2v did not write: not uint8 frames
    assert main([*run, "--out", str(notes)]) == 2
    assert "is a file that is not an earlier sg2v output" in _err_line(capsys)
    np.testing.assert_array_equal(np.load(notes), np.arange(5.0))
    sheet = tmp_path / "mine.png"
    from PIL import Image

    Image.new("RGB", (4, 4), (1, 2, 3)).save(sheet)  # a PNG without sg2v's Software text
    assert main([*run, "--out", str(tmp_path / "v.gif"), "--contact-sheet", str(sheet)]) == 2
    assert "--contact-sheet" in _err_line(capsys) and not (tmp_path / "v.gif").exists()

    frames_dir = tmp_path / "frames"  # an earlier sg2v output of the same kind is replaced as before
    for seed in ("1", "2"):
        assert main([*run, "--out", str(frames_dir), "--seed", seed]) == 0
    want = Pipeline.from_bundle(root, backend="ort")({"objects": ["red circle"], "relationships": []}, seed=2,
                                                   steps=1)
    np.testing.assert_array_equal(read_video(frames_dir), want)
    capsys.readouterr()
    assert main([*run, "--out", str(photos), "--force", "--seed", "2"]) == 0  # asked for: replaced
    np.testing.assert_array_equal(read_video(photos), want)
    assert sorted(p.name for p in photos.iterdir()) == [".sg2v-output", "frame_0000.png", "frame_0001.png"]


def test_cli_never_writes_over_or_into_the_bundle_or_an_input(fake, tmp_path, capsys):
    """--out equal to --bundle destroyed the bundle. The bundle, a folder holding it, a path inside it and
    the input files are refused even with --force; the bundle still opens afterwards."""
    root, _ = fake
    g = _write(tmp_path / "graph", {"objects": ["red circle"], "relationships": []})  # no extension
    before = _tree(root)
    run = [str(g), "--bundle", str(root), "--steps", "1", "--force"]
    for out, why in ((root, "would replace the bundle"), (root.parent, "would replace the bundle"),
                     (root / "v.npy", "lies inside the bundle"), (g, "would replace a graph file")):
        assert main([*run, "--out", str(out)]) == 2, out
        assert why in _err_line(capsys), out
    assert _tree(root) == before
    Pipeline.from_bundle(root, backend="ort")  # verifies every sha256


def test_cli_checks_formats_and_folders_before_generating(fake, tmp_path, capsys, monkeypatch):
    """A contact sheet of an unknown format, a video format without its encoder, an output folder that
    takes no files: one line and nothing written, before any generation (the video used to be written
    first and the run to fail after)."""
    root, _ = fake
    g = _write(tmp_path / "g.json", {"objects": ["red circle"], "relationships": []})
    run = [str(g), "--bundle", str(root), "--steps", "1", "--out", str(tmp_path / "v.gif")]
    assert main([*run, "--contact-sheet", str(tmp_path / "x.npy")]) == 2
    err = _err_line(capsys)
    assert err.startswith("sg2v-run: error: --contact-sheet") and "unknown image extension '.npy'" in err
    assert main([str(g), "--bundle", str(root), "--out", str(tmp_path / "v.avi")]) == 2
    assert "unknown video format '.avi'" in _err_line(capsys)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # the video extra missing
    assert main([str(g), "--bundle", str(root), "--out", str(tmp_path / "v.mp4")]) == 2
    assert "pip install 'sg2v[video]'" in _err_line(capsys)
    monkeypatch.undo()
    import os

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    assert main(run) == 1
    err = _err_line(capsys)
    assert "cannot write to output folder" in err and "Read-only file system" in err
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "g.json"]


def test_cli_saved_layouts_replace_only_saved_layouts_and_never_inputs(grounded_bundle, tmp_path, capsys):
    g = _write(tmp_path / "g.json", {"objects": ["red circle", "blue square"], "relationships": []})
    run = [str(g), "--bundle", str(grounded_bundle), "--steps", "1", "--backend", "ort", "--out",
           str(tmp_path / "v.npy")]
    lay = tmp_path / "l.json"
    assert main([*run, "--save-layout", str(lay)]) == 0
    capsys.readouterr()
    assert main([*run, "--save-layout", str(lay), "--layout", str(lay)]) == 2  # its own input
    assert "would replace a --layout file" in _err_line(capsys)
    assert main([*run, "--save-layout", str(lay)]) == 0  # an earlier saved layout: replaced
    capsys.readouterr()
    config = _write(tmp_path / "config.json", {"learning_rate": 0.1})
    assert main([*run, "--save-layout", str(config)]) == 2
    assert "is a file that is not an earlier sg2v output" in _err_line(capsys)
    assert json.loads(config.read_text()) == {"learning_rate": 0.1}
    assert main([*run, "--save-layout", str(g), "--force"]) == 2
    assert "would replace a graph file" in _err_line(capsys)
    same = str(tmp_path / "s.png")
    assert main([*run, "--save-layout", same, "--contact-sheet", same]) == 2
    err = _err_line(capsys)
    assert "--save-layout" in err and "--contact-sheet writes there too" in err


@pytest.mark.parametrize("flag, value, why", [
    ("--guidance", "nan", "--guidance nan: must be a finite number"),
    ("--guidance", "inf", "--guidance inf: must be a finite number"),
    ("--guidance-rescale", "nan", "--guidance-rescale nan: must be in [0, 1]"),
    ("--threads", "1000000", "--threads 1000000: must be an integer in [1,"),
    ("--fps", "inf", "--fps inf: must be a number of frames per second"),
    ("--fps", "1e-9", "--fps 1e-09: must be a number of frames per second"),
    ("--seed", "9" * 30, "--seed " + "9" * 30 + ": must be an integer in [0, 9223372036854775807]"),
    ("--steps", "10000000", "--steps 10000000: must be an integer in [1, 100000]"),
    ("--batch", "0", "--batch 0: must be an integer in [1,"),
    ("--layout-tries", "0", "--layout-tries 0: must be an integer in [1, 4096]"),
])
def test_cli_absurd_numbers_exit_2_before_the_bundle_is_opened(tmp_path, capsys, flag, value, why):
    """NaN guidance gave black frames with exit 0; 10**6 threads never start; fps inf overflowed. The bundle
    path does not exist: the flag is checked first."""
    g = _write(tmp_path / "g.json", {"objects": ["red circle"], "relationships": []})
    assert main([str(g), "--bundle", str(tmp_path / "nowhere"), flag, value]) == 2
    assert why in _err_line(capsys)


def test_cli_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: video.mp4)", "(default: auto)", "(default: 0)", "(default: the bundle's)",
                  "dpmpp2m", "ddim", "--threads", "--contact-sheet"):
        assert shown in text


# --------------------------------------------------------------------------- real exporter (slow)
@pytest.mark.slow
def test_ort_and_torch_backends_agree(real_bundle, rng):
    ort_pipe = Pipeline.from_bundle(real_bundle, backend="ort")
    torch_pipe = Pipeline.from_bundle(real_bundle, backend="torch")
    # v: the UNet stage of each backend on the same fresh inputs.
    s = ort_pipe.bundle.shapes
    x = rng.standard_normal((2, s["frames"], s["channels"], s["height"], s["width"])).astype(np.float32)
    ctx = rng.standard_normal((2, s["context_tokens"], s["context_dim"])).astype(np.float32)
    cm = (rng.random((2, s["context_tokens"])) > 0.5).astype(np.float32)
    cm[:, 0] = 1.0
    feeds = {"x": x, "t": rng.uniform(0, 999, 2).astype(np.float32), "context": ctx, "context_mask": cm}
    v_ort = ort_pipe.backend.unet.run(feeds)["v"].copy()
    v_torch = torch_pipe.backend.unet.run(feeds)["v"].copy()
    assert np.abs(v_torch).max() > 1e-3
    assert np.abs(v_ort - v_torch).max() <= PARITY_ATOL
    # x and frames: the whole pipeline, same seed.
    graph = random_graph(rng)
    seed = int(rng.integers(1 << 30))
    xo, xt = [], []
    f_ort = ort_pipe(graph, seed=seed, steps=3, callback=lambda i, t, x, x0: xo.append(x.copy()))
    f_torch = torch_pipe(graph, seed=seed, steps=3, callback=lambda i, t, x, x0: xt.append(x.copy()))
    assert np.abs(xo[-1] - xt[-1]).max() <= PARITY_ATOL
    assert np.abs(f_ort.astype(int) - f_torch).max() <= 1
    # an ancestral sampler: both backends draw the same seeded step noise on the host
    f_ort = ort_pipe(graph, seed=seed, steps=3, sampler="ddpm")
    f_torch = torch_pipe(graph, seed=seed, steps=3, sampler="ddpm")
    assert np.abs(f_ort.astype(int) - f_torch).max() <= 1


# Measured here (1 thread, the tiny bundle and the demo bundle): a batch's videos differ from single calls in
# at most 1 level of 255, on about 0.02% of values with torch CPU, and on ONNX Runtime CPU not at all up to
# B=4 but on 0.006% of values at B=8 (its kernels block larger batches differently).
BATCH_MAX_LEVELS = 1
BATCH_MEAN_LEVELS = 0.01


@pytest.mark.slow
def test_real_bundle_batches_equal_single_calls(real_bundle, rng):
    graphs = [random_graph(rng) for _ in range(4)]
    seeds = [int(s) for s in rng.integers(1 << 30, size=4)]
    for backend in ("ort", "torch"):
        pipe = Pipeline.from_bundle(real_bundle, backend=backend)
        singles = np.stack([pipe(g, seed=s, steps=3) for g, s in zip(graphs, seeds)])
        batch = pipe.generate(graphs, seeds, steps=3)
        assert pipe.last_timings["chunks"] == 1 and pipe.last_timings["unet_calls"] == 3
        diff = np.abs(batch.astype(np.int16) - singles.astype(np.int16))
        assert diff.max() <= BATCH_MAX_LEVELS and diff.mean() <= BATCH_MEAN_LEVELS, (backend, diff.max())


@pytest.mark.slow
def test_torch_backend_from_explicit_checkpoint(real_bundle, real_checkpoint, rng):
    ckpt = real_checkpoint
    graph = random_graph(rng)
    from_ckpt = Pipeline.from_bundle(real_bundle, backend="torch", ckpt=ckpt)(graph, seed=3, steps=2)
    from_bundle = Pipeline.from_bundle(real_bundle, backend="torch")(graph, seed=3, steps=2)
    np.testing.assert_array_equal(from_ckpt, from_bundle)  # the same weights, EMA-less checkpoint


@pytest.mark.slow
def test_real_bundle_same_seed_identical_and_cli(real_bundle, tmp_path, capsys, rng):
    graph = random_graph(rng)
    pipe = Pipeline.from_bundle(real_bundle, backend="ort")
    a = pipe(graph, seed=9, steps=2)
    np.testing.assert_array_equal(a, pipe(graph, seed=9, steps=2))
    g = _write(tmp_path / "g.json", graph)
    out = tmp_path / "v.npy"
    assert main([str(g), "--bundle", str(real_bundle), "--out", str(out), "--steps", "2", "--seed", "9",
                 "--backend", "ort"]) == 0
    np.testing.assert_array_equal(np.load(out), a)
