"""The conv + BN (+ ReLU) numerics suite, shared by test_conv_bn_act.py (Triton; CUDA on a GPU) and
test_cuda_backend.py (the CUDA kernels under the CPU emulation): configs, the float64 oracle comparison,
and the semantic checks, each taking the backend to run."""
from __future__ import annotations

import copy

import torch
from torch import nn

from conftest import DEVICE, kernel_ready
from helpers import opcheck_module
from regnet_kernels.kernels.activation import Act
from regnet_kernels.nn import FusedConvBNAct2d
from regnet_kernels.testing import check, rel_err

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (N, C_in, C_out, H, W, kernel, stride, groups): every RegNet conv kind at interpreter-friendly sizes
CONFIGS = {
    "stem_3to16_s2": (2, 3, 16, 9, 9, 3, 2, 1),
    "1x1_c24to40": (2, 24, 40, 7, 7, 1, 1, 1),  # C not a multiple of the tile
    "proj_1x1_s2": (2, 16, 24, 9, 9, 1, 2, 1),
    "dense_3x3": (2, 16, 16, 7, 7, 3, 1, 1),
    "gw8": (2, 32, 32, 8, 8, 3, 1, 4),
    "gw8_s2_odd": (2, 32, 32, 9, 9, 3, 2, 4),
    "gw16": (2, 48, 48, 7, 7, 3, 1, 3),
    "gw24_s2": (2, 72, 72, 7, 7, 3, 2, 3),
    "gw56": (1, 112, 112, 5, 5, 3, 1, 2),
    "gw112_s2": (1, 224, 224, 4, 4, 3, 2, 2),
}


def triton_ready(backend="triton"):
    kernel_ready(backend, "conv_bn_act")


def make_modules(cfg, relu=True, seed=0):
    N, cin, cout, H, W, k, s, g = cfg
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False)
    bn = nn.BatchNorm2d(cout)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.2)
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    mods = [conv, bn] + ([nn.ReLU()] if relu else [])
    return nn.Sequential(*mods)


