"""The CUDA kernels' work, run on the host, against our CPU kernels.

tests/csrc/cuda_on_host.cpp runs the element functions and the global
reduction of csrc/pool_kernels.h (what every CUDA kernel computes per thread)
in loops on CPU tensors, as the ops of a `pool_ext_host` library. Each case
calls both libraries' ops with the same arguments: max values, taps and
indices must be equal bit for bit, averages and gradients close. So a machine
without a GPU still checks the arithmetic the GPU runs.
"""

import math
import os
import random
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils import cpp_extension

from pool_testing import DTYPES, DTYPE_IDS, TOL, random_input

CASES = 300  # per op family, dims and dtype
HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")

pytestmark = pytest.mark.skipif(
    (shutil.which("g++") is None and shutil.which("c++") is None) or not cpp_extension.is_ninja_available(),
    reason="needs a C++ compiler and ninja")


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    # Once a process: a second load of the library registers its ops again,
    # which aborts. Under pytest-xdist its workers share one build (the first
    # builds, the others wait on cpp_extension's lock), in this run's folder.
    run_folder = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_folder = run_folder.parent
    build = run_folder / "pool_ext_host"
    build.mkdir(exist_ok=True)
    cpp_extension.load(
        name="pool_ext_host",
        sources=[os.path.join(HERE, "csrc", "cuda_on_host.cpp"), os.path.join(CSRC, "ops.cpp"),
                 os.path.join(CSRC, "pool_plan.cpp")],
        extra_cflags=["-O2", "-Dpool_ext=pool_ext_host"],
        # As setup.py links pool_ext: a toolchain that links libstdc++ statically
        # (the GPU machine's) otherwise crashes formatting numbers into messages.
        extra_ldflags=["-Wl,--exclude-libs,ALL"] if sys.platform.startswith("linux") else [],
        extra_include_paths=[CSRC],
        build_directory=str(build),
        is_python_module=False,
    )
    return torch.ops.pool_ext_host


def equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def close(a, b):
    rtol, atol = TOL[a.dtype]
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol, equal_nan=True)


def both(host, name, *args):
    """(ours on the CPU, the CUDA work on the host), or None where the CPU op rejects
    the arguments (the host op must too, with the same message: the checks are
    shared, and a message cut short at its first number is how a static libstdc++
    in the library shows on this machine; on the GPU machine it crashed)."""
    try:
        want = getattr(torch.ops.pool_ext, name)(*args)
    except RuntimeError as error:
        with pytest.raises(RuntimeError) as host_error:
            getattr(host, name)(*args)
        assert str(host_error.value).splitlines()[0] == str(error).splitlines()[0]
        return None
    return want, getattr(host, name)(*args)


def random_grad(rng, out):
    """A gradient for out: contiguous, or in out's own layout (channels-last
    outputs then take packs of channels in the backward too)."""
    g = torch.randn(out.shape).to(out.dtype)
    return g if rng.random() < 0.5 else torch.empty_like(out).copy_(g)


