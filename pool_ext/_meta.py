"""Fake kernels (shapes for torch.compile and meta tensors) and autograd of the pool_ext ops."""

import torch

from . import _geometry as geo

ops = torch.ops.pool_ext


def _empty_like_plan(x, shape, dtype=None):
    return torch.empty(
        shape, dtype=dtype or x.dtype, device=x.device, memory_format=geo.memory_format(x)
    )


# ---------------------------------------------------------------- fake kernels


@torch.library.register_fake("pool_ext::max_pool")
def _(self, kernel_size, stride, padding, dilation, ceil_mode, same):
    shape, taps = geo.fixed_plan("max_pool", self, kernel_size, stride, padding, dilation, ceil_mode, same)
    return _empty_like_plan(self, shape), _empty_like_plan(self, shape, geo.tap_dtype(taps))


@torch.library.register_fake("pool_ext::_max_pool_values")
def _(self, kernel_size, stride, padding, dilation, ceil_mode, same):
    shape, _ = geo.fixed_plan("max_pool", self, kernel_size, stride, padding, dilation, ceil_mode, same)
    return _empty_like_plan(self, shape)


@torch.library.register_fake("pool_ext::_max_pool_backward")
def _(grad_output, self, taps, kernel_size, stride, padding, dilation, ceil_mode, same):
    return _empty_like_plan(self, self.shape)


@torch.library.register_fake("pool_ext::_max_pool_indices")
def _(self, taps, kernel_size, stride, padding, dilation, ceil_mode, same):
    shape, _ = geo.fixed_plan("max_pool", self, kernel_size, stride, padding, dilation, ceil_mode, same)
    return _empty_like_plan(self, shape, torch.int64)


@torch.library.register_fake("pool_ext::avg_pool")
def _(self, kernel_size, stride, padding, ceil_mode, same, count_include_pad, divisor_override):
    shape, _ = geo.fixed_plan("avg_pool", self, kernel_size, stride, padding, [1], ceil_mode, same)
    return _empty_like_plan(self, shape)


@torch.library.register_fake("pool_ext::_avg_pool_backward")
def _(grad_output, self, kernel_size, stride, padding, ceil_mode, same, count_include_pad, divisor_override):
    return _empty_like_plan(self, self.shape)


@torch.library.register_fake("pool_ext::adaptive_max_pool")
def _(self, output_size, sizes):
    shape, taps = geo.adaptive_plan("max_pool", self, output_size, sizes)
    return _empty_like_plan(self, shape), _empty_like_plan(self, shape, geo.tap_dtype(taps))


@torch.library.register_fake("pool_ext::_adaptive_max_pool_values")
def _(self, output_size, sizes):
    shape, _ = geo.adaptive_plan("max_pool", self, output_size, sizes)
    return _empty_like_plan(self, shape)


@torch.library.register_fake("pool_ext::_adaptive_max_pool_backward")
def _(grad_output, self, taps, output_size, sizes):
    return _empty_like_plan(self, self.shape)


@torch.library.register_fake("pool_ext::_adaptive_max_pool_indices")
def _(self, taps, output_size, sizes):
    shape, _ = geo.adaptive_plan("max_pool", self, output_size, sizes)
    return _empty_like_plan(self, shape, torch.int64)


@torch.library.register_fake("pool_ext::adaptive_avg_pool")
def _(self, output_size, sizes):
    shape, _ = geo.adaptive_plan("avg_pool", self, output_size, sizes)
    return _empty_like_plan(self, shape)


@torch.library.register_fake("pool_ext::_adaptive_avg_pool_backward")
def _(grad_output, self, output_size, sizes):
    return _empty_like_plan(self, self.shape)


# ---------------------------------------------------------------- autograd
# Each forward saves its input (for the shape) and, for max pooling, the taps.
# The backward ops are themselves differentiable: their derivative with
# respect to grad_output is the forward's gather (max) or the forward (avg).


def _gather_at_indices(values, indices):
    """values (N, C, *in) picked at torch-format flat indices (N, C, *out)."""
    flat = values.flatten(2).gather(2, indices.flatten(2))
    return flat.view(indices.shape)


