"""Variant sweep and selection: ``python -m regnet_kernels sweep`` and ``python -m regnet_kernels pick``.

RegNet is a family to choose from by budget, and throughput order differs from FLOP order (grouped convs,
SE and memory traffic, not MACs, set the time). So the choice is made on measurements from the device
the model will run on:

* :func:`run_sweep` times every zoo variant (torchvision's 15 and pycls's 24, or a subset) at each batch
  with each provider (``eager_best`` = the faster of eager NCHW and channels_last, ``compile``, and
  :func:`regnet_kernels.optimize` with ``auto`` / ``triton`` / ``cuda``), inference only: median latency
  and its 10th/90th percentiles, images/s, peak memory. Each record joins the variant's published
  ImageNet top-1 (:data:`regnet_kernels.models.PUBLISHED`: torchvision's ``IMAGENET1K_V1`` or pycls's
  model zoo) and its exact MACs at the measured resolution, and is flagged where the measured latency
  order contradicts the MAC order. The JSON is rewritten after every variant, so an interrupted sweep
  resumes from it (``--resume``); a Pareto chart (top-1 against latency, one front per provider) sits
  beside it.
* :func:`choose` answers "the most accurate variant within this latency (and memory) budget at this
  batch", with the fastest provider and the measurement behind the answer, from a sweep JSON or from a
  sweep it runs itself.

Everything here is a measurement on this machine, labelled so; top-1 figures are published data. On a
machine without a GPU only eager PyTorch is timed (torch.compile on CPU is not the target, and Triton
on CPU runs in its interpreter, which times nothing useful); the output says so.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

__all__ = [
    "DEFAULT_PROVIDERS",
    "RECORD_FIELDS",
    "SCHEMA",
    "SWEEP_PROVIDERS",
    "Choice",
    "SweepConfig",
    "add_pick_arguments",
    "add_sweep_arguments",
    "choose",
    "load_sweep",
    "mac_order",
    "pareto_chart",
    "pareto_front",
    "pick_main",
    "published_accuracy",
    "run_sweep",
    "sweep_main",
    "variants",
]

SCHEMA = "regnet_kernels.sweep/1"

#: What a sweep can time. ``eager_best`` times eager NCHW and channels_last and keeps the faster; the
#: others are :data:`regnet_kernels.benchmark.providers.PROVIDERS`.
SWEEP_PROVIDERS: tuple[str, ...] = ("eager_best", "eager_nchw", "eager_nhwc", "compile", "triton", "cuda", "auto")
DEFAULT_PROVIDERS: tuple[str, ...] = ("eager_best", "compile", "auto")

#: Fields every measurement record carries (None where not applicable, e.g. a skipped provider).
RECORD_FIELDS: tuple[str, ...] = (
    "kind", "model", "family", "source", "batch", "dtype", "resolution", "provider", "status",
    "ms_median", "ms_p10", "ms_p90", "img_per_s", "peak_mem_bytes", "peak_mem_kind", "weights_bytes",
    "macs", "params", "top1", "top1_source", "device", "torch", "triton", "cuda", "git_commit", "date",
)

#: Record statuses a resumed sweep does not measure again ("failed" ones are retried).
_DONE = ("ok", "skipped", "oom")
_CPU_NOTE = ("no GPU: eager CPU timings only (torch.compile and the fused kernels are not timed on CPU: "
             "Triton would run in its interpreter). CPU latency order says nothing about a GPU's; run the "
             "sweep on the target GPU")
_CPU_MEM = "not measured on CPU (no allocator statistics); weights_bytes is a lower bound"
_CUDA_MEM = ("weights + one input + the rise of torch.cuda.max_memory_allocated over one forward "
             "(other rotating input buffers excluded)")


# ------------------------------------------------------------------------------------------------
# The zoo as a sweep sees it
# ------------------------------------------------------------------------------------------------
def _published_gmacs(name: str) -> float:
    from regnet_kernels.models import PUBLISHED

    pub = PUBLISHED[name]
    return float(pub["gmacs"]) if pub["gmacs"] is not None else pub["flops"] / 1e9


def _family(name: str) -> str:
    from regnet_kernels.models import get_model_params

    return "y" if get_model_params(name).se_ratio is not None else "x"


def _architecture(name: str) -> tuple:
    # Variants with the same blocks are the same network (torchvision's and pycls's copies of a design
    # point mostly coincide): time one, reuse the timing for the other.
    from regnet_kernels.models import get_model_params

    p = get_model_params(name)
    return (p.stem_width, p.blocks())


def variants(family: str = "both", *, quick: bool = False) -> list[str]:
    """Zoo variants of a family, by published MACs at 224 (smallest first).

    Args:
        family: ``"x"`` (RegNetX), ``"y"`` (RegNetY, with SE) or ``"both"``.
        quick: only the three smallest distinct networks (for CI).
    """
    from regnet_kernels.models import list_models

    if family not in ("x", "y", "both"):
        raise ValueError(f"family must be 'x', 'y' or 'both', got {family!r}")
    names = sorted((n for n in list_models() if family == "both" or _family(n) == family),
                   key=lambda n: (_published_gmacs(n), n))
    if not quick:
        return names
    out, seen = [], set()
    for n in names:
        arch = _architecture(n)
        if arch not in seen:
            seen.add(arch)
            out.append(n)
        if len(out) == 3:
            break
    return out


def published_accuracy(name: str) -> dict[str, Any]:
    """Published ImageNet-1k accuracy of a variant (data, not measured).

    Returns:
        ``top1``, ``top5`` (torchvision ``IMAGENET1K_V1`` or pycls; None for regnet_y_128gf, which has no
        such weights), ``top1_source``, and ``top1_best224`` / ``top1_best224_weights``: the best top-1
        of any published checkpoint evaluated at 224 (torchvision's V2 or SWAG-linear weights).
    """
    from regnet_kernels.models import PUBLISHED

    pub = PUBLISHED[name]
    tv = pub["source"] == "torchvision"
    best = max(((w["top1"], k) for k, w in pub["weights"].items() if w["resolution"] == 224), default=None)
    if best is None and pub["top1"] is not None:
        best = (pub["top1"], "pycls" if not tv else "IMAGENET1K_V1")
    return {
        "top1": pub["top1"],
        "top5": pub["top5"],
        "top1_source": ("torchvision IMAGENET1K_V1" if tv else "pycls model zoo") if pub["top1"] is not None
        else None,
        "top1_best224": best[0] if best else None,
        "top1_best224_weights": best[1] if best else None,
    }


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


def _split(values: Sequence[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def _parse_batches(values: Sequence[str] | str | None, default: list[int]) -> list[int]:
    items = _split(values)
    if not items:
        return list(default)
    try:
        out = [int(s) for s in items]
    except ValueError:
        raise SystemExit(f"--batch takes integers like 1,32,256, got {','.join(items)!r}") from None
    if any(b < 1 for b in out):
        raise SystemExit("--batch values must be >= 1")
    return list(dict.fromkeys(out))


def _parse_providers(values: Sequence[str] | str | None) -> tuple[tuple[str, ...], frozenset]:
    names = _split(values)
    if not names:
        return DEFAULT_PROVIDERS, frozenset()
    if "all" in names:
        names = [n for n in SWEEP_PROVIDERS if n not in ("eager_nchw", "eager_nhwc")]
    unknown = [n for n in names if n not in SWEEP_PROVIDERS]
    if unknown:
        raise SystemExit(f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(SWEEP_PROVIDERS)}")
    # eager first: compile reuses the best eager layout of the same (variant, batch)
    return tuple(p for p in SWEEP_PROVIDERS if p in names), frozenset(names)


def _parse_models(values: Sequence[str] | str | None, family: str, quick: bool) -> list[str]:
    from regnet_kernels.models import list_models

    names = _split(values)
    if not names:
        return variants(family, quick=quick)
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(list_models())}")
    return sorted(dict.fromkeys(names), key=lambda n: (_published_gmacs(n), n))


def _device(arg: str | None) -> torch.device:
    if arg in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(arg)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here")
    return dev


def _reps(args: argparse.Namespace, device: torch.device, quick: bool) -> tuple[int, int]:
    if device.type == "cuda":
        reps, warmup = (10, 3) if quick else (30, 5)
    else:
        reps, warmup = (3, 1) if quick else (5, 2)  # oneDNN builds its primitives on the first calls
    return (args.reps or reps), (args.warmup if args.warmup is not None else warmup)


def _resolution(args: argparse.Namespace, device: torch.device, quick: bool) -> int:
    if args.resolution is not None:
        if args.resolution < 32:
            raise SystemExit("--resolution must be >= 32 (five stride-2 stages)")
        return args.resolution
    if device.type == "cuda":
        return 224
    return 64 if quick else 128  # CPU: 224 for 39 variants takes long and measures no GPU anyway


# ------------------------------------------------------------------------------------------------
# Environment and file I/O
# ------------------------------------------------------------------------------------------------
def _env_common(device: torch.device) -> dict:
    # the bench report's helpers: the same device names and git description in both JSONs
    from regnet_kernels import backends
    from regnet_kernels.benchmark.report import _device_name, _git

    return {"device": _device_name(device), "torch": torch.__version__, "triton": backends._triton_version(),
            "cuda": torch.version.cuda, "git_commit": _git("rev-parse", "--short", "HEAD"),
            "date": _dt.date.today().isoformat()}


def _key(r: dict) -> tuple:
    return (r.get("model"), r.get("batch"), r.get("dtype"), r.get("resolution"), r.get("provider"),
            r.get("device"), bool(r.get("cuda_graph")))


def load_sweep(path: str | Path) -> dict:
    """A sweep JSON (as written by :func:`run_sweep`).

    Raises:
        SystemExit: with a clear message when the file is missing, not JSON, or not a sweep.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise SystemExit(f"cannot read sweep JSON {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise SystemExit(f"{path} is not valid JSON ({e}); a sweep interrupted mid-write leaves a .tmp file, "
                         "the JSON itself is replaced atomically") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("records"), list):
        raise SystemExit(f"{path} is not a regnet_kernels sweep (schema {SCHEMA!r})")
    return doc


