"""`convert`: read a source data set, decode and resize its frames, write the converted data set atomically.

The output folder is built under a temporary name beside --out and renamed into place only once every file is
written and the result opens cleanly (`ConvertedDataset` on every split); an existing --out is replaced only
with `force`, and only at that point. Frame decoding runs in `workers` processes, in order, so the output is
the same for any worker count.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sg2v.config import MODEL_SIZES, model_config
from sg2v.dataset.common import DropTable, JobContext, Plan, format_table, set_context
from sg2v.dataset.format import (
    FORMAT,
    FORMAT_VERSION,
    INFO_FILE,
    MAX_CLIP_FRAMES,
    MAX_SIDE,
    SPLITS,
    VOCAB_FILE,
    ConvertedDataset,
    DatasetWriter,
    describe_bytes,
    frames_bytes,
    versions,
)
from sg2v.dataset.formats import DATA_FORMATS, data_format
from sg2v.dataset.options import CommonOptions, OptionError, to_dict
from sg2v.errors import DatasetError
from sg2v.io import atomic_path

FORMATS = tuple(DATA_FORMATS)
MAX_WORKERS = 64


def resolve_shape(common: CommonOptions) -> tuple[int, int, int]:
    """(frames, height, width) from --size and the explicit overrides, validated."""
    if common.size not in MODEL_SIZES:
        raise OptionError(f"--size {common.size!r}: choose one of {', '.join(sorted(MODEL_SIZES))}")
    d = model_config(common.size).data
    frames = common.frames or d.frames
    height, width = common.height or d.height, common.width or d.width
    if not 1 <= frames <= MAX_CLIP_FRAMES:
        raise OptionError(f"--frames {common.frames}: must be in 1..{MAX_CLIP_FRAMES} (0: the size's)")
    for flag, v in (("--height", height), ("--width", width)):
        if not 8 <= v <= MAX_SIDE:
            raise OptionError(f"{flag} {v}: must be in 8..{MAX_SIDE} pixels (0: the size's)")
    if not 1 <= common.workers <= MAX_WORKERS:
        raise OptionError(f"--workers {common.workers}: must be in 1..{MAX_WORKERS}")
    if common.seed < 0:
        raise OptionError(f"--seed {common.seed}: must be >= 0")
    return frames, height, width


def make_plan(fmt: str, source: Path, opts: Any, seed: int, frames: int) -> Plan:
    """Read and filter a source data set (no frame decoded yet): the format's `plan`."""
    plan: Plan = data_format(fmt).plan(source, opts, seed, frames)
    return plan


def _check_out(out: Path, source: Path, force: bool, fmt: str, options: Any = None) -> None:
    """--out through `sg2v.safety.check_outputs`: never SOURCE, a folder or file the format's options name
    (its registry row's `inputs`: --images-dir, --annotations-dir, --frames-dir, --vocab, --splits-json), nor
    a folder holding or inside one of them, even with --force; an existing path only with --force (a
    converted set: the old one stays until the new one is complete)."""
    from sg2v.safety import Output, OutputError, WriteError, check_outputs, inputs

    named: list[tuple[Any, str, bool]] = [(source, "the source data set", source.is_dir())]
    for name, folder in data_format(fmt).inputs:
        value = getattr(options, name, "")
        if value:
            flag = f"--{name.replace('_', '-')}"
            named.append((value, f"the {flag} folder", True) if folder
                         else (value, f"the {flag} file", Path(value).is_dir()))
    try:
        check_outputs([Output("--out", out, folder=True)], inputs(*named), force=force)
    except OutputError as e:
        raise OptionError(str(e)) from None
    except WriteError as e:
        raise DatasetError(str(e)) from None
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out}: is a file, not a data set folder; remove it or choose another "
                          "folder")


