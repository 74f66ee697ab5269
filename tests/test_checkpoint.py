"""Checkpoint format: round trips (torch, safetensors), weights_only loading, every CheckpointError case."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sg2v.config import ModelConfig, model_config
from sg2v.errors import CheckpointError
from sg2v.models.sg2v import build_model
from sg2v.training.checkpoint import (
    SG2V_FORMAT,
    build_checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from sg2v.vocab import shapes_vocab


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1234)
    cfg = model_config("tiny")
    model = build_model(cfg)
    ema = build_model(cfg)  # differently initialised, so model vs ema choice is visible
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # no parameter left at its (possibly zero) init
        for p in ema.parameters():
            p.copy_(torch.randn_like(p))
    return cfg, model, ema


def _adamw_with_state(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = sum((p.float() ** 2).sum() for p in model.parameters())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def _same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_round_trip_pt(tmp_path, tiny):
    cfg, model, ema = tiny
    vocab = shapes_vocab()
    opt = _adamw_with_state(model)
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, vocab, ema=ema, step=17, optimizer=opt,
                           extra={"train_config": {"lr": 0.5, "size": "tiny"}})
    # Plain weights_only load works on the raw file: no sg2v classes are pickled.
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["sg2v_format"] == SG2V_FORMAT
    ck = load_checkpoint(path)
    assert ck["step"] == 17 and ck["train_config"] == {"lr": 0.5, "size": "tiny"}
    assert ModelConfig.from_dict(ck["config"]) == cfg
    assert ck["vocab"] == vocab.to_dict()
    _same_state(ck["model"], model.state_dict())
    _same_state(ck["ema"], ema.state_dict())
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(ck["optimizer"])
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert set(s1) == set(s2) and all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)
    assert isinstance(ck["rng"]["torch"], torch.Tensor)
    # No temporary files are left beside the target.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_load_model_picks_ema_or_raw_and_reproduces_outputs(tmp_path, tiny, suffix):
    cfg, model, ema = tiny
    path = save_checkpoint(tmp_path / f"m{suffix}", model, cfg, shapes_vocab(), ema=ema, step=3)
    m_ema, cfg2, vocab2 = load_model(path)
    m_raw, _, _ = load_model(path, ema=False)
    assert cfg2 == cfg and vocab2 == shapes_vocab()
    _same_state(m_ema.state_dict(), ema.state_dict())
    _same_state(m_raw.state_dict(), model.state_dict())
    assert not m_ema.training
    # The rebuilt network computes what the original does on fresh random inputs.
    d = cfg.data
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, d.frames, d.channels, d.height, d.width, generator=g)
    t = torch.rand(2, generator=g) * 999
    ctx = torch.randn(2, d.context_tokens, cfg.encoder.context_dim, generator=g)
    mask = torch.ones(2, d.context_tokens)
    mask[1, 3:] = 0
    objects = torch.randn(2, d.padded_objects, cfg.encoder.embed_dim, generator=g)
    lo = torch.rand(2, d.padded_objects, d.frames, 2, generator=g) * 0.5
    boxes = torch.cat([lo, lo + 0.1 + 0.4 * torch.rand(lo.shape, generator=g)], dim=-1)  # valid boxes
    ema.eval()
    with torch.no_grad():
        torch.testing.assert_close(m_ema.unet(x, t, ctx, mask, objects, boxes),
                                   ema.unet(x, t, ctx, mask, objects, boxes), rtol=0, atol=0)
        tracks = torch.randn(2, d.padded_objects, d.frames, 4, generator=g)
        track_mask = torch.ones(2, d.padded_objects)
        triples = torch.zeros(2, d.padded_triples, 3, dtype=torch.long)
        args = (tracks, t, objects, track_mask, ctx, mask, triples, tracks.tanh(), track_mask)
        torch.testing.assert_close(m_ema.layout_net(*args), ema.layout_net(*args), rtol=0, atol=0)


def test_safetensors_without_ema_and_metadata(tmp_path, tiny):
    cfg, model, _ = tiny
    path = save_checkpoint(tmp_path / "w.safetensors", model, cfg, shapes_vocab(), step=9)
    ck = load_checkpoint(path)
    assert ck["ema"] is None and ck["optimizer"] is None and ck["step"] == 9
    _same_state(ck["model"], model.state_dict())
    m, _, _ = load_model(path)  # no EMA stored: falls back to the raw weights
    _same_state(m.state_dict(), model.state_dict())


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("cut", [0, 10, 0.5, 0.9])
def test_truncated_file(tmp_path, tiny, cut):
    cfg, model, _ = tiny
    good = save_checkpoint(tmp_path / "m.pt", model, cfg, shapes_vocab())
    data = good.read_bytes()
    n = cut if isinstance(cut, int) else int(len(data) * cut)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)


def test_truncated_safetensors(tmp_path, tiny):
    cfg, model, _ = tiny
    good = save_checkpoint(tmp_path / "m.safetensors", model, cfg, shapes_vocab())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)


def test_garbage_bytes(tmp_path):
    bad = tmp_path / "bad.pt"
    rng = np.random.default_rng(0)
    for _ in range(5):
        bad.write_bytes(rng.bytes(4096))
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            load_checkpoint(bad)


def test_not_an_sg2v_checkpoint(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.randn(3)}}, p)
    with pytest.raises(CheckpointError, match="not an sg2v checkpoint"):
        load_checkpoint(p)
    p2 = tmp_path / "tensor.pt"
    torch.save(torch.randn(4), p2)
    with pytest.raises(CheckpointError, match="not an sg2v checkpoint"):
        load_checkpoint(p2)
    from safetensors.torch import save_file

    p3 = tmp_path / "other.safetensors"
    save_file({"w": torch.randn(3)}, str(p3))
    with pytest.raises(CheckpointError, match="not an sg2v checkpoint"):
        load_checkpoint(p3)


def test_pickled_objects_are_refused(tmp_path, tiny):
    cfg, model, _ = tiny
    ck = build_checkpoint(model, cfg, shapes_vocab())
    ck["config"] = cfg  # a dataclass instance: not loadable with weights_only=True
    p = tmp_path / "pickled.pt"
    torch.save(ck, p)
    with pytest.raises(CheckpointError, match="code-bearing Python objects .*ModelConfig.*will not load"):
        load_checkpoint(p)


class _Payload:
    """Unpickling this calls os.mkdir(marker): a stand-in for code a crafted checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def malicious_checkpoints(tmp_path) -> tuple[dict[str, Path], Path]:
    """The same code-bearing checkpoint dict as raw pickles (protocols 0, 2, 4, 5), torch's legacy format
    and torch's zip format; and the folder that loading any of them would create."""
    marker = tmp_path / "payload_ran"
    ckpt = {"sg2v_format": SG2V_FORMAT, "config": {}, "vocab": {}, "model": {"w": _Payload(marker)}}
    files = {}
    for proto in (0, 2, 4, 5):
        files[f"pickle{proto}"] = tmp_path / f"raw{proto}.pkl"
        files[f"pickle{proto}"].write_bytes(pickle.dumps(ckpt, protocol=proto))
    files["legacy"] = tmp_path / "legacy.pt"
    torch.save(ckpt, files["legacy"], _use_new_zipfile_serialization=False)
    files["zip"] = tmp_path / "zip.pt"
    torch.save(ckpt, files["zip"])
    return files, marker


