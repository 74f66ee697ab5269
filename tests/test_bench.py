"""sg2v-bench on a tiny random checkpoint exported by the real exporter: every figure for the CPU backends,
medians and ratios consistent with the raw runs, videos/s per batch size against the same run's B=1, the
same frames on every backend. No timing assertions."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from sg2v.export import bench

CPU_BACKENDS = ("torch-cpu", "ort-cpu")
FIGURES = ("total_s", "encoder_s", "denoiser_s", "denoiser_step_s", "sampler_overhead_s",
           "sampler_overhead_pct", "decode_s", "write_s", "cold_start_s", "startup_s", "peak_rss_mib",
           "achieved_tflops", "peak_tflops", "peak_fraction")


@pytest.fixture(scope="module")
def bundle(real_bundle) -> Path:
    return real_bundle


@pytest.fixture(scope="module")
def report(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    argv = ["--bundle", str(bundle), "--repeats", "2", "--warmup", "0", "--steps", "3", "--threads", "1",
            "--peak-size", "128", "--write", "npy", "--batch", "3", "--backends", *CPU_BACKENDS, "torch-cuda",
            "--json", str(out / "bench.json"), "--table", str(out / "bench.md")]
    assert bench.main(argv) == 0
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


@pytest.mark.slow
def test_every_figure_for_the_cpu_backends(report):
    rep, _ = report
    assert rep["baseline"] == "torch-cpu"
    assert rep["flops"]["flops"] > 0 and rep["peak"]["cpu"]["tflops"] > 0
    for name in CPU_BACKENDS:
        b = rep["backends"][name]
        assert "error" not in b, b.get("error")
        r = b["results"]
        for key in FIGURES:
            assert isinstance(r[key], float) and math.isfinite(r[key]), (name, key, r[key])
            assert r[key] >= 0.0, (name, key)
        assert r["total_s"] > 0 and r["denoiser_step_s"] > 0 and r["peak_rss_mib"] > 10
        assert r["unet_calls"] == 3 and len(b["runs"]) == 2
        assert all(len(run["denoiser_steps_s"]) == 3 for run in b["runs"])
        # The stages add up: encoder + steps + overhead + decode = end-to-end, per run.
        for run in b["runs"]:
            parts = run["encoder_s"] + run["denoiser_s"] + run["sampler_overhead_s"] + run["decode_s"]
            assert parts == pytest.approx(run["total_s"], rel=1e-9, abs=1e-9)
        cold = b["cold"]
        parts = cold["start_to_main_s"] + cold["load_s"] + cold["first_video_s"]
        assert b["cold_start_s"] == pytest.approx(parts)
    # Without CUDA the GPU row says why it was not measured; with CUDA it was measured.
    cuda = rep["backends"]["torch-cuda"]
    assert cuda.get("reason") or cuda.get("results")


@pytest.mark.slow
def test_medians_and_ratios_follow_the_raw_runs(report):
    rep, _ = report
    base = rep["backends"]["torch-cpu"]["results"]
    for name in CPU_BACKENDS:
        b = rep["backends"][name]
        r, runs = b["results"], b["runs"]
        assert r["total_s"] == statistics.median(run["total_s"] for run in runs)
        assert r["denoiser_step_s"] == statistics.median(s for run in runs for s in run["denoiser_steps_s"])
        assert r["sampler_overhead_pct"] == pytest.approx(
            statistics.median(100 * run["sampler_overhead_s"] / run["total_s"] for run in runs))
        assert r["achieved_tflops"] == pytest.approx(rep["flops"]["flops"] / r["denoiser_step_s"] / 1e12)
        assert r["peak_fraction"] == pytest.approx(r["achieved_tflops"] / rep["peak"]["cpu"]["tflops"])
        ra = b["ratios"]["torch-cpu"]
        assert ra["total_speedup"] == pytest.approx(base["total_s"] / r["total_s"])
        assert ra["step_speedup"] == pytest.approx(base["denoiser_step_s"] / r["denoiser_step_s"])
        assert ra["cold_start_speedup"] == pytest.approx(base["cold_start_s"] / r["cold_start_s"])
    assert rep["backends"]["torch-cpu"]["ratios"]["torch-cpu"]["total_speedup"] == 1.0


@pytest.mark.slow
def test_targets_table_and_frames(report):
    rep, table = report
    targets = {t["target"]: t for t in rep["targets"]}
    speed = next(t for name, t in targets.items() if "1.5x" in name)
    assert speed["value"] == pytest.approx(rep["backends"]["ort-cpu"]["ratios"]["torch-cpu"]["total_speedup"])
    assert speed["pass"] == (speed["value"] >= 1.5)
    ort = rep["backends"]["ort-cpu"]["results"]
    cold = next(t for name, t in targets.items() if "first video" in name)
    assert cold["value"] == ort["cold_start_s"] and cold["pass"] == (ort["cold_start_s"] < 2.0)
    startup = next(t for name, t in targets.items() if "ready pipeline" in name)
    assert startup["value"] == ort["startup_s"] < ort["cold_start_s"]
    assert not any(name.startswith("GPU") for name in targets) or rep["backends"]["torch-cuda"].get("results")
    for name in CPU_BACKENDS:
        assert f"| {name} |" in table
    assert "torch-cuda:" in table or "| torch-cuda |" in table
    # ONNX Runtime and PyTorch start from the same x_T: the same video up to uint8 rounding.
    diff = rep["backends"]["ort-cpu"]["frames_vs_baseline"]
    assert diff["max_abs"] <= 1 and diff["mean_abs"] < 0.05


@pytest.mark.slow
def test_videos_per_second_by_batch_size(report):
    """B=3 is one generate call of 3 videos: 3 UNet calls of 6 rows (one per step), videos/s = 3 / median
    end-to-end, and its ratio against the same row's B=1 figure; the table shows both sizes."""
    rep, table = report
    assert rep["settings"]["batch"] == [1, 3]
    for name in CPU_BACKENDS:
        b = rep["backends"][name]
        runs = b["batches"]["3"]
        assert len(runs) == 2 and all(run["videos"] == 3 and run["chunks"] == 1 for run in runs)
        assert all(run["unet_calls"] == 3 for run in runs)  # one batched call per step, not 3 per step
        r = b["results"]["batches"]
        total = statistics.median(run["total_s"] for run in runs)
        assert r["3"]["videos_per_s"] == pytest.approx(3 / total)
        assert r["3"]["speedup_vs_b1"] == pytest.approx(r["3"]["videos_per_s"] / r["1"]["videos_per_s"])
        assert r["1"]["videos_per_s"] == pytest.approx(1 / b["results"]["total_s"])
    assert "| backend | B=1 | B=3 |" in table
    assert sum(line.startswith(f"| {n} | ") for n in CPU_BACKENDS for line in table.splitlines()) == 4


