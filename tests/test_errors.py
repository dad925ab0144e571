"""Argument errors: every call torch rejects is rejected here too, with a message
that names the op and the wrong value.

Explicit cases check the exception type and message; a randomized sweep over
valid and invalid arguments checks that we accept exactly what torch accepts
(and agree with it where both accept).
"""

import functools
import re

import pytest
import torch
import torch.nn.functional as F

import pool_ext
import pool_ext.functional as PF
from pool_testing import HAS_CUDA, assert_equal, make_rng, ours, torchs

TORCH_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


def assert_rejected(name, call_ours, call_torch, exc_type, *patterns, torch_rejects=True):
    """torch rejects the call (when torch_rejects), ours raises exc_type with a message
    naming the op and matching every pattern; and, where torch rejects it, an error of
    the type torch's is."""
    if torch_rejects:
        with pytest.raises(TORCH_ERRORS) as torch_info:
            call_torch()
    with pytest.raises(exc_type) as info:
        call_ours()
    if isinstance(exc_type, tuple):
        assert all(isinstance(info.value, t) for t in exc_type), info.value
    if torch_rejects:
        assert isinstance(info.value, type(torch_info.value)), (info.value, torch_info.value)
    message = str(info.value)
    assert name in message, f"op name {name!r} missing from: {message}"
    for pattern in patterns:
        assert re.search(pattern, message, re.IGNORECASE | re.DOTALL), f"{pattern!r} not in: {message}"


def fixed_call(module, kind, d, shape, **kwargs):
    return lambda: getattr(module, f"{kind}_pool{d}d")(torch.randn(shape), **kwargs)


def shape_pattern(shape):
    return re.escape(", ".join(str(s) for s in shape))


def whole_shape_pattern(shape):
    """The shape as a whole list: an unbatched input's, not the (1, ...) one the ops see."""
    return r"\[" + shape_pattern(shape) + r"\]"


# ---------------------------------------------------------------- fixed windows

FIXED_CASES = [
    # (id, kinds, kwargs, patterns)
    ("kernel-0", ("max", "avg"), dict(kernel_size=0, stride=1), (r"kernel", r"\b0\b")),
    ("kernel-negative", ("max", "avg"), dict(kernel_size=-1, stride=1), (r"kernel", r"-1")),
    ("stride-0", ("max", "avg"), dict(kernel_size=2, stride=0), (r"stride", r"\b0\b")),
    ("stride-negative", ("max", "avg"), dict(kernel_size=2, stride=-2), (r"stride", r"-2")),
    ("dilation-0", ("max",), dict(kernel_size=2, dilation=0), (r"dilation", r"\b0\b")),
    ("dilation-negative", ("max",), dict(kernel_size=2, dilation=-1), (r"dilation", r"-1")),
    ("padding-negative", ("max", "avg"), dict(kernel_size=2, padding=-1), (r"pad", r"-1")),
    ("padding-over-half", ("max", "avg"), dict(kernel_size=3, padding=2), (r"pad", r"half", r"\b2\b")),
    ("padding-over-half-even", ("max", "avg"), dict(kernel_size=4, padding=3), (r"pad", r"half", r"\b3\b")),
    # the dilated (effective) kernel would allow 2, torch still limits padding to half the kernel
    ("padding-over-half-dilated", ("max",), dict(kernel_size=3, padding=2, dilation=2), (r"pad", r"half", r"\b2\b")),
    # (torch's avg_pool3d reports this as an input smaller than the kernel)
    ("output-too-small", ("max", "avg"), dict(kernel_size=7), (r"(output size|smaller than kernel)", r"\b7\b|\b0\b")),
    ("output-too-small-dilated", ("max",), dict(kernel_size=3, dilation=3), (r"output size",)),
    ("bad-padding-string", ("max", "avg"), dict(kernel_size=2, padding="full"), (r"padding", r"full")),
]


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", FIXED_CASES, ids=[c[0] for c in FIXED_CASES])
def test_fixed_argument_errors(case, kind, d):
    case_id, kinds, kwargs, patterns = case
    if kind not in kinds:
        pytest.skip(f"{kind} pooling has no such argument")
    shape = (2, 3) + (6,) * d
    # (a bad padding string is a TypeError, as torch's, and a ValueError, as its convolutions')
    exc_type = (TypeError, ValueError) if case_id == "bad-padding-string" else RuntimeError
    assert_rejected(f"{kind}_pool{d}d", fixed_call(PF, kind, d, shape, **kwargs),
                    fixed_call(F, kind, d, shape, **kwargs), exc_type, *patterns)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_fixed_wrong_number_of_dims(kind, d):
    for shape in ((6,) * d, (2, 3, 2) + (6,) * d):
        # (torch's avg_pool2d indexes a dim its input lacks: an IndexError)
        exc_type = IndexError if kind == "avg" and d == 2 and len(shape) < 3 else RuntimeError
        assert_rejected(f"{kind}_pool{d}d", fixed_call(PF, kind, d, shape, kernel_size=2),
                        fixed_call(F, kind, d, shape, kernel_size=2), exc_type, shape_pattern(shape))


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_fixed_zero_size_dims(kind, d):
    """Only the batch may be empty: zero channels or spatial sizes are errors in torch.
    The message quotes the input's shape, batched or not."""
    for shape in ((1, 2, 0) + (5,) * (d - 1), (1, 2) + (5,) * (d - 1) + (0,), (1, 0) + (5,) * d,
                  (2, 0) + (5,) * (d - 1), (0,) + (5,) * d, (0, 0) + (5,) * (d - 1)):
        assert_rejected(f"{kind}_pool{d}d", fixed_call(PF, kind, d, shape, kernel_size=1),
                        fixed_call(F, kind, d, shape, kernel_size=1), RuntimeError,
                        whole_shape_pattern(shape))


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_fixed_wrong_tuple_length(kind, d):
    kernel = (2,) * (d + 1)
    shape = (1, 2) + (6,) * d
    assert_rejected(f"{kind}_pool{d}d", fixed_call(PF, kind, d, shape, kernel_size=kernel),
                    fixed_call(F, kind, d, shape, kernel_size=kernel), RuntimeError, r"kernel_size",
                    shape_pattern(kernel))


