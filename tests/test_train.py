"""Training loop: learning on a fixed batch, data addressing, resume-after-SIGKILL determinism, evaluation."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sg2v.config import model_config
from sg2v.errors import Sg2vError
from sg2v.models.sg2v import build_model
from sg2v.training.checkpoint import load_checkpoint
from sg2v.training.data import ShapesVideoDataset, StepBatchSampler, collate, micro_batch_indices
from sg2v.training.pretrain import PretrainConfig, PretrainError
from sg2v.training.train import (
    TrainConfig,
    TrainError,
    compute_loss,
    lr_at,
    read_metrics,
    step_seed,
    update_ema,
)
from sg2v.vocab import shapes_vocab

REPO = Path(__file__).resolve().parents[1]


def test_loss_decreases_on_a_fixed_batch():
    """A few dozen AdamW steps on one batch with fixed noise/timesteps must fit it (loss halves)."""
    torch.manual_seed(0)
    cfg = model_config("tiny")
    ds = ShapesVideoDataset(cfg, shapes_vocab(), seed=3)
    batch = collate([ds[i] for i in range(2)])
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def loss_now():
        return compute_loss(model, batch, torch.Generator().manual_seed(11))  # same t, noise, dropout

    with torch.no_grad():
        first = float(loss_now())
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        loss_now().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    with torch.no_grad():
        last = float(loss_now())
    assert np.isfinite(first) and last < 0.5 * first, (first, last)


def test_uint8_batches_give_the_same_loss_as_float_ones():
    """The loader ships video as uint8; the loss maps it to [-1, 1] exactly as the float path does."""
    from sg2v.training.data import video_to_model

    cfg = model_config("tiny")
    ds = ShapesVideoDataset(cfg, shapes_vocab(), seed=8)
    batch = collate([ds[i] for i in range(3)])
    as_float = dict(batch, video=torch.from_numpy(np.stack([video_to_model(ds.shapes[i].video)
                                                             for i in range(3)])))
    assert batch["video"].dtype == torch.uint8 and as_float["video"].dtype == torch.float32
    torch.manual_seed(0)
    model = build_model(cfg)
    a = compute_loss(model, batch, torch.Generator().manual_seed(2))
    b = compute_loss(model, as_float, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_batches_partition_each_step_over_ranks_and_micro_batches():
    steps, batch = 3, 8
    for world, accum in ((1, 1), (2, 1), (2, 2), (1, 4)):
        per_rank = [list(StepBatchSampler(0, steps, batch, world, r, accum)) for r in range(world)]
        for s in range(steps):
            got = sorted(i for r in range(world) for mb in per_rank[r][s * accum:(s + 1) * accum] for i in mb)
            assert got == list(range(s * batch, (s + 1) * batch))
    # Resuming at step 2 yields exactly the tail of the full run.
    assert list(StepBatchSampler(2, 5, 4, 2, 1, 1)) == list(StepBatchSampler(0, 5, 4, 2, 1, 1))[2:]
    assert micro_batch_indices(3, 1, 8, 4) == [28, 29, 30, 31]
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(0, 1, 6, 4, 0, 1)


def test_worker_generated_batches_equal_inline_ones():
    """Data made in DataLoader worker processes is the same as made inline: it depends on indices only."""
    cfg = model_config("tiny")
    ds = ShapesVideoDataset(cfg, shapes_vocab(), seed=5)

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_sampler=StepBatchSampler(1, 3, 4, 1, 0, 1),
                                             num_workers=workers, collate_fn=collate)
        return list(loader)

    inline, worker = batches(0), batches(1)
    assert len(inline) == len(worker) == 2
    for a, b in zip(inline, worker):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    v = inline[0]["video"]
    assert v.shape == (4, cfg.data.frames, 3, cfg.data.height, cfg.data.width) and v.dtype == torch.uint8
    assert int(v.min()) == 0 and int(v.max()) > 127  # black background, bright objects
    assert not torch.equal(inline[0]["video"], inline[1]["video"])


def test_schedules_and_seeds():
    tc = TrainConfig(steps=100, warmup=10, lr=1e-3, lr_min_ratio=0.1)
    assert lr_at(tc, 0) == pytest.approx(1e-4)
    assert lr_at(tc, 9) == pytest.approx(1e-3)
    assert lr_at(tc, 10) == pytest.approx(1e-3)
    assert lr_at(tc, 100) == pytest.approx(1e-4)
    lrs = [lr_at(tc, s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    seeds = {step_seed(0, s, m) for s in range(50) for m in range(4)}
    assert len(seeds) == 200


def test_ema_update_matches_formula():
    torch.manual_seed(1)
    a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    before = [p.detach().clone() for p in a.parameters()]
    update_ema(a, b, 0.9)
    for pa, p0, pb in zip(a.parameters(), before, b.parameters()):
        torch.testing.assert_close(pa, 0.9 * p0 + 0.1 * pb)
        assert torch.equal(pa, p0.lerp(pb, 1.0 - 0.9))  # the multi-tensor lerp is the per-tensor one exactly


def test_bad_settings_name_the_option():
    with pytest.raises(TrainError, match="--batch"):
        TrainConfig(batch=0).check()
    with pytest.raises(TrainError, match="--ema-decay"):
        TrainConfig(ema_decay=1.0).check()


def _float_options(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if "help" in f.metadata and str(f.type) == "float"]


@pytest.mark.parametrize("cls", [TrainConfig, PretrainConfig], ids=["train", "pretrain"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_option_must_be_finite(cls, value):
    """NaN passes every `<`/`>` range check, so each float option is checked for finiteness by its type
    (a NaN --grad-clip used to train on and write an all-NaN checkpoint)."""
    names = _float_options(cls)
    assert {"lr", "grad_clip"} <= set(names)
    check = "check" if cls is TrainConfig else "validate"
    for name in names:
        with pytest.raises(Sg2vError, match=f"--{name.replace('_', '-')} {value}: must be a finite number"):
            getattr(cls(**{name: value}), check)()


@pytest.mark.parametrize("changes, why", [
    ({"seed": -1}, r"--seed must be an integer in \[0, 9223372036854775807\], got -1"),
    ({"seed": 10**5000}, r"--seed -<an integer|--seed <an integer of 16610 bits>: out of range"),
    ({"frames": -1}, r"--frames -1: must be an integer in \[1, 1024\]"),
    ({"frames": 100_000}, r"--frames 100000: must be an integer in \[1, 1024\]"),
    ({"width": 8192, "height": 8192, "frames": 64}, r"12884901888 values per video, more than the 268435456"),
    ({"threads": 10**6}, r"--threads 1000000: must be an integer in \[0, \d+\], at most 4 per usable CPU"),
    ({"max_objects": 10**6}, r"--max-objects 1000000: must be an integer in \[1, 1024\]"),
    ({"max_relationships": 10**7}, r"--max-relationships 10000000: must be an integer in \[0, 4096\]"),
    ({"threads": -1}, r"--threads must be an integer >= 0, got -1"),
    ({"lr_min_ratio": 5.0}, r"--lr-min-ratio must be in \[0, 1\]"),
    ({"weight_decay": -1.0}, r"--weight-decay must be >= 0"),
    ({"eval_guidance": -2.0}, r"--eval-guidance must be >= 0"),
    ({"grad_clip": -1.0}, r"--grad-clip must be >= 0"),
])
def test_absurd_numbers_are_refused_before_anything_is_built(changes, why):
    with pytest.raises(TrainError, match=why) as e:
        TrainConfig(**changes).check()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("changes, why", [
    ({"seed": -5}, r"--seed must be an integer in \[0,"),
    ({"threads": 10**6}, r"--threads 1000000: must be an integer in \[0, \d+\]"),
    ({"init_temperature": 0.0}, r"--init-temperature must be"),
    ({"max_logit_scale": -1.0}, r"--max-logit-scale must be > 0"),
    ({"log_every": 0}, r"--log-every must be >= 1"),
    ({"grad_clip": -1.0}, r"--grad-clip must be >= 0"),
])
def test_absurd_pretraining_numbers_are_refused(changes, why):
    with pytest.raises(PretrainError, match=why):
        PretrainConfig(**changes).validate()


_CHILD = textwrap.dedent("""
    import os, signal, sys
    import sg2v.training.train as T

    out, kill_at = sys.argv[1], int(sys.argv[2])
    if kill_at:
        real = T.update_ema
        calls = [0]

        def update_ema(*a, **k):
            calls[0] += 1
            if calls[0] == kill_at:  # mid-step, after the last checkpoint: work since then is lost
                os.kill(os.getpid(), signal.SIGKILL)
            real(*a, **k)

        T.update_ema = update_ema
    T.train(T.TrainConfig(steps=7, batch=2, lr=3e-3, warmup=2, ckpt_every=2, eval_every=0, log_every=1,
                          workers=0, threads=1, seed=4, out=out), progress=False)
