"""Fused ``act(BatchNorm(conv2d(x, W)))`` as torch.library custom ops, with a public functional.

Ops (namespace ``regnet_kernels``):

- ``conv_bn_act_train``: batch statistics; returns ``(out, y, mean, invstd, var_unbiased)``;
  backward is its own op ``conv_bn_act_train_backward``.
- ``conv_bn_act_eval``: BatchNorm folded from running statistics; backward
  ``conv_bn_act_eval_backward``.
- ``bn_update_running_stats``: the in-place running-statistics update (a separate op because an op
  with an autograd formula must not mutate its inputs).

The activation is an ``int act`` argument, a :class:`regnet_kernels.kernels.activation.Act` code (``0`` none,
``1`` ReLU). Each op takes a ``backend`` string (``"eager"``, ``"triton"``, ``"cuda"`` or ``"auto"``); the public
functional resolves it once (see :mod:`regnet_kernels.backends`) so a compiled graph records the
concrete choice.
"""
# NOTE: no ``from __future__ import annotations`` here: torch.library infers op schemas from the
# annotations and needs them as real types.
from typing import List, Optional, Tuple, Union

import torch

from regnet_kernels import backends as _backends
from regnet_kernels.ops import dispatch as _dispatch
from regnet_kernels import distributed as _dist
from regnet_kernels.kernels.geometry import conv_out_size
from regnet_kernels.matching import Activation
from regnet_kernels.ops.conv_bn_act.reference import out_memory_format

__all__ = ["conv_bn_act", "OP_NAME"]

OP_NAME = "conv_bn_act"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_dispatch.register_kernel_checks(OP_NAME)


def _impl(backend: str, tensors):
    return _dispatch.implementation(OP_NAME, "regnet_kernels.ops.conv_bn_act", backend, tensors)


def _empty_out(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    N, _, H, W = x.shape
    C, _, KH, KW = weight.shape
    shape = (N, C, conv_out_size(H, KH, stride, padding), conv_out_size(W, KW, stride, padding))
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=out_memory_format(x))


