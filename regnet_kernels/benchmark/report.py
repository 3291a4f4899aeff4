"""``python -m regnet_kernels bench``: numerics, timing and the traffic model of every provider, as a
table, a JSON file and PNG charts.

Defaults do something useful on any machine:

* GPU: ``regnet_y_1_6gf``, inference (batch 256) and a training step (batch 128), bf16, every provider.
* CPU: ``regnet_y_400mf``; numerics parity of the fused path (Triton interpreter) against eager at a
  tiny size, eager CPU timings at a small batch, and the traffic model with the H100/H200 floors.
  ``--quick`` (what CI runs) stays within about two minutes on two cores.

Everything printed or stored is labelled ``model`` (the traffic model of
:mod:`regnet_kernels.benchmark.roofline`: arithmetic, no hardware) or ``measurement`` (this run on this
machine). The one quantity that crosses the line, achieved GB/s, is *modelled bytes / measured time*
and is named so. The JSON under ``--out`` is ``<device-slug>-<YYYY-MM-DD>.json`` (records of a second
run on the same day replace those with the same key and keep the others), beside two PNGs.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

__all__ = ["add_arguments", "main", "Config", "REQUIRED_FIELDS"]

#: Fields every measurement record carries (None where not applicable, e.g. a skipped provider).
REQUIRED_FIELDS: Tuple[str, ...] = (
    "model", "mode", "batch", "dtype", "provider", "ms_median", "ms_p10", "ms_p90", "img_per_s",
    "peak_mem_bytes", "device", "torch", "triton", "cuda", "git_commit",
)
_MODES = ("infer", "train")
_SCHEMA = "regnet_kernels.bench/1"


# ------------------------------------------------------------------------------------------------
# Arguments and configuration
# ------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``bench`` subcommand's options to ``p``."""
    from regnet_kernels.benchmark.providers import PROVIDERS

    p.add_argument("--model", default=None,
                   help="zoo model (default: regnet_y_1_6gf on GPU, regnet_y_400mf on CPU)")
    p.add_argument("--mode", choices=("infer", "train", "both"), default="both",
                   help="inference, a full training step (fwd + bwd + SGD), or both (default)")
    p.add_argument("--batch", type=int, default=None,
                   help="images per step (default: GPU 256 infer / 128 train; CPU 4, --quick 2)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="autocast dtype (fp32: no autocast); default bf16")
    p.add_argument("--providers", nargs="+", default=None, metavar="NAME",
                   help=f"any of {', '.join(PROVIDERS)} (space or comma separated; default: all that can run "
                        "here; torch.compile on CPU only when named)")
    p.add_argument("--resolution", type=int, default=None, help="image size (default 224; CPU --quick 64)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and smaller CPU sizes (CI)")
    p.add_argument("--out", default="bench-out", help="directory for the JSON and PNGs (default bench-out/)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default GPU 50, CPU 10; --quick 15 / 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repetitions first")
    p.add_argument("--numerics-batch", type=int, default=None, help="batch of the parity check (GPU 16, CPU 2)")
    p.add_argument("--numerics-resolution", type=int, default=None,
                   help="image size of the parity check (GPU 224, CPU 48)")
    p.add_argument("--no-numerics", action="store_true", help="skip the parity check")
    p.add_argument("--no-timing", action="store_true", help="skip timing (model + numerics only)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="time inference as CUDA-graph replays (batch-1 latency); not for compile")
    p.add_argument("--compile-mode", default="max-autotune",
                   help="torch.compile mode on GPU ('default' for torch's default; --quick uses default)")
    p.add_argument("--layouts", choices=("default", "both"), default="default",
                   help="fused providers: channels_last only (default) or time NCHW too and keep the faster")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG charts")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any provider fails numerics")


@dataclass
class Config:
    """Resolved settings of one run (defaults filled in for the device)."""

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


def _parse_providers(values: Optional[Sequence[str]]) -> Tuple[Tuple[str, ...], frozenset]:
    from regnet_kernels.benchmark.providers import PROVIDERS

    if not values:
        return PROVIDERS, frozenset()
    names: List[str] = []
    for v in values:
        names += [s.strip() for s in v.split(",") if s.strip()]
    if "all" in names:
        return PROVIDERS, frozenset(n for n in names if n != "all")
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise SystemExit(f"bench: unknown provider(s) {', '.join(unknown)}; known: {', '.join(PROVIDERS)}")
    ordered = tuple(p for p in PROVIDERS if p in names)  # eager first: compile needs the best eager layout
    return ordered, frozenset(names)


def _config(args: argparse.Namespace) -> Config:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    quick = bool(getattr(args, "quick", False))
    model = args.model or ("regnet_y_1_6gf" if cuda else "regnet_y_400mf")
    from regnet_kernels.models import list_models

    if model not in list_models():
        raise SystemExit(f"bench: unknown model {model!r}; known: {', '.join(list_models())}")
    modes = _MODES if args.mode == "both" else (args.mode,)
    if args.batch is not None and args.batch < 1:
        raise SystemExit("bench: --batch must be >= 1")
    if cuda:
        batches = {"infer": args.batch or 256, "train": args.batch or 128}
        res = args.resolution or 224
        reps, warmup = (15, 3) if quick else (50, 10)
        nb, nr = 16 if not quick else 8, 224
    else:
        batches = {m: args.batch or (2 if quick else 4) for m in _MODES}
        res = args.resolution or (64 if quick else 224)
        reps, warmup = (8, 3) if quick else (10, 3)  # oneDNN builds primitives on the first calls
        nb, nr = 2, 48  # the interpreter pays per launch, not per element: tiny is enough and not cheaper
    providers, explicit = _parse_providers(args.providers)
    compile_mode = None if (args.compile_mode in ("default", "none", "") or quick) else args.compile_mode
    model_batches = dict(batches) if cuda or args.batch else {"infer": 256, "train": 128}
    return Config(
        model=model, modes=modes, batches=batches, resolution=res, dtype=args.dtype, providers=providers,
        explicit=explicit, quick=quick, out=Path(args.out), device=device,
        reps=args.reps or reps, warmup=args.warmup if args.warmup is not None else warmup,
        numerics=not args.no_numerics, timing=not args.no_timing,
        numerics_batch=args.numerics_batch or nb, numerics_resolution=args.numerics_resolution or nr,
        cuda_graph=bool(args.cuda_graph), compile_mode=compile_mode, layouts=args.layouts,
        plots=not args.no_plots, strict=bool(args.strict), model_batches=model_batches,
        model_resolution=res if cuda else (args.resolution or 224),
    )


def _ensure_interpreter(cfg: Config) -> Optional[str]:
    """On a CPU-only machine, turn the Triton interpreter on if no kernel module decided otherwise yet."""
    if cfg.device.type == "cuda" or os.environ.get("TRITON_INTERPRET") is not None:
        return None
    if "regnet_kernels._triton_utils" in sys.modules:
        return None
    os.environ["TRITON_INTERPRET"] = "1"
    return "no GPU: set TRITON_INTERPRET=1 so the Triton kernels run (slowly) for the numerics check"


# ------------------------------------------------------------------------------------------------
# Environment
# ------------------------------------------------------------------------------------------------
def _git(*argv: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *argv], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU ({name})" if name else "CPU"


def _slug(device: torch.device, name: str) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cuda"


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
                                resolution=cfg.model_resolution, dtype=cfg.dtype)
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
def _fmt(v, spec: str = "{:.3g}", none: str = "-") -> str:
    if v is None:
        return none
    if isinstance(v, float) and v != v:
        return "nan"
    return spec.format(v)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def _mem(b: Optional[int]) -> str:
    if b is None:
        return "-"
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def _print_model(cfg: Config, traffic: dict) -> None:
    from regnet_kernels.benchmark import roofline as R

    devs = list(R.DEVICES.values())
    bs = " / ".join(f"batch {cfg.model_batches[m]} ({m})" for m in cfg.modes)
    print(f"\n[MODEL] traffic model, not measured: {cfg.model}, {cfg.model_resolution}x{cfg.model_resolution}, "
          f"{cfg.dtype}, {bs}")
    rows = []
    for (mode, regime), t in traffic.items():
        rows.append([mode, regime, f"{t.bytes / 1e9:.2f}", f"{t.flops / 1e9:.0f}", t.launches]
                    + [f"{t.floor_ms(d):.2f}" for d in devs])
    print(_table(["mode", "regime", "GB moved", "GFLOP", "launches"] + [f"floor {d.name} (ms)" for d in devs],
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
        print(_table(["group"] + [f"{r} MB" for r in regs] + [f"{r} launches" for r in regs], rows))
    for t in traffic.values():
        if t.note:
            print(f"note ({t.mode}, {t.regime}): {t.note}")
            break


def _print_numerics(cfg: Config, numerics: Dict[str, Dict[str, dict]], interp: bool) -> None:
    print(f"\n[MEASUREMENT] numerics vs eager_nchw (same dtype) and vs a float64 eager reference: "
          f"{cfg.model}, batch {cfg.numerics_batch}, {cfg.numerics_resolution}x{cfg.numerics_resolution}, "
          f"{cfg.dtype}{' (Triton in the interpreter)' if interp else ''}. Relative norm errors; pass = err vs fp64 "
          f"<= 2 x eager's + floor")
    rows = []
    for mode, res in numerics.items():
        for name, r in res.items():
            if r["status"] != "ok":
                why = r.get("skip_reason") or r.get("error") or ""
                rows.append([name, mode, r["status"], "-", "-", "-", "-", "-", why[:70]])
                continue
            g = (f"{_fmt(r.get('grad_err_vs_fp64'))} ({_fmt(r.get('grad_eager_err_vs_fp64'))})"
                 if mode == "train" else "-")
            rows.append([name, mode, "ok", _fmt(r["err_vs_eager"]), _fmt(r["err_vs_fp64"]),
                         _fmt(r["eager_err_vs_fp64"]), g, "PASS" if r["pass"] else "FAIL",
                         f"{r.get('backend_resolved') or ''}"])
    print(_table(["provider", "mode", "status", "out err vs eager", "out err vs fp64", "eager's vs fp64",
                  "grads vs fp64 (eager's)", "pass", "backend / reason"], rows))
    print("(out = logits in infer, the loss in train; grads = all parameter gradients as one vector)")


def _print_timing(cfg: Config, measured: List[dict], device_name: str, spec) -> None:
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
                         f"{r['img_per_s']:.0f}", _fmt(r.get("speedup_vs_best_eager"), "{:.2f}x"),
                         _mem(r.get("peak_mem_bytes")), _fmt(r.get("gbps"), "{:.3g}"),
                         _fmt(r.get("pct_of_floor"), "{:.0f}%"), _fmt(r.get(lk), "{}"),
                         f"{r.get('layout')}" + (f", {r['backend_resolved']}" if r.get("backend_resolved") else "")])
        print(_table(["provider", "status", "ms", "p10-p90", "img/s", "speed-up", "peak mem", "GB/s*", "% floor**",
                      "launches", "layout, backend / reason"], rows))
        floor = (f"** the regime's modelled floor on {spec.name} / measured time" if spec else
                 "** no floor: this device is not in the device table")
        print(f"* modelled bytes of the provider's regime / measured time (a model divided by a measurement); {floor}")


