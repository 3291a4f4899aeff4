"""Training with the fused model: mixed precision (bf16 autocast, fp16 + GradScaler, overflow steps skipped
exactly as eager skips them), torch.compile(fullgraph=True) training, and CUDA-graph capture (GPU)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import regnet_kernels as rk
from regnet_kernels.testing import rel_err
from conftest import DEVICE, kernel_ready
from regnet_kernels.models import RegNet, RegNetParams

TINY_Y = RegNetParams(depth=3, w_0=16, w_a=8, w_m=2.0, group_width=8, se_ratio=0.25, stem_width=16)


def _model(seed=0):
    torch.manual_seed(seed)
    return RegNet(TINY_Y, num_classes=10)


def _batch(seed=1, n=4, res=32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, res, res, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _step(model, x, y, dtype, scaler=None):
    """One AMP training step; returns loss, unscaled grads, buffers, whether the optimizer stepped."""
    model = model.to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast(DEVICE.type, dtype=dtype):
        loss = nn.functional.cross_entropy(model(x.to(DEVICE)), y.to(DEVICE))
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = {n: p.grad.detach().clone().cpu() for n, p in model.named_parameters()}
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        grads = {n: p.grad.detach().clone().cpu() for n, p in model.named_parameters()}
        opt.step()
    stepped = any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
    buffers = {n: b.detach().clone().cpu() for n, b in model.named_buffers() if b.is_floating_point()}
    return loss.detach().float().cpu(), grads, buffers, stepped


def _oracle(model, x, y):
    m = copy.deepcopy(model).double()
    loss = nn.functional.cross_entropy(m(x.double()), y)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in m.named_parameters()}, {
        n: b for n, b in m.named_buffers() if b.is_floating_point()}


def _flat(d):
    return torch.cat([v.double().flatten() for v in d.values()])


def _assert_rule(got, eager, gold, k=2.0, floor=2e-3):
    """flash-attention rule against the float64 oracle over the whole gradient (or buffer) vector.

    Per tensor the rule is noise at this size under AMP: a tiny model normalises its last stage over a few
    dozen values, and per-tensor errors of eager torch itself, of our eager reference and of the kernels
    scatter by 5-10x around each other on the smallest tensors (SE biases), all well within bf16/fp16
    rounding of the whole. The global vector is the stable measure; every tensor must still be finite."""
    for key in gold:
        assert torch.isfinite(got[key]).all(), key
    e_got, e_eager = rel_err(_flat(got), _flat(gold)), rel_err(_flat(eager), _flat(gold))
    assert e_got <= k * e_eager + floor, (e_got, e_eager)


@pytest.mark.parametrize("amp", ["bf16", "fp16_scaler"])
def test_amp_training_matches_eager(amp):
    kernel_ready("triton", "bottleneck")
    ref = _model()
    fused = rk.optimize(copy.deepcopy(ref), backend="triton")
    x, y = _batch()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16

    def scaler():
        return torch.amp.GradScaler(DEVICE.type, init_scale=2.0 ** 10) if amp == "fp16_scaler" else None

    gold_loss, gold_grads, gold_bufs = _oracle(ref, x, y)
    f_loss, f_grads, f_bufs, f_stepped = _step(fused, x, y, dtype, scaler())
    e_loss, e_grads, e_bufs, e_stepped = _step(copy.deepcopy(ref), x, y, dtype, scaler())
    assert f_stepped and e_stepped
    assert rel_err(f_loss, gold_loss) <= 2 * rel_err(e_loss, gold_loss) + 2e-3
    _assert_rule(f_grads, e_grads, gold_grads)
    _assert_rule(f_bufs, e_bufs, gold_bufs)


def test_fp16_overflow_step_is_skipped_like_eager():
    """With an absurd loss scale the fp16 gradients overflow: the scaler must see inf/NaN from the fused
    model too, skip the step, and back off its scale exactly as for eager."""
    kernel_ready("triton", "bottleneck")
    ref = _model()
    fused = rk.optimize(copy.deepcopy(ref), backend="triton")
    x, y = _batch()
    scalers = [torch.amp.GradScaler(DEVICE.type, init_scale=2.0 ** 40) for _ in range(2)]
    _, _, _, f_stepped = _step(fused, x, y, torch.float16, scalers[0])
    _, _, _, e_stepped = _step(copy.deepcopy(ref), x, y, torch.float16, scalers[1])
    assert not e_stepped, "eager should have skipped the overflowing step"
    assert not f_stepped, "the fused model must skip the step eager skips"
    assert scalers[0].get_scale() == scalers[1].get_scale() < 2.0 ** 40


def test_compile_fullgraph_training():
    """torch.compile(fullgraph=True) of a whole optimized model trains (fullgraph raises on any break)."""
    kernel_ready("triton", "bottleneck")
    ref = _model().to(DEVICE)
    fused = rk.optimize(copy.deepcopy(ref), backend="triton")
    torch._dynamo.reset()
    cfused = torch.compile(fused, fullgraph=True, backend="aot_eager")
    opt_f = torch.optim.SGD(fused.parameters(), lr=0.1)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(2):
        x, y = _batch(seed=10 + step)
        x, y = x.to(DEVICE), y.to(DEVICE)
        for model, opt in ((cfused, opt_f), (ref, opt_r)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for (n, p), (_, q) in zip(fused.named_parameters(), ref.named_parameters()):
        assert rel_err(p, q) < 1e-4, n
    for (n, b1), (_, b2) in zip(fused.named_buffers(), ref.named_buffers()):
        assert (rel_err(b1, b2) < 1e-4) if b1.is_floating_point() else torch.equal(b1, b2), n


@pytest.mark.gpu
def test_cuda_graph_capture_train_and_infer():
    """A fused model's training step and inference capture in a CUDA graph and replay correctly."""
    kernel_ready("triton", "bottleneck")
    ref = _model().cuda()
    fused = rk.optimize(copy.deepcopy(ref), backend="triton")
    opt = torch.optim.SGD(fused.parameters(), lr=0.1)
    static_x, static_y = (t.cuda() for t in _batch())
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (Triton compiles, allocator settles) off the capture
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(fused(static_x), static_y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        static_loss = nn.functional.cross_entropy(fused(static_x), static_y)
        static_loss.backward()
        opt.step()
    x2, y2 = (t.cuda() for t in _batch(seed=7))
    static_x.copy_(x2)
    static_y.copy_(y2)
    g.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(static_loss).all()
    # inference graph
    fused.eval()
    with torch.no_grad():
        out_eager = fused(x2)
        gi = torch.cuda.CUDAGraph()
        with torch.cuda.graph(gi):
            static_out = fused(static_x)
        gi.replay()
    torch.cuda.synchronize()
    assert rel_err(static_out, out_eager) < 1e-5


@pytest.mark.gpu
def test_compile_reduce_overhead():
    kernel_ready("triton", "bottleneck")
    fused = rk.optimize(_model().cuda().eval(), backend="triton")
    x = _batch()[0].cuda()
    with torch.no_grad():
        ref = fused(x)
        torch._dynamo.reset()
        c = torch.compile(fused, mode="reduce-overhead", fullgraph=True)
        for _ in range(3):
            out = c(x)
    assert rel_err(out, ref) < 1e-4
