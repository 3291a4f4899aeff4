"""Per-model benchmark: inference and a full training step (fwd + bwd + SGD) per provider.

The workloads, providers and timing are :mod:`regnet_kernels.benchmark`'s (the report's). GPU: each of
``--bench-models`` at 224x224, batch 256 (infer) / 128 (train) unless ``--bench-batch``. CPU: a tiny
regnet_y_400mf (batch 2, 64x64) for the providers that run there at speed (eager and auto), so the suite
is exercised; the rest skip with the reason.
"""
from __future__ import annotations

import functools

import pytest
import torch

from _bench_utils import DEVICE, HAS_CUDA, bench_models, median_s, option, run_pedantic
from regnet_kernels.benchmark import providers as P
from regnet_kernels.benchmark import roofline as R
from regnet_kernels.benchmark.timing import rotating_inputs, time_fn

MODES = ("infer", "train")
CPU_MODEL, CPU_BATCH, CPU_RES = "regnet_y_400mf", 2, 64


@functools.lru_cache(maxsize=4)
def _base(model: str):
    return P.base_model(model, DEVICE)


def pytest_generate_tests(metafunc):
    if "model_name" not in metafunc.fixturenames:
        return
    params = []
    for model in bench_models(metafunc.config):
        marks = () if (model == CPU_MODEL) else (pytest.mark.gpu,)
        params.append(pytest.param(model, id=model, marks=marks))
    metafunc.parametrize("model_name", params)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", P.PROVIDERS)
def test_model(benchmark, model_name, mode, provider, request):
    dtype = option(request.config, "--bench-dtype", "bf16")
    reason = P.why_not(provider, DEVICE, purpose="time", dtype=dtype)
    if reason is not None:
        pytest.skip(reason)
    if HAS_CUDA:
        batch = option(request.config, "--bench-batch") or (256 if mode == "infer" else 128)
        res = 224
    else:
        batch, res = CPU_BATCH, CPU_RES
    wl = P.Workload(model_name, mode, batch, res, dtype, DEVICE)
    compile_mode = option(request.config, "--bench-compile-mode", "default")
    base = _base(model_name)
    built = P.build(provider, wl, base, compile_mode=None if compile_mode == "default" else compile_mode)
    layout = built.layout
    inputs = rotating_inputs(lambda i: wl.make_inputs(i, layout), wl.input_bytes, DEVICE)
    built = P.with_compile_fallback(built, base, inputs[0])
    regime = P.model_regime(provider, built.backend_resolved, built.fusion)
    traffic = R.model_traffic(model_name, regime=regime, mode=mode, batch=batch, resolution=res, dtype=dtype)
    info = {"model": model_name, "mode": mode, "provider": provider, "dtype": dtype, "batch": batch,
            "resolution": res, "device": str(DEVICE), "layout": built.layout, "model_regime": regime,
            "model_bytes": traffic.bytes, "backend_resolved": built.backend_resolved, "notes": built.notes}
    with built.active():
        if HAS_CUDA:
            t = time_fn(built.step, inputs, device=DEVICE, warmup=5, reps=20, bytes_per_set=wl.input_bytes)
            spec = R.match_device(torch.cuda.get_device_name())
            info.update(ms_events_median=t.ms_median, img_per_s=batch / t.ms_median * 1e3,
                        peak_mem_bytes=t.peak_mem_bytes, gbps_events=traffic.bytes / (t.ms_median * 1e-3) / 1e9)
            if spec is not None:
                info["pct_of_floor"] = 100 * traffic.floor_ms(spec) / t.ms_median
        rounds, warm = (20, 3) if HAS_CUDA else (3, 1)
        run_pedantic(benchmark, built.step, inputs, rounds=rounds, warmup_rounds=warm)
    med = median_s(benchmark)
    if med:
        info["gbps"] = traffic.bytes / med / 1e9
        info.setdefault("img_per_s", batch / med)
    benchmark.extra_info.update(info)
    if HAS_CUDA:
        torch.cuda.empty_cache()
