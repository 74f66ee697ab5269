"""Masked contrastive pretraining: losses vs float64 references, masking, learning, checkpoints and resume."""

from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from sg2v.config import DataConfig, model_config
from sg2v.errors import CheckpointError
from sg2v.models.video_encoder import ConvVideoEncoder, FrozenVideoEncoder
from sg2v.training.losses import info_nce, mask_video, pretrain_losses, region_pool
from sg2v.training.pretrain import (
    PretrainConfig,
    PretrainError,
    ShapesBatches,
    build_pretrain_models,
    evaluate_retrieval,
    load_pretrain_checkpoint,
    load_pretrained,
    pretrain,
    recall_at_k,
)

MODEL = model_config("tiny")
# Narrow widths keep every test to a second or two on two shared cores.
CFG = PretrainConfig(size="tiny", batch=6, video_channels=8, feature_dim=16, attn_heads=2, lr=2e-3,
                     log_every=1000, ckpt_every=1000, eval_samples=6)


def _quiet(_line: str) -> None:
    pass


def test_info_nce_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    scale = torch.tensor(8.3)
    an = [x / math.sqrt(sum(float(v) ** 2 for v in x)) for x in a.double()]
    bn = [x / math.sqrt(sum(float(v) ** 2 for v in x)) for x in b.double()]
    s = [[float(scale) * float(torch.dot(an[i], bn[j])) for j in range(7)] for i in range(7)]
    rows = [-(s[i][i] - math.log(sum(math.exp(v) for v in s[i]))) for i in range(7)]
    cols = [-(s[j][j] - math.log(sum(math.exp(s[i][j]) for i in range(7)))) for j in range(7)]
    ref = 0.5 * (sum(rows) / 7 + sum(cols) / 7)
    assert abs(float(info_nce(a, b, scale)) - ref) < 1e-5
    # aligned pairs at a high scale give a near-zero loss; shuffled pairs do not
    assert float(info_nce(a, a, torch.tensor(100.0))) < 1e-3
    assert float(info_nce(a, a[torch.randperm(7, generator=g)], torch.tensor(100.0))) > 1.0


def test_region_pool_matches_loop_reference():
    g = torch.Generator().manual_seed(1)
    fmap = torch.randn(3, 2, 4, 4, 4, generator=g)  # (B, F, C, h, w)
    region = (torch.rand(3, 2, 16, 16, generator=g) > 0.8).float()  # (B, F, H, W)
    region[2] = 0.0  # an empty region pools to nothing, with weight 0
    feats, total = region_pool(fmap, region)
    for b in range(3):
        num = torch.zeros(4, dtype=torch.float64)
        den = 0.0
        for f in range(2):
            for y in range(4):
                for x in range(4):
                    cover = float(region[b, f, 4 * y:4 * y + 4, 4 * x:4 * x + 4].double().mean())
                    num += cover * fmap[b, f, :, y, x].double()
                    den += cover
        assert abs(float(total[b]) - den) < 1e-5
        want = num / den if den > 0 else num
        torch.testing.assert_close(feats[b].double(), want, rtol=1e-5, atol=1e-6)


def test_mask_video_blackens_only_the_region():
    g = torch.Generator().manual_seed(2)
    video = torch.rand(2, 3, 3, 8, 8, generator=g) * 2 - 1
    region = (torch.rand(2, 3, 8, 8, generator=g) > 0.7).float()
    out = mask_video(video, region)
    inside = region.bool().unsqueeze(2).expand_as(video)
    assert torch.all(out[inside] == -1.0)
    assert torch.equal(out[~inside], video[~inside])


def test_batches_mask_one_real_object_with_its_own_pixels():
    source = ShapesBatches(MODEL.data, seed=3)
    batch = source.batch(0, 8)
    samples = source.samples(0, 8)
    d = MODEL.data
    assert batch.video.shape == (8, d.frames, 3, d.height, d.width)
    assert batch.video.min() >= -1 and batch.video.max() <= 1
    for i, s in enumerate(samples):
        k = int(batch.masked_slot[i])
        assert 0 <= k < len(s.graph["objects"])  # a user object, never `__image__` or padding
        assert batch.obj_mask[i, k] == 1
        np.testing.assert_array_equal(batch.region[i].numpy(), s.masks[k].astype(np.float32))
        masked = mask_video(batch.video[i:i + 1], batch.region[i:i + 1])[0]
        assert torch.all(masked.permute(0, 2, 3, 1)[s.masks[k]] == -1)  # the object is gone, all frames
    assert torch.equal(source.batch(0, 8).video, batch.video)  # batch `step` depends on (seed, step) only
    assert not torch.equal(source.batch(1, 8).video, batch.video)


