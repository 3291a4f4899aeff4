"""Shape, layout and device facts every layer shares (one copy each): conv output sizes, memory formats and
the SM count that split-K and wave heuristics divide work by."""
from __future__ import annotations

import torch

__all__ = ["conv_out_size", "memory_format_of", "num_sms", "OFF_GPU_SMS"]

#: the SM count assumed off a GPU (Triton interpreter, CUDA emulator): few programs, each slow to run
OFF_GPU_SMS = 4
_sm_cache: dict = {}


def conv_out_size(size: int, k: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one spatial axis (dilation 1)."""
    return (size + 2 * padding - k) // stride + 1


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` when a 4-D ``t`` is laid out channels-last (and not also plain contiguous, as
    tensors with C == 1 or H == W == 1 are), else ``torch.contiguous_format``: what outputs are allocated in."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device`` (cached per device), :data:`OFF_GPU_SMS` elsewhere."""
    if device.type != "cuda":
        return OFF_GPU_SMS
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _sm_cache:
        _sm_cache[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _sm_cache[idx]
