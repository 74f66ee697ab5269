"""`sg2v-train`: masked contrastive pretraining, diffusion training and evaluation of SG2V models.

  sg2v-train pretrain --size tiny --out runs/pre
  sg2v-train diffusion --size tiny --steps 2000 --out runs/tiny [--init-encoder runs/pre/pretrain.pt]
  sg2v-train layout --size tiny --steps 2000 --init runs/tiny/last.pt --freeze-encoder --out runs/tiny-layout
  sg2v-train distill --size tiny --steps 1000 --init runs/tiny-layout/last.pt --out runs/tiny-student
  sg2v-train diffusion --data data/coco [data/more ...] --size small --out runs/coco   (converted data sets)
  torchrun --nproc-per-node 2 -m sg2v.cli.train diffusion ...   (DDP: gloo on CPU, nccl on CUDA)
  sg2v-train eval --ckpt runs/tiny/last.pt --steps 4 8 25 [--json table.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sg2v.config import DEVICES
from sg2v.options import add_fields, add_shared, check_shared, from_fields, run_cli

MAX_EVAL_SAMPLES = 100_000  # held-out graphs per step count


def _add_pretrain_args(p: argparse.ArgumentParser) -> None:
    from sg2v.training.pretrain import PretrainConfig

    add_fields(p, PretrainConfig)
    p.add_argument("--no-resume", dest="resume", action="store_const", const="never",
                   help="start afresh even if OUT/pretrain.pt exists (the same as --resume never)")


def _add_diffusion_args(p: argparse.ArgumentParser) -> None:
    from sg2v.training.train import TrainConfig

    add_fields(p, TrainConfig, skip=("objective",))
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint (model.pt / last.pt / .safetensors)")
    add_shared(p, "steps", nargs="+", default=[4, 8, 25], source="")  # one table row per step count
    p.add_argument("--n", type=int, default=32, help="held-out graphs sampled per step count")
    add_shared(p, "guidance", source="the checkpoint's config")
    add_shared(p, "sampler", source="the checkpoint's config")
    add_shared(p, "seed", what="the held-out graph stream and the noise")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--device", default="auto", help=f"where to run the model: {DEVICES}")
    p.add_argument("--json", default=None, help="also write the table as JSON to this path")
    p.add_argument("--contact-sheet", default=None, help="write a contact sheet PNG of the last step count")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="sg2v-train", description=__doc__.splitlines()[0],
                                     formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{pretrain,diffusion,layout,distill,eval}")
    what = "masked contrastive pretraining of the graph encoder (SGDiff)"
    _add_pretrain_args(sub.add_parser("pretrain", formatter_class=fmt, help=what, description=what))
    _add_diffusion_args(sub.add_parser("diffusion", formatter_class=fmt,
                                       help="train the diffusion model (resumes OUT/last.pt)",
                                       description="Train the SG2V diffusion model on the shapes world or "
                                       "on converted data sets (--data)"))
    _add_diffusion_args(sub.add_parser("layout", formatter_class=fmt,
                                       help="train the layout network (resumes OUT/last.pt)",
                                       description="Train the layout network of a grounded SG2V on the "
                                       "shapes world's scenes or on converted data sets' boxes (--data) "
                                       "(--init: the model whose other parts to keep)"))
    _add_diffusion_args(sub.add_parser("distill", formatter_class=fmt,
                                       help="distil a few-step, guidance-conditioned student (resumes)",
                                       description="Consistency-distil the guided teacher given with "
                                       "--init into a student that takes the guidance weight as an input and "
                                       "samples in 1-4 DDIM steps"))
    _add_eval_args(sub.add_parser("eval", formatter_class=fmt, help="oracle scores at several sampler steps",
                                  description="Sample held-out graphs and score the videos with the oracle"))
    return parser


def _run_pretrain(args: argparse.Namespace) -> int:
    from sg2v.training.pretrain import PretrainConfig, pretrain

    pretrain(from_fields(PretrainConfig, args))
    return 0


def _run_diffusion(args: argparse.Namespace) -> int:
    from sg2v.training.train import TrainConfig, train

    tc = from_fields(TrainConfig, args, objective=args.command)
    res = train(tc, progress=not args.no_progress)
    import torch.distributed as td

    if not (td.is_available() and td.is_initialized()) or td.get_rank() == 0:
        print(f"step {res.step}: checkpoint {res.checkpoint}")
    return 0


def _check_eval_args(args: argparse.Namespace) -> None:
    """TrainError (exit 2) naming the flag unless the eval options can work, before the model is loaded."""
    from sg2v.errors import shown
    from sg2v.training.train import TrainError

    if not 1 <= args.n <= MAX_EVAL_SAMPLES:
        raise TrainError(f"--n {shown(args.n)}: must be an integer in [1, {MAX_EVAL_SAMPLES}]")
    check_shared(args, TrainError, ("seed", "guidance", "steps"))
    _check_eval_outputs(args)


def _check_eval_outputs(args: argparse.Namespace) -> None:
    """--json and --contact-sheet through `sg2v.safety.check_outputs`: never the checkpoint (nor the folder
    of a bundle read), replaced only when an earlier eval table / sg2v sheet (no --force here)."""
    from sg2v.safety import Output, OutputError, check_outputs, inputs, is_marked_json
    from sg2v.training.train import TrainError
    from sg2v.video import VideoError, image_format, is_sg2v_output

    outputs = []
    if args.json:
        outputs.append(Output("--json", Path(args.json), ours=is_marked_json))
    if args.contact_sheet:
        try:
            image_format(args.contact_sheet)
        except VideoError as e:
            raise TrainError(f"--contact-sheet {e}") from None
        outputs.append(Output("--contact-sheet", Path(args.contact_sheet),
                              ours=lambda p: is_sg2v_output(p, "image")))
    try:
        check_outputs(outputs, inputs((args.ckpt, "the --ckpt checkpoint", Path(args.ckpt).is_dir())),
                      force_flag=None)
    except OutputError as e:
        raise TrainError(str(e)) from None


def _run_eval(args: argparse.Namespace) -> int:
    _check_eval_args(args)
    import torch

    from sg2v.io import atomic_write_text
    from sg2v.safety import JSON_MARK
    from sg2v.training.checkpoint import load_model
    from sg2v.training.evaluate import evaluate, format_table
    from sg2v.training.train import TrainError, json_record
    from sg2v.vocab import shapes_vocab

    def json_record_text(table: dict) -> str:
        return json.dumps(json.loads(json_record(table)), indent=1) + "\n"

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    model, cfg, vocab = load_model(args.ckpt, ema=not args.no_ema, device=device)
    if vocab != shapes_vocab():
        raise TrainError(f"--ckpt {args.ckpt}: a model of another vocabulary ({len(vocab.object_names)} "
                         "object names: trained with --data); the shapes oracle scores shapes-world models "
                         "only, the held-out loss on the val split is in its run's metrics.jsonl")
    guidance = cfg.diffusion.default_guidance if args.guidance is None else args.guidance
    sampler = cfg.diffusion.default_sampler if args.sampler is None else args.sampler
    rows = []
    for i, steps in enumerate(args.steps):
        sheet = args.contact_sheet if i == len(args.steps) - 1 else None
        rows.append(evaluate(model, cfg, vocab, n=args.n, steps=steps, guidance=guidance, sampler=sampler,
                             seed=args.seed, contact_sheet=sheet))
    print(format_table(rows))
    if args.json:
        table = {JSON_MARK: "sg2v-train eval", "ckpt": str(args.ckpt), "rows": rows}
        atomic_write_text(args.json, json_record_text(table))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sg2v-train`; errors become one line on stderr and an exit status (`run_cli`)."""
    from sg2v.safety import safe_stdio

    safe_stdio()  # before argparse prints a path in its usage error
    args = build_parser().parse_args(argv)
    run = {"pretrain": _run_pretrain, "diffusion": _run_diffusion, "layout": _run_diffusion,
           "distill": _run_diffusion, "eval": _run_eval}[args.command]
    return run_cli(f"sg2v-train {args.command}", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
