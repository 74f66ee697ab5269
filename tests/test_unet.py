"""TemporalUNet: shapes, zero-init temporal layers, masking, temporal mixing, FLOP count, ONNX parity."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from sg2v.config import model_config, without_layout
from sg2v.errors import ConfigError
from sg2v.models.unet import (
    Attention,
    ObjectMaps,
    TemporalAttention,
    TemporalConv,
    TemporalUNet,
    TokenNorm,
    pixel_shuffle,
    pixel_unshuffle,
    unet_flops,
)

CFG = model_config("tiny")
D = CFG.data
CTX = CFG.encoder.context_dim
L = D.context_tokens


UNGROUNDED = without_layout(CFG)
OD = CFG.encoder.embed_dim


def make_unet(seed=0, grounded=False, **unet_changes) -> TemporalUNet:
    torch.manual_seed(seed)
    base = CFG.unet if grounded else UNGROUNDED.unet
    ucfg = dataclasses.replace(base, **unet_changes)
    return TemporalUNet(ucfg, D, CTX, object_dim=OD if grounded else 0).eval()


def layout_inputs(b=2, seed=0):
    """Objects (B, O, d) and per-frame boxes (B, O, F, 4): two real objects per clip, the rest empty."""
    g = torch.Generator().manual_seed(seed)
    objects = torch.randn(b, D.padded_objects, OD, generator=g)
    lo = torch.rand(b, D.padded_objects, D.frames, 2, generator=g) * 0.6
    boxes = torch.cat([lo, lo + 0.1 + torch.rand(b, D.padded_objects, D.frames, 2, generator=g) * 0.3], -1)
    boxes[:, 2:] = 0.0  # padded slots and `__image__`: no box
    return objects, boxes


def randomize_zero_params(net: nn.Module, seed=1) -> None:
    """Give the zero-initialised (temporal) output projections non-zero weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def inputs(b=2, seed=0, real_tokens=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, D.frames, D.channels, D.height, D.width, generator=g)
    t = torch.rand(b, generator=g) * 999
    ctx = torch.randn(b, L, CTX, generator=g)
    mask = torch.zeros(b, L)
    mask[:, :real_tokens] = 1.0
    return x, t, ctx, mask


def test_output_shape_and_bad_shapes():
    net = make_unet()
    x, t, ctx, mask = inputs(3)
    with torch.no_grad():
        v = net(x, t, ctx, mask)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert v.std() > 1e-3
    with pytest.raises(ValueError, match="this model takes"):
        net(x[:, :, :, :8], t, ctx, mask)
    with pytest.raises(ValueError, match="or \\(B, 1, 3, 16, 16\\) for images"):
        net(x[:, :2], t, ctx, mask)  # clips take F frames, images one
    for bad in [dict(norm_groups=1), dict(base_channels=18), dict(attention_levels=(3,))]:
        with pytest.raises(ConfigError):
            make_unet(**bad)
    with pytest.raises(ConfigError, match="divisible"):
        TemporalUNet(CFG.unet, dataclasses.replace(D, height=17), CTX)


