"""Shared helpers of the pool_ext tests: seeded random inputs in every layout,
references built from torch ops, and the comparisons the test files share.

Conventions: ``d`` is the number of spatial dims, ``x`` the input (``(N, C, *spatial)``
or unbatched ``(C, *spatial)``), references run on the CPU (torch's kernels there
are the ground truth), ours run on ``device``.
"""

import contextlib
import math
import random

import pytest
import torch
import torch.nn.functional as F

import pool_ext  # noqa: F401  (registers torch.ops.pool_ext)
import pool_ext.functional as PF

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DTYPE_IDS = ("f32", "f64", "f16", "bf16")

HAS_CUDA = torch.cuda.is_available()
DEVICES = (
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")),
)

# (rtol, atol) of a result in this dtype against a float64 reference of the same input.
TOL = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

NAN, INF = float("nan"), float("inf")


def make_rng(*key):
    """A seeded RNG per test case (string seeds are stable across runs)."""
    return random.Random("-".join(str(k) for k in key))


def torch_generator(rng):
    return torch.Generator().manual_seed(rng.randrange(2**62))


# ---------------------------------------------------------------- inputs


def random_values(rng, shape, dtype, *, specials=0.0, ties=False, special_values=(NAN, INF, -INF)):
    """Random CPU values; ``ties``: small integers (many equal values);
    ``specials``: that fraction of cells set to one of special_values."""
    g = torch_generator(rng)
    if ties:
        v = torch.randint(-3, 4, shape, generator=g).double()
    else:
        v = torch.randn(shape, generator=g, dtype=torch.float64)
    v = v.to(dtype)
    n = v.numel()
    if specials and n:
        flat = v.view(-1)
        for _ in range(max(1, int(n * specials))):
            flat[rng.randrange(n)] = rng.choice(special_values)
    return v


def order_revealing(generator, shape, dtype):
    """Values whose sum shows the order of its adds: randn, about a third of
    them replaced by +-2**k, large enough in the float sums (of every dtype
    here but float64, whose sums are double) to swallow the small values'
    low bits differently in each order."""
    big = {torch.float16: 2.0**15, torch.float64: 2.0**53}.get(dtype, 2.0**24)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    swap = torch.rand(shape, generator=generator) < 0.3
    return torch.where(swap, torch.sign(x) * big, x).to(dtype)


def distinct_values(rng, shape, dtype=torch.float64):
    """Values without ties (for gradcheck of max pooling): a scaled random permutation."""
    n = math.prod(shape)
    perm = torch.randperm(n, generator=torch_generator(rng)).double()
    return ((perm - n / 2) / max(n, 1) * 4).reshape(shape).to(dtype)


def channels_last_format(dim):
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(dim)


def layouts_for(x_dim):
    """Layouts an input of x_dim dims can take."""
    layouts = ["contiguous", "sliced", "transposed", "expanded"]
    if channels_last_format(x_dim) is not None:
        layouts.append("channels_last")
    return layouts


def with_layout(values, layout, rng):
    """A tensor equal to ``values`` (or, for 'expanded', its first batch entry
    broadcast) on values' device with the given memory layout."""
    if layout == "contiguous":
        return values.contiguous()
    if layout == "channels_last":
        return values.contiguous(memory_format=channels_last_format(values.dim()))
    if layout == "sliced":
        # every other element of a larger buffer filled with NaN: a kernel that
        # ignores the strides reads NaN.
        dim = rng.randrange(values.dim())
        shape = list(values.shape)
        start = rng.randrange(2)
        shape[dim] = 2 * shape[dim] + start
        big = torch.full(shape, NAN, dtype=values.dtype, device=values.device)
        index = [slice(None)] * values.dim()
        index[dim] = slice(start, start + 2 * values.shape[dim], 2)
        big[tuple(index)] = values
        return big[tuple(index)]
    if layout == "transposed":
        a, b = rng.sample(range(values.dim()), 2)
        return values.transpose(a, b).contiguous().transpose(a, b)
    if layout == "expanded":
        if values.shape[0] == 0:
            return values
        return values[:1].expand(values.shape)
    raise AssertionError(layout)


def random_input(rng, shape, dtype, device, *, layout=None, specials=None, ties=None,
                 special_values=(NAN, INF, -INF)):
    """A random input in a random (or the given) layout. Returns (x, layout)."""
    if specials is None:
        specials = 0.05 if rng.random() < 0.3 else 0.0
    if ties is None:
        ties = rng.random() < 0.25
    values = random_values(rng, shape, dtype, specials=specials, ties=ties, special_values=special_values)
    values = values.to(device)
    if layout is None:
        layout = rng.choice(layouts_for(len(shape)))
    return with_layout(values, layout, rng), layout


