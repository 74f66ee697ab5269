"""The torch adapter of the generation loop (`sg2v.models.backend`), under the training package's name.

The adapter lives in `sg2v.models` because the runtime's torch backends use it and the runtime never imports
`sg2v.training`; these names are the same objects.
"""

from sg2v.models.backend import (
    StudentCall,
    TorchArrays,
    TorchStage,
    layout_settings,
    model_backend,
    model_generator,
    torch_device,
)

__all__ = ["StudentCall", "TorchArrays", "TorchStage", "layout_settings", "model_backend", "model_generator",
           "torch_device"]