@pytest.mark.parametrize("kind, arg", [(kind, arg) for kind in ("max", "avg")
                                       for arg in ("kernel_size", "stride", "padding", "dilation")
                                       if (kind, arg) != ("avg", "dilation")])
def test_fixed_args_past_32_bits(kind, arg):
    """torch takes kernel, stride, padding and dilation as 32-bit ints; past
    that, window arithmetic could overflow int64 (a dilation of 2**63 - 1 gave
    values from outside the input)."""
    kwargs = dict(kernel_size=3, stride=1, padding=1)
    kwargs[arg] = 2**63 - 1 if arg != "padding" else 2**31
    if arg == "padding":
        kwargs["kernel_size"] = 2**32 + 1
    shape = (1, 2, 7, 7)
    assert_rejected(f"{kind}_pool2d", fixed_call(PF, kind, 2, shape, **kwargs),
                    fixed_call(F, kind, 2, shape, **kwargs), RuntimeError, r"32 bits", str(kwargs[arg]))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_window_past_int64_cells(kind):
    """A 3d window of 32-bit kernel sizes whose cell count passes int64 (torch
    takes it; ours numbers taps in int64, which wrapped into wrong indices)."""
    call = fixed_call(PF, kind, 3, (1, 1, 3, 3, 3), kernel_size=2**21 + 1, stride=1, padding=2**20)
    assert_rejected(f"{kind}_pool3d", call, None, RuntimeError, r"kernel_size", r"int64", torch_rejects=False)


@pytest.mark.parametrize("d", [2, 3])
def test_avg_divisor_override_zero(d):
    for shape in ((1, 2) + (6,) * d, (6,) * d):  # (before the input's dims, as torch)
        assert_rejected(f"avg_pool{d}d", fixed_call(PF, "avg", d, shape, kernel_size=2, divisor_override=0),
                        fixed_call(F, "avg", d, shape, kernel_size=2, divisor_override=0), RuntimeError,
                        r"divisor", r"\b0\b")


@pytest.mark.parametrize("shape,kwargs", [
    ((1, 1, 2, 2, 2), dict(kernel_size=3, stride=1, padding=1)),
    ((1, 1, 2, 5, 5), dict(kernel_size=3, stride=3, ceil_mode=True)),
    ((2, 3, 6, 1, 3), dict(kernel_size=(2, 3, 1), ceil_mode=True)),
    ((1, 3, 5, 6, 1), dict(kernel_size=(2, 2, 3), stride=(1, 3, 3), padding=(0, 0, 1), ceil_mode=True)),
], ids=["padded", "ceil", "ceil-unpadded", "ceil-padded-one-dim"])
def test_avg_pool3d_input_smaller_than_kernel(shape, kwargs):
    """torch's avg_pool3d (unlike the others) rejects an input smaller than the kernel even
    when padding or ceil_mode would give an output."""
    assert_rejected("avg_pool3d", fixed_call(PF, "avg", 3, shape, **kwargs), fixed_call(F, "avg", 3, shape, **kwargs),
                    RuntimeError, r"kernel", r"smaller")


# ---------------------------------------------------------------- adaptive


