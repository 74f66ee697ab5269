"""Reading sg2v checkpoints and a bundle's weights into SG2V modules (PyTorch; writing is in `sg2v.training`).

The format is the one in docs/ARCHITECTURE.md: `{"sg2v_format": 1, "config": ModelConfig.to_dict(),
"vocab": Vocab.to_dict(), "model": state_dict, "ema": state_dict | None, "step": int, ...training state}`.
Everything loads with `torch.load(weights_only=True)`; nothing is ever unpickled beyond tensors and builtins.
A `.safetensors` file holds the weights (`model.*`, `ema.*`) with config, vocab and step as JSON metadata.
Pretraining checkpoints (`pretrain.pt`, `"kind": "pretrain"`) are read by the same `load_checkpoint(path,
kind="pretrain")`. The export, training (resume, `--init`) and the runtime's torch backends read through here.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from sg2v import bundle_spec as spec
from sg2v.config import ModelConfig
from sg2v.errors import BundleError, CheckpointError, ConfigError, Sg2vError, first_line
from sg2v.io import sha256_file

SG2V_FORMAT = 1  # bump on an incompatible change of the dict layout below

_SAFETENSORS_SUFFIX = ".safetensors"
# What each kind of checkpoint must hold, what it is called in messages, and where a user gets one.
KINDS = {
    "model": (("config", "vocab", "model"), "checkpoint", "pass a last.pt written by sg2v-train diffusion"),
    "pretrain": (("config", "pretrain_config", "encoder", "video_encoder", "heads"), "pretraining checkpoint",
                 "pass the pretrain.pt written by `sg2v-train pretrain`"),
}
KIND_WEIGHTS = {"model": ("model", "ema"), "pretrain": ("encoder", "video_encoder", "heads")}  # state dicts


def load_checkpoint(path: str | os.PathLike, kind: str = "model") -> dict[str, Any]:
    """Read and check a checkpoint of `kind` (`KINDS`) with torch.load(weights_only=True) or safetensors."""
    path = Path(path)
    what, hint = KINDS[kind][1:]
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; {hint}")
    if path.suffix == _SAFETENSORS_SUFFIX and kind == "model":
        ckpt = _load_safetensors(path)
    else:
        ckpt = _load_torch(path)
    _check_format(ckpt, path, kind)
    return ckpt


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _code_globals(path)
        if unsafe:
            names = ", ".join(unsafe[:6]) + (", ..." if len(unsafe) > 6 else "")
            raise CheckpointError(
                f"checkpoint {path} holds code-bearing Python objects ({names}), not only tensors and "
                "containers; sg2v will not load it (unpickling it could run code): re-save the weights with "
                "sg2v.training.checkpoint.save_checkpoint from a copy you trust"
            ) from None
        raise _corrupt(path, e) from None
    except RecursionError:
        raise CheckpointError(f"checkpoint {path} nests its containers too deeply to be an sg2v checkpoint "
                              "(crafted or corrupt); re-save it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError) as e:
        raise _corrupt(path, e) from None


def _load_reason(e: BaseException) -> str:
    """What went wrong in torch.load, without the weights-only unpickler's advice to switch the check off."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = " ".join(text.split(marker, 1)[1].split("Check the documentation", 1)[0].split())
        return f"its pickle stream has {detail[:120]}" if detail else "its pickle stream is unreadable"
    return "its pickle stream is unreadable" if "weights_only" in text else first_line(e)[:160]


def _code_globals(path: Path) -> list[str]:
    """The importable names (classes, functions) a checkpoint's pickle would load beyond what torch's
    weights-only unpickler admits: torch's own scan for zip checkpoints, `_pickle_globals` for raw pickles
    and the legacy format; empty for garbage, which the unpickler rejects as well."""
    if zipfile.is_zipfile(path):
        finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
        if finder is None:
            return []
        try:
            return sorted(finder(str(path)))  # sorted: the message must not depend on set order
        except Exception:  # a damaged archive: report it as corrupt, not as unsafe
            return []
    allowed = _weights_only_globals()
    with open(path, "rb") as f:
        return sorted({n for n in _pickle_globals(f) if n not in allowed})


