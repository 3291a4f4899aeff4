"""The printed part of ``python -m regnet_kernels bench``: the model, numerics, timing and memory tables, the
``aot`` summary and the five-line summary the report ends with.

Every function takes the run's :class:`~regnet_kernels.benchmark.report.Config` (``cfg``) and prints to
stdout; nothing here measures anything.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from regnet_kernels.benchmark.common import fmt, format_table, mib

__all__ = ["Numerics", "estimate_s", "print_plan", "print_model", "print_numerics", "print_timing", "print_memory",
           "aot_lines", "summary_lines", "print_summary"]

#: numerics results: ``{(dtype, mode): {provider: result}}``
Numerics = Dict[Tuple[str, str], Dict[str, dict]]


def estimate_s(cfg, interp: bool) -> Tuple[float, float]:
    """Rough wall-time bounds of the run (seconds): per-step costs measured on a 2-core CPU; the GPU figures are
    guesses (no GPU has run this yet)."""
    from regnet_kernels.benchmark.providers import TINY_MODELS

    secs = 15.0  # imports, models, plots
    if cfg.numerics:
        if cfg.device.type == "cuda":
            per = {"infer": 3.0, "train": 6.0}
        elif interp and cfg.numerics_model in TINY_MODELS:
            per = {"infer": 2.0, "train": 6.0}
        elif interp:
            per = {"infer": 30.0, "train": 110.0}
        else:
            per = {"infer": 1.0, "train": 2.0}
        secs += sum(per[m] for m in cfg.modes) * len(cfg.numerics_dtypes)
    if cfg.timing:
        from regnet_kernels.models import complexity

        timed = [p for p in cfg.providers if p in ("eager_nchw", "eager_nhwc", "auto", "compile")]
        if cfg.device.type == "cuda":
            secs += 20.0 * len(timed) * len(cfg.modes) + (90.0 * len(cfg.modes) if "compile" in timed else 0.0)
        else:
            gmacs = complexity(cfg.model, cfg.resolution)["macs"] / 1e9
            slow = 10.0 if cfg.dtype != "fp32" else 1.0  # bf16/fp16 autocast on a CPU: ~10x slower per step
            # ~25 GMAC/s fp32 forward on two cores; a training step costs ~3 forwards; each provider runs
            # warm-up + reps + a few extra passes (first step, per-layer timing, saved-activation count)
            step = {m: gmacs * cfg.batches[m] / 25.0 * (3.0 if m == "train" else 1.0) * slow for m in cfg.modes}
            secs += sum(step[m] * (cfg.warmup + cfg.reps + 5) * len(timed) for m in cfg.modes)
    return secs * 0.7, secs * 1.5


def print_plan(cfg, interp: bool) -> None:
    """The header's plan: what will run, at which sizes and dtypes, and roughly how long it will take."""
    from regnet_kernels.benchmark import providers as P

    kind = "GPU" if cfg.device.type == "cuda" else ("CPU, --full" if cfg.full else "CPU default; --full for the "
                                                     "larger run")
    print(f"plan ({kind}):")
    if cfg.numerics:
        runs = [p for p in cfg.numerics_providers if P.why_not(p, cfg.device, purpose="numerics", dtype=cfg.dtype,
                                                               allow_slow=p in cfg.explicit) is None]
        where = " (Triton in its interpreter)" if interp else ""
        print(f"  numerics{where}: {', '.join(runs)} vs eager and float64 on {cfg.numerics_model}, batch "
              f"{cfg.numerics_batch}, {cfg.numerics_resolution}px, {'/'.join(cfg.numerics_dtypes)}, "
              f"{'+'.join(cfg.modes)}")
    if cfg.timing:
        note = ("; eager CPU timing in fp32 only (bf16/fp16 autocast on a CPU measures nothing a GPU user needs)"
                if cfg.device.type != "cuda" and cfg.dtype == "fp32" else "")
        threads = (f", {cfg.threads} CPU thread{'s' if cfg.threads > 1 else ''}"
                   if cfg.threads and cfg.device.type == "cpu" else "")
        print(f"  timing: {cfg.model}, batch {', '.join(f'{cfg.batches[m]} ({m})' for m in cfg.modes)}, "
              f"{cfg.resolution}px, {cfg.dtype}{threads}, median of {cfg.reps} after {cfg.warmup} warm-up{note}")
    print(f"  model: traffic, launches and H100/H200 floors of {cfg.model} at {cfg.model_resolution}px, "
          f"{cfg.model_dtype}, batch {' / '.join(str(cfg.model_batches[m]) for m in cfg.modes)}; saved-activation "
          "comparison; the aot summary if cached")
    lo, hi = estimate_s(cfg, interp)
    cores = os.cpu_count() or 1
    print(f"  expected wall time: roughly {lo / 60:.1f}-{hi / 60:.1f} min"
          + (f" (on {cores} idle cores; more when the machine is busy)" if cfg.device.type != "cuda" else ""))


