"""Fused RegNet bottleneck, written against the kernel primitives (:class:`regnet_kernels.kernels.api.Kernels`)
plus the whole-block ones only the Triton kernel set has (``input_shift``, ``shift_offset``, the residual
``tail_forward`` / ``tail_backward``, and the conv / BN / SE prologue options ``pre_affine``, ``pre_act``,
``gate``, ``residual``, ``add``, ``dpooled``). Every function takes the kernel set ``k`` first
(:func:`regnet_kernels.ops.dispatch.implementation` binds it).

Training forward (each full-size activation written once, by the conv that produces it):
conv a (+BN_a partials) -> finalize -> conv b reading ``relu(BN_a(ya))`` in its prologue (+BN_b partials)
-> finalize -> SE pool over ``relu(BN_b(yb))`` -> SE FCs -> conv c reading ``relu(BN_b(yb)) * gate`` in
its prologue (+BN_c partials) -> finalize -> [projection conv + finalize] -> residual tail
``relu(BN_c(yc) + shortcut)``. Saved for backward: ``x, ya, yb, yc``, the SE pooled vector and gate,
per-channel statistics (the projection's output is recomputed from ``x`` in backward).

Large-mean fp32 inputs: conv a and the projection read ``x - c`` (their prologue), in forward and in
their weight gradients, with ``c = x[0, :, 0, 0]`` on the channels whose mean dominates their spread
(see :func:`regnet_kernels.kernels.triton.conv.input_shift`). Training BatchNorm cancels ``c`` exactly,
and the fp32 conv outputs stay near 0 instead of at ~|mean|, where their rounding flips ReLU masks
(mean 1e4: ulp ~1e-3). ``ya`` and the projection output, and the means saved with them, are those of
the shifted convs; ``stats`` carries the offsets ``conv(c)`` that give the true batch means for the
running statistics.

Eval forward: 4-5 kernels, BatchNorm + ReLU in each conv's epilogue, the SE scale in conv c's prologue
and the residual add + ReLU in its epilogue.
"""
from __future__ import annotations

import torch

from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.api import EvalBN, Kernels, bn_bias, bn_scale
from regnet_kernels.ops.bottleneck.reference import pack_stats, unpack_stats

__all__ = ["block_train", "block_train_backward", "block_eval"]


def _conv_bn(k: Kernels, x, w, gamma, beta, stride, pad, groups, eps, **kw):
    y, partials = k.conv_forward(x, w, stride, pad, groups, stats=True, **kw)
    count = y.numel() // y.shape[1]
    mean, invstd, var_unb, scale, bias = k.bn_finalize(partials, count, gamma, beta, eps)
    return y, (mean, invstd, var_unb), (mean, scale, bias, invstd)


def block_train(k: Kernels, x, wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp, stride: int,
                groups: int, eps):
    pad_b = wb.shape[-1] // 2
    shift = k.input_shift(x)
    ya, st_a, bn_a = _conv_bn(k, x, wa, ga, ba, 1, 0, 1, eps[0], pre_affine=shift)
    yb, st_b, bn_b = _conv_bn(k, ya, wb, gb, bb, stride, pad_b, groups, eps[1], pre_affine=bn_a[:3], pre_act=Act.RELU)
    # distinct empties: op outputs may not alias each other
    pooled, gate = x.new_empty((0,), dtype=torch.float32), x.new_empty((0,), dtype=torch.float32)
    if w1 is not None:
        pooled = k.se_pool(yb, pre_affine=bn_b[:3], pre_act=Act.RELU)
        gate = k.se_fc(pooled, w1, b1, w2, b2)
    yc, st_c, bn_c = _conv_bn(k, yb, wc, gc, bc, 1, 0, 1, eps[2], pre_affine=bn_b[:3], pre_act=Act.RELU,
                              gate=gate if w1 is not None else None)
    triples, offsets = [st_a, st_b, st_c], [k.shift_offset(wa, shift)]
    yp = bn_p = None
    if wp is not None:
        yp, st_p, bn_p = _conv_bn(k, x, wp, gp, bp, stride, 0, 1, eps[3], pre_affine=shift)
        triples.append(st_p)
        offsets.append(k.shift_offset(wp, shift))
    out = k.tail_forward(yc, yp if wp is not None else x, bn_c, bn_p)
    return out, ya, yb, yc, pooled, gate, pack_stats(triples, offsets)


def _wgrad(k: Kernels, x, dy, weight_shape, stride, padding, groups, **prologue):
    """The fp32 weight gradient (the conv's input prologue recomputed from ``prologue``)."""
    return k.conv_wgrad(x, dy, weight_shape, stride, padding, groups, want_f32=True, **prologue)[0]


def _affine(stats, gamma, beta):
    mean, invstd, _ = stats
    return mean, bn_scale(gamma, invstd), bn_bias(beta, mean), invstd


