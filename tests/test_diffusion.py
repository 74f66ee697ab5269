"""v-prediction loss, CFG dropout, Min-SNR weighting (sg2v.training.losses); the SG2V wrapper
(sg2v.models.sg2v)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sg2v.config import model_config, without_layout
from sg2v.errors import ConfigError
from sg2v.graph import GraphBatch
from sg2v.models.sg2v import SG2V, build_model
from sg2v.schedule import make_alphas_cumprod
from sg2v.training.losses import (
    alphas_cumprod_tensor,
    diffusion_loss,
    layout_loss,
    min_snr_weight,
    q_sample,
    v_target,
)

GROUNDED = model_config("tiny")
CFG = without_layout(GROUNDED)  # the loss's graph-only path; the grounded one is tested below
D = CFG.data


def random_graphs(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Padded graph tensors: a few real objects and triples among them, the rest padding."""
    g = torch.Generator().manual_seed(seed)
    o, t = D.padded_objects, D.padded_triples
    n_obj = torch.randint(1, o, (b,), generator=g)  # real objects incl. __image__
    n_tri = torch.randint(1, t + 1, (b,), generator=g)
    obj_mask = (torch.arange(o)[None] < n_obj[:, None]).float()
    triple_mask = (torch.arange(t)[None] < n_tri[:, None]).float()
    objs = torch.randint(1, CFG.encoder.num_objs, (b, o), generator=g) * obj_mask.long()
    s = (torch.rand(b, t, generator=g) * n_obj[:, None]).long()
    ob = (torch.rand(b, t, generator=g) * n_obj[:, None]).long()
    p = torch.randint(1, CFG.encoder.num_preds, (b, t), generator=g)
    triples = torch.stack([s, p, ob], dim=-1) * triple_mask.long()[..., None]
    return {"objs": objs, "obj_mask": obj_mask, "triples": triples, "triple_mask": triple_mask}


def clips(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, D.frames, D.channels, D.height, D.width, generator=g) * 2 - 1


def make_model(seed: int = 0) -> SG2V:
    torch.manual_seed(seed)
    return build_model(CFG)


class Recorder:
    """Captures what the UNet was called with and what it returned."""

    def __init__(self, model: SG2V):
        self.calls = []
        model.unet.register_forward_hook(lambda m, args, out: self.calls.append((args, out)))


def test_forward_process_matches_float64_reference():
    ac = alphas_cumprod_tensor(CFG.diffusion)
    ref = make_alphas_cumprod(CFG.diffusion.num_train_timesteps, CFG.diffusion.schedule)
    assert ac.dtype == torch.float64
    np.testing.assert_array_equal(ac.numpy(), ref)
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((2, 5, 3, 2, 2, 2))
    t = np.array([0, 417, 998, 999, 3])
    a, s = np.sqrt(ref[t])[:, None, None, None, None], np.sqrt(1 - ref[t])[:, None, None, None, None]
    x0_t, eps_t, t_t = torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t)
    xt = q_sample(x0_t, t_t, eps_t, ac)
    v = v_target(x0_t, t_t, eps_t, ac)
    np.testing.assert_allclose(xt.numpy(), a * x0 + s * eps, rtol=1e-12)
    np.testing.assert_allclose(v.numpy(), a * eps - s * x0, rtol=1e-12, atol=1e-15)
    # the sampler's inversion (sg2v.sampling): x0 = a x_t - s v, eps = s x_t + a v
    np.testing.assert_allclose(a * xt.numpy() - s * v.numpy(), x0, atol=1e-12)
    np.testing.assert_allclose(s * xt.numpy() + a * v.numpy(), eps, atol=1e-12)
    with pytest.raises(ConfigError, match="prediction"):
        alphas_cumprod_tensor(CFG.diffusion.__class__(prediction="eps"))