@pytest.mark.parametrize("grounded", [False, True])
def test_a_one_frame_clip_is_what_a_one_frame_unet_computes(grounded):
    """Images (joint training): an F-frame UNet on (B, 1, ...) computes exactly what the same weights do in a
    UNet configured for one frame (temporal attention at the first position, temporal conv's centre tap),
    and each image's v depends on that image alone."""
    net = make_unet(seed=4, grounded=grounded)
    randomize_zero_params(net, seed=5)  # temporal outputs non-zero, so they take part
    one = TemporalUNet(net.ucfg, dataclasses.replace(D, frames=1), CTX, object_dim=OD if grounded else 0)
    state = {k: v[:, :1] if k.endswith(".pos") else v for k, v in net.state_dict().items()}
    one.load_state_dict(state)
    one.eval()
    x, t, ctx, mask = inputs(3, seed=6)
    image = x[:, :1]  # (B, 1, C, H, W)
    layout = ()
    if grounded:
        objects, boxes = layout_inputs(3, seed=7)
        layout = (objects, boxes[:, :, :1])
    with torch.no_grad():
        got = net(image, t, ctx, mask, *layout)
        torch.testing.assert_close(got, one(image, t, ctx, mask, *layout), rtol=0, atol=0)
        alone = net(image[1:2], t[1:2], ctx[1:2], mask[1:2], *(a[1:2] for a in layout))
        clip = net(x, t, ctx, mask, *((layout[0], layout_inputs(3, seed=7)[1]) if grounded else ()))
    torch.testing.assert_close(alone, got[1:2], rtol=1e-5, atol=1e-6)
    assert got.shape == image.shape and clip.shape == x.shape
    assert not torch.allclose(got[:, 0], clip[:, 0], atol=1e-4)  # a clip's first frame sees its others


def test_temporal_attention_over_one_frame_matches_float64():
    """With one frame each pixel attends to itself only (softmax of one logit is 1): x + out(v(norm(x) +
    pos[0])), against a float64 computation."""
    layer = TemporalAttention(16, 2, D.frames).double()
    randomize_zero_params(layer, seed=3)
    x = torch.randn(3, 16, 4, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = layer(x, frames=1)
    tokens = x.permute(0, 2, 3, 1).reshape(-1, 16)  # (B*H*W, C)
    mu = tokens.mean(-1, keepdim=True)
    normed = (tokens - mu) / ((tokens - mu).pow(2).mean(-1, keepdim=True) + layer.norm.eps).sqrt()
    normed = normed * layer.norm.weight + layer.norm.bias
    a = layer.attn
    out = a.to_out(a.to_v(normed + layer.pos[0, 0]))
    want = (tokens + out).reshape(3, 4, 5, 16).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # TokenNorm normalises in float32


def test_temporal_layers_are_identity_at_init():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2 * D.frames, 16, 4, 4, generator=g)
    for layer in (TemporalAttention(16, 2, D.frames), TemporalConv(16, D.frames, 4)):
        assert torch.equal(layer(h), h)
    # whole network: identical to the same weights without temporal layers
    full = make_unet()
    plain = make_unet(temporal_attention=False, temporal_conv=False)
    res = plain.load_state_dict(full.state_dict(), strict=False)
    assert not res.missing_keys
    assert res.unexpected_keys and all(".temporal." in k for k in res.unexpected_keys)
    x, t, ctx, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(full(x, t, ctx, mask), plain(x, t, ctx, mask), rtol=0, atol=1e-6)
        randomize_zero_params(full)
        assert (full(x, t, ctx, mask) - plain(x, t, ctx, mask)).abs().max() > 1e-3


