"""Fake kernels (shapes for torch.compile and meta tensors) and autograd of the pool_ext ops."""

import functools
import types

import torch
import torch.autograd.forward_ad as fwAD
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
from torch.overrides import has_torch_function

from . import _geometry as geo

ops = torch.ops.pool_ext
_OP_NAMES = [
    f"{prefix}{kind}{op}"
    for kind in ("", "adaptive_")
    for prefix, op in (("", "max_pool"), ("_", "max_pool_values"), ("_", "max_pool_backward"),
                       ("_", "max_pool_indices"), ("", "avg_pool"), ("_", "avg_pool_backward"))
]


def _empty_like_plan(x, shape, dtype=None):
    return geo.empty_planned(x, shape, dtype or x.dtype)


def _check_like_output(name, self, shape, **tensors):
    """As csrc's check_like_output: a backward's grad_output (or saved taps) on
    self's device, of the output's shape."""
    for what, t in tensors.items():
        torch._check(t.device == self.device, lambda: f"{name}: expected {what} on {self.device} (the input's "
                     f"device), but got it on {t.device}")
        torch._check(t.dim() == len(shape) and all(a == b for a, b in zip(t.shape, shape)),
                     lambda: f"{name}: expected {what} of sizes {list(shape)}, but got {list(t.shape)}")


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
    shape, _ = geo.fixed_plan("max_pool", self, kernel_size, stride, padding, dilation, ceil_mode, same)
    _check_like_output(f"max_pool{len(kernel_size)}d backward", self, shape, grad_output=grad_output, taps=taps)
    return _empty_like_plan(self, self.shape)


@torch.library.register_fake("pool_ext::_max_pool_indices")
def _(self, taps, kernel_size, stride, padding, dilation, ceil_mode, same):
    shape, _ = geo.fixed_plan("max_pool", self, kernel_size, stride, padding, dilation, ceil_mode, same)
    _check_like_output(f"max_pool{len(kernel_size)}d", self, shape, taps=taps)
    return _empty_like_plan(self, shape, torch.int64)


@torch.library.register_fake("pool_ext::avg_pool")
def _(self, kernel_size, stride, padding, ceil_mode, same, count_include_pad, divisor_override):
    shape, _ = geo.fixed_plan("avg_pool", self, kernel_size, stride, padding, [1], ceil_mode, same)
    return _empty_like_plan(self, shape)


@torch.library.register_fake("pool_ext::_avg_pool_backward")
def _(grad_output, self, kernel_size, stride, padding, ceil_mode, same, count_include_pad, divisor_override):
    shape, _ = geo.fixed_plan("avg_pool", self, kernel_size, stride, padding, [1], ceil_mode, same)
    _check_like_output(f"avg_pool{len(kernel_size)}d backward", self, shape, grad_output=grad_output)
    return _empty_like_plan(self, self.shape)


@torch.library.register_fake("pool_ext::adaptive_max_pool")
def _(self, output_size, sizes, long_taps=False):
    shape, taps = geo.adaptive_plan("max_pool", self, output_size, sizes, with_taps=not long_taps)
    taps_dtype = torch.int64 if long_taps else geo.tap_dtype(taps)
    return _empty_like_plan(self, shape), _empty_like_plan(self, shape, taps_dtype)


@torch.library.register_fake("pool_ext::_adaptive_max_pool_values")
def _(self, output_size, sizes):
    shape, _ = geo.adaptive_plan("max_pool", self, output_size, sizes)
    return _empty_like_plan(self, shape)


@torch.library.register_fake("pool_ext::_adaptive_max_pool_backward")
def _(grad_output, self, taps, output_size, sizes):
    shape, _ = geo.adaptive_plan("max_pool", self, output_size, sizes)
    _check_like_output(geo.adaptive_name("max_pool", output_size, sizes) + " backward", self, shape,
                       grad_output=grad_output, taps=taps)
    return _empty_like_plan(self, self.shape)


@torch.library.register_fake("pool_ext::_adaptive_max_pool_indices")
def _(self, taps, output_size, sizes):
    shape, _ = geo.adaptive_plan("max_pool", self, output_size, sizes)
    _check_like_output(geo.adaptive_name("max_pool", output_size, sizes), self, shape, taps=taps)
    return _empty_like_plan(self, shape, torch.int64)


