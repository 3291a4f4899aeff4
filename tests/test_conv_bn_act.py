"""Fused conv + BatchNorm + ReLU: reference vs torch.nn (float64), Triton vs the float64 oracle with the
flash-attention rule (every output, every gradient, running buffers), layouts, odd shapes, errors,
opcheck, torch.compile and autocast. Triton runs on CPU tensors through the interpreter."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from _numerics import check, rel_err
from conftest import DEVICE, KERNEL_BACKENDS, kernel_ready
from regnet_kernels import backends
from regnet_kernels.nn import FusedConvBNAct2d
from regnet_kernels.ops import conv_bn_act

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


def _triton_ready(backend="triton"):
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
    _triton_ready(backend)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernels_match_oracle(backend, name, training, dtype):
    compare(CONFIGS[name], dtype, training, backend=backend)


@pytest.mark.parametrize("layout", ["channels_last", "noncontig"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["gw8_s2_odd", "stem_3to16_s2", "1x1_c24to40"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_layouts(backend, name, training, dtype, layout):
    got, eager = compare(CONFIGS[name], dtype, training, layout=layout, backend=backend)
    assert got["channels_last"] == (layout == "channels_last")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_no_activation(backend, training):
    compare(CONFIGS["gw16"], torch.float32, training, relu=False, backend=backend)
    compare(CONFIGS["proj_1x1_s2"], torch.float16, training, relu=False, backend=backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_batch_one_eval(backend):
    compare((1, 16, 16, 7, 7, 3, 1, 2), torch.float32, False, backend=backend)
    compare((1, 8, 8, 1, 1, 1, 1, 1), torch.float32, False, backend=backend)  # a single pixel: fine in eval


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_large_mean_input(backend):
    """Inputs with mean 300 and std 1 must match eager: a sum / sum-of-squares variance, a plain tile sum
    or a folded ``y * scale + (beta - mean * scale)`` normalisation all lose digits here."""
    _triton_ready(backend)
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


def test_triton_kernels_ran():
    _triton_ready()
    from regnet_kernels.kernels.triton.runtime import LAUNCHES

    before = dict(LAUNCHES)
    compare(CONFIGS["gw8"], torch.float16, True)
    compare(CONFIGS["gw8"], torch.float16, False)
    ran = {k: LAUNCHES[k] - before.get(k, 0) for k in LAUNCHES}
    for kernel in ("conv_fwd_kernel", "conv_dgrad_kernel", "conv_wgrad_kernel", "bn_finalize_kernel",
                   "bn_act_kernel", "bn_bwd_reduce_kernel", "bn_bwd_dy_kernel", "bn_running_update_kernel"):
        assert ran.get(kernel, 0) >= 1, f"{kernel} did not run: {ran}"


# --------------------------------------------------------------------------------------------------
# BatchNorm semantics through the module
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_running_stats_semantics(backend):
    if backend != "eager":
        _triton_ready(backend)
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


def test_functional_matches_module_and_docs():
    cfg = CONFIGS["gw16"]
    seq = make_modules(cfg)
    x = make_input(cfg, torch.float32)
    ref = seq(x)
    bn = seq[1]
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    seq2 = make_modules(cfg)
    out = conv_bn_act(x, seq2[0].weight, seq2[1].weight, seq2[1].bias, seq2[1].running_mean, seq2[1].running_var,
                      num_batches_tracked=seq2[1].num_batches_tracked, stride=1, groups=3, backend="eager")
    assert rel_err(out, ref) < 1e-6
    assert torch.allclose(seq2[1].running_mean, rm) and torch.allclose(seq2[1].running_var, rv)
    assert conv_bn_act.__doc__ and "Equivalent PyTorch" in conv_bn_act.__doc__


# --------------------------------------------------------------------------------------------------
# reference.py against stock torch.nn in float64
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["gw8_s2_odd", "stem_3to16_s2", "1x1_c24to40"])
def test_reference_matches_torch_nn_float64(name, training):
    cfg = CONFIGS[name]
    seq = make_modules(cfg)
    x = make_input(cfg, torch.float64)
    got = run(seq, x, torch.float64, training, fused_backend="eager", param_dtype=torch.float64)
    ref = run(seq, x, torch.float64, training, param_dtype=torch.float64)
    for key in ("out", "dx", "dw", "dgamma", "dbeta", "running_mean", "running_var"):
        assert rel_err(got[key], ref[key]) < 1e-12, (key, rel_err(got[key], ref[key]))


# --------------------------------------------------------------------------------------------------
# Autocast
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_autocast(backend):
    if backend != "eager":
        _triton_ready(backend)
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


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
def test_errors_name_the_problem():
    w = torch.randn(8, 4, 3, 3)
    g, b = torch.ones(8), torch.zeros(8)
    x = torch.randn(2, 8, 5, 5)
    with pytest.raises(TypeError, match="floating point"):
        conv_bn_act(x.to(torch.int32), w.to(torch.int32), g, b, groups=2)
    with pytest.raises(TypeError, match="dtypes differ"):
        conv_bn_act(x.half(), w, g, b, groups=2)
    with pytest.raises(ValueError, match="channels"):
        conv_bn_act(torch.randn(2, 6, 5, 5), w, g, b, groups=2)
    with pytest.raises(ValueError, match="4-D input"):
        conv_bn_act(torch.randn(8, 5, 5), w, g, b, groups=2)
    with pytest.raises(ValueError, match="groups"):
        conv_bn_act(x, w, g, b, groups=3)
    with pytest.raises(ValueError, match="bn weight must have shape"):
        conv_bn_act(x, w, torch.ones(5), b, groups=2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        conv_bn_act(torch.randn(1, 8, 1, 1), torch.randn(8, 8, 1, 1), g, b)
    with pytest.raises(RuntimeError, match="same device"):
        conv_bn_act(x, w.to("meta"), g, b, groups=2)
    with pytest.raises(ValueError, match="activation"):
        conv_bn_act(x, w, g, b, groups=2, activation="gelu")
    with pytest.raises(ValueError, match="eval mode"):
        conv_bn_act(x, w, g, b, groups=2, training=False)
    with pytest.raises(ValueError, match="unknown backend"):
        conv_bn_act(x, w, g, b, groups=2, backend="tpu")
    # an explicit backend that cannot run says why, for every backend
    with pytest.raises(backends.BackendUnavailableError, match="cuda"):
        conv_bn_act(x, w, g, b, groups=2, backend="cuda")
    with pytest.raises(backends.BackendUnavailableError, match="float64"):
        conv_bn_act(x.double(), w.double(), g.double(), b.double(), groups=2, backend="triton")


def test_module_rejects_unsupported():
    with pytest.raises(ValueError, match="bias"):
        FusedConvBNAct2d(nn.Conv2d(4, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="dilation"):
        FusedConvBNAct2d(nn.Conv2d(4, 4, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="features"):
        FusedConvBNAct2d(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(5))


# --------------------------------------------------------------------------------------------------
# torch.library: opcheck and torch.compile
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_opcheck(backend):
    if backend != "eager":
        _triton_ready(backend)
    import importlib

    mod = importlib.import_module("regnet_kernels.ops.conv_bn_act")

    torch.manual_seed(0)
    dev = DEVICE
    x = torch.randn(2, 16, 6, 6, device=dev, requires_grad=True)
    w = (torch.randn(16, 8, 3, 3, device=dev) * 0.2).requires_grad_()
    g = (torch.rand(16, device=dev) + 0.5).requires_grad_()
    b = torch.randn(16, device=dev).requires_grad_()
    rm, rv = torch.randn(16, device=dev), torch.rand(16, device=dev) + 0.5
    torch.library.opcheck(mod._train_op, (x, w, g, b, 1, 1, 2, 1e-5, True, -1, backend))
    torch.library.opcheck(mod._train_op, (x, w, None, None, 2, 1, 2, 1e-5, False, -1, backend))
    torch.library.opcheck(mod._eval_op, (x, w, g, b, rm, rv, 1, 1, 2, 1e-5, True, backend))
    out, y, mean, invstd, _ = mod._train_op(x, w, g, b, 1, 1, 2, 1e-5, True, -1, backend)
    go = torch.randn_like(out)
    torch.library.opcheck(mod._train_bwd_op, (go, x.detach(), w.detach(), y, mean, invstd, g.detach(), b.detach(),
                                              1, 1, 2, True, [True, True, True, True], -1, backend))
    zeros, ones = torch.zeros(16, device=dev), torch.ones(16, device=dev)
    torch.library.opcheck(mod.update_running_stats_op, (zeros, ones, None, mean.detach(), invstd.detach(), 0.1, False, backend))
    torch.library.opcheck(mod.update_running_stats_op, (zeros.clone(), ones.clone(), torch.tensor(3, device=dev), mean.detach(),
                                           invstd.detach(), 0.0, True, backend))


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1, groups=2, bias=False), nn.BatchNorm2d(32), nn.ReLU()),
        nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    )


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend):
    _triton_ready()
    import regnet_kernels as rk

    ref = _tiny_net().to(DEVICE)
    model = rk.optimize(copy.deepcopy(ref), backend="triton")
    torch._dynamo.reset()
    cmodel = torch.compile(model, fullgraph=True, backend=compile_backend)
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    out = cmodel(x)
    out.square().sum().backward()
    ref_out = ref(x)
    ref_out.square().sum().backward()
    assert rel_err(out, ref_out) < 1e-4
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert rel_err(p.grad, q.grad) < 1e-4, n
    for (n, b1), (_, b2) in zip(model.named_buffers(), ref.named_buffers()):
        assert rel_err(b1, b2) < 1e-5 if b1.is_floating_point() else torch.equal(b1, b2), n
    model.eval()
    ref.eval()
    assert rel_err(cmodel(x), ref(x)) < 1e-4


def test_reference_count_identity():
    """The sum of a tiny conv over all outputs equals a hand count: guards the implicit-GEMM indexing."""
    _triton_ready()
    x = torch.ones(1, 2, 3, 3, device=DEVICE)
    w = torch.ones(2, 1, 3, 3, device=DEVICE)
    out = conv_bn_act(x, w, None, None, torch.zeros(2, device=DEVICE), torch.ones(2, device=DEVICE) - 1e-5, groups=2,
                      training=False, activation=None, backend="triton", eps=1e-5).cpu()
    # each output pixel sums the 3x3 window inside the zero-padded 3x3 image: corners 4, edges 6, centre 9
    expect = torch.tensor([[4.0, 6, 4], [6, 9, 6], [4, 6, 4]])
    assert torch.allclose(out[0, 0], expect, atol=1e-4) and torch.allclose(out[0, 1], expect, atol=1e-4)
    assert math.isclose(out.sum().item(), 2 * 49.0, rel_tol=1e-5)
