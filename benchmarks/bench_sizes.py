"""Size sweep: pool_ext.functional against torch.nn.functional from tiny inputs to a few MB.

bench_cpu.py and bench_cuda.py time the issues' large cases. This sweeps the
common 2d layers over a grid of batch, channels and plane sizes, forward
(inference) and forward+backward, contiguous and channels-last, and sums the
speed-ups up by input size: where ours wins, and from what size. Small inputs
are where each call's fixed cost (the Python wrapper, the op's dispatch, the
autograd node) outweighs the kernel.

    python benchmarks/bench_sizes.py [--quick] [--device cpu|cuda] [--filter SUBSTR]
                                     [--dtype float32] [--threads N] [--rows] [--markdown]
                                     [--json PATH]
    python benchmarks/bench_sizes.py --from-json PATH [--rows] [--markdown]
"""

import itertools

import torch

import _common as C
import pool_ext

# (min, max) seconds of timing per measurement; --quick also sweeps a smaller grid.
RUN_TIME, QUICK_RUN_TIME = (0.05, 0.3), (0.03, 0.1)
LAYERS = (
    ("fixed", "max_pool2d", dict(kernel_size=2)),
    ("fixed", "max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("fixed", "avg_pool2d", dict(kernel_size=2)),
    ("fixed", "avg_pool2d", dict(kernel_size=3, stride=1, padding=1)),
    ("adaptive", "adaptive_avg_pool2d", dict(output_size=1)),
    ("adaptive", "adaptive_max_pool2d", dict(output_size=1)),
    ("adaptive", "adaptive_avg_pool2d", dict(output_size=3)),
)
# (batches, channels, plane sides); inputs over MAX_CELLS are left out.
GRID, QUICK_GRID = ((1, 8, 64), (3, 16, 64, 256), (4, 7, 14, 28, 56)), ((1, 64), (16, 256), (7, 28))
MAX_CELLS = 1 << 22
# Input sizes the summary groups rows by: (label, most bytes).
BUCKETS = (("<= 16 KB", 1 << 14), ("<= 256 KB", 1 << 18), ("<= 4 MB", 1 << 22), ("> 4 MB", float("inf")))


def cases(quick):
    batches, channels, sides = QUICK_GRID if quick else GRID
    return [
        C.Case(group, op, (n, c, side, side), args)
        for (group, op, args), n, c, side in itertools.product(LAYERS, batches, channels, sides)
        if n * c * side * side <= MAX_CELLS
    ]


def bucket(row):
    return next(label for label, most in BUCKETS if row["in_bytes"] <= most)


def summarize(rows):
    """A line per (input size, layout): geomeans of torch/ours per pass, and how
    many rows fall under 0.9x."""
    lines = []
    for (label, _), layout in itertools.product(BUCKETS, (C.CONTIG, C.CHANNELS_LAST)):
        parts = []
        for pass_ in C.PASSES:
            sel = [r for r in C.select(rows, pass_=pass_) if bucket(r) == label and r["layout"] == layout]
            if sel:
                under = sum(r["speedup"] < 0.9 for r in sel)
                parts.append(f"{pass_} geomean {C.geomean(r['speedup'] for r in sel):.2f}x, "
                             f"{under}/{len(sel)} under 0.9x")
        if parts:
            lines.append(f"input {label}, {layout}: " + "; ".join(parts))
    return lines


def main():
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, metavar="N", default=torch.get_num_threads(),
                   help="intra-op threads on the CPU (default: %(default)s)")
    p.add_argument("--rows", action="store_true", help="print every row, not only the summary")
    args = p.parse_args()
    if args.from_json:
        header, rows = C.load(args.from_json)
    else:
        torch.set_num_threads(args.threads)
        selected = [c for c in cases(args.quick) if args.filter in c.label]
        rows = C.measure(selected, args.dtype or ["float32"], args.device,
                         QUICK_RUN_TIME if args.quick else RUN_TIME, args.threads, lambda s: None)
        where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} thread(s)"
        header = [f"pool_ext {pool_ext.__version__} vs torch {torch.__version__}, {where}"
                  f"{', --quick' if args.quick else ''}; speed-up = torch ms / ours ms"]
    C.report(header, rows, C.base_columns()[:7], summarize(rows), [], args, table=args.rows)


if __name__ == "__main__":
    main()