@torch.library.register_fake("pool_ext::adaptive_avg_pool")
def _(self, output_size, sizes):
    shape, _ = geo.adaptive_plan("avg_pool", self, output_size, sizes)
    return _empty_like_plan(self, shape)


@torch.library.register_fake("pool_ext::_adaptive_avg_pool_backward")
def _(grad_output, self, output_size, sizes):
    shape, _ = geo.adaptive_plan("avg_pool", self, output_size, sizes)
    _check_like_output(geo.adaptive_name("avg_pool", output_size, sizes) + " backward", self, shape,
                       grad_output=grad_output)
    return _empty_like_plan(self, self.shape)


# ---------------------------------------------------------------- autograd
#
# Every op is linear in its one differentiable input (self, or grad_output for
# the backwards) once the windows' winners are known, so each derivative,
# backward (vjp) or forward (jvp), is another of our ops. The formulas are
# registered twice: as the ops' Autograd kernel, and as autograd.Functions in
# the form torch.func takes (setup_context, generate_vmap_rule), applied by
# pool_ops under its transforms. torch.library.register_autograd makes
# neither: it has no forward mode, and torch.func's grad, vjp, jacrev and
# hessian raise on the Function it makes (pytorch/pytorch#179652).

_lib = torch.library.Library("pool_ext", "IMPL")

# What pool_ext.functional and the formulas below call: the ops, those with
# derivatives wrapped for torch.func by _register_autograd.
pool_ops = types.SimpleNamespace(**{name: getattr(ops, name) for name in _OP_NAMES})
_DEFAULTS = {name: getattr(ops, name).default for name in _OP_NAMES}


def _binding(op):
    """The C++ callable an OpOverload's __call__ passes its arguments to (the
    dispatcher's entry): called straight, 0.2-0.3 us less an eager call. Our ops
    are defined in C++, so torch never gives them its Python-object dispatch
    (torch.library.custom_op's), the other thing that __call__ looks at; where
    it has, the OpOverload. Only outside torch.compile, which traces the
    OpOverload."""
    return op if getattr(op, "_pyobj_dispatcher", None) is not None else op._op


_BINDINGS = {name: _binding(op) for name, op in _DEFAULTS.items()}


def has_tangent(*args):
    """Whether a tensor among args carries a forward-mode tangent."""
    if getattr(fwAD, "_current_level", 0) < 0:
        return False
    return any(isinstance(a, torch.Tensor) and fwAD.unpack_dual(a).tangent is not None for a in args)


def transforms_active():
    """Whether torch.func transforms (grad, vmap, jvp, ...) are running."""
    return torch._C._are_functorch_transforms_active()


def _differentiating():
    """Whether a torch.func transform that differentiates (grad, vjp, jvp and
    those built on them) is running: vmap alone has our vmap rules, and
    functionalize takes the ops as they are."""
    return transforms_active() and any(
        level.key() in (TransformType.Grad, TransformType.Jvp)
        for level in retrieve_all_functorch_interpreters()
    )


class _Whole:
    """A list argument (kernel_size, output_size, ...) passed to Function.apply
    as one leaf: torch.func pairs each leaf of the inputs with one tangent."""

    def __init__(self, value):
        self.value = value


def _pack(args):
    return tuple(_Whole(a) if isinstance(a, (list, tuple)) else a for a in args)


def _unpack(args):
    return [a.value if isinstance(a, _Whole) else a for a in args]


