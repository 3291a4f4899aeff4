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
# (the op schemas are written out from PARAM_NAMES, not inferred from annotations: see _schema)
import torch

from regnet_kernels.kernels.geometry import conv_out_size
from regnet_kernels.ops import dispatch as _dispatch
from regnet_kernels.ops.conv_bn_act import check_conv_bn
from regnet_kernels.ops.conv_bn_act.reference import out_memory_format
from regnet_kernels.ops.squeeze_excite import check_se

__all__ = ["OP_NAME", "PARAM_NAMES", "DIFF_INPUTS", "CONFIG_INPUTS", "SAVED_OUTPUTS", "bottleneck_train", "bottleneck_eval"]

OP_NAME = "bottleneck"
PARAM_NAMES = ("wa", "ga", "ba", "wb", "gb", "bb", "w1", "b1", "w2", "b2", "wc", "gc", "bc", "wp", "gp", "bp")
#: ``bottleneck_train``'s inputs: the differentiable tensors, then the configuration (no gradient)
DIFF_INPUTS = ("x",) + PARAM_NAMES
CONFIG_INPUTS = ("stride", "groups", "eps", "backend")
#: what its forward returns besides ``out`` and backward keeps (never differentiated)
SAVED_OUTPUTS = ("ya", "yb", "yc", "pooled", "gate", "stats")
#: ``bottleneck_eval``'s parameters: each BatchNorm's running mean and variance after its bias
_EVAL_PARAM_NAMES = tuple(n for p in PARAM_NAMES
                          for n in ((p, "rm" + p[1], "rv" + p[1]) if p in ("ba", "bb", "bc", "bp") else (p,)))
#: the tensors a block may lack (BatchNorm affines, SE, the projection and its statistics): ``Tensor?``
_OPTIONAL = frozenset(_EVAL_PARAM_NAMES) - {"wa", "rma", "rva", "wb", "rmb", "rvb", "wc", "rmc", "rvc"}
_dispatch.register_kernel_checks(
    OP_NAME, "the cuda backend has no whole-block kernel (per-op fusion is used instead)")


def _schema(names, *rest: str, returns: str) -> str:
    """An op schema: ``x``, the block tensors ``names``, then ``rest`` (the schemas once: PARAM_NAMES is their
    single list of the block's tensors)."""
    tensors = ", ".join(f"Tensor{'?' if n in _OPTIONAL else ''} {n}" for n in names)
    return f"({', '.join(('Tensor x', tensors) + rest)}) -> {returns}"


def _impl(backend: str, tensors):
    return _dispatch.implementation(OP_NAME, "regnet_kernels.ops.bottleneck", backend, tensors)


