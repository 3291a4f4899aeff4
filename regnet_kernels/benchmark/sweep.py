"""``python -m regnet_kernels sweep``: time every zoo variant on this device.

RegNet is a family to choose from by budget, and throughput order differs from FLOP order (grouped convs,
SE and memory traffic, not MACs, set the time). So the choice is made on measurements from the device
the model will run on: :func:`run_sweep` times every zoo variant (torchvision's 15 and pycls's 24, or a
subset) at each batch with each provider (``eager_best`` = the faster of eager NCHW and channels_last,
``compile``, and :func:`regnet_kernels.optimize` with ``auto`` / ``triton`` / ``cuda``), inference only:
median latency and its 10th/90th percentiles, images/s, peak memory. Each record joins the variant's
published ImageNet top-1 (:data:`regnet_kernels.models.PUBLISHED`) and its exact MACs at the measured
resolution, and is flagged where the measured latency order contradicts the MAC order. The JSON is
rewritten after every variant, so an interrupted sweep resumes from it (``--resume``); a Pareto chart
(top-1 against latency, one front per provider) sits beside it. Choosing from a sweep is
:mod:`regnet_kernels.benchmark.pareto` (``pick``).

Everything here is a measurement on this machine, labelled so; top-1 figures are published data. On a
machine without a GPU only eager PyTorch is timed (torch.compile on CPU is not the target, and Triton
on CPU runs in its interpreter, which times nothing useful); the output says so.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from regnet_kernels.benchmark.common import (
    MIN_RESOLUTION, device_slug, format_table, mib, parse_providers, split_names,
)
from regnet_kernels.benchmark.sweep_records import (
    DEFAULT_PROVIDERS, SCHEMA, SWEEP_PROVIDERS, add_common_arguments, architecture, env_common, family_of,
    load_sweep, mac_order, published_accuracy, published_gmacs, record_key, resolve_device, variants, write_sweep,
)

__all__ = [
    "SweepConfig",
    "add_sweep_arguments",
    "parse_sweep_providers",
    "run_sweep",
    "sweep_config",
    "sweep_main",
]

#: Record statuses a resumed sweep does not measure again ("failed" ones are retried).
_DONE = ("ok", "skipped", "oom")
_CPU_NOTE = ("no GPU: eager CPU timings only (torch.compile and the fused kernels are not timed on CPU: "
             "Triton would run in its interpreter). CPU latency order says nothing about a GPU's; run the "
             "sweep on the target GPU")
_CPU_MEM = "not measured on CPU (no allocator statistics); weights_bytes is a lower bound"
_CUDA_MEM = ("weights + one input + the rise of torch.cuda.max_memory_allocated over one forward "
             "(other rotating input buffers excluded)")


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class SweepConfig:
    """Resolved settings of one sweep.

    Attributes:
        models: variants to time, in order.
        batches: images per forward.
        dtype: ``"bf16"``, ``"fp16"`` (autocast) or ``"fp32"``.
        providers: any of :data:`SWEEP_PROVIDERS`.
        resolution: square input size.
        device: where to time.
        reps, warmup: timed and untimed repetitions per measurement.
        compile_mode: ``torch.compile`` mode (None = torch's default).
        cuda_graph: time non-compile providers as CUDA-graph replays (launch-bound small batches).
        explicit: providers the user named (torch.compile then runs on CPU too).
        dedupe: reuse the timing of an identical network under another name.
        quick: the CI subset (recorded in the JSON).
        threads: CPU only: ``torch.set_num_threads`` for the sweep (restored after); None keeps torch's.
        stop_when: called with the records of each finished variant; True ends the sweep early.
    """

    models: list[str]
    batches: list[int]
    dtype: str = "bf16"
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    resolution: int = 224
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reps: int = 30
    warmup: int = 5
    compile_mode: str | None = None
    cuda_graph: bool = False
    explicit: frozenset = frozenset()
    dedupe: bool = True
    quick: bool = False
    threads: int | None = None
    stop_when: Callable[[list[dict]], bool] | None = None


def _parse_batches(values: Sequence[str] | str | None, default: list[int]) -> list[int]:
    items = split_names(values)
    if not items:
        return list(default)
    try:
        out = [int(s) for s in items]
    except ValueError:
        raise SystemExit(f"--batch takes integers like 1,32,256, got {','.join(items)!r}") from None
    if any(b < 1 for b in out):
        raise SystemExit("--batch values must be >= 1")
    return list(dict.fromkeys(out))


def parse_sweep_providers(values: Sequence[str] | str | None) -> tuple[tuple[str, ...], frozenset]:
    """``--providers`` of ``sweep`` / ``pick``: names in run order (eager first: compile reuses the best eager
    layout of the same variant and batch) and the names given explicitly (``all``: every one but the two
    single eager layouts)."""
    return parse_providers(values, SWEEP_PROVIDERS, default=DEFAULT_PROVIDERS,
                           all_means=[n for n in SWEEP_PROVIDERS if n not in ("eager_nchw", "eager_nhwc")],
                           all_is_explicit=True, command="sweep/pick")


def _parse_models(values: Sequence[str] | str | None, family: str, quick: bool) -> list[str]:
    from regnet_kernels.models import list_models

    names = split_names(values)
    if not names:
        return variants(family, quick=quick)
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(list_models())}")
    return sorted(dict.fromkeys(names), key=lambda n: (published_gmacs(n), n))


def _reps(args: argparse.Namespace, device: torch.device, quick: bool) -> tuple[int, int]:
    if device.type == "cuda":
        reps, warmup = (10, 3) if quick else (30, 5)
    else:
        reps, warmup = (3, 1) if quick else (5, 2)  # oneDNN builds its primitives on the first calls
    return (args.reps or reps), (args.warmup if args.warmup is not None else warmup)


def _resolution(args: argparse.Namespace, device: torch.device, quick: bool) -> int:
    if args.resolution is not None:
        if args.resolution < MIN_RESOLUTION:  # argparse checks it too; this is for Namespaces built in code
            raise SystemExit(f"--resolution must be >= {MIN_RESOLUTION} (five stride-2 stages)")
        return args.resolution
    if device.type == "cuda":
        return 224
    return 64 if quick else 128  # CPU: 224 for 39 variants takes long and measures no GPU anyway


# ------------------------------------------------------------------------------------------------
# One measurement
# ------------------------------------------------------------------------------------------------
def _oom_types() -> tuple:
    return tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError})


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, _oom_types()) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _free(device: torch.device) -> None:
    # hand a dropped model's blocks back before the next (larger) one; on CPU the allocator does this
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _tensor_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _peak_memory(built: Any, x: torch.Tensor, t: torch.Tensor, device: torch.device) -> int | None:
    """Weights + one input + what one forward adds at its peak (CUDA); None on CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with built.active():
        built.step(x, t)
    torch.cuda.synchronize(device)
    rise = max(0, torch.cuda.max_memory_allocated(device) - before)
    return _tensor_bytes(built.module) + x.numel() * x.element_size() + rise


def _time_one(provider: str, layout: str | None, cfg: SweepConfig, name: str, batch: int, base: Any) -> dict:
    """Build ``provider`` on a copy of ``base`` and time its inference forward."""
    from regnet_kernels.benchmark import providers as P
    from regnet_kernels.benchmark import timing as T

    dev = cfg.device
    wl = P.Workload(name, "infer", batch, cfg.resolution, cfg.dtype, dev)
    built = P.build(provider, wl, base, layout=layout, compile_mode=cfg.compile_mode)
    inputs = T.rotating_inputs(lambda i, lay=built.layout: wl.make_inputs(i, lay), wl.input_bytes, dev)
    t0 = time.perf_counter()
    built = P.with_compile_fallback(built, base, inputs[0])
    first_s = time.perf_counter() - t0
    notes = list(built.notes)
    timing = None
    with built.active():
        if cfg.cuda_graph and dev.type == "cuda" and provider != "compile":
            try:
                timing = T.time_cuda_graph(lambda xx, b=built: b.forward(xx, graph_safe=True),
                                           [x for x, _ in inputs], device=dev, warmup=cfg.warmup, reps=cfg.reps)
            except Exception as e:  # not capturable: say so and time it plainly
                if _is_oom(e):
                    raise
                notes.append(f"CUDA-graph capture failed ({type(e).__name__}); timed without graphs")
        if timing is None:
            timing = T.time_fn(built.step, inputs, device=dev, warmup=cfg.warmup, reps=cfg.reps,
                               bytes_per_set=wl.input_bytes)
    x, t = inputs[0]
    peak = _peak_memory(built, x, t, dev)
    rec = {"status": "ok", "layout": built.layout, "ms_median": timing.ms_median, "ms_p10": timing.ms_p10,
           "ms_p90": timing.ms_p90, "img_per_s": batch / timing.ms_median * 1e3, "peak_mem_bytes": peak,
           "peak_mem_kind": _CUDA_MEM if dev.type == "cuda" else _CPU_MEM,
           "weights_bytes": _tensor_bytes(built.module), "timing_method": timing.method, "reps": timing.reps,
           "warmup": timing.warmup, "cuda_graph": timing.method == "cuda_graph", "first_step_s": round(first_s, 3),
           "compile_mode": built.compile_mode if provider == "compile" else None,
           "backend_resolved": built.backend_resolved, "fusion": built.fusion, "notes": notes}
    del built, inputs, x, t
    _free(dev)
    return rec


def _skip_reason(provider: str, cfg: SweepConfig) -> str | None:
    from regnet_kernels import backends
    from regnet_kernels.benchmark import providers as P

    base_provider = "eager_nchw" if provider == "eager_best" else provider
    reason = P.why_not(base_provider, cfg.device, purpose="time", allow_slow=provider in cfg.explicit,
                       dtype=cfg.dtype)
    if reason is None and provider == "auto":
        sample = torch.empty(1, dtype=P.DTYPES[cfg.dtype], device=cfg.device)
        if backends.resolve("conv_bn_act", [sample], "auto") == "eager":
            reason = ("auto resolves to the eager reference on this device: its time would be eager's "
                      "(see eager_best)")
    return reason


def _measure(provider: str, cfg: SweepConfig, name: str, batch: int, base: Any, best_layout: str | None,
             eager: dict[str, dict]) -> dict:
    # `eager` caches this (variant, batch)'s eager timings: eager_best and an explicit eager_nchw /
    # eager_nhwc then report the same measurement instead of two noisy ones
    if provider in ("eager_nchw", "eager_nhwc"):
        if provider not in eager:
            eager[provider] = _time_one(provider, None, cfg, name, batch, base)
        return dict(eager[provider])
    if provider != "eager_best":
        layout = best_layout if provider == "compile" else None
        return _time_one(provider, layout, cfg, name, batch, base)
    candidates = {}
    for sub in ("eager_nchw", "eager_nhwc"):
        if sub not in eager:
            eager[sub] = _time_one(sub, None, cfg, name, batch, base)
        candidates[sub] = eager[sub]
    best = min(candidates.values(), key=lambda r: r["ms_median"])
    rec = dict(best)
    rec["candidates"] = {k: {f: v[f] for f in ("layout", "ms_median", "ms_p10", "ms_p90", "peak_mem_bytes")}
                         for k, v in candidates.items()}
    return rec


# ------------------------------------------------------------------------------------------------
# The sweep
# ------------------------------------------------------------------------------------------------
@dataclass
class _VariantState:
    """One variant's model and what went wrong with it so far, across its batches and providers."""

    name: str
    base: Any = None
    base_failed: tuple[str, str] | None = None  # (status, reason) when the model itself could not be built
    oom_at: dict[str, int] = field(default_factory=dict)  # provider -> smallest batch that ran out of memory


def _attempt(rec: dict, provider: str, batch: int, cfg: SweepConfig, state: _VariantState,
             best_layout: str | None, eager: dict[str, dict]) -> None:
    """Measures one record in place; an out-of-memory or any other failure is recorded, not raised."""
    from regnet_kernels.benchmark import providers as P

    if state.base_failed is not None:
        rec.update(status=state.base_failed[0], skip_reason=state.base_failed[1])
        return
    try:
        if state.base is None:
            state.base = P.base_model(state.name, cfg.device)
        rec.update(_measure(provider, cfg, state.name, batch, state.base, best_layout, eager))
        return
    except Exception as e:  # one variant or provider must not sink the sweep
        first = str(e).splitlines()[0][:200] if str(e) else ""
        if _is_oom(e):
            state.oom_at.setdefault(provider, batch)
            rec.update(status="oom", skip_reason=f"out of memory: {first}")
        else:
            rec.update(status="failed", error=f"{type(e).__name__}: {e}"[:500])
        if state.base is None:
            state.base_failed = (rec["status"], f"building the model failed: {type(e).__name__}: {first}")
    # out of the handler: the exception no longer holds the frames (model copies, activations) it unwound
    _free(cfg.device)


def _base_record(name: str, batch: int, provider: str, cfg: SweepConfig, common: dict, cx: dict) -> dict:
    from regnet_kernels.models import PUBLISHED

    pub = PUBLISHED[name]
    rec = {"kind": "measurement", "model": name, "family": family_of(name), "source": pub["source"],
           "batch": batch, "dtype": cfg.dtype, "resolution": cfg.resolution, "provider": provider,
           "mode": "infer", "status": None, "ms_median": None, "ms_p10": None, "ms_p90": None, "img_per_s": None,
           "peak_mem_bytes": None, "peak_mem_kind": None, "weights_bytes": None, "cuda_graph": bool(cfg.cuda_graph),
           "cpu_threads": torch.get_num_threads() if cfg.device.type == "cpu" else None,
           "macs": cx["macs"], "params": cx["params"], "gmacs_224_published": published_gmacs(name),
           **published_accuracy(name), **common}
    return rec


def run_sweep(cfg: SweepConfig, doc: dict | None = None, *, resume: bool = True, path: Path | None = None,
              log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Times every (variant, batch, provider) of ``cfg`` (not already in ``doc`` when resuming).

    Args:
        cfg: what to time.
        doc: a sweep loaded with :func:`load_sweep` whose records are kept (those with the same key are
            replaced by new measurements), or None for a new one.
        resume: do not measure again what ``doc`` already holds with status ok / skipped / oom ("failed"
            measurements are retried).
        path: where to write the JSON after every variant (None: do not write).
        log: where progress notes go.
        progress: show a tqdm bar on stderr.

    Returns:
        The sweep document: ``schema``, ``device``, ``environment``, ``config``, ``notes``, ``records`` (one
        per variant x batch x dtype x resolution x provider x device; see :data:`RECORD_FIELDS`) and
        ``order`` (:func:`mac_order` per group).
    """
    from tqdm.auto import tqdm

    from regnet_kernels import info
    from regnet_kernels.models import complexity

    dev = cfg.device
    common = env_common(dev)
    notes = [_CPU_NOTE] if dev.type != "cuda" else []
    if doc is None:
        doc = {"schema": SCHEMA, "created": _dt.datetime.now().isoformat(timespec="seconds"), "records": []}
    doc.update(device=common["device"], environment=info.environment(), git_commit=common["git_commit"],
               config={"models": cfg.models, "batches": cfg.batches, "dtype": cfg.dtype,
                       "providers": list(cfg.providers), "resolution": cfg.resolution, "reps": cfg.reps,
                       "warmup": cfg.warmup, "compile_mode": cfg.compile_mode, "cuda_graph": cfg.cuda_graph,
                       "quick": cfg.quick, "mode": "infer",
                       "cpu_threads": (cfg.threads or torch.get_num_threads()) if dev.type == "cpu" else None})
    doc["notes"] = list(dict.fromkeys(list(doc.get("notes", [])) + notes))
    by_key = {record_key(r): r for r in doc["records"]}
    skip_reasons = {p: _skip_reason(p, cfg) for p in cfg.providers}

    def todo(name: str) -> list[tuple[int, str]]:
        out = []
        for b in cfg.batches:
            for p in cfg.providers:
                probe = {"model": name, "batch": b, "dtype": cfg.dtype, "resolution": cfg.resolution, "provider": p,
                         "device": common["device"], "cuda_graph": cfg.cuda_graph}
                old = by_key.get(record_key(probe))
                if not resume or old is None or old.get("status") not in _DONE:
                    out.append((b, p))
        return out

    work = {n: todo(n) for n in cfg.models}
    total = sum(len(v) for v in work.values())
    resumed = len(cfg.models) * len(cfg.batches) * len(cfg.providers) - total
    if resumed:
        log(f"resume: {resumed} measurement(s) already in the JSON are kept, {total} to go")
    bar = tqdm(total=total, desc="sweep", unit="meas", file=sys.stderr, leave=False, dynamic_ncols=True,
               disable=None if progress else True)
    threads = torch.get_num_threads()
    if cfg.threads and dev.type == "cpu":
        torch.set_num_threads(cfg.threads)
    # architecture -> a variant timed (not copied) on this device at these settings, this run or before
    timed_arch: dict[tuple, str] = {}
    for r in doc["records"]:
        if (r.get("status") == "ok" and not r.get("measured_as") and r.get("device") == common["device"]
                and r.get("dtype") == cfg.dtype and r.get("resolution") == cfg.resolution):
            timed_arch.setdefault(architecture(r["model"]), r["model"])
    try:
        for index, name in enumerate(cfg.models, start=1):
            jobs = work[name]
            if not jobs:
                continue
            t_variant = time.perf_counter()
            cx = complexity(name, cfg.resolution)
            arch = architecture(name)
            twin = timed_arch.get(arch) if cfg.dedupe else None
            state = _VariantState(name)
            new: list[dict] = []
            for batch in cfg.batches:
                # compile runs in the faster eager layout, measured now or by the sweep being resumed
                earlier = by_key.get(record_key({"model": name, "batch": batch, "dtype": cfg.dtype,
                                           "resolution": cfg.resolution, "provider": "eager_best",
                                           "device": common["device"], "cuda_graph": cfg.cuda_graph}))
                best_layout = earlier.get("layout") if earlier and earlier.get("status") == "ok" else None
                eager: dict[str, dict] = {}
                for provider in cfg.providers:
                    if (batch, provider) not in jobs:
                        continue
                    bar.set_postfix_str(f"{name} b{batch} {provider}")
                    rec = _base_record(name, batch, provider, cfg, common, cx)
                    reason = skip_reasons[provider]
                    twin_rec = by_key.get(record_key({**rec, "model": twin})) if twin else None
                    if reason is not None:
                        rec.update(status="skipped", skip_reason=reason)
                    elif provider in state.oom_at and batch > state.oom_at[provider]:
                        rec.update(status="oom", skip_reason=f"out of memory already at batch {state.oom_at[provider]}")
                    elif twin_rec is not None and twin_rec.get("status") in _DONE:
                        keep = {k: v for k, v in twin_rec.items() if k not in rec or k in (
                            "status", "skip_reason", "ms_median", "ms_p10", "ms_p90", "img_per_s", "peak_mem_bytes",
                            "peak_mem_kind", "weights_bytes", "layout")}
                        rec.update(keep, measured_as=twin)
                    else:
                        _attempt(rec, provider, batch, cfg, state, best_layout, eager)
                    if provider == "eager_best" and rec.get("status") == "ok":
                        best_layout = rec["layout"]
                    by_key[record_key(rec)] = rec
                    new.append(rec)
                    bar.update(1)
            if any(r.get("status") == "ok" and not r.get("measured_as") for r in new):
                timed_arch.setdefault(arch, name)
            state = None  # drops the base model before the next variant's is built
            _free(dev)
            if bar.disable and progress:  # no terminal (CI, a remote job): one line per variant instead
                print(f"sweep [{index}/{len(cfg.models)}] {name}: {len(new)} measurement(s) in "
                      f"{time.perf_counter() - t_variant:.1f} s", file=sys.stderr, flush=True)
            doc["records"] = list(by_key.values())
            mac_order(doc)
            if path is not None:
                write_sweep(path, doc)
            if cfg.stop_when is not None and cfg.stop_when(new):
                log(f"stopped after {name}: the answer is settled")
                break
    finally:
        torch.set_num_threads(threads)
        bar.close()
        doc["records"] = list(by_key.values())
        mac_order(doc)
        if path is not None:
            write_sweep(path, doc)
    return doc


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def _print_sweep(doc: dict, cfg: SweepConfig, log: Callable[[str], None]) -> None:
    recs = [r for r in doc["records"] if r.get("kind") == "measurement" and r.get("model") in cfg.models
            and r.get("batch") in cfg.batches and r.get("dtype") == cfg.dtype
            and r.get("resolution") == cfg.resolution and r.get("device") == doc.get("device")]
    dev = doc.get("device")
    for batch in cfg.batches:
        log(f"\n[MEASUREMENT] inference on {dev}, batch {batch}, {cfg.dtype}, {cfg.resolution}x{cfg.resolution}: "
            f"median ms (img/s); top-1 = published; ! = slower than a variant with more MACs")
        rows = []
        for name in cfg.models:
            rs = {r["provider"]: r for r in recs if r["model"] == name and r["batch"] == batch}
            if not rs:
                continue
            any_r = next(iter(rs.values()))
            row = [name, f"{any_r['macs'] / 1e9:.2f}", _fmtf(any_r.get("top1"), "{:.2f}")]
            for p in cfg.providers:
                r = rs.get(p)
                if r is None:
                    row.append("-")
                elif r.get("status") == "ok":
                    flag = "!" if r.get("mac_order", {}).get("faster_with_more_macs") else ""
                    row.append(f"{r['ms_median']:.3g}{flag} ({r['img_per_s']:.0f})")
                else:
                    row.append(r.get("status") or "-")
            ok = [r for r in rs.values() if r.get("status") == "ok"]
            row.append(mib(min((r["peak_mem_bytes"] for r in ok if r.get("peak_mem_bytes") is not None),
                                default=None)))
            rows.append(row)
        log(format_table(["variant", "GMACs", "top-1"] + list(cfg.providers) + ["peak mem"], rows))
    reasons = {}
    for r in recs:
        if r.get("status") in ("skipped", "oom", "failed"):
            reasons.setdefault((r["provider"], r["status"]), r.get("skip_reason") or r.get("error"))
    for (p, status), why in reasons.items():
        log(f"{p}: {status}: {why}")
    for g in doc.get("order", []):
        if g["device"] != dev or g["batch"] not in cfg.batches or g["dtype"] != cfg.dtype or not g["inversions"]:
            continue
        tau = g["kendall_tau"]
        pairs = ", ".join(f"{a} slower than {b}" for a, b in g["inversions"][:6])
        more = f" (+{len(g['inversions']) - 6} more)" if len(g["inversions"]) > 6 else ""
        log(f"order: batch {g['batch']} {g['provider']}: Kendall tau(MACs, latency) = "
            f"{'-' if tau is None else f'{tau:.2f}'}; measured order contradicts MAC order beyond noise "
            f"(p90 of the bigger < p10 of the smaller): {pairs}{more}")


def _fmtf(v: float | None, spec: str) -> str:
    return "-" if v is None else spec.format(v)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The ``sweep`` subcommand's options."""
    add_common_arguments(p)
    p.add_argument("--batch", nargs="+", default=None, metavar="N",
                   help="batches, e.g. 1,32,256 (default: GPU 1,32,256; CPU 1)")
    p.add_argument("--out", default="sweep-out", help="directory for the JSON and the chart (default sweep-out/)")
    p.add_argument("--resume", default=None, metavar="JSON",
                   help="continue this sweep JSON: its measurements are kept and not repeated; it is updated in place")
    p.add_argument("--no-plot", action="store_true", help="skip the Pareto chart")


def sweep_config(args: argparse.Namespace, batches: list[int],
                 default_providers: tuple[str, ...] = DEFAULT_PROVIDERS) -> SweepConfig:
    """The :class:`SweepConfig` of parsed ``sweep`` / ``pick`` options (defaults filled in for the device)."""
    dev = resolve_device(args.device)
    quick = bool(args.quick)
    providers, explicit = parse_sweep_providers(args.providers)
    if not explicit:
        providers = default_providers
    reps, warmup = _reps(args, dev, quick)
    if reps < 1 or warmup < 0:
        raise SystemExit("--reps must be >= 1 and --warmup >= 0")
    mode = None if args.compile_mode in ("default", "none", "") else args.compile_mode
    dtype = args.dtype or ("bf16" if dev.type == "cuda" else "fp32")
    return SweepConfig(models=_parse_models(args.models, args.family, quick), batches=batches, dtype=dtype,
                       providers=providers, resolution=_resolution(args, dev, quick),
                       device=dev, reps=reps, warmup=warmup, compile_mode=mode, cuda_graph=bool(args.cuda_graph),
                       explicit=explicit, dedupe=not args.no_dedupe, quick=quick,
                       threads=args.threads or (1 if quick and dev.type == "cpu" else None))


def sweep_main(args: argparse.Namespace) -> int:
    """``python -m regnet_kernels sweep``; returns the exit status."""
    from regnet_kernels.benchmark.pareto import pareto_chart

    t_start = time.perf_counter()
    dev = resolve_device(args.device)
    cfg = sweep_config(args, _parse_batches(args.batch, [1, 32, 256] if dev.type == "cuda" else [1]))
    common = env_common(dev)
    if args.resume:
        path = Path(args.resume)
        doc = load_sweep(path)
    else:
        # a second run into the same directory keeps the first's other records (other batches, models)
        path = Path(args.out) / f"sweep-{device_slug(dev, common['device'])}.json"
        doc = load_sweep(path) if path.exists() else None
    print(f"regnet_kernels sweep: {len(cfg.models)} variant(s) x batch {','.join(map(str, cfg.batches))} x "
          f"{', '.join(cfg.providers)}; inference, {cfg.dtype}, {cfg.resolution}x{cfg.resolution} on "
          f"{common['device']}; torch {common['torch']}, git {common['git_commit'] or '?'}")
    if dev.type != "cuda":
        print(f"note: {_CPU_NOTE}")
    interrupted = False
    try:
        doc = run_sweep(cfg, doc, resume=bool(args.resume), path=path)
    except KeyboardInterrupt:
        interrupted = True
        doc = load_sweep(path) if path.exists() else {"records": [], "order": []}
    png = path.with_suffix(".png")
    if not args.no_plot and doc.get("records"):
        pareto_chart(png, doc)
    _print_sweep(doc, cfg, print)
    if dev.type != "cuda":
        print(f"note: {_CPU_NOTE}")
    print(f"\nwrote {path}" + (f", {png}" if not args.no_plot and png.exists() else ""))
    print(f"wall time {time.perf_counter() - t_start:.1f} s")
    if interrupted:
        print(f"interrupted: continue with --resume {path}", file=sys.stderr)
        return 130
    return 0


