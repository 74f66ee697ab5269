"""The README's commands are the project's front door: run the main job exactly as written (after set-up)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

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


def test_readme_main_job_runs_and_writes_its_outputs():
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