def _register_autograd(name, setup_context, backward, jvp):
    """Give op `name` its derivatives: setup_context(ctx, inputs, output) keeps
    what backward(ctx, *grads) and jvp(ctx, *tangents) need."""
    op = getattr(ops, name).default

    def forward_with_ctx(ctx, *args):
        with torch._C._AutoDispatchBelowAutograd():
            output = op(*args)
        setup_context(ctx, args, output)
        return output

    formulas = {"backward": staticmethod(backward), "jvp": staticmethod(jvp)}
    # The Autograd kernel's Function takes ctx in forward: one with
    # setup_context costs an inspect.signature on every apply.
    eager = type(f"{name}_function", (torch.autograd.Function,), {
        "forward": staticmethod(forward_with_ctx), **formulas,
    })
    transformable = type(f"{name}_transformable_function", (torch.autograd.Function,), {
        "forward": staticmethod(lambda *args: op(*_unpack(args))),
        "setup_context": staticmethod(
            lambda ctx, inputs, output: setup_context(ctx, _unpack(inputs), output)
        ),
        "generate_vmap_rule": True,
        **formulas,
    })

    def kernel(keyset, *args):
        if (torch.is_grad_enabled() and torch._C._any_requires_grad(*args)) or has_tangent(*args):
            if _differentiating():
                # Reached only from torch.ops directly, or from torch.compile's fake
                # run of `call` below (torch 2.14 breaks the graph there; 2.11 fails
                # the compile, as it must: a NotImplementedError would break the
                # graph, and its graph breaks inside jacrev or vjp give zeros).
                raise RuntimeError(
                    f"pool_ext::{name}: torch.func's derivatives reach the pool_ext ops "
                    "through pool_ext.functional and pool_ext.nn, not through torch.ops")
            return eager.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    _lib.impl(name, kernel, "Autograd", with_keyset=True)

    binding = _BINDINGS[name]

    def call(*args):
        # Under torch.func's derivatives the Function is applied here, before
        # the dispatcher: from the Autograd kernel it would find no functorch
        # rule. torch.compile cannot trace it there: the op as it is raises
        # a RuntimeError under such a transform (in `kernel` above), and
        # traces under vmap.
        if torch.compiler.is_compiling():
            return op(*args)
        if _differentiating():
            return transformable.apply(*_pack(args))
        return binding(*args)

    setattr(pool_ops, name, call)


def _save(ctx, tensors, args):
    """Keep tensors and the op's other arguments for backward and jvp. sizes
    (a tensor among args, batched under vmap) is saved with the tensors."""
    ctx.tensor_args = [isinstance(a, torch.Tensor) for a in args]
    saved = (*tensors, *(a for a, is_tensor in zip(args, ctx.tensor_args) if is_tensor))
    ctx.save_for_backward(*saved)
    ctx.save_for_forward(*saved)
    ctx.n_tensors = len(tensors)
    ctx.kept_tensors = bool(saved)
    ctx.args = [None if is_tensor else a for a, is_tensor in zip(args, ctx.tensor_args)]


def _saved(ctx):
    # None saved, none unpacked: unpacking fails once a backward without
    # retain_graph has released them.
    saved = ctx.saved_tensors if ctx.kept_tensors else ()
    rest = iter(saved[ctx.n_tensors:])
    args = [next(rest) if is_tensor else a for a, is_tensor in zip(ctx.args, ctx.tensor_args)]
    return saved[:ctx.n_tensors], args


# The differentiable forwards with their derivative taken in C++
# (csrc/autograd.cpp): the same ops, gradients and saved tensors, 11-13 us
# less a forward and backward than through the Python Functions above.
_IN_CPP = {name: _binding(getattr(ops, f"_{name}_autograd").default)
           for name in ("max_pool", "avg_pool", "adaptive_max_pool", "adaptive_avg_pool")}
# The dispatch keys a thread includes in plain eager mode. Modes and
# transforms add theirs: torch dispatch modes and make_fx (Python),
# pre-dispatch tracing, functionalization, torch.func (FuncTorch*), the
# legacy vmap of is_grads_batched (VmapMode), torch.jit.trace (Tracer).
_PLAIN_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.BackendSelect).add(
    torch._C.DispatchKey.ADInplaceOrView)


def _plain_eager(args):
    """Whether a call on args may take the derivative in C++: no mode,
    transform or trace is active, no argument overrides torch functions, none
    carries a forward-mode tangent (C++ Functions have no forward mode)."""
    return (torch._C._dispatch_tls_local_include_set() == _PLAIN_KEYS
            and not has_torch_function(args) and not has_tangent(*args))


def call_op(name, no_derivative, *args):
    """The op `name` (one with derivatives) on args. Where no derivative of the
    call may be taken, and outside torch.compile (which traces the ops as they
    are), below the op's Autograd kernel, which is Python and would cost a few
    microseconds a call only to pass the call on."""
    if torch.compiler.is_compiling():
        return getattr(pool_ops, name)(*args)
    if no_derivative:
        with torch._C._AutoDispatchBelowAutograd():
            return _BINDINGS[name](*args)
    if name in _IN_CPP and _plain_eager(args):
        return _IN_CPP[name](*args)
    # Elsewhere through the dispatcher, whose Autograd kernel applies the
    # Python Function: applied here, torch function modes and overrides acted
    # inside it, unseen by autograd, and is_grads_batched's batched tensors
    # lost their graph.
    return getattr(pool_ops, name)(*args)