@pytest.mark.parametrize("kind", [dict(), dict(temporal_conv=False), dict(temporal_attention=False)])
def test_frames_mix_only_through_temporal_layers(kind):
    net = make_unet(**kind)
    x, t, ctx, mask = inputs()
    x2 = x.clone()
    x2[:, 0] += torch.randn(x2[:, 0].shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        # at init every frame is its own image: frame 0 cannot reach frame 1
        v, v2 = net(x, t, ctx, mask), net(x2, t, ctx, mask)
        assert (v[:, 0] - v2[:, 0]).abs().max() > 1e-3
        torch.testing.assert_close(v[:, 1:], v2[:, 1:], rtol=0, atol=1e-6)
        randomize_zero_params(net)
        v, v2 = net(x, t, ctx, mask), net(x2, t, ctx, mask)
        assert (v[:, 1] - v2[:, 1]).abs().max() > 1e-3


def test_padded_context_tokens_do_not_matter():
    net = make_unet()
    randomize_zero_params(net)
    x, t, ctx, mask = inputs(real_tokens=4)
    ctx2 = ctx.clone()
    ctx2[:, 4:] = torch.randn(ctx2[:, 4:].shape, generator=torch.Generator().manual_seed(5)) * 10
    with torch.no_grad():
        v = net(x, t, ctx, mask)
        torch.testing.assert_close(net(x, t, ctx2, mask), v, rtol=0, atol=1e-6)
        # a real local token and the global token both condition the output
        ctx3 = ctx.clone()
        ctx3[:, 2] += 1.0
        assert (net(x, t, ctx3, mask) - v).abs().max() > 1e-4
        ctx4 = ctx.clone()
        ctx4[:, 0] += 1.0
        assert (net(x, t, ctx4, mask) - v).abs().max() > 1e-4
        # and the batch rows stay independent
        torch.testing.assert_close(net(x[:1], t[:1], ctx[:1], mask[:1]), v[:1], rtol=1e-5, atol=1e-5)


def test_attention_and_norm_match_torch_reference():
    g = torch.Generator().manual_seed(2)
    att = Attention(16, 4, context_dim=8)
    x, c = torch.randn(3, 10, 16, generator=g), torch.randn(3, 5, 8, generator=g)
    keep = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    bias = (~keep).float()[:, None, None, :] * -1e4
    ref = nn.MultiheadAttention(16, 4, kdim=8, vdim=8, batch_first=True, bias=False)
    with torch.no_grad():
        ref.q_proj_weight.copy_(att.to_q.weight)
        ref.k_proj_weight.copy_(att.to_k.weight)
        ref.v_proj_weight.copy_(att.to_v.weight)
        ref.out_proj.weight.copy_(att.to_out.weight)
        ref.out_proj.bias = nn.Parameter(att.to_out.bias.clone())
        want, _ = ref(x, c, c, key_padding_mask=~keep, need_weights=False)
        torch.testing.assert_close(att(x, c, bias), want, rtol=1e-5, atol=1e-5)
        norm = TokenNorm(16)
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
        want = nn.functional.layer_norm(x, (16,), norm.weight, norm.bias)
        torch.testing.assert_close(norm(x), want)
        norm.ort_fusable = False  # the form float16 exports use
        torch.testing.assert_close(norm(x), want)


def test_temporal_conv_matches_a_float64_frame_loop():
    """Each pixel's frames convolved with the (3, 1) kernel, zero-padded at both ends, pixels never mixed."""
    g = torch.Generator().manual_seed(11)
    layer = TemporalConv(16, D.frames, 4)
    with torch.no_grad():
        for prm in layer.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.3)
    x = torch.randn(2 * D.frames, 16, 3, 5, generator=g)
    with torch.no_grad():
        got = layer(x)
        y = nn.functional.silu(layer.norm(x)).double().reshape(2, D.frames, 16, 15)  # (B, F, C, HW)

        def conv(z, c):  # z (B, F, C, HW) float64, c a Conv2d with kernel (3, 1)
            w, bias = c.weight.double()[:, :, :, 0], c.bias.double()  # (Co, Ci, 3), (Co,)
            out = torch.zeros_like(z)
            for f in range(D.frames):
                acc = bias[None, :, None].expand(2, -1, 15).clone()
                for k in range(3):
                    src = f + k - 1
                    if 0 <= src < D.frames:
                        acc += torch.einsum("oi,bip->bop", w[:, :, k], z[:, src])
                out[:, f] = acc
            return out

        want = x.double() + conv(nn.functional.silu(conv(y, layer.conv1)), layer.conv2).reshape(x.shape)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [2, 4])
def test_pixel_unshuffle_matches_torch_and_inverts(p):
    x = torch.randn(3, 3, 4 * p, 2 * p, generator=torch.Generator().manual_seed(p))
    y = pixel_unshuffle(x, p)
    assert torch.equal(y, nn.functional.pixel_unshuffle(x, p))
    assert torch.equal(pixel_shuffle(y, p), x)
    assert torch.equal(pixel_shuffle(y, p), nn.functional.pixel_shuffle(y, p))


