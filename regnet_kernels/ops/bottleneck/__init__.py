"""Whole RegNet bottleneck block as torch.library custom ops.

- ``regnet_kernels::bottleneck_train``: training forward (batch statistics). Returns ``out`` plus what its
  backward keeps (``ya, yb, yc, pooled, gate, stats``; the projection's conv output is recomputed in
  backward from ``x``, a cheap strided 1x1 conv, rather than kept); backward is
  ``regnet_kernels::bottleneck_train_backward``. Running statistics are updated by the caller through
  ``bn_update_running_stats`` (an op with an autograd formula must not mutate its inputs).
- ``regnet_kernels::bottleneck_eval``: inference forward from running statistics (no autograd: the
  module falls back to per-op fusion when gradients are needed in eval mode).

Parameter order everywhere: ``wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp`` (conv a and
its BN gamma/beta, conv b, SE fc1 weight/bias, fc2 weight/bias, conv c, projection conv and BN). SE
and projection tensors are None when the block has none.
"""
# NOTE: no ``from __future__ import annotations``: torch.library reads the annotations as types.
from typing import List, Optional, Tuple

import torch

from regnet_kernels.ops import _dispatch
from regnet_kernels.ops.conv_bn_act.reference import out_memory_format

__all__ = ["OP_NAME", "PARAM_NAMES", "bottleneck_train", "bottleneck_eval"]

OP_NAME = "bottleneck"
PARAM_NAMES = ("wa", "ga", "ba", "wb", "gb", "bb", "w1", "b1", "w2", "b2", "wc", "gc", "bc", "wp", "gp", "bp")
_dispatch.register_kernel_checks(
    OP_NAME, "the cuda backend has no whole-block kernel (per-op fusion is used instead)")


def _impl(backend: str, tensors):
    return _dispatch.implementation(OP_NAME, "regnet_kernels.ops.bottleneck", backend, tensors)