def adaptive_call(module, kind, d, shape, output_size):
    return lambda: getattr(module, f"adaptive_{kind}_pool{d}d")(torch.randn(shape), output_size)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_adaptive_errors(kind, d):
    name = f"adaptive_{kind}_pool{d}d"
    good = (2, 3) + (5,) * d
    negative = (3,) * (d - 1) + (-1,)
    assert_rejected(name, adaptive_call(PF, kind, d, good, negative), adaptive_call(F, kind, d, good, negative),
                    RuntimeError, r"output_size", r"-1")
    too_long = (3,) * (d + 1)
    assert_rejected(name, adaptive_call(PF, kind, d, good, too_long), adaptive_call(F, kind, d, good, too_long),
                    RuntimeError, r"output_size", shape_pattern(too_long))
    for shape in ((5,) * d, (2, 3, 2) + (5,) * d):
        assert_rejected(name, adaptive_call(PF, kind, d, shape, 2), adaptive_call(F, kind, d, shape, 2),
                        RuntimeError, shape_pattern(shape))
    for shape in ((1, 2, 0) + (5,) * (d - 1), (1, 2) + (5,) * (d - 1) + (0,), (2, 0) + (5,) * (d - 1),
                  (2,) + (5,) * (d - 1) + (0,), (0, 0) + (5,) * (d - 1)):
        assert_rejected(name, adaptive_call(PF, kind, d, shape, 2), adaptive_call(F, kind, d, shape, 2),
                        RuntimeError, whole_shape_pattern(shape))


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_adaptive_output_size_of_one_entry(kind, d):
    """torch wants exactly d entries (an int is the only shorthand)."""
    name = f"adaptive_{kind}_pool{d}d"
    shape = (2, 3) + (5,) * d
    assert_rejected(name, adaptive_call(PF, kind, d, shape, (3,)), adaptive_call(F, kind, d, shape, (3,)),
                    RuntimeError, r"output_size")


# ---------------------------------------------------------------- variable


VARIABLE = [(kind, d) for kind in ("max", "avg") for d in (1, 2, 3)]


def variable_call(kind, d, x, sizes):
    return lambda: getattr(pool_ext.functional, f"variable_{kind}_pool{d}d")(x, 2, sizes)


def never_called():
    raise AssertionError("no torch counterpart")


VARIABLE_IDS = [f"{k}{d}d" for k, d in VARIABLE]


def variable_rejects(kind, d, sizes, exc_type, *patterns, x=None):
    x = torch.randn((3, 2) + (5,) * d) if x is None else x
    assert_rejected(f"variable_{kind}_pool{d}d", variable_call(kind, d, x, sizes), never_called, exc_type,
                    *patterns, torch_rejects=False)


@pytest.mark.parametrize("kind,d", VARIABLE, ids=VARIABLE_IDS)
def test_variable_output_size_none(kind, d):
    """None (the input's extent) has no one meaning when each sample has its own
    extent: the padded one would upsample short samples, unlike slicing each."""
    name = f"variable_{kind}_pool{d}d"
    x, sizes = torch.randn((3, 2) + (5,) * d), torch.full((3, d), 4)
    for output_size in (None, (None,) * d, (2,) * (d - 1) + (None,)):
        assert_rejected(name, lambda: getattr(pool_ext.functional, name)(x, output_size, sizes), never_called,
                        RuntimeError, r"output_size", r"None", torch_rejects=False)
    fake = torch.empty((3, 2) + (5,) * d, device="meta")
    op = getattr(torch.ops.pool_ext, f"adaptive_{kind}_pool")
    with pytest.raises(RuntimeError, match=rf"{name}: output_size must be given in full"):
        op(fake, [-1] * d, sizes.to("meta"))


@pytest.mark.parametrize("kind,d", VARIABLE, ids=VARIABLE_IDS)
def test_variable_sizes_wrong_shape(kind, d):
    for shape in ((3, d + 1), (4, d), (2, d), (3, d, 1)) + (((3,),) if d > 1 else ()):
        variable_rejects(kind, d, torch.full(shape, 4), RuntimeError, r"sizes", r"shape", shape_pattern(shape))


@pytest.mark.parametrize("kind,d", VARIABLE, ids=VARIABLE_IDS)
def test_variable_sizes_wrong_dtype(kind, d):
    for dtype, name in ((torch.float32, r"float"), (torch.int16, r"(int16|short)"), (torch.bool, r"bool")):
        variable_rejects(kind, d, torch.full((3, d), 4, dtype=dtype), RuntimeError, r"sizes", r"dtype", name)


@pytest.mark.parametrize("kind,d", VARIABLE, ids=VARIABLE_IDS)
def test_variable_sizes_wrong_device(kind, d):
    """sizes on another device than the input (the meta device stands in where there is no GPU)."""
    variable_rejects(kind, d, torch.full((3, d), 4, device="meta"), RuntimeError, r"sizes", r"device", r"meta")


@pytest.mark.parametrize("kind,d", VARIABLE, ids=VARIABLE_IDS)
def test_variable_sizes_not_a_tensor(kind, d):
    variable_rejects(kind, d, [[4] * d] * 3, TypeError, r"sizes", r"list")


@pytest.mark.parametrize("kind,d", VARIABLE, ids=VARIABLE_IDS)
def test_variable_size_out_of_range(kind, d):
    """A size < 1 or beyond the padded extent: the message names the sample and the value."""
    good = torch.full((3, d), 4, dtype=torch.int64)
    for sample, value in ((1, 0), (2, -3), (0, 6), (2, 99)):
        for dim in range(d):
            bad = good.clone()
            bad[sample, dim] = value
            patterns = (rf"sizes\[{sample}\D", rf"(?<![\d-]){re.escape(str(value))}\b")
            variable_rejects(kind, d, bad, RuntimeError, *patterns)
            variable_rejects(kind, d, bad.int(), RuntimeError, *patterns)
            if d == 1:
                variable_rejects(kind, d, bad.view(3), RuntimeError, *patterns)


