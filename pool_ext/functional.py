"""Drop-in replacements for torch.nn.functional pooling, plus variable-size pooling.

Every function takes exactly the arguments of its ``torch.nn.functional``
namesake and returns the same values and indices. Inputs are ``(N, C, *spatial)``
or unbatched ``(C, *spatial)``, in float32, float64, float16 or bfloat16, on
the CPU or a CUDA device, contiguous, channels-last or strided; outputs and
gradients keep the input's memory format (for a batched 1d input, channels
innermost counts as channels-last, as torch's 1d pooling finds it).

Beyond torch:
  * ``padding="same"`` / ``"valid"`` on max and average pooling (TensorFlow's
    rule: ``same`` gives ``ceil(in / stride)`` outputs with the odd padding cell
    at the end; max never selects padding, average divides by real cells only,
    so ``count_include_pad`` does not apply);
  * ``variable_*_pool*d``: a padded batch where each sample is pooled
    adaptively over its own valid extent;
  * ``spatial_pyramid_pool2d``.

While ``torch.onnx.export`` traces a model, the functions take forms made of
torch ops that ONNX translates (pool_ext/_onnx.py).
"""

import math
import operator

import torch
# As torch.nn.functional's functions, ours hand inputs with a __torch_function__
# (FX proxies, tensor subclasses) and torch function modes to that override,
# naming the public function: torch.fx.symbolic_trace records it as one call.
# Not under torch.compile, which handles subclasses and modes itself: its
# trace of the override calls the function again, the override disabled but
# still seen, and fails.
from torch.overrides import handle_torch_function, has_torch_function, has_torch_function_unary

from . import _onnx
from ._geometry import resolve_output_size
from ._meta import call_op, call_plain, has_tangent

__all__ = [
    "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
    "adaptive_max_pool3d_with_indices",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "variable_max_pool1d", "variable_max_pool2d", "variable_max_pool3d",
    "variable_avg_pool1d", "variable_avg_pool2d", "variable_avg_pool3d",
    "spatial_pyramid_pool2d",
]


def _int(name, arg, value, what):
    """value as torch's argument parser takes an int: an int, a numpy integer or
    a 0-d integer tensor (anything with ``__index__``), never a bool or a float;
    else a TypeError naming the op, the argument and the value."""
    if isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool):
        return value
    # (torch takes a 0-d tensor of any integer dtype, bool included, and no other tensor)
    if not isinstance(value, bool) and (not isinstance(value, torch.Tensor) or value.dim() == 0):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name}: {arg} must be {what}, but got {value!r} of type {type(value).__name__}")


def _tuple(name, arg, value, ndim):
    # Plain ints first, by their exact type: these checks run on every call.
    if type(value) is int:
        return [value] * ndim
    what = f"a single int or a tuple of {ndim} ints"
    if not isinstance(value, (list, tuple)):
        return [_int(name, arg, value, what)] * ndim
    value = [v if type(v) is int else _int(name, arg, v, what) for v in value]
    if len(value) not in (1, ndim):
        raise RuntimeError(f"{name}: {arg} must be {what}, but got {value}")
    return value * ndim if len(value) == 1 else value


