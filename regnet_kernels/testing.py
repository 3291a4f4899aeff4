"""Helpers for testing kernels against PyTorch: the tolerance rule of docs/numerics.md, and GPU-only tests.

The rule (flash-attention's): a kernel's error against a float64 oracle may be at most :data:`K` times
eager PyTorch's error at the same dtype against the same oracle, plus a tiny :data:`FLOOR`; fp32 results
must also be within :data:`FP32_REL`. Errors are relative norms ``||got - ref|| / ||ref||``.

Example:
    >>> import torch
    >>> from regnet_kernels.testing import check
    >>> ref64 = torch.randn(64, dtype=torch.float64)
    >>> eager = ref64.to(torch.bfloat16)
    >>> got = eager.clone()
    >>> err_got, err_eager = check("out", got, eager, ref64, torch.bfloat16)
    >>> err_got == err_eager
    True
"""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch

__all__ = ["K", "FLOOR", "FP32_REL", "rel_err", "check", "skip_gpu_tests"]

#: the kernel's error vs float64 may be at most K x eager's error at the same dtype, plus FLOOR.
K = {torch.float32: 2.0, torch.float16: 2.0, torch.bfloat16: 2.0}
#: tiny floor relative to the reference norm: a tenth of the dtype's epsilon
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 8e-4}
#: fp32 paths also get a plain bound
FP32_REL = 1e-4


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``||a - ref|| / ||ref||`` in float64 on the CPU (NaN or inf when ``a`` has them)."""
    a = a.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(name: str, got: torch.Tensor, eager: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype,
          k: Optional[float] = None, floor: Optional[float] = None) -> Tuple[float, float]:
    """Assert the rule for one tensor; returns ``(err_got, err_eager)``.

    Args:
        name: what the tensor is, for the assertion message.
        got: the kernel's result.
        eager: eager PyTorch's result at the same dtype (the yardstick).
        ref64: the float64 oracle.
        dtype: the compute dtype (selects :data:`K` and :data:`FLOOR`).
        k, floor: override the rule's factor and floor.

    Raises:
        AssertionError: on a shape mismatch, non-finite values, or an error above the bound.
    """
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(got.detach().float()).all(), f"{name}: non-finite values"
    e_got, e_eager = rel_err(got, ref64), rel_err(eager, ref64)
    k = K[dtype] if k is None else k
    floor = FLOOR[dtype] if floor is None else floor
    assert e_got <= k * e_eager + floor, (
        f"{name} [{dtype}]: error {e_got:.3e} > {k} x eager {e_eager:.3e} + {floor:.0e}")
    if dtype == torch.float32:
        assert e_got <= FP32_REL, f"{name} [fp32]: relative error {e_got:.3e} > {FP32_REL}"
    return e_got, e_eager


def skip_gpu_tests(items: Iterable, marker: str = "gpu") -> None:
    """Skip, with the reason, every collected pytest item carrying ``marker`` when no CUDA GPU is visible.

    Call it from a ``pytest_collection_modifyitems(config, items)`` hook in a ``conftest.py``.
    """
    if torch.cuda.is_available():
        return
    import pytest

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip_gpu)