@pytest.mark.slow
def test_layout_grounded_bundles_time_their_layout_stage(grounded_bundle, tmp_path):
    """A layout-grounded bundle on both CPU backends: the layout stage as its own figure (and column), the
    stages adding up with it, batches still timed, the same frames on both backends."""
    argv = ["--bundle", str(grounded_bundle), "--repeats", "2", "--warmup", "0", "--steps", "2", "--threads",
            "1", "--peak-size", "64", "--write", "none", "--batch", "2", "--backends", *CPU_BACKENDS,
            "--json", str(tmp_path / "b.json")]
    assert bench.main(argv) == 0
    rep = json.loads((tmp_path / "b.json").read_text())
    for name in CPU_BACKENDS:
        b = rep["backends"][name]
        assert "error" not in b, b.get("error")
        r = b["results"]
        assert r["layout_s"] == statistics.median(run["layout_s"] for run in b["runs"]) > 0
        assert r["layout_draws"] == statistics.median(sum(run["layout_draws"]) for run in b["runs"]) >= 1
        for run in b["runs"]:
            parts = (run["encoder_s"] + run["layout_s"] + run["denoiser_s"] + run["sampler_overhead_s"]
                     + run["decode_s"])
            assert parts == pytest.approx(run["total_s"], rel=1e-9, abs=1e-9)
        assert all(len(run["layout_draws"]) == 2 for run in b["batches"]["2"])
        row = next(line for line in rep["table"].splitlines() if line.startswith(f"| {name} | "))
        assert f"| {r['layout_s'] * 1e3:.1f} ({r['layout_draws']:g}) |" in row
    assert "| layout ms (draws) |" in rep["table"]
    diff = rep["backends"]["ort-cpu"]["frames_vs_baseline"]
    assert diff["max_abs"] <= 1 and diff["mean_abs"] < 0.05


