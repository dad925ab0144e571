"""torch.func transforms through our ops give torch's results: grad, vjp,
jacrev, jacfwd, hessian, jvp and vmap (alone and around grad: per-sample
gradients), and vmap folds its dimension into one call of each op.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import pool_ext
import pool_ext.functional as PF
from pool_testing import DEVICES, distinct_values, make_rng, torch_generator

# (function name, positional args, keyword args, input shape)
CASES = [
    ("max_pool1d", (3, 2, 1), {}, (2, 3, 9)),
    ("max_pool2d", (3, 2, 1), {"ceil_mode": True}, (2, 2, 7, 6)),
    ("max_pool2d", (2,), {"return_indices": True}, (3, 6, 6)),
    ("max_pool3d", (2, 1), {"dilation": 2}, (1, 2, 5, 4, 5)),
    ("avg_pool1d", (4, 2, 2), {"ceil_mode": True}, (2, 3, 9)),
    ("avg_pool2d", (3, 1, 1), {"count_include_pad": False}, (2, 2, 6, 5)),
    ("avg_pool3d", (2,), {"divisor_override": 3}, (1, 2, 4, 4, 4)),
    ("adaptive_max_pool1d", (4,), {"return_indices": True}, (2, 3, 9)),
    ("adaptive_max_pool2d", (3,), {}, (2, 2, 7, 5)),
    ("adaptive_avg_pool1d", (4,), {}, (2, 3, 9)),
    ("adaptive_avg_pool3d", ((2, 3, 2),), {}, (1, 2, 4, 5, 5)),
]
IDS = [f"{c[0]}-{len(c[3])}d" + ("-indices" if c[2].get("return_indices") else "") for c in CASES]


def setup(case, device):
    """Input without ties (finite differences and torch agree on the winners),
    a weight, and the pooled output and a scalar loss of both libraries."""
    name, args, kwargs, shape = case
    rng = make_rng("func", name, shape)
    x = distinct_values(rng, shape).to(device)

    def pooled(module):
        def fn(a):
            out = getattr(module, name)(a, *args, **kwargs)
            return out[0] if isinstance(out, tuple) else out
        return fn

    weight = torch.randn(pooled(F)(x).shape, dtype=x.dtype, generator=torch_generator(rng)).to(device)

    def loss(module):
        # Not linear in the output, so second derivatives are not all zero.
        return lambda a: (pooled(module)(a).sin() * weight).sum()

    return x, weight, pooled(F), pooled(PF), loss(F), loss(PF)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_reverse_mode_like_torch(case, device):
    x, weight, pooled_torch, pooled_ours, loss_torch, loss_ours = setup(case, device)
    torch.testing.assert_close(grad(loss_ours)(x), grad(loss_torch)(x))
    out, pullback = vjp(pooled_ours, x)
    expected_out, expected_pullback = vjp(pooled_torch, x)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(pullback(weight), expected_pullback(weight))
    torch.testing.assert_close(jacrev(pooled_ours)(x), jacrev(pooled_torch)(x))
    # grad of a gradient norm: our backward ops differentiated under torch.func.
    torch.testing.assert_close(grad(lambda a: grad(loss_ours)(a).square().sum())(x),
                               grad(lambda a: grad(loss_torch)(a).square().sum())(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_mode_and_hessian_like_torch(case, device):
    x, _, pooled_torch, pooled_ours, loss_torch, loss_ours = setup(case, device)
    tangent = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(7)).to(device)
    torch.testing.assert_close(jvp(pooled_ours, (x,), (tangent,)), jvp(pooled_torch, (x,), (tangent,)))
    torch.testing.assert_close(jacfwd(pooled_ours)(x), jacfwd(pooled_torch)(x))
    # hessian is jacfwd(jacrev): the backward ops' jvp, under vmap.
    torch.testing.assert_close(hessian(loss_ours)(x), hessian(loss_torch)(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vmap_like_torch(case, device):
    name, args, kwargs, _ = case
    x, _, pooled_torch, pooled_ours, loss_torch, loss_ours = setup(case, device)
    xs = torch.stack([x, -x, 2 * x])
    torch.testing.assert_close(vmap(pooled_ours)(xs), vmap(pooled_torch)(xs))
    moved = xs.movedim(0, 1).contiguous()
    torch.testing.assert_close(vmap(pooled_ours, in_dims=1)(moved), vmap(pooled_torch, in_dims=1)(moved))
    # Per-sample gradients.
    torch.testing.assert_close(vmap(grad(loss_ours))(xs), vmap(grad(loss_torch))(xs))
    if kwargs.get("return_indices"):
        indices = vmap(lambda a: getattr(PF, name)(a, *args, **kwargs)[1])(xs)
        assert torch.equal(indices, vmap(lambda a: getattr(F, name)(a, *args, **kwargs)[1])(xs))


@pytest.mark.parametrize("device", DEVICES)
def test_vmap_calls_each_op_once(device):
    """The vmapped dimension folds into the batch: one call of the kernel, not
    torch's per-sample fallback loop."""
    xs = torch.randn(5, 2, 3, 8, 8, device=device)
    with torch.autograd.profiler.profile() as prof:
        vmap(lambda a: PF.max_pool2d(a, 2))(xs)
        vmap(lambda a: PF.adaptive_avg_pool2d(a, 3))(xs)
    # Each op is recorded twice: the vmapped call and the folded one it makes
    # (torch's fallback would make one call per sample: 1 + 5).
    names = [e.name for e in prof.function_events if e.name.startswith("pool_ext::")]
    assert names.count("pool_ext::max_pool") == 2, names
    assert names.count("pool_ext::adaptive_avg_pool") == 2, names


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("output_size", [1, 2])
def test_per_sample_gradients_keep_the_format(output_size, device):
    """vmap(grad) of a channels-last average gives each sample's gradient the
    format grad alone gives (channels-last), global averages too, whose
    backward outside torch.func passes a stand-in for the input (vmap would
    fold an unbatched channels-last stand-in into a batch-sized copy)."""
    xs = torch.stack([torch.randn(2, 16, 8, 8, device=device).contiguous(memory_format=torch.channels_last)
                      for _ in range(4)])

    def f(t):
        return PF.adaptive_avg_pool2d(t, output_size).pow(2).sum()

    one = grad(f)(xs[0])
    each = vmap(grad(f))(xs)
    assert one.is_contiguous(memory_format=torch.channels_last)
    assert each[0].stride() == one.stride()
    assert torch.equal(each[0], one)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_variable_per_sample_gradients_like_loop(kind, device):
    """vmap(grad) of variable pooling, with sizes vmapped too or shared, equals
    the gradient of torch's adaptive op on each sample's valid region."""
    rng = make_rng("func-variable", kind)
    xs = distinct_values(rng, (4, 2, 3, 9, 8)).to(device)
    sizes = torch.tensor([[[9, 8], [5, 3]], [[2, 7], [9, 1]], [[4, 4], [6, 8]], [[1, 1], [9, 8]]], device=device)
    variable, adaptive = getattr(PF, f"variable_{kind}_pool2d"), getattr(F, f"adaptive_{kind}_pool2d")

    def loss(a, s):
        return variable(a, (2, 3), s).sin().sum()

    expected = torch.zeros_like(xs)
    for b in range(xs.shape[0]):
        for n in range(xs.shape[1]):
            h, w = sizes[b, n].tolist()
            region = xs[b, n, :, :h, :w].detach().requires_grad_()
            adaptive(region, (2, 3)).sin().sum().backward()
            expected[b, n, :, :h, :w] = region.grad
    torch.testing.assert_close(vmap(grad(loss))(xs, sizes), expected)
    shared = vmap(grad(loss), in_dims=(0, None))(xs, sizes[0])
    torch.testing.assert_close(shared, torch.stack([grad(loss)(a, sizes[0]) for a in xs]))


