"""What a variant sweep is made of, shared by ``sweep`` (:mod:`regnet_kernels.benchmark.sweep`) and ``pick``
(:mod:`regnet_kernels.benchmark.pareto`): the zoo as a sweep sees it (variants, published accuracy), the
record format and its JSON file (load with validation, atomic write), the MAC-order analysis, and the
options both commands take.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any, Iterable

import torch

from regnet_kernels.benchmark.common import (
    add_run_options, device_name, git, int_at_least, triton_version, write_json_atomic,
)

__all__ = [
    "DEFAULT_PROVIDERS",
    "RECORD_FIELDS",
    "SCHEMA",
    "SWEEP_PROVIDERS",
    "add_common_arguments",
    "architecture",
    "env_common",
    "family_of",
    "load_sweep",
    "mac_order",
    "measurement_groups",
    "published_accuracy",
    "published_gmacs",
    "record_key",
    "resolve_device",
    "validate_records",
    "variants",
    "write_sweep",
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


# ------------------------------------------------------------------------------------------------
# The zoo as a sweep sees it
# ------------------------------------------------------------------------------------------------
def published_gmacs(name: str) -> float:
    """Published GMACs of a variant at 224 (its FLOPs / 1e9 where only those are published)."""
    from regnet_kernels.models import PUBLISHED

    pub = PUBLISHED[name]
    return float(pub["gmacs"]) if pub["gmacs"] is not None else pub["flops"] / 1e9


def family_of(name: str) -> str:
    """``"y"`` (with SE) or ``"x"``."""
    from regnet_kernels.models import get_model_params

    return "y" if get_model_params(name).se_ratio is not None else "x"


def architecture(name: str) -> tuple:
    """What makes two variants the same network: stem width and blocks."""
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
    names = sorted((n for n in list_models() if family == "both" or family_of(n) == family),
                   key=lambda n: (published_gmacs(n), n))
    if not quick:
        return names
    out, seen = [], set()
    for n in names:
        arch = architecture(n)
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
# Environment and file I/O
# ------------------------------------------------------------------------------------------------
def env_common(device: torch.device) -> dict:
    """Device, versions, git commit and date stamped on every record (the same as the bench report's)."""
    return {"device": device_name(device), "torch": torch.__version__, "triton": triton_version(),
            "cuda": torch.version.cuda, "git_commit": git("rev-parse", "--short", "HEAD"),
            "date": _dt.date.today().isoformat()}


def record_key(r: dict) -> tuple:
    """What identifies a measurement: a new one with the same key replaces the old."""
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
    validate_records(doc["records"], str(path))
    return doc


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _problem(r: Any) -> str | None:
    if not isinstance(r, dict):
        return f"a JSON {type(r).__name__}, not an object"
    if r.get("kind") != "measurement":
        return None  # other kinds are not read
    for name, kind in (("model", str), ("provider", str), ("batch", int)):
        v = r.get(name)
        if not isinstance(v, kind) or isinstance(v, bool):
            return f"{name} is {v!r}"
    for name in ("top1", "top1_best224", "macs", "peak_mem_bytes", "weights_bytes"):
        if r.get(name) is not None and not _number(r[name]):
            return f"{name} is {r[name]!r}, not a number"
    if r.get("status") == "ok":
        for name in ("ms_median", "ms_p10", "ms_p90", "img_per_s"):
            if not _number(r.get(name)) or r[name] <= 0:
                return f"status ok but {name} is {r.get(name)!r}"
    return None


def validate_records(records: list, where: str) -> None:
    """Check what :func:`~regnet_kernels.benchmark.pareto.choose` and a resumed sweep read from each record.

    Raises:
        SystemExit: naming the first malformed record and what is wrong with it.
    """
    for i, r in enumerate(records):
        problem = _problem(r)
        if problem is not None:
            name = r.get("model") if isinstance(r, dict) else None
            raise SystemExit(f"{where}: record {i}{f' ({name})' if isinstance(name, str) else ''} is malformed: "
                             f"{problem}")


def write_sweep(path: Path, doc: dict) -> None:
    """Write a sweep document atomically (an interrupt never leaves a half-written JSON to resume from)."""
    doc["updated"] = _dt.datetime.now().isoformat(timespec="seconds")
    write_json_atomic(path, doc)


def resolve_device(arg: str | None) -> torch.device:
    """``--device``: ``auto`` (CUDA if present), ``cpu`` or ``cuda[:N]``; SystemExit for anything else."""
    if arg in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(arg)
    except (RuntimeError, TypeError):
        raise SystemExit(f"--device {arg!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {arg!r}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here")
    return dev


# ------------------------------------------------------------------------------------------------
# MAC order vs measured order
# ------------------------------------------------------------------------------------------------
def measurement_groups(records: Iterable[dict]) -> dict[tuple, list[dict]]:
    """Timed records by (device, batch, dtype, resolution, provider, cuda_graph)."""
    out: dict[tuple, list[dict]] = {}
    for r in records:
        if (r.get("kind") == "measurement" and r.get("status") == "ok" and r.get("ms_median") is not None
                and r.get("macs") is not None):
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
    for (device, batch, dtype, res, provider, graph), recs in sorted(measurement_groups(doc["records"]).items(),
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


# ------------------------------------------------------------------------------------------------
# Options of sweep and pick
# ------------------------------------------------------------------------------------------------
def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``sweep`` and ``pick`` share (what to time and how)."""
    p.add_argument("--family", choices=("x", "y", "both"), default="both", help="RegNetX, RegNetY or both (default)")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="zoo variants (comma or space separated; default: every variant of --family)")
    add_run_options(
        p, SWEEP_PROVIDERS,
        dtype_help="; default bf16 on GPU, fp32 on CPU (where bf16 autocast is usually slower and nobody "
                   "deploys it)",
        providers_help=f", or all (default: sweep {','.join(DEFAULT_PROVIDERS)}, pick eager_best,auto; on CPU "
                       "only eager is timed unless compile is named)",
        resolution_help="square input size (default 224 on GPU; CPU 128, --quick 64)")
    p.add_argument("--quick", action="store_true",
                   help="CI subset: the 3 smallest distinct variants, few repetitions, small CPU inputs")
    p.add_argument("--reps", type=int_at_least(1), default=None,
                   help="timed repetitions (GPU 30, CPU 5; --quick 10 / 3)")
    p.add_argument("--warmup", type=int_at_least(0), default=None,
                   help="untimed repetitions first (GPU 5, CPU 2; --quick 3 / 1)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode on GPU (default: torch's default; max-autotune over every variant and "
                        "batch takes hours)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="time non-compile providers as CUDA-graph replays (batch-1 latency without launch overhead)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu or cuda[:N]")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="CPU threads while timing (default: torch's; --quick on CPU: 1, because on a shared CI "
                        "machine spinning worker threads make small CPU timings slow and erratic)")
    p.add_argument("--no-dedupe", action="store_true",
                   help="time torchvision's and pycls's copies of the same network separately")


