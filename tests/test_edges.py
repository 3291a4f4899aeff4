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

import pytest
import torch
import torch.nn.functional as F

import regnet_kernels as rk
from conftest import kernel_ready
from edge_checks import (
    CASES,
    NAN,
    Case,
    assert_same,
    bottleneck,
    check_module_edges,
    fused_copy,
    outcome,
    run_module,
)
from regnet_kernels.models import RegNet, RegNetParams
from regnet_kernels.ops import conv_bn_act, squeeze_excite


@pytest.mark.parametrize("backend", ["triton", "eager"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_module_edges(case: Case, backend: str):
    check_module_edges(case, backend)


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
