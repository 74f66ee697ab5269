"""Guidance-distilled student bundles (format 4): the export (one UNet row per video with the guidance input,
parity on random guidance in the distilled range, the TensorRT op check, the manifest's student entry), every
CPU backend against the in-memory student's generation loop (`sg2v.training.backend.model_generator`) for
the same seeds, what the Pipeline and sg2v-run refuse, and the reader's checks of the student entry.

Measured on the tiny grounded student (6 trials of 3 random graphs at 1, 2 and 4 steps, random guidance in
range): the torch and torch-cuda (eager, CPU) backends give the in-memory model's tracks and frames bit for
bit; ONNX Runtime's tracks differ by at most 2.4e-7, its frames not at all. The tolerances below leave room
for other CPUs.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    STUDENT_DISTILL,
    checked_graphs,
    checkpoint_generator,
    export_student_bundle,
    random_model,
    student_tiny_config,
)

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError, ConfigError, Sg2vError
from sg2v.graph import pad_graphs
from sg2v.runtime import Pipeline
from sg2v.runtime.bundle import Bundle
from sg2v.runtime.cli import main

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

TRACK_ATOL = 1e-5  # tracks of two backends (seen: 2.4e-7, ONNX Runtime vs torch)
FRAME_LEVELS = 1  # frames of two backends, in levels of 255 (seen: 0)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(student_checkpoint):
    """The in-memory student's generation loop (torch tensors), the contract every backend is held to."""
    return checkpoint_generator(student_checkpoint)


def _graphs(seed: int, n: int = 3):
    graphs, seeds, rng = checked_graphs(seed, n)
    return graphs, seeds, float(rng.uniform(1.5, 5.0))


def _pipeline(bundle_path: Path, backend: str) -> Pipeline:
    if backend == "torch-cuda-eager":  # the torch-cuda backend's fused step and device-side loop, on the CPU
        from sg2v.runtime.backends.torch_cuda import make_torch_cuda_backend

        bundle = Bundle.open(bundle_path)
        return Pipeline(bundle, make_torch_cuda_backend(bundle, device="cpu", mode="eager", precision="fp32"))
    return Pipeline.from_bundle(bundle_path, backend=backend, threads=1)


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and isinstance(e, Sg2vError), text
    return text


# ------------------------------------------------------------------------------------------------ export

def test_the_export_declares_a_student_and_its_unet_takes_one_row_per_video(student_bundle, test_seed):
    b = Bundle.open(student_bundle)
    m = b.manifest
    cfg = student_tiny_config()
    assert m["format_version"] == spec.STUDENT_FORMAT_VERSION and b.grounded
    assert b.shapes == spec.shapes(cfg.data, cfg.encoder, grounded=True, student=True)
    assert m["student"] == spec.student_entry(cfg.distill, cfg.diffusion.num_train_timesteps)
    assert b.student == {**m["student"], "guidance_range": [1.5, 5.0], "steps": [1, 2, 4]}
    assert m["sampler_defaults"] == {"sampler": "ddim", "steps": 2,
                                     "guidance": cfg.diffusion.default_guidance,
                                     "guidance_rescale": STUDENT_DISTILL["guidance_rescale"]}
    unet = b.stages["unet"]
    assert [d["name"] for d in unet["inputs"]] == [*spec.GROUNDED_UNET_INPUTS, spec.STUDENT_INPUT]
    assert all(d["shape"][0] == spec.BATCH_DIM for d in unet["inputs"] + unet["outputs"])
    for stage, p in m["parity"].items():
        assert p["ok"] and p["max_rel_err"] <= 1e-4, (stage, p)
    assert m["trt_op_check"]["ok"] and set(m["trt_op_check"]["stages"]) == {"encoder", "layout", "unet"}
    # The graph against the student itself on fresh inputs: a batch of rows, each at its own guidance.
    import onnxruntime as ort

    from sg2v.training.backend import StudentCall
    from sg2v.training.checkpoint import load_model

    model, _, _ = load_model(student_bundle.parent / "student.pt")
    rng = np.random.default_rng(test_seed)
    n, d = 3, cfg.data
    feeds = {"x": rng.standard_normal((n, d.frames, d.channels, d.height, d.width)),
             "t": rng.integers(0, 1000, n), "context": rng.standard_normal((n, d.context_tokens, 16)),
             "context_mask": np.ones((n, d.context_tokens)), "objects": rng.standard_normal((n, 4, 16)),
             "boxes": rng.uniform(0, 1, (n, 4, d.frames, 4)), "guidance": rng.uniform(1.5, 5.0, n)}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    session = ort.InferenceSession(str(b.stage_file("unet")), providers=["CPUExecutionProvider"])
    got = session.run(["v"], feeds)[0]
    with torch.no_grad():
        want = StudentCall(model.unet)(*(torch.from_numpy(feeds[k]) for k in spec.unet_inputs(b.shapes)))
        other = StudentCall(model.unet)(*(torch.from_numpy(feeds[k]) if k != "guidance" else
                                          torch.from_numpy(feeds[k][::-1].copy())
                                          for k in spec.unet_inputs(b.shapes)))
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4 * float(np.abs(want.numpy()).max()))
    assert not np.allclose(got, other.numpy(), atol=1e-3)  # the guidance input reaches the output


