"""Conversion rate of `sg2v-data convert`: samples/s on a generated Visual Genome 1.4 fixture.

  python bench/data_convert.py --images 2000 --workers 1 2 [--json out.json]

The fixture (tests/dataset_fixtures.py `write_vg_scaled`) has VG's file layout and typical image size (500 x
375 JPEG, noisy so decoding costs what a photo costs), 8 objects and 6 relationships per image. Reported per
worker count: the planning time (reading and filtering the JSON files), the decode/resize/write time, and
samples/s over the whole conversion. Generating the fixture is not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dataset_fixtures import write_vg_scaled  # noqa: E402

from sg2v.dataset import CommonOptions, VGOptions, convert  # noqa: E402
from sg2v.dataset.convert import make_plan, resolve_shape  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="images in the fixture (default: %(default)s)")
    p.add_argument("--source-size", default="500x375",
                   help="W x H of the fixture's JPEGs (default: %(default)s)")
    p.add_argument("--size", default="small", help="model size to convert to (default: %(default)s)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    p.add_argument("--json", default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.source_size.lower().split("x"))
    opts = VGOptions(min_object_instances=1, min_relationship_instances=1, min_image_size=1,
                     min_object_size=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sg2v-bench-data-") as tmp:
        src = Path(tmp) / "vg"
        t = time.perf_counter()
        write_vg_scaled(src, args.images, size=(w, h))
        print(f"fixture: {args.images} images {w} x {h} in {time.perf_counter() - t:.1f} s (not timed below)")
        frames, height, width = resolve_shape(CommonOptions(size=args.size))
        for workers in args.workers:
            common = CommonOptions(size=args.size, workers=workers)
            t0 = time.perf_counter()
            plan = make_plan("vg", src, opts, common.seed, frames)
            t_plan = time.perf_counter() - t0
            del plan
            out = Path(tmp) / f"out{workers}"
            t1 = time.perf_counter()
            info = convert("vg", src, out, common, opts, log=lambda line: None)
            total = time.perf_counter() - t1
            n = sum(s["samples"] for s in info["splits"].values())
            row = {"workers": workers, "samples": n, "plan_s": round(t_plan, 2), "total_s": round(total, 2),
                   "decode_write_s": round(total - t_plan, 2), "samples_per_s": round(n / total, 1),
                   "decode_samples_per_s": round(n / max(total - t_plan, 1e-9), 1)}
            rows.append(row)
            print(f"workers {workers}: {n} samples at {height} x {width} in {total:.2f} s "
                  f"({row['samples_per_s']} samples/s; planning {t_plan:.2f} s, decode+resize+write "
                  f"{row['decode_samples_per_s']} samples/s)")
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "processor": platform.processor() or platform.machine(),
                          "load_average": list(os.getloadavg())},
              "fixture": {"images": args.images, "source_size": [w, h]}, "target": [height, width],
              "rows": rows}
    if args.json:
        from sg2v.safety import write_json_report

        write_json_report(args.json, "data_convert", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
