"""Temporal UNet in pixel space, export-friendly by construction (docs/DESIGN.md "Model defaults").

Frames are folded into the batch (B*F, C, H, W), so every spatial op is a plain Conv2d / GroupNorm / MatMul;
frames meet only in the temporal layers, which reshape so that frames are the sequence axis (attention) or the
height axis of a (B, C, F, H*W) image (a Conv2d with kernel (3, 1)). Both temporal layers have
zero-initialised output projections, so an untrained temporal layer is the identity and the network starts as
a per-frame image model. Nothing here branches on data: no Conv3d, no einsum, no `.item()`, static shapes
from the config. Attention is matmul-softmax-matmul with an additive mask bias (finite, so fp16 exports stay
finite); token LayerNorms are written out as reductions so the graph needs no LayerNormalization node.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sg2v.config import DataConfig, ModelConfig, UNetConfig
from sg2v.errors import ConfigError
from sg2v.models.layers import TokenNorm

MASK_BIAS = -1.0e4  # added to the logits of padded context tokens: exp underflows to 0, fp16 stays finite
GUIDANCE_SCALE = 100.0  # a student's guidance weight w enters the sinusoidal embedding as 100 w (like t)


def dims(x: torch.Tensor) -> tuple[int, ...]:
    """x's shape as Python ints: constants in a traced graph, whose one dynamic axis (the batch, dim 0 of the
    stage's inputs) every reshape here writes as -1, so the exported graph carries no shape arithmetic. A
    symbolic size (torch.export's dynamic batch, e.g. the layout stage's candidate rows) stays symbolic:
    int() would specialise it to the example's value."""
    return tuple(s if isinstance(s, torch.SymInt) else int(s) for s in x.shape)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
              scale: float) -> torch.Tensor:
    """Scaled dot-product attention (Vaswani et al. 2017) as MatMul-Softmax-MatMul; softmax in float32."""
    q = q * scale  # before the matmul, so fp16 logits stay small
    logits = torch.matmul(q, k.transpose(-1, -2))  # (N, heads, Sq, Sk)
    if bias is not None:
        logits = logits + bias
    w = torch.softmax(logits.float(), dim=-1).to(v.dtype)
    return torch.matmul(w, v)  # (N, heads, Sq, d)


class Attention(nn.Module):
    """Multi-head attention of tokens (N, S, C) to themselves or to a context (N, L, D)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, zero_out: bool = False):
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        kv_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        if zero_out:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        _, s, c = dims(x)
        return x.reshape(-1, s, self.heads, c // self.heads).transpose(1, 2)  # (N, heads, S, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        _, s, c = dims(x)
        kv = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(kv)), self._split(self.to_v(kv))
        out = attention(q, k, v, bias, self.scale)  # (N, heads, S, d)
        return self.to_out(out.transpose(1, 2).reshape(-1, s, c))  # (N, S, C)


class ResBlock(nn.Module):
    """Conv residual block, per-frame GroupNorm, AdaGN scale/shift from the embedding (Dhariwal & Nichol)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.out_ch = out_ch
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb, context=None, bias=None):  # x (BF, Cin, H, W), emb (BF, E)
        h = self.conv1(F.silu(self.norm1(x)))  # (BF, Cout, H, W)
        ss = self.emb(F.silu(emb))  # (BF, 2 Cout): scale, shift (constant slices: no shape arithmetic)
        scale, shift = ss[:, :self.out_ch], ss[:, self.out_ch:]  # (BF, Cout) each
        h = self.norm2(h) * (1.0 + scale[:, :, None, None]) + shift[:, :, None, None]
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class SpatialTransformer(nn.Module):
    """Per-frame self-attention, masked cross-attention to the graph tokens, MLP (Rombach et al. 2022)."""

    def __init__(self, ch: int, heads: int, context_dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.ln1, self.ln2, self.ln3 = TokenNorm(ch), TokenNorm(ch), TokenNorm(ch)
        self.attn1 = Attention(ch, heads)
        self.attn2 = Attention(ch, heads, context_dim=context_dim)
        self.ff = nn.Sequential(nn.Linear(ch, 4 * ch), nn.GELU(), nn.Linear(4 * ch, ch))
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x, emb, context, bias):  # x (BF, C, H, W), context (B, L, D), bias (B, 1, 1, L)
        bf, c, h, w = dims(x)
        f = bf // int(context.shape[0])  # frames per clip (a ratio of batch sizes: one value per model)
        t = self.proj_in(self.norm(x)).reshape(-1, c, h * w).transpose(1, 2)  # (BF, HW, C)
        t = t + self.attn1(self.ln1(t))
        # Cross-attention is per query token, so all frames of a clip share one pass over the context.
        t = t.reshape(-1, f * h * w, c)  # (B, F*HW, C)
        t = t + self.attn2(self.ln2(t), context, bias)
        t = t + self.ff(self.ln3(t))
        t = t.reshape(-1, h * w, c).transpose(1, 2).reshape(-1, c, h, w)
        return x + self.proj_out(t)


