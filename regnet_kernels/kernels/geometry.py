"""Shape, layout and device facts every layer shares (one copy each): conv output sizes, memory formats and
the SM count that split-K and wave heuristics divide work by."""
from __future__ import annotations

import torch

__all__ = ["conv_out_size", "memory_format_of", "num_sms", "device_arch", "OFF_GPU_SMS"]

#: the SM count assumed off a GPU (Triton interpreter, CUDA emulator): few programs, each slow to run
OFF_GPU_SMS = 4
_props_cache: dict = {}


def conv_out_size(size: int, k: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one spatial axis (dilation 1)."""
    return (size + 2 * padding - k) // stride + 1


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` when a 4-D ``t`` is laid out channels-last (and not also plain contiguous, as
    tensors with C == 1 or H == W == 1 are), else ``torch.contiguous_format``: what outputs are allocated in."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _cuda_props(device: torch.device) -> tuple:
    """``(SM count, compute capability as 90)`` of a CUDA device, read once per device."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _props_cache:
        p = torch.cuda.get_device_properties(idx)
        _props_cache[idx] = (p.multi_processor_count, 10 * p.major + p.minor)
    return _props_cache[idx]


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device``, :data:`OFF_GPU_SMS` elsewhere."""
    return _cuda_props(device)[0] if device.type == "cuda" else OFF_GPU_SMS


def device_arch(device: torch.device) -> int:
    """Compute capability as ``90`` (0 off CUDA): what tuned configs and builds are keyed by."""
    return _cuda_props(device)[1] if device.type == "cuda" else 0