def test_masked_loss_target_is_stop_gradient():
    """With only the masked loss, no gradient reaches the clean video's masked pixels: the masked copy has
    them blackened, and the target drawn from the clean video is detached."""
    torch.manual_seed(4)
    encoder, video, heads = build_pretrain_models(MODEL, CFG)
    batch = ShapesBatches(MODEL.data, seed=4).batch(0, 4)
    batch.video.requires_grad_(True)
    losses = pretrain_losses(encoder, video, heads, batch, contrastive_weight=0.0, masked_weight=1.0)
    losses["loss"].backward()
    inside = batch.region.bool().unsqueeze(2).expand_as(batch.video)
    assert torch.all(batch.video.grad[inside] == 0)
    assert batch.video.grad[~inside].abs().sum() > 0
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_losses_finite_and_decreasing():
    torch.manual_seed(5)
    encoder, video, heads = build_pretrain_models(MODEL, CFG)
    params = [*encoder.parameters(), *video.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3)
    batch = ShapesBatches(MODEL.data, seed=5).batch(0, 8)
    history = []
    for _ in range(25):  # fit one fixed batch: both losses must fall
        losses = pretrain_losses(encoder, video, heads, batch, 1.0, 1.0)
        assert all(torch.isfinite(v) for v in losses.values())
        history.append({k: float(v.detach()) for k, v in losses.items()})
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert history[-1]["contrastive"] < 0.7 * history[0]["contrastive"]
    assert history[-1]["masked"] < 0.7 * history[0]["masked"]


def test_recall_at_k_against_loop_reference():
    g = torch.Generator().manual_seed(6)
    sim = torch.randn(20, 20, generator=g)
    sim[3, 7] = sim[3, 3]  # a tie counts against the query
    out = recall_at_k(sim, (1, 5))
    for k in (1, 5):
        hits = sum(1 for i in range(20) if sum(1 for j in range(20) if j != i and sim[i, j] >= sim[i, i]) < k)
        assert out[f"R@{k}"] == pytest.approx(hits / 20)
    assert recall_at_k(torch.eye(10) + 0.01 * torch.rand(10, 10, generator=g))["R@1"] == 1.0


def test_evaluate_retrieval_restores_modes():
    encoder, video, _ = build_pretrain_models(MODEL, CFG)
    encoder.train()
    video.train()
    r = evaluate_retrieval(encoder, video, MODEL.data, n=8, batch_size=3)
    assert set(r) == {"R@1", "R@5", "R@1_same_graph", "n"} and r["n"] == 8 and 0 <= r["R@1"] <= r["R@5"] <= 1
    assert r["R@1"] <= r["R@1_same_graph"] <= 1
    assert encoder.training and video.training
    with pytest.raises(PretrainError, match="at least 5"):
        evaluate_retrieval(encoder, video, MODEL.data, n=4)


def _params(path):
    encoder, video, heads, _, _ = load_pretrained(path)
    return {**{f"e.{k}": v for k, v in encoder.state_dict().items()},
            **{f"v.{k}": v for k, v in video.state_dict().items()},
            **{f"h.{k}": v for k, v in heads.state_dict().items()}}


