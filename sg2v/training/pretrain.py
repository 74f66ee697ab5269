"""Masked contrastive pretraining of the scene-graph encoder (SGDiff, Yang et al. 2022), carried to video.

Two losses, weighted (`PretrainConfig.contrastive_weight`, `masked_weight`):
- contrastive: symmetric InfoNCE (CLIP, Radford et al. 2021) with a learnable temperature between the graph's
  global token and the video's global embedding;
- masked: one object per sample has its pixels zeroed (black, the shapes-world background); from the graph's
  local tokens, through a cross-attention head queried by the masked video's features, the model recovers that
  object's features in the unmasked video (feature map pooled over the object's mask, stop-gradient).
The losses are in `sg2v.training.losses`, the data is `sg2v.training.data`'s, the checkpoint is written and
read by `sg2v.training.checkpoint`, the loop is `sg2v.training.harness`'s (`PretrainObjective`).
The shapes-world video encoder is trained jointly; an external one plugs
in frozen (`FrozenVideoEncoder`). The checkpoint's `encoder` entry is an `SGEncoder` state dict that
diffusion training loads as is.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sg2v.config import (
    DEVICES,
    MAX_BATCH,
    MAX_SEED,
    MODEL_SIZES,
    DataConfig,
    ModelConfig,
    model_config,
    option,
    option_problem,
    parse_device,
    threads_problem,
)
from sg2v.errors import CheckpointError, ConfigError
from sg2v.models.encoder import SGEncoder
from sg2v.models.video_encoder import ConvVideoEncoder, FrozenVideoEncoder, VideoEncoder
from sg2v.shapes import ShapesSample
from sg2v.training.backend import torch_device
from sg2v.training.checkpoint import (
    SG2V_FORMAT,
    load_checkpoint,
    load_optimizer_state,
    load_state_checked,
    rng_state,
    set_rng_state,
    state_dict_cpu,
    write_checkpoint,
)
from sg2v.training.converted import (
    ConvertedSamples,
    Pool,
    RunData,
    box_region,
    data_model_config,
    fitted_item,
    heldout_groups,
    heldout_key,
    item_arrays,
    open_run_data,
)
from sg2v.training.data import ShapesVideoDataset
from sg2v.training.data import collate as collate_arrays
from sg2v.training.harness import Dist, Harness, Lines, LoopPlan, cosine_lr, run_output
from sg2v.training.losses import pretrain_losses
from sg2v.training.pretrain_model import PretrainBatch, PretrainError, PretrainHeads
from sg2v.video import frames_to_unit
from sg2v.vocab import Vocab, shapes_vocab

PRETRAIN_KIND = "pretrain"
CHECKPOINT_NAME = "pretrain.pt"
RENAMED = {"batch_size": "batch"}  # pretrain_config keys of older checkpoints -> today's names


@dataclass(frozen=True)
class PretrainConfig:
    """Everything about a pretraining run except the model shapes (those are the `ModelConfig`).

    Options shared with diffusion training (`sg2v.training.train.TrainConfig`) have the same names.
    """

    size: str = option("tiny", "model size: encoder and data shapes (a key of sg2v.config.MODEL_SIZES)",
                       choices=sorted(MODEL_SIZES))
    data: list[str] | None = option(None, "converted data sets (folders written by `sg2v-data convert`) to "
                                    "pretrain on, their vocabulary and frame size the model's; several with "
                                    "one vocabulary are mixed, images and clips in batches of one kind; the "
                                    "masked object's region is its box (default: the shapes world)", type=str,
                                    nargs="+")
    max_objects: int | None = option(None, "objects per graph the encoder takes (default: the size's; with "
                                     "--data, the largest train / val graph's); diffusion training with "
                                     "--init-encoder needs the same", type=int)
    max_relationships: int | None = option(None, "relationships per graph the encoder takes (default: the "
                                           "size's; with --data, the largest graph's)", type=int)
    steps: int = option(2000, "optimizer steps in total; a resumed run continues up to this")
    batch: int = option(32, "pairs per step (InfoNCE negatives come from the batch)",
                        aliases=("--batch-size",))
    lr: float = option(1e-3, "AdamW peak learning rate")
    warmup: int = option(0, "linear learning-rate warmup steps, then cosine decay to --lr-min-ratio x --lr")
    lr_min_ratio: float = option(1.0, "final learning rate as a fraction of --lr (1: constant after warmup)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    contrastive_weight: float = option(1.0, "weight of the global InfoNCE loss")
    masked_weight: float = option(0.1, "weight of the masked-object recovery loss (an order of magnitude "
                                  "below the contrastive loss, as SGDiff notes)")
    init_temperature: float = option(0.07, "initial InfoNCE temperature, learned (CLIP's)")
    max_logit_scale: float = option(100.0, "clamp on 1 / temperature (CLIP's)")
    video_channels: int = option(32, "base width of the jointly trained video encoder")
    video_frames: int = option(0, "frames the video side sees, evenly spaced from the first to the last (the "
                               "first and last quarters hold the motion relations); 0: all")
    video_pool: int = option(1, "the video encoder average-pools frames by this factor first (1: off)")
    feature_dim: int = option(64, "width of the video feature map the masked loss recovers")
    attn_heads: int = option(4, "heads of the masked-recovery cross-attention")
    grad_clip: float = option(1.0, "max global gradient norm (0: off)")
    seed: int = option(0, "seed of the initial weights and of the data stream")
    log_every: int = option(50, "steps between log lines")
    ckpt_every: int = option(200, "steps between checkpoints OUT/pretrain.pt, plus one at the end")
    eval_every: int = option(0, "steps between held-out retrieval evaluations (0: only at the end)")
    eval_samples: int = option(100, "held-out pairs in the retrieval evaluation")
    out: str = option("runs/pretrain", "output folder: pretrain.pt", aliases=("--out-dir",))
    resume: str = option("auto", "'auto' (continue from OUT/pretrain.pt when present) or 'never'",
                         choices=("auto", "never"))
    device: str = option("auto", f"where to train: {DEVICES}")
    threads: int = option(0, "torch CPU threads (0: torch's default); 1 is fastest on a busy shared machine")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        d = {RENAMED.get(k, k): v for k, v in d.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PretrainError(f"pretrain config: unknown key(s) {unknown}; written by another sg2v version")
        return cls(**d)

    def validate(self) -> None:
        """Reject settings that cannot work, naming the option, before anything is built."""
        problem = option_problem(self)
        if problem:
            raise PretrainError(problem)
        self._check_counts()
        self._check_rates()
        self._check_run()

    def _check_counts(self) -> None:
        """Size, steps, batch, widths and cadences: in their ranges."""
        if self.size not in MODEL_SIZES:
            raise PretrainError(f"--size {self.size!r}: choose one of {sorted(MODEL_SIZES)}")
        for name in ("steps", "batch", "video_channels", "feature_dim", "attn_heads", "eval_samples",
                     "video_pool", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise PretrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch > MAX_BATCH:
            raise PretrainError(f"--batch {self.batch}: at most {MAX_BATCH}")
        for name in ("video_frames", "warmup", "eval_every"):
            if getattr(self, name) < 0:
                raise PretrainError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.batch < 2:
            raise PretrainError("--batch must be >= 2: InfoNCE needs negatives in the batch")

    def _check_rates(self) -> None:
        """Learning rate and its schedule, threads, seed, the losses' weights and temperature."""
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise PretrainError(f"--lr-min-ratio must be in [0, 1], got {self.lr_min_ratio}")
        problem = threads_problem(self.threads, zero_ok=True)
        if problem:
            raise PretrainError(problem + "; 0 takes torch's default")
        if not 0 <= self.seed <= MAX_SEED:
            raise PretrainError(f"--seed must be an integer in [0, {MAX_SEED}], got {self.seed}")
        for name in ("lr", "init_temperature", "max_logit_scale"):
            if not getattr(self, name) > 0:
                raise PretrainError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise PretrainError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.contrastive_weight < 0 or self.masked_weight < 0:
            raise PretrainError("--contrastive-weight and --masked-weight must be >= 0")
        if not 0 < self.init_temperature < 1:
            raise PretrainError(f"--init-temperature must be in (0, 1), got {self.init_temperature}")

    def _check_run(self) -> None:
        """Resume, graph limits, --data and the device."""
        if self.resume not in ("auto", "never"):
            raise PretrainError(f"--resume {self.resume!r}: choose auto or never")
        if self.max_objects is not None and self.max_objects < 1:
            raise PretrainError(f"--max-objects must be >= 1, got {self.max_objects}")
        if self.max_relationships is not None and self.max_relationships < 0:
            raise PretrainError(f"--max-relationships must be >= 0, got {self.max_relationships}")
        if self.data is not None and (isinstance(self.data, str) or not self.data):
            raise PretrainError("--data takes one or more folders written by `sg2v-data convert` (a list)")
        try:
            parse_device(self.device)
        except ConfigError as e:
            raise PretrainError(str(e)) from None

    def model_config(self, data: RunData | None = None) -> ModelConfig:
        """The size's `ModelConfig` with this run's graph limits, or with converted `data`'s vocabulary,
        frame size and graph limits."""
        cfg = model_config(self.size)
        if data is not None:
            return data_model_config(cfg, data)
        limits = {k: v for k, v in (("max_objects", self.max_objects),
                                    ("max_relationships", self.max_relationships)) if v is not None}
        return cfg.replace(data=dataclasses.replace(cfg.data, **limits)) if limits else cfg

    def open_data(self) -> RunData | None:
        """The converted data sets of `--data` with this run's limits (None: the shapes world)."""
        if not self.data:
            return None
        return open_run_data(self.data, max_objects=self.max_objects,
                             max_relationships=self.max_relationships)


