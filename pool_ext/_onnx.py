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


def max_pool(ndim, input, kernel, stride, padding, dilation, ceil_mode, same, return_indices):
    pool = _MAX[ndim - 1]
    if not same:
        return pool(input, kernel, stride, padding, dilation, ceil_mode, return_indices)
    if return_indices:
        raise _unsupported(f"max_pool{ndim}d", "padding='same' with return_indices=True")
    # -inf padding never beats a real cell; a window with none (a dilated one
    # can fall on padding and the gaps between its taps) pools -inf, as ours.
    pads = _same_pads(input.shape[-ndim:], kernel, stride, dilation)
    return pool(TF.pad(input, pads, value=-math.inf), kernel, stride, 0, dilation)


def avg_pool(ndim, input, kernel, stride, padding, ceil_mode, same, count_include_pad, divisor_override):
    pool = _AVG[ndim - 1]
    extra = () if ndim == 1 else (divisor_override,)
    if not same:
        return pool(input, kernel, stride, padding, ceil_mode, count_include_pad, *extra)
    pads = _same_pads(input.shape[-ndim:], kernel, stride, [1] * ndim)
    means = pool(TF.pad(input, pads), kernel, stride, 0, False, True, *extra)
    if divisor_override is not None:
        return means
    # "same" divides by the real cells: the mean over the window with padding
    # as zeros, over the share of the window that is real.
    ones = input.new_ones((1,) * (input.dim() - ndim) + tuple(input.shape[-ndim:]))
    return means / pool(TF.pad(ones, pads), kernel, stride)


def adaptive(kind, ndim, input, size, return_indices=False):
    """Adaptive pooling to `size` (functional._output_size's: -1 keeps that
    extent). To one cell, torch's (ONNX's global pooling); else masks: ONNX
    has no adaptive pooling, torch's export has none of max, and its average's
    windows are fixed at the sizes traced, whatever dims were declared dynamic."""
    size = [input.shape[-ndim + i] if o == -1 else o for i, o in enumerate(size)]
    # (other dims: torch's pooling, which takes them to one cell, or raises)
    if not return_indices and input.dim() in (ndim + 1, ndim + 2) and any(o != 1 for o in size):
        batched = input.dim() == ndim + 2
        out = _masked(kind, input if batched else input.unsqueeze(0), size, None)
        return out if batched else out.squeeze(0)
    pool = _ADAPTIVE[kind][ndim - 1]
    return pool(input, size, return_indices) if kind == "max" else pool(input, size)


def variable(kind, ndim, input, size, sizes, return_indices=False):
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
    x = input if kind == "max" else input.to(torch.float64 if input.dtype == torch.float64 else torch.float32)
    cells = 1  # the cells of each window (averages), broadcast as (N, 1, *size)
    for i, out in enumerate(size):
        dim = 2 + i
        extent = x.shape[dim] if extents is None else extents[:, i].reshape(n, 1, 1)
        o = torch.arange(out, device=input.device).reshape(1, out, 1)
        start = o * extent // out
        end = ((o + 1) * extent + out - 1) // out
        cell = torch.arange(x.shape[dim], device=input.device).reshape(1, 1, -1)
        inside = ((cell >= start) & (cell < end)).reshape(-1, 1, *([1] * (ndim - 1)), out, x.shape[dim])
        last = ndim + 1  # (dims counted from the start: the legacy exporter's transposes need that)
        along = x.movedim(dim, last).unsqueeze(last)  # (N, C, the other dims, 1, extent)
        if kind == "max":
            x = torch.where(inside, along, -math.inf).amax(last + 1).movedim(last, dim)
        else:
            x = torch.where(inside, along, 0).sum(last + 1).movedim(last, dim)
            cells = cells * (end - start).reshape(-1, 1, *([1] * i), out, *([1] * (ndim - 1 - i)))
    return x if kind == "max" else (x / cells).to(input.dtype)
