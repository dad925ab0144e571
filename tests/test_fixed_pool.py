"""max_pool1d/2d/3d and avg_pool1d/2d/3d against torch.nn.functional.

Randomized: every call is drawn from a seeded RNG (shapes, kernel, stride,
padding, dilation, ceil_mode, count_include_pad, divisor_override, layout,
NaN/inf, ties, unbatched and empty batches), kept only when torch accepts it
(test_errors.py checks that the rejects match). Each case compares the output,
its memory format, the indices (and that max_unpool accepts them) and the
gradient of a random grad_output.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from pool_testing import (
    DEVICES, DTYPE_IDS, DTYPES, INF, NAN, as_arg, assert_close_to_ref, assert_equal, assert_same_bits,
    assert_same_format, check_max_indices, check_with_indices, expand_arg, expected_max_indices, fixed_window,
    inputs_in_every_layout, is_batched, leaf, over_kinds_and_inputs,
    layouts_for, make_rng, num_threads, ours, outputs_and_grad, random_grad, random_input, random_values, scatter_grad,
    to_strided, torch_accepts, torch_generator, torchs, with_layout, TORCH_CPU_3D_CONTIGUOUS_ONLY,
)

CASES_PER_SEED = 12
SEEDS = range(5)
MAX_EXTRA_SIZE = {1: 9, 2: 6, 3: 3}


def random_fixed_case(rng, kind, d):
    """(input shape, kwargs) of a max/avg pooling call that torch accepts."""
    fn = torchs(f"{kind}_pool{d}d")
    for _ in range(200):
        kernel = [rng.randint(1, 4 if d < 3 else 3) for _ in range(d)]
        dilation = [rng.randint(1, 3) if rng.random() < 0.4 else 1 for _ in range(d)]
        if kind == "avg":
            dilation = [1] * d
        padding = [rng.randint(0, k // 2) for k in kernel]
        stride = [rng.randint(1, 4) for _ in range(d)]
        spatial = []
        for k, p, dil in zip(kernel, padding, dilation):
            low = max(1, (k - 1) * dil + 1 - 2 * p)
            spatial.append(rng.randint(low, low + MAX_EXTRA_SIZE[d]))
        batch = rng.choices([(), (0,), (1,), (2,), (3,)], weights=[3, 2, 4, 6, 5])[0]
        shape = (*batch, rng.randint(1, 3), *spatial)

        kwargs = {"kernel_size": as_arg(rng, kernel), "padding": as_arg(rng, padding)}
        r = rng.random()
        if r < 0.15:
            pass  # stride defaults to the kernel
        elif r < 0.25:
            kwargs["stride"] = None
        else:
            kwargs["stride"] = as_arg(rng, stride)
        kwargs["ceil_mode"] = rng.random() < 0.5
        if kind == "max":
            kwargs["dilation"] = as_arg(rng, dilation)
        else:
            kwargs["count_include_pad"] = rng.random() < 0.5
            if d > 1 and rng.random() < 0.3:
                kwargs["divisor_override"] = rng.choice([-3, -1, 1, 2, 3, 4, 5])  # torch takes negatives too
        if not torch_accepts(fn, torch.zeros(shape, dtype=torch.float64), **kwargs):
            continue
        # torch allows (dilated) windows that lie wholly in the padding; its
        # indices there are garbage (and differ between its own layouts): skip.
        out_sizes = fn(torch.zeros(shape, dtype=torch.float64), **kwargs).shape[-d:]
        if windows_have_real_cells(spatial, out_sizes, *geometry(d, kwargs)):
            return shape, kwargs
    raise AssertionError("no valid configuration drawn")


def windows_have_real_cells(in_sizes, out_sizes, kernel, stride, padding, dilation):
    return all(
        any(0 <= o * s - p + t * dil < size for t in range(k))
        for size, out, k, s, p, dil in zip(in_sizes, out_sizes, kernel, stride, padding, dilation)
        for o in range(out)
    )


def geometry(d, kwargs):
    kernel = expand_arg(kwargs["kernel_size"], d)
    stride = kwargs.get("stride")
    stride = kernel if stride is None else expand_arg(stride, d)
    padding = expand_arg(kwargs.get("padding", 0), d)
    dilation = expand_arg(kwargs.get("dilation", 1), d)
    return kernel, stride, padding, dilation


def check_unpool(d, out, idx, ref_out, ref_idx, x, kwargs):
    """torch's max_unpool accepts our indices and gives what it gives for torch's."""
    if out.numel() == 0 or out.dtype not in (torch.float32, torch.float64):
        return
    kernel, stride, padding, _ = geometry(d, kwargs)
    size = list(x.shape[-d:])
    default = [(i - 1) * s + k - 2 * p for i, s, k, p in zip(out.shape[-d:], stride, kernel, padding)]
    if all(dflt - s < i < dflt + s for i, dflt, s in zip(size, default, stride)):
        unpool = torchs(f"max_unpool{d}d")
        args = dict(kernel_size=kernel, stride=stride, padding=padding, output_size=size)
        assert_equal(unpool(out.cpu(), idx.cpu(), **args), unpool(ref_out, ref_idx, **args))
    elif d < 3:
        # F.max_unpool rejects this output_size for the geometry; its kernel does not care
        def unpool(o, i):
            if d == 1:
                return torch._C._nn.max_unpool2d(o.unsqueeze(-1), i.unsqueeze(-1), size + [1]).squeeze(-1)
            return torch._C._nn.max_unpool2d(o, i, size)

        assert_equal(unpool(out.cpu(), idx.cpu()), unpool(ref_out, ref_idx))


def check_max(d, x, kwargs, device, rng):
    name = f"max_pool{d}d"
    x_cpu = to_strided(x, device="cpu")
    try:
        ref_out, ref_idx = torchs(name)(x_cpu, **kwargs, return_indices=True)
        check_format = is_batched(x, d)
    except RuntimeError as e:
        # torch's max_pool3d takes only contiguous and channels_last_3d strides
        assert "Unsupported memory format" in str(e)
        ref_out, ref_idx = torchs(name)(x_cpu.contiguous(), **kwargs, return_indices=True)
        check_format = False

    xl = leaf(x)
    out, idx = ours(name)(xl, **kwargs, return_indices=True)
    assert out.device == x.device and idx.device == x.device
    assert_equal(out, ref_out)
    assert_equal(ours(name)(x, **kwargs), ref_out)
    if check_format:
        assert_same_format(out, ref_out)
        assert_same_format(idx, ref_idx)
    kernel, stride, padding, dilation = geometry(d, kwargs)
    check_max_indices(x_cpu, out, ref_out, idx, ref_idx, d, fixed_window(kernel, stride, padding, dilation))
    check_unpool(d, out, idx, ref_out, ref_idx, x_cpu, kwargs)

    grad_out = random_grad(rng, out)
    (grad,) = torch.autograd.grad(out, xl, grad_out)
    expected = scatter_grad(grad_out, expected_max_indices(ref_out, ref_idx, idx), x.shape, d)
    assert_close_to_ref(grad, expected, x.dtype)

    if x.device.type != "cpu":
        out_cpu, idx_cpu = ours(name)(x_cpu, **kwargs, return_indices=True)
        assert_equal(out, out_cpu)
        assert_equal(idx, idx_cpu)


def check_avg(d, x, kwargs, device, rng):
    name = f"avg_pool{d}d"
    x64 = leaf(to_strided(x, torch.float64, "cpu"))
    ref = torchs(name)(x64, **kwargs)

    xl = leaf(x)
    out = ours(name)(xl, **kwargs)
    assert out.device == x.device
    assert_close_to_ref(out, ref.detach(), x.dtype)
    if is_batched(x, d) and name not in TORCH_CPU_3D_CONTIGUOUS_ONLY:
        assert_same_format(out, ref)

    grad_out = random_grad(rng, out)
    (grad,) = torch.autograd.grad(out, xl, grad_out)
    (expected,) = torch.autograd.grad(ref, x64, grad_out.cpu().double())
    assert_close_to_ref(grad, expected, x.dtype)

    if x.device.type != "cpu":
        rtol, atol = (1e-5, 1e-5) if x.dtype in (torch.float32, torch.float64) else (1e-2, 1e-2)
        out_cpu = ours(name)(to_strided(x, device="cpu"), **kwargs)
        torch.testing.assert_close(out.cpu(), out_cpu, rtol=rtol, atol=atol, equal_nan=True)


CHECKS = {"max": check_max, "avg": check_avg}


def run_case(kind, d, x, layout, kwargs, device, rng):
    try:
        CHECKS[kind](d, x, kwargs, device, rng)
    except AssertionError as e:
        raise AssertionError(
            f"{kind}_pool{d}d input {tuple(x.shape)} {x.dtype} layout={layout} strides={x.stride()} "
            f"kwargs={kwargs}:\n{e}"
        ) from e


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_against_torch(seed, kind, d, dtype, device):
    rng = make_rng("fixed", kind, d, dtype, seed)
    for _ in range(CASES_PER_SEED):
        shape, kwargs = random_fixed_case(rng, kind, d)
        x, layout = random_input(rng, shape, dtype, device)
        run_case(kind, d, x, layout, kwargs, device, rng)


# ---------------------------------------------------------------- targeted cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_empty_batch(kind, d, device):
    rng = make_rng("empty", kind, d)
    x = torch.randn((0, 3) + (6,) * d, device=device)
    kwargs = {"kernel_size": 2, "stride": 2}
    out = ours(f"{kind}_pool{d}d")(leaf(x), **kwargs)
    assert out.shape == (0, 3) + (3,) * d
    run_case(kind, d, x, "contiguous", kwargs, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_unbatched_matches_batched(kind, d, device):
    rng = make_rng("unbatched", kind, d)
    x, _ = random_input(rng, (3,) + (7,) * d, torch.float32, device, layout="contiguous")
    kwargs = {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}
    fn = ours(f"{kind}_pool{d}d")
    assert_equal(fn(x, **kwargs), fn(x.unsqueeze(0), **kwargs).squeeze(0))
    run_case(kind, d, x, "contiguous", kwargs, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_max_pool_ties_keep_first_index(d, dtype, device):
    """All-equal and small-integer inputs: torch keeps the first index among equal maxima."""
    fn, ref = ours(f"max_pool{d}d"), torchs(f"max_pool{d}d")
    for values in (torch.zeros((2, 2) + (6,) * d), torch.randint(0, 2, (2, 2) + (6,) * d).float()):
        x = values.to(dtype)
        for kwargs in ({"kernel_size": 3, "stride": 1, "padding": 1}, {"kernel_size": 2, "dilation": 2}):
            out, idx = fn(x.to(device), **kwargs, return_indices=True)
            ref_out, ref_idx = ref(x, **kwargs, return_indices=True)
            assert_equal(out, ref_out)
            assert_equal(idx, ref_idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_max_pool_nan_like_torch(d, dtype, device):
    """NaN propagates, and with several NaNs in a window the index is torch's:
    torch's kernels update the maximum on every NaN, so the last NaN wins."""
    rng = make_rng("nan", d, dtype)
    fn, ref = ours(f"max_pool{d}d"), torchs(f"max_pool{d}d")
    for layout in ("contiguous", "channels_last") if d > 1 else ("contiguous",):
        x, _ = random_input(rng, (2, 3) + (6,) * d, dtype, device, layout=layout, specials=0.3,
                            special_values=(NAN,))
        for kwargs in ({"kernel_size": 3, "stride": 1, "padding": 1}, {"kernel_size": 2, "stride": 2}):
            out, idx = fn(x, **kwargs, return_indices=True)
            ref_out, ref_idx = ref(to_strided(x, device="cpu"), **kwargs, return_indices=True)
            assert torch.isnan(ref_out).any()
            assert_equal(out, ref_out)
            assert_equal(idx, ref_idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_max_pool_infinities(d, device):
    """All -inf windows (torch: the window's first real cell) and +inf maxima."""
    shape = (1, 2) + (5,) * d
    for fill in (-INF, INF):
        x = torch.full(shape, fill, device=device)
        kwargs = {"kernel_size": 3, "stride": 1, "padding": 1}
        out, idx = ours(f"max_pool{d}d")(x, **kwargs, return_indices=True)
        ref_out, ref_idx = torchs(f"max_pool{d}d")(x.cpu(), **kwargs, return_indices=True)
        assert_equal(out, ref_out)
        assert_equal(idx, ref_idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [2, 3])
def test_max_pool_window_of_only_neg_inf_after_a_finite_one(d, device):
    """A window of only -inf takes its first cell in every layout, as torch's
    contiguous kernels do (its channels-last-3d max_pool3d gives it the
    previous window's index, outside it)."""
    x = torch.full((1, 2, 3) + (2,) * (d - 1), -INF)
    x[:, :, 0] = 0
    kwargs = {"kernel_size": (2,) + (1,) * (d - 1), "stride": 1, "return_indices": True}
    want_out, want_idx = torchs(f"max_pool{d}d")(x, **kwargs)
    assert want_idx[0, 0, 1].flatten().tolist() == list(range(2 ** (d - 1), 2 ** d))
    for layout in ("contiguous", "channels_last"):
        xx = x.to(device)
        if layout == "channels_last":
            xx = xx.contiguous(memory_format=torch.channels_last if d == 2 else torch.channels_last_3d)
        out, idx = ours(f"max_pool{d}d")(xx, **kwargs)
        assert_equal(out, want_out)
        assert_equal(idx, want_idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("d", [2, 3])
def test_large_windows(kind, d, device):
    """Windows of more than 256 cells (saved positions no longer fit in a byte)."""
    rng = make_rng("large", kind, d)
    kernel = 17 if d == 2 else 7
    shape = (2, 2) + (kernel + 3,) * d
    for layout in ("contiguous", "channels_last"):
        x, _ = random_input(rng, shape, torch.float32, device, layout=layout, specials=0.0, ties=False)
        run_case(kind, d, x, layout, {"kernel_size": kernel, "stride": 2, "padding": 1}, device, rng)


# Windows that tile the input (stride = kernel, extents divisible): beyond 16
# cells they run on the adaptive (or global) kernels, up to it on the fixed;
# over 256 cells with int64 taps.
TILED = {
    1: [(64, {"kernel_size": 32}), (64, {"kernel_size": 16}), (96, {"kernel_size": 32, "ceil_mode": True}),
        (40, {"kernel_size": 40}), (600, {"kernel_size": 300})],
    2: [(16, {"kernel_size": 8}), (16, {"kernel_size": 4}), (15, {"kernel_size": 5, "padding": 0}),
        (12, {"kernel_size": 6, "ceil_mode": True}), (7, {"kernel_size": 7}), (34, {"kernel_size": 17})],
    3: [(8, {"kernel_size": 4}), (6, {"kernel_size": 3}), (6, {"kernel_size": 2}),
        (8, {"kernel_size": 4, "count_include_pad": False}), (14, {"kernel_size": 7})],
}


@over_kinds_and_inputs
def test_tiling_windows(kind, d, specials, dtype, device):
    """Poolings whose windows tile the input, every layout: torch's values,
    indices and gradients (whole-input windows included)."""
    rng = make_rng("tiled", kind, d, specials, dtype)
    for size, kwargs in TILED[d]:
        if kind == "max" and "count_include_pad" in kwargs:
            continue
        shape = (2, 6 if d > 1 else 8) + (size,) * d
        for x, layout in inputs_in_every_layout(rng, shape, dtype, device, specials):
            run_case(kind, d, x, layout, kwargs, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_avg_pool_divisor_and_count_include_pad(d, device):
    rng = make_rng("avg-args", d)
    x, _ = random_input(rng, (2, 3) + (6,) * d, torch.float64, device, layout="contiguous", specials=0.0)
    for ceil_mode in (False, True):
        for count_include_pad in (False, True):
            for divisor in (None, 1, 7, -2) if d > 1 else (None,):
                kwargs = dict(kernel_size=3, stride=2, padding=1, ceil_mode=ceil_mode,
                              count_include_pad=count_include_pad)
                if divisor is not None:
                    kwargs["divisor_override"] = divisor
                run_case("avg", d, x, "contiguous", kwargs, device, rng)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [2, 3])
def test_zero_sums_over_a_negative_divisor_have_torchs_sign(d, dtype):
    """A window summing to zero over a negative divisor_override: torch's CPU
    kernels give +0 for contiguous 2d and every 3d input (they add each quotient
    to a zeroed output) and -0 for channels-last 2d (they store it)."""
    g = torch.Generator().manual_seed(d)
    half = torch.randn((2, 16) + (4,) * (d - 1) + (3,), generator=g).to(dtype)
    values = torch.stack([half, -half], dim=-1).flatten(-2)  # each window: x, -x
    values[0, 0] = -0.0  # and a plane of -0
    for layout in ("contiguous", "channels_last"):
        x = values if layout == "contiguous" else values.contiguous(
            memory_format=torch.channels_last if d == 2 else torch.channels_last_3d)
        for divisor in (-3, -1, 2):
            kwargs = dict(kernel_size=(1,) * (d - 1) + (2,), divisor_override=divisor)
            # (torch's CPU has no 2-byte avg_pool3d: its float result, every output a zero)
            expected = F.avg_pool2d(x, **kwargs) if d == 2 else F.avg_pool3d(x.float(), **kwargs).to(dtype)
            assert_equal(ours(f"avg_pool{d}d")(x, **kwargs), expected, msg=f"{layout}, divisor {divisor}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_average_of_long_windows_changes_no_bit_with_threads(dtype):
    """One image of 16 channels of small planes may pool through the planes
    kernels on some thread counts and through channel groups on others. Their
    sums agree only on windows of under 16 taps (the planes kernels sum longer
    rows as runs): longer ones take one path whatever the thread count."""
    g = torch.Generator().manual_seed(0)
    cases = [((1, 16, 8, 8), dict(kernel_size=(7, 21), stride=(7, 1), padding=(0, 10), ceil_mode=True)),
             ((1, 16, 4, 4), dict(kernel_size=4, stride=1)),  # a plane-wide window: one run of 16
             ((1, 24, 5, 6, 7), dict(kernel_size=(2, 3, 5), stride=1, padding=(1, 1, 2)))]
    for shape, kwargs in cases:
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        name = f"avg_pool{len(shape) - 2}d"
        runs = []
        for n in (1, 2, 8):
            with num_threads(n):
                runs.append(ours(name)(x, **kwargs))
        for run in runs[1:]:
            assert_equal(run, runs[0], msg=f"{shape} {kwargs}")


# ---------------------------------------------------------------- padding="same" / "valid"


def same_pads(in_sizes, kernel, stride, dilation):
    """TensorFlow's rule: (before, after) per dim."""
    pads = []
    for size, k, s, dil in zip(in_sizes, kernel, stride, dilation):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * dil + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def f_pad_arg(pads):
    return [p for before_after in reversed(pads) for p in before_after]


def every_window_has_a_real_cell(in_sizes, kernel, stride, dilation):
    for size, k, s, dil, (before, _) in zip(in_sizes, kernel, stride, dilation,
                                            same_pads(in_sizes, kernel, stride, dilation)):
        for o in range(-(-size // s)):
            if not any(0 <= o * s - before + t * dil < size for t in range(k)):
                return False
    return True


def reference_same_max(x64, d, kernel, stride, dilation):
    """(out, indices into x) from torch ops: pad with -inf, pool, map indices back."""
    in_sizes = list(x64.shape[-d:])
    pads = same_pads(in_sizes, kernel, stride, dilation)
    xp = F.pad(x64, f_pad_arg(pads), value=-INF).contiguous()
    out, idx = torchs(f"max_pool{d}d")(xp, kernel, stride, 0, dilation, return_indices=True)
    padded_sizes = list(xp.shape[-d:])
    rest, flat = idx, torch.zeros_like(idx)
    coords = []
    for j in reversed(range(d)):
        coords.append(rest % padded_sizes[j] - pads[j][0])
        rest = rest // padded_sizes[j]
    for j, c in zip(range(d), reversed(coords)):
        assert ((c >= 0) & (c < in_sizes[j])).all(), "reference selected padding"
        flat = flat * in_sizes[j] + c
    return out, flat, pads


def reference_same_avg(x64, d, kernel, stride):
    """Average over the real cells of each window, from torch ops (differentiable)."""
    pads = same_pads(list(x64.shape[-d:]), kernel, stride, [1] * d)
    pool = torchs(f"avg_pool{d}d")
    cells = math.prod(kernel)
    sums = pool(F.pad(x64, f_pad_arg(pads)), kernel, stride) * cells
    counts = pool(F.pad(torch.ones_like(x64), f_pad_arg(pads)), kernel, stride) * cells
    return sums / counts


def random_same_case(rng, kind, d):
    for _ in range(200):
        kernel = [rng.randint(1, 5 if d < 3 else 3) for _ in range(d)]
        stride = [rng.randint(1, 3) for _ in range(d)]
        dilation = [rng.randint(1, 2) for _ in range(d)] if kind == "max" else [1] * d
        spatial = [rng.randint(1, 6 + MAX_EXTRA_SIZE[d]) for _ in range(d)]
        if every_window_has_a_real_cell(spatial, kernel, stride, dilation):
            break
    batch = rng.choice([(), (0,), (1,), (2,)])
    return (*batch, rng.randint(1, 3), *spatial), kernel, stride, dilation


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("seed", range(2))
def test_max_pool_same_padding(seed, d, dtype, device):
    rng = make_rng("same-max", d, dtype, seed)
    for _ in range(CASES_PER_SEED):
        shape, kernel, stride, dilation = random_same_case(rng, "max", d)
        # finite values (a real -inf would tie with the -inf padding of the reference)
        x, layout = random_input(rng, shape, dtype, device, special_values=(NAN,))
        x64 = to_strided(x, torch.float64, "cpu")
        ref_out, ref_idx, pads = reference_same_max(x64, d, kernel, stride, dilation)

        xl = leaf(x)
        kwargs = dict(kernel_size=as_arg(rng, kernel), stride=as_arg(rng, stride), padding="same",
                      dilation=as_arg(rng, dilation))
        out, idx = ours(f"max_pool{d}d")(xl, **kwargs, return_indices=True)
        info = f"input {shape} {dtype} {layout} {kwargs}"
        assert out.dtype == dtype, info
        assert_equal(out.double(), ref_out, msg=info)
        window = fixed_window(kernel, stride, [before for before, _ in pads], dilation)
        check_max_indices(x64, out.double(), ref_out, idx, ref_idx, d, window)
        grad_out = random_grad(rng, out)
        (grad,) = torch.autograd.grad(out, xl, grad_out)
        expected = scatter_grad(grad_out, expected_max_indices(ref_out, ref_idx, idx), x.shape, d)
        assert_close_to_ref(grad, expected, dtype, msg=info)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("seed", range(2))
def test_avg_pool_same_padding(seed, d, dtype, device):
    rng = make_rng("same-avg", d, dtype, seed)
    for _ in range(CASES_PER_SEED):
        shape, kernel, stride, _ = random_same_case(rng, "avg", d)
        x, layout = random_input(rng, shape, dtype, device)
        x64 = leaf(to_strided(x, torch.float64, "cpu"))
        ref = reference_same_avg(x64, d, kernel, stride)

        xl = leaf(x)
        kwargs = dict(kernel_size=as_arg(rng, kernel), stride=as_arg(rng, stride), padding="same")
        info = f"input {shape} {dtype} {layout} {kwargs}"
        out = ours(f"avg_pool{d}d")(xl, **kwargs)
        assert_close_to_ref(out, ref.detach(), dtype, msg=info)
        # count_include_pad does not apply to "same"
        for count_include_pad in (False, True):
            again = ours(f"avg_pool{d}d")(x, **kwargs, count_include_pad=count_include_pad)
            assert_equal(again, out.detach())
        grad_out = random_grad(rng, out)
        (grad,) = torch.autograd.grad(out, xl, grad_out)
        (expected,) = torch.autograd.grad(ref, x64, grad_out.cpu().double())
        assert_close_to_ref(grad, expected, dtype, msg=info)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_same_padding_keeps_channels_last(kind, d, device):
    rng = make_rng("same-cl", kind, d)
    x, _ = random_input(rng, (2, 4) + (7,) * d, torch.float32, device, layout="channels_last", specials=0.0)
    out = ours(f"{kind}_pool{d}d")(x, 3, 2, "same")
    assert out.shape == (2, 4) + (4,) * d
    fmt = torch.channels_last if d == 2 else torch.channels_last_3d
    assert out.is_contiguous(memory_format=fmt) and not out.is_contiguous()
    assert_equal(out, ours(f"{kind}_pool{d}d")(x.contiguous(), 3, 2, "same").contiguous(memory_format=fmt))


def test_same_padding_examples():
    """Hand-checked: in=5, kernel=4, stride=2: 3 outputs, padding 1 before and 2 after."""
    x = torch.arange(1.0, 6.0).view(1, 1, 5)
    assert_equal(ours("max_pool1d")(x, 4, 2, "same"), torch.tensor([[[3.0, 5.0, 5.0]]]))
    assert_equal(ours("avg_pool1d")(x, 4, 2, "same"), torch.tensor([[[2.0, 3.5, 4.5]]]))
    out, idx = ours("max_pool1d")(-x, 4, 2, "same", return_indices=True)
    assert_equal(out, torch.tensor([[[-1.0, -2.0, -4.0]]]))
    assert_equal(idx, torch.tensor([[[0, 1, 3]]]))
    # stride 1 keeps the size; an even kernel puts the odd padding cell at the end
    assert_equal(ours("max_pool1d")(x, 2, 1, "same"), torch.tensor([[[2.0, 3.0, 4.0, 5.0, 5.0]]]))
    assert_equal(ours("avg_pool1d")(x, 2, 1, "same"), torch.tensor([[[1.5, 2.5, 3.5, 4.5, 5.0]]]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_valid_padding_is_zero_padding(kind, d, device):
    rng = make_rng("valid", kind, d)
    x, _ = random_input(rng, (2, 3) + (7,) * d, torch.float32, device, specials=0.0)
    fn = ours(f"{kind}_pool{d}d")
    kwargs = {"kernel_size": 3, "stride": 2, "ceil_mode": True}
    expected = torchs(f"{kind}_pool{d}d")(to_strided(x, device="cpu"), padding=0, **kwargs)
    assert_close_to_ref(fn(x, padding="valid", **kwargs), expected.double(), torch.float32)
    assert_equal(fn(x, padding="valid", **kwargs), fn(x, padding=0, **kwargs))
    if kind == "max":
        out, idx = fn(x, padding="valid", return_indices=True, **kwargs)
        assert_equal(idx, torchs("max_pool%dd" % d)(to_strided(x, device="cpu"), return_indices=True,
                                                    **kwargs)[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_medium_inputs(kind, d, layout, dtype, device):
    """Inputs large enough for the parallel paths (many planes, many pixels), with
    overlapping windows so several outputs feed each input cell in the backward."""
    rng = make_rng("medium", kind, d, layout, dtype)
    shape = (4, 24, 33, 35) if d == 2 else (2, 16, 9, 10, 11)
    x, _ = random_input(rng, shape, dtype, device, layout=layout, specials=0.0)
    kwargs = {"kernel_size": 3, "stride": 1, "padding": 1}
    if kind == "max":
        kwargs["dilation"] = 2 if d == 2 else 1
    run_case(kind, d, x, layout, kwargs, device, rng)
    run_case(kind, d, x, layout, {"kernel_size": 2, "stride": 2, "ceil_mode": True}, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_wide_rows(kind, d, dtype, device):
    """Rows wide enough for the CPU's vector blocks along W (stride 1 and 2; at
    stride 2 one deinterleaved pair of loads serves two taps), over kernels, pads,
    ceil_mode, NaN/inf and ties, with the last block overlapping the one before."""
    rng = make_rng("wide", kind, d, dtype)
    lead = lambda v: (2,) * (d - 1) + (v,)  # H: 2 rows of each window
    for _ in range(6):
        kernel = rng.randint(2, 6)
        kwargs = {"kernel_size": lead(kernel), "stride": lead(rng.choice([1, 2, 2])),
                  "padding": (0,) * (d - 1) + (rng.randint(0, kernel // 2),), "ceil_mode": rng.random() < 0.5}
        if kind == "max" and rng.random() < 0.3:
            kwargs["dilation"] = (1,) * (d - 1) + (2,)
        shape = (2, 3) + (5,) * (d - 1) + (rng.randint(20, 70),)
        x, layout = random_input(rng, shape, dtype, device, layout="contiguous", specials=0.02,
                                 ties=rng.random() < 0.3)
        run_case(kind, d, x, layout, kwargs, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_cells_past_the_row_never_reach_an_output(kind, d, dtype, device):
    """Stride-2 rows whose last window ends at the row's last cell (the CPU's last
    vector block there loads pairs reaching one cell past a tap's last: past the row
    for odd kernels and dilated taps): rows cut from wider ones whose extra cells
    are NaN, and the same values alone in a tensor of their own (where that cell is
    past the end of the input): both as torch gives."""
    rng = make_rng("past-the-row", kind, d, dtype)
    cases = [(36, 2, 1), (37, 3, 1), (51, 3, 1), (64, 2, 1), (35, 5, 1), (37, 1, 1)]
    if kind == "max":
        cases += [(37, 2, 2), (39, 3, 2)]
    for width, kernel, dilation in cases:
        kwargs = {"kernel_size": (2,) * (d - 1) + (kernel,), "stride": (2,) * d}
        if dilation > 1:
            kwargs["dilation"] = (1,) * (d - 1) + (dilation,)
        shape = (2, 3) + (4,) * (d - 1) + (width,)
        wide, _ = random_input(rng, shape[:-1] + (width + 3,), dtype, device, layout="contiguous",
                               specials=0.0)
        wide[..., width:] = NAN
        x = wide[..., :width]
        run_case(kind, d, x, "strided", kwargs, device, rng)
        run_case(kind, d, x.contiguous(), "contiguous", kwargs, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_max_pool_inference_forward(d, dtype, device):
    """With no gradient to keep (an input that does not require grad, or grad mode
    off), max pooling runs its values-only op, which finds and writes no taps: the
    same bits as the training forward (NaN, infinities, ties; rows long enough for
    the CPU's vector blocks, and at stride 1 for its bfloat16 blocks of 16 outputs
    from pairs of cells; every layout), and a training forward still gets its
    graph. Small planes with many channels (64 of 14x14) go, with few threads,
    through the CPU's channel groups."""
    rng = make_rng("inference", d, dtype)
    name = f"max_pool{d}d"

    cases = ({"kernel_size": 3, "stride": 2, "padding": 1}, {"kernel_size": 2},
             {"kernel_size": 3, "stride": 1, "dilation": 2, "ceil_mode": True},
             {"kernel_size": 3, "stride": 1, "padding": 1}, {"kernel_size": [1] * (d - 1) + [2], "stride": 1})
    with num_threads(min(torch.get_num_threads(), 2)):
        for shape in ((2, 20) + (7, 9, 37)[3 - d:], (8, 64) + (5, 14, 14)[3 - d:]):
            for layout in layouts_for(len(shape)):
                for specials, ties in ((0.05, False), (0.0, True)):
                    values = random_values(rng, shape, dtype, specials=specials, ties=ties)
                    signs = torch.rand(shape, generator=torch_generator(rng)) < 0.5
                    values[(values == 0) & signs] = -0.0  # zeros of both signs tie
                    x = with_layout(values.to(device), layout, rng)
                    for kwargs in cases:
                        expected, _ = ours(name)(x, **kwargs, return_indices=True)
                        assert_same_bits(ours(name)(x, **kwargs), expected)
                        xl = leaf(x)
                        with torch.no_grad():
                            assert_same_bits(ours(name)(xl, **kwargs), expected)
                        out = ours(name)(xl, **kwargs)
                        assert out.grad_fn is not None
                        assert_same_bits(out, expected)
    args = ([3] * d, [2] * d, [1] * d, [1] * d, False, False)
    x = random_values(rng, (2, 20) + (7, 9, 37)[3 - d:], dtype).to(device)
    assert_same_bits(torch.ops.pool_ext._max_pool_values(x, *args), torch.ops.pool_ext.max_pool(x, *args)[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_avg_pool_low_precision_is_float_rounded(d, dtype, device):
    """bfloat16 and float16 average pooling sums and divides in float, then rounds
    once to nearest even: bit for bit our float32 result of the same values
    rounded by torch (infinities, zeros of both signs; NaN where it is NaN, as
    torch's own roundings disagree on NaN's bits), over rows long enough for the
    CPU's vector blocks, which round in registers (W windows whole, with and
    without padding and strides along W)."""
    rng = make_rng("avg-rounding", d, dtype)
    name = f"avg_pool{d}d"
    shape = (2, 20) + (3, 6, 70)[3 - d:]
    cases = ({"kernel_size": 2}, {"kernel_size": 3, "stride": 1},
             {"kernel_size": 3, "stride": 2, "padding": 1},
             {"kernel_size": [1] * (d - 1) + [3], "stride": [1] * (d - 1) + [2]})
    values = random_values(rng, shape, dtype, specials=0.05)
    signs = torch.rand(shape, generator=torch_generator(rng)) < 0.5
    values[(values == 0) & signs] = -0.0
    x = values.to(device)
    for kwargs in cases:
        got = ours(name)(x, **kwargs).cpu()
        expected = ours(name)(x.float(), **kwargs).to(dtype).cpu()
        nan = expected.isnan()
        assert torch.equal(got.isnan(), nan), kwargs
        assert torch.equal(got[~nan].view(torch.int16), expected[~nan].view(torch.int16)), kwargs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_padded_windows_values_forward(kind, d, dtype, device):
    """Forwards of values alone (average; max without grad) whose windows reach into
    padding or, by ceil_mode, past the input: on the CPU, planes with wide rows are
    copied into a padded buffer (-inf for max, 0 for sums) and pooled in vector
    blocks. Bit for bit what the channels-last kernels give on the same values
    (NaN as NaN; windows whose real cells are all -inf at the ends of rows), and
    close to torch."""
    rng = make_rng("padded-windows", kind, d, dtype)
    name = f"{kind}_pool{d}d"
    shape = (2, 3) + (4, 6, 45)[3 - d:]
    if kind == "max":
        cases = ({"kernel_size": 3, "stride": 2, "padding": 1},
                 {"kernel_size": 3, "stride": 1, "padding": 1, "dilation": 2, "ceil_mode": True},
                 {"kernel_size": 4, "stride": 2, "padding": 2, "ceil_mode": True})
    else:
        cases = ({"kernel_size": 3, "stride": 1, "padding": 1},
                 {"kernel_size": 3, "stride": 2, "padding": 1},
                 {"kernel_size": 4, "stride": 2, "padding": 2, "ceil_mode": True, "count_include_pad": False},
                 {"kernel_size": 2, "stride": 2, "padding": 1, "ceil_mode": True})
        if d > 1:
            cases += ({"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "divisor_override": 4},)
    for specials, ends in ((0.05, False), (0.0, True)):
        x = random_values(rng, shape, dtype, specials=specials)
        if ends:
            x[..., :2] = -INF
            x[..., -3:] = -INF
        x = x.to(device)
        x_cl = x.permute(0, *range(2, d + 2), 1).contiguous().permute(0, d + 1, *range(1, d + 1))
        for kwargs in cases:
            with torch.no_grad():
                planes = ours(name)(x, **kwargs)
                channels = ours(name)(x_cl, **kwargs)
                expected = torchs(name)(x.double(), **kwargs)
            assert_equal(planes.contiguous(), channels.contiguous(), msg=str(kwargs))
            assert_close_to_ref(planes, expected, dtype, msg=str(kwargs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_avg_pool_backward_planes_gather_order(d, dtype, device):
    """The average backward of planes (few channels, wide rows: the CPU's vector
    gather, W strides 1 and 2, both parities of padding, partial vectors at both
    ends) gives each cell the sum of its outputs' shares in output order, as the
    channels-last gather does: bit-identical gradients from the two layouts, NaN
    and inf in the output gradient included; and close to torch."""
    rng = make_rng("avg-backward-planes", d, dtype)
    name = f"avg_pool{d}d"
    shape = (2, 3) + (4, 5, 45)[3 - d:]
    cases = ({"kernel_size": 3, "stride": 1, "padding": 1},
             {"kernel_size": 2},
             {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False},
             {"kernel_size": [2] * (d - 1) + [4], "stride": [1] * (d - 1) + [2], "padding": [0] * (d - 1) + [1]},
             {"kernel_size": [1] * (d - 1) + [5], "stride": [2] * (d - 1) + [1], "padding": [0] * (d - 1) + [2],
              "ceil_mode": True})
    x = random_values(rng, shape, dtype).to(device)
    x_cl = x.permute(0, *range(2, d + 2), 1).contiguous().permute(0, d + 1, *range(1, d + 1))
    for kwargs in cases:
        if d == 3:
            kwargs = dict(kwargs, divisor_override=5) if kwargs.get("ceil_mode") else kwargs
        grads = []
        for layout in (x, x_cl):
            xl = leaf(layout)
            out = ours(name)(xl, **kwargs)
            grad_out = random_values(rng, tuple(out.shape), dtype, specials=0.05).to(device)
            if not grads:
                first_grad_out = grad_out
            (grad,) = torch.autograd.grad(out, xl, first_grad_out)
            grads.append(grad)
        assert_equal(grads[0], grads[1], msg=str(kwargs))
        xt = leaf(x.double())
        (expected,) = torch.autograd.grad(torchs(name)(xt, **kwargs), xt, first_grad_out.double())
        assert_close_to_ref(grads[0], expected, dtype, msg=str(kwargs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_channels_last_whole_channel_blocks(kind, d, dtype, device):
    """Channels-last inputs with channels in whole register blocks, whole vectors
    and a rest (43 = 32 + 8 + 3 for float; the random cases have 1 or 2): against
    torch with NaN, inf and ties, padding, dilation and ceil_mode, forward and
    backward; and the same values laid out contiguous give bit-identical outputs,
    indices and gradients."""
    rng = make_rng("channel-blocks", kind, d, dtype)
    shape = (2, 43, 9, 10) if d == 2 else (2, 43, 5, 6, 7)
    second = {"kernel_size": 2, "stride": 1, "dilation": 2} if kind == "max" else \
        {"kernel_size": 2, "stride": 1, "padding": 1, "count_include_pad": False}
    cases = ({"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, second)
    name = f"{kind}_pool{d}d"
    for specials, ties in ((0.05, False), (0.0, True)):
        x, _ = random_input(rng, shape, dtype, device, layout="channels_last", specials=specials, ties=ties)
        for kwargs in cases:
            run_case(kind, d, x, "channels_last", kwargs, device, rng)
            results = [outputs_and_grad(ours(name), layout, return_indices=kind == "max", **kwargs)
                       for layout in (x, x.contiguous())]
            for ours_cl, ours_planes in zip(*results):
                if ours_cl is not None:
                    assert_equal(ours_cl, ours_planes)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("spatial", [(13, 11), (30, 31), (45, 50), (5, 7, 6)], ids=str)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_small_planes_in_channel_groups(kind, spatial, dtype, device):
    """Small planes with channels over several groups (70 = 64 + 6: the CPU forward
    pools such planes 64 channels of a sample at a time, transposed to channels-last),
    from planes with gaps between samples and between channels, over padding,
    dilation, ceil_mode, divisor and "same": against torch, and bit-identical to the
    same values laid out channels-last (outputs, indices, gradients). 30x31 planes:
    the stride-1 average backward goes through planes there, the forward through groups;
    45x50: the forward through groups for 2-byte values only."""
    # The groups need a (sample, group) task per thread: 6 tasks here.
    with num_threads(min(torch.get_num_threads(), 2)):
        rng = make_rng("channel-groups", kind, spatial, dtype)
        base, _ = random_input(rng, (6, 140, *spatial), dtype, device, layout="contiguous", specials=0.05)
        # (one image of 64 channels: a group where the call is too small for threads)
        run_small_planes_in_channel_groups(kind, spatial, (base[:3, :70], base[::2, ::2], base[:1, 6:70]),
                                           device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("spatial", [(13, 11), (7, 7), (5, 7, 6)], ids=str)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_wide_channel_groups(kind, spatial, dtype, device):
    """As test_small_planes_in_channel_groups, for groups wider than 64 channels: on
    2 threads the CPU takes 256 channels of a sample at a time where that leaves
    four tasks a thread (8 samples of 260 channels: groups of 256 and of 4) and the
    group's buffer is small, else 128 (3 samples)."""
    with num_threads(min(torch.get_num_threads(), 2)):
        rng = make_rng("wide-groups", kind, spatial, dtype)
        base, _ = random_input(rng, (8, 264, *spatial), dtype, device, layout="contiguous", specials=0.05)
        run_small_planes_in_channel_groups(kind, spatial, (base[:, :260], base[:3, 2:262]), device, rng)


def run_small_planes_in_channel_groups(kind, spatial, inputs, device, rng):
    d = len(spatial)
    name = f"{kind}_pool{d}d"
    channels_last = torch.channels_last if d == 2 else torch.channels_last_3d
    extra = {"dilation": 2} if kind == "max" else {"count_include_pad": False}
    if kind == "avg" and d == 3:
        extra["divisor_override"] = 5
    # (the third: more output pixels than input pixels)
    cases = [{"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
             {"kernel_size": 2, "stride": 1, **extra}, {"kernel_size": 2, "stride": 1, "padding": 1}]
    for x in inputs:
        for kwargs in cases:
            run_case(kind, d, x, "strided", kwargs, device, rng)
        for kwargs in cases + [{"kernel_size": 3, "stride": 2, "padding": "same"}]:
            results = [outputs_and_grad(ours(name), layout, return_indices=kind == "max", **kwargs)
                       for layout in (x, x.contiguous(memory_format=channels_last))]
            for planes, channels in zip(*results):
                if planes is not None:
                    assert_equal(planes, channels)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("channels", [8, 12, 15])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_small_planes_with_few_channels(kind, channels, dtype, device):
    """8-15 channels of 2d planes up to 14x14 (16x16 for the forward that keeps
    taps) go through one channel group on the CPU where W windows step by 2 or
    more; elsewhere through planes: against torch, and bit-identical to the same
    values channels-last (outputs, indices, gradients)."""
    rng = make_rng("few-channels", kind, channels, dtype)
    name = f"{kind}_pool2d"
    extra = {"count_include_pad": False} if kind == "avg" else {"dilation": (1, 2)}
    cases = [{"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
             {"kernel_size": 3, "stride": 2, "padding": "same"}, {"kernel_size": 3, "stride": 1, "padding": 1},
             {"kernel_size": (2, 3), "stride": (1, 2), **extra}]
    for spatial in ((8, 8), (12, 11), (14, 14), (16, 16)):
        base, _ = random_input(rng, (4, 2 * channels, *spatial), dtype, device, layout="contiguous", specials=0.05)
        for x in (base[:, :channels], base[:, ::2]):
            for kwargs in cases:
                if kwargs.get("padding") != "same":  # (torch has no "same" to compare with)
                    run_case(kind, 2, x, "strided", kwargs, device, rng)
                results = [outputs_and_grad(ours(name), layout, return_indices=kind == "max", **kwargs)
                           for layout in (x, x.contiguous(memory_format=torch.channels_last))]
                for planes, channels_last in zip(*results):
                    if planes is not None:
                        assert_equal(planes, channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_average_backward_of_two_wide_windows_through_planes(d, dtype, device):
    """Average backward of W windows 2 wide at stride 2 over planes (the CPU gathers
    these planes row by row, each pair of cells from one share, each row once for
    all rows that the same outputs cover): odd and even extents, ceil_mode, other H
    and D windows; against torch, and bit-identical to the channels-last layout
    (8 channels: there the channels kernels) for a gradient holding -0, NaN and inf."""
    rng = make_rng("two-wide", d, dtype)
    spatial = {1: [(37,), (64,)], 2: [(66, 70), (35, 37)], 3: [(4, 33, 40), (5, 9, 37)]}[d]
    cases = [{"kernel_size": 2}, {"kernel_size": 2, "ceil_mode": True},
             {"kernel_size": (3,) * (d - 1) + (2,), "stride": (2,) * (d - 1) + (2,), "ceil_mode": True,
              "count_include_pad": False},
             {"kernel_size": (1,) * (d - 1) + (2,), "stride": (3,) * (d - 1) + (2,), "divisor_override": 3}]
    if d == 1:  # (avg_pool1d has no divisor_override)
        cases[-1] = {"kernel_size": 2, "padding": 1, "count_include_pad": False}
    name = f"avg_pool{d}d"
    for size in spatial:
        x, _ = random_input(rng, (2, 8, *size), dtype, device, layout="contiguous", specials=0.05)
        channels_last = x.movedim(1, -1).contiguous().movedim(-1, 1)
        for kwargs in cases:
            run_case("avg", d, x, "contiguous", kwargs, device, rng)
            out = ours(name)(x, **kwargs)
            grad_out = random_values(rng, tuple(out.shape), dtype, specials=0.1,
                                     special_values=(-0.0, NAN, INF, -INF)).to(device)
            grads = []
            for layout in (x, channels_last):
                xl = leaf(layout)
                (grad,) = torch.autograd.grad(ours(name)(xl, **kwargs), xl, grad_out)
                grads.append(grad)
            assert_same_bits(grads[0], grads[1], msg=str(kwargs))


def test_max_backward_of_a_window_with_no_cell():
    """Dilation can step a window over the whole input: its output has no cell to
    send its gradient to, and the backward must not write one (it once wrote past
    the plane, into the next one)."""
    x = torch.randn(2, 1, 2, dtype=torch.float64, requires_grad=True)
    out = ours("max_pool1d")(x, 2, padding=1, dilation=3)
    assert out.shape == (2, 1, 1)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert_equal(grad, torch.zeros_like(x))
    x = torch.randn(1, 2, 1, 2).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = ours("max_pool2d")(x, (1, 2), padding=(0, 1), dilation=(1, 3))
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert_equal(grad, torch.zeros_like(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_few_channels_last_in_chunks(kind, d, dtype, device):
    """Channels-last inputs of 2 to 7 channels, which the CPU pools as planes a
    chunk of samples (8 MB) at a time (here several chunks, most cases ending
    on a short one), and such inputs of one pixel, whose channels-last and
    planes orders are one: torch's values, indices and gradients."""
    rng = make_rng("few-channels", kind, d, dtype)
    spatial = (560, 560) if d == 2 else (12, 220, 220)
    for channels, kwargs in ((3, {"kernel_size": 3, "stride": 2, "padding": 1}), (5, {"kernel_size": 2})):
        x, _ = random_input(rng, (5, channels) + spatial, dtype, device, layout="channels_last",
                            specials=0.0, ties=False)
        run_case(kind, d, x, "channels_last", kwargs, device, rng)
    for channels in (2, 7):
        x, _ = random_input(rng, (2, channels) + (1,) * d, dtype, device, layout="channels_last")
        run_case(kind, d, x, "channels_last", {"kernel_size": 1}, device, rng)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("op, args", [
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("max_pool2d", dict(kernel_size=2, stride=2, padding=1, dilation=2, ceil_mode=True)),
    ("adaptive_max_pool2d", dict(output_size=(100, 90))),
    ("adaptive_avg_pool2d", dict(output_size=(100, 90))),
    ("max_pool3d", dict(kernel_size=3, stride=2, padding=1)),
    ("adaptive_avg_pool3d", dict(output_size=(7, 30, 20))),
], ids=["max-3x3s2", "max-dilated", "adaptive-max", "adaptive-avg", "max-3d", "adaptive-avg-3d"])
def test_backward_of_planes_over_a_band(op, args, dtype):
    """Low-precision planes of over 2**20 cells sum their backward in a band
    of float rows (3d: slices) moved down the plane: windows across the
    band's moves, rows no window reaches, windows starting in padding.
    Against float64."""
    g = torch.Generator().manual_seed(5)
    shape = (1, 2, 40, 200, 160) if op.endswith("3d") else (2, 2, 1100, 1000)
    x = torch.randn(shape, generator=g).to(dtype)
    xq = x.clone().requires_grad_()
    out = ours(op)(xq, **args)
    # Integer gradients: every partial sum is exact, in any order.
    grad = torch.randint(-8, 9, out.shape, generator=g).to(dtype)
    out.backward(grad)
    x64 = x.double().requires_grad_()
    torchs(op)(x64, **args).backward(grad.double())
    torch.testing.assert_close(xq.grad.double(), x64.grad, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("kernel, padding, shape", [
    (65537, 32768, (1, 2, 3, 4)),
    (2**31 - 1, 2**30 - 1, (1, 1, 3, 3)),
    (4097, 2048, (2, 3, 5, 6)),
], ids=["65537", "2**31-1", "4097"])
def test_kernels_far_past_the_input(kernel, padding, shape):
    """Windows of far more taps than the input has cells (torch takes them):
    the max backward computes each tap's offset rather than tabulating all
    (a 65537x65537 kernel's table would be 34 GB)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got, want = leaf(x), leaf(x)
    out, idx = ours("max_pool2d")(got, kernel, 1, padding, return_indices=True)
    ref, ref_idx = torchs("max_pool2d")(want, kernel, 1, padding, return_indices=True)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out.backward(grad)
    ref.backward(grad)
    assert_equal(out, ref)
    assert_equal(idx, ref_idx)
    assert_equal(got.grad, want.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_max_pool_with_indices(d, device):
    """max_pool{d}d_with_indices, as torch.nn.functional's (see check_with_indices)."""
    rng = make_rng("with_indices", d)
    for _ in range(CASES_PER_SEED):
        shape, kwargs = random_fixed_case(rng, "max", d)
        args = (kwargs["kernel_size"], kwargs.get("stride"), kwargs["padding"], kwargs["dilation"],
                kwargs["ceil_mode"])  # positionally: return_indices comes after them all
        x, _ = random_input(rng, shape, torch.float32, device)
        check_with_indices(f"max_pool{d}d", x, args, rng)
    with pytest.raises(RuntimeError, match=f"max_pool{d}d"):
        ours(f"max_pool{d}d_with_indices")(torch.randn((1, 2) + (4,) * d, device=device), 0)
