"""Environment report behind ``python -m regnet_kernels info``."""
from __future__ import annotations

import platform
import sys

import torch

from regnet_kernels import backends
from regnet_kernels._version import __version__


def environment() -> dict:
    """Versions, GPUs and backend availability, as a JSON-serialisable dict."""
    cuda_ok = torch.cuda.is_available()
    gpus = []
    if cuda_ok:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "index": i,
                    "name": p.name,
                    "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "sms": p.multi_processor_count,
                }
            )
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "regnet_kernels": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": cudnn,
        "triton": backends.triton_version(),
        "cuda_available": cuda_ok,
        "gpus": gpus,
        "backends": backends.summary(),
    }


def format_environment(env: dict) -> str:
    lines = [
        f"regnet_kernels {env['regnet_kernels']}",
        f"python         {env['python']} ({env['platform']})",
        f"torch          {env['torch']} (CUDA {env['torch_cuda'] or 'none: CPU build'}, "
        f"cuDNN {env['cudnn'] or 'none'})",
        f"triton         {env['triton'] or 'not installed'}",
    ]
    if env["gpus"]:
        for g in env["gpus"]:
            lines.append(
                f"GPU {g['index']}          {g['name']} (sm_{g['capability'].replace('.', '')}, "
                f"{g['memory_gib']} GiB, {g['sms']} SMs)"
            )
    else:
        lines.append("GPUs           none visible to torch")
    lines.append("backends (on %s tensors):" % ("CUDA" if env["gpus"] else "CPU"))
    for b in env["backends"]:
        state = "can run" if b["available"] else f"cannot run: {b['reason']}"
        extra = ""
        if b["backend"] == "triton" and b.get("interpreter"):
            extra = " [interpreter mode, TRITON_INTERPRET=1]"
        lines.append(f"  {b['backend']:<7} {state}{extra}")
        if b["backend"] == "cuda":
            ext = b["extension"]
            if ext.get("built"):
                archs = ext.get("archs") or ext.get("cuda_archs") or "unknown"
                lines.append(f"          extension regnet_kernels._C built (archs: {archs})")
            else:
                lines.append(f"          extension regnet_kernels._C not built: {ext.get('error')}")
            lines.append(f"          CuPy JIT fallback: {'available' if b['cupy'] else 'unavailable'}")
    return "\n".join(lines)
