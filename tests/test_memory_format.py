"""Output memory format: for 2d and 3d inputs in channels-last (and other) layouts,
our results have the memory format of torch's results, for outputs, indices and
input gradients."""

import pytest
import torch
import torch.nn.functional as F

import pool_ext.functional as PF
from pool_testing import (
    DEVICES,
    DTYPES,
    TOL,
    assert_close_to_ref,
    assert_equal,
    assert_same_format,
    make_rng,
    random_values,
    to_strided,
    with_layout,
)

OPS = [
    ("max_pool2d", 2, dict(kernel_size=3, stride=2, padding=1)),
    ("avg_pool2d", 2, dict(kernel_size=3, stride=2, padding=1)),
    ("adaptive_max_pool2d", 2, dict(output_size=(3, 4))),
    ("adaptive_avg_pool2d", 2, dict(output_size=(3, 4))),
    ("max_pool3d", 3, dict(kernel_size=3, stride=2, padding=1)),
    ("avg_pool3d", 3, dict(kernel_size=3, stride=2, padding=1)),
    ("adaptive_max_pool3d", 3, dict(output_size=(3, 4, 2))),
    ("adaptive_avg_pool3d", 3, dict(output_size=(3, 4, 2))),
]


def torch_result(name, x, kwargs):
    """torch's output for x (its CPU kernels lack float16/bfloat16 avg_pool3d:
    then float32 of the same strides stands in, for the layout only)."""
    try:
        return getattr(F, name)(x, **kwargs)
    except (RuntimeError, NotImplementedError) as e:
        if "not implemented for" not in str(e):
            raise
        return getattr(F, name)(to_strided(x, torch.float32), **kwargs)


