"""Training on converted data sets (sg2v.training.converted, `--data`): the step-addressed stream, samples
against the data set's own items, the model config from the data, and a few steps of the tiny model on each
converted fixture (diffusion, layout, pretraining), resumed, exported and run with the data's vocabulary."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sg2v.config import model_config
from sg2v.dataset import ConvertedDataset
from sg2v.graph import pad_graphs, parse_graph
from sg2v.models.unet import ObjectMaps
from sg2v.training.checkpoint import load_checkpoint
from sg2v.training.converted import (
    ConvertedSamples,
    KindSchedule,
    Pool,
    RunDataError,
    SampleStream,
    box_region,
    data_model_config,
    fit_to_limits,
    held_tracks,
    open_run_data,
)
from sg2v.training.data import collate
from sg2v.training.train import TrainConfig, make_loader, read_metrics, train

FIXTURES = ("vg", "coco", "ag", "folder")


def _pool(converted, *names, split="train") -> Pool:
    return Pool([ConvertedDataset(converted[n], split) for n in names])


def _tc(out: Path, data, **kw) -> TrainConfig:
    base = dict(data=[str(d) for d in data], steps=2, batch=2, workers=0, threads=1, eval_every=0,
                log_every=1, ckpt_every=1, warmup=1, out=str(out))
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------- stream
@pytest.mark.parametrize("sizes", [[5], [1, 3], [100, 7, 13]])
def test_kind_schedule_counts_like_a_loop_and_shares_follow_sizes(sizes):
    s = KindSchedule(sizes)
    seen = [0] * len(sizes)
    for step in range(400):
        k = s.kind(step)
        assert s.steps_before(step) == seen[k], step
        seen[k] += 1
    period = len(s.pattern)
    shares = np.bincount(s.pattern, minlength=len(sizes)) / period
    np.testing.assert_allclose(shares, np.array(sizes) / sum(sizes), atol=1.0 / period)
    assert min(np.bincount(s.pattern, minlength=len(sizes))) >= 1


def test_stream_steps_hold_one_kind_and_each_epoch_is_a_permutation(converted):
    """Folder clips (4 frames) mixed with still images: every step reads one kind, each kind's samples come
    once per epoch, and the stream is a function of (seed, index) (a fresh stream or a resumed one agrees)."""
    pool = _pool(converted, "folder", "stills")
    assert pool.kinds() == (1, 4)
    batch = 3
    stream = SampleStream(pool, batch, seed=5)
    steps = 40
    picks = [[stream(s * batch + j) for j in range(batch)] for s in range(steps)]
    for row in picks:
        assert len({int(pool.frames[k]) for k in row}) == 1
    for kind in pool.kinds():
        seq = [k for row in picks for k in row if pool.frames[k] == kind]
        n = int((pool.frames == kind).sum())
        assert len(seq) >= 2 * n
        for e in range(len(seq) // n):
            assert sorted(seq[e * n:(e + 1) * n]) == sorted(np.flatnonzero(pool.frames == kind).tolist())
    fresh = SampleStream(pool, batch, seed=5)
    assert [fresh(i) for i in range(30 * batch, 40 * batch)] == [k for row in picks[30:] for k in row]
    other = SampleStream(pool, batch, seed=6)
    assert [other(i) for i in range(steps * batch)] != [k for row in picks for k in row]


# ------------------------------------------------------------------------------------------------ samples
def _item(rng: np.random.Generator, n: int, rels: list, frames: int = 3) -> dict:
    lo = rng.random((n, frames, 2)) * 0.5
    return {"graph": {"objects": [f"o{i}" for i in range(n)], "relationships": rels, "description": "d"},
            "boxes": np.concatenate([lo, lo + 0.25], -1).astype(np.float32),
            "visible": rng.random((n, frames)) < 0.8, "has_layout": rng.random(n) < 0.9,
            "rel_frames": rng.random((len(rels), frames)) < 0.5}


def test_fit_to_limits_keeps_related_objects_first_and_moves_their_boxes():
    rng = np.random.default_rng(0)
    rels = [[0, "a", 1], [1, "b", 2], [4, "c", 5], [2, "d", 0]]
    item = _item(rng, 7, rels)
    assert fit_to_limits(item, 7, 4, lambda: pytest.fail("no cut needed")) is item
    for max_objects, max_rels in [(3, 4), (5, 4), (6, 2), (4, 1)]:
        out = fit_to_limits(item, max_objects, max_rels, lambda: np.random.default_rng(3))
        names = out["graph"]["objects"]
        keep = [int(x[1:]) for x in names]
        assert len(keep) == min(7, max_objects) and keep == sorted(keep)
        related = {0, 1, 2, 4, 5}
        assert set(keep) <= related or related <= set(keep)  # related objects first
        for name in ("boxes", "visible", "has_layout"):
            np.testing.assert_array_equal(out[name], item[name][keep])
        kept = [r for r in rels if r[0] in keep and r[2] in keep]
        got = [[keep[s], p, keep[o]] for s, p, o in out["graph"]["relationships"]]
        assert len(got) == min(len(kept), max_rels) and all(r in kept for r in got)
        np.testing.assert_array_equal(out["rel_frames"], item["rel_frames"][[rels.index(r) for r in got]])
        assert out["graph"]["description"] == "d"
        again = fit_to_limits(item, max_objects, max_rels, lambda: np.random.default_rng(3))
        assert again["graph"] == out["graph"]


def test_held_tracks_fill_gaps_with_the_nearest_known_box():
    """Against a loop: a frame without a box takes the nearest known frame's (earlier on a tie), weight 0;
    an object never known keeps zeros; a one-frame sample becomes a static track."""
    rng = np.random.default_rng(1)
    boxes = rng.random((5, 7, 4)).astype(np.float32)
    known = rng.random((5, 7)) < 0.4
    known[3] = False
    known[4] = [False, True, False, False, False, True, False]  # frame 3: a tie between 1 and 5
    tracks, weight = held_tracks(boxes, known, 7)
    for i in range(5):
        at = np.flatnonzero(known[i])
        for t in range(7):
            if not len(at):
                want = np.zeros(4)
            else:
                d = np.abs(at - t)
                want = boxes[i, at[np.flatnonzero(d == d.min())[0]]]
            np.testing.assert_array_equal(tracks[i, t], want)
    np.testing.assert_array_equal(weight, known.astype(np.float32))
    still, w = held_tracks(boxes[:, :1], known[:, :1], 4)
    np.testing.assert_array_equal(still, np.repeat(boxes[:, :1] * known[:, :1, None], 4, axis=1))
    np.testing.assert_array_equal(w, np.repeat(known[:, :1], 4, axis=1).astype(np.float32))


def test_box_region_is_the_unets_object_map_coverage():
    """The pixels pretraining masks are the pixels the UNet's object maps paint for the same box."""
    rng = np.random.default_rng(2)
    h, w, f = 8, 12, 3
    lo = rng.random((f, 2)) * 0.6
    box = np.concatenate([lo, lo + 0.1 + rng.random((f, 2)) * 0.3], -1)
    box[0] = [0.25, 0.125, 0.75, 0.5]  # on the pixel grid
    known = np.array([True, True, False])
    got = box_region(box, known, h, w)
    maps = ObjectMaps(4, 2, h, w).double()
    with torch.no_grad():
        cover = maps(torch.zeros(1, 1, 4, dtype=torch.float64),
                     torch.from_numpy(box * known[:, None])[None, None])[:, -1].numpy()  # (F, H, W)
    np.testing.assert_array_equal(got, cover)
    assert got[0].sum() == 6 * 3 and not got[2].any()


