"""Shared helpers for the Triton kernels (imported lazily: only when a Triton op runs).

``INTERPRET`` records whether our kernels were decorated in interpreter mode. Triton decides that at
decoration time from ``TRITON_INTERPRET``, so the flag is read once, when this module is imported,
and every kernel module imports this one first.
"""
from __future__ import annotations

import collections
import os

import torch

from regnet_kernels.kernels.geometry import device_arch, num_sms

try:  # triton >= 3.4
    from triton import knobs as _knobs

    INTERPRET: bool = bool(_knobs.runtime.interpret)
except Exception:  # pragma: no cover - older triton
    INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

from regnet_kernels.kernels.triton.config import Target, next_pow2

__all__ = ["INTERPRET", "LAUNCHES", "next_pow2", "dot_in_fp32", "ieee_dot", "launch_device", "launch",
           "target", "recording"]

#: Number of launches per Triton kernel name since import. Tests use it to prove that the Triton
#: kernels (and not a fallback) actually ran; it costs one dict update per launch.
LAUNCHES: collections.Counter = collections.Counter()

#: The active launch recorder (see :mod:`regnet_kernels.benchmark.plan`), or None. While one is set,
#: :func:`launch` hands every launch to it instead of running it, and :func:`target` returns its
#: target, so the launchers choose their configs for the planned GPU.
_RECORDER = None


def dot_in_fp32(dtype: torch.dtype, interpret: bool = INTERPRET) -> bool:
    """Whether ``tl.dot`` operands must be upcast to fp32.

    fp32 always multiplies in fp32. bf16 is upcast only in the interpreter, whose ``tl.dot`` on bf16
    operands returns garbage (numpy has no bf16); on a GPU bf16 goes to the tensor cores.
    """
    return dtype == torch.float32 or (interpret and dtype == torch.bfloat16)


def ieee_dot(dtype: torch.dtype) -> bool:
    """fp32 convolutions multiply in full fp32 (IEEE), not TF32: our fp32 contract is 1e-4 relative."""
    return dtype == torch.float32




class launch_device:
    """Make ``device`` current while launching (Triton launches on the current CUDA device)."""

    def __init__(self, device: torch.device, kernel: str = ""):
        if kernel:
            LAUNCHES[kernel] += 1
        self.ctx = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def recording():
    """The active launch recorder, or None."""
    return _RECORDER


def set_recorder(recorder):
    """Install ``recorder`` (an object with ``target`` and ``record(kernel, grid, label, args, kwargs)``);
    returns the previous one. Used by the launch plan only."""
    global _RECORDER
    prev, _RECORDER = _RECORDER, recorder
    return prev


def target(device: torch.device) -> Target:
    """Where launches on ``device`` run: the planned GPU while recording, else this process's mode."""
    if _RECORDER is not None:
        return _RECORDER.target
    return Target(INTERPRET, num_sms(device), 0 if INTERPRET else device_arch(device))


def launch(kernel, grid, device: torch.device, label: str = ""):
    """``kernel[grid]`` with ``device`` current; call the result with the kernel's arguments.

    Counts the launch in :data:`LAUNCHES` under ``label`` (default: the kernel's name). While a recorder
    is active the launch is recorded, not run (the plan's tensors live on the meta device).
    """
    label = label or kernel.fn.__name__
    LAUNCHES[label] += 1
    rec = _RECORDER
    if rec is not None:
        return lambda *args, **kwargs: rec.record(kernel, grid, label, args, kwargs)
    if device.type != "cuda":
        return kernel[grid]

    def run(*args, **kwargs):
        with torch.cuda.device(device):
            return kernel[grid](*args, **kwargs)

    return run
