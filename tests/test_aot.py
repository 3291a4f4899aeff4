"""GPU readiness without a GPU: the launch plan matches what runs, and every specialisation regnet_y_400mf
launches (bf16, inference and training) compiles for sm_90 without spills and with wgmma in its dots.

The compile gate caches results by specialisation (``REGNET_KERNELS_AOT_CACHE``, default
``~/.cache/regnet_kernels/aot``): a warm run takes seconds, a cold one a few minutes on 2 cores.
"""
from __future__ import annotations

import collections
import importlib

import pytest
import torch

from regnet_kernels.benchmark.plan import plan


def _nvidia_backend() -> None:
    try:
        importlib.import_module("triton.backends.nvidia.compiler")
    except Exception as e:  # pragma: no cover - depends on the triton build
        pytest.skip(f"triton has no NVIDIA backend here: {e}")


def _tiny():
    from regnet_kernels.models import RegNet, RegNetParams

    return RegNet(RegNetParams(depth=3, w_0=16, w_a=8, w_m=2.0, group_width=8, se_ratio=0.25, stem_width=16),
                  num_classes=10)


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_plan_matches_the_launches_that_run(mode):
    """The plan records exactly the launches (per kernel) that the interpreter runs for the same model."""
    import regnet_kernels as rk
    from conftest import kernel_ready

    kernel_ready("triton", "bottleneck")
    from regnet_kernels.kernels.triton.runtime import LAUNCHES

    torch.manual_seed(0)
    net = rk.optimize(_tiny().to(memory_format=torch.channels_last), backend="triton")
    net.train(mode == "train")
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    before = collections.Counter(LAUNCHES)
    if mode == "infer":
        with torch.no_grad():
            net(x)
    else:
        net(x).float().square().mean().backward()
    ran = collections.Counter(LAUNCHES)
    ran.subtract(before)
    ran = +ran
    p = plan(_tiny, mode, batch=2, resolution=32, dtype="fp32")
    planned = collections.Counter(la.label for la in p.launches)
    assert planned == ran
    assert all(la.num_warps in (1, 2, 4, 8, 16) and la.programs >= 1 for la in p.launches)


def test_plan_uses_the_config_home():
    from regnet_kernels.kernels.triton import config

    p = plan("regnet_y_400mf", "infer", batch=256, dtype="bf16")
    stem = p.launches[0]
    assert stem.kernel == "conv_fwd_kernel"
    c = stem.constexprs
    cfg = config.conv_fwd_config(256 * 112 * 112, 32, 3, 32, 3, 3, 2, config.Target.gpu(90))
    assert (c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], stem.num_warps, stem.num_stages) == tuple(cfg)
    assert stem.signature["x_ptr"] == "*bf16" and c["DOT_F32"] is False
    assert stem.flops == 2 * 256 * 112 * 112 * 32 * 3 * 9


def test_aot_gate_regnet_y_400mf_sm90(tmp_path):
    """CI gate: no compile error, no spill, wgmma in every bf16 dot (regnet_y_400mf, bf16, sm_90)."""
    _nvidia_backend()
    from regnet_kernels.benchmark.aot import format_report, gate_failures, run_aot

    (rep,) = run_aot(["regnet_y_400mf"], ["infer", "train"], 256, "bf16", [90], out_dir=tmp_path,
                     batches={"infer": 256, "train": 128}, progress=False)
    assert (tmp_path / "aot-regnet_y_400mf-sm_90.json").exists()
    failures = gate_failures(rep)
    assert not failures, "\n".join(failures + format_report(rep, top=10))
    # the bf16 dots (the convs) must run on wgmma; the SE FCs multiply fp32 vectors in IEEE fp32 by design
    half = [r for r in rep["specialisations"] if r["has_dot"] and not r["constexprs"].get("DOT_F32")
            and any(t in ("*bf16", "*fp16") for t in r["signature"].values())]
    assert half and all(r["wgmma"] for r in half)
    assert {r["kernel"] for r in half} >= {"conv_fwd_kernel", "conv_dgrad_kernel", "conv_wgrad_kernel"}
    for p in rep["plans"]:
        assert p["predicted_ms"]["h200"] <= p["predicted_ms"]["h100_sxm"]


def test_sass_load_counts():
    """Async 16-byte copies count as vector loads, their barrier as no load, narrow loads as scalar."""
    from regnet_kernels.benchmark.aot import sass_facts

    sass = """
        /*0100*/  LDGSTS.E.BYPASS.LTC128B.128 [R1], desc[UR4][R2.64] ;
        /*0110*/  LDGDEPBAR ;
        /*0120*/  LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0130*/  LDG.E.U16 R5, desc[UR4][R6.64] ;
        /*0140*/  LDGSTS.E.64 [R1], desc[UR4][R2.64] ;
        /*0150*/  HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24 ;
    """
    f = sass_facts(sass)
    assert (f["vector_loads"], f["scalar_loads"], f["wgmma"]) == (3, 1, 1)
