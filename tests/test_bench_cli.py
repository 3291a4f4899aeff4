"""``python -m regnet_kernels bench`` (the default run, timed) end to end on this machine, the bench/ suite's
collection, and the measurement helpers (saved-activation counting, timing statistics, providers, shapes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import regnet_kernels
from regnet_kernels import backends, cli
from regnet_kernels.benchmark import providers as P
from regnet_kernels.benchmark import report, timing
from regnet_kernels.benchmark.memory import saved_activation_bytes
from regnet_kernels.benchmark.roofline import REGIMES
from regnet_kernels.benchmark.shapes import stage_conv_shapes

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# The CLI's default run, once per module (the main job; on a machine without a GPU this is the CPU default:
# interpreter numerics in three dtypes, fp32 eager timing, the traffic model)
# ------------------------------------------------------------------------------------------------
#: The main job must finish within 2 minutes on an idle 2-core machine; CI machines are shared and busy.
DEFAULT_RUN_BOUND_S = 240.0


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    import contextlib
    import io
    import time

    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["bench", "--out", str(out)])
    wall = time.perf_counter() - t0
    print(f"\npython -m regnet_kernels bench (default): {wall:.1f} s wall")
    jsons = sorted(out.glob("*.json"))
    assert len(jsons) == 1, list(out.iterdir())
    return rc, json.loads(jsons[0].read_text()), sorted(out.glob("*.png")), buf.getvalue(), jsons[0], wall


@pytest.mark.slow
def test_default_run_is_quick(default_run):
    *_, wall = default_run
    if torch.cuda.is_available():
        pytest.skip("the time bound is the CPU default's")
    assert wall < DEFAULT_RUN_BOUND_S, f"bench with no arguments took {wall:.0f} s (bound {DEFAULT_RUN_BOUND_S:.0f} s)"


@pytest.mark.slow
def test_default_run_writes_json_with_required_fields(default_run):
    rc, doc, _, _, path, _ = default_run
    assert rc == 0
    date = doc["date"]
    assert path.name == f"{doc['device_slug']}-{date}.json"
    meas = [r for r in doc["records"] if r["kind"] == "measurement"]
    modelled = [r for r in doc["records"] if r["kind"] == "model"]
    # one record per (model, mode, batch, dtype, provider): every provider appears, run or not
    assert {(r["mode"], r["provider"]) for r in meas} == {(m, p) for m in ("infer", "train") for p in P.PROVIDERS}
    cpu = not torch.cuda.is_available()
    for r in meas:
        missing = [f for f in report.REQUIRED_FIELDS if f not in r]
        assert not missing, (r["provider"], missing)
        # CPU: eager timing in fp32 only (reduced-precision autocast on a CPU measures nothing useful)
        assert r["torch"] == torch.__version__ and r["dtype"] == ("fp32" if cpu else "bf16")
        assert r["model"] == ("regnet_y_400mf" if cpu else "regnet_y_1_6gf")
        assert "git_commit" in r and r["device"] == doc["device"]
        assert r["status"] in ("ok", "skipped", "numerics_only", "failed")
        if r["status"] != "ok":
            assert r["ms_median"] is None and r.get("skip_reason") or r.get("error")
    timed = [r for r in meas if r["status"] == "ok"]
    assert {r["provider"] for r in timed} >= {"eager_nchw", "eager_nhwc"}
    for r in timed:
        assert 0 < r["ms_p10"] <= r["ms_median"] <= r["ms_p90"]
        assert r["img_per_s"] == pytest.approx(r["batch"] / r["ms_median"] * 1e3)
        assert r["gbps"] > 0 and r["model_bytes"] > 0 and r["model_regime"] in REGIMES
        assert r["speedup_vs_best_eager"] > 0
    best = [r for r in timed if r["provider"] in ("eager_nchw", "eager_nhwc")]
    for mode in ("infer", "train"):
        assert max(r["speedup_vs_best_eager"] for r in best if r["mode"] == mode) == pytest.approx(1.0)
    # the model part, labelled and separate (at the GPU target's dtype)
    assert {(r["mode"], r["regime"]) for r in modelled} == {(m, g) for m in ("infer", "train") for g in REGIMES}
    for r in modelled:
        assert r["bytes"] > 0 and r["launches"] > 0 and r["layers"]
        assert set(r["floor_ms"]) == {"h100_sxm", "h100_pcie", "h200"}
        assert "ms_median" not in r


@pytest.mark.slow
def test_default_run_checks_fused_numerics_and_memory(default_run):
    _, doc, _, out, _, _ = default_run
    meas = {(r["mode"], r["provider"]): r for r in doc["records"] if r["kind"] == "measurement"}
    num_recs = {(r["dtype"], r["mode"], r["provider"]): r for r in doc["records"] if r["kind"] == "numerics"}
    cpu = not torch.cuda.is_available()
    triton_ok = backends.why_not("triton", [torch.empty(1)], "conv_bn_act") is None
    dtypes = ("fp32", "fp16", "bf16") if cpu else ("bf16",)
    for mode in ("infer", "train"):
        num = meas[(mode, "triton")]["numerics"]
        if triton_ok:  # the interpreter ran the fused kernels on a whole model
            assert num["status"] == "ok" and num["pass"], num
            assert num["backend_resolved"] == "triton"
            for dtype in dtypes:  # every dtype checked, numbers in the JSON
                r = num_recs[(dtype, mode, "triton")]
                assert r["status"] == "ok" and r["pass"], r
                assert r["err_vs_fp64"] <= 2 * r["eager_err_vs_fp64"] + 8e-4
        else:
            assert num["status"] == "skipped" and num["skip_reason"]
    # saved activations: the fused modules keep less than eager (measured with saved_tensors_hooks)
    eager = meas[("train", "eager_nchw")]["saved_activation_bytes"]
    fused = meas[("train", "auto")]["saved_activation_bytes"]
    assert 0 < fused < eager
    assert "[MODEL]" in out and "[MEASUREMENT]" in out and "NUMERICS FAIL" not in out
    # the header says what runs and how long; the report ends with the five-line summary
    assert "plan (" in out and "expected wall time" in out and ("fp32" in out.split("[MODEL]")[0] or not cpu)
    summary = out.rstrip().splitlines()[-5:]
    assert summary[0].startswith("numerics: fused path RIGHT") if triton_ok else summary[0].startswith("numerics:")
    assert "H100" in summary[1] and "H200" in summary[2]
    assert summary[3].startswith("JSON: ") and summary[4].startswith("charts: ")
    assert "aot" in out


@pytest.mark.slow
def test_default_run_writes_pngs(default_run):
    _, doc, pngs, _, _, _ = default_run
    names = sorted(p.name for p in pngs)
    stem = f"{doc['device_slug']}-{doc['date']}"
    assert names == [f"{stem}-layers.png", f"{stem}-speedup.png"]
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


# ------------------------------------------------------------------------------------------------
# bench/ collects (GPU cases are collected and skip cleanly)
# ------------------------------------------------------------------------------------------------
def test_bench_suite_collects():
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "bench/"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    assert "bench/test_bench_conv_bn_act.py::test_conv_bn_act[tiny-3x3g-eager_nchw-infer]" in lines
    assert "bench/test_bench_conv_bn_act.py::test_conv_bn_act[regnet_x_3_2gf-stage4-3x3g-triton-train]" in lines
    assert "bench/test_bench_models.py::test_model[regnet_y_1_6gf-compile-train]" in lines
    # 3 models x 4 stages x 2 convs x 5 providers x 2 modes (+ the tiny case), 3 models x 6 x 2
    assert len(lines) == (3 * 4 * 2 + 1) * 5 * 2 + 3 * 6 * 2


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
class _Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.full((4,), 2.0))

    def forward(self, x):
        y = x * self.w  # saves x (w's grad needs it); x itself needs no grad
        v = y[:, :2]  # a view of y ...
        return v * v  # ... saved twice by this mul: y's storage counts once


def test_saved_activation_bytes_by_hand():
    x = torch.randn(2, 4)
    lin = nn.Sequential(nn.Linear(4, 3, bias=False))
    assert saved_activation_bytes(lin, x) == 2 * 4 * 4  # the input; the weight is a parameter
    assert saved_activation_bytes(_Scale(), x) == 2 * 4 * 4 + 2 * 4 * 4  # x, and y's storage once
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # the bf16 copy of x counts; the bf16 copy of the weight is a parameter's cast and does not
        assert saved_activation_bytes(lin, x) == 2 * 4 * 2


def test_saved_activation_bytes_fused_keeps_less():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()))
    x = torch.randn(2, 4, 6, 6)
    eager = saved_activation_bytes(model, x)
    fused = saved_activation_bytes(regnet_kernels.optimize(model, backend="eager"), x)
    assert 0 < fused < eager


def test_timing_statistics_and_rotation():
    assert timing.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert timing.percentile([1.0, 2.0], 10) == pytest.approx(1.1)
    l2 = 50 * 2**20
    assert timing.rotation_count(154 * 2**20, l2) == 2  # batch-256 images already exceed 2 x L2 twice
    assert timing.rotation_count(30 * 2**20, l2) == 4
    assert timing.rotation_count(1000, l2) == 8  # capped; the timer then flushes L2 on CUDA
    calls = []
    t = timing.time_fn(lambda a: calls.append(a), [(1,), (2,), (3,)], warmup=2, reps=7)
    assert calls == [1, 2, 1, 2, 3, 1, 2, 3, 1]
    assert t.reps == 7 and t.method == "perf_counter" and t.peak_mem_bytes is None
    assert t.ms_p10 <= t.ms_median <= t.ms_p90
    segs = [("a", lambda v: v + 1), ("b", lambda v: v * 2)]
    ms = timing.time_segments(segs, torch.ones(3), warmup=1, reps=3)
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
    assert timing.count_cuda_kernels(lambda: None) is (None if not torch.cuda.is_available() else 0)


def test_providers_why_not_and_shapes():
    cpu = torch.device("cpu")
    assert P.why_not("eager_nchw", cpu) is None and P.why_not("auto", cpu) is None
    assert "CPU" in P.why_not("compile", cpu)
    assert P.why_not("compile", cpu, allow_slow=True) is None
    assert P.why_not("cuda", cpu) is not None
    if backends.why_not("triton", [torch.empty(1)], "conv_bn_act") is None:
        assert "interpreter" in P.why_not("triton", cpu, purpose="time")
        assert P.why_not("triton", cpu, purpose="numerics") is None
    with pytest.raises(ValueError, match="unknown provider"):
        P.why_not("tensorrt", cpu)
    shapes = stage_conv_shapes("regnet_y_400mf", batch=128)
    assert [s.id for s in shapes][:2] == ["regnet_y_400mf-stage1-1x1", "regnet_y_400mf-stage1-3x3g_s2"]
    s2 = {s.id: s.shape for s in shapes}["regnet_y_400mf-stage2-3x3g"]
    # stage 2 of regnet_y_400mf: 104 channels, group width 8, its second block runs at 28x28, stride 1
    assert (s2.n, s2.c_in, s2.c_out, s2.h, s2.stride, s2.groups, s2.kernel) == (128, 104, 104, 28, 1, 13, 3)
    assert P.model_regime("eager_nhwc") == "eager" and P.model_regime("compile") == "fused"
    assert P.model_regime("auto", "eager") == "eager" and P.model_regime("triton", "triton") == "fused"
    assert P.model_regime("triton", "triton", {"FusedBottleneck": 16}) == "block_fused"


def test_op_case_runs_on_cpu():
    case = P.build_op_case("eager_nhwc", stage_conv_shapes("regnet_y_400mf", batch=2, resolution=32)[1].shape,
                           "train", "fp32", torch.device("cpu"), max_sets=2)
    assert len(case.inputs) == 2 and case.bytes_eager > case.bytes_fused > 0
    x, go = case.inputs[0]
    assert x.is_contiguous(memory_format=torch.channels_last) and go.abs().sum() > 0
    case.fn(*case.inputs[0])
    assert x.grad is None  # cleared after each call: every call does the same work


def test_provider_parsing_and_merge(tmp_path):
    assert report.parse_bench_providers(None)[0] == P.PROVIDERS
    names, explicit = report.parse_bench_providers(["triton,eager_nchw", "compile"])
    assert names == ("eager_nchw", "compile", "triton") and explicit == {"eager_nchw", "compile", "triton"}
    with pytest.raises(SystemExit):
        report.parse_bench_providers(["nope"])
    path = tmp_path / "x.json"
    rec = {"kind": "measurement", "model": "m", "mode": "infer", "batch": 1, "provider": "a", "ms_median": 1.0}
    report.merge_write(path, {"schema": report.SCHEMA, "records": [rec, {**rec, "provider": "b"}]})
    report.merge_write(path, {"schema": report.SCHEMA, "records": [{**rec, "ms_median": 2.0}]})
    recs = json.loads(path.read_text())["records"]
    assert sorted((r["provider"], r["ms_median"]) for r in recs) == [("a", 2.0), ("b", 1.0)]


def test_cli_bench_without_interpreter_variable(tmp_path):
    """`python -m regnet_kernels bench` on a machine without a GPU and without TRITON_INTERPRET: the command
    line turns the interpreter on (restarting itself, since importing the package imports Triton), so the
    Triton numerics run and pass instead of failing on kernels decorated for a GPU."""
    if torch.cuda.is_available():
        pytest.skip("the interpreter is only switched on without a GPU")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "regnet_kernels", "bench", "--no-timing", "--no-plots", "--out",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("triton ") and "infer" in line]
    assert rows and all(" PASS " in line for line in rows), proc.stdout[-3000:]
    assert "FUSED PATH WRONG" not in proc.stdout
