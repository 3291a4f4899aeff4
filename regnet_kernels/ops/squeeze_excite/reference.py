"""Eager PyTorch reference for squeeze-excitation (torchvision's ``SqueezeExcitation``, timm's ``SEModule``).

``out = x * sigmoid(fc2(relu(fc1(avgpool(x)))))`` with ``fc1: (S, C)``, ``fc2: (C, S)`` 1x1 convs with
bias. The pooled vector and the gate are fp32 (fp64 for fp64 inputs) and are what backward keeps.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from regnet_kernels.ops.conv_bn_act.reference import acc_dtype, out_memory_format, relu_grad


def _flat(w: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).to(acc)


def _fc1(pooled, w1, b1):
    s1 = pooled @ _flat(w1, pooled.dtype).t()
    return s1 if b1 is None else s1 + b1.to(pooled.dtype)


def squeeze_excite(x: torch.Tensor, w1, b1: Optional[torch.Tensor], w2, b2: Optional[torch.Tensor]):
    """Returns ``(out, pooled, gate)``: ``out`` in ``x``'s dtype and memory format, ``pooled`` and ``gate``
    ``(N, C)`` in fp32."""
    acc = acc_dtype(x.dtype)
    xf = x.to(acc)
    pooled = xf.mean(dim=(2, 3))
    h = torch.relu(_fc1(pooled, w1, b1))
    s2 = h @ _flat(w2, acc).t()
    if b2 is not None:
        s2 = s2 + b2.to(acc)
    gate = torch.sigmoid(s2)
    out = (xf * gate[:, :, None, None]).to(x.dtype).contiguous(memory_format=out_memory_format(x))
    return out, pooled, gate


def squeeze_excite_backward(grad_out, x, w1, b1, w2, b2, pooled, gate, output_mask: Sequence[bool]):
    """Gradients ``(dx, dw1, db1, dw2, db2)`` (weights in their own shapes and dtypes; None where not
    asked or absent)."""
    acc = pooled.dtype
    g = grad_out.to(acc)
    dgate = (g * x.to(acc)).sum(dim=(2, 3))
    ds2 = dgate * gate * (1 - gate)
    s1 = _fc1(pooled, w1, b1)
    h = torch.relu(s1)
    dh = ds2 @ _flat(w2, acc)
    ds1 = relu_grad(dh, s1)
    dpooled = ds1 @ _flat(w1, acc)
    hw = x.shape[2] * x.shape[3]
    dx = (g * gate[:, :, None, None] + (dpooled / hw)[:, :, None, None]).to(x.dtype)
    dx = dx.contiguous(memory_format=out_memory_format(x)) if output_mask[0] else None
    dw1 = (ds1.t() @ pooled).reshape(w1.shape).to(w1.dtype) if output_mask[1] else None
    db1 = ds1.sum(0).to(b1.dtype) if (b1 is not None and output_mask[2]) else None
    dw2 = (ds2.t() @ h).reshape(w2.shape).to(w2.dtype) if output_mask[3] else None
    db2 = ds2.sum(0).to(b2.dtype) if (output_mask[4] and b2 is not None) else None
    return dx, dw1, db1, dw2, db2