@pytest.mark.parametrize("kind,d", VARIABLE, ids=VARIABLE_IDS)
def test_variable_input_not_a_padded_batch(kind, d):
    x = torch.randn((2,) + (5,) * d)  # unbatched
    variable_rejects(kind, d, torch.full((1, d), 4), RuntimeError, shape_pattern(tuple(x.shape)), x=x)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("kind,d", VARIABLE, ids=[f"{k}{d}d" for k, d in VARIABLE])
def test_variable_sizes_on_another_device(kind, d):
    name = f"variable_{kind}_pool{d}d"
    x = torch.randn((3, 2) + (5,) * d)
    sizes = torch.full((3, d), 4)
    assert_rejected(name, variable_call(kind, d, x, sizes.cuda()), never_called, RuntimeError, r"device",
                    r"cuda", torch_rejects=False)
    assert_rejected(name, variable_call(kind, d, x.cuda(), sizes), never_called, RuntimeError, r"device",
                    r"cpu", torch_rejects=False)


def backward_and_indices_calls(x, moved, to):
    """(op name in errors, call(run)) of each backward and indices op given input
    x and `moved` ("grad_output" or "taps") moved by `to`; run(op, *args) calls op."""
    ops = torch.ops.pool_ext
    fixed = ([2, 2], [2, 2], [0, 0], [1, 1], False, False)
    _, taps = ops.max_pool(x, *fixed)
    _, adaptive_taps = ops.adaptive_max_pool(x, [3, 3], None)
    grad, adaptive_grad = torch.randn_like(taps, dtype=x.dtype), torch.randn_like(adaptive_taps, dtype=x.dtype)
    if moved == "grad_output":
        grad, adaptive_grad = to(grad), to(adaptive_grad)
    else:
        taps, adaptive_taps = to(taps), to(adaptive_taps)
    calls = [
        ("max_pool2d backward", lambda run: run(ops._max_pool_backward.default, grad, x, taps, *fixed)),
        ("adaptive_max_pool2d backward", lambda run: run(ops._adaptive_max_pool_backward.default,
                                                         adaptive_grad, x, adaptive_taps, [3, 3], None)),
    ]
    if moved == "grad_output":
        return calls + [
            ("avg_pool2d backward", lambda run: run(ops._avg_pool_backward.default, grad, x, *fixed[:3],
                                                    False, False, True, None)),
            ("adaptive_avg_pool2d backward", lambda run: run(ops._adaptive_avg_pool_backward.default,
                                                             adaptive_grad, x, [3, 3], None)),
        ]
    return calls + [
        ("max_pool2d", lambda run: run(ops._max_pool_indices.default, x, taps, *fixed)),
        ("adaptive_max_pool2d", lambda run: run(ops._adaptive_max_pool_indices.default, x, adaptive_taps,
                                                [3, 3], None)),
    ]


@pytest.mark.parametrize("moved", ["grad_output", "taps"])
def test_backward_and_indices_ops_refuse_another_device(moved):
    """grad_output and saved taps must be on the input's device: the dispatcher
    runs the CUDA kernel when any argument is on a GPU, which must not be handed
    a host pointer. Checked here on the CPU kernel, given meta tensors (whose
    data it must never touch), and on the fake kernels; on a GPU, CPU and CUDA tensors mixed."""
    cpu = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    x = torch.randn(1, 2, 6, 6)
    for name, call in backward_and_indices_calls(x, moved, lambda t: t.to("meta")):
        with pytest.raises(RuntimeError, match=rf"{name}: expected {moved} on cpu .*but got it on meta"):
            call(lambda op, *args: op.redispatch(cpu, *args))
        # Called plainly, a meta tensor among the arguments picks the fake kernel: the same check.
        with pytest.raises(RuntimeError, match=rf"{name}: expected {moved} on cpu .*but got it on meta"):
            call(lambda op, *args: op(*args))
    if HAS_CUDA:
        for x, to in ((torch.randn(1, 2, 6, 6, device="cuda"), lambda t: t.cpu()),
                      (torch.randn(1, 2, 6, 6), lambda t: t.cuda())):
            for name, call in backward_and_indices_calls(x, moved, to):
                with pytest.raises(RuntimeError, match=rf"{name}: expected {moved} on {x.device}"):
                    call(lambda op, *args: op(*args))


def result_or_error(call):
    """What call() gives: its result, or the exception it raises."""
    try:
        return call()
    except Exception as e:  # noqa: BLE001 (any error torch raises is the expected outcome)
        return e


def assert_same_outcome(got, want, what):
    """The same results (values, dtypes, indices), or errors of the same type and message."""
    if isinstance(want, Exception) or isinstance(got, Exception):
        assert type(got) is type(want) and str(got) == str(want), (what, got, want)
        return
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    for g, w in zip(got, want, strict=True):
        g, w = (t.dequantize() if t.is_quantized else t for t in (g, w))
        assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(g, w), what


