"""pool_ext's functions as torch's own ops, while torch.onnx.export traces a model.

ONNX has translations of torch's pooling ops, not of ours. So while the ONNX
exporter traces, the functions call torch.nn.functional's namesakes (the same
results: that is their contract), and write what torch lacks, padding="same"
and variable pooling, with torch ops that ONNX has.
"""

import math

import torch
import torch.nn.functional as TF

_MAX = (TF.max_pool1d, TF.max_pool2d, TF.max_pool3d)
_AVG = (TF.avg_pool1d, TF.avg_pool2d, TF.avg_pool3d)
_ADAPTIVE = {"max": (TF.adaptive_max_pool1d, TF.adaptive_max_pool2d, TF.adaptive_max_pool3d),
             "avg": (TF.adaptive_avg_pool1d, TF.adaptive_avg_pool2d, TF.adaptive_avg_pool3d)}


def exporting():
    """Whether torch.onnx.export is tracing this call. Both of its exporters
    trace (torch.export, or torch.jit.trace where dynamo=False), so the ONNX
    flag is read only in a trace: the first use of torch.onnx imports it (60 ms),
    and each read costs a microsecond (the two tests before it, 0.2)."""
    return (torch.compiler.is_exporting() or torch.jit.is_tracing()) and torch.onnx.is_in_onnx_export()


def _widened(t):
    """t in the dtype our kernels sum in: float64 stays, the others are float32."""
    return t if t.dtype == torch.float64 else t.float()


def _unsupported(name, what):
    return NotImplementedError(f"{name}: torch.onnx.export does not support {what}")


