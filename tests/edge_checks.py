"""The edge-case table for the fused modules (NaN/Inf, empty batches, refusals), shared by test_edges.py
(Triton and eager) and test_cuda_backend.py (the CUDA kernels under the CPU emulation)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import nn

import regnet_kernels as rk
from conftest import DEVICE, kernel_ready
from regnet_kernels.models import BlockSpec, ResBottleneckBlock
from regnet_kernels.nn import FusedBottleneck, FusedConvBNAct2d, FusedSqueezeExcite

NAN = float("nan")


# --------------------------------------------------------------------------------------------------
# Tiny modules: an eager one and its fused copy
# --------------------------------------------------------------------------------------------------
def _randomize_bn(m: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
                bn.bias.copy_(torch.randn(bn.num_features, generator=gen) * 0.3)
    return m


def conv_bn_relu(cin=8, cout=16, k=3, stride=1, groups=1) -> nn.Module:
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                        nn.ReLU())
    return _randomize_bn(nn.Sequential(seq))


def bottleneck(proj=True, se=True) -> nn.Module:
    """A projection + SE block (8 -> 16 channels, stride 2) or an identity block (16 channels)."""
    if proj:
        spec = BlockSpec(stage=1, index=0, width_in=8, width_out=16, stride=2, group_width=8, bottleneck_width=16,
                         se_width=4 if se else None)
    else:
        spec = BlockSpec(stage=2, index=1, width_in=16, width_out=16, stride=1, group_width=8,
                         bottleneck_width=16, se_width=4 if se else None)
    torch.manual_seed(0)
    return _randomize_bn(nn.Sequential(ResBottleneckBlock(spec, nn.BatchNorm2d, nn.ReLU)))


def squeeze_excitation() -> nn.Module:
    return nn.Sequential(copy.deepcopy(bottleneck()[0].f.se))


FUSED_TYPE = {conv_bn_relu: FusedConvBNAct2d, bottleneck: FusedBottleneck, squeeze_excitation: FusedSqueezeExcite}


def fused_copy(make, backend: str, **kw):
    eager = make(**kw)
    fused = rk.optimize(copy.deepcopy(eager), backend=backend)
    assert isinstance(fused[0], FUSED_TYPE[make]), fused
    return eager, fused


# --------------------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------------------
def run_module(m: nn.Module, x: torch.Tensor, train: bool, backward: bool = True) -> dict:
    """Output, gradients (input and every parameter) and buffers after one call (and a backward)."""
    m = copy.deepcopy(m).to(DEVICE).train(train)
    x = x.detach().clone().to(DEVICE)
    grad = backward and train
    if grad:
        x.requires_grad_(True)
    with torch.set_grad_enabled(grad):
        out = m(x)
    res = {"out": out.detach()}
    if grad:
        out.backward(torch.ones_like(out))
        res["dx"] = x.grad
        res.update({f"grad:{n}": p.grad for n, p in m.named_parameters()})
    res.update({f"buffer:{n}": b for n, b in m.named_buffers()})
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in res.items()}


def assert_same(got: dict, want: dict) -> None:
    """Same keys, shapes, NaN positions; equal non-finite values; close finite values."""
    assert list(got) == list(want)
    for k in want:
        g, w = got[k], want[k]
        assert (g is None) == (w is None), f"{k}: {g} vs {w}"
        if w is None:
            continue
        assert g.shape == w.shape and g.dtype == w.dtype, (k, g.shape, w.shape, g.dtype, w.dtype)
        if not w.is_floating_point():
            assert torch.equal(g, w), (k, g, w)
            continue
        assert torch.equal(g.isnan(), w.isnan()), f"{k}: NaN at {g.isnan().sum()} vs eager {w.isnan().sum()} places"
        assert torch.equal(g.isinf(), w.isinf()), f"{k}: Inf positions differ"
        fin = torch.isfinite(w)
        assert torch.equal(g[~fin & ~w.isnan()], w[~fin & ~w.isnan()]), f"{k}: Inf signs differ"
        torch.testing.assert_close(g[fin], w[fin], rtol=1e-4, atol=1e-5, msg=k)


def outcome(fn: Callable) -> Tuple[str, object]:
    try:
        return "ok", fn()
    except Exception as e:  # noqa: BLE001 - the outcome is what is compared
        return "raised", e


@dataclass
class Case:
    id: str
    make: Callable  # builds the eager module (a one-child nn.Sequential)
    x: Callable[[], torch.Tensor]
    train: bool
    error: Optional[Tuple[type, str]] = None  # None: agree exactly with eager
    kw: Optional[dict] = None


def _x(*shape, nan_at=None, value=NAN):
    def make():
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(11))
        if nan_at is not None:
            x[nan_at] = value
        return x
    return make


CASES = [
    # --- empty batch: empty output, running statistics untouched, num_batches_tracked counted, zero grads
    Case("cba-empty-train", conv_bn_relu, _x(0, 8, 5, 5), True),
    Case("cba-empty-eval", conv_bn_relu, _x(0, 8, 5, 5), False),
    Case("se-empty", squeeze_excitation, _x(0, 16, 3, 3), True),
    Case("se-zero-spatial", squeeze_excitation, _x(2, 16, 0, 3), True),
    Case("block-empty-train", bottleneck, _x(0, 8, 6, 6), True),
    Case("block-empty-eval", bottleneck, _x(0, 8, 6, 6), False),
    Case("block-identity-empty-train", bottleneck, _x(0, 16, 4, 4), True, kw={"proj": False, "se": False}),
    # --- one value per channel in training BatchNorm
    Case("cba-batch1-1x1-train", conv_bn_relu, _x(1, 8, 1, 1), True,
         (ValueError, "Expected more than 1 value per channel when training")),
    Case("cba-batch1-1x1-eval", conv_bn_relu, _x(1, 8, 1, 1), False),
    Case("block-batch1-1x1-train", bottleneck, _x(1, 8, 2, 2), True,
         (ValueError, "Expected more than 1 value per channel when training")),
    Case("block-batch1-1x1-eval", bottleneck, _x(1, 8, 2, 2), False),
    # --- wrong channel counts, rank, spatial size
    Case("cba-channels", conv_bn_relu, _x(2, 4, 5, 5), True, (RuntimeError, "to have 8 channels, but got 4 channels")),
    Case("se-channels", squeeze_excitation, _x(2, 8, 3, 3), True, (RuntimeError, "to have 16 channels")),
    Case("block-channels-train", bottleneck, _x(2, 4, 6, 6), True,
         (RuntimeError, "to have 8 channels, but got 4 channels")),
    Case("block-channels-eval", bottleneck, _x(2, 4, 6, 6), False,
         (RuntimeError, "to have 8 channels, but got 4 channels")),
    Case("cba-3d", conv_bn_relu, _x(8, 5, 5), True, (ValueError, "expected 4D input (got 3D input)")),
    Case("block-3d-train", bottleneck, _x(8, 6, 6), True, (ValueError, "expected 4D input (got 3D input)")),
    Case("block-3d-eval", bottleneck, _x(8, 6, 6), False, (ValueError, "expected 4D input (got 3D input)")),
    Case("cba-zero-height", conv_bn_relu, _x(2, 8, 0, 5), True,
         (RuntimeError, "Kernel size can't be greater than actual input size")),
    Case("block-zero-height-train", bottleneck, _x(2, 8, 0, 6), True,
         (RuntimeError, "Kernel size can't be greater than actual input size")),
    Case("block-zero-height-eval", bottleneck, _x(2, 8, 0, 6), False,
         (RuntimeError, "Kernel size can't be greater than actual input size")),
    # --- NaN and Inf propagate exactly as in eager
    Case("cba-nan-pixel-train", conv_bn_relu, _x(2, 8, 5, 5, nan_at=(0, slice(None), 2, 2)), True),
    Case("cba-nan-pixel-eval", conv_bn_relu, _x(2, 8, 5, 5, nan_at=(0, slice(None), 2, 2)), False),
    Case("cba-inf-eval", conv_bn_relu, _x(2, 8, 5, 5, nan_at=(1, 3, 0, 4), value=float("inf")), False),
    Case("cba-grouped-nan-eval", conv_bn_relu, _x(2, 8, 5, 5, nan_at=(0, 1, 2, 2)), False, kw={"groups": 2}),
    Case("cba-grouped-nan-train", conv_bn_relu, _x(2, 8, 5, 5, nan_at=(0, 1, 2, 2)), True, kw={"groups": 2}),
    Case("se-nan", squeeze_excitation, _x(2, 16, 3, 3, nan_at=(1, 5, 1, 1)), True),
    Case("block-nan-pixel-train", bottleneck, _x(2, 8, 6, 6, nan_at=(0, slice(None), 3, 3)), True),
    Case("block-nan-pixel-eval", bottleneck, _x(2, 8, 6, 6, nan_at=(0, slice(None), 3, 3)), False),
    Case("block-identity-nan-eval", bottleneck, _x(2, 16, 4, 4, nan_at=(1, 2, 0, 0)), False,
         kw={"proj": False, "se": False}),
]


def check_module_edges(case: Case, backend: str):
    if backend == "triton":
        kernel_ready("triton", "bottleneck")
    eager, fused = fused_copy(case.make, backend, **(case.kw or {}))
    x = case.x()
    kind_e, want = outcome(lambda: run_module(eager, x, case.train))
    kind_f, got = outcome(lambda: run_module(fused, x, case.train))
    if case.error is None:
        assert kind_e == "ok", f"eager raised {want!r}: the case is mis-specified"
        assert kind_f == "ok", f"fused raised {got!r} where eager gives a result"
        assert_same(got, want)
        return
    etype, fragment = case.error
    assert kind_e == "raised" and isinstance(want, etype), f"eager: {want!r}"
    assert kind_f == "raised", "fused ran where eager raises"
    assert isinstance(got, etype) and fragment in str(got), f"fused raised {got!r}; eager {want!r}"
