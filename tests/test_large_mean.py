"""Whole-block training at a large input mean (issue 13 item 6): a fused bottleneck fed ``mean + N(0, 1)``
with mean 300 or 1e4, ``backend="triton"``, against eager fp32 and a float64 copy.

At mean 1e4 the fp32 outputs of the 1x1 convs that read the block input (conv a, the projection) are
~1e4 with an ulp of ~1e-3: their rounding puts a few pre-ReLU values on the wrong side of 0 (one flipped
mask element moves a BatchNorm gradient by ~1e-2 relative), and the weight gradients sum ``dy * x`` with
``x ~ mean`` over a ``dy`` that sums to ~0, which cancels. The Triton block runs those convs (forward and
weight gradient) on ``x - x[0, :, 0, 0]`` (per channel, where the mean dominates), which training BatchNorm cancels exactly, and corrects the
batch means for the running statistics. So every tensor is held to the full fp32 rule of
``regnet_kernels.testing.check``: at most 2x eager's error vs float64 plus 1e-6, *and* at most 1e-4 relative, which
eager itself does not meet here (its weight gradients are off by 1e-3 at mean 300 and by >1 at 1e4).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regnet_kernels as rk
from regnet_kernels.testing import check
from conftest import DEVICE, kernel_ready
from helpers import random_bn_block
from regnet_kernels.models import BlockSpec
from regnet_kernels.nn import FusedBottleneck

# 8 -> 16 channels, stride 2, SE and a projection (both shifted convs); and an identity block (conv a
# only: the other layout of the packed statistics)
SPECS = {
    "se_proj": BlockSpec(stage=1, index=0, width_in=8, width_out=16, stride=2, group_width=8, bottleneck_width=16,
                         se_width=2),
    "identity": BlockSpec(stage=2, index=1, width_in=16, width_out=16, stride=1, group_width=8,
                          bottleneck_width=16, se_width=None),
}


def _block(spec: BlockSpec, seed: int) -> nn.Module:
    return nn.Sequential(random_bn_block(spec, seed))


def _run(model: nn.Module, x: torch.Tensor, seed: int) -> dict:
    """One training forward + backward: output, input and parameter gradients, BN buffers after the step."""
    model = copy.deepcopy(model)
    xx = x.detach().clone().requires_grad_(True)
    out = model(xx)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    out.backward(go.to(device=out.device, dtype=out.dtype))
    res = {"out": out.detach(), "dx": xx.grad}
    res.update({n: p.grad for n, p in model.named_parameters()})
    res.update({n: b for n, b in model.named_buffers() if b.is_floating_point()})
    return {k: v.cpu() for k, v in res.items()}


# (kind, mean, seed, channels_last). Seeds 1 and 2 at 1e4 are the ones where, before the shift, the fused
# block's gradients were >2x eager's error (seed 2: 15 tensors, e.g. BN-a bias 9.6e-2 vs 3.8e-4); every
# mean-300 case and seed 0 failed the 1e-4 bound on the weight gradients of conv a and the projection.
CASES = [
    ("se_proj", 300.0, 0, False),
    ("se_proj", 300.0, 2, True),
    ("se_proj", 1e4, 0, False),
    ("se_proj", 1e4, 1, False),
    ("se_proj", 1e4, 2, False),
    ("se_proj", 1e4, 2, True),
    ("identity", 300.0, 0, False),
    ("identity", 1e4, 3, False),
]


@pytest.mark.parametrize("kind,mean,seed,channels_last", CASES,
                         ids=[f"{k}-mean{m:g}-seed{s}{'-cl' if cl else ''}" for k, m, s, cl in CASES])
def test_block_training_large_mean(kind, mean, seed, channels_last):
    kernel_ready("triton", "bottleneck")
    spec = SPECS[kind]
    holder = _block(spec, seed)
    x = mean + torch.randn(2, spec.width_in, 9, 9, generator=torch.Generator().manual_seed(seed))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    fused = rk.optimize(copy.deepcopy(holder), backend="triton").to(DEVICE)
    assert isinstance(fused[0], FusedBottleneck)
    got = _run(fused, x.to(DEVICE), seed)
    eager = _run(copy.deepcopy(holder).to(DEVICE), x.to(DEVICE), seed)
    ref = _run(copy.deepcopy(holder).double(), x.double(), seed)
    assert set(got) == set(ref)
    for key in ref:
        check(key, got[key], eager[key], ref[key], torch.float32)


def test_input_shift_only_where_the_mean_dominates():
    """The shift is per channel and only where the mean dominates the spread: a mean-0 channel shifted by
    one sample would cost digits in its running mean; NaN / Inf and 16-bit inputs are never shifted."""
    from regnet_kernels.kernels.triton.conv import input_shift, shift_offset

    x = torch.randn(2, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    x[:, 1] += 1e4
    x[:, 2] -= 300.0
    x[:, 4] += 1e4
    x[0, 3, 0, 0] = float("nan")
    x[1, 4, 5, 6] = float("inf")
    c, scale, bias = input_shift(x)
    assert torch.equal(c, torch.tensor([0.0, x[0, 1, 0, 0], x[0, 2, 0, 0], 0.0, 0.0]))
    assert torch.equal(scale, torch.ones(5)) and torch.equal(bias, torch.zeros(5))
    assert torch.equal(input_shift(x.contiguous(memory_format=torch.channels_last))[0], c)
    assert input_shift(x.half()) is None and input_shift(x.bfloat16()) is None
    # conv(x) = conv(x - c) + offset, for every pixel (fp64 convs of the finite channels)
    w = torch.randn(3, 3, 1, 1, generator=torch.Generator().manual_seed(1))
    xf, cf = x[:, :3].double(), c[:3].double()
    diff = F.conv2d(xf, w.double()) - F.conv2d(xf - cf[None, :, None, None], w.double())
    off = shift_offset(w, (c[:3], None, None))
    assert torch.allclose(diff, off.double()[None, :, None, None].expand_as(diff), rtol=1e-6, atol=1e-6)
    assert torch.equal(shift_offset(w, None), torch.zeros(3))