def call_plain(name, *args):
    """The op `name`, one without derivatives (the values-only forwards, the
    indices), on args: straight to its dispatcher entry, 0.6 us a call less
    than through its OpOverloadPacket. torch.compile traces the OpOverload."""
    if torch.compiler.is_compiling():
        return _DEFAULTS[name](*args)
    return _BINDINGS[name](*args)


def _late(name):
    """pool_ops.<name>, looked up when called: the formulas below are made
    before _register_autograd wraps the ops they call. No derivative of the
    call may be taken in a backward without create_graph (grad mode off)."""
    return lambda *args: call_op(
        name, not (torch.is_grad_enabled() or transforms_active() or has_tangent(*args)), *args)


def _zero_in_self(ctx, self):
    """A backward op's derivative in its `self`: zero (given the winners, it is
    linear in grad_output alone), but a tensor, as torch's formulas give it, so
    that a second derivative reaching the input through it alone is zeros
    rather than "not used in the graph"."""
    return torch.zeros_like(self) if ctx.needs_input_grad[1] else None


def _gather_at_indices(values, indices):
    """values (N, C, *in) picked at torch-format flat indices (N, C, *out)."""
    # reshape, not flatten: torch.autograd.grad(is_grads_batched=True) runs
    # this under the legacy vmap, which has no flatten rule.
    def planes(t):
        return t.reshape(*t.shape[:2], t.shape[2:].numel())

    return planes(values).gather(2, planes(indices)).view(indices.shape)


def _max_autograd(kind):
    """Max pooling (fixed: kind "", adaptive: "adaptive_"): its four ops' formulas.
    The forward's derivative picks each window's winner; the backward is linear
    in grad_output, and its derivative there is the same pick."""
    backward_op, indices = _late(f"_{kind}max_pool_backward"), _late(f"_{kind}max_pool_indices")
    # The forward's arguments its backward and indices ops take: all but
    # adaptive_max_pool's long_taps.
    shared = slice(2) if kind else slice(None)

    def pick(values, self, taps, args):
        """values at each window's winner; zero for a window without cells
        (dilated, in padding), whose index lies outside its row or the input."""
        at = indices(self, taps, *args)
        holds = None if kind else geo.windows_holding_cells(self.shape[2:], taps.shape[2:], *args[:4],
                                                        args[5], self.device)
        if holds is None:
            return _gather_at_indices(values, at)
        return torch.where(holds, _gather_at_indices(values, torch.where(holds, at, 0)), 0)

    def save_pool(ctx, inputs, output):
        self, *args = inputs
        ctx.mark_non_differentiable(output[1])
        _save(ctx, (self, output[1]), args)

    def pool_backward(ctx, grad, _grad_taps):
        (self, taps), args = _saved(ctx)
        grad_input = backward_op(grad, self, taps, *args[shared]) if ctx.needs_input_grad[0] else None
        return (grad_input, *(None,) * len(args))

    def pool_jvp(ctx, self_t, *_):
        (self, taps), args = _saved(ctx)
        return pick(self_t, self, taps, args[shared]), None

    def save_backward(ctx, inputs, output):
        _grad, self, taps, *args = inputs
        _save(ctx, (self, taps), args)

    def backward_backward(ctx, grad_grad_input):
        (self, taps), args = _saved(ctx)
        result = None
        if ctx.needs_input_grad[0]:
            result = pick(grad_grad_input, self, taps, args)
        return (result, _zero_in_self(ctx, self), *(None,) * (1 + len(args)))

    def backward_jvp(ctx, grad_t, *_):
        (self, taps), args = _saved(ctx)
        if grad_t is None:  # only self has a tangent: the winners do not move
            return torch.zeros_like(self)
        return backward_op(grad_t, self, taps, *args)

    _register_autograd(f"{kind}max_pool", save_pool, pool_backward, pool_jvp)
    _register_autograd(f"_{kind}max_pool_backward", save_backward, backward_backward, backward_jvp)


def _is_global(output):
    """Whether an adaptive average pooled to one cell (csrc/autograd.cpp's global)."""
    return all(size == 1 for size in output.shape[2:])


