"""Fused squeeze-excitation: Triton vs a float64 oracle (flash-attention rule), every gradient, dtypes,
layouts, odd and large spatial sizes, errors, opcheck, torch.compile, and the standalone module on
torchvision-layout and timm SE modules."""
from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

from _numerics import check, rel_err
from conftest import DEVICE, KERNEL_BACKENDS, kernel_ready
from regnet_kernels.models import SqueezeExcitation
from regnet_kernels.nn import FusedSqueezeExcite
from regnet_kernels.ops import squeeze_excite

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, C, S, H, W)
SHAPES = {
    "7x7": (2, 16, 4, 7, 7),
    "odd_9x9": (3, 48, 12, 9, 9),
    "nonsquare": (2, 40, 10, 5, 6),
    "1x1": (4, 24, 8, 1, 1),
    "112x112": (1, 16, 4, 112, 112),
}


def _triton_ready(backend="triton"):
    kernel_ready(backend, "squeeze_excite")


def make_se(C, S, seed=0):
    torch.manual_seed(seed)
    se = SqueezeExcitation(C, S)
    with torch.no_grad():
        for p in se.parameters():
            p.normal_(0, 0.3)
    return se


def make_x(shape, dtype, layout="nchw", seed=1):
    N, C, S, H, W = shape
    gen = torch.Generator().manual_seed(seed)
    if layout == "noncontig":
        return torch.randn(N, C, H, 2 * W, generator=gen).to(dtype)[..., ::2]
    x = torch.randn(N, C, H, W, generator=gen).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def run(se, x, param_dtype, fused_backend=None):
    dev = torch.device("cpu") if param_dtype == torch.float64 else DEVICE  # the float64 oracle on the CPU
    se = copy.deepcopy(se).to(device=dev, dtype=param_dtype)
    mod = FusedSqueezeExcite(se, backend=fused_backend) if fused_backend else se
    x = x.detach().clone().to(dev).requires_grad_(True)
    out = mod(x)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device=dev, dtype=out.dtype)
    out.backward(go)
    res = {"out": out.detach().cpu(), "dx": x.grad.cpu()}
    for n, p in se.named_parameters():
        res[n] = p.grad.cpu()
    res["channels_last"] = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    return res


def compare(shape, dtype, layout="nchw", backend="triton"):
    _triton_ready(backend)
    N, C, S, H, W = shape
    se = make_se(C, S)
    x = make_x(shape, dtype, layout)
    # the fused op keeps the SE parameters in fp32 (they are tiny); eager at the same activation dtype
    # runs the whole module in that dtype, which is the yardstick
    got = run(se, x, torch.float32, backend)
    eager = run(se, x, dtype)
    ref = run(se, x.double(), torch.float64)
    for key in ("out", "dx", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        check(key, got[key], eager[key], ref[key], dtype)
    assert got["out"].dtype == dtype and got["dx"].dtype == dtype
    return got


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
    _triton_ready(backend)
    x = make_x(SHAPES["7x7"], torch.float32)
    w1, w2 = torch.randn(4, 16) * 0.3, torch.randn(16, 4) * 0.3
    a = squeeze_excite(x.to(DEVICE), w1.to(DEVICE), None, w2.to(DEVICE), None, backend=backend).cpu()
    b = squeeze_excite(x, w1, None, w2, None, backend="eager")
    ref = x.double() * torch.sigmoid(torch.relu(x.double().mean((2, 3)) @ w1.double().t()) @ w2.double().t())[
        :, :, None, None]
    assert rel_err(a, ref) < 1e-6 and rel_err(b, ref) < 1e-6


def test_triton_kernels_ran():
    _triton_ready()
    from regnet_kernels.kernels.triton.runtime import LAUNCHES

    before = dict(LAUNCHES)
    compare(SHAPES["7x7"], torch.float16)
    ran = {k: LAUNCHES[k] - before.get(k, 0) for k in LAUNCHES}
    for kernel in ("se_pool_kernel", "se_fc_fwd_kernel", "se_scale_kernel", "se_dgate_kernel", "se_fc_bwd_kernel",
                   "se_dx_kernel"):
        assert ran.get(kernel, 0) >= 1, f"{kernel} did not run: {ran}"


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
    if backend != "eager":
        _triton_ready(backend)
    mod = importlib.import_module("regnet_kernels.ops.squeeze_excite")
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 5, device=DEVICE, requires_grad=True)
    params = [t.to(DEVICE).requires_grad_() for t in (torch.randn(4, 16, 1, 1), torch.randn(4),
                                                      torch.randn(16, 4, 1, 1), torch.randn(16))]
    torch.library.opcheck(mod._se_op, (x, *params, backend))
    torch.library.opcheck(mod._se_op, (x, params[0], None, params[2], None, backend))
    out, pooled, gate = mod._se_op(x, *params, backend)
    torch.library.opcheck(mod._se_bwd_op, (torch.randn_like(out), x.detach(), *(p.detach() for p in params),
                                           pooled, gate, [True] * 5, backend))


def test_torch_compile_fullgraph():
    _triton_ready()
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