def _shapes(x, wa, wb, wc, stride):
    N, _, H, W = x.shape
    k = wb.shape[-1]
    Ho, Wo = conv_out_size(H, k, stride, k // 2), conv_out_size(W, k, stride, k // 2)
    return (N, wa.shape[0], H, W), (N, wb.shape[0], Ho, Wo), (N, wc.shape[0], Ho, Wo)


def _check(x, params, stride: int, groups: int, *, training: bool, running=None) -> None:
    """Everything the per-op path checks, once, for every piece of the block on the shape it will see (the
    kernels trust their inputs). ``running``: per BatchNorm (a, b, c, projection) its
    ``(running_mean, running_var)`` in eval."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"bottleneck: x must be a tensor, got {type(x).__name__}")
    wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp = params
    run = [(("running_mean", rm), ("running_var", rv)) if rm is not None else () for rm, rv in running or ()]
    run += [()] * (4 - len(run))
    shape, dt, dev = tuple(x.shape), x.dtype, x.device

    def conv(name, in_shape, w, g, b, stride_, groups_, i):
        pad = w.shape[-1] // 2 if isinstance(w, torch.Tensor) and w.dim() == 4 else 0
        return check_conv_bn(in_shape, dt, dev, w, g, b, stride_, pad, groups_, training=training, running=run[i],
                             who=f"bottleneck {name}")

    sa = conv("conv a", shape, wa, ga, ba, 1, 1, 0)
    sb = conv("conv b", sa, wb, gb, bb, stride, groups, 1)
    if w1 is not None:
        check_se(sb, dt, dev, w1, b1, w2, b2, who="bottleneck se")
    sc = conv("conv c", sb, wc, gc, bc, 1, 1, 2)
    short = conv("projection", shape, wp, gp, bp, stride, 1, 3) if wp is not None else shape
    if short != sc:
        raise _dispatch.ShapeError(f"bottleneck: the shortcut gives {short} but the residual branch {sc}: The size "
                                   f"of tensor a must match the size of tensor b")


_CONFIG_SCHEMA = ("SymInt stride", "SymInt groups")


@torch.library.custom_op("regnet_kernels::bottleneck_train", mutates_args=(),
                         schema=_schema(PARAM_NAMES, *_CONFIG_SCHEMA, "float[] eps", "str backend",
                                        returns=f"({', '.join(['Tensor'] * (1 + len(SAVED_OUTPUTS)))})"))
def _train_op(x, *args):
    *params, stride, groups, eps, backend = args
    impl = _impl(backend, (x,) + tuple(p for p in params if p is not None))
    return impl.block_train(x, *params, stride, groups, eps)


@_train_op.register_fake
def _(x, *args):
    wa, ga, ba, wb, gb, bb, w1, b1, w2, b2, wc, gc, bc, wp, gp, bp, stride, groups, eps, backend = args
    fmt = out_memory_format(x)
    sa, sb, sc = _shapes(x, wa, wb, wc, stride)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32

    def act(shape):
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)

    cb, cout = wa.shape[0], wc.shape[0]
    # per BatchNorm (mean, invstd, var_unbiased), then the mean offsets of BN a and the projection
    n_stats = 7 * cb + (7 if wp is not None else 3) * cout
    N = x.shape[0]
    se_shape = (N, cb) if w1 is not None else (0,)
    return (act(sc), act(sa), act(sb), act(sc), x.new_empty(se_shape, dtype=acc), x.new_empty(se_shape, dtype=acc),
            x.new_empty((n_stats,), dtype=acc))


@torch.library.custom_op("regnet_kernels::bottleneck_train_backward", mutates_args=(),
                         schema="(Tensor grad_out, " + _schema(PARAM_NAMES, *(f"Tensor {n}" for n in SAVED_OUTPUTS),
                                                               *_CONFIG_SCHEMA, "bool[] output_mask", "str backend",
                                                               returns="Tensor[]")[1:])
def _train_bwd_op(grad_out, x, *args):
    n = len(PARAM_NAMES)
    params, saved, (stride, groups, output_mask, backend) = args[:n], args[n:-4], args[-4:]
    impl = _impl(backend, (grad_out, x) + tuple(p for p in params if p is not None))
    grads = impl.block_train_backward(grad_out, x, params, saved, stride, groups, output_mask)
    # custom ops cannot return None: absent gradients come back as distinct empty tensors
    return [g.contiguous(memory_format=out_memory_format(x)) if (i == 0 and g is not None)
            else (g if g is not None else x.new_empty((0,))) for i, g in enumerate(grads)]


@_train_bwd_op.register_fake
def _(grad_out, x, *args):
    tensors, output_mask = (x,) + args[:len(PARAM_NAMES)], args[-2]
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
    ctx.conf = (stride, groups, backend)
    ctx.mark_non_differentiable(ya, yb, yc, pooled, gate, stats)


def _backward(ctx, grad_out, *_unused):
    saved = ctx.saved_tensors
    n = len(DIFF_INPUTS)
    tensors, kept = saved[:n], saved[n:]  # (DIFF_INPUTS, then SAVED_OUTPUTS: see _setup_context)
    stride, groups, backend = ctx.conf
    mask = [bool(ctx.needs_input_grad[i]) and tensors[i] is not None for i in range(n)]
    no_grad_for_config = (None,) * len(CONFIG_INPUTS)
    if grad_out is None or not any(mask):
        return (None,) * n + no_grad_for_config
    grads = _train_bwd_op(grad_out, *tensors, *kept, stride, groups, mask, backend)
    # (a gradient comes back empty when the batch is)
    return tuple(g if m else None for g, m in zip(grads, mask)) + no_grad_for_config


_train_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("regnet_kernels::bottleneck_eval", mutates_args=(),
                         schema=_schema(_EVAL_PARAM_NAMES, *_CONFIG_SCHEMA, "float[] eps", "str backend",
                                        returns="Tensor"))
def _eval_op(x, *args):
    *tensors, stride, groups, eps, backend = args
    impl = _impl(backend, tuple(t for t in (x, *tensors) if t is not None))
    return impl.block_eval(x, *tensors, stride, groups, eps)


@_eval_op.register_fake
def _(x, *args):
    p = dict(zip(_EVAL_PARAM_NAMES + CONFIG_INPUTS[:2], args))
    _, _, sc = _shapes(x, p["wa"], p["wb"], p["wc"], p["stride"])
    return torch.empty(sc, dtype=x.dtype, device=x.device, memory_format=out_memory_format(x))


def bottleneck_train(x, params, stride: int, groups: int, eps, backend: str):
    """Training forward of a fused bottleneck; ``params`` in :data:`PARAM_NAMES` order.

    Returns ``(out, stats)`` where ``stats`` packs ``(mean, invstd, var_unbiased)`` per BatchNorm (a, b, c,
    then projection) and the mean offsets of BN a and the projection; read it with
    :func:`regnet_kernels.ops.bottleneck.reference.batch_stats` for the running-statistics update (the
    Triton backend runs conv a and the projection on ``x - x[0, :, 0, 0]``, which training BatchNorm
    cancels, so their saved means are shifted). ``stats`` is meaningless (NaN) for an empty batch,
    whose running statistics ``nn.BatchNorm2d`` leaves alone (``out.numel() == 0`` tells the caller).

    Raises what eager PyTorch raises on the same block (see :func:`regnet_kernels.ops.conv_bn_act.check_conv_bn`).
    """
    _check(x, params, stride, groups, training=True)
    if _dispatch.empty_batch(x.shape):
        backend = "eager"  # eager's empty output and zero gradients; no kernel sees an empty tensor
    out, *_, stats = _train_op(x, *params, int(stride), int(groups), [float(e) for e in eps], backend)
    return out, stats


def bottleneck_eval(x, params_with_running, stride: int, groups: int, eps, backend: str) -> torch.Tensor:
    """Inference forward of a fused bottleneck (running statistics); raises what eager raises."""
    p = params_with_running
    params = p[0:3] + p[5:8] + p[10:17] + p[19:22]
    running = [p[3:5], p[8:10], p[17:19], p[22:24]]
    _check(x, params, stride, groups, training=False, running=running)
    if _dispatch.empty_batch(x.shape):
        backend = "eager"
    return _eval_op(x, *params_with_running, int(stride), int(groups), [float(e) for e in eps], backend)
