"""Benchmark: the CUDA ScatterMeanPool and gather-concat kernels (CuPy) against PyTorch's own ops, from one
graph to a batch of 256, with achieved bandwidth against the card's measured device-to-device copy bandwidth.

Every variant runs on one CUDA stream (CuPy launches on torch's current stream) and is timed with CUDA events
around `--inner` back-to-back calls, after warm-up; the median of `--repeats` such timings is reported. Inputs
rotate among enough sets to overflow L2, so large sizes measure DRAM, not cache. Needs a GPU, torch and CuPy:
    python -P bench/scatter_pool.py --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import statistics
import sys


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batches", default="1,8,32,128,256", help="graphs per batch (B), comma-separated")
    p.add_argument("--triples", type=int, default=32, help="T: messages per graph are N = 2T")
    p.add_argument("--objects", type=int, default=16, help="O: segments (objects) per graph")
    p.add_argument("--dim", type=int, default=256, help="D: message width (the encoder's hidden_dim)")
    p.add_argument("--dtypes", default="float32,float16", help="value dtypes")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls first")
    p.add_argument("--inner", type=int, default=50, help="calls per timed region")
    p.add_argument("--repeats", type=int, default=15, help="timed regions; the median is reported")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--markdown", default=None, help="write the table here (for bench/RESULTS.md)")
    return p.parse_args()


class _Bench:
    """Shared state: torch, CuPy, the one stream, the timing settings."""

    def __init__(self, args):
        import cupy as cp
        import torch

        from sg2v.models.pooling import scatter_mean_pool as torch_pool
        from sg2v.runtime import cuda_kernels as ck

        self.args, self.cp, self.torch, self.torch_pool, self.ck = args, cp, torch, torch_pool, ck
        self.dev = torch.device("cuda")
        self.props = torch.cuda.get_device_properties(0)
        self.stream = torch.cuda.current_stream()
        self.cp_stream = cp.cuda.ExternalStream(self.stream.cuda_stream)  # one stream for both libraries
        self.l2 = getattr(self.props, "L2_cache_size", 50 << 20)

    def timed(self, fn, sets: int) -> float:
        """Median milliseconds per call of fn(i) over input sets i, CUDA events around --inner calls."""
        torch, args = self.torch, self.args
        for i in range(args.warmup):
            fn(i % sets)
        samples = []
        for _ in range(args.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(self.stream)
            for i in range(args.inner):
                fn(i % sets)
            end.record(self.stream)
            end.synchronize()
            samples.append(start.elapsed_time(end) / args.inner)
        return statistics.median(samples)

    def copy_bandwidth(self) -> float:
        """GB/s of a 1 GiB device-to-device copy, bytes read + bytes written: the memory ceiling."""
        big = self.torch.empty(1 << 28, dtype=self.torch.float32, device=self.dev)
        big.uniform_()
        dst = self.torch.empty_like(big)
        ms = self.timed(lambda i: dst.copy_(big), 1)
        return 2 * big.numel() * 4 / ms / 1e6

    def size(self, dtype_name: str, b: int) -> dict | None:
        """Time every variant at one (dtype, B); None when the kernel disagrees with PyTorch."""
        torch, cp, ck, args, dev = self.torch, self.cp, self.ck, self.args, self.dev
        n, o, d, t = 2 * args.triples, args.objects, args.dim, args.triples
        tdtype = getattr(torch, dtype_name)
        g = torch.Generator(device=dev).manual_seed(b)
        bytes_pool = b * n * d * tdtype.itemsize + b * n * (8 + 4) + b * o * d * tdtype.itemsize
        sets = max(1, min(16, -(-2 * self.l2 // max(bytes_pool, 1))))  # rotate inputs past L2
        inputs = []
        for _ in range(sets):
            v = torch.randn(b, n, d, generator=g, device=dev).to(tdtype)
            idx = torch.randint(0, o, (b, n), generator=g, device=dev)
            m = (torch.rand(b, n, generator=g, device=dev) > 0.2).float()
            inputs.append((v, idx, m, cp.asarray(v), cp.asarray(idx), cp.asarray(m)))
        out = cp.empty((b, o, d), dtype=dtype_name)
        seg = torch.arange(b, device=dev)[:, None] * o  # (B, 1)

        def kernel(i):
            _, _, _, cv, ci, cm = inputs[i]
            ck.scatter_mean_pool(cv, ci, cm, o, out=out, stream=self.cp_stream)

        def torch_scatter(i):  # the training-time definition (sg2v.models.pooling, form "scatter")
            v, idx, m = inputs[i][:3]
            self.torch_pool(v, idx, m, o, form="scatter")

        def torch_index_add(i):
            v, idx, m = inputs[i][:3]
            flat = (seg + idx).reshape(-1)
            keep = (m != 0).to(v.dtype).reshape(-1)
            masked = v.reshape(-1, d) * keep[:, None]  # (B N, D)
            sums = torch.zeros(b * o, d, dtype=v.dtype, device=dev).index_add_(0, flat, masked)
            counts = torch.zeros(b * o, dtype=v.dtype, device=dev).index_add_(0, flat, keep)
            return sums / counts.clamp(min=1)[:, None]

        def torch_scatter_reduce(i):
            v, idx, m = inputs[i][:3]
            dump = torch.where(m != 0, idx, torch.full_like(idx, o))  # masked rows -> a spare segment
            return torch.zeros(b, o + 1, d, dtype=v.dtype, device=dev).scatter_reduce(
                1, dump[..., None].expand(-1, -1, d), v, reduce="mean", include_self=False)

        kernel(0)  # check before timing: the kernel against the PyTorch definition on these inputs
        ref = self.torch_pool(inputs[0][0].double(), inputs[0][1], inputs[0][2], o)
        err = float((torch.as_tensor(out, device=dev).double() - ref).norm() / ref.norm())
        if not err < (2e-3 if dtype_name == "float16" else 1e-6):
            print(f"FAIL: kernel differs from PyTorch at B={b} {dtype_name}: rel err {err:.2e}",
                  file=sys.stderr)
            return None
        row = {"dtype": dtype_name, "B": b, "N": n, "O": o, "D": d, "input_sets": sets, "rel_err": err,
               "pool_bytes": bytes_pool}
        row["kernel_ms"] = self.timed(kernel, sets)
        row["torch_scatter_ms"] = self.timed(torch_scatter, sets)
        row["torch_index_add_ms"] = self.timed(torch_index_add, sets)
        row["torch_scatter_reduce_ms"] = self.timed(torch_scatter_reduce, sets)
        row["kernel_GBps"] = bytes_pool / row["kernel_ms"] / 1e6

        # gather-concat against two torch.gather + cat: T triples over O objects, vectors of width D
        tri = torch.stack([torch.randint(0, o, (b, t), generator=g, device=dev),
                           torch.zeros(b, t, dtype=torch.long, device=dev),
                           torch.randint(0, o, (b, t), generator=g, device=dev)], -1)  # (B, T, 3)
        obj = torch.randn(b, o, d, generator=g, device=dev).to(tdtype)  # (B, O, D)
        pred = torch.randn(b, t, d, generator=g, device=dev).to(tdtype)  # (B, T, D)
        c_obj, c_pred, c_tri = cp.asarray(obj), cp.asarray(pred), cp.asarray(tri)
        g_out = cp.empty((b, t, 3 * d), dtype=dtype_name)

        def gather_kernel(i):
            ck.gather_concat(c_obj, c_pred, c_tri, out=g_out, stream=self.cp_stream)

        def gather_torch(i):
            s = torch.gather(obj, 1, tri[..., 0:1].expand(-1, -1, d))
            oo = torch.gather(obj, 1, tri[..., 2:3].expand(-1, -1, d))
            return torch.cat([s, pred, oo], -1)

        gather_kernel(0)
        if not torch.equal(torch.as_tensor(g_out, device=dev), gather_torch(0)):
            print(f"FAIL: gather-concat differs from torch.gather at B={b} {dtype_name}", file=sys.stderr)
            return None
        row["gather_kernel_ms"] = self.timed(gather_kernel, 1)
        row["gather_torch_ms"] = self.timed(gather_torch, 1)
        return row


def main() -> int:
    args = _parse()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU", file=sys.stderr)
        return 2
    bench = _Bench(args)
    props, cp = bench.props, bench.cp
    copy_gbs = bench.copy_bandwidth()
    print(f"device: {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
          f"L2 {bench.l2 >> 20} MiB); torch {torch.__version__}, cupy {cp.__version__}")
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s (read + write)")
    rows = []
    for dtype_name in args.dtypes.split(","):
        for b in [int(x) for x in args.batches.split(",")]:
            row = bench.size(dtype_name, b)
            if row is None:
                return 1
            row["kernel_frac_of_copy"] = row["kernel_GBps"] / copy_gbs
            rows.append(row)
            print(f"  {dtype_name} B={b}: kernel {1e3 * row['kernel_ms']:.1f} us", flush=True)

    head = ("| dtype | B | kernel us | torch scatter_add us (x) | index_add_ us (x) | scatter_reduce us (x) "
            "| kernel GB/s (% of copy) | gather-concat us | torch gather+cat us (x) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        k = r["kernel_ms"]
        lines.append(
            f"| {r['dtype']} | {r['B']} | {1e3 * k:.1f} | {1e3 * r['torch_scatter_ms']:.1f} "
            f"({r['torch_scatter_ms'] / k:.1f}x) | {1e3 * r['torch_index_add_ms']:.1f} "
            f"({r['torch_index_add_ms'] / k:.1f}x) | {1e3 * r['torch_scatter_reduce_ms']:.1f} "
            f"({r['torch_scatter_reduce_ms'] / k:.1f}x) | {r['kernel_GBps']:.0f} "
            f"({100 * r['kernel_frac_of_copy']:.0f}%) | {1e3 * r['gather_kernel_ms']:.1f} | "
            f"{1e3 * r['gather_torch_ms']:.1f} ({r['gather_torch_ms'] / r['gather_kernel_ms']:.1f}x) |")
    n, o, d = 2 * args.triples, args.objects, args.dim
    title = (f"{props.name}: N = {n} messages, O = {o} segments, D = {d}; median of {args.repeats} x "
             f"{args.inner} calls; copy ceiling {copy_gbs:.0f} GB/s; (x) = PyTorch time / kernel time")
    table = "\n".join([title, "", *lines])
    print(table)
    meta = {"device": props.name, "sm": f"{props.major}{props.minor}", "torch": torch.__version__,
            "cupy": cp.__version__, "copy_GBps": copy_gbs, "args": vars(args), "rows": rows}
    if args.json:
        from sg2v.safety import write_json_report

        write_json_report(args.json, "scatter_pool", meta)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