class _Net(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = layers.MaxPool2d(2)
        self.avg = layers.AvgPool2d(3, 1, 1)
        self.head = layers.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.head(self.avg(self.pool(torch.relu(self.conv(x))))).flatten(1))


@pytest.mark.parametrize("device", DEVICES)
def test_per_sample_gradients_of_a_model(device):
    """The per-sample gradient recipe (functional_call under vmap(grad)) on a
    CNN of our layers gives the same gradients as with torch.nn's."""
    torch.manual_seed(0)
    ours = _Net(pool_ext.nn).double().to(device)
    reference = _Net(nn).double().to(device)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(6, 2, 10, 10, dtype=torch.float64, device=device)
    target = torch.randint(0, 3, (6,), device=device)

    def per_sample(model):
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(p, sample, label):
            logits = functional_call(model, p, (sample.unsqueeze(0),))
            return F.cross_entropy(logits, label.unsqueeze(0))

        return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)

    expected = per_sample(reference)
    for name, value in per_sample(ours).items():
        torch.testing.assert_close(value, expected[name])


@pytest.mark.parametrize("device", DEVICES)
def test_dual_tensors_through_the_ops(device):
    """Forward mode is the ops' own: torch.ops.pool_ext.* called directly on a
    dual tensor carries its tangent."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, device=device)
    tangent = torch.randn_like(x)
    _, indices = F.max_pool2d(x, 2, return_indices=True)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, tangent)
        out = torch.ops.pool_ext.avg_pool(dual, [2, 2], [2, 2], [0, 0], False, False, True, None)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, F.avg_pool2d(tangent, 2))
        out, _ = torch.ops.pool_ext.max_pool(dual, [2, 2], [2, 2], [0, 0], [1, 1], False, False)
        expected = tangent.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, expected)


def test_compile_traces_our_ops_under_vmap():
    xs = torch.randn(3, 2, 3, 8, 8)

    def batched(module):
        return vmap(lambda a: module.max_pool2d(a, 2) + module.avg_pool2d(a, 2))

    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(batched(PF), fullgraph=True)(xs), batched(F)(xs))


DERIVATIVE_TRANSFORMS = {
    "vmap(grad)": (lambda m: vmap(grad(lambda a: m.max_pool2d(a, 2).sin().sum() + m.avg_pool2d(a, 2).sum())),
                   (3, 2, 3, 8, 8)),
    "jacrev": (lambda m: jacrev(lambda a: m.adaptive_avg_pool2d(a, 1)), (2, 3, 4, 4)),
    "vjp": (lambda m: lambda a: vjp(lambda b: m.avg_pool2d(b, 2), a)[1](torch.ones(2, 3, 2, 2))[0], (2, 3, 4, 4)),
    "vmap(vjp)": (lambda m: vmap(lambda a: vjp(lambda b: m.max_pool2d(b, 2), a)[1](torch.ones(3, 2, 2))[0]),
                  (2, 3, 4, 4)),
}


@pytest.mark.parametrize("fullgraph", [False, True])
@pytest.mark.parametrize("transform", list(DERIVATIVE_TRANSFORMS))
def test_compile_around_derivative_transforms_is_right_or_raises(transform, fullgraph):
    """Under torch.func's derivatives torch.compile cannot trace our ops (their
    Autograd kernel raises in its fake run). torch 2.14 then runs them eagerly
    (torch's gradients) and raises with fullgraph=True; torch 2.11 raises either
    way. Never a wrong gradient: 2.11's graph breaks inside jacrev and vjp give
    zeros, so the fake run's error must not be one it takes for a graph break."""
    make, shape = DERIVATIVE_TRANSFORMS[transform]
    x = torch.randn(shape)
    expected = make(F)(x)
    torch._dynamo.reset()
    try:
        got = torch.compile(make(PF), fullgraph=fullgraph)(x)
    except RuntimeError:
        assert fullgraph or torch.torch_version.TorchVersion(torch.__version__) < "2.14"
    else:
        torch.testing.assert_close(got, expected)


def test_ops_called_directly_under_derivative_transforms_say_where_derivatives_are():
    """torch.ops.pool_ext's ops have no torch.func rules of their own (the
    functional layer applies them): under grad or jvp they raise, naming the
    op and the way in, rather than torch's setup_context error."""
    x = torch.randn(2, 3, 6, 6)
    ops = torch.ops.pool_ext
    calls = {
        "max_pool": lambda a: ops.max_pool(a, [2, 2], [2, 2], [0, 0], [1, 1], False, False)[0],
        "adaptive_avg_pool": lambda a: ops.adaptive_avg_pool(a, [3, 3], None),
    }
    for name, call in calls.items():
        for transform in (lambda f: grad(lambda a: f(a).sum())(x), lambda f: jvp(f, (x,), (x,))):
            with pytest.raises(RuntimeError, match=f"pool_ext::{name}: .*pool_ext.functional"):
                transform(call)


def test_functionalize():
    x = torch.randn(2, 3, 8, 8)

    def f(module):
        return lambda a: module.max_pool2d(a, 2) + module.adaptive_avg_pool2d(a, 4)

    torch.testing.assert_close(torch.func.functionalize(f(PF))(x), f(F)(x))
