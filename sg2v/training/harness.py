"""The one training loop every objective runs in (`sg2v.training.train`'s diffusion, layout and distill,
`sg2v.training.pretrain`'s masked contrastive pretraining).

The `Harness` owns what is the same for all of them: the process's device and its place in a DDP run, the
optimizer's learning-rate schedule, gradient accumulation, bf16 autocast, gradient clipping, the EMA of the
weights, per-micro-batch seeding, the loss window that is logged, the NaN stop, when to checkpoint and
evaluate, and the stop rules (--steps, --stop-at, --time-limit). An `Objective` supplies what differs: its
micro-batches, its loss, its evaluation, its log record and its checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sg2v.errors import ConfigError
from sg2v.training.backend import torch_device


def run_output(out: str, data: Sequence[str] | None, weights: Sequence[str | None], what: str,
               main: bool = True) -> contextlib.AbstractContextManager:
    """The run folder `out` checked, locked and marked for this process (`sg2v.safety.run_folder`); never
    a --data folder or the folder holding a weights file read (the others are not written); nothing on
    other ranks."""
    from sg2v.safety import inputs, run_folder

    if not main:
        return contextlib.nullcontext()
    reads = inputs(*[(d, "a --data folder", True) for d in data or ()],
                   *[(w, "a weights file read", Path(w).is_dir()) for w in weights if w])
    return run_folder(Path(out), reads, what)


def cosine_lr(lr: float, warmup: int, steps: int, lr_min_ratio: float, step: int) -> float:
    """Linear warmup then cosine decay (Loshchilov & Hutter 2017) to lr_min_ratio * lr at the last step."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (lr_min_ratio + (1.0 - lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def step_seed(seed: int, step: int, micro: int) -> int:
    """The torch seed for micro-batch `micro` of step `step` (independent streams via SeedSequence)."""
    return int(np.random.SeedSequence([seed, step, micro]).generate_state(1, np.uint64)[0] % (2**63 - 1))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers copied.

    One multi-tensor lerp (a few fused kernels on CUDA instead of one launch per parameter tensor, 597 for
    `small`); on the CPU it is the same per-tensor `lerp_` as before, bit for bit.
    """
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


@dataclass
class Ema:
    """The exponential moving average of `model`'s weights: `module`, its decay at each step, the update."""

    module: torch.nn.Module
    model: torch.nn.Module
    decay_at: Callable[[int], float]
    update: Callable[[torch.nn.Module, torch.nn.Module, float], None] = update_ema

    def step(self, step: int) -> None:
        self.update(self.module, self.model, self.decay_at(step))


