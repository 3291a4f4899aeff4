"""Squeeze-excitation ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))`` as torch.library custom ops.

Ops (namespace ``regnet_kernels``): ``squeeze_excite`` returns ``(out, pooled, gate)`` (the pooled vector
and the gate are the only tensors kept for backward besides ``x``), and its backward
``squeeze_excite_backward``.
"""
# NOTE: no ``from __future__ import annotations``: torch.library reads the annotations as types.
from typing import List, Optional, Tuple

import torch

from regnet_kernels import backends as _backends
from regnet_kernels.ops import dispatch as _dispatch
from regnet_kernels.ops.conv_bn_act.reference import out_memory_format

__all__ = ["squeeze_excite", "OP_NAME"]

OP_NAME = "squeeze_excite"
_dispatch.register_kernel_checks(OP_NAME)


def _impl(backend: str, tensors):
    return _dispatch.implementation(OP_NAME, "regnet_kernels.ops.squeeze_excite", backend, tensors)


def _check(x, w1, b1, w2, b2) -> None:
    if not all(isinstance(t, torch.Tensor) for t in (x, w1, w2)):
        raise TypeError("squeeze_excite: x, w1 and w2 must be tensors")
    check_se(tuple(x.shape), x.dtype, x.device, w1, b1, w2, b2)


def check_se(shape, dtype, device, w1, b1, w2, b2, who: str = "squeeze_excite") -> None:
    """Validate squeeze-excitation on an input of ``shape`` / ``dtype`` / ``device`` (the functional's input,
    or inside a whole block the shape conv b produces). An empty input is valid: eager returns it empty."""
    shape = tuple(shape)  # (SymInts stay symbolic: int() would specialize an exported dynamic batch)
    if len(shape) != 4:
        raise ValueError(f"{who}: expected a 4-D input (N, C, H, W), got shape {shape}")
    if not dtype.is_floating_point:
        raise TypeError(f"{who}: input dtype must be floating point, got {dtype}")
    C = shape[1]
    if w1.dim() not in (2, 4) or (w1.dim() == 4 and tuple(w1.shape[2:]) != (1, 1)):
        raise ValueError(f"{who}: fc1 weight must be (S, C) or (S, C, 1, 1), got {tuple(w1.shape)}")
    S = w1.shape[0]
    if w1.shape[1] != C:
        raise _dispatch.ShapeError(f"{who}: input has {C} channels but fc1 expects {w1.shape[1]}: expected "
                                   f"input[{shape[0]}, {C}, 1, 1] to have {w1.shape[1]} channels, but got {C} "
                                   f"channels instead")
    if tuple(w2.shape[:2]) != (C, S) or (w2.dim() == 4 and tuple(w2.shape[2:]) != (1, 1)) or w2.dim() not in (2, 4):
        raise _dispatch.ShapeError(f"{who}: fc2 weight must be ({C}, {S}[, 1, 1]), got {tuple(w2.shape)}")
    if b1 is not None and tuple(b1.shape) != (S,):
        raise _dispatch.ShapeError(f"{who}: fc1 bias must have shape ({S},), got {tuple(b1.shape)}")
    if b2 is not None and tuple(b2.shape) != (C,):
        raise _dispatch.ShapeError(f"{who}: fc2 bias must have shape ({C},), got {tuple(b2.shape)}")
    for name, t in (("fc1 weight", w1), ("fc1 bias", b1), ("fc2 weight", w2), ("fc2 bias", b2)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{who}: {name} must be floating point, got {t.dtype}")
    devices = {device} | {t.device for t in (w1, b1, w2, b2) if t is not None}
    if len(devices) > 1:
        raise RuntimeError(f"{who}: all tensors must be on the same device, got "
                           + ", ".join(sorted(str(d) for d in devices)))


@torch.library.custom_op("regnet_kernels::squeeze_excite", mutates_args=())
def _se_op(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor],
           backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(x, w1, b1, w2, b2)
    return _impl(backend, (x, w1, b1, w2, b2)).squeeze_excite(x, w1, b1, w2, b2)


@_se_op.register_fake
def _(x, w1, b1, w2, b2, backend):
    _check(x, w1, b1, w2, b2)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=out_memory_format(x))
    N, C = x.shape[:2]
    return out, x.new_empty((N, C), dtype=acc), x.new_empty((N, C), dtype=acc)


