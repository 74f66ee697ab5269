"""Typed model configuration, saved inside every checkpoint and bundle (torch-free).

The config is the one source of truth for shapes: training builds the networks from it, the exporter fixes the
ONNX shapes from it, and the runtime reads it back from the manifest. Sizes are a table of named constructors
(`MODEL_SIZES`), offered as choices by the CLIs. Run options (the training configs) are dataclass fields made
with `sg2v.options.option`, which carries the help text; `sg2v.options.add_fields` builds the command line
from those fields, so an option is documented once, beside its default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from sg2v.errors import ConfigError, shown
from sg2v.graph import padded_slots
from sg2v.options import option as option
from sg2v.sampling import SAMPLERS

FORMAT_VERSION = 1  # checkpoint / config format; bump on incompatible change


@dataclass(frozen=True)
class DataConfig:
    """Video and graph shapes the model is trained and exported at."""

    frames: int = 16
    height: int = 64
    width: int = 64
    channels: int = 3
    max_objects: int = 4  # user objects per graph; `__image__` is added inside
    max_relationships: int = 4  # user relationships; one `__in_image__` per object is added inside

    @property
    def padded_objects(self) -> int:
        """O: object slots after appending `__image__` (`sg2v.graph.padded_slots`)."""
        return padded_slots(self.max_objects, self.max_relationships)[0]

    @property
    def padded_triples(self) -> int:
        """T: triple slots after one `__in_image__` triple per object (`sg2v.graph.padded_slots`)."""
        return padded_slots(self.max_objects, self.max_relationships)[1]

    @property
    def context_tokens(self) -> int:
        """L = 1 + T: one global token, then one local token per triple slot."""
        return 1 + self.padded_triples


@dataclass(frozen=True)
class EncoderConfig:
    """Scene-graph encoder (sg2im GraphTripleConv stack, as SGDiff uses it)."""

    num_objs: int = 22  # vocabulary size, `__image__` included
    num_preds: int = 7  # vocabulary size, `__in_image__` included
    embed_dim: int = 128
    hidden_dim: int = 256
    num_layers: int = 5
    context_dim: int = 256  # width of the context tokens the UNet attends to


@dataclass(frozen=True)
class UNetConfig:
    """Temporal UNet in pixel space; frames folded into the batch."""

    base_channels: int = 64
    patch_size: int = 1  # pixels per side folded into channels before conv_in (and unfolded after conv_out)
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1, 2)  # levels (0 = full res) with spatial transformers
    num_heads: int = 4
    norm_groups: int = 8  # GroupNorm groups, per frame; never 1
    temporal_attention: bool = True
    temporal_conv: bool = True
    dropout: float = 0.0
    # Layout grounding (0: none): width of the per-object embedding painted inside each object's box per frame
    # (object maps, with in-box coordinates), added at the UNet's input and read by a full-resolution head.
    layout_dim: int = 0
    layout_head: int = 32  # hidden width of the per-pixel output head over the object maps (with layout_dim)
    # A guidance-distilled student: the guidance weight is an input, embedded like the timestep (Meng et al.
    # 2023), and one UNet call of batch 1 per video replaces the (cond, uncond) pair.
    guidance_embed: bool = False


@dataclass(frozen=True)
class DiffusionConfig:
    """v-prediction on a cosine schedule rescaled to zero terminal SNR (Lin et al. 2023).

    `prediction` is what the network's last layer predicts; the UNet's output is always v. "x0": the layers
    predict the clean video and the UNet converts it to v with the schedule (x-prediction, which large-patch
    pixel models need, Li & He 2025: a patch's noise cannot pass through fewer channels than it has values,
    the clean video can), trained with the v-loss capped at X0_LOSS_WEIGHT_CAP times the x0 error.
    """

    num_train_timesteps: int = 1000
    prediction: str = "v"  # "v" or "x0"
    schedule: str = "cosine_zsnr"
    cond_drop_prob: float = 0.15  # classifier-free guidance: graph replaced by the null context
    default_steps: int = 8
    default_guidance: float = 3.0
    default_guidance_rescale: float = 0.7
    default_sampler: str = "dpmpp2m"


@dataclass(frozen=True)
class LayoutConfig:
    """Layout network over object tracks (`sg2v.models.layout`); dim 0: the model has no layout stage."""

    dim: int = 0  # token width of the layout transformer; 0: no layout network
    layers: int = 4
    heads: int = 4
    default_steps: int = 8  # sampler steps of the layout stage
    default_tries: int = 16  # layouts drawn per graph at most until every relation with a rule holds
    rules: str = "shapes"  # relation-rule family checked on layouts (sg2v.relations): shapes, coco or none
    geometry: str = ""  # a converted data set's measured constraints, JSON (sg2v.geometry); "": none recorded


@dataclass(frozen=True)
class DistillConfig:
    """What a guidance-distilled student was distilled for (`unet.guidance_embed`); unused otherwise."""

    guidance_min: float = 1.0
    guidance_max: float = 8.0
    guidance_rescale: float = 0.7  # the teacher's guidance rescale the student reproduces
    grid_steps: int = 20  # trailing timesteps of the consistency grid; 1, 2, 4, 5, 10, 20 steps lie on it


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the networks exactly as trained."""

    name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of str/int/float/bool/list, safe for `torch.load(weights_only=True)` and JSON."""
        plain: dict[str, Any] = _to_plain(self)
        return plain

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; rejects unknown keys and newer format versions with a clear message."""
        if not isinstance(d, dict):
            raise ConfigError(f"model config must be a dict, got {type(d).__name__}")
        version = d.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ConfigError(
                f"model config has format_version {version!r}, this sg2v reads <= {FORMAT_VERSION}; "
                "upgrade sg2v to load it"
            )
        cfg: ModelConfig = _from_plain(cls, d, "config")
        cfg.check_bounds()
        return cfg

    def check_bounds(self) -> None:
        """ConfigError unless every field has its type and lies within `BOUNDS` (what a file may declare)."""
        for part in (self, self.data, self.encoder, self.unet, self.diffusion, self.layout, self.distill):
            _check_fields(part, type(part).__name__)
        lo, hi = self.distill.guidance_min, self.distill.guidance_max
        if lo > hi:
            raise ConfigError(f"config.distill: guidance_min {lo} is above guidance_max {hi}")
        d = self.data
        elements = d.frames * d.height * d.width * d.channels
        if elements > MAX_VIDEO_ELEMENTS:
            raise ConfigError(f"config: a {d.frames} x {d.channels} x {d.height} x {d.width} video has "
                              f"{elements} values, more than the {MAX_VIDEO_ELEMENTS} this sg2v allocates")
        bad = [lvl for lvl in self.unet.attention_levels if lvl >= len(self.unet.channel_mult)]
        if bad:
            raise ConfigError(f"config.unet.attention_levels {list(self.unet.attention_levels)}: levels "
                              f"{bad} do not exist (channel_mult has {len(self.unet.channel_mult)})")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    return obj


