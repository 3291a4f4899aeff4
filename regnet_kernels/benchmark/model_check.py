"""Hold the per-launch performance model against measured kernel times.

The GPU kit's profile (:func:`regnet_kernels.benchmark.probe.profile`) records, for one fused step, every
kernel launch in order with its measured GPU time. The launch plan (:mod:`regnet_kernels.benchmark.plan`)
lists the same launches from shapes alone, and :mod:`regnet_kernels.benchmark.launch_model` predicts each
one's time (a *model*). Both sequences come from the same launchers, so the project's Triton kernels line
up one to one (torch's own kernels, e.g. autocast weight casts, are left out of the comparison); the
result says per kernel name, and for the worst launches, how far the measurement is from the model.

``python -m regnet_kernels.benchmark.model_check PROFILE.json [--mode infer] [--device h200]
[--aot-dir DIR]`` prints the comparison (``--aot-dir``: compiled facts from ``aot`` reports, so the model
uses the compiled occupancy; without it the model assumes full occupancy).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["compare", "format_comparison", "main"]


def _ours(name: str) -> bool:
    return name.endswith("_kernel") and not name.startswith(("void ", "nvjet"))


def compare(profile_doc: dict, mode: str, provider: str = "triton", device: str = "h200",
            facts: Optional[Dict[str, dict]] = None) -> dict:
    """Per-kernel and worst-launch comparison of ``profile_doc[mode]`` (a probe profile) with the model.

    Returns ``{"status", "model_ms", "measured_ms", "kernels": {name: {...}}, "worst": [...]}``; ``status``
    is ``"misaligned"`` (with the first differing position) when the launch sequences do not line up.
    """
    from regnet_kernels.benchmark import launch_model as LM
    from regnet_kernels.benchmark.plan import plan

    doc = profile_doc[mode]
    prof = doc["providers"][provider]
    measured = [(n, float(t)) for n, t in prof["first_step_launches"] if _ours(n)]
    p = plan(doc["model"], mode, batch=doc["batch"], resolution=doc.get("resolution", 224),
             dtype=doc.get("dtype", "bf16"))
    launches = [la for la in p.launches if _ours(la.kernel)]
    if len(launches) != len(measured) or any(la.kernel != n for la, (n, _) in zip(launches, measured)):
        first = next((i for i, (la, (n, _)) in enumerate(zip(launches, measured)) if la.kernel != n),
                     min(len(launches), len(measured)))
        return {"status": "misaligned", "planned": len(launches), "measured": len(measured), "first_diff": first}
    kernels: Dict[str, dict] = {}
    rows: List[dict] = []
    for la, (name, t_us) in zip(launches, measured):
        pred_us = LM.predict_s(la, (facts or {}).get(la.spec_key), device) * 1e6
        k = kernels.setdefault(name, {"launches": 0, "model_us": 0.0, "measured_us": 0.0})
        k["launches"] += 1
        k["model_us"] += pred_us
        k["measured_us"] += t_us
        rows.append({"kernel": name, "bytes": la.bytes, "flops": la.flops, "grid": list(la.grid),
                     "constexprs": {c: v for c, v in la.constexprs.items() if c.isupper()},
                     "model_us": round(pred_us, 2), "measured_us": round(t_us, 2),
                     "ratio": round(t_us / pred_us, 2) if pred_us > 0 else None})
    for k in kernels.values():
        k["ratio"] = round(k["measured_us"] / k["model_us"], 2) if k["model_us"] > 0 else None
        k["model_us"], k["measured_us"] = round(k["model_us"], 1), round(k["measured_us"], 1)
    worst = sorted(rows, key=lambda r: -(r["ratio"] or 0))[:8]
    return {"status": "ok", "device_model": device, "model_is": "a model (launch_model), not a measurement",
            "model_ms": round(sum(r["model_us"] for r in rows) / 1e3, 3),
            "measured_ms": round(sum(r["measured_us"] for r in rows) / 1e3, 3), "kernels": kernels, "worst": worst}


def format_comparison(res: dict) -> List[str]:
    if res.get("status") != "ok":
        return [f"model check: {res.get('status')} ({res})"]
    lines = [f"model ({res['device_model']}) {res['model_ms']:.2f} ms vs measured {res['measured_ms']:.2f} ms "
             f"over our kernels ({res['measured_ms'] / max(res['model_ms'], 1e-9):.1f}x)"]
    for name, k in sorted(res["kernels"].items(), key=lambda kv: -kv[1]["measured_us"]):
        lines.append(f"  {name:<26} x{k['launches']:<4} model {k['model_us'] / 1e3:8.3f} ms  measured "
                     f"{k['measured_us'] / 1e3:8.3f} ms  ({k['ratio']}x)")
    for r in res["worst"][:4]:
        lines.append(f"  worst: {r['kernel']} {r['bytes'] / 1e6:.1f} MB {r['flops'] / 1e9:.2f} GFLOP {r['constexprs']}: "
                     f"model {r['model_us']:.0f} us, measured {r['measured_us']:.0f} us ({r['ratio']}x)")
    return lines


def _facts(aot_dir: Optional[str]) -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    for f in sorted(Path(aot_dir).glob("aot-*-sm_*.json")) if aot_dir else []:
        for r in json.loads(f.read_text()).get("specialisations", []):
            out[r["spec"]] = r
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m regnet_kernels.benchmark.model_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", help="profile.json from the GPU kit")
    p.add_argument("--mode", default="infer", choices=("infer", "train"))
    p.add_argument("--provider", default="triton")
    p.add_argument("--device", default="h200", help="device of the model (h100_sxm, h200)")
    p.add_argument("--aot-dir", default=None, help="folder of aot-<model>-sm_XX.json reports (compiled facts)")
    a = p.parse_args(argv)
    res = compare(json.loads(Path(a.profile).read_text()), a.mode, a.provider, a.device, _facts(a.aot_dir))
    print("\n".join(format_comparison(res)))
    return 0 if res.get("status") == "ok" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
