"""Suite-wide switches and fixtures (shared helper functions are in helpers.py).

Every test runs with one torch intra-op thread: the CI cores are shared, and contended threads make tiny ops
many times slower. SG2V_REQUIRE_GPU=1 (set by the GPU session scripts under bench/) turns every skipped
`gpu`-marked test into a failure, so a GPU machine whose CUDA stack is broken cannot pass by skipping. Tests
also marked `trt` keep their skip: TensorRT is absent from the project's GPU machines.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("SG2V_REQUIRE_GPU") == "1"
            and item.get_closest_marker("gpu") is not None and item.get_closest_marker("trt") is None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"SG2V_REQUIRE_GPU=1 but this GPU test was skipped: {reason}"


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