def _global_input(self, output, args):
    """The input's sizes and memory format, for a global average without
    per-sample sizes (every output extent 1); None for other averages. As its
    C++ derivative (csrc/autograd.cpp) and torch's mean, such an average keeps
    nothing else of its input: its backward passes _stand_in. Not under
    torch.func, which keeps the input (_kept_input): vmap's rule would fold an
    unbatched channels-last stand-in into a copy the size of the whole batch."""
    if _is_global(output) and args[1] is None and not transforms_active():
        return self.shape, geo.memory_format(self)
    return None


def _stand_in(grad, shape, fmt):
    """csrc/autograd.cpp's global_stand_in: a tensor of the input's sizes,
    format, dtype and device whose values the average's backward never reads
    (one element expanded for a contiguous input, an uninitialised tensor
    for a channels-last one)."""
    if fmt == torch.contiguous_format:
        return grad.new_empty(()).expand(shape)
    return geo.empty_in_format(shape, fmt, grad.dtype, grad.device)


def _kept_input(self, output):
    """What an adaptive average that _global_input leaves keeps of its input
    for its backward: for a global one (variable pooling's), as its C++
    derivative does, nothing the graph or an in-place change of the input
    reaches: an alias with a version counter of its own. The input itself
    under torch.func (whose levels an alias would leave) and torch.compile."""
    if _is_global(output) and not transforms_active() and not torch.compiler.is_compiling():
        return self.data
    return self


def _avg_autograd(kind):
    """Average pooling: linear, so the forward's derivative is the forward and
    the backward's derivative in grad_output is the backward."""
    pool, backward_op = _late(f"{kind}avg_pool"), _late(f"_{kind}avg_pool_backward")

    def save_pool(ctx, inputs, output):
        self, *args = inputs
        ctx.global_input = _global_input(self, output, args) if kind else None
        if ctx.global_input is not None:
            _save(ctx, (), args)
        else:
            _save(ctx, (_kept_input(self, output) if kind else self,), args)

    def pool_backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return (None,) * (1 + len(ctx.args))
        if ctx.global_input is not None:
            self, args = _stand_in(grad, *ctx.global_input), ctx.args
        else:
            (self,), args = _saved(ctx)
        return (backward_op(grad, self, *args), *(None,) * len(args))

    def pool_jvp(ctx, self_t, *_):
        _, args = _saved(ctx)
        return pool(self_t, *args)

    def save_backward(ctx, inputs, output):
        _grad, self, *args = inputs
        _save(ctx, (self,), args)

    def backward_backward(ctx, grad_grad_input):
        (self,), args = _saved(ctx)
        result = pool(grad_grad_input, *args) if ctx.needs_input_grad[0] else None
        return (result, _zero_in_self(ctx, self), *(None,) * len(args))

    def backward_jvp(ctx, grad_t, *_):
        (self,), args = _saved(ctx)
        return torch.zeros_like(self) if grad_t is None else backward_op(grad_t, self, *args)

    _register_autograd(f"{kind}avg_pool", save_pool, pool_backward, pool_jvp)
    _register_autograd(f"_{kind}avg_pool_backward", save_backward, backward_backward, backward_jvp)


for _kind in ("", "adaptive_"):
    _max_autograd(_kind)
    _avg_autograd(_kind)


# ---------------------------------------------------------------- vmap
# Every tensor argument of our ops (self, grad_output, taps, sizes) leads with
# the batch N, and samples are independent: a vmapped dimension folds into N,
# one call for the whole vmap instead of torch's per-sample fallback loop.


def _vmap_rule(info, in_dims, *args, op):
    """op over a vmapped dimension: folded into N (an unbatched tensor
    argument expanded), unfolded from the outputs."""
    size = info.batch_size
    lead = args[0].movedim(in_dims[0], 0) if in_dims[0] is not None else args[0].unsqueeze(0)
    n = lead.shape[1]

    def fold(arg, dim):
        if not isinstance(arg, torch.Tensor):
            return arg
        arg = arg.movedim(dim, 0) if dim is not None else arg.expand(size, *arg.shape)
        return arg.flatten(0, 1)

    result = op(*(fold(a, d) for a, d in zip(args, in_dims)))
    if isinstance(result, tuple):
        return tuple(r.unflatten(0, (size, n)) for r in result), (0,) * len(result)
    return result.unflatten(0, (size, n)), 0


for _name in _OP_NAMES:
    _op = getattr(ops, _name).default
    torch.library.register_vmap(_op, functools.partial(_vmap_rule, op=_op), lib=_lib)
