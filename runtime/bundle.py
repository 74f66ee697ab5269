"""Read and verify an exported bundle (torch-free): manifest, format version, file hashes, safe paths.

A bundle is untrusted data: every path it names must stay inside its folder (no absolute paths, no `..`, no
symlink that resolves outside, no symlink loop), every file must match the size and sha256 the manifest
records, and what it declares is bounded before anything of that size is allocated: the manifest's size and
entries, the model config (`ModelConfig.check_bounds`), the sampler defaults and schedule, and .npy headers
(read without pickles, checked before their data). The ONNX files are checked by `sg2v.runtime.onnx_guard`
when a backend loads them. Layout and keys: docs/ARCHITECTURE.md ("Bundle"), names from `sg2v.bundle_spec`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sg2v import bundle_spec as spec
from sg2v import kinds
from sg2v.config import ModelConfig
from sg2v.errors import BundleError, ConfigError, Sg2vError, first_line
from sg2v.io import load_npy_checked, npy_header, sha256_file
from sg2v.vocab import Vocab

_REEXPORT = "re-export it with: sg2v-export --ckpt model.pt --out <bundle>"
MAX_MANIFEST_BYTES = 64 << 20  # a real one is a few hundred KiB (the vocabulary is the largest part)
MAX_FILES = 1000  # entries of the manifest's `files`
MAX_SAMPLER_STEPS = 10_000


@dataclass(frozen=True, eq=False)
class Bundle:
    """A verified bundle: typed config, vocabulary, shapes, stage specs and the learned null context."""

    path: Path
    manifest: dict[str, Any]
    config: ModelConfig
    vocab: Vocab
    shapes: dict[str, int]
    stages: dict[str, dict[str, Any]]
    # The learned null context of classifier-free guidance: (1, L, D) and (1, L) float32; None for a
    # guidance-distilled student, which has no unconditional rows.
    null_context: NDArray[Any] | None = field(repr=False)
    null_context_mask: NDArray[Any] | None = field(repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True) -> Bundle:
        """Open the bundle folder `path`; `verify` checks every file's sha256 (sizes and paths always)."""
        root = Path(path)
        if not root.exists():
            raise BundleError(f"bundle {root} does not exist; pass the folder written by sg2v-export --out")
        if not root.is_dir():
            raise BundleError(f"bundle {root} is not a folder; pass the folder written by sg2v-export --out")
        manifest = _read_manifest(root)
        _check_format(manifest, root)
        files = _check_files(root, manifest, verify)
        config = _config(manifest, root)
        vocab = _vocab(manifest, root)
        shapes = _shapes(manifest, config, root)
        stages = _stages(manifest, files, shapes, root)
        _check_sampling(manifest, config, root)
        _check_layout(manifest, shapes, vocab, root)
        _check_student(manifest, shapes, config, root)
        _check_encoder_weights(manifest, files, config, shapes, root)
        null_context, null_mask = kinds.guidance_of(shapes, manifest).read_null_context(lambda: (
            _load_array(root, files, spec.NULL_CONTEXT, (1, shapes["context_tokens"], shapes["context_dim"])),
            _load_array(root, files, spec.NULL_CONTEXT_MASK, (1, shapes["context_tokens"]))))
        return cls(root, manifest, config, vocab, shapes, stages, null_context, null_mask)

    @property
    def precision(self) -> str:
        return str(self.manifest["precision"])

    @property
    def pooling(self) -> str:
        return str(self.manifest["pooling"])

    @property
    def max_batch(self) -> int:
        """Videos one stage call takes at most (format 1 bundles: 1, their batches are fixed)."""
        return spec.max_batch(self.shapes)

    @property
    def plugin_impl(self) -> str:
        """Plugin bundles: "aot" or "jit", the form their `sg2v::ScatterMeanPool` nodes ask TensorRT for."""
        return str(self.manifest.get("plugin_impl", "aot"))

    @property
    def sampler_defaults(self) -> dict[str, Any]:
        return dict(self.manifest["sampler_defaults"])

    @property
    def schedule(self) -> dict[str, Any]:
        return dict(self.manifest["schedule"])

    @property
    def guidance(self) -> kinds.Guidance:
        """How the model is guided (`sg2v.kinds`: classifier-free, or a guidance-distilled student)."""
        return kinds.guidance_of(self.shapes, self.manifest)

    @property
    def grounding(self) -> kinds.Grounding:
        """Whether the model draws a layout first (`sg2v.kinds`: ungrounded, or layout-grounded)."""
        return kinds.grounding_of(self.shapes)

    @property
    def grounded(self) -> bool:
        """Whether the model draws a layout first (format 3: a layout stage, objects and boxes)."""
        return self.grounding.layout_stage

    @property
    def student(self) -> dict[str, Any] | None:
        """A guidance-distilled student's "student" entry (guidance_range, guidance_rescale, grid_steps,
        steps, sampler, ...), checked when the bundle was opened; None for a model sampled with CFG."""
        return self.guidance.entry

    def settings(self, **options: Any) -> Any:
        """The `SamplerSettings` a run with these options (steps, guidance, guidance_rescale, sampler) gets:
        `resolve_settings` over the bundle's sampler defaults, and for a student `check_student_settings`
        (one-line `ConfigError` for what it was not distilled for), before any backend is built."""
        return self.guidance.settings(self.sampler_defaults, self.config.diffusion.num_train_timesteps,
                                      **options)

    @property
    def layout(self) -> dict[str, Any] | None:
        """The layout stage's settings (steps, tries, per_round, sampler, relation_rules, geometry), checked
        when the bundle was opened; None for a model without a layout stage. `geometry` is the manifest's
        entry (`sg2v.geometry.to_entry`); a shapes-world bundle written without one (formats 3 and 4 before
        the entry) gets the shapes world's constraints derived from its config; otherwise None."""
        settings: dict[str, Any] | None = self.grounding.layout_settings(self.manifest, self.config,
                                                                         self.vocab.object_names)
        return settings

    @property
    def engines_dir(self) -> Path:
        """`engines/`: TensorRT plans by fingerprint (outside `files`: built on the target after export)."""
        return self.path / spec.ENGINES_DIR

    def file(self, rel: str) -> Path:
        """The path of `rel` inside the bundle, refused if it would leave the folder."""
        return _safe_path(self.path, rel, "file")

    def has_file(self, rel: str) -> bool:
        """Whether the manifest lists `rel` (e.g. the optional `model.safetensors`)."""
        return rel in self.manifest["files"]

    def stage_file(self, stage: str) -> Path:
        """The ONNX file of `stage` ("encoder", "layout" or "unet")."""
        return self.file(self.stages[stage]["file"])

    def alphas_cumprod(self) -> NDArray[Any]:
        """The training schedule's cumulative alphas (float64), recomputed as `sg2v.schedule` defines them."""
        from sg2v.schedule import make_alphas_cumprod

        sched = self.schedule
        try:
            return make_alphas_cumprod(int(sched["num_train_timesteps"]), str(sched["kind"]))
        except (ConfigError, KeyError, TypeError, ValueError) as e:
            raise BundleError(f"bundle {self.path}: manifest schedule {sched!r} is unusable ({e}); "
                              f"{_REEXPORT}") from None


