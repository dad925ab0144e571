"""Tensors past 2**31 elements: offsets into them need 64-bit arithmetic.

One bfloat16 input of 2.2e9 elements (4.4 GB), pooled whole by each op; its
first and last channels (the last starts past 2**31 elements) are compared
with torch on those channels alone. Skipped where the memory is not there.
"""

import pytest
import torch
import torch.nn.functional as F

import pool_ext.functional as P
from pool_testing import DEVICES

C, H, W = 33, 8192, 8192  # C * H * W = 2.2e9 > 2**31
NEEDS_BYTES = 14 * 2**30  # the input, its gradient, outputs, indices and torch's references


def available_bytes(device):
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


@pytest.fixture(scope="module", params=DEVICES)
def big(request):
    device = request.param
    if available_bytes(device) < NEEDS_BYTES:
        pytest.skip(f"needs {NEEDS_BYTES / 2**30:.0f} GiB free on {device}")
    g = torch.Generator().manual_seed(0)
    # Cheap to fill yet different in every row and channel: a shifted random
    # row plus a random column.
    row = torch.randn(W + 7 * C, generator=g).to(device, torch.bfloat16)
    column = torch.randn(H, 1, generator=g).to(device, torch.bfloat16)
    x = torch.empty(1, C, H, W, dtype=torch.bfloat16, device=device)
    for c in range(C):
        torch.add(row[7 * c:7 * c + W], column, out=x[0, c])
    x[0, -1, -1, -1] = 100.0  # the very last cell wins its window
    x[0, -1, -3, 5] = float("nan")
    assert x.numel() > 2**31 and x[:, -1:].storage_offset() >= 2**31
    yield x
    del x
    if device == "cuda":
        torch.cuda.empty_cache()


def edge_channels(t):
    return t[:, :1], t[:, -1:]


@pytest.mark.slow
def test_max_pool_past_2_31(big):
    out, indices = P.max_pool2d(big, 2, return_indices=True)
    values = P.max_pool2d(big, 2)
    for ours_out, ours_idx, ours_values, x in zip(*map(edge_channels, (out, indices, values, big))):
        want, want_idx = F.max_pool2d(x, 2, return_indices=True)
        torch.testing.assert_close(ours_out, want, rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(ours_values, want, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(ours_idx, want_idx)
    assert out[0, -1, -1, -1].item() == 100.0


@pytest.mark.slow
def test_avg_pool_and_backward_past_2_31(big):
    x = big.detach().requires_grad_()
    out = P.avg_pool2d(x, 3, stride=2, padding=1)
    grad = torch.ones_like(out)
    (grad_input,) = torch.autograd.grad(out, x, grad)
    for ours_out, ours_grad, channel in zip(*map(edge_channels, (out, grad_input, big))):
        channel = channel.detach().float().requires_grad_()
        want = F.avg_pool2d(channel, 3, stride=2, padding=1)
        (want_grad,) = torch.autograd.grad(want, channel, torch.ones_like(want))
        torch.testing.assert_close(ours_out.float(), want, rtol=1e-2, atol=1e-2, equal_nan=True)
        torch.testing.assert_close(ours_grad.float(), want_grad, rtol=1e-2, atol=1e-2)


@pytest.mark.slow
def test_global_pool_past_2_31(big):
    means = P.adaptive_avg_pool2d(big, 1)
    maxima = P.adaptive_max_pool2d(big, 1)
    first, last = edge_channels(big)
    torch.testing.assert_close(means[:, :1].float(), first.float().mean((2, 3), keepdim=True), rtol=1e-2, atol=1e-2)
    assert means[0, -1].isnan().all() and maxima[0, -1].isnan().all()  # the planted NaN
    assert maxima[0, 0, 0, 0].item() == first.float().max().item()
