"""Masked contrastive pretraining of the scene-graph encoder (SGDiff, Yang et al. 2022), carried to video.

Two losses, weighted (`PretrainConfig.contrastive_weight`, `masked_weight`):
- contrastive: symmetric InfoNCE (CLIP, Radford et al. 2021) with a learnable temperature between the graph's
  global token and the video's global embedding;
- masked: one object per sample has its pixels zeroed (black, the shapes-world background); from the graph's
  local tokens, through a cross-attention head queried by the masked video's features, the model recovers that
  object's features in the unmasked video (feature map pooled over the object's mask, stop-gradient).
The shapes-world video encoder is trained jointly; an external one plugs in frozen (`FrozenVideoEncoder`).
The checkpoint's `encoder` entry is an `SGEncoder` state dict that diffusion training loads as is.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import pickle
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sg2v.checkpoint import (
    check_training_state,
    load_optimizer_state,
    load_state_checked,
    rng_state,
    set_rng_state,
)
from sg2v.config import MODEL_SIZES, DataConfig, ModelConfig, model_config
from sg2v.errors import CheckpointError, Sg2vError
from sg2v.graph import pad_graphs, parse_graph
from sg2v.io import atomic_write_bytes
from sg2v.models.encoder import SGEncoder
from sg2v.models.video_encoder import ConvVideoEncoder, FrozenVideoEncoder, VideoEncoder
from sg2v.video import frames_to_unit
from sg2v.vocab import Vocab, shapes_vocab

PRETRAIN_KIND = "pretrain"
CHECKPOINT_NAME = "pretrain.pt"
SG2V_FORMAT = 1


class PretrainError(Sg2vError, ValueError):
    """A pretraining setting or checkpoint that cannot be used."""


@dataclass(frozen=True)
class PretrainConfig:
    """Everything about a pretraining run except the model shapes (those are the `ModelConfig`)."""

    size: str = "tiny"  # a MODEL_SIZES key: encoder and data shapes
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    contrastive_weight: float = 1.0
    masked_weight: float = 0.1  # an order of magnitude below the contrastive loss, as the seed notes
    init_temperature: float = 0.07  # CLIP's initial InfoNCE temperature
    max_logit_scale: float = 100.0  # CLIP's clamp on 1 / temperature
    video_channels: int = 32
    feature_dim: int = 64  # width of the video feature map the masked loss recovers
    attn_heads: int = 4
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 200
    eval_every: int = 0  # 0: evaluate retrieval only at the end
    eval_samples: int = 100
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0: torch's default); 1 is fastest on a busy shared machine

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PretrainError(f"pretrain config: unknown key(s) {unknown}; written by another sg2v version")
        return cls(**d)

    def validate(self) -> None:
        if self.size not in MODEL_SIZES:
            raise PretrainError(f"--size {self.size!r}: choose one of {sorted(MODEL_SIZES)}")
        for name in ("steps", "batch_size", "video_channels", "feature_dim", "attn_heads", "eval_samples"):
            if getattr(self, name) < 1:
                raise PretrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise PretrainError(f"--threads must be >= 0, got {self.threads}")
        if self.batch_size < 2:
            raise PretrainError("--batch-size must be >= 2: InfoNCE needs negatives in the batch")
        if self.contrastive_weight < 0 or self.masked_weight < 0:
            raise PretrainError("--contrastive-weight and --masked-weight must be >= 0")
        if not 0 < self.init_temperature < 1:
            raise PretrainError(f"--init-temperature must be in (0, 1), got {self.init_temperature}")


# ------------------------------------------------------------------------------------------------------ data
@dataclass
class PretrainBatch:
    """Graph tensors (docs/ARCHITECTURE.md), video in [-1, 1], and the region of the object to mask."""

    objs: torch.Tensor  # (B, O) int64
    obj_mask: torch.Tensor  # (B, O) float32
    triples: torch.Tensor  # (B, T, 3) int64
    triple_mask: torch.Tensor  # (B, T) float32
    video: torch.Tensor  # (B, F, C, H, W) float32 in [-1, 1]
    region: torch.Tensor  # (B, F, H, W) float32, 1 on the pixels of the object to mask
    masked_slot: torch.Tensor  # (B,) int64, that object's index in the padded object axis

    def to(self, device: torch.device | str) -> PretrainBatch:
        return PretrainBatch(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})

    def graph(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.objs, self.obj_mask, self.triples, self.triple_mask


def video_to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 (B, F, H, W, C) -> float32 (B, F, C, H, W), `x = u8 / 127.5 - 1` (docs/ARCHITECTURE.md)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 1, 4, 2, 3)  # (B, F, C, H, W) uint8
    return frames_to_unit(x).contiguous()


def collate(samples: list[Any], data: DataConfig, vocab: Vocab, rng: np.random.Generator) -> PretrainBatch:
    """Shapes-world samples (graph dict, video (F, H, W, 3) uint8, masks (n, F, H, W)) -> a PretrainBatch.

    The object to mask is drawn uniformly among the sample's user objects (never `__image__`).
    """
    graphs = [parse_graph(s.graph, vocab, data.max_objects, data.max_relationships) for s in samples]
    g = pad_graphs(graphs, data.max_objects, data.max_relationships)
    video = video_to_unit(np.stack([s.video for s in samples]))  # (B, F, C, H, W)
    slots = np.array([int(rng.integers(0, len(s.graph["objects"]))) for s in samples], dtype=np.int64)
    region = np.stack([np.asarray(s.masks[k]) for s, k in zip(samples, slots)]).astype(np.float32)
    return PretrainBatch(
        objs=torch.from_numpy(g.objs), obj_mask=torch.from_numpy(g.obj_mask),
        triples=torch.from_numpy(g.triples), triple_mask=torch.from_numpy(g.triple_mask),
        video=video, region=torch.from_numpy(region), masked_slot=torch.from_numpy(slots),
    )


class ShapesBatches:
    """Shapes-world batches generated on the fly; batch `step` depends only on (seed, split, step)."""

    def __init__(self, data: DataConfig, seed: int = 0, split: str = "train", vocab: Vocab | None = None):
        from sg2v.shapes import ShapesDataset

        self.data = data
        self.seed = int(seed)
        self.vocab = vocab or shapes_vocab()
        self.dataset = ShapesDataset(seed=seed, length=1 << 40, split=split, frames=data.frames,
                                     height=data.height, width=data.width, max_objects=data.max_objects,
                                     max_relationships=data.max_relationships)

    def samples(self, start: int, count: int) -> list[Any]:
        return [self.dataset[start + i] for i in range(count)]

    def batch(self, step: int, batch_size: int) -> PretrainBatch:
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(7, int(step))))
        return collate(self.samples(step * batch_size, batch_size), self.data, self.vocab, rng)


# ---------------------------------------------------------------------------------------------------- losses
def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): rows of a and b are positives pairwise, every other row a negative."""
    a = F.normalize(a, dim=-1)  # (B, D)
    b = F.normalize(b, dim=-1)  # (B, D)
    logits = logit_scale * (a @ b.t())  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def mask_video(video: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Zero (black: -1) the pixels of `region`: (B, F, C, H, W), (B, F, H, W) -> (B, F, C, H, W)."""
    keep = (region == 0).unsqueeze(2)  # (B, F, 1, H, W)
    return torch.where(keep, video, torch.full_like(video, -1.0))


def region_pool(fmap: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of a feature map over a pixel region, weighted by the region's coverage of each cell.

    (B, F, C, h, w), (B, F, H, W) -> features (B, C), total weight (B,) (0 where the region is empty).
    """
    b, f, c, h, w = fmap.shape
    cover = F.adaptive_avg_pool2d(region.flatten(0, 1).unsqueeze(1).to(fmap.dtype), (h, w))  # (B*F, 1, h, w)
    cover = cover.view(b, f, 1, h, w)
    total = cover.sum(dim=(1, 2, 3, 4))  # (B,)
    feats = (fmap * cover).sum(dim=(1, 3, 4)) / total.clamp(min=1e-6).unsqueeze(-1)  # (B, C)
    return feats, total


class PretrainHeads(nn.Module):
    """The learnable InfoNCE temperature and the masked-object cross-attention head."""

    def __init__(self, context_dim: int, video_global_dim: int, feature_dim: int, heads: int,
                 init_temperature: float, max_logit_scale: float):
        super().__init__()
        if context_dim % heads:
            raise PretrainError(f"--attn-heads {heads} must divide the context width {context_dim}")
        self.max_logit_scale = max_logit_scale
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        # The query sees the hole (features where the object was) and the masked video's summary (which
        # objects are still there), so it can ask the graph for the one that is missing.
        self.query = nn.Sequential(nn.Linear(feature_dim + video_global_dim, context_dim), nn.SiLU(),
                                   nn.Linear(context_dim, context_dim))
        self.attn = nn.MultiheadAttention(context_dim, heads, batch_first=True)
        self.predict = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, context_dim),
                                     nn.SiLU(), nn.Linear(context_dim, feature_dim))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def recover(self, local: torch.Tensor, triple_mask: torch.Tensor, hole: torch.Tensor,
                masked_global: torch.Tensor) -> torch.Tensor:
        """The masked object's features from local (B, T, C), hole (B, Cf), masked_global (B, G): (B, Cf)."""
        q = self.query(torch.cat([hole, masked_global], dim=-1)).unsqueeze(1)  # (B, 1, C)
        out, _ = self.attn(q, local, local, key_padding_mask=triple_mask == 0,
                           need_weights=False)  # (B, 1, C)
        return self.predict(out.squeeze(1))  # (B, Cf)