def print_model(cfg, traffic: dict) -> None:
    """The traffic model: bytes, FLOPs, launches and the H100/H200 floors per regime, then per layer group."""
    from regnet_kernels.benchmark import roofline as R

    devs = list(R.DEVICES.values())
    bs = " / ".join(f"batch {cfg.model_batches[m]} ({m})" for m in cfg.modes)
    print(f"\n[MODEL] traffic model, not measured: {cfg.model}, {cfg.model_resolution}x{cfg.model_resolution}, "
          f"{cfg.model_dtype}, {bs}")
    rows = []
    for (mode, regime), t in traffic.items():
        rows.append([mode, regime, f"{t.bytes / 1e9:.2f}", f"{t.flops / 1e9:.0f}", t.launches]
                    + [f"{t.floor_ms(d):.2f}" for d in devs])
    print(format_table(["mode", "regime", "GB moved", "GFLOP", "launches"] + [f"floor {d.name} (ms)" for d in devs],
                       rows))
    for mode in cfg.modes:
        regs = [r for r in R.REGIMES if (mode, r) in traffic]
        groups = list(traffic[(mode, "eager")].by_group())
        launches = {r: {} for r in regs}
        for r in regs:
            for la in traffic[(mode, r)].layers:
                launches[r][la.group] = launches[r].get(la.group, 0) + la.launches
        rows = [[g] + [f"{traffic[(mode, r)].by_group().get(g, 0) / 1e6:.1f}" for r in regs]
                + [str(launches[r].get(g, 0)) for r in regs] for g in groups]
        print(f"\n[MODEL] per layer group, {mode} (MB moved | kernel launches); per-layer detail in the JSON")
        print(format_table(["group"] + [f"{r} MB" for r in regs] + [f"{r} launches" for r in regs], rows))
    for t in traffic.values():
        if t.note:
            print(f"note ({t.mode}, {t.regime}): {t.note}")
            break


def print_numerics(cfg, numerics: Numerics, interp: bool) -> None:
    """One table: every (dtype, mode, provider) check, its errors and the verdict."""
    dtypes = "/".join(dict.fromkeys(d for d, _ in numerics))
    print(f"\n[MEASUREMENT] numerics vs eager_nchw (same dtype) and vs a float64 eager reference: "
          f"{cfg.numerics_model}, batch {cfg.numerics_batch}, {cfg.numerics_resolution}x{cfg.numerics_resolution}, "
          f"{dtypes}{' (Triton in the interpreter)' if interp else ''}. Relative norm errors; pass = err vs fp64 "
          f"<= 2 x eager's + floor")
    rows = []
    for (dtype, mode), res in numerics.items():
        for name, r in res.items():
            if r["status"] != "ok":
                why = r.get("skip_reason") or r.get("error") or ""
                rows.append([name, dtype, mode, r["status"], "-", "-", "-", "-", "-", why[:70]])
                continue
            g = (f"{fmt(r.get('grad_err_vs_fp64'))} ({fmt(r.get('grad_eager_err_vs_fp64'))})"
                 if mode == "train" else "-")
            rows.append([name, dtype, mode, "ok", fmt(r["err_vs_eager"]), fmt(r["err_vs_fp64"]),
                         fmt(r["eager_err_vs_fp64"]), g, "PASS" if r["pass"] else "FAIL",
                         f"{r.get('backend_resolved') or ''}"])
    print(format_table(["provider", "dtype", "mode", "status", "out err vs eager", "out err vs fp64",
                        "eager's vs fp64", "grads vs fp64 (eager's)", "pass", "backend / reason"], rows))
    print("(out = logits in infer, the loss in train; grads = all parameter gradients as one vector)")