""")


def _run_child(out: Path, kill_at: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(out), str(kill_at)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_sigkill_is_bit_exact(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    p_straight, p_killed = _run_child(straight, 0), _run_child(killed, 6)
    out_k, err_k = p_killed.communicate(timeout=300)
    assert p_killed.returncode == -signal.SIGKILL, err_k
    interrupted = load_checkpoint(killed / "last.pt")
    assert interrupted["step"] == 4  # steps 5 and (part of) 6 were lost with the kill
    p_resume = _run_child(killed, 0)
    out_r, err_r = p_resume.communicate(timeout=300)
    assert p_resume.returncode == 0, err_r
    out_s, err_s = p_straight.communicate(timeout=300)
    assert p_straight.returncode == 0, err_s

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["step"] == b["step"] == 7
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    # The run really moved: weights differ from the interrupted checkpoint's.
    assert any(not torch.equal(interrupted["model"][k], a["model"][k]) for k in a["model"])
    assert a["train_config"]["seed"] == 4
    # The log has one record per step despite the replay, with the same losses as the straight run.
    la = [r["loss"] for r in read_metrics(straight) if "loss" in r]
    lb = [r["loss"] for r in read_metrics(killed) if "loss" in r]
    assert [r["step"] for r in read_metrics(killed)] == list(range(1, 8))
    assert la == lb


def test_a_run_killed_before_its_first_checkpoint_logs_each_step_once(tmp_path):
    """Killed in step 2 with no checkpoint yet, the rerun starts afresh: step 1's record of the killed run
    must not stay beside the rerun's own."""
    out = tmp_path / "run"
    p = _run_child(out, 2)
    _, err = p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL, err
    assert not (out / "last.pt").exists() and [r["step"] for r in read_metrics(out)] == [1]
    p = _run_child(out, 0)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 8))


