"""Small device helpers shared by the kernels."""
from __future__ import annotations

import triton
import triton.language as tl

from regnet_kernels.kernels.triton.runtime import INTERPRET

_INTERPRET: tl.constexpr = tl.constexpr(INTERPRET)


@triton.jit
def cast_to(x, dtype: tl.constexpr):
    """``x.to(dtype)`` with round-to-nearest-even everywhere.

    The Triton interpreter converts fp32 to bf16 by truncation (GPUs round to nearest even), which
    doubles bf16 rounding error in CPU tests. Under the interpreter only, round the fp32 bit pattern
    first so that truncation is exact; compiled kernels take the plain conversion.
    """
    if _INTERPRET:
        if dtype == tl.bfloat16:
            bits = x.to(tl.float32).to(tl.int32, bitcast=True)
            bits = bits + (((bits >> 16) & 1) + 0x7FFF)
            x = (bits & -65536).to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def relu(x):
    """``torch.relu``: 0 where ``x < 0``, else ``x``, so NaN (and -0.0) pass through as in eager.
    ``tl.maximum(x, 0.0)`` would turn NaN into 0 and hide a diverging run."""
    return tl.where(x < 0.0, 0.0, x)


@triton.jit
def relu_grad(g, z):
    """ReLU backward as eager's ``threshold_backward(g, z, 0)``: 0 where ``z <= 0``, else ``g`` (NaN ``z``
    lets ``g`` through)."""
    return tl.where(z <= 0.0, 0.0, g)


@triton.jit
def bn_relu_tile(v, c, c_ok, mean_ptr, scale_ptr, bias_ptr, AFFINE: tl.constexpr, RELU: tl.constexpr):
    """``relu((v - mean[c]) * scale[c] + bias[c])`` on an fp32 (rows x channels) tile, each part optional:
    a previous BatchNorm + ReLU applied as its output is loaded, so it is never written."""
    if AFFINE:
        m = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
        s = tl.load(scale_ptr + c, mask=c_ok, other=0.0)
        b = tl.load(bias_ptr + c, mask=c_ok, other=0.0)
        v = (v - m[None, :]) * s[None, :] + b[None, :]
    if RELU:
        v = relu(v)
    return v
