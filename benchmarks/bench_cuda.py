"""CUDA benchmark: pool_ext.functional against torch.nn.functional on one GPU.

The cases of _common.CASES with their batch scaled by BATCH_SCALE to fill the
GPU, forward and forward+backward, float32 and bfloat16, contiguous and
channels-last (1d: contiguous only). The forward floor is the bytes that must
move (input read once, output written once, and for max pooling the saved taps:
1 byte per output when a window has at most 256 cells, else 8) over the
device-to-device copy bandwidth measured in the same run. Backward of every
case runs twice to check that its gradients are bit-identical.

    python benchmarks/bench_cuda.py [--quick] [--filter=SUBSTR] [--dtype float32] [--layout contig]
                                    [--ours-only] [--markdown] [--json PATH]
    python benchmarks/bench_cuda.py --from-json PATH --markdown   # re-print a saved run
    ncu --profile-from-start off ... python benchmarks/bench_cuda.py --profile [--filter SUBSTR]

--profile times nothing: it runs ours once per case, pass, dtype and layout
between torch.cuda.profiler.start() and stop() (after a warm-up call), for a
profiler that records only that range (Nsight Compute's --profile-from-start
off; benchmarks/gpu_check.sh profile).
"""

import sys

import torch

import _common as C
import pool_ext

BATCH_SCALE = 8
# (min, max) seconds of timing per measurement: --quick keeps the whole run to a few minutes.
RUN_TIME, QUICK_RUN_TIME = (0.5, 5.0), (0.05, 0.3)
BIG_INPUT = 100e6  # bytes: the forward-floor target applies above this input size
COPY_BYTES = 1 << 30


