"""Write a bundle folder atomically: staging folder beside `--out`, manifest last, one rename (torch-free).

Layout and manifest keys: docs/ARCHITECTURE.md ("Bundle"), names from `sg2v.bundle_spec`. An existing folder
at `--out` is replaced only if it is a bundle (a re-export) or `force` is set; a half-written bundle never
appears at `--out`: everything is written under a temporary name, renamed at the end (`sg2v.io.atomic_path`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sg2v import bundle_spec as spec
from sg2v.errors import BundleError
from sg2v.generation import sampler_defaults
from sg2v.io import atomic_path, sha256_file
from sg2v.kinds import kinds_of_config


def read_bundle_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of the sg2v bundle at `path`, or None if `path` holds no readable bundle manifest."""
    from sg2v.safety import read_input

    mpath = Path(path) / spec.MANIFEST
    if not mpath.is_file():
        return None
    try:
        manifest = json.loads(read_input(mpath).decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError: bad JSON, or a number over 4300 digits
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != spec.FORMAT:
        return None
    return manifest


def check_output(out: str | os.PathLike, force: bool = False, reads: Sequence[Any] = ()
                 ) -> dict[str, Any] | None:
    """Refuse an `--out` that cannot take a bundle (`sg2v.safety.check_outputs`: never the checkpoint or
    bundle being read, `reads`, nor the folder holding it; an existing folder only when it is a bundle or
    with `force`); return the manifest of a bundle already there, or None."""
    from sg2v.safety import Output, OutputError, WriteError, check_outputs, inputs

    out = Path(out)
    named = [(r, "the checkpoint being exported", Path(r).is_dir()) for r in reads]
    target = Output("--out", out, folder=True, ours=lambda p: read_bundle_manifest(p) is not None)
    try:
        check_outputs([target], inputs(*named), force=force)
    except (OutputError, WriteError) as e:
        raise BundleError(str(e)) from None
    if not out.is_dir() or out.is_symlink():
        return None
    return read_bundle_manifest(out)


@contextlib.contextmanager
def staging(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder beside `out` for the bundle; renamed onto `out` on success, removed on error."""
    out = Path(out)
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            yield tmp
    except (FileNotFoundError, PermissionError) as e:
        if isinstance(e, PermissionError) or not Path(out).parent.exists():
            raise BundleError(f"cannot write bundle {out} ({e}); choose another --out") from None
        raise


def file_entries(root: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """`files`: sha256 and size of every regular file under `root` but the manifest, relative POSIX paths."""
    root = Path(root)
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise BundleError(f"bundle staging folder holds a symlink {path}; bundles hold plain files only")
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if rel == spec.MANIFEST:
            continue
        entries[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries


def exporting_versions() -> dict[str, str]:
    """`exported_by`: versions of the packages that shaped the graphs."""
    import sg2v

    versions = {"sg2v": sg2v.__version__, "python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "unknown"))
        except ImportError:
            versions[name] = "not installed"
    return versions


def build_manifest(*, cfg: Any, vocab: Any, precision: str, pooling: str, opset: int, root: Path,
                   parity: dict[str, Any], trt_op_check: dict[str, Any], source_checkpoint: dict[str, Any],
                   stage_extra: dict[str, dict[str, Any]] | None = None,
                   weight_storage: str = "fp32", guidance: float | None = None,
                   plugin_impl: str | None = None, max_batch: int = spec.MAX_BATCH) -> dict[str, Any]:
    """The manifest dict (every key of ARCHITECTURE.md "Bundle"), hashing the files already under `root`.

    `guidance` overrides the config's default guidance in `sampler_defaults` (chosen at export, e.g. tuned on
    validation graphs); the runtime samples with `sampler_defaults` unless a caller passes its own. The stages
    take 1 to `max_batch` videos per call (`shapes.max_batch`, the batch axis of every stage's I/O). A
    layout-grounded model (`cfg.layout.dim > 0`) gets format 3: the layout stage and the `layout` entry (its
    sampler settings and the vocabulary's relation rules); a guidance-distilled student (`cfg.unet.
    guidance_embed`) format 4: its UNet on one row per video with the guidance input, and the `student` entry
    (what it was distilled for); any other model format 2.
    """
    guided, grounding = kinds_of_config(cfg)  # `guidance` is the default guidance weight
    shapes = spec.shapes(cfg.data, cfg.encoder, max_batch, grounded=grounding.layout_stage,
                         student=guided.entry is not None)
    io = spec.stage_io(shapes)
    stages = {name: {"file": file, **io[name], **(stage_extra or {}).get(name, {})}
              for name, file in spec.stage_files(shapes).items()}
    manifest = {
        "format": spec.FORMAT,
        "format_version": spec.format_version(shapes),
        "model_config": cfg.to_dict(),
        "vocab": vocab.to_dict(),
        "schedule": {"kind": cfg.diffusion.schedule,
                     "num_train_timesteps": cfg.diffusion.num_train_timesteps},
        "sampler_defaults": sampler_defaults(cfg.diffusion, guidance),
        "shapes": shapes,
        "precision": precision,
        "weight_storage": weight_storage,  # fp16: initializers stored as float16 behind a Cast to float32
        "pooling": pooling,
        "opset": opset,
        "stages": stages,
        "files": file_entries(root),
        "exported_by": exporting_versions(),
        "parity": parity,
        "trt_op_check": trt_op_check,
        "source_checkpoint": source_checkpoint,
    }
    if pooling == "plugin":
        manifest["plugin_impl"] = plugin_impl or "aot"  # the nodes' `aot` attribute, for the engine builder
    manifest.update(grounding.manifest_entries(cfg, vocab))  # layout: its sampler settings and rules
    manifest.update(guided.manifest_entries())  # student: what it was distilled for
    missing = [k for k in (*spec.MANIFEST_KEYS, *grounding.manifest_keys, *guided.manifest_keys)
               if k not in manifest]
    assert not missing, missing
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest.json` into the staging folder (last, so a bundle with a manifest is complete)."""
    path = root / spec.MANIFEST
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def reuse_file(old_root: Path, old_manifest: dict[str, Any], rel: str, new_root: Path) -> bool:
    """Copy `rel` from the previous bundle if it still matches its recorded sha256 and size; else False."""
    info = old_manifest.get("files", {}).get(rel)
    src = old_root / rel
    if not isinstance(info, dict) or src.is_symlink() or not src.is_file():
        return False
    if src.stat().st_size != info.get("bytes") or sha256_file(src) != info.get("sha256"):
        return False
    dst = new_root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return True
