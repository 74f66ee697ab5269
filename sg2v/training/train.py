"""Training SG2V (the diffusion, layout and distill objectives, `sg2v.training.objectives`) on the shapes
world or on converted data sets (`sg2v.training.converted`): the run's settings, model, `--init` weights and
resume checks; `ModelObjective` runs in the harness (`sg2v.training.harness`: AdamW, EMA, bf16 autocast, DDP,
exact resume).

Reproducibility is by construction, not by saved generator state: micro-batch m of step s holds dataset
indices that depend only on (s, m) (`sg2v.training.data.StepBatchSampler`; on converted data the index picks
its sample through a seeded stream), and the step's noise, timesteps
and condition dropout come from the global torch RNG reseeded with (seed, s, m) before its loss. So a run
resumed from `last.pt` replays exactly the steps an uninterrupted run takes, and `world` processes with
`accum` micro-batches each compute the same mean gradient as one process accumulating `world * accum`
micro-batches.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sg2v.config import (
    BOUNDS,
    DEVICES,
    MAX_BATCH,
    MAX_SEED,
    MAX_WORKERS,
    MODEL_SIZES,
    DistillConfig,
    ModelConfig,
    model_config,
    option,
    option_problem,
    parse_device,
    student_config,
    threads_problem,
    video_size_problem,
    without_layout,
)
from sg2v.errors import CheckpointError, ConfigError, Sg2vError, shown
from sg2v.io import atomic_write_text
from sg2v.models.sg2v import build_model
from sg2v.models.unet import check_config
from sg2v.sampling import SAMPLERS
from sg2v.training.checkpoint import (
    checkpoint_config,
    checkpoint_vocab,
    load_bundle_model,
    load_checkpoint,
    load_optimizer_state,
    load_state_checked,
    save_checkpoint,
    set_rng_state,
)
from sg2v.training.converted import (
    RULE_FAMILIES,
    ConvertedSamples,
    RunData,
    data_model_config,
    open_run_data,
)
from sg2v.training.data import (
    StepBatchSampler,
    collate,
    seed_worker,
)
from sg2v.training.harness import (
    Dist,
    Ema,
    Harness,
    LoopPlan,
    Progress,
    cosine_lr,
    init_distributed,
    run_output,
    update_ema,
)
from sg2v.training.harness import (
    step_seed as step_seed,
)
from sg2v.training.objectives import KINDS
from sg2v.vocab import shapes_vocab

LAST = "last.pt"
METRICS = "metrics.jsonl"


OBJECTIVES = tuple(KINDS)
GROUNDING_PREFIXES = ("unet.object_maps.", "unet.layout_in.", "unet.pixel_head.", "layout_net.")
STUDENT_PREFIXES = ("unet.guidance_embed.",)


class TrainError(Sg2vError, ValueError):
    """Training settings that cannot work (names the option and the fix)."""

    exit_code = 2


class DivergedError(TrainError):
    """A loss that became NaN or infinite: training stops without saving those weights (exit status 1)."""

    exit_code = 1


@dataclass
class TrainConfig:
    """Everything a diffusion training run depends on; saved in the checkpoint as `train_config`."""

    objective: str = option("diffusion", "what the run trains: 'diffusion' (the UNet, on rendered clips and "
                            "their true boxes) or 'layout' (the layout network, on unrendered scenes)",
                            choices=OBJECTIVES)
    size: str = option("tiny", "model size (a key of sg2v.config.MODEL_SIZES)", choices=sorted(MODEL_SIZES))
    data: list[str] | None = option(None, "converted data sets (folders written by `sg2v-data convert`) to "
                                    "train on, their vocabulary and frame size the model's; several with one "
                                    "vocabulary are mixed, images and clips in batches of one kind (default: "
                                    "the shapes world)", type=str, nargs="+")
    steps: int = option(2000, "optimizer steps in total; a resumed run continues up to this")
    batch: int = option(16, "global batch: samples per optimizer step over all processes")
    grad_accum: int = option(1, "micro-batches accumulated per process per step")
    lr: float = option(1e-3, "AdamW peak learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup: int = option(100, "linear learning-rate warmup steps (then cosine decay)")
    lr_min_ratio: float = option(0.1, "final learning rate as a fraction of --lr")
    ema_decay: float = option(0.999, "EMA decay of the weights used for evaluation and export")
    grad_clip: float = option(1.0, "max global gradient norm (0: off)")
    seed: int = option(0, "seed of the initial weights, the data stream and the diffusion noise")
    eval_every: int = option(500, "steps between oracle evaluations, plus one at the end (0: off)")
    eval_samples: int = option(16, "held-out graphs sampled per evaluation")
    eval_steps: int = option(8, "sampler steps at evaluation")
    eval_sampler: str = option("dpmpp2m", "sampler at evaluation", choices=sorted(SAMPLERS))
    eval_guidance: float = option(3.0, "classifier-free guidance scale at evaluation")
    ckpt_every: int = option(500, "steps between checkpoints OUT/last.pt, plus one at the end")
    log_every: int = option(10, "steps between loss lines in OUT/metrics.jsonl")
    out: str = option("runs/sg2v", "output folder: last.pt, metrics.jsonl, samples/")
    workers: int = option(2, "DataLoader worker processes generating shapes-world samples")
    init_encoder: str | None = option(None, "pretrain.pt from `sg2v-train pretrain` to initialise the graph "
                                      "encoder", type=str)
    init: str | None = option(None, "weights to fine-tune from, with a fresh optimizer and schedule: a "
                              "checkpoint (its EMA weights) or a bundle folder exported with "
                              "--include-weights; a model without layout grounding fills all but the "
                              "grounding layers, which start at zero", type=str)
    freeze_encoder: bool = option(False, "keep the graph encoder's weights as --init / --init-encoder gave "
                                  "them (the layout network and the UNet then read the same encoder)")
    pin_prob: float = option(0.3, "layout objective: fraction of samples in which half the objects' tracks "
                             "are given (layout inpainting)")
    overlap_prob: float = option(0.0, "diffusion and distill objectives on the shapes world: fraction of "
                                 "clips whose boxes overlap, drawn in the world's order (later on top), so "
                                 "the UNet learns occlusion for tracks a user pins over each other (the "
                                 "world's own scenes never overlap)")
    guidance_min: float = option(1.0, "distill objective: smallest guidance weight the student learns")
    guidance_max: float = option(8.0, "distill objective: largest guidance weight the student learns")
    distill_grid: int = option(20, "distill objective: trailing timesteps of the consistency grid (1000 / "
                               "grid timesteps per student step on the finest grid)")
    student_steps: int = option(4, "distill objective: the student bundle's default sampler steps (a divisor "
                                "of --distill-grid)")
    resume: str = option("auto", "'auto' (OUT/last.pt when present), 'never', or a checkpoint path")
    device: str = option("auto", f"where to train: {DEVICES} (under torchrun, each process takes its "
                         "LOCAL_RANK's GPU)")
    threads: int = option(0, "torch CPU threads of the training process (0: torch's default)")
    time_limit: float = option(0.0, "seconds of training after which to save OUT/last.pt and stop with exit "
                               "0; the same command resumes (0: no limit)")
    stop_at: int = option(0, "save OUT/last.pt and stop after this step while the learning-rate schedule "
                          "still spans --steps (0: run to --steps); the same command without it goes on")
    frames: int | None = option(None, "frames per video (default: the size's; with --data, the data's clip "
                                "length)", type=int)
    height: int | None = option(None, "frame height (default: the size's; with --data, the data's)", type=int)
    width: int | None = option(None, "frame width (default: the size's; with --data, the data's)", type=int)
    max_objects: int | None = option(None, "objects per graph the model takes (default: the size's; with "
                                     "--data, the largest train / val graph's; larger graphs are cut to a "
                                     "seeded subset, objects in relationships first)", type=int)
    max_relationships: int | None = option(None, "relationships per graph the model takes (default: the "
                                           "size's; with --data, the largest graph's)", type=int)
    rules: str | None = option(None, "relation-rule family the layout stage checks: shapes, coco (sg2im's "
                               "COCO-Stuff rules) or none (default: the size's; with --data, coco for "
                               "COCO-Stuff, else none)", type=str, choices=("shapes", "coco", "none"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def model_config(self, data: RunData | None = None) -> ModelConfig:
        """The size's `ModelConfig` with this run's overrides, or with converted `data`'s vocabulary, frame
        size, graph limits and rule family (`open_run_data` applied the overrides)."""
        cfg = model_config(self.size)
        if data is not None:
            return data_model_config(cfg, data)
        changes = {k: v for k, v in (("frames", self.frames), ("height", self.height), ("width", self.width),
                                     ("max_objects", self.max_objects),
                                     ("max_relationships", self.max_relationships)) if v is not None}
        if changes:
            cfg = cfg.replace(data=dataclasses.replace(cfg.data, **changes))
        if self.rules is not None:
            cfg = cfg.replace(layout=dataclasses.replace(cfg.layout, rules=self.rules))
        return cfg

    def open_data(self) -> RunData | None:
        """The converted data sets of `--data`, opened with this run's overrides (None: the shapes world)."""
        if not self.data:
            return None
        return open_run_data(self.data, frames=self.frames, height=self.height, width=self.width,
                             max_objects=self.max_objects, max_relationships=self.max_relationships,
                             rules=self.rules)

    def check(self) -> None:
        """Reject settings that cannot work, naming the option, before anything is built or allocated."""
        problem = option_problem(self)
        if problem:
            raise TrainError(problem)
        self._check_counts()
        self._check_rates()
        self._check_model()
        self._check_run()
        self._check_distill()
        self._check_data()

    def _check_counts(self) -> None:
        """Steps, batch sizes, cadences, workers and threads: integers in their ranges."""
        positive = {"steps": self.steps, "batch": self.batch, "grad_accum": self.grad_accum,
                    "ckpt_every": self.ckpt_every, "log_every": self.log_every, "eval_steps": self.eval_steps}
        for name, v in positive.items():
            if not isinstance(v, int) or v < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name, v in {"eval_every": self.eval_every, "workers": self.workers, "warmup": self.warmup,
                        "eval_samples": self.eval_samples, "threads": self.threads,
                        "stop_at": self.stop_at}.items():
            if not isinstance(v, int) or v < 0:
                raise TrainError(f"--{name.replace('_', '-')} must be an integer >= 0, got {v!r}")
        for name, v, hi in (("workers", self.workers, MAX_WORKERS), ("batch", self.batch, MAX_BATCH),
                            ("grad_accum", self.grad_accum, MAX_BATCH)):
            if v > hi:
                raise TrainError(f"--{name.replace('_', '-')} {shown(v)}: at most {hi}")

    def _check_rates(self) -> None:
        """Learning rate, weight decay, eval guidance, seed and threads."""
        if not self.lr > 0:
            raise TrainError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise TrainError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise TrainError(f"--lr-min-ratio must be in [0, 1], got {self.lr_min_ratio}")
        if self.eval_guidance < 0:
            raise TrainError(f"--eval-guidance must be >= 0 (1: no guidance), got {self.eval_guidance}")
        if not 0 <= self.seed <= MAX_SEED:
            raise TrainError(f"--seed must be an integer in [0, {MAX_SEED}], got {self.seed}")
        problem = threads_problem(self.threads, zero_ok=True)
        if problem:
            raise TrainError(problem + "; 0 takes torch's default")

    def _check_model(self) -> None:
        """The model config the size and video flags give: a frame size and graph slots it can take."""
        if self.size in MODEL_SIZES:
            cfg = self.model_config()
            d = cfg.data
            problem = video_size_problem(d.frames, d.height, d.width, d.channels)
            if problem:
                raise TrainError(problem)
            try:  # a frame size the UNet's levels and patches cannot tile: the flags' fault, exit 2
                check_config(cfg.unet, d)
            except ConfigError as e:
                raise TrainError(f"--height/--width: {e}") from None
            for name in ("max_objects", "max_relationships"):  # graph slots: bounded before allocating
                lo, hi = BOUNDS[f"DataConfig.{name}"]
                if not lo <= getattr(d, name) <= hi:
                    raise TrainError(f"--{name.replace('_', '-')} {getattr(d, name)}: must be an integer in "
                                     f"[{lo}, {hi}]")

    def _check_run(self) -> None:
        """The schedule, stop rules, device and objective settings."""
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.stop_at > self.steps:
            raise TrainError(f"--stop-at {self.stop_at} is past --steps {self.steps}; pass a step <= --steps "
                             "(or 0 for none)")
        if not (isinstance(self.time_limit, (int, float)) and self.time_limit >= 0):
            raise TrainError(f"--time-limit must be seconds >= 0 (0: no limit), got {self.time_limit!r}")
        if self.grad_clip < 0:
            raise TrainError(f"--grad-clip must be >= 0 (0 disables), got {self.grad_clip}")
        try:
            parse_device(self.device)
        except ConfigError as e:
            raise TrainError(str(e)) from None
        if self.eval_every and self.eval_samples < 1:
            raise TrainError("--eval-samples must be >= 1 when --eval-every is set; or pass --eval-every 0")
        if self.objective not in OBJECTIVES:
            raise TrainError(f"objective {self.objective!r}: choose one of {list(OBJECTIVES)}")
        self._check_fractions()

    def _check_fractions(self) -> None:
        """--pin-prob and --overlap-prob: fractions, the latter only where overlapping clips are drawn."""
        for flag, value in (("--pin-prob", self.pin_prob), ("--overlap-prob", self.overlap_prob)):
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise TrainError(f"{flag} must be in [0, 1], got {value!r}")
        if self.overlap_prob and (self.objective not in ("diffusion", "distill") or self.data):
            raise TrainError("--overlap-prob draws overlapping shapes-world clips for the diffusion and "
                             "distill objectives; drop it for the layout objective (layouts keep the world's "
                             "geometry) and with --data")

    def _check_distill(self) -> None:
        """The distill objective's teacher and guidance grid."""
        if self.objective == "distill":
            if not self.init:
                raise TrainError("distill: --init must name the teacher (a checkpoint, or a bundle with "
                                 "weights)")
            if not (math.isfinite(self.guidance_min) and math.isfinite(self.guidance_max)
                    and 0.0 <= self.guidance_min <= self.guidance_max):
                raise TrainError(f"--guidance-min {self.guidance_min} / --guidance-max {self.guidance_max}: "
                                 "need finite 0 <= min <= max")
            if not (isinstance(self.distill_grid, int) and 1 <= self.distill_grid <= 1000):
                raise TrainError(f"--distill-grid must be an integer in [1, 1000], got {self.distill_grid!r}")
            if not (isinstance(self.student_steps, int) and self.student_steps >= 1
                    and self.distill_grid % self.student_steps == 0):
                raise TrainError(f"--student-steps {self.student_steps} must divide --distill-grid "
                                 f"{self.distill_grid}")

    def _check_data(self) -> None:
        """The video shape, graph limits, rule family and --data flags."""
        for name in ("frames", "height", "width", "max_objects"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise TrainError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.max_relationships is not None and (not isinstance(self.max_relationships, int)
                                                   or self.max_relationships < 0):
            raise TrainError(f"--max-relationships must be an integer >= 0, got {self.max_relationships!r}")
        if self.rules is not None and self.rules not in RULE_FAMILIES:
            raise TrainError(f"--rules {self.rules!r}: choose one of {list(RULE_FAMILIES)}")
        if self.data is not None and (isinstance(self.data, str) or not self.data):
            raise TrainError("--data takes one or more folders written by `sg2v-data convert` (a list)")


def lr_at(tc: TrainConfig, step: int) -> float:
    """Linear warmup then cosine decay (Loshchilov & Hutter 2017) to lr_min_ratio * lr at the last step."""
    return cosine_lr(tc.lr, tc.warmup, tc.steps, tc.lr_min_ratio, step)


def ema_decay_at(tc: TrainConfig, step: int) -> float:
    """EMA decay with the usual early ramp min(decay, (1 + n) / (10 + n)): the average forgets init fast."""
    return min(tc.ema_decay, (1.0 + step) / (10.0 + step))


@dataclass
class TrainResult:
    """What `train` leaves behind (every rank gets one; only rank 0 wrote files)."""

    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: int
    losses: list[float]
    metrics: list[dict[str, Any]]
    out: Path
    checkpoint: Path | None = None  # the file holding this state: OUT/last.pt, or the one resumed from



def _resolve_resume(tc: TrainConfig, out: Path) -> Path | None:
    if tc.resume == "never":
        return None
    if tc.resume == "auto":
        last = out / LAST
        return last if last.is_file() else None
    path = Path(tc.resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {tc.resume}: no such checkpoint; pass a last.pt, 'auto' or 'never'")
    return path


def _check_vocab(ckpt_vocab: Any, vocab: Any, flag: str, path: Any) -> None:
    """CheckpointError unless a checkpoint's vocabulary is this run's (the embedding rows mean the same)."""
    if vocab is not None and ckpt_vocab != vocab:
        sizes = f"{ckpt_vocab.num_objs} / {ckpt_vocab.num_preds}"
        raise CheckpointError(f"{flag} {path}: its vocabulary ({sizes} object / predicate ids) differs from "
                              f"this run's ({vocab.num_objs} / {vocab.num_preds}); initialise from a model "
                              "trained on the same vocabulary (the same --data, or the shapes world)")


def _check_resume_data(ckpt: dict[str, Any], path: Path, vocab: Any, data: RunData | None) -> None:
    """CheckpointError unless the checkpoint was trained on this run's data (resume replays its stream)."""
    _check_vocab(checkpoint_vocab(ckpt, path), vocab, "--resume", path)
    before = ckpt.get("data")
    before_fp = before.get("fingerprint") if isinstance(before, dict) else None
    now_fp = data.fingerprint if data is not None else None
    if before_fp != now_fp:
        was = "the shapes world" if before_fp is None else f"--data {' '.join(before.get('paths', []))}"
        now = "the shapes world" if data is None else f"--data {' '.join(data.paths)}"
        raise CheckpointError(f"{path}: trained on {was}, this run reads {now} (other samples, or the same "
                              "folders converted again); pass the same --data, or --out to another folder, "
                              "or --resume never")


def load_init_encoder(model: torch.nn.Module, path: str, vocab: Any = None) -> None:
    """Initialise `model.encoder` from a pretrain checkpoint's "encoder" state dict (its vocabulary must be
    `vocab`, when given)."""
    ckpt = load_checkpoint(path, kind="pretrain")
    cfg = checkpoint_config(ckpt, path)
    _check_vocab(checkpoint_vocab(ckpt, path), vocab, "--init-encoder", path)
    # The encoder's shapes depend only on the vocabulary, its own config and the graph slots, not on the video
    # shape: a run at another frames/height/width may reuse it.
    mine, theirs = model.cfg, cfg
    slots = (mine.data.max_objects, mine.data.max_relationships)
    if theirs.encoder != mine.encoder or (theirs.data.max_objects, theirs.data.max_relationships) != slots:
        theirs_slots = (theirs.data.max_objects, theirs.data.max_relationships)
        raise CheckpointError(
            f"--init-encoder {path}: config mismatch: its encoder ({theirs.encoder}, graph slots "
            f"{theirs_slots}) differs from this run's {mine.name!r} ({mine.encoder}, {slots}); "
            "pretrain with the same --size")
    load_state_checked(model.encoder, ckpt["encoder"], path, "encoder")


def init_source(path: str) -> tuple[ModelConfig, dict[str, torch.Tensor], str, Any]:
    """(config, state dict, "ema" or "model", vocabulary) of the weights at `path`: a checkpoint (`last.pt`,
    `model.pt`, an sg2v `.safetensors`: its EMA weights when stored, else its raw ones) or a bundle folder
    exported with `--include-weights` (its `model.safetensors`, fp16 or fp32, cast up to fp32; its sha256 is
    checked against the manifest first)."""
    where = Path(path)
    if where.is_dir():
        source, cfg, vocab = load_bundle_model(where)
        return cfg, source.state_dict(), "model", vocab
    ckpt = load_checkpoint(where)
    cfg = checkpoint_config(ckpt, where)
    what = "ema" if ckpt.get("ema") is not None else "model"
    return cfg, ckpt[what], what, checkpoint_vocab(ckpt, where)


def load_init_weights(model: torch.nn.Module, path: str, vocab: Any = None) -> list[str]:
    """Initialise the whole SG2V from `path` (`init_source`) to fine-tune it (fresh optimizer, schedule and
    step count). The stored config must equal this run's, video shape included, or be this run's without
    layout grounding, or the teacher of this run's guidance-distilled student; returns the names of the
    tensors that keep their initialisation (the grounding layers, or the student's guidance embedding). Its
    vocabulary must be `vocab`, when given.
    """
    where = Path(path)
    cfg, state, what, theirs = init_source(path)
    _check_vocab(theirs, vocab, "--init", path)
    if cfg == model.cfg:
        load_state_checked(model, state, where, what)
        return []
    if not cfg.unet.layout_dim and without_layout(model.cfg) == cfg:
        prefixes = GROUNDING_PREFIXES  # an ungrounded model of the same shapes
    elif model.cfg.unet.guidance_embed and student_config(cfg, model.cfg.distill,
                                                          model.cfg.diffusion.default_steps) == model.cfg:
        prefixes = STUDENT_PREFIXES  # the student's teacher
    else:
        raise CheckpointError(f"--init {path}: config mismatch: it holds a {cfg.name!r} model ({cfg.data}), "
                              f"this run asks for {model.cfg.name!r} ({model.cfg.data}); pass the same "
                              "--size and video shape")
    # Everything but the new layers comes from the source; those keep their (zero-output) initialisation, so
    # the model computes what the source did until they learn.
    fresh = [k for k in model.state_dict() if k.startswith(prefixes)]
    full = {**{k: v for k, v in model.state_dict().items() if k in fresh}, **state}
    load_state_checked(model, full, where, what)
    return fresh


def train(tc: TrainConfig, progress: bool = True, model: ModelConfig | None = None) -> TrainResult:
    """Train (or resume) SG2V on shapes-world data generated on the fly or on converted data (`tc.data`);
    rank 0 writes out/. `model` replaces the config `tc` derives (Python API: e.g. `without_layout` of it);
    with `tc.data` its vocabulary sizes and frame size must be the data's."""
    tc.check()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    dist = init_distributed(tc.device, TrainError)
    try:
        with run_output(tc.out, tc.data, (tc.init, tc.init_encoder), f"sg2v-train {tc.objective}",
                        dist.is_main):
            return _train(tc, dist, progress, model)
    finally:
        dist.close()



def _train(tc: TrainConfig, dist: Dist, progress: bool, model_cfg: ModelConfig | None) -> TrainResult:
    out = Path(tc.out)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    data = tc.open_data()
    vocab = data.vocab if data is not None else shapes_vocab()
    cfg, teacher = _run_model_config(tc, dist, model_cfg, data, vocab)
    model, ema, opt = _build(tc, dist, cfg, vocab)
    resume = _resolve_resume(tc, out)
    start = _resume(tc, resume, model, ema, opt, cfg, vocab, data) if resume is not None else 0
    if dist.is_main:  # a fresh start too: records of a run killed before its first checkpoint go
        _truncate_metrics(out, start)
    net = dist.wrap(model)
    if start >= tc.steps or (tc.stop_at and start >= tc.stop_at):
        flag, end = ("--steps", tc.steps) if start >= tc.steps else ("--stop-at", tc.stop_at)
        if dist.is_main:
            print(f"nothing to train: {resume} is at step {start}, {flag} is {end}; pass a larger {flag} to "
                  "train on", file=sys.stderr)
        return TrainResult(model, ema, opt, start, [], [], out, checkpoint=resume)
    objective = ModelObjective(tc, dist, model, ema, cfg, vocab, data, teacher, out)
    heldout = data is None or bool(len(data.val))
    plan = LoopPlan(steps=tc.steps, batch=tc.batch, seed=tc.seed, log_every=tc.log_every,
                    ckpt_every=tc.ckpt_every, eval_every=tc.eval_every if heldout else 0,
                    grad_accum=tc.grad_accum, grad_clip=tc.grad_clip, bf16=dist.device.type == "cuda",
                    time_limit=tc.time_limit, stop_at=tc.stop_at)
    # The EMA update is looked up in this module at each call, so a wrapper set on it takes effect.
    averaged = Ema(ema, model, functools.partial(ema_decay_at, tc), lambda e, m, d: update_ema(e, m, d))
    harness = Harness(plan, dist, net, [p for p in model.parameters() if p.requires_grad], opt,
                      functools.partial(lr_at, tc), averaged,
                      Progress(start, tc.steps, progress and dist.is_main, tc.log_every))
    if data is not None and tc.eval_every and not len(data.val) and dist.is_main:
        print("--data: the val split is empty; no held-out evaluation runs", file=sys.stderr)
    stopped = harness.run(objective, start)
    return TrainResult(model, ema, opt, stopped, harness.losses, harness.metrics, out, checkpoint=out / LAST)


def _run_model_config(tc: TrainConfig, dist: Dist, model_cfg: ModelConfig | None, data: RunData | None,
                      vocab: Any) -> tuple[ModelConfig, torch.nn.Module | None]:
    """The run's model config, checked against the vocabulary, the data and the settings, and for the distill
    objective the frozen teacher on the device (else None)."""
    cfg = model_cfg if model_cfg is not None else tc.model_config(data)
    if (cfg.encoder.num_objs, cfg.encoder.num_preds) != (vocab.num_objs, vocab.num_preds):
        raise TrainError(f"--size {tc.size}: encoder vocabulary sizes ({cfg.encoder.num_objs}, "
                         f"{cfg.encoder.num_preds}) differ from the shapes vocabulary ({vocab.num_objs}, "
                         f"{vocab.num_preds})")
    if tc.batch % (dist.world * tc.grad_accum):
        raise TrainError(f"--batch {tc.batch} must be a multiple of world size x --grad-accum "
                         f"({dist.world} x {tc.grad_accum})")
    if tc.objective == "layout" and cfg.layout.dim <= 0:
        raise TrainError(f"--size {tc.size} has no layout network (layout.dim = 0); the layout objective "
                         "needs one")
    teacher = None
    if tc.objective == "distill":  # the student is the teacher (--init) plus a guidance input
        cfg, teacher = _teacher(tc, dist)
    shape = (cfg.data.frames, cfg.data.height, cfg.data.width)
    if data is not None and shape != (data.frames, data.height, data.width):
        what = f"--init {tc.init}" if tc.objective == "distill" else f"model config {cfg.name!r}"
        raise TrainError(f"{what}: {cfg.data} does not take the data's {data.frames} x {data.height} x "
                         f"{data.width} clips; use a model trained on this --data (Python API: build the "
                         "config with TrainConfig.model_config(data))")
    return cfg, teacher


def _teacher(tc: TrainConfig, dist: Dist) -> tuple[ModelConfig, torch.nn.Module]:
    """The student's config and its frozen teacher (--init) on the device."""
    t_cfg, t_state, t_what, _ = init_source(tc.init)
    if t_cfg.unet.guidance_embed:
        raise TrainError(f"distill: --init {tc.init} is a guidance-distilled student; distil from a "
                         "classifier-free teacher (its --init, e.g. models/demo-teacher)")
    distill = DistillConfig(float(tc.guidance_min), float(tc.guidance_max),
                            float(t_cfg.diffusion.default_guidance_rescale), int(tc.distill_grid))
    teacher = build_model(t_cfg)
    load_state_checked(teacher, t_state, tc.init, t_what)
    teacher = teacher.to(dist.device).requires_grad_(False).eval()
    return student_config(t_cfg, distill, tc.student_steps), teacher


def _build(tc: TrainConfig, dist: Dist, cfg: ModelConfig, vocab: Any
           ) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """The model (seeded, with --init / --init-encoder weights, only its trained parameters learning), its
    EMA copy and the AdamW optimizer."""
    torch.manual_seed(tc.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(dist.device)
    if tc.init:
        fresh = load_init_weights(model, tc.init, vocab)
        if fresh and dist.is_main:
            print(f"--init {tc.init}: {len(fresh)} tensors it does not have ({fresh[0]}, ...) start from "
                  "their initialisation", file=sys.stderr)
    if tc.init_encoder:
        load_init_encoder(model, tc.init_encoder, vocab)
    learn = {id(p) for p in trainable(model, tc)}
    for p in model.parameters():
        p.requires_grad_(id(p) in learn)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr, betas=(0.9, 0.99),
                            weight_decay=tc.weight_decay)
    return model, ema, opt


def _resume(tc: TrainConfig, resume: Path, model: torch.nn.Module, ema: torch.nn.Module,
            opt: torch.optim.Optimizer, cfg: ModelConfig, vocab: Any, data: RunData | None) -> int:
    """Load model, EMA, optimizer and RNG state from the checkpoint `resume` of this very run; its step."""
    ckpt = load_checkpoint(resume)
    saved = checkpoint_config(ckpt, resume)
    before = (ckpt.get("train_config") or {}).get("objective", "diffusion")
    if before != tc.objective:
        raise CheckpointError(f"{resume}: a {before} run's checkpoint, this run trains {tc.objective}; "
                              "pass --init with it and another --out (or --resume never)")
    _check_resume_data(ckpt, resume, vocab, data)  # other data also makes another config: named first
    if saved != cfg:
        raise CheckpointError(f"{resume}: config mismatch: it holds a {saved.name!r} model "
                              f"({saved.data}), this run asks for {cfg.name!r} ({cfg.data}); pass the "
                              "same --size, or --out to another folder, or --resume never")
    load_state_checked(model, ckpt["model"], resume, "model")
    if ckpt.get("ema") is not None:
        load_state_checked(ema, ckpt["ema"], resume, "ema")
    if ckpt.get("optimizer") is None:
        raise CheckpointError(f"{resume}: no optimizer state (a weights-only file); resume from last.pt")
    load_optimizer_state(opt, ckpt["optimizer"], resume)
    if isinstance(ckpt.get("rng"), dict):
        set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


class ModelObjective:
    """The diffusion, layout or distill objective of `tc` on the SG2V model: the harness's `Objective`."""

    def __init__(self, tc: TrainConfig, dist: Dist, model: torch.nn.Module, ema: torch.nn.Module,
                 cfg: ModelConfig, vocab: Any, data: RunData | None, teacher: torch.nn.Module | None,
                 out: Path):
        self.tc, self.dist, self.model, self.ema, self.cfg = tc, dist, model, ema, cfg
        self.vocab, self.data, self.teacher, self.out = vocab, data, teacher, out
        self.checkpoint = out / LAST

    def batches(self, start: int) -> Iterator[dict[str, torch.Tensor]]:
        tc, dist = self.tc, self.dist
        kind = KINDS[tc.objective]
        if self.data is not None:
            ds = ConvertedSamples(self.data.train, self.cfg, self.vocab, tc.seed, tc.batch, kind.arrays)
        else:
            ds = kind.shapes_dataset(self.cfg, self.vocab, seed=tc.seed, split="train",
                                     overlap_prob=tc.overlap_prob)  # 0 for layouts (_check_fractions)
        it = iter(make_loader(ds, tc, start, dist.world, dist.rank, pin=dist.device.type == "cuda"))
        return ({k: v.to(dist.device, non_blocking=True) for k, v in b.items()} for b in it)

    def loss(self, net: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return compute_loss(net, batch, generator, self.tc, self.teacher), {}

    def save(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        extra: dict[str, Any] = {"train_config": self.tc.to_dict()}
        if self.data is not None:
            extra["data"] = self.data.record()
        save_checkpoint(self.checkpoint, self.model, self.cfg, self.vocab, ema=self.ema, step=step,
                        optimizer=optimizer, extra=extra)

    def evaluate(self, step: int) -> tuple[dict[str, Any], str]:
        m = _periodic_eval(self.tc, self.ema, self.cfg, self.vocab, self.out, step, self.data)
        return m, f"eval step {step}: {_eval_line(m)}"

    def log(self, record: dict[str, Any]) -> None:
        _log(self.out, record)

    def diverged(self, step: int, loss: float) -> Exception:
        return diverged_error(loss, step, self.out)



def make_loader(ds: Any, tc: TrainConfig, start: int, world: int = 1, rank: int = 0,
                pin: bool = False) -> torch.utils.data.DataLoader:
    """The training DataLoader: this rank's micro-batches of steps start .. tc.steps, made by tc.workers."""
    sampler = StepBatchSampler(start, tc.steps, tc.batch, world, rank, tc.grad_accum)
    return torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, num_workers=tc.workers, collate_fn=collate, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(tc.seed), pin_memory=pin, persistent_workers=False,
        prefetch_factor=4 if tc.workers else None,
    )


def trainable(model: torch.nn.Module, tc: TrainConfig) -> list[torch.nn.Parameter]:
    """The parameters `tc` trains: the layout network (layout objective), the UNet (distill objective) or
    everything but the layout network (diffusion objective); the graph encoder too unless --freeze-encoder
    (never when distilling)."""
    kind = KINDS[tc.objective]
    core = getattr(model, "module", model)
    return [p for name, p in core.named_parameters() if kind.trains(name, tc.freeze_encoder)]


def compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                 generator: torch.Generator | None, tc: TrainConfig | None = None,
                 teacher: torch.nn.Module | None = None) -> torch.Tensor:
    """The loss of one micro-batch: the v-prediction diffusion loss (with CFG condition dropout, grounded on
    the clips' true boxes when the model is), the layout network's loss (`tc.objective` "layout"), or the
    student's consistency distillation loss against `teacher` ("distill").

    batch["video"] is (B, F, C, H, W), F = 1 for a batch of images: uint8 as the data loader ships it (mapped
    to [-1, 1] here, on the model's device), or float32 already in [-1, 1].
    """
    tc = tc or TrainConfig()
    return KINDS[tc.objective].loss(model, batch, generator, tc, teacher)


def _periodic_eval(tc: TrainConfig, ema: torch.nn.Module, cfg: ModelConfig, vocab: Any, out: Path,
                   step: int, data: RunData | None = None) -> dict[str, Any]:
    """Held-out evaluation of the EMA weights: the layout stage's relation accuracy (layout objective), or
    the oracle's scores of sampled videos, a grounded model's drawn on the true tracks (the UNet's part);
    on converted data (`evaluate_data`), the held-out loss on the val split and what else applies."""
    from sg2v.training.evaluate import evaluate, evaluate_data, evaluate_layouts

    rng_state = torch.get_rng_state()  # evaluation must not perturb the training stream
    kind = KINDS[tc.objective]
    sampler, steps = kind.sampling(tc, cfg)
    sheet = None
    if kind.samples_video:
        (out / "samples").mkdir(exist_ok=True)
        sheet = out / "samples" / f"step{step:07d}.png"
    if data is not None:
        report = evaluate_data(ema, cfg, vocab, data.val, tc.objective, n=tc.eval_samples, seed=tc.seed,
                               steps=steps, guidance=tc.eval_guidance, sampler=sampler, contact_sheet=sheet)
    elif not kind.samples_video:
        report = evaluate_layouts(ema, cfg, vocab, n=tc.eval_samples, seed=tc.seed)
    else:
        report = evaluate(ema, cfg, vocab, n=tc.eval_samples, steps=steps, guidance=tc.eval_guidance,
                          sampler=sampler, seed=tc.seed, contact_sheet=sheet,
                          true_layouts=kind.true_layouts(ema))
    torch.set_rng_state(rng_state)
    m = {"step": step, "eval": True, **report}
    _log(out, m)
    return m


def _eval_line(m: dict[str, Any]) -> str:
    if "heldout_loss" in m and m["heldout_loss"] is None:
        return f"samples of {m['heldout_n']} val graphs in samples/ (a student's loss needs its teacher)"
    if "heldout_loss" in m:
        line = f"held-out loss {_fmt(m['heldout_loss'])} on {m['heldout_n']} val samples"
        if m.get("layout_relation_accuracy") is not None:
            line += (f"; layout relations {_fmt(m['layout_relation_accuracy_first_draw'])} first draw, "
                     f"{_fmt(m['layout_relation_accuracy'])} with the check")
        return line
    if "layout_relation_accuracy" in m:
        return (f"layout relations {_fmt(m['layout_relation_accuracy_first_draw'])} first draw, "
                f"{_fmt(m['layout_relation_accuracy'])} with the check; diversity "
                f"{_fmt(m['layout_diversity'])}")
    return (f"presence {m['presence']:.3f} relation_accuracy {_fmt(m['relation_accuracy'])} shape_accuracy "
            f"{_fmt(m['shape_accuracy'])}")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def diverged_error(loss: float, step: int, out: Path) -> DivergedError:
    """The error a NaN or infinite loss stops training with, before it saves such weights."""
    return DivergedError(f"step {step}: the loss is {loss} (training diverged, or the initial weights or "
                         f"data hold NaN/inf); nothing was saved from this step, {out / LAST} keeps the "
                         "last finite weights; lower --lr or check --init and --data")


def json_record(record: dict[str, Any]) -> str:
    """One metrics line: strict JSON, a NaN or infinite number written as null (never a bare NaN)."""
    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(record), allow_nan=False)


def _log(out: Path, record: dict[str, Any]) -> None:
    # Appending one short line per record; a crash can at worst cut the last line, which readers skip.
    with open(out / METRICS, "a", encoding="utf-8") as f:
        f.write(json_record(record) + "\n")


def _truncate_metrics(out: Path, step: int) -> None:
    # Steps after the checkpoint are replayed on resume; drop their first-run records so each step logs once.
    path = out / METRICS
    if path.is_file():
        keep = [json_record(r) + "\n" for r in read_metrics(out) if int(r.get("step", 0)) <= step]
        atomic_write_text(path, "".join(keep))


def read_metrics(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of out/metrics.jsonl (a truncated last line is skipped)."""
    path = Path(out) / METRICS
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except (ValueError, RecursionError):  # a cut last line, or a hand-edited one
                continue
    return records