def test_checkpoint_round_trip_and_resume(tmp_path):
    cfg4 = dataclasses.replace(CFG, steps=4)
    whole = pretrain(dataclasses.replace(cfg4, out=str(tmp_path / "whole")), log=_quiet)
    assert whole["step"] == 4
    ckpt = torch.load(tmp_path / "whole" / "pretrain.pt", weights_only=True)
    assert ckpt["sg2v_format"] == 1 and ckpt["kind"] == "pretrain" and ckpt["step"] == 4
    assert ckpt["config"] == MODEL.to_dict()
    assert ckpt["pretrain_config"] == dataclasses.replace(cfg4, out=str(tmp_path / "whole")).to_dict()
    assert ckpt["optimizer"]["state"]
    encoder, _, _, model, cfg = load_pretrained(tmp_path / "whole" / "pretrain.pt")
    assert model == MODEL and cfg == dataclasses.replace(cfg4, out=str(tmp_path / "whole"))
    fresh = build_pretrain_models(MODEL, CFG)[0]
    assert set(fresh.state_dict()) == set(ckpt["encoder"])  # diffusion loads this into SG2V.encoder

    # interrupted after 2 steps, resumed to 4: the same weights as the uninterrupted run
    lines: list[str] = []
    split = str(tmp_path / "split")
    pretrain(dataclasses.replace(CFG, steps=2, out=split), log=_quiet)
    pretrain(dataclasses.replace(cfg4, out=split), log=lines.append)
    assert any("resumed" in line and "step 2" in line for line in lines)
    a, b = _params(tmp_path / "whole" / "pretrain.pt"), _params(tmp_path / "split" / "pretrain.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_resume_rejects_other_model_and_bad_files(tmp_path):
    pretrain(dataclasses.replace(CFG, steps=1, out=str(tmp_path)), log=_quiet)
    other = MODEL.replace(encoder=dataclasses.replace(MODEL.encoder, num_layers=1))
    with pytest.raises(CheckpointError, match="another model config"):
        pretrain(dataclasses.replace(CFG, steps=2, out=str(tmp_path)), model=other, log=_quiet)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pretrain_checkpoint(bad)
    torch.save({"sg2v_format": 1, "kind": "diffusion"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a pretraining checkpoint"):
        load_pretrain_checkpoint(tmp_path / "other.pt")
    torch.save({"sg2v_format": 1, "kind": "pretrain", "obj": argparse.Namespace()}, tmp_path / "pickle.pt")
    with pytest.raises(CheckpointError, match="code-bearing Python objects .*Namespace.*will not load"):
        load_pretrain_checkpoint(tmp_path / "pickle.pt")


class _External(nn.Module):
    """A stand-in external encoder: any module with encode(video) -> (global, feature map)."""

    global_dim = 12
    feature_dim = 5

    def __init__(self, data: DataConfig):
        super().__init__()
        self.inner = ConvVideoEncoder(data, self.global_dim, channels=4, feature_dim=self.feature_dim)

    def encode(self, video):
        return self.inner.encode(video)


def test_frozen_external_encoder():
    torch.manual_seed(7)
    external = _External(MODEL.data)
    before = {k: v.clone() for k, v in external.state_dict().items()}
    encoder, video, heads = build_pretrain_models(MODEL, CFG, external=external)
    assert isinstance(video, FrozenVideoEncoder)
    assert set(video.state_dict()) == {"global_proj.weight", "global_proj.bias", "feature_proj.weight",
                                       "feature_proj.bias"}
    batch = ShapesBatches(MODEL.data, seed=7).batch(0, 4)
    params = [p for m in (encoder, video, heads) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = pretrain_losses(encoder, video, heads, batch, 1.0, 1.0)
    losses["loss"].backward()
    opt.step()
    assert all(p.grad is None for p in external.parameters())
    for k, v in external.state_dict().items():
        assert torch.equal(v, before[k])
    assert video.global_proj.weight.grad is not None


def test_cli_args_and_run(tmp_path):
    """`sg2v-train pretrain`: one flag per PretrainConfig field with its default, the older flag names as
    aliases, and a run that writes the checkpoint with the options given."""
    from sg2v.cli.train import build_parser, main

    parser = build_parser()
    args = parser.parse_args(["pretrain"])
    for f in dataclasses.fields(PretrainConfig):
        assert getattr(args, f.name) == getattr(PretrainConfig(), f.name)
    argv = ["pretrain", "--out-dir", str(tmp_path), "--steps", "1", "--batch-size", "4", "--video-channels",
            "8", "--feature-dim", "16", "--attn-heads", "2", "--eval-samples", "5", "--masked-weight", "0.5"]
    args = parser.parse_args(argv)
    assert args.masked_weight == 0.5 and args.batch == 4 and args.out == str(tmp_path)
    assert parser.parse_args(["pretrain", "--no-resume"]).resume == "never"
    assert main(argv) == 0
    ckpt = load_pretrain_checkpoint(tmp_path / "pretrain.pt")
    assert ckpt["pretrain_config"]["masked_weight"] == 0.5 and ckpt["step"] == 1
    assert ckpt["pretrain_config"]["batch"] == 4
    assert main(["pretrain", "--out", str(tmp_path / "x"), "--batch", "1"]) == 2


def test_older_pretrain_configs_load_with_today_s_names():
    old = {**PretrainConfig().to_dict(), "batch_size": 8}
    del old["batch"], old["out"], old["resume"]
    assert PretrainConfig.from_dict(old).batch == 8
    with pytest.raises(PretrainError, match="unknown key"):
        PretrainConfig.from_dict({"batch_sise": 8})