def test_resume_refuses_another_size(tmp_path):
    cfg = model_config("tiny")
    from sg2v.errors import CheckpointError
    from sg2v.training.checkpoint import save_checkpoint
    from sg2v.training.train import train

    save_checkpoint(tmp_path / "last.pt", build_model(cfg), cfg.replace(name="other"), shapes_vocab(), step=1)
    with pytest.raises(CheckpointError, match="config mismatch"):
        train(TrainConfig(steps=2, batch=2, out=str(tmp_path), workers=0, eval_every=0), progress=False)


def test_init_encoder_loads_pretrained_weights_across_video_shapes(tmp_path, rng):
    """A pretrained encoder initialises training at another frames/size; another encoder is refused."""
    import dataclasses

    from sg2v.config import DataConfig
    from sg2v.errors import CheckpointError
    from sg2v.training.pretrain import PretrainConfig, build_pretrain_models, save_pretrain_checkpoint
    from sg2v.training.train import load_init_encoder

    torch.manual_seed(int(rng.integers(1 << 30)))
    tiny = model_config("tiny")
    pc = PretrainConfig(size="tiny")
    enc, video, heads = build_pretrain_models(tiny, pc)
    ckpt = save_pretrain_checkpoint(tmp_path / "pretrain.pt", tiny, pc, enc, video, heads, step=3,
                                    optimizer=None)

    other_video = tiny.replace(data=dataclasses.replace(tiny.data, frames=8, height=32, width=32))
    model = build_model(other_video)
    load_init_encoder(model, str(ckpt))
    for k, v in enc.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k

    other_slots = tiny.replace(data=DataConfig(frames=4, height=16, width=16, max_objects=5))
    with pytest.raises(CheckpointError, match="config mismatch"):
        load_init_encoder(build_model(other_slots), str(ckpt))


def test_init_fine_tunes_from_a_checkpoint_or_a_bundle(tmp_path, rng):
    """--init loads a checkpoint's EMA weights, or a bundle's fp16 model.safetensors cast up; a model of
    another shape or a bundle without weights is refused with a one-line fix."""
    from sg2v.config import DataConfig
    from sg2v.errors import CheckpointError, Sg2vError
    from sg2v.export.onnx_export import export_bundle
    from sg2v.training.checkpoint import save_checkpoint
    from sg2v.training.train import load_init_weights

    torch.manual_seed(int(rng.integers(1 << 30)))
    cfg = model_config("tiny")
    cfg = cfg.replace(data=DataConfig(frames=4, height=16, width=16, max_objects=cfg.data.max_objects,
                                      max_relationships=cfg.data.max_relationships))
    raw, ema = build_model(cfg), build_model(cfg)  # two different random initialisations
    ckpt = save_checkpoint(tmp_path / "last.pt", raw, cfg, shapes_vocab(), ema=ema, step=5)

    fresh = build_model(cfg)
    load_init_weights(fresh, str(ckpt))
    for k, v in ema.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k  # the EMA, not the raw weights

    bundle = tmp_path / "bundle"
    export_bundle(ckpt, bundle, weights="fp16", include_weights=True)
    fresh = build_model(cfg)
    load_init_weights(fresh, str(bundle))
    for k, v in ema.state_dict().items():
        got = fresh.state_dict()[k]
        assert got.dtype == v.dtype, k
        if v.is_floating_point():  # the bundle stores fp16: the fine-tune starts from the rounded weights
            torch.testing.assert_close(got, v.half().float(), rtol=0, atol=0)

    other = cfg.replace(data=DataConfig(frames=2, height=16, width=16, max_objects=cfg.data.max_objects,
                                        max_relationships=cfg.data.max_relationships))
    for src in (ckpt, bundle):
        with pytest.raises(CheckpointError, match="config mismatch.*--size"):
            load_init_weights(build_model(other), str(src))
    bare = tmp_path / "bare"
    export_bundle(ckpt, bare)
    with pytest.raises(Sg2vError, match="--include-weights"):
        load_init_weights(build_model(cfg), str(bare))


