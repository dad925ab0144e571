"""torch.library.opcheck on every op in torch.ops.pool_ext (schema, fake kernel,
autograd registration, AOT dispatch with dynamic shapes), with and without
requires_grad, over dims, layouts, dtypes, both saved-position dtypes and empty
batches."""

import pytest
import torch

import pool_ext  # noqa: F401
from pool_testing import DEVICES

ops = torch.ops.pool_ext

OP_NAMES = {
    "max_pool", "_max_pool_values", "_max_pool_backward", "_max_pool_indices",
    "avg_pool", "_avg_pool_backward",
    "adaptive_max_pool", "_adaptive_max_pool_values", "_adaptive_max_pool_backward", "_adaptive_max_pool_indices",
    "adaptive_avg_pool", "_adaptive_avg_pool_backward",
    "_max_pool_autograd", "_avg_pool_autograd", "_adaptive_max_pool_autograd", "_adaptive_avg_pool_autograd",
}

# The differentiable forwards with their derivative in C++: their arguments.
IN_CPP = {ops.max_pool: ops._max_pool_autograd, ops.avg_pool: ops._avg_pool_autograd,
          ops.adaptive_max_pool: ops._adaptive_max_pool_autograd,
          ops.adaptive_avg_pool: ops._adaptive_avg_pool_autograd}


def test_every_op_is_covered():
    registered = {
        name.split("::", 1)[1].split(".")[0]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("pool_ext::")
    }
    assert registered == OP_NAMES


def randn(shape, device, dtype=torch.float32, fmt=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).to(device)
    if fmt == "nlc":  # 1d channels-last: (N, C, L) with channels innermost
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    return x.contiguous(memory_format=fmt) if fmt is not None else x


# (id, input shape, dtype, memory format, kernel, stride, padding, dilation, ceil_mode, same)
FIXED = [
    ("1d", (2, 3, 9), torch.float32, None, [3], [2], [1], [2], False, False),
    ("1d-nlc", (2, 5, 9), torch.float32, "nlc", [2], [2], [0], [1], True, False),
    ("2d", (2, 3, 7, 6), torch.float32, None, [3, 2], [2, 1], [1, 1], [1, 2], True, False),
    ("2d-cl-f16", (2, 3, 7, 6), torch.float16, torch.channels_last, [3, 3], [2, 2], [1, 0], [1, 1], False, False),
    ("2d-same", (1, 2, 7, 5), torch.float64, None, [4, 3], [2, 2], [0, 0], [1, 1], False, True),
    ("3d-cl-bf16", (1, 2, 4, 5, 5), torch.bfloat16, torch.channels_last_3d, [2, 2, 2], [1, 2, 2], [1, 0, 1],
     [1, 1, 1], True, False),
    ("2d-large-window", (1, 2, 18, 18), torch.float32, None, [17, 17], [1, 1], [0, 0], [1, 1], False, False),
    ("2d-empty-batch", (0, 3, 6, 6), torch.float32, None, [2, 2], [2, 2], [0, 0], [1, 1], False, False),
]


def fixed_samples(device, requires_grad):
    for case_id, shape, dtype, fmt, kernel, stride, padding, dilation, ceil_mode, same in FIXED:
        x = randn(shape, device, dtype, fmt)
        max_args = (kernel, stride, padding, dilation, ceil_mode, same)
        out, taps = ops.max_pool(x, *max_args)
        grad = randn(out.shape, device, dtype, fmt, seed=1)
        yield case_id, ops.max_pool, (x.clone().requires_grad_(requires_grad), *max_args)
        # The inference forward has no autograd by design: never given an input that requires grad.
        yield case_id, ops._max_pool_values, (x, *max_args)
        yield case_id, ops._max_pool_backward, (grad.requires_grad_(requires_grad), x, taps, *max_args)
        yield case_id, ops._max_pool_indices, (x, taps, *max_args)
        for count_include_pad, divisor in ((True, None), (False, 3)):
            avg_args = (kernel, stride, padding, ceil_mode, same, count_include_pad, divisor)
            yield case_id, ops.avg_pool, (x.clone().requires_grad_(requires_grad), *avg_args)
            avg_out = ops.avg_pool(x, *avg_args)
            avg_grad = randn(avg_out.shape, device, dtype, fmt, seed=2).requires_grad_(requires_grad)
            yield case_id, ops._avg_pool_backward, (avg_grad, x, *avg_args)


