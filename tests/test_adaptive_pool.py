"""adaptive_max_pool1d/2d/3d and adaptive_avg_pool1d/2d/3d against torch.nn.functional.

Randomized input and output sizes (outputs larger than the input, sizes that do
not divide, None entries), every dtype and layout, unbatched inputs, empty
batches, NaN/inf, indices and gradients.
"""

import itertools
import math

import pytest
import torch

from pool_testing import (
    DEVICES, DTYPE_IDS, DTYPES, INF, NAN, TORCH_CPU_3D_CONTIGUOUS_ONLY, adaptive_window, assert_close_to_ref,
    assert_equal, assert_same_bits, assert_same_format, check_max_indices, check_with_indices, expected_max_indices,
    inputs_in_every_layout, is_batched, leaf, make_rng, num_threads, order_revealing, over_kinds_and_inputs,
    ours, outputs_and_grad, random_grad, random_input, random_values, scatter_grad, to_strided, torch_accepts,
    torch_generator, torch_reference, torchs,
)

CASES_PER_SEED = 12
SEEDS = range(5)
MAX_SIZE = {1: 12, 2: 8, 3: 5}


def random_adaptive_case(rng, kind, d):
    """(input shape, output_size argument, resolved output sizes) that torch accepts."""
    fn = torchs(f"adaptive_{kind}_pool{d}d")
    for _ in range(200):
        spatial = [rng.randint(1, MAX_SIZE[d]) for _ in range(d)]
        out = [rng.randint(1, s + 3) for s in spatial]
        r = rng.random()
        if r < 0.2:
            out = [out[0]] * d
            arg = out[0]
        elif r < 0.4 and d > 1:
            arg = tuple(None if rng.random() < 0.5 else o for o in out)
            out = [s if a is None else a for s, a in zip(spatial, arg)]
        else:
            arg = tuple(out) if rng.random() < 0.7 else list(out)
        batch = rng.choices([(), (0,), (1,), (2,), (3,)], weights=[3, 2, 4, 6, 5])[0]
        shape = (*batch, rng.randint(1, 3), *spatial)
        if torch_accepts(fn, torch.zeros(shape, dtype=torch.float64), arg):
            return shape, arg, out
    raise AssertionError("no valid configuration drawn")


def check_adaptive_max(d, x, output_size, out_sizes, device, rng):
    name = f"adaptive_max_pool{d}d"
    x_cpu = to_strided(x, device="cpu")
    (ref_out, ref_idx), format_comparable = torch_reference(torchs(name), x_cpu, output_size, return_indices=True)

    xl = leaf(x)
    out, idx = ours(name)(xl, output_size, return_indices=True)
    assert out.device == x.device and idx.device == x.device
    assert_equal(out, ref_out)
    assert_equal(ours(name)(x, output_size), ref_out)
    if is_batched(x, d) and format_comparable and name not in TORCH_CPU_3D_CONTIGUOUS_ONLY:
        assert_same_format(out, ref_out)
        assert_same_format(idx, ref_idx)
    window = adaptive_window(list(x.shape[-d:]), out_sizes)
    check_max_indices(x_cpu, out, ref_out, idx, ref_idx, d, window)

    grad_out = random_grad(rng, out)
    (grad,) = torch.autograd.grad(out, xl, grad_out)
    expected = scatter_grad(grad_out, expected_max_indices(ref_out, ref_idx, idx), x.shape, d)
    assert_close_to_ref(grad, expected, x.dtype)

    if x.device.type != "cpu":
        out_cpu, idx_cpu = ours(name)(x_cpu, output_size, return_indices=True)
        assert_equal(out, out_cpu)
        assert_equal(idx, idx_cpu)


def check_adaptive_avg(d, x, output_size, out_sizes, device, rng):
    name = f"adaptive_avg_pool{d}d"
    x64 = leaf(to_strided(x, torch.float64, "cpu"))
    ref = torchs(name)(x64, output_size)

    xl = leaf(x)
    out = ours(name)(xl, output_size)
    assert out.device == x.device
    assert out.shape == ref.shape
    assert_close_to_ref(out, ref.detach(), x.dtype)
    if is_batched(x, d) and name not in TORCH_CPU_3D_CONTIGUOUS_ONLY:
        assert_same_format(out, ref)

    grad_out = random_grad(rng, out)
    (grad,) = torch.autograd.grad(out, xl, grad_out)
    (expected,) = torch.autograd.grad(ref, x64, grad_out.cpu().double())
    assert_close_to_ref(grad, expected, x.dtype)

    if x.device.type != "cpu":
        rtol, atol = (1e-5, 1e-5) if x.dtype in (torch.float32, torch.float64) else (1e-2, 1e-2)
        out_cpu = ours(name)(to_strided(x, device="cpu"), output_size)
        torch.testing.assert_close(out.cpu(), out_cpu, rtol=rtol, atol=atol, equal_nan=True)


CHECKS = {"max": check_adaptive_max, "avg": check_adaptive_avg}


