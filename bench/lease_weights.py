"""Carry a checkpoint's EMA weights back from a GPU lease whose returned files are capped (16 MiB each).

    python bench/lease_weights.py split runs/gpu/last.pt $OUT --max-mib 15   # on the GPU machine
    python bench/lease_weights.py join parts/ema_part*.safetensors runs/gpu/ema.safetensors   # here

`split` writes the EMA weights (float32, exactly as trained) of an sg2v checkpoint as numbered sg2v
`.safetensors` parts, each under --max-mib, with the config, vocabulary, step, part index and the sha256 of
the whole set in their metadata. `join` checks that the parts are one complete set and writes one sg2v
`.safetensors` checkpoint holding them as its EMA weights (no raw weights, no optimizer state) that
`sg2v-export --ckpt`, `sg2v-train eval --ckpt` and `sg2v-train diffusion --init` read.

"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from sg2v.io import atomic_write_bytes
from sg2v.training.checkpoint import SG2V_FORMAT, load_checkpoint


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def split(ckpt_path: str, out_dir: str, max_mib: float) -> list[Path]:
    from safetensors.torch import save as st_save

    ckpt = load_checkpoint(ckpt_path)
    state = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    limit = int(max_mib * 2**20) - 2**20  # leave room for the header
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(state):
        n = state[k].numel() * state[k].element_size()
        if n > limit:
            raise SystemExit(f"split: tensor {k} alone is {n / 2**20:.1f} MiB, over --max-mib {max_mib}")
        if size + n > limit:
            parts.append({})
            size = 0
        parts[-1][k] = state[k]
        size += n
    digest = _digest(state)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, part in enumerate(parts):
        meta = {"sg2v_format": str(SG2V_FORMAT), "config": json.dumps(ckpt["config"]),
                "vocab": json.dumps(ckpt["vocab"]), "step": str(ckpt["step"]), "part": str(i),
                "parts": str(len(parts)), "set_sha256": digest}
        path = out / f"ema_part{i}.safetensors"
        atomic_write_bytes(path, st_save({f"model.{k}": v for k, v in part.items()}, metadata=meta))
        written.append(path)
    print(f"split: {len(state)} tensors of {ckpt_path} (step {ckpt['step']}) into {len(parts)} part(s) "
          f"under {out}; set sha256 {digest[:16]}")
    return written


def join(part_paths: list[str], out_path: str) -> Path:
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from sg2v.training.checkpoint import _safetensors_metadata

    metas, state = [], {}
    for p in part_paths:
        data = Path(p).read_bytes()
        metas.append(_safetensors_metadata(data))
        state.update({k[len("model."):]: v for k, v in st_load(data).items()})
    first = metas[0]
    if sorted(int(m["part"]) for m in metas) != list(range(int(first["parts"]))):
        got = [m["part"] for m in metas]
        raise SystemExit(f"join: parts {got} are not a complete set of {first['parts']}")
    if any(m["set_sha256"] != first["set_sha256"] for m in metas):
        raise SystemExit("join: the parts come from different checkpoints (set_sha256 differs)")
    if _digest(state) != first["set_sha256"]:
        raise SystemExit("join: the joined weights do not match the recorded sha256; the parts are damaged")
    meta = {k: first[k] for k in ("sg2v_format", "config", "vocab", "step")}
    # Stored as "ema" (what they are), so exports record ema=True and --no-ema fails loudly.
    atomic_write_bytes(Path(out_path), st_save({f"ema.{k}": v for k, v in state.items()}, metadata=meta))
    print(f"join: {len(state)} tensors (step {first['step']}) -> {out_path}")
    return Path(out_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="checkpoint -> EMA weight parts")
    s.add_argument("ckpt")
    s.add_argument("out_dir")
    s.add_argument("--max-mib", type=float, default=15.0)
    j = sub.add_parser("join", help="parts -> one .safetensors checkpoint")
    j.add_argument("parts", nargs="+")
    j.add_argument("out")
    a = ap.parse_args(argv)
    if a.cmd == "split":
        split(a.ckpt, a.out_dir, a.max_mib)
    else:
        join(a.parts, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
