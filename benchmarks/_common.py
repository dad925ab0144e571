"""What bench_cpu.py and bench_cuda.py share: the cases, the timing helper, the
measuring loop, tables and statistics.

Each case is data (a ``Case``); ``setup`` turns it into an input and the two
callables being compared, ``measure`` times them forward and forward+backward
with ``time_ms``, the one timing helper every number goes through.
"""

import argparse
import json
import math
import sys
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import pool_ext

P = pool_ext.functional

FWD, FWD_BWD = "fwd", "fwd+bwd"
PASSES = (FWD, FWD_BWD)
CONTIG, CHANNELS_LAST = "contig", "ch_last"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GROUPS = ("fixed", "adaptive", "variable")


@dataclass(frozen=True)
class Case:
    """One benchmark: ``op`` of pool_ext.functional (torch.nn.functional's namesake,
    or for variable pooling a per-sample loop over torch's adaptive op)."""

    group: str  # "fixed", "adaptive" or "variable"
    op: str
    shape: tuple  # (N, C, *spatial); the padded shape for variable pooling
    args: dict  # keyword arguments of both functions (kernel_size, output_size, ...)
    extent: Optional[tuple] = None  # variable: (lo, hi) range of each sample's extents

    @property
    def ndim(self):
        return len(self.shape) - 2

    @property
    def label(self):
        if "output_size" in self.args:
            params = "->" + "x".join([str(self.args["output_size"])] * (1 if self.ndim == 1 else self.ndim))
        else:
            keys = {"kernel_size": "k", "stride": "s", "padding": "p"}
            params = " ".join(f"{keys[k]}{v}" for k, v in self.args.items())
        label = f"{self.op} {params} {'x'.join(map(str, self.shape))}"
        return label + (f" ({self.extent[0]}..{self.extent[1]})" if self.extent else "")

    def layouts(self):
        """1d pooling has only the contiguous layout; the variable cases are padded
        batches as a collate function makes them, contiguous."""
        return (CONTIG,) if self.ndim == 1 or self.group == "variable" else (CONTIG, CHANNELS_LAST)

    def scaled(self, factor):
        return replace(self, shape=(self.shape[0] * factor,) + self.shape[1:])


CASES = (
    Case("fixed", "max_pool2d", (8, 64, 112, 112), dict(kernel_size=3, stride=2, padding=1)),
    Case("fixed", "max_pool2d", (128, 32, 28, 28), dict(kernel_size=2)),
    Case("fixed", "avg_pool2d", (8, 192, 35, 35), dict(kernel_size=3, stride=1, padding=1)),
    Case("fixed", "avg_pool2d", (32, 64, 56, 56), dict(kernel_size=2)),
    Case("fixed", "max_pool1d", (32, 256, 1024), dict(kernel_size=3, stride=2)),
    Case("fixed", "avg_pool1d", (32, 256, 1024), dict(kernel_size=4)),
    Case("fixed", "max_pool3d", (2, 32, 16, 56, 56), dict(kernel_size=2)),
    Case("fixed", "avg_pool3d", (2, 32, 16, 56, 56), dict(kernel_size=3, stride=2, padding=1)),
    Case("adaptive", "adaptive_avg_pool2d", (64, 2048, 7, 7), dict(output_size=1)),
    Case("adaptive", "adaptive_avg_pool2d", (32, 256, 13, 13), dict(output_size=6)),
    Case("adaptive", "adaptive_max_pool2d", (32, 256, 13, 13), dict(output_size=6)),
    Case("adaptive", "adaptive_max_pool1d", (64, 512, 512), dict(output_size=1)),
    Case("variable", "variable_max_pool1d", (64, 256, 512), dict(output_size=1), (1, 512)),
    Case("variable", "variable_avg_pool1d", (64, 256, 512), dict(output_size=1), (1, 512)),
    Case("variable", "variable_max_pool2d", (32, 128, 64, 64), dict(output_size=4), (8, 64)),
    Case("variable", "variable_avg_pool2d", (32, 128, 64, 64), dict(output_size=4), (8, 64)),
)


@dataclass
class Setup:
    """A case made concrete: its input and the two functions of it being compared."""

    x: torch.Tensor
    torch_fn: Optional[Callable]  # None where torch has no kernel for the dtype
    ours_fn: Callable
    in_bytes: int  # bytes pooling must read: the input, or only its valid cells when variable
    out_bytes: int
    taps_bytes: int  # what max pooling saves for backward: per output 1 byte if no window has over 256 cells, else 8


def taps_bytes(op, out_numel, window):
    """Saved max positions of ``out_numel`` outputs whose largest window has ``window`` cells."""
    return 0 if "max" not in op else out_numel * (1 if window <= 256 else 8)