def _from_plain(cls: type, d: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; the file was written by another sg2v version")
    hints = _resolved_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        hint = hints[name]
        sub = _SUBCONFIGS.get(hint)
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{name}: expected a dict, got {type(value).__name__}")
            kwargs[name] = _from_plain(sub, value, f"{where}.{name}")
        elif hint.startswith("tuple"):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.{name}: expected a list, got {type(value).__name__}")
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# What a config read from a file (checkpoint, bundle manifest) may declare, inclusive: generous for real
# models, finite so that a crafted file cannot make the loader allocate without bound.
BOUNDS: dict[str, tuple[float, float]] = {
    "ModelConfig.format_version": (1, 1_000_000),
    "DataConfig.frames": (1, 1024), "DataConfig.height": (1, 8192), "DataConfig.width": (1, 8192),
    "DataConfig.channels": (1, 16), "DataConfig.max_objects": (1, 1024),
    "DataConfig.max_relationships": (0, 4096),
    "EncoderConfig.num_objs": (1, 1_000_000), "EncoderConfig.num_preds": (1, 100_000),
    "EncoderConfig.embed_dim": (1, 65536), "EncoderConfig.hidden_dim": (1, 65536),
    "EncoderConfig.num_layers": (1, 256), "EncoderConfig.context_dim": (1, 65536),
    "UNetConfig.base_channels": (1, 65536), "UNetConfig.patch_size": (1, 64),
    "UNetConfig.channel_mult": (1, 64), "UNetConfig.num_res_blocks": (0, 64),
    "UNetConfig.attention_levels": (0, 63), "UNetConfig.num_heads": (1, 1024),
    "UNetConfig.norm_groups": (1, 65536), "UNetConfig.dropout": (0.0, 1.0),
    "UNetConfig.layout_dim": (0, 65536), "UNetConfig.layout_head": (1, 65536),
    "DiffusionConfig.num_train_timesteps": (2, 100_000), "DiffusionConfig.cond_drop_prob": (0.0, 1.0),
    "DiffusionConfig.default_steps": (1, 10_000), "DiffusionConfig.default_guidance": (0.0, 1e6),
    "DiffusionConfig.default_guidance_rescale": (0.0, 1.0),
    "LayoutConfig.dim": (0, 65536), "LayoutConfig.layers": (1, 256), "LayoutConfig.heads": (1, 1024),
    "LayoutConfig.default_steps": (1, 1000), "LayoutConfig.default_tries": (1, 4096),
    "DistillConfig.guidance_min": (0.0, 1e6), "DistillConfig.guidance_max": (0.0, 1e6),
    "DistillConfig.guidance_rescale": (0.0, 1.0), "DistillConfig.grid_steps": (1, 100_000),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "DiffusionConfig.prediction": ("v", "x0"),
    "DiffusionConfig.schedule": ("cosine", "cosine_zsnr"),  # sg2v.schedule.SCHEDULES
    "DiffusionConfig.default_sampler": tuple(SAMPLERS),
    "LayoutConfig.rules": ("shapes", "coco", "none"),  # sg2v.relations.FAMILIES and "none"
}
MAX_LIST = 64  # entries of a tuple field (channel_mult, attention_levels)
MAX_VIDEO_ELEMENTS = 1 << 28  # frames x channels x height x width: 1 GiB of float32 per video
MAX_STR = 256


def _check_fields(obj: Any, where: str) -> None:
    """ConfigError for the first field of config dataclass `obj` of the wrong type, choice or bounds."""
    for f in dataclasses.fields(obj):
        name, hint, value = f"{where}.{f.name}", str(f.type), getattr(obj, f.name)
        lo, hi = BOUNDS.get(name, (None, None))
        if hint.startswith("tuple"):
            _check_int_tuple(name, value, lo, hi)
            continue
        if not _has_type(hint, value):
            raise ConfigError(f"{name} = {shown(value, 80)}: expected {hint}")
        if name in CHOICES and value not in CHOICES[name]:
            raise ConfigError(f"{name} = {shown(value, 80)}: choose one of {list(CHOICES[name])}")
        if lo is not None and not lo <= value <= hi:
            raise ConfigError(f"{name} = {shown(value)}: outside [{lo}, {hi}], the bounds this sg2v accepts")


def _has_type(hint: str, value: Any) -> bool:
    """Whether `value` is of the scalar type named `hint` (a finite float, a string of at most MAX_STR)."""
    if hint == "bool":
        return isinstance(value, bool)
    if hint == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if hint == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint == "str":
        return isinstance(value, str) and len(value) <= MAX_STR
    return True


def _check_int_tuple(name: str, value: Any, lo: Any, hi: Any) -> None:
    """ConfigError unless `value` is at most MAX_LIST integers, each in [lo, hi] where bounded."""
    ok = len(value) <= MAX_LIST and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if ok and lo is not None:
        ok = all(lo <= v <= hi for v in value)
    if not ok:
        raise ConfigError(f"{name} = {list(value)[:8]!r}: expected at most {MAX_LIST} integers"
                          + (f" in [{lo}, {hi}]" if lo is not None else ""))


def _resolved_hints(cls: type) -> dict[str, str]:
    # `from __future__ import annotations` keeps hints as strings; compare them by name.
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


_SUBCONFIGS = {
    "DataConfig": DataConfig,
    "EncoderConfig": EncoderConfig,
    "UNetConfig": UNetConfig,
    "DiffusionConfig": DiffusionConfig,
    "LayoutConfig": LayoutConfig,
    "DistillConfig": DistillConfig,
}


def _tiny() -> ModelConfig:
    """For tests and CPU smoke runs: seconds per step on 2 cores."""
    return ModelConfig(
        name="tiny",
        data=DataConfig(frames=4, height=16, width=16),
        encoder=EncoderConfig(embed_dim=32, hidden_dim=64, num_layers=2, context_dim=64),
        unet=UNetConfig(base_channels=16, channel_mult=(1, 2), attention_levels=(1,), num_heads=2,
                        norm_groups=4, layout_dim=4, layout_head=16),
        layout=LayoutConfig(dim=32, layers=2, heads=2),
    )


def _small() -> ModelConfig:
    """The demo model: 16 x 64 x 64 video, UNet on an 8 x 8 grid of 8 x 8-pixel patches grounded on object
    maps, sized for the 2-core CPU runtime (about 5 GFLOP per guided step); a 128-wide layout network."""
    return ModelConfig(
        name="small",
        data=DataConfig(frames=16, height=64, width=64),
        encoder=EncoderConfig(embed_dim=64, hidden_dim=128, num_layers=3, context_dim=128),
        unet=UNetConfig(base_channels=48, patch_size=8, channel_mult=(1, 2, 2), attention_levels=(0, 1, 2),
                        num_heads=4, norm_groups=8, layout_dim=8, layout_head=32),
        diffusion=DiffusionConfig(prediction="x0"),
        layout=LayoutConfig(dim=128, layers=4, heads=4),
    )


def _base() -> ModelConfig:
    """For GPUs: 16 x 64 x 64."""
    return ModelConfig(
        name="base",
        data=DataConfig(frames=16, height=64, width=64),
        encoder=EncoderConfig(embed_dim=128, hidden_dim=256, num_layers=5, context_dim=256),
        unet=UNetConfig(base_channels=64, channel_mult=(1, 2, 2, 4), attention_levels=(2, 3), num_heads=4,
                        norm_groups=16, layout_dim=16, layout_head=64),
        layout=LayoutConfig(dim=256, layers=6, heads=8),
    )


MODEL_SIZES = {"tiny": _tiny, "small": _small, "base": _base}
DEVICES = "auto, cpu, cuda or cuda:N"


def parse_device(text: str | None, flag: str = "--device") -> tuple[str, int | None]:
    """("auto" | "cpu" | "cuda", device index or None) from a device string (None means "auto")."""
    if text is None:
        return "auto", None
    name = str(text).strip().lower()
    if name in ("auto", "cpu", "cuda"):
        return name, None
    if name.startswith("cuda:") and name[5:].isdigit():
        return "cuda", int(name[5:])
    raise ConfigError(f"{flag} {text!r} is not understood; use {DEVICES}")


def without_layout(cfg: ModelConfig) -> ModelConfig:
    """`cfg` without layout grounding: no layout network, no object maps in the UNet."""
    unet = dataclasses.replace(cfg.unet, layout_dim=0, layout_head=UNetConfig().layout_head)
    return cfg.replace(unet=unet, layout=LayoutConfig())


def student_config(teacher: ModelConfig, distill: DistillConfig, steps: int = 4) -> ModelConfig:
    """A guidance-distilled student of `teacher`: the same networks plus the guidance embedding, sampled
    with DDIM on `steps` steps of its consistency grid."""
    diffusion = dataclasses.replace(teacher.diffusion, default_sampler="ddim", default_steps=int(steps),
                                    default_guidance_rescale=float(distill.guidance_rescale))
    return teacher.replace(unet=dataclasses.replace(teacher.unet, guidance_embed=True), diffusion=diffusion,
                           distill=distill, name=f"{teacher.name}-student")


def model_config(size: str) -> ModelConfig:
    """The named configuration `size` (one of `MODEL_SIZES`)."""
    try:
        return MODEL_SIZES[size]()
    except KeyError:
        raise ConfigError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}") from None


MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy's SeedSequence both take [0, 2**63)
MAX_WORKERS = 64  # data-loader / converter worker processes a command starts
MAX_BATCH = 4096  # samples per training step, videos per benchmark batch
THREADS_PER_CPU = 4  # --threads above this many per usable CPU only oversubscribes (and 1000 threads hang)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_threads() -> int:
    """The most CPU threads a --threads flag may ask for here: THREADS_PER_CPU per usable CPU, 8 at least."""
    return max(8, THREADS_PER_CPU * usable_cpus())


def threads_problem(value: Any, flag: str = "--threads", zero_ok: bool = False) -> str | None:
    """Why `value` cannot be a thread count (None if it can): an integer in [1 (0 with `zero_ok`), max]."""
    lo, hi = (0 if zero_ok else 1), max_threads()
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        return (f"{flag} {shown(value)}: must be an integer in [{lo}, {hi}], at most {THREADS_PER_CPU} per "
                f"usable CPU ({usable_cpus()} here)")
    return None


def option_problem(obj: Any) -> str | None:
    """The first `option` field of the dataclass `obj` whose value does not have its type, as "--flag ...:
    why", else None: ints must be integers, floats finite numbers (argparse's float() takes nan and inf)."""
    for f in dataclasses.fields(obj):
        if "help" not in f.metadata:
            continue
        value, hint = getattr(obj, f.name), str(f.type)
        flag = "--" + f.name.replace("_", "-")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if hint == "float" and not (number and math.isfinite(value)):
            return f"{flag} {shown(value)}: must be a finite number"
        if hint.startswith("int") and not (isinstance(value, int) and not isinstance(value, bool)):
            if not (value is None and "None" in hint):
                return f"{flag} {shown(value)}: must be an integer"
        if hint.startswith("int") and isinstance(value, int) and abs(value) > MAX_SEED:
            return f"{flag} {shown(value)}: out of range (at most {MAX_SEED.bit_length()} bits)"
    return None


def video_size_problem(frames: int, height: int, width: int, channels: int = 3,
                       flags: tuple[str, str, str] = ("--frames", "--height", "--width")) -> str | None:
    """Why a video size asked for on a command line cannot be built (None if it can): each side within
    `BOUNDS`, the whole video within MAX_VIDEO_ELEMENTS, checked before anything is allocated."""
    for flag, name, value in zip(flags, ("frames", "height", "width"), (frames, height, width)):
        lo, hi = BOUNDS[f"DataConfig.{name}"]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            return f"{flag} {shown(value)}: must be an integer in [{lo}, {hi}]"
    n = frames * height * width * channels
    if n > MAX_VIDEO_ELEMENTS:
        return (f"{flags[0]} {frames} x {flags[1]} {height} x {flags[2]} {width}: {n} values per video, more "
                f"than the {MAX_VIDEO_ELEMENTS} sg2v allocates; ask for a smaller video")
    return None
