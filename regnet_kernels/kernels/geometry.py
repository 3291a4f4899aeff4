"""Shape and layout facts every layer shares (one copy each): conv output sizes and memory formats."""
from __future__ import annotations

import torch

__all__ = ["conv_out_size", "memory_format_of"]


def conv_out_size(size: int, k: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one spatial axis (dilation 1)."""
    return (size + 2 * padding - k) // stride + 1


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` when a 4-D ``t`` is laid out channels-last (and not also plain contiguous, as
    tensors with C == 1 or H == W == 1 are), else ``torch.contiguous_format``: what outputs are allocated in."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