def _read_manifest(root: Path) -> dict[str, Any]:
    mpath = root / spec.MANIFEST
    if mpath.is_symlink() or not mpath.is_file():
        raise BundleError(f"bundle {root} has no {spec.MANIFEST}: not a bundle, or an interrupted export; "
                          f"{_REEXPORT}")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"bundle {root}: {spec.MANIFEST} has {mpath.stat().st_size} bytes, more than the "
                          f"{MAX_MANIFEST_BYTES} a manifest may have (not an sg2v manifest); {_REEXPORT}")
    try:
        from sg2v.safety import read_input

        manifest = json.loads(read_input(mpath, MAX_MANIFEST_BYTES).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, or a number over 4300 digits
        raise BundleError(f"bundle {root}: {spec.MANIFEST} is corrupt ({first_line(e)}); "
                          f"{_REEXPORT}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {root}: {spec.MANIFEST} is not a JSON object; {_REEXPORT}")
    return manifest


def _check_format(manifest: dict[str, Any], root: Path) -> None:
    if manifest.get("format") != spec.FORMAT:
        raise BundleError(f"bundle {root}: {spec.MANIFEST} format is {manifest.get('format')!r}, expected "
                          f"{spec.FORMAT!r}; pass a folder written by sg2v-export")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"bundle {root}: format_version {version!r} is not a positive integer; {_REEXPORT}")
    if version > spec.FORMAT_VERSION:
        raise BundleError(
            f"bundle {root} has format_version {version}, this sg2v reads <= {spec.FORMAT_VERSION}: it was "
            "written by a newer sg2v; upgrade the runtime (pip install -U sg2v) or export with this version"
        )
    required = ("model_config", "vocab", "schedule", "sampler_defaults", "shapes", "precision", "pooling",
                "stages", "files")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise BundleError(f"bundle {root}: {spec.MANIFEST} lacks {', '.join(missing)}; {_REEXPORT}")
    if manifest["precision"] not in spec.PRECISIONS:
        raise BundleError(f"bundle {root}: precision {manifest['precision']!r} is not one of "
                          f"{list(spec.PRECISIONS)}; {_REEXPORT}")
    if manifest["pooling"] not in spec.POOLINGS:
        raise BundleError(f"bundle {root}: pooling {manifest['pooling']!r} is not one of "
                          f"{list(spec.POOLINGS)}; {_REEXPORT}")
    if manifest.get("plugin_impl", "aot") not in ("aot", "jit"):
        raise BundleError(f"bundle {root}: plugin_impl {manifest['plugin_impl']!r} is not 'aot' or 'jit'; "
                          f"{_REEXPORT}")


