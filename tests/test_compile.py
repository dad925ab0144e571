"""A small CNN built from pool_ext.nn layers under torch.compile(fullgraph=True)
gives eager's outputs and gradients (no graph breaks through the custom ops)."""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.utils._triton import has_triton

import pool_ext
import pool_ext.functional as PF


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool1 = pool_ext.nn.MaxPool2d(2, ceil_mode=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool2 = pool_ext.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.pool3 = pool_ext.nn.MaxPool2d(3, stride=1, padding="same")
        self.adaptive = pool_ext.nn.AdaptiveAvgPool2d((3, 3))
        self.spp = pool_ext.nn.SpatialPyramidPool2d((1, 2), mode="max")
        self.fc = nn.Linear(8 * 9 + 8 * 5, 10)

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        x = self.pool3(x)
        return self.fc(torch.cat([self.adaptive(x).flatten(1), self.spp(x)], dim=1))


class VariableNet(nn.Module):
    """Padded batch of images of different sizes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = pool_ext.nn.VariableMaxPool2d((2, 2))
        self.avg = pool_ext.nn.VariableAvgPool1d(1)
        self.spp = pool_ext.nn.SpatialPyramidPool2d((1, 2), mode="avg")

    def forward(self, x, sizes):
        y = torch.relu(self.conv(x))
        lengths = sizes[:, 0]
        rows = self.avg(y.flatten(2), lengths * y.shape[-1]).flatten(1)
        return torch.cat([self.pool(y, sizes).flatten(1), self.spp(y, sizes), rows], dim=1)


def eager_and_compiled(model_cls, backend, **compile_kwargs):
    torch.manual_seed(0)
    eager = model_cls()
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend=backend, **compile_kwargs)
    return eager, compiled_model, compiled


def check_same(eager, compiled_model, compiled, *inputs, rtol=1e-5, atol=1e-5):
    x_eager = inputs[0].clone().requires_grad_()
    x_compiled = inputs[0].clone().requires_grad_()
    out_eager = eager(x_eager, *inputs[1:])
    out_compiled = compiled(x_compiled, *inputs[1:])
    torch.testing.assert_close(out_compiled, out_eager, rtol=rtol, atol=atol)
    grad = torch.randn_like(out_eager)
    out_eager.backward(grad)
    out_compiled.backward(grad)
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, rtol=rtol, atol=atol)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=rtol, atol=atol, msg=name)
        p_eager.grad = p_compiled.grad = None


def test_cnn_aot_eager():
    eager, compiled_model, compiled = eager_and_compiled(Net, "aot_eager")
    for shape in ((4, 3, 16, 16), (2, 3, 16, 16)):
        check_same(eager, compiled_model, compiled, torch.randn(shape))


def test_cnn_aot_eager_dynamic_shapes():
    """One graph for several input sizes: the fake kernels' shape rules hold symbolically."""
    torch._dynamo.reset()
    eager, compiled_model, compiled = eager_and_compiled(Net, "aot_eager", dynamic=True)
    for shape in ((2, 3, 16, 16), (3, 3, 19, 23), (1, 3, 12, 31)):
        check_same(eager, compiled_model, compiled, torch.randn(shape))


def test_cnn_inference_aot_eager():
    """Under torch.no_grad, max pooling takes its values-only op: a compile smoke
    test (the ops' equality with the training forward is test_fixed_pool's)."""
    eager, _, compiled = eager_and_compiled(Net, "aot_eager")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*is deprecated:FutureWarning")
def test_cnn_jit_trace():
    """torch.jit.trace records the same graph with and without grad (its own
    check reruns the model), and the traced module trains like eager."""
    torch.manual_seed(0)
    eager = Net()
    traced_model = copy.deepcopy(eager)
    x = torch.randn(2, 3, 16, 16)
    traced = torch.jit.trace(traced_model, x)
    check_same(eager, traced_model, traced, x)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*is deprecated:FutureWarning")
@pytest.mark.parametrize("layer, shape, other", [
    (pool_ext.nn.AdaptiveMaxPool2d((3, None)), (2, 3, 12, 16), (2, 3, 12, 23)),
    (pool_ext.nn.AdaptiveAvgPool3d((None, 2, None)), (2, 3, 5, 6, 7), (3, 3, 4, 9, 5)),
    (pool_ext.nn.AdaptiveAvgPool1d(None), (2, 3, 8), (2, 3, 11)),
    (pool_ext.nn.AdaptiveMaxPool2d((3, None)), (3, 12, 16), (3, 12, 23)),  # unbatched
    (pool_ext.nn.MaxPool2d(2), (3, 8, 10), (4, 12, 14)),
])
def test_none_output_size_follows_the_input(layer, shape, other):
    """A None output size keeps the input's extent in a trace run at another
    size, as torch's traced layers do (the op resolves it, not Python), and it
    leaves that extent symbolic under torch.compile: one graph for all sizes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(layer, torch.randn(shape))
    x = torch.randn(other)
    torch.testing.assert_close(traced(x), layer(x))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter, dynamic=True, fullgraph=True)
    for size in (shape, other, other[:-1] + (other[-1] + 3,)):
        x = torch.randn(size)
        torch.testing.assert_close(compiled(x), layer(x))
    assert counter.frame_count == 1


def test_cnn_export():
    """torch.export records our ops (the fake kernels' shapes symbolic in the
    batch); the exported program gives eager's outputs at another batch size."""
    torch.manual_seed(0)
    model = Net().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    names = {str(node.target) for node in program.graph.nodes}
    assert any(name.startswith("pool_ext.") for name in names), names
    x = torch.randn(5, 3, 16, 16)
    torch.testing.assert_close(program.module()(x), model(x))


class AdaptiveMax(nn.Module):
    """Adaptive max pooling to a grid and to one cell, fixed and per-sample sized."""

    def forward(self, x, sizes):
        return torch.cat([pool_ext.functional.adaptive_max_pool2d(x, 3).flatten(1),
                          pool_ext.functional.adaptive_max_pool2d(x, 1).flatten(1),
                          pool_ext.functional.variable_max_pool2d(x, (2, 3), sizes).flatten(1),
                          pool_ext.functional.spatial_pyramid_pool2d(x, (1, 2), "max", sizes)], dim=1)


def adaptive_max_inputs(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.stack([torch.randint(1, h + 1, (3,), generator=g), torch.randint(1, w + 1, (3,), generator=g)], 1)
    return torch.randn(3, 2, h, w, generator=g), sizes


# Sizes whose divisibility by the grids, and whose windows' cells (up to 256
# or over), change from one to the next: what the taps' dtype would depend on.
ADAPTIVE_SIZES = [(9, 10), (12, 13), (20, 21), (33, 17), (24, 60)]  # (no two equal: duck sizing)


def test_adaptive_max_compiles_once_for_all_sizes():
    """With a gradient to keep, adaptive max pooling under dynamic shapes is one
    graph for every size, as torch's is, and trains like eager."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(AdaptiveMax(), backend=counter, dynamic=True, fullgraph=True)
    for i, (h, w) in enumerate(ADAPTIVE_SIZES):
        check_same(AdaptiveMax(), AdaptiveMax(), compiled, *adaptive_max_inputs(h, w, i))
    assert counter.frame_count == 1


def test_adaptive_max_exports_with_dynamic_sizes():
    """torch.export with dynamic height and width keeps no guard on them: the
    program runs (and trains) at every size in the declared range."""
    h, w, n = torch.export.Dim("h", min=8, max=64), torch.export.Dim("w", min=8, max=64), torch.export.Dim("n")
    program = torch.export.export(AdaptiveMax(), adaptive_max_inputs(20, 20, 0),
                                  dynamic_shapes={"x": {0: n, 2: h, 3: w}, "sizes": {0: n}})
    for i, (h, w) in enumerate(ADAPTIVE_SIZES):
        check_same(AdaptiveMax(), program.module(), program.module(), *adaptive_max_inputs(h, w, i))


class PoolsItsInput(nn.Module):
    def forward(self, x):
        return torch.cat([pool_ext.functional.max_pool2d(x, 2).flatten(1),
                          pool_ext.functional.adaptive_max_pool2d(x, 3).flatten(1),
                          pool_ext.functional.spatial_pyramid_pool2d(x, (1, 2), "max")], dim=1)


def test_exported_max_pooling_trains():
    """An export (like a trace) may be trained later, so max pooling records
    its op with a derivative even on an input that needs no gradient then."""
    program = torch.export.export(PoolsItsInput(), (torch.randn(2, 3, 8, 8),))
    x = torch.randn(2, 3, 8, 8)
    got, want = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(2, 3 * (16 + 9 + 5))
    program.module()(got).backward(g)
    PoolsItsInput()(want).backward(g)
    torch.testing.assert_close(got.grad, want.grad)


def test_inference_op_refuses_a_gradient():
    """The values-only max op, under the layers only without grad, names itself
    when a gradient is asked of it rather than giving none."""
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    out = torch.ops.pool_ext._max_pool_values(x, [2, 2], [2, 2], [0, 0], [1, 1], False, False)
    with pytest.raises(RuntimeError, match="_max_pool_values"):
        out.sum().backward()
    out = torch.ops.pool_ext._adaptive_max_pool_values(x, [3, 3], None)
    with pytest.raises(RuntimeError, match="_adaptive_max_pool_values"):
        out.sum().backward()


def test_channels_last_cnn_aot_eager():
    eager, compiled_model, compiled = eager_and_compiled(Net, "aot_eager")
    eager.to(memory_format=torch.channels_last)
    compiled_model.to(memory_format=torch.channels_last)
    check_same(eager, compiled_model, compiled, torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last))


def test_variable_pooling_aot_eager():
    eager, compiled_model, compiled = eager_and_compiled(VariableNet, "aot_eager")
    sizes = torch.tensor([[9, 11], [4, 3], [12, 12]])
    check_same(eager, compiled_model, compiled, torch.randn(3, 3, 12, 12), sizes)
    sizes = torch.tensor([[2, 12], [12, 1], [7, 7]])
    check_same(eager, compiled_model, compiled, torch.randn(3, 3, 12, 12), sizes)


class UnpoolsItsInput(nn.Module):
    def forward(self, x):
        out, idx = pool_ext.functional.max_pool2d(x, 2, return_indices=True)
        return torch.nn.functional.max_unpool2d(out, idx, 2, output_size=x.shape[-2:])


@pytest.mark.parametrize("model_cls, inputs", [
    (Net, (torch.randn(2, 3, 16, 16),)),
    (VariableNet, (torch.randn(3, 3, 12, 12), torch.tensor([[9, 11], [4, 3], [12, 12]]))),
    (UnpoolsItsInput, (torch.randn(2, 3, 8, 8),)),
])
def test_fx_symbolic_trace(model_cls, inputs):
    """torch.fx.symbolic_trace (behind torchvision's feature extractors and FX
    quantization) records each of our functions as one call, as it records
    torch.nn.functional's, and the traced module gives eager's results."""
    torch.manual_seed(0)
    eager = model_cls()
    traced = torch.fx.symbolic_trace(copy.deepcopy(eager))
    called = {node.target.__module__ for node in traced.graph.nodes if node.op == "call_function"}
    assert "pool_ext.functional" in called, traced.code
    check_same(eager, traced, traced, *inputs)


class Tagged(torch.Tensor):
    """A tensor subclass, as torchvision's tv_tensors are."""


def test_tensor_subclass_compiles():
    """torch.compile(fullgraph=True) takes a tensor subclass through our
    functions (it traces the subclass itself: the functions hand subclasses to
    handle_torch_function only outside it), keeping the subclass, as eager does."""
    def f(x, sizes):
        return (pool_ext.functional.max_pool2d(x, 2).relu() + 1,
                pool_ext.functional.adaptive_avg_pool2d(x, 3),
                pool_ext.functional.variable_max_pool2d(x, 2, sizes),
                pool_ext.functional.spatial_pyramid_pool2d(x, (1, 2)))

    torch._dynamo.reset()
    x, sizes = torch.randn(2, 3, 8, 8).as_subclass(Tagged), torch.tensor([[8, 5], [3, 8]])
    for got, want in zip(torch.compile(f, backend="eager", fullgraph=True)(x, sizes), f(x, sizes)):
        assert type(got) is Tagged and type(want) is Tagged
        torch.testing.assert_close(got.as_subclass(torch.Tensor), want.as_subclass(torch.Tensor))


@pytest.mark.parametrize("pool", [
    lambda x: PF.max_pool2d(x, 2, return_indices=True),
    lambda x: PF.max_pool2d_with_indices(x, 2),
    lambda x: PF.adaptive_max_pool2d_with_indices(x, 4),
], ids=["return_indices", "with_indices", "adaptive_with_indices"])
def test_max_pool_with_indices_compiles(pool):
    def f(x):
        out, idx = pool(x)
        return torch.nn.functional.max_unpool2d(out, idx, 2, output_size=x.shape[-2:])

    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x))