def _write(path: Path, doc: dict) -> None:
    from regnet_kernels.benchmark.report import _finite

    path.parent.mkdir(parents=True, exist_ok=True)
    doc["updated"] = _dt.datetime.now().isoformat(timespec="seconds")
    tmp = path.with_suffix(".json.tmp")
    # written whole, then renamed: an interrupt never leaves a half-written JSON to resume from
    tmp.write_text(json.dumps(_finite(doc), indent=1, default=str, allow_nan=False))
    tmp.replace(path)


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
    rec = {"kind": "measurement", "model": name, "family": _family(name), "source": pub["source"],
           "batch": batch, "dtype": cfg.dtype, "resolution": cfg.resolution, "provider": provider,
           "mode": "infer", "status": None, "ms_median": None, "ms_p10": None, "ms_p90": None, "img_per_s": None,
           "peak_mem_bytes": None, "peak_mem_kind": None, "weights_bytes": None, "cuda_graph": bool(cfg.cuda_graph),
           "cpu_threads": torch.get_num_threads() if cfg.device.type == "cpu" else None,
           "macs": cx["macs"], "params": cx["params"], "gmacs_224_published": _published_gmacs(name),
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
    common = _env_common(dev)
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
    by_key = {_key(r): r for r in doc["records"]}
    skip_reasons = {p: _skip_reason(p, cfg) for p in cfg.providers}

    def todo(name: str) -> list[tuple[int, str]]:
        out = []
        for b in cfg.batches:
            for p in cfg.providers:
                probe = {"model": name, "batch": b, "dtype": cfg.dtype, "resolution": cfg.resolution, "provider": p,
                         "device": common["device"], "cuda_graph": cfg.cuda_graph}
                old = by_key.get(_key(probe))
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
            timed_arch.setdefault(_architecture(r["model"]), r["model"])
    try:
        for index, name in enumerate(cfg.models, start=1):
            jobs = work[name]
            if not jobs:
                continue
            t_variant = time.perf_counter()
            cx = complexity(name, cfg.resolution)
            arch = _architecture(name)
            twin = timed_arch.get(arch) if cfg.dedupe else None
            state = _VariantState(name)
            new: list[dict] = []
            for batch in cfg.batches:
                # compile runs in the faster eager layout, measured now or by the sweep being resumed
                earlier = by_key.get(_key({"model": name, "batch": batch, "dtype": cfg.dtype,
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
                    twin_rec = by_key.get(_key({**rec, "model": twin})) if twin else None
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
                    by_key[_key(rec)] = rec
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
                _write(path, doc)
            if cfg.stop_when is not None and cfg.stop_when(new):
                log(f"stopped after {name}: the answer is settled")
                break
    finally:
        torch.set_num_threads(threads)
        bar.close()
        doc["records"] = list(by_key.values())
        mac_order(doc)
        if path is not None:
            _write(path, doc)
    return doc


# ------------------------------------------------------------------------------------------------
# MAC order vs measured order, Pareto fronts
# ------------------------------------------------------------------------------------------------
def _groups(records: Iterable[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("kind") == "measurement" and r.get("status") == "ok" and r.get("ms_median") is not None:
            k = (r.get("device"), r.get("batch"), r.get("dtype"), r.get("resolution"), r.get("provider"),
                 bool(r.get("cuda_graph")))
            out.setdefault(k, []).append(r)
    return out


def mac_order(doc: dict) -> list[dict]:
    """Marks where measured latency order disagrees with MAC order; stores and returns ``doc["order"]``.

    Within each (device, batch, dtype, resolution, provider) group, a pair of variants is an *inversion*
    when the one with more MACs is faster beyond noise: its 90th-percentile latency is below the other's
    10th percentile. Every record of the group gets ``mac_order = {"rank_macs", "rank_latency",
    "faster_with_more_macs": [names]}``; the summary per group has Kendall's tau between MACs and median
    latency (1 = same order) and the inversions.
    """
    summary = []
    for (device, batch, dtype, res, provider, graph), recs in sorted(_groups(doc["records"]).items(),
                                                                      key=lambda kv: tuple(map(str, kv[0]))):
        by_macs = sorted(recs, key=lambda r: (r["macs"], r["model"]))
        by_ms = sorted(recs, key=lambda r: (r["ms_median"], r["model"]))
        inversions = []
        for r in recs:
            faster = [o["model"] for o in by_macs if o["macs"] > r["macs"] and o["ms_p90"] < r["ms_p10"]]
            r["mac_order"] = {"rank_macs": by_macs.index(r) + 1, "rank_latency": by_ms.index(r) + 1,
                              "faster_with_more_macs": faster}
            inversions += [[r["model"], o] for o in faster]
        concordant = discordant = 0
        for i, a in enumerate(recs):
            for b in recs[i + 1:]:
                s = (a["macs"] - b["macs"]) * (a["ms_median"] - b["ms_median"])
                concordant += s > 0
                discordant += s < 0
        pairs = len(recs) * (len(recs) - 1) // 2
        summary.append({"device": device, "batch": batch, "dtype": dtype, "resolution": res, "provider": provider,
                        "cuda_graph": graph, "variants": len(recs),
                        "kendall_tau": (concordant - discordant) / pairs if pairs else None,
                        "inversions": sorted(inversions)})
    doc["order"] = summary
    return summary


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

    from regnet_kernels.benchmark.plots import _plt

    plt = _plt()
    cfg = doc.get("config", {})
    want = (doc.get("device"), cfg.get("dtype"), cfg.get("resolution"))
    groups = {k: v for k, v in _groups(doc["records"]).items()
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
            here = _env_common(_device(None))["device"]
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
            rows.append((acc, model, None, timed[0], f"{_mib(mem(r))} > {memory_mb:g} MiB at {r['ms_median']:.3g} ms "
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


def _mib(b: int | None) -> str:
    if b is None:
        return "-"
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def _describe(r: dict, accuracy: str) -> str:
    mem = (f"peak {_mib(r['peak_mem_bytes'])}" if r.get("peak_mem_bytes") is not None
           else f"peak memory not measured (weights {_mib(r.get('weights_bytes'))})")
    extra = f", timing of identical {r['measured_as']}" if r.get("measured_as") else ""
    src = r.get("top1_source") if accuracy == "top1" else r.get("top1_best224_weights")
    return (f"{r['model']}: top-1 {r[accuracy]:.2f}% ({src}), "
            f"{r['ms_median']:.3g} ms median (p10-p90 {r['ms_p10']:.3g}-{r['ms_p90']:.3g}), "
            f"{r['img_per_s']:.0f} img/s, {mem}; provider {r['provider']} ({r.get('layout')}{extra}); "
            f"{r.get('macs', 0) / 1e9:.2f} GMACs at {r['resolution']}px")


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def _print_sweep(doc: dict, cfg: SweepConfig, log: Callable[[str], None]) -> None:
    from regnet_kernels.benchmark.report import _table

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
            row.append(_mib(min((r["peak_mem_bytes"] for r in ok if r.get("peak_mem_bytes") is not None),
                                default=None)))
            rows.append(row)
        log(_table(["variant", "GMACs", "top-1"] + list(cfg.providers) + ["peak mem"], rows))
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
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=("x", "y", "both"), default="both", help="RegNetX, RegNetY or both (default)")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="zoo variants (comma or space separated; default: every variant of --family)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="autocast dtype (fp32: no autocast); default bf16 on GPU, fp32 on CPU (where bf16 autocast "
                        "is usually slower and nobody deploys it)")
    p.add_argument("--providers", nargs="+", default=None, metavar="NAME",
                   help=f"any of {', '.join(SWEEP_PROVIDERS)}, or all (default: sweep {','.join(DEFAULT_PROVIDERS)}, "
                        "pick eager_best,auto; on CPU only eager is timed unless compile is named)")
    p.add_argument("--resolution", type=int, default=None,
                   help="square input size (default 224 on GPU; CPU 128, --quick 64)")
    p.add_argument("--quick", action="store_true",
                   help="CI subset: the 3 smallest distinct variants, few repetitions, small CPU inputs")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (GPU 30, CPU 5; --quick 10 / 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (GPU 5, CPU 2; --quick 3 / 1)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode on GPU (default: torch's default; max-autotune over every variant and "
                        "batch takes hours)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="time non-compile providers as CUDA-graph replays (batch-1 latency without launch overhead)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads while timing (default: torch's; --quick on CPU: 1, because on a shared CI "
                        "machine spinning worker threads make small CPU timings slow and erratic)")
    p.add_argument("--no-dedupe", action="store_true",
                   help="time torchvision's and pycls's copies of the same network separately")


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The ``sweep`` subcommand's options."""
    _add_common(p)
    p.add_argument("--batch", nargs="+", default=None, metavar="N",
                   help="batches, e.g. 1,32,256 (default: GPU 1,32,256; CPU 1)")
    p.add_argument("--out", default="sweep-out", help="directory for the JSON and the chart (default sweep-out/)")
    p.add_argument("--resume", default=None, metavar="JSON",
                   help="continue this sweep JSON: its measurements are kept and not repeated; it is updated in place")
    p.add_argument("--no-plot", action="store_true", help="skip the Pareto chart")


def add_pick_arguments(p: argparse.ArgumentParser) -> None:
    """The ``pick`` subcommand's options."""
    p.add_argument("--latency-ms", type=float, required=True, help="budget: median latency of one forward")
    p.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    p.add_argument("--memory-mb", type=float, default=None, help="budget: peak memory in MiB")
    p.add_argument("--from", dest="from_json", default=None, metavar="JSON",
                   help="answer from this sweep JSON (default: measure now, most accurate variants first)")
    p.add_argument("--accuracy", choices=("top1", "top1_best224"), default="top1",
                   help="top1: torchvision IMAGENET1K_V1 / pycls (default); top1_best224: best published "
                        "checkpoint at 224 (torchvision V2 / SWAG-linear)")
    p.add_argument("--device-name", default=None, help="with --from: which device's records, if several")
    p.add_argument("--out", default=None, help="also write the measurements made now as a sweep JSON here")
    _add_common(p)


def _config(args: argparse.Namespace, batches: list[int],
            default_providers: tuple[str, ...] = DEFAULT_PROVIDERS) -> SweepConfig:
    dev = _device(args.device)
    quick = bool(args.quick)
    providers, explicit = _parse_providers(args.providers)
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
    from regnet_kernels.benchmark.report import _slug

    t_start = time.perf_counter()
    dev = _device(args.device)
    cfg = _config(args, _parse_batches(args.batch, [1, 32, 256] if dev.type == "cuda" else [1]))
    common = _env_common(dev)
    if args.resume:
        path = Path(args.resume)
        doc = load_sweep(path)
    else:
        # a second run into the same directory keeps the first's other records (other batches, models)
        path = Path(args.out) / f"sweep-{_slug(dev, common['device'])}.json"
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


def _pick_order(models: list[str], accuracy: str) -> list[str]:
    # most accurate first: once one fits, every more accurate variant has been measured and excluded,
    # so the answer is exact without timing the rest
    acc = {m: published_accuracy(m)[accuracy] for m in models}
    return sorted((m for m in models if acc[m] is not None), key=lambda m: (-acc[m], _published_gmacs(m)))


def pick_main(args: argparse.Namespace) -> int:
    """``python -m regnet_kernels pick``; returns 0 with an answer, 1 when nothing fits."""
    t_start = time.perf_counter()
    if args.latency_ms <= 0 or args.batch < 1 or (args.memory_mb is not None and args.memory_mb <= 0):
        raise SystemExit("pick: --latency-ms and --memory-mb must be > 0 and --batch >= 1")
    accuracy = args.accuracy
    if args.from_json:
        doc = load_sweep(args.from_json)
        source = f"sweep {args.from_json}"
        records = doc["records"]
        choice = choose(records, latency_ms=args.latency_ms, batch=args.batch, memory_mb=args.memory_mb,
                        dtype=args.dtype, resolution=args.resolution, device=args.device_name, accuracy=accuracy)
    else:
        # torch.compile costs about a minute per variant and batch: pick times it only when named
        cfg = _config(args, [args.batch], default_providers=("eager_best", "auto"))
        cfg.models = _pick_order(cfg.models, accuracy)
        if not cfg.models:
            raise SystemExit(f"pick: none of the candidate variants has a published {accuracy}")

        def settled(new: list[dict]) -> bool:
            return choose(new, latency_ms=args.latency_ms, batch=args.batch, memory_mb=args.memory_mb,
                          accuracy=accuracy).record is not None

        cfg.stop_when = settled
        common = _env_common(cfg.device)
        print(f"regnet_kernels pick: measuring {len(cfg.models)} candidate(s), most accurate first, until one fits "
              f"{args.latency_ms:g} ms at batch {args.batch} ({', '.join(cfg.providers)}; {cfg.dtype}, "
              f"{cfg.resolution}x{cfg.resolution} on {common['device']})")
        path = None
        if args.out:
            from regnet_kernels.benchmark.report import _slug

            path = Path(args.out) / f"sweep-{_slug(cfg.device, common['device'])}.json"
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