def test_patched_unet_sees_every_pixel_and_checks_its_size():
    """patch_size 2: the UNet runs on an 8 x 8 grid, output is full size, and each output pixel depends on
    the input pixels of its own patch (a gradient through one output pixel reaches its patch's 4 pixels)."""
    net = make_unet(patch_size=2)
    randomize_zero_params(net)
    assert net.conv_in.in_channels == 3 * 4 and net.conv_out.out_channels == 3 * 4
    x, t, ctx, mask = inputs(2, seed=3)
    x.requires_grad_(True)
    v = net(x, t, ctx, mask)
    assert v.shape == x.shape and torch.isfinite(v).all()
    v[0, 1, 2, 5, 6].backward()
    g = x.grad[0, 1].abs().sum(0)  # (H, W)
    assert (g[4:6, 6:8] > 0).all()  # the 2 x 2 patch holding pixel (5, 6)
    assert unet_flops(CFG.replace(unet=dataclasses.replace(CFG.unet, patch_size=2))) < unet_flops(CFG) / 2
    with pytest.raises(ConfigError, match="patch_size"):
        TemporalUNet(dataclasses.replace(CFG.unet, patch_size=3), D, CTX)  # 16 is not divisible by 2 * 3
    with pytest.raises(ConfigError, match="patch_size"):
        TemporalUNet(dataclasses.replace(CFG.unet, patch_size=0), D, CTX)


def test_x0_parameterised_unet_outputs_v_of_its_x0():
    """prediction "x0": the layers' output is x0 and the UNet returns v = (sqrt(a_t) x_t - x0) / sqrt(1 - a_t)
    with a_t from the schedule at the integer timestep; the weights are the same as a v-model's."""
    from sg2v.training.losses import alphas_cumprod_tensor

    ac = alphas_cumprod_tensor(CFG.diffusion)
    plain = make_unet(seed=3)
    randomize_zero_params(plain)
    torch.manual_seed(3)
    x0net = TemporalUNet(UNGROUNDED.unet, D, CTX, x0_alphas_cumprod=ac).eval()
    x0net.load_state_dict(plain.state_dict())  # strict: the schedule buffers are not in the state dict
    x, t, ctx, mask = inputs(2, seed=8)
    t = torch.tensor([7.0, 991.0])
    with torch.no_grad():
        inner = plain(x, t, ctx, mask).double()  # what the layers predict: x0
        got = x0net(x, t, ctx, mask).double()
    a = ac[t.long()].reshape(2, 1, 1, 1, 1)
    want = (a.sqrt() * x.double() - inner) / (1 - a).sqrt()
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def _hooked_flops(net, *args) -> int:
    """FLOPs of one forward pass of `net`, counted by forward hooks on its convolutions, linears and
    attention (QK^T and AV)."""
    count = [0]

    def conv_hook(m, inp, out):
        kh, kw = m.kernel_size
        count[0] += 2 * out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m, inp, out):
        count[0] += 2 * out.numel() * m.in_features

    def attn_hook(m, args, out):
        x = args[0]
        kv = args[1] if len(args) > 1 and args[1] is not None else x
        count[0] += 2 * 2 * x.shape[0] * x.shape[1] * kv.shape[1] * x.shape[2]  # QK^T and AV

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
        elif isinstance(m, Attention):
            m.register_forward_hook(attn_hook)
    with torch.no_grad():
        net(*args)
    return count[0]


def test_unet_flops_match_hand_count():
    """unet_flops against a per-layer count taken with forward hooks on a real model."""
    count = _hooked_flops(make_unet(), *inputs(2))
    assert unet_flops(UNGROUNDED, batch=2) == count
    assert unet_flops(UNGROUNDED, batch=4) == 2 * count
    # grounded: the same plus the grounding layers' convs / linears, the object maps' paint MatMul and the
    # draw-order MatMul (which later boxes cover each pixel of each box: O x O against O x F*H*W per row)
    count = _hooked_flops(make_unet(grounded=True), *inputs(2), *layout_inputs(2))
    paint = 2 * 2 * D.frames * D.height * D.width * D.padded_objects * CFG.unet.layout_dim
    order = 2 * 2 * D.frames * D.height * D.width * D.padded_objects ** 2
    assert unet_flops(CFG, batch=2) == count + paint + order


