"""``python -m regnet_kernels bench``: numerics, timing and the traffic model of every provider, as a
table, a JSON file and PNG charts.

Defaults do something useful on any machine:

* GPU: ``regnet_y_1_6gf``, inference (batch 256) and a training step (batch 128), bf16, every provider.
* CPU (under a minute on two cores): numerics of every fused path through the Triton interpreter on a
  tiny RegNetY (conv+BN+ReLU, SE and whole blocks; fp32, fp16 and bf16; inference and training), eager
  CPU timing of ``regnet_y_400mf`` in **fp32** at batch 2, 224x224, on one thread (reduced-precision
  autocast on a CPU measures nothing a GPU user needs; one thread keeps a busy machine from distorting
  the times many-fold), the traffic model with the H100/H200 floors, and the ``aot`` summary when one is
  cached. ``--full`` is the larger run: numerics on ``regnet_y_400mf`` itself and timing in ``--dtype``
  (bf16) at batch 4, 224x224, on torch's threads (tens of minutes).

Everything printed or stored is labelled ``model`` (the traffic model of
:mod:`regnet_kernels.benchmark.roofline`: arithmetic, no hardware) or ``measurement`` (this run on this
machine). The one quantity that crosses the line, achieved GB/s, is *modelled bytes / measured time*
and is named so. The JSON under ``--out`` is ``<device-slug>-<YYYY-MM-DD>.json`` (records of a second
run on the same day replace those with the same key and keep the others), beside two PNGs. The report
ends with a five-line summary: the numerics verdict, the model on H100 and H200, where the files are.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from regnet_kernels.benchmark.common import (
    add_run_options, device_name, device_slug, git, int_at_least, parse_providers, resolution_type,
    write_json_atomic,
)

__all__ = ["add_arguments", "main", "merge_write", "parse_bench_providers", "Config", "REQUIRED_FIELDS", "SCHEMA",
           "CPU_NUMERICS_MODEL"]

#: Fields every measurement record carries (None where not applicable, e.g. a skipped provider).
REQUIRED_FIELDS: Tuple[str, ...] = (
    "model", "mode", "batch", "dtype", "provider", "ms_median", "ms_p10", "ms_p90", "img_per_s",
    "peak_mem_bytes", "device", "torch", "triton", "cuda", "git_commit",
)
_MODES = ("infer", "train")
_DTYPES = ("fp32", "fp16", "bf16")
SCHEMA = "regnet_kernels.bench/1"
#: The CPU default's numerics model (see :data:`regnet_kernels.benchmark.providers.TINY_MODELS`).
CPU_NUMERICS_MODEL = "regnety_tiny"


# ------------------------------------------------------------------------------------------------
# Arguments and configuration
# ------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``bench`` subcommand's options to ``p``."""
    from regnet_kernels.benchmark.providers import PROVIDERS

    res = resolution_type()
    p.add_argument("--model", default=None,
                   help="zoo model (default: regnet_y_1_6gf on GPU, regnet_y_400mf on CPU)")
    p.add_argument("--mode", choices=("infer", "train", "both"), default="both",
                   help="inference, a full training step (fwd + bwd + SGD), or both (default)")
    p.add_argument("--batch", type=int_at_least(1), default=None,
                   help="images per step (default: GPU 256 infer / 128 train; CPU 2, --full 4)")
    add_run_options(
        p, PROVIDERS,
        dtype_help=". Default bf16 on GPU. CPU: the numerics check runs all three (this option picks one) and "
                   "timing is fp32; --full: bf16 throughout",
        providers_help=" (space or comma separated; default: all that can run here; torch.compile on CPU only "
                       "when named)",
        resolution_help="image size of the timing (default 224; CPU --quick 64)")
    p.add_argument("--full", action="store_true",
                   help="CPU: the larger run (numerics on --model itself, timing in --dtype at batch 4); tens of "
                        "minutes on two cores")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and smaller timing sizes")
    p.add_argument("--out", default="bench-out", help="directory for the JSON and PNGs (default bench-out/)")
    p.add_argument("--reps", type=int_at_least(1), default=None,
                   help="timed repetitions (default GPU 50, CPU 5, --full 10; --quick 15 / 3)")
    p.add_argument("--warmup", type=int_at_least(0), default=None, help="untimed repetitions first")
    p.add_argument("--numerics-model", default=None,
                   help=f"model of the parity check (default: {CPU_NUMERICS_MODEL} on CPU, --model otherwise)")
    p.add_argument("--numerics-batch", type=int_at_least(2, " (training BatchNorm needs two values)"),
                   default=None, help="batch of the parity check (GPU 16, CPU 2)")
    p.add_argument("--numerics-resolution", type=res, default=None,
                   help="image size of the parity check (GPU 224, CPU 32, --full 48)")
    p.add_argument("--no-numerics", action="store_true", help="skip the parity check")
    p.add_argument("--no-timing", action="store_true", help="skip timing (model + numerics only)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="time inference as CUDA-graph replays (batch-1 latency); not for compile")
    p.add_argument("--compile-mode", default="max-autotune",
                   help="torch.compile mode on GPU ('default' for torch's default; --quick uses default)")
    p.add_argument("--layouts", choices=("default", "both"), default="default",
                   help="fused providers: channels_last only (default) or time NCHW too and keep the faster")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="CPU threads (default: 1 for the CPU default run, whose timing a busy machine would otherwise "
                        "distort by tens of times; torch's own with --full)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG charts")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any provider fails numerics")


