"""Model kinds as objects (torch-free): how a model is guided and whether it draws a layout first.

A `Guidance` (classifier-free teacher, or guidance-distilled student) and a `Grounding` (ungrounded, or
layout-grounded) are chosen once from a bundle's `shapes` entry (and manifest), a model config or a
generator's settings; everything that differs between kinds asks them: rows per video, the UNet's inputs,
feeds and batch axis, the denoiser (guidance batching lives in `Guidance.denoiser` only), the
sampler-settings check, format versions, stage lists and I/O, the layout plan, and the labels and FLOPs
benchmarks report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from sg2v import bundle_spec as spec
from sg2v.errors import ConfigError, Sg2vError
from sg2v.sampling import Denoiser, cfg_denoiser

if TYPE_CHECKING:
    from sg2v.generation import SamplerSettings

CONDITIONING = ("context", "context_mask")  # encoder outputs the UNet takes, in cond and uncond halves
GROUNDING = ("objects", "boxes")  # a grounded UNet's further inputs (unconditional rows: zeros)


class Guidance:
    """How the UNet is guided: its rows per video, extra inputs, feeds, denoiser and the settings it takes."""

    name = ""
    label = ""  # what benchmarks call the kind
    short = ""  # the kind in a table's column
    description = ""  # the kind after a bundle's name
    entry: dict[str, Any] | None = None  # the manifest's "student" entry (None: not a student)
    rows_per_video = 2  # UNet rows per video per step
    unet_extra_inputs: tuple[str, ...] = ()  # UNet inputs after the conditioning
    manifest_keys: tuple[str, ...] = ()  # the manifest entries the kind adds
    format_version: int | None = None  # the format the kind needs (None: what the grounding needs)
    # what the bundle stores for the unconditional rows
    null_context_files: tuple[str, ...] = (spec.NULL_CONTEXT, spec.NULL_CONTEXT_MASK)

    def shapes_entry(self) -> dict[str, Any]:
        """What the kind adds to the manifest's `shapes` entry."""
        return {}

    def unet_batch_dim(self, s: Mapping[str, Any] | None = None) -> Any:
        """The UNet's batch axis: a name (format 2 and later) or format 1's fixed size."""
        return spec.UNET_BATCH_DIM if s is None or "max_batch" in s else s["unet_batch"]

    def unet_extra_io(self, n: Any) -> list[dict[str, Any]]:
        """The stage I/O entries of `unet_extra_inputs` for batch axis `n`."""
        return [spec.io_entry(name, "float32", [n]) for name in self.unet_extra_inputs]

    def version_problem(self, version: int) -> str | None:
        """What is wrong with this kind in a bundle of format `version`, or None."""
        if version >= spec.STUDENT_FORMAT_VERSION:
            return (f"format {version} without a guidance-distilled student (its model_config has no "
                    "guidance embedding)")
        return None

    def unconditional(self, null_context: tuple[Any, Any] | None, xp: Any) -> dict[str, Any]:
        """The unconditional rows' conditioning (name -> (1, ...) array in `xp`)."""
        if null_context is None:
            raise Sg2vError("a model sampled with classifier-free guidance needs its learned null context; "
                            "re-export the bundle")
        return {name: xp.asarray(np.ascontiguousarray(value, np.float32))
                for name, value in zip(CONDITIONING, null_context)}  # (1, L, D), (1, L)

    def read_null_context(self, load: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
        """The bundle's null context and mask via `load()` ((None, None) where the kind has no use for it)."""
        return load()

    def random_extra_inputs(self, rng: np.random.Generator, b: int) -> dict[str, NDArray[np.float32]]:
        """Random values of `unet_extra_inputs` for b rows in the range the model takes (export parity)."""
        return {}

    def manifest_entries(self) -> dict[str, Any]:
        """The manifest entries of `manifest_keys` the exporter writes."""
        return {}

    def fill(self, feeds: dict[str, Any], cond: Mapping[str, Any], uncond: Mapping[str, Any], b: int) -> None:
        """Write the conditioning into the UNet feeds: the b rows of `cond`, then the unconditional rows (the
        learned null context; no objects and no boxes)."""
        for name, value in cond.items():
            feeds[name][:b] = value
            feeds[name][b:] = uncond[name] if name in uncond else 0.0

    def check(self, settings: Any) -> None:
        """Refuse sampler settings the model cannot take (one ConfigError)."""

    def settings(self, defaults: Mapping[str, Any], num_train: int, **options: Any) -> SamplerSettings:
        """The `SamplerSettings` of one call: `resolve_settings` over `defaults`, then `check`."""
        from sg2v.generation import resolve_settings

        settings = resolve_settings(defaults, num_train, **options)
        self.check(settings)
        return settings

    def step_counts(self, candidates: Sequence[int]) -> list[int]:
        """The step counts a benchmark samples with: `candidates`, or a student's first three distilled."""
        return list(candidates)

    def reference_steps(self, candidate: int, default: int) -> int:
        """The one step count of a benchmark's reference rows: `candidate`, or a student's `default`."""
        return candidate

    def unet_flops(self, per_row: float, b: int) -> float:
        """FLOPs of one denoiser step for b videos, from one UNet row's."""
        return per_row * self.rows_per_video * b

    def denoiser(self, backend: Any, feeds: dict[str, Any], b: int, s: Any, clock: Any) -> Denoiser:
        """denoise(x, t) -> guided v: the backend's fused guided step when it has one, else the UNet stage."""
        if backend.guided_step is None:
            return self._unet_denoiser(backend, feeds, s, clock)
        step = backend.guided_step(b)
        step.prepare(feeds, s.guidance, s.guidance_rescale)

        def fused(x: Any, t: float) -> Any:
            clock.start()
            v = step(x, t)
            clock.stop()
            return v

        return fused

    def _unet_denoiser(self, backend: Any, feeds: dict[str, Any], s: Any, clock: Any) -> Denoiser:
        """CFG around the UNet on (cond, uncond) rows: x2 (2b, F, C, H, W) -> v2, then `guide`."""

        def pair(x2: Any, t: float) -> Any:
            clock.start()
            feeds["t"][...] = t
            feeds["x"] = x2
            v2 = backend.unet.run(feeds)["v"]  # the stage's buffer, used before the next step
            clock.stop()
            return v2

        return cfg_denoiser(pair, s.guidance, s.guidance_rescale)


class ClassifierFree(Guidance):
    """A teacher sampled with classifier-free guidance: 2B UNet rows (cond, then the null context)."""

    name = "cfg"
    label = "CFG"
    short = "CFG"
    description = "sampled with CFG"


class Distilled(Guidance):
    """A guidance-distilled consistency student: B UNet rows with the guidance weight as an input, sampled
    only as its manifest's "student" entry says (`check`)."""

    name = "student"
    label = "student (guidance distilled)"
    short = "student"
    description = "guidance-distilled student"
    rows_per_video = 1
    unet_extra_inputs = (spec.STUDENT_INPUT,)
    manifest_keys = spec.STUDENT_MANIFEST_KEYS
    format_version = spec.STUDENT_FORMAT_VERSION
    null_context_files = ()

    def __init__(self, entry: Mapping[str, Any] | None):
        self.entry = None if not entry else {**entry, "guidance_range": list(entry["guidance_range"]),
                                                 "steps": list(entry["steps"])}

    def shapes_entry(self) -> dict[str, Any]:
        return {"student": True}

    def _entry(self) -> dict[str, Any]:
        if self.entry is None:
            raise ConfigError("a guidance-distilled student without its manifest's \"student\" entry; "
                              "re-export the bundle")
        return self.entry

    def unet_batch_dim(self, s: Mapping[str, Any] | None = None) -> Any:
        return spec.BATCH_DIM  # one UNet row per video

    def version_problem(self, version: int) -> str | None:
        if version != spec.STUDENT_FORMAT_VERSION:
            return (f"a guidance-distilled student (model_config unet.guidance_embed) in a format-{version} "
                    f"bundle (a student needs format {spec.STUDENT_FORMAT_VERSION})")
        return None

    def unconditional(self, null_context: tuple[Any, Any] | None, xp: Any) -> dict[str, Any]:
        return {}  # no unconditional rows

    def read_null_context(self, load: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
        return None, None

    def manifest_entries(self) -> dict[str, Any]:
        return {"student": dict(self._entry())}

    def random_extra_inputs(self, rng: np.random.Generator, b: int) -> dict[str, NDArray[np.float32]]:
        lo, hi = self._entry()["guidance_range"]
        return {spec.STUDENT_INPUT: rng.uniform(lo, hi, size=b).astype(np.float32)}  # (B,)

    def fill(self, feeds: dict[str, Any], cond: Mapping[str, Any], uncond: Mapping[str, Any], b: int) -> None:
        for name, value in cond.items():
            feeds[name][:b] = value  # the conditional rows only

    def check(self, settings: Any) -> None:
        """DDIM on the grid's step counts, guidance in the distilled range, the teacher's rescale."""
        s, entry = settings, self._entry()
        lo, hi = entry["guidance_range"]
        steps = list(entry["steps"])
        if s.sampler != entry["sampler"]:
            raise ConfigError(f"sampler {s.sampler!r}: this student was distilled for {entry['sampler']!r} "
                              f"sampling on {steps} steps; use --sampler {entry['sampler']}")
        if s.steps not in steps:
            raise ConfigError(f"{s.steps} steps: this student was distilled for {steps} steps (its "
                              f"consistency grid of {entry['grid_steps']}); use one of those, or the teacher "
                              "bundle")
        if not lo <= s.guidance <= hi:
            raise ConfigError(f"guidance {s.guidance:g}: this student was distilled for guidance in "
                              f"[{lo:g}, {hi:g}]; use one in that range, or the teacher bundle")
        if abs(s.guidance_rescale - float(entry["guidance_rescale"])) > 1e-9:
            raise ConfigError(f"guidance rescale {s.guidance_rescale:g}: this student reproduces its "
                              f"teacher's rescale {entry['guidance_rescale']:g}, which it cannot change")

    def step_counts(self, candidates: Sequence[int]) -> list[int]:
        return sorted(self._entry()["steps"])[:3]

    def reference_steps(self, candidate: int, default: int) -> int:
        return default

    def _unet_denoiser(self, backend: Any, feeds: dict[str, Any], s: Any, clock: Any) -> Denoiser:
        """The UNet on the b conditional rows with the guidance weight as its input."""
        feeds[spec.STUDENT_INPUT][...] = s.guidance

        def distilled(x: Any, t: float) -> Any:
            clock.start()
            feeds["t"][...] = t
            feeds["x"] = x
            v = backend.unet.run(feeds)["v"]
            clock.stop()
            return v

        return distilled


CLASSIFIER_FREE = ClassifierFree()


def guidance_for(entry: Mapping[str, Any] | bool | None) -> Guidance:
    """The guidance of a model whose manifest "student" entry is `entry` (True: a student whose entry is not
    at hand; None or False: a CFG teacher)."""
    if entry is None or entry is False:
        return CLASSIFIER_FREE
    return Distilled(entry if isinstance(entry, Mapping) else None)


def guidance_of(s: Mapping[str, Any] | None, manifest: Mapping[str, Any] | None = None) -> Guidance:
    """The guidance of a bundle with `shapes` entry `s` (its "student" entry read from `manifest`)."""
    return Distilled((manifest or {}).get("student")) if s and spec.is_student(s) else CLASSIFIER_FREE


class Grounding:
    """Whether a model draws a layout first: its stages, encoder outputs, UNet inputs and layout plan."""

    name = "ungrounded"
    layout_stage = False  # whether the bundle has a layout network
    stage_files = spec.STAGE_FILES
    encoder_outputs: tuple[str, ...] = spec.ENCODER_OUTPUTS
    encoder_call = "forward"  # the SGEncoder method that returns `encoder_outputs`
    unet_inputs: tuple[str, ...] = spec.UNET_INPUTS  # before the guidance's extra inputs
    manifest_keys: tuple[str, ...] = ()
    format_version = spec.UNGROUNDED_FORMAT_VERSION

    def shapes_entry(self, encoder: Any, max_batch: int) -> dict[str, Any]:
        """What the kind adds to the manifest's `shapes` entry."""
        return {}

    def stage_io(self, out: dict[str, Any], s: Mapping[str, Any], b: Any, n: Any) -> dict[str, Any]:
        """The stage I/O `out` (encoder and UNet) with what the kind adds, in stage order."""
        return out

    def version_problem(self, version: int) -> str | None:
        """What is wrong with this kind in a bundle of format `version`, or None."""
        if version == spec.GROUNDED_FORMAT_VERSION:
            return (f"format {version} without a layout-grounded model (its model_config has no layout "
                    "network)")
        return None

    def require_layout_stage(self) -> None:
        """Refuse a layout-stage call on a model without one."""
        raise Sg2vError("this model has no layout stage")

    def plan(self, b: int, graphs: Sequence[Any] | None, layouts: Sequence[Mapping[int, Any]] | None,
             tries: int | None, frames: int, settings: Mapping[str, Any] | None) -> Any:
        """What the layout stage needs per graph (counts, relationships, pinned tracks), or None."""
        if layouts is not None and any(layouts):
            raise Sg2vError("this model has no layout stage, so it cannot take given tracks; use a "
                            "layout-grounded bundle")
        return None

    def layout_settings(self, manifest: Mapping[str, Any], config: Any, object_names: Sequence[str]) -> Any:
        """The layout stage's settings from a checked manifest (None without a layout stage)."""
        return None

    def manifest_entries(self, config: Any, vocab: Any) -> dict[str, Any]:
        """The manifest entries of `manifest_keys` the exporter writes for a `ModelConfig` and `Vocab`."""
        return {}


class LayoutGrounded(Grounding):
    """A layout stage draws (F, 4) tracks per object first; the UNet also takes objects and boxes."""

    name = "layout-grounded"
    layout_stage = True
    stage_files = spec.GROUNDED_STAGE_FILES
    encoder_outputs = spec.GROUNDED_ENCODER_OUTPUTS
    encoder_call = "encode_all"
    unet_inputs = spec.GROUNDED_UNET_INPUTS
    manifest_keys = spec.GROUNDED_MANIFEST_KEYS
    format_version = spec.GROUNDED_FORMAT_VERSION

    def shapes_entry(self, encoder: Any, max_batch: int) -> dict[str, Any]:
        return {"object_dim": int(encoder.embed_dim),
                "max_layout_batch": int(max_batch) * spec.LAYOUT_PER_ROUND}

    def stage_io(self, out: dict[str, Any], s: Mapping[str, Any], b: Any, n: Any) -> dict[str, Any]:
        io = spec.io_entry
        o, t, f = s["padded_objects"], s["padded_triples"], s["frames"]
        length, d = s["context_tokens"], s["context_dim"]
        od, k = s["object_dim"], spec.LAYOUT_BATCH_DIM
        out[spec.ENCODER_STAGE]["outputs"].append(io("objects", "float32", [b, o, od]))
        at = 4  # after x, t, context, context_mask (and before a student's guidance)
        out[spec.UNET_STAGE]["inputs"][at:at] = [io("objects", "float32", [n, o, od]),
                                                 io("boxes", "float32", [n, o, f, 4])]
        out[spec.LAYOUT_STAGE] = {
            "inputs": [io("x", "float32", [k, o, f, 4]), io("t", "float32", [k]),
                       io("objects", "float32", [k, o, od]), io("track_mask", "float32", [k, o]),
                       io("context", "float32", [k, length, d]), io("context_mask", "float32", [k, length]),
                       io("triples", "int64", [k, t, 3]), io("known", "float32", [k, o, f, 4]),
                       io("known_mask", "float32", [k, o])],
            "outputs": [io("v", "float32", [k, o, f, 4])],
        }
        return {name: out[name] for name in self.stage_files}

    def version_problem(self, version: int) -> str | None:
        if version < spec.GROUNDED_FORMAT_VERSION:
            return (f"a layout-grounded model in a format-{version} bundle (a layout stage needs format "
                    f"{spec.GROUNDED_FORMAT_VERSION})")
        return None

    def require_layout_stage(self) -> None:
        return None

    def plan(self, b: int, graphs: Sequence[Any] | None, layouts: Sequence[Mapping[int, Any]] | None,
             tries: int | None, frames: int, settings: Mapping[str, Any] | None) -> Any:
        from sg2v.layout import is_index_key

        if graphs is None or len(graphs) != b:
            raise Sg2vError("a layout-grounded model needs the parsed graphs (for their relationships)")
        if layouts is not None and len(layouts) != b:
            raise Sg2vError(f"{len(layouts)} layouts for {b} graphs; pass one mapping (maybe empty) per "
                            "graph")
        pinned = []
        for i, g in enumerate(graphs):
            given = dict(g.tracks(frames)) if getattr(g, "layout", ()) else {}
            for k, track in (layouts[i] if layouts is not None else {}).items():
                if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool)) and not is_index_key(k):
                    raise Sg2vError(f"layout for graph {i}: key {str(k)[:40]!r} is not an object index (an "
                                    f"int or a string of ASCII digits, 0..{g.num_objects - 1})")
                track = np.asarray(track, dtype=np.float32)
                if not 0 <= int(k) < g.num_objects or track.shape != (frames, 4):
                    raise Sg2vError(f"layout for graph {i}: object {k} with a track of shape {track.shape}; "
                                    f"give (F={frames}, 4) boxes for objects 0..{g.num_objects - 1}")
                given[int(k)] = track
            pinned.append(given)
        settings = dict(settings or {})
        if tries is not None:
            if not isinstance(tries, (int, np.integer)) or isinstance(tries, bool) or not 1 <= tries <= 4096:
                raise Sg2vError(f"layout tries must be an integer in [1, 4096], got {tries!r}")
            settings["tries"] = int(tries)
        return {"counts": [g.num_objects for g in graphs],
                "relationships": [[list(r) for r in g.relationships] for g in graphs],
                "pinned": pinned, "settings": settings}

    def manifest_entries(self, config: Any, vocab: Any) -> dict[str, Any]:
        """`layout`: the config's layout sampler settings, the vocabulary's relation rules and the data's
        geometric constraints."""
        from sg2v.geometry import model_geometry
        from sg2v.relations import rules_for

        rules = rules_for(vocab.pred_names, config.layout.rules)
        geometry = model_geometry(config, vocab.object_names)
        return {"layout": spec.layout_defaults(config.layout, rules, geometry)}

    def layout_settings(self, manifest: Mapping[str, Any], config: Any, object_names: Sequence[str]) -> Any:
        """`steps, tries, per_round, sampler, relation_rules, geometry`; a shapes-world bundle written
        without `geometry` gets the shapes world's constraints derived from its config."""
        from sg2v.geometry import geometry_for, to_entry

        entry = manifest["layout"]
        geometry = geometry_for(config, object_names, entry.get(spec.LAYOUT_GEOMETRY))
        return {**{k: entry[k] for k in spec.LAYOUT_KEYS}, "relation_rules": dict(entry["relation_rules"]),
                "geometry": None if geometry is None else to_entry(geometry)}


UNGROUNDED = Grounding()
LAYOUT_GROUNDED = LayoutGrounded()


def grounding_for(layout: bool | Mapping[str, Any] | None) -> Grounding:
    """The grounding of a model with a layout stage (True, or its settings) or without (False, None)."""
    return LAYOUT_GROUNDED if layout not in (None, False) else UNGROUNDED


def grounding_of(s: Mapping[str, Any]) -> Grounding:
    """The grounding of a bundle with `shapes` entry `s`."""
    return grounding_for(spec.grounded(s))


def kinds_of_config(config: Any) -> tuple[Guidance, Grounding]:
    """The kinds a `ModelConfig` describes (a student's "student" entry from its `distill`); ConfigError when
    it has half a layout-grounded model."""
    if (config.layout.dim > 0) != (config.unet.layout_dim > 0):
        raise ConfigError(f"model_config has layout.dim {config.layout.dim} and unet.layout_dim "
                          f"{config.unet.layout_dim}; a model has both a layout network and a grounded UNet, "
                          "or neither")
    entry = None
    if config.unet.guidance_embed:
        entry = spec.student_entry(config.distill, config.diffusion.num_train_timesteps)
    return guidance_for(entry), grounding_for(config.layout.dim > 0)
