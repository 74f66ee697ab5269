"""The torch-cuda backend (sg2v.runtime.backends.torch_cuda): its fused guided step in every mode and batch
size computes what `sg2v.sampling.cfg_denoiser` around the eager UNet computes (fp32 exactly, fp16 within
fp16 tolerance); static buffers follow new inputs; the backend drives the one generation loop with the frames
of the reference backend. CUDA graphs and torch.compile on a GPU (marked, skipped here with the reason)."""

from __future__ import annotations

import copy
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import grounded_tiny_config, random_graph, random_model, tiny_config  # noqa: E402

from sg2v.errors import Sg2vError  # noqa: E402
from sg2v.runtime.backends.torch_cuda import (  # noqa: E402
    GuidedStep,
    half_unet,
    make_torch_cuda_backend,
    prepare_unet,
    torch_tensorrt_unet,
)
from sg2v.sampling import cfg_denoiser  # noqa: E402

FP16_REL_TOL = 2e-2  # relative L2 error of an fp16 UNet against fp32 (seen: ~4e-3)
# The grounded tiny UNet's guided v in fp16 against fp32: ~5e-3 for most draws, up to 3.9e-2 on 40 draws
# (3 of 40 above 2.5e-2: draws whose guided v is small where the object maps cancel it), so a wider bound.
GROUNDED_FP16_REL_TOL = 6e-2


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config("test-fast", frames=3), seed=7)


def _inputs(cfg, gen: torch.Generator, batch: int, device: str = "cpu"):
    d = cfg.data
    length, dim = d.context_tokens, cfg.encoder.context_dim
    x = torch.randn(batch, d.frames, d.channels, d.height, d.width, generator=gen)
    ctx = torch.randn(2 * batch, length, dim, generator=gen)
    mask = (torch.rand(2 * batch, length, generator=gen) > 0.4).float()
    mask[:, 0] = 1.0
    t = float(torch.randint(0, 1000, (1,), generator=gen))
    return x.to(device), t, {"context": ctx.to(device), "context_mask": mask.to(device)}


@pytest.fixture(scope="module")
def grounded_model():
    return random_model(grounded_tiny_config("test-fast-grounded", frames=3), seed=8)


def _grounding(cfg, gen: torch.Generator, batch: int, device: str = "cpu"):
    """A grounded UNet's objects and boxes on 2B rows as the loop lays them out: random objects and valid
    boxes in the B conditional rows (the last slot padded), zeros in the B unconditional ones."""
    d = cfg.data
    objects = torch.randn(batch, d.padded_objects, cfg.encoder.embed_dim, generator=gen)
    lo = torch.rand(batch, d.padded_objects, d.frames, 2, generator=gen) * 0.6
    boxes = torch.cat([lo, lo + 0.1 + 0.3 * torch.rand(lo.shape, generator=gen)], dim=-1)
    boxes[:, -1] = 0.0
    return {"objects": torch.cat([objects, torch.zeros_like(objects)]).to(device),
            "boxes": torch.cat([boxes, torch.zeros_like(boxes)]).to(device)}


def _reference(unet, x, t, feeds, guidance, rescale):
    """The contract's reference: `sg2v.sampling.cfg_denoiser` around the eager fp32 UNet."""
    layout = [feeds[k] for k in ("objects", "boxes") if k in feeds]

    def pair(x2, tt):
        with torch.no_grad():
            return unet(x2, torch.full((x2.shape[0],), tt, device=x2.device), feeds["context"],
                        feeds["context_mask"], *layout)

    return cfg_denoiser(pair, guidance, rescale)(x, t)


def _step(unet, cfg, device, mode, precision, batch=1):
    d = cfg.data
    net = prepare_unet(unet, torch.device(device), mode, precision)
    objects = (d.padded_objects, cfg.encoder.embed_dim) if cfg.unet.layout_dim > 0 else None
    return GuidedStep(net, batch, (d.frames, d.channels, d.height, d.width),
                      (d.context_tokens, cfg.encoder.context_dim), device, mode, precision, objects)


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_half_unet_is_fp16_except_the_timestep_embedding(model):
    from sg2v.models.unet import SinusoidalEmbedding

    half = half_unet(model.unet)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    embs = [m for m in half.modules() if isinstance(m, SinusoidalEmbedding)]
    assert embs and all(m.freqs.dtype == torch.float32 for m in embs)
    assert embs[0](torch.tensor([999.0])).dtype == torch.float16  # hands fp16 on to the fp16 Linear
    assert all(p.dtype == torch.float32 for p in model.unet.parameters())  # the source is left alone


