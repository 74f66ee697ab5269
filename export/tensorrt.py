"""`python -m sg2v.export.tensorrt BUNDLE`: build (or reuse) this machine's TensorRT engines for a bundle.

Engines are built on the machine that runs them, torch-free, so their whole lifecycle (build, timing cache,
`engine.json` checks, profiles) is `sg2v.runtime.engines`; this module is the export's name for it and holds
no code of its own (the export imports the runtime, never the other way).
"""

from __future__ import annotations

import sys

from sg2v.runtime.engines import (
    ENGINE_INFO,
    MIN_TENSORRT,
    PLAN_SUFFIX,
    ROUTE_ONNX,
    ROUTE_TORCH_TRT,
    TIMING_CACHE,
    attach_timing_cache,
    build_engine,
    build_engines,
    check_engine_dir,
    current_fingerprint,
    device_info,
    engine_dir,
    engine_io_mismatches,
    engine_sources,
    main,
    profile_shapes,
    register_plugins,
    require_tensorrt,
    tensorrt_version_problem,
)

__all__ = ["ENGINE_INFO", "MIN_TENSORRT", "PLAN_SUFFIX", "ROUTE_ONNX", "ROUTE_TORCH_TRT", "TIMING_CACHE",
           "attach_timing_cache", "build_engine", "build_engines", "check_engine_dir", "current_fingerprint",
           "device_info", "engine_dir", "engine_io_mismatches", "engine_sources", "main", "profile_shapes",
           "register_plugins", "require_tensorrt", "tensorrt_version_problem"]

if __name__ == "__main__":
    sys.exit(main())