def pretrain_losses(encoder: SGEncoder, video_encoder: VideoEncoder, heads: PretrainHeads,
                    batch: PretrainBatch, contrastive_weight: float = 1.0,
                    masked_weight: float = 0.1) -> dict[str, torch.Tensor]:
    """Weighted SGDiff losses on one batch: {"loss", "contrastive", "masked", "temperature"}."""
    context, _ = encoder(*batch.graph())  # (B, 1 + T, C)
    graph_global, local = context[:, 0], context[:, 1:]
    b = batch.video.shape[0]
    masked = mask_video(batch.video, batch.region)  # (B, F, C, H, W)
    # One pass over clean and masked videos together; per-frame normalisation keeps the halves independent.
    glob, fmap = video_encoder.encode(torch.cat([batch.video, masked], dim=0))
    video_global, masked_global = glob[:b], glob[b:]
    fmap_clean, fmap_masked = fmap[:b], fmap[b:]  # (B, F, Cf, h, w)
    scale = heads.scale()
    contrastive = info_nce(graph_global, video_global, scale)
    target, weight = region_pool(fmap_clean.detach(), batch.region)  # (B, Cf), (B,)
    hole, _ = region_pool(fmap_masked, batch.region)  # (B, Cf)
    pred = heads.recover(local, batch.triple_mask, hole, masked_global)  # (B, Cf)
    valid = (weight > 0).to(pred.dtype)  # an object fully outside the frame has nothing to recover
    per_sample = 1.0 - F.cosine_similarity(pred, target, dim=-1)  # (B,)
    masked_loss = (per_sample * valid).sum() / valid.sum().clamp(min=1.0)
    loss = contrastive_weight * contrastive + masked_weight * masked_loss
    return {"loss": loss, "contrastive": contrastive, "masked": masked_loss, "temperature": 1.0 / scale}


