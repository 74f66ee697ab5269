"""tests/conftest.py's switches: under SG2V_REQUIRE_GPU / SG2V_REQUIRE_CUDA_BUILD a skip of what must run
fails.

Each case runs pytest in a subprocess on a throwaway test folder holding a copy of the real conftest.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

SKIPPING = '''
import pytest

@pytest.mark.gpu
def test_gpu():
    pytest.skip("no CUDA GPU")

@pytest.mark.cuda_build
def test_build():
    pytest.skip("nvcc not found")

@pytest.mark.gpu
@pytest.mark.trt
def test_trt():
    pytest.skip("TensorRT cannot be installed")

def test_plain():
    pytest.skip("optional")
'''

MODULE_SKIP = '''
import pytest

np = pytest.importorskip("sg2v_no_such_package")

@pytest.mark.gpu
def test_hidden():
    pass
'''


def _pytest(tmp_path: Path, files: dict[str, str], **env: str) -> subprocess.CompletedProcess:
    folder = tmp_path / "suite"
    folder.mkdir(parents=True)
    shutil.copy(CONFTEST, folder / "conftest.py")
    for name, text in files.items():
        (folder / name).write_text(text)
    ini = "[pytest]\nmarkers =\n    gpu: x\n    trt: x\n    cuda_build: x\n"
    (folder / "pytest.ini").write_text(ini)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SG2V_REQUIRE")}
    argv = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(folder)]
    return subprocess.run(argv, cwd=folder, env={**base, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("switch, failing", [
    ({}, set()),
    ({"SG2V_REQUIRE_GPU": "1"}, {"test_gpu"}),
    ({"SG2V_REQUIRE_CUDA_BUILD": "1"}, {"test_build"}),
    ({"SG2V_REQUIRE_GPU": "1", "SG2V_REQUIRE_CUDA_BUILD": "1"}, {"test_gpu", "test_build"}),
])
def test_skips_fail_only_under_their_switch(tmp_path, switch, failing):
    r = _pytest(tmp_path, {"test_skipping.py": SKIPPING}, **switch)
    failed = {line.split("::")[1].split()[0] for line in r.stdout.splitlines() if line.startswith("FAILED")}
    assert failed == failing, r.stdout
    assert r.returncode == (1 if failing else 0), r.stdout
    for name in failing:
        assert "=1 but this" in r.stdout and name in r.stdout


def test_module_skipped_at_collection_fails_under_require_gpu(tmp_path):
    r = _pytest(tmp_path, {"test_hidden.py": MODULE_SKIP})
    assert r.returncode in (0, 5) and "1 skipped" in r.stdout, r.stdout  # 5: pytest ran no test
    r = _pytest(tmp_path / "again", {"test_hidden.py": MODULE_SKIP}, SG2V_REQUIRE_GPU="1")
    assert r.returncode not in (0, 5), r.stdout
    assert "skipped whole at collection, so its gpu tests cannot run" in r.stdout
    assert "sg2v_no_such_package" in r.stdout


SEEDED = '''
def test_draws(rng):
    assert rng.integers(1 << 30) < 0  # fails whatever it draws
'''


def test_a_failing_test_names_its_seed_and_the_seed_replays_it(tmp_path):
    """The `rng` fixture's failure report names the seed; SG2V_TEST_SEED=N gives the same draws again."""
    first = _pytest(tmp_path / "a", {"test_seeded.py": SEEDED})
    assert first.returncode == 1, first.stdout
    line = next(s for s in first.stdout.splitlines() if "inputs drawn from seed" in s)
    seed = line.split("inputs drawn from seed ")[1].split(";")[0]
    assert f"SG2V_TEST_SEED={seed} pytest" in line
    drawn = [s for s in first.stdout.splitlines() if s.startswith("E ") and "assert" in s]
    again = _pytest(tmp_path / "b", {"test_seeded.py": SEEDED}, SG2V_TEST_SEED=seed)
    assert again.returncode == 1 and f"inputs drawn from seed {seed};" in again.stdout
    assert drawn and drawn[0] in again.stdout  # the same number was drawn
