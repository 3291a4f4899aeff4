"""Registers, spills, shared memory and tensor-core use of the built CUDA extension ``regnet_kernels._C``.

Reads the extension's embedded cubins with the ``cuobjdump`` shipped in the Triton wheel (or one on
``PATH``): ``-res-usage`` for registers / stack / shared memory per kernel and architecture, ``-sass`` for
local-memory traffic (``STL`` / ``LDL``: spills) and ``HMMA`` / ``HGMMA`` (tensor cores). Compiled facts,
not measurements; nothing is launched.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["find_extension", "cuda_ext_report", "format_cuda_ext"]

_PKG = Path(__file__).resolve().parents[1]


def _cuobjdump() -> Optional[str]:
    try:
        import triton

        p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if p.exists():
            return str(p)
    except ImportError:  # pragma: no cover
        pass
    return shutil.which("cuobjdump")


def find_extension() -> Optional[Path]:
    found = sorted(_PKG.glob("_C*.so"))
    return found[0] if found else None


def _demangle(names: List[str]) -> Dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _split_by_arch(text: str, header: str) -> List[tuple]:
    """``[(arch, chunk)]`` for each embedded ELF in cuobjdump output."""
    parts = re.split(r"\n(?=Fatbin elf code:)", text)
    out = []
    for part in parts:
        m = re.search(r"arch = (sm_\d+a?)", part)
        if m:
            out.append((m.group(1), part))
    return out


def cuda_ext_report(path: Optional[Path] = None) -> dict:
    """``{"extension", "kernels": [{name, arch, regs, stack_bytes, smem_bytes, local_bytes, spill_stores,
    spill_loads, hmma, hgmma, half_conv, tensor_cores_ok}]}``; ``error`` when the extension or cuobjdump is
    missing."""
    path = Path(path) if path else find_extension()
    tool = _cuobjdump()
    if path is None or not path.exists():
        return {"extension": None, "error": "regnet_kernels._C is not built", "kernels": []}
    if tool is None:
        return {"extension": str(path), "error": "cuobjdump not found", "kernels": []}
    res = subprocess.run([tool, "-res-usage", str(path)], capture_output=True, text=True).stdout
    sass = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True).stdout
    rows: Dict[tuple, dict] = {}
    for arch, chunk in _split_by_arch(res, "res"):
        for m in re.finditer(r"Function ([^\s:]+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", chunk):
            rows[(arch, m.group(1))] = {"arch": arch, "mangled": m.group(1), "regs": int(m.group(2)),
                                        "stack_bytes": int(m.group(3)), "smem_bytes": int(m.group(4)),
                                        "local_bytes": int(m.group(5))}
    for arch, chunk in _split_by_arch(sass, "sass"):
        for fm in re.finditer(r"Function : (\S+)\n(.*?)(?=\n\s*Function : |\Z)", chunk, re.S):
            row = rows.setdefault((arch, fm.group(1)), {"arch": arch, "mangled": fm.group(1)})
            body = fm.group(2)
            row["spill_stores"] = len(re.findall(r"\bSTL\b", body))
            row["spill_loads"] = len(re.findall(r"\bLDL\b", body))
            row["hmma"] = len(re.findall(r"\bHMMA\b", body))
            row["hgmma"] = len(re.findall(r"\bHGMMA\b", body))
    names = _demangle(sorted({r["mangled"] for r in rows.values()}))
    kernels = []
    for (arch, mangled), r in sorted(rows.items()):
        r["name"] = names.get(mangled, mangled)
        half = "conv" in r["name"] and ("bfloat16" in r["name"] or "__half" in r["name"])
        r["half_conv"] = half
        r["tensor_cores_ok"] = (r.get("hmma", 0) + r.get("hgmma", 0) > 0) if half else None
        kernels.append(r)
    return {"extension": str(path), "error": None, "kernels": kernels,
            "kind": "compiled, not measured"}


def format_cuda_ext(rep: dict) -> List[str]:
    if rep.get("error"):
        return [f"CUDA extension: {rep['error']}"]
    lines = [f"CUDA extension {Path(rep['extension']).name} (compiled, not measured)",
             f"  {'arch':6s} {'kernel':70s} {'regs':>4s} {'stack':>5s} {'smem':>6s} {'STL/LDL':>9s} {'HMMA':>5s}"]
    for r in rep["kernels"]:
        name = re.sub(r"\(.*\)$", "", r["name"])[:70]
        lines.append(f"  {r['arch']:6s} {name:70s} {r.get('regs', 0):>4d} {r.get('stack_bytes', 0):>5d} "
                     f"{r.get('smem_bytes', 0):>6d} {r.get('spill_stores', 0):>4d}/{r.get('spill_loads', 0):<4d} "
                     f"{r.get('hmma', 0):>5d}" + ("  NO TENSOR CORES" if r["tensor_cores_ok"] is False else ""))
    return lines