def _safe_path(root: Path, rel: Any, where: str) -> Path:
    """`root / rel` if `rel` is a plain relative path that resolves inside `root` (symlinks followed)."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"bundle {root}: {where} path {rel!r} is not a non-empty string; {_REEXPORT}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in rel) or len(rel) > 255:
        raise BundleError(f"bundle {root}: {where} path {rel[:80]!r} holds control characters (a NUL byte?) "
                          f"or is over 255 characters; a bundle names its files plainly; {_REEXPORT}")
    pure = PurePosixPath(rel)
    if "\\" in rel or pure.is_absolute() or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        raise BundleError(f"bundle {root}: {where} path {rel!r} is absolute; a bundle may only name files "
                          f"inside itself (tampered manifest?); {_REEXPORT}")
    if any(part in ("..", "") for part in rel.split("/")) or "." in rel.split("/"):
        raise BundleError(f"bundle {root}: {where} path {rel!r} contains '..' or empty/'.' parts; a bundle "
                          f"may only name files inside itself (tampered manifest?); {_REEXPORT}")
    full = root / pure
    try:
        base = root.resolve()
        resolved = full.resolve()
    except (RuntimeError, OSError) as e:  # Python raises RuntimeError for a symlink loop before 3.13
        raise BundleError(f"bundle {root}: {where} path {rel!r} cannot be resolved ({first_line(e)}: a "
                          f"symlink loop?); {_REEXPORT}") from None
    try:
        resolved.relative_to(base)
    except ValueError:
        raise BundleError(f"bundle {root}: {where} path {rel!r} resolves outside the bundle (a symlink?); "
                          f"a bundle may only name files inside itself; {_REEXPORT}") from None
    return full


def _check_files(root: Path, manifest: dict[str, Any], verify: bool) -> dict[str, dict[str, Any]]:
    """Every listed file: safe path, regular file, recorded size, and (with `verify`) recorded sha256."""
    files = manifest["files"]
    if not isinstance(files, dict) or not files or len(files) > MAX_FILES:
        raise BundleError(f"bundle {root}: manifest 'files' is not an object of 1 to {MAX_FILES} entries; "
                          f"{_REEXPORT}")
    for rel, info in files.items():
        path = _safe_path(root, rel, f"files[{rel!r}]")
        size = info.get("bytes") if isinstance(info, dict) else None
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str) \
                or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BundleError(f"bundle {root}: files[{rel!r}] needs 'sha256' (hex) and 'bytes' (int >= 0); "
                              f"{_REEXPORT}")
        if not path.is_file():
            raise BundleError(f"bundle {root}: {rel} is missing (incomplete copy or interrupted export); "
                              "copy the whole bundle folder again or re-export it")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise BundleError(f"bundle {root}: {rel} has {size} bytes, the manifest records {info['bytes']} "
                              "(truncated or modified); copy the bundle again or re-export it")
        if verify and sha256_file(path) != info["sha256"].lower():
            raise BundleError(f"bundle {root}: {rel} does not match its sha256 in the manifest (corrupt or "
                              "modified); copy the bundle again or re-export it")
    return files


def _config(manifest: dict[str, Any], root: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(manifest["model_config"])
    except (ConfigError, TypeError) as e:
        raise BundleError(f"bundle {root}: model_config is unusable ({first_line(e)}); {_REEXPORT} "
                          "or upgrade sg2v") from None


def _vocab(manifest: dict[str, Any], root: Path) -> Vocab:
    try:
        return Vocab.from_dict(manifest["vocab"], where=f"{root}/{spec.MANIFEST}: vocab")
    except Sg2vError as e:
        raise BundleError(f"bundle {root}: vocabulary is unusable ({e}); {_REEXPORT}") from None


def _shapes(manifest: dict[str, Any], config: ModelConfig, root: Path) -> dict[str, int]:
    got = manifest["shapes"]
    if not isinstance(got, dict):
        raise BundleError(f"bundle {root}: manifest 'shapes' is not an object; {_REEXPORT}")
    max_batch = None  # format 1: fixed batches
    if manifest["format_version"] >= 2:
        max_batch = got.get("max_batch")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) \
                or not 1 <= max_batch <= spec.MAX_BATCH_LIMIT:
            raise BundleError(f"bundle {root}: shapes.max_batch {max_batch!r} is not an integer in "
                              f"[1, {spec.MAX_BATCH_LIMIT}]; {_REEXPORT}")
    try:
        guidance, grounding = kinds.kinds_of_config(config)
    except ConfigError as e:
        raise BundleError(f"bundle {root}: {e}; {_REEXPORT}") from None
    for problem in (guidance.version_problem(manifest["format_version"]),
                    grounding.version_problem(manifest["format_version"])):
        if problem is not None:
            raise BundleError(f"bundle {root}: {problem}; {_REEXPORT}")
    expected = spec.shapes(config.data, config.encoder, max_batch, grounded=grounding.layout_stage,
                           student=guidance.entry is not None)
    wrong = [f"{k}={got.get(k)!r} (config says {v})" for k, v in expected.items() if got.get(k) != v]
    if wrong:
        raise BundleError(f"bundle {root}: manifest shapes disagree with model_config: {', '.join(wrong)}; "
                          f"{_REEXPORT}")
    return dict(expected)


def _stages(manifest: dict[str, Any], files: dict[str, Any], shapes: dict[str, int],
            root: Path) -> dict[str, dict[str, Any]]:
    """Stage entries (`bundle_spec.stage_files`: encoder and unet, and layout for a grounded model): files
    listed, I/O exactly as `bundle_spec` defines it."""
    stages = manifest["stages"]
    if not isinstance(stages, dict):
        raise BundleError(f"bundle {root}: manifest 'stages' is not an object; {_REEXPORT}")
    expected_io = spec.stage_io(shapes)
    out = {}
    for name in spec.stage_files(shapes):
        entry = stages.get(name)
        if not isinstance(entry, dict) or "file" not in entry:
            raise BundleError(f"bundle {root}: stage {name!r} is missing from the manifest; {_REEXPORT}")
        _safe_path(root, entry["file"], f"stages[{name!r}].file")
        if entry["file"] not in files:
            raise BundleError(f"bundle {root}: stage {name!r} file {entry['file']!r} is not listed (with its "
                              f"sha256) in 'files'; {_REEXPORT}")
        for kind in ("inputs", "outputs"):
            if _io_key(entry.get(kind)) != _io_key(expected_io[name][kind]):
                raise BundleError(f"bundle {root}: stage {name!r} {kind} {entry.get(kind)!r} differ from "
                                  f"{expected_io[name][kind]!r} (docs/ARCHITECTURE.md); {_REEXPORT}")
        out[name] = {"file": entry["file"], **expected_io[name]}
    return out


def _check_sampling(manifest: dict[str, Any], config: ModelConfig, root: Path) -> None:
    """`schedule` is the config's; `sampler_defaults` are a known sampler, steps and finite guidance."""
    from sg2v.sampling import SAMPLERS

    sched = manifest["schedule"]
    want = {"kind": config.diffusion.schedule, "num_train_timesteps": config.diffusion.num_train_timesteps}
    if not isinstance(sched, dict) or {k: sched.get(k) for k in want} != want:
        raise BundleError(f"bundle {root}: manifest schedule {sched!r:.120} is not the model config's "
                          f"{want}; {_REEXPORT}")
    d = manifest["sampler_defaults"]
    if not isinstance(d, dict):
        raise BundleError(f"bundle {root}: sampler_defaults {d!r:.80} is not an object; {_REEXPORT}")
    problems = []
    if not isinstance(d.get("sampler"), str) or d["sampler"] not in SAMPLERS:
        problems.append(f"sampler {d.get('sampler')!r:.40} is not one of {sorted(SAMPLERS)}")
    steps = d.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_SAMPLER_STEPS:
        problems.append(f"steps {steps!r:.40} is not an integer in [1, {MAX_SAMPLER_STEPS}]")
    for key, lo, hi in (("guidance", 0.0, 1e6), ("guidance_rescale", 0.0, 1.0)):
        v = d.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (math.isfinite(v) and lo <= v <= hi):
            problems.append(f"{key} {v!r:.40} is not a finite number in [{lo:g}, {hi:g}]")
    if problems:
        raise BundleError(f"bundle {root}: sampler_defaults: {'; '.join(problems)}; {_REEXPORT}")


