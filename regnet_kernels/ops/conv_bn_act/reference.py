"""Eager PyTorch reference for the fused conv + BatchNorm + activation op.

This is the specification: the Triton and CUDA backends are tested against it, and it is the
``eager`` backend (the CPU path). It follows ``nn.Conv2d`` -> ``nn.BatchNorm2d`` -> ``nn.ReLU``
exactly, with BatchNorm arithmetic in fp32 whatever the activation dtype (as cuDNN does), and is itself
checked against stock ``torch.nn`` in float64 by the tests.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

import torch.nn.functional as F

from regnet_kernels import distributed as _dist
from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.geometry import memory_format_of


#: the memory format outputs take (the input's): one definition, in :mod:`regnet_kernels.kernels.geometry`
out_memory_format = memory_format_of


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """BatchNorm arithmetic dtype: fp32 for fp16/bf16/fp32 activations, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def affine_scale(gamma: Optional[torch.Tensor], invstd: torch.Tensor) -> torch.Tensor:
    """``gamma * invstd`` in ``invstd``'s dtype (float64 in the oracle), or ``invstd`` without an affine weight."""
    return invstd if gamma is None else gamma.to(invstd.dtype) * invstd


def bn_apply(yf, mean, scale, beta):
    """``(y - mean) * scale + beta`` per channel (``beta`` optional), in ``yf``'s dtype."""
    # (y - mean) * scale + beta, never y * scale + (beta - mean * scale): the folded form cancels
    # catastrophically when |mean| >> std
    z = (yf - _bcast(mean)) * _bcast(scale)
    return z if beta is None else z + _bcast(beta.to(z.dtype))


