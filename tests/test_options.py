"""The shared options are declared once (sg2v.options.SHARED) and every command reads them from there; the
one error wrapper (`run_cli`) turns each kind of error into one line and its exit status."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import random

import pytest

from sg2v import options
from sg2v.errors import Cancelled, GraphError, Sg2vError
from sg2v.options import SHARED, Shared, add_shared, check_shared, run_cli


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """The parsers of the commands that take shared options (sg2v-train's eval; the training runs' --steps,
    --seed and --threads are fields of their own configs, with another meaning)."""
    from sg2v.cli.train import build_parser as train_parser
    from sg2v.export.bench import build_parser as bench_parser
    from sg2v.export.cli import build_parser as export_parser
    from sg2v.runtime.cli import build_parser as run_parser

    train = train_parser()
    sub = next(a for a in train._actions if isinstance(a, argparse._SubParsersAction))
    return {"sg2v-run": run_parser(), "sg2v-bench": bench_parser(), "sg2v-export": export_parser(),
            "sg2v-train eval": sub.choices["eval"]}


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_every_shared_flag_of_every_command_comes_from_the_table(monkeypatch):
    """Rewrite each table entry's help and choices: every command that has the flag shows the new ones, so
    none declares it a second time by hand."""
    marks = {}
    for name, opt in SHARED.items():
        mark = f"MARK-{name}-{random.randrange(10**9)}"
        marks[name] = mark
        text = mark + "".join(f" {{{k}}}" for k in opt.fields)
        choices = None if opt.choices is None else (f"{mark}-a", f"{mark}-b")
        monkeypatch.setitem(SHARED, name, dataclasses.replace(opt, help=text, choices=choices))
    seen: dict[str, list[str]] = {name: [] for name in SHARED}
    for prog, parser in _parsers().items():
        for name, opt in SHARED.items():
            action = _action(parser, opt.flag)
            if action is None:
                continue
            assert action.help.startswith(marks[name]), (prog, opt.flag, action.help)
            if opt.choices is not None:
                assert list(action.choices) == [f"{marks[name]}-a", f"{marks[name]}-b"], (prog, opt.flag)
            seen[name].append(prog)
    assert set(seen["steps"]) == {"sg2v-run", "sg2v-bench", "sg2v-export", "sg2v-train eval"}
    assert set(seen["sampler"]) == {"sg2v-run", "sg2v-train eval"}
    assert set(seen["guidance"]) == {"sg2v-run", "sg2v-export", "sg2v-train eval"}
    assert set(seen["seed"]) == {"sg2v-run", "sg2v-bench", "sg2v-export", "sg2v-train eval"}
    assert set(seen["threads"]) >= {"sg2v-run", "sg2v-bench"}
    assert set(seen["bundle"]) >= {"sg2v-run", "sg2v-bench"}


def test_sampler_and_backend_choices_and_help_are_the_registries():
    from sg2v.runtime.backends import BACKENDS, backend_help
    from sg2v.runtime.cli import BACKEND
    from sg2v.sampling import SAMPLERS, sampler_help

    parsers = _parsers()
    for prog in ("sg2v-run", "sg2v-train eval"):
        action = _action(parsers[prog], "--sampler")
        assert list(action.choices) == sorted(SAMPLERS) and action.default is None
        assert action.help.endswith(sampler_help()) and "(default: " in action.help
    backend = _action(parsers["sg2v-run"], "--backend")
    assert BACKEND.help_text() == backend_help() == backend.help
    assert list(backend.choices) == list(BACKENDS) and backend.default == "auto"


def test_shared_defaults_agree_where_the_model_decides():
    """sg2v-run and sg2v-bench leave --steps to the bundle (a student takes only its own step counts);
    sg2v-train eval compares a list of step counts, its own default."""
    parsers = _parsers()
    run = parsers["sg2v-run"].parse_args(["g.json", "--bundle", "b"])
    bench = parsers["sg2v-bench"].parse_args(["--bundle", "b"])
    ev = parsers["sg2v-train eval"].parse_args(["--ckpt", "c.pt"])
    assert run.steps is None and bench.steps is None and ev.steps == [4, 8, 25]
    assert run.seed == bench.seed == ev.seed == parsers["sg2v-export"].parse_args(["--ckpt", "c"]).seed == 0
    assert run.threads is None and bench.threads is None
    assert "sampler steps (default: the bundle's" in _action(parsers["sg2v-bench"], "--steps").help


@pytest.mark.parametrize("name, value, why", [
    ("steps", 0, "--steps 0: must be an integer in [1, 100000]"),
    ("seed", -1, "--seed -1: must be an integer in [0, 9223372036854775807]"),
    ("guidance", float("nan"), "--guidance nan: must be a finite number in [0, 1e6]; 1 is no guidance"),
    ("guidance_rescale", 1.5, "--guidance-rescale 1.5: must be in [0, 1]; 0 disables it"),
    ("threads", 10**6, "--threads 1000000: must be an integer in [1, "),
])
def test_check_shared_names_the_flag_and_its_range(name, value, why):
    class Bad(Sg2vError):
        exit_code = 2

    ok = argparse.Namespace(**{name: SHARED[name].default})
    check_shared(ok, Bad)
    with pytest.raises(Bad) as e:
        check_shared(argparse.Namespace(**{name: value}), Bad)
    assert str(e.value).startswith(why)
    with pytest.raises(Bad):  # a list-valued option (sg2v-train eval --steps 4 0) is checked value by value
        check_shared(argparse.Namespace(**{name: [SHARED[name].default or 1, value]}), Bad, (name,))


def test_add_shared_fills_the_help_and_keeps_the_commands_own_keywords():
    p = argparse.ArgumentParser()
    add_shared(p, "steps", nargs="+", default=[2, 3], source="")
    add_shared(p, "seed", what="the test's noise")
    add_shared(p, Shared("--colour", "colour of {thing}", choices=lambda: ("red", "blue"),
                         fields={"thing": "the box"}))
    args = p.parse_args(["--steps", "5", "6", "--colour", "blue"])
    assert args.steps == [5, 6] and args.seed == 0 and args.colour == "blue"
    assert _action(p, "--steps").help.startswith("sampler steps (a guidance-distilled student")
    assert _action(p, "--seed").help == "seed of the test's noise"
    assert _action(p, "--colour").help == "colour of the box"
    with pytest.raises(SystemExit):
        p.parse_args(["--colour", "green"])


# ------------------------------------------------------------------------------------------------- run_cli

class _LayoutError(GraphError):
    what = "layout"


class _FlagError(Sg2vError):
    exit_code = 2


def _raise(exc: BaseException):
    def body() -> int:
        raise exc
    return body


@pytest.mark.parametrize("exc, code, line", [
    (Cancelled("generation cancelled after step 2/4"), 130,
     "prog: interrupted: generation cancelled after step 2/4"),
    (GraphError("object 3: unknown name\n'x'"), 2, "prog: invalid graph: object 3: unknown name\\n'x'"),
    (_LayoutError("2 --layout file(s) for 1 graph(s)"), 2, "prog: invalid layout: 2 --layout file(s) for 1"),
    (_FlagError("--steps 0: must be an integer"), 2, "prog: error: --steps 0: must be an integer"),
    (Sg2vError("bundle b: no manifest.json"), 1, "prog: error: bundle b: no manifest.json"),
    (OSError(errno.ENOSPC, "No space left on device", "out/v.mp4"), 1,
     "prog: error: out/v.mp4: No space left on device; the disk is full; free space or choose another "
     "output folder; NOTE"),
    (KeyboardInterrupt(), 130, "prog: interrupted; LATER"),
])
def test_run_cli_gives_one_line_and_the_exit_status_of_each_error_kind(capsys, exc, code, line):
    assert run_cli("prog", _raise(exc), interrupted="LATER", os_error="NOTE") == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith(line), captured.err


def test_run_cli_passes_the_status_and_usage_exits_through(capsys):
    n = random.randrange(3, 100)
    assert run_cli("prog", lambda: n) == n
    with pytest.raises(SystemExit) as e:  # argparse's usage error keeps its own status and message
        run_cli("prog", lambda: argparse.ArgumentParser(prog="prog").parse_args(["--nope"]))
    assert e.value.code == 2
    assert "unrecognized arguments: --nope" in capsys.readouterr().err


def test_run_cli_says_nothing_when_the_reader_left(tmp_path, monkeypatch, capsys):
    with open(tmp_path / "stdout", "w") as out:  # the wrapper points stdout's descriptor at /dev/null
        monkeypatch.setattr("sys.stdout", out)
        dup2: list[int] = []
        monkeypatch.setattr(options.os, "dup2", lambda a, b: dup2.append(b))
        assert run_cli("prog", _raise(BrokenPipeError(errno.EPIPE, "Broken pipe"))) == 1
        assert dup2 == [out.fileno()]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("module", ["sg2v.runtime.cli", "sg2v.export.bench", "sg2v.export.cli",
                                    "sg2v.cli.train", "sg2v.dataset.cli", "sg2v.shapes.__main__",
                                    "sg2v.runtime.engines", "sg2v.export.torch_trt", "sg2v.export.quantize",
                                    "sg2v.export.triton", "sg2v.runtime.triton_server", "sg2v.runtime.ros"])
def test_entry_points_catch_errors_only_through_run_cli(module):
    """No entry point keeps its own copy of the error wrapper."""
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module(module).main)
    assert "run_cli(" in source
    assert "except Sg2vError" not in source and "except OSError" not in source