def _check_layout(manifest: dict[str, Any], shapes: dict[str, int], vocab: Vocab, root: Path) -> None:
    """A grounded bundle's `layout` entry: known keys, types and bounds, a known sampler, and rules that are
    known rule ids for predicates of the vocabulary (`sg2v.relations`)."""
    if not kinds.grounding_of(shapes).layout_stage:
        return
    entry = manifest.get("layout")
    if not isinstance(entry, dict):
        what = "missing" if entry is None else "not an object"
        raise BundleError(f"bundle {root}: manifest 'layout' is {what} (a layout-grounded bundle records its "
                          f"layout stage's settings there); {_REEXPORT}")
    unknown = sorted(str(k)[:40] for k in entry if k not in (*spec.LAYOUT_KEYS, spec.LAYOUT_GEOMETRY))
    missing = [k for k in spec.LAYOUT_KEYS if k not in entry]
    if unknown or missing:
        raise BundleError(f"bundle {root}: manifest 'layout' has keys {sorted(map(str, entry))[:8]}, "
                          f"expected {list(spec.LAYOUT_KEYS)} (and optionally {spec.LAYOUT_GEOMETRY!r}); "
                          f"{_REEXPORT}")
    problems = _layout_setting_problems(entry)
    _relation_rule_problems(entry["relation_rules"], vocab, problems)
    if problems:
        raise BundleError(f"bundle {root}: manifest 'layout': {'; '.join(problems)}; {_REEXPORT}")