def _print_memory(measured: List[dict], numerics: Dict[str, Dict[str, dict]], cfg: Config) -> None:
    rows = []
    eager_t = next((r.get("saved_activation_bytes") for r in measured
                    if r["provider"] == "eager_nchw" and r["mode"] == "train"), None)
    for r in measured:
        if r["mode"] == "train" and r.get("saved_activation_bytes") is not None:
            b = r["saved_activation_bytes"]
            rows.append([r["provider"], f"timing size (batch {cfg.batches['train']}, {cfg.resolution}px)", _mem(b),
                         _fmt(b / eager_t if eager_t else None, "{:.2f}")])
    num = numerics.get("train", {})
    eager_n = num.get("eager_nchw", {}).get("saved_activation_bytes")
    for name, r in num.items():
        b = r.get("saved_activation_bytes")
        if b is not None:
            rows.append([name, f"numerics size (batch {cfg.numerics_batch}, {cfg.numerics_resolution}px)", _mem(b),
                         _fmt(b / eager_n if eager_n else None, "{:.2f}")])
    if rows:
        print("\n[MEASUREMENT] activations saved for backward (training forward; distinct storages, parameters "
              "and their casts excluded)")
        print(_table(["provider", "workload", "saved", "ratio vs eager_nchw"], rows))


