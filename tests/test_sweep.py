"""``python -m regnet_kernels sweep`` / ``pick``: the quick CPU sweep end to end (JSON fields, chart, resume),
pick on synthetic sweeps (the right variant, clean failure), MAC-order flags, Pareto fronts, OOM handling."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from regnet_kernels import cli
from regnet_kernels.benchmark import pareto, sweep
from regnet_kernels.benchmark import sweep_records as records
from regnet_kernels.models import PUBLISHED, complexity


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------
# The quick sweep on this machine, once per module
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep-out")
    rc, stdout, _ = _cli(["sweep", "--quick", "--out", str(out)])
    jsons = sorted(out.glob("*.json"))
    assert rc == 0 and len(jsons) == 1, (rc, list(out.iterdir()), stdout)
    return jsons[0], json.loads(jsons[0].read_text()), stdout


def test_quick_sweep_writes_json_and_chart(quick):
    path, doc, stdout = quick
    assert doc["schema"] == records.SCHEMA
    models = records.variants("both", quick=True)
    assert len(models) == 3
    recs = doc["records"]
    providers = records.DEFAULT_PROVIDERS
    # one record per (variant, batch, dtype, provider), run or not
    assert {(r["model"], r["batch"], r["provider"]) for r in recs} == {(m, 1, p) for m in models for p in providers}
    cuda = torch.cuda.is_available()
    for r in recs:
        missing = [f for f in records.RECORD_FIELDS if f not in r]
        assert not missing, (r["model"], r["provider"], missing)
        assert r["kind"] == "measurement" and r["device"] == doc["device"] and r["torch"] == torch.__version__
        assert r["top1"] == PUBLISHED[r["model"]]["top1"] and r["top1_source"]
        assert r["macs"] == complexity(r["model"], r["resolution"])["macs"]
        if r["status"] == "ok":
            assert r["ms_p10"] <= r["ms_median"] <= r["ms_p90"] and r["ms_median"] > 0
            assert r["img_per_s"] == pytest.approx(r["batch"] * 1e3 / r["ms_median"])
            assert r["weights_bytes"] > 0 and r["peak_mem_kind"]
            assert r["layout"] in ("nchw", "nhwc") and "rank_macs" in r["mac_order"]
        else:
            assert r["status"] == "skipped" and r["ms_median"] is None and r["skip_reason"]
    best = [r for r in recs if r["provider"] == "eager_best"]
    assert all(r["status"] == "ok" for r in best)
    for r in best:  # eager_best is the faster of the two layouts, both recorded
        assert r["ms_median"] == min(c["ms_median"] for c in r["candidates"].values())
    if not cuda:
        assert {r["provider"] for r in recs if r["status"] == "skipped"} == {"compile", "auto"}
        assert all(r["peak_mem_bytes"] is None for r in recs)
        assert "eager CPU timings only" in stdout and any("eager CPU timings" in n for n in doc["notes"])
    png = path.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["order"] and all("kendall_tau" in g for g in doc["order"])


def test_resume_measures_nothing_twice(quick, tmp_path):
    path, doc, _ = quick
    # a complete sweep: resuming adds and changes nothing
    full = tmp_path / "full.json"
    full.write_text(path.read_text())
    rc, stdout, _ = _cli(["sweep", "--quick", "--resume", str(full)])
    assert rc == 0 and "9 measurement(s) already in the JSON are kept, 0 to go" in stdout
    again = json.loads(full.read_text())
    assert len(again["records"]) == len(doc["records"])
    ms = {records.record_key(r): r["ms_median"] for r in doc["records"]}
    assert all(ms[records.record_key(r)] == r["ms_median"] for r in again["records"])

    # a partial sweep (interrupted after two variants): only the third is measured
    last = records.variants("both", quick=True)[-1]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({**doc, "records": [r for r in doc["records"] if r["model"] != last]}))
    rc, stdout, _ = _cli(["sweep", "--quick", "--resume", str(partial), "--no-plot"])
    assert rc == 0 and "6 measurement(s) already in the JSON are kept, 3 to go" in stdout
    resumed = json.loads(partial.read_text())
    assert {r["model"] for r in resumed["records"]} == set(records.variants("both", quick=True))
    kept = [r for r in resumed["records"] if r["model"] != last]
    assert all(ms[records.record_key(r)] == r["ms_median"] for r in kept)


def test_pick_measures_on_cpu_most_accurate_first(tmp_path):
    models = records.variants("both", quick=True)
    most_accurate = max(models, key=lambda m: PUBLISHED[m]["top1"])
    rc, stdout, _ = _cli(["pick", "--latency-ms", "100000", "--batch", "1", "--quick", "--out", str(tmp_path)])
    assert rc == 0, stdout
    assert f"): {most_accurate}\n" in stdout and "[MEASUREMENT]" in stdout
    # it fits a generous budget, so nothing less accurate was timed
    assert f"stopped after {most_accurate}" in stdout
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {r["model"] for r in doc["records"]} == {most_accurate}
    if not torch.cuda.is_available():
        assert "eager CPU timings" in stdout


# ------------------------------------------------------------------------------------------------
# pick on synthetic sweeps
# ------------------------------------------------------------------------------------------------
def _rec(model, provider, ms, top1, *, macs=1, peak=None, status="ok", batch=1, **kw):
    return {"kind": "measurement", "model": model, "provider": provider, "batch": batch, "dtype": "bf16",
            "resolution": 224, "device": "NVIDIA H100 80GB HBM3", "status": status,
            "ms_median": ms if status == "ok" else None, "ms_p10": ms * 0.95 if ms else None,
            "ms_p90": ms * 1.05 if ms else None, "img_per_s": batch * 1e3 / ms if ms else None,
            "peak_mem_bytes": peak, "weights_bytes": 10 * 2**20, "macs": macs, "top1": top1,
            "top1_source": "synthetic", "layout": "nhwc", "timing_method": "cuda_events", "reps": 30, **kw}


SYNTH = [
    _rec("huge", "eager_best", 10.0, 82.0, macs=50, peak=900 * 2**20),
    _rec("huge", "auto", 6.0, 82.0, macs=50, peak=800 * 2**20),
    _rec("big", "eager_best", 2.6, 80.0, macs=20, peak=400 * 2**20),
    _rec("big", "auto", 2.2, 80.0, macs=20, peak=300 * 2**20),
    _rec("mid", "eager_best", 2.5, 78.0, macs=10, peak=300 * 2**20),
    _rec("mid", "auto", 1.5, 78.0, macs=10, peak=600 * 2**20),
    _rec("mid", "compile", 1.9, 78.0, macs=10, peak=200 * 2**20),
    _rec("small", "eager_best", 1.0, 76.0, macs=5, peak=100 * 2**20),
    _rec("nolabel", "eager_best", 0.5, None, macs=2, peak=50 * 2**20),
    _rec("oomer", "eager_best", None, 90.0, macs=99, status="oom", skip_reason="out of memory"),
]


def test_choose_most_accurate_within_budget_with_fastest_provider():
    c = pareto.choose(SYNTH, latency_ms=2.0, batch=1)
    assert (c.record["model"], c.record["provider"]) == ("mid", "auto")
    # every more accurate variant is listed with why it does not fit, most accurate first
    assert [m for _, m, _ in c.excluded] == ["oomer", "huge", "big"]
    assert "oom" in c.excluded[0][2] and "2.2 ms (auto) > 2 ms" in c.excluded[2][2]
    # a memory budget picks the fastest provider that fits it, or moves on to a smaller variant
    c = pareto.choose(SYNTH, latency_ms=2.0, batch=1, memory_mb=250)
    assert (c.record["model"], c.record["provider"]) == ("mid", "compile")
    c = pareto.choose(SYNTH, latency_ms=2.0, batch=1, memory_mb=150)
    assert c.record["model"] == "small" and "MiB" in c.excluded[-1][2]
    # a variant without a published top-1 is never picked, however fast
    assert pareto.choose(SYNTH, latency_ms=0.6, batch=1).record is None
    c = pareto.choose(SYNTH, latency_ms=0.01, batch=1)
    assert c.record is None and c.fastest["model"] == "nolabel"
    with pytest.raises(SystemExit, match="no measurement at batch 8"):
        pareto.choose(SYNTH, latency_ms=2.0, batch=8)
    with pytest.raises(SystemExit, match="several dtypes"):
        pareto.choose(SYNTH + [_rec("x", "auto", 1.0, 70.0, dtype="fp16")], latency_ms=2.0, batch=1)


def _synthetic_sweep(tmp_path: Path) -> Path:
    path = tmp_path / "synthetic.json"
    path.write_text(json.dumps({"schema": records.SCHEMA, "records": SYNTH}))
    return path


def test_pick_cli_from_json(tmp_path):
    path = _synthetic_sweep(tmp_path)
    rc, out, _ = _cli(["pick", "--latency-ms", "2.0", "--batch", "1", "--from", str(path)])
    assert rc == 0
    assert "): mid\n" in out and "provider auto" in out and "1.5 ms median" in out
    assert "big: fastest 2.2 ms (auto) > 2 ms" in out and "NVIDIA H100" in out
    assert "CPU" not in out


def test_pick_cli_nothing_fits_fails_cleanly(tmp_path):
    path = _synthetic_sweep(tmp_path)
    rc, out, err = _cli(["pick", "--latency-ms", "0.1", "--batch", "1", "--from", str(path)])
    assert rc == 1
    assert "nothing fits 0.1 ms at batch 1" in err and "nolabel at 0.5 ms" in err
    with pytest.raises(SystemExit, match="not a regnet_kernels sweep"):
        bad = tmp_path / "bad.json"
        bad.write_text("{}")
        _cli(["pick", "--latency-ms", "1", "--from", str(bad)])
    with pytest.raises(SystemExit, match="cannot read"):
        _cli(["pick", "--latency-ms", "1", "--from", str(tmp_path / "missing.json")])


# ------------------------------------------------------------------------------------------------
# MAC order, Pareto fronts, variants, failures
# ------------------------------------------------------------------------------------------------
def test_mac_order_flags_inversions_beyond_noise():
    recs = [_rec("a", "auto", 1.0, 70.0, macs=1), _rec("b", "auto", 3.0, 72.0, macs=2),
            _rec("c", "auto", 2.0, 74.0, macs=3), _rec("d", "auto", 3.05, 75.0, macs=4)]
    doc = {"records": recs}
    (group,) = records.mac_order(doc)
    # b (2 MACs) is slower than c (3 MACs) beyond the p10-p90 spread; d vs b is within noise
    assert group["inversions"] == [["b", "c"]]
    assert recs[1]["mac_order"]["faster_with_more_macs"] == ["c"]
    assert recs[0]["mac_order"] == {"rank_macs": 1, "rank_latency": 1, "faster_with_more_macs": []}
    assert group["kendall_tau"] == pytest.approx((5 - 1) / 6)


def test_pareto_front():
    pts = [(1.0, 70.0), (2.0, 69.0), (3.0, 75.0), (3.0, 74.0), (5.0, 75.0), (8.0, 80.0)]
    assert pareto.pareto_front(pts) == [0, 2, 5]


def test_variants_and_published_accuracy():
    assert len(records.variants()) == 39
    ys, xs = records.variants("y"), records.variants("x")
    assert len(ys) + len(xs) == 39 and all(records.family_of(n) == "y" for n in ys)
    assert records.variants("y", quick=True) == ["regnety_200mf", "regnety_400mf", "regnety_600mf"]
    acc = records.published_accuracy("regnet_y_128gf")
    assert acc["top1"] is None and acc["top1_best224"] == 86.068
    assert records.published_accuracy("regnet_y_1_6gf")["top1_best224_weights"] == "IMAGENET1K_V2"
    with pytest.raises(ValueError):
        records.variants("z")


def test_oom_and_failures_are_recorded_and_failures_retried(monkeypatch):
    calls = []

    def fake_time_one(provider, layout, cfg, name, batch, base):
        calls.append((provider, batch))
        if batch >= 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(sweep, "_time_one", fake_time_one)
    monkeypatch.setattr("regnet_kernels.benchmark.providers.base_model", lambda name, device: object())
    cfg = sweep.SweepConfig(models=["regnetx_200mf"], batches=[1, 2, 4], dtype="fp32", providers=("eager_nchw",),
                            resolution=32, reps=1, warmup=0)
    doc = sweep.run_sweep(cfg, log=lambda s: None, progress=False)
    status = {r["batch"]: (r["status"], r.get("skip_reason") or r.get("error")) for r in doc["records"]}
    assert status[1][0] == "failed" and "kernel exploded" in status[1][1]
    assert status[2][0] == "oom" and "out of memory" in status[2][1]
    assert status[4] == ("oom", "out of memory already at batch 2")  # not attempted
    assert calls == [("eager_nchw", 1), ("eager_nchw", 2)]
    # resuming retries the failure only
    calls.clear()
    sweep.run_sweep(cfg, doc, log=lambda s: None, progress=False)
    assert calls == [("eager_nchw", 1)]


def test_a_model_that_cannot_be_built_is_recorded_once_per_measurement(monkeypatch):
    def no_room(name, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.40 GiB")

    monkeypatch.setattr("regnet_kernels.benchmark.providers.base_model", no_room)
    cfg = sweep.SweepConfig(models=["regnetx_200mf"], batches=[1, 2], dtype="fp32",
                            providers=("eager_best", "eager_nchw"), resolution=32, reps=1, warmup=0)
    doc = sweep.run_sweep(cfg, log=lambda s: None, progress=False)
    assert len(doc["records"]) == 4
    assert all(r["status"] == "oom" and "out of memory" in r["skip_reason"] for r in doc["records"])
    assert pareto.choose(doc["records"], latency_ms=1e9, batch=1).record is None
