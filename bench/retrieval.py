"""Graph -> video retrieval (R@1, R@5 among n held-out shapes-world pairs): pretrained vs untrained encoders.

    python bench/retrieval.py --size tiny --steps 600 --out-dir runs/pretrain-bench
    python bench/retrieval.py --ckpt runs/pretrain-bench/pretrain.pt     # evaluate an existing checkpoint

The untrained baseline is the same architecture at random initialisation (seeded); chance is 1/n for R@1 and
5/n for R@5. Pretraining resumes from OUT_DIR/pretrain.pt when present. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from sg2v.config import MODEL_SIZES
from sg2v.training.pretrain import (
    PretrainConfig,
    build_pretrain_models,
    evaluate_retrieval,
    load_pretrained,
    pretrain,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(MODEL_SIZES), default="tiny",
                   help="model size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=600, help="pretraining steps (default: %(default)s)")
    p.add_argument("--batch", "--batch-size", type=int, default=32,
                   help="pairs per step (default: %(default)s)")
    p.add_argument("--masked-weight", type=float, default=PretrainConfig.masked_weight,
                   help="masked-loss weight (default: %(default)s)")
    p.add_argument("--n", type=int, default=100, help="held-out candidates (default: %(default)s)")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="held-out streams to average over (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads, 0: torch's default (default: %(default)s)")
    p.add_argument("--out", "--out-dir", dest="out_dir", default="runs/pretrain-bench",
                   help="checkpoint folder (default: %(default)s)")
    p.add_argument("--ckpt", default=None,
                   help="evaluate this pretrain.pt instead of training (default: none)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    if args.ckpt:
        encoder, video, _, model, cfg = load_pretrained(args.ckpt)
        steps = None
    else:
        cfg = PretrainConfig(size=args.size, steps=args.steps, batch=args.batch, seed=args.seed,
                             masked_weight=args.masked_weight, eval_samples=args.n, log_every=100,
                             ckpt_every=100, device="cpu", threads=args.threads, out=args.out_dir)
        out = pretrain(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
        encoder, video, _, model, cfg = load_pretrained(out["checkpoint"])
        steps = out["step"]
    train_s = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    rand_encoder, rand_video, _ = build_pretrain_models(model, cfg)  # same architecture, random init

    def score(enc, vid):
        runs = [evaluate_retrieval(enc, vid, model.data, n=args.n, seed=s, video_frames=cfg.video_frames)
                for s in args.eval_seeds]
        keys = ("R@1", "R@5", "R@1_same_graph")
        return {**{k: sum(r[k] for r in runs) / len(runs) for k in keys},
                "per_seed": [{k: r[k] for k in keys} for r in runs]}

    result = {
        "size": model.name, "steps": steps, "pretrain_config": dataclasses.asdict(cfg),
        "n": args.n, "eval_seeds": args.eval_seeds, "chance": {"R@1": 1 / args.n, "R@5": 5 / args.n},
        "untrained": score(rand_encoder, rand_video), "pretrained": score(encoder, video),
        "train_seconds": round(train_s, 1), "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
