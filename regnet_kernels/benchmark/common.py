"""Helpers the ``bench``, ``sweep`` and ``pick`` commands share: option parsing and validation, the device
and git description stamped on every record, atomic JSON writes and plain-text tables.

User errors raise :class:`SystemExit` with a one-line message (or, as argparse ``type=`` callables,
:class:`argparse.ArgumentTypeError`), never a traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import subprocess
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "MIN_RESOLUTION",
    "int_at_least",
    "resolution_type",
    "add_run_options",
    "positive_float",
    "split_names",
    "parse_providers",
    "device_name",
    "device_slug",
    "git",
    "finite",
    "write_json_atomic",
    "format_table",
    "fmt",
    "mib",
    "triton_version",
]

#: The smallest image a RegNet takes: five stride-2 stages (stem + four) leave a 1x1 map at 32.
MIN_RESOLUTION = 32


# ------------------------------------------------------------------------------------------------
# Option values
# ------------------------------------------------------------------------------------------------
def int_at_least(lo: int, what: str = "") -> Callable[[str], int]:
    """An argparse ``type=``: an integer ``>= lo`` (0, negatives, ``nan``, ``inf`` and non-integers refused)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}{what}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}{what}, got {value}")
        return value

    parse.__name__ = f"integer >= {lo}"  # argparse names the type in its messages
    return parse


def resolution_type() -> Callable[[str], int]:
    """An argparse ``type=`` for an image size: an integer >= :data:`MIN_RESOLUTION`."""
    return int_at_least(MIN_RESOLUTION, " (five stride-2 stages)")


def add_run_options(p: argparse.ArgumentParser, provider_names: Sequence[str], *, dtype_help: str,
                    providers_help: str, resolution_help: str) -> None:
    """``--dtype``, ``--providers`` and ``--resolution`` as ``bench``, ``sweep`` and ``pick`` spell them;
    each help text continues the shared start (``"autocast dtype (fp32: no autocast)"``, ``"any of NAMES"``)."""
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="autocast dtype (fp32: no autocast)" + dtype_help)
    p.add_argument("--providers", nargs="+", default=None, metavar="NAME",
                   help=f"any of {', '.join(provider_names)}" + providers_help)
    p.add_argument("--resolution", type=resolution_type(), default=None, help=resolution_help)


def positive_float(text: str) -> float:
    """An argparse ``type=``: a finite number ``> 0`` (``nan``, ``inf``, 0 and negatives refused)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def split_names(values: Union[Sequence[str], str, None]) -> List[str]:
    """``["a,b", "c"]`` or ``"a,b"`` -> ``["a", "b", "c"]`` (blanks dropped)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def parse_providers(values: Union[Sequence[str], str, None], known: Sequence[str], *, default: Sequence[str],
                    all_means: Sequence[str], all_is_explicit: bool, command: str) -> Tuple[Tuple[str, ...], frozenset]:
    """Provider names from the command line, in ``known``'s order (eager first: compile reuses its layout).

    Args:
        values: what ``--providers`` got (space and/or comma separated), or None.
        known: every valid name, in run order.
        default: the answer when nothing was named.
        all_means: what ``all`` expands to.
        all_is_explicit: whether ``all`` counts as naming each provider (slow providers then run too).
        command: the subcommand, for the error message.

    Returns:
        ``(providers, explicit)``: what runs, and the names the user asked for explicitly.

    Raises:
        SystemExit: an unknown name (the message lists the known ones).
    """
    names = split_names(values)
    if not names:
        return tuple(default), frozenset()
    unknown = [n for n in names if n not in known and n != "all"]
    if unknown:
        raise SystemExit(f"{command}: unknown provider(s) {', '.join(unknown)}; known: {', '.join(known)}, all")
    if "all" in names:
        rest = [n for n in names if n != "all"]
        chosen = set(all_means) | set(rest)
        explicit = chosen if all_is_explicit else set(rest)
        return tuple(p for p in known if p in chosen), frozenset(explicit)
    return tuple(p for p in known if p in names), frozenset(names)


# ------------------------------------------------------------------------------------------------
# Where a record comes from
# ------------------------------------------------------------------------------------------------
def git(*argv: str) -> Optional[str]:
    """Output of ``git argv`` run in the package's checkout, or None (no git, not a checkout)."""
    try:
        out = subprocess.run(["git", *argv], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` on CUDA, else ``"CPU (<model name>)"``."""
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


def device_slug(device: torch.device, name: str) -> str:
    """File-name form of a device: ``cpu``, or the GPU name lower-cased with dashes."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cuda"


# ------------------------------------------------------------------------------------------------
# JSON and text
# ------------------------------------------------------------------------------------------------
def finite(obj):
    """JSON has no inf/nan: non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if obj != obj else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json_atomic(path: Union[str, Path], doc: dict) -> None:
    """Write ``doc`` to ``path`` whole, then rename: an interrupt never leaves a half-written JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(finite(doc), indent=1, default=str, allow_nan=False))
    tmp.replace(path)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A left-aligned plain-text table with a dashed rule under the headers."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def fmt(v, spec: str = "{:.3g}", none: str = "-") -> str:
    """``spec.format(v)``; ``none`` for None, ``"nan"`` for NaN."""
    if v is None:
        return none
    if isinstance(v, float) and v != v:
        return "nan"
    return spec.format(v)


def mib(b: Optional[int]) -> str:
    """Bytes as ``"12.3 MiB"`` / ``"1.23 GiB"``; ``"-"`` for None."""
    if b is None:
        return "-"
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def triton_version() -> Optional[str]:
    """The installed Triton's version, or None."""
    try:
        import triton
    except Exception:  # not installed, or broken: the records say None
        return None
    return getattr(triton, "__version__", None)
