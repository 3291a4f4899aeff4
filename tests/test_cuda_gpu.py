"""The hand-written CUDA backend on a GPU (``@pytest.mark.gpu``; skipped cleanly without one): CUDA vs
Triton on real regnet_y_1_6gf stage shapes (bf16, batch 8), CUDA-graph capture of a train step,
compute-sanitizer memcheck / racecheck, every output element written and bitwise determinism, the CuPy
JIT fallback vs the compiled extension. The CPU side (extension, registry, setup.py, JIT, emulation) is
test_cuda_backend.py.
"""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from cuda_helpers import ROOT, SETUP, check_fully_written_and_deterministic, extension
from regnet_kernels import backends
from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.cuda import ext as _cuda_ext
from regnet_kernels.ops import conv_bn_act, squeeze_excite
from regnet_kernels.testing import check, rel_err


def _gpu_cuda_ready():
    reason = backends.why_not("cuda", [torch.empty(1, device="cuda")])
    if reason is not None:
        pytest.skip(f"cuda backend unavailable: {reason}")


def _stage_convs(model_name: str = "regnet_y_1_6gf", resolution: int = 224):
    """Every distinct conv of a RegNet: ``(label, C_in, C_out, H, kernel, stride, groups)`` plus the SE shapes
    ``(label, C, S, H)``."""
    from regnet_kernels.models import get_model_params

    params = get_model_params(model_name)
    convs = {("stem", 3, params.stem_width, resolution, 3, 2, 1)}
    ses = set()
    h = resolution // 2
    for b in params.blocks():
        ho = h // b.stride
        wb = b.bottleneck_width
        tag = f"s{b.stage}b{min(b.index, 1)}"
        convs.add((f"{tag}_a", b.width_in, wb, h, 1, 1, 1))
        convs.add((f"{tag}_b", wb, wb, h, 3, b.stride, wb // b.group_width))
        convs.add((f"{tag}_c", wb, b.width_out, ho, 1, 1, 1))
        if b.stride != 1 or b.width_in != b.width_out:
            convs.add((f"{tag}_proj", b.width_in, b.width_out, h, 1, b.stride, 1))
        if b.se_width:
            ses.add((f"{tag}_se", wb, b.se_width, ho))
        h = ho
    uniq = {}
    for c in sorted(convs):
        uniq.setdefault(c[1:], c)
    return sorted(uniq.values()), sorted(ses)


def _conv_case(c_in, c_out, h, k, stride, groups, dtype, batch, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(batch, c_in, h, h, device="cuda", generator=gen).to(dtype).contiguous(
        memory_format=torch.channels_last)
    w = (torch.randn(c_out, c_in // groups, k, k, device="cuda", generator=gen) / (c_in // groups * k * k) ** 0.5)
    g = torch.rand(c_out, device="cuda", generator=gen) + 0.5
    b = torch.randn(c_out, device="cuda", generator=gen) * 0.2
    rm = torch.randn(c_out, device="cuda", generator=gen) * 0.2
    rv = torch.rand(c_out, device="cuda", generator=gen) + 0.5
    return x, w.to(dtype), g, b, rm, rv


@pytest.mark.gpu
def test_gpu_cuda_matches_triton_on_regnet_stages():
    """conv_bn_act train/eval fwd+bwd and SE fwd+bwd on every distinct regnet_y_1_6gf shape, bf16, batch 8:
    the CUDA kernels' error vs float64 is within 2x Triton's (plus the bf16 floor)."""
    _gpu_cuda_ready()
    from regnet_kernels.ops.dispatch import bind
    cu = bind("regnet_kernels.ops.conv_bn_act", "cuda")
    from regnet_kernels.ops.conv_bn_act import reference as ref
    tri = bind("regnet_kernels.ops.conv_bn_act", "triton")
    se_cu = bind("regnet_kernels.ops.squeeze_excite", "cuda")
    from regnet_kernels.ops.squeeze_excite import reference as se_ref
    se_tri = bind("regnet_kernels.ops.squeeze_excite", "triton")

    dtype, batch = torch.bfloat16, 8
    convs, ses = _stage_convs()
    mask = [True] * 4
    for label, c_in, c_out, h, k, s, groups in convs:
        x, w, g, b, rm, rv = _conv_case(c_in, c_out, h, k, s, groups, dtype, batch)
        x64, w64 = x.double(), w.double()
        args = (s, k // 2, groups)
        outs = {m: mod.conv_bn_act_train(x, w, g, b, *args, 1e-5, Act.RELU)
                for m, mod in (("cuda", cu), ("triton", tri))}
        r64 = ref.conv_bn_act_train(x64, w64, g.double(), b.double(), *args, 1e-5, Act.RELU)
        for i, key in enumerate(("out", "y", "mean", "invstd", "var_unb")):
            check(f"{label} train {key}", outs["cuda"][i], outs["triton"][i], r64[i], dtype)
        go = torch.randn_like(outs["cuda"][0])
        gr = {m: mod.conv_bn_act_train_backward(go, x, w, outs[m][1], outs[m][2], outs[m][3], g, b, *args, Act.RELU,
                                                mask)
              for m, mod in (("cuda", cu), ("triton", tri))}
        g64 = ref.conv_bn_act_train_backward(go.double(), x64, w64, r64[1], r64[2], r64[3], g.double(), b.double(),
                                             *args, Act.RELU, mask)
        for i, key in enumerate(("dx", "dw", "dgamma", "dbeta")):
            check(f"{label} train {key}", gr["cuda"][i], gr["triton"][i], g64[i], dtype)
        ev = {m: mod.conv_bn_act_eval(x, w, g, b, rm, rv, *args, 1e-5, Act.RELU) for m, mod in (("cuda", cu),
                                                                                          ("triton", tri))}
        e64 = ref.conv_bn_act_eval(x64, w64, g.double(), b.double(), rm.double(), rv.double(), *args, 1e-5, Act.RELU)
        check(f"{label} eval out", ev["cuda"], ev["triton"], e64, dtype)
        eg = {m: mod.conv_bn_act_eval_backward(go, x, w, ev[m], g, b, rm, rv, *args, 1e-5, Act.RELU, mask)
              for m, mod in (("cuda", cu), ("triton", tri))}
        eg64 = ref.conv_bn_act_eval_backward(go.double(), x64, w64, e64, g.double(), b.double(), rm.double(),
                                             rv.double(), *args, 1e-5, Act.RELU, mask)
        for i, key in enumerate(("dx", "dw", "dgamma", "dbeta")):
            check(f"{label} eval {key}", eg["cuda"][i], eg["triton"][i], eg64[i], dtype)
    for label, c, s, h in ses:
        gen = torch.Generator(device="cuda").manual_seed(1)
        x = torch.randn(batch, c, h, h, device="cuda", generator=gen).to(dtype).contiguous(
            memory_format=torch.channels_last)
        w1 = torch.randn(s, c, 1, 1, device="cuda", generator=gen) * 0.3
        b1 = torch.randn(s, device="cuda", generator=gen) * 0.3
        w2 = torch.randn(c, s, 1, 1, device="cuda", generator=gen) * 0.3
        b2 = torch.randn(c, device="cuda", generator=gen) * 0.3
        p64 = [t.double() for t in (w1, b1, w2, b2)]
        fw = {m: mod.squeeze_excite(x, w1, b1, w2, b2) for m, mod in (("cuda", se_cu), ("triton", se_tri))}
        f64 = se_ref.squeeze_excite(x.double(), *p64)
        for i, key in enumerate(("out", "pooled", "gate")):
            check(f"{label} {key}", fw["cuda"][i], fw["triton"][i], f64[i], dtype)
        go = torch.randn_like(fw["cuda"][0])
        bw = {m: mod.squeeze_excite_backward(go, x, w1, b1, w2, b2, fw[m][1], fw[m][2], [True] * 5)
              for m, mod in (("cuda", se_cu), ("triton", se_tri))}
        b64 = se_ref.squeeze_excite_backward(go.double(), x.double(), *p64, f64[1], f64[2], [True] * 5)
        for i, key in enumerate(("dx", "dw1", "db1", "dw2", "db2")):
            check(f"{label} {key}", bw["cuda"][i], bw["triton"][i], b64[i], dtype)


def _tiny_se_net():
    from regnet_kernels.models import SqueezeExcitation

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1, groups=2, bias=False), nn.BatchNorm2d(32), nn.ReLU()),
        SqueezeExcitation(32, 8),
        nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32, momentum=None)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    )


@pytest.mark.gpu
def test_gpu_cuda_graph_train_step():
    """A whole train step (forward, backward, SGD, BN buffers) of an optimize(backend="cuda") model captured
    in a CUDA graph and replayed matches the same steps run eagerly."""
    _gpu_cuda_ready()
    import regnet_kernels as rk

    base = _tiny_se_net().cuda()
    eager_m = rk.optimize(copy.deepcopy(base), backend="cuda")
    graph_m = rk.optimize(copy.deepcopy(base), backend="cuda")
    xs = [torch.randn(4, 3, 16, 16, device="cuda") for _ in range(6)]
    ys = [torch.randint(0, 5, (4,), device="cuda") for _ in range(6)]

    def step(model, opt, x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    opt_e = torch.optim.SGD(eager_m.parameters(), lr=0.1, momentum=0.9)
    opt_g = torch.optim.SGD(graph_m.parameters(), lr=0.1, momentum=0.9)
    static_x, static_y = xs[0].clone(), ys[0].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (module loading, optimizer state) off the capture stream
        for i in range(2):
            opt_g.zero_grad(set_to_none=True)
            static_x.copy_(xs[i])
            static_y.copy_(ys[i])
            step(graph_m, opt_g, static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    for i in range(2):
        opt_e.zero_grad(set_to_none=True)
        step(eager_m, opt_e, xs[i], ys[i])
    graph = torch.cuda.CUDAGraph()
    opt_g.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = step(graph_m, opt_g, static_x, static_y)
    for i in range(2, 6):
        static_x.copy_(xs[i])
        static_y.copy_(ys[i])
        graph.replay()
        opt_e.zero_grad(set_to_none=True)
        loss_e = step(eager_m, opt_e, xs[i], ys[i])
        assert rel_err(static_loss, loss_e) < 1e-5, i
    torch.cuda.synchronize()
    for (n, p), (_, q) in zip(graph_m.named_parameters(), eager_m.named_parameters()):
        assert rel_err(p, q) < 1e-5, n
    for (n, a), (_, b) in zip(graph_m.named_buffers(), eager_m.named_buffers()):
        assert (rel_err(a, b) < 1e-5) if a.is_floating_point() else torch.equal(a, b), n


_SANITIZER_SCRIPT = textwrap.dedent("""
    import torch
    from regnet_kernels.ops.dispatch import bind
    cu = bind("regnet_kernels.ops.conv_bn_act", "cuda")
    se = bind("regnet_kernels.ops.squeeze_excite", "cuda")
    torch.manual_seed(0)
    cases = [(2, 3, 16, 9, 3, 2, 1), (2, 32, 32, 9, 3, 2, 4), (1, 224, 224, 4, 3, 2, 2), (3, 24, 40, 7, 1, 1, 1),
             (2, 72, 72, 7, 3, 2, 3), (2, 48, 48, 5, 5, 1, 2)]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n, ci, co, h, k, s, g in cases:
            for cl in (False, True):
                x = torch.randn(n, ci, h, h + 1, device="cuda").to(dtype)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                w = (torch.randn(co, ci // g, k, k, device="cuda") * 0.2).to(dtype)
                gm, bt = torch.rand(co, device="cuda") + 0.5, torch.randn(co, device="cuda")
                rm, rv = torch.randn(co, device="cuda"), torch.rand(co, device="cuda") + 0.5
                out, y, mean, invstd, var = cu.conv_bn_act_train(x, w, gm, bt, s, k // 2, g, 1e-5, Act.RELU)
                go = torch.randn_like(out)
                cu.conv_bn_act_train_backward(go, x, w, y, mean, invstd, gm, bt, s, k // 2, g, Act.RELU, [True] * 4)
                e = cu.conv_bn_act_eval(x, w, gm, bt, rm, rv, s, k // 2, g, 1e-5, Act.RELU)
                cu.conv_bn_act_eval_backward(go, x, w, e, gm, bt, rm, rv, s, k // 2, g, 1e-5, Act.RELU, [True] * 4)
                cu.update_running_stats(rm, rv, torch.tensor(3, device="cuda"), mean, var, 0.0, True)
        for n, c, sq, h in [(3, 48, 12, 9), (5, 40, 10, 6), (4, 24, 8, 1)]:
            x = torch.randn(n, c, h, h, device="cuda").to(dtype)
            p = [torch.randn(sq, c, device="cuda"), torch.randn(sq, device="cuda"),
                 torch.randn(c, sq, device="cuda"), torch.randn(c, device="cuda")]
            out, pooled, gate = se.squeeze_excite(x, *p)
            se.squeeze_excite_backward(torch.randn_like(out), x, *p, pooled, gate, [True] * 5)
    torch.cuda.synchronize()
    print("SANITIZER-SCRIPT-DONE")
""")


def _find_sanitizer():
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    nvcc = SETUP.find_nvcc()
    cands = ([Path(nvcc).resolve().parent / "compute-sanitizer"] if nvcc else []) + [
        Path("/usr/local/cuda/bin/compute-sanitizer"), Path("/usr/local/cuda/compute-sanitizer/compute-sanitizer")]
    for c in cands:
        if c.is_file():
            return str(c)
    return None


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_gpu_compute_sanitizer(tmp_path, tool):
    _gpu_cuda_ready()
    san = _find_sanitizer()
    if san is None:
        pytest.skip("compute-sanitizer not found")
    script = tmp_path / "sanitize_me.py"
    script.write_text(_SANITIZER_SCRIPT)
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1",  # every tensor its own allocation: OOB is visible
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [san, "--tool", tool, "--error-exitcode", "99", "--print-limit", "20"]
    if tool == "memcheck":
        cmd += ["--leak-check", "no"]
    res = subprocess.run(cmd + [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=1800)
    out = res.stdout + res.stderr
    assert "SANITIZER-SCRIPT-DONE" in out and res.returncode == 0, out[-6000:]
    assert "ERROR SUMMARY: 0 errors" in out or "RACECHECK SUMMARY: 0 hazards" in out, out[-6000:]


@pytest.mark.gpu
def test_gpu_outputs_fully_written_and_deterministic():
    _gpu_cuda_ready()
    check_fully_written_and_deterministic("cuda")


@pytest.mark.gpu
def test_gpu_cupy_fallback_matchesextension():
    """The CuPy/NVRTC JIT of the same sources gives the compiled extension's results."""
    _gpu_cuda_ready()
    pytest.importorskip("cupy")
    ext = extension()
    from regnet_kernels.ops.dispatch import bind
    cu = bind("regnet_kernels.ops.conv_bn_act", "cuda")
    se = bind("regnet_kernels.ops.squeeze_excite", "cuda")

    jit = _cuda_ext.CupyLib()
    torch.manual_seed(0)
    x = torch.randn(2, 32, 9, 9, device="cuda").half()
    w = (torch.randn(32, 8, 3, 3, device="cuda") * 0.2).half()
    g, b = torch.rand(32, device="cuda") + 0.5, torch.randn(32, device="cuda")
    p = [torch.randn(8, 32, device="cuda"), torch.randn(8, device="cuda"), torch.randn(32, 8, device="cuda"),
         torch.randn(32, device="cuda")]
    results = []
    for provider in (ext, jit):
        with _cuda_ext.use_lib(provider):
            out, y, mean, invstd, var = cu.conv_bn_act_train(x, w, g, b, 2, 1, 4, 1e-5, Act.RELU)
            grads = cu.conv_bn_act_train_backward(torch.ones_like(out), x, w, y, mean, invstd, g, b, 2, 1, 4, Act.RELU,
                                                  [True] * 4)
            so, pooled, gate = se.squeeze_excite(x.float(), *p)
            results.append([out, y, mean, invstd, *grads, so, pooled, gate])
    for a, c in zip(*results):
        assert rel_err(a, c) < 1e-6