@pytest.mark.parametrize("guidance,rescale,batch", [(3.0, 0.7, 1), (1.5, 0.0, 3), (7.5, 1.0, 2)])
def test_eager_fp32_step_equals_cfg_denoiser(model, guidance, rescale, batch, rng):
    cfg = model.cfg
    step = _step(model.unet, cfg, "cpu", "eager", "fp32", batch)
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    for _ in range(2):  # new inputs each call: the static buffers must follow them
        x, t, feeds = _inputs(cfg, gen, batch)
        step.prepare(feeds, guidance, rescale)
        got = step(x, t)
        want = _reference(model.unet, x, t, feeds, guidance, rescale)
        assert got.shape == want.shape == x.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision, tol", [("fp32", 1e-5), ("fp16", GROUNDED_FP16_REL_TOL)])
def test_grounded_step_reads_objects_and_boxes(grounded_model, precision, tol, rng):
    """A grounded UNet's fused step takes the objects and boxes of the 2B rows into its buffers and gives
    what cfg_denoiser around the eager UNet gives with them; other boxes give another v."""
    cfg = grounded_model.cfg
    step = _step(grounded_model.unet, cfg, "cpu", "eager", precision, batch=2)
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    for _ in range(2):
        x, t, feeds = _inputs(cfg, gen, 2)
        feeds.update(_grounding(cfg, gen, 2))
        step.prepare(feeds, 3.0, 0.7)
        got = step(x, t).clone()
        want = _reference(grounded_model.unet, x, t, feeds, 3.0, 0.7)
        assert got.dtype == torch.float32 and _rel(got, want) <= tol
        feeds["boxes"] = feeds["boxes"].flip(1)  # the same boxes on other objects: the buffers follow
        step.prepare(feeds, 3.0, 0.7)
        moved = _reference(grounded_model.unet, x, t, feeds, 3.0, 0.7)
        got = step(x, t)
        assert _rel(got, moved) <= tol and _rel(moved, want) > 1e-2  # moved boxes: measured 0.12-0.21
        assert _rel(got, moved) < 0.5 * _rel(got, want)  # it follows the new boxes, not the old ones


def test_eager_fp16_step_within_fp16_tolerance(model, rng):
    cfg = model.cfg
    step = _step(model.unet, cfg, "cpu", "eager", "fp16", batch=2)
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    for _ in range(2):
        x, t, feeds = _inputs(cfg, gen, 2)
        step.prepare(feeds, 3.0, 0.7)
        got = step(x, t)
        want = _reference(model.unet, x, t, feeds, 3.0, 0.7)
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        assert _rel(got, want) < FP16_REL_TOL


def test_bad_settings_raise_one_line_errors(model):
    cfg = model.cfg
    with pytest.raises(Sg2vError, match="needs a CUDA device"):
        _step(model.unet, cfg, "cpu", "graphs", "fp16")
    with pytest.raises(Sg2vError, match="mode"):
        _step(model.unet, cfg, "cpu", "fast", "fp16")
    with pytest.raises(Sg2vError, match="precision"):
        _step(model.unet, cfg, "cpu", "eager", "int8")
    step = _step(model.unet, cfg, "cpu", "eager", "fp32")
    with pytest.raises(Sg2vError, match=r"rescale must be in \[0, 1\]"):
        step.set_guidance(3.0, 1.5)


@pytest.mark.slow
def test_backend_on_the_cpu_gives_the_reference_backend_frames(real_bundle, rng):
    """eager fp32: the fused step and the sampler on torch tensors against the reference backend (numpy
    sampler): the same video up to float rounding; a batch of 3 within the same tolerance of 3 single calls;
    fp16 within a few levels."""
    from sg2v.runtime import Pipeline

    graphs = [random_graph(rng) for _ in range(3)]
    seeds = [int(s) for s in rng.integers(1 << 20, size=3)]
    ref = Pipeline.from_bundle(real_bundle, backend="torch")
    fast = Pipeline(ref.bundle, make_torch_cuda_backend(ref.bundle, device="cpu", mode="eager",
                                                        precision="fp32"))
    want = np.stack([ref(g, seed=s, steps=3) for g, s in zip(graphs, seeds)])
    single = fast(graphs[0], seed=seeds[0], steps=3)
    batch = fast.generate(graphs, seeds, steps=3)
    assert batch.shape == want.shape and batch.dtype == np.uint8
    for got in (single[None], batch):
        diff = np.abs(got.astype(np.int16) - want[:len(got)].astype(np.int16))
        assert diff.max() <= 1 and diff.mean() < 0.05
    assert fast.last_timings["unet_calls"] == 3 and fast.last_timings["videos"] == 3
    assert fast.backend_name == "torch-cpu-eager-fp32"
    half = Pipeline(ref.bundle, make_torch_cuda_backend(ref.bundle, device="cpu", mode="eager",
                                                        precision="fp16"))
    diff16 = np.abs(half(graphs[0], seed=seeds[0], steps=3).astype(np.int16) - want[0].astype(np.int16))
    assert diff16.mean() < 2.0  # fp16 weights: a few levels at most on average