@dataclass
class Dist:
    """This process's place in a (possibly single-process) distributed run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Leave the process group this process joined (nothing otherwise)."""
        if self.initialized_here:
            import torch.distributed as td

            td.destroy_process_group()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` behind DistributedDataParallel in a run of several processes, else `model`."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """`value` averaged over the processes, in place."""
        if self.world > 1:
            import torch.distributed as td

            td.all_reduce(value)
            value /= self.world
        return value

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank."""
        if self.world == 1:
            return flag
        import torch.distributed as td

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        td.broadcast(t, src=0)
        return bool(t.item())


def init_distributed(device: str = "auto", error: type[Exception] = ValueError) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); else one process.
    A device that cannot be had raises `error` with the one-line reason."""
    try:
        dev = torch_device(device)
    except ConfigError as e:
        raise error(str(e)) from None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = dev.type == "cuda"
    if want_cuda:
        if world > 1:
            dev = torch.device("cuda", local_rank)  # one GPU per process under torchrun
        torch.cuda.set_device(dev)
    if world == 1:
        return Dist(0, 1, 0, dev)
    import torch.distributed as td

    here = False
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if want_cuda else "gloo")
        here = True
    return Dist(td.get_rank(), td.get_world_size(), local_rank, dev, here)


class Progress:
    """tqdm bar when installed and enabled, else a plain line every `log_every` steps."""

    def __init__(self, start: int, total: int, enabled: bool, log_every: int):
        self.enabled, self.log_every = enabled, log_every
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                                file=sys.stderr)
            except ImportError:
                self.bar = None

    def update(self, step: int, fields: dict[str, str]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)
            self.bar.update(1)
        elif step % self.log_every == 0:
            text = " ".join(f"{k}={v}" for k, v in fields.items())
            print(f"step {step} {text}", file=sys.stderr, flush=True)

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Lines:
    """A progress report of lines only: `write` goes to `log`, step updates show nothing."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def update(self, step: int, fields: dict[str, str]) -> None:
        pass

    def write(self, text: str) -> None:
        self.log(text)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class LoopPlan:
    """When the loop does what. Steps count optimizer steps; `batch` is the global samples per step."""

    steps: int
    batch: int
    seed: int
    log_every: int
    ckpt_every: int
    eval_every: int = 0  # 0: no periodic evaluation
    eval_final: bool = True  # evaluate after the last step too
    grad_accum: int = 1
    grad_clip: float = 0.0  # 0: off
    reseed: bool = True  # reseed torch per micro-batch with step_seed and hand the loss a generator
    bf16: bool = False  # autocast to bf16 (CUDA)
    check_every_step: bool = False  # the NaN stop on every step's loss (else at log and checkpoint steps)
    time_limit: float = 0.0
    stop_at: int = 0


class Objective(Protocol):
    """What one kind of training supplies to the `Harness`."""

    checkpoint: Path  # where `save` writes

    def batches(self, start: int) -> Iterator[Any]:
        """This process's micro-batches, on its device, from step `start` on."""

    def loss(self, net: torch.nn.Module, batch: Any, generator: torch.Generator | None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The micro-batch's loss and named parts to log (`net`: the trained model, DDP-wrapped)."""

    def save(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Write the checkpoint after `step` steps."""

    def evaluate(self, step: int) -> tuple[dict[str, Any] | None, str] | None:
        """Held-out evaluation after `step` steps: (metrics, line to show), or None when none runs."""

    def log(self, record: dict[str, Any]) -> None:
        """Keep one log record (step, loss, lr, samples_per_s, grad_norm, the parts' window means)."""

    def diverged(self, step: int, loss: float) -> Exception:
        """The error a NaN or infinite loss at `step` stops with."""


class Harness:
    """The training loop: runs an `Objective` from a step to the plan's end or a stop rule."""

    def __init__(self, plan: LoopPlan, dist: Dist, net: torch.nn.Module, params: list[torch.nn.Parameter],
                 optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float], ema: Ema | None = None,
                 progress: Progress | Lines | None = None):
        self.plan, self.dist, self.net, self.params = plan, dist, net, params
        self.optimizer, self.lr_at, self.ema = optimizer, lr_at, ema
        self.progress = progress or Lines(lambda line: None)
        self.losses: list[float] = []  # the logged window means
        self.metrics: list[dict[str, Any]] = []  # the evaluations' records
        self._last_step: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None
        self._window_reset()

    def run(self, objective: Objective, start: int) -> int:
        """Train steps start .. plan.steps (or to a stop rule); returns the step reached."""
        batches = objective.batches(start)
        self._t_start = self._t_last = time.perf_counter()
        done = start
        try:
            for step in range(start, self.plan.steps):
                stop = self._step(objective, batches, step)
                done = step + 1
                if stop:
                    break
        finally:
            self.progress.close()
            del batches
        return done

    def _step(self, objective: Objective, batches: Iterator[Any], step: int) -> str | None:
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        step_loss, parts = self._gradients(objective, batches, step)
        clip = self.plan.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip) if clip else None
        self.optimizer.step()
        if self.ema is not None:
            self.ema.step(step)
        self._last_step = (step_loss, parts)
        return self._after(objective, step + 1, lr, step_loss, parts, grad_norm)

    def _gradients(self, objective: Objective, batches: Iterator[Any], step: int
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Accumulate the step's micro-batches' gradients; the step's mean loss and last parts."""
        plan, dist = self.plan, self.dist
        step_loss = torch.zeros((), device=dist.device)
        parts: dict[str, torch.Tensor] = {}
        for a in range(plan.grad_accum):
            batch = next(batches)
            gen = None
            if plan.reseed:
                seed = step_seed(plan.seed, step, dist.rank * plan.grad_accum + a)
                torch.manual_seed(seed)  # dropout layers, if a config enables them
                gen = torch.Generator(device=dist.device).manual_seed(seed)  # t, noise, condition dropout
            sync = contextlib.nullcontext()
            if dist.world > 1 and a < plan.grad_accum - 1:
                sync = self.net.no_sync()
            with sync:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=plan.bf16):
                    loss, parts = objective.loss(self.net, batch, gen)
                (loss / plan.grad_accum).backward()
            step_loss += loss.detach().float() / plan.grad_accum
        return step_loss, {k: v.detach().float() for k, v in parts.items()}

    def _after(self, objective: Objective, done: int, lr: float, step_loss: torch.Tensor,
               parts: dict[str, torch.Tensor], grad_norm: torch.Tensor | None) -> str | None:
        """Log, NaN stop, checkpoint, evaluate and stop rules after step `done`; the stop rule that fired."""
        plan, main = self.plan, self.dist.is_main
        if plan.check_every_step:
            self._check(objective, float(step_loss), done)
        self._loss_acc += step_loss
        for k, v in parts.items():
            self._parts[k] = self._parts.get(k, 0.0) + v
        self._n += 1
        if done % plan.log_every == 0 or done == plan.steps:
            self._log(objective, done, lr, grad_norm)
        else:
            self.progress.update(done, {})
        stop = self._stop_reason(done)
        if main and (done % plan.ckpt_every == 0 or done == plan.steps or stop):
            self._check(objective, float(step_loss), done)  # never a checkpoint of diverged weights
            objective.save(done, self.optimizer)
        if main and self._eval_due(done):
            self._evaluate(objective, done)
        if stop:
            self._stopped(objective, done, stop)
        return stop

    def _log(self, objective: Objective, done: int, lr: float, grad_norm: torch.Tensor | None) -> None:
        mean_loss = float(self.dist.mean(self._loss_acc)) / self._n
        self._check(objective, mean_loss, done)
        now = time.perf_counter()
        rate = self._n * self.plan.batch / max(now - self._t_last, 1e-9)
        self.losses.append(mean_loss)
        if self.dist.is_main:
            parts = {k: float(v) / self._n for k, v in self._parts.items()}
            objective.log({"step": done, "loss": mean_loss, "lr": lr, "samples_per_s": rate,
                           "grad_norm": float(grad_norm) if grad_norm is not None else None, **parts})
        self.progress.update(done, {"loss": f"{mean_loss:.4f}", "samples/s": f"{rate:.1f}"})
        self._t_last = now
        self._window_reset()

    def _window_reset(self) -> None:
        self._loss_acc = torch.zeros((), device=self.dist.device)
        self._parts: dict[str, Any] = {}
        self._n = 0

    def _check(self, objective: Objective, loss: float, done: int) -> None:
        if not math.isfinite(loss):
            raise objective.diverged(done, loss)

    def _eval_due(self, done: int) -> bool:
        every, steps = self.plan.eval_every, self.plan.steps
        due = bool(every) and (done % every == 0 or done == steps)
        return due and (self.plan.eval_final or done != steps)

    def _evaluate(self, objective: Objective, done: int) -> None:
        result = objective.evaluate(done)
        if result is not None:
            metrics, line = result
            if metrics is not None:
                self.metrics.append(metrics)
            self.progress.write(line)

    def _stop_reason(self, done: int) -> str | None:
        """"stop_at" or "time_limit" when the run should checkpoint and stop after step `done` short of
        plan.steps, else None. Under DDP rank 0's clock decides the time limit, so all ranks stop together."""
        plan = self.plan
        if done >= plan.steps:
            return None
        if done == plan.stop_at:
            return "stop_at"
        if not plan.time_limit:
            return None
        over = self.dist.agree(time.perf_counter() - self._t_start >= plan.time_limit)
        return "time_limit" if over else None

    def _stopped(self, objective: Objective, done: int, stop: str) -> None:
        if not self.dist.is_main:
            return
        record: dict[str, Any] = {"step": done, "stopped": stop}
        where = objective.checkpoint
        if stop == "time_limit":
            record.update(time_limit_s=self.plan.time_limit,
                          elapsed_s=round(time.perf_counter() - self._t_start, 1))
            self.progress.write(f"--time-limit {self.plan.time_limit:g} s reached at step {done}; saved "
                                f"{where}; run the same command again to resume")
        else:
            self.progress.write(f"--stop-at {done} reached; saved {where}; run again without --stop-at (or "
                                "with a later one) to go on")
        objective.log(record)

    def last_values(self) -> dict[str, float]:
        """The last step's loss and parts as numbers ({} before any step)."""
        if self._last_step is None:
            return {}
        loss, parts = self._last_step
        return {"loss": float(loss), **{k: float(v) for k, v in parts.items()}}