def block_train_backward(k: Kernels, grad_out, x, params, saved, stride: int, groups: int, output_mask):
    """Gradients for ``(x, wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp)``."""
    wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp = params
    ya, yb, yc, pooled, gate, stats = saved
    has_se, has_proj = w1 is not None, wp is not None
    st = unpack_stats(stats, wa.shape[0], wc.shape[0], has_proj)
    bn_a, bn_b, bn_c = _affine(st["a"], ga, ba), _affine(st["b"], gb, bb), _affine(st["c"], gc, bc)
    bn_p = _affine(st["p"], gp, bp) if has_proj else None
    pad_b = wb.shape[-1] // 2
    g = {}
    shift = k.input_shift(x)  # the forward's (conv a and the projection read x - c)
    # the projection's conv output is recomputed (deterministic: the same kernel on the same inputs)
    yp = k.conv_forward(x, wp, stride, 0, 1, pre_affine=shift)[0] if has_proj else None

    # residual tail: dReLU + both BatchNorm reductions in one pass, both conv-output gradients in a second
    dyc, dsc, sums = k.tail_backward(grad_out, yc, yp if has_proj else x, bn_c, bn_p)
    # (clones: op outputs may not share storage)
    g["gc"], g["bc"] = sums[1].clone(), sums[0].clone()
    if has_proj:
        g["gp"], g["bp"] = sums[2].clone(), sums[0].clone()

    # conv c: its input is relu(BN_b(yb)) * gate, recomputed in the weight-gradient prologue
    dh = k.conv_dgrad(dyc, wc, yb.shape, 1, 0, 1, like=yb)
    g["wc"] = _wgrad(k, yb, dyc, wc.shape, 1, 0, 1, pre_affine=bn_b[:3], pre_act=Act.RELU,
                     gate=gate if has_se else None)
    dpooled = None
    if has_se:
        dgate = k.se_dgate(dh, yb, pre_affine=bn_b[:3], pre_act=Act.RELU)
        dpooled, g["w1"], g["b1"], g["w2"], g["b2"] = k.se_fc_backward(
            pooled, gate, dgate, w1, b1, w2, (True, b1 is not None, True, b2 is not None))

    # BN_b + ReLU backward, with the SE scale and pool gradients folded into the incoming gradient
    se_kw = {"gate": gate, "dpooled": dpooled} if has_se else {}
    mb, kb, cb, ib = bn_b
    s_dz, s_dzx, _ = k.bn_bwd_reduce(dh, yb, train=True, act=Act.RELU, stats=(mb, ib, kb, cb), **se_kw)
    g["gb"], g["bb"] = s_dzx, s_dz
    dyb = k.bn_bwd_dy(dh, yb, mb, ib, kb, cb, s_dz, s_dzx, True, yb.numel() // yb.shape[1], **se_kw)

    # conv b (grouped, strided): input relu(BN_a(ya)) recomputed in the prologue
    d_act_a = k.conv_dgrad(dyb, wb, ya.shape, stride, pad_b, groups, like=ya)
    g["wb"] = _wgrad(k, ya, dyb, wb.shape, stride, pad_b, groups, pre_affine=bn_a[:3], pre_act=Act.RELU)

    ma, ka, ca, ia = bn_a
    s_dz, s_dzx, _ = k.bn_bwd_reduce(d_act_a, ya, train=True, act=Act.RELU, stats=(ma, ia, ka, ca))
    g["ga"], g["ba"] = s_dzx, s_dz
    dya = k.bn_bwd_dy(d_act_a, ya, ma, ia, ka, ca, s_dz, s_dzx, True, ya.numel() // ya.shape[1])

    # shortcut, then conv a's input gradient with the shortcut's added in its epilogue
    if has_proj:
        d_short = k.conv_dgrad(dsc, wp, x.shape, stride, 0, 1, like=x)
        g["wp"] = _wgrad(k, x, dsc, wp.shape, stride, 0, 1, pre_affine=shift)
    else:
        d_short = dsc
    g["x"] = k.conv_dgrad(dya, wa, x.shape, 1, 0, 1, like=x, add=d_short) if output_mask[0] else None
    g["wa"] = _wgrad(k, x, dya, wa.shape, 1, 0, 1, pre_affine=shift)

    names = ["x", "wa", "ga", "ba", "wb", "gb", "bb", "w1", "b1", "w2", "b2", "wc", "gc", "bc", "wp", "gp", "bp"]
    tensors = [x] + list(params)
    out = []
    for name, t, want in zip(names, tensors, output_mask):
        v = g.get(name)
        if t is None or v is None or not want:
            out.append(None)
        else:
            out.append(v.reshape(t.shape).to(t.dtype))
    return out


def block_eval(k: Kernels, x, wa, ga, ba, rma, rva, wb, gb, bb, rmb, rvb, w1, b1, w2, b2, wc, gc, bc, rmc, rvc,
               wp, gp, bp, rmp, rvp, stride: int, groups: int, eps):
    pad_b = wb.shape[-1] // 2
    act_a = k.conv_forward(x, wa, 1, 0, 1, eval_bn=EvalBN(rma, rva, ga, ba, eps[0]), act=Act.RELU)[0]
    act_b = k.conv_forward(act_a, wb, stride, pad_b, groups, eval_bn=EvalBN(rmb, rvb, gb, bb, eps[1]), act=Act.RELU)[0]
    gate = None
    if w1 is not None:
        gate = k.se_fc(k.se_pool(act_b), w1, b1, w2, b2)
    if wp is not None:
        short = k.conv_forward(x, wp, stride, 0, 1, eval_bn=EvalBN(rmp, rvp, gp, bp, eps[3]))[0]
    else:
        short = x
    return k.conv_forward(act_b, wc, 1, 0, 1, gate=gate, eval_bn=EvalBN(rmc, rvc, gc, bc, eps[2]), residual=short,
                          act=Act.RELU)[0]
