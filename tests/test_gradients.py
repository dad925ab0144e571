"""float64 gradcheck and gradgradcheck of every op (forward mode too), and deterministic backward.

Max pooling is checked on inputs without ties (a scaled random permutation), so
the finite differences never move a maximum.
"""

import contextlib

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import pool_ext.functional as PF
from pool_testing import DEVICES, distinct_values, make_rng

CL, CL3 = torch.channels_last, torch.channels_last_3d

# (id, function of x, input shape, max pooling?, memory format)
CASES = [
    ("max1d", lambda x: PF.max_pool1d(x, 3, 2, 1, ceil_mode=True), (2, 2, 8), True, None),
    ("max1d-dilated", lambda x: PF.max_pool1d(x, 2, 1, 1, dilation=3), (1, 2, 7), True, None),
    ("max1d-same", lambda x: PF.max_pool1d(x, 4, 2, "same"), (2, 1, 7), True, None),
    ("max2d", lambda x: PF.max_pool2d(x, (3, 2), (2, 1), (1, 1), (1, 2), ceil_mode=True), (1, 2, 5, 6), True, None),
    ("max2d-cl", lambda x: PF.max_pool2d(x, 2, 1), (2, 3, 4, 4), True, CL),
    ("max2d-same", lambda x: PF.max_pool2d(x, 3, 2, "same", dilation=2), (1, 2, 5, 6), True, None),
    ("max2d-unbatched", lambda x: PF.max_pool2d(x, 2, 1, 1), (2, 4, 3), True, None),
    ("max3d", lambda x: PF.max_pool3d(x, 2, 1, 1, ceil_mode=True), (1, 1, 3, 4, 3), True, None),
    ("max3d-cl", lambda x: PF.max_pool3d(x, (2, 1, 2), (1, 1, 2), dilation=(1, 2, 1)), (1, 2, 3, 4, 4), True, CL3),
    ("max3d-same", lambda x: PF.max_pool3d(x, 2, 2, "same"), (1, 2, 3, 3, 3), True, None),
    ("avg1d", lambda x: PF.avg_pool1d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 2, 8), False, None),
    ("avg1d-same", lambda x: PF.avg_pool1d(x, 4, 2, "same"), (2, 1, 7), False, None),
    ("avg2d", lambda x: PF.avg_pool2d(x, 3, 2, 1, ceil_mode=True), (1, 2, 6, 5), False, None),
    ("avg2d-divisor", lambda x: PF.avg_pool2d(x, 2, 1, 1, divisor_override=3), (1, 2, 4, 4), False, CL),
    ("avg2d-same", lambda x: PF.avg_pool2d(x, (3, 2), 2, "same"), (2, 1, 5, 4), False, None),
    ("avg3d", lambda x: PF.avg_pool3d(x, 2, 1, 1, count_include_pad=False), (1, 1, 3, 3, 4), False, None),
    ("avg3d-cl", lambda x: PF.avg_pool3d(x, 2, 2, 1, ceil_mode=True, divisor_override=5), (1, 2, 3, 3, 3), False, CL3),
    ("avg3d-same", lambda x: PF.avg_pool3d(x, 2, 2, "same"), (1, 2, 3, 3, 3), False, None),
    ("adaptive-max1d", lambda x: PF.adaptive_max_pool1d(x, 5), (2, 2, 7), True, None),
    ("adaptive-max1d-larger", lambda x: PF.adaptive_max_pool1d(x, 6), (2, 2, 4), True, None),
    ("adaptive-max2d", lambda x: PF.adaptive_max_pool2d(x, (3, 4)), (1, 2, 5, 3), True, None),
    ("adaptive-max2d-cl", lambda x: PF.adaptive_max_pool2d(x, (2, None)), (2, 3, 5, 3), True, CL),
    ("adaptive-max3d", lambda x: PF.adaptive_max_pool3d(x, (2, 3, 2)), (1, 2, 3, 4, 5), True, None),
    ("adaptive-avg1d", lambda x: PF.adaptive_avg_pool1d(x, 5), (2, 2, 7), False, None),
    ("adaptive-avg2d", lambda x: PF.adaptive_avg_pool2d(x, (3, 4)), (1, 2, 5, 3), False, CL),
    ("adaptive-avg3d", lambda x: PF.adaptive_avg_pool3d(x, (2, 3, 4)), (1, 2, 3, 4, 3), False, CL3),
    ("variable-max1d", lambda x: PF.variable_max_pool1d(x, 3, torch.tensor([7, 2])), (2, 2, 7), True, None),
    ("variable-max2d", lambda x: PF.variable_max_pool2d(x, (2, 3), torch.tensor([[5, 2], [3, 4]])),
     (2, 2, 5, 4), True, None),
    ("variable-max3d", lambda x: PF.variable_max_pool3d(x, 2, torch.tensor([[3, 2, 4], [1, 4, 3]])),
     (2, 1, 3, 4, 4), True, None),
    ("variable-avg1d", lambda x: PF.variable_avg_pool1d(x, 3, torch.tensor([[7], [2]])), (2, 2, 7), False, None),
    ("variable-avg2d", lambda x: PF.variable_avg_pool2d(x, (2, 3), torch.tensor([[5, 2], [3, 4]], dtype=torch.int32)),
     (2, 2, 5, 4), False, CL),
    ("variable-avg3d", lambda x: PF.variable_avg_pool3d(x, 2, torch.tensor([[3, 2, 4], [1, 4, 3]])),
     (2, 1, 3, 4, 4), False, None),
    ("spp-max", lambda x: PF.spatial_pyramid_pool2d(x, (1, 2, 3), "max"), (2, 2, 5, 4), True, None),
    ("spp-avg-sizes", lambda x: PF.spatial_pyramid_pool2d(x, (1, 2), "avg", torch.tensor([[5, 2], [3, 4]])),
     (2, 2, 5, 4), False, None),
    ("spp-max-sizes", lambda x: PF.spatial_pyramid_pool2d(x, (2, 3), "max", torch.tensor([[5, 2], [3, 4]])),
     (2, 2, 5, 4), True, None),
]


