"""Suite-wide switches.

SG2V_REQUIRE_GPU=1 (set by the GPU session scripts under bench/) turns every skipped `gpu`-marked test into a
failure, so a GPU machine whose CUDA stack is broken cannot pass by skipping. Tests also marked `trt` keep
their skip: TensorRT is absent from the project's GPU machines.
"""

from __future__ import annotations

import os

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
