"""The tile configurations a GPU gets, checked for numerics under the interpreter.

``kernels/triton/config.py`` gives the interpreter small tiles and a GPU the tiles the ahead-of-time report
sized (128-row tiles, 16-wide reductions, fp32 tiles for the FMA dot, split-K wgrad...). Those GPU tiles
only run on a GPU, so here the launchers are made to plan for an sm_90 target while the kernels still run
in the interpreter: every GPU tile path is checked against eager on the CPU.
"""
import contextlib

import pytest
import torch

from regnet_kernels.ops import conv_bn_act, squeeze_excite
from regnet_kernels.testing import check

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the GPU configs run for real")


@contextlib.contextmanager
def gpu_tiles(monkeypatch):
    from regnet_kernels.kernels.triton import block, bn, config, conv, se

    sm90 = config.Target(False, 132, 90)
    for mod in (block, bn, conv, se):
        monkeypatch.setattr(mod, "target", lambda device, t=sm90: t)
    # the interpreter's bf16 dot is broken (numpy has no bf16): the dots stay upcast as they are here
    dot_in_fp32 = conv.dot_in_fp32
    monkeypatch.setattr(conv, "dot_in_fp32", lambda dtype, interpret=True: dot_in_fp32(dtype, True))
    yield


def _rand(*shape, dtype=torch.float32, gen):
    return torch.randn(*shape, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k,groups,stride,cin,cout", [(1, 1, 1, 48, 40), (3, 5, 2, 40, 40), (3, 1, 1, 16, 24)])
def test_conv_bn_act_train_with_gpu_tiles(monkeypatch, dtype, k, groups, stride, cin, cout):
    gen = torch.Generator().manual_seed(k * 10 + groups)
    x = _rand(2, cin, 9, 9, dtype=dtype, gen=gen).contiguous(memory_format=torch.channels_last)
    w = (_rand(cout, cin // groups, k, k, gen=gen) * 0.3).to(dtype)
    g, b = torch.rand(cout, generator=gen) + 0.5, _rand(cout, gen=gen) * 0.1
    outs = {}
    for backend in ("eager", "triton", "fp64"):
        ctx = gpu_tiles(monkeypatch) if backend == "triton" else contextlib.nullcontext()
        with ctx:
            cast = (lambda t: t.double()) if backend == "fp64" else (lambda t: t)
            ts = [cast(t).detach().clone().requires_grad_(True) for t in (x, w, g, b)]
            rm, rv = torch.zeros(cout, dtype=ts[2].dtype), torch.ones(cout, dtype=ts[2].dtype)
            y = conv_bn_act(*ts, rm, rv, stride=stride, padding=k // 2, groups=groups, training=True,
                            backend="eager" if backend == "fp64" else backend)
            (y.double() * torch.linspace(-1, 1, y.numel()).view_as(y).double()).sum().backward()
            outs[backend] = [y] + [t.grad for t in ts] + [rm, rv]
    for i, (got, ref, exact) in enumerate(zip(outs["triton"], outs["eager"], outs["fp64"])):
        check(f"tensor {i}", got, ref, exact, dtype)


def test_squeeze_excite_with_gpu_tiles(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    x = _rand(3, 40, 5, 5, gen=gen).contiguous(memory_format=torch.channels_last)
    p = [_rand(10, 40, gen=gen) * 0.2, _rand(10, gen=gen) * 0.1, _rand(40, 10, gen=gen) * 0.2, _rand(40, gen=gen) * 0.1]
    outs = {}
    for backend in ("eager", "triton", "fp64"):
        ctx = gpu_tiles(monkeypatch) if backend == "triton" else contextlib.nullcontext()
        with ctx:
            cast = (lambda t: t.double()) if backend == "fp64" else (lambda t: t)
            ts = [cast(t).detach().clone().requires_grad_(True) for t in [x] + p]
            y = squeeze_excite(*ts, backend="eager" if backend == "fp64" else backend)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y).to(y.dtype)).sum().backward()
            outs[backend] = [y] + [t.grad for t in ts]
    for i, (got, ref, exact) in enumerate(zip(outs["triton"], outs["eager"], outs["fp64"])):
        check(f"tensor {i}", got, ref, exact, torch.float32)


@pytest.mark.parametrize("training", [False, True])
def test_whole_blocks_with_gpu_tiles(monkeypatch, training):
    import copy

    import regnet_kernels as rk
    from regnet_kernels import models
    from regnet_kernels.testing import rel_err

    torch.manual_seed(0)
    params = models.RegNetParams(depth=3, w_0=16, w_a=8, w_m=2.0, group_width=8, se_ratio=0.25, stem_width=16)
    base = models.RegNet(params, num_classes=10).double().train(training)
    fused = rk.optimize(copy.deepcopy(base).float(), backend="triton")
    ref32 = copy.deepcopy(base).float()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    outs = []
    for m, ctx in ((base, contextlib.nullcontext()), (ref32, contextlib.nullcontext()), (fused, gpu_tiles(monkeypatch))):
        with ctx:
            xx = x.to(next(m.parameters()).dtype)
            y = m(xx)
            if training:
                y.sum().backward()
        outs.append([y] + ([p.grad for p in m.parameters()] if training else []))
    for got, eager, exact in zip(outs[2], outs[1], outs[0]):
        assert rel_err(got, exact) <= 2 * rel_err(eager, exact) + 1e-5
