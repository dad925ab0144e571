"""variable_max/avg_pool1d/2d/3d and spatial_pyramid_pool2d against per-sample torch ops.

Sample n of a padded batch is pooled adaptively over input[n, :, :sizes[n, 0], ...];
the reference slices each sample and calls torch's adaptive pooling. The padding
is filled with NaN, infinities and the dtype's largest values, so any read of it
shows in the results, and its gradient must be exactly zero.
"""

import itertools
import pytest
import torch
import torch.nn.functional as F

import pool_ext
from pool_testing import (
    DEVICES, DTYPE_IDS, DTYPES, INF, NAN, TOL, assert_close_to_ref, assert_equal, leaf, make_rng, ours,
    num_threads, order_revealing, random_grad, random_values, scatter_grad, to_strided, torch_generator,
    with_layout,
)

MAX_EXTENT = {1: 10, 2: 7, 3: 5}


def padding_fill(rng, shape, dtype):
    """Values that any read of the padding would reveal."""
    big = torch.finfo(dtype).max
    choices = torch.tensor([NAN, INF, -INF, big, -big], dtype=torch.float64)
    g = torch.Generator().manual_seed(rng.randrange(2**62))
    return choices[torch.randint(0, len(choices), shape, generator=g)].to(dtype)


def valid_mask(shape, sizes, d):
    """True on the cells of each sample's valid region."""
    mask = torch.zeros(shape, dtype=torch.bool)
    for n in range(shape[0]):
        region = (n, slice(None)) + tuple(slice(0, int(s)) for s in sizes[n])
        mask[region] = True
    return mask


def random_variable_input(rng, d, dtype, device, n=None, ties=None):
    """(x, sizes as a list of per-sample tuples, layout)."""
    n = rng.choice([1, 2, 3, 4]) if n is None else n
    extents = [rng.randint(1, MAX_EXTENT[d]) for _ in range(d)]
    shape = (n, rng.randint(1, 3), *extents)
    sizes = [tuple(rng.randint(1, e) for e in extents) for _ in range(n)]
    if n and rng.random() < 0.5:
        sizes[rng.randrange(n)] = tuple(extents)  # one sample fills the batch's extent
    ties = rng.random() < 0.25 if ties is None else ties
    values = random_values(rng, shape, dtype, ties=ties)
    values = torch.where(valid_mask(shape, sizes, d), values, padding_fill(rng, shape, dtype))
    layout = rng.choice(["contiguous", "sliced", "transposed"] + (["channels_last"] if d > 1 else []))
    return with_layout(values.to(device), layout, rng), sizes, layout


def sizes_tensor(rng, sizes, d, device, n=None):
    n = len(sizes) if n is None else n
    dtype = rng.choice([torch.int64, torch.int32])
    t = torch.tensor(sizes, dtype=dtype).reshape(n, d)
    if d == 1 and rng.random() < 0.5:
        t = t.reshape(n)  # lengths
    return t.to(device)


def resolve(output_size, d):
    return [output_size] * d if isinstance(output_size, int) else list(output_size)


def reference_variable_max(x_cpu, sizes, output_size, d):
    """Per-sample torch adaptive max pooling; indices mapped into the padded plane."""
    outs, idxs = [], []
    padded = list(x_cpu.shape[2:])
    for n, size in enumerate(sizes):
        sample = x_cpu[(slice(n, n + 1), slice(None)) + tuple(slice(0, s) for s in size)]
        out, idx = getattr(F, f"adaptive_max_pool{d}d")(sample, output_size, return_indices=True)
        flat, rest = torch.zeros_like(idx), idx
        coords = []
        for j in reversed(range(d)):
            coords.append(rest % size[j])
            rest = rest // size[j]
        for j, c in zip(range(d), reversed(coords)):
            flat = flat * padded[j] + c
        outs.append(out)
        idxs.append(flat)
    return torch.cat(outs), torch.cat(idxs)


def reference_variable_avg(x64, sizes, output_size, d):
    """Per-sample torch adaptive average pooling in float64 (differentiable)."""
    outs = []
    for n, size in enumerate(sizes):
        sample = x64[(slice(n, n + 1), slice(None)) + tuple(slice(0, s) for s in size)]
        outs.append(getattr(F, f"adaptive_avg_pool{d}d")(sample, output_size))
    return torch.cat(outs)