def _shapes(x, wa, wb, wc, stride):
    N, _, H, W = x.shape
    Ho = (H + 2 * (wb.shape[-1] // 2) - wb.shape[-1]) // stride + 1
    Wo = (W + 2 * (wb.shape[-1] // 2) - wb.shape[-1]) // stride + 1
    return (N, wa.shape[0], H, W), (N, wb.shape[0], Ho, Wo), (N, wc.shape[0], Ho, Wo)


@torch.library.custom_op("regnet_kernels::bottleneck_train", mutates_args=())
def _train_op(
    x: torch.Tensor,
    wa: torch.Tensor, ga: Optional[torch.Tensor], ba: Optional[torch.Tensor],
    wb: torch.Tensor, gb: Optional[torch.Tensor], bb: Optional[torch.Tensor],
    w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: Optional[torch.Tensor], b2: Optional[torch.Tensor],
    wc: torch.Tensor, gc: Optional[torch.Tensor], bc: Optional[torch.Tensor],
    wp: Optional[torch.Tensor], gp: Optional[torch.Tensor], bp: Optional[torch.Tensor],
    stride: int,
    groups: int,
    eps: List[float],
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    params = (wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp)
    impl = _impl(backend, (x,) + tuple(p for p in params if p is not None))
    return impl.block_train(x, *params, stride, groups, eps)


@_train_op.register_fake
def _(x, wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp, stride, groups, eps, backend):
    fmt = out_memory_format(x)
    sa, sb, sc = _shapes(x, wa, wb, wc, stride)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32

    def act(shape):
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)

    cb, cout = wa.shape[0], wc.shape[0]
    n_stats = 6 * cb + (6 if wp is not None else 3) * cout
    N = x.shape[0]
    se_shape = (N, cb) if w1 is not None else (0,)
    return (act(sc), act(sa), act(sb), act(sc), x.new_empty(se_shape, dtype=acc), x.new_empty(se_shape, dtype=acc),
            x.new_empty((n_stats,), dtype=acc))


@torch.library.custom_op("regnet_kernels::bottleneck_train_backward", mutates_args=())
def _train_bwd_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    wa: torch.Tensor, ga: Optional[torch.Tensor], ba: Optional[torch.Tensor],
    wb: torch.Tensor, gb: Optional[torch.Tensor], bb: Optional[torch.Tensor],
    w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: Optional[torch.Tensor], b2: Optional[torch.Tensor],
    wc: torch.Tensor, gc: Optional[torch.Tensor], bc: Optional[torch.Tensor],
    wp: Optional[torch.Tensor], gp: Optional[torch.Tensor], bp: Optional[torch.Tensor],
    ya: torch.Tensor, yb: torch.Tensor, yc: torch.Tensor,
    pooled: torch.Tensor, gate: torch.Tensor, stats: torch.Tensor,
    stride: int,
    groups: int,
    eps: List[float],
    output_mask: List[bool],
    backend: str,
) -> List[torch.Tensor]:
    params = (wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp)
    impl = _impl(backend, (grad_out, x) + tuple(p for p in params if p is not None))
    grads = impl.block_train_backward(grad_out, x, params, (ya, yb, yc, pooled, gate, stats), stride, groups,
                                      eps, output_mask)
    # custom ops cannot return None: absent gradients come back as distinct empty tensors
    return [g.contiguous(memory_format=out_memory_format(x)) if (i == 0 and g is not None)
            else (g if g is not None else x.new_empty((0,))) for i, g in enumerate(grads)]


@_train_bwd_op.register_fake
def _(grad_out, x, wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp, ya, yb, yc, pooled, gate,
      stats, stride, groups, eps, output_mask, backend):
    tensors = (x, wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp)
    out = []
    for i, (t, want) in enumerate(zip(tensors, output_mask)):
        if t is None or not want:
            out.append(x.new_empty((0,)))
        elif i == 0:
            out.append(torch.empty_like(x, memory_format=out_memory_format(x)))
        else:
            out.append(torch.empty_like(t, memory_format=torch.contiguous_format))
    return out


def _setup_context(ctx, inputs, output):
    (x, wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp, stride, groups, eps, backend) = inputs
    out, ya, yb, yc, pooled, gate, stats = output
    ctx.save_for_backward(x, wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp,
                          ya, yb, yc, pooled, gate, stats)
    ctx.conf = (stride, groups, list(eps), backend)
    ctx.mark_non_differentiable(ya, yb, yc, pooled, gate, stats)


def _backward(ctx, grad_out, *_unused):
    saved = ctx.saved_tensors
    tensors, rest = saved[:17], saved[17:]
    stride, groups, eps, backend = ctx.conf
    mask = [bool(ctx.needs_input_grad[i]) and tensors[i] is not None for i in range(17)]
    if grad_out is None or not any(mask):
        return (None,) * 21
    grads = _train_bwd_op(grad_out, *tensors, *rest, stride, groups, eps, mask, backend)
    return tuple(g if (m and g.numel() > 0) else None for g, m in zip(grads, mask)) + (None,) * 4


_train_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("regnet_kernels::bottleneck_eval", mutates_args=())
def _eval_op(
    x: torch.Tensor,
    wa: torch.Tensor, ga: Optional[torch.Tensor], ba: Optional[torch.Tensor], rma: torch.Tensor, rva: torch.Tensor,
    wb: torch.Tensor, gb: Optional[torch.Tensor], bb: Optional[torch.Tensor], rmb: torch.Tensor, rvb: torch.Tensor,
    w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: Optional[torch.Tensor], b2: Optional[torch.Tensor],
    wc: torch.Tensor, gc: Optional[torch.Tensor], bc: Optional[torch.Tensor], rmc: torch.Tensor, rvc: torch.Tensor,
    wp: Optional[torch.Tensor], gp: Optional[torch.Tensor], bp: Optional[torch.Tensor],
    rmp: Optional[torch.Tensor], rvp: Optional[torch.Tensor],
    stride: int,
    groups: int,
    eps: List[float],
    backend: str,
) -> torch.Tensor:
    args = (x, wa, ga, ba, rma, rva, wb, gb, bb, rmb, rvb, w1, b1, w2, b2, wc, gc, bc, rmc, rvc, wp, gp, bp, rmp, rvp)
    impl = _impl(backend, tuple(t for t in args if t is not None))
    return impl.block_eval(*args, stride, groups, eps)


@_eval_op.register_fake
def _(x, wa, ga, ba, rma, rva, wb, gb, bb, rmb, rvb, w1, b1, w2, b2, wc, gc, bc, rmc, rvc, wp, gp, bp, rmp, rvp,
      stride, groups, eps, backend):
    _, _, sc = _shapes(x, wa, wb, wc, stride)
    return torch.empty(sc, dtype=x.dtype, device=x.device, memory_format=out_memory_format(x))


def bottleneck_train(x, params, stride: int, groups: int, eps, backend: str):
    """Training forward of a fused bottleneck; ``params`` in :data:`PARAM_NAMES` order.

    Returns ``(out, stats)`` where ``stats`` packs ``(mean, invstd, var_unbiased)`` per BatchNorm (a, b, c,
    then projection) for the running-statistics update.
    """
    out, *_, stats = _train_op(x, *params, int(stride), int(groups), [float(e) for e in eps], backend)
    return out, stats


def bottleneck_eval(x, params_with_running, stride: int, groups: int, eps, backend: str) -> torch.Tensor:
    """Inference forward of a fused bottleneck (running statistics)."""
    return _eval_op(x, *params_with_running, int(stride), int(groups), [float(e) for e in eps], backend)
