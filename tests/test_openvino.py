"""The OpenVINO backend against ONNX Runtime on the same bundles: stage outputs on fresh random inputs, and
the frames of whole generations with the same seeds (a small exported bundle, a student, models/demo)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'sg2v[openvino]')")
pytest.importorskip("onnxruntime")

from helpers import random_graph  # noqa: E402

from sg2v import bundle_spec as spec  # noqa: E402
from sg2v.errors import MissingDependencyError, Sg2vError  # noqa: E402
from sg2v.runtime.backends import make_backend  # noqa: E402
from sg2v.runtime.bundle import Bundle, random_unet_feeds  # noqa: E402
from sg2v.runtime.pipeline import Pipeline  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
# OpenVINO and ONNX Runtime sum in different orders: stage outputs agree to float32 rounding (relative to the
# output's scale), frames to one uint8 level in a few pixels (models/demo: 1 level at most in ~1e-5 of them).
STAGE_RTOL = 1e-4
FRAME_LEVELS = 1
FRAME_FRACTION = 0.01


def _copy_bundle(src: Path, dst: Path) -> Path:
    """A copy of a bundle's files (the OpenVINO model cache then goes to the copy's engines/)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("which", ["grounded", "student"])
def test_unet_stage_matches_onnx_runtime(which, grounded_bundle, student_bundle, rng, tmp_path):
    src = grounded_bundle if which == "grounded" else student_bundle
    bundle = Bundle.open(_copy_bundle(src, tmp_path / "b"))
    ov = make_backend(bundle, "openvino", threads=1)
    ort = make_backend(bundle, "ort", threads=1)
    assert ov.name == "openvino-cpu"
    assert list(ov.unet.requests) == [spec.rows_per_video(spec.UNET_STAGE, bundle.shapes)]
    for rows in (1, 3, 1):
        feeds = random_unet_feeds(bundle, rows, rng)
        got = {k: np.array(v) for k, v in ov.unet.run(feeds).items()}
        want = ort.unet.run(feeds)
        for name, ref in want.items():
            assert got[name].shape == ref.shape
            err = np.abs(got[name] - ref).max() / np.abs(ref).max()
            assert err < STAGE_RTOL, (which, rows, name, err)
    # One compiled model per batch size, reused; one video's rows compiled when the backend is built.
    assert sorted(ov.unet.requests) == sorted({1, 3, spec.rows_per_video(spec.UNET_STAGE, bundle.shapes)})


@pytest.mark.parametrize("which", ["grounded", "student", "demo"])
def test_same_seed_gives_the_same_frames_as_onnx_runtime(which, grounded_bundle, student_bundle, tmp_path):
    src = {"grounded": grounded_bundle, "student": student_bundle, "demo": DEMO}[which]
    if which == "demo" and not (DEMO / "manifest.json").is_file():
        pytest.skip("models/demo is not in this checkout")
    root = _copy_bundle(src, tmp_path / "b")
    rng = np.random.default_rng(7)
    graphs = [random_graph(rng) for _ in range(1 if which == "demo" else 2)]
    steps = 1 if which == "demo" else 2  # the demo student's one-step video keeps this test short
    frames = {}
    for backend in ("ort", "openvino"):
        pipe = Pipeline.from_bundle(root, backend=backend, threads=1)
        frames[backend] = [pipe(g, seed=i + 3, steps=steps) for i, g in enumerate(graphs)]
    for a, b in zip(frames["ort"], frames["openvino"]):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        assert diff.max() <= FRAME_LEVELS and (diff > 0).mean() <= FRAME_FRACTION, (which, diff.max())


def test_compiled_models_are_cached_in_the_bundle(student_bundle, tmp_path):
    root = _copy_bundle(student_bundle, tmp_path / "b")
    make_backend(Bundle.open(root), "openvino", threads=1).unet.run(
        random_unet_feeds(Bundle.open(root), 2, np.random.default_rng(0)))
    cache = root / spec.ENGINES_DIR / "openvino-cache"
    assert cache.is_dir() and any(cache.iterdir())


def test_auto_takes_openvino_on_the_cpu(student_bundle, tmp_path):
    root = _copy_bundle(student_bundle, tmp_path / "b")
    assert Pipeline.from_bundle(root, threads=1).backend_name == "openvino-cpu"
    assert Pipeline.from_bundle(root, device="cpu", threads=1).backend_name == "openvino-cpu"


def test_without_openvino_auto_says_so_and_the_named_backend_is_one_line(student_bundle, tmp_path,
                                                                         monkeypatch):
    root = _copy_bundle(student_bundle, tmp_path / "b")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    pipe = Pipeline.from_bundle(root, threads=1)
    assert pipe.backend_name == "ort-cpu"
    assert any(n.startswith("OpenVINO skipped: openvino is not installed") for n in pipe.backend.notes)
    with pytest.raises(MissingDependencyError, match=r"pip install 'sg2v\[openvino\]'"):
        make_backend(Bundle.open(root), "openvino")


def test_openvino_refuses_a_gpu_device(student_bundle):
    with pytest.raises(Sg2vError, match="runs on the CPU"):
        make_backend(Bundle.open(student_bundle), "openvino", device="cuda")


def test_layout_stage_compiles_once_for_every_row_count(grounded_bundle, rng, tmp_path):
    """The layout network's rows change per round: one dynamic-batch model answers each count as ORT does."""
    bundle = Bundle.open(_copy_bundle(grounded_bundle, tmp_path / "b"))
    ov = make_backend(bundle, "openvino", threads=1)
    ort = make_backend(bundle, "ort", threads=1)
    assert ov.layout.any_rows is not None and not ov.layout.requests
    io = bundle.stages[spec.LAYOUT_STAGE]
    vocab = bundle.vocab
    objects = next(d["shape"][1] for d in io["inputs"] if d["name"] == "objects")
    for rows in (2, 5, 1):
        feeds = {}
        for d in io["inputs"]:
            shape = (rows, *d["shape"][1:])
            if d["dtype"] == "int64":  # triples: (subject, predicate, object) indices, -1 padding
                value = np.stack([rng.integers(0, objects, shape[:-1]),
                                  rng.integers(1, len(vocab.pred_names), shape[:-1]),
                                  rng.integers(0, objects, shape[:-1])], axis=-1)
            elif d["name"] in ("track_mask", "known_mask", "context_mask"):
                value = (rng.random(shape) < 0.6).astype(np.float32)
            elif d["name"] == "t":
                value = rng.uniform(0, 999, shape)
            else:
                value = rng.standard_normal(shape)
            feeds[d["name"]] = value.astype(np.dtype(d["dtype"]))
        got = {k: np.array(v) for k, v in ov.layout.run(feeds).items()}
        for name, ref in ort.layout.run(feeds).items():
            assert got[name].shape == ref.shape
            assert np.abs(got[name] - ref).max() <= STAGE_RTOL * np.abs(ref).max(), (rows, name)
    assert not ov.layout.requests  # nothing compiled per row count