def copy_bandwidth(run_time):
    """Bytes per millisecond of a large device-to-device ``dst.copy_(src)``, counting
    its reads and its writes."""
    src = torch.ones(COPY_BYTES, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * COPY_BYTES / C.time_ms(lambda: dst.copy_(src), run_time, torch.get_num_threads())


def traffic_floor(bandwidth):
    """``floor_ms(setup)``: the bytes a pooling must move over the copy bandwidth."""
    return lambda s: (s.in_bytes + s.out_bytes + s.taps_bytes) / bandwidth


def check_determinism(row, ours_call):
    """Runs ours' forward+backward twice more and records whether the input
    gradients are bit-identical."""
    first = ours_call().clone()
    row["deterministic"] = torch.equal(first, ours_call())


def summarize(rows):
    """Summary lines and PASS/FAIL target lines."""
    fixed_adaptive = ("fixed", "adaptive")
    fb_g, _, fb_line = C.speedup_summary(C.select(rows, fixed_adaptive, C.FWD_BWD), "fixed+adaptive fwd+bwd")
    _, all_min, all_line = C.speedup_summary(C.select(rows, fixed_adaptive), "fixed+adaptive, both passes")
    summary = [fb_line, all_line]
    for group in C.GROUPS:
        for pass_ in C.PASSES:
            summary.append(C.speedup_summary(C.select(rows, (group,), pass_), f"{group} {pass_}")[2])

    big = [r for r in C.select(rows, pass_=C.FWD) if r["in_bytes"] > BIG_INPUT]
    worst_floor = min((r["floor_ms"] / r["ours_ms"] for r in big), default=None)
    summary.append(
        f"forward % of floor, inputs over {BIG_INPUT / 1e6:.0f} MB: worst {100 * worst_floor:.0f}% over {len(big)} rows"
        if big else f"forward % of floor: no input over {BIG_INPUT / 1e6:.0f} MB"
    )
    summary.append(C.nchw_vs_torch_cl(rows)[2])

    judged = C.select(rows, ("adaptive", "variable"), C.FWD_BWD)
    nondeterministic = [f"{r['case']} {r['dtype']} {r['layout']}" for r in judged if not r["deterministic"]]
    summary.append(
        f"backward determinism (adaptive, variable): {len(judged) - len(nondeterministic)}/{len(judged)} bit-identical"
        + (f"; differing: {', '.join(nondeterministic)}" if nondeterministic else "")
    )
    backward_min = min((r["speedup"] for r in judged), default=None)

    targets = [
        C.target_line(C.at_least(worst_floor, 0.8), f"forward >= 80% of floor on every input over {BIG_INPUT / 1e6:.0f} MB"),
        C.target_line(C.at_least(fb_g, 1.3), "fixed+adaptive fwd+bwd geomean >= 1.3x torch"),
        C.target_line(C.at_least(all_min, 0.9), "fixed+adaptive: no row under 0.9x torch"),
        C.target_line(None if not judged else not nondeterministic, "adaptive and variable backward deterministic"),
        C.target_line(C.at_least(backward_min, 1.0), "adaptive and variable fwd+bwd at least torch's speed"),
    ]
    return summary, targets


def profile(args):
    """Runs ours once per selected case, pass, dtype and layout inside the
    profiler's range, each after a warm-up call outside it."""
    cases = [c for c in (c.scaled(BATCH_SCALE) for c in C.CASES) if args.filter in c.label]
    for case in cases:
        for dtype in args.dtype or list(C.DTYPES):
            for layout in (l for l in case.layouts() if not args.layout or l in args.layout):
                s = C.setup(case, C.DTYPES[dtype], layout, "cuda")
                for pass_ in C.PASSES:
                    ours = C.callables(s, pass_)[1]
                    ours()
                    torch.cuda.synchronize()
                    torch.cuda.profiler.start()
                    ours()
                    torch.cuda.synchronize()
                    torch.cuda.profiler.stop()
                    print(f"profiled: {case.label} {dtype} {layout} {pass_}", flush=True)


def main():
    parser = C.parser(__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true",
                        help="time nothing: run ours once a case inside the profiler's range")
    parser.add_argument("--ours-only", action="store_true",
                        help="time ours only (torch's results still check ours; no summary)")
    args = parser.parse_args()
    if args.from_json:
        header, rows = C.load(args.from_json)
    elif not torch.cuda.is_available():
        print("bench_cuda: no CUDA device visible to torch; nothing to benchmark.", file=sys.stderr)
        return
    elif args.profile:
        profile(args)
        return
    else:
        header, rows = run(args)
    columns = C.base_columns() + [
        ("% floor", lambda r: f"{100 * r['floor_ms'] / r['ours_ms']:.0f}%" if "floor_ms" in r else ""),
        ("det", lambda r: "" if "deterministic" not in r else "yes" if r["deterministic"] else "NO"),
    ]
    # (no summary of a run that timed ours alone: --ours-only, or its JSON)
    timed_torch = any(r["speedup"] is not None for r in rows)
    C.report(header, rows, columns, *(summarize(rows) if timed_torch else ([], [])), args)


def run(args):
    """Measures the selected cases: (header lines, rows)."""
    run_time = QUICK_RUN_TIME if args.quick else RUN_TIME
    bandwidth = copy_bandwidth(run_time)
    cases = [c for c in (c.scaled(BATCH_SCALE) for c in C.CASES) if args.filter in c.label]
    rows = C.measure(cases, args.dtype or list(C.DTYPES), "cuda", run_time, torch.get_num_threads(),
                     traffic_floor(bandwidth), check_determinism, args.layout, not args.ours_only)
    header = [
        f"pool_ext {pool_ext.__version__} vs torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"GPU: {torch.cuda.get_device_name()}, batch x{BATCH_SCALE}{', --quick' if args.quick else ''}",
        f"device-to-device copy bandwidth: {bandwidth / 1e6:.0f} GB/s (read + write)",
        "speed-up = torch ms / ours ms; variable rows compare with a per-sample loop over torch's adaptive ops; "
        "floor = (input + output + saved max taps) bytes / copy bandwidth; % floor = floor ms / ours ms",
    ]
    return header, rows


if __name__ == "__main__":
    main()