# ------------------------------------------------------------------------------------------------------- GPU

def _need_cuda() -> None:
    # SG2V_REQUIRE_GPU=1 (the GPU check scripts) turns a missing GPU into a failure, not a silent skip.
    if not torch.cuda.is_available():
        missing = pytest.fail if os.environ.get("SG2V_REQUIRE_GPU") == "1" else pytest.skip
        missing("no CUDA device visible to PyTorch")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["graphs", "compile", "eager"])
def test_gpu_fp16_modes_match_eager_fp32(model, mode, rng):
    _need_cuda()
    if mode == "compile":
        pytest.importorskip("triton", reason="torch.compile on CUDA needs triton")
    cfg = model.cfg
    ref_unet = copy.deepcopy(model.unet).cuda().eval()
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    for batch in (1, 3):
        step = _step(copy.deepcopy(model.unet), cfg, "cuda", mode, "fp16", batch)
        for _ in range(3):  # the first call captures/compiles; later calls replay with new buffers' contents
            x, t, feeds = _inputs(cfg, gen, batch, "cuda")
            step.prepare(feeds, 3.0, 0.7)
            if step.out is not None:
                step.out.fill_(float("nan"))  # poison: a replay must overwrite every element
            got = step(x, t).clone()
            want = _reference(ref_unet, x, t, feeds, 3.0, 0.7)
            assert got.shape == x.shape and torch.isfinite(got).all()
            assert _rel(got, want) < FP16_REL_TOL
        if mode == "graphs":
            assert step.graph is not None


class _FakeTorchTensorRT:
    """Stands in for `torch_tensorrt` (not installable here): records how compile is called, returns the
    module unchanged, so the documented call and what the step does with its result can be checked."""

    __version__ = "fake"

    def __init__(self):
        self.calls = []

    def compile(self, module, ir="default", inputs=None, enabled_precisions=None, **kwargs):
        self.calls.append({"module": module, "ir": ir, "inputs": inputs,
                           "enabled_precisions": enabled_precisions, **kwargs})
        return module


def test_torch_tensorrt_mode_calls_the_documented_api(model, monkeypatch, rng):
    """torch_tensorrt.compile(module, ir="torch_compile", enabled_precisions=...) on the fp16 UNet (Torch-
    TensorRT's `_compile.py`: "torch_compile" routes to torch.compile with its backend, engines built per
    shape on first call); a step around the result gives the eager fp16 step's v. The mode needs CUDA, and
    without the package it names the extra."""
    fake = _FakeTorchTensorRT()
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    half = half_unet(copy.deepcopy(model.unet))
    compiled = torch_tensorrt_unet(half, "fp16")
    (call,) = fake.calls
    assert call["module"] is half and call["ir"] == "torch_compile" and call["inputs"] is None
    assert torch.float16 in call["enabled_precisions"]
    assert all(p.dtype == torch.float16 for p in call["module"].parameters())
    cfg = model.cfg
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    x, t, feeds = _inputs(cfg, gen, 2)
    d = cfg.data
    frames, tokens = (d.frames, d.channels, d.height, d.width), (d.context_tokens, cfg.encoder.context_dim)
    steps = [GuidedStep(net, 2, frames, tokens, "cpu", mode, "fp16") for net, mode in
             ((compiled, "torch_tensorrt"), (half, "eager"))]
    for step in steps:
        step.prepare(feeds, 3.0, 0.7)
    torch.testing.assert_close(steps[0](x, t), steps[1](x, t), rtol=0, atol=0)
    with pytest.raises(Sg2vError, match="mode 'torch_tensorrt' needs a CUDA device"):
        prepare_unet(copy.deepcopy(model.unet), torch.device("cpu"), "torch_tensorrt", "fp16")
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    with pytest.raises(Sg2vError, match=r"torch_tensorrt is required .* pip install 'sg2v\[torch-trt\]'"):
        torch_tensorrt_unet(half, "fp16")