def _flag(name, arg, value):
    """A bool argument: torch's parser takes nothing else (not 0 or 1, not None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: {arg} must be a bool, but got {value!r} of type {type(value).__name__}")
    return value


def _tensor(name, input):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a Tensor, but got {type(input).__name__}")


def _batched(name, input, ndim, too_few=RuntimeError):
    """Returns the (N, C, *spatial) view of input and whether it was unbatched.
    too_few: the error for fewer dims (torch's avg_pool2d raises an IndexError)."""
    _tensor(name, input)
    dim = input.dim()
    if dim == ndim + 2:
        return input, False
    if dim == ndim + 1:
        return input.unsqueeze(0), True
    raise (too_few if dim < ndim + 1 else RuntimeError)(
        f"{name}: Expected {ndim + 1}D or {ndim + 2}D (batch mode) tensor with optional 0 dim "
        f"batch size for input, but got: {list(input.shape)}"
    )


def _empty_error(name, shape, channels):
    """The ops' error for an empty channel (channels=True) or spatial dim."""
    what = "non-zero channels and spatial sizes (only the batch may be empty)" if channels else (
        "non-zero spatial sizes")
    return RuntimeError(f"{name}: expected input with {what}, but got input of sizes {list(shape)}")


def _check_unbatched_empty(name, input, fixed):
    """The ops' checks of empty dims, made here for an unbatched (C, *spatial)
    input, after the arguments' (the ops make theirs after parsing too): the
    ops see (1, C, *spatial) and would quote that shape. Fixed pooling needs
    channels; adaptive takes none (an adaptive average asks after its global
    mean of empty planes). Not in a trace, where numel() is a traced value."""
    if torch.jit.is_tracing() or input.numel() != 0:
        return
    if fixed and input.shape[0] == 0:
        raise _empty_error(name, input.shape, True)
    if 0 in input.shape[1:]:
        raise _empty_error(name, input.shape, False)


class PaddingStringError(TypeError, ValueError):
    """A padding string other than 'same' or 'valid': torch's pooling takes no
    string (a TypeError), torch's convolutions raise a ValueError for a bad one."""


def _padding(name, padding, ndim):
    """(padding list, same) for an int, a tuple or TensorFlow's 'same' / 'valid'."""
    if isinstance(padding, str):
        if padding == "same":
            return [0] * ndim, True
        if padding == "valid":
            return [0] * ndim, False
        raise PaddingStringError(
            f"{name}: padding must be an int, a tuple of ints, 'same' or 'valid', but got '{padding}'"
        )
    return _tuple(name, "padding", padding, ndim), False


def _fixed_args(name, ndim, kernel_size, stride, padding):
    # Single ints inline, by their exact type: the common call, and these run on every call.
    kernel = [kernel_size] * ndim if type(kernel_size) is int else (
        _tuple(name, "kernel_size", kernel_size, ndim))
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel
    else:
        stride = [stride] * ndim if type(stride) is int else _tuple(name, "stride", stride, ndim)
    if type(padding) is int:
        return kernel, stride, [padding] * ndim, False
    padding, same = _padding(name, padding, ndim)
    return kernel, stride, padding, same


_unsafe_view = torch.ops.aten._unsafe_view.default


def _unbatch(result, unbatched):
    if not unbatched:
        return result
    if isinstance(result, tuple):
        return tuple(_drop_batch(t) for t in result)
    return _drop_batch(result)


def _drop_batch(t):
    # The op's fresh (1, C, ...) output without its batch dim, not as a view (as
    # torch's 2d and 3d pooling return unbatched outputs): detach_() and in-place
    # ops under another grad mode then work on it as on torch's. A trace records
    # _unsafe_view's shape as constants, and squeeze(0) follows the input.
    if torch.jit.is_tracing():
        return t.squeeze(0)
    return _unsafe_view(t, t.shape[1:])


def _inference(input):
    """Whether no derivative of this call may be taken: not under grad with an
    input that requires it, forward-mode AD, torch.func, or a trace or export
    (the program it makes may train). Max pooling then takes its values-only
    op (no taps found or kept)."""
    return not (torch.is_grad_enabled() and input.requires_grad or torch._C._are_functorch_transforms_active()
                or torch.jit.is_tracing() or torch.compiler.is_exporting() or has_tangent(input))


# torch's functions as they are at import: a user who then points
# torch.nn.functional's names at ours still reaches torch's here.
_TORCH_POOLING = {f"{kind}_pool{d}d": getattr(torch.nn.functional, f"{kind}_pool{d}d")
                  for kind in ("max", "avg", "adaptive_max", "adaptive_avg") for d in (1, 2, 3)}


def _by_torch(name, input, same, *args):
    """torch.nn.functional's `name` on input, for the dtypes our kernels do
    not take: integers, bool, complex and quantized tensors (the kernels take
    floating ones). torch's pooling gives its results where it has a kernel
    (max_pool2d/3d of integers, averages of int64, quantized pooling) and its
    error where it has none, as a drop-in must. Its functions take no padding
    string; "same" raises here, "valid" arrives as 0. (The ONNX export forms
    come first: they batch unbatched inputs for the older exporter, and apply
    divisor_override, which torch's exporters drop.)"""
    if same:
        raise NotImplementedError(
            f"{name}: padding='same' needs a floating-point input, but got {input.dtype}")
    return _TORCH_POOLING[name](input, *args)


def _max_pool(name, ndim, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    # The arguments' types before the input's dims, as torch's parser checks them.
    _tensor(name, input)
    kernel, stride, padding, same = _fixed_args(name, ndim, kernel_size, stride, padding)
    dilation = [dilation] * ndim if type(dilation) is int else _tuple(name, "dilation", dilation, ndim)
    args = (kernel, stride, padding, dilation, _flag(name, "ceil_mode", ceil_mode), same)
    if _onnx.exporting():
        return _onnx.max_pool(ndim, input, *args, return_indices)
    if not input.is_floating_point():
        return _by_torch(name, input, same, *args[:5], return_indices)
    x, unbatched = _batched(name, input, ndim)
    if unbatched:
        _check_unbatched_empty(name, input, True)
    inference = _inference(input)
    if not return_indices and inference:
        return _unbatch(call_plain("_max_pool_values", x, *args), unbatched)
    out, taps = call_op("max_pool", inference, x, *args)
    if return_indices:
        return _unbatch((out, call_plain("_max_pool_indices", x, taps, *args)), unbatched)
    return _unbatch(out, unbatched)


def _avg_pool(name, ndim, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    _tensor(name, input)
    kernel, stride, padding, same = _fixed_args(name, ndim, kernel_size, stride, padding)
    if divisor_override is not None:
        divisor_override = _int(name, "divisor_override", divisor_override, "an int or None")
    ceil_mode = _flag(name, "ceil_mode", ceil_mode)
    count_include_pad = _flag(name, "count_include_pad", count_include_pad)
    if divisor_override == 0:  # (before the dims, as torch's avg_pool2d, which indexes them)
        raise RuntimeError(f"{name}: divisor must be not zero, but got divisor_override=0")
    if _onnx.exporting():
        return _onnx.avg_pool(ndim, input, kernel, stride, padding, ceil_mode, same, count_include_pad,
                              divisor_override)
    if not input.is_floating_point():
        extra = () if ndim == 1 else (divisor_override,)  # (torch's avg_pool1d has none)
        return _by_torch(name, input, same, kernel, stride, padding, ceil_mode, count_include_pad, *extra)
    x, unbatched = _batched(name, input, ndim, IndexError if ndim == 2 else RuntimeError)
    if unbatched:
        _check_unbatched_empty(name, input, True)
    out = call_op("avg_pool", _inference(input), x, kernel, stride, padding, ceil_mode, same,
                  count_include_pad, divisor_override)
    return _unbatch(out, unbatched)


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """1d max pooling, as ``torch.nn.functional.max_pool1d``.

    Args:
        input: ``Tensor[N, C, L]`` or ``Tensor[C, L]``.
        padding: int, tuple, or ``"same"`` / ``"valid"``.
    Returns:
        ``Tensor[N, C, L_out]``, and with ``return_indices`` the int64 indices into ``L``.
    """
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(max_pool1d, (input,),
                                     input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return _max_pool("max_pool1d", 1, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2d max pooling, as ``torch.nn.functional.max_pool2d``.

    Args:
        input: ``Tensor[N, C, H, W]`` or ``Tensor[C, H, W]`` (channels-last keeps its layout).
        padding: int, tuple, or ``"same"`` / ``"valid"``.
    Returns:
        ``Tensor[N, C, H_out, W_out]``, and with ``return_indices`` the int64 indices into ``H * W``
        (accepted by ``torch.nn.functional.max_unpool2d``).
    """
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(max_pool2d, (input,),
                                     input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return _max_pool("max_pool2d", 2, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """3d max pooling, as ``torch.nn.functional.max_pool3d``.

    Args:
        input: ``Tensor[N, C, D, H, W]`` or ``Tensor[C, D, H, W]``.
    Returns:
        ``Tensor[N, C, D_out, H_out, W_out]``, and with ``return_indices`` indices into ``D * H * W``.
    """
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(max_pool3d, (input,),
                                     input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return _max_pool("max_pool3d", 3, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool1d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                            return_indices=False):
    """As ``torch.nn.functional.max_pool1d_with_indices``: :func:`max_pool1d` that
    returns ``(output, indices)`` whatever ``return_indices`` says, as torch's does:
    ``Tensor[N, C, L]`` (or ``[C, L]``) -> ``(Tensor[N, C, L_out], int64 indices of that shape)``."""
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(max_pool1d_with_indices, (input,),
                                     input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return _max_pool("max_pool1d", 1, input, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                            return_indices=False):
    """As ``torch.nn.functional.max_pool2d_with_indices``: :func:`max_pool2d` that
    returns ``(output, indices)`` whatever ``return_indices`` says, as torch's does:
    ``Tensor[N, C, H, W]`` (or ``[C, H, W]``) -> ``(Tensor[N, C, H_out, W_out], int64 indices of that shape)``."""
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(max_pool2d_with_indices, (input,),
                                     input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return _max_pool("max_pool2d", 2, input, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool3d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                            return_indices=False):
    """As ``torch.nn.functional.max_pool3d_with_indices``: :func:`max_pool3d` that
    returns ``(output, indices)`` whatever ``return_indices`` says, as torch's does:
    ``Tensor[N, C, D, H, W]`` (or unbatched) -> ``(Tensor[N, C, D_out, H_out, W_out], int64 indices)``."""
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(max_pool3d_with_indices, (input,),
                                     input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)
    return _max_pool("max_pool3d", 3, input, kernel_size, stride, padding, dilation, ceil_mode, True)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """1d average pooling, as ``torch.nn.functional.avg_pool1d``: ``Tensor[N, C, L]`` -> ``Tensor[N, C, L_out]``."""
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(avg_pool1d, (input,),
                                     input, kernel_size, stride, padding, ceil_mode, count_include_pad)
    return _avg_pool("avg_pool1d", 1, input, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """2d average pooling, as ``torch.nn.functional.avg_pool2d``.

    ``Tensor[N, C, H, W]`` -> ``Tensor[N, C, H_out, W_out]`` (unbatched ``Tensor[C, H, W]`` too).
    """
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(avg_pool2d, (input,), input, kernel_size, stride, padding, ceil_mode,
                                     count_include_pad, divisor_override)
    return _avg_pool("avg_pool2d", 2, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


def avg_pool3d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """3d average pooling, as ``torch.nn.functional.avg_pool3d`` (bfloat16 on the CPU too).

    ``Tensor[N, C, D, H, W]`` -> ``Tensor[N, C, D_out, H_out, W_out]``.
    """
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(avg_pool3d, (input,), input, kernel_size, stride, padding, ceil_mode,
                                     count_include_pad, divisor_override)
    return _avg_pool("avg_pool3d", 3, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)


# ---------------------------------------------------------------- adaptive


def _output_size(name, output_size, ndim):
    """output_size as the ops take it: one entry per dim, -1 where torch's None
    keeps the input's extent. The op resolves it, so a traced or compiled
    graph follows the input's size instead of the size it was made with."""
    # As torch: an int stands for every dim; a sequence needs one entry per dim.
    # Beyond torch, None (keep the input's extent) may also stand for every dim,
    # and be an entry of a 1d size.
    if type(output_size) is int and output_size >= 0:  # (every call: one int first)
        return [output_size] * ndim
    what = f"an int, None or a tuple of {ndim} of them"
    if _is_size_sequence(output_size):
        sizes = [None if o is None else _int(name, "output_size", o, what) for o in output_size]
    else:
        sizes = [None if output_size is None else _int(name, "output_size", output_size, what)] * ndim
    if len(sizes) != ndim:
        raise RuntimeError(f"{name}: output_size must have {ndim} elements, but got {list(sizes)}")
    if any(o is not None and o < 0 for o in sizes):
        raise RuntimeError(
            f"{name}: elements of output_size must be greater than or equal to 0, but got {list(sizes)}"
        )
    return [-1 if o is None else o for o in sizes]


def _check_channels(name, x, unbatched, size):
    # torch (CPU) pools an empty channel dim only where it leads (an unbatched
    # input), in adaptive_avg_pool1d/2d, and in adaptive_avg_pool3d to 1x1x1
    # (a mean); our ops take it everywhere. Not in a trace, where shapes are
    # tensors and a test of one warns.
    if not name.startswith("adaptive_") or unbatched or torch.jit.is_tracing() or x.shape[1] != 0:
        return
    if name not in ("adaptive_avg_pool1d", "adaptive_avg_pool2d") and not (
            name == "adaptive_avg_pool3d" and resolve_output_size(x.shape[2:], size) == [1, 1, 1]):
        raise _empty_error(name, x.shape, True)


def _long_taps():
    """Whether adaptive max pooling saves int64 taps whatever its windows:
    under torch.compile and torch.export, where sizes may be symbolic, and
    the dtype that the windows' taps fit would guard them (recompiling when
    a size's divisibility changes; export refuses such a guard on a dim it
    declared dynamic). Dynamo shows symbolic sizes as ints, hence not a
    test of the sizes themselves."""
    return torch.compiler.is_compiling()


def _is_size_sequence(output_size):
    """Sequences as torch iterates them: lists, tuples, ranges, 1-d tensors and arrays."""
    return isinstance(output_size, (list, tuple, range)) or getattr(output_size, "ndim", 0) == 1


def _check_sequence_dims(name, ndim, input, output_size):
    """As torch's adaptive 2d and 3d pooling, before its other checks: an output_size
    sequence needs an input of more dims than it has entries (a ValueError), where
    one int passes (as the global average of a lone (H, W) image)."""
    if ndim > 1 and _is_size_sequence(output_size) and input.dim() <= len(output_size):
        raise ValueError(
            f"{name}: Input dimension should be at least {len(output_size) + 1}, but got input of "
            f"sizes {list(input.shape)}"
        )


def _torch_output_size(ndim, input, output_size):
    """An output_size (checked) as torch's adaptive functions take it, for the
    inputs handed to them: our extensions, None for every dim and None in a 1d
    size, spelt as torch's None entries, or in 1d, where torch has none, as
    the input's length."""
    if output_size is None or (
            ndim == 1 and _is_size_sequence(output_size) and any(o is None for o in output_size)):
        if ndim > 1:
            return (None,) * ndim
        if input.dim() >= 2:
            return input.shape[-1]
    return output_size


def _adaptive_max(name, ndim, input, output_size, sizes, return_indices):
    _tensor(name, input)
    if sizes is None:
        _check_sequence_dims(name, ndim, input, output_size)
    size = _output_size(name, output_size, ndim)  # (types before the input's dims, as torch)
    if _onnx.exporting():
        return _onnx.adaptive("max", ndim, input, size, sizes, return_indices)
    if sizes is None and not input.is_floating_point():
        return _by_torch(name, input, False, _torch_output_size(ndim, input, output_size), return_indices)
    x, unbatched = _batched(name, input, ndim)
    _check_channels(name, x, unbatched, size)
    if unbatched:
        _check_unbatched_empty(name, input, False)
    inference = _inference(input)
    if not return_indices and inference:
        return _unbatch(call_plain("_adaptive_max_pool_values", x, size, sizes), unbatched)
    out, taps = call_op("adaptive_max_pool", inference, x, size, sizes, _long_taps())
    if return_indices:
        return _unbatch((out, call_plain("_adaptive_max_pool_indices", x, taps, size, sizes)), unbatched)
    return _unbatch(out, unbatched)


def _global_mean_of_any_dims(name, ndim, input, output_size):
    """torch's adaptive_avg_pool2d/3d to one cell is a mean over the last ndim
    dims, which takes any number of dims before them (a (N, T, C, H, W) batch
    of video frames, a lone (H, W) image), where its other output sizes need
    (C, *S) or (N, C, *S). So here: the leading dims are folded into (N, C)
    for the op and unfolded after. None where the input has those dims, or the
    output is not one cell."""
    dim = input.dim()
    if dim < ndim and type(output_size) is int and output_size == 1:
        raise IndexError(  # (as torch's mean over dims the input lacks)
            f"{name}: Dimension out of range: a mean over the last {ndim} dims of an input of sizes "
            f"{list(input.shape)}")
    if dim in (ndim + 1, ndim + 2) or dim < ndim:
        return None
    size = _output_size(name, output_size, ndim)
    spatial = input.shape[dim - ndim:]
    if resolve_output_size(spatial, size) != [1] * ndim:
        return None
    lead = input.shape[:dim - ndim]
    x = input.reshape(math.prod(lead[:-1]), lead[-1] if lead else 1, *spatial)
    out = _adaptive_avg(name, ndim, x, output_size, None)
    # (a fresh tensor, as torch's mean: not a view, as _drop_batch says)
    shape = (*lead, *([1] * ndim))
    return out.reshape(shape) if torch.jit.is_tracing() else _unsafe_view(out, shape)


def _adaptive_avg(name, ndim, input, output_size, sizes):
    _tensor(name, input)
    if sizes is None:
        _check_sequence_dims(name, ndim, input, output_size)
    if _onnx.exporting():
        return _onnx.adaptive("avg", ndim, input, _output_size(name, output_size, ndim), sizes)
    if sizes is None and not input.is_floating_point():
        _output_size(name, output_size, ndim)  # (its types checked as for other inputs)
        return _by_torch(name, input, False, _torch_output_size(ndim, input, output_size))
    if sizes is None and ndim > 1:
        mean = _global_mean_of_any_dims(name, ndim, input, output_size)
        if mean is not None:
            return mean
    size = _output_size(name, output_size, ndim)  # (types before the input's dims, as torch)
    x, unbatched = _batched(name, input, ndim)
    _check_channels(name, x, unbatched, size)
    # (not in a trace, where numel() and shapes are traced values)
    if (sizes is None and not torch.jit.is_tracing() and x.numel() == 0 and 0 in x.shape[2:]
            and x.is_floating_point() and resolve_output_size(x.shape[2:], size) == [1] * ndim):
        # torch's global average is a mean: over empty planes NaN, with an empty gradient.
        # (Other dtypes go on to the op, whose error names it.)
        return _unbatch(x.mean(tuple(range(2, ndim + 2)), keepdim=True), unbatched)
    if unbatched:
        _check_unbatched_empty(name, input, False)
    return _unbatch(call_op("adaptive_avg_pool", _inference(input), x, size, sizes), unbatched)


def adaptive_max_pool1d(input, output_size, return_indices=False):
    """As ``torch.nn.functional.adaptive_max_pool1d``: ``Tensor[N, C, L]`` -> ``Tensor[N, C, output_size]``."""
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(adaptive_max_pool1d, (input,), input, output_size, return_indices)
    return _adaptive_max("adaptive_max_pool1d", 1, input, output_size, None, return_indices)


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """As ``torch.nn.functional.adaptive_max_pool2d``: ``Tensor[N, C, H, W]`` -> ``Tensor[N, C, *output_size]``.

    ``None`` in ``output_size`` keeps that input size.
    """
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(adaptive_max_pool2d, (input,), input, output_size, return_indices)
    return _adaptive_max("adaptive_max_pool2d", 2, input, output_size, None, return_indices)


def adaptive_max_pool3d(input, output_size, return_indices=False):
    """As ``torch.nn.functional.adaptive_max_pool3d``: ``Tensor[N, C, D, H, W]`` -> ``Tensor[N, C, *output_size]``."""
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(adaptive_max_pool3d, (input,), input, output_size, return_indices)
    return _adaptive_max("adaptive_max_pool3d", 3, input, output_size, None, return_indices)


def adaptive_max_pool1d_with_indices(input, output_size, return_indices=False):
    """As ``torch.nn.functional.adaptive_max_pool1d_with_indices``: :func:`adaptive_max_pool1d`
    that returns ``(output, indices)`` whatever ``return_indices`` says, as torch's does:
    ``Tensor[N, C, *S]`` (or ``[C, *S]``) -> ``(Tensor[N, C, *output_size], int64 indices of that shape)``."""
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(adaptive_max_pool1d_with_indices, (input,),
                                     input, output_size, return_indices)
    return _adaptive_max("adaptive_max_pool1d", 1, input, output_size, None, True)


def adaptive_max_pool2d_with_indices(input, output_size, return_indices=False):
    """As ``torch.nn.functional.adaptive_max_pool2d_with_indices``: :func:`adaptive_max_pool2d`
    that returns ``(output, indices)`` whatever ``return_indices`` says, as torch's does:
    ``Tensor[N, C, *S]`` (or ``[C, *S]``) -> ``(Tensor[N, C, *output_size], int64 indices of that shape)``."""
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(adaptive_max_pool2d_with_indices, (input,),
                                     input, output_size, return_indices)
    return _adaptive_max("adaptive_max_pool2d", 2, input, output_size, None, True)


def adaptive_max_pool3d_with_indices(input, output_size, return_indices=False):
    """As ``torch.nn.functional.adaptive_max_pool3d_with_indices``: :func:`adaptive_max_pool3d`
    that returns ``(output, indices)`` whatever ``return_indices`` says, as torch's does:
    ``Tensor[N, C, *S]`` (or ``[C, *S]``) -> ``(Tensor[N, C, *output_size], int64 indices of that shape)``."""
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(adaptive_max_pool3d_with_indices, (input,),
                                     input, output_size, return_indices)
    return _adaptive_max("adaptive_max_pool3d", 3, input, output_size, None, True)


def adaptive_avg_pool1d(input, output_size):
    """As ``torch.nn.functional.adaptive_avg_pool1d``: ``Tensor[N, C, L]`` -> ``Tensor[N, C, output_size]``."""
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(adaptive_avg_pool1d, (input,), input, output_size)
    return _adaptive_avg("adaptive_avg_pool1d", 1, input, output_size, None)


def adaptive_avg_pool2d(input, output_size):
    """As ``torch.nn.functional.adaptive_avg_pool2d``: ``Tensor[N, C, H, W]`` -> ``Tensor[N, C, *output_size]``.

    To one cell (a mean, as torch's), any dims may lead: ``Tensor[*, H, W]`` -> ``Tensor[*, 1, 1]``.
    """
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(adaptive_avg_pool2d, (input,), input, output_size)
    return _adaptive_avg("adaptive_avg_pool2d", 2, input, output_size, None)


def adaptive_avg_pool3d(input, output_size):
    """As ``torch.nn.functional.adaptive_avg_pool3d``: ``Tensor[N, C, D, H, W]`` -> ``Tensor[N, C, *output_size]``.

    To one cell (a mean, as torch's), any dims may lead: ``Tensor[*, D, H, W]`` -> ``Tensor[*, 1, 1, 1]``.
    """
    if has_torch_function_unary(input) and not torch.compiler.is_compiling():
        return handle_torch_function(adaptive_avg_pool3d, (input,), input, output_size)
    return _adaptive_avg("adaptive_avg_pool3d", 3, input, output_size, None)


# ---------------------------------------------------------------- variable


def _variable_input(name, input, ndim, sizes):
    _tensor(name, input)
    if input.dim() != ndim + 2:
        raise RuntimeError(
            f"{name}: expected a padded batch of {ndim + 2}D (N, C, *spatial), but got input of sizes "
            f"{list(input.shape)}"
        )
    if not isinstance(sizes, torch.Tensor):
        raise TypeError(f"{name}: expected sizes as an integer tensor, but got {type(sizes).__name__}")


def variable_max_pool1d(input, output_size, sizes, return_indices=False):
    """Masked adaptive max pooling of a padded batch of sequences.

    Args:
        input: ``Tensor[N, C, L]``, sample ``n`` valid in ``[:, :sizes[n]]``.
        output_size: int (``1`` gives masked global max pooling).
        sizes: integer ``Tensor[N]`` or ``Tensor[N, 1]`` of lengths, on ``input``'s device.
    Returns:
        ``Tensor[N, C, output_size]``; with ``return_indices`` also indices into ``L``.
    Padding cells are never read and get zero gradient. Lengths are checked as
    in ``variable_max_pool2d``.
    """
    if has_torch_function((input, sizes)) and not torch.compiler.is_compiling():
        return handle_torch_function(variable_max_pool1d, (input, sizes), input, output_size, sizes, return_indices)
    _variable_input("variable_max_pool1d", input, 1, sizes)
    return _adaptive_max("variable_max_pool1d", 1, input, output_size, sizes, return_indices)


def variable_max_pool2d(input, output_size, sizes, return_indices=False):
    """Adaptive max pooling of each image of a padded batch over its own size.

    Args:
        input: ``Tensor[N, C, H, W]``, sample ``n`` valid in ``[:, :sizes[n, 0], :sizes[n, 1]]``.
        output_size: int or ``(H_out, W_out)``.
        sizes: integer ``Tensor[N, 2]`` on ``input``'s device.
    Returns:
        ``Tensor[N, C, H_out, W_out]``: what slicing each sample and calling
        ``adaptive_max_pool2d`` gives; with ``return_indices`` also indices into the padded ``H * W``.
    A size outside ``[1, extent]`` is an error, except while a CUDA graph is
    captured (checking would sync the GPU): there sizes are clamped to that range.
    """
    if has_torch_function((input, sizes)) and not torch.compiler.is_compiling():
        return handle_torch_function(variable_max_pool2d, (input, sizes), input, output_size, sizes, return_indices)
    _variable_input("variable_max_pool2d", input, 2, sizes)
    return _adaptive_max("variable_max_pool2d", 2, input, output_size, sizes, return_indices)


def variable_max_pool3d(input, output_size, sizes, return_indices=False):
    """As ``variable_max_pool2d`` for ``Tensor[N, C, D, H, W]`` with ``sizes`` of ``Tensor[N, 3]``
    (checked as there)."""
    if has_torch_function((input, sizes)) and not torch.compiler.is_compiling():
        return handle_torch_function(variable_max_pool3d, (input, sizes), input, output_size, sizes, return_indices)
    _variable_input("variable_max_pool3d", input, 3, sizes)
    return _adaptive_max("variable_max_pool3d", 3, input, output_size, sizes, return_indices)


def variable_avg_pool1d(input, output_size, sizes):
    """Masked adaptive average pooling of a padded batch of sequences (``output_size=1``: masked mean).

    ``Tensor[N, C, L]`` with lengths ``Tensor[N]`` -> ``Tensor[N, C, output_size]``; lengths
    checked as in ``variable_max_pool2d``.
    """
    if has_torch_function((input, sizes)) and not torch.compiler.is_compiling():
        return handle_torch_function(variable_avg_pool1d, (input, sizes), input, output_size, sizes)
    _variable_input("variable_avg_pool1d", input, 1, sizes)
    return _adaptive_avg("variable_avg_pool1d", 1, input, output_size, sizes)


def variable_avg_pool2d(input, output_size, sizes):
    """Adaptive average pooling of each image over its own size.

    ``Tensor[N, C, H, W]`` with ``sizes`` ``Tensor[N, 2]`` -> ``Tensor[N, C, H_out, W_out]``;
    sizes checked as in ``variable_max_pool2d``.
    """
    if has_torch_function((input, sizes)) and not torch.compiler.is_compiling():
        return handle_torch_function(variable_avg_pool2d, (input, sizes), input, output_size, sizes)
    _variable_input("variable_avg_pool2d", input, 2, sizes)
    return _adaptive_avg("variable_avg_pool2d", 2, input, output_size, sizes)


def variable_avg_pool3d(input, output_size, sizes):
    """As ``variable_avg_pool2d`` for ``Tensor[N, C, D, H, W]`` with ``sizes`` of ``Tensor[N, 3]``
    (checked as there)."""
    if has_torch_function((input, sizes)) and not torch.compiler.is_compiling():
        return handle_torch_function(variable_avg_pool3d, (input, sizes), input, output_size, sizes)
    _variable_input("variable_avg_pool3d", input, 3, sizes)
    return _adaptive_avg("variable_avg_pool3d", 3, input, output_size, sizes)


# ---------------------------------------------------------------- pyramid


def spatial_pyramid_pool2d(input, levels=(1, 2, 4), mode="max", sizes=None):
    """Spatial pyramid pooling: a fixed-length vector from an image of any size.

    Pools to an ``l x l`` grid for each level ``l``, flattens and concatenates.

    Args:
        input: ``Tensor[N, C, H, W]`` or ``Tensor[C, H, W]``.
        levels: grid sizes.
        mode: ``"max"`` or ``"avg"``.
        sizes: optional integer ``Tensor[N, 2]``: each image's valid size in a padded batch
            (checked as in ``variable_max_pool2d``).
    Returns:
        ``Tensor[N, C * sum(l * l for l in levels)]`` (``Tensor[C * ...]`` unbatched).
    """
    if has_torch_function((input, sizes)) and not torch.compiler.is_compiling():
        return handle_torch_function(spatial_pyramid_pool2d, (input, sizes), input, levels, mode, sizes)
    name = "spatial_pyramid_pool2d"
    if mode not in ("max", "avg"):
        raise ValueError(f"{name}: mode must be 'max' or 'avg', but got '{mode}'")
    levels = [_int(name, "levels", level, "a tuple of positive ints") for level in levels]
    if len(levels) == 0 or any(level < 1 for level in levels):
        raise ValueError(f"{name}: levels must be positive ints, but got {tuple(levels)}")
    x, unbatched = _batched(name, input, 2)
    if sizes is not None and unbatched:
        raise RuntimeError(f"{name}: sizes need a batched (N, C, H, W) input")
    if unbatched:  # (named as the ops' errors are below)
        _check_unbatched_empty(f"{name}: adaptive_{mode}_pool2d", input, False)
    inference = _inference(input)
    exporting = _onnx.exporting()
    parts = []
    try:
        for level in levels:
            size = [level, level]
            if exporting:
                pooled = _onnx.adaptive(mode, 2, x, size, sizes)
            elif mode == "avg":
                pooled = call_op("adaptive_avg_pool", inference, x, size, sizes)
            elif inference:
                pooled = call_plain("_adaptive_max_pool_values", x, size, sizes)
            else:
                pooled, _taps = call_op("adaptive_max_pool", False, x, size, sizes, _long_taps())
            parts.append(pooled.flatten(1))
    except RuntimeError as e:
        # The ops' checks name the adaptive (or variable) op they run as.
        if torch.compiler.is_compiling():
            raise
        raise type(e)(f"{name}: {e}") from None  # (NotImplementedError stays one)
    return _unbatch(torch.cat(parts, dim=1), unbatched)
