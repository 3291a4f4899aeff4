"""What every fused op shares: which dtypes the kernel backends take, and picking the implementation of an
op package for the resolved backend: its ``reference`` module for eager, else its ``fused`` composition
bound to the backend's kernel set (:mod:`regnet_kernels.kernels.api`)."""
from __future__ import annotations

import functools
import importlib
import types
from typing import Dict, Optional, Sequence, Tuple

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


_BOUND: Dict[Tuple[str, str], types.SimpleNamespace] = {}


def bind(package: str, kernels: str) -> types.SimpleNamespace:
    """``package``'s fused composition (``{package}.fused``) on the kernel set ``kernels`` (``"triton"`` or
    ``"cuda"``): an object whose attributes are the functions of the module's ``__all__`` with the kernel set
    bound as their first argument, so they take reference.py's arguments. One per (package, kernels)."""
    key = (package, kernels)
    if key not in _BOUND:
        from regnet_kernels.kernels import api as _kernels

        module = importlib.import_module(f"{package}.fused")
        k = _kernels.get(kernels)
        _BOUND[key] = types.SimpleNamespace(
            kernels=k, **{name: functools.partial(getattr(module, name), k) for name in module.__all__})
    return _BOUND[key]


def implementation(op: str, package: str, backend: str, tensors: Sequence[Optional[torch.Tensor]]):
    """What implements ``op`` of ``package`` on ``tensors`` for ``backend`` (``auto`` resolved): the
    ``reference`` module for eager (and for an empty batch, which no kernel backend is launched on: see
    :func:`empty_batch`), else the fused composition bound to the backend's kernels (:func:`bind`)."""
    name = _backends.resolve(op, tensors, backend)
    if name == "eager" or (tensors and tensors[0] is not None and empty_batch(tensors[0].shape)):
        return importlib.import_module(f"{package}.reference")
    return bind(package, name)