def over_kinds_and_inputs(test):
    """Parametrizes test(kind, d, specials, dtype, device) over max and avg,
    1d to 3d, the specials of inputs_in_every_layout, every dtype and device."""
    for mark in (
        pytest.mark.parametrize("kind", ["max", "avg"]),
        pytest.mark.parametrize("d", [1, 2, 3]),
        pytest.mark.parametrize("specials", ["none", "ties", "nan"]),
        pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS),
        pytest.mark.parametrize("device", DEVICES),
    ):
        test = mark(test)
    return test


def inputs_in_every_layout(rng, shape, dtype, device, specials):
    """(x, layout) for every layout of layouts_for, values without specials
    ("none"), with ties ("ties") or with 2% NaN ("nan")."""
    for layout in layouts_for(len(shape)):
        x, _ = random_input(rng, shape, dtype, device, layout=layout,
                            specials=0.02 if specials == "nan" else 0.0, ties=specials == "ties",
                            special_values=(NAN,))
        yield x, layout


def to_strided(x, dtype=None, device=None):
    """x converted to dtype/device with the same strides (stride-0 dims stay broadcast)."""
    dtype = dtype or x.dtype
    device = device or x.device
    expanded = [i for i, s in enumerate(x.stride()) if s == 0 and x.shape[i] > 1]
    if expanded:
        base = x
        for i in expanded:
            base = base.narrow(i, 0, 1)
        return to_strided(base, dtype, device).expand(x.shape)
    out = torch.empty_strided(x.shape, x.stride(), dtype=dtype, device=device)
    return out.copy_(x)


def leaf(x):
    """x as a leaf that requires grad, keeping its strides."""
    return x.detach().requires_grad_()


def outputs_and_grad(fn, x, *args, return_indices=False, **kwargs):
    """fn on a leaf of x: (output, indices or None, gradient for a fixed ramp of output
    gradients), for comparing the same values in two layouts bit for bit."""
    xl = leaf(x)
    if return_indices:
        out, idx = fn(xl, *args, return_indices=True, **kwargs)
    else:
        out, idx = fn(xl, *args, **kwargs), None
    grad_out = torch.linspace(-3, 3, out.numel(), device=x.device).reshape(out.shape).to(x.dtype)
    (grad,) = torch.autograd.grad(out, xl, grad_out)
    return out, idx, grad


def random_grad(rng, like):
    return random_values(rng, tuple(like.shape), like.dtype).to(like.device)


# ---------------------------------------------------------------- comparisons


def assert_equal(actual, expected, msg=None):
    """Bit-for-bit, same dtype: -0 apart from +0 (which assert_close takes as equal),
    NaN equal to NaN whatever its payload (sums in another order may flip a NaN's sign)."""
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=msg)
    if actual.is_floating_point():
        zeros = actual == 0
        assert torch.equal(actual[zeros].signbit(), expected[zeros].signbit()), msg or "-0 against +0"


def assert_same_bits(actual, expected, msg=None):
    """Bit-for-bit by the stored bits: -0 against +0 and NaN payloads too."""
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    same = torch.equal(actual.detach().cpu().contiguous().view(bits),
                       expected.detach().cpu().contiguous().view(bits))
    assert same, msg or "not the same bits"


def assert_close_to_ref(actual, expected64, dtype, msg=None):
    """actual (in dtype) against a float64 reference, with dtype-appropriate tolerances."""
    assert actual.dtype == dtype, (actual.dtype, dtype)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(
        actual.cpu().double(), expected64.cpu().double(), rtol=rtol, atol=atol, equal_nan=True, msg=msg
    )


# torch's CPU kernels for these ops have no channels_last_3d path and return a
# contiguous result for a channels_last_3d input. The randomized tests compare
# memory formats only where torch keeps the input's; test_memory_format.py
# compares every op against torch's actual result.
TORCH_CPU_3D_CONTIGUOUS_ONLY = ("avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d")


def assert_same_format(ours, ref):
    """ours has the memory format of torch's result (checked for 4D and 5D tensors)."""
    fmt = channels_last_format(ours.dim())
    if fmt is None:
        return
    assert ours.is_contiguous() == ref.is_contiguous(), (ours.stride(), ref.stride())
    assert ours.is_contiguous(memory_format=fmt) == ref.is_contiguous(memory_format=fmt), (
        ours.stride(),
        ref.stride(),
    )


def flat_planes(t, d):
    """(planes, cells) view of t's last d dims."""
    planes = math.prod(t.shape[:-d])
    return t.reshape(planes, math.prod(t.shape[-d:]))


def gather_planes(x, indices, d):
    """x's values at flat spatial indices (shape of indices)."""
    if indices.numel() == 0:
        return torch.empty(indices.shape, dtype=x.dtype)
    return flat_planes(x.cpu(), d).gather(1, flat_planes(indices.cpu(), d)).reshape(indices.shape)


