"""sg2v: scene graph in, short video out.

The top-level modules are torch-free foundations (graph, vocab, config, schedule, sampling, generation, video,
io, errors, bundle_spec, shapes, quality); the PyTorch parts live in `sg2v.models` and `sg2v.training` and
are imported only where used. `sg2v.export` and `sg2v.runtime` build on this package; it never imports them.
"""

__version__ = "0.1.0"

import os as _os

# ONNX Runtime (1.29 on, Linux too) writes a telemetry database under ~/.cache and uploads process events
# unless told not to; sg2v writes only the outputs it is asked for. A user's own setting wins.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