def _results(plan: Plan, ctx: JobContext, workers: int) -> Iterator[Any]:
    if workers == 1 or len(plan.payloads) < 2:
        set_context(ctx)
        for payload in plan.payloads:
            yield plan.job(payload)
        return
    # spawn: workers start clean (no copy of the source annotations the planner holds, no inherited threads)
    mp = multiprocessing.get_context("spawn")
    with mp.Pool(workers, initializer=set_context, initargs=(ctx,)) as pool:
        chunk = max(1, min(16, len(plan.payloads) // (4 * workers)))
        yield from pool.imap(plan.job, plan.payloads, chunksize=chunk)


def convert(fmt: str, source: str | os.PathLike[str], out: str | os.PathLike[str],
            common: CommonOptions | None = None, options: Any = None,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Convert `source` (a data set in format `fmt`) into the folder `out`; returns its dataset.json."""
    log = log or (lambda line: print(line, file=sys.stderr))
    common = common or CommonOptions()
    options = _format_options(fmt, options)
    frames, height, width = resolve_shape(common)
    source, out = Path(source), Path(out)
    if not source.exists():
        raise DatasetError(f"{source}: no such file or folder; pass the {fmt} data set's folder")
    _check_out(out, source, common.force, fmt, options)

    t0 = time.perf_counter()
    log(f"reading {fmt} from {source} ...")
    plan = make_plan(fmt, source, options, common.seed, frames)
    _check_plan(plan, source, out, height, width, log)
    log(f"planned {len(plan.payloads)} jobs in {time.perf_counter() - t0:.1f} s; decoding frames at "
        f"{height} x {width} with {common.workers} worker(s) ...")
    ctx = JobContext(height=height, width=width, frames=frames, seed=common.seed,
                     skip_unreadable=common.skip_unreadable,
                     extra={"centers": getattr(options, "centers", "mask")})
    t1 = time.perf_counter()
    try:
        with atomic_path(out) as tmp:
            tmp.mkdir()
            writer = _write_samples(tmp, plan, ctx, common.workers, log)
            if not _samples(writer):
                raise DatasetError(f"{source}: no sample survived decoding (see --skip-unreadable); nothing "
                                   "written")
            info = _info(fmt, plan, common, options, frames, height, width, writer, plan.drops, plan.notes)
            writer.write_json(VOCAB_FILE, plan.vocab.to_dict())
            writer.write_json(INFO_FILE, info)
            for split in SPLITS:  # the result must open cleanly before it replaces anything
                ConvertedDataset(tmp, split)
    except OSError as e:
        raise DatasetError(f"--out {out}: cannot write the data set ({e.strerror or e}); check free space "
                           "and permissions") from None
    seconds = time.perf_counter() - t1
    n = _samples(writer)
    log(f"wrote {out}: {n} samples in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} samples/s)")
    for line in summary_lines(info):
        log(line)
    return info


def _format_options(fmt: str, options: Any) -> Any:
    """`options` checked against the format's dataclass (its defaults when None)."""
    cls = data_format(fmt).options
    options = options if options is not None else cls()
    if not isinstance(options, cls):
        raise TypeError(f"options for {fmt!r} must be {cls.__name__}, got {type(options).__name__}")
    return options


def _check_plan(plan: Plan, source: Path, out: Path, height: int, width: int,
                log: Callable[[str], None]) -> None:
    """Log the plan's skipped items; DatasetError when nothing is left or the frames cannot fit on disk."""
    for line in plan.warnings[:20]:
        log(f"skipped: {line}")
    if len(plan.warnings) > 20:
        log(f"skipped: ... {len(plan.warnings) - 20} more")
    if not plan.payloads:
        for line in ["dropped:", *format_table(plan.drops.rows())]:
            log(line)
        raise DatasetError(f"{source}: nothing left to convert after filtering (drop table above); loosen "
                           "the filters or check the source files")
    if plan.frames_estimate:
        need = frames_bytes(plan.frames_estimate, height, width) + (64 << 20)
        free = shutil.disk_usage(out.parent).free
        if need > free:
            raise DatasetError(f"--out {out}: the frames need about {describe_bytes(need)}, {out.parent} has "
                               f"{describe_bytes(free)} free; free some space or choose another folder")


def _write_samples(tmp: Path, plan: Plan, ctx: JobContext, workers: int,
                   log: Callable[[str], None]) -> DatasetWriter:
    """Run the plan's jobs and stream their samples into `tmp`; the drops and notes merged into the plan's."""
    writer = DatasetWriter(tmp, ctx.height, ctx.width)
    try:
        t1 = last = time.perf_counter()
        for done, res in enumerate(_results(plan, ctx, workers), start=1):
            plan.drops.merge(res.drops.rows())
            plan.notes.merge(res.notes.rows())
            for split, record, fr in res.samples:
                writer.add(split, record, fr)
            if time.perf_counter() - last > 10:
                last = time.perf_counter()
                log(f"  {done}/{len(plan.payloads)} jobs, {_samples(writer)} samples "
                    f"({_samples(writer) / (last - t1):.1f}/s)")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer


def _samples(writer: DatasetWriter) -> int:
    return sum(c["samples"] for c in writer.counts.values())


def _info(fmt: str, plan: Plan, common: CommonOptions, options: Any, frames: int, height: int, width: int,
          writer: DatasetWriter, drops: DropTable, notes: DropTable) -> dict[str, Any]:
    v = plan.vocab
    common_d = to_dict(common)
    common_d.pop("force", None)
    common_d.pop("workers", None)  # the output does not depend on them
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source_format": fmt,
        "source": plan.source,
        "options": {"common": common_d, fmt: to_dict(options)},
        "frames": frames,
        "height": height,
        "width": width,
        "splits": writer.counts,
        "vocab": {"objects": len(v.object_names), "predicates": len(v.pred_names), "object_ids": v.num_objs,
                  "predicate_ids": v.num_preds},
        "drops": drops.to_json(),
        "notes": notes.to_json(),
        "versions": versions(),
    }


def summary_lines(info: dict[str, Any]) -> list[str]:
    """Counts per split, vocabulary sizes, the drop table and the notes, as text lines."""
    src = info.get("source", {})
    lines = [f"source: {info.get('source_format')} ({src.get('name', '')}) from {src.get('path', '?')}",
             f"frames: {info['frames']} per clip, {info['height']} x {info['width']} pixels; images are "
             "one-frame samples"]
    v = info.get("vocab", {})
    lines.append(f"vocabulary: {v.get('objects')} object names, {v.get('predicates')} predicates "
                 f"({v.get('object_ids')} / {v.get('predicate_ids')} ids with __image__ / __in_image__)")
    lines.append(f"  {'split':<6} {'samples':>8} {'frames':>8} {'objects':>8} {'relationships':>13}")
    for split in SPLITS:
        c = info["splits"][split] if isinstance(info["splits"][split], dict) else {}
        lines.append(f"  {split:<6} {c.get('samples', '?'):>8} {c.get('frames', '?'):>8} "
                     f"{c.get('objects', '?'):>8} {c.get('relationships', '?'):>13}")
    lines.append("dropped (each item counted once, at the first stage that drops it):")
    lines += format_table(_rows(info.get("drops")))
    lines.append("notes (kept, but changed or worth knowing):")
    lines += format_table(_rows(info.get("notes")))
    return lines


def _rows(table: Any) -> list[tuple[str, str, Any]]:
    rows = table if isinstance(table, list) else []
    return [(str(d.get("kind")), str(d.get("reason")), d.get("count")) for d in rows if isinstance(d, dict)]