@dataclass
class Config:
    """Resolved settings of one run (defaults filled in for the device).

    ``dtype`` is the timing dtype; ``numerics_dtypes`` those of the parity check, on ``numerics_model``;
    the traffic model runs ``model`` at ``model_batches``, ``model_resolution`` and ``model_dtype``.
    """

    model: str
    modes: Tuple[str, ...]
    batches: Dict[str, int]
    resolution: int
    dtype: str
    providers: Tuple[str, ...]
    explicit: frozenset
    quick: bool
    out: Path
    device: torch.device
    reps: int
    warmup: int
    numerics: bool
    timing: bool
    numerics_batch: int
    numerics_resolution: int
    cuda_graph: bool
    compile_mode: Optional[str]
    layouts: str
    plots: bool
    strict: bool
    model_batches: Dict[str, int] = field(default_factory=dict)
    model_resolution: int = 224
    full: bool = False
    numerics_model: str = ""
    numerics_dtypes: Tuple[str, ...] = ()
    numerics_providers: Tuple[str, ...] = ()
    model_dtype: str = "bf16"
    threads: Optional[int] = None


def parse_bench_providers(values) -> Tuple[Tuple[str, ...], frozenset]:
    """``--providers`` of ``bench``: names in run order and those named explicitly (``all``: every one)."""
    from regnet_kernels.benchmark.providers import PROVIDERS

    return parse_providers(values, PROVIDERS, default=PROVIDERS, all_means=PROVIDERS, all_is_explicit=False,
                           command="bench")


