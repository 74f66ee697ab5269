"""sg2v: scene graph in, short video out.

The top-level package is torch-free; PyTorch parts live in `sg2v.models`, `sg2v.diffusion`, `sg2v.pretrain`,
`sg2v.train` and `sg2v.checkpoint`, and are imported only where used.
"""

__version__ = "0.1.0"