def test_samples_are_the_data_sets_items(converted):
    """Diffusion and layout arrays of stream entries against ConvertedDataset's own items."""
    cfg = _tc(Path("unused"), [converted["folder"]]).model_config(open_run_data([converted["folder"]]))
    d = cfg.data
    pool = _pool(converted, "folder")
    video = ConvertedSamples(pool, cfg, pool.datasets[0].vocab, seed=0, batch=2)
    layout = ConvertedSamples(pool, cfg, pool.datasets[0].vocab, seed=0, batch=2, objective="layout")
    ds = pool.datasets[0]
    for i in range(8):
        k = video.stream(i)
        item = ds[k]
        a = video[i]
        n, f = len(item["graph"]["objects"]), item["frames"].shape[0]
        np.testing.assert_array_equal(a["video"], item["frames"].transpose(0, 3, 1, 2))
        known = item["visible"] & item["has_layout"][:, None]
        np.testing.assert_array_equal(a["boxes"][:n], item["boxes"] * known[..., None])
        assert a["boxes"].shape == (d.padded_objects, f, 4) and not a["boxes"][n:].any()
        feeds = pad_graphs([parse_graph(item["graph"], ds.vocab)], d.max_objects, d.max_relationships)
        for key, v in feeds.as_feeds().items():
            np.testing.assert_array_equal(a[key], v[0])
        item = ds[layout.stream(i)]  # the layout stream pools both kinds: another order
        n, f = len(item["graph"]["objects"]), item["frames"].shape[0]
        known = item["visible"] & item["has_layout"][:, None]
        b = layout[i]
        assert "video" not in b and b["tracks"].shape == (d.padded_objects, d.frames, 4)
        np.testing.assert_array_equal(b["track_mask"], (np.arange(d.padded_objects) < n).astype(np.float32))
        rep = np.repeat(known, d.frames, axis=1) if f == 1 else known
        np.testing.assert_array_equal(b["track_weight"][:n], rep.astype(np.float32))
        full = np.repeat(item["boxes"], d.frames, axis=1) if f == 1 else item["boxes"]
        np.testing.assert_array_equal(b["tracks"][:n][rep], full[rep])