def adaptive_window(size, out):
    """Largest window of adaptive pooling ``size`` cells to ``out``, with torch's bounds
    ``[floor(i*size/out), ceil((i+1)*size/out))``."""
    return max(-(-(i + 1) * size // out) - i * size // out for i in range(out))


def per_sample_loop(adaptive, output_size, extents):
    """What one writes without variable pooling: slice each sample to its own extent,
    pool it with torch's adaptive op, stack the results. Samples come from
    ``unbind``, whose backward stacks their gradients at once (indexing ``x[n]``
    would zero-fill a gradient the size of the whole batch for every sample)."""

    def run(x):
        return torch.stack([
            adaptive(sample[(slice(None),) + tuple(slice(0, e) for e in ext)], output_size)
            for sample, ext in zip(x.unbind(0), extents)
        ])

    return run


def largest_window(case, extents):
    """Cells of the largest window one output covers: the kernel's, or for adaptive
    pooling the widest window over ``extents`` (the input's, or each sample's)."""
    if case.group == "fixed":
        kernel = case.args["kernel_size"]
        return math.prod(kernel if isinstance(kernel, tuple) else (kernel,) * case.ndim)
    out = case.args["output_size"]
    return max(math.prod(adaptive_window(e, out) for e in ext) for ext in extents)


def setup(case, dtype, layout, device):
    """Builds the input and, for variable pooling, the sample sizes (fixed seeds),
    and both functions of the input for one case."""
    x = torch.randn(case.shape, generator=torch.Generator(device).manual_seed(0), device=device, dtype=dtype)
    if layout == CHANNELS_LAST:
        x = x.contiguous(memory_format=torch.channels_last if case.ndim == 2 else torch.channels_last_3d)
    if case.group == "variable":
        lo, hi = case.extent
        extents = torch.randint(lo, hi + 1, (case.shape[0], case.ndim), generator=torch.Generator().manual_seed(1))
        # 1d takes its lengths as (N,), the form a sequence collate function produces.
        sizes = (extents[:, 0] if case.ndim == 1 else extents).to(device)
        extents = extents.tolist()
        out_size = case.args["output_size"]
        torch_fn = per_sample_loop(getattr(F, case.op.replace("variable", "adaptive")), out_size, extents)
        ours_fn = lambda t: getattr(P, case.op)(t, out_size, sizes)  # noqa: E731
        in_numel = case.shape[1] * sum(map(math.prod, extents))  # only the valid cells need reading
    else:
        extents = [case.shape[2:]]
        torch_fn = lambda t: getattr(F, case.op)(t, **case.args)  # noqa: E731
        ours_fn = lambda t: getattr(P, case.op)(t, **case.args)  # noqa: E731
        in_numel = x.numel()
    try:
        out_numel = torch_fn(x).numel()
    except NotImplementedError:  # e.g. torch's CPU avg_pool3d has no bfloat16 kernel
        torch_fn, out_numel = None, ours_fn(x).numel()
    size = x.element_size()
    return Setup(x, torch_fn, ours_fn, in_numel * size, out_numel * size,
                 taps_bytes(case.op, out_numel, largest_window(case, extents)))


def time_ms(fn, run_time, threads):
    """Median milliseconds of one call of ``fn``.

    A warm-up call, then torch.utils.benchmark's adaptive_autorange, which warms up
    again while it sizes blocks of calls long enough for the timer (it synchronizes
    CUDA) to vanish, then repeats blocks until their spread is under 5% of the
    median or ``run_time = (min_s, max_s)`` runs out.
    """
    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    min_s, max_s = run_time
    return timer.adaptive_autorange(threshold=0.05, min_run_time=min_s, max_run_time=max_s).median * 1e3


def callables(s, pass_):
    """The (torch, ours, torch on the CPU) no-argument callables of one pass (torch's
    are None where torch has no kernel); the first two are timed, the third gives the
    same result from torch's CPU kernels, a second opinion where the first two differ
    on a GPU (None for CPU inputs, whose torch call is already that).

    Forward runs on an input that does not require grad (inference). Forward+backward
    runs ``out.backward(grad)`` with one fixed ``grad``, clearing ``x.grad`` first so
    every call allocates a fresh gradient, as a training step does.
    """
    on_cpu = None
    if s.torch_fn is not None and s.x.device.type != "cpu":
        on_cpu = lambda: callables(replace(s, x=s.x.cpu()), pass_)[0]().to(s.x.device)  # noqa: E731
    if pass_ == FWD:
        x = s.x.detach()
        torch_call = None if s.torch_fn is None else lambda: s.torch_fn(x)
        return torch_call, (lambda: s.ours_fn(x)), on_cpu
    x = s.x.detach().requires_grad_()
    # In the output's layout, as a training step's grad comes; seeded by the data,
    # so that the CPU's second opinion gets the same values.
    grad = torch.empty_like((s.torch_fn or s.ours_fn)(s.x))
    grad.copy_(torch.randn(grad.shape, generator=torch.Generator().manual_seed(s.x.numel()),
                           dtype=grad.dtype))

    def train_step(fn):
        def run():
            x.grad = None
            fn(x).backward(grad)
            return x.grad

        return run

    torch_call = None if s.torch_fn is None else train_step(s.torch_fn)
    return torch_call, train_step(s.ours_fn), on_cpu


def mismatch(torch_call, ours_call):
    """None when ours gives torch's result (forward output, or the input's gradient),
    else a short description of the difference. In bfloat16 the two sides round partial
    sums differently (torch accumulates overlapping windows' gradients in bfloat16, ours
    in float), so a result that cancels can be off by a couple of ulps of the largest
    value: the absolute tolerance scales with it."""
    want, got = torch_call().detach().clone(), ours_call().detach().clone()
    tol = {}
    if want.dtype == torch.bfloat16:
        tol = dict(rtol=1.6e-2, atol=2**-6 * want.abs().max().item())
    try:
        torch.testing.assert_close(got, want, **tol)
    except AssertionError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        return "; ".join(lines[1:4] or lines)
    return None


def agrees(torch_on_cpu, ours_call):
    """Whether torch's CPU kernel gives ours (False where it has none)."""
    try:
        return mismatch(torch_on_cpu, ours_call) is None
    except Exception:  # noqa: BLE001 (a second opinion only: no kernel, no memory, ...)
        return False


def measure(cases, dtypes, device, run_time, threads, floor_ms, extra=None, layouts=None,
            time_torch=True):
    """Times every (case, dtype, layout, pass) and returns one dict per row.

    ``floor_ms(setup)`` gives the forward floor; ``extra(row, ours_call)`` may add
    device-specific fields to forward+backward rows; ``layouts`` (default all)
    selects the layouts; without ``time_torch``, torch's calls only check ours.
    """
    todo = [(c, d, l) for c in cases for d in dtypes for l in c.layouts() if not layouts or l in layouts]
    rows = []
    for i, (case, dtype_name, layout) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {case.label} {dtype_name} {layout}", file=sys.stderr, flush=True)
        s = setup(case, DTYPES[dtype_name], layout, device)
        for pass_ in PASSES:
            torch_call, ours_call, torch_on_cpu = callables(s, pass_)
            row = dict(
                case=case.label, group=case.group, op=case.op, dtype=dtype_name, layout=layout, pass_=pass_,
                in_bytes=s.in_bytes, out_bytes=s.out_bytes, mismatch=None, torch_ms=None, speedup=None,
            )
            row["ours_ms"] = time_ms(ours_call, run_time, threads)
            if torch_call is not None:
                row["mismatch"] = mismatch(torch_call, ours_call)
                if row["mismatch"] and torch_on_cpu is not None and agrees(torch_on_cpu, ours_call):
                    # torch's GPU kernel differs from its own CPU kernel, which gives ours (e.g.
                    # the CUDA avg_pool2d backward of channels-last inputs with padding, which is
                    # wrong: pytorch/pytorch#188344).
                    row["mismatch"] = None
                    row["torch_gpu_differs"] = "torch's CPU kernel gives ours; its GPU kernel differs"
                if time_torch:
                    row["torch_ms"] = time_ms(torch_call, run_time, threads)
                    row["speedup"] = row["torch_ms"] / row["ours_ms"]
                else:
                    row["torch_timed"] = False
            if pass_ == FWD:
                row["floor_ms"] = floor_ms(s)
            elif extra is not None:
                extra(row, ours_call)
            rows.append(row)
    return rows


def geomean(values):
    values = list(values)
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def fmt_ms(v):
    return "" if v is None else f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 10 else f"{v:.3f}"


def format_table(rows, columns, markdown):
    """Aligned plain text, or a Markdown table. ``columns``: (header, row -> str)."""
    cells = [[h for h, _ in columns]] + [[get(r) for _, get in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    # Text columns left-aligned, numbers right-aligned.
    left = [i < 4 for i in range(len(columns))]

    def line(vals):
        padded = [v.ljust(w) if l else v.rjust(w) for v, w, l in zip(vals, widths, left)]
        return ("| " + " | ".join(padded) + " |") if markdown else "  ".join(padded)

    out = [line(cells[0])]
    if markdown:
        out.append("|" + "|".join(("-" * (w + 1) + ":") if not l else ("-" * (w + 2)) for w, l in zip(widths, left)) + "|")
    else:
        out.append("  ".join("-" * w for w in widths))
    out += [line(c) for c in cells[1:]]
    return "\n".join(out)


def base_columns():
    """The columns both benchmarks print first."""
    return [
        ("case", lambda r: r["case"]),
        ("dtype", lambda r: r["dtype"]),
        ("layout", lambda r: r["layout"]),
        ("pass", lambda r: r["pass_"]),
        ("torch ms", lambda r: "n/a" if r["torch_ms"] is None else fmt_ms(r["torch_ms"])),
        ("ours ms", lambda r: fmt_ms(r["ours_ms"])),
        ("speed-up", lambda r: "n/a" if r["speedup"] is None else f"{r['speedup']:.2f}x"),
        ("floor ms", lambda r: fmt_ms(r.get("floor_ms"))),
    ]


def select(rows, groups=GROUPS, pass_=None):
    """The rows of ``groups`` (and ``pass_``) that have a torch time to compare with."""
    return [
        r for r in rows
        if r["group"] in groups and (pass_ is None or r["pass_"] == pass_) and r["speedup"] is not None
    ]


def speedup_summary(rows, name):
    """(geomean, min) of torch/ours over ``rows``, and a line describing them."""
    if not rows:
        return None, None, f"{name}: no rows"
    worst = min(rows, key=lambda r: r["speedup"])
    g = geomean(r["speedup"] for r in rows)
    return g, worst["speedup"], (
        f"{name}: geomean {g:.2f}x over {len(rows)} rows, min {worst['speedup']:.2f}x "
        f"({worst['case']} {worst['dtype']} {worst['layout']} {worst['pass_']})"
    )


def nchw_vs_torch_cl(rows):
    """Ours on contiguous input over torch on the same data in channels-last, for every
    (case, dtype, pass) measured in both layouts: (geomean, worst ratio, line)."""
    by_key = {(r["case"], r["dtype"], r["pass_"], r["layout"]): r for r in rows}
    ratios = {
        k[:3]: r["ours_ms"] / by_key[k[:3] + (CHANNELS_LAST,)]["torch_ms"]
        for k, r in by_key.items()
        if k[3] == CONTIG and by_key.get(k[:3] + (CHANNELS_LAST,), {}).get("torch_ms") is not None
    }
    if not ratios:
        return None, None, "ours contiguous / torch channels-last: no rows with both layouts"
    worst = max(ratios, key=ratios.get)
    g = geomean(ratios.values())
    return g, ratios[worst], (
        f"ours contiguous / torch channels-last (same data): geomean {g:.2f}, "
        f"worst {ratios[worst]:.2f} ({' '.join(worst)})"
    )


def at_least(value, bound):
    """None (nothing measured) stays None, for target_line to SKIP."""
    return None if value is None else value >= bound


def at_most(value, bound):
    return None if value is None else value <= bound


def target_line(ok, text):
    """PASS/FAIL, or SKIP when the filter left nothing to judge (``ok`` is None)."""
    return f"{'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}: {text}"


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="shorter timing runs (a few minutes in all)")
    p.add_argument("--filter", default="", metavar="SUBSTR", help="only cases whose label contains SUBSTR")
    p.add_argument("--dtype", action="append", choices=sorted(DTYPES), help="a dtype to run; repeatable (default: all)")
    p.add_argument("--layout", action="append", choices=(CONTIG, CHANNELS_LAST),
                   help="a layout to run; repeatable (default: all)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    p.add_argument("--from-json", metavar="PATH",
                   help="measure nothing: print the results a --json run saved (e.g. again with --markdown)")
    return p


def load(path):
    """(header, rows) of a run saved with --json."""
    with open(path) as f:
        saved = json.load(f)
    return saved["header"], saved["rows"]


def report(header, rows, columns, summary, targets, args, table=True):
    """Prints the header lines, the table (unless not ``table``), the summary and
    target lines; saves JSON."""
    bullet = "- " if args.markdown else ""
    print("\n".join(bullet + h for h in header))
    print()
    if table:
        print(format_table(rows, columns, args.markdown))
        print()
    print("\n".join(bullet + s for s in summary + targets))
    for r in rows:
        if r["torch_ms"] is None and r.get("torch_timed", True):
            print(f"{bullet}NOTE: torch has no kernel for {r['case']} {r['dtype']} {r['layout']} {r['pass_']}; ours timed alone")
    for r in rows:
        if r.get("torch_gpu_differs"):
            print(f"{bullet}NOTE: torch's {r['pass_']} on the GPU differs from its CPU's on {r['case']} "
                  f"{r['dtype']} {r['layout']}: {r['torch_gpu_differs']}")
        if r["mismatch"]:
                print(f"{bullet}WARNING: ours differs from torch on {r['case']} {r['dtype']} {r['layout']} "
                  f"{r['pass_']}: {r['mismatch']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(header=header, rows=rows, summary=summary, targets=targets), f, indent=1)
