"""Pipeline.submit, cancellation and progress events on ONNX Runtime (CPU); sg2v-run --progress and Ctrl-C;
examples/planner.py on the shipped demo bundle.

Submitted calls are held to the synchronous call's frames bit for bit. Jobs are held at a point of their run
by a progress callback that waits on an event (`Gate`), never by sleeping, so each case is deterministic.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import io
import math
import re
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import make_fake_bundle, random_graph

from sg2v.errors import Cancelled, GraphError, Sg2vError
from sg2v.runtime import Pipeline
from sg2v.runtime.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "demo"
WAIT_S = 60  # the longest a test waits for the worker before it fails


class Gate:
    """A progress callback that records every event and holds the worker at its first one until released."""

    def __init__(self):
        self.reached, self.release = threading.Event(), threading.Event()
        self.events = []

    def __call__(self, event):
        self.events.append(event)
        self.reached.set()
        assert self.release.wait(WAIT_S), "the test never released the gate"


@pytest.fixture
def fake(tmp_path, test_seed):
    return make_fake_bundle(tmp_path / "bundle", seed=test_seed % 10_000)[0]


@pytest.fixture
def pipe(fake):
    with Pipeline.from_bundle(fake, backend="ort", threads=1) as p:
        yield p


def _calls(rng, n, most=3):
    """n calls of 1..most random graphs, each with its own random seeds."""
    out = []
    for _ in range(n):
        k = int(rng.integers(1, most + 1))
        out.append(([random_graph(rng) for _ in range(k)], [int(s) for s in rng.integers(1 << 30, size=k)]))
    return out


def test_submitted_frames_equal_synchronous_frames(pipe, rng):
    calls = _calls(rng, 5)
    want = [pipe.run(g, s, steps=3).frames for g, s in calls]
    steps = []
    jobs = [pipe.submit(g, s, steps=3, callback=lambda i, t, x, x0: steps.append(i)) for g, s in calls]
    for job, frames in zip(jobs, want):
        got = job.result(timeout=WAIT_S)
        np.testing.assert_array_equal(got.frames, frames)
        assert got.timings["videos"] == len(frames)
    assert steps == [0, 1, 2] * len(calls)  # the per-step callback ran for each call, in the worker
    assert all(job.done() and not job.running() for job in jobs)


def test_threads_sharing_one_pipeline_get_the_serial_frames(pipe, rng):
    calls = _calls(rng, 6, most=2)
    want = [pipe.generate(g, s, steps=2) for g, s in calls]
    got: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(calls))

    def work(i):
        g, s = calls[i]
        start.wait()
        got[i] = pipe.generate(g, s, steps=2) if i % 2 else pipe.submit(g, s, steps=2).result().frames

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert sorted(got) == list(range(len(calls)))
    for i, frames in enumerate(want):
        np.testing.assert_array_equal(got[i], frames)


def test_cancel_before_start_drops_the_job(pipe, rng):
    (ga, sa), (gb, sb), (gc, sc) = _calls(rng, 3)
    gate, late = Gate(), []
    a = pipe.submit(ga, sa, steps=2, progress=gate)
    assert gate.reached.wait(WAIT_S) and a.running()
    b = pipe.submit(gb, sb, steps=2, progress=late.append)
    c = pipe.submit(gc, sc, steps=2)
    assert not b.running() and b.cancel() and b.cancelled()
    gate.release.set()
    done, _ = cf.wait([a, b, c], timeout=WAIT_S)
    assert done == {a, b, c}
    with pytest.raises(cf.CancelledError):
        b.result()
    assert late == []  # it never started
    np.testing.assert_array_equal(a.result().frames, pipe.generate(ga, sa, steps=2))
    np.testing.assert_array_equal(c.result().frames, pipe.generate(gc, sc, steps=2))


def test_cancel_during_a_run_stops_at_the_next_step(pipe, rng):
    (g, s), (g2, s2) = _calls(rng, 2)
    k = int(rng.integers(1, 5))  # cancel after step k of 5
    ready, holder, events = threading.Event(), [], []

    def progress(event):
        ready.wait(WAIT_S)  # until the test holds the job
        events.append(event)
        if event.stage == "step" and event.index == k:
            assert holder[0].running()
            assert holder[0].cancel()

    holder.append(pipe.submit(g, s, steps=5, progress=progress))
    ready.set()
    job = holder[0]
    done, _ = cf.wait([job], timeout=WAIT_S)
    assert done == {job} and job.cancelled() and not job.running()
    with pytest.raises(cf.CancelledError):
        job.result()
    assert [(e.stage, e.index) for e in events] == [("encoder", 1)] + [("step", i) for i in range(1, k + 1)]
    # the stopped run leaves the pipeline as it was: the next call gives the serial frames
    np.testing.assert_array_equal(pipe.submit(g2, s2, steps=3).result(WAIT_S).frames,
                                  pipe.generate(g2, s2, steps=3))


def test_a_synchronous_call_stops_when_its_cancel_event_is_set(pipe, rng):
    (g, s), = _calls(rng, 1)
    k = int(rng.integers(1, 4))
    cancel, events, steps = threading.Event(), [], []

    def progress(event):
        events.append(event.stage)
        if event.stage == "step" and event.index == k:
            cancel.set()

    with pytest.raises(Cancelled, match=f"after step {k}/4"):
        pipe.run(g, s, steps=4, progress=progress, cancel=cancel, callback=lambda i, *_: steps.append(i))
    assert events == ["encoder"] + ["step"] * k and steps == list(range(k))
    with pytest.raises(Cancelled, match="after nothing"):  # set before the call: no stage runs
        pipe(g[0], seed=s[0], progress=events.append, cancel=cancel)
    assert len(events) == 1 + k


def test_a_full_queue_is_one_line_naming_the_limit(fake, rng):
    calls = _calls(rng, 4)
    with Pipeline.from_bundle(fake, backend="ort", threads=1, max_pending=2) as pipe:
        gate = Gate()
        jobs = [pipe.submit(*calls[0], steps=2, progress=gate)]
        assert gate.reached.wait(WAIT_S)  # the worker holds the first job: the queue is empty
        jobs += [pipe.submit(*c, steps=2) for c in calls[1:3]]
        with pytest.raises(Sg2vError) as e:
            pipe.submit(*calls[3], steps=2)
        msg = str(e.value)
        assert "\n" not in msg and "2 submitted generations" in msg and "max_pending" in msg
        gate.release.set()
        for job, (g, s) in zip(jobs, calls):
            np.testing.assert_array_equal(job.result(WAIT_S).frames, pipe.generate(g, s, steps=2))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(Sg2vError, match="max_pending"):
            Pipeline.from_bundle(fake, backend="ort", max_pending=bad)


def test_bad_inputs_fail_at_submit_in_the_callers_thread(pipe, rng):
    g = random_graph(rng)
    cases = [(GraphError, dict(graphs=[{"objects": ["red circel"], "relationships": []}], seeds=[0])),
             (Sg2vError, dict(graphs=[g], seeds=[0, 1])),
             (Sg2vError, dict(graphs=[g], seeds=[-1])),
             (Sg2vError, dict(graphs=[g], seeds=[0], steps=0)),
             (Sg2vError, dict(graphs=[g], seeds=[0], output="cupy")),
             (Sg2vError, dict(graphs=[g], seeds=[0], max_batch=0)),
             (Sg2vError, dict(graphs=[g], seeds=[0], layouts=[{0: np.zeros((2, 4))}])),
             (Sg2vError, dict(graphs=[], seeds=[]))]
    for error, kwargs in cases:
        with pytest.raises(error) as e:
            pipe.submit(**kwargs)
        assert "\n" not in str(e.value)
    assert pipe._worker is None and pipe._queue.empty()  # nothing was queued, no worker started


def test_progress_events_of_a_chunked_call(pipe, rng):
    graphs, seeds = [random_graph(rng) for _ in range(3)], [int(s) for s in rng.integers(1 << 30, size=3)]
    seen = []
    pipe.run(graphs, seeds, steps=3, max_batch=2, progress=seen.append,
             callback=lambda i, t, x, x0: seen.append(("callback", i, x.shape[0])))
    want = []
    for chunk, (lo, hi) in enumerate(((0, 2), (2, 3))):
        want.append(("encoder", 1, 1, (lo, hi), chunk))
        for i in range(3):
            want += [("callback", i, hi - lo), ("step", i + 1, 3, (lo, hi), chunk)]
        want.append(("decode", 1, 1, (lo, hi), chunk))
    events = [e for e in seen if not isinstance(e, tuple)]
    assert [e if isinstance(e, tuple) else (e.stage, e.index, e.total, e.videos, e.chunk)
            for e in seen] == want
    assert all(e.chunks == 2 for e in events)
    assert [e.fraction for e in events] == [n / 10 for n in range(1, 11)]  # 5 units a chunk: encoder,3,decode
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(events, events[1:]))
    assert events[-1].describe().startswith("decode, video 2 (chunk 2/2), ")


@pytest.fixture(scope="module")
def demo():
    if not (DEMO / "manifest.json").is_file():
        pytest.skip("models/demo is not in this checkout")
    with Pipeline.from_bundle(DEMO, backend="ort", threads=1) as p:
        yield p


def test_progress_events_of_a_grounded_call_count_the_layout_rounds(demo, rng):
    from sg2v.layout_sampler import max_rounds

    graphs = [{"objects": ["red circle", "blue square", "green triangle"],
               "relationships": [[0, "left of", 1], [2, "above", 0]]}, random_graph(rng)]
    seeds = [int(s) for s in rng.integers(1 << 30, size=2)]
    events = []
    result = demo.run(graphs, seeds, steps=1, progress=events.append)
    s = demo.bundle.layout
    per = min(s["per_round"], s["tries"])
    rounds = max(math.ceil(r.draws / per) for r in result.layouts)
    total = max_rounds(s["tries"], s["per_round"])
    assert [(e.stage, e.index, e.total) for e in events] == (
        [("encoder", 1, 1)] + [("layout", k, total) for k in range(1, rounds + 1)] + [("step", 1, 1),
                                                                                   ("decode", 1, 1)])
    cancel = threading.Event()
    with pytest.raises(Cancelled, match=f"after layout round 1/{total}"):  # stopped inside the layout stage
        demo.run(graphs, seeds, steps=1, cancel=cancel,
                 progress=lambda e: e.stage == "layout" and cancel.set())


def test_close_cancels_queued_and_running_jobs(fake, rng):
    calls = _calls(rng, 3)
    pipe = Pipeline.from_bundle(fake, backend="ort", threads=1)
    gate = Gate()
    a = pipe.submit(*calls[0], steps=4, progress=gate)
    assert gate.reached.wait(WAIT_S)
    b, c = (pipe.submit(*cl, steps=4) for cl in calls[1:])
    closer = threading.Thread(target=pipe.close)
    closer.start()
    done, _ = cf.wait([b, c], timeout=WAIT_S)
    assert done == {b, c} and b.cancelled() and c.cancelled()
    with pytest.raises(cf.CancelledError):
        a.result(timeout=WAIT_S)  # cancelled by close while it runs
    gate.release.set()
    closer.join(WAIT_S)
    assert not closer.is_alive() and [e.stage for e in gate.events] == ["encoder"]
    with pytest.raises(Sg2vError, match="closed"):
        pipe.submit(*calls[0])


# ------------------------------------------------------------------------------------------- sg2v-run
def _graph_file(tmp_path, rng):
    import json

    path = tmp_path / "g.json"
    path.write_text(json.dumps(random_graph(rng)))
    return path


def test_cli_progress_prints_one_line_per_stage_and_step(fake, tmp_path, rng, capsys):
    g = _graph_file(tmp_path, rng)
    out = tmp_path / "v.npy"
    assert main([str(g), "--bundle", str(fake), "--backend", "ort", "--out", str(out), "--steps", "3",
                 "--progress"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(r", \d+\.\d\d s$", "", line) for line in lines] == [
        "sg2v-run:  20% encoder, video 0", "sg2v-run:  40% step 1/3, video 0",
        "sg2v-run:  60% step 2/3, video 0", "sg2v-run:  80% step 3/3, video 0",
        "sg2v-run: 100% decode, video 0"]
    assert out.is_file()
    assert "--progress" in build_parser().format_help()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_cli_progress_draws_a_bar_on_a_terminal(fake, tmp_path, rng, monkeypatch):
    g = _graph_file(tmp_path, rng)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main([str(g), "--bundle", str(fake), "--backend", "ort", "--out", str(tmp_path / "v.npy"),
                 "--steps", "2", "--progress"]) == 0
    text = term.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 4 and text.endswith("\n") and text.count("\n") == 1
    assert frames[0].startswith("sg2v-run: [" + "#" * 6 + "." * 18 + "]  25% encoder, video 0")
    assert frames[-1].startswith("sg2v-run: [" + "#" * 24 + "] 100% decode, video 0")


def test_progress_bar_parts_number_videos_and_fractions_over_the_whole_run(pipe, rng):
    """sg2v-run generates many graphs as several calls: each call's events carry the run's video numbers and
    its share of the run, so the bar rises once to 100%."""
    from sg2v.runtime.progress import ProgressBar

    graphs, seeds = [random_graph(rng) for _ in range(5)], [int(s) for s in rng.integers(1 << 30, size=5)]
    stream = io.StringIO()
    bar = ProgressBar(stream, "x")
    for start, stop in ((0, 2), (2, 5)):
        with bar:
            pipe.run(graphs[start:stop], seeds[start:stop], steps=2, max_batch=2,
                     progress=bar.part(start, stop, 5))
    lines = stream.getvalue().splitlines()
    pcts = [int(re.match(r"x: +(\d+)% ", line).group(1)) for line in lines]
    assert len(lines) == 3 * 4 and pcts == sorted(pcts) and pcts[-1] == 100
    assert [line.split(", ")[1] for line in lines if " decode," in line] == [
        "videos 0-1", "videos 2-3 (chunk 1/2)", "video 4 (chunk 2/2)"]
    assert ProgressBar(stream, "x", enabled=False).part(0, 1, 1) is None


class _CtrlC(io.StringIO):
    """stderr that presses Ctrl-C `times` times when the first line with `at` is written."""

    def __init__(self, at, times):
        super().__init__()
        self.at, self.times = at, times

    def write(self, s):
        n = super().write(s)
        if self.at is not None and self.at in s:
            self.at = None
            for _ in range(self.times):
                signal.raise_signal(signal.SIGINT)
        return n


@pytest.mark.parametrize("times", [1, 2])
def test_cli_ctrl_c_mid_run_leaves_no_output(fake, tmp_path, rng, monkeypatch, times):
    """One Ctrl-C stops the generation at the next step; a second interrupts at once. Neither writes."""
    g = _graph_file(tmp_path, rng)
    err = _CtrlC("step 2/4", times)
    monkeypatch.setattr(sys, "stderr", err)
    before = signal.getsignal(signal.SIGINT)
    code = main([str(g), "--bundle", str(fake), "--backend", "ort", "--out", str(tmp_path / "v.gif"),
                 "--contact-sheet", str(tmp_path / "sheet.png"), "--steps", "4", "--progress"])
    assert code == 130
    last = err.getvalue().splitlines()[-1]
    if times == 1:  # stopped by the cancel event after the step that was running
        assert last.startswith("sg2v-run: interrupted: generation cancelled after step 2/4, video 0, ")
    else:
        assert last == "sg2v-run: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "g.json"]
    assert signal.getsignal(signal.SIGINT) is before


def test_cli_real_sigint_stops_a_subprocess_without_output(tmp_path):
    """A real Ctrl-C to sg2v-run (the demo at 20 steps, signalled as soon as step 1 is reported): it stops at
    its next step, exits 130 with one line, and writes nothing."""
    import subprocess

    if not (DEMO / "manifest.json").is_file():
        pytest.skip("models/demo is not in this checkout")
    graph = ROOT / "examples" / "graphs" / "02_left_of.json"
    cmd = [sys.executable, "-c", "import sys; from sg2v.runtime.cli import main; sys.exit(main())",
           str(graph), "--bundle", str(DEMO), "--backend", "ort", "--threads", "1", "--steps", "20",
           "--progress", "--out", str(tmp_path / "v.npy")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "step 1/20" in line:
                proc.send_signal(signal.SIGINT)
                break
        lines += proc.stderr.read().splitlines()
        assert proc.wait(WAIT_S) == 130, lines
    finally:
        proc.kill()
        proc.stderr.close()
    assert lines[-1].startswith("sg2v-run: interrupted: generation cancelled after step "), lines
    assert not any("decode" in line for line in lines)
    assert list(tmp_path.iterdir()) == []


def test_cli_interrupted_while_writing_leaves_no_file(fake, tmp_path, rng, monkeypatch, capsys):
    import sg2v.video

    g = _graph_file(tmp_path, rng)

    def half_written(tmp, a, fps, kind):
        Path(tmp).write_bytes(b"GIF89a")
        raise KeyboardInterrupt

    monkeypatch.setattr(sg2v.video, "_write_animation", half_written)
    assert main([str(g), "--bundle", str(fake), "--backend", "ort", "--out", str(tmp_path / "v.gif"),
                 "--steps", "2"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "sg2v-run: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "g.json"]


# ------------------------------------------------------------------------------------ examples/planner.py
def _planner(monkeypatch):
    spec = importlib.util.spec_from_file_location("planner", ROOT / "examples" / "planner.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "planner", module)  # its dataclass resolves annotations there
    spec.loader.exec_module(module)
    return module


def test_planner_picks_a_kept_future_and_writes_its_frames(demo, tmp_path, capsys, monkeypatch):
    planner = _planner(monkeypatch)
    with pytest.raises(SystemExit) as e:
        planner.main(["--help"])
    assert e.value.code == 0 and "--futures" in capsys.readouterr().out
    out = tmp_path / "plan.npy"
    assert planner.main(["--futures", "3", "--per-call", "2", "--steps", "1", "--backend", "ort",
                         "--threads", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    graph = demo.parse(planner.DEMO_GRAPH)
    # the planner's calls: futures 0-1 together, then 2 alone (batches give the frames of their own size)
    runs = [demo.run([graph, graph], [0, 1], steps=1), demo.run([graph], [2], steps=1)]
    futures = [planner.Candidate(i, i, f, lay) for i, (f, lay) in
               enumerate((f, lay) for r in runs for f, lay in zip(r.frames, r.layouts))]
    kept = [c for c in futures if c.layout.satisfied]
    pick = max(kept, key=lambda c: (c.room, -c.index))
    assert f"kept {len(kept)} of 3; picked future {pick.index} (seed {pick.index})" in text
    np.testing.assert_array_equal(np.load(out), pick.frames)
    assert len(re.findall(r"^  future \d \(seed \d\): ", text, flags=re.M)) == 3


def test_planner_enough_cancels_the_calls_left(demo, tmp_path, capsys, monkeypatch):
    planner = _planner(monkeypatch)
    out = tmp_path / "plan.npy"
    assert planner.main(["--futures", "4", "--per-call", "1", "--enough", "1", "--steps", "1", "--backend",
                         "ort", "--threads", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    cancelled = int(re.search(r"planner: 1 kept; cancelled (\d) call", text).group(1))
    assert cancelled in (2, 3)  # the queued calls, and the running one unless it finished meanwhile
    seed = int(re.search(r"picked future \d \(seed (\d)\)", text).group(1))
    graph = demo.parse(planner.DEMO_GRAPH)
    want = demo.run([graph], [seed], steps=1)
    assert want.layouts[0].satisfied
    np.testing.assert_array_equal(np.load(out), want.frames[0])
