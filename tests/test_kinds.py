"""Model kinds as objects (sg2v.kinds): the shipped bundles' stage I/O and format versions as the kinds give
them, the guidance's UNet rows and denoiser against a float64 reference, the student's settings check (one
copy, the same error from the bundle and the loop), the version rules and the layout plan's refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sg2v import bundle_spec as spec
from sg2v import kinds
from sg2v.errors import ConfigError, Sg2vError
from sg2v.generation import Backend, Generator, SamplerSettings
from sg2v.runtime.bundle import Bundle
from sg2v.schedule import make_alphas_cumprod

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = {"demo": ("student", "layout-grounded"), "demo-teacher": ("cfg", "layout-grounded"),
           "demo-ungrounded": ("cfg", "ungrounded")}


def _io(entries):
    return [(e["name"], e["dtype"], [str(n) for n in e["shape"]]) for e in entries]


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_the_kinds_give_each_shipped_bundles_stages(name):
    """The stage list, every stage's I/O in order and the UNet's inputs are what the exporter wrote."""
    manifest = json.loads((ROOT / "models" / name / spec.MANIFEST).read_text())
    s = manifest["shapes"]
    guidance, grounding = kinds.guidance_of(s, manifest), kinds.grounding_of(s)
    assert (guidance.name, grounding.name) == BUNDLES[name]
    io = spec.stage_io(s)
    assert list(io) == list(manifest["stages"]) == list(grounding.stage_files)
    for stage, entry in manifest["stages"].items():
        assert _io(io[stage]["inputs"]) == _io(entry["inputs"])
        assert _io(io[stage]["outputs"]) == _io(entry["outputs"])
    unet = [e["name"] for e in manifest["stages"][spec.UNET_STAGE]["inputs"]]
    assert unet == list(spec.unet_inputs(s)) == [*grounding.unet_inputs, *guidance.unet_extra_inputs]
    assert spec.rows_per_video(spec.UNET_STAGE, s) == guidance.rows_per_video == (1 if guidance.entry else 2)
    if "max_batch" in s:  # format 1 predates the kinds' version numbers
        assert spec.format_version(s) == manifest["format_version"]
    b = Bundle.open(ROOT / "models" / name, verify=False)
    assert b.guidance.name == guidance.name and b.grounding is grounding and b.student == guidance.entry


@pytest.mark.parametrize("student,grounded", [(False, False), (False, True), (True, False), (True, True)])
def test_version_rules(student, grounded):
    """Formats a kind may be read from: a student only 4, a grounded teacher only 3, an ungrounded teacher
    1 and 2; a grounded student 4."""
    guidance, grounding = kinds.guidance_for(student), kinds.grounding_for(grounded)
    ok = {v for v in (1, 2, 3, 4)
          if guidance.version_problem(v) is None and grounding.version_problem(v) is None}
    want = {(False, False): {1, 2}, (False, True): {3}, (True, False): {4}, (True, True): {4}}
    assert ok == want[student, grounded]
    assert (guidance.format_version or grounding.format_version) in ok


class _Clock:
    def start(self):
        pass

    def stop(self):
        pass


class _Unet:
    """v = tanh(a x + context mean . W + objects' mean + boxes' mean + c guidance), row by row, float32."""

    def __init__(self, rng, channels, dim):
        self.w = rng.standard_normal((dim, channels)).astype(np.float32)
        self.calls = []

    def run(self, feeds):
        self.calls.append({k: np.array(v) for k, v in feeds.items()})
        x = feeds["x"]
        c = (feeds["context"] * feeds["context_mask"][..., None]).sum(1) @ self.w  # (N, C)
        extra = feeds["boxes"].mean((1, 2, 3)) + feeds["objects"].mean((1, 2)) if "boxes" in feeds else 0.0
        g = feeds["guidance"] if "guidance" in feeds else 0.0
        shift = c[:, None, :, None, None] + (extra + 0.1 * g + 0.001 * feeds["t"])[:, None, None, None, None]
        return {"v": np.tanh(np.float32(0.7) * x + shift).astype(np.float32)}


def _reference_v(unet, x, t, context, mask, objects, boxes, guidance=None):
    """The toy UNet on one batch of rows in float64."""
    c = (context.astype(np.float64) * mask[..., None]).sum(1) @ unet.w.astype(np.float64)
    extra = boxes.astype(np.float64).mean((1, 2, 3)) + objects.astype(np.float64).mean((1, 2))
    g = 0.0 if guidance is None else guidance
    shift = c[:, None, :, None, None] + (extra + 0.1 * g + 0.001 * t)[:, None, None, None, None]
    return np.tanh(0.7 * x.astype(np.float64) + shift)


def _case(rng, b=3, tokens=4, dim=5, objects=3):
    frames = (2, 3, 4, 4)
    cond = {"context": rng.standard_normal((b, tokens, dim)).astype(np.float32),
            "context_mask": (rng.random((b, tokens)) < 0.7).astype(np.float32),
            "objects": rng.standard_normal((b, objects, 6)).astype(np.float32),
            "boxes": rng.random((b, objects, frames[0], 4)).astype(np.float32)}
    null = (rng.standard_normal((1, tokens, dim)).astype(np.float32), np.eye(1, tokens, dtype=np.float32))
    x = rng.standard_normal((b, *frames)).astype(np.float32)
    return frames, cond, null, x


def _feeds(guidance, cond, null, b):
    uncond = guidance.unconditional(null, np)
    rows = guidance.rows_per_video * b
    feeds = {name: np.empty((rows,), np.float32) for name in ("t", *guidance.unet_extra_inputs)}
    feeds.update({name: np.empty((rows, *v.shape[1:]), np.float32) for name, v in cond.items()})
    guidance.fill(feeds, cond, uncond, b)
    return feeds


def test_classifier_free_rows_and_denoiser_match_a_float64_reference(rng):
    """2B rows (cond, then the null context with no objects or boxes) in one UNet call, guided as
    v_u + w (v_c - v_u)."""
    frames, cond, null, x = _case(rng)
    b, w, t = len(x), float(rng.uniform(1.5, 6.0)), float(rng.integers(1, 999))
    unet = _Unet(rng, frames[1], cond["context"].shape[2])
    guidance = kinds.guidance_for(None)
    feeds = _feeds(guidance, cond, null, b)
    backend = Backend("toy", None, unet, np)
    got = guidance.denoiser(backend, feeds, b, SamplerSettings("ddim", 4, w, 0.0), _Clock())(x, t)
    assert len(unet.calls) == 1 and unet.calls[0]["x"].shape[0] == 2 * b
    zeros = {k: np.zeros_like(cond[k]) for k in ("objects", "boxes")}
    v_c = _reference_v(unet, x, t, cond["context"], cond["context_mask"], cond["objects"], cond["boxes"])
    v_u = _reference_v(unet, x, t, np.repeat(null[0], b, 0), np.repeat(null[1], b, 0), **zeros)
    np.testing.assert_allclose(got, v_u + w * (v_c - v_u), rtol=1e-5, atol=1e-5)


def test_a_students_rows_and_denoiser_match_a_float64_reference(rng):
    """B rows, the guidance weight as the network's input, no unconditional rows and no null context."""
    frames, cond, null, x = _case(rng)
    b, w, t = len(x), float(rng.uniform(1.5, 5.0)), float(rng.integers(1, 999))
    unet = _Unet(rng, frames[1], cond["context"].shape[2])
    guidance = kinds.guidance_for({"guidance_range": [1.5, 5.0], "steps": [1, 2, 4]})
    feeds = _feeds(guidance, cond, None, b)
    got = guidance.denoiser(Backend("toy", None, unet, np), feeds, b, SamplerSettings("ddim", 2, w, 0.0),
                            _Clock())(x, t)
    assert len(unet.calls) == 1 and unet.calls[0]["x"].shape[0] == b
    np.testing.assert_array_equal(unet.calls[0]["guidance"], np.full(b, w, np.float32))
    want = _reference_v(unet, x, t, cond["context"], cond["context_mask"], cond["objects"], cond["boxes"], w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_classifier_free_needs_its_null_context():
    with pytest.raises(Sg2vError, match="null context"):
        kinds.guidance_for(None).unconditional(None, np)


def test_one_settings_check_for_the_bundle_and_the_loop():
    """`Bundle.settings` and `Generator.settings` both refuse what the student was not distilled for, with
    the same message; a teacher takes them."""
    student = Bundle.open(ROOT / "models" / "demo", verify=False)
    teacher = Bundle.open(ROOT / "models" / "demo-teacher", verify=False)
    lo, hi = student.student["guidance_range"]
    s = student.shapes
    frames = (s["frames"], s["channels"], s["height"], s["width"])
    gen = Generator(Backend("toy", None, None, np, layout=object()), frames,
                    make_alphas_cumprod(student.schedule["num_train_timesteps"], student.schedule["kind"]),
                    student.sampler_defaults, None, student.layout, student.student)
    bad = [{"sampler": "dpmpp2m"}, {"steps": max(student.student["steps"]) + 1}, {"guidance": hi + 1.0},
           {"guidance": lo / 2}, {"guidance_rescale": 0.0 if student.student["guidance_rescale"] else 0.5}]
    for options in bad:
        with pytest.raises(ConfigError) as from_bundle:
            student.settings(**options)
        with pytest.raises(ConfigError) as from_loop:
            gen.settings(**options)
        assert str(from_bundle.value) == str(from_loop.value) and "student" in str(from_bundle.value)
        teacher.settings(**{**options, "steps": options.get("steps", 4)})  # a teacher takes any of those
    assert gen.settings() == student.settings()


def test_the_layout_plan_by_grounding(rng):
    """An ungrounded model refuses given tracks and has no layout stage; a grounded one needs the graphs."""
    with pytest.raises(Sg2vError, match="no layout stage"):
        kinds.UNGROUNDED.plan(1, None, [{0: np.zeros((2, 4))}], None, 2, None)
    with pytest.raises(Sg2vError, match="no layout stage"):
        kinds.UNGROUNDED.require_layout_stage()
    assert kinds.UNGROUNDED.plan(2, None, [{}, {}], None, 2, None) is None
    with pytest.raises(Sg2vError, match="parsed graphs"):
        kinds.LAYOUT_GROUNDED.plan(1, None, None, None, 2, {"tries": 4})


def test_half_a_grounded_config_is_refused():
    b = Bundle.open(ROOT / "models" / "demo-teacher", verify=False)
    half = dataclasses.replace(b.config, unet=dataclasses.replace(b.config.unet, layout_dim=0))
    with pytest.raises(ConfigError, match="both a layout network and a grounded UNet"):
        kinds.kinds_of_config(half)
    assert kinds.kinds_of_config(b.config)[1] is kinds.LAYOUT_GROUNDED
    student = Bundle.open(ROOT / "models" / "demo", verify=False).config
    assert kinds.kinds_of_config(student)[0].name == "student"