def test_help_explains_every_figure():
    text = bench.build_parser().format_help()
    for word in ("end-to-end", "encoder", "layout", "denoiser step", "sampler overh", "decode / write",
                 "cold start", "peak RSS", "CUDA peak", "x vs baseline", "TFLOP/s", "targets",
                 "sampler steps (default: the bundle's"):
        assert word in text, word


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert bench.main(["--bundle", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sg2v-bench: error:") and "does not exist" in err and "\n" not in err


def test_peak_rss_sees_memory_this_process_touched():
    before = bench.peak_rss_bytes()
    block = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, written
    assert bench.peak_rss_bytes() >= max(before, block.nbytes)


def test_summarise_against_a_direct_computation(rng):

    def runs(n):
        out = []
        for _ in range(n):
            steps = list(rng.uniform(0.01, 0.1, 4))
            enc, ovh, dec = rng.uniform(0.001, 0.01, 3)
            out.append({"encoder_s": enc, "denoiser_s": sum(steps), "denoiser_steps_s": steps,
                        "unet_calls": 4,
                        "sampler_overhead_s": ovh, "decode_s": dec, "total_s": enc + sum(steps) + ovh + dec,
                        "write_s": rng.uniform(0.01, 0.02)})
        return out

    rows = {name: {"runs": runs(3), "cold_start_s": rng.uniform(1, 5), "peak_rss_bytes": 2 ** 28,
                   "cold": {"start_to_main_s": 0.1, "load_s": rng.uniform(0.1, 0.5)}}
            for name in ("torch-cpu", "ort-cpu")}
    flops = int(rng.integers(10 ** 9, 10 ** 10))
    bench.summarise(rows, flops, {"cpu": {"tflops": 0.5}})
    for b in rows.values():
        totals = sorted(run["total_s"] for run in b["runs"])
        assert b["results"]["total_s"] == totals[1]
        assert b["results"]["startup_s"] == pytest.approx(0.1 + b["cold"]["load_s"])
        steps = sorted(s for run in b["runs"] for s in run["denoiser_steps_s"])
        assert b["results"]["denoiser_step_s"] == pytest.approx((steps[5] + steps[6]) / 2)
        achieved = flops / b["results"]["denoiser_step_s"]
        assert b["results"]["peak_fraction"] == pytest.approx(achieved / 0.5e12)
    assert rows["ort-cpu"]["ratios"]["torch-cpu"]["total_speedup"] == pytest.approx(
        rows["torch-cpu"]["results"]["total_s"] / rows["ort-cpu"]["results"]["total_s"])


def test_torch_tensorrt_peer_row_is_offered_and_says_what_it_needs(bundle, monkeypatch):
    """The Torch-TensorRT row (torch_tensorrt.compile of the fp16 UNet): a GPU row of the torch-cuda
    backend; without CUDA or without the package it is skipped with the reason (never measured here)."""
    import importlib.util

    import torch

    from sg2v.runtime.bundle import Bundle

    v = bench.VARIANTS["torch-tensorrt-fp16"]
    assert (v.runtime, v.mode, v.precision, v.gpu) == ("torch-cuda", "torch_tensorrt", "fp16", True)
    b = Bundle.open(bundle)
    if not torch.cuda.is_available():
        assert bench.unavailable_reason(v, b, None) == "PyTorch sees no CUDA device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch_tensorrt" else real(name, *a))
    assert bench.unavailable_reason(v, b, None) == ("torch_tensorrt is not installed (pip install "
                                                    "'sg2v[torch-trt]')")
    assert "torch-tensorrt-fp16" in " ".join(bench.build_parser().format_help().split())


@pytest.mark.slow
def test_a_student_beside_its_teacher(grounded_bundle, student_bundle, tmp_path):
    """--compare: the student's UNet calls (one row per video per step) and FLOPs per video against the
    teacher's (two rows), each backend's end-to-end time against the teacher's, the student's target rows,
    and the comparison table; the student's own step counts come from --compare-steps."""
    from sg2v.models.unet import unet_flops
    from sg2v.runtime.bundle import Bundle

    argv = ["--bundle", str(grounded_bundle), "--steps", "4", "--compare", str(student_bundle),
            "--compare-steps", "2", "--repeats", "2", "--warmup", "0", "--threads", "1", "--peak-size", "64",
            "--write", "none", "--backends", *CPU_BACKENDS, "--json", str(tmp_path / "b.json")]
    assert bench.main(argv) == 0
    rep = json.loads((tmp_path / "b.json").read_text())
    teacher, student = rep["compare"]["bundles"]
    assert rep["compare"]["first"] == teacher["bundle"] == str(grounded_bundle)
    keys = ("student", "steps", "unet_calls_per_video", "unet_rows_per_call")
    assert [teacher[k] for k in keys] == [False, 4, 4, 2]
    assert [student[k] for k in keys] == [True, 2, 2, 1]
    for row, path, rows in ((teacher, grounded_bundle, 2), (student, student_bundle, 1)):
        cfg = Bundle.open(path).config
        assert row["unet_flops_per_video"] == unet_flops(cfg, batch=rows) * row["unet_calls_per_video"]
    assert student["vs_first"]["flops_ratio"] == pytest.approx(
        teacher["unet_flops_per_video"] / student["unet_flops_per_video"])
    assert student["vs_first"]["calls_ratio"] == 4.0 and teacher["vs_first"]["calls_ratio"] == 1.0
    assert rep["backends"]["ort-cpu"]["results"]["total_s"] == teacher["backends"]["ort-cpu"]["total_s"]
    targets = [t for t in rep["targets"] if t["target"].startswith("student")]
    assert sorted(t["backend"] for t in targets) == sorted(CPU_BACKENDS)
    for name in CPU_BACKENDS:
        x = teacher["backends"][name]["total_s"] / student["backends"][name]["total_s"]
        assert student["vs_first"]["total_speedup"][name] == pytest.approx(x)
        t = next(t for t in targets if t["backend"] == name)
        assert t["value"] == pytest.approx(x) and t["pass"] == (x >= 3.5)
        assert f"| {student['name']} | student (guidance distilled) | 2 | 2 x 1 |" in rep["table"]
        assert f"| {name} | {student['backends'][name]['total_s']:.3f} | {x:.2f} |" in rep["table"]
    assert "| bundle | kind | steps | UNet calls x rows per video |" in rep["table"]


def test_a_step_count_the_student_was_not_distilled_for_is_refused_first(student_bundle, capsys):
    assert bench.main(["--bundle", str(student_bundle), "--steps", "8", "--backends", "ort-cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("sg2v-bench: error: bundle ") and "\n" not in err, err
    assert "8 steps: this student was distilled for [1, 2, 4] steps" in err


def test_without_steps_a_student_is_timed_at_its_own_step_count(student_bundle, tmp_path):
    """--steps defaults to the bundle's, as in sg2v-run: a student runs at the step count it was distilled
    for instead of being refused."""
    from sg2v.runtime.bundle import Bundle

    argv = ["--bundle", str(student_bundle), "--repeats", "1", "--warmup", "0", "--threads", "1",
            "--write", "none", "--backends", "ort-cpu", "--json", str(tmp_path / "b.json")]
    assert bench.main(argv) == 0
    rep = json.loads((tmp_path / "b.json").read_text())
    steps = Bundle.open(student_bundle, verify=False).sampler_defaults["steps"]
    assert rep["settings"]["steps"] == steps
    assert rep["backends"]["ort-cpu"]["results"]["unet_calls"] == steps


def test_compare_steps_are_checked(tmp_path, capsys):
    base = ["--bundle", str(tmp_path / "a")]
    for extra, why in ((["--compare-steps", "2"], "add --compare BUNDLE"),
                       (["--compare", "b", "c", "--compare-steps", "1", "2", "4"], "3 values for 2"),
                       (["--compare", "b", "--compare-steps", "0"], "--compare-steps 0: must be >= 1")):
        assert bench.main([*base, *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("sg2v-bench: error:") and why in err and "\n" not in err, err
