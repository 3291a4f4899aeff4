"""The GPU kit: one command that makes a short GPU lease count (``scripts/gpu_check.sh OUTDIR``).

On a bare H100/H200 machine whose ``python3`` already has CUDA torch, Triton, ninja, nvcc and
(optionally) ``compute-sanitizer``, and no network, it runs, within a global time budget:

1. ``env``       nvidia-smi, versions, ``regnet_kernels info``;
2. ``build``     the CUDA extension ``regnet_kernels._C`` in place, all cores, this GPU's arch only;
3. concurrently (correctness, nothing timed):
   ``tests``     the test suite on the GPU (pytest-xdist when present), per-test timeout;
   ``sanitize``  ``compute-sanitizer --tool memcheck`` over the probe's small per-op and block cases,
                 both backends (the smoke probe alone when the sanitizer is missing);
   ``warm``      one fused step of each benchmarked workload, so Triton's JIT is off the timed path;
4. one at a time (timed): ``bench`` for regnet_y_1_6gf (inference batch 256, training step batch 128,
   every provider), regnet_y_400mf batch 1 under a CUDA graph, the per-kernel ``profile``, and
   regnet_x_3_2gf; each step gets what is left of the budget, most valuable first.

It writes at most 8 files into OUTDIR (summary.txt, kit.log, env.json, tests.xml, smoke.json, bench.json,
speedup.png, profile.json) and prints a one-screen summary. ``--quick`` is a ~3-minute subset;
``--dry-run`` runs the same steps at tiny sizes on whatever machine this is (CPU: Triton interpreter) and
is what CI runs.

``--tune`` adds a last step (150 s more budget, the step capped at what is left of it):
:mod:`regnet_kernels.benchmark.tune` sweeps a small config set for the slowest conv shapes of the main
model (by the launch model) and writes the winners, in the format of the committed table
``regnet_kernels/kernels/triton/tuned.json``, plus every candidate's timing, to ``OUTDIR/tuned.json``; that
file takes the place of ``speedup.png`` (the chart is not drawn; its data stay in bench.json), so the kit
still writes at most 8 files. To use the winners, commit them:
``cp OUTDIR/tuned.json regnet_kernels/kernels/triton/tuned.json``. With ``--dry-run`` the sweep runs at tiny
sizes (CPU: under the interpreter, timings meaningless; its table is marked DRY RUN and is not for
committing).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[2]
FILES = ("summary.txt", "kit.log", "env.json", "tests.xml", "smoke.json", "bench.json", "speedup.png",
         "profile.json")
#: With ``--tune`` the tuned table takes the chart's place (still 8 files at most).
FILES_TUNE = tuple("tuned.json" if f == "speedup.png" else f for f in FILES)
TUNED_HOME = "regnet_kernels/kernels/triton/tuned.json"
TUNE_EXTRA_S = 150.0


@dataclass
class Step:
    name: str
    argv: List[str]
    cap_s: float
    env: Dict[str, str] = field(default_factory=dict)
    rc: Optional[int] = None
    seconds: float = 0.0
    note: str = ""
    tail: str = ""
    # while it runs (Kit.start / Kit.finish): start time, its time cap, the file its output goes to
    started: float = field(default=0.0, repr=False)
    cap: float = field(default=0.0, repr=False)
    out_file: Optional[IO[str]] = field(default=None, repr=False)


class Kit:
    def __init__(self, out: Path, budget_s: float, dry: bool, quick: bool):
        self.out, self.dry, self.quick = out, dry, quick
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.steps: List[Step] = []
        self.tmp = out / "_work"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "kit.log", "a", buffering=1)
        self.py = sys.executable

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, msg: str) -> None:
        line = f"[kit {time.monotonic() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def child_env(self, extra: Dict[str, str]) -> Dict[str, str]:
        """This environment for a child process: the repo on ``PYTHONPATH``, unbuffered, plus ``extra``."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def start(self, step: Step) -> subprocess.Popen:
        self.say(f"start {step.name}: {' '.join(step.argv)[:300]}")
        fout = open(self.tmp / f"{step.name}.out", "w")
        step.started = time.monotonic()
        step.out_file = fout
        step.cap = max(5.0, min(step.cap_s, self.left() - 5))
        return subprocess.Popen(step.argv, cwd=ROOT, stdout=fout, stderr=subprocess.STDOUT, env=self.child_env(step.env),
                                start_new_session=True)

    def finish(self, step: Step, proc: subprocess.Popen) -> Step:
        try:
            proc.wait(timeout=max(1.0, step.cap - (time.monotonic() - step.started)))
            step.rc = proc.returncode
        except subprocess.TimeoutExpired:
            import signal

            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except Exception:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except Exception:
                    pass
            step.rc = 124
            step.note = f"stopped at its time cap ({step.cap:.0f} s)"
        step.seconds = time.monotonic() - step.started
        step.out_file.close()
        text = (self.tmp / f"{step.name}.out").read_text(errors="replace")
        step.tail = text[-3000:]
        self.log.write(f"----- {step.name} (rc {step.rc}, {step.seconds:.1f} s) -----\n")
        self.log.write(text[-60000:] + "\n")
        self.say(f"end {step.name}: rc {step.rc} in {step.seconds:.1f} s {step.note}")
        self.steps.append(step)
        return step

    def run(self, step: Step) -> Step:
        if self.left() < 10:
            step.rc, step.note = None, "not run: time budget spent"
            self.steps.append(step)
            self.say(f"skip {step.name}: budget spent")
            return step
        return self.finish(step, self.start(step))

    def parallel(self, steps: List[Step]) -> None:
        procs = [(s, self.start(s)) for s in steps]
        for s, p in procs:
            self.finish(s, p)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _env_step(kit: Kit) -> None:
    info: Dict[str, object] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "dry_run": kit.dry,
                               "quick": kit.quick}
    for cmd in (["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem",
                 "--format=csv,noheader"], ["nvcc", "--version"], ["git", "rev-parse", "HEAD"],
                ["compute-sanitizer", "--version"]):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=ROOT)
            info[cmd[0]] = (r.stdout or r.stderr).strip()[-800:]
        except Exception as e:
            info[cmd[0]] = f"unavailable: {type(e).__name__}"
    r = subprocess.run([kit.py, "-m", "regnet_kernels", "info", "--json"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=kit.child_env({}))
    try:
        info["regnet_kernels_info"] = json.loads(r.stdout)
    except ValueError:
        info["regnet_kernels_info"] = (r.stdout + r.stderr)[-2000:]
    (kit.out / "env.json").write_text(json.dumps(info, indent=1, default=str))
    kit.say(f"env: {str(info.get('nvidia-smi'))[:200]}")


def _pytest_argv(kit: Kit) -> List[str]:
    # -v: one line per test as it finishes, so a run stopped at its cap still names every failure
    argv = [kit.py, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rfE", "-W", "ignore::UserWarning",
            "--junitxml", str(kit.out / "tests.xml")]
    if _has_module("xdist") and not kit.dry:
        argv += ["-n", str(max(2, min(12, (os.cpu_count() or 4) - 4)))]
    if _has_module("pytest_timeout"):
        argv += ["--timeout", "20" if kit.dry else "90"]
    if kit.dry:
        # the command line and collection are what a dry run can prove; one small module runs for real
        return argv + ["tests/test_squeeze_excite.py", "-k", "opcheck or eager"]
    if kit.quick:
        return argv + ["tests/test_conv_bn_act.py", "tests/test_squeeze_excite.py", "tests/test_cuda_backend.py",
                       "tests/test_cuda_gpu.py"]
    return argv + ["tests"]


def _bench(kit: Kit, tag: str, args: List[str], cap: float) -> Step:
    return Step(f"bench_{tag}", [kit.py, "-m", "regnet_kernels", "bench", "--out", str(kit.tmp / "bench")] + args, cap)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output directory (at most 8 files are written into it)")
    p.add_argument("--quick", action="store_true", help="~3-minute subset")
    p.add_argument("--dry-run", action="store_true", help="same steps at tiny sizes (CPU: Triton interpreter)")
    p.add_argument("--tune", action="store_true",
                   help=f"config sweep for the slowest conv shapes -> OUTDIR/tuned.json (+{TUNE_EXTRA_S:.0f} s)")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole kit (default 540, quick 180)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = a.budget or (180.0 if a.quick else 540.0)
    if a.dry_run:
        budget = a.budget or 600.0
    if a.tune and not a.budget:
        budget += TUNE_EXTRA_S
    kit = Kit(out, budget, a.dry_run, a.quick)
    import torch

    from regnet_kernels.kernels.geometry import device_arch

    gpu = torch.cuda.is_available()
    kit.say(f"gpu_check: {'dry run' if a.dry_run else ('quick' if a.quick else 'full')}, budget {budget:.0f} s, "
            f"GPU {'yes: ' + torch.cuda.get_device_name() if gpu else 'no'}, torch {torch.__version__}")
    if not gpu and not a.dry_run:
        kit.say("no CUDA GPU visible: run with --dry-run on a machine without one")
        return 2
    _env_step(kit)
    dry = a.dry_run

    # 2. build ------------------------------------------------------------------------------------------
    if dry and _has_module("regnet_kernels._C"):
        kit.say("build: _C already built here (dry run does not rebuild)")
    else:
        arch = str(device_arch(torch.device("cuda"))) if gpu else "90"
        kit.run(Step("build", [kit.py, "setup.py", "build_ext", "--inplace"], 60 if dry else 200,
                     env={"REGNET_KERNELS_CUDA_ARCH_LIST": arch,
                          "REGNET_KERNELS_BUILD_JOBS": str(os.cpu_count() or 4)}))

    # 3. correctness, concurrently ----------------------------------------------------------------------
    sanitizer = shutil.which("compute-sanitizer")
    smoke = [kit.py, "-m", "regnet_kernels.benchmark.probe", "smoke", "--out", str(out / "smoke.json")]
    if sanitizer and gpu:
        smoke = [sanitizer, "--tool", "memcheck", "--error-exitcode", "86", "--print-limit", "20"] + smoke
    else:
        kit.say("sanitize: compute-sanitizer not found or no GPU: the smoke probe runs without it")
    res, b_inf, b_tr = ("32", "2", "2") if dry else ("224", "256", "128")
    # the main model; a dry run uses the smallest one (the interpreter pays per program)
    m16 = "regnet_y_400mf" if dry else "regnet_y_1_6gf"
    warm = []
    if not a.quick:
        workloads = [("regnet_y_400mf", "infer", "1")]
        if not dry:
            workloads += [(m16, "infer", b_inf), (m16, "train", b_tr), ("regnet_x_3_2gf", "infer", b_inf),
                          ("regnet_x_3_2gf", "train", b_tr)]
        # (a dry run has no JIT cache to fill, and its bench step runs the same Triton forward: its warm-up step
        # runs the eager provider, which proves the command at no interpreter cost)
        prov = ["--provider", "eager_nchw"] if dry else []
        for i, (m, mode, b) in enumerate(workloads):
            warm.append(Step(f"warm{i}", [kit.py, "-m", "regnet_kernels.benchmark.probe", "warm", "--model", m,
                                          "--mode", mode, "--batch", b, "--resolution", res] + prov,
                             90 if dry else 200))
        if gpu:  # fills Inductor's caches so the timed compile run mostly re-traces
            for i, mode in enumerate(("infer", "train")):
                warm.append(Step(f"warmc{i}", [kit.py, "-m", "regnet_kernels.benchmark.probe", "warm", "--model",
                                               m16, "--mode", mode, "--batch", b_inf if mode == "infer" else b_tr,
                                               "--provider", "compile"], 200))
    kit.parallel([Step("tests", _pytest_argv(kit), 60 if dry else 200),
                  Step("sanitize", smoke + (["--backends", "triton"] if dry else []), 60 if dry else 150)] + warm)

    # 4. timed, one at a time (each bench call merges its records into the same JSON, so a step stopped at
    # its cap loses only itself); most valuable first, torch.compile apart (its compile time is unbounded)
    provs = "eager_nchw,eager_nhwc,triton,cuda" if gpu else "eager_nchw,triton,cuda"
    common = ["--dtype", "bf16", "--compile-mode", "default"]
    if dry:
        common += ["--quick", "--resolution", "32", "--reps", "3", "--warmup", "1", "--numerics-batch", "2"]
        bsz = ["--batch", "2"]
    else:
        common += ["--reps", "20", "--warmup", "5", "--numerics-batch", "8"]
        bsz = []
    cap = (lambda s: 150) if dry else (lambda s: s)
    kit.run(_bench(kit, "y16_infer", ["--model", m16, "--mode", "infer", "--providers", provs, "--no-plots"]
                   + common + bsz, cap(90)))
    if not a.quick and not dry:  # (dry: the smoke probe runs the training kernels; a model step is minutes)
        kit.run(_bench(kit, "y16_train", ["--model", m16, "--mode", "train", "--providers", provs, "--no-plots"]
                       + common + bsz, cap(100)))
    kit.run(_bench(kit, "y400_b1", ["--model", "regnet_y_400mf", "--mode", "infer", "--batch", "1", "--cuda-graph",
                                    "--providers", provs, "--no-numerics", "--no-plots"] + common, cap(50)))
    prof = [kit.py, "-m", "regnet_kernels.benchmark.probe", "profile", "--model", m16, "--resolution",
            res, "--providers", "eager_nhwc,triton,cuda" if gpu else "eager_nhwc"] + (["--steps", "1"] if dry else [])
    kit.run(Step("profile_infer", prof + ["--mode", "infer", "--batch", b_inf, "--out",
                                          str(kit.tmp / "profile_infer.json")], cap(50)))
    if not a.quick and not dry:
        if gpu:
            kit.run(_bench(kit, "y16_compile", ["--model", m16, "--mode", "both", "--providers", "compile"]
                           + common + bsz, cap(120)))
        kit.run(Step("profile_train", prof + ["--mode", "train", "--batch", b_tr, "--out",
                                              str(kit.tmp / "profile_train.json")], cap(50)))
        if not dry:
            kit.run(_bench(kit, "x32", ["--model", "regnet_x_3_2gf", "--mode", "both", "--providers", provs,
                                        "--no-plots"] + common, 120))
    if a.tune:
        # after the benchmarks (they measure the committed configs); the tuner stops starting new shapes at
        # its own budget and rewrites its JSON after each shape, so a step stopped at its cap keeps its results
        cap = min(120.0 if dry else TUNE_EXTRA_S, max(10.0, kit.left() - 5))
        targv = [kit.py, "-m", "regnet_kernels.benchmark.tune", "--model", m16, "--dtype", "bf16",
                 "--batch", b_inf, "--train-batch", b_tr, "--budget", f"{0.7 * cap:.0f}",
                 "--out", str(out / "tuned.json")] + (["--dry-run"] if dry else [])
        kit.run(Step("tune", targv, cap))
        if (out / "tuned.json").exists():
            kit.say(f"tune: winners in {out / 'tuned.json'}; to use them: cp {out / 'tuned.json'} {TUNED_HOME} "
                    "(then run tests/test_aot.py: the tuned configs must compile without spills)")

    # gather -----------------------------------------------------------------------------------------------
    profiles = {}
    for mode in ("infer", "train"):
        f = kit.tmp / f"profile_{mode}.json"
        if f.exists():
            profiles[mode] = json.loads(f.read_text())
    (out / "profile.json").write_text(json.dumps(profiles, indent=1))
    jsons = sorted(glob.glob(str(kit.tmp / "bench" / "*.json")))
    bench_doc = json.loads(Path(jsons[-1]).read_text()) if jsons else {"records": []}
    (out / "bench.json").write_text(json.dumps(bench_doc, indent=1))
    _speedups(bench_doc)
    (out / "bench.json").write_text(json.dumps(bench_doc, indent=1))
    if not a.tune:  # (with --tune, tuned.json takes speedup.png's place among the 8 files)
        _speedup_chart(kit, bench_doc, m16)
    summary = _summary(kit, bench_doc, profiles, FILES_TUNE if a.tune else FILES)
    (out / "summary.txt").write_text(summary)
    print(summary, flush=True)
    kit.log.close()
    shutil.rmtree(kit.tmp, ignore_errors=True)
    extra = [f for f in os.listdir(out) if f not in (FILES_TUNE if a.tune else FILES)]
    if extra:
        print(f"warning: unexpected files in {out}: {extra}", flush=True)
    failed = [s.name for s in kit.steps if s.rc not in (0, None)]
    return 1 if failed else 0


def _speedup_chart(kit: Kit, bench_doc: dict, m16: str) -> None:
    try:
        from regnet_kernels.benchmark import plots

        main_recs = [r for r in bench_doc["records"] if r.get("kind") == "measurement" and r.get("model") == m16
                     and not r.get("cuda_graph")]
        if main_recs:
            plots.speedup_chart(str(kit.out / "speedup.png"), measured=main_recs, floors={}, device=bench_doc.get(
                "device", "?"), title=f"{m16}, bf16, measured by the GPU kit")
    except Exception as e:  # a chart must not sink the kit
        kit.say(f"speedup chart failed: {type(e).__name__}: {e}")


def _speedups(doc: dict) -> None:
    """Speed-up over the best eager provider of the same workload, across the merged bench runs."""
    recs = [r for r in doc.get("records", []) if r.get("kind") == "measurement"]
    best: Dict[tuple, float] = {}
    key = lambda r: (r.get("model"), r.get("mode"), r.get("batch"), bool(r.get("cuda_graph")))  # noqa: E731
    for r in recs:
        if r.get("status") == "ok" and r.get("provider") in ("eager_nchw", "eager_nhwc"):
            best[key(r)] = min(best.get(key(r), float("inf")), r["ms_median"])
    for r in recs:
        if r.get("status") == "ok" and key(r) in best:
            r["speedup_vs_best_eager"] = best[key(r)] / r["ms_median"]


def _tests_line(step: Optional[Step], log: str = "") -> str:
    if step is None:
        return "tests: not run"
    m = re.findall(r"^=*\s*(\d+ (?:passed|failed|error|skipped)[^\n]*?) in [\d.]+s", log, flags=re.M)
    counts = {k: len(re.findall(rf" {k}\b", log)) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    head = m[-1] if m else f"stopped before pytest's summary; seen so far {counts}"
    fails = sorted(set(re.findall(r"(?:FAILED|ERROR) (tests/\S+)", log)))
    return f"tests: {head}" + (f"; failures: {', '.join(fails[:12])}" + (" ..." if len(fails) > 12 else "")
                               if fails else "")


def _tune_lines(path: Path) -> List[str]:
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text())
    except ValueError as e:
        return [f"tune: unreadable {path.name}: {e}"]
    recs = [r for r in doc.get("shapes", []) if "candidates" in r]
    won = [r for r in recs if r.get("winner")]
    lines = [f"tune: {len(recs)} shape(s) swept, {len(won)} new winner(s), {len(doc.get('entries', {}))} entries; "
             f"commit with: cp {path} {TUNED_HOME}"]
    for r in won[:4]:
        lines.append(f"  {r['label'][:60]}: {r['default_ms']:.3f} -> {r['best_ms']:.3f} ms {r['winner']}")
    return lines


def _summary(kit: Kit, bench: dict, profiles: dict, files=FILES) -> str:
    lines = ["", "=" * 100, f"GPU kit summary ({'dry run' if kit.dry else 'quick' if kit.quick else 'full'}), "
             f"{time.monotonic() - kit.t0:.0f} s"]
    lines.append("steps: " + ", ".join(f"{s.name} {'ok' if s.rc == 0 else s.rc} {s.seconds:.0f}s" for s in kit.steps))
    by = {s.name: s for s in kit.steps}
    tlog = kit.tmp / "tests.out"
    lines.append(_tests_line(by.get("tests"), tlog.read_text(errors="replace") if tlog.exists() else ""))
    sm = kit.out / "smoke.json"
    if sm.exists():
        recs = json.loads(sm.read_text())
        bad = [f"{r['case']}/{r['backend']}: {r.get('error', r.get('rel_err'))}"[:100] for r in recs if not r["ok"]]
        lines.append(f"smoke{' under memcheck' if 'compute-sanitizer' in ' '.join(by['sanitize'].argv) else ''}: "
                     f"{len(recs) - len(bad)}/{len(recs)} ok, rc {by['sanitize'].rc}" + (f"; {bad[:3]}" if bad else ""))
        errs = re.findall(r"=========\s+(Invalid .*|Program hit .*)", by["sanitize"].tail)
        if errs:
            lines.append(f"  memcheck: {errs[:3]}")
    rows = [r for r in bench.get("records", []) if r.get("kind") == "measurement"]
    if rows:
        lines.append("bench (ms median | speed-up vs best eager | numerics pass):")
        for r in rows:
            num = r.get("numerics") or {}
            ms, sp = r.get("ms_median"), r.get("speedup_vs_best_eager")
            ms_s = f"{ms:.3f} ms" if isinstance(ms, (int, float)) else "-"
            sp_s = f"{sp:.2f}x" if isinstance(sp, (int, float)) else ""
            num_s = "" if num.get("status") != "ok" else ("PASS" if num.get("pass") else "FAIL")
            lines.append(f"  {r['model']:<15} {r['mode']:<5} b{r['batch']:<4} {'graph ' if r.get('cuda_graph') else ''}"
                         f"{r['provider']:<11} {r.get('status', ''):<13} "
                         f"{ms_s:>11} {sp_s:>7} "
                         f"{num_s} "
                         f"{(r.get('error') or '')[:60]}")
    for mode, doc in profiles.items():
        for prov, res in doc.get("providers", {}).items():
            if res.get("status") != "ok":
                lines.append(f"profile {mode} {prov}: {res.get('error', '')[:90]}")
                continue
            top = list(res["kernels"].items())[:3]
            lines.append(f"profile {mode} {prov}: {res['kernel_us_per_step'] / 1e3:.2f} ms kernels/step, "
                         f"{res['launches_per_step']:.0f} launches; top: "
                         + "; ".join(f"{k[:40]} {v['us_per_step'] / 1e3:.2f} ms" for k, v in top))
    lines += _tune_lines(kit.out / "tuned.json")
    lines.append(f"files: {', '.join(f for f in files if (kit.out / f).exists())} in {kit.out}")
    lines.append("=" * 100)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
