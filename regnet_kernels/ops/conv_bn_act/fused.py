"""The fused conv + BatchNorm + activation op, written once against the kernel primitives
(:class:`regnet_kernels.kernels.api.Kernels`); same contract as reference.py. Every function takes the
backend's kernel set ``k`` first (:func:`regnet_kernels.ops.dispatch.implementation` binds it).

Training forward, 3 kernels: implicit-GEMM conv writing the pre-BN output ``y`` and per-tile BN partials
from its epilogue -> finalize -> normalize + act; with ``group`` (SyncBatchNorm) the local statistics are
combined across ranks between the finalize and the normalize. Eval forward, 1 kernel: BN folded into the
conv epilogue in fp32. Backward: one pass fusing dReLU with the BN reductions (then, with ``group``, the
global sums), one pass forming the conv-output gradient, then dgrad and split-K wgrad.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from regnet_kernels import distributed as _dist
from regnet_kernels.kernels.api import EvalBN, Kernels, bn_bias, bn_scale, eval_affine, f32
from regnet_kernels.ops.conv_bn_act.reference import check_output_grad_act

__all__ = ["conv_bn_act_train", "conv_bn_act_train_backward", "conv_bn_act_eval", "conv_bn_act_eval_backward",
           "update_running_stats"]


def _per_channel_count(y: torch.Tensor) -> int:
    return y.numel() // y.shape[1]


def conv_bn_act_train(k: Kernels, x, weight, gamma, beta, stride: int, padding: int, groups: int, eps: float,
                      act: int, group=None):
    """Returns ``(out, y, mean, invstd, var_unbiased)`` (see reference.py); statistics across the ranks of
    ``group`` when given."""
    y, partials = k.conv_forward(x, weight, stride, padding, groups, stats=True)
    count = _per_channel_count(y)
    mean, invstd, var_unb, scale, bias = k.bn_finalize(partials, count, gamma, beta, eps)
    if group is not None:  # SyncBatchNorm: combine every rank's (count, mean, M2)
        mean, var, var_unb, _ = _dist.sync_batch_stats(count, mean, _dist.local_m2(var_unb, count), group)
        mean, var_unb = mean.contiguous(), var_unb.contiguous()
        invstd = torch.rsqrt(var + eps)
        scale = bn_scale(gamma, invstd)
    out = k.bn_act(y, mean, scale, bias, act)
    return out, y, mean, invstd, var_unb


def conv_bn_act_train_backward(k: Kernels, grad_out, x, weight, y, mean, invstd, gamma, beta, stride: int,
                               padding: int, groups: int, act: int, output_mask: Sequence[bool], group=None):
    """Gradients ``(dx, dweight, dgamma, dbeta)`` of the training-mode op (None where not asked). With
    ``group``, the input gradient uses the sums over all ranks; gamma/beta gradients stay local (as
    ``nn.SyncBatchNorm``'s: DDP averages them)."""
    mean, invstd = f32(mean), f32(invstd)
    stats = (mean, invstd, bn_scale(gamma, invstd), bn_bias(beta, mean))
    go = k.as_operand(grad_out, y)
    sum_dz, sum_dzx, _ = k.bn_bwd_reduce(go, y, train=True, act=act, stats=stats)
    s_dz, s_dzx, count = sum_dz, sum_dzx, _per_channel_count(y)
    if group is not None:  # pre-divided global sums (the total count is a device tensor)
        g_dz, g_dzx, n = _dist.sync_sums(sum_dz, sum_dzx, count, group)
        s_dz, s_dzx, count = (g_dz / n).contiguous(), (g_dzx / n).contiguous(), 1
    dx = dw = None
    if output_mask[0] or output_mask[1]:
        dy = k.bn_bwd_dy(go.to(y.dtype), y, *stats, s_dz, s_dzx, act, count)
        if output_mask[0]:
            dx = k.conv_dgrad(dy, weight, x.shape, stride, padding, groups, like=x)
        if output_mask[1]:
            _, dw = k.conv_wgrad(x, dy, weight.shape, stride, padding, groups, want_f32=False,
                                 out_dtype=weight.dtype)
    return dx, dw, _affine_grad(gamma, sum_dzx, output_mask[2]), _affine_grad(beta, sum_dz, output_mask[3])


def _affine_grad(param: Optional[torch.Tensor], grad: torch.Tensor, wanted: bool) -> Optional[torch.Tensor]:
    """A BatchNorm affine parameter's gradient in its dtype (None without the parameter or when not asked)."""
    return grad.to(param.dtype) if (param is not None and wanted) else None


def conv_bn_act_eval(k: Kernels, x, weight, gamma, beta, running_mean, running_var, stride: int, padding: int,
                     groups: int, eps: float, act: int):
    """``act((conv(x) - running_mean) * gamma / sqrt(running_var + eps) + beta)`` in one launch."""
    out, _ = k.conv_forward(x, weight, stride, padding, groups,
                            eval_bn=EvalBN(running_mean, running_var, gamma, beta, eps), act=act)
    return out


def conv_bn_act_eval_backward(k: Kernels, grad_out, x, weight, out, gamma, beta, running_mean, running_var,
                              stride: int, padding: int, groups: int, eps: float, act: int,
                              output_mask: Sequence[bool]):
    """Gradients ``(dx, dweight, dgamma, dbeta)`` of the eval-mode op (see reference.py for the algebra; the
    activation's gradient comes from ``out``: NONE and RELU only)."""
    check_output_grad_act(act)
    invstd, rm, scale, _ = eval_affine(EvalBN(running_mean, running_var, gamma, beta, eps))
    need_wf = output_mask[1] or (gamma is not None and output_mask[2])
    go = k.as_operand(grad_out.to(out.dtype), out)
    sum_dz, _, dz = k.bn_bwd_reduce(go, out, train=False, act=act, write_dz=output_mask[0] or need_wf)
    dx = dw = dwf = dgamma = None
    if output_mask[0]:
        w_scaled = (weight.float() * scale[:, None, None, None]).to(weight.dtype)
        dx = k.conv_dgrad(dz, w_scaled, x.shape, stride, padding, groups, like=x)
    if need_wf:
        dwf, dw = k.conv_wgrad(x, dz, weight.shape, stride, padding, groups, want_f32=True,
                               out_dtype=weight.dtype if output_mask[1] else None,
                               scale=scale if output_mask[1] else None)
    if gamma is not None and output_mask[2]:
        ds = (dwf * weight.float()).sum(dim=(1, 2, 3)) - rm * sum_dz
        dgamma = (ds * invstd).to(gamma.dtype)
    return dx, dw, dgamma, _affine_grad(beta, sum_dz, output_mask[3])


def update_running_stats(k: Kernels, running_mean, running_var, num_batches_tracked: Optional[torch.Tensor], mean,
                         var_unb, momentum: float, cumulative: bool) -> None:
    """In place: ``running = (1 - f) * running + f * batch``, ``f = momentum`` or ``1/num_batches_tracked``
    (read on the device: no host sync)."""
    k.bn_running_update(running_mean, running_var, num_batches_tracked, mean, var_unb, momentum, cumulative)