def _weights_only_globals() -> set[str]:
    """Names torch's weights-only unpickler admits (its allow-list, when this torch exposes it)."""
    from torch import _weights_only_unpickler as wou

    get = getattr(wou, "_get_allowed_globals", None)
    try:
        return set(get()) if get is not None else set()
    except Exception:
        return set()


_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
               "BINUNICODE8"}
_MAX_PICKLES = 8  # the legacy torch format is a few pickles back to back (magic, protocol, info, data)
_MAX_OPS = 5_000_000


def _pickle_globals(f: io.BufferedReader) -> list[str]:
    """"module.name" of every GLOBAL / STACK_GLOBAL / INST opcode in the pickles at the start of `f`, read
    with `pickletools.genops` (nothing is executed); a STACK_GLOBAL whose operands the scan cannot follow
    (built at run time) is listed as such. Stops at the first undecodable byte."""
    import pickletools

    names: list[str] = []
    ops = 0
    for _ in range(_MAX_PICKLES):
        recent: list[Any] = []  # values the last opcodes pushed, strings where known (for STACK_GLOBAL)
        memo: dict[Any, Any] = {}
        try:
            for op, arg, _pos in pickletools.genops(f):
                ops += 1
                if ops > _MAX_OPS:
                    return names
                if op.name == "STOP":
                    break
                _scan_op(op.name, arg, recent, memo, names)
                del recent[:-4]
            else:
                return names  # the stream ended without STOP
        except (ValueError, EOFError, UnicodeDecodeError, OverflowError, MemoryError):
            return names
        if not f.peek(1):
            return names
    return names


def _scan_op(name: str, arg: Any, recent: list[Any], memo: dict[Any, Any], names: list[str]) -> None:
    """Follow one pickle opcode: list a global's name; track the strings pushed and memoised, which a
    STACK_GLOBAL takes as its module and name."""
    if name in ("GLOBAL", "INST"):
        names.append(str(arg).replace(" ", ".", 1))
        recent.append(None)
    elif name == "STACK_GLOBAL":
        mod, attr = (recent[-2:] if len(recent) >= 2 else [None, None])
        ok = isinstance(mod, str) and isinstance(attr, str)
        names.append(f"{mod}.{attr}" if ok else "<a global named at run time>")
        recent.append(None)
    elif name in _STRING_OPS:
        recent.append(arg if isinstance(arg, str) else None)
    elif name == "MEMOIZE":
        memo[len(memo)] = recent[-1] if recent else None
    elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
        memo[arg] = recent[-1] if recent else None
    elif name in ("GET", "BINGET", "LONG_BINGET"):
        recent.append(memo.get(arg))
    elif name not in ("PROTO", "FRAME"):
        recent.append(None)


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    data = path.read_bytes()
    try:
        tensors = st_load(data)
        metadata = _safetensors_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise _corrupt(path, e) from None
    if "sg2v_format" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not an sg2v checkpoint (no sg2v_format key)")
    try:
        ckpt: dict[str, Any] = {
            "sg2v_format": int(metadata["sg2v_format"]),
            "config": json.loads(metadata["config"]),
            "vocab": json.loads(metadata["vocab"]),
            "step": int(metadata.get("step", "0")),
        }
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path} has broken sg2v metadata ({first_line(e)}); re-save it") \
            from None
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    ckpt.update(model=model, ema=ema or None, optimizer=None)
    return ckpt


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    # The format: 8-byte little-endian header length, then a JSON header whose "__metadata__" is str -> str.
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    return header.get("__metadata__") or {}


def _check_format(ckpt: Any, path: Path, kind: str) -> None:
    keys, what, hint = KINDS[kind]
    if not isinstance(ckpt, dict) or "sg2v_format" not in ckpt:
        raise CheckpointError(f"{path} is not an sg2v checkpoint (no 'sg2v_format' key); {hint}")
    version = ckpt["sg2v_format"]
    if not isinstance(version, int):
        raise CheckpointError(f"checkpoint {path} has sg2v_format {version!r}, not an integer; re-save it")
    if version > SG2V_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} was written by a newer sg2v (format {version}, this one reads "
            f"<= {SG2V_FORMAT}); upgrade sg2v"
        )
    found = ckpt.get("kind", "model")
    if found != kind:
        raise CheckpointError(f"{path} is not a {what} (kind {found!r}); {hint}")
    for key in keys:
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{what} {path} lacks its '{key}' entry; it is not a complete sg2v {what}")
    check_training_state(ckpt, path, KIND_WEIGHTS[kind])


