"""torch.onnx.export of models that use pool_ext.

While the ONNX exporter traces, pool_ext.functional calls torch's own pooling
(which ONNX translates) and writes padding="same", adaptive and variable
pooling with torch ops that ONNX has (pool_ext/_onnx.py). The first tests run
those forms in eager mode, the exporter's flag forced on, against our ops on
random arguments: they need no ONNX package. The last ones export models and
run them in onnxruntime (skipped where onnxscript or onnxruntime is missing).
"""

import io
import warnings

import pytest
import torch

import pool_ext
import pool_ext.functional as PF
from pool_ext import _onnx
from pool_testing import INF, NAN, TOL, make_rng, random_values

CASES = 60


@pytest.fixture
def exporting(monkeypatch):
    """pool_ext.functional as it runs inside torch.onnx.export."""
    monkeypatch.setattr(_onnx, "exporting", lambda: True)


def assert_values(got, want):
    """Max pooling's values exactly (NaN equal to NaN), averages within the dtype's tolerance."""
    assert got.shape == want.shape and got.dtype == want.dtype
    rtol, atol = TOL[want.dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)


def exported(monkeypatch, fn):
    """fn() as it runs inside torch.onnx.export."""
    with monkeypatch.context() as m:
        m.setattr(_onnx, "exporting", lambda: True)
        return fn()


def run_both(monkeypatch, fn):
    """(the export form, ours) of fn()."""
    want = fn()
    return exported(monkeypatch, fn), want