@pytest.mark.parametrize("pool", [
    lambda y: PF.max_pool2d(y, 3, 2, 1),
    lambda y: PF.avg_pool2d(y, 3, 2, 1, count_include_pad=False),
    lambda y: PF.adaptive_max_pool2d(y, 3),
    lambda y: PF.adaptive_avg_pool2d(y, (3, 2)),
    lambda y: PF.adaptive_avg_pool2d(y, 1),
    lambda y: PF.variable_max_pool2d(y, 2, torch.tensor([[8, 5], [3, 8]])),
], ids=["max", "avg", "adaptive-max", "adaptive-avg", "global-avg", "variable-max"])
def test_compiled_autograd_of_an_eager_graph(pool):
    """Compiled autograd (fullgraph) runs the backward of a graph built in eager
    mode, whose pooling nodes are our C++ autograd Functions: torch's gradient."""
    from torch._dynamo import compiled_autograd

    torch._dynamo.reset()
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    (want,) = torch.autograd.grad(pool(x * 2).pow(2).sum(), x)
    loss = pool(x * 2).pow(2).sum()
    with compiled_autograd._enable(torch.compile(backend="aot_eager", fullgraph=True)):
        loss.backward()
    torch.testing.assert_close(x.grad, want)


@pytest.mark.slow
def test_cnn_inductor():
    """The default backend (inductor) as well."""
    torch._dynamo.reset()
    eager, compiled_model, compiled = eager_and_compiled(Net, "inductor")
    check_same(eager, compiled_model, compiled, torch.randn(4, 3, 16, 16), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available() or not has_triton(), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("model_cls", [Net, VariableNet])
def test_reduce_overhead_captures_cuda_graphs(model_cls):
    """mode="reduce-overhead" runs the compiled graphs, forward and backward, as
    CUDA graphs: none of our ops (variable pooling's sizes included) makes
    inductor skip the capture, and replays give eager's results."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager, compiled_model, compiled = eager_and_compiled(model_cls, "inductor", mode="reduce-overhead")
    eager.cuda().double()
    compiled_model.cuda().double()  # float64: no TF32 convolutions to tell eager from compiled
    gen = torch.Generator().manual_seed(0)
    for step in range(4):  # a warm-up run, the recording, then replays
        x = torch.randn(3, 3, 12, 12, generator=gen, dtype=torch.float64).cuda()
        sizes = torch.stack([torch.randint(1, 13, (3,), generator=gen) for _ in range(2)], 1).cuda()
        inputs = (x, sizes) if model_cls is VariableNet else (x,)
        check_same(eager, compiled_model, compiled, *inputs, rtol=1e-10, atol=1e-10)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    # and graphs were recorded (x, and sizes, are inputs a recording counts)
    assert counters["inductor"]["cudagraph_recorded_non_static_inputs"] > 0, dict(counters["inductor"])
