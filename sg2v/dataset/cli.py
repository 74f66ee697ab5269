"""`sg2v-data`: convert data sets to sg2v's training format, and look inside converted ones (torch-free).

  sg2v-data convert vg datasets/vg --out data/vg [--splits-json vg_splits.json]
  sg2v-data convert coco-stuff datasets/coco --out data/coco
  sg2v-data convert action-genome datasets/ag --out data/ag --frames 8
  sg2v-data convert folder my_recordings --out data/mine
  sg2v-data stats data/vg
  sg2v-data show data/vg --index 3 --split val [--json] [--sheet sample.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sg2v.dataset.formats import DATA_FORMATS
from sg2v.dataset.options import CommonOptions
from sg2v.errors import Sg2vError
from sg2v.options import HelpFormatter, add_fields, from_fields, run_cli


class UsageError(Sg2vError):
    """A command-line value that does not fit (exit status 2)."""

    exit_code = 2


def build_parser() -> argparse.ArgumentParser:
    head, _, usage = __doc__.partition("\n\n")
    p = argparse.ArgumentParser(prog="sg2v-data", description=head, epilog=usage,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a data set (see `sg2v-data convert FORMAT --help`)")
    fmts = conv.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, f in DATA_FORMATS.items():
        fp = fmts.add_parser(name, help=f.help, description=f.help, formatter_class=HelpFormatter)
        fp.add_argument("source", metavar="SOURCE", help="the data set's folder, as downloaded")
        fp.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
        add_fields(fp.add_argument_group("shared options"), CommonOptions)
        add_fields(fp.add_argument_group(f"{name} options"), f.options)
    st = sub.add_parser("stats", help="counts per split, vocabulary sizes and drop table of a converted set")
    st.add_argument("dir", help="a folder written by `sg2v-data convert`")
    st.add_argument("--json", action="store_true", help="print dataset.json instead")
    sh = sub.add_parser("show", help="one sample: scene graph, layout, where it came from; optional sheet")
    sh.add_argument("dir", help="a folder written by `sg2v-data convert`")
    sh.add_argument("--index", type=int, required=True, help="sample index within the split")
    sh.add_argument("--split", default="train", choices=("train", "val", "test"),
                    help="(default: %(default)s)")
    sh.add_argument("--json", action="store_true", help="print the sample (graph, boxes, visibility) as JSON")
    sh.add_argument("--sheet", default=None, help="also write the frames as a contact sheet with boxes (PNG)")
    return p


def _run(args: argparse.Namespace) -> int:
    if args.command == "convert":
        from sg2v.dataset.convert import convert

        convert(args.format, args.source, args.out, from_fields(CommonOptions, args),
                from_fields(DATA_FORMATS[args.format].options, args))
        return 0
    if args.command == "stats":
        from sg2v.dataset.format import read_info
        from sg2v.dataset.show import stats_lines

        if args.json:
            print(json.dumps(read_info(args.dir), indent=1, ensure_ascii=False))
        else:
            print("\n".join(stats_lines(args.dir)))
        return 0
    from sg2v.dataset.format import ConvertedDataset
    from sg2v.dataset.show import sample_json, sample_lines, write_sheet

    if args.sheet:
        _check_sheet(args)
    ds = ConvertedDataset(args.dir, args.split)
    if not -len(ds) <= args.index < len(ds):
        raise UsageError(f"--index {args.index}: the {args.split} split has {len(ds)} samples"
                         + (f" (0..{len(ds) - 1})" if len(ds) else "; choose another --split"))
    if args.json:
        print(json.dumps(sample_json(ds, args.index), ensure_ascii=False))
    else:
        print("\n".join(sample_lines(ds, args.index)))
    if args.sheet:
        out = Path(args.sheet)
        write_sheet(ds, args.index, out)
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _check_sheet(args: argparse.Namespace) -> None:
    """--sheet: a .png path, never inside the converted set read, an existing file replaced only when it is
    a sheet sg2v wrote (its Software text; `sg2v.safety.check_outputs`)."""
    from sg2v.safety import Output, OutputError, check_outputs, inputs
    from sg2v.video import is_sg2v_output

    out = Path(args.sheet)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--sheet {out}: give a .png path")
    try:
        check_outputs([Output("--sheet", out, ours=lambda p: is_sg2v_output(p, "image"))],
                      inputs((args.dir, "the converted data set", True)), force_flag=None)
    except OutputError as e:
        raise UsageError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sg2v-data`; errors become one line on stderr and an exit status (`run_cli`)."""
    return run_cli("sg2v-data", lambda: _run(build_parser().parse_args(argv)),
                   interrupted="nothing was written")


if __name__ == "__main__":
    sys.exit(main())