def random_x(rng, spatial, dtype, *, specials=0.0):
    batch = [rng.randint(1, 3)] if rng.random() < 0.8 else []  # unbatched too
    return random_values(rng, (*batch, rng.randint(1, 3), *spatial), dtype, specials=specials,
                         special_values=(NAN, INF, -INF))


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_same_padding(monkeypatch, kind, d):
    """padding="same" as F.pad and torch's pooling: max pads with -inf, the
    average divides by the real cells (or divisor_override)."""
    for case in range(CASES):
        rng = make_rng("onnx-same", kind, d, case)
        dtype = rng.choice([torch.float32, torch.float64])
        kernel = [rng.randint(1, 5) for _ in range(d)]
        stride = [rng.randint(1, 4) for _ in range(d)]
        x = random_x(rng, [rng.randint(1, 9) for _ in range(d)], dtype, specials=0.1 if kind == "max" else 0)
        if kind == "max":
            dilation = [rng.randint(1, 3) for _ in range(d)]
            fn = getattr(PF, f"max_pool{d}d")
            got, want = run_both(monkeypatch, lambda: fn(x, kernel, stride, "same", dilation))
        else:
            extra = {}
            if d > 1 and rng.random() < 0.3:
                extra["divisor_override"] = rng.randint(1, 7)
            fn = getattr(PF, f"avg_pool{d}d")
            got, want = run_both(monkeypatch, lambda: fn(x, kernel, stride, "same", **extra))
        assert_values(got, want)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_fixed_windows_are_torch_pooling(monkeypatch, kind, d):
    """Numeric padding and "valid": torch's pooling of the same arguments."""
    for case in range(CASES // 2):
        rng = make_rng("onnx-fixed", kind, d, case)
        kernel = [rng.randint(1, 4) for _ in range(d)]
        padding = rng.choice(["valid", [rng.randint(0, k // 2) for k in kernel]])
        x = random_x(rng, [rng.randint(4, 9) for _ in range(d)], torch.float32, specials=0.05)
        ceil_mode = rng.random() < 0.5
        if kind == "max":
            fn = getattr(PF, f"max_pool{d}d")
            got, want = run_both(monkeypatch, lambda: fn(x, kernel, None, padding, 1, ceil_mode, True))
            assert_values(got[0], want[0])
            assert torch.equal(got[1], want[1])
        else:
            fn = getattr(PF, f"avg_pool{d}d")
            # (divisor_override: a mean times its divisor, which ONNX's average pooling lacks)
            extra = [rng.random() < 0.5] + ([rng.choice([None, rng.randint(-5, 7) or 1])] if d > 1 else [])
            got, want = run_both(monkeypatch, lambda: fn(x, kernel, None, padding, ceil_mode, *extra))
            assert_values(got, want)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_adaptive(monkeypatch, kind, d):
    """Adaptive pooling: masks (one cell: torch's global pooling), output
    sizes above and below the input's and None entries included."""
    for case in range(CASES):
        rng = make_rng("onnx-adaptive", kind, d, case)
        dtype = rng.choice([torch.float32, torch.float64, torch.bfloat16])
        x = random_x(rng, [rng.randint(1, 8) for _ in range(d)], dtype, specials=0.1 if kind == "max" else 0)
        size = rng.choice([1, tuple(rng.choice([None, rng.randint(0, 10)]) for _ in range(d))])
        fn = getattr(PF, f"adaptive_{kind}_pool{d}d")
        got, want = run_both(monkeypatch, lambda: fn(x, size))
        assert_values(got, want)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_variable(monkeypatch, kind, d):
    """Variable pooling by masks: each sample over its own extent, whatever
    fills the padding (NaN, infinities)."""
    for case in range(CASES):
        rng = make_rng("onnx-variable", kind, d, case)
        dtype = rng.choice([torch.float32, torch.float64, torch.float16])
        n = rng.randint(1, 4)
        extents = [rng.randint(1, 8) for _ in range(d)]
        sizes = torch.tensor([[rng.randint(1, e) for e in extents] for _ in range(n)],
                             dtype=rng.choice([torch.int32, torch.int64]))
        x = random_values(rng, (n, rng.randint(1, 3), *extents), dtype)
        for i in range(n):  # the padding: what a read of it would show
            valid = (i, slice(None)) + tuple(slice(0, int(s)) for s in sizes[i])
            fill = torch.full_like(x[i], rng.choice([NAN, INF, -INF]))
            fill[valid[1:]] = x[valid]
            x[i] = fill
        if d == 1 and rng.random() < 0.5:
            sizes = sizes.reshape(n)
        size = rng.choice([1, tuple(rng.randint(0, 10) for _ in range(d))])
        fn = getattr(PF, f"variable_{kind}_pool{d}d")
        got, want = run_both(monkeypatch, lambda: fn(x, size, sizes))
        assert_values(got, want)
        # An exported graph does not check sizes: it pools out-of-range ones as the nearest in range.
        wild = sizes.clone()
        wild.view(-1)[rng.randrange(wild.numel())] = rng.choice([-3, 0, 9, 100])
        got = exported(monkeypatch, lambda: fn(x, size, wild))
        in_range = torch.minimum(wild.reshape(n, d).clamp_min(1), torch.tensor(extents, dtype=wild.dtype))
        assert_values(got, fn(x, size, in_range))


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_spatial_pyramid(monkeypatch, mode):
    rng = make_rng("onnx-spp", mode)
    x = random_values(rng, (3, 4, 9, 7), torch.float32)
    sizes = torch.tensor([[9, 7], [4, 5], [1, 1]])
    for args in [(), (sizes,)]:
        got, want = run_both(monkeypatch, lambda: PF.spatial_pyramid_pool2d(x, (1, 2, 4), mode, *args))
        assert_values(got, want)


def test_what_export_refuses(exporting):
    """Indices where the export form has none to give, and variable pooling's
    None output sizes, raise errors that name the op."""
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(NotImplementedError, match=r"max_pool2d: torch.onnx.export does not support padding='same' "):
        PF.max_pool2d(x, 3, 2, "same", return_indices=True)
    with pytest.raises(NotImplementedError, match=r"variable_max_pool2d: .* return_indices=True"):
        PF.variable_max_pool2d(x, 2, torch.tensor([[8, 8], [3, 4]]), return_indices=True)
    with pytest.raises(NotImplementedError, match=r"adaptive_max_pool2d: .* return_indices=True"):
        PF.adaptive_max_pool2d(x, (2, 3), return_indices=True)
    with pytest.raises(RuntimeError, match=r"variable_avg_pool2d: output_size must be given in full"):
        PF.variable_avg_pool2d(x, (2, None), torch.tensor([[8, 8], [3, 4]]))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_export_raises_as_eager(monkeypatch, kind):
    """A malformed adaptive call raises the same error while exporting as in
    eager mode: an output_size sequence longer than the input's dims allow."""
    fn = getattr(PF, f"adaptive_{kind}_pool2d")
    x = torch.randn(5, 6)
    for call in (lambda: fn(x, (2, 2)), lambda: exported(monkeypatch, lambda: fn(x, (2, 2)))):
        with pytest.raises(ValueError, match=rf"adaptive_{kind}_pool2d: Input dimension should be at least 3"):
            call()


def test_integer_inputs_take_the_export_forms(monkeypatch):
    """Integer inputs, which eager mode hands to torch's pooling, take the
    export forms too while exporting: unbatched ones batched for the older
    exporter. (Not divisor_override on int64 averages: the form's factor
    rounds otherwise than torch's integer division.)"""
    x = torch.randint(0, 100, (3, 8, 8), dtype=torch.int64)
    for fn, args in ((PF.max_pool2d, (2,)), (PF.avg_pool2d, (3, 2, 1, False, True))):
        got, want = run_both(monkeypatch, lambda: fn(x, *args))
        assert got.shape == want.shape and torch.equal(got, want)
    calls, batched = [], _onnx._batched
    monkeypatch.setattr(_onnx, "_batched", lambda ndim, t, pool: calls.append(t.dim()) or batched(ndim, t, pool))
    exported(monkeypatch, lambda: PF.max_pool2d(x, 2))
    assert calls == [3]  # the export form ran, on the unbatched input


def test_not_exporting_elsewhere():
    """Eager calls, traces and torch.export keep pool_ext's ops: only the ONNX
    exporter's flag turns the export forms on."""
    assert not _onnx.exporting()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(lambda x: PF.max_pool2d(x, 3, 2, "same"), torch.randn(1, 2, 8, 8))
    assert "pool_ext::" in str(traced.graph)


# ---------------------------------------------------------------- export, run in onnxruntime


class Net(torch.nn.Module):
    """A model of torch.nn pooling layers (replaced by ours) and of what only
    pool_ext does."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pools = torch.nn.ModuleList([
            torch.nn.MaxPool2d(3, 2, 1), torch.nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.AdaptiveMaxPool2d((3, 4)), torch.nn.AdaptiveAvgPool2d(5),
        ])
        pool_ext.nn.replace_pooling(self)
        self.spp = pool_ext.nn.SpatialPyramidPool2d((1, 2), "max")

    def forward(self, x, sizes):
        y = self.conv(x)
        outs = [pool(y) for pool in self.pools]
        outs += [PF.max_pool2d(y, 3, 2, "same"), PF.avg_pool2d(y, 3, 2, "same"),
                 PF.avg_pool1d(y.flatten(2), 4, 3, "same"), PF.max_pool3d(y.unsqueeze(1), 2, padding="same"),
                 PF.avg_pool2d(y, 3, 2, 1, ceil_mode=True, divisor_override=5),
                 PF.avg_pool2d(y, 4, 3, "same", divisor_override=3),
                 PF.variable_max_pool2d(y, (2, 3), sizes), PF.variable_avg_pool2d(y, 1, sizes),
                 self.spp(y, sizes)]
        # unbatched (the older exporter's pooling takes batches only)
        outs += [PF.max_pool2d(y[0], 2), PF.avg_pool2d(y[0], 3, 2, "same"), PF.adaptive_max_pool2d(y[0], (2, 3))]
        return tuple(outs)


def random_batch(rng, n, h, w):
    x = random_values(rng, (n, 3, h, w), torch.float32)
    sizes = torch.tensor([[rng.randint(1, h), rng.randint(1, w)] for _ in range(n)])
    return x, sizes


def run_onnx(model_bytes, x, sizes):
    import onnxruntime
    session = onnxruntime.InferenceSession(model_bytes)
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, [x.numpy(), sizes.numpy()])))


def assert_standard_onnx(model_proto):
    """No node of the graph is a pool_ext op (which would need our library)."""
    nodes = list(model_proto.graph.node) + [n for f in model_proto.functions for n in f.node]
    assert not [n.op_type for n in nodes if "pool_ext" in n.domain or "pool_ext" in n.op_type]


def assert_runs_as_eager(model, model_bytes, x, sizes):
    with torch.no_grad():
        want = model(x, sizes)
    got = run_onnx(model_bytes, x, sizes)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-5, atol=1e-5)


def test_dynamo_export_runs_in_onnxruntime():
    """torch.onnx.export (dynamo=True, the default) with the batch, height and
    width dynamic: the ONNX model gives eager's results at other sizes too."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    rng = make_rng("onnx-dynamo")
    model = Net().eval()
    x, sizes = random_batch(rng, 2, 11, 13)
    batch, h, w = torch.export.Dim("batch"), torch.export.Dim("h", min=4, max=64), torch.export.Dim("w", min=4, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x, sizes), dynamic_shapes=({0: batch, 2: h, 3: w}, {0: batch}),
                                    dynamo=True, verbose=False)
    assert_standard_onnx(program.model_proto)
    model_bytes = program.model_proto.SerializeToString()
    for shape in [(2, 11, 13), (3, 20, 9), (1, 4, 64)]:
        assert_runs_as_eager(model, model_bytes, *random_batch(rng, *shape))


def test_legacy_export_runs_in_onnxruntime():
    """The TorchScript-based exporter (dynamo=False), which traces with torch.jit.trace."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    rng = make_rng("onnx-legacy")
    model = Net().eval()
    x, sizes = random_batch(rng, 2, 11, 13)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x, sizes), buffer, dynamo=False)
    assert_standard_onnx(onnx.load_from_string(buffer.getvalue()))
    assert_runs_as_eager(model, buffer.getvalue(), x, sizes)


def test_export_keeps_float16():
    """A float16 model's outputs stay float16 (torch's export of its one-cell
    adaptive max pooling returns float32)."""
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")

    class Half(torch.nn.Module):
        def forward(self, x):
            return (PF.adaptive_max_pool2d(x, 1), PF.adaptive_avg_pool2d(x, 1), PF.max_pool2d(x, 2),
                    PF.adaptive_max_pool2d(x, (2, 3)))

    x = random_values(make_rng("onnx-half"), (2, 3, 8, 9), torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Half(), (x,), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString())
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    for g, w in zip(got, Half()(x)):
        assert g.dtype == w.numpy().dtype
        torch.testing.assert_close(torch.from_numpy(g), w, rtol=2e-3, atol=2e-3)
