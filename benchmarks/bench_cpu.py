"""CPU benchmark: pool_ext.functional against torch.nn.functional, in one process.

Every case of _common.CASES runs forward (inference) and forward+backward, in
float32 and bfloat16, contiguous and channels-last (1d: contiguous only). The
forward floor is the time of a plain memory copy moving the bytes pooling must
move: the input read once and the output written once. Variable pooling is
compared with the per-sample loop over torch's adaptive ops that it replaces.

    python benchmarks/bench_cpu.py [--quick] [--filter SUBSTR] [--dtype float32] [--threads N]
                                   [--markdown] [--json PATH]
    python benchmarks/bench_cpu.py --from-json PATH --markdown   # re-print a saved run
"""

import platform

import torch

import _common as C
import pool_ext

# (min, max) seconds of timing per measurement: --quick keeps the whole run to a few minutes.
RUN_TIME, QUICK_RUN_TIME = (0.5, 5.0), (0.05, 0.3)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def copy_floor(run_time, threads):
    """``floor_ms(setup)``: time of copying (in + out) / 2 bytes, which reads and
    writes (in + out) bytes in all. Cached per byte count: layouts share it."""
    cache = {}

    def floor_ms(s):
        half = (s.in_bytes + s.out_bytes + 1) // 2
        if half not in cache:
            src = torch.empty(half, dtype=torch.uint8).fill_(1)
            dst = torch.empty_like(src).fill_(0)  # touched now, so the copy times no page faults
            cache[half] = C.time_ms(lambda: dst.copy_(src), run_time, threads)
        return cache[half]

    return floor_ms


def summarize(rows):
    """Summary lines and PASS/FAIL target lines."""
    fixed_g, _, fixed_line = C.speedup_summary(C.select(rows, ("fixed",), C.FWD_BWD), "fixed pooling fwd+bwd")
    adapt_g, _, adapt_line = C.speedup_summary(C.select(rows, ("adaptive",), C.FWD_BWD), "adaptive pooling fwd+bwd")
    _, fixed_min, fixed_all = C.speedup_summary(C.select(rows, ("fixed",)), "fixed pooling, both passes")
    _, adapt_min, adapt_all = C.speedup_summary(C.select(rows, ("adaptive",)), "adaptive pooling, both passes")
    _, _, min_line = C.speedup_summary(C.select(rows, ("fixed", "adaptive")), "all fixed and adaptive rows")
    _, var_min, var_line = C.speedup_summary(C.select(rows, ("variable",)), "variable pooling vs per-sample loop")
    fwd = C.select(rows, ("fixed", "adaptive"), C.FWD)
    floor_line = (
        f"ours / copy floor, forward: geomean {C.geomean(r['ours_ms'] / r['floor_ms'] for r in fwd):.2f}"
        if fwd else "ours / copy floor, forward: no rows"
    )
    _, cl_worst, cl_line = C.nchw_vs_torch_cl(rows)
    summary = [fixed_line, fixed_all, adapt_line, adapt_all, min_line, var_line, floor_line, cl_line]

    targets = [
        C.target_line(C.at_least(fixed_g, 2.5), "fixed pooling fwd+bwd geomean >= 2.5x torch"),
        C.target_line(C.at_least(fixed_min, 0.9), "fixed pooling: no row under 0.9x torch"),
        C.target_line(C.at_least(adapt_g, 2.0), "adaptive pooling fwd+bwd geomean >= 2x torch"),
        C.target_line(C.at_least(adapt_min, 0.9), "adaptive pooling: no row under 0.9x torch"),
        C.target_line(C.at_least(var_min, 10), "variable pooling: every row >= 10x the per-sample loop"),
        C.target_line(C.at_most(cl_worst, 1.5), "ours contiguous within 1.5x of torch channels-last on the same data"),
    ]
    return summary, targets


def main():
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, metavar="N", default=torch.get_num_threads(),
                   help="intra-op threads (default: torch's default, %(default)s here)")
    args = p.parse_args()
    if args.from_json:
        header, rows = C.load(args.from_json)
    else:
        header, rows = run(args)
    columns = C.base_columns() + [
        ("ours/floor", lambda r: f"{r['ours_ms'] / r['floor_ms']:.2f}" if "floor_ms" in r else ""),
    ]
    C.report(header, rows, columns, *summarize(rows), args)


def run(args):
    """Measures the selected cases: (header lines, rows)."""
    torch.set_num_threads(args.threads)
    run_time = QUICK_RUN_TIME if args.quick else RUN_TIME
    cases = [c for c in C.CASES if args.filter in c.label]
    rows = C.measure(cases, args.dtype or list(C.DTYPES), "cpu", run_time, args.threads,
                     copy_floor(run_time, args.threads), layouts=args.layout)
    header = [
        f"pool_ext {pool_ext.__version__} vs torch {torch.__version__}, CPU: {cpu_model()}, "
        f"{args.threads} thread(s){', --quick' if args.quick else ''}",
        "speed-up = torch ms / ours ms; variable rows compare with a per-sample loop over torch's adaptive ops; "
        "floor = a memcpy moving the input once and the output once",
    ]
    return header, rows


if __name__ == "__main__":
    main()
