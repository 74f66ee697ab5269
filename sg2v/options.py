"""Command-line options of every sg2v command, declared once, and the one error wrapper of the entry points.

`SHARED` is the table of the options several commands take (steps, guidance, sampler, seed, threads, ...):
each has one flag, type, default, choices, help text and range, and every command adds it from here
(`add_shared`) and checks it from here (`check_shared`). A run's own knobs are dataclass fields made with
`option` (help text beside the default), turned into flags by `add_fields` and read back by `from_fields`.
`run_cli` runs an entry point's work and turns every error into one line on stderr and an exit status.
Torch-free: the runtime's command line is built from it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sg2v.errors import Cancelled, GraphError, Sg2vError, shown

MAX_STEPS = 100_000  # the most training timesteps a model config may declare: no sampler takes more steps


@dataclass(frozen=True)
class Shared:
    """One option several commands take. `help` may name `{source}` (where an unset value comes from: the
    bundle's, the checkpoint's) and `{what}` (what the value is for in that command); `choices` and `help` may
    be callables, read when a parser is built (registries filled at import time)."""

    flag: str
    help: str | Callable[[], str]
    type: Any = str
    default: Any = None
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    metavar: str | None = None
    range: tuple[float, float] | Callable[[], tuple[float, float]] | None = None  # inclusive; ints and floats
    range_note: str = ""  # said after the range when a value is refused
    range_text: str | None = None  # what a refused value must be, before "in [lo, hi]" (None: its type)
    fields: dict[str, str] = field(default_factory=dict)  # `{name}` placeholders' default text

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def help_text(self, **fields: str) -> str:
        text = self.help() if callable(self.help) else self.help
        text = text.format(**{**self.fields, **fields})  # source="": the default is the command's own
        return text.replace("(default: ; ", "(").replace(" (default: )", "")

    def choice_list(self) -> list[Any] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def problem(self, value: Any) -> str | None:
        """Why `value` cannot be this option's value (None if it can, or if it is unset)."""
        if value is None or self.range is None:
            return None
        lo, hi = self.range() if callable(self.range) else self.range
        if self.type is float:
            ok = math.isfinite(value) and lo <= value <= hi  # False for nan
            text, bounds = str(value), f"{_num(lo)}, {_num(hi)}"
        else:
            ok, text, bounds = lo <= value <= hi, shown(value), f"{lo}, {hi}"
        if ok:
            return None
        what = self.range_text
        if what is None:
            what = "a finite number " if self.type is float else "an integer "
        note = f"; {self.range_note}" if self.range_note else ""
        return f"{self.flag} {text}: must be {what}in [{bounds}]{note}"


def _num(x: float) -> str:
    """A bound as a person writes it: 0, 1, 1e6."""
    return f"{x:g}".replace("e+0", "e").replace("e+", "e")


def _samplers() -> list[str]:
    from sg2v.sampling import SAMPLERS

    return sorted(SAMPLERS)


def _sampler_help() -> str:
    from sg2v.sampling import sampler_help

    return "sampler (default: {source}): " + sampler_help().replace("{", "{{").replace("}", "}}")


def _seed_range() -> tuple[int, int]:
    from sg2v.config import MAX_SEED

    return 0, MAX_SEED


def _threads_range() -> tuple[int, int]:
    from sg2v.config import max_threads

    return 1, max_threads()


SHARED: dict[str, Shared] = {s.dest: s for s in (
    Shared("--steps", "sampler steps (default: {source}; a guidance-distilled student takes only the step "
           "counts its manifest lists)", type=int, range=(1, MAX_STEPS), fields={"source": "the bundle's"}),
    Shared("--guidance", "classifier-free guidance weight (default: {source}; a "
           "guidance-distilled student takes it as an input, within the range it was distilled for)",
           type=float, range=(0.0, 1e6), range_note="1 is no guidance", fields={"source": "the bundle's"}),
    Shared("--guidance-rescale", "guidance rescale in [0, 1] (default: {source})", type=float,
           range=(0.0, 1.0), range_note="0 disables it", range_text="", fields={"source": "the bundle's"}),
    Shared("--sampler", _sampler_help, choices=_samplers, fields={"source": "the bundle's"}),
    Shared("--seed", "seed of {what}", type=int, default=0, range=_seed_range,
           fields={"what": "the initial noise"}),
    Shared("--threads", "CPU threads for ONNX Runtime / torch (default: one per core)", type=int,
           range=_threads_range),
    Shared("--bundle", "bundle folder written by sg2v-export"),
    Shared("--no-verify", "skip the bundle's sha256 checks (sizes still checked)", type=bool, default=False),
)}