class TemporalAttention(nn.Module):
    """Attention over the frames of each pixel with learned frame positions; zero-initialised output."""

    def __init__(self, ch: int, heads: int, frames: int):
        super().__init__()
        self.frames = frames
        self.norm = TokenNorm(ch)
        self.pos = nn.Parameter(torch.randn(1, frames, ch) * 0.02)  # (1, F, C)
        self.attn = Attention(ch, heads, zero_out=True)

    def forward(self, x, frames: int | None = None):  # x (BF, C, H, W)
        _, c, h, w = dims(x)
        f = frames or self.frames  # 1 for a batch of images (joint image-video training)
        t = x.reshape(-1, f, c, h * w).permute(0, 3, 1, 2).reshape(-1, f, c)  # (B*HW, F, C)
        t = t + self.attn(self.norm(t) + self.pos[:, :f])
        return t.reshape(-1, h * w, f, c).permute(0, 2, 3, 1).reshape(-1, c, h, w)


class TemporalConv(nn.Module):
    """Convolution over frames: Conv2d kernel (3, 1) on a (B, C, F, H*W) layout; zero-initialised output.

    Frames are the conv's height and pixels its width, so the kernel slides over frames only and never mixes
    pixels; going there from (B*F, C, H, W) swaps two axes (one Transpose each way), and the conv runs on B
    wide images rather than B*H*W one-pixel-wide ones (faster on ONNX Runtime's blocked CPU convs)."""

    def __init__(self, ch: int, frames: int, groups: int):
        super().__init__()
        self.frames = frames
        self.norm = nn.GroupNorm(groups, ch)
        self.conv1 = nn.Conv2d(ch, ch, (3, 1), padding=(1, 0))
        self.conv2 = nn.Conv2d(ch, ch, (3, 1), padding=(1, 0))
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, frames: int | None = None):  # x (BF, C, H, W)
        _, c, h, w = dims(x)
        f = frames or self.frames  # one frame: only the kernel's centre tap meets data (zero padding)
        y = F.silu(self.norm(x)).reshape(-1, f, c, h * w).transpose(1, 2)  # (B, C, F, HW)
        y = self.conv2(F.silu(self.conv1(y)))  # (B, C, F, HW)
        return x + y.transpose(1, 2).reshape(-1, c, h, w)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, emb=None, context=None, bias=None):
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling as Expand + Reshape (no Resize node), then a 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, emb=None, context=None, bias=None):
        _, c, h, w = dims(x)
        x = x[:, :, :, None, :, None].expand(-1, c, h, 2, w, 2).reshape(-1, c, 2 * h, 2 * w)
        return self.conv(x)


class UNetBlock(nn.Module):
    """res -> spatial transformer -> temporal layers -> post (down/upsample or a second res block).

    Named slots keep state-dict keys independent of which optional layers exist, so a model without temporal
    layers loads the same weights with only the temporal keys left over.
    """

    def __init__(self, res=None, attn=None, temporal=(), post=None):
        super().__init__()
        self.res = res
        self.attn = attn
        self.temporal = nn.ModuleList(temporal)
        self.post = post

    def forward(self, h, emb, context, bias, frames: int | None = None):
        if self.res is not None:
            h = self.res(h, emb)
        if self.attn is not None:
            h = self.attn(h, emb, context, bias)
        for layer in self.temporal:
            h = layer(h, frames)
        if self.post is not None:
            h = self.post(h, emb, context, bias)
        return h


