"""Fused squeeze-excitation written once against the kernel primitives
(:class:`regnet_kernels.kernels.api.Kernels`); same contract as reference.py, with the backend's kernel
set ``k`` first (:func:`regnet_kernels.ops.dispatch.implementation` binds it).

Forward: pool -> one FC kernel (fc1, ReLU, fc2, sigmoid) -> scale. Backward: one reduction for the gate
gradient, the FC backward (with the weight and bias gradients), one pass for the input gradient.
"""
from __future__ import annotations

from typing import Sequence

from regnet_kernels.kernels.api import Kernels

__all__ = ["squeeze_excite", "squeeze_excite_backward"]


def squeeze_excite(k: Kernels, x, w1, b1, w2, b2):
    """Returns ``(out, pooled, gate)``: ``out`` in ``x``'s dtype and memory format, ``pooled`` and ``gate``
    ``(N, C)`` fp32."""
    x = k.as_operand(x, x)
    pooled = k.se_pool(x)
    gate = k.se_fc(pooled, w1, b1, w2, b2)
    return k.se_scale(x, gate), pooled, gate


def squeeze_excite_backward(k: Kernels, grad_out, x, w1, b1, w2, b2, pooled, gate, output_mask: Sequence[bool]):
    """Gradients ``(dx, dw1, db1, dw2, db2)`` (weights in their own shapes and dtypes; None where not asked
    or absent)."""
    x = k.as_operand(x, x)
    go = k.as_operand(grad_out, x)
    dgate = k.se_dgate(go, x)
    need = (output_mask[1], b1 is not None and output_mask[2], output_mask[3], b2 is not None and output_mask[4])
    dpooled, dw1, db1, dw2, db2 = k.se_fc_backward(pooled, gate, dgate, w1, b1, w2, need)
    dx = k.se_dx(go, gate, dpooled, like=x) if output_mask[0] else None
    dw1 = dw1.reshape(w1.shape).to(w1.dtype) if output_mask[1] else None
    db1 = db1.to(b1.dtype) if db1 is not None else None
    dw2 = dw2.reshape(w2.shape).to(w2.dtype) if output_mask[3] else None
    db2 = db2.to(b2.dtype) if (db2 is not None and b2 is not None) else None
    return dx, dw1, db1, dw2, db2