def _finite(obj):
    """JSON has no inf/nan: non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return "nan" if obj != obj else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _merge_write(path: Path, doc: dict) -> None:
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
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(doc), indent=1, default=str, allow_nan=False))
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    """Run the benchmark report; returns the exit status (1 only with ``--strict`` and a numerics failure)."""
    cfg = _config(args)
    interp_note = _ensure_interpreter(cfg)
    from tqdm.auto import tqdm

    from regnet_kernels import backends, info
    from regnet_kernels.benchmark import plots
    from regnet_kernels.benchmark import providers as P
    from regnet_kernels.benchmark import roofline as R
    from regnet_kernels.benchmark.numerics import check_model_numerics

    t_start = time.perf_counter()
    env = info.environment()
    device_name = _device_name(cfg.device)
    spec = R.match_device(device_name) if cfg.device.type == "cuda" else None
    today = _dt.date.today().isoformat()
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    common = {"model": cfg.model, "device": device_name, "torch": torch.__version__, "triton": env.get("triton"),
              "cuda": torch.version.cuda, "git_commit": commit, "date": today}
    interp = cfg.device.type == "cpu" and backends.triton_interpreting()

    print(f"regnet_kernels bench: {cfg.model}, {cfg.dtype}, {'+'.join(cfg.modes)} on {device_name}; torch "
          f"{torch.__version__}, triton {env.get('triton')}, CUDA {torch.version.cuda}, git {commit or '?'}"
          f"{' (dirty)' if dirty else ''}")
    if interp_note:
        print(f"note: {interp_note}")

    phases: Dict[str, float] = {}
    t0 = time.perf_counter()
    model_records, traffic = _model_part(cfg, common)
    base = P.base_model(cfg.model, cfg.device)
    phases["model_s"] = time.perf_counter() - t0

    # numerics ------------------------------------------------------------------------------------
    numerics: Dict[str, Dict[str, dict]] = {}
    n_timed = len(cfg.modes) * len(cfg.providers) if cfg.timing else 0
    bar = tqdm(total=(len(cfg.modes) * len(cfg.providers) if cfg.numerics else 0) + n_timed * cfg.reps,
               desc="bench", unit="step", file=sys.stderr, leave=False, dynamic_ncols=True,
               disable=None)
    t0 = time.perf_counter()
    if cfg.numerics:
        for mode in cfg.modes:
            def progress(name, mode=mode):
                bar.set_postfix_str(f"numerics {mode} {name}")
                bar.update(1)
            numerics[mode] = check_model_numerics(
                cfg.providers, model=cfg.model, mode=mode, dtype=cfg.dtype, device=cfg.device,
                batch=cfg.numerics_batch, resolution=cfg.numerics_resolution, base=base,
                allow_slow=cfg.explicit, progress=progress)

    phases["numerics_s"] = time.perf_counter() - t0

    # timing ---------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    measured: List[dict] = []
    for mode in cfg.modes:
        best_layout = None
        for name in cfg.providers:
            rec = {"kind": "measurement", **common, "mode": mode, "batch": cfg.batches[mode],
                   "resolution": cfg.resolution, "dtype": cfg.dtype, "provider": name,
                   "description": P.DESCRIPTIONS[name], "ms_median": None, "ms_p10": None, "ms_p90": None,
                   "img_per_s": None, "peak_mem_bytes": None, "cuda_graph": False}
            num = numerics.get(mode, {}).get(name)
            if num is not None:
                rec["numerics"] = num
            reason = None
            if not cfg.timing:
                reason = "timing skipped (--no-timing)"
            else:
                reason = P.why_not(name, cfg.device, purpose="time", allow_slow=name in cfg.explicit,
                                   dtype=cfg.dtype)
            if reason is not None:
                ran = num is not None and num.get("status") == "ok"
                rec.update(status="numerics_only" if ran else "skipped", skip_reason=reason)
                measured.append(rec)
                if cfg.timing:
                    bar.update(cfg.reps)
                continue
            bar.set_postfix_str(f"timing {mode} {name}")
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
    phases["timing_s"] = time.perf_counter() - t0

    # derived figures -------------------------------------------------------------------------------
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

    # output -----------------------------------------------------------------------------------------
    cfg.out.mkdir(parents=True, exist_ok=True)
    stem = f"{_slug(cfg.device, device_name)}-{today}"
    json_path = cfg.out / f"{stem}.json"
    doc = {"schema": _SCHEMA, "created": _dt.datetime.now().isoformat(timespec="seconds"), "date": today,
           "device": device_name, "device_slug": _slug(cfg.device, device_name),
           "device_spec": spec.key if spec else None, "git_commit": commit, "git_dirty": bool(dirty),
           "environment": env,
           "config": {"model": cfg.model, "modes": list(cfg.modes), "batches": cfg.batches,
                      "resolution": cfg.resolution, "dtype": cfg.dtype, "providers": list(cfg.providers),
                      "quick": cfg.quick, "reps": cfg.reps, "warmup": cfg.warmup,
                      "numerics_batch": cfg.numerics_batch, "numerics_resolution": cfg.numerics_resolution,
                      "cuda_graph": cfg.cuda_graph, "compile_mode": cfg.compile_mode, "layouts": cfg.layouts,
                      "model_batches": cfg.model_batches, "model_resolution": cfg.model_resolution,
                      "triton_interpreter": interp},
           "phases_s": {k: round(v, 1) for k, v in phases.items()},
           "records": model_records + measured}
    _merge_write(json_path, doc)
    pngs = []
    if cfg.plots:
        title = (f"{cfg.model}, {cfg.dtype}, " + ", ".join(f"{m} batch {cfg.batches[m]}" for m in cfg.modes)
                 + f", {cfg.resolution}px (measured) | model: " + ", ".join(
                     f"{m} batch {cfg.model_batches[m]}" for m in cfg.modes) + f", {cfg.model_resolution}px")
        floors = {f"{mode} {reg}": {d.name: traffic[(mode, reg)].floor_ms(d) for d in R.DEVICES.values()}
                  for (mode, reg) in traffic}
        p1 = cfg.out / f"{stem}-speedup.png"
        plots.speedup_chart(str(p1), measured=measured, floors=floors, device=device_name, title=title)
        mode0 = "infer" if "infer" in cfg.modes else cfg.modes[0]
        model_bytes = {reg: traffic[(mode0, reg)].by_group() for reg in R.REGIMES if (mode0, reg) in traffic}
        layer_ms = {r["provider"]: r["layer_ms"] for r in measured if r.get("layer_ms")}
        p2 = cfg.out / f"{stem}-layers.png"
        plots.layer_chart(str(p2), model_bytes=model_bytes, measured_ms=layer_ms, device=device_name, title=title,
                          model_label=f"{mode0}, batch {cfg.model_batches[mode0]}, {cfg.dtype}")
        pngs = [p1, p2]

    _print_model(cfg, traffic)
    if numerics:
        _print_numerics(cfg, numerics, interp)
    if cfg.timing:
        _print_timing(cfg, measured, device_name, spec)
    _print_memory(measured, numerics, cfg)
    print(f"\nwrote {json_path}" + "".join(f", {p}" for p in pngs))
    print(f"wall time {time.perf_counter() - t_start:.0f} s (" + ", ".join(
        f"{k[:-2]} {v:.0f} s" for k, v in phases.items()) + ")")
    failed = [f"{m}/{n}" for m, res in numerics.items() for n, r in res.items()
              if r.get("status") == "ok" and not r.get("pass")]
    if failed:
        print(f"NUMERICS FAIL: {', '.join(failed)}")
    return 1 if (failed and cfg.strict) else 0