# ------------------------------------------------------------------------------------------------------ data
def collate(samples: list[ShapesSample], dataset: ShapesVideoDataset, rng: np.random.Generator
            ) -> PretrainBatch:
    """Shapes-world samples -> a PretrainBatch: the dataset's arrays, and one object to mask per sample.

    The object to mask is drawn uniformly among the sample's user objects (never `__image__`).
    """
    arrays = collate_arrays([dataset.sample_arrays(s) for s in samples])  # video (B, F, C, H, W) uint8
    slots = np.array([int(rng.integers(0, len(s.graph["objects"]))) for s in samples], dtype=np.int64)
    region = np.stack([np.asarray(s.masks[k]) for s, k in zip(samples, slots)]).astype(np.float32)
    return PretrainBatch(
        objs=arrays["objs"], obj_mask=arrays["obj_mask"], triples=arrays["triples"],
        triple_mask=arrays["triple_mask"], video=frames_to_unit(arrays["video"]).contiguous(),
        region=torch.from_numpy(region), masked_slot=torch.from_numpy(slots),
    )


def video_view(batch: PretrainBatch, frames: int) -> PretrainBatch:
    """The batch with its video and masked region cut to `frames` evenly spaced frames (0: unchanged)."""
    f = batch.video.shape[1]
    if not frames or frames >= f:
        return batch
    idx = torch.from_numpy(np.round(np.linspace(0, f - 1, frames)).astype(np.int64))  # first and last kept
    return dataclasses.replace(batch, video=batch.video[:, idx].contiguous(),
                               region=batch.region[:, idx].contiguous())


