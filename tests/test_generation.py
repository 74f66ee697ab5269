"""The one generation loop (sg2v.generation) on a numpy toy backend: x_T per seed, settings, the UNet's
conditioning layout (B cond rows, then B uncond rows), batches equal to single calls bit for bit, chunks,
a backend's fused guided step, timings and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import fake_config, fake_weights, random_graph, ref_encoder

from sg2v.errors import ConfigError, Sg2vError
from sg2v.generation import (
    Backend,
    Generator,
    initial_noise,
    resolve_settings,
    sampler_defaults,
)
from sg2v.graph import pad_graphs, parse_graph
from sg2v.sampling import guide
from sg2v.schedule import make_alphas_cumprod
from sg2v.vocab import shapes_vocab

CFG = fake_config()
FRAME = (CFG.data.frames, CFG.data.channels, CFG.data.height, CFG.data.width)
DEFAULTS = {"sampler": "dpmpp2m", "steps": 3, "guidance": 2.5, "guidance_rescale": 0.7}


def toy_unet(w, x, t, context, context_mask):
    """float32, row by row (no BLAS, so a row cannot depend on the batch): v = tanh(0.8 x + g + t/1000)."""
    cm = context_mask[..., None]
    c = (context * cm).sum(1) / cm.sum(1)  # (N, D)
    g = (c[:, :, None] * w["Wg"][None]).sum(1)[:, None, :, None, None]  # (N, 1, C, 1, 1)
    return np.tanh(np.float32(0.8) * x + g + np.float32(0.001) * t[:, None, None, None, None])


class ToyStage:
    def __init__(self, fn, outputs, seen=None):
        self.fn, self.outputs, self.seen = fn, outputs, seen

    def run(self, feeds):
        if self.seen is not None:
            self.seen.append({k: np.array(v) for k, v in feeds.items()})
        out = self.fn(**feeds)
        out = out if isinstance(out, tuple) else (out,)
        return {name: np.asarray(v, np.float32) for name, v in zip(self.outputs, out)}


def toy_backend(w, max_batch=None, seen=None, fused=None):
    enc = ToyStage(lambda **f: ref_encoder(w, **f), ("context", "context_mask"))
    unet = ToyStage(lambda **f: toy_unet(w, **f), ("v",), seen)
    return Backend("toy", enc, unet, np, max_batch=max_batch, guided_step=fused)


def generator(w, **kw):
    null = (w["null"], np.eye(1, CFG.data.context_tokens, dtype=np.float32))
    return Generator(toy_backend(w, **kw), FRAME, make_alphas_cumprod(1000, CFG.diffusion.schedule), DEFAULTS,
                     null)


def feeds_of(graphs):
    d = CFG.data
    parsed = [parse_graph(g, shapes_vocab(), d.max_objects, d.max_relationships) for g in graphs]
    return pad_graphs(parsed, d.max_objects, d.max_relationships).as_feeds()


@pytest.fixture
def case(rng):
    n = int(rng.integers(3, 6))
    return (fake_weights(CFG, int(rng.integers(1 << 20))), [random_graph(rng) for _ in range(n)],
            [int(s) for s in rng.integers(1 << 30, size=n)])


def test_initial_noise_is_each_seeds_own_draw(rng):
    seeds = [int(s) for s in rng.integers(1 << 30, size=3)]
    x = initial_noise(seeds, FRAME)
    assert x.shape == (3, *FRAME) and x.dtype == np.float32
    for i, s in enumerate(seeds):
        np.testing.assert_array_equal(x[i], np.random.default_rng(s).standard_normal(FRAME, dtype=np.float32))


def test_settings_take_the_defaults_and_are_checked():
    s = resolve_settings(DEFAULTS, 1000)
    assert (s.sampler, s.steps, s.guidance, s.guidance_rescale) == ("dpmpp2m", 3, 2.5, 0.7)
    s = resolve_settings(DEFAULTS, 1000, steps=8, guidance=0, guidance_rescale=1, sampler="ddim")
    assert (s.sampler, s.steps, s.guidance, s.guidance_rescale) == ("ddim", 8, 0.0, 1.0)
    for bad, match in ((dict(steps=0), "sampler steps must be an integer in"),
                       (dict(steps=2.5), "sampler steps must be an integer in"),
                       (dict(guidance=-1.0), "guidance must be a finite number >= 0"),
                       (dict(guidance=float("inf")), "guidance must be a finite number >= 0"),
                       (dict(guidance="x"), "must be finite numbers"),
                       (dict(guidance_rescale=1.5), r"guidance rescale must be in \[0, 1\]"),
                       (dict(guidance_rescale=float("nan")), r"guidance rescale must be in \[0, 1\]"),
                       (dict(sampler="euler"), "unknown sampler 'euler'")):
        with pytest.raises(ConfigError, match=match) as e:
            resolve_settings(DEFAULTS, 1000, **bad)
        assert isinstance(e.value, Sg2vError) and "\n" not in str(e.value)
    d = CFG.diffusion
    assert sampler_defaults(d) == {"sampler": d.default_sampler, "steps": d.default_steps,
                                   "guidance": d.default_guidance,
                                   "guidance_rescale": d.default_guidance_rescale}
    assert sampler_defaults(d, guidance=9)["guidance"] == 9.0


def test_a_batch_gives_the_frames_of_single_calls_bit_for_bit(case):
    """One call of B graphs (one UNet call of 2B rows per step), chunks of 2, a backend limit of 3: all
    give, video for video, what B single calls give."""
    w, graphs, seeds = case
    gen = generator(w)
    s = gen.settings()
    singles = np.concatenate([gen.run(feeds_of([g]), [seed], s).frames for g, seed in zip(graphs, seeds)])
    batch = gen.run(feeds_of(graphs), seeds, s)
    np.testing.assert_array_equal(batch.frames, singles)
    assert batch.frames.shape == (len(graphs), FRAME[0], FRAME[2], FRAME[3], 3)
    assert batch.timings["videos"] == len(graphs) and batch.timings["chunks"] == 1
    assert batch.timings["unet_calls"] == s.steps  # one batched call per step
    chunked = gen.run(feeds_of(graphs), seeds, s, max_batch=2)
    np.testing.assert_array_equal(chunked.frames, singles)
    chunks = -(-len(graphs) // 2)
    assert chunked.timings["chunks"] == chunks and chunked.timings["unet_calls"] == chunks * s.steps
    limited = generator(w, max_batch=3).run(feeds_of(graphs), seeds, s)
    np.testing.assert_array_equal(limited.frames, singles)
    assert limited.timings["chunks"] == -(-len(graphs) // 3)
    t = batch.timings
    parts = t["encoder_s"] + t["denoiser_s"] + t["sampler_overhead_s"] + t["decode_s"]
    assert parts == pytest.approx(t["total_s"], rel=1e-9)


def test_the_unet_sees_the_cond_rows_then_the_uncond_rows(case):
    w, graphs, seeds = case
    seen = []
    gen = generator(w, seen=seen)
    gen.run(feeds_of(graphs), seeds, gen.settings(steps=2))
    b = len(graphs)
    want_ctx, want_mask = ref_encoder(w, **feeds_of(graphs))
    for feeds in seen:
        assert feeds["x"].shape[0] == feeds["t"].shape[0] == 2 * b
        np.testing.assert_array_equal(feeds["x"][:b], feeds["x"][b:])  # the same x in both halves
        assert len(set(feeds["t"].tolist())) == 1
        np.testing.assert_allclose(feeds["context"][:b], want_ctx, rtol=1e-6)
        np.testing.assert_array_equal(feeds["context_mask"][:b], want_mask)
        np.testing.assert_array_equal(feeds["context"][b:], np.repeat(w["null"], b, axis=0))
        assert (feeds["context_mask"][b:, 0] == 1).all() and not feeds["context_mask"][b:, 1:].any()


class ToyFusedStep:
    """A backend's fused step in numpy: the toy UNet on both halves, then `guide`."""

    def __init__(self, w, batch, calls):
        self.w, self.batch, self.calls = w, batch, calls

    def prepare(self, feeds, guidance, rescale):
        self.feeds = {k: np.array(feeds[k]) for k in ("context", "context_mask")}
        self.guidance, self.rescale = guidance, rescale

    def __call__(self, x, t):
        self.calls.append(self.batch)
        b = self.batch
        v2 = toy_unet(self.w, x[list(range(b)) * 2], np.full(2 * b, t, np.float32), **self.feeds)
        return guide(v2[:b], v2[b:], self.guidance, self.rescale)