def _config(args: argparse.Namespace) -> Config:
    from regnet_kernels.benchmark.providers import TINY_MODELS
    from regnet_kernels.models import list_models

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    quick, full = bool(getattr(args, "quick", False)), bool(getattr(args, "full", False))
    if quick and full:
        raise SystemExit("bench: --quick and --full exclude each other")
    model = args.model or ("regnet_y_1_6gf" if cuda else "regnet_y_400mf")
    for name in (model, args.numerics_model):
        if name is not None and name not in list_models() and name not in TINY_MODELS:
            raise SystemExit(f"bench: unknown model {name!r}; known: {', '.join(list_models() + list(TINY_MODELS))}")
    if model in TINY_MODELS:
        raise SystemExit(f"bench: {model} is for --numerics-model only (the traffic model needs a zoo model)")
    modes = _MODES if args.mode == "both" else (args.mode,)
    cpu_default = not cuda and not full
    if cuda:
        dtype = args.dtype or "bf16"
        batches = {"infer": args.batch or 256, "train": args.batch or 128}
        res = args.resolution or 224
        reps, warmup = (15, 3) if quick else (50, 10)
        nb, nr = 16 if not quick else 8, 224
    elif full:
        dtype = args.dtype or "bf16"
        batches = {m: args.batch or 4 for m in _MODES}
        res = args.resolution or 224
        reps, warmup = 10, 3  # oneDNN builds primitives on the first calls
        nb, nr = 2, 48  # the interpreter pays per launch, not per element: tiny is enough and not cheaper
    else:  # CPU default: fp32 timing only; the parity check covers the dtypes
        dtype = "fp32"
        batches = {m: args.batch or 2 for m in _MODES}
        res = args.resolution or (64 if quick else 224)
        reps, warmup = (3, 1) if quick else (5, 2)
        nb, nr = 2, 32
    providers, explicit = parse_bench_providers(args.providers)
    compile_mode = None if (args.compile_mode in ("default", "none", "") or quick) else args.compile_mode
    model_batches = dict(batches) if cuda or args.batch else {"infer": 256, "train": 128}
    numerics_model = args.numerics_model or (CPU_NUMERICS_MODEL if cpu_default else model)
    numerics_dtypes = ((args.dtype,) if args.dtype else _DTYPES) if cpu_default else (dtype,)
    # the CPU default checks the fused path: the reference and the fused providers, not the other eager layout
    numerics_providers = tuple(p for p in providers if not cpu_default or p in explicit or p not in ("eager_nhwc",))
    return Config(
        model=model, modes=modes, batches=batches, resolution=res, dtype=dtype, providers=providers,
        explicit=explicit, quick=quick, out=Path(args.out), device=device,
        reps=args.reps or reps, warmup=args.warmup if args.warmup is not None else warmup,
        numerics=not args.no_numerics, timing=not args.no_timing,
        numerics_batch=args.numerics_batch or nb, numerics_resolution=args.numerics_resolution or nr,
        cuda_graph=bool(args.cuda_graph), compile_mode=compile_mode, layouts=args.layouts,
        plots=not args.no_plots, strict=bool(args.strict), model_batches=model_batches,
        model_resolution=res if cuda else (args.resolution or 224), full=full, numerics_model=numerics_model,
        numerics_dtypes=numerics_dtypes, numerics_providers=numerics_providers,
        model_dtype=dtype if not cpu_default else (args.dtype or "bf16"),
        threads=getattr(args, "threads", None) or (1 if cpu_default else None),
    )


def _interpreter_note(cfg: Config) -> Optional[str]:
    """Why the Triton kernels run in the interpreter here, when they do (the CLI turns it on without a GPU)."""
    from regnet_kernels import backends

    if cfg.device.type == "cuda" or not backends.triton_interpreting():
        return None
    return "no GPU: the Triton kernels run (slowly) in the interpreter (TRITON_INTERPRET=1) for the numerics check"


# ------------------------------------------------------------------------------------------------
# The three parts: model, numerics, timing
# ------------------------------------------------------------------------------------------------
def _model_part(cfg: Config, common: dict) -> Tuple[List[dict], Dict[Tuple[str, str], object]]:
    from regnet_kernels.benchmark import roofline as R

    records, traffic = [], {}
    devices = list(R.DEVICES.values())
    for mode in cfg.modes:
        for regime in R.REGIMES:
            t = R.model_traffic(cfg.model, regime=regime, mode=mode, batch=cfg.model_batches[mode],
                                resolution=cfg.model_resolution, dtype=cfg.model_dtype)
            traffic[(mode, regime)] = t
            rec = {"kind": "model", **common, "provider": None, **t.summary(devices),
                   "layers": [{"name": la.name, "group": la.group, "bytes": la.bytes, "flops": la.flops,
                               "launches": la.launches} for la in t.layers]}
            records.append(rec)
    return records, traffic


