"""pool_ext.nn layers mirror torch.nn's (constructors, extra_repr, results), and
replace_pooling swaps torch.nn pooling layers in place."""

import copy

import pytest
import torch
from torch import nn

import pool_ext
import pool_ext.functional as pf
import pool_ext.nn as pnn
from pool_testing import DEVICES, assert_equal

# (class name, input shape, constructor args, constructor kwargs)
MIRRORED = [
    ("MaxPool1d", (2, 3, 11), (3,), {}),
    ("MaxPool1d", (2, 3, 11), (3, 2, 1), {"dilation": 2, "ceil_mode": True}),
    ("MaxPool1d", (3, 11), (2,), {"return_indices": True}),
    ("MaxPool2d", (2, 3, 9, 8), (3,), {"stride": 2, "padding": 1}),
    ("MaxPool2d", (2, 3, 9, 8), ((3, 2),), {"stride": (2, 1), "dilation": (1, 2), "ceil_mode": True}),
    ("MaxPool2d", (2, 3, 9, 8), (2,), {"return_indices": True}),
    ("MaxPool3d", (1, 2, 5, 6, 7), (2,), {"stride": 1, "padding": 1, "ceil_mode": True}),
    ("MaxPool3d", (1, 2, 5, 6, 7), ((3, 2, 2),), {"return_indices": True, "dilation": (1, 2, 1)}),
    ("AvgPool1d", (2, 3, 11), (3,), {}),
    ("AvgPool1d", (2, 3, 11), (3, 2, 1), {"ceil_mode": True, "count_include_pad": False}),
    ("AvgPool2d", (2, 3, 9, 8), (3,), {"stride": 2, "padding": 1}),
    ("AvgPool2d", (2, 3, 9, 8), ((3, 2),), {"ceil_mode": True, "count_include_pad": False, "divisor_override": 4}),
    ("AvgPool3d", (1, 2, 5, 6, 7), (2,), {"stride": 1, "padding": 1}),
    ("AvgPool3d", (1, 2, 5, 6, 7), ((3, 2, 2),), {"divisor_override": 2, "ceil_mode": True}),
    ("AdaptiveMaxPool1d", (2, 3, 11), (4,), {}),
    ("AdaptiveMaxPool1d", (2, 3, 11), (4,), {"return_indices": True}),
    ("AdaptiveMaxPool2d", (2, 3, 9, 8), ((4, None),), {}),
    ("AdaptiveMaxPool2d", (2, 3, 9, 8), (5,), {"return_indices": True}),
    ("AdaptiveMaxPool3d", (1, 2, 5, 6, 7), ((2, 3, 4),), {}),
    ("AdaptiveAvgPool1d", (2, 3, 11), (4,), {}),
    ("AdaptiveAvgPool2d", (2, 3, 9, 8), ((None, 3),), {}),
    ("AdaptiveAvgPool2d", (3, 9, 8), (1,), {}),
    ("AdaptiveAvgPool3d", (1, 2, 5, 6, 7), (3,), {}),
]


@pytest.mark.parametrize("case", MIRRORED, ids=[f"{c[0]}-{i}" for i, c in enumerate(MIRRORED)])
def test_mirrors_torch_nn(case):
    name, shape, args, kwargs = case
    ours, theirs = getattr(pnn, name)(*args, **kwargs), getattr(nn, name)(*args, **kwargs)
    assert isinstance(ours, getattr(nn, name))
    assert repr(ours) == repr(theirs)
    assert ours.extra_repr() == theirs.extra_repr()
    x = torch.randn(shape)
    got, expected = ours(x), theirs(x)
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == len(expected)
        for g, e in zip(got, expected):
            assert_equal(g, e)
    else:
        torch.testing.assert_close(got, expected)


def test_same_padding_layers():
    x = torch.randn(2, 3, 7, 9)
    assert pnn.MaxPool2d(3, 2, "same")(x).shape == (2, 3, 4, 5)
    assert pnn.AvgPool2d(3, 2, "same")(x).shape == (2, 3, 4, 5)
    assert pnn.MaxPool1d(4, 1, "same")(x[0]).shape == (3, 7, 9)
    assert_equal(pnn.MaxPool2d(3, 2, "valid")(x), nn.MaxPool2d(3, 2, 0)(x))


def test_variable_and_pyramid_layers():
    layer = pnn.VariableMaxPool2d((2, 3), return_indices=True)
    assert "output_size=(2, 3)" in repr(layer) and "return_indices=True" in repr(layer)
    assert "output_size=4" in repr(pnn.VariableAvgPool1d(4))
    spp = pnn.SpatialPyramidPool2d((1, 3), "avg")
    assert "(1, 3)" in repr(spp) and "avg" in repr(spp)
    x = torch.randn(2, 3, 8, 8)
    sizes = torch.tensor([[8, 5], [3, 8]])
    out, idx = layer(x, sizes)
    ref_out, ref_idx = pool_ext.functional.variable_max_pool2d(x, (2, 3), sizes, return_indices=True)
    assert_equal(out, ref_out)
    assert_equal(idx, ref_idx)
    assert_equal(spp(x, sizes), pool_ext.functional.spatial_pyramid_pool2d(x, (1, 3), "avg", sizes))
    assert spp(x).shape == (2, 3 * 10)