def test_worker_batches_equal_inline_ones(converted):
    """A DataLoader worker (the data set pickled, its frames reopened) gives the batches of steps 3..5 that
    the main process makes itself."""
    tc = _tc(Path("unused"), [converted["folder"], converted["stills"]], steps=6, batch=2)
    data = tc.open_data()
    ds = ConvertedSamples(data.train, tc.model_config(data), data.vocab, tc.seed, tc.batch)
    inline = list(make_loader(ds, tc, 3))
    workers = list(make_loader(ds, dataclasses.replace(tc, workers=1), 3))
    assert len(inline) == len(workers) == 3
    for a, b in zip(inline, workers):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    want = [collate([ds[i] for i in range(s * 2, s * 2 + 2)]) for s in range(3, 6)]
    assert all(torch.equal(a["video"], w["video"]) for a, w in zip(inline, want))
    # spawned workers get the data set pickled: its index, not its frames
    blob = pickle.dumps(ds)
    frames = sum((Path(d) / "train.frames.npy").stat().st_size for d in tc.data)
    assert len(blob) < frames
    copy = pickle.loads(blob)
    for i in range(10):
        a, b = ds[i], copy[i]
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ config and checks
def test_model_config_comes_from_the_data(converted):
    base = model_config("tiny")
    vg = open_run_data([converted["vg"]])
    cfg = data_model_config(base, vg)
    vocab = ConvertedDataset(converted["vg"]).vocab
    assert (cfg.encoder.num_objs, cfg.encoder.num_preds) == (vocab.num_objs, vocab.num_preds)
    assert (cfg.data.frames, cfg.data.height, cfg.data.width) == (4, 16, 16)  # images: the conversion's F
    assert (cfg.data.max_objects, cfg.data.max_relationships) == (3, 3)  # the largest train / val graph
    assert cfg.layout.rules == "none" and cfg.unet == base.unet
    # the layout check's limits, measured on the train split: every known box, frame by frame (slow way)
    from sg2v.geometry import from_entry, overlap_fraction

    ds = ConvertedDataset(converted["vg"], "train")
    widths, worst = [], []
    for i in range(len(ds)):
        a = ds.annotation(i)
        for f in range(a["boxes"].shape[1]):
            known = [b for b, v, h in zip(a["boxes"][:, f].astype(np.float64), a["visible"][:, f],
                                          a["has_layout"]) if v and h and b[2] > b[0] and b[3] > b[1]]
            widths += [b[2] - b[0] for b in known]
            if len(known) > 1:
                worst.append(max(overlap_fraction(p, q) for p in known for q in known if p is not q))
    g = from_entry(json.loads(cfg.layout.geometry))
    assert g.source == "measured" and g.inside
    assert g.width == pytest.approx((np.quantile(widths, 0.001), np.quantile(widths, 0.999)))
    assert g.max_overlap == (pytest.approx(np.quantile(worst, 0.99)) if worst else None)
    assert open_run_data([converted["coco"]]).rules == "coco"
    assert open_run_data([converted["coco"]], rules="none").rules == "none"
    assert open_run_data([converted["vg"]], frames=3).frames == 3  # images: any clip length
    assert open_run_data([converted["ag"]]).frames == 2
    mixed = open_run_data([converted["folder"], converted["stills"]], max_objects=2, max_relationships=1)
    assert (mixed.frames, mixed.max_objects, mixed.max_relationships) == (4, 2, 1)
    assert len(mixed.train) == 7 and mixed.train.kinds() == (1, 4)