# torch's avg_pool3d and adaptive 3d pooling return contiguous results for
# channels_last_3d inputs; ours keep the input's layout, as the package promises
# for every op (README, "Supported"), so there the input is the reference.
KEEPS_CHANNELS_LAST_3D = {"avg_pool3d", "adaptive_max_pool3d", "adaptive_avg_pool3d"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", OPS, ids=[o[0] for o in OPS])
def test_output_format_matches_torch(op, device):
    """torch's result on the same device is the reference, but for the channels-last-3d
    outputs torch drops (KEEPS_CHANNELS_LAST_3D)."""
    name, d, kwargs = op
    for layout in ("channels_last", "contiguous", "transposed"):
        for dtype in DTYPES:
            rng = make_rng("format", name, layout, dtype)
            x = with_layout(torch.randn((2, 5) + (7,) * d, dtype=dtype, device=device), layout, rng)
            expected = torch_result(name, x, kwargs)
            keeps_layout = name in KEEPS_CHANNELS_LAST_3D and layout == "channels_last"
            if keeps_layout:
                expected = torch.empty_like(x)  # stands for the input's layout
            got = getattr(PF, name)(x, **kwargs)
            try:
                assert_same_format(got, expected)
                if "max" in name:
                    _, idx = getattr(PF, name)(x, **kwargs, return_indices=True)
                    _, ref_idx = getattr(F, name)(x, **kwargs, return_indices=True)
                    assert_same_format(idx, expected if keeps_layout else ref_idx)
            except AssertionError as e:
                raise AssertionError(
                    f"{name} {dtype} {layout} input strides {x.stride()}: ours {got.stride()}, "
                    f"torch {expected.stride()}"
                ) from e


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", [o for o in OPS if o[1] == 2], ids=[o[0] for o in OPS if o[1] == 2])
def test_grad_format_matches_torch(op, device):
    name, d, kwargs = op
    x = torch.randn(2, 5, 7, 7).contiguous(memory_format=torch.channels_last)
    ours_x, ref_x = x.to(device).detach().requires_grad_(), x.detach().clone().requires_grad_()
    getattr(PF, name)(ours_x, **kwargs).sum().backward()
    getattr(F, name)(ref_x, **kwargs).sum().backward()
    assert_same_format(ours_x.grad, ref_x.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("d", [2, 3])
def test_variable_pooling_keeps_layout_like_adaptive(kind, d, device):
    """Variable pooling lays its output out as adaptive pooling does."""
    fmt = torch.channels_last if d == 2 else torch.channels_last_3d
    x = torch.randn((3, 5) + (6,) * d, device=device).contiguous(memory_format=fmt)
    sizes = torch.full((3, d), 4, device=device)
    got = getattr(PF, f"variable_{kind}_pool{d}d")(x, 3, sizes)
    assert_same_format(got, getattr(PF, f"adaptive_{kind}_pool{d}d")(x, 3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS, ids=[o[0] for o in OPS])
def test_channels_last_in_whole_packs_matches_torch(op, dtype, device):
    """Channels-last inputs of 8 and 24 channels, whole and sliced one or four
    channels in (the CUDA kernels then take 16-byte packs of channels, or
    not, per tensor): values, indices and gradients of torch's result, which
    is computed in float64."""
    name, d, kwargs = op
    fmt = torch.channels_last if d == 2 else torch.channels_last_3d
    rng = make_rng("packs", name, dtype)
    for channels, first in ((8, 0), (24, 0), (8, 1), (20, 4)):
        big = torch.randn((2, first + channels) + (9,) * d, dtype=torch.float64).to(dtype)
        x = big.to(device).contiguous(memory_format=fmt)[:, first:]
        grad_seed = rng.randint(0, 1 << 30)
        results = []
        for inp, dt in ((x, dtype), (x.detach().cpu().double(), torch.float64)):
            inp = inp.detach().requires_grad_()
            fn = getattr(PF if dt == dtype else F, name)
            out = fn(inp, **kwargs, return_indices=True) if "max" in name else (fn(inp, **kwargs), None)
            g = torch.randn(out[0].shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
            out[0].backward(g.to(dtype=out[0].dtype, device=out[0].device).contiguous(memory_format=fmt))
            results.append((out[0].detach(), out[1], inp.grad))
        (got, idx, grad), (want, want_idx, want_grad) = results
        rtol, atol = TOL[dtype]
        torch.testing.assert_close(got.cpu().double(), want, rtol=rtol, atol=atol)
        torch.testing.assert_close(grad.cpu().double(), want_grad, rtol=rtol, atol=atol)
        if idx is not None:
            assert torch.equal(idx.cpu(), want_idx), (channels, first)


LANE_OPS = OPS + [
    ("max_pool1d", 1, dict(kernel_size=3, stride=2)),
    ("avg_pool1d", 1, dict(kernel_size=4, padding=2, count_include_pad=False)),
    ("adaptive_max_pool1d", 1, dict(output_size=5)),
    ("adaptive_avg_pool2d", 2, dict(output_size=1)),  # a mean's backward
    ("variable_max_pool2d", 2, dict(output_size=(3, 2))),
    ("variable_avg_pool1d", 1, dict(output_size=1)),
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", LANE_OPS, ids=[o[0] for o in LANE_OPS])
def test_nchw_channel_lanes_match_cpu(op, dtype):
    """NCHW inputs of 16 channels, large enough that the CUDA window kernels take
    V channels a thread, a plane apart (pool_kernels.h's channel_lanes: only
    where the outputs, V to a thread, fill the GPU), against our CPU kernels:
    values and indices, and gradients in the output's layout and transposed.
    (tests/test_cuda_on_host.py runs these lanes on the host at any size.)"""
    name, d, kwargs = op
    rng = make_rng("lanes", name, dtype)
    spatial = {1: (40,), 2: (13, 11), 3: (9, 7, 8)}[d]
    probe = torch.zeros((1, 16) + spatial)
    variable = name.startswith("variable")
    fn = getattr(PF, name)
    out_cells = (fn(probe, kwargs["output_size"], torch.tensor([spatial])) if variable
                 else fn(probe, **kwargs)).numel() // 16
    # outputs that fill the GPU at 8 channels a thread (halves'), and a margin;
    # at most 16M input cells (then ops of few outputs take lanes in the
    # backward only, which writes the input's gradient; global pooling's
    # forward is a reduction of its own anyway)
    fill = torch.cuda.get_device_properties(0).multi_processor_count * 2048
    n = min(-(-5 * 8 * fill // (4 * 16 * out_cells)), -(-16_000_000 // (16 * probe[0, 0].numel())))
    x = random_values(rng, (n, 16) + spatial, dtype, specials=0.01, ties=True)
    sizes = torch.tensor([[rng.randint(1, e) for e in spatial] for _ in range(n)]) if variable else None
    results = []
    for device in ("cuda", "cpu"):
        inp = x.to(device).requires_grad_()
        args = (kwargs["output_size"], sizes.to(device)) if variable else ()
        extra = {} if variable else dict(kwargs)
        if "max" in name:
            out, idx = fn(inp, *args, **extra, return_indices=True)
        else:
            out, idx = fn(inp, *args, **extra), None
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        g = g.to(device) if rng.random() < 0.5 else g.to(device).transpose(0, 1).contiguous().transpose(0, 1)
        (grad,) = torch.autograd.grad(out, inp, g)
        results.append((out.detach().cpu(), None if idx is None else idx.cpu(), grad.cpu()))
    (got, got_idx, got_grad), (want, want_idx, want_grad) = results
    msg = f"{name} {dtype} {x.shape}"
    if "max" in name:
        assert_equal(got, want, msg)
        assert torch.equal(got_idx, want_idx), msg
    else:
        assert_close_to_ref(got, want.double(), dtype, msg)
    assert_close_to_ref(got_grad, want_grad.double(), dtype, msg)


# Beside OPS: windows that never overlap (each cell in one window at most,
# or none: the gather looks its one term up), with gaps from dilation and
# cells no window holds; and stride 1.
TAIL_OPS = OPS + [
    ("max_pool2d", 2, dict(kernel_size=2)),
    ("max_pool2d", 2, dict(kernel_size=2, stride=(2, 4), padding=1, dilation=(1, 2))),
    ("avg_pool2d", 2, dict(kernel_size=2, stride=(3, 2), ceil_mode=True)),
    ("max_pool3d", 3, dict(kernel_size=(1, 2, 2), stride=(2, 3, 2))),
    ("avg_pool2d", 2, dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", TAIL_OPS, ids=[f"{o[0]}-{i}" for i, o in enumerate(TAIL_OPS)])
def test_channels_last_with_a_partial_vector_of_channels(op, dtype, device):
    """Channel counts that are no whole number of vectors (5: less than one;
    9-19: a vector and a few; 33: a block of 32 and one), where the CPU's
    channels kernels take the last channels as the vector ending at the last
    channel, recomputing some, or one loaded in part: values (adaptive
    averages: close), indices and gradients bit-identical to the contiguous
    input's, and close to torch's (in float64 on the same values), with NaN,
    inf and ties."""
    name, d, kwargs = op
    fmt = torch.channels_last if d == 2 else torch.channels_last_3d
    rng = make_rng("partial-vector", name, str(kwargs), dtype)
    for channels in (5, 9, 12, 13, 19, 33):
        shape = (2, channels) + (5, 9, 10)[3 - d:]
        x = random_values(rng, shape, dtype, specials=0.03, ties=rng.random() < 0.5).to(device)
        results = []
        for inp in (x, x.contiguous(memory_format=fmt)):
            inp = inp.detach().requires_grad_()
            fn = getattr(PF, name)
            out, idx = fn(inp, **kwargs, return_indices=True) if "max" in name else (fn(inp, **kwargs), None)
            if not results:
                grad_out = random_values(rng, tuple(out.shape), dtype, specials=0.03).to(device)
            (grad,) = torch.autograd.grad(out, inp, grad_out.contiguous(memory_format=fmt))
            results.append((out, idx, grad))
        (out, idx, grad), (out_cl, idx_cl, grad_cl) = results
        msg = f"{channels} channels"
        if name.startswith("adaptive_avg"):
            # Planes sum an adaptive window run by run, channels tap by tap: close only.
            assert_close_to_ref(out_cl, out.double(), dtype, msg=msg)
        else:
            assert_equal(out_cl, out, msg=msg)
        assert_equal(grad_cl, grad, msg=msg)
        x64 = x.detach().cpu().double().requires_grad_()
        fn = getattr(F, name)
        want, want_idx = fn(x64, **kwargs, return_indices=True) if "max" in name else (fn(x64, **kwargs), None)
        (want_grad,) = torch.autograd.grad(want, x64, grad_out.cpu().double())
        assert_close_to_ref(out_cl, want, dtype, msg=msg)
        assert_close_to_ref(grad_cl, want_grad, dtype, msg=msg)
        if idx is not None:
            assert torch.equal(idx_cl.cpu(), idx.cpu()), msg
            assert torch.equal(idx_cl.cpu(), want_idx), msg


ONE_D = [
    ("max_pool1d", dict(kernel_size=3, stride=2, padding=1)),
    ("avg_pool1d", dict(kernel_size=4, ceil_mode=True, count_include_pad=False)),
    ("adaptive_max_pool1d", dict(output_size=5)),
    ("adaptive_avg_pool1d", dict(output_size=1)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", ONE_D, ids=[o[0] for o in ONE_D])
def test_one_d_channels_last_sequences(op, dtype, device):
    """A sequence batch (N, L, C) transposed to (N, C, L), channels innermost (as
    torch's 1d pooling, through (N, C, 1, L), finds channels-last): outputs,
    indices and input gradients keep that stride order (torch's do, but for
    its no-grad max_pool1d and adaptive_avg_pool1d's gradient), so the channels
    kernels run (a contiguous output made the planes kernels read the input
    strided: 20x slower); values, indices and gradients bit-identical to the
    contiguous input's (adaptive averages: close). Unbatched, (C, L) seen as
    (1, C, L) is not channels-last to torch either: values only."""
    name, kwargs = op
    rng = make_rng("nlc", name, dtype)
    for shape in ((3, 12, 40), (12, 40)):
        x = random_values(rng, shape, dtype, specials=0.03).to(device)
        nlc = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        results = []
        for inp in (x, nlc):
            inp = inp.detach().requires_grad_()
            fn = getattr(PF, name)
            out, idx = fn(inp, **kwargs, return_indices=True) if "max" in name else (fn(inp, **kwargs), None)
            if not results:
                grad_out = random_values(rng, tuple(out.shape), dtype).to(device)
            (grad,) = torch.autograd.grad(out, inp, grad_out)
            results.append((out, idx, grad))
        (out, idx, grad), (out_t, idx_t, grad_t) = results
        for t in (out_t, grad_t) + ((idx_t,) if idx_t is not None else ()):
            if t.shape[-1] > 1:  # (a length of 1 is both layouts)
                assert t.transpose(-1, -2).is_contiguous() == (len(shape) == 3), (shape, t.stride())
        if name.startswith("adaptive_avg"):
            assert_close_to_ref(out_t, out.double(), dtype)
        else:
            assert_equal(out_t, out)
        assert_equal(grad_t, grad)
        if idx is not None:
            assert torch.equal(idx_t, idx)
        with torch.no_grad():
            values_only = getattr(PF, name)(nlc, **kwargs)
            if values_only.shape[-1] > 1:
                assert values_only.transpose(-1, -2).is_contiguous() == (len(shape) == 3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_channels_last_average_backward_over_chunks_of_samples(dtype, device):
    """The CPU's channels-last average backward forms its shares about 1 MB of
    them at a time, a sample or a few: fixed windows with samples over that size
    (one a chunk), adaptive and variable ones with several a chunk and a last
    chunk part full, bit-identical to the same values laid out contiguous (-0 and
    NaN in the gradient), and close to torch. Global averages' gradients (one
    row of shares a sample) keep the format too."""
    rng = make_rng("average-chunks", dtype)
    g = torch.Generator().manual_seed(5)
    x = random_values(rng, (6, 64, 72, 72), dtype, specials=0.01).to(device)
    cases = [("avg_pool2d", dict(kernel_size=3, stride=1, padding=1)),
             ("adaptive_avg_pool2d", dict(output_size=(30, 31))),
             ("adaptive_avg_pool2d", dict(output_size=1)),
             ("variable_avg_pool2d", dict(output_size=(30, 31))),
             ("variable_avg_pool2d", dict(output_size=1))]
    sizes = torch.randint(1, 73, (6, 2), generator=g).to(device)
    for name, kwargs in cases:
        if name.startswith("variable"):
            kwargs = dict(kwargs, sizes=sizes)
        grads = []
        for layout in (x.contiguous(memory_format=torch.channels_last), x.contiguous()):
            xl = layout.detach().requires_grad_()
            out = getattr(PF, name)(xl, **kwargs)
            if not grads:
                grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype).to(device)
                grad_out[grad_out.abs() < 0.1] = -0.0
                grad_out.view(-1)[::97] = float("nan")
            (grad,) = torch.autograd.grad(out, xl, grad_out)
            grads.append(grad)
        assert grads[0].stride(1) == 1, name
        assert_equal(grads[0], grads[1], msg=name)
        if not name.startswith("variable"):
            xt = x.double().requires_grad_()
            (expected,) = torch.autograd.grad(getattr(F, name)(xt, **kwargs), xt, grad_out.double())
            assert_close_to_ref(grads[0], expected, dtype, msg=name)