@torch.library.custom_op("regnet_kernels::squeeze_excite_backward", mutates_args=())
def _se_bwd_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: Optional[torch.Tensor],
    w2: torch.Tensor,
    b2: Optional[torch.Tensor],
    pooled: torch.Tensor,
    gate: torch.Tensor,
    output_mask: List[bool],
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    impl = _impl(backend, (grad_out, x, w1, b1, w2, b2))
    grads = impl.squeeze_excite_backward(grad_out, x, w1, b1, w2, b2, pooled, gate, output_mask)
    # custom ops cannot return None: gradients nobody asked for come back as (distinct) empty tensors
    return tuple(g if g is not None else x.new_empty((0,)) for g in grads)


@_se_bwd_op.register_fake
def _(grad_out, x, w1, b1, w2, b2, pooled, gate, output_mask, backend):
    def grad_like(t, wanted, fmt=torch.contiguous_format):
        return torch.empty_like(t, memory_format=fmt) if (t is not None and wanted) else x.new_empty((0,))

    return (grad_like(x, output_mask[0], out_memory_format(x)), grad_like(w1, output_mask[1]),
            grad_like(b1, output_mask[2]), grad_like(w2, output_mask[3]), grad_like(b2, output_mask[4]))


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, backend = inputs
    _, pooled, gate = output
    ctx.save_for_backward(x, w1, b1, w2, b2, pooled, gate)
    ctx.backend = backend
    ctx.mark_non_differentiable(pooled, gate)


def _backward(ctx, grad_out, _gp, _gg):
    x, w1, b1, w2, b2, pooled, gate = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[1], b1 is not None and need[2], need[3], b2 is not None and need[4]]
    if grad_out is None or not any(mask):
        return (None,) * 6
    grads = _se_bwd_op(grad_out, x, w1, b1, w2, b2, pooled, gate, mask, ctx.backend)
    return tuple(g if m else None for g, m in zip(grads, mask)) + (None,)  # (empty when the batch is)


_se_op.register_autograd(_backward, setup_context=_setup_context)


def squeeze_excite(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: Optional[torch.Tensor],
    fc2_weight: torch.Tensor,
    fc2_bias: Optional[torch.Tensor],
    *,
    backend: Optional[str] = "auto",
) -> torch.Tensor:
    """Fused squeeze-excitation: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``.

    Args:
        x: ``(N, C, H, W)`` float16 / bfloat16 / float32 (float64 on eager), any memory format; CPU or CUDA.
        fc1_weight: ``(S, C, 1, 1)`` or ``(S, C)``; fc1_bias: ``(S,)`` or None.
        fc2_weight: ``(C, S, 1, 1)`` or ``(C, S)``; fc2_bias: ``(C,)`` or None.
            The FCs run in fp32 whatever the parameter dtype (they are tiny); under ``torch.autocast``
            ``x`` is cast to the autocast dtype.
        backend: ``"auto"``, ``"eager"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(N, C, H, W)`` in ``x``'s dtype and memory format.

    Equivalent PyTorch:
        ``x * torch.sigmoid(F.conv2d(F.relu(F.conv2d(F.adaptive_avg_pool2d(x, 1), fc1_weight, fc1_bias)),
        fc2_weight, fc2_bias))``
    """
    dt = _dispatch.autocast_dtype(x.device.type) if isinstance(x, torch.Tensor) else None
    if dt is not None and x.is_floating_point() and x.dtype != dt:
        x = x.to(dt)
    _check(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    be = _backends.resolve(OP_NAME, (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias), backend)
    if _dispatch.empty_batch(x.shape):  # eager's empty result (H * W = 0 too: a NaN gate times nothing)
        be = "eager"
    out, _, _ = _se_op(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, be)
    return out