def make_input(case_id, shape, is_max, fmt):
    rng = make_rng("grad", case_id)
    if is_max:
        x = distinct_values(rng, shape)
    else:
        x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    return x.requires_grad_()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradcheck(case):
    case_id, fn, shape, is_max, fmt = case
    x = make_input(case_id, shape, is_max, fmt)
    # check_batched_grad: the backward under torch.vmap (our ops' batching rules).
    assert gradcheck(fn, (x,), eps=1e-6, atol=1e-6, check_batched_grad=True)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradgradcheck(case):
    case_id, fn, shape, is_max, fmt = case
    x = make_input(case_id, shape, is_max, fmt)
    assert gradgradcheck(fn, (x,), eps=1e-6, atol=1e-6, check_batched_grad=True)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forward_ad_gradcheck(case):
    """Forward mode (torch.autograd.forward_ad, torch.func.jvp): each op's jvp
    (average: the tangent pooled like the input; max: the tangent at the
    winners) against finite differences, batched under vmap too."""
    case_id, fn, shape, is_max, fmt = case
    x = make_input(case_id, shape, is_max, fmt)
    assert gradcheck(fn, (x,), eps=1e-6, atol=1e-6, check_forward_ad=True, check_backward_ad=False,
                     check_undefined_grad=False, check_batched_forward_grad=True)