def test_an_fp16_ungrounded_student_exports_and_runs(tmp_path):
    bundle, _ = export_student_bundle(tmp_path, grounded=False, precision="fp16", weights="fp16", max_batch=4)
    b = Bundle.open(bundle)
    assert b.manifest["format_version"] == 4 and not b.grounded and b.student["steps"] == [1, 2, 4]
    assert [d["name"] for d in b.stages["unet"]["inputs"]] == [*spec.UNET_INPUTS, spec.STUDENT_INPUT]
    assert b.manifest["weight_storage"] == "fp16" and b.manifest["parity"]["unet"]["ok"]
    assert b.manifest["parity"]["unet"]["max_rel_err"] <= 1e-2 and b.manifest["trt_op_check"]["ok"]
    graphs = [{"objects": ["red circle", "blue square"], "relationships": [[0, "left of", 1]]}] * 2
    ort_frames = _pipeline(bundle, "ort").generate(graphs, [5, 6], guidance=2.5, steps=4)
    torch_frames = _pipeline(bundle, "torch").generate(graphs, [5, 6], guidance=2.5, steps=4)
    assert ort_frames.shape == (2, 2, 8, 8, 3)
    # fp16 compute in the graph against the float32 reference on the same fp16-rounded weights
    assert np.abs(ort_frames.astype(int) - torch_frames.astype(int)).max() <= 8


def test_export_refuses_a_default_guidance_outside_the_distilled_range(tmp_path):
    from sg2v.export import export_bundle
    from sg2v.export.onnx_export import ExportError
    from sg2v.training.checkpoint import save_checkpoint
    from sg2v.vocab import shapes_vocab

    cfg = student_tiny_config(grounded=False)
    ckpt = save_checkpoint(tmp_path / "s.pt", random_model(cfg, 3), cfg, shapes_vocab())
    for g in (7.5, 1.0):
        why = rf"--guidance {g:g}: this student was distilled for guidance in \[1.5, 5\]; pass --guidance"
        with pytest.raises(ExportError, match=why) as e:
            export_bundle(ckpt, tmp_path / "out", guidance=g)
        _one_line(e.value)
    assert not (tmp_path / "out").exists()