def add_shared(parser: Any, name: str | Shared, **overrides: Any) -> argparse.Action:
    """Add the shared option `name` (a key of `SHARED`, or a `Shared` a layer above the core declares) to
    `parser`. `overrides` fill the help's placeholders (source=, what=) or set argparse keywords that are the
    command's own (nargs, required, default when the command's value is a list or a found path)."""
    opt = SHARED[name] if isinstance(name, str) else name
    fields = {k: overrides.pop(k) for k in list(overrides) if k in opt.fields}
    kw: dict[str, Any] = {"dest": opt.dest, "default": opt.default, "help": opt.help_text(**fields)}
    if opt.type is bool:
        kw["action"] = "store_true"
    else:
        kw["type"] = opt.type
        if opt.choice_list() is not None:
            kw["choices"] = opt.choice_list()
        if opt.metavar:
            kw["metavar"] = opt.metavar
    kw.update(overrides)
    action: argparse.Action = parser.add_argument(opt.flag, **kw)
    return action


def check_shared(args: argparse.Namespace, error: type[Exception],
                 names: Sequence[str] | None = None) -> None:
    """`error` (one line naming the flag) for the first shared option in `args` outside its range; a
    list-valued option is checked value by value."""
    for name in names or SHARED:
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        for v in value if isinstance(value, list) else [value]:
            problem = SHARED[name].problem(v)
            if problem:
                if name == "threads":
                    from sg2v.config import threads_problem

                    problem = threads_problem(v) or problem
                raise error(problem)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default; an option whose help says "default: ..." in its own words keeps only those."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default:" in text or action.required:
            return text
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------- dataclass-field options

def option(default: Any, help: str, *, choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
           aliases: Sequence[str] = (), type: Any = None, nargs: str | None = None,
           negative: str | None = None, negative_help: str | None = None) -> Any:
    """A dataclass field whose flag `--field-name` (and `aliases`) shows `help` with the default beside it;
    `nargs` "+" makes it take one or more values (a list). A bool field is `--name` / `--no-name`; with
    `negative` it is only that flag, which turns the default True off (`negative_help` its help)."""
    meta = {"help": help, "choices": choices, "aliases": tuple(aliases), "type": type, "nargs": nargs,
            "negative": negative, "negative_help": negative_help}
    return field(default=default, metadata=meta)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_fields(parser: Any, cls: type, skip: Sequence[str] = ()) -> Any:
    """One flag per `option` field of the dataclass `cls` (dest = the field's name), in field order."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in skip or "help" not in meta:
            continue
        kw: dict[str, Any] = {"dest": f.name, "default": f.default, "help": meta["help"]}
        if isinstance(f.default, bool):
            if meta.get("negative"):
                parser.add_argument(_flag(meta["negative"]), dest=f.name, action="store_false",
                                    default=f.default, help=meta["negative_help"] or meta["help"])
                continue
            kw["action"] = argparse.BooleanOptionalAction
        else:
            choices = meta.get("choices")
            if choices is not None:
                kw["choices"] = list(choices() if callable(choices) else choices)
            kw["type"] = meta.get("type") or (type(f.default) if f.default is not None else str)
            if meta.get("nargs"):
                kw["nargs"] = meta["nargs"]
        action = parser.add_argument(_flag(f.name), *meta.get("aliases", ()), **kw)
        if "default:" in meta["help"]:  # a bool's help states its default in words: not a second one
            action.help = meta["help"]
    return parser


def from_fields(cls: type, args: argparse.Namespace, **changes: Any) -> Any:
    """The dataclass `cls` from parsed arguments (its fields present in `args`), with `changes` on top."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **changes})


# ------------------------------------------------------------------------------------------- error wrapper

def _say(text: str) -> None:
    from sg2v.safety import one_line

    print(one_line(text), file=sys.stderr)


def run_cli(prog: str, body: Callable[[], int], *, interrupted: str = "", os_error: str = "") -> int:
    """`body()`'s exit status; an error it raises becomes one line on stderr, `PROG: ...`, and a status:
    Cancelled "interrupted: why" and its code (130); a GraphError "invalid graph" (or its `what`) and 2; any
    other sg2v error its `exit_code`; an OS error its path, what happened and the fix, 1; a reader that
    left a pipe, nothing, 1; Ctrl-C "interrupted", 130. `interrupted` / `os_error` add what was (not)
    written to those lines."""
    from sg2v.safety import describe_os_error, safe_stdio

    safe_stdio()
    try:
        return body()
    except Cancelled as e:
        _say(f"{prog}: interrupted: {e}")
        return e.exit_code
    except GraphError as e:
        _say(f"{prog}: invalid {e.what}: {e}")
        return e.exit_code
    except Sg2vError as e:
        _say(f"{prog}: error: {e}")
        return e.exit_code
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # a full disk, a read-only folder, an I/O error: one line naming the path
        _say(f"{prog}: error: {describe_os_error(e)}" + (f"; {os_error}" if os_error else ""))
        return 1
    except KeyboardInterrupt:
        _say(f"{prog}: interrupted" + (f"; {interrupted}" if interrupted else ""))
        return 130