# (id, input shape, dtype, memory format, output size, sizes)
ADAPTIVE = [
    ("1d", (2, 3, 9), torch.float32, None, [4], None),
    ("1d-nlc-variable", (3, 4, 9), torch.float64, "nlc", [3], [[9], [4], [1]]),
    ("2d-larger", (2, 3, 5, 4), torch.float32, None, [7, 3], None),
    ("2d-cl-f16", (2, 3, 7, 6), torch.float16, torch.channels_last, [3, 3], None),
    ("3d", (1, 2, 4, 5, 5), torch.float64, None, [2, 3, 2], None),
    ("2d-global-large", (1, 2, 20, 20), torch.float32, None, [1, 1], None),
    ("2d-empty-batch", (0, 3, 6, 6), torch.float32, None, [2, 2], None),
    ("2d-empty-channels", (2, 0, 6, 6), torch.float32, None, [2, 2], None),
    ("1d-variable", (3, 2, 9), torch.float32, None, [3], [[9], [4], [1]]),
    ("2d-variable-cl", (2, 3, 6, 7), torch.bfloat16, torch.channels_last, [2, 3], [[6, 2], [3, 7]]),
    ("3d-variable", (2, 2, 4, 5, 3), torch.float32, None, [2, 2, 2], [[4, 5, 3], [1, 2, 2]]),
]

LONG_TAPS = {"2d-cl-f16", "3d-variable"}


def adaptive_samples(device, requires_grad):
    for case_id, shape, dtype, fmt, output_size, sizes in ADAPTIVE:
        x = randn(shape, device, dtype, fmt)
        sizes = None if sizes is None else torch.tensor(sizes, device=device)
        out, taps = ops.adaptive_max_pool(x, output_size, sizes)
        grad = randn(out.shape, device, dtype, fmt, seed=1)
        yield case_id, ops.adaptive_max_pool, (x.clone().requires_grad_(requires_grad), output_size, sizes)
        yield case_id, ops._adaptive_max_pool_values, (x, output_size, sizes)  # inference: never requires grad
        yield case_id, ops._adaptive_max_pool_backward, (grad.requires_grad_(requires_grad), x, taps, output_size,
                                                         sizes)
        yield case_id, ops._adaptive_max_pool_indices, (x, taps, output_size, sizes)
        if case_id in LONG_TAPS:  # as under torch.compile: int64 taps of small windows
            _, taps = ops.adaptive_max_pool(x, output_size, sizes, True)
            yield case_id, ops.adaptive_max_pool, (x.clone().requires_grad_(requires_grad), output_size, sizes,
                                                   True)
            yield case_id, ops._adaptive_max_pool_backward, (grad, x, taps, output_size, sizes)
            yield case_id, ops._adaptive_max_pool_indices, (x, taps, output_size, sizes)
        yield case_id, ops.adaptive_avg_pool, (x.clone().requires_grad_(requires_grad), output_size, sizes)
        avg_grad = randn(out.shape, device, dtype, fmt, seed=2).requires_grad_(requires_grad)
        yield case_id, ops._adaptive_avg_pool_backward, (avg_grad, x, output_size, sizes)


def all_samples(device, requires_grad):
    samples = list(fixed_samples(device, requires_grad)) + list(adaptive_samples(device, requires_grad))
    return samples + [(case_id, IN_CPP[op], args) for case_id, op, args in samples if op in IN_CPP]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "requires_grad"])
@pytest.mark.parametrize("op_name", sorted(OP_NAMES))
def test_opcheck(op_name, requires_grad, device):
    op = getattr(ops, op_name)
    samples = [(case_id, args) for case_id, sample_op, args in all_samples(device, requires_grad) if sample_op is op]
    assert samples
    for case_id, args in samples:
        try:
            torch.library.opcheck(op, args)
        except Exception as e:
            raise AssertionError(f"opcheck of pool_ext::{op_name} on sample {case_id!r} failed: {e}") from e


@pytest.mark.parametrize("device", DEVICES)
def test_taps_dtype(device):
    """Saved window positions: uint8 up to 256 cells per window, int64 beyond
    (or, for adaptive max pooling, wherever long_taps asks)."""
    x = randn((1, 1, 20, 20), device)
    assert ops.max_pool(x, [16, 16], [1, 1], [0, 0], [1, 1], False, False)[1].dtype == torch.uint8
    assert ops.max_pool(x, [17, 17], [1, 1], [0, 0], [1, 1], False, False)[1].dtype == torch.int64
    assert ops.adaptive_max_pool(x, [1, 1], None)[1].dtype == torch.int64
    assert ops.adaptive_max_pool(x, [10, 10], None)[1].dtype == torch.uint8
    assert ops.adaptive_max_pool(x, [10, 10], None, True)[1].dtype == torch.int64


@pytest.mark.parametrize("device", DEVICES)
def test_meta_tensors(device):
    """The fake kernels give the real kernels' shapes, dtypes and layouts."""
    for _, op, args in all_samples(device, False):
        real = op(*args)
        meta_args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
        fake = op(*meta_args)
        real = real if isinstance(real, tuple) else (real,)
        fake = fake if isinstance(fake, tuple) else (fake,)
        for r, f in zip(real, fake):
            assert f.device.type == "meta"
            assert (r.shape, r.dtype) == (f.shape, f.dtype), op
            if r.numel() > 1:
                assert r.stride() == f.stride(), (op, r.stride(), f.stride())