# --------------------------------------------------------------------------------------------------- models
def build_pretrain_models(model: ModelConfig, cfg: PretrainConfig, external: VideoEncoder | None = None
                          ) -> tuple[SGEncoder, nn.Module, PretrainHeads]:
    """The graph encoder, the video encoder (joint, or `external` frozen behind projections) and the heads."""
    encoder = SGEncoder(model.encoder, model.data)
    c = model.encoder.context_dim
    if external is None:
        video: nn.Module = ConvVideoEncoder(model.data, c, channels=cfg.video_channels,
                                            feature_dim=cfg.feature_dim)
    else:
        video = FrozenVideoEncoder(external, c, cfg.feature_dim)
    heads = PretrainHeads(c, c, cfg.feature_dim, cfg.attn_heads, cfg.init_temperature, cfg.max_logit_scale)
    return encoder, video, heads


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise PretrainError(f"--device {name!r} is not a torch device; use auto, cpu or cuda[:N]") from None


# ------------------------------------------------------------------------------------------------ retrieval
@torch.no_grad()
def evaluate_retrieval(encoder: SGEncoder, video_encoder: VideoEncoder, data: DataConfig, n: int = 100,
                       seed: int = 0, split: str = "heldout", batch_size: int = 50) -> dict[str, float]:
    """Graph -> video retrieval among n held-out pairs by cosine of global embeddings: R@1, R@5."""
    if n < 5:
        raise PretrainError(f"retrieval needs at least 5 candidates for R@5, got n={n}")
    modules = [m for m in (encoder, video_encoder) if isinstance(m, nn.Module)]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    device = next(encoder.parameters()).device
    source = ShapesBatches(data, seed=seed, split=split)
    rng = np.random.default_rng(0)  # the masked slot is unused here
    g_all, v_all = [], []
    for start in range(0, n, batch_size):
        batch = collate(source.samples(start, min(batch_size, n - start)), data, source.vocab, rng).to(device)
        context, _ = encoder(*batch.graph())
        g_all.append(F.normalize(context[:, 0].float(), dim=-1))
        v_all.append(F.normalize(video_encoder.encode(batch.video)[0].float(), dim=-1))
    for m, t in zip(modules, was_training):
        m.train(t)
    sim = torch.cat(g_all) @ torch.cat(v_all).t()  # (n, n): graph queries x video candidates
    return {**recall_at_k(sim, (1, 5)), "n": n}