class ObjectMaps(nn.Module):
    """Per-frame object maps: each object's embedding painted inside its box, with in-box coordinates.

    Boxes are (x0, y0, x1, y1) in [0, 1] of the frame (x right, y down); a pixel belongs to a box when its
    centre lies in [x0, x1) x [y0, y1), so boxes on the pixel grid rasterise exactly. Per pixel the map holds
    [embedding (E), in-box x and y in [-1, 1], 1] of the object visible there: E + 3 channels. Visibility is
    the data's draw order (the shapes world draws in graph order, later on top): where boxes overlap, the
    later object's box is painted whole and the earlier one's only where no later box covers it, so the maps
    of an occluded scene say which object the frame shows. Scenes without overlap (the shapes world's own
    scenes) get exactly the maps of a plain sum, so weights trained before the draw order came in are
    unchanged on them. An empty box (x1 <= x0: a padded slot, an unconditional sample) paints nothing and
    hides nothing.
    Comparisons, products and two MatMuls: plain ONNX ops, no scatter.
    """

    def __init__(self, object_dim: int, layout_dim: int, height: int, width: int):
        super().__init__()
        self.proj = nn.Linear(object_dim, layout_dim)
        self.channels = layout_dim + 3
        self.register_buffer("u", (torch.arange(width) + 0.5) / width, persistent=False)  # (W,)
        self.register_buffer("v", (torch.arange(height) + 0.5) / height, persistent=False)  # (H,)

    def forward(self, objects: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """objects (B, O, D), boxes (B, O, F, 4) -> maps (B*F, E + 3, H, W)."""
        _, o, f, _ = dims(boxes)
        h, w = int(self.v.shape[0]), int(self.u.shape[0])
        boxes = boxes.to(self.u.dtype)
        x0, y0, x1, y1 = (boxes[..., i:i + 1] for i in range(4))  # (B, O, F, 1) each
        in_x = ((self.u >= x0) & (self.u < x1)).to(boxes.dtype)  # (B, O, F, W)
        in_y = ((self.v >= y0) & (self.v < y1)).to(boxes.dtype)  # (B, O, F, H)
        inside = in_y[..., :, None] * in_x[..., None, :]  # (B, O, F, H, W)
        inside = self._visible(inside, o)
        rel_x = (self.u - x0) / (x1 - x0).clamp_min(1e-3) * 2.0 - 1.0  # (B, O, F, W)
        rel_y = (self.v - y0) / (y1 - y0).clamp_min(1e-3) * 2.0 - 1.0  # (B, O, F, H)
        emb = self.proj(objects).to(boxes.dtype)  # (B, O, E)
        paint = torch.matmul(inside.reshape(-1, o, f * h * w).transpose(1, 2), emb)  # (B, F*H*W, E)
        paint = paint.reshape(-1, f, h, w, int(emb.shape[-1])).permute(0, 1, 4, 2, 3)  # (B, F, E, H, W)
        coord_x = (inside * rel_x[..., None, :]).sum(1)  # (B, F, H, W)
        coord_y = (inside * rel_y[..., :, None]).sum(1)
        cover = inside.sum(1)
        extra = torch.stack([coord_x, coord_y, cover], dim=2)  # (B, F, 3, H, W)
        return torch.cat([paint, extra], dim=2).reshape(-1, self.channels, h, w)

    @staticmethod
    def _visible(inside: torch.Tensor, o: int) -> torch.Tensor:
        """inside (B, O, F, H, W) -> the part of each box that no later object's box covers (graph order)."""
        _, _, f, h, w = dims(inside)
        idx = torch.arange(o, device=inside.device)
        later = (idx[None, :] > idx[:, None]).to(inside.dtype)  # (O, O): [k, j] = 1 where j is drawn after k
        covered = torch.matmul(later, inside.reshape(-1, o, f * h * w)).reshape(-1, o, f, h, w)
        return inside * (covered < 0.5).to(inside.dtype)


class PixelHead(nn.Module):
    """Per-pixel MLP (1x1 convs) over the UNet's output and the object maps; zero-initialised residual.

    It works at full resolution, below the patch grid, so an object's outline follows its box to the pixel
    (spatially-adaptive refinement from a semantic layout, as SPADE, Park et al. 2019, does with norms).
    """

    def __init__(self, channels: int, map_channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels + map_channels, hidden, 1), nn.SiLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, channels, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, out: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:  # (BF, C, H, W), (BF, M, H, W)
        return out + self.net(torch.cat([out, maps.to(out.dtype)], dim=1))


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal embedding of a float timestep (Vaswani et al. 2017, as in Ho et al. 2020)."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)  # (dim/2,)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # t (B,) float
        arg = t.float()[:, None] * self.freqs[None, :]  # (B, dim/2)
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)  # (B, dim)


