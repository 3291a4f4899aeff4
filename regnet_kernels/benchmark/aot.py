"""Ahead-of-time compile of every planned Triton specialisation for a GPU target, with no GPU.

``python -m regnet_kernels aot --model regnet_y_400mf --mode both --batch 256 --arch sm_90,sm_80``:

1. plans the launches (:mod:`regnet_kernels.benchmark.plan`), keeps the distinct specialisations;
2. compiles each with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` in a pool of
   worker processes (the interpreter is switched off there, whatever this process runs in), cached on
   disk by specialisation hash, Triton version and kernel sources;
3. reads the binary: registers and spills from ptxas's report, shared memory from Triton's metadata,
   the SASS from the ``cuobjdump`` shipped in the Triton wheel (``HGMMA`` = wgmma, ``HMMA`` = mma,
   vector vs scalar global loads);
4. writes ``DIR/aot-<model>-<arch>.json`` (one record per specialisation) and prints a table sorted by
   the per-launch performance *model* (:mod:`regnet_kernels.benchmark.launch_model`).

Everything here is compiled, not measured.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["compile_specs", "run_aot", "summary_lines", "default_cache_dir", "add_arguments", "main", "gate_failures"]

_PKG = Path(__file__).resolve().parents[1]
# kernel sources (a config change alters a spec's constexprs, which are in its hash already)
_KERNEL_SOURCES = sorted(p for p in (_PKG / "kernels" / "triton").glob("*.py") if p.name != "config.py")


def default_cache_dir() -> Path:
    env = os.environ.get("REGNET_KERNELS_AOT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "regnet_kernels" / "aot"


def _sources_hash() -> str:
    h = hashlib.sha256()
    for p in _KERNEL_SOURCES:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _spec_hash(spec: dict, arch: int, triton_version: str, sources: str) -> str:
    blob = json.dumps({"spec": spec, "arch": arch, "triton": triton_version, "src": sources}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------------
# Worker side (a fresh process: the kernels must be decorated with the interpreter off)
# ------------------------------------------------------------------------------------------------
def _worker_init() -> None:
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default today; silences a warning


def _bin_dir() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


_LOAD_RE = re.compile(r"\b(LDGSTS|LDG)(\.[A-Z0-9_]+)*\b")  # LDGSTS first; LDGDEPBAR is no load


def sass_facts(sass: str) -> dict:
    """Instruction counts from ``cuobjdump -sass`` text: tensor-core ops, vector / scalar global loads, spills."""
    vec = sca = 0
    for m in _LOAD_RE.finditer(sass):
        if ".128" in m.group(0) or ".64" in m.group(0):
            vec += 1
        else:
            sca += 1
    return {
        "wgmma": len(re.findall(r"\bHGMMA\b", sass)),
        "mma": len(re.findall(r"\bHMMA\b", sass)),
        "vector_loads": vec,
        "scalar_loads": sca,
        "local_stores": len(re.findall(r"\bSTL\b", sass)),
        "local_loads": len(re.findall(r"\bLDL\b", sass)),
    }


def _ptxas_facts(log: str) -> dict:
    out = {}
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        out["spill_store_bytes"], out["spill_load_bytes"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"Used (\d+) registers", log)
    if m:
        out["regs"] = int(m.group(1))
    return out


def _res_usage(cubin_path: str) -> dict:
    txt = subprocess.run([str(_bin_dir() / "cuobjdump"), "-res-usage", cubin_path], capture_output=True,
                         text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", txt)
    return {"regs": int(m.group(1)), "stack_bytes": int(m.group(2))} if m else {}


def compile_one(spec: dict, arch: int) -> dict:
    """Compile one specialisation for ``sm_<arch>`` and read its binary (runs in a worker)."""
    _worker_init()
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from regnet_kernels.benchmark.launch_model import occupancy

    rec = {"compiled": False, "error": None}
    try:
        fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
        attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in spec["aligned"]}
        src = ASTSource(fn, dict(spec["signature"]), dict(spec["constexprs"]), attrs)
        opts = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
        log = io.StringIO()
        try:
            from triton import knobs

            knobs.nvidia.dump_ptxas_log = True
        except Exception:  # pragma: no cover - older triton: registers from cuobjdump, spills from SASS
            pass
        with contextlib.redirect_stdout(log):
            ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
        rec["compiled"] = True
        rec.update(_ptxas_facts(log.getvalue()))
        rec["smem_bytes"] = int(ck.metadata.shared)
        rec["has_dot"] = "tt.dot" in ck.asm.get("ttir", "")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "k.cubin")
            with open(path, "wb") as f:
                f.write(ck.asm["cubin"])
            usage = _res_usage(path)
            sass = subprocess.run([str(_bin_dir() / "cuobjdump"), "-sass", path], capture_output=True, text=True,
                                  check=True).stdout
        rec.setdefault("regs", usage.get("regs"))
        facts = sass_facts(sass)
        if "spill_store_bytes" not in rec:  # no ptxas report: local-memory traffic as a proxy
            rec["spill_store_bytes"] = 4 * facts["local_stores"]
            rec["spill_load_bytes"] = 4 * facts["local_loads"]
        rec.update(facts)
        rec["occupancy_warps_per_sm"] = occupancy(rec["regs"] or 0, rec["smem_bytes"], spec["num_warps"], arch)
    except Exception as e:  # a compile error is a result, reported per specialisation
        rec["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
    return rec


def _compile_cached(args) -> dict:
    spec, arch, path = args
    rec = compile_one(spec, arch)
    if rec["compiled"] and path:
        tmp = f"{path}.tmp{os.getpid()}"
        Path(tmp).write_text(json.dumps(rec))
        os.replace(tmp, path)
    return rec


# ------------------------------------------------------------------------------------------------
# Driver side
# ------------------------------------------------------------------------------------------------
def _triton_version() -> str:
    import triton

    return triton.__version__


def compile_specs(specs: Dict[str, dict], arch: int, *, cache_dir: Optional[Path] = None, jobs: int = 0,
                  progress: bool = True) -> Dict[str, dict]:
    """``{spec_key: compiled facts}`` for every spec, from the cache or compiled in parallel."""
    cache = Path(cache_dir or default_cache_dir())
    version, sources = _triton_version(), _sources_hash()
    out: Dict[str, dict] = {}
    todo = []
    for key, spec in specs.items():
        clean = {k: v for k, v in spec.items() if k != "launches"}
        h = _spec_hash(clean, arch, version, sources)
        path = cache / f"triton-{version}" / f"sm_{arch}" / f"{h}.json"
        if path.exists():
            out[key] = json.loads(path.read_text())
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            todo.append((key, (clean, arch, str(path))))
    if todo:
        jobs = jobs or os.cpu_count() or 1
        bar = None
        if progress:
            try:
                from tqdm import tqdm

                bar = tqdm(total=len(todo), desc=f"aot sm_{arch}", unit="spec", file=sys.stderr)
            except ImportError:  # pragma: no cover
                bar = None
        # heaviest first (3x3 convs), so the pool does not end on one long compile
        todo.sort(key=lambda t: -(t[1][0]["constexprs"].get("KH", 0) or 0))
        ctx = mp.get_context("spawn")
        # workers inherit the environment: they must decorate the kernels with the interpreter off
        saved = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "0"
        with _restore_env("TRITON_INTERPRET", saved), cf.ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx,
                                    initializer=_worker_init) as pool:
            futs = {pool.submit(_compile_cached, args): key for key, args in todo}
            for fut in cf.as_completed(futs):
                out[futs[fut]] = fut.result()
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
    return out


@contextlib.contextmanager
def _restore_env(name: str, value: Optional[str]):
    try:
        yield
    finally:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _short_constexprs(c: dict) -> str:
    keys = ("KH", "KW", "STRIDE", "BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_CO", "BLOCK_CI", "BLOCK_C", "BLOCK_HW",
            "BLOCK_T", "BLOCK_S", "STATS", "POST_BN", "PRE_GATE", "HAS_RES")
    parts = []
    for k in keys:
        if k in c:
            v = c[k]
            parts.append(f"{k}={int(v) if isinstance(v, bool) else v}")
    return " ".join(parts)


def run_aot(models: Sequence[str], modes: Sequence[str], batch: int, dtype: str, archs: Sequence[int], *,
            out_dir: Optional[Path] = None, resolution: int = 224, cache_dir: Optional[Path] = None,
            jobs: int = 0, progress: bool = True, batches: Optional[Dict[str, int]] = None) -> List[dict]:
    """Plan, compile and model. Returns one report dict per (model, arch) (also written as JSON)."""
    from regnet_kernels.benchmark import launch_model as lm
    from regnet_kernels.benchmark.plan import plan

    reports = []
    for model in models:
        for arch in archs:
            plans = [plan(model, mode, (batches or {}).get(mode, batch), resolution, dtype, arch) for mode in modes]
            specs: Dict[str, dict] = {}
            for p in plans:
                for k, s in p.specs().items():
                    if k in specs:
                        specs[k]["launches"] += s["launches"]
                    else:
                        specs[k] = dict(s)
            facts = compile_specs(specs, arch, cache_dir=cache_dir, jobs=jobs, progress=progress)
            records = {}
            for k, s in specs.items():
                f = facts[k]
                rec = {"spec": k, "kernel": s["kernel"], "arch": f"sm_{arch}", "constexprs": s["constexprs"],
                       "signature": s["signature"], "num_warps": s["num_warps"], "num_stages": s["num_stages"]}
                for field in ("compiled", "error", "regs", "spill_store_bytes", "spill_load_bytes", "smem_bytes",
                              "has_dot", "wgmma", "mma", "vector_loads", "scalar_loads", "occupancy_warps_per_sm"):
                    rec[field] = f.get(field)
                rec["launches"] = s["launches"]
                rec["predicted_us"] = {d: 0.0 for d in lm.MODEL_DEVICES}
                records[k] = rec
            plan_rows = []
            for p in plans:
                tot = {d: 0.0 for d in lm.MODEL_DEVICES}
                for la in p.launches:
                    rec = records[la.spec_key]
                    for d in lm.MODEL_DEVICES:
                        t = lm.predict_s(la, rec if rec["compiled"] else None, d)
                        rec["predicted_us"][d] += 1e6 * t
                        tot[d] += t
                floors = lm.eager_floor_ms(model, p.mode, p.batch, resolution, dtype)
                plan_rows.append({"mode": p.mode, "batch": p.batch, "dtype": dtype, "resolution": resolution,
                                  "launches": len(p.launches), "specialisations": len(p.specs()),
                                  "predicted_ms": {d: 1e3 * v for d, v in tot.items()},
                                  "eager_floor_ms": floors["eager"], "fused_floor_ms": floors["fused"]})
            recs = sorted(records.values(), key=lambda r: -r["predicted_us"]["h100_sxm"])
            report = {"kind": "model (compiled, not measured)", "model": model, "arch": f"sm_{arch}",
                      "triton_version": _triton_version(), "plans": plan_rows, "specialisations": recs}
            if out_dir is not None:
                out = Path(out_dir)
                out.mkdir(parents=True, exist_ok=True)
                (out / f"aot-{model}-sm_{arch}.json").write_text(json.dumps(report, indent=1, default=str))
            reports.append(report)
    return reports


def gate_failures(report: dict) -> List[str]:
    """What the CI gate refuses: compile errors, spills, and (sm_90) bf16/fp16 dots without wgmma."""
    bad = []
    sm90 = report["arch"] == "sm_90"
    for r in report["specialisations"]:
        name = f"{r['kernel']} [{_short_constexprs(r['constexprs'])} w{r['num_warps']} s{r['num_stages']}]"
        if not r["compiled"]:
            bad.append(f"{name}: compile error {r['error']}")
            continue
        if (r["spill_store_bytes"] or 0) or (r["spill_load_bytes"] or 0):
            bad.append(f"{name}: spills {r['spill_store_bytes']} B stores / {r['spill_load_bytes']} B loads "
                       f"at {r['regs']} registers")
        half = any(t in ("*bf16", "*fp16") for t in r["signature"].values())
        dot_f32 = r["constexprs"].get("DOT_F32", False)
        if r["has_dot"] and half and not dot_f32:
            if sm90 and not r["wgmma"]:
                bad.append(f"{name}: bf16/fp16 dot without wgmma")
            if not sm90 and not r["mma"]:
                bad.append(f"{name}: bf16/fp16 dot without mma")
    return bad


def format_report(report: dict, top: int = 25) -> List[str]:
    lines = [f"{report['model']} {report['arch']} (triton {report['triton_version']}) -- performance MODEL, "
             f"compiled not measured"]
    for p in report["plans"]:
        pm, ef, ff = p["predicted_ms"], p["eager_floor_ms"], p["fused_floor_ms"]
        lines.append(f"  {p['mode']:5s} b{p['batch']:<4d} {p['dtype']}: {p['launches']} launches, "
                     f"{p['specialisations']} specs; model H100 {pm['h100_sxm']:.2f} ms, H200 {pm['h200']:.2f} ms; "
                     f"traffic floor eager {ef['h100_sxm']:.2f} / fused {ff['h100_sxm']:.2f} ms (H100)")
    hdr = (f"  {'kernel':28s} {'config':58s} {'w':>2s} {'st':>2s} {'regs':>4s} {'spill':>6s} {'smem':>6s} "
           f"{'wgmma':>5s} {'mma':>4s} {'vec/scal ld':>11s} {'occ':>3s} {'n':>3s} {'H100 us':>9s} {'H200 us':>9s}")
    lines.append(hdr)
    for r in report["specialisations"][:top]:
        if not r["compiled"]:
            lines.append(f"  {r['kernel']:28s} COMPILE ERROR: {(r['error'] or '')[:80]}")
            continue
        lines.append(
            f"  {r['kernel']:28s} {_short_constexprs(r['constexprs'])[:58]:58s} {r['num_warps']:>2d} "
            f"{r['num_stages']:>2d} {r['regs']:>4d} {r['spill_store_bytes']:>6d} {r['smem_bytes']:>6d} "
            f"{r['wgmma']:>5d} {r['mma']:>4d} {r['vector_loads']:>5d}/{r['scalar_loads']:<5d} "
            f"{r['occupancy_warps_per_sm']:>3d} {r['launches']:>3d} {r['predicted_us']['h100_sxm']:>9.1f} "
            f"{r['predicted_us']['h200']:>9.1f}")
    spills = sum(1 for r in report["specialisations"] if r["compiled"] and r["spill_store_bytes"])
    errors = sum(1 for r in report["specialisations"] if not r["compiled"])
    lines.append(f"  {len(report['specialisations'])} specialisations, {errors} compile errors, {spills} spilling")
    return lines


def summary_lines(cache_dir=None, out_dir=None) -> List[str]:
    """A short summary of the newest ``aot-*.json`` reports in ``out_dir`` (default: the cache's ``reports``
    folder, where :func:`main` also copies them); compiles nothing. Empty when there are none."""
    folder = Path(out_dir) if out_dir else Path(cache_dir or default_cache_dir()) / "reports"
    lines: List[str] = []
    for path in sorted(folder.glob("aot-*.json")):
        try:
            rep = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        sp = rep.get("specialisations", [])
        spills = sum(1 for r in sp if r.get("spill_store_bytes"))
        errors = sum(1 for r in sp if not r.get("compiled"))
        for p in rep.get("plans", []):
            lines.append(f"aot {rep['model']} {rep['arch']} {p['mode']} b{p['batch']} {p['dtype']}: model "
                         f"{p['predicted_ms']['h100_sxm']:.2f} ms H100 / {p['predicted_ms']['h200']:.2f} ms H200 "
                         f"(eager floor {p['eager_floor_ms']['h100_sxm']:.2f} ms); {len(sp)} specs, "
                         f"{errors} errors, {spills} spilling [compiled, not measured]")
    return lines


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--model", default="regnet_y_400mf", help="zoo model name(s), comma-separated")
    p.add_argument("--mode", default="both", choices=["infer", "train", "both"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--arch", default="sm_90", help="comma-separated targets, e.g. sm_90,sm_80")
    p.add_argument("--out", default="aot-out", help="output folder for aot-<model>-<arch>.json")
    p.add_argument("--jobs", type=int, default=0, help="compile processes (default: all cores)")
    p.add_argument("--cache-dir", default=None, help="compile cache (default ~/.cache/regnet_kernels/aot)")
    p.add_argument("--top", type=int, default=25, help="table rows per report")
    p.add_argument("--cuda-ext", action="store_true", help="also report the built CUDA extension (aot-cuda-ext.json)")
    p.add_argument("--strict", action="store_true", help="exit 1 on a compile error, spill or dot without wgmma/mma")


def main(args) -> int:
    from regnet_kernels.benchmark.plan import parse_arch

    models = [m.strip() for m in args.model.split(",") if m.strip()]
    modes = ["infer", "train"] if args.mode == "both" else [args.mode]
    archs = [parse_arch(a) for a in args.arch.split(",") if a.strip()]
    reports = run_aot(models, modes, args.batch, args.dtype, archs, out_dir=Path(args.out),
                      resolution=args.resolution, cache_dir=args.cache_dir, jobs=args.jobs)
    failures = []
    rep_dir = Path(args.cache_dir or default_cache_dir()) / "reports"
    rep_dir.mkdir(parents=True, exist_ok=True)
    for rep in reports:
        print("\n".join(format_report(rep, args.top)))
        failures += gate_failures(rep)
        (rep_dir / f"aot-{rep['model']}-{rep['arch']}.json").write_text(json.dumps(rep, default=str))
    if args.cuda_ext:
        from regnet_kernels.benchmark.cuda_resources import cuda_ext_report, format_cuda_ext

        ext = cuda_ext_report()
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "aot-cuda-ext.json").write_text(json.dumps(ext, indent=1))
        print("\n".join(format_cuda_ext(ext)))
    if failures:
        print(f"\n{len(failures)} gate failures:")
        print("\n".join("  " + f for f in failures[:50]))
    return 1 if (failures and args.strict) else 0
