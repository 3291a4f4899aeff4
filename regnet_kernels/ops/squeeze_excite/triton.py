"""Triton squeeze-excitation: pool -> one FC kernel (fc1, ReLU, fc2, sigmoid) -> scale. Backward: one
reduction for the gate gradient, one FC-backward kernel, one pass for the input gradient."""
from __future__ import annotations

from typing import Sequence

from regnet_kernels.kernels.triton import se as _se


def squeeze_excite(x, w1, b1, w2, b2):
    pooled = _se.se_pool(x)
    gate = _se.se_fc(pooled, w1, b1, w2, b2)
    out = _se.se_scale(x, gate)
    return out, pooled, gate


def squeeze_excite_backward(grad_out, x, w1, b1, w2, b2, pooled, gate, output_mask: Sequence[bool]):
    dgate = _se.se_dgate(grad_out, x)
    need_b1 = b1 is not None and output_mask[2]
    need_b2 = b2 is not None and output_mask[4]
    dpooled, dw1, db1, dw2, db2 = _se.se_fc_backward(pooled, gate, dgate, w1, b1, w2, need_b1, need_b2)
    dx = _se.se_dx(grad_out, gate, dpooled, like=x) if output_mask[0] else None
    dw1 = dw1.reshape(w1.shape).to(w1.dtype) if output_mask[1] else None
    db1 = db1.to(b1.dtype) if db1 is not None else None
    dw2 = dw2.reshape(w2.shape).to(w2.dtype) if output_mask[3] else None
    db2 = db2.to(b2.dtype) if (db2 is not None and b2 is not None) else None
    return dx, dw1, db1, dw2, db2