def random_output_size(rng, d):
    out = [rng.randint(1, MAX_EXTENT[d] + 2) for _ in range(d)]
    if rng.random() < 0.3:
        return out[0]
    return tuple(out)


def check_variable(kind, d, x, sizes, output_size, device, rng):
    n, c = x.shape[:2]
    sz = sizes_tensor(rng, sizes, d, device, n)
    mask = valid_mask(tuple(x.shape), sizes, d)
    out_sizes = resolve(output_size, d)
    xl = leaf(x)
    grad_out = random_grad(rng, torch.empty((n, c, *out_sizes), dtype=x.dtype, device=device))
    if kind == "max":
        x_cpu = to_strided(x, device="cpu")
        if n:
            ref_out, ref_idx = reference_variable_max(x_cpu, sizes, output_size, d)
        else:
            ref_out = torch.empty((0, c, *out_sizes), dtype=x.dtype)
            ref_idx = torch.empty((0, c, *out_sizes), dtype=torch.int64)
        out, idx = ours(f"variable_max_pool{d}d")(xl, output_size, sz, return_indices=True)
        assert out.device == x.device and idx.device == x.device
        assert_equal(out, ref_out)
        assert_equal(idx, ref_idx)
        assert_equal(ours(f"variable_max_pool{d}d")(x, output_size, sz), ref_out)
        (grad,) = torch.autograd.grad(out, xl, grad_out)
        expected = scatter_grad(grad_out, ref_idx, tuple(x.shape), d)
    else:
        x64 = leaf(to_strided(x, torch.float64, "cpu"))
        ref = reference_variable_avg(x64, sizes, output_size, d) if n else x64.new_zeros((0, c, *out_sizes))
        out = ours(f"variable_avg_pool{d}d")(xl, output_size, sz)
        assert out.device == x.device
        assert_close_to_ref(out, ref.detach(), x.dtype)
        (grad,) = torch.autograd.grad(out, xl, grad_out)
        expected = torch.autograd.grad(ref, x64, grad_out.cpu().double())[0] if n else torch.zeros(x.shape)
    assert out.shape == (n, c, *out_sizes)
    assert not torch.isnan(out).any(), "NaN from the padding leaked into the output"
    assert_equal(grad.cpu()[~mask], torch.zeros((~mask).sum().item(), dtype=x.dtype))
    assert_close_to_ref(grad, expected, x.dtype)
    if x.device.type != "cpu":
        out_cpu = ours(f"variable_{kind}_pool{d}d")(to_strided(x, device="cpu"), output_size, sz.cpu())
        if kind == "max":
            assert_equal(out, out_cpu)
        else:
            rtol, atol = TOL[x.dtype]
            torch.testing.assert_close(out.cpu(), out_cpu, rtol=rtol, atol=atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("seed", range(5))
def test_random_against_per_sample_torch(seed, kind, d, dtype, device):
    rng = make_rng("variable", kind, d, dtype, seed)
    for _ in range(10):
        x, sizes, layout = random_variable_input(rng, d, dtype, device)
        output_size = random_output_size(rng, d)
        try:
            check_variable(kind, d, x, sizes, output_size, device, rng)
        except AssertionError as e:
            raise AssertionError(
                f"variable_{kind}_pool{d}d input {tuple(x.shape)} {dtype} layout={layout} sizes={sizes} "
                f"output_size={output_size}:\n{e}"
            ) from e


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_empty_batch(kind, d, device):
    rng = make_rng("variable-empty", kind, d)
    x = torch.randn((0, 2) + (4,) * d, device=device)
    check_variable(kind, d, x, [], 2, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_full_sizes_equal_adaptive(kind, d, device):
    """With every sample at the full extent, variable pooling is adaptive pooling."""
    x = torch.randn((3, 2) + (6,) * d, device=device)
    sizes = torch.full((3, d), 6, dtype=torch.int64, device=device)
    for output_size in (1, 4, 8):
        got = ours(f"variable_{kind}_pool{d}d")(x, output_size, sizes)
        assert_equal(got, ours(f"adaptive_{kind}_pool{d}d")(x, output_size))


def some_extents(rng, samples, spatial):
    """Random per-sample extents, the whole plane, whole rows and a column among them."""
    sizes = torch.stack([torch.randint(1, e + 1, (samples,), generator=rng) for e in spatial], 1)
    sizes[0] = torch.tensor(spatial)  # the whole plane
    sizes[1, -1] = spatial[-1]  # whole rows
    sizes[2, -1] = 1  # a column
    return sizes


def assert_masked_means_are_the_loop(x, sizes, msg):
    """variable_avg_poolNd(x, 1, sizes) is, bit for bit, torch's global average of each sample's slice."""
    d = x.dim() - 2
    got = getattr(pool_ext.functional, f"variable_avg_pool{d}d")(x, 1, sizes)
    for n, extent in enumerate(sizes.tolist()):
        sample = x[(n, slice(None), *(slice(0, e) for e in extent))]
        assert_equal(got[n], getattr(F, f"adaptive_avg_pool{d}d")(sample, 1), (*msg, extent))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_masked_mean_is_the_per_sample_means_bit_for_bit(d):
    """Variable average pooling to one cell (masked global mean) of contiguous
    inputs on the CPU gives, bit for bit, the loop over samples of torch's
    global average of each sample's slice: each sums in the order torch's
    mean gives that slice (rows of the extent, whole rows and planes merged).
    Widths of one cell, full widths and full planes among them. 2-byte
    values are widened first into a dense copy of the slice, whose cells
    then sum as one plane (order_revealing values show the order)."""
    rng = torch.Generator().manual_seed(d)
    shape = {1: (6, 3, 40), 2: (6, 3, 9, 20), 3: (6, 3, 5, 6, 9)}[d]
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        x = order_revealing(rng, shape, dtype)
        for trial in range(4):
            assert_masked_means_are_the_loop(x, some_extents(rng, shape[0], shape[2:]), (dtype,))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_channels_last_masked_mean_is_the_per_sample_means_bit_for_bit(d):
    """The same for channels-innermost inputs (sequences transposed from
    (N, L, C), channels-last images) and channel slices of them. torch's mean
    of a sample's slice sums each channel in its channels-last orders where
    the slice's pixels form one run (a sequence, whole rows, a column), and
    channel by channel over the rows otherwise; 2-byte values widened first
    into a dense copy with channels still innermost, whose pixels are one
    run. Channel counts under a vector and over a block of four; and on
    eight threads, which split the channels of a slice of 32768 cells or
    more among them as torch's mean of that slice does."""
    rng = torch.Generator().manual_seed(10 + d)
    for channels, dtype in itertools.product((5, 37), (torch.float32, torch.float64, torch.bfloat16, torch.float16)):
        spatial = {1: (40,), 2: (9, 11), 3: (4, 5, 6)}[d]
        base = order_revealing(rng, (6, *spatial, channels + 3), dtype)
        # channels innermost: packed, and a channel slice
        for x in (base[..., :channels].contiguous().movedim(-1, 1), base.movedim(-1, 1)[:, 2:channels + 2]):
            assert x.stride(1) == 1
            assert_masked_means_are_the_loop(x, some_extents(rng, 6, spatial), (dtype, channels, x.stride()))
    if d == 2:
        with num_threads(8):
            x = order_revealing(rng, (2, 30, 30, 37), torch.float32).movedim(-1, 1)
            assert_masked_means_are_the_loop(x, torch.tensor([[30, 30], [30, 29]]), ("8 threads",))


def test_max_indices_are_flat_in_the_padded_plane():
    x = torch.full((2, 1, 3, 4), 100.0)  # padding larger than any real value
    x[0, 0, :2, :3] = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 5.0]])
    x[1, 0, :3, :1] = torch.tensor([[7.0], [8.0], [6.0]])
    sizes = torch.tensor([[2, 3], [3, 1]])
    out, idx = pool_ext.functional.variable_max_pool2d(x, 1, sizes, return_indices=True)
    assert_equal(out, torch.tensor([[[[9.0]]], [[[8.0]]]]))
    assert_equal(idx, torch.tensor([[[[1 * 4 + 1]]], [[[1 * 4 + 0]]]]))
    # torch.nn.functional.max_unpool2d puts each max back where it was
    unpooled = F.max_unpool2d(out, idx, kernel_size=(3, 4), output_size=(3, 4))
    assert unpooled[0, 0, 1, 1] == 9.0 and unpooled[1, 0, 1, 0] == 8.0