def _graph_names(t):
    """Names of the nodes of t's autograd graph."""
    names, todo, seen = set(), [t.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


class Passthrough(TorchDispatchMode):
    """A torch dispatch mode that changes nothing: under it our derivatives are
    the Python formulas' (pool_ext/_meta.py), not the C++ ones."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def in_mode(mode):
    return Passthrough() if mode == "dispatch_mode" else contextlib.nullcontext()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_derivatives_in_cpp_are_the_python_formulas(case):
    """Plain eager calls take their derivative in C++ (csrc/autograd.cpp); under
    a torch dispatch mode, even one that changes nothing, the Python Functions.
    Both give the same gradient and second derivative (through create_graph),
    bit for bit."""
    case_id, fn, shape, is_max, fmt = case
    x = make_input(case_id, shape, is_max, fmt)
    weight = torch.randn_like(fn(x)).requires_grad_()
    results, graphs = [], []
    for mode in (None, Passthrough()):
        with mode or contextlib.nullcontext():
            y = fn(x)
            (grad,) = torch.autograd.grad((y * weight).sum(), x, create_graph=True)
            (grad_grad,) = torch.autograd.grad(grad.pow(2).sum(), weight)
        results.append((y, grad, grad_grad))
        graphs.append(_graph_names(y))
    assert any("pool_ext::" in name for name in graphs[0])
    assert not any("pool_ext::" in name for name in graphs[1])
    assert any("_functionBackward" in name for name in graphs[1])
    for a, b in zip(*results):
        assert torch.equal(a, b)


JVP_CASES = [
    ("max_pool1d", (3, 2, 1), {"return_indices": True}, (2, 3, 9)),
    ("max_pool2d", (3, 2, 1), {}, (2, 3, 9, 8)),
    ("max_pool2d", (2,), {}, (3, 8, 6)),
    ("max_pool3d", (2, 1), {"dilation": 2}, (1, 2, 5, 4, 5)),
    ("avg_pool1d", (4, 2, 2), {"ceil_mode": True}, (2, 3, 9)),
    ("avg_pool2d", (3, 1, 1), {"count_include_pad": False}, (2, 3, 7, 6)),
    ("avg_pool3d", (2,), {"divisor_override": 3}, (1, 2, 4, 4, 5)),
    ("adaptive_max_pool2d", (3,), {"return_indices": True}, (2, 3, 7, 5)),
    ("adaptive_avg_pool1d", (4,), {}, (2, 3, 9)),
    ("adaptive_avg_pool3d", ((2, 3, 2),), {}, (1, 2, 4, 5, 5)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", JVP_CASES, ids=[f"{c[0]}-{len(c[3])}d" for c in JVP_CASES])
def test_jvp_like_torch(case, device):
    """torch.func.jvp and the forward_ad dual API give torch's tangents, with and
    without grad mode (an input that needs no grad takes the values-only max op),
    indices included."""
    name, args, kwargs, shape = case
    rng = make_rng("jvp", name, shape)
    x = distinct_values(rng, shape).to(device)
    t = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    t = t.to(device)

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    expected_out, expected_t = torch.func.jvp(lambda a: first(getattr(F, name)(a, *args, **kwargs)), (x,), (t,))
    out, tangent = torch.func.jvp(lambda a: first(getattr(PF, name)(a, *args, **kwargs)), (x,), (t,))
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(tangent, expected_t)
    for grad_mode in (False, True):
        with torch.set_grad_enabled(grad_mode), fwAD.dual_level():
            result = getattr(PF, name)(fwAD.make_dual(x, t), *args, **kwargs)
            if kwargs.get("return_indices"):
                assert torch.equal(result[1], getattr(F, name)(x, *args, **kwargs)[1])
            torch.testing.assert_close(fwAD.unpack_dual(first(result)).tangent, expected_t)


def test_max_pool_return_indices_gradcheck():
    x = make_input("indices", (1, 2, 5, 5), True, None)
    assert gradcheck(lambda t: PF.max_pool2d(t, 2, 1, return_indices=True)[0], (x,))
    assert gradcheck(lambda t: PF.adaptive_max_pool2d(t, 3, return_indices=True)[0], (x,))


# ---------------------------------------------------------------- determinism

DETERMINISM = [
    ("max2d", lambda x: PF.max_pool2d(x, 3, 1, 1), 2),
    ("max3d", lambda x: PF.max_pool3d(x, 3, 1, 1, dilation=1), 3),
    ("avg2d", lambda x: PF.avg_pool2d(x, 3, 1, 1), 2),
    ("avg3d", lambda x: PF.avg_pool3d(x, 3, 1, 1), 3),
    ("adaptive-max2d", lambda x: PF.adaptive_max_pool2d(x, 11), 2),
    ("adaptive-avg3d", lambda x: PF.adaptive_avg_pool3d(x, 7), 3),
    ("variable-max2d", lambda x: PF.variable_max_pool2d(x, 9, torch.tensor([[8, 5], [3, 8]], device=x.device)), 2),
    ("variable-avg2d", lambda x: PF.variable_avg_pool2d(x, 9, torch.tensor([[8, 5], [3, 8]], device=x.device)), 2),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", DETERMINISM, ids=[c[0] for c in DETERMINISM])
def test_deterministic_backward(case, fmt, device, deterministic):
    """Overlapping windows (several outputs feed one input cell): the backward runs
    under torch.use_deterministic_algorithms(True) and repeats bit for bit."""
    _, fn, d = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 16) + (8,) * d, generator=g).to(device)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=CL if d == 2 else CL3)
    x.requires_grad_()
    results = []
    for _ in range(2):
        out = fn(x)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
        (grad,) = torch.autograd.grad(out, x, grad_out)
        results.append((out.detach(), grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert results[0][1].abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding", ["same", "explicit"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_max_pool_windows_without_cells(d, padding, device):
    """Dilated windows that fall wholly on padding and gaps hold no cell: they pool
    -inf with torch's index (explicit padding: torch's values and indices), which
    lies outside the window's row or the input; every derivative through them is
    zero (double backward and forward mode gathered at that index and crashed, or
    read a cell of another row), and the others pick their winners."""
    kernel, dilation = [1] * (d - 1) + [2], [1] * (d - 1) + [3]
    pad = "same" if padding == "same" else [0] * (d - 1) + [1]
    x = torch.arange(2 * 2 * 2 ** d, dtype=torch.float64).view((2, 2) + (2,) * d).to(device) + 1
    x.requires_grad_()
    out, idx = getattr(PF, f"max_pool{d}d")(x, kernel, 1, pad, dilation, return_indices=True)
    empty = out == -torch.inf
    # (with explicit padding, a window without cells along W means every one is)
    assert empty.any() and (padding == "explicit" or not empty.all())
    if padding == "explicit":
        want, want_idx = getattr(F, f"max_pool{d}d")(x.detach().cpu(), kernel, 1, pad, dilation, return_indices=True)
        assert torch.equal(out.detach().cpu(), want) and torch.equal(idx.cpu(), want_idx)
    flat = x.detach().flatten(2)
    winners = flat.gather(2, torch.where(empty, 0, idx).flatten(2)).view(out.shape)
    assert torch.equal(torch.where(empty, out, winners), out.detach())

    g = torch.ones_like(out, requires_grad=True)
    (gx,) = torch.autograd.grad(out, x, g, create_graph=True)
    w = torch.rand_like(x)
    (gg,) = torch.autograd.grad(gx, g, w)
    picked = w.flatten(2).gather(2, torch.where(empty, 0, idx).flatten(2)).view(out.shape)
    assert torch.equal(gg, torch.where(empty, 0, picked))
    with fwAD.dual_level():
        dual = getattr(PF, f"max_pool{d}d")(fwAD.make_dual(x.detach(), w), kernel, 1, pad, dilation)
        assert torch.equal(fwAD.unpack_dual(dual).tangent, torch.where(empty, 0, picked))


def test_batched_grads_with_create_graph_keep_the_graph():
    """jacobian(create_graph=True, vectorize=True) runs the backward formulas on
    the legacy vmap's batched tensors: the Jacobian stays differentiable, and
    its derivative is torch's."""
    from torch.autograd.functional import jacobian

    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    results = []
    for pool in (PF.avg_pool2d, F.avg_pool2d, PF.max_pool2d, F.max_pool2d):
        jac = jacobian(lambda t: pool(t, 2).pow(2), x, create_graph=True, vectorize=True)
        assert jac.requires_grad
        results.append(torch.autograd.grad(jac.sum(), x)[0])
    torch.testing.assert_close(results[0], results[1])
    torch.testing.assert_close(results[2], results[3])