def _same_pads(spatial, kernel, stride, dilation):
    """TensorFlow's "same" padding (csrc/pool.h's same_pad_total), the odd cell
    at the end, as F.pad lists it: the last dim first."""
    pads = []
    for size, k, s, d in reversed(list(zip(spatial, kernel, stride, dilation))):
        # (no floor division of negative numbers: the legacy exporter's truncates)
        total = ((size + s - 1) // s - 1) * s + d * (k - 1) + 1 - size
        # (torch.jit.trace gives sizes as tensors, torch.export as ints or SymInts)
        total = total.clamp_min(0) if isinstance(total, torch.Tensor) else torch.sym_max(total, 0)
        pads += [total // 2, total - total // 2]
    return pads


def _batched(ndim, input, pool):
    """pool(input) of an (N, C, *S) input, or of an unbatched (C, *S) one as a batch
    of one (the older exporter's pooling takes batches only)."""
    if input.dim() != ndim + 1:
        return pool(input)
    out = pool(input.unsqueeze(0))
    return tuple(t.squeeze(0) for t in out) if isinstance(out, tuple) else out.squeeze(0)


def max_pool(ndim, input, kernel, stride, padding, dilation, ceil_mode, same, return_indices):
    pool = _MAX[ndim - 1]
    if not same:
        return _batched(ndim, input, lambda x: pool(x, kernel, stride, padding, dilation, ceil_mode,
                                                    return_indices))
    if return_indices:
        raise _unsupported(f"max_pool{ndim}d", "padding='same' with return_indices=True")
    # -inf padding never beats a real cell; a window with none (a dilated one
    # can fall on padding and the gaps between its taps) pools -inf, as ours.
    pads = _same_pads(input.shape[-ndim:], kernel, stride, dilation)
    return _batched(ndim, input, lambda x: pool(TF.pad(x, pads, value=-math.inf), kernel, stride, 0, dilation))


def _window_cells(ndim, spatial, out_spatial, kernel, stride, padding, device):
    """The cells of each window, padding counted (torch's divisor with
    count_include_pad: a window's padding after the input counts up to
    `padding`), broadcast as the output's spatial dims."""
    cells = 1
    for i in range(ndim):
        start = torch.arange(out_spatial[i], device=device) * stride[i] - padding[i]
        count = (start + kernel[i]).clamp_max(spatial[i] + padding[i]) - start
        cells = cells * count.reshape(-1, *([1] * (ndim - 1 - i)))
    return cells


def avg_pool(ndim, input, kernel, stride, padding, ceil_mode, same, count_include_pad, divisor_override):
    pool = _AVG[ndim - 1]
    spatial = input.shape[-ndim:]
    if same:
        pads = _same_pads(spatial, kernel, stride, [1] * ndim)
        means = _batched(ndim, input, lambda x: pool(TF.pad(x, pads), kernel, stride))
        if divisor_override is not None:  # (every window is whole inside the padded input)
            return (_widened(means) * math.prod(kernel) / divisor_override).to(input.dtype)
        # "same" divides by the real cells: the mean over the window with padding
        # as zeros, over the share of the window that is real.
        ones = input.new_ones((1, 1, *spatial))
        return means / pool(TF.pad(ones, pads), kernel, stride)[0, 0]
    # ONNX's average pooling has no divisor_override (torch's exporters drop it):
    # the mean with padding counted, times its divisor, over the one asked for.
    include_pad = count_include_pad or divisor_override is not None
    means = _batched(ndim, input, lambda x: pool(x, kernel, stride, padding, ceil_mode, include_pad))
    if divisor_override is None:
        return means
    cells = _window_cells(ndim, spatial, means.shape[-ndim:], kernel, stride, padding, input.device)
    return (_widened(means) * cells / divisor_override).to(input.dtype)


def adaptive(kind, ndim, input, size, sizes=None, return_indices=False):
    """Adaptive pooling to `size` (functional._output_size's: -1 keeps that
    extent), or variable pooling where `sizes` is given. Averages to one cell:
    torch's (ONNX's global pooling); maxima to one cell: a max over the
    spatial dims; else masks. ONNX has no adaptive pooling: torch's export
    has no adaptive max (and turns its one-cell form's float16 into float32),
    and fixes its adaptive average's windows at the sizes traced, whatever
    dims were declared dynamic."""
    if sizes is not None:
        return _variable(kind, ndim, input, size, sizes, return_indices)
    size = [input.shape[-ndim + i] if o == -1 else o for i, o in enumerate(size)]
    name = f"adaptive_{kind}_pool{ndim}d"
    if input.dim() not in (ndim + 1, ndim + 2) or (kind == "avg" and all(o == 1 for o in size)):
        # (other dims: torch's pooling, which takes them to one cell, or raises)
        pool = _ADAPTIVE[kind][ndim - 1]
        return pool(input, size, return_indices) if kind == "max" else pool(input, size)
    if return_indices:
        raise _unsupported(name, "return_indices=True")
    if kind == "max" and all(o == 1 for o in size):
        # (unsqueezed after, not keepdim: torch 2.14 exports a float16 amax whose
        # result is a graph output as float32, dropping the cast back)
        out = input.amax(tuple(range(-ndim, 0)))
        for _ in range(ndim):
            out = out.unsqueeze(-1)
        return out
    return _batched(ndim, input, lambda x: _masked(kind, x, size, None))


def _variable(kind, ndim, input, size, sizes, return_indices):
    """Variable pooling: as the ops, without their check of `sizes` (data, not
    known at export)."""
    name = f"variable_{kind}_pool{ndim}d"
    if return_indices:
        raise _unsupported(name, "return_indices=True")
    if -1 in size:
        raise RuntimeError(f"{name}: output_size must be given in full (no None or -1: each sample has its "
                           f"own extent), but got output_size={size}")
    return _masked(kind, input, size, sizes.reshape(input.shape[0], ndim).long())


def _masked(kind, input, size, extents):
    """Sample n of (N, C, *spatial) pooled adaptively over its first extents[n, i]
    cells of each dim i (all of them where extents is None) to `size`. Max and
    sum are taken one dim at a time (a window is a box), each output's window a
    mask over that dim's cells."""
    n, ndim = input.shape[0], len(size)
    x = input if kind == "max" else _widened(input)
    cells = 1  # the cells of each window (averages), broadcast as (N, 1, *size)
    for i, out in enumerate(size):
        dim = 2 + i
        # (sizes out of range, unchecked here, pool as the nearest in range)
        extent = x.shape[dim] if extents is None else extents[:, i].clamp_min(1).clamp_max(x.shape[dim])
        extent = extent if extents is None else extent.reshape(n, 1, 1)
        o = torch.arange(out, device=input.device).reshape(1, out, 1)
        start = o * extent // out
        end = ((o + 1) * extent + out - 1) // out
        cell = torch.arange(x.shape[dim], device=input.device).reshape(1, 1, -1)
        inside = (cell >= start) & (cell < end)  # (N or 1, out, extent)
        inside = inside.reshape(inside.shape[0], 1, *([1] * (ndim - 1)), out, x.shape[dim])
        last = ndim + 1  # (dims counted from the start: the legacy exporter's transposes need that)
        along = x.movedim(dim, last).unsqueeze(last)  # (N, C, the other dims, 1, extent)
        if kind == "max":
            x = torch.where(inside, along, -math.inf).amax(last + 1).movedim(last, dim)
        else:
            x = torch.where(inside, along, 0).sum(last + 1).movedim(last, dim)
            count = end - start
            cells = cells * count.reshape(count.shape[0], 1, *([1] * i), out, *([1] * (ndim - 1 - i)))
    return x if kind == "max" else (x / cells).to(input.dtype)
