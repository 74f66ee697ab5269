"""The README's commands are the project's front door: run the main job exactly as written (after set-up)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)


def _as_local(cmd: str) -> list[str]:
    """The README command after `bash scripts/setup.sh &&`, `.venv/bin/` mapped to this interpreter's venv."""
    setup, _, job = cmd.partition("&&")
    assert "scripts/setup.sh" in setup, "README commands must start with the set-up script"
    bindir = Path(sys.executable).parent
    argv = shlex.split(job.strip())
    out = []
    for a in argv:
        if a.startswith(".venv/bin/"):
            name = a.removeprefix(".venv/bin/")
            a = sys.executable if name == "python" else str(bindir / name)
        out.append(a)
    return out


def test_readme_opens_with_setup_main_job_and_test_commands():
    blocks = _bash_blocks()
    assert len(blocks) >= 2
    main, tests = blocks[0], blocks[1]
    assert main.startswith("bash scripts/setup.sh && ")
    assert tests.startswith("bash scripts/setup.sh && ") and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "ci-test-command" in ci and "README.md" in ci


MP4_MEAN_LEVELS = 4.0  # H.264 4:2:0 at CRF 12 vs the exact frames: 1.7 measured; another seed's video: 12


def test_readme_main_job_writes_the_frames_the_python_api_gives():
    """Run the main job as written, then decode what it wrote: the contact sheet equals the Python API's
    frames for the same graph, bundle and seed exactly, the mp4 within H.264's loss."""
    argv = _as_local(_bash_blocks()[0])
    outputs = [ROOT / a for a in argv if a.startswith("out/")]
    assert outputs, "the main job should write under out/"
    for p in outputs:
        if p.exists() and p.is_file():
            p.unlink()
    env = dict(os.environ)
    r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for p in outputs:
        assert p.exists() and (p.is_dir() or p.stat().st_size > 0), f"{p} was not written"

    from PIL import Image

    from sg2v.runtime import Pipeline
    from sg2v.runtime.cli import build_parser
    from sg2v.video import contact_sheet, read_video

    assert Path(argv[0]).name == "sg2v-run"
    args = build_parser().parse_args(argv[1:])
    assert len(args.graphs) == 1 and args.contact_sheet, "the main job: one graph, a video and a sheet"
    pipe = Pipeline.from_bundle(ROOT / args.bundle, backend=args.backend, threads=args.threads)
    graph = json.loads((ROOT / args.graphs[0]).read_text())
    want = pipe(graph, seed=args.seed, steps=args.steps, guidance=args.guidance, sampler=args.sampler)
    with Image.open(ROOT / args.contact_sheet) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), contact_sheet(want))
    video = read_video(ROOT / args.out)
    assert video.shape == want.shape
    assert np.abs(video.astype(int) - want).mean() < MP4_MEAN_LEVELS