def lr_at(cfg: PretrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay (Loshchilov & Hutter 2017) to lr_min_ratio x lr at the last step."""
    return cosine_lr(cfg.lr, cfg.warmup, cfg.steps, cfg.lr_min_ratio, step)


class ShapesBatches:
    """Pretraining batches of `ShapesVideoDataset` samples; batch `step` depends on (seed, split, step)."""

    def __init__(self, data: DataConfig, seed: int = 0, split: str = "train", vocab: Vocab | None = None):
        self.data = data
        self.seed = int(seed)
        self.vocab = vocab or shapes_vocab()
        self.dataset = ShapesVideoDataset(data, self.vocab, seed=seed, split=split)

    def samples(self, start: int, count: int) -> list[ShapesSample]:
        return [self.dataset.sample(start + i) for i in range(count)]

    def batch(self, step: int, batch: int) -> PretrainBatch:
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(7, int(step))))
        return collate(self.samples(step * batch, batch), self.dataset, rng)

    def retrieval_batches(self, n: int, batch_size: int) -> Iterator[tuple[PretrainBatch, list[tuple]]]:
        """The first n samples in batches, with each sample's graph key (`_graph_key`)."""
        rng = np.random.default_rng(0)  # the masked slot is unused in retrieval
        for start in range(0, n, batch_size):
            samples = self.samples(start, min(batch_size, n - start))
            yield collate(samples, self.dataset, rng), [_graph_key(s.graph) for s in samples]

    def __len__(self) -> int:
        return len(self.dataset)


class ConvertedBatches:
    """Pretraining batches of a converted data set's pool (`sg2v.training.converted`): batch `step` holds
    stream entries step * batch .. + batch (one kind: images or clips); the object to mask is drawn uniformly
    among the sample's objects that have a box in some frame, and its region is that box per frame."""

    def __init__(self, pool: Pool, cfg: ModelConfig, vocab: Vocab, seed: int = 0, batch: int = 32,
                 stream: bool = True):
        self.pool, self.cfg, self.vocab, self.seed, self.size = pool, cfg, vocab, int(seed), int(batch)
        self.samples = ConvertedSamples(pool, cfg, vocab, seed, batch) if stream else None

    def _collate(self, arrays: list[dict[str, np.ndarray]], rng: np.random.Generator) -> PretrainBatch:
        d = self.cfg.data
        slots, regions = [], []
        for a in arrays:
            boxes = a["boxes"]  # (O, F', 4), zero where unknown and for padded slots
            has = np.flatnonzero((boxes[..., 2] > boxes[..., 0]).any(axis=1))
            slot = int(has[rng.integers(0, len(has))]) if len(has) else 0
            slots.append(slot)
            regions.append(box_region(boxes[slot], boxes[slot, :, 2] > boxes[slot, :, 0], d.height, d.width))
        b = collate_arrays(arrays)
        return PretrainBatch(objs=b["objs"], obj_mask=b["obj_mask"], triples=b["triples"],
                             triple_mask=b["triple_mask"], video=frames_to_unit(b["video"]).contiguous(),
                             region=torch.from_numpy(np.stack(regions)),
                             masked_slot=torch.from_numpy(np.array(slots, dtype=np.int64)))

    def batch(self, step: int, batch: int) -> PretrainBatch:
        if self.samples is None or batch != self.size:
            raise ValueError(f"this source makes batches of {self.size} from its stream, asked for {batch}")
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(7, int(step))))
        arrays = [self.samples[i] for i in range(step * batch, (step + 1) * batch)]
        return self._collate(arrays, rng)

    def retrieval_batches(self, n: int, batch_size: int) -> Iterator[tuple[PretrainBatch, list[tuple]]]:
        """The pool's first n samples in batches of one kind, with each sample's graph key."""
        rng = np.random.default_rng(0)  # the masked slot is unused in retrieval
        d = self.cfg.data
        for part in heldout_groups(self.pool, n, batch_size):
            items = [fitted_item(self.pool, k, d, heldout_key(self.seed, k)) for k in part]
            arrays = [item_arrays(it, d, self.vocab, "diffusion") for it in items]
            yield self._collate(arrays, rng), [_graph_key(it["graph"]) for it in items]

    def __len__(self) -> int:
        return len(self.pool)