@pytest.mark.gpu
@pytest.mark.trt
def test_gpu_torch_tensorrt_step_matches_eager_fp32(model, rng):
    """The bench's torch-tensorrt-fp16 row: Torch-TensorRT's engines for the fp16 UNet against eager fp32
    (never run: Torch-TensorRT cannot be installed on this project's machines)."""
    _need_cuda()
    pytest.importorskip("torch_tensorrt", reason="Torch-TensorRT is not installed ('sg2v[torch-trt]')")
    cfg = model.cfg
    ref_unet = copy.deepcopy(model.unet).cuda().eval()
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    for batch in (1, 3):
        step = _step(copy.deepcopy(model.unet), cfg, "cuda", "torch_tensorrt", "fp16", batch)
        for _ in range(2):
            x, t, feeds = _inputs(cfg, gen, batch, "cuda")
            step.prepare(feeds, 3.0, 0.7)
            got = step(x, t).clone()
            assert _rel(got, _reference(ref_unet, x, t, feeds, 3.0, 0.7)) < FP16_REL_TOL


@pytest.mark.gpu
def test_gpu_grounded_graphs_step_matches_eager_fp32(grounded_model, rng):
    """The captured fp16 step of a grounded UNet: objects and boxes in static buffers, replayed with new
    contents each call (not yet run on a GPU)."""
    _need_cuda()
    cfg = grounded_model.cfg
    ref_unet = copy.deepcopy(grounded_model.unet).cuda().eval()
    step = _step(copy.deepcopy(grounded_model.unet), cfg, "cuda", "graphs", "fp16", batch=2)
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    for _ in range(3):
        x, t, feeds = _inputs(cfg, gen, 2, "cuda")
        feeds.update(_grounding(cfg, gen, 2, "cuda"))
        step.prepare(feeds, 3.0, 0.7)
        got = step(x, t).clone()
        assert _rel(got, _reference(ref_unet, x, t, feeds, 3.0, 0.7)) < FP16_REL_TOL
    assert step.graph is not None


@pytest.mark.gpu
def test_gpu_graph_replay_equals_eager_fp16_on_the_same_inputs(model, rng):
    _need_cuda()
    cfg = model.cfg
    eager = _step(copy.deepcopy(model.unet), cfg, "cuda", "eager", "fp16", batch=2)
    graphed = _step(copy.deepcopy(model.unet), cfg, "cuda", "graphs", "fp16", batch=2)
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    for _ in range(3):
        x, t, feeds = _inputs(cfg, gen, 2, "cuda")
        for s in (eager, graphed):
            s.prepare(feeds, 2.0, 0.5)
        torch.testing.assert_close(graphed(x, t).clone(), eager(x, t), rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
def test_gpu_backend_batch_equals_single_calls(model, rng):
    """The graphs fp16 backend through the loop: a batch of 4 (one captured graph for B=4) against 4 single
    calls (the B=1 graph), and both against the eager fp32 modules on the GPU."""
    _need_cuda()
    from sg2v.generation import Generator, sampler_defaults
    from sg2v.graph import pad_graphs, parse_graph
    from sg2v.runtime.backends.torch_cuda import model_cuda_backend
    from sg2v.schedule import make_alphas_cumprod
    from sg2v.training.backend import model_generator
    from sg2v.vocab import shapes_vocab

    gpu = copy.deepcopy(model).cuda()
    cfg, d = gpu.cfg, gpu.cfg.data
    fast = Generator(model_cuda_backend(gpu), (d.frames, d.channels, d.height, d.width),
                     make_alphas_cumprod(cfg.diffusion.num_train_timesteps, cfg.diffusion.schedule),
                     sampler_defaults(cfg.diffusion), gpu.null_context_arrays())
    ref = model_generator(gpu)
    graphs = [parse_graph(random_graph(rng), shapes_vocab(), d.max_objects, d.max_relationships)
              for _ in range(4)]
    seeds = [int(s) for s in rng.integers(1 << 20, size=4)]

    def feeds(gs):
        return pad_graphs(gs, d.max_objects, d.max_relationships).as_feeds()

    s = fast.settings(steps=4)
    batch = fast.run(feeds(graphs), seeds, s).frames
    assert fast.last_timings["unet_calls"] == 4 and len(fast.last_timings["denoiser_steps_s"]) == 4
    singles = np.concatenate([fast.run(feeds([g]), [seed], s).frames for g, seed in zip(graphs, seeds)])
    want = ref.run(feeds(graphs), seeds, s).frames
    # fp16 kernels at another batch size round differently: the fp16-vs-fp32 bound below, not bit equality
    # (not yet measured on a GPU).
    diff = np.abs(batch.astype(np.int16) - singles.astype(np.int16))
    assert diff.mean() < 1.0, (diff.max(), diff.mean())
    assert np.abs(singles.astype(np.int16) - want.astype(np.int16)).mean() < 2.0