@pytest.mark.parametrize("name, args", [
    ("max_pool2d", (2,)), ("avg_pool2d", (3, 1, 1)), ("adaptive_max_pool2d", (3,)), ("adaptive_avg_pool2d", (3,)),
])
def test_second_derivative_through_pooling_alone_is_zero(name, args):
    """A gradient that depends on the input only through the pooling's backward
    has a zero derivative there, as a tensor (torch's formulas give
    zeros_like(self)), not "not used in the graph"; a strict Hessian too."""
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    results = []
    for pool in (getattr(F, name), getattr(PF, name)):
        t = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(pool(t, *args).sum(), t, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), t)
        hessian = torch.autograd.functional.hessian(lambda t: pool(t, *args).pow(2).sum(), x, strict=True)
        results.append((gg, hessian))
    torch.testing.assert_close(results[1], results[0])
    assert not results[1][0].any()


def test_torch_function_mode_acts_where_autograd_sees_it():
    """A TorchFunctionMode sees our function, as it sees torch.nn.functional's,
    and one that changes its result (or the op's, called directly) does so
    outside the op's autograd Function: the gradient follows it."""
    from torch.overrides import TorchFunctionMode

    class Double(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            return out * 2 if func in (PF.avg_pool2d, torch.ops.pool_ext.avg_pool.default) else out

    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    for pool in (lambda t: PF.avg_pool2d(t, 2),
                 lambda t: torch.ops.pool_ext.avg_pool.default(t, [2, 2], [2, 2], [0, 0], False, False, True, None)):
        with Double():
            y = pool(x)
        (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(grad, torch.full_like(x, 0.5))


def test_tensor_subclass_sees_the_function():
    """A tensor subclass's __torch_function__ gets our public function, which it
    may replace, and its default keeps the subclass, as for torch's functions."""
    seen = []

    class Logged(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    x = torch.randn(2, 3, 8, 8, dtype=torch.float64).as_subclass(Logged).requires_grad_()
    calls = [lambda t: PF.max_pool2d(t, 2), lambda t: PF.adaptive_avg_pool2d(t, 3),
             lambda t: PF.variable_max_pool2d(t, 2, torch.tensor([[8, 5], [3, 8]])),
             lambda t: PF.spatial_pyramid_pool2d(t, (1, 2))]
    for call, func in zip(calls, (PF.max_pool2d, PF.adaptive_avg_pool2d, PF.variable_max_pool2d,
                                  PF.spatial_pyramid_pool2d)):
        seen.clear()
        y = call(x)
        assert seen[0] is func and type(y) is Logged
        (grad,) = torch.autograd.grad(y.sum(), x)
        plain = x.as_subclass(torch.Tensor).detach().requires_grad_()
        torch.testing.assert_close(grad.as_subclass(torch.Tensor), torch.autograd.grad(call(plain).sum(), plain)[0])


# Global averages (adaptive averages to one cell) and the pooling that keeps
# its input: (name, args, input shape, memory format).
KEEPING_CASES = [
    ("adaptive_avg_pool1d", (1,), (2, 3, 7), None),
    ("adaptive_avg_pool2d", (1,), (2, 3, 5, 6), CL),
    ("adaptive_avg_pool2d", ((None, 1),), (2, 3, 1, 6), None),
    ("adaptive_avg_pool3d", (1,), (2, 3, 3, 4, 5), None),
    ("adaptive_avg_pool3d", (1,), (2, 3, 3, 4, 5), CL3),
    ("adaptive_avg_pool2d", ((3, 2),), (2, 3, 5, 6), None),
    ("avg_pool2d", (3, 2, 1), (2, 3, 7, 6), CL),
    ("max_pool2d", (2,), (2, 3, 6, 6), None),
    ("adaptive_max_pool2d", (1,), (2, 3, 5, 6), None),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, args, shape, fmt", KEEPING_CASES)
@pytest.mark.parametrize("mode", ["eager", "dispatch_mode"])
def test_input_changed_in_place_after_the_call_as_torch(name, args, shape, fmt, device, mode):
    """Changing the input in place after the call: torch's global average (a
    mean, which keeps no input) still gives its gradient, and so does ours;
    torch's other pooling keeps its input and fails the backward, as ours does.
    The global average's gradient, like the mean's, is not a function of the
    input: a second derivative through it alone does not reach the input.
    Under a torch dispatch mode the derivatives are the Python formulas'."""
    x = torch.randn(shape, device=device, dtype=torch.float64)
    x = x.contiguous(memory_format=fmt) if fmt else x
    weight = torch.randn_like(getattr(F, name)(x, *args))

    def gradient(module, change):
        with in_mode(mode):
            leaf = x.clone().requires_grad_()
            y = leaf * 1  # a non-leaf, which may be changed in place
            out = getattr(module, name)(y, *args)
            if change:
                y.mul_(-3.0)
            try:
                (grad,) = torch.autograd.grad((out * weight).sum(), leaf, create_graph=True)
            except RuntimeError as error:
                assert "modified by an inplace operation" in str(error)
                return None
            return grad

    unchanged = gradient(PF, change=False)
    # Whether the gradient is a function of the input (weight needs no grad here).
    assert unchanged.requires_grad == gradient(F, change=False).requires_grad
    expected = gradient(F, change=True)
    got = gradient(PF, change=True)
    assert (got is None) == (expected is None)
    if got is not None:
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
        torch.testing.assert_close(got, unchanged, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, args, shape, fmt", KEEPING_CASES)
@pytest.mark.parametrize("mode", ["eager", "dispatch_mode"])
def test_what_the_graph_keeps_of_the_input_as_torch(name, args, shape, fmt, device, mode):
    """What the graph keeps for the backward, as torch's: the global average,
    like torch's mean, saves no tensor (saved-tensor hooks see none), so the
    graph holds no input memory and a second backward without retain_graph
    runs, to the same gradient; the rest save tensors, and a second backward
    raises, as torch's. Gradients have torch's strides, but for the global
    average's, which keep the input's format (torch's mean's are contiguous)."""
    x = torch.randn(shape, device=device, dtype=torch.float64)
    x = x.contiguous(memory_format=fmt) if fmt else x
    weight = torch.randn_like(getattr(F, name)(x, *args))
    out_shape = weight.shape

    def run(module, x, weight):
        packed = []

        def pack(t):
            packed.append(t)
            return t

        with in_mode(mode):
            leaf = x.clone().requires_grad_()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = getattr(module, name)(leaf, *args)
            # (weight as grad_outputs: a loss such as (out * weight).sum()
            # would save weight, and fail a second backward of its own)
            (first,) = torch.autograd.grad(out, leaf, weight)
            try:
                (second,) = torch.autograd.grad(out, leaf, weight)
            except RuntimeError as error:
                assert "backward through the graph a second time" in str(error)
                second = None
        return len(packed) > 0, first, second

    keeps, first, second = run(PF, x, weight)
    want_keeps, want_first, want_second = run(F, x, weight)
    assert keeps == want_keeps
    assert (second is None) == (want_second is None) == keeps
    # The values against torch's CPU kernels: its CUDA backward of avg_pool2d is
    # wrong for channels-last inputs with padding (pytorch/pytorch#188344; seen
    # with torch 2.11 on an H200).
    want_values = want_first if x.device.type == "cpu" else run(F, x.cpu(), weight.cpu())[1]
    torch.testing.assert_close(first.cpu(), want_values, rtol=0, atol=1e-15)
    global_average = name.startswith("adaptive_avg") and all(o == 1 for o in out_shape[2:])
    assert first.stride() == (x.stride() if global_average else want_first.stride())
    if second is not None:
        torch.testing.assert_close(second, first, rtol=0, atol=0)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("name, args", [
    ("max_pool2d", (3, 2, 1)),
    ("avg_pool2d", (2,)),
    ("adaptive_max_pool2d", (3,)),
    ("adaptive_avg_pool2d", (1,)),
    ("adaptive_avg_pool2d", ((3, 2),)),
    ("variable_avg_pool2d", (2, torch.tensor([[6, 3], [2, 5]]))),
])
def test_activation_checkpointing(name, args, reentrant):
    """torch.utils.checkpoint recomputes the forward in the backward: the
    non-reentrant kind inside the first unpacking of a saved tensor, here the
    pooling's (the block's last op), which the C++ derivatives do before going
    below the Autograd key. The same gradient as without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    pool = getattr(PF, name)

    def block(t):
        return pool(t.sin(), *args)

    grads = []
    for checkpointed in (False, True):
        leaf = x.clone().requires_grad_()
        out = checkpoint(block, leaf, use_reentrant=reentrant) if checkpointed else block(leaf)
        out.backward(torch.ones_like(out))
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


@pytest.mark.parametrize("name, args, shape", [
    ("max_pool2d", (2,), (3, 8, 8)),
    ("max_pool1d", (2,), (3, 8)),
    ("avg_pool3d", (2,), (3, 4, 4, 4)),
    ("adaptive_max_pool2d", (3,), (3, 8, 8)),
    ("adaptive_avg_pool1d", (1,), (3, 8)),
])
def test_unbatched_outputs_are_not_views(name, args, shape):
    """Unbatched outputs (and indices) are fresh tensors, not views of the op's
    batched output, as torch's 2d and 3d pooling return them: detach_() and an
    in-place op with grad enabled on an output made under no_grad work."""
    x = torch.randn(shape, requires_grad=True)
    outputs = [getattr(PF, name)(x, *args)]
    if "max" in name:
        outputs += list(getattr(PF, name)(x, *args, return_indices=True))
    assert not any(t._is_view() for t in outputs)
    outputs[0].detach_()
    with torch.no_grad():
        y = getattr(PF, name)(x, *args)
    b = torch.zeros(1, requires_grad=True)
    y.add_(b)
    (grad,) = torch.autograd.grad(y.sum(), b)
    assert grad.item() == y.numel()
