"""Bad and edge inputs through the public functionals and the fused modules, in one table.

Each case either asserts the exception (type and a message fragment; the type is also what eager PyTorch
raises on the same call) or exact agreement with eager PyTorch: outputs, input and parameter gradients and
every BatchNorm buffer (``num_batches_tracked`` included), NaN positions included. Empty batches, one value
per channel in training BatchNorm, wrong channel counts, zero spatial size, zero output channels, 3-D
inputs, NaN and Inf, for conv-BN-ReLU, squeeze-excitation and whole bottleneck blocks, train and eval,
on the ``triton`` (interpreter on CPU) and ``eager`` backends. Tiny shapes: the whole file runs in well
under a minute on a CPU. (optimize(), the zoo and the CLI have their own edge tests.)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regnet_kernels as rk
from conftest import DEVICE, kernel_ready
from regnet_kernels.models import RegNet, RegNetParams, ResBottleneckBlock
from regnet_kernels.models import BlockSpec
from regnet_kernels.nn import FusedBottleneck, FusedConvBNAct2d, FusedSqueezeExcite
from regnet_kernels.ops import conv_bn_act, squeeze_excite

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


@pytest.mark.parametrize("backend", ["triton", "eager"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_module_edges(case: Case, backend: str):
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


# --------------------------------------------------------------------------------------------------
# The functionals directly
# --------------------------------------------------------------------------------------------------
def _cba_args(cout=16):
    gen = torch.Generator().manual_seed(2)
    return (torch.randn(2, 8, 5, 5, generator=gen), torch.randn(cout, 8, 3, 3, generator=gen), torch.ones(cout),
            torch.zeros(cout))


FUNCTIONAL_CASES = [
    # (id, fused call, eager call, expected error or None)
    ("cba-zero-out-channels",
     lambda be: conv_bn_act(*_cba_args(0), backend=be),
     lambda: F.conv2d(_cba_args(0)[0], _cba_args(0)[1], padding=1),
     (RuntimeError, "expected weight to be at least 1 at dimension 0")),
    ("cba-zero-out-channels-eval",
     lambda be: conv_bn_act(*_cba_args(0), torch.zeros(0), torch.ones(0), training=False, backend=be),
     lambda: F.conv2d(_cba_args(0)[0], _cba_args(0)[1], padding=1),
     (RuntimeError, "expected weight to be at least 1 at dimension 0")),
    ("cba-dtype-mismatch",
     lambda be: conv_bn_act(_cba_args()[0].double(), *_cba_args()[1:], backend=be),
     lambda: F.conv2d(_cba_args()[0].double(), _cba_args()[1], padding=1),
     (RuntimeError, "dtypes differ")),
    ("cba-empty-no-running-stats",
     lambda be: conv_bn_act(_cba_args()[0][:0], *_cba_args()[1:], backend=be),
     lambda: F.relu(F.batch_norm(F.conv2d(_cba_args()[0][:0], _cba_args()[1], padding=1), None, None,
                                 *_cba_args()[2:], training=True)),
     None),
    ("se-empty-functional",
     lambda be: squeeze_excite(torch.randn(0, 4, 3, 3), torch.randn(2, 4), torch.randn(2), torch.randn(4, 2),
                               torch.randn(4), backend=be),
     lambda: torch.empty(0, 4, 3, 3),
     None),
]


@pytest.mark.parametrize("backend", ["triton", "eager"])
@pytest.mark.parametrize("case", FUNCTIONAL_CASES, ids=[c[0] for c in FUNCTIONAL_CASES])
def test_functional_edges(case, backend):
    if backend == "triton":
        kernel_ready("triton", "conv_bn_act")
    _, fused_call, eager_call, error = case
    kind_e, want = outcome(eager_call)
    kind_f, got = outcome(lambda: fused_call(backend))
    if error is None:
        assert kind_e == kind_f == "ok", (want, got)
        assert_same({"out": got}, {"out": want})
        return
    etype, fragment = error
    assert kind_e == "raised" and isinstance(want, etype), f"eager: {want!r}"
    assert kind_f == "raised" and isinstance(got, etype) and fragment in str(got), f"fused: {got!r}"


def test_refused_block_call_leaves_buffers_alone():
    """Validation happens before any buffer is touched: a refused call changes nothing."""
    _, fused = fused_copy(bottleneck, "eager")
    before = {n: b.clone() for n, b in fused.named_buffers()}
    with pytest.raises(RuntimeError):
        fused.train()(torch.randn(2, 4, 6, 6))
    for n, b in fused.named_buffers():
        assert torch.equal(b, before[n]), n


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_nan_pixel_tiny_model_logits(train):
    """One NaN pixel: the fused model's logits are NaN exactly where eager's are (all of that sample's)."""
    kernel_ready("triton", "bottleneck")
    torch.manual_seed(0)
    ref = RegNet(RegNetParams(depth=2, w_0=16, w_a=8, w_m=2.0, group_width=8, se_ratio=0.25, stem_width=16),
                 num_classes=5)
    fused = rk.optimize(copy.deepcopy(ref), backend="triton")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x[1, :, 5, 7] = NAN
    assert_same(run_module(fused, x, train, backward=False), run_module(ref, x, train, backward=False))