def _time_provider(cfg: Config, name: str, mode: str, base, best_layout: Optional[str], bar) -> dict:
    from regnet_kernels.benchmark import providers as P
    from regnet_kernels.benchmark import timing as T
    from regnet_kernels.benchmark.memory import saved_activation_bytes

    dev = cfg.device
    wl = P.Workload(cfg.model, mode, cfg.batches[mode], cfg.resolution, cfg.dtype, dev)
    if name == "compile":
        layouts = [best_layout or "nchw"]
    elif name in P.FUSED_PROVIDERS and cfg.layouts == "both":
        layouts = ["nchw", "nhwc"]
    else:
        layouts = [None]
    best = None
    for layout in layouts:
        built = P.build(name, wl, base, layout=layout, compile_mode=cfg.compile_mode)
        inputs = T.rotating_inputs(lambda i, lay=built.layout: wl.make_inputs(i, lay), wl.input_bytes, dev)
        t0 = time.perf_counter()
        built = P.with_compile_fallback(built, base, inputs[0])
        first_s = time.perf_counter() - t0
        with built.active():
            if cfg.cuda_graph and mode == "infer" and dev.type == "cuda" and name != "compile":
                timing = T.time_cuda_graph(lambda x, b=built: b.forward(x, graph_safe=True), [x for x, _ in inputs],
                                           device=dev, warmup=cfg.warmup, reps=cfg.reps)
            else:
                timing = T.time_fn(built.step, inputs, device=dev, warmup=cfg.warmup, reps=cfg.reps,
                                   bytes_per_set=wl.input_bytes, progress=bar.update if bar else None)
        if best is None or timing.ms_median < best[1].ms_median:
            best = (built, timing, first_s, inputs)
    built, timing, first_s, inputs = best
    rec = {"status": "ok", "layout": built.layout, "backend_resolved": built.backend_resolved,
           "fusion": built.fusion, "compile_mode": built.compile_mode if name == "compile" else None,
           "notes": list(built.notes), "timing": timing.to_dict(), "first_step_s": round(first_s, 3),
           "cuda_graph": timing.method == "cuda_graph", "cudnn_benchmark": built.cudnn_benchmark,
           "ms_median": timing.ms_median, "ms_p10": timing.ms_p10, "ms_p90": timing.ms_p90,
           "img_per_s": wl.batch / timing.ms_median * 1e3, "peak_mem_bytes": timing.peak_mem_bytes}
    x, t = inputs[0]
    with built.active():
        if dev.type == "cuda":
            key = "launches_per_forward" if mode == "infer" else "launches_per_step"
            rec[key] = T.count_cuda_kernels(lambda b=built: b.step(x, t))
        if mode == "infer" and name != "compile":
            segs = P.segments(built.module)
            if segs is not None:
                def ctx():
                    import contextlib

                    stack = contextlib.ExitStack()
                    stack.enter_context(torch.no_grad())
                    stack.enter_context(wl.autocast())
                    return stack
                rec["layer_ms"] = T.time_segments(segs, x, device=dev, warmup=min(cfg.warmup, 3),
                                                  reps=max(3, min(cfg.reps, 10)), context=ctx)
        if mode == "train" and name != "compile":
            def fwd(m, xx):
                with wl.autocast():
                    return m(xx)
            rec["saved_activation_bytes"] = saved_activation_bytes(built.module, x, forward=fwd)
    if dev.type == "cuda":  # the caller drops this provider's model; hand its cached blocks back
        best = built = inputs = None
        torch.cuda.empty_cache()
    return rec


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def merge_write(path: Path, doc: dict) -> None:
    """Write ``doc``; records already in ``path`` with another key are kept (several runs per day)."""

    def key(r):
        return (r.get("kind"), r.get("model"), r.get("mode"), r.get("batch"), r.get("resolution"), r.get("dtype"),
                r.get("provider"), r.get("regime"), r.get("cuda_graph"))

    if path.exists():
        try:
            old = json.loads(path.read_text())
            if old.get("schema") == doc["schema"]:
                new_keys = {key(r) for r in doc["records"]}
                doc["records"] = [r for r in old.get("records", []) if key(r) not in new_keys] + doc["records"]
        except (OSError, ValueError):
            pass
    write_json_atomic(path, doc)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def _bar(desc: str, total: int, unit: str):
    """A tqdm bar on stderr; without a terminal (CI, a pipe) one line announcing the phase instead."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)
    if bar.disable and total:
        print(f"[bench] {desc}: {total} {unit}(s)...", file=sys.stderr, flush=True)
    return bar


def _numerics_part(cfg: Config, base, base_numerics) -> Dict[Tuple[str, str], Dict[str, dict]]:
    from regnet_kernels.benchmark.numerics import check_model_numerics

    numerics: Dict[Tuple[str, str], Dict[str, dict]] = {}
    if not cfg.numerics:
        return numerics
    providers = cfg.numerics_providers or cfg.providers
    per_mode = len(providers) + ("eager_nchw" not in providers)  # the reference always runs
    bar = _bar("numerics", len(cfg.numerics_dtypes) * len(cfg.modes) * per_mode, "check")
    for dtype in cfg.numerics_dtypes:
        for mode in cfg.modes:
            def progress(name, mode=mode, dtype=dtype):
                bar.set_postfix_str(f"{dtype} {mode} {name}")
                bar.update(1)
            numerics[(dtype, mode)] = check_model_numerics(
                providers, model=cfg.numerics_model, mode=mode, dtype=dtype, device=cfg.device,
                batch=cfg.numerics_batch, resolution=cfg.numerics_resolution, base=base_numerics,
                allow_slow=cfg.explicit, progress=progress)
    bar.close()
    return numerics


def _times_the_reference(cfg: Config, name: str) -> bool:
    """CPU default: a fused provider whose ops resolve to the eager reference is not timed (unless named)."""
    from regnet_kernels import backends
    from regnet_kernels.benchmark import providers as P

    if cfg.device.type == "cuda" or cfg.full or name not in P.FUSED_PROVIDERS or name in cfg.explicit:
        return False
    sample = torch.empty(1, dtype=P.DTYPES[cfg.dtype], device=cfg.device)
    try:
        return backends.resolve("conv_bn_act", [sample], name) == "eager"
    except backends.BackendUnavailableError:
        return False


def _saved_bytes(cfg: Config, name: str, base) -> int:
    """Activation bytes ``name`` saves for backward in one training forward at the timing size."""
    from regnet_kernels.benchmark import providers as P
    from regnet_kernels.benchmark.memory import saved_activation_bytes

    wl = P.Workload(cfg.model, "train", cfg.batches["train"], cfg.resolution, cfg.dtype, cfg.device)
    built = P.build(name, wl, base)
    x, _ = wl.make_inputs(0, built.layout)

    def fwd(m, xx):
        with wl.autocast():
            return m(xx)
    return saved_activation_bytes(built.module, x, forward=fwd)


def _timing_part(cfg: Config, base, common: dict, numerics) -> List[dict]:
    from regnet_kernels.benchmark import providers as P

    measured: List[dict] = []
    bar = _bar("timing", len(cfg.modes) * len(cfg.providers) * cfg.reps if cfg.timing else 0, "step")
    for mode in cfg.modes:
        best_layout = None
        for name in cfg.providers:
            rec = {"kind": "measurement", **common, "mode": mode, "batch": cfg.batches[mode],
                   "resolution": cfg.resolution, "dtype": cfg.dtype, "provider": name,
                   "description": P.DESCRIPTIONS[name], "ms_median": None, "ms_p10": None, "ms_p90": None,
                   "img_per_s": None, "peak_mem_bytes": None, "cuda_graph": False}
            num = numerics.get((cfg.dtype, mode), {}).get(name)
            if num is not None:
                rec["numerics"] = num
            if not cfg.timing:
                reason = "timing skipped (--no-timing)"
            else:
                reason = P.why_not(name, cfg.device, purpose="time", allow_slow=name in cfg.explicit,
                                   dtype=cfg.dtype)
            if reason is None and _times_the_reference(cfg, name):
                reason = (f"{name} resolves to the eager reference on this device: its time would be eager's "
                          "(--full or --providers times it)")
                if mode == "train":  # what the fused modules keep for backward does not depend on the backend
                    rec["saved_activation_bytes"] = _saved_bytes(cfg, name, base)
            if reason is not None:
                ran = any(res.get(name, {}).get("status") == "ok" for (_, m), res in numerics.items() if m == mode)
                rec.update(status="numerics_only" if ran else "skipped", skip_reason=reason)
                measured.append(rec)
                if cfg.timing:
                    bar.update(cfg.reps)
                continue
            bar.set_postfix_str(f"{mode} {name}")
            try:
                rec.update(_time_provider(cfg, name, mode, base, best_layout, bar))
            except Exception as e:  # one broken provider must not sink the report
                rec.update(status="failed", error=f"{type(e).__name__}: {e}"[:500])
            measured.append(rec)
            if name in ("eager_nchw", "eager_nhwc") and rec["status"] == "ok":
                eagers = [r for r in measured if r["mode"] == mode and r["provider"] in ("eager_nchw", "eager_nhwc")
                          and r["status"] == "ok"]
                best_layout = min(eagers, key=lambda r: r["ms_median"])["layout"]
    bar.close()
    return measured


def _derive(cfg: Config, measured: List[dict], spec) -> None:
    """Speed-up over the faster eager layout, modelled bytes, GB/s and % of the floor, per timed record."""
    from regnet_kernels.benchmark import providers as P
    from regnet_kernels.benchmark import roofline as R

    for mode in cfg.modes:
        eager_ms = [r["ms_median"] for r in measured if r["mode"] == mode and r["status"] == "ok"
                    and r["provider"] in ("eager_nchw", "eager_nhwc")]
        best = min(eager_ms) if eager_ms else None
        for r in measured:
            if r["mode"] != mode or r["status"] != "ok":
                continue
            regime = P.model_regime(r["provider"], r.get("backend_resolved"), r.get("fusion"))
            t = R.model_traffic(cfg.model, regime=regime, mode=mode, batch=r["batch"], resolution=cfg.resolution,
                                dtype=cfg.dtype)
            r["model_regime"] = regime
            r["model_bytes"] = t.bytes
            r["model_launches"] = t.launches
            r["gbps"] = t.bytes / (r["ms_median"] * 1e-3) / 1e9
            r["floor_ms"] = t.floor_ms(spec) if spec else None
            r["pct_of_floor"] = 100.0 * r["floor_ms"] / r["ms_median"] if spec else None
            r["speedup_vs_best_eager"] = best / r["ms_median"] if best else None


def _plots(cfg: Config, stem: str, measured: List[dict], traffic: dict, device: str) -> List[Path]:
    from regnet_kernels.benchmark import plots
    from regnet_kernels.benchmark import roofline as R

    title = (f"{cfg.model}, {cfg.dtype}, " + ", ".join(f"{m} batch {cfg.batches[m]}" for m in cfg.modes)
             + f", {cfg.resolution}px (measured) | model: " + ", ".join(
                 f"{m} batch {cfg.model_batches[m]}" for m in cfg.modes) + f", {cfg.model_resolution}px, "
             f"{cfg.model_dtype}")
    floors = {f"{mode} {reg}": {d.name: traffic[(mode, reg)].floor_ms(d) for d in R.DEVICES.values()}
              for (mode, reg) in traffic}
    p1 = cfg.out / f"{stem}-speedup.png"
    plots.speedup_chart(str(p1), measured=measured, floors=floors, device=device, title=title)
    mode0 = "infer" if "infer" in cfg.modes else cfg.modes[0]
    model_bytes = {reg: traffic[(mode0, reg)].by_group() for reg in R.REGIMES if (mode0, reg) in traffic}
    layer_ms = {r["provider"]: r["layer_ms"] for r in measured if r.get("layer_ms")}
    p2 = cfg.out / f"{stem}-layers.png"
    plots.layer_chart(str(p2), model_bytes=model_bytes, measured_ms=layer_ms, device=device, title=title,
                      model_label=f"{mode0}, batch {cfg.model_batches[mode0]}, {cfg.model_dtype}")
    return [p1, p2]


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_threads(n: Optional[int]) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def main(args: argparse.Namespace) -> int:
    """Run the benchmark report; returns the exit status (1 only with ``--strict`` and a numerics failure)."""
    cfg = _config(args)
    interp_note = _interpreter_note(cfg)
    with _torch_threads(cfg.threads if cfg.device.type == "cpu" else None):
        return _report(cfg, interp_note)


def _report(cfg: Config, interp_note: Optional[str]) -> int:
    from regnet_kernels import backends, info
    from regnet_kernels.benchmark import providers as P
    from regnet_kernels.benchmark import report_text as out
    from regnet_kernels.benchmark import roofline as R

    t_start = time.perf_counter()
    env = info.environment()
    dev_name = device_name(cfg.device)
    spec = R.match_device(dev_name) if cfg.device.type == "cuda" else None
    today = _dt.date.today().isoformat()
    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    common = {"model": cfg.model, "device": dev_name, "torch": torch.__version__, "triton": env.get("triton"),
              "cuda": torch.version.cuda, "git_commit": commit, "date": today}
    interp = cfg.device.type == "cpu" and backends.triton_interpreting()

    print(f"regnet_kernels bench: {cfg.model}, {'+'.join(cfg.modes)} on {dev_name}; torch {torch.__version__}, "
          f"triton {env.get('triton')}, CUDA {torch.version.cuda}, git {commit or '?'}{' (dirty)' if dirty else ''}")
    if interp_note:
        print(f"note: {interp_note}")
    out.print_plan(cfg, interp)
    sys.stdout.flush()

    phases: Dict[str, float] = {}
    t0 = time.perf_counter()
    setup = _bar("setup", 2 + (cfg.numerics_model != cfg.model), "model")
    setup.set_postfix_str("traffic model")
    model_records, traffic = _model_part(cfg, common)
    setup.update(1)
    setup.set_postfix_str(f"building {cfg.model}")
    base = P.base_model(cfg.model, cfg.device)
    setup.update(1)
    base_numerics = base
    if cfg.numerics_model != cfg.model:
        setup.set_postfix_str(f"building {cfg.numerics_model}")
        base_numerics = P.base_model(cfg.numerics_model, cfg.device)
        setup.update(1)
    setup.close()
    phases["model_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    numerics = _numerics_part(cfg, base, base_numerics)
    phases["numerics_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    measured = _timing_part(cfg, base, common, numerics)
    phases["timing_s"] = time.perf_counter() - t0
    _derive(cfg, measured, spec)

    # output -----------------------------------------------------------------------------------------
    cfg.out.mkdir(parents=True, exist_ok=True)
    stem = f"{device_slug(cfg.device, dev_name)}-{today}"
    json_path = cfg.out / f"{stem}.json"
    numerics_records = [{"kind": "numerics", **common, "model": cfg.numerics_model, "provider": name, **r}
                        for res in numerics.values() for name, r in res.items()]
    doc = {"schema": SCHEMA, "created": _dt.datetime.now().isoformat(timespec="seconds"), "date": today,
           "device": dev_name, "device_slug": device_slug(cfg.device, dev_name),
           "device_spec": spec.key if spec else None, "git_commit": commit, "git_dirty": bool(dirty),
           "environment": env,
           "config": {"model": cfg.model, "modes": list(cfg.modes), "batches": cfg.batches,
                      "resolution": cfg.resolution, "dtype": cfg.dtype, "providers": list(cfg.providers),
                      "quick": cfg.quick, "full": cfg.full, "reps": cfg.reps, "warmup": cfg.warmup,
                      "numerics_model": cfg.numerics_model, "numerics_dtypes": list(cfg.numerics_dtypes),
                      "numerics_batch": cfg.numerics_batch, "numerics_resolution": cfg.numerics_resolution,
                      "cuda_graph": cfg.cuda_graph, "compile_mode": cfg.compile_mode, "layouts": cfg.layouts,
                      "model_batches": cfg.model_batches, "model_resolution": cfg.model_resolution,
                      "model_dtype": cfg.model_dtype, "triton_interpreter": interp,
                      "cpu_threads": torch.get_num_threads() if cfg.device.type == "cpu" else None},
           "phases_s": {k: round(v, 1) for k, v in phases.items()},
           "records": model_records + measured + numerics_records}
    merge_write(json_path, doc)
    t0 = time.perf_counter()
    pngs = _plots(cfg, stem, measured, traffic, dev_name) if cfg.plots else []
    phases["plots_s"] = time.perf_counter() - t0

    out.print_model(cfg, traffic)
    if numerics:
        out.print_numerics(cfg, numerics, interp)
    if cfg.timing:
        out.print_timing(cfg, measured, dev_name, spec)
    out.print_memory(cfg, measured, numerics)
    print("\n[aot] compiled kernels (not measured):")
    for line in out.aot_lines():
        print(f"  {line}")
    print(f"\nwall time {time.perf_counter() - t_start:.0f} s (" + ", ".join(
        f"{k[:-2]} {v:.0f} s" for k, v in phases.items()) + ")")
    failed = [f"{d}/{m}/{n}" for (d, m), res in numerics.items() for n, r in res.items()
              if r.get("status") == "ok" and not r.get("pass")]
    if failed:
        print(f"NUMERICS FAIL: {', '.join(failed)}")
    out.print_summary(out.summary_lines(cfg, numerics, traffic, json_path, pngs))
    return 1 if (failed and cfg.strict) else 0