# ---------------------------------------------------------------- replace_pooling


def make_sequential():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(6, 6, 3, padding=1), nn.AvgPool2d(3, 1, 1, count_include_pad=False),
        nn.AdaptiveMaxPool2d((3, 3)), nn.Flatten(), nn.Linear(54, 5),
    )


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = make_sequential()
        self.pool1d = nn.AdaptiveAvgPool1d(4)
        self.pools = nn.ModuleList([nn.MaxPool1d(3, 1, 1), nn.AvgPool1d(2)])
        self.by_name = nn.ModuleDict({"p3": nn.MaxPool3d(2), "a3": nn.AdaptiveAvgPool3d(1)})
        self.head = nn.Sequential(nn.Sequential(nn.AdaptiveMaxPool1d(2)), nn.Flatten())

    def forward(self, x):
        f = self.features(x)
        seq = x.flatten(2)
        seq = self.pools[1](self.pools[0](seq))
        v = self.by_name["a3"](self.by_name["p3"](x.unsqueeze(1))).flatten(1)
        return torch.cat([f, self.head(self.pool1d(seq)), v], 1)


def pooling_layers(model):
    return [m for m in model.modules() if type(m).__module__.startswith("torch.nn.modules.pooling")]


def check_replaced(model, x):
    torch.manual_seed(0)
    expected = model(x)
    others = {name: m for name, m in model.named_modules() if not pooling_layers(m) and name}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = len([m for m in model.modules()])
    result = pool_ext.nn.replace_pooling(model)
    assert result is model
    assert not pooling_layers(model), "torch.nn pooling layers left behind"
    swapped = [m for m in model.modules() if type(m).__module__ == "pool_ext.nn"]
    assert swapped and len([m for m in model.modules()]) == before
    for name, m in model.named_modules():
        if name in others:
            assert m is others[name], f"{name} was replaced"
    assert model.state_dict().keys() == state.keys()
    torch.testing.assert_close(model(x), expected)


def test_replace_pooling_sequential():
    model = make_sequential()
    check_replaced(model, torch.randn(2, 3, 11, 10))
    assert type(model[2]) is pnn.MaxPool2d and model[2].ceil_mode
    assert type(model[4]) is pnn.AvgPool2d and not model[4].count_include_pad
    assert type(model[5]) is pnn.AdaptiveMaxPool2d and model[5].output_size == (3, 3)


def test_replace_pooling_nested():
    model = Nested()
    check_replaced(model, torch.randn(2, 3, 8, 8))
    assert type(model.pools[0]) is pnn.MaxPool1d
    assert type(model.by_name["p3"]) is pnn.MaxPool3d
    assert type(model.head[0][0]) is pnn.AdaptiveMaxPool1d


def test_replace_pooling_keeps_hooks_mode_and_is_idempotent():
    model = nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(2))
    calls = []
    handle = model[0].register_forward_hook(lambda module, inputs, output: calls.append(type(module)))
    model.eval()
    pool_ext.nn.replace_pooling(model)
    assert not model[0].training and not model[1].training
    model(torch.randn(1, 1, 8, 8))
    assert calls == [pnn.MaxPool2d]
    handle.remove()  # a handle made before the swap still removes the hook
    model(torch.randn(1, 1, 8, 8))
    assert calls == [pnn.MaxPool2d]
    first = model[0]
    pool_ext.nn.replace_pooling(model)
    assert model[0] is first


def test_replace_pooling_keeps_shared_layers_shared():
    """One layer object registered twice in a parent, and in two parents: every
    registration gets the same new layer (named_children yields a repeat once)."""
    pool = nn.MaxPool2d(2)
    inner = nn.Sequential(pool, nn.ReLU())
    model = nn.Sequential(pool, nn.ReLU(), pool, inner, nn.Sequential(pool))
    x = torch.randn(1, 2, 32, 32)
    expected = model(x)
    pool_ext.nn.replace_pooling(model)
    assert type(model[0]) is pnn.MaxPool2d
    assert model[2] is model[0] and model[3][0] is model[0] and model[4][0] is model[0]
    assert_equal(model(x), expected)


def test_replace_pooling_of_a_pooling_layer():
    layer = nn.MaxPool2d(3, 2, 1, return_indices=True)
    x = torch.randn(1, 2, 9, 9)
    expected, before = layer(x), repr(layer)
    new = pool_ext.nn.replace_pooling(layer)
    assert new is layer and type(new) is pnn.MaxPool2d and new.return_indices and repr(new) == before
    for g, e in zip(new(x), expected):
        assert_equal(g, e)