def random_case(rng, d, dtype, adaptive, channels=(1, 2, 3, 5, 8, 16, 17), layout=None,
                windows_only=False):
    n = rng.choice([0, 1, 2, 3])
    c = rng.choice(channels)
    spatial = [rng.randint(1, {1: 40, 2: 12, 3: 6}[d]) for _ in range(d)]
    # random (or the given) layout, ties, NaN and inf
    x, _ = random_input(rng, (n, c, *spatial), dtype, "cpu", layout=layout)
    if adaptive:
        out = [rng.choice([1, 1, rng.randint(1, s + 2), -1]) for s in spatial]
        if windows_only and all(o == 1 or o == -1 and s == 1 for o, s in zip(out, spatial)):
            out[-1] = 2  # not global pooling, which takes a reduction of its own
        sizes = None
        if n and rng.random() < 0.3:  # variable pooling: each sample's own extent
            sizes = torch.tensor([[rng.randint(1, s) for s in spatial] for _ in range(n)])
            out = [o if o > 0 else 1 for o in out]
        return x, (out, sizes)
    kernel = [rng.randint(1, s + 1) for s in spatial]
    stride = [rng.randint(1, 3) for _ in range(d)]
    padding = [rng.randint(0, k // 2) for k in kernel]
    return x, (kernel, stride, padding, rng.random() < 0.4, rng.random() < 0.15)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_fixed_windows(host, d, dtype):
    check_fixed(host, random.Random(f"fixed-{d}-{dtype}"), d, dtype, CASES)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_adaptive_and_variable_windows(host, d, dtype):
    """Global pooling (output size 1) takes the block reduction."""
    check_adaptive(host, random.Random(f"adaptive-{d}-{dtype}"), d, dtype, CASES)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_int64_element_numbers(host, d, monkeypatch):
    """The kernels number elements in int64 past 2^31 of them: the same
    functions with that index type, forced on small inputs."""
    monkeypatch.setenv("POOL_EXT_HOST_INDEX64", "1")
    check_fixed(host, random.Random(f"wide-fixed-{d}"), d, torch.float32, CASES // 3)
    check_adaptive(host, random.Random(f"wide-adaptive-{d}"), d, torch.float32, CASES // 3)


def test_32_bit_division_by_multiplying(host):
    """The kernels split 32-bit element numbers by multiply-high and shift
    (pool_kernels.h's Divider): floor division for every divisor the extents
    can take, at the edges (multiples, 2^31 - 1) and at random numbers."""
    gen = torch.Generator().manual_seed(0)
    top = 2**31 - 1
    divisors = set(range(1, 1025))
    for k in range(1, 31):
        divisors |= {2**k - 1, 2**k, 2**k + 1, 3 * 2**k, 5 * 2**k + 3}
    divisors |= {top, top - 1, 46341, 65535, 65537, 1000003}
    divisors |= set(torch.randint(1, top + 1, (300,), generator=gen).tolist())
    for d in sorted(x for x in divisors if 1 <= x <= top):
        near = [0, 1, d - 1, d, d + 1, top, top - 1, top - top % d, top - top % d - 1]
        multiples = torch.randint(0, top // d + 1, (200,), generator=gen) * d
        numbers = torch.cat([torch.tensor(near), multiples, multiples - 1, multiples + d - 1,
                             torch.randint(0, top + 1, (500,), generator=gen)])
        numbers = numbers.clamp(0, top)
        torch.testing.assert_close(host._divide_32(numbers, d), numbers // d, rtol=0, atol=0,
                                   msg=lambda m: f"divisor {d}: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [2, 3])
def test_channel_packs(host, d, dtype):
    """Channels-last inputs whose channels come in whole 16-byte packs: each
    element of the window kernels takes a pack of channels (4 floats, 8
    halves) in one load, in the forwards and in the backwards."""
    rng = random.Random(f"packs-{d}-{dtype}")
    packs = dict(channels=(8, 16, 24), layout="channels_last")
    check_fixed(host, rng, d, dtype, CASES // 3, **packs)
    check_adaptive(host, rng, d, dtype, CASES // 3, windows_only=True, **packs)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_channel_lanes_a_plane_apart(host, d, dtype):
    """NCHW inputs whose channel count is a multiple of V: each element of the
    window kernels takes V channels a plane apart, one load each, in the
    forwards and in the backwards, global means included."""
    rng = random.Random(f"planes-{d}-{dtype}")
    planes = dict(channels=(8, 16, 24), layout="contiguous")
    check_fixed(host, rng, d, dtype, CASES // 3, **planes)
    check_adaptive(host, rng, d, dtype, CASES // 3, **planes)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_channel_lanes_bit_for_bit(host, dtype, monkeypatch):
    """Lanes change how channels are shared among threads, never a result: the
    host run with V channels a thread against itself with one, bit for bit,
    on channels-last inputs sliced at channel offsets that do and do not line
    up (the ops then take packs for some tensors of a call and not others)
    and on NCHW ones (channels a plane apart), gradients in the outputs' layout,
    contiguous or channels-last."""
    rng = random.Random(f"bits-{dtype}")
    for _ in range(60):
        d = rng.choice([1, 2, 3])
        c, first = rng.choice([8, 16]), rng.choice([0, 0, 1, 2, 4, 8])
        spatial = [rng.randint(1, {1: 40, 2: 12, 3: 6}[d]) for _ in range(d)]
        x, _ = random_input(rng, (rng.randint(1, 3), first + c, *spatial), dtype, "cpu",
                            layout="contiguous")
        if rng.random() < 0.6:
            x = x.movedim(1, -1).contiguous().movedim(-1, 1)[:, first:]  # channels-last, offset
        else:
            x = x[:, first:]  # NCHW
        kernel = [rng.randint(1, s) for s in spatial]
        fixed = (kernel, [rng.randint(1, 3) for _ in range(d)], [k // 2 for k in kernel], rng.random() < 0.4,
                 False)
        dilation = [rng.choice([1, 1, 2]) for _ in range(d)]
        # adaptive windows, or global ones (a mean's gradient keeps -0), for
        # each sample over its own extent in some cases
        out_size = [1] * d if rng.random() < 0.2 else [rng.randint(2, s + 2) for s in spatial]
        sizes = None
        if rng.random() < 0.3:
            sizes = torch.tensor([[rng.randint(1, s) for s in spatial] for _ in range(x.shape[0])])
        if both(host, "max_pool", x, *fixed[:3], dilation, *fixed[3:]) is None:
            continue  # arguments the ops reject
        runs, grads = {}, None
        for one in ("0", "1"):
            monkeypatch.setenv("POOL_EXT_HOST_LANES1", one)
            out, taps = host.max_pool(x, *fixed[:3], dilation, *fixed[3:])
            a_out, a_taps = host.adaptive_max_pool(x, out_size, sizes)
            avg = host.avg_pool(x, *fixed, True, None)
            a_avg = host.adaptive_avg_pool(x, out_size, sizes)
            if grads is None:
                grads = [torch.randn(t.shape).to(dtype) for t in (out, a_out, avg)]
                grads[1].view(-1)[::3] = -0.0
                layout = rng.choice(["out", "contiguous", "channels_last"])
                if layout == "out":
                    grads = [torch.empty_like(t).copy_(g) for t, g in zip((out, a_out, avg), grads)]
                elif layout == "channels_last" and x.dim() in (4, 5):
                    grads = [g.contiguous(memory_format=torch.channels_last if g.dim() == 4
                                          else torch.channels_last_3d) for g in grads]
            g, a_g, avg_g = grads
            runs[one] = (out, taps, a_out, a_taps, avg, a_avg,
                         host._max_pool_backward(g, x, taps, *fixed[:3], dilation, *fixed[3:]),
                         host._adaptive_max_pool_backward(a_g, x, a_taps, out_size, sizes),
                         host._avg_pool_backward(avg_g, x, *fixed, True, None),
                         host._adaptive_avg_pool_backward(a_g, x, out_size, sizes))
        for packed, single in zip(runs["0"], runs["1"]):
            equal(packed, single)
            if packed.is_floating_point():  # zeros' signs (a NaN's is the compiler's)
                numbers = ~packed.isnan()
                assert torch.equal(packed.signbit()[numbers], single.signbit()[numbers])


@pytest.mark.parametrize("dtype, nans", [
    (torch.float16, [0x7E00, 0xFE00]),
    (torch.bfloat16, [0x7FC0, 0xFFC0]),
], ids=["f16", "bf16"])
def test_max_of_nan_cells_bit_for_bit(host, dtype, nans):
    """A max of NaN cells gives the CPU kernels' NaN, bit for bit, in the window
    kernels and the global reduction, values alone and with taps, channels-last
    packs and not: a float16 NaN keeps its sign, a bfloat16 NaN becomes 0x7fc0,
    as torch's CPU adaptive_max_pool1d gives them on contiguous inputs (its
    channels-last kernel makes a bfloat16 NaN 0xffff). (A float16 NaN's payload
    survives where the build has F16C, not in POOL_EXT_CPU_ARCH=generic builds:
    none here.) A GPU's conversions make every NaN 0x7fff: on an H200 such
    maxima differed from torch's, until widen_value and narrow_value; the CUDA
    run of test_max_of_rows_of_every_length checks them there."""
    rows = torch.randn(2, 16, 6).to(dtype)
    bits = rows.view(torch.int16)
    signed = [nan - 0x10000 if nan >= 0x8000 else nan for nan in nans]
    for i in range(16):  # a NaN in each channel, at moving places; in half of them
        bits[i % 2, i, i % 6] = signed[i % 2]  # another of the other sign (the later wins)
        if i < 8:
            bits[i % 2, i, (i + 3) % 6] = signed[1 - i % 2]
    x = bits.view(dtype)

    def same(got, want):
        assert torch.equal(got.contiguous().view(torch.int16), want.contiguous().view(torch.int16))

    for layout in (x, x.transpose(1, 2).contiguous().transpose(1, 2)):
        for out_size in ([1], [2], [4]):
            want = torch.ops.pool_ext.adaptive_max_pool(layout, out_size, None)[0]
            same(want, F.adaptive_max_pool1d(x, out_size[0]))
            same(host.adaptive_max_pool(layout, out_size, None)[0], want)
            same(host._adaptive_max_pool_values(layout, out_size, None), want)
        fixed = ([3], [2], [1], [1], False, False)
        same(host.max_pool(layout, *fixed)[0], torch.ops.pool_ext.max_pool(layout, *fixed)[0])


def test_channel_lanes_chosen_only_where_they_line_up(host):
    """V channels a thread wherever every tensor's channel count is a multiple
    of V: channels-last, in packs where the channels, every stride and the
    data's address line up with 16 bytes too (on the host a misaligned pack
    raises, so the random cases prove the choice safe); otherwise (NCHW), a
    plane apart, one load each, and then in every tensor of the kernel. One
    channel a thread anywhere else. [channels, packed]"""
    lanes = host._channel_lanes
    packs, planes, one = [4, 1], [4, 0], [1, 1]
    x = torch.randn(2, 24, 5, 6).to(memory_format=torch.channels_last)
    assert lanes([x]) == packs
    assert lanes([x.half()]) == [8, 1] and lanes([x.bfloat16()]) == [8, 1]
    assert lanes([x.double()]) == [2, 1]
    assert lanes([x[:, 4:]]) == packs  # 16 bytes in, 20 channels
    assert lanes([x[:, 2:]]) == one  # 22 channels
    z = torch.randn(2, 12, 5, 6).to(memory_format=torch.channels_last)
    assert lanes([z[:, 4:]]) == packs and lanes([z[:, 2:10]]) == one  # 8 bytes in: misaligned
    assert lanes([x.half()[:, 8:]]) == [8, 1] and lanes([x.half()[:, 4:]]) == one  # 20 channels
    assert lanes([x[:, :22]]) == one  # 22 channels
    assert lanes([x[..., 1:]]) == packs and lanes([x[..., ::2]]) == packs  # whole pixels skipped
    assert lanes([torch.randn(2, 6, 5, 5).to(memory_format=torch.channels_last)]) == one
    assert lanes([torch.randn(2, 10, 5, 5).to(memory_format=torch.channels_last).double()]) == [2, 1]
    assert lanes([torch.randn(1, 8, 1, 1).expand(3, 8, 4, 4)]) == packs  # stride-0 pixels
    y = torch.randn(2, 8, 3, 4, 5).to(memory_format=torch.channels_last_3d)
    assert lanes([y]) == packs and lanes([y[:, :, 1:]]) == packs and lanes([y.transpose(2, 3)]) == packs
    assert lanes([torch.randn(4, 5, 8).transpose(1, 2)]) == packs
    # NCHW and other layouts: channels a plane (or any stride) apart
    assert lanes([x.contiguous()]) == planes and lanes([x.contiguous().half()]) == [8, 0]
    assert lanes([x.contiguous()[:, 2:]]) == one  # 22 channels
    assert lanes([x.contiguous()[..., 1:]]) == planes  # any alignment: one load a lane
    assert lanes([torch.randn(4, 6, 5)]) == one and lanes([torch.randn(4, 8, 5)]) == planes
    assert lanes([torch.randn(3, 1, 4, 4).expand(3, 8, 4, 4)]) == planes  # stride-0 channels
    assert lanes([x, x.contiguous()]) == planes  # packs in one tensor only: a plane apart in both
    assert lanes([x[:, 2:], x.contiguous()[:, 2:]]) == one  # every tensor of a kernel must fit
    assert lanes([torch.randn(2, 3, 8, 8)]) == one  # three channels
    # lanes apart only where the kernel's elements, V to a thread, fill the GPU (packs always)
    nchw, cl = torch.randn(1, 64, 16, 16), torch.randn(1, 64, 16, 16).to(memory_format=torch.channels_last)
    assert lanes([nchw], nchw.numel(), nchw.numel() // 4) == planes
    assert lanes([nchw], nchw.numel(), nchw.numel() // 4 + 1) == one
    assert lanes([cl], cl.numel(), cl.numel()) == packs


def check_fixed(host, rng, d, dtype, cases, **case_args):
    for _ in range(cases):
        x, (kernel, stride, padding, ceil_mode, same) = random_case(rng, d, dtype, adaptive=False,
                                                                    **case_args)
        dilation = [rng.choice([1, 1, 2]) for _ in range(d)]
        got = both(host, "max_pool", x, kernel, stride, padding, dilation, ceil_mode, same)
        if got is not None:
            (out, taps), (h_out, h_taps) = got
            equal(h_out, out)
            equal(h_taps, taps)
            equal(host._max_pool_values(x, kernel, stride, padding, dilation, ceil_mode, same), out)
            equal(host._max_pool_indices(x, taps, kernel, stride, padding, dilation, ceil_mode, same),
                  torch.ops.pool_ext._max_pool_indices(x, taps, kernel, stride, padding, dilation, ceil_mode,
                                                       same))
            args = (random_grad(rng, out), x, taps, kernel, stride, padding, dilation, ceil_mode,
                    same)
            close(host._max_pool_backward(*args), torch.ops.pool_ext._max_pool_backward(*args))
        include_pad = rng.random() < 0.5
        divisor = rng.choice([None, None, 3, -2])
        got = both(host, "avg_pool", x, kernel, stride, padding, ceil_mode, same, include_pad, divisor)
        if got is not None:
            out, h_out = got
            close(h_out, out)
            args = (random_grad(rng, out), x, kernel, stride, padding, ceil_mode, same, include_pad,
                    divisor)
            close(host._avg_pool_backward(*args), torch.ops.pool_ext._avg_pool_backward(*args))


def check_adaptive(host, rng, d, dtype, cases, **case_args):
    for _ in range(cases):
        x, (out_size, sizes) = random_case(rng, d, dtype, adaptive=True, **case_args)
        got = both(host, "adaptive_max_pool", x, out_size, sizes)
        if got is not None:
            (out, taps), (h_out, h_taps) = got
            equal(h_out, out)
            equal(h_taps, taps)
            equal(host._adaptive_max_pool_values(x, out_size, sizes), out)
            equal(host._adaptive_max_pool_indices(x, taps, out_size, sizes),
                  torch.ops.pool_ext._adaptive_max_pool_indices(x, taps, out_size, sizes))
            args = (random_grad(rng, out), x, taps, out_size, sizes)
            close(host._adaptive_max_pool_backward(*args), torch.ops.pool_ext._adaptive_max_pool_backward(*args))
        got = both(host, "adaptive_avg_pool", x, out_size, sizes)
        if got is not None:
            out, h_out = got
            close(h_out, out)
            args = (random_grad(rng, out), x, out_size, sizes)
            close(host._adaptive_avg_pool_backward(*args), torch.ops.pool_ext._adaptive_avg_pool_backward(*args))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_global_pooling_of_small_planes_by_windows(host, dtype, monkeypatch):
    """POOL_EXT_CUDA_GLOBAL_WINDOWS=1 sends global pooling of planes of at most 64
    cells to the window kernels (a thread a plane, or V planes: packs or lanes
    apart) instead of the block reduction, for a GPU run to compare the two:
    the same results as the CPU kernels, variable sizes and every layout included."""
    monkeypatch.setenv("POOL_EXT_CUDA_GLOBAL_WINDOWS", "1")
    rng = random.Random(f"global-windows-{dtype}")
    for _ in range(60):
        d = rng.choice([1, 2, 3])
        spatial = [rng.randint(1, {1: 64, 2: 8, 3: 4}[d]) for _ in range(d)]
        n = rng.choice([1, 2, 3])
        x, _ = random_input(rng, (n, rng.choice([1, 3, 8, 16]), *spatial), dtype, "cpu")
        sizes = None
        if rng.random() < 0.3:
            sizes = torch.tensor([[rng.randint(1, e) for e in spatial] for _ in range(n)])
        out, taps = torch.ops.pool_ext.adaptive_max_pool(x, [1] * d, sizes)
        h_out, h_taps = host.adaptive_max_pool(x, [1] * d, sizes)
        equal(h_out, out)
        equal(h_taps, taps)
        close(host.adaptive_avg_pool(x, [1] * d, sizes),
              torch.ops.pool_ext.adaptive_avg_pool(x, [1] * d, sizes))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_unchecked_sizes_are_clamped(host, dtype, monkeypatch):
    """While a CUDA graph is captured, the plan does not copy `sizes` to the host
    to check them (the copy would sync the stream): POOL_EXT_HOST_CAPTURING=1
    plans so. Sizes under 1 or past the padded extent (by a little, or by 2^40)
    then pool as if clamped to [1, extent]: the tables, the window kernels and
    the global reduction stay inside the input. Checked, they are errors."""
    rng = random.Random(f"unchecked-{dtype}")
    wild = [0, -1, -(2 ** 40), 2 ** 40]
    for _ in range(80):
        d = rng.choice([1, 2, 3])
        spatial = [rng.randint(1, {1: 40, 2: 10, 3: 5}[d]) for _ in range(d)]
        n = rng.randint(1, 4)
        x, _ = random_input(rng, (n, rng.choice([1, 3, 8, 16]), *spatial), dtype, "cpu")
        sizes = torch.tensor([[rng.choice([rng.randint(1, e), e + rng.randint(1, 3), rng.choice(wild)])
                               for e in spatial] for _ in range(n)])
        k = rng.randrange(d)
        sizes[rng.randrange(n), k] = rng.choice(wild + [spatial[k] + 1])
        clamped = torch.minimum(sizes.clamp(min=1), torch.tensor(spatial))
        sizes = sizes.int() if rng.random() < 0.3 and sizes.abs().max() < 2 ** 31 else sizes
        out_size = [rng.choice([1, rng.randint(1, s + 2)]) for s in spatial]
        assert both(host, "adaptive_avg_pool", x, out_size, sizes) is None  # checked: an error

        out, taps = torch.ops.pool_ext.adaptive_max_pool(x, out_size, clamped)
        avg = torch.ops.pool_ext.adaptive_avg_pool(x, out_size, clamped)
        g = random_grad(rng, out)
        monkeypatch.setenv("POOL_EXT_HOST_CAPTURING", "1")
        h_out, h_taps = host.adaptive_max_pool(x, out_size, sizes)
        h_values = host._adaptive_max_pool_values(x, out_size, sizes)
        h_indices = host._adaptive_max_pool_indices(x, taps, out_size, sizes)
        h_max_grad = host._adaptive_max_pool_backward(g, x, taps, out_size, sizes)
        h_avg = host.adaptive_avg_pool(x, out_size, sizes)
        h_avg_grad = host._adaptive_avg_pool_backward(g, x, out_size, sizes)
        monkeypatch.delenv("POOL_EXT_HOST_CAPTURING")
        equal(h_out, out)
        equal(h_taps, taps)
        equal(h_values, out)
        equal(h_indices, torch.ops.pool_ext._adaptive_max_pool_indices(x, taps, out_size, clamped))
        close(h_max_grad, torch.ops.pool_ext._adaptive_max_pool_backward(g, x, taps, out_size, clamped))
        close(h_avg, avg)
        close(h_avg_grad, torch.ops.pool_ext._adaptive_avg_pool_backward(g, x, out_size, clamped))


@pytest.mark.parametrize("shape, layout", [
    ((1, 1, 100_000), "contiguous"),
    ((2, 3, 300, 300), "channels_last"),
    ((1, 2, 40, 50, 30), "contiguous"),
    ((3, 40, 9, 9), "channels_last"),
    ((2, 3, 120, 130), "strided"),
    ((3, 2, 100, 100), "variable"),
], ids=str)
def test_global_planes_cut_into_chunks(host, shape, layout):
    """Few long planes: several blocks per plane, their partials joined in
    order; dense planes, and planes walked cell by cell (strided, or of each
    sample's own extent)."""
    rng = random.Random(f"global-{shape}-{layout}")
    sizes = None
    if layout == "strided":  # every other cell of every other row
        x, _ = random_input(rng, shape[:2] + (2 * shape[2], 2 * shape[3]), torch.float32, "cpu",
                            layout="contiguous", specials=0.01)
        x = x[..., ::2, ::2]
    else:
        x, _ = random_input(rng, shape, torch.float32, "cpu",
                            layout="contiguous" if layout == "variable" else layout, specials=0.01)
    if layout == "variable":
        sizes = torch.tensor([[100, 90], [37, 100], [64, 64]])
    ones = [1] * (len(shape) - 2)
    (out, taps), (h_out, h_taps) = both(host, "adaptive_max_pool", x, ones, sizes)
    equal(h_out, out)
    equal(h_taps, taps)
    close(host.adaptive_avg_pool(x, ones, sizes), torch.ops.pool_ext.adaptive_avg_pool(x, ones, sizes))


@pytest.mark.parametrize("shape, layout", [
    ((3, 50_000, 7, 7), "contiguous"),
    ((3, 50_000, 7, 7), "channels_last"),
    ((300_000, 1, 40), "contiguous"),
    ((3, 100_000, 3, 3), "channels_last"),
], ids=str)
def test_global_many_small_planes(host, shape, layout):
    """Planes enough to fill a GPU (an H100's 132 SMs here): a few threads per
    plane, each scanning 16 cells or more (7x7 and 40 cells: 2 threads; 3x3 of
    300,000 planes: 1, no tree at all)."""
    rng = random.Random(f"many-{shape}-{layout}")
    x, _ = random_input(rng, shape, torch.float32, "cpu", layout=layout, specials=0.01)
    assert host._global_split(x)[0] == {49: 2, 40: 2, 9: 1}[math.prod(shape[2:])]
    ones = [1] * (len(shape) - 2)
    (out, taps), (h_out, h_taps) = both(host, "adaptive_max_pool", x, ones, None)
    equal(h_out, out)
    equal(h_taps, taps)
    close(host.adaptive_avg_pool(x, ones, None), torch.ops.pool_ext.adaptive_avg_pool(x, ones, None))


def test_global_split_threads_per_plane(host):
    """{threads a plane, planes a block, chunks a plane} of global pooling: as
    few threads as leave each 16 cells or more where the planes fill the GPU
    (an H100 here), more where they are too few, up to a thread a cell, and
    chunks where even 256 threads a plane leave blocks idle."""
    split = host._global_split
    cl = dict(memory_format=torch.channels_last)
    assert split(torch.empty(512, 2048, 7, 7)) == [2, 128, 1]
    assert split(torch.empty(512, 2048, 7, 7, **cl)) == [2, 128, 1]
    assert split(torch.empty(512, 512, 512)) == [32, 8, 1]
    assert split(torch.empty(3, 100_000, 3, 3, **cl)) == [1, 256, 1]
    assert split(torch.empty(1, 64, 7, 7)) == [32, 8, 1]  # too few planes: a thread a cell or so
    assert split(torch.empty(1, 1, 100_000)) == [256, 1, 24]  # one long plane: chunks


@pytest.mark.parametrize("d", [1, 2, 3])
def test_windows_of_more_than_256_taps(host, d):
    """int64 taps (a window of over 256 cells): max forward, indices and backward
    (channels-last: in packs of 4 channels, int64 taps stored 32 bytes a pack)."""
    rng = random.Random(f"wide-{d}")
    spatial, kernel = {1: ([700], [300]), 2: ([24, 30], [17, 19]), 3: ([9, 10, 11], [7, 7, 7])}[d]
    for layout in ("contiguous", "channels_last") if d > 1 else ("contiguous",):
        channels = 8 if layout == "channels_last" else 3
        x, _ = random_input(rng, (2, channels, *spatial), torch.float32, "cpu", layout=layout)
        for args in ((kernel, [2] * d, [k // 2 for k in kernel], [1] * d, True, False),
                     ([k // 2 for k in kernel], [3] * d, [0] * d, [2] * d, False, False)):
            (out, taps), (h_out, h_taps) = both(host, "max_pool", x, *args)
            equal(h_out, out)
            equal(h_taps, taps)
            equal(host._max_pool_indices(x, taps, *args), torch.ops.pool_ext._max_pool_indices(x, taps, *args))
            g = torch.randn(out.shape)
            close(host._max_pool_backward(g, x, taps, *args), torch.ops.pool_ext._max_pool_backward(g, x, taps, *args))
        out_size = [max(1, s // 3) for s in spatial]
        (out, taps), (h_out, h_taps) = both(host, "adaptive_max_pool", x, out_size, None)
        equal(h_out, out)
        equal(h_taps, taps)