def test_masked_mean_and_max_of_sequences():
    x = torch.tensor([[[1.0, 2.0, 3.0, NAN]], [[4.0, INF, INF, INF]]])
    lengths = torch.tensor([3, 1])
    assert_equal(pool_ext.functional.variable_avg_pool1d(x, 1, lengths), torch.tensor([[[2.0]], [[4.0]]]))
    assert_equal(pool_ext.functional.variable_max_pool1d(x, 1, lengths), torch.tensor([[[3.0]], [[4.0]]]))
    assert_equal(pool_ext.functional.variable_max_pool1d(x, 1, lengths.view(2, 1)),
                 torch.tensor([[[3.0]], [[4.0]]]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_layers_match_functional(kind, d, device):
    rng = make_rng("variable-layer", kind, d)
    x, sizes, _ = random_variable_input(rng, d, torch.float32, device, n=3, ties=False)
    sz = torch.tensor(sizes, device=device)
    cls = getattr(pool_ext.nn, f"Variable{kind.capitalize()}Pool{d}d")
    fn = ours(f"variable_{kind}_pool{d}d")
    assert_equal(cls(3)(x, sz), fn(x, 3, sz))
    if kind == "max":
        out, idx = cls(3, return_indices=True)(x, sz)
        ref_out, ref_idx = fn(x, 3, sz, return_indices=True)
        assert_equal(out, ref_out)
        assert_equal(idx, ref_idx)


# ---------------------------------------------------------------- spatial pyramid pooling


def reference_spp(x64, levels, mode, sizes=None):
    pool = F.adaptive_max_pool2d if mode == "max" else F.adaptive_avg_pool2d
    if sizes is None:
        return torch.cat([pool(x64, level).flatten(-3 if x64.dim() == 3 else 1) for level in levels], -1)
    rows = []
    for n, (h, w) in enumerate(sizes):
        sample = x64[n:n + 1, :, :h, :w]
        rows.append(torch.cat([pool(sample, level).flatten(1) for level in levels], 1))
    return torch.cat(rows)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("with_sizes", [False, True], ids=["dense", "sizes"])
def test_spatial_pyramid_pool2d(with_sizes, mode, dtype, device):
    rng = make_rng("spp", mode, dtype, with_sizes)
    for _ in range(6):
        levels = tuple(sorted(rng.sample(range(1, 6), rng.randint(1, 3))))
        if with_sizes:
            x, sizes, layout = random_variable_input(rng, 2, dtype, device)
            sz = torch.tensor(sizes, device=device)
        else:
            sizes = sz = None
            shape = (rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 9), rng.randint(1, 9))
            if rng.random() < 0.25:
                shape = shape[1:]  # unbatched
            layout = rng.choice(["contiguous", "channels_last", "sliced"] if len(shape) == 4 else ["contiguous"])
            x = with_layout(random_values(rng, shape, dtype).to(device), layout, rng)
        x64 = leaf(to_strided(x, torch.float64, "cpu"))
        ref = reference_spp(x64, levels, mode, sizes)
        xl = leaf(x)
        kwargs = {} if levels == (1, 2, 4) and rng.random() < 0.5 else {"levels": levels}
        if mode != "max" or rng.random() < 0.5:
            kwargs["mode"] = mode
        out = pool_ext.functional.spatial_pyramid_pool2d(xl, sizes=sz, **kwargs)
        info = f"input {tuple(x.shape)} {layout} levels={levels} mode={mode} sizes={sizes}"
        channels = x.shape[-3]
        assert out.shape == x.shape[:-3] + (channels * sum(level * level for level in levels),), info
        assert_close_to_ref(out, ref.detach(), dtype, msg=info)
        module = pool_ext.nn.SpatialPyramidPool2d(levels, mode)
        assert_equal(module(x, sz) if with_sizes else module(x), out.detach())
        grad_out = random_grad(rng, out)
        (grad,) = torch.autograd.grad(out, xl, grad_out)
        (expected,) = torch.autograd.grad(ref, x64, grad_out.cpu().double())
        assert_close_to_ref(grad, expected, dtype, msg=info)


def test_spatial_pyramid_pool2d_default_levels():
    x = torch.randn(2, 3, 9, 7)
    out = pool_ext.functional.spatial_pyramid_pool2d(x)
    assert out.shape == (2, 3 * (1 + 4 + 16))
    assert_equal(out, reference_spp(x, (1, 2, 4), "max"))
    assert_equal(pool_ext.nn.SpatialPyramidPool2d()(x), out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_medium_inputs(kind, d, layout, device):
    """A batch large enough for the parallel paths."""
    rng = make_rng("variable-medium", kind, d, layout)
    extents = (30, 27) if d == 2 else (9, 10, 8)
    n = 6
    shape = (n, 24, *extents)
    sizes = [tuple(rng.randint(1, e) for e in extents) for _ in range(n)]
    values = random_values(rng, shape, torch.float32)
    values = torch.where(valid_mask(shape, sizes, d), values, padding_fill(rng, shape, torch.float32))
    x = with_layout(values.to(device), layout, rng)
    for output_size in ((4, 5) if d == 2 else (2, 3, 2), (35, 9) if d == 2 else (10, 4, 9)):
        check_variable(kind, d, x, sizes, output_size, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_long_extents(kind, d, dtype, device):
    """Samples hundreds of cells long (masked global pooling of sequences), which the
    CPU reduces a vector at a time: the padding must still never be read."""
    rng = make_rng("long", kind, d, dtype)
    padded = (611,) if d == 1 else (4, 290)
    n = 5
    sizes = [tuple(rng.randint(1, e) for e in padded) for _ in range(n)]
    sizes[0] = padded
    sizes[1] = tuple(min(e, 17) for e in padded)
    shape = (n, 3, *padded)
    values = random_values(rng, shape, dtype, ties=rng.random() < 0.5)
    x = torch.where(valid_mask(shape, sizes, d), values, padding_fill(rng, shape, dtype)).to(device)
    for output_size in (1, 2):
        check_variable(kind, d, x, sizes, output_size, device, rng)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("channels", [24, 70])
def test_small_planes_many_channels(kind, d, channels, dtype, device):
    """Small padded planes with many channels (70: two groups of the CPU's
    transposed path, 64 + 6), which the CPU pools and gathers transposed to
    channels-last (padding cells copied along, never used): padding cells must
    still never change an output or get a gradient. The 3-d planes' windows span up to 400 taps (saved as int64)."""
    rng = make_rng("small", kind, d, channels, dtype)
    padded = (9, 12) if d == 2 else (8, 8, 4)
    n = 4
    sizes = [tuple(rng.randint(1, e) for e in padded) for _ in range(n)]
    sizes[0] = padded
    shape = (n, channels, *padded)
    values = random_values(rng, shape, dtype, ties=True)
    x = torch.where(valid_mask(shape, sizes, d), values, padding_fill(rng, shape, dtype)).to(device)
    for output_size in (2, 3) if d == 2 else ((1, 1, 2), 3):
        check_variable(kind, d, x, sizes, output_size, device, rng)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sizes_dtype", [torch.int64, torch.int32], ids=["int64", "int32"])
@pytest.mark.parametrize("output_size", [1, 3])
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_captured_in_a_cuda_graph(kind, d, output_size, sizes_dtype):
    """Forward and backward captured in a CUDA graph replay with new inputs,
    sizes and gradients as eager calls compute them, bit for bit. While
    capturing, the sizes are not copied to the host to be checked (that would
    sync the stream): out-of-range sizes replay as if clamped to [1, extent]."""
    gen = torch_generator(make_rng("variable-graph", kind, d, output_size, sizes_dtype))
    fn = ours(f"variable_{kind}_pool{d}d")
    spatial = {1: [50], 2: [12, 9], 3: [5, 6, 7]}[d]
    n, c = 4, 8
    extents = torch.tensor(spatial)

    def random_sizes(wild=False):
        s = torch.stack([torch.randint(1, e + 1, (n,), generator=gen) for e in spatial], dim=1)
        if wild:
            s[0, -1], s[-1, 0] = 0, spatial[0] + 5
        return s.to(sizes_dtype)

    x = torch.randn(n, c, *spatial, generator=gen).cuda().requires_grad_()
    sizes = random_sizes().cuda()
    grad = torch.randn(n, c, *[output_size] * d, generator=gen).cuda()
    side = torch.cuda.Stream()  # warm up off the default stream, as torch.cuda.graph asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            x.grad = None
            fn(x, output_size, sizes).backward(grad)
    torch.cuda.current_stream().wait_stream(side)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(x, output_size, sizes)
        out.backward(grad)

    for wild in (False, False, True):
        new_sizes = random_sizes(wild)
        with torch.no_grad():
            x.copy_(torch.randn(x.shape, generator=gen))
            grad.copy_(torch.randn(grad.shape, generator=gen))
            sizes.copy_(new_sizes)
        graph.replay()
        clamped = torch.minimum(new_sizes.long().clamp(min=1), extents).cuda()
        x2 = x.detach().clone().requires_grad_()
        want = fn(x2, output_size, clamped)
        want.backward(grad)
        assert_equal(out, want)
        assert_equal(x.grad, x2.grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("output_size", [1, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_backward_and_indices_do_not_sync(kind, output_size):
    """The forward copies the sizes to the host to check them, a sync; the
    backward and return_indices' indices, whose sizes the forward checked (and
    autograd refuses once changed in place), do not again."""
    fn = ours(f"variable_{kind}_pool2d")
    x = torch.randn(3, 4, 9, 7, device="cuda", requires_grad=True)
    sizes = torch.tensor([[9, 7], [2, 5], [6, 1]], device="cuda")
    out = fn(x, output_size, sizes)
    grad = torch.randn_like(out)
    _, taps = (torch.ops.pool_ext.adaptive_max_pool(x.detach(), [output_size] * 2, sizes)
                   if kind == "max" else (None, None))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out.backward(grad)
        if kind == "max":
            torch.ops.pool_ext._adaptive_max_pool_indices(x.detach(), taps, [output_size] * 2, sizes)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    x2 = x.detach().cpu().requires_grad_()
    fn(x2, output_size, sizes.cpu()).backward(grad.cpu())
    torch.testing.assert_close(x.grad.cpu(), x2.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output_size", [1, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_sizes_changed_after_the_forward_fail_the_backward(kind, output_size, device):
    """The backward takes the sizes its forward checked, unchecked: changed in
    place since (made bad, say), they fail the backward, as any saved tensor would."""
    fn = ours(f"variable_{kind}_pool2d")
    x = torch.randn(3, 4, 9, 7, device=device, requires_grad=True)
    sizes = torch.tensor([[9, 7], [2, 5], [6, 1]], device=device)
    out = fn(x, output_size, sizes)
    sizes[1, 0] = 100
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward(torch.ones_like(out))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_backward_and_indices_ops_take_sizes_as_checked(d, device):
    """The backward and indices ops take the sizes of a checked forward and do not
    check them again (a copy to the host, on a GPU a sync): called directly with
    sizes out of range, they pool as if the sizes were clamped to [1, extent],
    never outside the input. The forwards still refuse such sizes."""
    gen = torch_generator(make_rng("unchecked-backward", d, device))
    spatial = [7, 6, 5][:d]
    x = torch.randn(3, 4, *spatial, generator=gen, dtype=torch.float64).to(device)
    bad = torch.tensor([[0] * d, [e + 3 for e in spatial], [-(2 ** 40)] + spatial[1:]], device=device)
    clamped = torch.minimum(bad.clamp(min=1), torch.tensor(spatial, device=device))
    out_size = [3] * d
    ops = torch.ops.pool_ext
    with pytest.raises(RuntimeError, match="outside the valid range"):
        ops.adaptive_avg_pool(x, out_size, bad)
    out, taps = ops.adaptive_max_pool(x, out_size, clamped)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
    assert_equal(ops._adaptive_max_pool_backward(g, x, taps, out_size, bad),
                 ops._adaptive_max_pool_backward(g, x, taps, out_size, clamped))
    assert_equal(ops._adaptive_max_pool_indices(x, taps, out_size, bad),
                 ops._adaptive_max_pool_indices(x, taps, out_size, clamped))
    assert_equal(ops._adaptive_avg_pool_backward(g, x, out_size, bad),
                 ops._adaptive_avg_pool_backward(g, x, out_size, clamped))