def run_case(kind, d, x, layout, output_size, out_sizes, device, rng):
    try:
        CHECKS[kind](d, x, output_size, out_sizes, device, rng)
    except AssertionError as e:
        raise AssertionError(
            f"adaptive_{kind}_pool{d}d input {tuple(x.shape)} {x.dtype} layout={layout} strides={x.stride()} "
            f"output_size={output_size}:\n{e}"
        ) from e


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_against_torch(seed, kind, d, dtype, device):
    rng = make_rng("adaptive", kind, d, dtype, seed)
    for _ in range(CASES_PER_SEED):
        shape, output_size, out_sizes = random_adaptive_case(rng, kind, d)
        x, layout = random_input(rng, shape, dtype, device)
        run_case(kind, d, x, layout, output_size, out_sizes, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_output_larger_and_not_dividing(kind, d, device):
    rng = make_rng("larger", kind, d)
    for in_size, out_size in ((3, 7), (5, 3), (7, 2), (4, 4), (1, 3), (6, 1)):
        x, _ = random_input(rng, (2, 3) + (in_size,) * d, torch.float32, device, layout="contiguous", specials=0)
        assert ours(f"adaptive_{kind}_pool{d}d")(x, out_size).shape == (2, 3) + (out_size,) * d
        run_case(kind, d, x, "contiguous", out_size, [out_size] * d, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_none_keeps_input_size(kind, d, device):
    rng = make_rng("none", kind, d)
    spatial = (5, 6, 7)[:d]
    x, _ = random_input(rng, (2, 3, *spatial), torch.float32, device, layout="contiguous", specials=0)
    for output_size in ((None,) * d, (None, 3, 2)[:d], (2, None, 3)[:d]):
        out_sizes = [s if o is None else o for s, o in zip(spatial, output_size)]
        out = ours(f"adaptive_{kind}_pool{d}d")(x, output_size)
        assert list(out.shape[2:]) == out_sizes
        run_case(kind, d, x, "contiguous", output_size, out_sizes, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_zero_output_size(kind, d, device):
    """torch returns an empty result for a zero output size; so must we."""
    x = torch.randn((2, 3) + (4,) * d, device=device)
    output_size = (0,) + (2,) * (d - 1)
    ref = torchs(f"adaptive_{kind}_pool{d}d")(x.cpu(), output_size)
    out = ours(f"adaptive_{kind}_pool{d}d")(leaf(x), output_size)
    assert out.shape == ref.shape and out.numel() == 0
    out.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_empty_spatial_dims(kind, d, device):
    """An empty spatial dim: torch's global average (a mean) gives NaN and an
    empty gradient, as ours; any other adaptive pooling of it raises in both."""
    name = f"adaptive_{kind}_pool{d}d"
    for shape in ((2, 3, 0) + (4,) * (d - 1), (3,) + (4,) * (d - 1) + (0,), (2, 0, 0) + (4,) * (d - 1),
                  (2, 3) + (1,) * (d - 1) + (0,)):
        for output_size in (1, (1,) * d, 2, (None,) + (1,) * (d - 1), (1,) * (d - 1) + (None,)):
            x = torch.randn(shape)
            if not torch_accepts(torchs(name), x, output_size):
                with pytest.raises(RuntimeError, match=name):
                    ours(name)(x.to(device), output_size)
                continue
            ref, _, ref_grad = outputs_and_grad(torchs(name), x, output_size)
            out, _, grad = outputs_and_grad(ours(name), x.to(device), output_size)
            assert_equal(out, ref)
            assert grad.shape == ref_grad.shape and grad.numel() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_empty_batch_and_unbatched(kind, d, device):
    rng = make_rng("empty", kind, d)
    fn = ours(f"adaptive_{kind}_pool{d}d")
    x = torch.randn((0, 3) + (5,) * d, device=device)
    assert fn(x, 3).shape == (0, 3) + (3,) * d
    run_case(kind, d, x, "contiguous", 3, [3] * d, device, rng)
    x, _ = random_input(rng, (3,) + (5,) * d, torch.float32, device, layout="contiguous", specials=0)
    assert_equal(fn(x, 2), fn(x.unsqueeze(0), 2).squeeze(0))
    run_case(kind, d, x, "contiguous", 2, [2] * d, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_empty_channels(kind, d, device):
    """torch pools an empty channel dim where it leads (unbatched) and, batched, in
    adaptive_avg_pool1d/2d; elsewhere it raises. So do we, and our backward runs."""
    name = f"adaptive_{kind}_pool{d}d"
    for shape in ((0,) + (5,) * d, (2, 0) + (5,) * d):
        try:
            ref = torchs(name)(torch.randn(shape), 3)
        except RuntimeError:
            with pytest.raises(RuntimeError, match=name):
                ours(name)(torch.randn(shape, device=device), 3)
            continue
        x = leaf(torch.randn(shape, device=device))
        out = ours(name)(x, 3)
        assert out.shape == ref.shape and out.device == x.device
        out.sum().backward()
        assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_global_pooling_of_large_windows(kind, d, device):
    """Windows of more than 256 cells (saved positions no longer fit in a byte)."""
    rng = make_rng("global", kind, d)
    size = {1: 300, 2: 19, 3: 7}[d]
    for layout in ("contiguous", "channels_last") if d > 1 else ("contiguous",):
        x, _ = random_input(rng, (2, 3) + (size,) * d, torch.float32, device, layout=layout, specials=0)
        run_case(kind, d, x, layout, 1, [1] * d, device, rng)
        run_case(kind, d, x, layout, 2, [2] * d, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, layout", [
    ((1, 1, 100_000), "contiguous"),
    ((2, 16, 1000, 1000), "contiguous"),
    ((2, 5, 1000, 1000), "contiguous"),
    ((2, 16, 300, 300), "channels_last"),
    ((2, 16, 40, 40, 40), "contiguous"),
    ((2, 2, 70000), "expanded"),
    ((2, 3, 300, 300), "strided"),
], ids=str)
def test_global_average_as_accurate_as_torch(shape, layout, device):
    """torch's global average pooling is a mean, summed by cascade: over a
    long plane ours stays as close to the exact mean (one running sum per
    plane drifted 6e-5 over 1e5 cells of one value, 1e-5 over 300x300, 1e-3
    over 70000 cells of a stride-0 plane)."""
    g = torch.Generator().manual_seed(len(shape) + shape[1])
    x = torch.rand(shape, generator=g) if shape[1] > 1 else torch.full(shape, 1.2345678)
    if layout == "expanded":  # each plane one value, at stride 0
        x = x[..., :1].expand(shape)
    elif layout == "strided":  # every other cell of every other row
        x = torch.rand(shape[:2] + (2 * shape[2], 2 * shape[3]), generator=g)[..., ::2, ::2]
    if layout in ("contiguous", "channels_last"):
        x = x.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    x = to_strided(x, device=device)
    d = len(shape) - 2
    exact = x.double().mean(tuple(range(2, 2 + d)), keepdim=True)
    got = ours(f"adaptive_avg_pool{d}d")(x, 1).double()
    want = torchs(f"adaptive_avg_pool{d}d")(x, 1).double()
    ours_err = ((got - exact) / exact).abs().max().item()
    torch_err = ((want - exact) / exact).abs().max().item()
    assert ours_err <= max(4 * torch_err, 3e-7), (ours_err, torch_err)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_max_of_rows_of_every_length(dtype, device):
    """A max over rows of 1 to 40 cells and of lengths about multiples of 64,
    whole (global), in halves and thirds and in windows of about 3 cells,
    with a max, NaN, inf, -inf or a zero of either sign at every position:
    the CPU reduces windows of a vector or more a vector at a time, its tail
    a last vector overlapping cells already seen, and shorter ones cell by
    cell; it finds the max's position by blocks of 64 cells, the last one's
    tail vector starting in the block before where it is short. torch's
    values (bits, NaN included) and indices, with and without indices asked
    for."""
    g = torch.Generator().manual_seed(0)
    for length in [*range(1, 41), 63, 64, 65, 66, 71, 72, 73, 127, 129, 135, 200]:
        base = torch.randn(length, generator=g).to(dtype)
        rows = [base]
        for p in range(length):
            for v in (100.0, NAN, INF, -INF):
                r = base.clone()
                r[p] = v
                rows.append(r)
            for fill, zero in ((-1.0, 0.0), (-1.0, -0.0), (-0.0, 0.0), (0.0, -0.0)):
                r = torch.full((length,), fill, dtype=dtype)
                r[p] = zero
                rows.append(r)
        x = torch.stack(rows).unsqueeze(0).to(device)
        want, want_idx = torchs("adaptive_max_pool1d")(x.cpu(), 1, return_indices=True)
        got, idx = ours("adaptive_max_pool1d")(x, 1, return_indices=True)
        assert_same_bits(got.cpu(), want, f"length {length}")
        assert torch.equal(idx.cpu(), want_idx), f"length {length}"
        assert_same_bits(ours("adaptive_max_pool1d")(x, 1).cpu(), want, f"length {length}, values only")
        for out in sorted({2, 3, max(1, length // 3)}):  # windows of half, a third, 3 cells
            want, want_idx = torchs("adaptive_max_pool1d")(x.cpu(), out, return_indices=True)
            got, idx = ours("adaptive_max_pool1d")(x, out, return_indices=True)
            assert_same_bits(got.cpu(), want, f"length {length} to {out}")
            assert torch.equal(idx.cpu(), want_idx), f"length {length} to {out}"
            assert_same_bits(ours("adaptive_max_pool1d")(x, out).cpu(), want, f"length {length} to {out}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("spatial", [(8,), (9,), (3, 3), (4, 4), (7, 7), (5, 13), (16, 16), (17, 16),
                                     (2, 2, 2), (2, 3, 5), (4, 8, 8)])
def test_global_max_of_dense_planes_eight_at_a_time(spatial, dtype):
    """The CPU's global max of small dense planes (a vector to 256 cells) takes
    eight channels of a sample at a time, the channels past the last eight one
    by one; planes whose max is NaN or a zero, or whose position is asked for,
    go by the one-plane rule. torch's values (bits) and indices, alone and in
    a batch, on one thread or two, with ties, NaN, infinities, zeros of either
    sign and all -inf planes; and torch's gradient."""
    d = len(spatial)
    g = torch.Generator().manual_seed(len(spatial) * 100 + spatial[-1])
    cells = math.prod(spatial)
    channels = 21  # two groups of eight, and five channels after them
    x = torch.randint(-3, 4, (3, channels, *spatial), generator=g).to(dtype)  # many ties
    flat = x.view(3, channels, cells)
    flat[0, 1] = -torch.inf
    flat[0, 2, [cells // 3, cells - 1]] = torch.nan
    flat[1, 3, 0] = torch.nan
    flat[1, 4] = -1.0
    flat[1, 4, [1, cells - 2]] = torch.tensor([-0.0, 0.0], dtype=dtype)
    flat[2, 5] = -0.0
    flat[2, 5, cells // 2] = 0.0
    flat[2, 9, [0, cells - 1]] = torch.inf
    # The max in the last cell (past the last whole vector's start, where cells are not a
    # multiple of 8) and in the first, in the groups of eight and after them.
    flat[2, 10, cells - 1] = flat[2, 18, cells - 1] = 7.0
    flat[0, 14, 0] = flat[0, 19, 0] = 7.0
    for inp in (x, x[1:2]):
        want, want_idx = torchs(f"adaptive_max_pool{d}d")(inp, 1, return_indices=True)
        for n in (1, 2):
            with num_threads(n):
                got, idx = ours(f"adaptive_max_pool{d}d")(inp, 1, return_indices=True)
                assert_same_bits(got, want, f"{list(inp.shape)}, {n} threads")
                assert torch.equal(idx, want_idx)
                assert_same_bits(ours(f"adaptive_max_pool{d}d")(inp, 1), want, "values only")
    # The backward of contiguous planes: zeros over blocks of planes, then each plane's cell.
    grad = torch.randn((3, channels) + (1,) * d, generator=g).to(dtype)
    grad[0, 4] = -0.0
    for n in (1, 2):
        with num_threads(n):
            xs = [x.detach().clone().requires_grad_() for _ in range(2)]
            ours(f"adaptive_max_pool{d}d")(xs[0], 1).backward(grad)
            torchs(f"adaptive_max_pool{d}d")(xs[1], 1).backward(grad)
            torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=0, atol=0)
            assert not torch.signbit(xs[0].grad[0, 4]).any()  # 0 + -0: the gather's sum


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", [(3, 100, 16, 16), (40, 100, 4, 4)])
def test_global_pooling_of_contiguous_planes_split_among_threads(shape, dtype):
    """Enough contiguous planes that two threads split them mid-sample: the
    global max forward (eight channels at a time), its backward and the
    average's (blocks of planes) give torch's values, indices and gradients,
    and the same bits as one thread."""
    g = torch.Generator().manual_seed(shape[-1])
    x = torch.randint(-20, 21, shape, generator=g).to(dtype)  # ties
    grad = torch.randn(shape[:2] + (1, 1), generator=g).to(dtype)
    want, want_idx = torchs("adaptive_max_pool2d")(x, 1, return_indices=True)
    results = []
    for n in (2, 1):
        with num_threads(n):
            got, idx = ours("adaptive_max_pool2d")(x, 1, return_indices=True)
            assert_same_bits(got, want, f"{n} threads")
            assert torch.equal(idx, want_idx)
            grads = []
            for kind in ("max", "avg"):
                xs = [x.clone().requires_grad_() for _ in range(2)]
                ours(f"adaptive_{kind}_pool2d")(xs[0], 1).backward(grad)
                torchs(f"adaptive_{kind}_pool2d")(xs[1], 1).backward(grad)
                torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=0, atol=0)
                grads.append(xs[0].grad)
            results.append(grads)
    for two, one in zip(*results):
        assert_same_bits(two, one, "gradients on 2 and 1 threads")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("planes", ["long", "short"])
def test_global_max_of_channels_last_planes(planes, d, dtype):
    """Channels-last global max pooling by the global channels kernel (a vector
    of channels at a time): of long planes, whose pixels are cut into chunks
    where samples are few, and of short ones with up to 64 channels. torch's
    values and indices (NaN, ties, all -inf channels), alone or in a batch, on
    one thread or two; and torch's gradient, alone or in a batch."""
    g = torch.Generator().manual_seed(d)
    if planes == "long":
        spatial, channels = {1: (5000,), 2: (61, 67), 3: (9, 21, 23)}[d], 85
    else:
        spatial, channels = {1: (300,), 2: (13, 17), 3: (3, 5, 7)}[d], 40
    cells = math.prod(spatial)
    x = torch.randint(-3, 4, (1, channels, *spatial), generator=g).to(dtype)  # many ties
    x[0, 5] = -torch.inf
    x[0, 6].view(-1)[[cells // 50, cells * 2 // 5]] = torch.nan
    x[0, 7].view(-1)[-1] = torch.nan
    x[0, 8].view(-1)[[3, cells * 4 // 5]] = torch.inf
    x = x.movedim(1, -1).contiguous().movedim(-1, 1)  # channels-last
    batch = x.expand(5, *x.shape[1:]).movedim(1, -1).contiguous().movedim(-1, 1)
    want, want_idx = torchs(f"adaptive_max_pool{d}d")(x.contiguous(), 1, return_indices=True)
    for n in (1, 2):
        with num_threads(n):
            for inp, pick in ((x, slice(None)), (batch, slice(3, 4))):
                got, idx = ours(f"adaptive_max_pool{d}d")(inp, 1, return_indices=True)
                torch.testing.assert_close(got[pick], want, rtol=0, atol=0, equal_nan=True)
                assert torch.equal(idx[pick], want_idx)
                values = ours(f"adaptive_max_pool{d}d")(inp, 1)
                torch.testing.assert_close(values[pick], want, rtol=0, atol=0, equal_nan=True)
    # The backward: zeros, and each channel's gradient at its winner (-0 as +0, as the gather sums).
    grad = torch.randn(want.shape, generator=g).to(dtype)
    grad[0, 9] = -0.0
    xs = [x.detach().clone().requires_grad_(), x.detach().contiguous().requires_grad_()]
    ours(f"adaptive_max_pool{d}d")(xs[0], 1).backward(grad)
    torchs(f"adaptive_max_pool{d}d")(xs[1], 1).backward(grad)
    assert xs[0].grad.stride() == x.stride()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=0, atol=0)
    assert not torch.signbit(xs[0].grad[0, 9]).any()
    # A batch, whose samples' zeros are each filled just before their cells are
    # written where there are samples enough for the threads.
    grad = torch.randn((5, *want.shape[1:]), generator=g).to(dtype)
    for n in (1, 2):
        with num_threads(n):
            xs = [batch.detach().clone().requires_grad_(), batch.detach().contiguous().requires_grad_()]
            ours(f"adaptive_max_pool{d}d")(xs[0], 1).backward(grad)
            torchs(f"adaptive_max_pool{d}d")(xs[1], 1).backward(grad)
            assert xs[0].grad.stride() == batch.stride()
            torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_global_average_split_among_threads_changes_no_bit(dtype):
    """A channels-last global average with few (sample, 64-channel block)
    pairs cuts each plane into chunks for the threads to share, joined as one
    pass would add them: a sample alone or in a batch (cut less, or not at all),
    on one, two or eight threads, gives the same bits (odd pixel and channel
    counts leave a partial last chunk and block). Inputs whose pixels lie at
    equal steps sum in torch's order instead: here views of all rows but the
    last, whose pixels do not."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(1, 85, 302, 299, generator=g).to(dtype)
    x[0, 3, 100:200] = torch.nan
    x = x.contiguous(memory_format=torch.channels_last)
    batch = x.expand(9, *x.shape[1:]).contiguous(memory_format=torch.channels_last)
    x, batch = x[:, :, :, :-1], batch[:, :, :, :-1]
    runs = []
    for n in (1, 2, 8):  # 8: ten chunks a plane, which only a cascade joins as one pass does
        with num_threads(n):
            runs += [ours("adaptive_avg_pool2d")(x, 1), ours("adaptive_avg_pool2d")(batch, 1)[4:5]]
    for run in runs[1:]:
        torch.testing.assert_close(run, runs[0], rtol=0, atol=0, equal_nan=True)
    exact = x.double().mean((2, 3), keepdim=True)
    torch.testing.assert_close(runs[0].double(), exact, rtol=1e-6 if dtype != torch.bfloat16 else 8e-3,
                               atol=0, equal_nan=True)


@pytest.mark.parametrize("layout", ["planes", "channels_last"])
@pytest.mark.parametrize("channels", [1, 8, 300])
def test_global_average_of_a_constant_is_as_close_as_torch(channels, layout):
    """float32 planes of 128-1023 cells of one value (below the cascades'
    length): the mean within 4e-7 of the value, as torch's is (one chain of adds
    per lane drifted 1.4e-6, one per channel of a channels-last input 7.6e-6):
    planes one at a time and eight at once; channels in registers (8) and
    streamed (300); 1d sequences with channels innermost too."""
    want = torch.tensor(3.1, dtype=torch.float32).double()
    for length in (128, 255, 500, 991, 1023):
        x = torch.full((2, channels, length), 3.1)
        if layout == "channels_last":
            x = x.transpose(1, 2).contiguous().transpose(1, 2)
        got = ours("adaptive_avg_pool1d")(x, 1).double()
        assert ((got - want).abs() / want).max() < 4e-7, (length, got.flatten()[0].item())
        x2 = torch.full((2, channels, 1, length), 3.1)
        if layout == "channels_last":
            x2 = x2.contiguous(memory_format=torch.channels_last)
        got = ours("adaptive_avg_pool2d")(x2.view(2, channels, 3, -1) if length % 3 == 0 else x2, 1)
        assert ((got.double() - want).abs() / want).max() < 4e-7, (length, got.flatten()[0].item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("spatial", [(5, 7), (9, 11), (13, 17), (24, 25)])
def test_long_channels_last_average_windows_sum_alike_in_registers_and_streamed(spatial, dtype):
    """A channels-last average window sums in one order (from 128 taps by
    blocks of taps) both where a few channels go through vector registers (in
    the channels kernels, or for global pooling of up to 64 channels the
    global one, several samples at a time: 6 = 4 + 2) and where many are
    streamed tap by tap: the same bits for the same channel. Global pooling
    of many channels from 128 pixels takes the global kernel too, 64
    channels at a time; the variable op, whose windows never take it, gives
    the streamed sums there. (Global averages of pixels at equal steps, and
    variable ones, sum in torch's order instead, test_global_average_of_
    channels_last_is_torchs_bit_for_bit: here a view of all columns but the
    last, whose streamed sums are those of avg_pool2d over the whole plane.)"""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 1031, *spatial, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)

    def view(t, output_size):
        return t[..., :-1] if output_size == 1 else t

    for output_size in (1, (1, 2), (2, 3)):
        y = view(x, output_size)
        if output_size == 1:
            streamed = ours("avg_pool2d")(y, y.shape[2:])
        else:
            full = torch.tensor([list(y.shape[2:])] * y.shape[0])
            streamed = ours("variable_avg_pool2d")(y, output_size, full)
        assert_equal(ours("adaptive_avg_pool2d")(y, output_size), streamed)
        for channels in (8, 11, 16, 24, 40, 64):
            few = view(x[:, :channels].contiguous(memory_format=torch.channels_last), output_size)
            assert_equal(ours("adaptive_avg_pool2d")(few, output_size), streamed[:, :channels])


@pytest.mark.parametrize("d", [2, 3])
def test_adaptive_average_of_small_planes_changes_no_bit_with_threads(d):
    """Small planes of a batch of few samples (too few 64-channel groups to
    keep every thread busy), which the CPU could pool through planes on some
    thread counts and through channel groups on others, summing a window in
    another order: one, two and eight threads give the same bits."""
    g = torch.Generator().manual_seed(3)
    shape, out = ((1, 17, 18, 6), (8, 2)) if d == 2 else ((1, 17, 18, 2, 3), (8, 1, 2))
    x = torch.randn(shape, generator=g)
    runs = []
    for n in (1, 2, 8):
        with num_threads(n):
            runs.append(ours(f"adaptive_avg_pool{d}d")(x, out))
    for run in runs[1:]:
        assert_equal(run, runs[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_average_of_negative_zeros_is_positive_zero(d, dtype, device):
    """torch's sums start from +0, so a window of -0 averages to +0: the same
    in each of our averaging paths (global planes eight at a time, long
    planes by cascade, channels-last, small windows)."""
    for spatial in (7, 2, 40, 1100 if d == 1 else 33):
        for layout in ("contiguous", "channels_last") if d > 1 else ("contiguous",):
            x = torch.full((2, 64) + (spatial,) * d, -0.0, dtype=dtype, device=device)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last if d == 2 else torch.channels_last_3d)
            for output_size in (1, 3):
                want = torchs(f"adaptive_avg_pool{d}d")(x.cpu().contiguous(), output_size)
                got = ours(f"adaptive_avg_pool{d}d")(x, output_size)
                assert not torch.signbit(want).any()
                assert not torch.signbit(got).any(), (spatial, layout, output_size)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_signs_of_zero_gradients_as_torch(d, dtype, device):
    """A -0 gradient of a global average stays -0 in every cell, as torch's
    mean's (grad / cells) does, in every layout, of one cell too; other
    averages' gradients sum from +0, as torch's do (zeros, each term added),
    fixed ones whose one window covers the input too. Variable global averages: -0 in each sample's extent (as the per-sample
    mean's), +0 in the padding."""

    def signs(name, x, reference, *args):
        """The signs of the gradients of torch's name(reference, *args) and of
        ours of name(x, *args) for a -0 grad_output."""
        result = []
        for module, inp in ((torchs, reference), (ours, x.to(device))):
            inp = inp.detach().requires_grad_()
            out = module(name)(inp, *args)
            (grad,) = torch.autograd.grad(out, inp, torch.full_like(out, -0.0))
            result.append(torch.signbit(grad).cpu())
        return result

    for spatial, output_size in ((7, 1), (1, 1), (40, 1), (7, 3), (6, 2)):
        layouts = ("contiguous", "channels_last", "few_channels_last") if d > 1 else ("contiguous",)
        for layout in layouts:
            x = torch.randn((2, 3 if layout == "few_channels_last" else 16) + (spatial,) * d, dtype=dtype)
            if layout != "contiguous":
                x = x.contiguous(memory_format=torch.channels_last if d == 2 else torch.channels_last_3d)
            want, got = signs(f"adaptive_avg_pool{d}d", x, x, output_size)
            assert torch.equal(got, want), (spatial, output_size, layout)
            assert want.all() == (output_size == 1)
    # Fixed averages whose one window covers the input (a 7x7 head, run on
    # the global kernels) sum from +0, as torch's avg_pool.
    for spatial in (7, 5):
        x = torch.randn((2, 16) + (spatial,) * d, dtype=dtype)
        # (torch's CPU avg_pool3d has no bfloat16: its signs in float32)
        want, got = signs(f"avg_pool{d}d", x, x.float(), spatial)
        assert torch.equal(got, want) and not want.any(), spatial
    x = torch.randn((3, 4) + (6,) * d, dtype=dtype, device=device, requires_grad=True)
    sizes = torch.tensor([[6] * d, [1] * d, [2, 5, 3][:d]], device=device)
    out = ours(f"variable_avg_pool{d}d")(x, 1, sizes)
    (grad,) = torch.autograd.grad(out, x, torch.full_like(out, -0.0))
    for n, extent in enumerate(sizes.tolist()):
        inside = torch.zeros((6,) * d, dtype=torch.bool)
        inside[tuple(slice(0, e) for e in extent)] = True
        assert torch.equal(torch.signbit(grad[n]).cpu(), inside.expand(4, *inside.shape)), extent


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [2, 3])
def test_global_average_of_any_leading_dims(d, device):
    """torch's adaptive_avg_pool2d/3d to one cell is a mean over the last d dims,
    which takes any dims before them (video frames (N, T, C, H, W), a lone
    (H, W) image); other output sizes, and adaptive max pooling, need
    (C, *S) or (N, C, *S). Ours likewise: values, shapes and gradients."""
    name = f"adaptive_avg_pool{d}d"
    rng = make_rng("leading", d)
    for spatial in ((5, 4, 3)[:d], (1, 4, 3)[:d]):
        for lead in ((), (2, 3, 4), (2, 1, 2, 3), (0, 3, 2), (3, 0), (2, 3, 0, 2)):
            if len(lead) + d in (d + 1, d + 2):
                continue
            base, _ = random_input(rng, lead + spatial, torch.float64, "cpu", layout="contiguous", specials=0)
            inputs = [base, base.transpose(0, -1).contiguous().transpose(0, -1)]
            if base.dim() == 5:
                inputs.append(base.contiguous(memory_format=torch.channels_last_3d))
            for x in inputs:
                for output_size in (1, (1,) * d, (None,) + (1,) * (d - 1)):
                    try:
                        ref, _, ref_grad = outputs_and_grad(torchs(name), x, output_size)
                    except (RuntimeError, ValueError) as e:
                        # (a size sequence needs more dims than it has entries: a ValueError)
                        with pytest.raises(type(e), match=name):
                            ours(name)(x.to(device), output_size)
                        continue
                    out, _, grad = outputs_and_grad(ours(name), x.to(device), output_size)
                    assert out.shape == ref.shape and grad.shape == x.shape, (x.shape, output_size)
                    torch.testing.assert_close(out.cpu(), ref, equal_nan=True)
                    torch.testing.assert_close(grad.cpu(), ref_grad)
    for shape in ((), (5,), (5, 4))[:d]:  # torch's mean over dims the input lacks
        with pytest.raises(IndexError):
            torchs(name)(torch.randn(shape), 1)
        with pytest.raises(IndexError, match=name):
            ours(name)(torch.randn(shape, device=device), 1)
    x = torch.randn((2, 3, 4) + (5,) * d, device=device)
    with torch.no_grad():
        out = ours(name)(leaf(x), 1)
    assert not out._is_view()  # a fresh tensor, as torch's mean: detach_() works
    out.detach_()
    for fn, output_size in ((ours(name), 2), (ours(f"adaptive_max_pool{d}d"), 1)):
        with pytest.raises(RuntimeError, match=f"adaptive_(avg|max)_pool{d}d"):
            fn(x, output_size)


def test_adaptive_avg_pool3d_to_one_of_no_channels():
    """torch takes no channels in adaptive_avg_pool3d to 1x1x1 (a mean), though not to other sizes."""
    x = torch.randn(2, 0, 3, 4, 5)
    assert ours("adaptive_avg_pool3d")(x, 1).shape == torchs("adaptive_avg_pool3d")(x, 1).shape == (2, 0, 1, 1, 1)
    with pytest.raises(RuntimeError, match="adaptive_avg_pool3d"):
        ours("adaptive_avg_pool3d")(x, 2)
    # None keeps the input's extent: 1 here, so this too is 1x1x1.
    x = torch.randn(2, 0, 1, 4, 5)
    assert ours("adaptive_avg_pool3d")(x, (None, 1, 1)).shape == torchs("adaptive_avg_pool3d")(x, (None, 1, 1)).shape
    with pytest.raises(RuntimeError, match="adaptive_avg_pool3d"):
        ours("adaptive_avg_pool3d")(x, (None, 2, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_adaptive_max_nan_like_torch(d, dtype, device):
    """Several NaNs per window: torch's index is the last NaN's."""
    rng = make_rng("nan", d, dtype)
    for layout in ("contiguous", "channels_last") if d > 1 else ("contiguous",):
        x, _ = random_input(rng, (2, 3) + (6,) * d, dtype, device, layout=layout, specials=0.3,
                            special_values=(NAN,))
        for output_size in (1, 2, 4):
            out, idx = ours(f"adaptive_max_pool{d}d")(x, output_size, return_indices=True)
            ref_out, ref_idx = torchs(f"adaptive_max_pool{d}d")(to_strided(x, device="cpu"), output_size,
                                                                return_indices=True)
            assert torch.isnan(ref_out).any()
            assert_equal(out, ref_out)
            assert_equal(idx, ref_idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_medium_inputs(kind, d, layout, dtype, device):
    """Inputs large enough for the parallel paths, with overlapping adaptive windows."""
    rng = make_rng("medium", kind, d, layout, dtype)
    shape = (4, 24, 33, 35) if d == 2 else (2, 16, 9, 10, 11)
    x, _ = random_input(rng, shape, dtype, device, layout=layout, specials=0.0)
    for output_size in ((7, 9) if d == 2 else (4, 3, 5), (40, 20) if d == 2 else (11, 7, 12)):
        run_case(kind, d, x, layout, output_size, list(output_size), device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("specials", ["none", "ties", "nan", "inf"])
@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_long_windows(kind, d, specials, dtype, device):
    """Windows of hundreds of cells along W (global pooling above all), which the
    CPU reduces a vector at a time: values and indices must still be torch's
    (first max on ties, last NaN), across chunk and lane boundaries."""
    rng = make_rng("long", kind, d, specials, dtype)
    spatial = (613,) if d == 1 else (5, 301)
    x, _ = random_input(rng, (2, 3, *spatial), dtype, device, layout="contiguous",
                        specials=0.0 if specials in ("none", "ties") else 0.01,
                        ties=specials == "ties",
                        special_values=(NAN,) if specials == "nan" else (INF, -INF))
    for output_size in (1, 2, 3):
        run_case(kind, d, x, "contiguous", output_size, [output_size] * d, device, rng)
        strided = x[..., ::2] if d == 1 else x.transpose(-1, -2)
        run_case(kind, d, strided, "strided", output_size, [output_size] * d, device, rng)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_long_window_max_returns_the_nan_it_found(dtype):
    """A NaN wins the max with its own bits (sign), as torch returns it: the CPU's
    long-run max reads the winning NaN back from the input (training and inference
    forwards both)."""
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[torch.finfo(dtype).bits // 8]
    x = torch.randn(2, 3, 100, dtype=dtype)
    x[0, 1, 37] = x[1, 2, 80] = -torch.tensor(NAN, dtype=dtype)
    x[1, 2, 10] = NAN
    for output_size in (1, 2):
        ref = torchs("adaptive_max_pool1d")(x, output_size)
        out = ours("adaptive_max_pool1d")(x, output_size)
        assert torch.equal(out.view(bits), ref.view(bits))
        trained = ours("adaptive_max_pool1d")(x.clone().requires_grad_(), output_size)
        assert torch.equal(trained.detach().view(bits), ref.view(bits))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2])
def test_max_inference_forward_keeps_the_winning_zero(d, dtype):
    """With no gradient to keep, adaptive max pooling runs its values-only op, whose
    long-run max skips the search for where the max is, but not for a zero or NaN
    winner, whose bits depend on the cell: -0 and 0 tie and the first counts, as in
    torch and in the training forward (which the same values, requiring grad, take)."""
    rng = make_rng("inference-zeros", d, dtype)
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[torch.finfo(dtype).bits // 8]
    name = f"adaptive_max_pool{d}d"
    spatial = (300,) if d == 1 else (20, 30)
    for first_sign in (-1.0, 1.0):
        x = -1 - torch.rand((2, 3, *spatial), generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))
        flat = x.view(6, -1)
        for plane in range(6):
            i, j = sorted(rng.sample(range(flat.shape[1]), 2))
            flat[plane, i], flat[plane, j] = first_sign * 0.0, -first_sign * 0.0
        x = x.to(dtype)
        for output_size in (1, 2):
            ref = torchs(name)(x, output_size)
            out = ours(name)(x, output_size)
            assert torch.equal(out.view(bits), ref.view(bits))
            trained = ours(name)(x.clone().requires_grad_(), output_size)
            assert torch.equal(trained.detach().view(bits), ref.view(bits))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("specials", ["none", "ties", "nan", "inf"])
@pytest.mark.parametrize("channels", [3, 20], ids=["few_channels", "many_channels"])
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_short_windows_of_small_planes(kind, d, channels, specials, dtype, device):
    """Short overlapping adaptive windows over small contiguous planes, which the CPU
    reduces by columns (few channels) or transposed to channels-last (many channels):
    values and indices must still be torch's (first max on ties, last NaN)."""
    rng = make_rng("short", kind, d, channels, specials, dtype)
    spatial = (13, 11) if d == 2 else (5, 7, 6)
    x, _ = random_input(rng, (2, channels, *spatial), dtype, device, layout="contiguous",
                        specials=0.0 if specials in ("none", "ties") else 0.1,
                        ties=specials == "ties",
                        special_values=(NAN,) if specials == "nan" else (INF, -INF))
    for output_size in ((6, 4), (13, 5)) if d == 2 else ((2, 3, 4), (5, 2, 6)):
        run_case(kind, d, x, "contiguous", output_size, list(output_size), device, rng)
        strided = x.transpose(-1, -2)
        run_case(kind, d, strided, "strided", output_size[::-1], list(output_size[::-1]),
                 device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_small_planes_in_channel_groups(kind, d, dtype, device):
    """Small planes with channels over several groups (70 = 64 + 6: the CPU pools
    and gathers such planes 64 channels of a sample at a time, transposed to
    channels-last; on 2 threads, 256 or 128 of 260 where that leaves four tasks a
    thread), from planes with gaps between samples and between channels:
    against torch, and bit-identical to the same values laid out channels-last
    (outputs, indices, gradients). Averages over rows of more than 16 cells:
    narrower ones go to the narrow-plane kernel (test_narrow_planes_sum_rows_then_cells)."""
    rng = make_rng("channel-groups", kind, d, dtype)
    spatial = {("max", 2): (13, 11), ("max", 3): (5, 7, 6), ("avg", 2): (11, 20), ("avg", 3): (3, 4, 18)}[kind, d]
    base, _ = random_input(rng, (6, 140, *spatial), dtype, device, layout="contiguous", specials=0.05)
    wide, _ = random_input(rng, (8, 264, *spatial), dtype, device, layout="contiguous", specials=0.05)
    name = f"adaptive_{kind}_pool{d}d"
    output_size = (6, 4) if d == 2 else (2, 3, 4)
    channels_last = torch.channels_last if d == 2 else torch.channels_last_3d
    for x in (base[:3, :70], base[::2, ::2], wide[:, :260], wide[:3, 2:262], base[:1, 6:70]):
        with num_threads(min(torch.get_num_threads(), 2)):
            run_case(kind, d, x, "strided", output_size, list(output_size), device, rng)
            results = [outputs_and_grad(ours(name), layout, output_size, return_indices=kind == "max")
                       for layout in (x, x.contiguous(memory_format=channels_last))]
        for planes, channels in zip(*results):
            if planes is not None:
                assert_equal(planes, channels)


def rows_then_cells(x, output_size):
    """Adaptive averages as the CPU's narrow-plane kernel sums them, in float32:
    each output's window rows added in order (D, then H), then its cells in order
    from +0, divided by its cell count."""
    d = len(output_size)
    spatial = x.shape[-d:]
    windows = [[(o * n // m, -(-(o + 1) * n // m)) for o in range(m)] for n, m in zip(spatial, output_size)]
    xf = x.float()
    out = torch.empty(x.shape[:-d] + tuple(output_size))
    for o in itertools.product(*(range(m) for m in output_size[:-1])):
        lead = [windows[k][o[k]] for k in range(d - 1)]
        rows = list(itertools.product(*(range(a, b) for a, b in lead)))
        column = xf[(..., *rows[0], slice(None))]
        for r in rows[1:]:
            column = column + xf[(..., *r, slice(None))]
        for ow, (a, b) in enumerate(windows[-1]):
            total = torch.zeros(column.shape[:-1])
            for c in range(a, b):
                total = total + column[..., c]
            cells = (b - a) * math.prod(e - s for s, e in lead)
            out[(..., *o, ow)] = total / torch.full_like(total, cells)
    return out.to(x.dtype)


def with_random_narrow_planes(rng, shapes, min_channels=1):
    """shapes, then six random (input shape, output size) pairs of 1d-3d adaptive
    pooling whose rows hold up to 16 cells into up to 8 outputs (the CPU's narrow
    planes)."""
    shapes = list(shapes)
    for _ in range(6):
        d = rng.randint(1, 3)
        spatial = tuple(rng.randint(1, 10) for _ in range(d - 1)) + (rng.randint(1, 16),)
        out = tuple(rng.randint(1, 9) for _ in range(d - 1)) + (rng.randint(1, 8),)
        shapes.append(((rng.randint(1, 3), rng.randint(min_channels, 40)) + spatial, out))
    return shapes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_narrow_planes_sum_rows_then_cells(dtype):
    """Adaptive averages of rows of up to 16 cells into up to 8 outputs (13x13 -> 6x6,
    7x7 -> 3x3; uniform windows too, which run as fixed ones; windows of one width or
    mixed, starting at even cells or not, more than 4 cells wide), whose rows are
    contiguous, go through the CPU's narrow-plane kernel: bit for bit
    rows_then_cells on any NaN, inf and layout of rows (strided planes, transposed
    leading dims, unbatched; over two threads, tens of thousands of tiny planes,
    whose output rows of under a vector end where another task's begin, and two
    large planes, which the threads split), close to torch, and gradients
    bit-identical to the same values channels-last."""
    rng = make_rng("narrow-planes", dtype)
    shapes = with_random_narrow_planes(rng, [
        ((2, 70, 13, 13), (6, 6)), ((3, 9, 7, 7), (3, 3)), ((2, 5, 9, 16), (4, 8)),
        ((2, 4, 5, 3), (7, 5)), ((20000, 1, 2, 3), (1, 2)), ((2, 3, 4, 6, 13), (3, 2, 5)),
        ((4, 6, 12), (5,)), ((3, 5, 8), (8,)), ((6, 13, 13), (6, 6)), ((1, 2, 3000, 13), (1000, 6)),
        ((2, 3, 5, 16), (3, 2)), ((2, 4, 3, 15), (2, 7)), ((2, 3, 4, 11), (3, 4))])
    for shape, output_size in shapes:
        d = len(output_size)
        name = f"adaptive_avg_pool{d}d"
        values = random_values(rng, shape, dtype, specials=0.05)
        inputs = [values, values.transpose(0, 1) if len(shape) > d + 1 else values,
                  random_values(rng, shape[:-1] + (shape[-1] + 5,), dtype, specials=0.05)[..., 2:-3]]
        if d > 1:
            wide = random_values(rng, shape[:-2] + (shape[-2] + 1, shape[-1]), dtype, specials=0.05)
            inputs.append(wide[..., 1:, :])
        for x in inputs:
            with num_threads(2):
                got = ours(name)(x, output_size)
            assert_equal(got, rows_then_cells(x, output_size), msg=f"{name} {tuple(x.shape)} -> {output_size}")
            assert_close_to_ref(got, torchs(name)(x.double(), output_size), dtype)
        if d > 1 and len(shape) == d + 2 and shape[0] * shape[1] < 1000:
            fmt = torch.channels_last if d == 2 else torch.channels_last_3d
            results = [outputs_and_grad(ours(name), layout, output_size)
                       for layout in (values, values.contiguous(memory_format=fmt))]
            (out, _, grad), (out_cl, _, grad_cl) = results
            assert_close_to_ref(out, out_cl.double(), dtype)
            assert_equal(grad, grad_cl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_narrow_planes_max_scans_in_tap_order(dtype):
    """Adaptive maxima of rows of up to 16 cells into up to 8 outputs, rows contiguous,
    go through the CPU's narrow-plane max (each row's maxima over each output's
    columns, then over the window's rows): the same bits as the same values with
    cells a step apart, which the element functions scan tap by tap (the last NaN,
    with its payload; the first of equal values, so -0 or +0 as it comes first), and
    as with channels innermost (8 or more go to the channels kernels), values alone
    too, torch's indices, the same gradient; over two threads, one plane of 3000 rows
    split between them."""
    rng = make_rng("narrow-max", dtype)
    gen = torch_generator(rng)
    shapes = with_random_narrow_planes(rng, [
        ((2, 70, 13, 13), (6, 6)), ((3, 9, 7, 7), (3, 3)), ((2, 5, 9, 16), (4, 8)),
        ((2, 4, 5, 3), (7, 5)), ((2, 3, 4, 6, 13), (3, 2, 5)), ((4, 6, 12), (5,)),
        ((3, 5, 8), (8,)), ((1, 1, 3000, 13), (1000, 6)), ((2, 3, 4, 11), (3, 4)),
        ((2, 3, 5, 16), (3, 2)), ((2, 3, 6, 15), (2, 7))], min_channels=2)
    specials = (NAN, -NAN, INF, -INF, 0.0, -0.0)
    for (shape, output_size), ties in itertools.product(shapes, (False, True)):
        d = len(output_size)
        name = f"adaptive_max_pool{d}d"
        x = random_values(rng, shape, dtype, ties=ties, specials=0.1, special_values=specials)
        if dtype == torch.float32:  # NaNs of many payloads
            bits, nan = x.view(torch.int32), x.isnan()
            bits[nan] |= torch.randint(0, 1 << 22, x.shape, generator=gen, dtype=torch.int32)[nan]
        stepped = torch.empty(shape[:-1] + (2 * shape[-1],), dtype=dtype)[..., ::2]
        stepped.copy_(x)  # (rows not contiguous: the element functions)
        inner = x.movedim(1, -1).contiguous().movedim(-1, 1)  # channels innermost
        msg = f"{name} {tuple(shape)} -> {output_size}, ties={ties}"
        with num_threads(2):
            (out, idx, grad), *others = [outputs_and_grad(ours(name), v, output_size, return_indices=True)
                                         for v in (x, stepped, inner)]
            values = ours(name)(x, output_size)
        for out_ref, idx_ref, grad_ref in others:
            assert_same_bits(out, out_ref, msg)
            assert torch.equal(idx, idx_ref), msg
            assert_equal(grad, grad_ref, msg)
        assert_same_bits(values, out, msg)
        assert torch.equal(idx, torchs(name)(x, output_size, return_indices=True)[1]), msg


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_max_by_columns_values_alone(dtype):
    """Adaptive and variable maxima of contiguous rows of 17-64 cells, windows of
    several rows (the CPU reduces each column over the window's rows, then each
    output over its columns): values alone keep no tap codes, and take a window's
    bits from its cells where its maximum is a NaN (the last in tap order, with its
    payload) or a zero (the first, -0 or +0): the same bits as the training forward
    and as the same values with cells a step apart (the element functions), over
    inputs of zeros of both signs alone too (a ReLU's output), ties, +-inf."""
    rng = make_rng("columns-max", dtype)
    gen = torch_generator(rng)
    cases = [((2, 3, 40, 50), (5, 6)), ((3, 5, 9, 33), (4, 4)), ((2, 2, 5, 6, 40), (2, 2, 5)),
             ((1, 2, 30, 20), (4, 4)), ((2, 3, 20, 64), (3, 1)), ((2, 1, 17, 17), (17, 2))]
    for _ in range(4):
        d = rng.randint(2, 3)
        spatial = tuple(rng.randint(2, 12) for _ in range(d - 1)) + (rng.randint(17, 64),)
        out = tuple(rng.randint(1, s - 1) for s in spatial[:-1]) + (rng.randint(1, 6),)
        cases.append(((rng.randint(1, 3), rng.randint(1, 6)) + spatial, out))
    specials = (NAN, -NAN, INF, -INF, 0.0, -0.0)
    for (shape, output_size), kind in itertools.product(cases, ("random", "ties", "zeros")):
        d = len(output_size)
        if kind == "zeros":  # a window's maximum is a zero, of either sign first
            x = torch.where(torch.rand(shape, generator=gen) < 0.5, 0.0, -0.0).to(dtype)
        else:
            x = random_values(rng, shape, dtype, ties=kind == "ties", specials=0.1, special_values=specials)
        if dtype == torch.float32:  # NaNs of many payloads
            bits, nan = x.view(torch.int32), x.isnan()
            bits[nan] |= torch.randint(0, 1 << 22, x.shape, generator=gen, dtype=torch.int32)[nan]
        stepped = torch.empty(shape[:-1] + (2 * shape[-1],), dtype=dtype)[..., ::2]
        stepped.copy_(x)
        sizes = torch.stack([torch.randint(1, s + 1, (shape[0],), generator=gen) for s in shape[2:]], 1)
        msg = f"{tuple(shape)} -> {output_size}, {kind}"
        with num_threads(2):
            for fn in (lambda v, **k: ours(f"adaptive_max_pool{d}d")(v, output_size, **k),
                       lambda v, **k: ours(f"variable_max_pool{d}d")(v, output_size, sizes, **k)):
                values = fn(x)
                assert_same_bits(values, fn(x, return_indices=True)[0], msg)
                assert_same_bits(values, fn(stepped), msg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_narrow_planes_backward_of_nan_gradients(dtype):
    """Outputs wider than their input (2 -> 6, 4 -> 8, 7 -> 8): every input cell is
    covered by as many outputs, so the narrow-plane backward gathers without masks.
    Gradients holding NaNs of both signs: the same gradient as the same values
    channels-last, NaN in every cell a NaN output covers (NaN's sign, which follows
    the order the compiler gives an add's operands, may differ: assert_equal)."""
    rng = make_rng("narrow-nan-signs", dtype)
    gen = torch_generator(rng)
    view, positive, negative = {torch.float32: (torch.int32, 0x7FC00000, -0x400000),
                                torch.float16: (torch.int16, 0x7E00, -0x200)}[dtype]
    for (h, w), output_size in (((1, 2), (2, 6)), ((3, 4), (2, 8)), ((2, 7), (3, 8)), ((1, 1), (2, 2))):
        values = random_values(rng, (2, 16, h, w), dtype)
        g = random_values(rng, (2, 16) + output_size, dtype)
        nan = torch.rand(g.shape, generator=gen) < 0.3
        signs = torch.where(torch.rand(g.shape, generator=gen) < 0.5, positive, negative).to(view)
        g.view(view)[nan] = signs[nan]
        grads = []
        for x in (values, values.contiguous(memory_format=torch.channels_last)):
            xl = leaf(x)
            (grad,) = torch.autograd.grad(ours("adaptive_avg_pool2d")(xl, output_size), xl, g)
            grads.append(grad)
        assert_equal(grads[0], grads[1], msg=f"{(h, w)} -> {output_size}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("channels", [8, 13])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_small_planes_with_few_channels(kind, channels, dtype, device):
    """8-15 channels of 2d planes of up to 196 cells go through one channel group
    on the CPU: against torch, and bit-identical to the same values channels-last.
    Averages over rows of more than 16 cells, as in test_small_planes_in_channel_groups."""
    rng = make_rng("few-channels", kind, channels, dtype)
    name = f"adaptive_{kind}_pool2d"
    cases = {"max": (((8, 8), (3, 3)), ((13, 11), (6, 4)), ((14, 14), (5, 7)), ((9, 6), (12, 4))),
             "avg": (((8, 20), (3, 3)), ((9, 21), (6, 4)), ((7, 28), (5, 7)), ((6, 17), (12, 4)))}[kind]
    for spatial, output_size in cases:
        base, _ = random_input(rng, (4, 2 * channels, *spatial), dtype, device, layout="contiguous", specials=0.05)
        for x in (base[:, :channels], base[:, ::2]):
            run_case(kind, 2, x, "strided", output_size, list(output_size), device, rng)
            results = [outputs_and_grad(ours(name), layout, output_size, return_indices=kind == "max")
                       for layout in (x, x.contiguous(memory_format=torch.channels_last))]
            for planes, channels_last in zip(*results):
                if planes is not None:
                    assert_equal(planes, channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("spatial", [(7, 7), (2, 4), (3, 5), (2, 3, 5)], ids=str)
def test_global_average_of_many_planes(spatial, dtype, device):
    """Global average pooling of planes with many channels (19: two groups of eight,
    which the CPU sums eight planes at a time, and three more), planes of a whole
    number of vectors or with cells past them, planes with gaps between channels,
    NaN and inf: against torch."""
    d = len(spatial)
    rng = make_rng("global-eight", spatial, dtype)
    base, _ = random_input(rng, (3, 38, *spatial), dtype, device, layout="contiguous", specials=0.05)
    for x in (base[:, :19], base[:, ::2]):
        run_case("avg", d, x, "strided", 1, [1] * d, device, rng)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_global_average_of_dense_planes_is_torchs_bit_for_bit(dtype):
    """On the CPU, torch's global average is its mean, a sum in the order of
    its cascade_sum divided by the cell count. Over dense planes (contiguous
    inputs, channel slices too) ours sums in that order: the same bits, for
    planes shorter than a vector, of whole vectors and cells past them, and
    long enough for the sum's cascade of blocks; 1d, 2d and 3d, batched and
    unbatched, NaN and inf. (One plane of 32768 cells or more is left out:
    there torch splits the sum among its threads.)"""
    rng = make_rng("global-as-torch", dtype)
    cases = [(1, (3,)), (1, (9,)), (1, (1000,)), (1, (4100,)), (2, (1, 1)), (2, (2, 2)), (2, (3, 3)),
             (2, (4, 4)), (2, (7, 7)), (2, (14, 14)), (2, (1, 17)), (2, (33, 33)), (2, (100, 100)),
             (3, (2, 3, 5)), (3, (4, 4, 4)), (3, (9, 11, 13))]
    for d, spatial in cases:
        fn = f"adaptive_avg_pool{d}d"
        for shape in ((2, 11, *spatial), (11, *spatial)):
            base, _ = random_input(rng, shape, dtype, "cpu", layout="contiguous", specials=0.02)
            for x in (base, base[:, ::2] if len(shape) == d + 2 else base[::2]):  # (channel slices)
                assert_equal(ours(fn)(x, 1), torchs(fn)(x, 1), f"{fn} {tuple(x.shape)} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_global_average_of_channels_last_is_torchs_bit_for_bit(dtype):
    """torch's mean of a channels-last input sums each channel over the
    pixels in one of two orders: a cascade for the channels of whole blocks
    of four vectors (and the first 4 * floor(C / 4) of fewer channels than a
    vector holds), rows of four pixels for the rest. Ours sums in those
    orders: channel counts on each side of those bounds, pixel counts under
    one block of the cascade and over several, channel slices, 2d and 3d,
    NaN and inf (and order_revealing values); and on eight threads, where
    torch's split of the channels among its threads moves the bound (37
    channels: the last part, 32-36, under a vector, cascades its first
    four), but not with as many samples as threads (torch splits those)."""
    rng = make_rng("global-channels-last-as-torch", dtype)
    g = torch.Generator().manual_seed(3)
    cases = [(2, (2, 2)), (2, (7, 7)), (2, (1, 9)), (2, (17, 19)), (2, (64, 65)), (3, (3, 5, 7))]
    for (d, spatial), channels in itertools.product(cases, (2, 5, 7, 8, 12, 31, 32, 36, 45, 100)):
        fn = f"adaptive_avg_pool{d}d"
        fmt = torch.channels_last if d == 2 else torch.channels_last_3d
        shape = (3, channels + 3, *spatial)
        noisy, _ = random_input(rng, shape, dtype, "cpu", layout="contiguous", specials=0.02)
        for base in (noisy, order_revealing(g, shape, dtype)):
            for x in (base[:, :channels].contiguous(memory_format=fmt), base.contiguous(memory_format=fmt)[:, 2:]):
                assert_equal(ours(fn)(x, 1), torchs(fn)(x, 1), f"{fn} {tuple(x.shape)} {dtype}")
    with num_threads(8):
        for shape in ((1, 37, 30, 30), (8, 36, 16, 16), (7, 36, 16, 16)):
            x = order_revealing(g, shape, dtype).contiguous(memory_format=torch.channels_last)
            assert_equal(ours("adaptive_avg_pool2d")(x, 1), torchs("adaptive_avg_pool2d")(x, 1), shape)


# (input extent, output extent) per dim whose windows are all one size at one
# stride (extent % out of 0 or 1): up to 16 cells a window they run as that
# fixed pooling, beyond on the adaptive kernels.
UNIFORM = {
    1: [(1024, 512), (1025, 128), (33, 16), (32, 2), (34, 2)],
    2: [(13, 6), (8, 2), (14, 7), (10, 2), (9, 4)],
    3: [(6, 3), (4, 2), (7, 3)],
}


@over_kinds_and_inputs
def test_uniform_windows_like_torch(kind, d, specials, dtype, device):
    """Adaptive poolings that are fixed ones in disguise (13 -> 6: 3x3 windows
    at stride 2), every layout: torch's values, indices and gradients."""
    rng = make_rng("uniform", kind, d, specials, dtype)
    for in_size, out_size in UNIFORM[d]:
        shape = (2, 18 if d > 1 else 8) + (in_size,) * d
        for x, layout in inputs_in_every_layout(rng, shape, dtype, device, specials):
            run_case(kind, d, x, layout, out_size, [out_size] * d, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_few_channels_of_one_pixel(kind, d, device):
    """Channels-innermost inputs of a few channels and one pixel (global pooling
    of a 1x1 map): torch's values, indices and gradients."""
    rng = make_rng("one-pixel", kind, d)
    for channels in (2, 5):
        x, _ = random_input(rng, (3, 1, channels), torch.float32, device, layout="contiguous")
        x = x.transpose(1, 2).reshape((3, channels) + (1,) * d)  # strides (C, 1, C, ...)
        assert x.stride(1) == 1
        run_case(kind, d, x, "channels_last", 1, [1] * d, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_one_cell_windows_copy_as_torch_pools(layout, dtype, device):
    """Windows of one cell (adaptive pooling to the input's own size, as VGG's
    7x7 head on 224x224 images; kernel 1 at stride 1) are a copy: torch's
    values and indices (NaN, -0: an average of -0 is +0, a max -0), its
    gradients and layouts."""
    def signs(t):  # of the numbers (a NaN's sign bit is not one)
        t = t.detach().cpu()
        return torch.where(t.isnan(), False, torch.signbit(t))

    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 5, 4, 3, generator=g, dtype=torch.float64).to(dtype)
    x[0, 1, 2, 1], x[1, 3, 0, 0], x[0, 0, 0, 0] = torch.nan, -0.0, torch.inf
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x], dim=3)[..., ::2]
    x = x.to(device)
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    grad[1, 2, 3, 2] = -0.0
    calls = [("adaptive_avg_pool2d", ((4, 3),)), ("adaptive_max_pool2d", ((4, None),)),
             ("avg_pool2d", (1,)), ("max_pool2d", (1, 1))]
    for name, args in calls:
        if torch_accepts(torchs(name), x.cpu(), *args):
            got_x, want_x = x.clone().requires_grad_(), x.cpu().clone().requires_grad_()
            got, want = ours(name)(got_x, *args), torchs(name)(want_x, *args)
            assert_equal(got, want)
            assert torch.equal(signs(got), signs(want)), name
            assert_same_format(got, want)
            got.backward(grad)
            want.backward(grad.cpu())
            assert_equal(got_x.grad, want_x.grad)
            assert torch.equal(signs(got_x.grad), signs(want_x.grad)), name
            if "max" in name:
                assert_equal(ours(name)(x, *args, return_indices=True)[1], torchs(name)(x.cpu(), *args,
                                                                                 return_indices=True)[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_adaptive_max_pool_with_indices(d, device):
    """adaptive_max_pool{d}d_with_indices, as torch.nn.functional's (see check_with_indices)."""
    rng = make_rng("with_indices", d)
    for _ in range(CASES_PER_SEED):
        shape, output_size, _ = random_adaptive_case(rng, "max", d)
        x, _ = random_input(rng, shape, torch.float32, device)
        check_with_indices(f"adaptive_max_pool{d}d", x, (output_size,), rng)
    with pytest.raises(RuntimeError, match=f"adaptive_max_pool{d}d"):
        ours(f"adaptive_max_pool{d}d_with_indices")(torch.randn((1, 2) + (4,) * d, device=device), -2)
