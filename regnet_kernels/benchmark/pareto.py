"""``python -m regnet_kernels pick`` and what it stands on: Pareto fronts and the chart of a sweep, and
:func:`choose`, "the most accurate variant within this latency (and memory) budget at this batch", with
the fastest provider and the measurement behind the answer, from a sweep JSON or from a sweep it runs
itself (most accurate variants first, stopping once the answer is settled).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from regnet_kernels.benchmark.common import device_slug, int_at_least, mib, positive_float
from regnet_kernels.benchmark.sweep_records import (
    SWEEP_PROVIDERS, add_common_arguments, env_common, load_sweep, measurement_groups, published_accuracy,
    published_gmacs, resolve_device,
)

__all__ = ["Choice", "add_pick_arguments", "choose", "pareto_chart", "pareto_front", "pick_main"]


# ------------------------------------------------------------------------------------------------
# Pareto fronts
# ------------------------------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower latency, higher accuracy).

    Args:
        points: ``(latency, accuracy)`` pairs.

    Returns:
        Indices on the front, by increasing latency.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_chart(path: str | Path, doc: dict, *, accuracy: str = "top1") -> None:
    """PNG: published top-1 against measured latency (log x), one colour and one front per provider.

    One panel per batch, for the document's device, dtype and resolution (those of its last run). Points
    whose variant is slower than a variant with more MACs (see :func:`mac_order`) are ringed in red; the
    variants on the front over all providers (what :func:`choose` can answer) are labelled.
    """
    from matplotlib import ticker

    from regnet_kernels.benchmark.plots import pyplot

    plt = pyplot()
    cfg = doc.get("config", {})
    want = (doc.get("device"), cfg.get("dtype"), cfg.get("resolution"))
    groups = {k: v for k, v in measurement_groups(doc["records"]).items()
              if all(w is None or w == g for w, g in zip(want, (k[0], k[2], k[3])))}
    batches = sorted({k[1] for k in groups}) or [None]
    fig, axes = plt.subplots(1, len(batches), figsize=(7.5 * len(batches), 6.0), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    providers = sorted({k[4] for k in groups},
                       key=lambda p: SWEEP_PROVIDERS.index(p) if p in SWEEP_PROVIDERS else len(SWEEP_PROVIDERS))
    first = next(iter(groups.values()), [{}])[0]
    for ax, batch in zip(axes[0], batches):
        points, inverted = [], []  # (ms, top-1, model, colour) of every provider, for the overall front's labels
        for (_, b, _, _, provider, graph), recs in groups.items():
            if b != batch:
                continue
            recs = [r for r in recs if r.get(accuracy) is not None]
            if not recs:
                continue
            color = colors[providers.index(provider) % len(colors)]
            label = provider + (" (CUDA graph)" if graph else "")
            xs, ys = [r["ms_median"] for r in recs], [r[accuracy] for r in recs]
            ax.scatter(xs, ys, s=18, color=color, alpha=0.55, label=label)
            front = pareto_front(list(zip(xs, ys)))
            ax.plot([xs[i] for i in front], [ys[i] for i in front], color=color, lw=1.4, drawstyle="steps-post")
            points += [(x, y, r["model"], color) for x, y, r in zip(xs, ys, recs)]
            inverted += [(x, y) for x, y, r in zip(xs, ys, recs) if r.get("mac_order", {}).get("faster_with_more_macs")]
        if inverted:
            ax.scatter(*zip(*inverted), s=70, facecolors="none", edgecolors="red", linewidths=0.9,
                       label="slower than a variant with more MACs")
        for i in pareto_front([(x, y) for x, y, _, _ in points]):
            x, y, model, color = points[i]
            ax.annotate(model, (x, y), fontsize=6.5, xytext=(4, -9), textcoords="offset points", color=color)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("measured latency per forward, ms (median, log scale)")
        ax.set_ylabel(f"published ImageNet top-1 % ({accuracy})")
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no timed variant with a published top-1", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9)
    fig.suptitle(f"MEASUREMENT on {first.get('device', '?')}: published top-1 vs measured latency, inference, "
                 f"{first.get('dtype', '?')}, {first.get('resolution', '?')}px; lines: each provider's Pareto front; "
                 "labels: the front over all providers\n"
                 "top-1: torchvision IMAGENET1K_V1 / pycls model zoo (published data, not measured here)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Pick
# ------------------------------------------------------------------------------------------------
@dataclass
class Choice:
    """The answer of :func:`choose`.

    Attributes:
        record: the chosen variant's measurement (its fastest provider that fits), or None if nothing fits.
        excluded: ``(record or None, model, reason)`` for every variant more accurate than the answer (all
            variants when nothing fits), most accurate first.
        fastest: the fastest measurement of all (what would be needed to fit anything).
        notes: caveats (CPU timings, memory not measured).
    """

    record: dict | None
    excluded: list[tuple[dict | None, str, str]]
    fastest: dict | None
    notes: list[str]


def _one_value(records: list[dict], field_name: str, wanted: Any, flag: str) -> Any:
    values = sorted({r.get(field_name) for r in records}, key=str)
    if wanted is not None:
        return wanted
    if len(values) > 1:
        raise SystemExit(f"the sweep has several {field_name}s ({', '.join(map(str, values))}): choose one with {flag}")
    return values[0] if values else None


def choose(records: Sequence[dict], *, latency_ms: float, batch: int, memory_mb: float | None = None,
           dtype: str | None = None, resolution: int | None = None, device: str | None = None,
           accuracy: str = "top1") -> Choice:
    """The most accurate variant whose fastest provider fits the budget, from sweep records.

    Args:
        records: measurement records (a sweep's ``records``).
        latency_ms: budget on the median latency of one forward at ``batch``.
        batch: images per forward.
        memory_mb: budget on peak memory (MiB); where a record has no peak (CPU), its weights are
            checked instead (a lower bound) and a note says so.
        dtype, resolution, device: which records to use; needed only where the sweep has several.
        accuracy: ``"top1"`` (torchvision V1 / pycls) or ``"top1_best224"`` (best published checkpoint).

    Returns:
        :class:`Choice` (``record`` None when nothing fits).

    Raises:
        SystemExit: when the records hold nothing for this batch, or several dtypes / resolutions / devices
            and none was chosen.
    """
    recs = [r for r in records if r.get("kind") == "measurement" and r.get("batch") == batch]
    if not recs:
        have = sorted({r.get("batch") for r in records if r.get("kind") == "measurement"}, key=str)
        raise SystemExit(f"the sweep has no measurement at batch {batch} (batches: {', '.join(map(str, have))})")
    if device is None:
        devices = {r.get("device") for r in recs}
        if len(devices) > 1:
            here = env_common(resolve_device(None))["device"]
            device = here if here in devices else None
    dev_name = _one_value(recs, "device", device, "--device-name")
    recs = [r for r in recs if r.get("device") == dev_name]
    dt = _one_value(recs, "dtype", dtype, "--dtype")
    recs = [r for r in recs if r.get("dtype") == dt]
    res = _one_value(recs, "resolution", resolution, "--resolution")
    recs = [r for r in recs if r.get("resolution") == res]
    if not recs:
        raise SystemExit(f"the sweep has no measurement at batch {batch}, {dt}, {res}px on {dev_name}")

    notes = []
    ok = [r for r in recs if r.get("status") == "ok" and r.get("ms_median") is not None]
    if ok and all(r.get("peak_mem_bytes") is None for r in ok) and memory_mb is not None:
        notes.append("peak memory was not measured here (CPU): --memory-mb is checked against the weights "
                     "alone, a lower bound")
    if any(r.get("timing_method") == "perf_counter" or str(r.get("device", "")).startswith("CPU") for r in ok):
        notes.append("based on eager CPU timings (torch.compile and the fused kernels are not timed on CPU); "
                     "measure on the target GPU for a GPU answer")

    def mem(r: dict) -> int | None:
        return r.get("peak_mem_bytes") if r.get("peak_mem_bytes") is not None else r.get("weights_bytes")

    by_model: dict[str, list[dict]] = {}
    for r in recs:
        by_model.setdefault(r["model"], []).append(r)
    # (accuracy, model, fastest record that fits or None, fastest record or None, why it does not fit)
    rows: list[tuple[float, str, dict | None, dict | None, str]] = []
    for model, rs in by_model.items():
        acc = rs[0].get(accuracy)
        timed = sorted((r for r in rs if r.get("status") == "ok" and r.get("ms_median") is not None),
                       key=lambda r: r["ms_median"])
        if acc is None:
            rows.append((-math.inf, model, None, timed[0] if timed else None, f"no published {accuracy}"))
            continue
        if not timed:
            why = "; ".join(sorted({f"{r['provider']}: {r.get('status')} ({r.get('skip_reason') or r.get('error')})"
                                    for r in rs}))
            rows.append((acc, model, None, None, f"not timed: {why}"[:300]))
            continue
        fits_ms = [r for r in timed if r["ms_median"] <= latency_ms]
        fits = [r for r in fits_ms if memory_mb is None or mem(r) is None or mem(r) <= memory_mb * 2**20]
        if fits:
            rows.append((acc, model, fits[0], timed[0], ""))
        elif fits_ms:
            r = min(fits_ms, key=lambda r: mem(r) or 0)
            rows.append((acc, model, None, timed[0], f"{mib(mem(r))} > {memory_mb:g} MiB at {r['ms_median']:.3g} ms "
                                                      f"({r['provider']})"))
        else:
            r = timed[0]
            rows.append((acc, model, None, r, f"fastest {r['ms_median']:.3g} ms ({r['provider']}) > "
                                              f"{latency_ms:g} ms"))
    rows.sort(key=lambda row: (-row[0], (row[3] or {}).get("ms_median") or math.inf, row[1]))
    fastest = min((r for r in ok), key=lambda r: r["ms_median"], default=None)
    chosen, excluded = None, []
    for _, model, fit, best, why in rows:
        if fit is not None:
            chosen = fit
            break
        excluded.append((best, model, why))
    return Choice(chosen, excluded, fastest, notes)


def _describe(r: dict, accuracy: str) -> str:
    mem = (f"peak {mib(r['peak_mem_bytes'])}" if r.get("peak_mem_bytes") is not None
           else f"peak memory not measured (weights {mib(r.get('weights_bytes'))})")
    extra = f", timing of identical {r['measured_as']}" if r.get("measured_as") else ""
    src = r.get("top1_source") if accuracy == "top1" else r.get("top1_best224_weights")
    return (f"{r['model']}: top-1 {r[accuracy]:.2f}% ({src}), "
            f"{r['ms_median']:.3g} ms median (p10-p90 {r['ms_p10']:.3g}-{r['ms_p90']:.3g}), "
            f"{r['img_per_s']:.0f} img/s, {mem}; provider {r['provider']} ({r.get('layout')}{extra}); "
            f"{r.get('macs', 0) / 1e9:.2f} GMACs at {r['resolution']}px")


def add_pick_arguments(p: argparse.ArgumentParser) -> None:
    """The ``pick`` subcommand's options."""
    p.add_argument("--latency-ms", type=positive_float, required=True, help="budget: median latency of one forward")
    p.add_argument("--batch", type=int_at_least(1), default=1, help="images per forward (default 1)")
    p.add_argument("--memory-mb", type=positive_float, default=None, help="budget: peak memory in MiB")
    p.add_argument("--from", dest="from_json", default=None, metavar="JSON",
                   help="answer from this sweep JSON (default: measure now, most accurate variants first)")
    p.add_argument("--accuracy", choices=("top1", "top1_best224"), default="top1",
                   help="top1: torchvision IMAGENET1K_V1 / pycls (default); top1_best224: best published "
                        "checkpoint at 224 (torchvision V2 / SWAG-linear)")
    p.add_argument("--device-name", default=None, help="with --from: which device's records, if several")
    p.add_argument("--out", default=None, help="also write the measurements made now as a sweep JSON here")
    add_common_arguments(p)


def _pick_order(models: list[str], accuracy: str) -> list[str]:
    # most accurate first: once one fits, every more accurate variant has been measured and excluded,
    # so the answer is exact without timing the rest
    acc = {m: published_accuracy(m)[accuracy] for m in models}
    return sorted((m for m in models if acc[m] is not None), key=lambda m: (-acc[m], published_gmacs(m)))


def pick_main(args: argparse.Namespace) -> int:
    """``python -m regnet_kernels pick``; returns 0 with an answer, 1 when nothing fits."""
    from regnet_kernels.benchmark.sweep import run_sweep, sweep_config

    t_start = time.perf_counter()
    budgets = [args.latency_ms] + ([args.memory_mb] if args.memory_mb is not None else [])
    if not all(math.isfinite(b) and b > 0 for b in budgets) or args.batch < 1:
        raise SystemExit("pick: --latency-ms and --memory-mb must be finite and > 0, --batch >= 1")
    accuracy = args.accuracy
    if args.from_json:
        doc = load_sweep(args.from_json)
        source = f"sweep {args.from_json}"
        records = doc["records"]
        choice = choose(records, latency_ms=args.latency_ms, batch=args.batch, memory_mb=args.memory_mb,
                        dtype=args.dtype, resolution=args.resolution, device=args.device_name, accuracy=accuracy)
    else:
        # torch.compile costs about a minute per variant and batch: pick times it only when named
        cfg = sweep_config(args, [args.batch], default_providers=("eager_best", "auto"))
        cfg.models = _pick_order(cfg.models, accuracy)
        if not cfg.models:
            raise SystemExit(f"pick: none of the candidate variants has a published {accuracy}")

        def settled(new: list[dict]) -> bool:
            return choose(new, latency_ms=args.latency_ms, batch=args.batch, memory_mb=args.memory_mb,
                          accuracy=accuracy).record is not None

        cfg.stop_when = settled
        common = env_common(cfg.device)
        print(f"regnet_kernels pick: measuring {len(cfg.models)} candidate(s), most accurate first, until one fits "
              f"{args.latency_ms:g} ms at batch {args.batch} ({', '.join(cfg.providers)}; {cfg.dtype}, "
              f"{cfg.resolution}x{cfg.resolution} on {common['device']})")
        path = None
        if args.out:
            path = Path(args.out) / f"sweep-{device_slug(cfg.device, common['device'])}.json"
        doc = run_sweep(cfg, path=path, log=print)
        source = "measured now" + (f" (saved to {path})" if path else "")
        records = doc["records"]
        choice = choose(records, latency_ms=args.latency_ms, batch=args.batch, memory_mb=args.memory_mb,
                        dtype=cfg.dtype, resolution=cfg.resolution, accuracy=accuracy)

    budget = f"{args.latency_ms:g} ms" + (f" and {args.memory_mb:g} MiB" if args.memory_mb is not None else "")
    for note in choice.notes:
        print(f"note: {note}")
    if choice.record is None:
        f = choice.fastest
        fastest = (f"; the fastest measured is {f['model']} at {f['ms_median']:.3g} ms ({f['provider']})" if f else "")
        print(f"pick: nothing fits {budget} at batch {args.batch}{fastest}", file=sys.stderr)
        for _, model, why in choice.excluded[:8]:
            print(f"  {model}: {why}", file=sys.stderr)
        print(f"wall time {time.perf_counter() - t_start:.1f} s")
        return 1
    r = choice.record
    print(f"\npick (batch {args.batch}, budget {budget}): {r['model']}")
    print(f"  [MEASUREMENT] {_describe(r, accuracy)}")
    print(f"  on {r['device']}, {r['dtype']}, inference; {r.get('timing_method')} median of {r.get('reps')}; "
          f"{source}; git {r.get('git_commit') or '?'}, {r.get('date')}")
    if choice.excluded:
        print("  more accurate, excluded:")
        for _, model, why in choice.excluded[:10]:
            print(f"    {model}: {why}")
        if len(choice.excluded) > 10:
            print(f"    ... and {len(choice.excluded) - 10} more")
    else:
        print("  nothing more accurate was measured")
    print(f"wall time {time.perf_counter() - t_start:.1f} s")
    return 0