class TemporalUNet(nn.Module):
    """v-prediction UNet over (B, F, C, H, W) clips conditioned on graph tokens (ARCHITECTURE.md "UNet")."""

    def __init__(self, ucfg: UNetConfig, data: DataConfig, context_dim: int,
                 x0_alphas_cumprod: torch.Tensor | None = None, object_dim: int = 0):
        super().__init__()
        check_config(ucfg, data)
        # x0-parameterised (DiffusionConfig.prediction == "x0"): the layers predict the clean clip and the
        # output is converted to v = (sqrt(a_t) x_t - x0) / sqrt(1 - a_t) with the schedule's a_t, gathered
        # by timestep. Non-persistent: rebuilt from the config, never stored in checkpoints.
        self.x0_param = x0_alphas_cumprod is not None
        if self.x0_param:
            ac = torch.as_tensor(x0_alphas_cumprod, dtype=torch.float64)
            self.register_buffer("sqrt_ac", ac.sqrt().float(), persistent=False)  # (T,)
            self.register_buffer("inv_sqrt_1m_ac", (1.0 - ac).clamp_min(1e-12).rsqrt().float(),
                                 persistent=False)  # (T,)
        self.ucfg, self.data = ucfg, data
        self.frames, self.channels = data.frames, data.channels
        self.height, self.width = data.height, data.width
        base, groups = ucfg.base_channels, ucfg.norm_groups
        self.emb_dim = 4 * base
        self._build_embeddings(ucfg, context_dim)
        self.patch = ucfg.patch_size
        patch_ch = data.channels * self.patch * self.patch
        self.conv_in = nn.Conv2d(patch_ch, base, 3, padding=1)
        self._build_layout(ucfg, data, object_dim)
        ch = self._build_levels(ucfg, data, context_dim)
        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, patch_ch, 3, padding=1)

    def _build_embeddings(self, ucfg: UNetConfig, context_dim: int) -> None:
        """The timestep, graph-token and (for a student) guidance embeddings, each to emb_dim."""
        base, emb_dim = ucfg.base_channels, self.emb_dim
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(base), nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # The global graph token conditions every block through the same scale/shift as the timestep.
        self.graph_embed = nn.Sequential(
            nn.Linear(context_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.guidance_embed = None
        if ucfg.guidance_embed:  # zero-initialised: a student starts as its teacher's conditional model
            self.guidance_embed = nn.Sequential(
                SinusoidalEmbedding(base), nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
            nn.init.zeros_(self.guidance_embed[-1].weight)
            nn.init.zeros_(self.guidance_embed[-1].bias)

    def _build_layout(self, ucfg: UNetConfig, data: DataConfig, object_dim: int) -> None:
        """A grounded UNet's object maps, their input convolution and the full-resolution pixel head."""
        # Layout grounding: object maps enter beside conv_in and feed the full-resolution head; both paths
        # start at zero, so a grounded model initialised from an ungrounded one computes the same at step 0.
        self.layout = ucfg.layout_dim > 0
        if self.layout:
            if object_dim < 1:
                raise ConfigError("unet.layout_dim > 0 needs the encoder's object width (object_dim)")
            self.object_maps = ObjectMaps(object_dim, ucfg.layout_dim, data.height, data.width)
            map_ch = self.object_maps.channels
            self.layout_in = nn.Conv2d(map_ch * self.patch * self.patch, ucfg.base_channels, 1)
            nn.init.zeros_(self.layout_in.weight)
            nn.init.zeros_(self.layout_in.bias)
            self.pixel_head = PixelHead(data.channels, map_ch, ucfg.layout_head)

    def _build_levels(self, ucfg: UNetConfig, data: DataConfig, context_dim: int) -> int:
        """The down, middle and up blocks (skips paired by position); returns the last block's channels."""
        base, groups, heads, emb_dim = ucfg.base_channels, ucfg.norm_groups, ucfg.num_heads, self.emb_dim

        def temporal(ch: int) -> list[nn.Module]:
            layers: list[nn.Module] = []
            if ucfg.temporal_attention:
                layers.append(TemporalAttention(ch, heads, data.frames))
            if ucfg.temporal_conv:
                layers.append(TemporalConv(ch, data.frames, groups))
            return layers

        def block(cin: int, cout: int, level: int, post: nn.Module | None = None) -> UNetBlock:
            has_attn = level in ucfg.attention_levels
            attn = SpatialTransformer(cout, heads, context_dim, groups) if has_attn else None
            res = ResBlock(cin, cout, emb_dim, groups, ucfg.dropout)
            return UNetBlock(res, attn, temporal(cout), post)

        levels = len(ucfg.channel_mult)
        ch = base
        skips = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(ucfg.channel_mult):
            for _ in range(ucfg.num_res_blocks):
                self.down.append(block(ch, base * mult, level))
                ch = base * mult
                skips.append(ch)
            if level != levels - 1:
                self.down.append(UNetBlock(post=Downsample(ch)))
                skips.append(ch)
        self.middle = UNetBlock(
            ResBlock(ch, ch, emb_dim, groups, ucfg.dropout),
            SpatialTransformer(ch, heads, context_dim, groups),
            temporal(ch),
            ResBlock(ch, ch, emb_dim, groups, ucfg.dropout),
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ucfg.channel_mult))):
            for i in range(ucfg.num_res_blocks + 1):
                last = i == ucfg.num_res_blocks
                post = Upsample(base * mult) if last and level != 0 else None
                self.up.append(block(ch + skips.pop(), base * mult, level, post))
                ch = base * mult
        return ch

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
        objects: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, F, C, H, W), t (B,) float timestep, context (B, L, D), context_mask (B, L) -> v like x.

        A grounded UNet (`layout_dim > 0`) also takes the encoder's objects (B, O, D) and their boxes
        (B, O, F, 4) in [0, 1]; an all-zero box paints nothing (padded slots, the unconditional half). A
        guidance-distilled student (`guidance_embed`) takes the guidance weight per clip, guidance (B,).
        F is the configured frame count, or 1: a batch of images trains the spatial layers as one-frame
        clips (joint image-video training; temporal attention then sees one frame and its first position).
        Traced for export, F is always the configured one.
        """
        f, c, hh, ww = self.frames, self.channels, self.height, self.width
        if not torch.jit.is_tracing():  # static in a trace
            if tuple(x.shape[2:]) != (c, hh, ww) or x.shape[1] not in (1, f):
                raise ValueError(f"UNet input has shape {tuple(x.shape)}; this model takes "
                                 f"(B, {f}, {c}, {hh}, {ww}), or (B, 1, {c}, {hh}, {ww}) for images")
            f = int(x.shape[1])
        h = x.reshape(-1, c, hh, ww)  # (BF, C, H, W)
        emb = self._embedding(t, context, guidance, f)  # (BF, E)
        bias = ((1.0 - context_mask.to(context.dtype)) * MASK_BIAS)[:, None, None, :]  # (B, 1, 1, L)
        maps = self._layout_maps(objects, boxes, h.dtype)
        h = self.conv_in(pixel_unshuffle(h, self.patch))  # (BF, base, H/p, W/p)
        if maps is not None:
            h = h + self.layout_in(pixel_unshuffle(maps, self.patch))
        hs = [h]
        for blk in self.down:
            h = blk(h, emb, context, bias, f)
            hs.append(h)
        h = self.middle(h, emb, context, bias, f)
        for blk in self.up:
            h = blk(torch.cat([h, hs.pop()], dim=1), emb, context, bias, f)
        h = pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), self.patch)  # (BF, C, H, W)
        if maps is not None:
            h = self.pixel_head(h, maps)
        out = h.reshape(-1, f, c, hh, ww)
        if self.x0_param:  # out is x0: v = (sqrt(a_t) x_t - x0) / sqrt(1 - a_t)
            ti = t.long()  # the integer timestep (truncation, as the ONNX Cast)
            sa = self.sqrt_ac[ti].to(x.dtype).reshape(-1, 1, 1, 1, 1)
            inv = self.inv_sqrt_1m_ac[ti].to(x.dtype).reshape(-1, 1, 1, 1, 1)
            out = (sa * x - out) * inv
        return out

    def _embedding(self, t: torch.Tensor, context: torch.Tensor, guidance: torch.Tensor | None,
                   f: int) -> torch.Tensor:
        """Timestep + global graph token (+ guidance weight for a student), one row per frame: (BF, E)."""
        emb = self.time_embed(t) + self.graph_embed(context[:, 0])  # (B, E)
        if self.guidance_embed is not None:
            if guidance is None:
                raise ValueError("this UNet is a guidance-distilled student: pass the guidance weight (B,)")
            emb = emb + self.guidance_embed(guidance.float() * GUIDANCE_SCALE)
        return emb[:, None, :].expand(-1, f, self.emb_dim).reshape(-1, self.emb_dim)  # (BF, E)

    def _layout_maps(self, objects: torch.Tensor | None, boxes: torch.Tensor | None,
                     dtype: torch.dtype) -> torch.Tensor | None:
        """A grounded UNet's object maps (BF, E + 3, H, W) painted from the boxes; None when ungrounded."""
        if not self.layout:
            return None
        if objects is None or boxes is None:
            raise ValueError("this UNet is grounded on a layout: pass objects (B, O, D) and boxes "
                             "(B, O, F, 4)")
        return self.object_maps(objects, boxes).to(dtype)  # (BF, E + 3, H, W)


