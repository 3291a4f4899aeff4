"""CUDA implementation of squeeze-excitation (same contract as reference.py).

Forward, 3 launches: pool -> one FC kernel (fc1, ReLU, fc2, sigmoid for a block of samples) -> scale.
Backward: the gate-gradient reduction, one FC-backward kernel (ds2, s1, ds1, dpooled), the input
gradient pass, and the four small weight/bias-gradient reductions (fixed order, no atomics). Every
output and scratch buffer is allocated with torch; launches go to torch's current stream.
"""
from __future__ import annotations

from typing import Sequence

import torch

from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.cuda import ext as _ext
from regnet_kernels.ops.conv_bn_act.reference import out_memory_format

_OP = "squeeze_excite"


def _flat(w: torch.Tensor, rows: int, cols: int, name: str) -> torch.Tensor:
    if w.numel() != rows * cols or w.shape[:2] != (rows, cols):
        raise ValueError(f"{_OP} (cuda backend): {name} must be ({rows}, {cols}[, 1, 1]), got {tuple(w.shape)}")
    return _ext.f32(w.reshape(rows, cols))


def _vec(b, n: int, name: str):
    if b is None:
        return None
    if tuple(b.shape) != (n,):
        raise ValueError(f"{_OP} (cuda backend): {name} must have shape ({n},), got {tuple(b.shape)}")
    return _ext.f32(b)


def _prepare(x, w1, b1, w2, b2, *others):
    if x.dim() != 4:
        raise ValueError(f"{_OP} (cuda backend): expected a 4-D input (N, C, H, W), got {tuple(x.shape)}")
    code = _ext.dtype_code(x, "input")
    dev = _ext.check_tensors(_OP, (x, w1, b1, w2, b2) + tuple(others))
    N, C, H, W = x.shape
    S = w1.shape[0]
    params = (_flat(w1, S, C, "fc1 weight"), _vec(b1, S, "fc1 bias"), _flat(w2, C, S, "fc2 weight"),
              _vec(b2, C, "fc2 bias"))
    fmt = out_memory_format(x)
    return code, dev, fmt, (N, C, H * W, S), params


def squeeze_excite(x, w1, b1, w2, b2):
    """Returns ``(out, pooled, gate)``: ``out`` in ``x``'s dtype and memory format, ``pooled`` and ``gate``
    ``(N, C)`` fp32."""
    code, dev, fmt, (N, C, HW, S), (w1f, b1f, w2f, b2f) = _prepare(x, w1, b1, w2, b2)
    xd = _ext.dense(x, fmt)
    cs, ps = _ext.pixel_layout(fmt, C, HW)
    pooled = torch.empty((N, C), dtype=torch.float32, device=dev)
    gate = torch.empty((N, C), dtype=torch.float32, device=dev)
    s1 = torch.empty((N, S), dtype=torch.float32, device=dev)
    out = torch.empty_like(xd)
    if x.numel() == 0:
        return out, pooled.zero_(), gate.zero_()
    lib = _ext.lib()
    with _ext.launch_context(dev) as stream:
        lib.se_reduce(code, xd.data_ptr(), 0, pooled.data_ptr(), N, C, HW, cs, ps, 1.0 / HW, stream)
        lib.se_fc_fwd(pooled.data_ptr(), w1f.data_ptr(), _ext.ptr(b1f), w2f.data_ptr(), _ext.ptr(b2f), s1.data_ptr(),
                      gate.data_ptr(), N, C, S, stream)
        lib.se_scale(code, xd.data_ptr(), gate.data_ptr(), out.data_ptr(), xd.numel(), C, cs, C * HW, stream)
    return out, pooled, gate


def squeeze_excite_backward(grad_out, x, w1, b1, w2, b2, pooled, gate, output_mask: Sequence[bool]):
    """Gradients ``(dx, dw1, db1, dw2, db2)`` (weights in their own shapes and dtypes; None where not asked
    or absent)."""
    code, dev, fmt, (N, C, HW, S), (w1f, b1f, w2f, _) = _prepare(x, w1, b1, w2, b2, grad_out, pooled, gate)
    if tuple(pooled.shape) != (N, C) or tuple(gate.shape) != (N, C):
        raise ValueError(f"{_OP} (cuda backend): pooled and gate must be ({N}, {C})")
    xd = _ext.dense(x, fmt)
    go = _ext.dense(grad_out.to(x.dtype), fmt)
    pooled32, gate32 = _ext.f32(pooled), _ext.f32(gate)
    cs, ps = _ext.pixel_layout(fmt, C, HW)

    def f32(*shape):
        return torch.empty(shape, dtype=torch.float32, device=dev)

    dgate, dpooled, ds2 = f32(N, C), f32(N, C), f32(N, C)
    s1, ds1 = f32(N, S), f32(N, S)
    dx = torch.empty_like(xd) if output_mask[0] else None
    dw1 = f32(S, C) if output_mask[1] else None
    db1 = f32(S) if (b1 is not None and output_mask[2]) else None
    dw2 = f32(C, S) if output_mask[3] else None
    db2 = f32(C) if (b2 is not None and output_mask[4]) else None
    lib = _ext.lib()
    with _ext.launch_context(dev) as stream:
        lib.se_reduce(code, go.data_ptr(), xd.data_ptr(), dgate.data_ptr(), N, C, HW, cs, ps, 1.0, stream)
        lib.se_fc_bwd(pooled32.data_ptr(), gate32.data_ptr(), dgate.data_ptr(), w1f.data_ptr(), _ext.ptr(b1f),
                      w2f.data_ptr(), s1.data_ptr(), ds2.data_ptr(), ds1.data_ptr(), dpooled.data_ptr(), N, C, S,
                      stream)
        if dx is not None:
            lib.se_dx(code, go.data_ptr(), gate32.data_ptr(), dpooled.data_ptr(), dx.data_ptr(), dx.numel(), C, cs,
                      C * HW, 1.0 / HW, stream)
        if dw1 is not None:  # dw1 = ds1^T @ pooled
            lib.se_outer(ds1.data_ptr(), pooled32.data_ptr(), dw1.data_ptr(), N, S, C, Act.NONE, stream)
        if db1 is not None:
            lib.se_outer(ds1.data_ptr(), 0, db1.data_ptr(), N, S, 1, Act.NONE, stream)
        if dw2 is not None:  # dw2 = ds2^T @ relu(s1)
            lib.se_outer(ds2.data_ptr(), s1.data_ptr(), dw2.data_ptr(), N, C, S, Act.RELU, stream)
        if db2 is not None:
            lib.se_outer(ds2.data_ptr(), 0, db2.data_ptr(), N, C, 1, Act.NONE, stream)
    dw1 = dw1.reshape(w1.shape).to(w1.dtype) if dw1 is not None else None
    db1 = db1.to(b1.dtype) if db1 is not None else None
    dw2 = dw2.reshape(w2.shape).to(w2.dtype) if dw2 is not None else None
    db2 = db2.to(b2.dtype) if db2 is not None else None
    return dx, dw1, db1, dw2, db2
