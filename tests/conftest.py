"""Suite-wide switches and fixtures (shared helper functions are in helpers.py).

Every test runs with one torch intra-op thread: the CI cores are shared, and contended threads make tiny ops
many times slower.

SG2V_REQUIRE_GPU=1 (set by the GPU session scripts under bench/) turns every skipped `gpu`-marked test into a
failure, so a GPU machine whose CUDA stack is broken cannot pass by skipping. Tests also marked `trt` keep
their skip: TensorRT is absent from the project's GPU machines.

SG2V_REQUIRE_CUDA_BUILD=1 (set by CI: the project's machines have nvcc 13, CMake and NVRTC) does the same for
`cuda_build`-marked tests: the CMake build of cuda/ and the NVRTC compiles.

Random inputs come from the `test_seed` / `rng` fixtures: a fresh seed per run, printed in a failing
test's report ("random seed" section) and replayed with SG2V_TEST_SEED=N.

Under SG2V_REQUIRE_GPU=1 a test module skipped whole at collection (a module-level `pytest.importorskip`)
fails too: its `gpu` tests never reach the per-test check, so a missing package would otherwise hide them.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from pathlib import Path

import pytest

SWITCHES = {"gpu": "SG2V_REQUIRE_GPU", "cuda_build": "SG2V_REQUIRE_CUDA_BUILD"}


def _required(marker: str) -> bool:
    return os.environ.get(SWITCHES[marker]) == "1"


def _reason(report) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


SEED_SWITCH = "SG2V_TEST_SEED"


@pytest.fixture
def test_seed(request) -> int:
    """This test's seed for its random inputs: fresh each run, or SG2V_TEST_SEED=N to replay a failure; a
    failing test's report names it."""
    text = os.environ.get(SEED_SWITCH)
    seed = int(text) if text else secrets.randbits(32)
    request.node.stash[_SEED] = seed
    return seed


@pytest.fixture
def rng(test_seed):
    """`numpy.random.default_rng(test_seed)`: random inputs that a failure report lets one replay."""
    import numpy as np

    return np.random.default_rng(test_seed)


_SEED = pytest.StashKey[int]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = item.stash.get(_SEED, None)
    if report.failed and seed is not None:
        text = f"inputs drawn from seed {seed}; replay: {SEED_SWITCH}={seed} pytest '{item.nodeid}'"
        report.sections.append(("random seed", text))
    if not report.skipped or item.get_closest_marker("trt") is not None:
        return
    for marker, switch in SWITCHES.items():
        if _required(marker) and item.get_closest_marker(marker) is not None:
            report.outcome = "failed"
            report.longrepr = f"{switch}=1 but this {marker} test was skipped: {_reason(report)}"
            return


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _required("gpu") and report.skipped and isinstance(collector, pytest.Module):
        report.outcome = "failed"
        report.longrepr = (f"{SWITCHES['gpu']}=1 but {collector.nodeid} was skipped whole at collection, "
                           f"so its gpu tests cannot run: {_reason(report)}")


@pytest.fixture(autouse=True)
def one_torch_thread():
    if importlib.util.find_spec("torch") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def real_bundle(tmp_path_factory) -> Path:
    """A tiny random SG2V exported by the real exporter with its weights, once per session."""
    from helpers import export_random_bundle

    bundle, _ = export_random_bundle(tmp_path_factory.mktemp("exported"))
    return bundle


@pytest.fixture(scope="session")
def real_checkpoint(real_bundle) -> Path:
    """The checkpoint `real_bundle` was exported from."""
    return real_bundle.parent / "tiny.pt"


@pytest.fixture(scope="session")
def grounded_bundle(tmp_path_factory) -> Path:
    """A tiny random layout-grounded SG2V (format 3: encoder, layout network, grounded UNet) exported by the
    real exporter with its weights, once per session."""
    from helpers import export_random_bundle

    bundle, _ = export_random_bundle(tmp_path_factory.mktemp("exported_grounded"), seed=4321, grounded=True)
    return bundle


@pytest.fixture(scope="session")
def grounded_checkpoint(grounded_bundle) -> Path:
    """The checkpoint `grounded_bundle` was exported from."""
    return grounded_bundle.parent / "tiny.pt"


@pytest.fixture(scope="session")
def student_bundle(tmp_path_factory) -> Path:
    """A tiny random layout-grounded guidance-distilled student (format 4: one UNet row per video and the
    guidance input) exported by the real exporter with its weights, once per session."""
    from helpers import export_student_bundle

    bundle, _ = export_student_bundle(tmp_path_factory.mktemp("exported_student"))
    return bundle


@pytest.fixture(scope="session")
def student_checkpoint(student_bundle) -> Path:
    """The checkpoint `student_bundle` was exported from."""
    return student_bundle.parent / "student.pt"


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> dict[str, Path]:
    """The data set fixtures converted once per session (`helpers.convert_fixtures`): name -> folder."""
    from helpers import convert_fixtures

    return convert_fixtures(tmp_path_factory.mktemp("converted"))