def _layout_setting_problems(entry: dict[str, Any]) -> list[str]:
    """What is wrong with a layout entry's geometry, step and try counts and sampler."""
    from sg2v.sampling import SAMPLERS

    problems: list[str] = []
    if spec.LAYOUT_GEOMETRY in entry:
        from sg2v.geometry import from_entry

        try:
            from_entry(entry[spec.LAYOUT_GEOMETRY])
        except ValueError as e:
            problems.append(str(e))

    def integer(key: str, lo: int, hi: int) -> None:
        v = entry[key]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            problems.append(f"{key} {v!r:.40} is not an integer in [{lo}, {hi}]")

    integer("steps", 1, spec.MAX_LAYOUT_STEPS)
    integer("tries", 1, spec.MAX_LAYOUT_TRIES)
    tries = entry["tries"]
    tries_ok = isinstance(tries, int) and not isinstance(tries, bool) and 1 <= tries <= spec.MAX_LAYOUT_TRIES
    integer("per_round", 1, tries if tries_ok else spec.MAX_LAYOUT_TRIES)
    if not isinstance(entry["sampler"], str) or entry["sampler"] not in SAMPLERS:
        problems.append(f"sampler {entry['sampler']!r:.40} is not one of {sorted(SAMPLERS)}")
    return problems


def _relation_rule_problems(rules: Any, vocab: Vocab, problems: list[str]) -> None:
    """Add what is wrong with a layout entry's predicate -> rule table to `problems`; the scan stops at the
    first problem (after the first rule when `problems` has some already)."""
    from sg2v.relations import RULES

    if not isinstance(rules, dict):
        problems.append(f"relation_rules {rules!r:.40} is not an object of predicate -> rule")
        return
    preds = set(vocab.pred_names)
    for pred, rule in rules.items():
        if pred not in preds:
            problems.append(f"relation_rules names {pred!r:.40}, not a predicate of the vocabulary")
        elif not isinstance(rule, str) or rule not in RULES:
            problems.append(f"relation_rules[{pred!r}] = {rule!r:.40} is not a known rule "
                            f"({RULES[0]!r}, ...)")
        if problems:
            break