def test_export_steps_set_the_default_and_a_reexport_keeps_the_bundles_defaults(tmp_path,
                                                                                student_checkpoint):
    """--steps: the bundle's default sampler steps (only one the student was distilled for); --layout-tries:
    its layout check's draws; a bundle re-exported with --ckpt BUNDLE keeps the default steps, guidance and
    layout tries it was exported with and names the training checkpoint behind its weights."""
    from sg2v.export import export_bundle
    from sg2v.export.cli import main as export_main
    from sg2v.export.onnx_export import ExportError

    for bad, why in ((3, r"--steps 3: this student was distilled for \[1, 2, 4\] steps"),
                     (0, r"--steps 0: the default sampler step count must be an integer in \[1, ")):
        with pytest.raises(ExportError, match=why) as e:
            export_bundle(student_checkpoint, tmp_path / "bad", steps=bad, max_batch=2)
        _one_line(e.value)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ExportError, match=r"--layout-tries 0: the layout check's draws per graph") as e:
        export_bundle(student_checkpoint, tmp_path / "bad", layout_tries=0, max_batch=2)
    _one_line(e.value)
    assert not (tmp_path / "bad").exists()
    first = export_bundle(student_checkpoint, tmp_path / "two", steps=2, guidance=2.5, include_weights=True,
                          max_batch=2, layout_tries=40)
    assert first.manifest["sampler_defaults"]["steps"] == 2 and first.manifest["layout"]["tries"] == 40
    assert first.manifest["model_config"]["diffusion"]["default_steps"] == 2
    again = export_bundle(tmp_path / "two", tmp_path / "again", max_batch=2)
    d = again.manifest["sampler_defaults"]
    assert (d["steps"], d["guidance"], again.manifest["layout"]["tries"]) == (2, 2.5, 40)
    src = again.manifest["source_checkpoint"]
    assert src["trained_checkpoint"]["sha256"] == first.manifest["source_checkpoint"]["sha256"]
    assert src["trained_checkpoint"]["file"] == student_checkpoint.name
    assert Bundle.open(tmp_path / "again").sampler_defaults["steps"] == 2
    assert export_main(["--ckpt", str(tmp_path / "two"), "--out", str(tmp_path / "four"), "--steps", "4",
                        "--max-batch", "2"]) == 0
    assert Bundle.open(tmp_path / "four").sampler_defaults["steps"] == 4


# ----------------------------------------------------------------------------------------------- backends

@pytest.mark.parametrize("backend", ["ort", "torch", "torch-cuda-eager"])
def test_every_cpu_backend_agrees_with_the_in_memory_student(student_bundle, reference, backend):
    pipe = _pipeline(student_bundle, backend)
    gen, cfg = reference
    rows = []
    unet_run = pipe.backend.unet.run

    def counting(feeds):
        rows.append(int(feeds["x"].shape[0]))
        return unet_run(feeds)

    pipe.backend.unet.run = counting
    for trial, steps in ((21, 1), (22, 2), (23, 4)):
        graphs, seeds, guidance = _graphs(trial)
        got = pipe.run(graphs, seeds, steps=steps, guidance=guidance)
        parsed = [pipe.parse(g) for g in graphs]
        feeds = pad_graphs(parsed, cfg.data.max_objects, cfg.data.max_relationships).as_feeds()
        want = gen.run(feeds, seeds, gen.settings(steps=steps, guidance=guidance), graphs=parsed)
        for a, b in zip(got.layouts, want.layouts):
            assert a.draws == b.draws and a.satisfied == b.satisfied
            np.testing.assert_allclose(a.tracks, b.tracks, rtol=0, atol=TRACK_ATOL)
        assert np.abs(got.frames.astype(np.int16) - want.frames.astype(np.int16)).max() <= FRAME_LEVELS
        assert got.timings["unet_calls"] == steps
    if backend != "torch-cuda-eager":  # its fused step calls the network itself, not the UNet stage
        assert rows == [3] * 7  # one UNet call of one row per video per step: no unconditional rows


def test_the_guidance_weight_changes_the_video_and_the_default_is_the_manifests(student_bundle):
    pipe = _pipeline(student_bundle, "ort")
    graphs, seeds, _ = _graphs(31, 2)
    low = pipe.generate(graphs, seeds, guidance=1.5)
    high = pipe.generate(graphs, seeds, guidance=5.0)
    assert np.abs(low.astype(int) - high.astype(int)).max() > 0
    default = pipe.generate(graphs, seeds)
    d = pipe.bundle.sampler_defaults
    np.testing.assert_array_equal(default, pipe.generate(graphs, seeds, steps=d["steps"],
                                                         guidance=d["guidance"]))
    assert pipe.last_timings["unet_calls"] == d["steps"] == 2