def _never_points_at_the_unsafe_switch(text: str) -> None:
    assert "weights_only" not in text and "will likely succeed" not in text, text
    assert "\n" not in text, text


def test_code_bearing_pickles_are_named_and_never_loaded(malicious_checkpoints):
    files, marker = malicious_checkpoints
    for form, path in files.items():
        for kind in ("model", "pretrain"):
            with pytest.raises(CheckpointError) as e:
                load_checkpoint(path, kind=kind)
            text = str(e.value)
            _never_points_at_the_unsafe_switch(text)
            assert "holds code-bearing Python objects" in text and "mkdir" in text, (form, text)
            assert "will not load it" in text, (form, text)
    assert not marker.exists()


def test_data_only_pickles_torch_cannot_read_are_not_called_unsafe(tmp_path):
    """A protocol-4 pickle of plain data, random bytes: corrupt (or unreadable), never "code-bearing", and
    torch's advice to switch weights_only off is not passed on."""
    p = tmp_path / "plain4.pkl"
    p.write_bytes(pickle.dumps({"sg2v_format": SG2V_FORMAT, "a": [1, 2.5, "x"]}, protocol=4))
    with pytest.raises(CheckpointError, match="corrupt or truncated") as e:
        load_checkpoint(p)
    _never_points_at_the_unsafe_switch(str(e.value))
    assert "code-bearing" not in str(e.value)
    rng = np.random.default_rng(7)
    for _ in range(5):
        p.write_bytes(b"\x80\x02" + rng.bytes(512))  # a pickle header, then garbage
        with pytest.raises(CheckpointError, match="corrupt or truncated") as e:
            load_checkpoint(p)
        _never_points_at_the_unsafe_switch(str(e.value))


def test_newer_format(tmp_path, tiny):
    cfg, model, _ = tiny
    ck = build_checkpoint(model, cfg, shapes_vocab())
    ck["sg2v_format"] = SG2V_FORMAT + 1
    p = tmp_path / "new.pt"
    torch.save(ck, p)
    with pytest.raises(CheckpointError, match="newer sg2v.*upgrade"):
        load_checkpoint(p)


def test_newer_format_safetensors(tmp_path, tiny):
    from safetensors.torch import save_file

    cfg, model, _ = tiny
    p = tmp_path / "new.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(p),
              metadata={"sg2v_format": str(SG2V_FORMAT + 1), "config": json.dumps(cfg.to_dict()),
                        "vocab": json.dumps(shapes_vocab().to_dict()), "step": "0"})
    with pytest.raises(CheckpointError, match="newer sg2v"):
        load_checkpoint(p)


def test_config_mismatch_weights(tmp_path, tiny):
    """A checkpoint whose weights were trained for another config than the one it records."""
    cfg, model, _ = tiny
    small = model_config("small")
    ck = build_checkpoint(model, cfg, shapes_vocab())
    ck["config"] = small.to_dict()
    p = tmp_path / "mismatch.pt"
    buf = io.BytesIO()
    torch.save(ck, buf)
    p.write_bytes(buf.getvalue())
    load_checkpoint(p)  # the file itself is well-formed
    with pytest.raises(CheckpointError, match="config mismatch"):
        load_model(p)


def test_config_unknown_key(tmp_path, tiny):
    cfg, model, _ = tiny
    ck = build_checkpoint(model, cfg, shapes_vocab())
    ck["config"]["unet"]["flux_capacitor"] = 3
    p = tmp_path / "unknown.pt"
    torch.save(ck, p)
    with pytest.raises(CheckpointError, match="config mismatch"):
        load_model(p)


def test_unwritable_target(tmp_path, tiny):
    cfg, model, _ = tiny
    with pytest.raises(CheckpointError, match="cannot write"):
        save_checkpoint(tmp_path / "missing_dir" / "m.pt", model, cfg, shapes_vocab())


def test_atomic_overwrite_keeps_old_file_on_failure(tmp_path, tiny, monkeypatch):
    cfg, model, _ = tiny
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, shapes_vocab(), step=1)
    before = Path(path).read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, cfg, shapes_vocab(), step=2)
    assert Path(path).read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