OTHER_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
                torch.complex64, torch.quint8]


@pytest.mark.parametrize("dtype", OTHER_DTYPES, ids=str)
def test_other_dtypes_run_torch_pooling(dtype):
    """Integer, bool, complex and quantized inputs, which our kernels do not
    take, run torch's own pooling through pool_ext.functional and pool_ext.nn:
    its values and indices where it has a kernel (max_pool2d/3d of integers,
    averages of int64, quantized pooling), its very error where it has none,
    with our output_size extensions applied.
    The ops themselves (and their fake kernels) refuse them, naming the op and
    the dtype; so do variable and spatial pyramid pooling, which torch lacks."""
    rng = make_rng("other-dtypes", str(dtype))
    for kind in ("max", "avg"):
        for d in (1, 2, 3):
            shape = (2, 3) + tuple(rng.randint(3, 7) for _ in range(d))
            x = torch.randn(shape) * 10
            x = (torch.quantize_per_tensor(x, 0.1, 0, dtype) if dtype == torch.quint8
                 else x.to(dtype))
            # Every argument away from its default too: each must reach torch's function.
            extra = (2, True) if kind == "max" else (True, False) if d == 1 else (True, False, 3)
            calls = [(f"{kind}_pool{d}d", (2,)), (f"{kind}_pool{d}d", (3, 2, 1, *extra)),
                     (f"{kind}_pool{d}d", ((2, 3, 2)[:d], 1, 0))]
            calls += [(f"adaptive_{kind}_pool{d}d", (size,))  # (1d's None: below)
                      for size in (2, 1, (None, 3, 2)[:d] if d > 1 else 3, (3, None, 2)[-d:])]
            for name, args in calls:
                for kwargs in ({}, {"return_indices": True}) if kind == "max" else ({},):
                    for t in (x, x[0]):  # batched and unbatched
                        want = result_or_error(lambda: getattr(F, name)(t, *args, **kwargs))
                        got = result_or_error(lambda: getattr(PF, name)(t, *args, **kwargs))
                        assert_same_outcome(got, want, (name, args, kwargs, t.shape))
            # Our output_size extensions (None for every dim, None in a 1d size) reach torch
            # as the sizes they stand for.
            for size in (None, (None,) * d):
                for t in (x, x[0]):
                    resolved = tuple(t.shape[-d:]) if d > 1 else t.shape[-1]
                    want = result_or_error(lambda: getattr(F, f"adaptive_{kind}_pool{d}d")(t, resolved))
                    got = result_or_error(lambda: getattr(PF, f"adaptive_{kind}_pool{d}d")(t, size))
                    assert_same_outcome(got, want, (kind, d, size, t.shape))
            layer = getattr(pool_ext.nn, f"{kind.capitalize()}Pool{d}d")(2)
            torch_layer = getattr(torch.nn, f"{kind.capitalize()}Pool{d}d")(2)
            assert_same_outcome(result_or_error(lambda: layer(x)), result_or_error(lambda: torch_layer(x)), "layer")
            with pytest.raises(NotImplementedError, match=rf"{kind}_pool{d}d: padding='same' needs a floating"):
                getattr(PF, f"{kind}_pool{d}d")(x, 3, 1, "same")
    if dtype == torch.quint8:
        return
    x = torch.zeros(1, 2, 4, 4, dtype=dtype)
    scalar_type = {torch.uint8: "Byte", torch.int8: "Char", torch.int16: "Short", torch.int32: "Int",
                   torch.int64: "Long", torch.bool: "Bool", torch.complex64: "ComplexFloat"}[dtype]
    ops = torch.ops.pool_ext
    for t in (x, x.to("meta")):  # the CPU kernels and the fake kernels
        for name, call in (("max_pool2d", lambda: ops.max_pool(t, [2, 2], [2, 2], [0, 0], [1, 1], False, False)),
                           ("avg_pool2d", lambda: ops.avg_pool(t, [2, 2], [2, 2], [0, 0], False, False, True, None)),
                           ("adaptive_max_pool2d", lambda: ops.adaptive_max_pool(t, [2, 2], None)),
                           ("adaptive_avg_pool2d", lambda: ops.adaptive_avg_pool(t, [2, 2], None))):
            with pytest.raises(NotImplementedError, match=rf"{name}: .*but got ({scalar_type}|{dtype})"):
                call()
    with pytest.raises(NotImplementedError, match="variable_max_pool2d"):
        PF.variable_max_pool2d(x, 2, torch.tensor([[4, 4]]))
    with pytest.raises(NotImplementedError, match="spatial_pyramid_pool2d"):
        PF.spatial_pyramid_pool2d(x)