def test_time_limit_saves_and_the_same_command_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import sg2v.training.harness as harness
    import sg2v.training.train as T

    kw = dict(steps=4, batch=2, lr=3e-3, warmup=1, ckpt_every=100, eval_every=0, log_every=1, workers=0,
              seed=5)
    straight = T.train(TrainConfig(out=str(tmp_path / "straight"), **kw), progress=False)
    # A clock that jumps 10 s per reading: the 15 s limit passes after the second step.
    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr(harness.time, "perf_counter", lambda: float(next(clock)))
    limited = TrainConfig(out=str(tmp_path / "limited"), time_limit=15.0, **kw)
    first = T.train(limited, progress=False)
    assert 1 <= first.step < 4
    saved = load_checkpoint(tmp_path / "limited" / "last.pt")
    assert saved["step"] == first.step  # saved at the stop although ckpt_every is 100
    stop = [r for r in read_metrics(tmp_path / "limited") if r.get("stopped")]
    assert stop == [{"step": first.step, "stopped": "time_limit", "time_limit_s": 15.0,
                     "elapsed_s": stop[0]["elapsed_s"]}]
    monkeypatch.undo()
    resumed = T.train(TrainConfig(out=str(tmp_path / "limited"), **kw), progress=False)
    assert resumed.step == 4
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(TrainError, match="--time-limit"):
        TrainConfig(time_limit=-1.0).check()
    with pytest.raises(TrainError, match="--stop-at 9 is past --steps 4"):
        TrainConfig(steps=4, stop_at=9).check()


def test_stop_at_keeps_the_long_schedule_and_resumes_to_the_same_weights(tmp_path):
    import sg2v.training.train as T

    kw = dict(steps=4, batch=2, lr=3e-3, warmup=1, ckpt_every=100, eval_every=0, log_every=1, workers=0,
              seed=6)
    straight = T.train(TrainConfig(out=str(tmp_path / "straight"), **kw), progress=False)
    first = T.train(TrainConfig(out=str(tmp_path / "split"), stop_at=2, **kw), progress=False)
    assert first.step == 2 and load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 2
    lrs = [r["lr"] for r in read_metrics(tmp_path / "split") if "lr" in r]
    assert lrs == [lr_at(TrainConfig(**kw), s) for s in range(2)]  # the 4-step schedule, not a 2-step one
    again = T.train(TrainConfig(out=str(tmp_path / "split"), stop_at=2, **kw), progress=False)
    assert again.step == 2  # already there: nothing runs
    resumed = T.train(TrainConfig(out=str(tmp_path / "split"), **kw), progress=False)
    assert resumed.step == 4
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.gpu
def test_train_on_cuda_writes_a_checkpoint_it_resumes_from(tmp_path):
    """A few `train(device="cuda")` steps (bf16 autocast) to last.pt, then a resume to more steps."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from sg2v.training.train import train

    tc = dict(steps=4, batch=4, lr=3e-3, warmup=1, ckpt_every=2, eval_every=0, log_every=1, workers=0,
              seed=6, device="cuda", out=str(tmp_path))
    result = train(TrainConfig(**tc), progress=False)
    assert next(result.model.parameters()).is_cuda and result.step == 4
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 4 and ckpt["train_config"]["device"] == "cuda"
    for part in ("model", "ema"):
        assert all(v.device.type == "cpu" and (not v.is_floating_point() or torch.isfinite(v).all())
                   for v in ckpt[part].values()), part
    torch.manual_seed(tc["seed"])
    initial = build_model(model_config("tiny")).state_dict()  # train() builds the model after this seed
    moved = [k for k in initial if not torch.equal(initial[k], ckpt["model"][k])]
    assert len(moved) > len(initial) // 2, "the optimizer did not move the weights"
    losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    again = train(TrainConfig(**{**tc, "steps": 6}), progress=False)
    assert again.step == 6
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == list(range(1, 7))