@pytest.mark.parametrize("paths, kw, match", [
    (("vg", "coco"), {}, "differs from"),
    (("folder", "folder"), {}, "given twice"),
    (("ag",), {"frames": 4}, "holds 2-frame clips"),
    (("vg",), {"height": 32}, "frames are 16 x 16"),
    (("vg",), {"rules": "sg2im"}, "--rules 'sg2im'"),
    (("vg",), {"max_objects": 0}, "at least 1 object"),
])
def test_data_that_does_not_fit_is_one_line_naming_the_fix(converted, paths, kw, match):
    with pytest.raises(RunDataError, match=match) as e:
        open_run_data([converted[p] for p in paths], **kw)
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_a_size_the_data_does_not_fit_names_the_fix(converted):
    with pytest.raises(RunDataError, match="divisible by 32; convert with --size small"):
        data_model_config(model_config("small"), open_run_data([converted["vg"]]))


# --------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("objective", ["diffusion", "layout"])
@pytest.mark.parametrize("name", FIXTURES)
def test_a_few_steps_on_each_converted_fixture_then_resume(converted, tmp_path, name, objective):
    """Two steps of the tiny model on the fixture with finite losses and a checkpoint holding the data's
    vocabulary and config, a held-out evaluation on val where it has samples, then a resume to step 3."""
    data = [converted[name]]
    tc = _tc(tmp_path / "run", data, objective=objective, eval_every=2, eval_samples=2, eval_steps=1)
    res = train(tc, progress=False)
    assert res.step == 2 and len(res.losses) == 2 and all(np.isfinite(res.losses))
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    vocab = ConvertedDataset(converted[name]).vocab
    assert ck["vocab"] == vocab.to_dict() and ck["step"] == 2
    assert ck["config"] == tc.model_config(tc.open_data()).to_dict()
    assert ck["data"]["paths"] == [str(converted[name])] and len(ck["data"]["fingerprint"]) == 64
    evals = [r for r in read_metrics(tmp_path / "run") if r.get("eval")]
    if len(ConvertedDataset(converted[name], "val")):
        (ev,) = evals
        assert np.isfinite(ev["heldout_loss"]) and ev["heldout_n"] >= 1
        if objective == "diffusion":
            assert (tmp_path / "run" / "samples" / "step0000002.png").is_file()
    else:
        assert not evals
    again = train(dataclasses.replace(tc, steps=3, eval_every=0), progress=False)
    assert again.step == 3 and len(again.losses) == 1 and np.isfinite(again.losses[0])
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3


@pytest.mark.parametrize("objective", ["diffusion", "layout"])
def test_mixed_images_and_clips_resume_bit_exact(converted, tmp_path, objective):
    """Clips and still images of one vocabulary: 2 steps + a resumed third equal 3 straight steps, weights
    and EMA bit for bit; the diffusion run saw both kinds of batch."""
    data = [converted["folder"], converted["stills"]]
    shapes = []
    if objective == "diffusion":
        run = open_run_data(data)
        ds = ConvertedSamples(run.train, data_model_config(model_config("tiny"), run), run.vocab, 0, 2)
        shapes = {tuple(ds[2 * s]["video"].shape[:1]) for s in range(3)}
        assert shapes == {(1,), (4,)}
    straight = train(_tc(tmp_path / "a", data, objective=objective, steps=3), progress=False)
    train(_tc(tmp_path / "b", data, objective=objective, steps=2), progress=False)
    resumed = train(_tc(tmp_path / "b", data, objective=objective, steps=3), progress=False)
    assert resumed.step == straight.step == 3
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_resume_refuses_other_data(converted, tmp_path):
    from sg2v.errors import CheckpointError

    train(_tc(tmp_path / "run", [converted["folder"]], steps=1), progress=False)
    with pytest.raises(CheckpointError, match="trained on --data .*folder, this run reads --data"):
        train(_tc(tmp_path / "run", [converted["folder"], converted["stills"]], steps=2), progress=False)