def relu_grad(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """ReLU backward as eager's ``threshold_backward``: 0 where ``z <= 0``, else ``g`` (NaN passes ``g``)."""
    return torch.where(z <= 0, torch.zeros_like(g), g)


#: Each kernel activation code's eager form: ``(forward, backward)``, the backward ``(g, z) -> dz`` taking the
#: pre-activation ``z`` (``torch.autograd``'s result for ``forward``, NaN handling included). A new
#: activation adds its entry here (besides its kernel branch and its matcher entry).
_EAGER_ACT = {
    Act.NONE: (lambda z: z, lambda g, z: g),
    Act.RELU: (torch.relu, relu_grad),
}


def _eager_act(act: int):
    try:
        return _EAGER_ACT[Act(act)]
    except (ValueError, KeyError):
        raise ValueError(f"conv_bn_act: unknown activation code {act!r}; known: "
                         + ", ".join(f"{a.name}={int(a)}" for a in _EAGER_ACT)) from None


def apply_act(z: torch.Tensor, act: int) -> torch.Tensor:
    """The activation of code ``act`` (:class:`~regnet_kernels.kernels.activation.Act`) applied to ``z``."""
    return _eager_act(act)[0](z)


def act_grad(g: torch.Tensor, z: torch.Tensor, act: int) -> torch.Tensor:
    """The gradient through the activation of code ``act`` at the pre-activation ``z`` given the output's ``g``."""
    return _eager_act(act)[1](g, z)


def check_output_grad_act(act: int) -> None:
    """Refuse (NotImplementedError) an activation whose gradient cannot be taken from its output alone, as the
    eval backwards (this one and the fused one) take it: only NONE and RELU can (``relu(z) <= 0`` exactly
    where ``z <= 0``, NaN kept); ValueError for an unknown code."""
    _eager_act(act)
    if act not in (Act.NONE, Act.RELU):
        raise NotImplementedError(
            f"conv_bn_act eval backward: activation {Act(act).name} (code {int(act)}) cannot be differentiated "
            f"from its output alone; the eval backward handles NONE and RELU only")


def act_grad_from_output(g: torch.Tensor, out: torch.Tensor, act: int) -> torch.Tensor:
    """The gradient through the activation of code ``act`` from its *output* ``out`` (the eval backward keeps
    no pre-activation): NONE and RELU only (:func:`check_output_grad_act`)."""
    check_output_grad_act(act)
    return relu_grad(g, out) if act == Act.RELU else g


def _bcast(v: torch.Tensor) -> torch.Tensor:
    return v[None, :, None, None]


def conv_bn_act_train(x: torch.Tensor, weight: torch.Tensor, gamma: Optional[torch.Tensor],
                      beta: Optional[torch.Tensor], stride: int, padding: int, groups: int, eps: float, act: int,
                      group=None):
    """Training-mode forward (batch statistics; across the ranks of ``group`` when given).

    Returns ``(out, y, mean, invstd, var_unbiased)``: ``out = act(BN(y))`` in ``x.dtype``, ``y`` the
    pre-BN conv output (saved for backward), and fp32 per-channel ``mean``, ``invstd = 1/sqrt(var +
    eps)`` with the biased batch variance, and the unbiased variance for the running estimate.
    """
    fmt = out_memory_format(x)
    y = F.conv2d(x, weight, None, stride, padding, 1, groups).contiguous(memory_format=fmt)
    yf = y.to(acc_dtype(y.dtype))
    count = y.numel() // y.shape[1]
    if count == 0:  # an empty batch has no statistics (the caller leaves the running estimates alone)
        var = mean = torch.full((y.shape[1],), float("nan"), dtype=yf.dtype, device=y.device)
    else:
        var, mean = torch.var_mean(yf, dim=(0, 2, 3), unbiased=False)
    if group is not None:
        mean, var, var_unb, _ = _dist.sync_batch_stats(count, mean, var * count, group)
    else:
        var_unb = var * (count / (count - 1)) if count > 1 else torch.full_like(var, float("nan"))
    invstd = torch.rsqrt(var + eps)
    z = apply_act(bn_apply(yf, mean, affine_scale(gamma, invstd), beta), act)
    out = z.to(x.dtype).contiguous(memory_format=fmt)
    return out, y, mean, invstd, var_unb


def conv_bn_act_train_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor,
                               mean: torch.Tensor, invstd: torch.Tensor, gamma: Optional[torch.Tensor],
                               beta: Optional[torch.Tensor], stride: int, padding: int, groups: int, act: int,
                               output_mask: Sequence[bool], group=None):
    """Gradients ``(dx, dweight, dgamma, dbeta)`` of the training-mode op (None where not asked)."""
    yf = y.to(acc_dtype(y.dtype))
    g = grad_out.to(yf.dtype)
    scale = affine_scale(gamma, invstd)
    if act != Act.NONE:
        g = act_grad(g, bn_apply(yf, mean, scale, beta), act)
    xhat = (yf - _bcast(mean)) * _bcast(invstd)
    sum_dz = g.sum(dim=(0, 2, 3))
    sum_dzx = (g * xhat).sum(dim=(0, 2, 3))
    count = y.numel() // y.shape[1]
    mean_dz, mean_dzx = sum_dz / count, sum_dzx / count
    if group is not None:
        # the input gradient needs the global means; gamma/beta gradients stay local (DDP averages them),
        # exactly as nn.SyncBatchNorm does
        g_dz, g_dzx, n = _dist.sync_sums(sum_dz, sum_dzx, count, group)
        mean_dz, mean_dzx = g_dz / n, g_dzx / n
    dy = _bcast(scale) * (g - _bcast(mean_dz) - xhat * _bcast(mean_dzx))
    dy = dy.to(x.dtype)
    dx = dw = None
    if output_mask[0] or output_mask[1]:
        dx, dw, _ = torch.ops.aten.convolution_backward(
            dy, x, weight, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], groups,
            [bool(output_mask[0]), bool(output_mask[1]), False],
        )
    if dx is not None:
        dx = dx.contiguous(memory_format=out_memory_format(x))
    dgamma = sum_dzx.to(gamma.dtype) if (gamma is not None and output_mask[2]) else None
    dbeta = sum_dz.to(beta.dtype) if (beta is not None and output_mask[3]) else None
    return dx, dw, dgamma, dbeta


