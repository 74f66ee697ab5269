"""bench/lease_weights.py: EMA weights split into capped parts on a GPU lease, joined back here exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sg2v.config import model_config
from sg2v.models.sg2v import build_model
from sg2v.training.checkpoint import load_checkpoint, save_checkpoint
from sg2v.vocab import shapes_vocab

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("lease_weights", REPO / "bench" / "lease_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ckpt(path: Path, seed: int) -> dict:
    cfg = model_config("tiny")
    torch.manual_seed(seed)
    model, ema = build_model(cfg), build_model(cfg)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(torch.randn_like(p))  # EMA differs from the raw weights: the parts must carry the EMA
    save_checkpoint(path, model, cfg, shapes_vocab(), ema=ema, step=37)
    return load_checkpoint(path)


def test_split_join_roundtrip_is_exact_and_refuses_incomplete_or_mixed_sets(tmp_path):
    lw = _module()
    a = _ckpt(tmp_path / "a.pt", 0)
    size = sum(v.numel() * v.element_size() for v in a["ema"].values())
    cap = (size / 2**20) / 2 + 1.5  # forces at least two parts (1 MiB of each part is header room)
    parts = lw.split(str(tmp_path / "a.pt"), str(tmp_path / "parts_a"), cap)
    assert len(parts) >= 2
    assert all(p.stat().st_size <= cap * 2**20 for p in parts)
    joined = lw.join([str(p) for p in parts], str(tmp_path / "a.safetensors"))
    b = load_checkpoint(joined)
    assert b["step"] == 37 and b["config"] == a["config"] and b["vocab"] == a["vocab"]
    assert b["ema"].keys() == a["ema"].keys()
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    with pytest.raises(SystemExit, match="not a complete set"):
        lw.join([str(p) for p in parts[:-1]], str(tmp_path / "x.safetensors"))
    _ckpt(tmp_path / "c.pt", 1)
    other = lw.split(str(tmp_path / "c.pt"), str(tmp_path / "parts_c"), cap)
    with pytest.raises(SystemExit, match="different checkpoints"):
        lw.join([str(parts[0])] + [str(p) for p in other[1:]], str(tmp_path / "x.safetensors"))
    assert not (tmp_path / "x.safetensors").exists()
