"""sg2v.runtime.backends.torch_cuda: the guided step in every mode computes what `sg2v.sampling.cfg_denoiser`
around the eager UNet computes (fp32 exactly, fp16 within fp16 tolerance); static buffers follow new inputs;
CUDA graphs and torch.compile on a GPU (marked, skipped here with the reason)."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sg2v.config import DataConfig, EncoderConfig, ModelConfig, UNetConfig  # noqa: E402
from sg2v.errors import Sg2vError  # noqa: E402
from sg2v.models.sg2v import build_model  # noqa: E402
from sg2v.runtime.backends.torch_cuda import GuidedStep, half_unet  # noqa: E402
from sg2v.sampling import cfg_denoiser  # noqa: E402

FP16_REL_TOL = 2e-2  # relative L2 error of an fp16 UNet against fp32 (seen: ~4e-3)


def _cfg() -> ModelConfig:
    return ModelConfig(
        name="test-fast",
        data=DataConfig(frames=3, height=8, width=8, max_objects=3, max_relationships=2),
        encoder=EncoderConfig(embed_dim=16, hidden_dim=16, num_layers=1, context_dim=16),
        unet=UNetConfig(base_channels=8, channel_mult=(1, 2), attention_levels=(1,), num_heads=2,
                        norm_groups=4),
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(7)
    m = build_model(_cfg()).eval()
    with torch.no_grad():  # the zero-initialised temporal outputs must take part
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _inputs(cfg: ModelConfig, gen: torch.Generator, device: str = "cpu"):
    d = cfg.data
    length, dim = d.context_tokens, cfg.encoder.context_dim
    x = torch.randn(1, d.frames, d.channels, d.height, d.width, generator=gen)
    ctx = torch.randn(2, length, dim, generator=gen)
    mask = (torch.rand(2, length, generator=gen) > 0.4).float()
    mask[:, 0] = 1.0
    t = float(torch.randint(0, 1000, (1,), generator=gen))
    return x.to(device), t, ctx.to(device), mask.to(device)


def _reference(unet, x, t, ctx, mask, guidance, rescale):
    """The contract's reference: `sg2v.sampling.cfg_denoiser` around the eager fp32 UNet."""
    def pair(x2, tt):
        with torch.no_grad():
            return unet(x2, torch.full((2,), tt, device=x2.device), ctx, mask)

    return cfg_denoiser(pair, guidance, rescale)(x, t)


def _step(unet, cfg, device, mode, precision):
    d = cfg.data
    return GuidedStep(unet, (d.frames, d.channels, d.height, d.width),
                      (d.context_tokens, cfg.encoder.context_dim), device, mode, precision)


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


@pytest.mark.parametrize("guidance,rescale", [(3.0, 0.7), (1.5, 0.0), (7.5, 1.0)])
def test_eager_fp32_step_equals_cfg_denoiser(model, guidance, rescale):
    cfg = model.cfg
    step = _step(model.unet, cfg, "cpu", "eager", "fp32")
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    for _ in range(2):  # new inputs each call: the static buffers must follow them
        x, t, ctx, mask = _inputs(cfg, gen)
        step.set_context(ctx, mask)
        step.set_guidance(guidance, rescale)
        got = step(x, t)
        want = _reference(model.unet, x, t, ctx, mask, guidance, rescale)
        assert got.shape == want.shape == x.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_eager_fp16_step_within_fp16_tolerance(model):
    cfg = model.cfg
    step = _step(model.unet, cfg, "cpu", "eager", "fp16")
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    for _ in range(2):
        x, t, ctx, mask = _inputs(cfg, gen)
        step.set_context(ctx, mask)
        step.set_guidance(3.0, 0.7)
        got = step(x, t)
        want = _reference(model.unet, x, t, ctx, mask, 3.0, 0.7)
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


# ------------------------------------------------------------------------------------------------------- GPU

def _need_cuda() -> None:
    # SG2V_REQUIRE_GPU=1 (the GPU check scripts) turns a missing GPU into a failure, not a silent skip.
    if not torch.cuda.is_available():
        missing = pytest.fail if os.environ.get("SG2V_REQUIRE_GPU") == "1" else pytest.skip
        missing("no CUDA device visible to PyTorch")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["graphs", "compile", "eager"])
def test_gpu_fp16_modes_match_eager_fp32(model, mode):
    _need_cuda()
    if mode == "compile":
        pytest.importorskip("triton", reason="torch.compile on CUDA needs triton")
    import copy

    cfg = model.cfg
    ref_unet = copy.deepcopy(model.unet).cuda().eval()
    step = _step(copy.deepcopy(model.unet), cfg, "cuda", mode, "fp16")
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    for _ in range(3):  # the first call captures/compiles; later calls replay with new buffers' contents
        x, t, ctx, mask = _inputs(cfg, gen, "cuda")
        step.set_context(ctx, mask)
        step.set_guidance(3.0, 0.7)
        if step.out is not None:
            step.out.fill_(float("nan"))  # poison: a replay must overwrite every element
        got = step(x, t).clone()
        want = _reference(ref_unet, x, t, ctx, mask, 3.0, 0.7)
        assert torch.isfinite(got).all()
        assert _rel(got, want) < FP16_REL_TOL
    if mode == "graphs":
        assert step.graph is not None


@pytest.mark.gpu
def test_gpu_graph_replay_equals_eager_fp16_on_the_same_inputs(model):
    _need_cuda()
    import copy

    cfg = model.cfg
    eager = _step(copy.deepcopy(model.unet), cfg, "cuda", "eager", "fp16")
    graphed = _step(copy.deepcopy(model.unet), cfg, "cuda", "graphs", "fp16")
    gen = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    for _ in range(3):
        x, t, ctx, mask = _inputs(cfg, gen, "cuda")
        for s in (eager, graphed):
            s.set_context(ctx, mask)
            s.set_guidance(2.0, 0.5)
        torch.testing.assert_close(graphed(x, t).clone(), eager(x, t), rtol=2e-3, atol=2e-3)
