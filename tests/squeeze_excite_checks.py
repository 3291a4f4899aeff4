"""The squeeze-excite numerics suite, shared by test_squeeze_excite.py (Triton; CUDA on a GPU) and
test_cuda_backend.py (the CUDA kernels under the CPU emulation): shapes, the float64 oracle comparison,
and checks taking the backend to run."""
from __future__ import annotations

import copy

import torch

from conftest import DEVICE, kernel_ready
from helpers import opcheck_module
from regnet_kernels.models import SqueezeExcitation
from regnet_kernels.nn import FusedSqueezeExcite
from regnet_kernels.ops import squeeze_excite
from regnet_kernels.testing import check, rel_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, C, S, H, W)
SHAPES = {
    "7x7": (2, 16, 4, 7, 7),
    "odd_9x9": (3, 48, 12, 9, 9),
    "nonsquare": (2, 40, 10, 5, 6),
    "1x1": (4, 24, 8, 1, 1),
    "112x112": (1, 16, 4, 112, 112),
}


def triton_ready(backend="triton"):
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
    triton_ready(backend)
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


def check_no_bias_and_2d_weights(backend):
    triton_ready(backend)
    x = make_x(SHAPES["7x7"], torch.float32)
    w1, w2 = torch.randn(4, 16) * 0.3, torch.randn(16, 4) * 0.3
    a = squeeze_excite(x.to(DEVICE), w1.to(DEVICE), None, w2.to(DEVICE), None, backend=backend).cpu()
    b = squeeze_excite(x, w1, None, w2, None, backend="eager")
    ref = x.double() * torch.sigmoid(torch.relu(x.double().mean((2, 3)) @ w1.double().t()) @ w2.double().t())[
        :, :, None, None]
    assert rel_err(a, ref) < 1e-6 and rel_err(b, ref) < 1e-6


def check_opcheck(backend):
    mod = opcheck_module(backend, "squeeze_excite")
    x = torch.randn(2, 16, 5, 5, device=DEVICE, requires_grad=True)
    params = [t.to(DEVICE).requires_grad_() for t in (torch.randn(4, 16, 1, 1), torch.randn(4),
                                                      torch.randn(16, 4, 1, 1), torch.randn(16))]
    torch.library.opcheck(mod._se_op, (x, *params, backend))
    torch.library.opcheck(mod._se_op, (x, params[0], None, params[2], None, backend))
    out, pooled, gate = mod._se_op(x, *params, backend)
    torch.library.opcheck(mod._se_bwd_op, (torch.randn_like(out), x.detach(), *(p.detach() for p in params),
                                           pooled, gate, [True] * 5, backend))
