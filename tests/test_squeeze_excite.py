"""Fused squeeze-excitation: Triton vs a float64 oracle (flash-attention rule), every gradient, dtypes,
layouts, odd and large spatial sizes, errors, opcheck, torch.compile, and the standalone module on
torchvision-layout and timm SE modules."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import DEVICE, KERNEL_BACKENDS
from helpers import assert_kernels_ran
from regnet_kernels.models import SqueezeExcitation
from regnet_kernels.nn import FusedSqueezeExcite
from regnet_kernels.ops import squeeze_excite
from regnet_kernels.testing import rel_err
from squeeze_excite_checks import (
    DTYPES,
    SHAPES,
    check_no_bias_and_2d_weights,
    check_opcheck,
    compare,
    make_se,
    triton_ready,
)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernels_match_oracle(backend, name, dtype):
    compare(SHAPES[name], dtype, backend=backend)


@pytest.mark.parametrize("layout", ["channels_last", "noncontig"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_layouts(backend, dtype, layout):
    got = compare(SHAPES["odd_9x9"], dtype, layout, backend=backend)
    assert got["channels_last"] == (layout == "channels_last")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_no_bias_and_2d_weights(backend):
    check_no_bias_and_2d_weights(backend)


def test_triton_kernels_ran():
    triton_ready()
    with assert_kernels_ran("se_pool_kernel", "se_fc_fwd_kernel", "se_scale_kernel", "se_dgate_kernel",
                            "se_fc_bwd_kernel", "se_dx_kernel"):
        compare(SHAPES["7x7"], torch.float16)


def test_errors_name_the_problem():
    x = torch.randn(2, 16, 5, 5)
    w1, b1, w2, b2 = torch.randn(4, 16, 1, 1), torch.randn(4), torch.randn(16, 4, 1, 1), torch.randn(16)
    with pytest.raises(ValueError, match="4-D input"):
        squeeze_excite(x[0], w1, b1, w2, b2)
    with pytest.raises(TypeError, match="floating point"):
        squeeze_excite(x.to(torch.int64), w1, b1, w2, b2)
    with pytest.raises(ValueError, match="channels but fc1 expects"):
        squeeze_excite(torch.randn(2, 8, 5, 5), w1, b1, w2, b2)
    with pytest.raises(ValueError, match="fc2 weight"):
        squeeze_excite(x, w1, b1, torch.randn(16, 5, 1, 1), b2)
    with pytest.raises(ValueError, match="fc1 bias"):
        squeeze_excite(x, w1, torch.randn(5), w2, b2)
    with pytest.raises(ValueError, match="fc1 weight must be"):
        squeeze_excite(x, torch.randn(4, 16, 3, 3), b1, w2, b2)
    with pytest.raises(RuntimeError, match="same device"):
        squeeze_excite(x, w1.to("meta"), b1, w2, b2)


@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_opcheck(backend):
    check_opcheck(backend)


def test_torch_compile_fullgraph():
    triton_ready()
    se = make_se(16, 4).to(DEVICE)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), FusedSqueezeExcite(copy.deepcopy(se), backend="triton"))
    model = model.to(DEVICE)
    ref = nn.Sequential(copy.deepcopy(model[0]), se)
    torch._dynamo.reset()
    cmodel = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 8, 7, 7, device=DEVICE)
    out = cmodel(x)
    out.square().sum().backward()
    r = ref(x)
    r.square().sum().backward()
    assert rel_err(out, r) < 1e-5
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert rel_err(p.grad, q.grad) < 1e-4, n


def test_module_on_timm_semodule(timm):
    from timm.layers import SEModule

    torch.manual_seed(0)
    se = SEModule(32, rd_channels=8)
    fused = FusedSqueezeExcite(copy.deepcopy(se), backend="eager")
    x = torch.randn(2, 32, 6, 6)
    assert rel_err(fused(x), se(x)) < 1e-6
    assert list(fused.state_dict()) == list(se.state_dict())


def test_module_rejects_other_structures():
    with pytest.raises(ValueError):
        FusedSqueezeExcite(nn.Sequential(nn.Conv2d(4, 4, 1)))
    se = SqueezeExcitation(16, 4, activation=nn.SiLU)
    with pytest.raises(ValueError, match="SiLU"):
        FusedSqueezeExcite(se)
