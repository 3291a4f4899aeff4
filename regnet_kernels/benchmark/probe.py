"""Small GPU probes used by the GPU kit (``scripts/gpu_check.sh``), each runnable on its own.

``python -m regnet_kernels.benchmark.probe smoke [--backends triton,cuda]``
    every fused op (conv+BN+act train/eval forward and backward, SE forward and backward, a whole
    bottleneck in train and eval) once at a tiny size, compared with eager. This is what the kit runs
    under ``compute-sanitizer --tool memcheck``. Exit status 1 if anything failed or differed.
``python -m regnet_kernels.benchmark.probe warm --model M --mode infer|train --batch B``
    one fused step of a zoo model (compiles every Triton specialisation it needs into Triton's on-disk
    cache, so the timed runs that follow measure kernels, not the JIT).
``python -m regnet_kernels.benchmark.probe profile --model M --mode infer|train --batch B --out F.json``
    measured per-kernel GPU time from ``torch.profiler`` for one step of each named provider (kernel name,
    launches, total and mean time) plus the ordered launch list of the fused provider's step.

On a machine without a GPU the same commands run on CPU tensors (Triton through its interpreter) at the
size given: that is the kit's ``--dry-run``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Dict, List, Optional

import torch

__all__ = ["smoke", "warm", "profile", "main"]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan") if not torch.equal(torch.isnan(a), torch.isnan(b)) else 0.0
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def smoke(backends: List[str], dtype: torch.dtype = torch.bfloat16) -> List[dict]:
    """Run every fused op once per backend at a tiny size; returns one record per case."""
    import copy

    import regnet_kernels as rk
    from regnet_kernels import models
    from regnet_kernels.ops import conv_bn_act, squeeze_excite

    dev = _device()
    tol = 5e-2 if dtype != torch.float32 else 1e-4
    out: List[dict] = []

    def case(name: str, backend: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            err = fn(backend)
            _sync(dev)
            ok = err == err and err <= tol
            out.append({"case": name, "backend": backend, "ok": ok, "rel_err": err,
                        "s": round(time.perf_counter() - t0, 2)})
        except Exception as e:  # a probe reports, it does not stop at the first failure
            out.append({"case": name, "backend": backend, "ok": False, "error": f"{type(e).__name__}: {e}"[:400],
                        "trace": traceback.format_exc()[-1500:]})
        print(json.dumps(out[-1]), flush=True)

    g = torch.Generator().manual_seed(0)

    def conv_case(training: bool, groups: int, k: int, stride: int):
        def run(backend: str) -> float:
            cin, cout = 32, 48 if groups == 1 else 32
            x = torch.randn(2, cin, 9, 9, generator=g).to(dev, dtype).contiguous(memory_format=torch.channels_last)
            w = (torch.randn(cout, cin // groups, k, k, generator=g) * 0.2).to(dev, dtype)
            gamma = torch.rand(cout, generator=g).add(0.5).to(dev)
            beta = torch.randn(cout, generator=g).mul(0.1).to(dev)
            rm, rv = torch.randn(cout, generator=g).mul(0.1).to(dev), torch.rand(cout, generator=g).add(0.5).to(dev)
            errs = []
            res = {}
            for b in ("eager", backend):
                xs = x.clone().requires_grad_(training)
                ws, gs, bs = (t.clone().requires_grad_(training) for t in (w, gamma, beta))
                rms, rvs = rm.clone(), rv.clone()
                y = conv_bn_act(xs, ws, gs, bs, rms, rvs, stride=stride, padding=k // 2, groups=groups,
                                training=training, backend=b)
                if training:
                    y.float().square().sum().backward()
                    res[b] = [y, xs.grad, ws.grad, gs.grad, bs.grad, rms, rvs]
                else:
                    res[b] = [y]
            for a, r in zip(res[backend], res["eager"]):
                errs.append(_rel(a, r))
            return max(errs)
        return run

    def se_case(backend: str) -> float:
        x = torch.randn(2, 32, 7, 7, generator=g).to(dev, dtype).contiguous(memory_format=torch.channels_last)
        p = [torch.randn(8, 32, generator=g).mul(0.2), torch.randn(8, generator=g).mul(0.1),
             torch.randn(32, 8, generator=g).mul(0.2), torch.randn(32, generator=g).mul(0.1)]
        res = {}
        for b in ("eager", backend):
            xs = x.clone().requires_grad_(True)
            ps = [t.to(dev).requires_grad_(True) for t in p]
            y = squeeze_excite(xs, *ps, backend=b)
            y.float().square().sum().backward()
            res[b] = [y, xs.grad] + [t.grad for t in ps]
        return max(_rel(a, r) for a, r in zip(res[backend], res["eager"]))

    def block_case(training: bool):
        def run(backend: str) -> float:
            torch.manual_seed(0)
            params = models.RegNetParams(depth=3, w_0=16, w_a=8, w_m=2.0, group_width=8, se_ratio=0.25,
                                         stem_width=16)
            base = models.RegNet(params, num_classes=10).to(dev)
            base.train(training)
            fused = rk.optimize(copy.deepcopy(base), backend=backend)
            x = torch.randn(2, 3, 32, 32, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
            outs = []
            for m in (base, fused):
                xs = x.clone().requires_grad_(training)
                with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
                    y = m(xs)
                if training:
                    y.float().square().sum().backward()
                    outs.append([y, xs.grad] + [p.grad for p in m.parameters()])
                else:
                    outs.append([y])
            # bf16 gradients of a random tiny network at batch 2 are chaotic (eager bf16 is itself far from
            # float64): in bf16 the block's training case compares outputs only, fp32 compares everything
            n = None if dtype == torch.float32 else 1
            return max(_rel(a, r) for a, r in zip(outs[1][:n], outs[0][:n]))
        return run

    for backend in backends:
        for training in (False, True):
            mode = "train" if training else "eval"
            case(f"conv_bn_act {mode} 1x1 dense", backend, conv_case(training, 1, 1, 1))
            case(f"conv_bn_act {mode} 3x3 g8 s2", backend, conv_case(training, 4, 3, 2))
        case("squeeze_excite fwd+bwd", backend, se_case)
        case("bottleneck eval", backend, block_case(False))
        case("bottleneck train fwd+bwd", backend, block_case(True))
    return out


def _built(model: str, mode: str, batch: int, provider: str, dtype: str, resolution: int):
    from regnet_kernels.benchmark import providers as P

    dev = _device()
    base = P.base_model(model, dev)
    wl = P.Workload(model, mode, batch, resolution, dtype, dev)
    built = P.build(provider, wl, base, compile_mode=None)
    x, t = wl.make_inputs(0, built.layout)
    return built, x, t


def warm(model: str, mode: str, batch: int, provider: str = "triton", dtype: str = "bf16",
         resolution: int = 224) -> float:
    """One step of ``provider`` on a zoo model (JIT-compiles its kernels); returns seconds taken."""
    t0 = time.perf_counter()
    built, x, t = _built(model, mode, batch, provider, dtype, resolution)
    with built.active():
        built.step(x, t)
        built.step(x, t)
    _sync(x.device)
    return time.perf_counter() - t0


def profile(model: str, mode: str, batch: int, providers: List[str], dtype: str = "bf16",
            resolution: int = 224, steps: int = 3, warmup: int = 2) -> Dict[str, dict]:
    """Measured per-kernel GPU time of one step, per provider (torch.profiler, CUDA activity)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    dev = _device()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    result: Dict[str, dict] = {}
    for prov in providers:
        try:
            built, x, t = _built(model, mode, batch, prov, dtype, resolution)
            with built.active():
                for _ in range(warmup):
                    built.step(x, t)
                _sync(dev)
                with tprofile(activities=acts) as prof:
                    for _ in range(steps):
                        built.step(x, t)
                    _sync(dev)
            kernels: Dict[str, dict] = {}
            ordered: List[list] = []
            for ev in prof.events():
                if dev.type == "cuda" and ev.device_type != torch.autograd.DeviceType.CUDA:
                    continue
                if dev.type != "cuda" and not ev.name.endswith("_kernel"):
                    continue
                dur = float(getattr(ev, "device_time", None) or getattr(ev, "cuda_time", 0.0) or 0.0) \
                    if dev.type == "cuda" else float(ev.cpu_time)
                k = kernels.setdefault(ev.name, {"launches": 0, "total_us": 0.0})
                k["launches"] += 1
                k["total_us"] += dur
                ordered.append([ev.name[:120], round(dur, 2)])
            for k in kernels.values():
                k["launches"] = k["launches"] / steps
                k["us_per_step"] = round(k.pop("total_us") / steps, 2)
            total = sum(k["us_per_step"] for k in kernels.values())
            top = dict(sorted(kernels.items(), key=lambda kv: -kv[1]["us_per_step"]))
            result[prov] = {"status": "ok", "kernel_us_per_step": round(total, 1),
                            "launches_per_step": sum(k["launches"] for k in kernels.values()),
                            "kernels": top, "first_step_launches": ordered[: max(1, len(ordered) // steps)]}
            del built, x, t
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:
            result[prov] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:400]}
        print(f"profile {model} {mode} {prov}: {result[prov].get('status')} "
              f"{result[prov].get('kernel_us_per_step', '')} us/step", flush=True)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m regnet_kernels.benchmark.probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smoke")
    s.add_argument("--backends", default="triton,cuda")
    s.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    s.add_argument("--out", default=None)
    for name in ("warm", "profile"):
        q = sub.add_parser(name)
        q.add_argument("--model", required=True)
        q.add_argument("--mode", choices=("infer", "train"), required=True)
        q.add_argument("--batch", type=int, required=True)
        q.add_argument("--resolution", type=int, default=224)
        q.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
        q.add_argument("--providers" if name == "profile" else "--provider",
                       default="eager_nhwc,triton,cuda" if name == "profile" else "triton")
        q.add_argument("--out", default=None)
        if name == "profile":
            q.add_argument("--steps", type=int, default=3, help="profiled steps (after one or two warm-up steps)")
    a = p.parse_args(argv)
    from regnet_kernels.benchmark.providers import DTYPES

    if a.cmd == "smoke":
        from regnet_kernels import backends as B

        usable = []
        for b in a.backends.split(","):
            why = B.why_not(b, [torch.empty(1, device=_device())], "conv_bn_act")
            if why:
                print(json.dumps({"case": "backend", "backend": b, "ok": None, "skip": why}), flush=True)
            else:
                usable.append(b)
        recs = smoke(usable, DTYPES[a.dtype])
        if a.out:
            with open(a.out, "w") as f:
                json.dump(recs, f, indent=1)
        bad = [r for r in recs if not r["ok"]]
        print(f"smoke: {len(recs) - len(bad)} ok, {len(bad)} failed", flush=True)
        return 1 if bad else 0
    if a.cmd == "warm":
        s = warm(a.model, a.mode, a.batch, a.provider, a.dtype, a.resolution)
        print(f"warm {a.model} {a.mode} batch {a.batch} {a.provider}: {s:.1f} s", flush=True)
        return 0
    res = profile(a.model, a.mode, a.batch, a.providers.split(","), a.dtype, a.resolution, steps=a.steps,
                  warmup=min(2, a.steps))
    doc = {"model": a.model, "mode": a.mode, "batch": a.batch, "dtype": a.dtype, "resolution": a.resolution,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "providers": res}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)
    return 0 if all(r.get("status") == "ok" for r in res.values()) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