def test_a_backends_fused_step_replaces_the_unet_stage(case):
    w, graphs, seeds = case
    calls, seen = [], []
    fused = generator(w, seen=seen, fused=lambda b: ToyFusedStep(w, b, calls))
    plain = generator(w)
    s = plain.settings(guidance_rescale=0.5)
    got = fused.run(feeds_of(graphs), seeds, s, max_batch=2)
    np.testing.assert_array_equal(got.frames, plain.run(feeds_of(graphs), seeds, s, max_batch=2).frames)
    assert not seen  # the UNet stage was never called
    assert calls == [2] * s.steps * (len(graphs) // 2) + [len(graphs) % 2] * s.steps * (len(graphs) % 2)


def test_callbacks_see_each_chunk_and_errors_are_one_line(case):
    w, graphs, seeds = case
    gen = generator(w)
    xs = []
    gen.run(feeds_of(graphs), seeds, gen.settings(steps=2), max_batch=2,
            callback=lambda i, t, x, x0: xs.append(x.shape[0]))
    assert xs == [n for lo in range(0, len(graphs), 2) for n in [min(2, len(graphs) - lo)] * 2]
    with pytest.raises(Sg2vError, match=r"2 seeds for \d graphs"):
        gen.run(feeds_of(graphs), seeds[:2], gen.settings())
    with pytest.raises(Sg2vError, match=r"seed must be an integer in \[0, \d+\], got -"):
        gen.run(feeds_of(graphs[:1]), [-4], gen.settings())
    with pytest.raises(Sg2vError, match="output='cupy' needs a GPU backend"):
        gen.run(feeds_of(graphs[:1]), seeds[:1], gen.settings(), output="cupy")
    with pytest.raises(Sg2vError, match="must be an integer >= 1 videos per call"):
        gen.run(feeds_of(graphs[:1]), seeds[:1], gen.settings(), max_batch=0)