def test_spatial_pyramid_pool_errors():
    x = torch.randn(2, 3, 8, 8)
    spp = pool_ext.functional.spatial_pyramid_pool2d
    for call, pattern in (
        (lambda: spp(x, mode="min"), r"min"),
        (lambda: spp(x, levels=(1, 0)), r"\b0\b"),
        (lambda: spp(x, levels=()), r"levels"),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert "spatial_pyramid_pool2d" in str(info.value)
        assert re.search(pattern, str(info.value))
    with pytest.raises(ValueError, match="min"):
        pool_ext.nn.SpatialPyramidPool2d(mode="min")
    # Errors of the ops it runs name it too (they name the adaptive op they run as).
    with pytest.raises(RuntimeError, match=r"^spatial_pyramid_pool2d: .*sizes\[1\D"):
        spp(x, sizes=torch.tensor([[8, 8], [8, 9]]))
    with pytest.raises(RuntimeError, match=r"^spatial_pyramid_pool2d: .*Long"):
        spp(x.long())
    with pytest.raises(TypeError, match=r"^spatial_pyramid_pool2d: levels.*2\.5"):
        spp(x, levels=(1, 2.5))


# ---------------------------------------------------------------- argument types

# (id, op, kwargs, error pattern or None): torch's parser takes an int as an
# int, a numpy integer or a 0-d integer tensor, and a flag only as a bool.
ARGUMENT_TYPES = [
    ("kernel-0d-tensor", "avg_pool2d", dict(kernel_size=torch.tensor(2)), None),
    ("dilation-0d-tensor", "max_pool1d", dict(kernel_size=2, dilation=torch.tensor(2)), None),
    ("kernel-bool", "max_pool2d", dict(kernel_size=True), r"kernel_size.*True"),
    ("kernel-bool-in-tuple", "avg_pool2d", dict(kernel_size=(True, 2)), r"kernel_size.*True"),
    ("kernel-float", "max_pool1d", dict(kernel_size=2.0), r"kernel_size.*2\.0"),
    ("kernel-float-in-tuple", "avg_pool2d", dict(kernel_size=(2.0, 2)), r"kernel_size.*2\.0"),
    ("kernel-string", "max_pool2d", dict(kernel_size="3"), r"kernel_size.*'3'"),
    ("kernel-1d-tensor", "max_pool2d", dict(kernel_size=torch.tensor([2, 2])), r"kernel_size.*Tensor"),
    ("stride-float", "avg_pool3d", dict(kernel_size=1, stride=2.0), r"stride.*2\.0"),
    ("ceil-mode-int", "max_pool2d", dict(kernel_size=3, stride=2, ceil_mode=1), r"ceil_mode.*\b1\b"),
    ("ceil-mode-none", "avg_pool1d", dict(kernel_size=3, ceil_mode=None), r"ceil_mode.*None"),
    ("count-include-pad-int", "avg_pool2d", dict(kernel_size=3, padding=1, count_include_pad=0),
     r"count_include_pad.*\b0\b"),
    ("divisor-float", "avg_pool2d", dict(kernel_size=2, divisor_override=1.5), r"divisor_override.*1\.5"),
    ("divisor-bool", "avg_pool3d", dict(kernel_size=1, divisor_override=True), r"divisor_override.*True"),
    ("output-size-bool", "adaptive_max_pool2d", dict(output_size=True), r"output_size.*True"),
    ("output-size-float", "adaptive_avg_pool1d", dict(output_size=(2.0,)), r"output_size.*2\.0"),
    ("output-size-none-entry", "adaptive_max_pool2d", dict(output_size=(None, 2)), None),
    ("output-size-1d-tensor", "adaptive_max_pool2d", dict(output_size=torch.tensor([2, 3])), None),
    ("output-size-range", "adaptive_max_pool3d", dict(output_size=range(1, 4)), None),
]
try:  # numpy is in CI's environment, not necessarily on a GPU machine
    import numpy as np

    ARGUMENT_TYPES += [
        ("kernel-numpy-int", "max_pool2d", dict(kernel_size=np.int64(2)), None),
        ("kernel-numpy-in-tuple", "max_pool3d", dict(kernel_size=(np.int32(2), 1, 2)), None),
        ("padding-numpy-int", "avg_pool1d", dict(kernel_size=3, padding=np.int64(1)), None),
        ("divisor-numpy-int", "avg_pool2d", dict(kernel_size=2, divisor_override=np.int64(3)), None),
        ("output-size-numpy-array", "adaptive_max_pool2d", dict(output_size=np.array([2, 3])), None),
        ("ceil-mode-numpy-bool", "max_pool2d", dict(kernel_size=3, stride=2, ceil_mode=np.bool_(True)),
         r"ceil_mode.*True"),
    ]
except ImportError:
    pass


@pytest.mark.parametrize("case", ARGUMENT_TYPES, ids=[c[0] for c in ARGUMENT_TYPES])
def test_argument_types_as_torch_takes_them(case):
    """Arguments of another type: where torch takes them, the same result; where
    it raises a TypeError, a TypeError naming the op, the argument and the value
    (not a Python error from inside ours, nor a schema error of the inner op)."""
    _, name, kwargs, pattern = case
    d = int(name[-2])
    x = torch.randn((2, 3) + (4, 5, 6)[:d], dtype=torch.float64)
    if pattern is None:
        assert_equal(ours(name)(x, **kwargs), torchs(name)(x, **kwargs))
    else:
        assert_rejected(name, lambda: ours(name)(x, **kwargs), lambda: torchs(name)(x, **kwargs),
                        TypeError, pattern)


@pytest.mark.parametrize("name", ["max_pool2d", "avg_pool1d", "adaptive_avg_pool3d", "variable_max_pool1d"])
def test_input_not_a_tensor(name):
    args = (1, torch.tensor([1])) if name.startswith("variable") else (1,)
    assert_rejected(name, lambda: ours(name)([[1.0, 2.0]], *args), None, TypeError, r"Tensor", r"list",
                    torch_rejects=False)


# ---------------------------------------------------------------- randomized: accept exactly what torch accepts


def pick(rng, valid, invalid, p_invalid):
    return rng.choice(invalid) if rng.random() < p_invalid else rng.choice(valid)


def random_shape(rng, d):
    """Mostly valid shapes: sometimes zero sizes, unbatched or the wrong number of dims."""
    dims = d if rng.random() < 0.93 else rng.choice([d - 1, d + 1])
    shape = [pick(rng, [1, 2, 3], [0], 0.05)] + [pick(rng, range(1, 9), [0], 0.04) for _ in range(dims)]
    if rng.random() < 0.8:
        shape.insert(0, rng.choice([0, 1, 2]))
    return tuple(shape)


def random_fixed_args(rng, kind, d):
    def arg(values):
        return values[0] if len(set(values)) == 1 and rng.random() < 0.5 else tuple(values)

    kernel = [pick(rng, range(1, 5), [0, -1], 0.04) for _ in range(d)]
    padding = [pick(rng, range(0, max(k, 1) // 2 + 1), [max(k, 1) // 2 + 1, -1], 0.06) for k in kernel]
    kwargs = {"kernel_size": arg(kernel), "padding": arg(padding), "ceil_mode": rng.random() < 0.5}
    if rng.random() < 0.8:
        kwargs["stride"] = arg([pick(rng, range(1, 4), [0, -1], 0.04) for _ in range(d)])
    if kind == "max":
        kwargs["dilation"] = arg([pick(rng, [1, 1, 2, 3], [0, -1], 0.04) for _ in range(d)])
    else:
        kwargs["count_include_pad"] = rng.random() < 0.5
        if d > 1 and rng.random() < 0.3:
            kwargs["divisor_override"] = pick(rng, [1, 3], [0], 0.2)
    return random_shape(rng, d), kwargs


def random_adaptive_args(rng, d):
    out = [pick(rng, range(0, 7), [-1], 0.05) for _ in range(d)]
    output_size = out[0] if rng.random() < 0.4 else tuple(out)
    return random_shape(rng, d), output_size


def outcome(fn, x, *args, **kwargs):
    try:
        result = fn(x, *args, **kwargs)
        return (result[0] if isinstance(result, tuple) else result), None
    except TORCH_ERRORS as e:
        return None, e


def torch_quirk(name, shape, d, output_size=None):
    """Degenerate inputs torch accepts through a side path only: zero channels (its
    adaptive kernels check only some dims, differently per op) and the mean()
    shortcut of adaptive_avg_pool to size 1, which returns NaN for an empty input.
    We do not require these to be accepted (their rejection is checked elsewhere)."""
    if len(shape) < d + 1:
        return False
    channels = shape[-d - 1]
    if channels == 0 and name.startswith("adaptive"):
        return True
    ones = output_size == 1 or (isinstance(output_size, tuple) and set(output_size) == {1})
    return name.startswith("adaptive_avg") and ones and 0 in shape[-d:]


def sweep(name, d, draw, rng, count):
    """(rejected-by-torch mismatches, accepted-by-torch mismatches, torch accept count)."""
    missed_rejects, wrong_rejects, accepted = [], [], 0
    for _ in range(count):
        shape, args, kwargs = draw(rng)
        x = torch.randn(shape, dtype=torch.float64)
        ref, ref_err = outcome(torchs(name), x, *args, **kwargs)
        got, err = outcome(ours(name), x, *args, **kwargs)
        what = f"{name} input {list(shape)} args={args} kwargs={kwargs}"
        if ref_err is not None:
            if err is None:
                missed_rejects.append(f"{what}: torch rejects ({str(ref_err)[:100]}), ours accepts")
            elif not isinstance(err, type(ref_err)):
                missed_rejects.append(
                    f"{what}: torch raises {type(ref_err).__name__}, ours {type(err).__name__}: {err}")
            elif name not in str(err):
                missed_rejects.append(f"{what}: message does not name the op: {err}")
            continue
        accepted += 1
        if err is not None:
            if not torch_quirk(name, shape, d, args[0] if args else None):
                wrong_rejects.append(f"{what}: torch accepts, ours rejects: {str(err)[:160]}")
            continue
        try:
            assert got.shape == ref.shape, (got.shape, ref.shape)
            torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6, equal_nan=True)
        except AssertionError as e:
            wrong_rejects.append(f"{what}: results differ: {e}")
    assert 0.15 * count < accepted < 0.9 * count, f"sweep unbalanced: torch accepted {accepted} of {count}"
    return missed_rejects, wrong_rejects


@functools.lru_cache(maxsize=None)
def sweep_results(family, kind, d):
    """Both directions of one sweep (each test reads its half)."""
    if family == "fixed":
        return sweep(f"{kind}_pool{d}d", d, fixed_draw(kind, d), make_rng("sweep", kind, d), 400)
    return sweep(f"adaptive_{kind}_pool{d}d", d, adaptive_draw(d), make_rng("sweep-a", kind, d), 300)


def fixed_draw(kind, d):
    def draw(rng):
        shape, kwargs = random_fixed_args(rng, kind, d)
        return shape, (), kwargs

    return draw


def adaptive_draw(d):
    def draw(rng):
        shape, output_size = random_adaptive_args(rng, d)
        return shape, (output_size,), {}

    return draw


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_fixed_rejects_what_torch_rejects(kind, d):
    missed, _ = sweep_results("fixed", kind, d)
    assert not missed, f"{len(missed)} calls torch rejects:\n" + "\n".join(missed[:12])


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_fixed_accepts_what_torch_accepts(kind, d):
    _, wrong = sweep_results("fixed", kind, d)
    assert not wrong, f"{len(wrong)} calls torch accepts:\n" + "\n".join(wrong[:12])


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_adaptive_rejects_what_torch_rejects(kind, d):
    missed, _ = sweep_results("adaptive", kind, d)
    assert not missed, f"{len(missed)} calls torch rejects:\n" + "\n".join(missed[:12])


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_adaptive_accepts_what_torch_accepts(kind, d):
    _, wrong = sweep_results("adaptive", kind, d)
    assert not wrong, f"{len(wrong)} calls torch accepts:\n" + "\n".join(wrong[:12])


def test_a_valid_call_after_errors_still_works():
    """Errors leave no state behind."""
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(RuntimeError):
        ours("max_pool2d")(x, 3, padding=2)
    assert_equal(ours("max_pool2d")(x, 3, padding=1), F.max_pool2d(x, 3, padding=1))


def test_unbatched_empty_input_after_argument_errors():
    """An unbatched input with an empty dim: argument errors first, as torch's
    parser raises them, then the empty dim, quoting the input's own shape (the
    ops see it with a batch dim added), in every family that takes one."""
    for shape in ((0, 5, 5), (3, 0, 5)):
        for call in (lambda m, x: m.max_pool2d(x, kernel_size=1.5),
                     lambda m, x: m.avg_pool2d(x, 1, ceil_mode=1),
                     lambda m, x: m.adaptive_max_pool2d(x, 1.5)):
            assert_rejected("pool2d", lambda: call(PF, torch.randn(shape)), lambda: call(F, torch.randn(shape)),
                            TypeError)
    empty = torch.randn(3, 0, 5)
    # (the *_with_indices functions name the op they run, as torch's do)
    for name, call in (("max_pool2d", lambda: PF.max_pool2d_with_indices(empty, 1)),
                       ("adaptive_max_pool2d", lambda: PF.adaptive_max_pool2d_with_indices(empty, 2)),
                       ("spatial_pyramid_pool2d: adaptive_max_pool2d", lambda: PF.spatial_pyramid_pool2d(empty)),
                       ("spatial_pyramid_pool2d: adaptive_avg_pool2d",
                        lambda: PF.spatial_pyramid_pool2d(empty, mode="avg"))):
        assert_rejected(name, call, never_called, RuntimeError, whole_shape_pattern(empty.shape),
                        torch_rejects=False)
    with pytest.raises(RuntimeError, match="sizes need a batched"):
        PF.spatial_pyramid_pool2d(empty, sizes=torch.tensor([[1, 1]]))


@pytest.mark.parametrize("name, shape, kwargs", [
    ("max_pool2d", (4, 4), dict(kernel_size=2.0)),
    ("avg_pool2d", (4,), dict(kernel_size=(2, 2.0))),
    ("max_pool3d", (2, 3, 2, 4, 4, 4), dict(kernel_size=2, ceil_mode=1)),
    ("adaptive_max_pool1d", (2, 3, 4, 4), dict(output_size=(2.0,))),
    ("adaptive_avg_pool2d", (2, 3, 4, 4, 4), dict(output_size=(2.0, 2))),
], ids=lambda v: v if isinstance(v, str) else None)
def test_argument_types_before_input_dims(name, shape, kwargs):
    """torch's parser checks the arguments' types before the ops check the
    input's dims: a wrong type with a wrong number of dims is a TypeError."""
    assert_rejected(name, lambda: getattr(PF, name)(torch.randn(shape), **kwargs),
                    lambda: getattr(F, name)(torch.randn(shape), **kwargs), TypeError)
