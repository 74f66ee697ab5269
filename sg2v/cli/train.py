"""`sg2v-train`: masked contrastive pretraining, diffusion training and evaluation of SG2V models.

  sg2v-train pretrain --size tiny --out-dir runs/pre
  sg2v-train diffusion --size tiny --steps 2000 --out runs/tiny [--init-encoder runs/pre/pretrain.pt]
  torchrun --nproc-per-node 2 -m sg2v.cli.train diffusion ...   (DDP: gloo on CPU, nccl on CUDA)
  sg2v-train eval --ckpt runs/tiny/last.pt --steps 4 8 25 [--json table.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from sg2v.config import MODEL_SIZES

_HELP = {
    "size": "model size (a key of sg2v.config.MODEL_SIZES)",
    "steps": "optimizer steps in total; a resumed run continues up to this",
    "batch": "global batch: samples per optimizer step over all processes",
    "grad_accum": "micro-batches accumulated per process per step",
    "lr": "AdamW peak learning rate",
    "weight_decay": "AdamW weight decay",
    "warmup": "linear learning-rate warmup steps (then cosine decay)",
    "lr_min_ratio": "final learning rate as a fraction of --lr",
    "ema_decay": "EMA decay of the weights used for evaluation and export",
    "grad_clip": "max global gradient norm (0: off)",
    "seed": "seed of the initial weights, the data stream and the diffusion noise",
    "eval_every": "steps between oracle evaluations, plus one at the end (0: off)",
    "eval_samples": "held-out graphs sampled per evaluation",
    "eval_steps": "sampler steps at evaluation",
    "eval_sampler": "sampler at evaluation",
    "eval_guidance": "classifier-free guidance scale at evaluation",
    "ckpt_every": "steps between checkpoints OUT/last.pt, plus one at the end",
    "log_every": "steps between loss lines in OUT/metrics.jsonl",
    "out": "output folder: last.pt, metrics.jsonl, samples/",
    "workers": "DataLoader worker processes generating shapes-world samples",
    "init_encoder": "pretrain.pt from `sg2v-train pretrain` to initialise the graph encoder",
    "init": ("weights to fine-tune from, with a fresh optimizer and schedule: a checkpoint (its EMA weights) "
             "or a bundle folder exported with --include-weights"),
    "resume": "'auto' (OUT/last.pt when present), 'never', or a checkpoint path",
    "device": "auto, cpu or cuda",
    "threads": "torch CPU threads of the training process (0: torch's default)",
    "time_limit": ("seconds of training after which to save OUT/last.pt and stop with exit 0; the same "
                   "command resumes (0: no limit)"),
    "stop_at": ("save OUT/last.pt and stop after this step while the learning-rate schedule still spans "
                "--steps (0: run to --steps); the same command without it goes on"),
    "frames": "frames per video (default: the size's)",
    "height": "frame height (default: the size's)",
    "width": "frame width (default: the size's)",
}


def _add_diffusion_args(p: argparse.ArgumentParser) -> None:
    from sg2v.sampling import SAMPLERS
    from sg2v.train import TrainConfig

    d = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        default = getattr(d, f.name)
        kw: dict = {"default": default, "help": _HELP[f.name]}
        if f.name == "size":
            kw["choices"] = sorted(MODEL_SIZES)
        elif f.name == "eval_sampler":
            kw["choices"] = sorted(SAMPLERS)
        elif f.name == "device":
            kw["choices"] = ["auto", "cpu", "cuda"]
        elif default is None:
            kw["type"] = str if f.name in ("init_encoder", "init") else int
        else:
            kw["type"] = type(default)
        p.add_argument(flag, **kw)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    from sg2v.sampling import SAMPLERS

    p.add_argument("--ckpt", required=True, help="checkpoint (model.pt / last.pt / .safetensors)")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 25], help="sampler step counts to compare")
    p.add_argument("--n", type=int, default=32, help="held-out graphs sampled per step count")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the checkpoint's config)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None,
                   help="sampler (default: the checkpoint's config)")
    p.add_argument("--seed", type=int, default=0, help="held-out graph stream and noise seed")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to run the model")
    p.add_argument("--json", default=None, help="also write the table as JSON to this path")
    p.add_argument("--contact-sheet", default=None, help="write a contact sheet PNG of the last step count")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="sg2v-train", description=__doc__.splitlines()[0],
                                     formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{pretrain,diffusion,eval}")
    from sg2v.pretrain import add_pretrain_args

    what = "masked contrastive pretraining of the graph encoder (SGDiff)"
    add_pretrain_args(sub.add_parser("pretrain", formatter_class=fmt, help=what, description=what))
    _add_diffusion_args(sub.add_parser("diffusion", formatter_class=fmt,
                                       help="train the diffusion model (resumes OUT/last.pt)",
                                       description="Train the SG2V diffusion model on the shapes world"))
    _add_eval_args(sub.add_parser("eval", formatter_class=fmt, help="oracle scores at several sampler steps",
                                  description="Sample held-out graphs and score the videos with the oracle"))
    return parser


def _run_diffusion(args: argparse.Namespace) -> int:
    from sg2v.train import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    tc = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    res = train(tc, progress=not args.no_progress)
    import torch.distributed as td

    if not (td.is_available() and td.is_initialized()) or td.get_rank() == 0:
        print(f"step {res.step}: checkpoint {Path(tc.out) / 'last.pt'}")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    import torch

    from sg2v.checkpoint import load_model
    from sg2v.evaluate import evaluate, format_table
    from sg2v.io import atomic_write_text

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    model, cfg, vocab = load_model(args.ckpt, ema=not args.no_ema, device=device)
    guidance = cfg.diffusion.default_guidance if args.guidance is None else args.guidance
    sampler = cfg.diffusion.default_sampler if args.sampler is None else args.sampler
    rows = []
    for i, steps in enumerate(args.steps):
        sheet = args.contact_sheet if i == len(args.steps) - 1 else None
        rows.append(evaluate(model, cfg, vocab, n=args.n, steps=steps, guidance=guidance, sampler=sampler,
                             seed=args.seed, contact_sheet=sheet))
    print(format_table(rows))
    if args.json:
        atomic_write_text(args.json, json.dumps({"ckpt": str(args.ckpt), "rows": rows}, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sg2v-train`; sg2v errors become one line on stderr and the error's exit code."""
    from sg2v.errors import Sg2vError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            from sg2v.pretrain import run_from_args

            return run_from_args(args)
        if args.command == "diffusion":
            return _run_diffusion(args)
        return _run_eval(args)
    except Sg2vError as e:
        print(f"sg2v-train {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"sg2v-train {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