def scatter_grad(grad_out, indices, in_shape, d):
    """The max-pooling input gradient (float64) that sends grad_out to indices."""
    grad = torch.zeros(in_shape, dtype=torch.float64)
    if grad_out.numel() == 0 or grad.numel() == 0:
        return grad
    flat = flat_planes(grad, d)
    flat.scatter_add_(1, flat_planes(indices.cpu(), d), flat_planes(grad_out.cpu().double(), d))
    return grad


def fixed_window(kernel, stride, padding, dilation):
    """window(j, o) -> (start, step, count) of a fixed pooling window along spatial dim j."""

    def window(j, o):
        return o * stride[j] - padding[j], dilation[j], kernel[j]

    return window


def adaptive_window(in_sizes, out_sizes):
    def window(j, o):
        start = (o * in_sizes[j]) // out_sizes[j]
        end = -((-(o + 1) * in_sizes[j]) // out_sizes[j])
        return start, 1, end - start

    return window


def index_in_window(indices, in_sizes, window):
    """Boolean tensor: indices[..., o] lies on a tap of window o (flat spatial indices)."""
    d = len(in_sizes)
    idx = indices.cpu()
    ok = (idx >= 0) & (idx < math.prod(in_sizes))
    rest = idx
    for j in reversed(range(d)):
        coord = rest % in_sizes[j]
        rest = rest // in_sizes[j]
        o = torch.arange(idx.shape[idx.dim() - d + j]).view([-1] + [1] * (d - 1 - j))
        start, step, count = window(j, o)
        rel = coord - start
        ok &= (rel >= 0) & (rel % step == 0) & (rel // step < count)
    return ok


def check_max_indices(x, out, ref_out, indices, ref_indices, d, window):
    """Indices equal torch's wherever the max is a number; where it is NaN (several
    NaNs may share a window) they must select a NaN on one of the window's taps."""
    assert indices.dtype == torch.int64
    assert indices.shape == ref_indices.shape
    nan = torch.isnan(ref_out.cpu())
    idx = indices.cpu()
    assert_equal(idx[~nan], ref_indices[~nan], msg="indices differ from torch's")
    if nan.any():
        assert index_in_window(idx, list(x.shape[-d:]), window)[nan].all(), "NaN index outside its window"
        assert torch.isnan(gather_planes(x, idx, d)[nan]).all(), "NaN output's index does not select a NaN"
    # every index selects the value it reports
    if out.numel():
        assert_equal(gather_planes(x, idx, d), out.cpu())


def expected_max_indices(ref_out, ref_indices, indices):
    """torch's indices, except at NaN maxima where ours were checked separately."""
    nan = torch.isnan(ref_out.cpu())
    return torch.where(nan, indices.cpu(), ref_indices.cpu())


def is_batched(x, d):
    return x.dim() == d + 2


def ours(name):
    return getattr(PF, name)


def torchs(name):
    return getattr(F, name)


def as_arg(rng, values):
    """An int when all equal (sometimes), else a tuple."""
    if len(set(values)) == 1 and rng.random() < 0.5:
        return values[0]
    return tuple(values)


def expand_arg(value, d):
    if isinstance(value, int):
        return [value] * d
    value = list(value)
    return value * d if len(value) == 1 else value


def torch_accepts(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
        return True
    except (RuntimeError, ValueError, IndexError, TypeError):
        return False


def torch_reference(fn, x, *args, **kwargs):
    """torch's result for x, and whether its memory format is comparable: torch's
    3d max pooling kernels reject some strided layouts ('Unsupported memory
    format'); then the reference comes from a contiguous copy."""
    try:
        return fn(x, *args, **kwargs), True
    except RuntimeError as e:
        if "Unsupported memory format" not in str(e):
            raise
        return fn(x.contiguous(), *args, **kwargs), False


def check_with_indices(name, x, args, rng):
    """ours ``{name}_with_indices(x, *args, return_indices)``, as torch.nn.functional's:
    ``(output, indices)`` whichever return_indices, equal to ours ``name`` with
    ``return_indices=True``, the values torch's, the gradient through the indices;
    a TorchFunctionMode sees the function itself."""
    with_indices = ours(f"{name}_with_indices")
    d = int(name[-2])
    for return_indices in (False, True):
        xl = leaf(x)
        out, idx = with_indices(xl, *args, return_indices)
        ref_out, ref_idx = ours(name)(x, *args, return_indices=True)
        assert_equal(out, ref_out)
        assert_equal(idx, ref_idx)
        ref, _ = torch_reference(torchs(f"{name}_with_indices"), to_strided(x, device="cpu"), *args)
        assert_equal(out, ref[0])
        grad_out = random_grad(rng, out)
        (grad,) = torch.autograd.grad(out, xl, grad_out)
        assert_close_to_ref(grad, scatter_grad(grad_out, idx, x.shape, d), x.dtype)

    seen = []

    class Mode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Mode():
        with_indices(x, *args)
    assert seen[0] is with_indices


@contextlib.contextmanager
def num_threads(n):
    """torch.set_num_threads(n) for the block, the count before restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
