"""Where diffusion training time goes: the data loader alone, the optimizer step alone, and both together.

    python -P bench/train_throughput.py --size small --batch 256 --workers 13 --device cuda --json t.json
    python -P bench/train_throughput.py --size tiny --batch 4 --workers 1 --device cpu --steps 3  # smoke

Three figures, each in samples/s, medians after warm-up:
  loader  the DataLoader of `sg2v-train diffusion` (same dataset, collate, pinning, prefetch) iterated with
          nothing else running: what the shapes-world generation and the worker IPC can feed;
  step    one training step (forward + backward under bf16 autocast on CUDA, gradient clipping, AdamW, EMA)
          on a batch already on the device, timed with CUDA events on a GPU: what the model can eat;
  loop    both together, as `sg2v-train` runs them.
`loop` close to `loader` and under `step` says the data is the limit; close to `step`, the model. The loader
is also timed shipping float32 video (`loader (float32 video)`), the transport `sg2v-train` used before it
switched to uint8, for the ratio in the same run. Prints a table and writes every number to --json. Measures,
never trains anything kept.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from sg2v.config import MODEL_SIZES
from sg2v.training.data import ShapesVideoDataset, video_to_model
from sg2v.training.train import TrainConfig, compute_loss, make_loader, update_ema
from sg2v.vocab import shapes_vocab


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", default="small", choices=sorted(MODEL_SIZES))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=13)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--steps", type=int, default=20, help="timed steps per figure")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each figure")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


class _FloatVideo(ShapesVideoDataset):
    """The dataset as it shipped video before: float32 in [-1, 1] (4 bytes a value instead of 1)."""

    def __getitem__(self, index: int):
        item = super().__getitem__(index)
        item["video"] = video_to_model(item["video"].transpose(0, 2, 3, 1))
        return item


def _loader(tc: TrainConfig, cfg, vocab, device: torch.device, float_video: bool = False):
    ds = (_FloatVideo if float_video else ShapesVideoDataset)(cfg, vocab, seed=tc.seed, split="train")
    return make_loader(ds, tc, 0, pin=device.type == "cuda")  # exactly sg2v-train's loader


class _Clock:
    """Seconds of a region: CUDA events on a GPU (after the region's work is queued), else the host clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.b.record()
            self.b.synchronize()
            return self.a.elapsed_time(self.b) / 1e3
        return time.perf_counter() - self.t


def _train_step(model, ema, opt, batch, gen, device: torch.device, tc: TrainConfig) -> None:
    """What one step of `sg2v-train diffusion` does on the device (no gradient accumulation, no DDP)."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = compute_loss(model, batch, gen)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    update_ema(ema, model, tc.ema_decay)


def _time_loader(tc, cfg, vocab, device, args, float_video: bool) -> tuple[float, dict]:
    """Median seconds per batch of the loader alone (moved to the device), and its last batch."""
    total = args.warmup + args.steps
    times, it = [], iter(_loader(tc, cfg, vocab, device, float_video))
    for i in range(total):
        t = time.perf_counter()
        batch = next(it)
        if device.type == "cuda":
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    del it
    return statistics.median(times), batch


def _time_step(tc, cfg, device, args, batch) -> tuple:
    """Median seconds of one training step on one resident batch; the model, EMA and optimizer it trained."""
    from sg2v.models.sg2v import build_model

    total = args.warmup + args.steps
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    ema = build_model(cfg).to(device).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01)
    batch = {k: v.to(device) for k, v in batch.items()}
    clock, times = _Clock(device), []
    for i in range(total):
        gen = torch.Generator(device=device).manual_seed(i)
        clock.start()
        _train_step(model, ema, opt, batch, gen, device, tc)
        dt = clock.stop()
        if i >= args.warmup:
            times.append(dt)
    return statistics.median(times), model, ema, opt


def _time_loop(tc, cfg, vocab, device, args, model, ema, opt) -> float:
    """Median seconds per step of loader and step together, as sg2v-train runs them."""
    total = args.warmup + args.steps
    times, it = [], iter(_loader(tc, cfg, vocab, device))
    for i in range(total):
        t = time.perf_counter()
        b = {k: v.to(device, non_blocking=True) for k, v in next(it).items()}
        gen = torch.Generator(device=device).manual_seed(i)
        _train_step(model, ema, opt, b, gen, device, tc)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    del it
    return statistics.median(times)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_throughput: --device cuda but PyTorch sees no CUDA device; pass --device cpu",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    total = args.warmup + args.steps
    tc = TrainConfig(size=args.size, steps=total, batch=args.batch, workers=args.workers, seed=0)
    cfg, vocab = tc.model_config(), shapes_vocab()
    res: dict = {"size": args.size, "batch": args.batch, "workers": args.workers, "device": str(device),
                 "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                 "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup}

    # 1. the loader alone (host clock: it is host work), as shipped (uint8) and with float32 video
    res["loader_f32_s_per_batch"], _ = _time_loader(tc, cfg, vocab, device, args, float_video=True)
    res["loader_s_per_batch"], batch = _time_loader(tc, cfg, vocab, device, args, float_video=False)

    # 2. the step alone, on one resident batch
    res["step_s"], model, ema, opt = _time_step(tc, cfg, device, args, batch)
    if device.type == "cuda":
        res["step_cuda_peak_bytes"] = torch.cuda.max_memory_allocated()

    # 3. both, as sg2v-train runs them (host clock over whole steps, after a device sync)
    res["loop_s_per_step"] = _time_loop(tc, cfg, vocab, device, args, model, ema, opt)
    for k in ("loader_s_per_batch", "loader_f32_s_per_batch", "step_s", "loop_s_per_step"):
        res[k.split("_s_")[0].removesuffix("_s") + "_samples_per_s"] = args.batch / res[k]
    limit = "data" if res["loader_samples_per_s"] < res["step_samples_per_s"] else "model step"
    res["limit"] = limit

    where = res["gpu"] or "CPU"
    print(f"{args.size}, batch {args.batch}, {args.workers} workers, {where}, torch {torch.__version__}")
    print("| figure | s per batch | samples/s |\n|---|---|---|")
    for name, key in (("loader alone", "loader_s_per_batch"),
                      ("loader (float32 video)", "loader_f32_s_per_batch"), ("step alone", "step_s"),
                      ("loop (both)", "loop_s_per_step")):
        print(f"| {name} | {res[key]:.4f} | {args.batch / res[key]:.0f} |")
    print(f"slower of the two alone: {limit}")
    if args.json:
        from sg2v.safety import write_json_report

        write_json_report(args.json, "train_throughput", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