def check_training_state(ckpt: dict[str, Any], path: Any,
                         weights: tuple[str, ...] = ("model", "ema")) -> None:
    """CheckpointError (one line) unless step, state dicts `weights`, optimizer and RNG are well-formed."""
    problem = _training_state_problem(ckpt, weights)
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem} (crafted or corrupt); re-save it, or start a "
                              "fresh run with --resume never")


MAX_STEP = 10**12


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _training_state_problem(ckpt: dict[str, Any], weights: tuple[str, ...]) -> str | None:
    """What is wrong with a checkpoint's step, weights, EMA, optimizer or RNG entries; None if nothing."""
    step = ckpt.get("step", 0)
    if not _is_int(step) or not 0 <= step <= MAX_STEP:
        return f"step {step!r:.60} is not an integer in [0, {MAX_STEP}]"
    for key in weights:
        sd = ckpt.get(key)
        if sd is None and key == "ema":
            continue
        if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in sd.items()):
            return f"'{key}' is not a state dict (names -> tensors)"
    opt = ckpt.get("optimizer")
    if opt is not None:
        problem = _optimizer_problem(opt)
        if problem:
            return problem
    rng = ckpt.get("rng")
    return None if rng is None else _rng_problem(rng)


def _optimizer_problem(opt: Any) -> str | None:
    """What keeps `opt` from being an optimizer state dict (state and param_groups by parameter id)."""
    groups = opt.get("param_groups") if isinstance(opt, dict) else None
    state = opt.get("state") if isinstance(opt, dict) else None
    ids_ok = isinstance(groups, list) and all(
        isinstance(g, dict) and isinstance(g.get("params"), list) and all(_is_int(i) for i in g["params"])
        for g in groups)
    if not ids_ok or not isinstance(state, dict):
        return "'optimizer' is not an optimizer state dict (state, param_groups of parameter ids)"
    if not all(_is_int(k) and isinstance(v, dict) for k, v in state.items()):
        return "'optimizer' state is not keyed by parameter id"
    return None


def _rng_problem(rng: Any) -> str | None:
    """What keeps `rng` from being the saved generator states (torch's CPU state and the CUDA ones)."""
    if not isinstance(rng, dict):
        return "'rng' is not a dict of generator states"
    want = torch.get_rng_state().numel()
    cpu = rng.get("torch")
    if cpu is not None and not _byte_state(cpu, want):
        return f"'rng' torch state is not a uint8 tensor of {want} bytes"
    cuda = rng.get("cuda")
    if cuda is not None and not (isinstance(cuda, (list, tuple)) and all(_byte_state(c) for c in cuda)):
        return "'rng' cuda states are not uint8 tensors"
    return None


def _byte_state(t: Any, numel: int | None = None) -> bool:
    ok = isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 and t.numel() <= 1 << 20
    return ok and (numel is None or t.numel() == numel)