def _export_and_compare(path, dynamo: bool):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = make_unet()
    randomize_zero_params(net)
    x, t, ctx, mask = inputs(2, seed=4)
    with torch.no_grad():
        want = net(x, t, ctx, mask).numpy()
    kwargs = {} if dynamo else {"dynamo": False}
    torch.onnx.export(net, (x, t, ctx, mask), str(path), input_names=["x", "t", "context", "context_mask"],
                      output_names=["v"], opset_version=17, external_data=False, **kwargs)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Einsum", "LayerNormalization", "Loop", "If", "Resize"}, ops
    weights = {i.name: len(i.dims) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Conv" and n.input[1] in weights:
            assert weights[n.input[1]] == 4  # Conv2d only, never Conv3d
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2, t2, ctx2, mask2 = inputs(2, seed=6, real_tokens=3)  # fresh inputs, another mask
    got, got2 = (
        sess.run(["v"], {"x": a.numpy(), "t": b.numpy(), "context": c.numpy(), "context_mask": m.numpy()})[0]
        for a, b, c, m in ((x, t, ctx, mask), (x2, t2, ctx2, mask2))
    )
    with torch.no_grad():
        want2 = net(x2, t2, ctx2, mask2).numpy()
    for g, w in ((got, want), (got2, want2)):
        assert np.abs(g - w).max() / np.abs(w).max() <= 1e-4
    return net


def test_onnx_export_matches_torch(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = _export_and_compare(tmp_path / "unet.onnx", dynamo=False)
    # The exported graph spells every TokenNorm as reductions (no LayerNormalization node, for TensorRT), in
    # the one form ONNX Runtime's optimizer fuses back into its LayerNormalization kernel: all of them fuse.
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "unet.opt.onnx")
    ort.InferenceSession(str(tmp_path / "unet.onnx"), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(opts.optimized_model_filepath)
    fused = [n for n in optimized.graph.node if n.op_type == "LayerNormalization"]
    norms = sum(isinstance(m, TokenNorm) for m in net.modules())
    assert norms > 0 and len(fused) == norms


def test_object_maps_match_a_pixel_loop():
    """Object maps against a float64 painter's loop over pixels: each box, in graph order, paints its object's
    projected embedding and its in-box coordinates over the pixels whose centres it holds, so where boxes
    overlap the later object's values are the ones the map holds (the world's draw order); empty boxes paint
    nothing and hide nothing."""
    torch.manual_seed(3)
    maps = ObjectMaps(OD, CFG.unet.layout_dim, D.height, D.width).double()
    objects, boxes = layout_inputs(2, seed=5)
    boxes[0, 1, 0] = torch.tensor([0.25, 0.125, 0.625, 0.5])  # on the pixel grid of an 8 x 8 frame
    boxes[0, 0, 0] = torch.tensor([0.375, 0.25, 0.875, 0.75])  # under object 1's box at frame 0
    boxes[1, 2, 1] = torch.tensor([0.5, 0.5, 0.5, 0.9])  # empty: hides nothing
    got = maps(objects.double(), boxes.double()).reshape(2, D.frames, -1, D.height, D.width)
    emb = maps.proj(objects.double())  # (B, O, E)
    want = torch.zeros_like(got)
    overlapped = 0
    for b in range(2):
        for f in range(D.frames):
            for i in range(D.height):
                for j in range(D.width):
                    u, v = (j + 0.5) / D.width, (i + 0.5) / D.height
                    holders = 0
                    for k in range(D.padded_objects):
                        x0, y0, x1, y1 = boxes[b, k, f].tolist()
                        if x0 <= u < x1 and y0 <= v < y1:
                            rel = torch.tensor([(u - x0) / (x1 - x0) * 2 - 1, (v - y0) / (y1 - y0) * 2 - 1,
                                                1.0], dtype=torch.float64)
                            want[b, f, :, i, j] = torch.cat([emb[b, k], rel])  # later on top
                            holders += 1
                    overlapped += holders > 1
    assert overlapped > 0  # the inputs exercise the draw order
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    cover = got[:, :, -1]
    assert set(cover.unique().tolist()) <= {0.0, 1.0}
    rows = slice(D.height // 8, D.height // 2)  # the grid-aligned box [0.25, 0.125, 0.625, 0.5], on top
    cols = slice(D.width // 4, 5 * D.width // 8)
    assert (cover[0, 0, rows, cols] == 1).all() and cover[0, 0, rows, cols].numel() == (3 * D.height // 8)**2
    torch.testing.assert_close(got[0, 0, :-3, rows, cols],
                               emb[0, 1][:, None, None].expand(-1, 3 * D.height // 8, 3 * D.width // 8))


def test_grounding_starts_as_the_ungrounded_unet_and_then_reads_the_boxes():
    """Zero-initialised grounding: with an ungrounded UNet's weights, the grounded one computes the same v
    whatever the boxes; once its grounding weights move, the boxes change v."""
    plain = make_unet(seed=2)
    randomize_zero_params(plain)
    grounded = make_unet(seed=2, grounded=True)
    missing, unexpected = grounded.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(("object_maps.", "layout_in.", "pixel_head."))
                                              for k in missing)
    x, t, ctx, mask = inputs(2, seed=7)
    objects, boxes = layout_inputs(2, seed=8)
    with torch.no_grad():
        want = plain(x, t, ctx, mask)
        torch.testing.assert_close(grounded(x, t, ctx, mask, objects, boxes), want, rtol=0, atol=0)
        randomize_zero_params(grounded, seed=9)
        moved = grounded(x, t, ctx, mask, objects, boxes)
        other = grounded(x, t, ctx, mask, objects, layout_inputs(2, seed=10)[1])
    assert not torch.allclose(moved, want) and not torch.allclose(moved, other)
    with pytest.raises(ValueError, match="grounded on a layout"):
        grounded(x, t, ctx, mask)


def test_grounded_onnx_export_matches_torch(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = make_unet(grounded=True)
    randomize_zero_params(net)
    args = (*inputs(2, seed=4), *layout_inputs(2, seed=4))
    names = ["x", "t", "context", "context_mask", "objects", "boxes"]
    torch.onnx.export(net, args, str(tmp_path / "g.onnx"), input_names=names, output_names=["v"],
                      opset_version=17, external_data=False, dynamo=False)
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    fresh = (*inputs(2, seed=11, real_tokens=3), *layout_inputs(2, seed=12))
    got = sess.run(["v"], {n: a.numpy() for n, a in zip(names, fresh)})[0]
    with torch.no_grad():
        want = net(*fresh).numpy()
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4


@pytest.mark.slow
def test_onnx_dynamo_export_matches_torch(tmp_path):
    _export_and_compare(tmp_path / "unet.onnx", dynamo=True)


@pytest.mark.gpu
def test_cuda_matches_cpu_and_bf16_autocast_stays_close():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    net = make_unet()
    randomize_zero_params(net)
    x, t, ctx, mask = inputs(2, seed=8)
    with torch.no_grad():
        want = net(x, t, ctx, mask)
        net = net.cuda()
        args = [a.cuda() for a in (x, t, ctx, mask)]
        got = net(*args).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got_bf16 = net(*args).float().cpu()
    scale = want.abs().max()
    assert (got - want).abs().max() / scale < 1e-2  # TF32 convolutions are allowed by default on CUDA
    assert torch.isfinite(got_bf16).all() and (got_bf16 - want).abs().max() / scale < 0.1