def recall_at_k(sim: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Fraction of queries (rows) whose true candidate (diagonal) ranks in the top k; ties count against."""
    rank = (sim >= sim.diagonal().unsqueeze(1)).sum(dim=1) - 1  # others scored at or above the truth
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks}


# ------------------------------------------------------------------------------------------------- checkpoint
def save_pretrain_checkpoint(path: str | os.PathLike, model: ModelConfig, cfg: PretrainConfig,
                             encoder: nn.Module, video_encoder: nn.Module, heads: nn.Module, step: int,
                             optimizer: torch.optim.Optimizer | None) -> Path:
    """Write the pretraining checkpoint atomically (tensors and plain containers only)."""
    def sd(m: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").clone() for k, v in m.state_dict().items()}

    ckpt = {
        "sg2v_format": SG2V_FORMAT,
        "kind": PRETRAIN_KIND,
        "config": model.to_dict(),
        "pretrain_config": cfg.to_dict(),
        "vocab": shapes_vocab().to_dict(),
        "encoder": sd(encoder),
        "video_encoder": sd(video_encoder),
        "heads": sd(heads),
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state(),
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    path = Path(path)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except (FileNotFoundError, PermissionError) as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e}") from None
    return path


def load_pretrain_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a pretraining checkpoint with `torch.load(weights_only=True)`; `CheckpointError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretraining checkpoint {path} does not exist; run `sg2v-train pretrain`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise CheckpointError(f"checkpoint {path} holds Python objects beyond tensors and containers; "
                                  "sg2v refuses to unpickle it") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated; re-save it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first}); re-save it") from None
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
    if kind != PRETRAIN_KIND:
        raise CheckpointError(f"{path} is not a pretraining checkpoint (kind {kind!r}); pass the pretrain.pt "
                              "written by `sg2v-train pretrain`")
    if not isinstance(ckpt.get("sg2v_format"), int) or ckpt["sg2v_format"] > SG2V_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {ckpt.get('sg2v_format')!r}; this sg2v reads "
                              f"<= {SG2V_FORMAT}: upgrade sg2v")
    for key in ("config", "pretrain_config", "encoder", "video_encoder", "heads"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"checkpoint {path} lacks its '{key}' entry; it is incomplete")
    check_training_state(ckpt, path, ("encoder", "video_encoder", "heads"))
    return ckpt


def load_pretrained(path: str | os.PathLike, external: VideoEncoder | None = None
                    ) -> tuple[SGEncoder, nn.Module, PretrainHeads, ModelConfig, PretrainConfig]:
    """Rebuild the pretrained graph encoder, video encoder and heads from a pretraining checkpoint."""
    ckpt = load_pretrain_checkpoint(path)
    try:
        model = ModelConfig.from_dict(ckpt["config"])
        cfg = PretrainConfig.from_dict(ckpt["pretrain_config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: config mismatch: {e}") from None
    encoder, video, heads = build_pretrain_models(model, cfg, external)
    load_state_checked(encoder, ckpt["encoder"], path, "encoder")
    load_state_checked(video, ckpt["video_encoder"], path, "video_encoder")
    load_state_checked(heads, ckpt["heads"], path, "heads")
    return encoder, video, heads, model, cfg


# ------------------------------------------------------------------------------------------------------ loop
def _print_flush(line: str) -> None:
    print(line, flush=True)  # progress shows up at once when stdout is a file or a pipe


def pretrain(cfg: PretrainConfig, out_dir: str | os.PathLike, *, model: ModelConfig | None = None,
             external: VideoEncoder | None = None, resume: bool = True, batches: Any = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Masked contrastive pretraining (SGDiff): AdamW on shapes-world batches, atomic checkpoints, resume.

    Writes `out_dir/pretrain.pt` every `ckpt_every` steps and at the end; with `resume`, continues from it.
    Returns the last losses and the final held-out retrieval scores.
    """
    cfg.validate()
    log = log or _print_flush
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = model or model_config(cfg.size)
    device = _device(cfg.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME
    torch.manual_seed(cfg.seed)
    encoder, video, heads = build_pretrain_models(model, cfg, external)
    modules = [encoder.to(device), video.to(device), heads.to(device)]
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if resume and ckpt_path.exists():
        ckpt = load_pretrain_checkpoint(ckpt_path)
        if ckpt["config"] != model.to_dict():
            raise CheckpointError(f"{ckpt_path} was trained with another model config; pass a fresh "
                                  "--out-dir or the same --size")
        for m, key in zip(modules, ("encoder", "video_encoder", "heads")):
            load_state_checked(m, ckpt[key], ckpt_path, key)
        if ckpt.get("optimizer") is not None:
            load_optimizer_state(optimizer, ckpt["optimizer"], ckpt_path)
        if isinstance(ckpt.get("rng"), dict):
            set_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
        log(f"resumed from {ckpt_path} at step {step}")
    source = batches if batches is not None else ShapesBatches(model.data, seed=cfg.seed)
    for m in modules:
        m.train()
    last: dict[str, float] = {}
    t0, seen = time.perf_counter(), 0
    while step < cfg.steps:
        batch = source.batch(step, cfg.batch_size).to(device)
        losses = pretrain_losses(encoder, video, heads, batch, cfg.contrastive_weight, cfg.masked_weight)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        step += 1
        seen += cfg.batch_size
        last = {k: float(v.detach()) for k, v in losses.items()}
        if not math.isfinite(last["loss"]):
            raise PretrainError(f"step {step}: loss is {last['loss']}; lower --lr or check the data")
        if step % cfg.log_every == 0 or step == cfg.steps:
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            log(f"step {step}/{cfg.steps} loss {last['loss']:.4f} contrastive {last['contrastive']:.4f} "
                f"masked {last['masked']:.4f} temp {last['temperature']:.4f} {rate:.1f} samples/s")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_pretrain_checkpoint(ckpt_path, model, cfg, encoder, video, heads, step, optimizer)
        if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
            r = evaluate_retrieval(encoder, video, model.data, n=cfg.eval_samples, seed=cfg.seed)
            log(f"step {step}: retrieval R@1 {r['R@1']:.3f} R@5 {r['R@5']:.3f} (n={r['n']}, held-out)")
    retrieval = evaluate_retrieval(encoder, video, model.data, n=cfg.eval_samples, seed=cfg.seed)
    log(f"final retrieval R@1 {retrieval['R@1']:.3f} R@5 {retrieval['R@5']:.3f} "
        f"(n={retrieval['n']}, held-out)")
    return {"step": step, "losses": last, "retrieval": retrieval, "checkpoint": str(ckpt_path)}


# ------------------------------------------------------------------------------------------------------- CLI
def add_pretrain_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `sg2v-train pretrain` options, one per `PretrainConfig` field, defaults shown in --help."""
    d = PretrainConfig()
    a = parser.add_argument
    a("--out-dir", default="runs/pretrain",
      help="folder for pretrain.pt, resumed from when present (default: %(default)s)")
    a("--size", choices=sorted(MODEL_SIZES), default=d.size,
      help="model size: encoder and data shapes (default: %(default)s)")
    a("--no-resume", action="store_true", help="start afresh even if OUT_DIR/pretrain.pt exists")
    helps = {
        "steps": "optimizer steps in total (a resumed run continues up to this)",
        "batch_size": "pairs per step (InfoNCE negatives come from the batch)",
        "lr": "AdamW learning rate", "weight_decay": "AdamW weight decay",
        "contrastive_weight": "weight of the global InfoNCE loss",
        "masked_weight": "weight of the masked-object recovery loss",
        "init_temperature": "initial InfoNCE temperature (learned)",
        "max_logit_scale": "clamp on 1 / temperature",
        "video_channels": "base width of the jointly trained video encoder",
        "feature_dim": "width of the video feature map the masked loss recovers",
        "attn_heads": "heads of the masked-recovery cross-attention",
        "grad_clip": "gradient norm clip (0: off)", "seed": "seed of weights and of the data stream",
        "log_every": "steps between log lines", "ckpt_every": "steps between checkpoints",
        "eval_every": "steps between held-out retrieval evaluations (0: only at the end)",
        "eval_samples": "held-out pairs in the retrieval evaluation",
        "device": "auto, cpu or cuda[:N]",
        "threads": "torch CPU threads (0: torch's default)",
    }
    for f in dataclasses.fields(PretrainConfig):
        if f.name == "size":
            continue
        default = getattr(d, f.name)
        a(f"--{f.name.replace('_', '-')}", type=type(default), default=default,
          help=f"{helps[f.name]} (default: %(default)s)")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run `sg2v-train pretrain` from parsed arguments; returns the exit status."""
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    cfg = PretrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    pretrain(cfg, args.out_dir, resume=not args.no_resume)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sg2v-pretrain", description=__doc__.splitlines()[0])
    parser = add_pretrain_args(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except Sg2vError as e:
        print(f"error: {e}")
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