def _check_student(manifest: dict[str, Any], shapes: dict[str, int], config: ModelConfig, root: Path) -> None:
    """A student bundle's `student` entry: known keys, types and bounds, a finite ordered guidance range,
    step counts on its consistency grid, a known sampler, agreement with the model config's `distill`, and
    `sampler_defaults` the student accepts; a teacher's manifest has no such entry."""
    entry = manifest.get("student")
    if not spec.is_student(shapes):
        if entry is not None:
            raise BundleError(f"bundle {root}: manifest has a 'student' entry but its model is not "
                              f"guidance-distilled (model_config unet.guidance_embed is false); {_REEXPORT}")
        return
    if not isinstance(entry, dict):
        what = "missing" if entry is None else "not an object"
        raise BundleError(f"bundle {root}: manifest 'student' is {what} (a guidance-distilled student "
                          f"records how it may be sampled there); {_REEXPORT}")
    if sorted(map(str, entry)) != sorted(spec.STUDENT_KEYS):
        keys = sorted(str(k)[:40] for k in entry)[:9]
        raise BundleError(f"bundle {root}: manifest 'student' has keys {keys}, expected "
                          f"{list(spec.STUDENT_KEYS)}; {_REEXPORT}")
    problems = _student_problems(entry, config.diffusion.num_train_timesteps)
    if problems:
        raise BundleError(f"bundle {root}: manifest 'student': {'; '.join(problems)}; {_REEXPORT}")
    d = config.distill
    want = {"guidance_range": [d.guidance_min, d.guidance_max], "guidance_rescale": d.guidance_rescale,
            "grid_steps": d.grid_steps}
    wrong = [f"{k}={entry[k]!r} (config says {v!r})" for k, v in want.items() if entry[k] != v]
    if wrong:
        raise BundleError(f"bundle {root}: manifest 'student' disagrees with model_config.distill: "
                          f"{', '.join(wrong)}; {_REEXPORT}")
    from sg2v.generation import SamplerSettings

    defaults = manifest["sampler_defaults"]  # checked by _check_sampling: known, typed, in bounds
    try:
        settings = SamplerSettings(defaults["sampler"], defaults["steps"], float(defaults["guidance"]),
                                   float(defaults["guidance_rescale"]))
        kinds.guidance_for(entry).check(settings)
    except ConfigError as e:
        raise BundleError(f"bundle {root}: sampler_defaults are not what the student was distilled for "
                          f"({first_line(e)}); {_REEXPORT}") from None


def _student_problems(entry: dict[str, Any], num_train: int) -> list[str]:
    """What is wrong with a student entry's guidance settings, grid and step counts, sampler and method."""
    from sg2v.sampling import SAMPLERS

    problems = []
    if entry["guidance_distilled"] is not True:
        problems.append(f"guidance_distilled {entry['guidance_distilled']!r:.40} is not true")
    rng = entry["guidance_range"]
    if not (isinstance(rng, list) and len(rng) == 2 and all(_finite(v, 0.0, 1e6) for v in rng)
            and rng[0] <= rng[1]):
        problems.append(f"guidance_range {rng!r:.60} is not [low, high] with 0 <= low <= high <= 1e6")
    if not _finite(entry["guidance_rescale"], 0.0, 1.0):
        problems.append(f"guidance_rescale {entry['guidance_rescale']!r:.40} is not a finite number in "
                        "[0, 1]")
    problems += _student_step_problems(entry, num_train)
    if not isinstance(entry["sampler"], str) or entry["sampler"] not in SAMPLERS:
        problems.append(f"sampler {entry['sampler']!r:.40} is not one of {sorted(SAMPLERS)}")
    if not isinstance(entry["method"], str) or len(entry["method"]) > 200:
        problems.append(f"method {entry['method']!r:.40} is not a short string")
    return problems


