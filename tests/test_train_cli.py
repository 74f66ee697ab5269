"""`sg2v-train`: --help shows every default, a 2-step diffusion run end to end, eval, one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sg2v.cli.train import build_parser, main
from sg2v.config import MODEL_SIZES
from sg2v.shapes import ShapesDataset, score_batch
from sg2v.shapes.world import COLOR_NAMES
from sg2v.training.checkpoint import load_checkpoint, load_model
from sg2v.training.evaluate import evaluate, false_presence, heldout_graphs, sample_videos
from sg2v.training.train import TrainConfig, read_metrics

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "sg2v.cli.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_a_default_in_help(capsys):
    parser = build_parser()
    subs = _subparsers(parser)
    assert set(subs) == {"pretrain", "diffusion", "layout", "distill", "eval"}
    for name, sub in subs.items():
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # undo argparse's wrapping
        fmt = sub.formatter_class(prog=name)
        for action in sub._actions:
            if action.option_strings == ["-h", "--help"] or action.required:
                continue
            flag = max(action.option_strings, key=len)
            assert flag in text, (name, flag)
            assert "%(default)" in fmt._get_help_string(action), (name, flag)  # what --help renders
            assert f"(default: {action.default})" in text, (name, flag)
    diffusion = subs["diffusion"]
    size = next(a for a in diffusion._actions if "--size" in a.option_strings)
    assert sorted(size.choices) == sorted(MODEL_SIZES)
    flags = {s for a in diffusion._actions for s in a.option_strings}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "objective":  # the subcommand (diffusion or layout) sets it
            continue
        assert f"--{f.name.replace('_', '-')}" in flags, f.name


def test_diffusion_two_steps_then_eval_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = _cli("diffusion", "--size", "tiny", "--steps", "2", "--batch", "2", "--workers", "1",
             "--threads", "1", "--ckpt-every", "1", "--eval-every", "2", "--eval-samples", "2",
             "--eval-steps", "2", "--log-every", "1", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "last.pt" in r.stdout
    ck = load_checkpoint(out / "last.pt")
    assert ck["step"] == 2 and ck["train_config"]["steps"] == 2 and ck["ema"] is not None
    records = read_metrics(out)
    losses = [x for x in records if "loss" in x]
    evals = [x for x in records if x.get("eval")]
    assert [x["step"] for x in losses] == [1, 2] and all(np.isfinite(x["loss"]) for x in losses)
    assert len(evals) == 1 and 0.0 <= evals[0]["presence"] <= 1.0 and evals[0]["n"] == 2
    assert (out / "samples" / "step0000002.png").is_file()

    # Running again resumes, finds the work done, and changes nothing.
    before = (out / "last.pt").read_bytes()
    r = _cli("diffusion", "--size", "tiny", "--steps", "2", "--batch", "2", "--out", str(out),
             "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "last.pt").read_bytes() == before

    table = tmp_path / "table.json"
    r = _cli("eval", "--ckpt", str(out / "last.pt"), "--steps", "1", "2", "--n", "2", "--json", str(table),
             "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(table.read_text())["rows"]
    assert [x["steps"] for x in rows] == [1, 2]
    assert "presence" in r.stdout and "relation_accuracy" in r.stdout

    # The table's numbers are the oracle's scores of the videos sample_videos makes (EMA weights).
    model, cfg, vocab = load_model(out / "last.pt")
    graphs = heldout_graphs(cfg, 2, seed=0)
    videos = sample_videos(model, graphs, steps=2, guidance=cfg.diffusion.default_guidance,
                           sampler=cfg.diffusion.default_sampler, seed=0, cfg=cfg, vocab=vocab)
    assert videos.shape == (2, cfg.data.frames, cfg.data.height, cfg.data.width, 3)
    assert videos.dtype == np.uint8
    report = score_batch(list(videos), graphs)
    assert rows[1]["presence"] == report.presence
    assert rows[1]["relation_accuracy"] == report.relation_accuracy
    assert rows[1]["false_presence"] == false_presence(videos, graphs)


def test_sampling_is_seeded_and_evaluate_is_reproducible():
    from sg2v.config import model_config
    from sg2v.models.sg2v import build_model
    from sg2v.vocab import shapes_vocab

    torch.manual_seed(2)
    cfg = model_config("tiny")
    model = build_model(cfg)
    graphs = heldout_graphs(cfg, 2, seed=1)
    a = sample_videos(model, graphs, steps=2, seed=5, cfg=cfg)
    b = sample_videos(model, graphs, steps=2, seed=5, cfg=cfg)
    c = sample_videos(model, graphs[1:], steps=2, seed=6, cfg=cfg)  # graph 1 alone, same noise seed 5 + 1
    assert np.array_equal(a, b)
    assert np.abs(a[1].astype(int) - c[0]).max() <= 2  # batch size changes only float rounding
    assert np.abs(a[0].astype(int) - c[0]).mean() > 10  # another graph and seed: another video
    r1 = evaluate(model, cfg, shapes_vocab(), n=2, steps=2, seed=1)
    r2 = evaluate(model, cfg, shapes_vocab(), n=2, steps=2, seed=1)
    assert r1 == r2


def test_false_presence_on_ground_truth_crossed_graphs_and_noise():
    """No absent color in the generator's own videos, exactly the other graph's colors when graphs are
    crossed, and scattered noise forms no object."""
    ds = ShapesDataset(seed=0, length=6, split="heldout", frames=4, height=16, width=16)
    samples = [ds[i] for i in range(6)]
    videos = [s.video for s in samples]
    graphs = [s.graph for s in samples]
    assert false_presence(videos, graphs) == 0.0
    assert score_batch(videos, graphs).presence == 1.0

    def colors(g):
        return {name.split()[0] for name in g["objects"]}

    crossed = graphs[1:] + graphs[:1]
    hits = sum(len(colors(g) - colors(c)) for g, c in zip(graphs, crossed))
    total = sum(len(COLOR_NAMES) - len(colors(c)) for c in crossed)
    assert hits > 0
    assert false_presence(videos, crossed) == hits / total
    noise = np.random.default_rng(3).integers(0, 256, (6, 4, 16, 16, 3), dtype=np.uint8)
    assert false_presence(list(noise), graphs) <= 0.05


def test_errors_are_one_line_with_exit_code(tmp_path):
    r = _cli("eval", "--ckpt", str(tmp_path / "missing.pt"), cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in r.stderr

    r = _cli("diffusion", "--batch", "3", "--grad-accum", "2", "--out", str(tmp_path / "x"), "--workers", "0",
             cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch 3" in lines[0], r.stderr

    r = _cli("diffusion", "--size", "huge", cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr


class _Payload:
    def __reduce__(self):  # unpickling would create the folder named by SG2V_TEST_PAYLOAD
        return (os.mkdir, (os.environ["SG2V_TEST_PAYLOAD"],))


@pytest.mark.parametrize("flag", ["--init-encoder", "--init", "--resume"])
def test_code_bearing_checkpoints_are_refused_in_one_line(tmp_path, monkeypatch, capsys, flag):
    marker = tmp_path / "payload_ran"
    monkeypatch.setenv("SG2V_TEST_PAYLOAD", str(marker))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"sg2v_format": 1, "kind": "pretrain", "encoder": _Payload()}, protocol=2))
    code = main(["diffusion", flag, str(evil), "--out", str(tmp_path / "run"), "--workers", "0",
                 "--threads", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert re.search(r"code-bearing Python objects \(\w+\.mkdir\)", err) and "will not load" in err, err
    assert "weights_only" not in err and not marker.exists()


@pytest.mark.parametrize("args, flag", [
    (["diffusion", "--grad-clip", "nan"], "--grad-clip nan"),
    (["diffusion", "--seed", "-1"], "--seed"),
    (["diffusion", "--frames", "-1"], "--frames -1"),
    (["diffusion", "--width", "100000"], "--width 100000"),
    (["diffusion", "--height", "7"], "7"),
    (["pretrain", "--video-frames", "-1"], "--video-frames"),
    (["diffusion", "--threads", "1000000"], "--threads 1000000"),
    (["layout", "--lr", "inf"], "--lr inf"),
    (["diffusion", "--overlap-prob", "1.5"], "--overlap-prob must be in [0, 1]"),
    (["layout", "--overlap-prob", "0.25"], "drop it for the layout objective"),
    (["pretrain", "--grad-clip", "nan"], "--grad-clip nan"),
    (["pretrain", "--seed", "-1"], "--seed"),
    (["eval", "--ckpt", "x.pt", "--n", "0"], "--n 0"),
    (["eval", "--ckpt", "x.pt", "--seed", "-1"], "--seed -1"),
    (["eval", "--ckpt", "x.pt", "--guidance", "nan"], "--guidance nan"),
])
def test_absurd_numbers_exit_2_in_one_line_and_start_nothing(tmp_path, capsys, args, flag):
    out = tmp_path / "run"
    extra = [] if args[0] == "eval" else ["--out", str(out)]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err
    assert not out.exists()  # refused before the run folder (or anything else) was made


def test_resuming_past_steps_names_the_checkpoint_it_holds(tmp_path, capsys):
    """--resume of a checkpoint at or past --steps trains nothing: the report names that checkpoint
    (OUT/last.pt was never written) and says how to go on."""
    common = ["--batch", "2", "--workers", "0", "--threads", "1", "--eval-every", "0", "--no-progress"]
    first = tmp_path / "first"
    assert main(["diffusion", "--steps", "2", "--out", str(first), *common]) == 0
    capsys.readouterr()
    later = tmp_path / "later"
    assert main(["diffusion", "--steps", "1", "--resume", str(first / "last.pt"), "--out", str(later),
                 *common]) == 0
    captured = capsys.readouterr()
    assert f"step 2: checkpoint {first / 'last.pt'}" in captured.out
    assert "nothing to train" in captured.err and "--steps is 1; pass a larger --steps" in captured.err
    assert not (later / "last.pt").exists()