def test_the_pipeline_refuses_what_the_student_was_not_distilled_for(student_bundle):
    pipe = _pipeline(student_bundle, "ort")
    g = {"objects": ["red circle"], "relationships": []}
    for kw, why in (({"steps": 25}, r"25 steps: this student was distilled for \[1, 2, 4\] steps"),
                    ({"steps": 3}, r"3 steps: this student was distilled for \[1, 2, 4\] steps"),
                    ({"sampler": "dpmpp2m"}, r"sampler 'dpmpp2m': this student was distilled for 'ddim'"),
                    ({"guidance": 6.0}, r"guidance 6: this student was distilled for guidance in \[1.5, 5\]"),
                    ({"guidance": 0.0}, r"guidance 0: .* in \[1.5, 5\]"),
                    ({"guidance_rescale": 0.0}, r"rescale 0: .*rescale 0.7, which it cannot change")):
        with pytest.raises(ConfigError, match=why) as e:
            pipe(g, seed=1, **kw)
        _one_line(e.value)


def test_torch_backend_refuses_a_teacher_checkpoint_for_a_student_bundle(student_bundle, grounded_checkpoint):
    with pytest.raises(Sg2vError, match="is a model sampled with guidance and bundle .* a guidance-distilled "
                                        "student; pass the checkpoint the bundle was exported from") as e:
        Pipeline.from_bundle(student_bundle, backend="torch", ckpt=grounded_checkpoint)
    _one_line(e.value)


# -------------------------------------------------------------------------------------------------- CLI