def _check(x, weight, gamma, beta, stride, padding, groups, *, training: bool, running_mean=None,
           running_var=None) -> None:
    """Raise an error naming the problem for inputs no backend may run."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("conv_bn_act: x and weight must be tensors")
    check_conv_bn(tuple(x.shape), x.dtype, x.device, weight, gamma, beta, stride, padding, groups, training=training,
                  running=(("running_mean", running_mean), ("running_var", running_var)))


def check_conv_bn(shape, dtype, device, weight, gamma, beta, stride, padding, groups, *, training: bool, running=(),
                  who: str = "conv_bn_act") -> tuple:
    """Validate a conv -> BatchNorm on an input of ``shape`` / ``dtype`` / ``device``; returns the output shape.

    Shared by the per-op functional and the whole-block ops (each conv of a block, on the shape it would
    see). Where eager PyTorch raises, the error has eager's type (:class:`ShapeError` is both the
    ``ValueError`` these checks always raised and eager's ``RuntimeError``) and eager's wording.
    """
    shape = tuple(shape)  # (SymInts stay symbolic: int() would specialize an exported dynamic batch)
    if len(shape) != 4:
        raise ValueError(f"{who}: expected 4D input (got {len(shape)}D input): the fused op takes a 4-D input "
                         f"(N, C, H, W), got shape {shape}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"{who}: expected a 4-D weight (C_out, C_in/groups, kH, kW), got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{who}: input dtype must be floating point (float16, bfloat16, float32, float64), "
                        f"got {dtype}")
    if weight.dtype != dtype:
        raise _dispatch.DtypeError(f"{who}: input and weight dtypes differ ({dtype} vs {weight.dtype}); cast one, "
                                   f"or run under torch.autocast")
    C, w_shape = weight.shape[0], tuple(weight.shape)
    if C == 0:
        raise _dispatch.ShapeError(f"{who}: expected weight to be at least 1 at dimension 0, but got weight of "
                                   f"size {list(w_shape)} instead")
    if groups < 1 or shape[1] % groups or C % groups:
        raise _dispatch.ShapeError(f"{who}: groups={groups} must divide both input channels ({shape[1]}) and "
                                   f"output channels ({C})")
    if weight.shape[1] * groups != shape[1]:
        raise _dispatch.ShapeError(
            f"{who}: input has {shape[1]} channels but the weight expects {weight.shape[1] * groups} "
            f"(weight.shape[1]={weight.shape[1]} x groups={groups}): expected input{list(shape)} to have "
            f"{weight.shape[1] * groups} channels, but got {shape[1]} channels instead")
    if stride < 1 or padding < 0:
        raise ValueError(f"{who}: stride must be >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    for name, t in (("bn weight", gamma), ("bn bias", beta)) + tuple(running):
        if t is None:
            continue
        if t.shape != (C,):
            raise _dispatch.ShapeError(f"{who}: {name} must have shape ({C},) for {C} output channels, got "
                                       f"{tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{who}: {name} must be floating point, got {t.dtype}")
    devices = {device} | {t.device for t in (weight, gamma, beta) + tuple(r for _, r in running) if t is not None}
    if len(devices) > 1:
        raise RuntimeError(f"{who}: all tensors must be on the same device, got "
                           + ", ".join(sorted(str(d) for d in devices)))
    KH, KW = weight.shape[2], weight.shape[3]
    HO, WO = conv_out_size(shape[2], KH, stride, padding), conv_out_size(shape[3], KW, stride, padding)
    if HO < 1 or WO < 1:
        raise _dispatch.ShapeError(
            f"{who}: input {shape[2:]} is too small for a {KH}x{KW} kernel with padding {padding}: Calculated "
            f"padded input size per channel: ({shape[2] + 2 * padding} x {shape[3] + 2 * padding}). Kernel size: "
            f"({KH} x {KW}). Kernel size can't be greater than actual input size")
    out_shape = (shape[0], C, HO, WO)
    # nn.BatchNorm2d's rule: exactly one value per channel is refused; none (an empty batch) is not
    if training and shape[0] * HO * WO == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{torch.Size(out_shape)}")
    return out_shape


# ------------------------------------------------------------------------------------------------
# Training mode
# ------------------------------------------------------------------------------------------------
def _sync(sync_group: int) -> dict:
    """The SyncBatchNorm keyword of the implementations: ``group`` for a registered group (none for -1)."""
    return {"group": _dist.get_group(sync_group)} if sync_group >= 0 else {}


@torch.library.custom_op("regnet_kernels::conv_bn_act_train", mutates_args=())
def _train_op(x: torch.Tensor, weight: torch.Tensor, gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor],
              stride: int, padding: int, groups: int, eps: float, act: int, sync_group: int,
              backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(x, weight, gamma, beta, stride, padding, groups, training=True)
    impl = _impl(backend, (x, weight, gamma, beta))
    return impl.conv_bn_act_train(x, weight, gamma, beta, stride, padding, groups, eps, act, **_sync(sync_group))


@_train_op.register_fake
def _(x, weight, gamma, beta, stride, padding, groups, eps, act, sync_group, backend):
    _check(x, weight, gamma, beta, stride, padding, groups, training=True)
    out = _empty_out(x, weight, stride, padding)
    C = weight.shape[0]
    stat_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    stats = [x.new_empty((C,), dtype=stat_dtype) for _ in range(3)]
    return out, torch.empty_like(out), *stats


@torch.library.custom_op("regnet_kernels::conv_bn_act_train_backward", mutates_args=())
def _train_bwd_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, mean: torch.Tensor,
                  invstd: torch.Tensor, gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor], stride: int,
                  padding: int, groups: int, act: int, output_mask: List[bool], sync_group: int,
                  backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = _impl(backend, (grad_out, x, weight, y, gamma, beta))
    grads = impl.conv_bn_act_train_backward(grad_out, x, weight, y, mean, invstd, gamma, beta, stride, padding,
                                            groups, act, output_mask, **_sync(sync_group))
    return _fill_grads(grads, x, weight, gamma, beta)


def _fill_grads(grads, x, weight, gamma, beta):
    # custom ops cannot return None: gradients nobody asked for come back as empty tensors
    # (each a distinct tensor: op outputs may not alias each other)
    dx, dw, dg, db = grads
    return (dx if dx is not None else x.new_empty((0,)),
            dw if dw is not None else weight.new_empty((0,)),
            dg if dg is not None else x.new_empty((0,), dtype=torch.float32),
            db if db is not None else x.new_empty((0,), dtype=torch.float32))


def _fake_grads(x, weight, gamma, beta, output_mask):
    dx = torch.empty_like(x, memory_format=out_memory_format(x)) if output_mask[0] else x.new_empty((0,))
    dw = (torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1]
          else weight.new_empty((0,)))
    dg = (torch.empty_like(gamma) if (gamma is not None and output_mask[2])
          else x.new_empty((0,), dtype=torch.float32))
    db = (torch.empty_like(beta) if (beta is not None and output_mask[3])
          else x.new_empty((0,), dtype=torch.float32))
    return dx, dw, dg, db


@_train_bwd_op.register_fake
def _(grad_out, x, weight, y, mean, invstd, gamma, beta, stride, padding, groups, act, output_mask, sync_group,
      backend):
    return _fake_grads(x, weight, gamma, beta, output_mask)


def _train_setup_context(ctx, inputs, output):
    x, weight, gamma, beta, stride, padding, groups, eps, act, sync_group, backend = inputs
    out, y, mean, invstd, var_unb = output
    ctx.save_for_backward(x, weight, y, mean, invstd, gamma, beta)
    ctx.conf = (stride, padding, groups, act, sync_group, backend)
    ctx.mark_non_differentiable(y, mean, invstd, var_unb)


def _grad_mask(ctx, gamma, beta) -> List[bool]:
    """Which of ``(x, weight, gamma, beta)`` need a gradient (an absent affine parameter never does)."""
    need = ctx.needs_input_grad
    return [need[0], need[1], gamma is not None and need[2], beta is not None and need[3]]


def _unfill(grads, mask, n_inputs: int) -> tuple:
    """The autograd formula's result: the op's gradients where asked (None elsewhere: the op fills those with
    empties), then None for every non-tensor input up to ``n_inputs``.
    (Wanted gradients are always computed: an empty one is the gradient of an empty batch, not absent.)"""
    return tuple(g if m else None for g, m in zip(grads, mask)) + (None,) * (n_inputs - len(mask))


def _train_backward(ctx, grad_out, _gy, _gm, _gi, _gv):
    x, weight, y, mean, invstd, gamma, beta = ctx.saved_tensors
    stride, padding, groups, act, sync_group, backend = ctx.conf
    mask = _grad_mask(ctx, gamma, beta)
    if grad_out is None or not any(mask):
        if sync_group >= 0:
            # every rank must take part in the collective, whatever it needs locally
            mask = [True, False, False, False]
        else:
            return (None,) * 11
    grads = _train_bwd_op(grad_out, x, weight, y, mean, invstd, gamma, beta, stride, padding, groups, act, mask,
                          sync_group, backend)
    return _unfill(grads, mask, 11)


_train_op.register_autograd(_train_backward, setup_context=_train_setup_context)


# ------------------------------------------------------------------------------------------------
# Eval mode
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("regnet_kernels::conv_bn_act_eval", mutates_args=())
def _eval_op(x: torch.Tensor, weight: torch.Tensor, gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor],
             running_mean: torch.Tensor, running_var: torch.Tensor, stride: int, padding: int, groups: int, eps: float,
             act: int, backend: str) -> torch.Tensor:
    _check(x, weight, gamma, beta, stride, padding, groups, training=False, running_mean=running_mean,
           running_var=running_var)
    impl = _impl(backend, (x, weight, gamma, beta, running_mean, running_var))
    return impl.conv_bn_act_eval(x, weight, gamma, beta, running_mean, running_var, stride, padding, groups, eps,
                                 act)


@_eval_op.register_fake
def _(x, weight, gamma, beta, running_mean, running_var, stride, padding, groups, eps, act, backend):
    _check(x, weight, gamma, beta, stride, padding, groups, training=False, running_mean=running_mean,
           running_var=running_var)
    return _empty_out(x, weight, stride, padding)


@torch.library.custom_op("regnet_kernels::conv_bn_act_eval_backward", mutates_args=())
def _eval_bwd_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
                 gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor], running_mean: torch.Tensor,
                 running_var: torch.Tensor, stride: int, padding: int, groups: int, eps: float, act: int,
                 output_mask: List[bool],
                 backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = _impl(backend, (grad_out, x, weight, out, gamma, beta))
    grads = impl.conv_bn_act_eval_backward(grad_out, x, weight, out, gamma, beta, running_mean, running_var,
                                           stride, padding, groups, eps, act, output_mask)
    return _fill_grads(grads, x, weight, gamma, beta)


@_eval_bwd_op.register_fake
def _(grad_out, x, weight, out, gamma, beta, running_mean, running_var, stride, padding, groups, eps, act,
      output_mask, backend):
    return _fake_grads(x, weight, gamma, beta, output_mask)


def _eval_setup_context(ctx, inputs, output):
    x, weight, gamma, beta, rm, rv, stride, padding, groups, eps, act, backend = inputs
    ctx.save_for_backward(x, weight, output, gamma, beta, rm, rv)
    ctx.conf = (stride, padding, groups, eps, act, backend)


def _eval_backward(ctx, grad_out):
    x, weight, out, gamma, beta, rm, rv = ctx.saved_tensors
    stride, padding, groups, eps, act, backend = ctx.conf
    mask = _grad_mask(ctx, gamma, beta)
    if grad_out is None or not any(mask):
        return (None,) * 12
    grads = _eval_bwd_op(grad_out, x, weight, out, gamma, beta, rm, rv, stride, padding, groups, eps, act, mask,
                         backend)
    return _unfill(grads, mask, 12)


_eval_op.register_autograd(_eval_backward, setup_context=_eval_setup_context)


# ------------------------------------------------------------------------------------------------
# Running statistics
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("regnet_kernels::bn_update_running_stats", mutates_args=("running_mean", "running_var"))
def update_running_stats_op(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    num_batches_tracked: Optional[torch.Tensor],
    mean: torch.Tensor,
    var_unbiased: torch.Tensor,
    momentum: float,
    cumulative: bool,
    backend: str,
) -> None:
    impl = _impl(backend, (running_mean, running_var, mean, var_unbiased))
    impl.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var_unbiased, momentum,
                              cumulative)


@update_running_stats_op.register_fake
def _(running_mean, running_var, num_batches_tracked, mean, var_unbiased, momentum, cumulative, backend):
    return None


# ------------------------------------------------------------------------------------------------
# Public functional
# ------------------------------------------------------------------------------------------------
def _single(v: Union[int, Tuple[int, int], List[int]], name: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"conv_bn_act: {name} must be an int or an equal pair, got {v}")
        return int(v[0])
    return int(v)


def _activation(activation: Union[str, Activation, None]) -> int:
    """The kernel activation code (:class:`~regnet_kernels.kernels.activation.Act`) of ``activation``, through
    the one table :data:`regnet_kernels.matching.KERNEL_ACT`."""
    try:
        code = Activation.parse(activation).kernel_act
    except (ValueError, TypeError):
        code = None
    if code is None:
        raise ValueError(f"conv_bn_act: activation must be 'relu' or None, got {activation!r}")
    return int(code)


def conv_bn_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bn_weight: Optional[torch.Tensor] = None,
    bn_bias: Optional[torch.Tensor] = None,
    running_mean: Optional[torch.Tensor] = None,
    running_var: Optional[torch.Tensor] = None,
    *,
    num_batches_tracked: Optional[torch.Tensor] = None,
    stride: Union[int, Tuple[int, int]] = 1,
    padding: Optional[Union[int, Tuple[int, int]]] = None,
    groups: int = 1,
    training: bool = True,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    activation: Optional[str] = "relu",
    backend: Optional[str] = "auto",
    sync_batch_stats: bool = False,
    process_group=None,
) -> torch.Tensor:
    """Fused ``act(batch_norm(conv2d(x, weight)))``: one op forward and backward.

    Args:
        x: ``(N, C_in, H, W)`` float16 / bfloat16 / float32 (float64 on the eager backend), any
            memory format (NCHW, channels_last or strided); CPU or CUDA.
        weight: ``(C_out, C_in / groups, kH, kW)``, same dtype as ``x`` (under ``torch.autocast`` both are
            cast to the autocast dtype, as ``conv2d`` would be).
        bn_weight, bn_bias: BatchNorm affine ``gamma, beta``, ``(C_out,)``, usually float32; None means
            ``gamma = 1``, ``beta = 0``.
        running_mean, running_var: ``(C_out,)`` BatchNorm buffers. In training they are updated in place
            when given (``track_running_stats``); in eval they are required.
        num_batches_tracked: int64 scalar buffer; incremented in training when the running statistics
            are given, as ``nn.BatchNorm2d`` does, and used for the cumulative average when
            ``momentum is None``.
        stride, padding, groups: the conv's. ``padding`` defaults to ``kH // 2``. Dilation is 1.
        training: batch statistics (True) or running statistics folded into the conv (False).
        momentum, eps: BatchNorm's.
        activation: ``"relu"`` or ``None`` (also ``"none"`` / ``"identity"`` or a
            :class:`~regnet_kernels.matching.Activation` the kernels have a code for); the ops take its
            ``act`` code (:class:`~regnet_kernels.kernels.activation.Act`) from ``matching.KERNEL_ACT``.
        backend: ``"auto"``, ``"eager"``, ``"triton"`` or ``"cuda"`` (see :mod:`regnet_kernels.backends`).
        sync_batch_stats: in training, compute batch statistics across the ranks of ``process_group``
            (default: WORLD) as ``nn.SyncBatchNorm`` does; any torch.distributed backend, CPU included.
        process_group: the group for ``sync_batch_stats``.

    Returns:
        ``(N, C_out, H_out, W_out)`` in ``x``'s dtype (the autocast dtype under autocast) and memory format.
        An empty batch gives an empty output (computed by the eager backend) and, in training, leaves the
        running statistics untouched while counting the batch, as ``nn.BatchNorm2d`` does.

    Raises:
        ValueError / TypeError / RuntimeError: as eager PyTorch would (wrong channels, a kernel larger than
        the padded input, one value per channel in training, mismatched dtypes or devices), with eager's
        wording; see :class:`regnet_kernels.ops.dispatch.ShapeError`.

    Equivalent PyTorch:
        ``relu(F.batch_norm(F.conv2d(x, weight, None, stride, padding, 1, groups), running_mean,
        running_var, bn_weight, bn_bias, training, momentum, eps))``
    """
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("conv_bn_act: x and weight must be tensors")
    act = _activation(activation)
    stride_i = _single(stride, "stride")
    if padding is None:
        padding = weight.shape[-1] // 2 if weight.dim() == 4 else 0
    padding_i = _single(padding, "padding")
    dt = _dispatch.autocast_dtype(x.device.type)
    if dt is not None:
        if x.is_floating_point() and x.dtype != dt:
            x = x.to(dt)
        if weight.is_floating_point() and weight.dtype != dt:
            weight = weight.to(dt)
    cumulative = momentum is None
    if cumulative and training and running_mean is not None and num_batches_tracked is None:
        raise ValueError("conv_bn_act: momentum=None (cumulative average) needs num_batches_tracked")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("conv_bn_act: eval mode (training=False) needs running_mean and running_var; pass "
                         "training=True to normalise with batch statistics")
    if (running_mean is None) != (running_var is None):
        raise ValueError("conv_bn_act: pass both running_mean and running_var, or neither")
    _check(x, weight, bn_weight, bn_bias, stride_i, padding_i, groups, training=training, running_mean=running_mean,
           running_var=running_var)
    be = _backends.resolve(OP_NAME, (x, weight, bn_weight, bn_bias, running_mean, running_var), backend)
    empty = _dispatch.empty_batch(x.shape)
    if empty:
        be = "eager"

    if not training:
        return _eval_op(x, weight, bn_weight, bn_bias, running_mean, running_var, stride_i, padding_i, groups,
                        float(eps), act, be)
    sync = _dist.register_group(process_group) if sync_batch_stats else -1
    out, _y, mean, _invstd, var_unb = _train_op(x, weight, bn_weight, bn_bias, stride_i, padding_i, groups,
                                                float(eps), act, sync, be)
    if running_mean is not None:
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        if empty:  # nn.BatchNorm2d counts an empty batch but leaves the running statistics alone
            return out
        update_running_stats_op(running_mean, running_var, num_batches_tracked if cumulative else None, mean.detach(),
                   var_unb.detach(), 0.0 if cumulative else float(momentum), cumulative, be)
    return out