def pixel_unshuffle(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C*p*p, H/p, W/p), channel index c*p*p + dy*p + dx, as Reshape + Transpose."""
    if p == 1:
        return x
    _, c, h, w = dims(x)
    x = x.reshape(-1, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4)  # (N, C, p, p, H/p, W/p)
    return x.reshape(-1, c * p * p, h // p, w // p)


def pixel_shuffle(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of `pixel_unshuffle`: (N, C*p*p, h, w) -> (N, C, h*p, w*p)."""
    if p == 1:
        return x
    _, cpp, h, w = dims(x)
    c = cpp // (p * p)
    x = x.reshape(-1, c, p, p, h, w).permute(0, 1, 4, 2, 5, 3)  # (N, C, h, p, w, p)
    return x.reshape(-1, c, h * p, w * p)


def check_config(u: UNetConfig, d: DataConfig) -> None:
    """ConfigError unless a UNet of `u` can be built for clips of `d` (levels, groups, heads, patching)."""
    levels = len(u.channel_mult)
    if levels < 1 or u.num_res_blocks < 1:
        raise ConfigError("unet.channel_mult needs >= 1 level and unet.num_res_blocks >= 1")
    if u.norm_groups < 2:
        raise ConfigError(f"unet.norm_groups = {u.norm_groups}; use >= 2 (per-frame GroupNorm, not 1 group)")
    for m in u.channel_mult:
        ch = u.base_channels * m
        if ch % u.norm_groups or ch % u.num_heads:
            raise ConfigError(
                f"unet channels {ch} (base_channels x {m}) must be divisible by norm_groups={u.norm_groups} "
                f"and num_heads={u.num_heads}; change base_channels"
            )
    if u.patch_size < 1:
        raise ConfigError(f"unet.patch_size = {u.patch_size}; use >= 1 (1: no patching)")
    scale = 2 ** (levels - 1) * u.patch_size
    if d.height % scale or d.width % scale:
        raise ConfigError(
            f"data.height x width = {d.height} x {d.width} must be divisible by {scale} "
            f"(2 ** (levels - 1) for {levels} UNet levels, times patch_size {u.patch_size}); change the "
            "size, unet.channel_mult or unet.patch_size"
        )
    bad = [lv for lv in u.attention_levels if not 0 <= lv < levels]
    if bad:
        raise ConfigError(f"unet.attention_levels {bad} outside the {levels} levels 0..{levels - 1}")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def unet_flops(cfg: ModelConfig, batch: int = 2) -> int:
    """FLOPs (2 x multiply-adds of convs and matmuls) of one UNet call on `batch` clips, on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    from sg2v import bundle_spec as spec
    from sg2v.kinds import kinds_of_config
    from sg2v.models.backend import UNetCall

    guidance, grounding = kinds_of_config(cfg)  # the UNet stage's inputs: `bundle_spec.stage_io`
    shapes = spec.shapes(cfg.data, cfg.encoder, 1, grounded=grounding.layout_stage,
                         student=guidance.entry is not None)
    inputs = spec.stage_io(shapes)[spec.UNET_STAGE]["inputs"]
    with torch.device("meta"):
        net = TemporalUNet(cfg.unet, cfg.data, cfg.encoder.context_dim, object_dim=cfg.encoder.embed_dim)
        args = [torch.empty(batch, *io["shape"][1:]) for io in inputs]  # float32, `batch` rows
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        UNetCall(net, guidance.unet_extra_inputs)(*args)
    return int(counter.get_total_flops())