def test_pretrain_on_converted_data_resumes_and_initialises_diffusion(converted, tmp_path):
    """Masked contrastive pretraining on clips and stills (the masked region: the object's box), resumed to
    step 3; its encoder, saved with the data's vocabulary, initialises diffusion training on the same data,
    and is refused for other data."""
    from sg2v.errors import CheckpointError
    from sg2v.models.sg2v import build_model
    from sg2v.training.pretrain import PretrainConfig, pretrain
    from sg2v.training.train import load_init_encoder

    data = [str(converted["folder"]), str(converted["stills"])]
    pc = PretrainConfig(data=data, steps=2, batch=2, log_every=1, ckpt_every=1, threads=1,
                        out=str(tmp_path / "pre"))
    lines: list[str] = []
    first = pretrain(pc, log=lines.append)
    assert first["retrieval"] is None and any("retrieval needs at least 5" in x for x in lines)
    assert all(np.isfinite(v) for v in first["losses"].values())
    res = pretrain(dataclasses.replace(pc, steps=3), log=lines.append)
    assert res["step"] == 3 and any("resumed from" in x for x in lines)
    ck = load_checkpoint(tmp_path / "pre" / "pretrain.pt", kind="pretrain")
    vocab = ConvertedDataset(converted["folder"]).vocab
    assert ck["vocab"] == vocab.to_dict() and ck["step"] == 3
    tc = _tc(tmp_path / "run", data)
    cfg = tc.model_config(tc.open_data())
    model = build_model(cfg)
    load_init_encoder(model, str(tmp_path / "pre" / "pretrain.pt"), vocab)
    assert all(torch.equal(model.encoder.state_dict()[k], v) for k, v in ck["encoder"].items())
    with pytest.raises(CheckpointError, match="vocabulary"):
        vg = open_run_data([converted["vg"]])
        load_init_encoder(build_model(data_model_config(model_config("tiny"), vg)),
                          str(tmp_path / "pre" / "pretrain.pt"), vg.vocab)


def test_retrieval_on_a_converted_pool(converted):
    """Retrieval reads a converted pool (here the 7 train samples of clips and stills) in batches of one kind,
    every sample once, with the graph keys of the samples as cut to the model's limits."""
    from sg2v.training.pretrain import (
        ConvertedBatches,
        PretrainConfig,
        build_pretrain_models,
        evaluate_retrieval,
    )

    data = open_run_data([converted["folder"], converted["stills"]])
    cfg = data_model_config(model_config("tiny"), data)
    torch.manual_seed(0)
    encoder, video, _ = build_pretrain_models(cfg, PretrainConfig())
    source = ConvertedBatches(data.train, cfg, data.vocab, seed=0, stream=False)
    batches = list(source.retrieval_batches(7, 3))
    assert [tuple(b.video.shape[:2]) for b, _ in batches] == [(3, 1), (1, 1), (3, 4)]  # 4 images, 3 clips
    names = sorted(tuple(sorted(data.train.item(k, frames=False)["graph"]["objects"])) for k in range(7))
    assert sorted(k[0] for _, ks in batches for k in ks) == names
    r = evaluate_retrieval(encoder, video, cfg.data, n=7, batch_size=3, source=source)
    assert r["n"] == 7 and 0.0 <= r["R@1"] <= r["R@5"] <= 1.0