def test_sg2v_run_on_a_student_and_its_refusals(student_bundle, tmp_path, capsys):
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"objects": ["red circle", "blue square"], "relationships": [[0, "above", 1]]}))
    base = [str(g), "--bundle", str(student_bundle), "--backend", "ort", "--seed", "4"]
    assert main([*base, "--guidance", "2", "--steps", "4", "--out", str(tmp_path / "v.npy")]) == 0
    out = capsys.readouterr().out
    assert "for 4 steps" in out
    want = _pipeline(student_bundle, "ort")(json.loads(g.read_text()), seed=4, guidance=2.0, steps=4)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), want)
    for flags, why in ((["--guidance", "9"], r"guidance 9: this student was distilled for guidance in "
                                             r"\[1.5, 5\]; use one in that range, or the teacher bundle"),
                       (["--steps", "25"], r"25 steps: this student was distilled for \[1, 2, 4\] steps "
                                           r"\(its consistency grid of 4\); use one of those"),
                       (["--sampler", "dpmpp2m"], r"sampler 'dpmpp2m': .* use --sampler ddim"),
                       (["--guidance-rescale", "0.2"], r"guidance rescale 0.2: .*cannot change")):
        assert main([*base, *flags, "--out", str(tmp_path / "w.npy")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("sg2v-run: error: "), err
        assert re.search(why, err) and "is a guidance-distilled student" in err, (why, err)
    assert not (tmp_path / "w.npy").exists()


# ----------------------------------------------------------------------------------------------- reader

@pytest.fixture
def student(tmp_path, student_bundle) -> Path:
    """A copy of the session's student bundle to tamper with."""
    return Path(shutil.copytree(student_bundle, tmp_path / "student"))


def _rewrite(root: Path, change) -> None:
    m = json.loads((root / spec.MANIFEST).read_text())
    change(m)
    (root / spec.MANIFEST).write_text(json.dumps(m))


def _entry(**changes):
    return lambda m: m["student"].update(changes)


@pytest.mark.parametrize("change, why", [
    (lambda m: m.pop("student"), "manifest 'student' is missing"),
    (lambda m: m.update(student=[1.5, 5]), "manifest 'student' is not an object"),
    (lambda m: m["student"].pop("method"), r"'student' has keys .*, expected \['guidance_distilled'"),
    (_entry(bomb=1), r"manifest 'student' has keys \['bomb',"),
    (_entry(guidance_distilled=False), "guidance_distilled False is not true"),
    (_entry(guidance_range=[5.0, 1.5]), r"guidance_range \[5.0, 1.5\] is not \[low, high\]"),
    (_entry(guidance_range=[1.5, float("inf")]), r"guidance_range \[1.5, inf\] is not \[low, high\]"),
    (_entry(guidance_range=[1.5]), r"guidance_range \[1.5\] is not \[low, high\]"),
    (_entry(guidance_range="1.5-5"), r"guidance_range '1.5-5' is not \[low, high\]"),
    (_entry(guidance_range=[True, 5.0]), r"guidance_range \[True, 5.0\] is not \[low, high\]"),
    (_entry(guidance_rescale=2.0), r"guidance_rescale 2.0 is not a finite number in \[0, 1\]"),
    (_entry(grid_steps=0), r"grid_steps 0 is not an integer in \[1, 1000\]"),
    (_entry(grid_steps=10**12), r"grid_steps 1000000000000 is not an integer"),
    (_entry(grid_steps=4.0), r"grid_steps 4.0 is not an integer"),
    (_entry(steps=[1, 2, 3]), r"steps \[3\] do not lie on the grid of 4 timesteps"),
    (_entry(steps=[1, 8]), r"steps \[1, 8\] is not a list of 1 to 64 distinct integers in \[1, grid_steps\]"),
    (_entry(steps=[2, 2]), r"steps \[2, 2\] is not a list of 1 to 64 distinct"),
    (_entry(steps=[]), r"steps \[\] is not a list of 1 to 64"),
    (_entry(steps=list(range(1, 100))), r"is not a list of 1 to 64"),
    (_entry(steps="2"), r"steps '2' is not a list"),
    (_entry(sampler="euler"), r"sampler 'euler' is not one of \['ddim', 'ddpm', 'dpmpp2m'\]"),
    (_entry(method=["x"] * 3), r"method \['x', 'x', 'x'\] is not a short string"),
    (_entry(guidance_range=[1.0, 5.0]), r"disagrees with model_config.distill: guidance_range=\[1.0, 5.0\]"),
    (_entry(grid_steps=2, steps=[1, 2]), r"disagrees with model_config.distill: grid_steps=2 \(config says"),
    (lambda m: m["sampler_defaults"].update(steps=3), r"sampler_defaults are not what the student was "
                                                      r"distilled for \(3 steps"),
    (lambda m: m["sampler_defaults"].update(guidance=7.5), r"sampler_defaults .*\(guidance 7.5"),
    (lambda m: m["sampler_defaults"].update(sampler="dpmpp2m"), r"sampler_defaults .*\(sampler 'dpmpp2m'"),
    (lambda m: m.update(format_version=3), r"a guidance-distilled student .* in a format-3 bundle \(a "
                                           r"student needs format 4\)"),
    (lambda m: m["shapes"].pop("student"), r"manifest shapes disagree with model_config: student=None"),
    (lambda m: m["stages"]["unet"]["inputs"].pop(), r"stage 'unet' inputs .* differ from"),
    (lambda m: m["model_config"]["unet"].update(guidance_embed=False),
     "format 4 without a guidance-distilled student"),
])
def test_a_bad_student_entry_is_one_line(student, change, why):
    Bundle.open(student)  # untouched, it opens
    _rewrite(student, change)
    with pytest.raises(BundleError, match=why) as e:
        Bundle.open(student)
    _one_line(e.value)


def test_a_teacher_bundle_with_a_student_entry_is_refused(tmp_path, grounded_bundle, student_bundle):
    teacher = Path(shutil.copytree(grounded_bundle, tmp_path / "teacher"))
    entry = json.loads((student_bundle / spec.MANIFEST).read_text())["student"]
    _rewrite(teacher, lambda m: m.update(student=entry))
    with pytest.raises(BundleError, match="a 'student' entry but its model is not guidance-distilled") as e:
        Bundle.open(teacher)
    _one_line(e.value)


def test_a_reader_without_students_refuses_format_4(student, monkeypatch):
    """A runtime that reads formats 1 to 3 only (one from before students) must not run a student with CFG:
    format 4 is a newer format to it."""
    monkeypatch.setattr(spec, "FORMAT_VERSION", 3)
    with pytest.raises(BundleError, match="newer sg2v") as e:
        Bundle.open(student)
    _one_line(e.value)


def test_a_student_bundle_reads_no_null_context(student):
    """A student has no unconditional rows: the exporter writes no null context and the reader needs none."""
    assert not (student / spec.NULL_CONTEXT).exists() and not (student / spec.NULL_CONTEXT_MASK).exists()
    assert spec.NULL_CONTEXT not in json.loads((student / spec.MANIFEST).read_text())["files"]
    b = Bundle.open(student)
    assert b.null_context is None and b.null_context_mask is None
    pipe = Pipeline(b, _pipeline(student, "ort").backend)
    assert pipe.generate([{"objects": ["red circle"], "relationships": []}], [2]).shape == (1, 2, 8, 8, 3)


# ----------------------------------------------------------------------------------------------- TensorRT

def test_tensorrt_profiles_of_a_student_take_one_row_per_video(student_bundle):
    """The UNet engine's profiles span 1 to max_batch rows (one per video), the guidance input included."""
    from sg2v.export import tensorrt as trt_build

    b = Bundle.open(student_bundle)
    unet = trt_build.profile_shapes(b, "unet", opt_batch=3)
    assert set(unet) == set(spec.unet_inputs(b.shapes))
    assert unet["guidance"] == ((1,), (3,), (b.max_batch,))
    s = b.shapes
    assert unet["x"] == tuple((n, s["frames"], s["channels"], s["height"], s["width"])
                              for n in (1, 3, b.max_batch))
    assert unet["boxes"][2] == (b.max_batch, s["padded_objects"], s["frames"], 4)


@pytest.mark.parametrize("grounded", [True, False])
def test_the_torch_tensorrt_route_exports_the_student_stage(student_bundle, tmp_path, grounded):
    """What Torch-TensorRT would convert: the student's UNet program takes the manifest's inputs in order
    (guidance last) at one row, and computes what unet.onnx computes."""
    import onnxruntime as ort

    from sg2v.export import torch_trt

    path = student_bundle if grounded else export_student_bundle(tmp_path, grounded=False, max_batch=2)[0]
    b = Bundle.open(path)
    model = torch_trt.load_bundle_model(path.parent / "student.pt", b)
    inputs = torch_trt.example_inputs(b, seed=5)
    args = inputs["unet"]
    names = spec.stage_names(b.shapes)["unet"][0]
    assert names[-1] == "guidance" and args[0].shape[0] == 1
    lo, hi = b.student["guidance_range"]
    assert lo <= float(args[-1][0]) <= hi
    program = torch_trt.exported_programs(model, b)["unet"]
    assert tuple(program.graph_signature.user_inputs) == names
    with torch.no_grad():
        got = program.module()(*args).numpy()
    session = ort.InferenceSession(str(b.stage_file("unet")), providers=["CPUExecutionProvider"])
    want = session.run(None, {n: a.numpy() for n, a in zip(names, args)})[0]
    assert float(np.abs(got - want).max()) <= 1e-4 * max(float(np.abs(want).max()), 1e-6)


@pytest.mark.trt
@pytest.mark.gpu
def test_trt_runs_a_student_as_onnx_runtime_does(student_bundle, tmp_path):
    """TensorRT engines of a student (UNet profiles of one row per video, the guidance input) against ONNX
    Runtime: the same draws, tracks and frames within float32 rounding (not yet run on a GPU)."""
    import importlib.util

    from sg2v.runtime.backends import trt_unavailable_reason

    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT cannot be installed here")
    reason = trt_unavailable_reason()
    if reason is not None:
        pytest.skip(f"TensorRT backend unavailable: {reason}")
    root = shutil.copytree(student_bundle, tmp_path / "bundle")
    trt_pipe = Pipeline.from_bundle(root, backend="trt")
    ort_pipe = Pipeline.from_bundle(root, backend="ort")
    assert trt_pipe.max_batch == Bundle.open(root).max_batch
    graphs, seeds, guidance = _graphs(41)
    got = trt_pipe.run(graphs, seeds, steps=2, guidance=guidance)
    want = ort_pipe.run(graphs, seeds, steps=2, guidance=guidance)
    assert [r.draws for r in got.layouts] == [r.draws for r in want.layouts]
    for a, b in zip(got.layouts, want.layouts):
        assert np.abs(a.tracks - b.tracks).max() <= 1e-3
    assert np.abs(got.frames.astype(int) - want.frames).max() <= 2
