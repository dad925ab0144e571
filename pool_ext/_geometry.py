"""Output-size arithmetic of csrc/pool.h and csrc/pool_plan.cpp, for the fake kernels.

Keep in step with the C++: the opcheck tests compare the two on every op.
"""

import torch
from torch._prims_common import suggest_memory_format

BYTE_TAPS = 256  # saved taps fit in uint8 up to this many per window


def div_ceil(a, b):
    return -(-a // b)


def pooled_size(size, kernel, stride, pad, dilation, ceil_mode):
    """torch's output size of a fixed window (the last window starts inside input or left pad)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def adaptive_max_window(size, out, variable):
    return size // out if (not variable and size % out == 0) else size // out + 2


def memory_format(x):
    """csrc/pool_plan.cpp's format_of: a 1d input (N, C, L) is channels-last
    where (N, C, 1, L) is, as torch's 1d pooling finds it."""
    return suggest_memory_format(x if x.dim() >= 4 else x.unsqueeze(2))


def empty_in_format(shape, fmt, dtype, device):
    """pool_plan.cpp's empty_in_format: an empty tensor in memory format fmt
    (a 1d channels-last one (N, C, L) with C at stride 1)."""
    if len(shape) == 3 and fmt == torch.channels_last:
        return torch.empty((shape[0], shape[2], shape[1]), dtype=dtype, device=device).permute(0, 2, 1)
    return torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)


def empty_planned(x, shape, dtype):
    """pool_plan.cpp's empty_planned: an empty tensor in x's memory format."""
    return empty_in_format(shape, memory_format(x), dtype, x.device)


def tap_dtype(taps_per_window):
    return torch.uint8 if taps_per_window <= BYTE_TAPS else torch.int64


def expand(name, arg, values, ndim):
    values = list(values)
    torch._check(
        len(values) in (1, ndim),
        lambda: f"{name}: {arg} must be a single int or a tuple of {ndim} ints, but got {values}",
    )
    return values * ndim if len(values) == 1 else values


def fixed_dims(name, kernel_size, stride, padding, dilation):
    """Stride (the kernel where empty), padding and dilation, one entry per dim."""
    ndim = len(kernel_size)
    stride = list(kernel_size) if len(stride) == 0 else expand(name, "stride", stride, ndim)
    return stride, expand(name, "padding", padding, ndim), expand(name, "dilation", dilation, ndim)


FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_dtype(name, x):
    """As csrc's check_input: a NotImplementedError, as torch's for a dtype it lacks."""
    torch._check_not_implemented(
        x.dtype in FLOAT_DTYPES,
        lambda: f"{name}: expected a float32, float64, float16 or bfloat16 input, but got {x.dtype}",
    )


def fixed_plan(kind, x, kernel_size, stride, padding, dilation, ceil_mode, same):
    """Output shape and taps per window of a fixed-window pooling of x (N, C, *spatial)."""
    ndim = len(kernel_size)
    name = f"{kind}{ndim}d"
    check_dtype(name, x)
    torch._check(
        x.dim() == ndim + 2,
        lambda: f"{name}: expected a {ndim + 2}D (N, C, *spatial) input, but got one of sizes {list(x.shape)}",
    )
    stride, padding, dilation = fixed_dims(name, kernel_size, stride, padding, dilation)
    if ndim == 3 and kind == "avg_pool" and not same:
        torch._check(
            all(size >= k for size, k in zip(x.shape[2:], kernel_size)),
            lambda: f"{name}: input image of sizes {list(x.shape[2:])} is smaller than kernel size "
            f"{list(kernel_size)}",
        )
    out = []
    for size, k, s, p, d in zip(x.shape[2:], kernel_size, stride, padding, dilation):
        out.append(div_ceil(size, s) if same else pooled_size(size, k, s, p, d, ceil_mode))
    torch._check(
        all(o >= 1 for o in out),
        lambda: f"{name}: given input size {list(x.shape[1:])}, calculated output size "
        f"{[x.shape[1]] + out}. Output size is too small",
    )
    taps = 1
    for k in kernel_size:
        taps *= k
    return [x.shape[0], x.shape[1], *out], taps