def print_timing(cfg, measured: List[dict], device_name: str, spec) -> None:
    """Per mode: every provider's time, throughput, speed-up, memory, GB/s and launches (or why it did not run)."""
    for mode in cfg.modes:
        recs = [r for r in measured if r["mode"] == mode]
        method = next((r["timing"]["method"] for r in recs if r.get("timing")), "-")
        print(f"\n[MEASUREMENT] {mode} timing on {device_name}: {cfg.model}, batch {cfg.batches[mode]}, "
              f"{cfg.resolution}x{cfg.resolution}, {cfg.dtype}; {method}, median of {cfg.reps} after "
              f"{cfg.warmup} warm-up")
        rows = []
        for r in recs:
            if r["status"] not in ("ok",):
                why = r.get("skip_reason") or r.get("error") or ""
                rows.append([r["provider"], r["status"], "-", "-", "-", "-", "-", "-", "-", "-", why[:80]])
                continue
            lk = "launches_per_forward" if mode == "infer" else "launches_per_step"
            rows.append([r["provider"], "ok", f"{r['ms_median']:.2f}", f"{r['ms_p10']:.2f}-{r['ms_p90']:.2f}",
                         f"{r['img_per_s']:.0f}", fmt(r.get("speedup_vs_best_eager"), "{:.2f}x"),
                         mib(r.get("peak_mem_bytes")), fmt(r.get("gbps"), "{:.3g}"),
                         fmt(r.get("pct_of_floor"), "{:.0f}%"), fmt(r.get(lk), "{}"),
                         f"{r.get('layout')}" + (f", {r['backend_resolved']}" if r.get("backend_resolved") else "")])
        print(format_table(["provider", "status", "ms", "p10-p90", "img/s", "speed-up", "peak mem", "GB/s*",
                            "% floor**", "launches", "layout, backend / reason"], rows))
        floor = (f"** the regime's modelled floor on {spec.name} / measured time" if spec else
                 "** no floor: this device is not in the device table")
        print(f"* modelled bytes of the provider's regime / measured time (a model divided by a measurement); {floor}")


def print_memory(cfg, measured: List[dict], numerics: Numerics) -> None:
    """Activation bytes saved for backward, per provider, at the timing and the numerics sizes."""
    rows = []
    eager_t = next((r.get("saved_activation_bytes") for r in measured
                    if r["provider"] == "eager_nchw" and r["mode"] == "train"), None)
    for r in measured:
        if r["mode"] == "train" and r.get("saved_activation_bytes") is not None:
            b = r["saved_activation_bytes"]
            rows.append([r["provider"], f"{cfg.model}, batch {cfg.batches['train']}, {cfg.resolution}px, {cfg.dtype}",
                         mib(b), fmt(b / eager_t if eager_t else None, "{:.2f}")])
    for (dtype, mode), res in numerics.items():
        if mode != "train":
            continue
        eager_n = res.get("eager_nchw", {}).get("saved_activation_bytes")
        for name, r in res.items():
            b = r.get("saved_activation_bytes")
            if b is not None:
                rows.append([name, f"{cfg.numerics_model}, batch {cfg.numerics_batch}, {cfg.numerics_resolution}px, "
                             f"{dtype}", mib(b), fmt(b / eager_n if eager_n else None, "{:.2f}")])
    if rows:
        print("\n[MEASUREMENT] activations saved for backward (training forward; distinct storages, parameters "
              "and their casts excluded)")
        print(format_table(["provider", "workload", "saved", "ratio vs eager_nchw"], rows))


