"""Small device helpers shared by the kernels."""
from __future__ import annotations

import triton
import triton.language as tl

from regnet_kernels.kernels.activation import Act
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


#: :class:`~regnet_kernels.kernels.activation.Act` codes, as constexprs the kernels can compare ``ACT`` with
ACT_NONE: tl.constexpr = tl.constexpr(int(Act.NONE))
ACT_RELU: tl.constexpr = tl.constexpr(int(Act.RELU))


@triton.jit
def apply_act(v, ACT: tl.constexpr):
    """The activation ``ACT`` (an ``Act`` code) on an fp32 tile; a new activation is one branch here.

    RELU is ``torch.relu``: 0 where ``v < 0``, else ``v``, so NaN (and -0.0) pass through as in eager.
    ``tl.maximum(v, 0.0)`` would turn NaN into 0 and hide a diverging run."""
    if ACT == ACT_RELU:
        v = tl.where(v < 0.0, 0.0, v)
    return v


@triton.jit
def act_grad(g, z, ACT: tl.constexpr):
    """The gradient ``g`` reaching ``apply_act(z, ACT)``, taken back through it; one branch per activation.

    RELU is eager's ``threshold_backward(g, z, 0)``: 0 where ``z <= 0``, else ``g`` (a NaN ``z`` lets ``g``
    through)."""
    if ACT == ACT_RELU:
        g = tl.where(z <= 0.0, 0.0, g)
    return g


@triton.jit
def bn_act_tile(v, c, c_ok, mean_ptr, scale_ptr, bias_ptr, AFFINE: tl.constexpr, ACT: tl.constexpr):
    """``act((v - mean[c]) * scale[c] + bias[c])`` on an fp32 (rows x channels) tile, each part optional:
    a previous BatchNorm + activation applied as its output is loaded, so it is never written."""
    if AFFINE:
        v = (v - bn_vec(mean_ptr, c, c_ok)) * bn_vec(scale_ptr, c, c_ok) + bn_vec(bias_ptr, c, c_ok)
    return apply_act(v, ACT)


@triton.jit
def bn_vec(ptr, c, c_ok):
    """A per-channel fp32 vector at channels ``c`` as a (1 x channels) row (0 where ``c`` is out of range)."""
    return tl.load(ptr + c, mask=c_ok, other=0.0)[None, :]


@triton.jit
def pixel_tile(pid_m, pid_c, M, C, HW, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Tile ``(pid_m, pid_c)`` of a (pixels m = n*HW + hw) x (channels) view: ``(c, c_ok, mask, n, hw)`` with
    ``n`` int64 (offsets of large tensors)."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    mask = (offs_m < M)[:, None] & c_ok[None, :]
    n = (offs_m // HW).to(tl.int64)
    hw = offs_m % HW
    return c, c_ok, mask, n, hw


@triton.jit
def load_tile(ptr, n, hw, c, sn, shw, sc, mask):
    """The fp32 values of a :func:`pixel_tile` of a tensor with strides ``(sn, shw, sc)`` (0 where masked)."""
    return tl.load(ptr + (n * sn + hw * shw)[:, None] + c[None, :] * sc, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_tile(ptr, n, hw, c, sn, shw, sc, v, mask):
    """Store the fp32 tile ``v`` at a :func:`pixel_tile` of a tensor with strides ``(sn, shw, sc)``, rounded to
    its dtype (:func:`cast_to`)."""
    tl.store(ptr + (n * sn + hw * shw)[:, None] + c[None, :] * sc, cast_to(v, ptr.dtype.element_ty), mask=mask)
