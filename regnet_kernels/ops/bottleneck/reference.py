"""Eager reference for the fused RegNet bottleneck (torchvision ``ResBottleneckBlock`` / timm ``Bottleneck``):

    a = relu(BN_a(conv1x1(x)))            b = relu(BN_b(conv3x3_grouped(a, stride)))
    h = b * SE(b)  (or b)                 c = BN_c(conv1x1(h))
    out = relu(c + (BN_p(conv1x1(x, stride)) if projection else x))

composed from the per-op references, so the block and the per-op path agree by construction.
Training-mode forward returns, besides ``out``, exactly what the fused backward keeps: the pre-BN conv
outputs ``ya, yb, yc``, the SE ``pooled`` vector and ``gate``, and the packed per-channel statistics. The
projection's pre-BN output is recomputed in backward from ``x`` (a strided 1x1 conv) instead of kept.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from regnet_kernels.kernels.activation import Act
from regnet_kernels.ops.conv_bn_act import reference as cba
from regnet_kernels.ops.squeeze_excite import reference as se


def pack_stats(triples, offsets) -> torch.Tensor:
    """One fp32 vector: the ``(mean, invstd, var_unbiased)`` triple of every BatchNorm (a, b, c, then the
    projection), then the mean offsets of BN a and the projection (see :func:`batch_stats`)."""
    return torch.cat([t for tr in triples for t in tr] + list(offsets))


def _split(stats: torch.Tensor, cb: int, cout: int, has_proj: bool):
    sizes = [cb] * 6 + [cout] * (6 if has_proj else 3) + [cb] + ([cout] if has_proj else [])
    return torch.split(stats, sizes)


def unpack_stats(stats: torch.Tensor, cb: int, cout: int, has_proj: bool) -> dict:
    """Per BatchNorm ("a", "b", "c", "p") the triple the backward uses: the mean is that of the conv output
    as saved (``ya`` and the projection's output may be shifted, see :func:`batch_stats`)."""
    parts = _split(stats, cb, cout, has_proj)
    keys = ["a", "b", "c"] + (["p"] if has_proj else [])
    return {k: parts[3 * i: 3 * i + 3] for i, k in enumerate(keys)}


def batch_stats(stats: torch.Tensor, cb: int, cout: int, has_proj: bool) -> dict:
    """Per BatchNorm ``(batch mean, unbiased batch variance)`` for the running-statistics update. A backend
    may run the convs that read the block input on ``x - c`` (a per-channel constant that training
    BatchNorm cancels); the true batch mean is then the saved one plus the offset ``conv(c)`` stored
    after the triples (zero where nothing was shifted)."""
    parts = _split(stats, cb, cout, has_proj)
    n = 12 if has_proj else 9
    offsets = {"a": parts[n], "p": parts[n + 1] if has_proj else None}
    return {k: (mean + offsets[k] if offsets.get(k) is not None else mean, var_unb)
            for k, (mean, _, var_unb) in unpack_stats(stats, cb, cout, has_proj).items()}


def block_train(x, wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp,
                stride: int, groups: int, eps):
    """Training forward; returns ``(out, ya, yb, yc, pooled, gate, stats)`` (absent pieces empty)."""
    pad_b = wb.shape[-1] // 2
    act_a, ya, *st_a = cba.conv_bn_act_train(x, wa, ga, ba, 1, 0, 1, eps[0], Act.RELU)
    act_b, yb, *st_b = cba.conv_bn_act_train(act_a, wb, gb, bb, stride, pad_b, groups, eps[1], Act.RELU)
    # distinct empties: op outputs may not alias each other
    pooled, gate = x.new_empty((0,), dtype=st_a[0].dtype), x.new_empty((0,), dtype=st_a[0].dtype)
    h = act_b
    if w1 is not None:
        h, pooled, gate = se.squeeze_excite(act_b, w1, b1, w2, b2)
    out_c, yc, *st_c = cba.conv_bn_act_train(h, wc, gc, bc, 1, 0, 1, eps[2], Act.NONE)
    triples, offsets = [st_a, st_b, st_c], [torch.zeros_like(st_a[0])]  # nothing shifted here
    if wp is not None:
        short, _, *st_p = cba.conv_bn_act_train(x, wp, gp, bp, stride, 0, 1, eps[3], Act.NONE)
        triples.append(st_p)
        offsets.append(torch.zeros_like(st_p[0]))
    else:
        short = x
    out = torch.relu(out_c + short)
    return out, ya, yb, yc, pooled, gate, pack_stats(triples, offsets)


def _act(y: torch.Tensor, stats, gamma, beta, act: int) -> torch.Tensor:
    """``act(BN(y))`` in ``y``'s dtype from saved batch statistics (as the forward produced it)."""
    mean, invstd, _ = stats
    z = cba.bn_apply(y.to(mean.dtype), mean, cba.affine_scale(gamma, invstd), beta)
    return cba.apply_act(z, act).to(y.dtype)


def block_train_backward(grad_out, x, params, saved, stride: int, groups: int, output_mask):
    """Gradients for ``(x, *params)`` from the per-op reference backwards, chained through the block."""
    wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp = params
    ya, yb, yc, pooled, gate, stats = saved
    has_se, has_proj = w1 is not None, wp is not None
    yp = None
    if has_proj:  # recomputed, not kept (see the module docstring)
        yp = F.conv2d(x, wp, None, stride).contiguous(memory_format=cba.out_memory_format(x))
    st = unpack_stats(stats, wa.shape[0], wc.shape[0], has_proj)
    pad_b = wb.shape[-1] // 2
    all4 = [True] * 4
    act_a = _act(ya, st["a"], ga, ba, Act.RELU)
    act_b = _act(yb, st["b"], gb, bb, Act.RELU)
    h = se.squeeze_excite(act_b, w1, b1, w2, b2)[0] if has_se else act_b
    out_c = _act(yc, st["c"], gc, bc, Act.NONE)
    short = _act(yp, st["p"], gp, bp, Act.NONE) if has_proj else x
    g = cba.relu_grad(grad_out, out_c + short)

    dh, dwc, dgc, dbc = cba.conv_bn_act_train_backward(g, h, wc, yc, st["c"][0], st["c"][1], gc, bc, 1, 0, 1,
                                                       Act.NONE, all4)
    if has_proj:
        d_short, dwp, dgp, dbp = cba.conv_bn_act_train_backward(g, x, wp, yp, st["p"][0], st["p"][1], gp, bp,
                                                                stride, 0, 1, Act.NONE, all4)
    else:
        d_short, dwp, dgp, dbp = g, None, None, None
    dw1 = db1 = dw2 = db2 = None
    d_act_b = dh
    if has_se:
        d_act_b, dw1, db1, dw2, db2 = se.squeeze_excite_backward(dh, act_b, w1, b1, w2, b2, pooled, gate,
                                                                 [True] * 5)
    d_act_a, dwb, dgb, dbb = cba.conv_bn_act_train_backward(d_act_b, act_a, wb, yb, st["b"][0], st["b"][1], gb,
                                                            bb, stride, pad_b, groups, Act.RELU, all4)
    dxa, dwa, dga, dba = cba.conv_bn_act_train_backward(d_act_a, x, wa, ya, st["a"][0], st["a"][1], ga, ba, 1, 0,
                                                        1, Act.RELU, all4)
    dx = (dxa.to(torch.promote_types(dxa.dtype, torch.float32)) + d_short).to(x.dtype)
    grads = [dx, dwa, dga, dba, dwb, dgb, dbb, dw1, db1, dw2, db2, dwc, dgc, dbc, dwp, dgp, dbp]
    return [gr if (want and gr is not None) else None for gr, want in zip(grads, output_mask)]


def block_eval(x, wa, ga, ba, rma, rva, wb, gb, bb, rmb, rvb, w1, b1, w2, b2, wc, gc, bc, rmc, rvc,
               wp: Optional[torch.Tensor], gp, bp, rmp, rvp, stride: int, groups: int, eps):
    """Eval forward (running statistics)."""
    pad_b = wb.shape[-1] // 2
    act_a = cba.conv_bn_act_eval(x, wa, ga, ba, rma, rva, 1, 0, 1, eps[0], Act.RELU)
    h = cba.conv_bn_act_eval(act_a, wb, gb, bb, rmb, rvb, stride, pad_b, groups, eps[1], Act.RELU)
    if w1 is not None:
        h = se.squeeze_excite(h, w1, b1, w2, b2)[0]
    out_c = cba.conv_bn_act_eval(h, wc, gc, bc, rmc, rvc, 1, 0, 1, eps[2], Act.NONE)
    short = x if wp is None else cba.conv_bn_act_eval(x, wp, gp, bp, rmp, rvp, stride, 0, 1, eps[3], Act.NONE)
    return torch.relu(out_c + short)