def conv_bn_act_eval(x: torch.Tensor, weight: torch.Tensor, gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor],
                     running_mean: torch.Tensor, running_var: torch.Tensor, stride: int, padding: int, groups: int,
                     eps: float, act: int) -> torch.Tensor:
    """Eval-mode forward: ``act((conv(x) - running_mean) * gamma / sqrt(running_var + eps) + beta)``."""
    fmt = out_memory_format(x)
    y = F.conv2d(x, weight, None, stride, padding, 1, groups)
    acc = acc_dtype(x.dtype)
    invstd = torch.rsqrt(running_var.to(acc) + eps)
    z = apply_act(bn_apply(y.to(acc), running_mean.to(acc), affine_scale(gamma, invstd), beta), act)
    return z.to(x.dtype).contiguous(memory_format=fmt)


def conv_bn_act_eval_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
                              gamma: Optional[torch.Tensor], beta: Optional[torch.Tensor], running_mean: torch.Tensor,
                              running_var: torch.Tensor, stride: int, padding: int, groups: int, eps: float,
                              act: int, output_mask: Sequence[bool]):
    """Gradients ``(dx, dweight, dgamma, dbeta)`` of the eval-mode op.

    With ``z = conv(x, W) * s + t``, ``s = gamma * invstd``, ``t = beta - mean * s``:
    ``dW = s * wgrad(x, dz)``, ``ds = sum(W * wgrad(x, dz)) - mean * sum(dz)`` (no need to keep the
    conv output), ``dgamma = ds * invstd``, ``dbeta = sum(dz)``. The activation's gradient is taken from
    ``out`` (:func:`act_grad_from_output`): NONE and RELU only (NotImplementedError for other codes).
    """
    acc = acc_dtype(x.dtype)
    g = act_grad_from_output(grad_out.to(acc), out, act)
    invstd = torch.rsqrt(running_var.to(acc) + eps)
    scale = affine_scale(gamma, invstd)
    sum_dz = g.sum(dim=(0, 2, 3))
    need_wf = output_mask[1] or (gamma is not None and output_mask[2])
    dx = dwf = None
    if output_mask[0]:
        dx = torch.ops.aten.convolution_backward(
            (g * _bcast(scale)).to(x.dtype), x, weight, None, [stride] * 2, [padding] * 2, [1, 1], False,
            [0, 0], groups, [True, False, False],
        )[0].contiguous(memory_format=out_memory_format(x))
    if need_wf:
        dwf = torch.ops.aten.convolution_backward(
            g.to(x.dtype), x, weight, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], groups,
            [False, True, False],
        )[1].to(acc)
    dw = (dwf * scale[:, None, None, None]).to(weight.dtype) if output_mask[1] else None
    dgamma = dbeta = None
    if gamma is not None and output_mask[2]:
        ds = (dwf * weight.to(acc)).sum(dim=(1, 2, 3)) - running_mean.to(acc) * sum_dz
        dgamma = (ds * invstd).to(gamma.dtype)
    if beta is not None and output_mask[3]:
        dbeta = sum_dz.to(beta.dtype)
    return dx, dw, dgamma, dbeta


def update_running_stats(running_mean, running_var, num_batches_tracked, mean, var_unb, momentum: float,
                         cumulative: bool) -> None:
    """In place: ``running = (1 - f) * running + f * batch``, ``f = momentum`` or ``1/num_batches``."""
    acc = mean.dtype
    if cumulative:
        f = 1.0 / num_batches_tracked.to(acc)
    else:
        f = torch.tensor(momentum, dtype=acc, device=mean.device)
    running_mean.copy_((1 - f) * running_mean.to(acc) + f * mean)
    running_var.copy_((1 - f) * running_var.to(acc) + f * var_unb)