def test_replace_pooling_reaches_every_reference():
    """The layer objects themselves change kind: a reference held outside the
    model's modules (a list, a closure) runs pool_ext's layer too."""
    pool = nn.AvgPool2d(2)
    model = nn.Sequential(pool)
    elsewhere = [pool]
    pool_ext.nn.replace_pooling(model)
    assert type(elsewhere[0]) is pnn.AvgPool2d and elsewhere[0] is model[0]


def test_replace_pooling_leaves_subclasses_and_patched_forwards():
    """A subclass may override forward, and a forward patched onto an instance
    (as wrappers do) calls torch's: both stay torch's layers, untouched."""
    class Custom(nn.MaxPool2d):
        def forward(self, input):
            return super().forward(input) * 2

    patched = nn.MaxPool2d(2)
    torch_forward = patched.forward
    patched.forward = lambda input: torch_forward(input) + 1
    model = nn.Sequential(Custom(2), patched, nn.MaxPool2d(2))
    x = torch.randn(1, 1, 8, 8)
    expected = model(x)
    pool_ext.nn.replace_pooling(model)
    assert type(model[0]) is Custom and type(model[1]) is nn.MaxPool2d
    assert type(model[2]) is pnn.MaxPool2d
    assert_equal(model(x), expected)


# ---------------------------------------------------------------- autocast, inference mode


def make_mixed_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.AvgPool2d(3, 1, 1),
        nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(3), nn.AdaptiveMaxPool2d((2, 1)),
        nn.Flatten(), nn.Linear(16, 4),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=("bf16", "f16"))
def test_replaced_model_under_autocast(device, dtype):
    """Under torch.autocast the convolutions hand the pooling layers inputs in
    the autocast dtype, which they pool in that dtype, as torch's (pooling is
    on no autocast list): the same outputs, and gradients in float32 that
    differ only by the low-precision backward's roundings."""
    torch.manual_seed(0)
    theirs = make_mixed_cnn().to(device)
    ours = pool_ext.nn.replace_pooling(copy.deepcopy(theirs))
    x = torch.randn(4, 3, 16, 16, device=device)
    results = []
    for model in (theirs, ours):
        leaf = x.clone().requires_grad_()
        with torch.autocast(device, dtype=dtype):
            pooled = model[:3](leaf)
            out = model[3:](pooled)
        out.float().sum().backward()
        results.append((pooled, out, leaf.grad, [p.grad for p in model.parameters()]))
    (pooled_t, out_t, grad_t, params_t), (pooled_o, out_o, grad_o, params_o) = results
    assert pooled_o.dtype == dtype and out_o.dtype == out_t.dtype
    assert_equal(pooled_o, pooled_t)  # (a max: the same cells whatever the order)
    torch.testing.assert_close(out_o, out_t)
    assert grad_o.dtype == torch.float32
    torch.testing.assert_close(grad_o, grad_t, rtol=2e-2, atol=2e-2 * grad_t.abs().max().item())
    for got, expected in zip(params_o, params_t):
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


def test_layers_and_functions_in_inference_mode():
    """Under torch.inference_mode the layers give torch's results, as inference
    tensors; inference tensors made there pool afterwards too, outside the mode."""
    torch.manual_seed(0)
    theirs = make_mixed_cnn()
    ours = pool_ext.nn.replace_pooling(copy.deepcopy(theirs))
    x = torch.randn(2, 3, 16, 16)
    sizes = torch.tensor([[16, 9], [5, 16]])
    with torch.inference_mode():
        expected, got = theirs(x), ours(x)
        made = torch.randn(2, 3, 16, 16)
        out, indices = pnn.MaxPool2d(3, 2, return_indices=True)(made)
        variable = pf.variable_max_pool2d(made, 2, sizes)
        pyramid = pnn.SpatialPyramidPool2d((1, 2))(made, sizes)
    assert got.is_inference() and out.is_inference() and indices.is_inference()
    assert variable.is_inference() and pyramid.is_inference()
    torch.testing.assert_close(got, expected)
    ref_out, ref_indices = nn.MaxPool2d(3, 2, return_indices=True)(made)
    assert_equal(out, ref_out)
    assert_equal(indices, ref_indices)
    assert_equal(variable[1], pf.adaptive_max_pool2d(made[1:, :, :5, :16], 2)[0])
    assert_equal(pyramid, pf.spatial_pyramid_pool2d(made.clone(), (1, 2), "max", sizes))
    # Outside the mode, an inference tensor is an input without a gradient.
    for ours_f, torch_f, args in ((pf.max_pool2d, nn.functional.max_pool2d, (2,)),
                                  (pf.avg_pool2d, nn.functional.avg_pool2d, (3, 1, 1)),
                                  (pf.adaptive_avg_pool2d, nn.functional.adaptive_avg_pool2d, (1,)),
                                  (pf.adaptive_max_pool2d, nn.functional.adaptive_max_pool2d, (3,))):
        torch.testing.assert_close(ours_f(made, *args), torch_f(made, *args))
