"""Checkpoints: `model.pt` (a plain dict of tensors and containers) and `.safetensors`, written atomically.

The format is the one in docs/ARCHITECTURE.md: `{"sg2v_format": 1, "config": ModelConfig.to_dict(),
"vocab": Vocab.to_dict(), "model": state_dict, "ema": state_dict | None, "step": int, ...training state}`.
Everything loads with `torch.load(weights_only=True)`; nothing is ever unpickled beyond tensors and builtins.
A `.safetensors` file holds the weights (`model.*`, `ema.*`) with config, vocab and step as JSON metadata; it
carries no optimizer or RNG state, so it serves export and inference, not resume. Pretraining checkpoints
(`pretrain.pt`, `"kind": "pretrain"`) are written by the same `write_checkpoint`. Reading (`load_checkpoint`,
`load_model`, a bundle's weights) is `sg2v.models.weights`, whose names this module re-exports.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from sg2v.config import ModelConfig
from sg2v.errors import CheckpointError, first_line
from sg2v.io import atomic_write_bytes

# Reading lives with the models (the runtime's torch backends read checkpoints too); re-exported here.
from sg2v.models.weights import (  # noqa: F401
    _SAFETENSORS_SUFFIX,
    KIND_WEIGHTS,
    KINDS,
    MAX_STEP,
    SG2V_FORMAT,
    _safetensors_metadata,
    check_training_state,
    checkpoint_config,
    checkpoint_vocab,
    load_bundle_model,
    load_checkpoint,
    load_model,
    load_state_checked,
    load_weights_file,
    model_from_checkpoint,
)


def state_dict_cpu(obj: Any) -> dict[str, torch.Tensor] | None:
    """A module's or a mapping's weights as detached CPU tensors (so the file never pins a device)."""
    if obj is None:
        return None
    sd = obj.state_dict() if hasattr(obj, "state_dict") else obj
    return {k: v.detach().to("cpu").clone() for k, v in sd.items()}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DistributedDataParallel keeps the real model under `.module`; its state_dict keys carry a prefix.
    return getattr(model, "module", model)


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU and every CUDA device), as tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA states only where the same devices exist)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_checkpoint(
    model: torch.nn.Module,
    cfg: ModelConfig,
    vocab: Any,
    *,
    ema: Any = None,
    step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict (tensors and plain containers only) for `model` and its training state."""
    ckpt: dict[str, Any] = {
        "sg2v_format": SG2V_FORMAT,
        "config": cfg.to_dict(),
        "vocab": vocab.to_dict(),
        "model": state_dict_cpu(_unwrap(model)),
        "ema": state_dict_cpu(_unwrap(ema) if isinstance(ema, torch.nn.Module) else ema),
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": rng_state(),
    }
    for key, value in (extra or {}).items():
        if key in ckpt:
            raise ValueError(f"extra key {key!r} would overwrite a checkpoint field; rename it")
        ckpt[key] = value
    return ckpt


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    cfg: ModelConfig,
    vocab: Any,
    *,
    ema: Any = None,
    step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically: `.safetensors` by suffix (weights + JSON metadata), else torch.save."""
    ckpt = build_checkpoint(model, cfg, vocab, ema=ema, step=step, optimizer=optimizer, extra=extra)
    return write_checkpoint(path, ckpt)


def write_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically: safetensors for a `.safetensors` path, else `torch.save`."""
    path = Path(path)
    if path.suffix == _SAFETENSORS_SUFFIX:
        data = _to_safetensors_bytes(ckpt)
    else:
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        data = buf.getvalue()
    try:
        atomic_write_bytes(path, data)
    except (FileNotFoundError, PermissionError) as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e}") from None
    return path


def _to_safetensors_bytes(ckpt: dict[str, Any]) -> bytes:
    from safetensors.torch import save as st_save

    tensors = {f"model.{k}": v.contiguous() for k, v in ckpt["model"].items()}
    if ckpt["ema"] is not None:
        tensors.update({f"ema.{k}": v.contiguous() for k, v in ckpt["ema"].items()})
    metadata = {
        "sg2v_format": str(ckpt["sg2v_format"]),
        "config": json.dumps(ckpt["config"]),
        "vocab": json.dumps(ckpt["vocab"]),
        "step": str(ckpt["step"]),
    }
    return st_save(tensors, metadata=metadata)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], path: Any) -> None:
    """`optimizer.load_state_dict(state)` with a one-line `CheckpointError` when the state does not fit."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"checkpoint {path}: its optimizer state does not fit this model's optimizer "
                              f"({first_line(e)}); resume with the same --size, or --resume never") from None