def windows_holding_cells(in_sizes, out_sizes, kernel_size, stride, padding, dilation, same, device):
    """Where a fixed window holds an input cell: None where all do (always but for
    dilated windows reaching into padding, which can fall wholly on padding and
    gaps), else a bool tensor that broadcasts to the output's spatial shape
    (size 1 along the dims whose windows all hold a cell). A window without
    cells pools -inf and has an index in padding, as torch's does."""
    if all(d == 1 for d in dilation):  # (one entry, or one per dim)
        return None
    ndim = len(kernel_size)
    stride, padding, dilation = fixed_dims("", kernel_size, stride, padding, dilation)
    dims = []
    for i, (size, out, k, s, p, d) in enumerate(
            zip(in_sizes, out_sizes, kernel_size, stride, padding, dilation)):
        if same:  # csrc/pool.h's same_pad_total, its smaller half first
            p = max((out - 1) * s + d * (k - 1) + 1 - size, 0) // 2
        if not all(any(0 <= o * s - p + t * d < size for t in range(k)) for o in range(out)):
            dims.append((i, size, out, k, s, p, d))
    if not dims:
        return None
    # The mask made on the device from aranges, not copied from a host list:
    # a copy from pageable memory waits for the GPU and breaks a CUDA graph.
    mask = torch.ones((), dtype=torch.bool, device=device)
    for i, size, out, k, s, p, d in dims:
        cells = (torch.arange(out, device=device) * s - p).unsqueeze(1) + torch.arange(k, device=device) * d
        shape = [1] * ndim
        shape[i] = out
        mask = mask & ((cells >= 0) & (cells < size)).any(1).view(shape)
    return mask


def check_sizes(name, x, sizes, ndim):
    """The shape, dtype and device checks of variable pooling's sizes (values need data)."""
    torch._check(
        sizes.device == x.device,
        lambda: f"{name}: expected sizes on the input's device {x.device}, but got sizes on {sizes.device}",
    )
    torch._check(
        sizes.dtype in (torch.int64, torch.int32),
        lambda: f"{name}: expected sizes of dtype int64 or int32, but got {sizes.dtype}",
    )
    lengths = ndim == 1 and sizes.dim() == 1
    torch._check(
        (lengths or (sizes.dim() == 2 and sizes.shape[1] == ndim)) and sizes.shape[0] == x.shape[0],
        lambda: f"{name}: expected sizes of shape ({x.shape[0]}, {ndim}), but got sizes of shape "
        f"{tuple(sizes.shape)}",
    )


def resolve_output_size(spatial, output_size):
    """An adaptive output_size with each -1 (torch's None) replaced by the input's extent."""
    return [size if o == -1 else o for size, o in zip(spatial, output_size)]


def adaptive_name(kind, output_size, sizes):
    """The op an adaptive pooling is named as in errors: variable_* with sizes."""
    return f"{'variable' if sizes is not None else 'adaptive'}_{kind}{len(output_size)}d"


def adaptive_plan(kind, x, output_size, sizes, with_taps=False):
    """Output shape of an adaptive (variable, with sizes) pooling and, with_taps,
    the taps of its widest window. Those depend on whether the windows divide
    the input, which under dynamic shapes is a guard: only max's forward asks."""
    ndim = len(output_size)
    variable = sizes is not None
    name = adaptive_name(kind, output_size, sizes)
    check_dtype(name, x)
    if variable:
        check_sizes(name, x, sizes, ndim)
        torch._check(
            -1 not in output_size,
            lambda: f"{name}: output_size must be given in full (no None or -1: each sample has its "
            f"own extent), but got output_size={list(output_size)}",
        )
    output_size = resolve_output_size(x.shape[2:], output_size)
    taps = None
    if with_taps:
        taps = 1
        for size, o in zip(x.shape[2:], output_size):
            taps *= adaptive_max_window(size, o, variable) if o > 0 else 1
    return [x.shape[0], x.shape[1], *output_size], taps