def aot_lines() -> List[str]:
    """The ``aot`` command's cached summary (compiled, not measured), or one line saying why there is none."""
    try:
        from regnet_kernels.benchmark.aot import summary_lines as aot_summary
    except Exception as e:  # the GPU-readiness module is optional
        return [f"aot: no summary (regnet_kernels.benchmark.aot unavailable: {type(e).__name__})"]
    try:
        lines = list(aot_summary())
    except Exception as e:  # a broken cache must not sink the report
        return [f"aot: no summary (reading its cached reports failed: {type(e).__name__}: {e})"[:200]]
    return lines or ["aot: no cached results (run `python -m regnet_kernels aot` to compile the kernels for "
                     "sm_90/sm_80 and predict their times)"]


def _numerics_line(numerics: Numerics, cfg) -> str:
    from regnet_kernels.benchmark.providers import FUSED_PROVIDERS

    fused = [(d, m, n, r) for (d, m), res in numerics.items() for n, r in res.items() if n in ("triton", "cuda")]
    if not numerics:
        return "numerics: not checked (--no-numerics)"
    ran = [x for x in fused if x[3]["status"] == "ok"]
    bad = [f"{n} {d} {m}" for d, m, n, r in ran if not r["pass"]]
    failed = [f"{n} {d} {m}" for d, m, n, r in fused if r["status"] == "failed"]
    skipped = sorted({n for d, m, n, r in fused if r["status"] == "skipped"})
    dtypes = "/".join(dict.fromkeys(d for d, _ in numerics))
    where = f"{cfg.numerics_model} {cfg.numerics_resolution}px, {dtypes}, {'+'.join(cfg.modes)}"
    if not ran and not failed:
        verdict = f"numerics: no fused backend could run here ({', '.join(skipped) or 'none'} skipped)"
    elif bad or failed:
        verdict = f"numerics: FUSED PATH WRONG in {', '.join(bad + failed)} ({where})"
    else:
        worst = max(ran, key=lambda x: x[3]["err_vs_fp64"] / max(x[3]["eager_err_vs_fp64"], 1e-30))
        names = "+".join(dict.fromkeys(n for _, _, n, _ in ran))
        verdict = (f"numerics: fused path RIGHT here: {names} passed {len(ran)}/{len(ran)} checks ({where}); "
                   f"closest to the limit: {worst[2]} {worst[0]} {worst[1]}, err vs fp64 "
                   f"{worst[3]['err_vs_fp64']:.2g} vs eager's {worst[3]['eager_err_vs_fp64']:.2g}")
    other = [p for p in skipped if p in FUSED_PROVIDERS]
    if other:
        reasons = {n: r.get("skip_reason", "") for (_, _), res in numerics.items() for n, r in res.items()
                   if n in other}
        verdict += "; not checked: " + ", ".join(f"{n} ({reasons[n].split('(')[0].strip()[:50]})" for n in other)
    return verdict


def summary_lines(cfg, numerics: Numerics, traffic: dict, json_path: Path, pngs: Sequence[Path]) -> List[str]:
    """The five lines a reader reads first: numerics verdict, the model on H100 and H200, outputs."""
    from regnet_kernels.benchmark import roofline as R

    lines = [_numerics_line(numerics, cfg)]
    for key in ("h100_sxm", "h200"):
        d = R.DEVICES[key]
        parts = []
        for mode in cfg.modes:
            regs = [r for r in R.REGIMES if (mode, r) in traffic]
            best = min(regs, key=lambda r: traffic[(mode, r)].floor_ms(d))
            e, b = traffic[(mode, "eager")].floor_ms(d), traffic[(mode, best)].floor_ms(d)
            parts.append(f"{mode} b{cfg.model_batches[mode]} eager {e:.2f} ms -> {best} {b:.2f} ms ({e / b:.1f}x)")
        lines.append(f"model, {d.name} ({cfg.model}, {cfg.model_resolution}px, {cfg.model_dtype}; floors, not "
                     f"measured): " + "; ".join(parts))
    lines.append(f"JSON: {json_path}")
    lines.append("charts: " + (", ".join(map(str, pngs)) if pngs else "none (--no-plots)"))
    return lines


def print_summary(lines: Sequence[str]) -> None:
    """The closing block: a rule, then the five lines."""
    print("\n" + "=" * 30 + " summary " + "=" * 30)
    for line in lines:
        print(line)

