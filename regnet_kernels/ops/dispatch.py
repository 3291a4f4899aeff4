"""What every fused op shares: which dtypes the kernel backends take, and picking the implementation
module (``reference`` for eager, ``triton`` or ``cuda``) of an op package for the resolved backend."""
from __future__ import annotations

import importlib
from typing import Optional, Sequence

import torch

from regnet_kernels import backends as _backends

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class ShapeError(ValueError, RuntimeError):
    """A shape the fused ops refuse where eager PyTorch's conv raises ``RuntimeError``: it is both, so code
    written against either eager (``except RuntimeError``) or the fused functionals (``except ValueError``)
    catches it. The message carries eager's wording."""


class DtypeError(TypeError, RuntimeError):
    """Mismatched dtypes, where eager PyTorch's conv raises ``RuntimeError`` (see :class:`ShapeError`)."""


def empty_batch(shape) -> bool:
    """True when an op's input or output holds no element: eager's result is empty too, and the kernel
    backends are never launched on it (the eager backend computes it, autograd chain included)."""
    return any(s == 0 for s in shape)


def activation_dtype_check(tensors: Sequence[torch.Tensor]) -> Optional[str]:
    """Kernels take fp16 / bf16 / fp32 activations (the first tensor); parameters may be fp32 under AMP."""
    if tensors and tensors[0].dtype not in KERNEL_DTYPES:
        return f"kernels support float16, bfloat16 and float32, got {tensors[0].dtype}"
    return None


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype ``torch.autocast`` casts to on ``device_type``, or None when autocast is off there or the
    device type has no autocast at all (``meta``: shape-only tensors, e.g. for complexity counting)."""
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def register_kernel_checks(op: str, cuda_reason: Optional[str] = None) -> None:
    """Register the dtype check for the kernel backends; ``cuda_reason`` marks an op the cuda backend lacks."""
    _backends.register_op_check(op, "triton", activation_dtype_check)
    if cuda_reason is None:
        _backends.register_op_check(op, "cuda", activation_dtype_check)
    else:
        _backends.register_op_check(op, "cuda", lambda tensors: cuda_reason)


def implementation(op: str, package: str, backend: str, tensors: Sequence[Optional[torch.Tensor]]):
    """The module of ``package`` implementing ``op`` on ``tensors`` for ``backend`` (``auto`` resolved)."""
    name = _backends.resolve(op, tensors, backend)
    return importlib.import_module(f"{package}.{'reference' if name == 'eager' else name}")