# --------------------------------------------------------------------------------------------------- models
def build_pretrain_models(model: ModelConfig, cfg: PretrainConfig, external: VideoEncoder | None = None
                          ) -> tuple[SGEncoder, nn.Module, PretrainHeads]:
    """The graph encoder, the video encoder (joint, or `external` frozen behind projections) and the heads."""
    encoder = SGEncoder(model.encoder, model.data)
    c = model.encoder.context_dim
    if external is None:
        video: nn.Module = ConvVideoEncoder(model.data, c, channels=cfg.video_channels,
                                            feature_dim=cfg.feature_dim, pool=cfg.video_pool)
    else:
        video = FrozenVideoEncoder(external, c, cfg.feature_dim)
    heads = PretrainHeads(c, c, cfg.feature_dim, cfg.attn_heads, cfg.init_temperature, cfg.max_logit_scale)
    return encoder, video, heads


# ------------------------------------------------------------------------------------------------ retrieval
@torch.no_grad()
def evaluate_retrieval(encoder: SGEncoder, video_encoder: VideoEncoder, data: DataConfig, n: int = 100,
                       seed: int = 0, split: str = "heldout", batch_size: int = 50, video_frames: int = 0,
                       source: Any = None) -> dict[str, float]:
    """Graph -> video retrieval among n held-out pairs by cosine of global embeddings: R@1, R@5, and
    R@1 counting as right a top video whose graph equals the query's (held-out streams repeat a few graphs,
    e.g. a lone "red circle", whose videos no graph embedding can tell apart). The pairs are the shapes
    world's `split`, or `source`'s (`ConvertedBatches` of a val split)."""
    if n < 5:
        raise PretrainError(f"retrieval needs at least 5 candidates for R@5, got n={n}")
    modules = [m for m in (encoder, video_encoder) if isinstance(m, nn.Module)]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    device = next(encoder.parameters()).device
    source = source if source is not None else ShapesBatches(data, seed=seed, split=split)
    g_all, v_all, keys = [], [], []
    for pairs, graph_keys in source.retrieval_batches(n, batch_size):
        keys += graph_keys
        batch = video_view(pairs, video_frames).to(device)
        context, _ = encoder(*batch.graph())
        g_all.append(F.normalize(context[:, 0].float(), dim=-1))
        v_all.append(F.normalize(video_encoder.encode(batch.video)[0].float(), dim=-1))
    for m, t in zip(modules, was_training):
        m.train(t)
    sim = torch.cat(g_all) @ torch.cat(v_all).t()  # (n, n): graph queries x video candidates
    top = sim.argmax(dim=1).tolist()
    same = float(np.mean([keys[i] == keys[j] for i, j in enumerate(top)]))
    return {**recall_at_k(sim, (1, 5)), "R@1_same_graph": same, "n": n}