def _student_step_problems(entry: dict[str, Any], num_train: int) -> list[str]:
    """What is wrong with a student entry's grid and its step counts (distinct, each on that grid)."""
    problems = []
    grid = entry["grid_steps"]
    most = min(num_train, MAX_SAMPLER_STEPS)
    grid_ok = _integer(grid, 1, most)
    if not grid_ok:
        problems.append(f"grid_steps {grid!r:.40} is not an integer in [1, {most}]")
    steps = entry["steps"]
    if not (isinstance(steps, list) and 1 <= len(steps) <= spec.MAX_STUDENT_STEP_COUNTS
            and all(_integer(n, 1, grid if grid_ok else 1) for n in steps) and len(set(steps)) == len(steps)):
        problems.append(f"steps {steps!r:.60} is not a list of 1 to {spec.MAX_STUDENT_STEP_COUNTS} distinct "
                        f"integers in [1, grid_steps]")
    elif grid_ok:
        off = [n for n in steps if not spec.on_grid(num_train, grid, n)]
        if off:
            problems.append(f"steps {off[:4]} do not lie on the grid of {grid} timesteps the student was "
                            "distilled on")
    return problems


def _check_encoder_weights(manifest: dict[str, Any], files: dict[str, Any], config: ModelConfig,
                           shapes: dict[str, int], root: Path) -> None:
    """A plugin bundle's `encoder_weights.npz` (run by sg2v's own encoder): names and every shape those of
    the config's encoder, one embedding row per class."""
    if manifest.get("pooling") != "plugin" or spec.ENCODER_WEIGHTS not in files:
        return
    from sg2v.runtime import gpu_encoder as ge

    path = root / spec.ENCODER_WEIGHTS
    weights = ge.load_encoder_weights(path)
    ge.check_against_config(weights, config.encoder.num_layers, shapes["context_dim"], str(path),
                            num_objs=config.encoder.num_objs, num_preds=config.encoder.num_preds)


def _finite(v: Any, lo: float, hi: float) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def _integer(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _io_key(ios: Any) -> Any:
    try:
        return sorted((d["name"], d["dtype"], tuple(d["shape"])) for d in ios)
    except (TypeError, KeyError):
        return None


def _load_array(root: Path, files: dict[str, Any], rel: str, shape: tuple[int, ...]) -> NDArray[Any]:
    if rel not in files:
        raise BundleError(f"bundle {root}: {rel} is not listed in the manifest's 'files'; {_REEXPORT}")
    path = _safe_path(root, rel, rel)
    try:
        got_shape, got_dtype = npy_header(path)  # before loading: the header may declare anything
        if got_dtype != np.float32 or got_shape != shape:
            raise BundleError(f"bundle {root}: {rel} is {got_dtype} {got_shape}, expected float32 {shape}; "
                              f"{_REEXPORT}")
        arr = load_npy_checked(path, np.float32, shape)
    except (ValueError, OSError, EOFError) as e:
        raise BundleError(f"bundle {root}: {rel} is not a plain .npy array ({first_line(e)}); {_REEXPORT}") \
            from None
    if not np.isfinite(arr).all():
        raise BundleError(f"bundle {root}: {rel} holds NaN or inf; {_REEXPORT}")
    arr.setflags(write=False)
    return arr


def random_unet_feeds(bundle: Bundle, rows: int, rng: np.random.Generator) -> dict[str, NDArray[np.float32]]:
    """Fresh random inputs of `rows` rows for `bundle`'s UNet stage (benchmarks and parity checks): noise,
    timesteps over the schedule, context, masks (the first token kept), boxes in [0, 1], and a student's
    guidance in its distilled range."""
    student = bundle.student or {"guidance_range": [1.0, 4.0]}
    feeds: dict[str, NDArray[np.float32]] = {}
    for d in bundle.stages[spec.UNET_STAGE]["inputs"]:
        shape = (rows, *d["shape"][1:])
        value: NDArray[Any]
        if d["name"] == "t":
            value = rng.uniform(0, bundle.schedule["num_train_timesteps"] - 1, shape)
        elif d["name"] == "context_mask":
            value = (rng.random(shape) < 0.7).astype(np.float32)
            value[:, 0] = 1.0
        elif d["name"] == "boxes":
            lo = rng.uniform(0, 0.6, (*shape[:-1], 2))
            value = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, lo.shape)], axis=-1)
        elif d["name"] == "guidance":
            lo_w, hi_w = (float(w) for w in student["guidance_range"])
            value = rng.uniform(lo_w, hi_w, shape)
        else:
            value = rng.standard_normal(shape)
        feeds[d["name"]] = value.astype(np.float32)
    return feeds
