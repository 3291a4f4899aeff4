"""Per-op benchmark: fused conv + BN + ReLU over real RegNet stage shapes, every provider, fwd and fwd+bwd.

Shapes: per stage of regnet_y_400mf, regnet_y_1_6gf and regnet_x_3_2gf, the 1x1 conv a and the grouped
3x3 conv b of the stage's representative block (:func:`regnet_kernels.benchmark.shapes.stage_conv_shapes`),
batch 128 (``--bench-batch``), bf16 (``--bench-dtype``). GPU only; on CPU a tiny grouped conv runs
(Triton through the interpreter) so the suite stays exercised.

``extra_info`` carries the modelled bytes (standalone fused op: the minimum any provider must move; and
the eager conv, BN, ReLU sequence) and GB/s = fused-model bytes / median time, so providers compare
by effective bandwidth; on GPU also the median from CUDA events over rotating inputs.
"""
from __future__ import annotations

import pytest
import torch

from _bench_utils import DEVICE, HAS_CUDA, bench_models, median_s, option, run_pedantic
from regnet_kernels.benchmark import providers as P
from regnet_kernels.benchmark.shapes import TINY_SHAPE, stage_conv_shapes
from regnet_kernels.benchmark.timing import time_fn

MODES = ("infer", "train")


def pytest_generate_tests(metafunc):
    if "op_shape" not in metafunc.fixturenames:
        return
    batch = option(metafunc.config, "--bench-batch") or 128
    params = [pytest.param(("tiny-3x3g", TINY_SHAPE, True), id="tiny-3x3g")]
    for model in bench_models(metafunc.config):
        for s in stage_conv_shapes(model, batch=batch):
            params.append(pytest.param((s.id, s.shape, False), id=s.id, marks=pytest.mark.gpu))
    metafunc.parametrize("op_shape", params)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", P.OP_PROVIDERS)
def test_conv_bn_act(benchmark, op_shape, mode, provider, request):
    case_id, shape, tiny = op_shape
    dtype = option(request.config, "--bench-dtype", "bf16")
    if not HAS_CUDA and dtype == "bf16" and provider == "triton":
        dtype = "fp32"  # the interpreter upcasts bf16 dots anyway; fp32 keeps the CPU smoke case exact
    reason = P.op_why_not(provider, DEVICE, dtype, allow_interpreter=tiny)
    if reason is not None:
        pytest.skip(reason)
    compile_mode = option(request.config, "--bench-compile-mode", "default")
    case = P.build_op_case(provider, shape, mode, dtype, DEVICE,
                           compile_mode=None if compile_mode == "default" else compile_mode)
    case.fn(*case.inputs[0])  # compile / autotune / cuDNN search outside the timing
    info = {"case": case_id, "mode": mode, "provider": provider, "dtype": dtype, "device": str(DEVICE),
            "shape": {"n": shape.n, "c_in": shape.c_in, "hw": shape.h, "c_out": shape.c_out, "k": shape.kernel,
                      "stride": shape.stride, "groups": shape.groups},
            "bytes_fused_model": case.bytes_fused, "bytes_eager_model": case.bytes_eager, "flops": case.flops}
    if HAS_CUDA:
        t = time_fn(case.fn, case.inputs, device=DEVICE, warmup=5, reps=30, bytes_per_set=case.bytes_per_set)
        info.update(ms_events_median=t.ms_median, ms_events_p10=t.ms_p10, ms_events_p90=t.ms_p90,
                    gbps_events=case.bytes_fused / (t.ms_median * 1e-3) / 1e9, peak_mem_bytes=t.peak_mem_bytes)
    rounds, warm = (30, 5) if HAS_CUDA else (3, 1)
    run_pedantic(benchmark, case.fn, case.inputs, rounds=rounds, warmup_rounds=warm)
    med = median_s(benchmark)
    if med:
        info["gbps"] = case.bytes_fused / med / 1e9
    benchmark.extra_info.update(info)
    if HAS_CUDA:
        torch.cuda.empty_cache()