def _save_max(ctx, inputs, output):
    self, *args = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(self, output[1])
    ctx.args = args


def _max_pool_backward(ctx, grad, _grad_taps):
    if not ctx.needs_input_grad[0]:
        return (None,) * (1 + len(ctx.args))
    self, taps = ctx.saved_tensors
    return (ops._max_pool_backward(grad, self, taps, *ctx.args),) + (None,) * len(ctx.args)


def _adaptive_max_pool_backward(ctx, grad, _grad_taps):
    if not ctx.needs_input_grad[0]:
        return None, None, None
    self, taps = ctx.saved_tensors
    return ops._adaptive_max_pool_backward(grad, self, taps, *ctx.args), None, None


torch.library.register_autograd("pool_ext::max_pool", _max_pool_backward, setup_context=_save_max)
torch.library.register_autograd(
    "pool_ext::adaptive_max_pool", _adaptive_max_pool_backward, setup_context=_save_max
)


def _save_max_backward(ctx, inputs, output):
    _grad, self, taps, *args = inputs
    ctx.save_for_backward(self, taps)
    ctx.args = args


def _max_pool_double_backward(ctx, grad_grad_input):
    nones = (None,) * (2 + len(ctx.args))
    if not ctx.needs_input_grad[0]:
        return (None,) + nones
    self, taps = ctx.saved_tensors
    indices = ops._max_pool_indices(self, taps, *ctx.args)
    return (_gather_at_indices(grad_grad_input, indices),) + nones


def _adaptive_max_pool_double_backward(ctx, grad_grad_input):
    nones = (None,) * (2 + len(ctx.args))
    if not ctx.needs_input_grad[0]:
        return (None,) + nones
    self, taps = ctx.saved_tensors
    indices = ops._adaptive_max_pool_indices(self, taps, *ctx.args)
    return (_gather_at_indices(grad_grad_input, indices),) + nones


torch.library.register_autograd(
    "pool_ext::_max_pool_backward", _max_pool_double_backward, setup_context=_save_max_backward
)
torch.library.register_autograd(
    "pool_ext::_adaptive_max_pool_backward",
    _adaptive_max_pool_double_backward,
    setup_context=_save_max_backward,
)


def _save_avg(ctx, inputs, output):
    self, *args = inputs
    ctx.save_for_backward(self)
    ctx.args = args


def _avg_pool_backward(ctx, grad):
    if not ctx.needs_input_grad[0]:
        return (None,) * (1 + len(ctx.args))
    (self,) = ctx.saved_tensors
    return (ops._avg_pool_backward(grad, self, *ctx.args),) + (None,) * len(ctx.args)


def _adaptive_avg_pool_backward(ctx, grad):
    if not ctx.needs_input_grad[0]:
        return None, None, None
    (self,) = ctx.saved_tensors
    return ops._adaptive_avg_pool_backward(grad, self, *ctx.args), None, None


torch.library.register_autograd("pool_ext::avg_pool", _avg_pool_backward, setup_context=_save_avg)
torch.library.register_autograd(
    "pool_ext::adaptive_avg_pool", _adaptive_avg_pool_backward, setup_context=_save_avg
)


def _save_avg_backward(ctx, inputs, output):
    _grad, _self, *args = inputs
    ctx.args = args


def _avg_pool_double_backward(ctx, grad_grad_input):
    nones = (None,) * (1 + len(ctx.args))
    if not ctx.needs_input_grad[0]:
        return (None,) + nones
    return (ops.avg_pool(grad_grad_input, *ctx.args),) + nones


def _adaptive_avg_pool_double_backward(ctx, grad_grad_input):
    nones = (None,) * (1 + len(ctx.args))
    if not ctx.needs_input_grad[0]:
        return (None,) + nones
    return (ops.adaptive_avg_pool(grad_grad_input, *ctx.args),) + nones


torch.library.register_autograd(
    "pool_ext::_avg_pool_backward", _avg_pool_double_backward, setup_context=_save_avg_backward
)
torch.library.register_autograd(
    "pool_ext::_adaptive_avg_pool_backward",
    _adaptive_avg_pool_double_backward,
    setup_context=_save_avg_backward,
)