def test_loss_dropout_and_targets():
    model = make_model()
    rec = Recorder(model)
    b, p = 8, 0.5
    x0, graph = clips(b), random_graphs(b)
    loss = diffusion_loss(model, x0, graph, torch.Generator().manual_seed(3), cond_drop_prob=p)
    # the same draws, in the documented order: t, noise, dropout
    g = torch.Generator().manual_seed(3)
    ac = alphas_cumprod_tensor(CFG.diffusion)
    t = torch.randint(0, ac.shape[0], (b,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    drop = torch.rand(b, generator=g) < p
    assert 0 < int(drop.sum()) < b
    (x_t, t_in, ctx, mask), v = rec.calls[-1]
    torch.testing.assert_close(x_t, q_sample(x0, t, noise, ac))
    torch.testing.assert_close(t_in, t.float())
    with torch.no_grad():
        enc_ctx, enc_mask = model.encode(graph)
    null = model.null_context[0].detach()
    null_mask = torch.zeros(D.context_tokens)
    null_mask[0] = 1
    for i in range(b):
        want_ctx, want_mask = (null, null_mask) if drop[i] else (enc_ctx[i], enc_mask[i])
        torch.testing.assert_close(ctx[i].detach(), want_ctx)
        torch.testing.assert_close(mask[i], want_mask)
    want = ((v - v_target(x0, t, noise, ac).float()) ** 2).mean()
    torch.testing.assert_close(loss, want)


def test_min_snr_weighting_and_no_drop():
    model = make_model()
    rec = Recorder(model)
    b = 4
    x0, graph = clips(b, 1), random_graphs(b, 1)
    gen = torch.Generator().manual_seed(5)
    loss = diffusion_loss(model, x0, graph, gen, cond_drop_prob=0.0, min_snr_gamma=5)
    g = torch.Generator().manual_seed(5)
    ac = alphas_cumprod_tensor(CFG.diffusion)
    t = torch.randint(0, ac.shape[0], (b,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    (_, _, ctx, mask), v = rec.calls[-1]
    enc_ctx, enc_mask = model.encode(graph)
    torch.testing.assert_close(ctx, enc_ctx)
    torch.testing.assert_close(mask, enc_mask)
    snr = ac[t] / (1 - ac[t])
    w = torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr + 1)
    per = ((v - v_target(x0, t, noise, ac).float()) ** 2).reshape(b, -1).mean(1)
    torch.testing.assert_close(loss, (per * w.float()).mean())
    assert min_snr_weight(ac, torch.tensor([999]), 5.0).item() == 0.0  # zero terminal SNR: no weight
    assert min_snr_weight(ac, torch.tensor([0]), 5.0).item() == pytest.approx(5 / (1 / (1 - ac[0]).item()))
    with pytest.raises(ConfigError, match="cond_drop_prob"):
        diffusion_loss(model, x0, graph, cond_drop_prob=1.5)


def test_gradients_reach_the_null_global_token_only():
    model = make_model()
    x0, graph = clips(2, 2), random_graphs(2, 2)
    diffusion_loss(model, x0, graph, torch.Generator().manual_seed(0), cond_drop_prob=1.0).backward()
    grad = model.null_context.grad
    assert grad[0, 0].abs().sum() > 0
    assert torch.count_nonzero(grad[0, 1:]) == 0  # masked slots stay zero: they never reach the output
    model.zero_grad(set_to_none=True)
    diffusion_loss(model, x0, graph, torch.Generator().manual_seed(0), cond_drop_prob=0.0).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_a_few_steps_reduce_the_loss():
    model = make_model(1)
    x0, graph = clips(2, 3), random_graphs(2, 3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def loss_at_fixed_draws():
        return diffusion_loss(model, x0, graph, torch.Generator().manual_seed(11), cond_drop_prob=0.0)

    first = loss_at_fixed_draws().item()
    for _ in range(8):
        opt.zero_grad()
        loss = loss_at_fixed_draws()
        loss.backward()
        opt.step()
    assert loss_at_fixed_draws().item() < 0.75 * first


def test_sg2v_wrapper():
    model = make_model()
    L, C = D.context_tokens, CFG.encoder.context_dim
    assert model.null_context.shape == (1, L, C)
    assert torch.count_nonzero(model.null_context[0, 1:]) == 0 and model.null_context[0, 0].abs().sum() > 0
    ctx, mask = model.null_context_batch(3)
    assert ctx.shape == (3, L, C) and mask.shape == (3, L)
    assert mask[:, 0].eq(1).all() and mask[:, 1:].eq(0).all()
    assert "null_context" in model.state_dict() and "null_context_mask" not in model.state_dict()
    graph = random_graphs(3, 4)
    batch = GraphBatch(**{k: v.numpy() for k, v in graph.items()})
    c1, m1 = model.encode(graph)
    c2, m2 = model.encode(batch)
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(m1, graph_mask := torch.cat([torch.ones(3, 1), graph["triple_mask"]], 1))
    torch.testing.assert_close(m2, graph_mask)
    x = clips(3, 4)
    v = model(x, torch.tensor([0.0, 500.0, 999.0]), c1, m1)
    assert v.shape == x.shape
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["unet"] > counts["encoder"] > 0
    with pytest.raises(KeyError, match="triple_mask"):
        model.encode({k: v for k, v in graph.items() if k != "triple_mask"})


@pytest.mark.gpu
def test_bf16_autocast_loss_and_gradients_follow_fp32_on_cuda():
    """The training step's bf16 autocast against float32 on the same draws of t, noise and dropout."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = make_model().cuda()
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised outputs become non-trivial
            p.add_(0.05 * torch.randn_like(p))
    x0 = clips(4, 5).cuda()
    graph = {k: v.cuda() for k, v in random_graphs(4, 5).items()}

    def loss_and_grad(bf16: bool):
        model.zero_grad(set_to_none=True)
        gen = torch.Generator(device="cuda").manual_seed(0)  # the same draws for both precisions
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, x0, graph, gen, cond_drop_prob=0.5)
        loss.backward()
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        return loss.detach(), torch.cat(grads).double()

    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # a true fp32 reference
    try:
        loss32, grad32 = loss_and_grad(False)
        loss16, grad16 = loss_and_grad(True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16) and torch.isfinite(grad16).all()
    # bf16 keeps 8 mantissa bits: the loss and the gradient's direction hold, not every digit. On the CPU
    # (torch.autocast("cpu")) the same model and draws give 1.5e-4 relative loss error and cosine 0.99998.
    assert abs(float(loss16) - float(loss32)) <= 0.01 * float(loss32), (float(loss16), float(loss32))
    cosine = float(grad16 @ grad32 / (grad16.norm() * grad32.norm()))
    assert cosine >= 0.99, cosine
    assert 0.95 <= float(grad16.norm() / grad32.norm()) <= 1.05


def test_x0_loss_weight_caps_the_x0_error_weight():
    """v-MSE of an x0-model is (SNR + 1) x0-MSE; the factor turns that into min(SNR + 1, cap) x0-MSE."""
    from sg2v.config import DiffusionConfig
    from sg2v.training.losses import X0_LOSS_WEIGHT_CAP, x0_loss_weight

    ac = alphas_cumprod_tensor(DiffusionConfig(prediction="x0"))
    t = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(5))
    w = x0_loss_weight(ac, t).double()
    snr_p1 = 1.0 / (1.0 - ac[t])
    assert torch.allclose(w * snr_p1, snr_p1.clamp_max(X0_LOSS_WEIGHT_CAP), rtol=1e-6)
    assert x0_loss_weight(ac, torch.tensor([999])).item() == 1.0  # pure noise: plain x0 error


def random_boxes(b: int, graph: dict[str, torch.Tensor], seed: int = 0) -> torch.Tensor:
    """Boxes (B, O, F, 4) in [0, 1] for the real user objects of `graph` (the last real slot is __image__)."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(b, D.padded_objects, D.frames, 2, generator=g) * 0.6
    boxes = torch.cat([lo, lo + 0.2], -1)
    n = graph["obj_mask"].sum(1).long()  # real slots, __image__ included
    keep = torch.arange(D.padded_objects)[None] < (n - 1)[:, None]
    return boxes * keep[:, :, None, None]


def test_grounded_loss_feeds_boxes_and_drops_them_with_the_graph():
    torch.manual_seed(5)
    model = build_model(GROUNDED)
    rec = Recorder(model)
    b, p = 8, 0.5
    x0, graph = clips(b, 1), random_graphs(b, 1)
    boxes = random_boxes(b, graph, 2)
    diffusion_loss(model, x0, graph, torch.Generator().manual_seed(4), cond_drop_prob=p, boxes=boxes)
    g = torch.Generator().manual_seed(4)
    torch.randint(0, 1000, (b,), generator=g)
    torch.randn(x0.shape, generator=g)
    drop = torch.rand(b, generator=g) < p
    assert 0 < int(drop.sum()) < b
    (_, _, _, _, objects, fed), _ = rec.calls[-1]
    with torch.no_grad():
        _, _, want_objects = model.encode_all(graph)
    keep = ~drop
    torch.testing.assert_close(fed[keep], boxes[keep])
    assert not fed[drop].any() and not objects[drop].any()  # the unconditional samples lose the layout too
    torch.testing.assert_close(objects[keep], want_objects[keep])
    with pytest.raises(ConfigError, match="grounded on a layout"):
        diffusion_loss(model, x0, graph, torch.Generator().manual_seed(4))


def test_layout_loss_counts_only_the_unpinned_objects():
    """The layout loss against a hand computation on the same draws (t, noise, pinning)."""
    torch.manual_seed(6)
    model = build_model(GROUNDED)
    b = 6
    graph = random_graphs(b, 3)
    tracks = random_boxes(b, graph, 4)
    n = graph["obj_mask"].sum(1).long()
    track_mask = (torch.arange(D.padded_objects)[None] < (n - 1)[:, None]).float()
    got = layout_loss(model, tracks, track_mask, graph, torch.Generator().manual_seed(9), pin_prob=1.0)
    g = torch.Generator().manual_seed(9)
    ac = alphas_cumprod_tensor(GROUNDED.diffusion)
    t = torch.randint(0, ac.shape[0], (b,), generator=g)
    x0 = tracks * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    torch.rand(b, 1, generator=g)
    pin = (torch.rand(b, D.padded_objects, generator=g) < 0.5).float() * track_mask
    with torch.no_grad():
        ctx, cmask, objects = model.encode_all(graph)
        v = model.layout_net(q_sample(x0, t, noise, ac), t.float(), objects, track_mask, ctx, cmask,
                             graph["triples"], x0 * pin[..., None, None], pin)
    err = ((v - v_target(x0, t, noise, ac)) ** 2).mean((2, 3))
    w = track_mask * (1 - pin)
    from sg2v.training.losses import x0_loss_weight

    want = ((err * w).sum(1) / w.sum(1).clamp_min(1) * x0_loss_weight(ac, t)).mean()
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-7)
    assert 0 < pin.sum() < track_mask.sum()  # this draw pins some objects and not others


def test_layout_loss_weighs_known_frames_and_pins_only_whole_tracks():
    """With a per-(object, frame) weight (real data: 0 where the box is unknown) the loss is the weighted mean
    over objects and frames, against a hand computation on the same draws; objects with an unknown frame are
    never pinned; all-ones weights give the unweighted loss."""
    torch.manual_seed(7)
    model = build_model(GROUNDED)
    b = 6
    graph = random_graphs(b, 4)
    tracks = random_boxes(b, graph, 5)
    n = graph["obj_mask"].sum(1).long()
    track_mask = (torch.arange(D.padded_objects)[None] < (n - 1)[:, None]).float()
    weight = (torch.rand(b, D.padded_objects, D.frames, generator=torch.Generator().manual_seed(8)) < 0.7)
    weight = weight.float() * track_mask[..., None]
    weight[:, 0] = track_mask[:, :1]  # object 0 known in every frame: it may be pinned
    got = layout_loss(model, tracks, track_mask, graph, torch.Generator().manual_seed(9), pin_prob=1.0,
                      track_weight=weight)
    g = torch.Generator().manual_seed(9)
    ac = alphas_cumprod_tensor(GROUNDED.diffusion)
    t = torch.randint(0, ac.shape[0], (b,), generator=g)
    x0 = tracks.double() * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    torch.rand(b, 1, generator=g)
    drawn = (torch.rand(b, D.padded_objects, generator=g) < 0.5).float() * track_mask
    pin = drawn * (weight.amin(2) > 0).float()
    with torch.no_grad():
        ctx, cmask, objects = model.encode_all(graph)
        v = model.layout_net(q_sample(x0.float(), t, noise, ac), t.float(), objects, track_mask, ctx, cmask,
                             graph["triples"], x0.float() * pin[..., None, None], pin)
    err = ((v.double() - v_target(x0, t, noise.double(), ac)) ** 2).mean(3)  # (B, O, F)
    from sg2v.training.losses import x0_loss_weight

    want = 0.0
    for i in range(b):
        w = [(k, f) for k in range(D.padded_objects) for f in range(D.frames)
             if track_mask[i, k] and not pin[i, k] and weight[i, k, f]]
        mean = sum(float(err[i, k, f]) for k, f in w) / max(len(w), 1)
        want += mean * float(x0_loss_weight(ac, t)[i]) / b
    assert abs(float(got.detach()) - want) <= 1e-5 * abs(want)
    assert pin.sum() > 0 and (drawn - pin).sum() > 0  # some tracks given, some drawn ones kept out for gaps
    ones = track_mask[..., None].expand(-1, -1, D.frames)
    for seed in (9, 10):
        torch.testing.assert_close(
            layout_loss(model, tracks, track_mask, graph, torch.Generator().manual_seed(seed),
                        track_weight=ones),
            layout_loss(model, tracks, track_mask, graph, torch.Generator().manual_seed(seed)),
            rtol=1e-6, atol=1e-7)