def test_distill_a_student_on_converted_data(converted, tmp_path):
    """A teacher trained on clips and stills is distilled on the same data (image and clip batches): finite
    losses, a student checkpoint with the data's vocabulary, samples of val graphs at evaluation; a teacher
    of another vocabulary is refused."""
    from sg2v.errors import CheckpointError

    data = [converted["ag"]]
    train(_tc(tmp_path / "teacher", data, steps=1), progress=False)
    tc = _tc(tmp_path / "student", data, objective="distill", init=str(tmp_path / "teacher" / "last.pt"),
             student_steps=2, distill_grid=4, eval_every=2, eval_samples=2)
    res = train(tc, progress=False)
    assert res.step == 2 and all(np.isfinite(res.losses))
    ck = load_checkpoint(tmp_path / "student" / "last.pt")
    assert ck["config"]["unet"]["guidance_embed"] and ck["vocab"] == ConvertedDataset(data[0]).vocab.to_dict()
    (ev,) = [r for r in read_metrics(tmp_path / "student") if r.get("eval")]
    assert ev["heldout_loss"] is None and ev["sampler"] == "ddim" and ev["steps"] == 2
    assert (tmp_path / "student" / "samples" / "step0000002.png").is_file()
    train(_tc(tmp_path / "vg", [converted["vg"]], steps=1), progress=False)  # 4 x 16 x 16, as the folder set
    with pytest.raises(CheckpointError, match="--init .*: its vocabulary .* differs from this run's"):
        train(dataclasses.replace(tc, data=[str(converted["folder"])], init=str(tmp_path / "vg" / "last.pt"),
                                  out=str(tmp_path / "s2")), progress=False)


# ------------------------------------------------------------------------------------------ CLI, export, run
def test_cli_trains_on_data_and_errors_are_one_line(converted, tmp_path, capsys):
    from sg2v.cli.train import main

    common = ["--steps", "1", "--batch", "2", "--workers", "0", "--threads", "1", "--eval-every", "0",
              "--no-progress"]
    assert main(["layout", "--data", str(converted["coco"]), "--out", str(tmp_path / "l"), *common]) == 0
    ck = load_checkpoint(tmp_path / "l" / "last.pt")
    assert ck["config"]["layout"]["rules"] == "coco"
    assert ck["train_config"]["data"] == [str(converted["coco"])]
    assert main(["diffusion", "--data", str(converted["vg"]), str(converted["coco"]), "--out",
                 str(tmp_path / "d"), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sg2v-train diffusion: error: --data: ") and "\n" not in err
    assert main(["eval", "--ckpt", str(tmp_path / "l" / "last.pt")]) == 2
    assert "shapes oracle scores shapes-world models only" in capsys.readouterr().err


def test_export_and_run_with_the_data_vocabulary(converted, tmp_path, capsys):
    """A model trained on converted COCO-Stuff, exported: the bundle carries the data's vocabulary, sg2v-run
    draws a graph in it (through the layout stage, checked by the data's relation rules), and a misspelled
    name gets the did-you-mean error with exit status 2."""
    pytest.importorskip("onnxscript")
    from sg2v.export import export_bundle
    from sg2v.runtime.cli import main as run_main

    tc = _tc(tmp_path / "run", [converted["coco"]])
    data = tc.open_data()
    train(tc, progress=False)
    bundle = tmp_path / "bundle"
    export_bundle(tmp_path / "run" / "last.pt", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["vocab"] == data.vocab.to_dict()
    assert manifest["format_version"] == 3 and "left of" in manifest["layout"]["relation_rules"]
    from sg2v.geometry import dataset_geometry, to_entry

    measured = dataset_geometry(data.train.item(k, frames=False) for k in range(len(data.train)))
    assert manifest["layout"]["geometry"] == to_entry(measured)  # the layout check keeps the data's limits
    names = ConvertedDataset(converted["coco"]).graph(0)["objects"][:2]
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"objects": names, "relationships": [[0, "left of", 1]]}))
    out = tmp_path / "v.npy"
    assert run_main([str(good), "--bundle", str(bundle), "--out", str(out), "--steps", "1"]) == 0
    video = np.load(out)
    assert video.shape == (4, 16, 16, 3) and video.dtype == np.uint8
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"objects": [names[0] + "x", names[1]], "relationships": []}))
    capsys.readouterr()
    assert run_main([str(bad), "--bundle", str(bundle), "--out", str(tmp_path / "w.npy"), "--steps",
                     "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f'did you mean "{names[0]}"' in err and "objects[0]" in err