def _graph_key(graph: dict[str, Any]) -> tuple:
    """A graph up to the order of its objects and relationships."""
    names = graph["objects"]
    rels = sorted((names[s], p, names[o]) for s, p, o in graph.get("relationships", []))
    return tuple(sorted(names)), tuple(rels)


def recall_at_k(sim: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Fraction of queries (rows) whose true candidate (diagonal) ranks in the top k; ties count against."""
    rank = (sim >= sim.diagonal().unsqueeze(1)).sum(dim=1) - 1  # others scored at or above the truth
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks}


# ------------------------------------------------------------------------------------------------- checkpoint
def save_pretrain_checkpoint(path: str | Path, model: ModelConfig, cfg: PretrainConfig, encoder: nn.Module,
                             video_encoder: nn.Module, heads: nn.Module, step: int,
                             optimizer: torch.optim.Optimizer | None, vocab: Vocab | None = None,
                             data: dict[str, Any] | None = None) -> Path:
    """Write the pretraining checkpoint atomically (tensors and plain containers only); `vocab` defaults to
    the shapes world's, `data` is `RunData.record()` of a run on converted data."""
    return write_checkpoint(path, {
        "sg2v_format": SG2V_FORMAT,
        "kind": PRETRAIN_KIND,
        "config": model.to_dict(),
        "pretrain_config": cfg.to_dict(),
        "vocab": (vocab or shapes_vocab()).to_dict(),
        "data": data,
        "encoder": state_dict_cpu(encoder),
        "video_encoder": state_dict_cpu(video_encoder),
        "heads": state_dict_cpu(heads),
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state(),
    })


def load_pretrain_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a pretraining checkpoint (`sg2v.training.checkpoint.load_checkpoint`, kind "pretrain")."""
    return load_checkpoint(path, kind=PRETRAIN_KIND)


def load_pretrained(path: str | Path, external: VideoEncoder | None = None
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


def pretrain(cfg: PretrainConfig, *, model: ModelConfig | None = None, external: VideoEncoder | None = None,
             batches: Any = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Masked contrastive pretraining (SGDiff): AdamW on shapes-world or converted (`cfg.data`) batches,
    atomic checkpoints, resume.

    Writes `cfg.out/pretrain.pt` every `ckpt_every` steps and at the end; with `resume` "auto", continues from
    it. Returns the last step's losses and the final held-out retrieval scores (None where a converted data
    set's val split has fewer than 5 samples).
    """
    cfg.validate()
    with run_output(cfg.out, cfg.data, (), "sg2v-train pretrain"):
        return _pretrain(cfg, model=model, external=external, batches=batches, log=log)


def _pretrain(cfg: PretrainConfig, *, model: ModelConfig | None, external: VideoEncoder | None,
              batches: Any, log: Callable[[str], None] | None) -> dict[str, Any]:
    log = log or _print_flush
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = cfg.open_data() if batches is None else None
    vocab = data.vocab if data is not None else shapes_vocab()
    model = model or cfg.model_config(data)
    try:
        device = torch_device(cfg.device)
    except ConfigError as e:
        raise PretrainError(str(e)) from None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    encoder, video, heads = build_pretrain_models(model, cfg, external)
    modules = [encoder.to(device), video.to(device), heads.to(device)]
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt_path = out / CHECKPOINT_NAME
    step = 0
    if cfg.resume == "auto" and ckpt_path.exists():
        step = _resume(ckpt_path, model, vocab, data, modules, optimizer)
        log(f"resumed from {ckpt_path} at step {step}")
    objective = PretrainObjective(cfg, model, vocab, data, modules, ckpt_path, device, log, batches)
    for m in modules:
        m.train()
    plan = LoopPlan(steps=cfg.steps, batch=cfg.batch, seed=cfg.seed, log_every=cfg.log_every,
                    ckpt_every=cfg.ckpt_every, eval_every=cfg.eval_every, eval_final=False,
                    grad_clip=cfg.grad_clip, reseed=False, check_every_step=True)
    harness = Harness(plan, Dist(device=device), encoder, params, optimizer, functools.partial(lr_at, cfg),
                      progress=Lines(log))
    step = harness.run(objective, step)
    final = objective.retrieval("final")
    retrieval = final[0] if final is not None else None
    return {"step": step, "losses": harness.last_values(), "retrieval": retrieval,
            "checkpoint": str(ckpt_path)}


def _resume(path: Path, model: ModelConfig, vocab: Vocab, data: RunData | None, modules: list[nn.Module],
            optimizer: torch.optim.Optimizer) -> int:
    """Load the modules, optimizer and RNG state of this very run's checkpoint `path`; its step."""
    ckpt = load_pretrain_checkpoint(path)
    if ckpt["config"] != model.to_dict():
        raise CheckpointError(f"{path} was trained with another model config; pass a fresh --out, the same "
                              "--size, or --resume never")
    before = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    if ckpt.get("vocab") != vocab.to_dict() or before.get("fingerprint") != (data and data.fingerprint):
        raise CheckpointError(f"{path} was trained on other data (another vocabulary, other samples, or the "
                              "same folders converted again); pass the same --data, a fresh --out, or "
                              "--resume never")
    for m, key in zip(modules, ("encoder", "video_encoder", "heads")):
        load_state_checked(m, ckpt[key], path, key)
    if ckpt.get("optimizer") is not None:
        load_optimizer_state(optimizer, ckpt["optimizer"], path)
    if isinstance(ckpt.get("rng"), dict):
        set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


class PretrainObjective:
    """Masked contrastive pretraining of the graph encoder, the video encoder and the heads: the harness's
    `Objective`. Batches come from `batches` (a source with `batch(step, size)`), else from the converted
    data's train split or the shapes world; retrieval runs on the val split or the shapes world's held-out
    stream."""

    def __init__(self, cfg: PretrainConfig, model: ModelConfig, vocab: Vocab, data: RunData | None,
                 modules: list[nn.Module], checkpoint: Path, device: torch.device, log: Callable[[str], None],
                 batches: Any = None):
        self.cfg, self.model, self.vocab, self.modules = cfg, model, vocab, modules
        self.checkpoint, self.device, self.write = checkpoint, device, log
        self.record = data.record() if data is not None else None
        if batches is not None:
            self.source, self.heldout = batches, None
        elif data is not None:
            self.source = ConvertedBatches(data.train, model, vocab, seed=cfg.seed, batch=cfg.batch)
            self.heldout = ConvertedBatches(data.val, model, vocab, seed=cfg.seed, stream=False)
        else:
            self.source, self.heldout = ShapesBatches(model.data, seed=cfg.seed), None
        n = cfg.eval_samples
        self.n_heldout = n if self.heldout is None else min(n, len(self.heldout))
        self.skip = self.heldout is not None and self.n_heldout < 5
        if self.skip:
            log(f"--data: the val split has {len(self.heldout)} samples; retrieval needs at least 5, so none "
                "runs")

    def batches(self, start: int) -> Iterator[PretrainBatch]:
        return (video_view(self.source.batch(s, self.cfg.batch), self.cfg.video_frames).to(self.device)
                for s in itertools.count(start))

    def loss(self, net: nn.Module, batch: PretrainBatch, generator: torch.Generator | None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        encoder, video, heads = self.modules
        losses = pretrain_losses(encoder, video, heads, batch, self.cfg.contrastive_weight,
                                 self.cfg.masked_weight)
        return losses["loss"], {k: v for k, v in losses.items() if k != "loss"}

    def save(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        encoder, video, heads = self.modules
        save_pretrain_checkpoint(self.checkpoint, self.model, self.cfg, encoder, video, heads, step,
                                 optimizer, self.vocab, self.record)

    def retrieval(self, prefix: str) -> tuple[dict[str, float], str] | None:
        """Held-out retrieval scores and their line (None where the val split is too small)."""
        if self.skip:
            return None
        encoder, video, _ = self.modules
        r = evaluate_retrieval(encoder, video, self.model.data, n=self.n_heldout, seed=self.cfg.seed,
                               video_frames=self.cfg.video_frames, source=self.heldout)
        line = (f"{prefix} retrieval R@1 {r['R@1']:.3f} R@5 {r['R@5']:.3f} (same graph: "
                f"{r['R@1_same_graph']:.3f}; n={r['n']}, held-out)")
        if prefix == "final":
            self.write(line)
        return r, line

    def evaluate(self, step: int) -> tuple[dict[str, float], str] | None:
        return self.retrieval(f"step {step}:")

    def log(self, record: dict[str, Any]) -> None:
        if "loss" in record:
            self.write(f"step {record['step']}/{self.cfg.steps} loss {record['loss']:.4f} contrastive "
                       f"{record['contrastive']:.4f} masked {record['masked']:.4f} temp "
                       f"{record['temperature']:.4f} {record['samples_per_s']:.1f} samples/s")

    def diverged(self, step: int, loss: float) -> Exception:
        return PretrainError(f"step {step}: loss is {loss}; lower --lr or check the data")