def make_input(cfg, dtype, seed=1, layout="nchw"):
    N, cin, cout, H, W, k, s, g = cfg
    gen = torch.Generator().manual_seed(seed)
    if layout == "noncontig":  # a strided view: every other column of a wider tensor
        x = torch.randn(N, cin, H, 2 * W, generator=gen).to(dtype)[..., ::2]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    else:
        x = torch.randn(N, cin, H, W, generator=gen).to(dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    return x


#: Upstream gradients are zeroed where the float64 pre-activation is within this of zero: there a
#: rounding-level difference legitimately flips the ReLU mask, and one flipped element moves a small
#: test's gradients by percents (the kink, not the kernel). fp32 needs no such margin.
RELU_MARGIN = {torch.float32: 0.0, torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float64: 0.0}


def preactivation_ref(seq: nn.Sequential, x: torch.Tensor, training: bool) -> torch.Tensor:
    """float64 conv + BN output (before ReLU) of a copy of ``seq``."""
    ref = copy.deepcopy(seq[:2]).double().train(training)
    with torch.no_grad():
        return ref(x.double())


def run(seq: nn.Sequential, x: torch.Tensor, dtype, training: bool, fused_backend=None, grad_seed=2,
        param_dtype=torch.float32, grad_mask=None, device=None):
    """One forward + backward on ``device`` (:data:`DEVICE`; the float64 oracle on the CPU); returns
    outputs, grads and BN buffers (detached, on the CPU)."""
    device = device or (torch.device("cpu") if dtype == torch.float64 else DEVICE)
    seq = copy.deepcopy(seq).to(device)
    x = x.to(device)
    seq[0].to(dtype)
    seq[1].to(param_dtype)
    seq.train(training)
    if fused_backend is not None:
        relu = "relu" if len(seq) == 3 else None
        model = FusedConvBNAct2d(seq[0], seq[1], relu, names=("0", "1"), backend=fused_backend)
        model.train(training)
    else:
        model = seq
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    gen = torch.Generator().manual_seed(grad_seed)
    go = torch.randn(out.shape, generator=gen)
    if grad_mask is not None:
        go = go * grad_mask
    out.backward(go.to(device=device, dtype=out.dtype))
    conv, bn = seq[0], seq[1]
    res = {
        "out": out.detach(),
        "dx": x.grad,
        "dw": conv.weight.grad,
        "dgamma": bn.weight.grad,
        "dbeta": bn.bias.grad,
        "running_mean": bn.running_mean.clone(),
        "running_var": bn.running_var.clone(),
        "num_batches_tracked": bn.num_batches_tracked.clone(),
    }
    res = {k: v.cpu() for k, v in res.items()}
    res["channels_last"] = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    return res


def compare(cfg, dtype, training, layout="nchw", relu=True, x=None, backend="triton"):
    triton_ready(backend)
    seq = make_modules(cfg, relu=relu)
    x = make_input(cfg, dtype, layout=layout) if x is None else x
    mask = None
    if relu and RELU_MARGIN[dtype] > 0:
        mask = (preactivation_ref(seq, x, training).abs() >= RELU_MARGIN[dtype]).float()
    got = run(seq, x, dtype, training, fused_backend=backend, grad_mask=mask)
    eager = run(seq, x, dtype, training, grad_mask=mask)
    ref = run(seq, x.double(), torch.float64, training, param_dtype=torch.float64, grad_mask=mask)
    # running statistics are fp32 but computed from the conv output as stored in ``dtype``, so they
    # carry that rounding: the same rule applies
    for key in ("out", "dx", "dw", "dgamma", "dbeta", "running_mean", "running_var"):
        check(key, got[key], eager[key], ref[key], dtype)
    assert torch.equal(got["num_batches_tracked"], eager["num_batches_tracked"])
    assert got["out"].dtype == dtype and got["dx"].dtype == dtype
    return got, eager


def check_no_activation(backend, training):
    compare(CONFIGS["gw16"], torch.float32, training, relu=False, backend=backend)
    compare(CONFIGS["proj_1x1_s2"], torch.float16, training, relu=False, backend=backend)


def check_batch_one_eval(backend):
    compare((1, 16, 16, 7, 7, 3, 1, 2), torch.float32, False, backend=backend)
    compare((1, 8, 8, 1, 1, 1, 1, 1), torch.float32, False, backend=backend)  # a single pixel: fine in eval


def check_large_mean_input(backend):
    """Inputs with mean 300 and std 1 must match eager: a sum / sum-of-squares variance, a plain tile sum
    or a folded ``y * scale + (beta - mean * scale)`` normalisation all lose digits here."""
    triton_ready(backend)
    gen = torch.Generator().manual_seed(3)
    # identity 1x1 conv (the BN input itself has mean 300), then a grouped 3x3 conv whose output mean
    # is in the hundreds
    cases = [((2, 16, 16, 8, 8, 1, 1, 1), "identity"), ((2, 32, 32, 7, 7, 3, 1, 4), "abs")]
    for cfg, init in cases:
        seq = make_modules(cfg, relu=True)
        with torch.no_grad():
            if init == "identity":
                seq[0].weight.copy_(torch.eye(cfg[1])[:, :, None, None])
            else:
                seq[0].weight.abs_()
        x = 300.0 + torch.randn(cfg[0], cfg[1], cfg[3], cfg[4], generator=gen)
        got = run(seq, x, torch.float32, True, fused_backend=backend)
        eager = run(seq, x, torch.float32, True)
        ref = run(seq, x.double(), torch.float64, True, param_dtype=torch.float64)
        for key in ("out", "dx", "dgamma", "dbeta", "running_mean", "running_var"):
            check(key, got[key], eager[key], ref[key], torch.float32)
        # the weight gradient sums dy * x with x ~ 300 over a zero-mean dy: fp32 accumulation itself
        # cancels (eager too), so only the relative rule applies, not the 1e-4 bound
        e_got, e_eager = rel_err(got["dw"], ref["dw"]), rel_err(eager["dw"], ref["dw"])
        assert e_got <= 2 * e_eager + 1e-6, ("dw", e_got, e_eager)


def check_running_stats_semantics(backend):
    if backend != "eager":
        triton_ready(backend)
    cfg = CONFIGS["gw8"]
    for momentum, track in ((0.1, True), (0.3, True), (None, True), (0.1, False)):
        seq = make_modules(cfg)
        seq[1] = nn.BatchNorm2d(32, momentum=momentum, track_running_stats=track)
        seq = seq.to(DEVICE)
        fused = copy.deepcopy(seq)
        fm = FusedConvBNAct2d(fused[0], fused[1], "relu", names=("0", "1"), backend=backend)
        for step in range(3):
            x = make_input(cfg, torch.float32, seed=10 + step).to(DEVICE)
            a, b = seq(x), fm(x)
            assert rel_err(b, a) < 1e-5
        if track:
            assert int(fused[1].num_batches_tracked) == int(seq[1].num_batches_tracked) == 3
            assert rel_err(fused[1].running_mean, seq[1].running_mean) < 1e-5
            assert rel_err(fused[1].running_var, seq[1].running_var) < 1e-5
        else:
            assert fused[1].running_mean is None
        # eval: running statistics (or batch statistics when not tracked)
        seq.eval()
        fm.eval()
        x = make_input(cfg, torch.float32, seed=20).to(DEVICE)
        assert rel_err(fm(x), seq(x)) < 1e-5


def check_autocast(backend):
    if backend != "eager":
        triton_ready(backend)
    cfg = CONFIGS["gw8"]
    seq = make_modules(cfg).to(DEVICE)
    fused_seq = copy.deepcopy(seq)
    fm = FusedConvBNAct2d(fused_seq[0], fused_seq[1], "relu", names=("0", "1"), backend=backend)
    x = make_input(cfg, torch.float32).to(DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        a = seq(x)
        b = fm(x)
    assert a.dtype == b.dtype == torch.bfloat16
    assert rel_err(b, a) < 2e-2
    b.float().sum().backward()
    assert fused_seq[0].weight.grad.dtype == torch.float32
    assert fused_seq[1].weight.grad.dtype == torch.float32


def check_opcheck(backend):
    mod = opcheck_module(backend, "conv_bn_act")
    dev = DEVICE
    x = torch.randn(2, 16, 6, 6, device=dev, requires_grad=True)
    w = (torch.randn(16, 8, 3, 3, device=dev) * 0.2).requires_grad_()
    g = (torch.rand(16, device=dev) + 0.5).requires_grad_()
    b = torch.randn(16, device=dev).requires_grad_()
    rm, rv = torch.randn(16, device=dev), torch.rand(16, device=dev) + 0.5
    torch.library.opcheck(mod._train_op, (x, w, g, b, 1, 1, 2, 1e-5, Act.RELU, -1, backend))
    torch.library.opcheck(mod._train_op, (x, w, None, None, 2, 1, 2, 1e-5, Act.NONE, -1, backend))
    torch.library.opcheck(mod._eval_op, (x, w, g, b, rm, rv, 1, 1, 2, 1e-5, Act.RELU, backend))
    out, y, mean, invstd, _ = mod._train_op(x, w, g, b, 1, 1, 2, 1e-5, Act.RELU, -1, backend)
    go = torch.randn_like(out)
    torch.library.opcheck(mod._train_bwd_op, (go, x.detach(), w.detach(), y, mean, invstd, g.detach(), b.detach(),
                                              1, 1, 2, Act.RELU, [True, True, True, True], -1, backend))
    zeros, ones = torch.zeros(16, device=dev), torch.ones(16, device=dev)
    torch.library.opcheck(mod.update_running_stats_op, (zeros, ones, None, mean.detach(), invstd.detach(), 0.1, False, backend))
    torch.library.opcheck(mod.update_running_stats_op, (zeros.clone(), ones.clone(), torch.tensor(3, device=dev), mean.detach(),
                                           invstd.detach(), 0.0, True, backend))
