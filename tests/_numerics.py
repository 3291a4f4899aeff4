"""Numerics helpers: the flash-attention tolerance rule against a float64 oracle (docs/numerics.md)."""
from __future__ import annotations

import torch

#: the kernel's error vs float64 may be at most K x eager's error at the same dtype, plus FLOOR.
K = {torch.float32: 2.0, torch.float16: 2.0, torch.bfloat16: 2.0}
#: tiny floor relative to the reference norm: a tenth of the dtype's epsilon
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 8e-4}
#: fp32 paths also get a plain bound
FP32_REL = 1e-4


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a = a.detach().to(torch.float64).cpu()
    ref = ref.detach().to(torch.float64).cpu()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(name: str, got: torch.Tensor, eager: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype,
          k: float = None, floor: float = None) -> tuple:
    """Assert the rule for one tensor; returns ``(err_got, err_eager)``."""
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
