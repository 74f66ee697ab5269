"""Torch devices for every PyTorch part: one parser of `--device` values for training, evaluation and the
runtime's torch backends."""

from __future__ import annotations

import torch

from sg2v.config import DEVICES, parse_device
from sg2v.errors import ConfigError


def torch_device(text: str | None, flag: str = "--device") -> torch.device:
    """The torch device a `--device` value names ("auto": CUDA GPU 0 when PyTorch sees one, else the CPU)."""
    kind, index = parse_device(text, flag)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{flag} {text}: PyTorch sees no CUDA device; use {flag} cpu (choices: {DEVICES})")
    return torch.device("cuda", 0 if index is None else index)