def checkpoint_config(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> ModelConfig:
    """The typed `ModelConfig` stored in a loaded checkpoint."""
    try:
        return ModelConfig.from_dict(ckpt["config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: config mismatch: {e}") from None


def checkpoint_vocab(ckpt: dict[str, Any], path: str | os.PathLike = "checkpoint") -> Any:
    """The `Vocab` stored in a loaded checkpoint."""
    from sg2v.vocab import Vocab

    try:
        return Vocab.from_dict(ckpt["vocab"])
    except Sg2vError as e:
        raise CheckpointError(f"checkpoint {path}: bad vocabulary: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: bad vocabulary ({first_line(e)}); re-save it") from None


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Any, what: str) -> None:
    """`load_state_dict(strict=True)` with a one-line `CheckpointError` naming the mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"shape mismatch {len(wrong)} (e.g. {k}: file {tuple(state[k].shape)}, "
                         f"model {tuple(expected[k].shape)})")
        raise CheckpointError(
            f"checkpoint {path}: config mismatch: {what} weights do not fit the stored config "
            f"({'; '.join(parts)}); the file was edited or written by another sg2v version"
        )
    module.load_state_dict(state, strict=True)


def model_from_checkpoint(ckpt: dict[str, Any], path: Any, ema: bool = True
                          ) -> tuple[Any, ModelConfig, Any, str]:
    """(SG2V in eval mode, ModelConfig, Vocab, "ema" or "model") from a loaded checkpoint dict; the EMA
    weights when stored and `ema` is set, else the raw ones."""
    from sg2v.models.sg2v import build_model

    cfg = checkpoint_config(ckpt, path)
    vocab = checkpoint_vocab(ckpt, path)
    model = build_model(cfg)
    which = "ema" if ema and ckpt.get("ema") is not None else "model"
    load_state_checked(model, ckpt[which], path, which)
    return model.eval(), cfg, vocab, which


def load_model(path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu"):
    """Rebuild `(SG2V, ModelConfig, Vocab)` from a checkpoint; EMA weights when stored and `ema` is set."""
    model, cfg, vocab, _ = model_from_checkpoint(load_checkpoint(path), path, ema)
    return model.to(device), cfg, vocab


def load_weights_file(cfg: ModelConfig, path: str | os.PathLike, where: Any) -> Any:
    """SG2V of `cfg` (eval mode, CPU) with the weights of an sg2v `.safetensors` state dict: plain, or under
    `ema.` / `model.` (the EMA when both); fp16 weights are cast to the model's float32."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from sg2v.models.sg2v import build_model

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"bundle {where}: {Path(path).name} is unreadable ({first_line(e)}); "
                          "re-export it") from None
    for prefix in ("ema.", "model."):
        picked = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if picked:
            tensors = picked
            break
    model = build_model(cfg)
    load_state_checked(model, tensors, path, "model")
    return model.eval()


def load_bundle_model(path: str | os.PathLike) -> tuple[Any, ModelConfig, Any]:
    """(SG2V on the CPU, ModelConfig, Vocab) from a bundle folder exported with `--include-weights`, its
    `model.safetensors` checked against the sha256 the manifest records."""
    from sg2v.vocab import Vocab

    root = Path(path)
    try:
        manifest = json.loads((root / spec.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, or a number over 4300 digits
        raise BundleError(f"{root} holds no readable {spec.MANIFEST} ({first_line(e)}); pass a bundle folder "
                          "written by sg2v-export") from None
    if not isinstance(manifest, dict) or manifest.get("format") != spec.FORMAT:
        raise BundleError(f"{root}/{spec.MANIFEST} is not an sg2v bundle manifest; pass a bundle folder "
                          "written by sg2v-export")
    files = manifest.get("files")
    info = files.get(spec.MODEL_WEIGHTS) if isinstance(files, dict) else None
    if not isinstance(info, dict):
        raise BundleError(f"bundle {root} has no {spec.MODEL_WEIGHTS} (the PyTorch weights); re-export it "
                          "with --include-weights or pass a checkpoint")
    weights = root / spec.MODEL_WEIGHTS
    if weights.is_symlink() or not weights.is_file() or sha256_file(weights) != str(info.get("sha256")):
        raise BundleError(f"bundle {root}: {spec.MODEL_WEIGHTS} is missing or does not match its sha256 in "
                          "the manifest; copy the bundle again or re-export it")
    try:
        cfg = ModelConfig.from_dict(manifest["model_config"])
        vocab = Vocab.from_dict(manifest["vocab"], where=f"{root}/{spec.MANIFEST}: vocab")
    except (KeyError, TypeError, Sg2vError) as e:
        raise BundleError(f"bundle {root}: model_config or vocab is unusable ({first_line(e)}); "
                          "re-export it") from None
    return load_weights_file(cfg, weights, root), cfg, vocab


def _corrupt(path: Path, e: BaseException) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is corrupt or truncated ({_load_reason(e)}); re-save it")
