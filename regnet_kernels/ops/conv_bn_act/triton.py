"""Triton implementation of the fused conv + BatchNorm + activation op (same contract as reference.py).

Training forward, 3 kernels: implicit-GEMM conv writing the pre-BN output ``y`` and per-tile BN
partials from its epilogue -> finalize (Chan combine, mean/scale/bias) -> normalize + act. Eval forward,
1 kernel: BN folded into the conv epilogue in fp32. Backward: one pass fusing dReLU with the two BN
reductions, one pass forming the conv-output gradient, then Triton dgrad and split-K wgrad.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from regnet_kernels import distributed as _dist
from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.triton import bn as _bn
from regnet_kernels.kernels.triton import conv as _conv


def conv_bn_act_train(x, weight, gamma, beta, stride: int, padding: int, groups: int, eps: float, relu: bool,
                      group=None):
    y, part_mean, part_m2, rows = _conv.conv2d_fwd(x, weight, stride, padding, groups, stats=True)
    count = y.numel() // y.shape[1]
    mean, invstd, var_unb, scale, bias = _bn.bn_finalize(part_mean, part_m2, count, rows, gamma, beta, eps)
    if group is not None:  # SyncBatchNorm: combine every rank's (count, mean, M2)
        mean, var, var_unb, _ = _dist.sync_batch_stats(count, mean, _dist.local_m2(var_unb, count), group)
        invstd = torch.rsqrt(var + eps)
        scale = invstd if gamma is None else gamma.float() * invstd
    out = _bn.bn_act(y, (mean, scale, bias), Act.from_relu(relu))
    return out, y, mean, invstd, var_unb


def conv_bn_act_train_backward(grad_out, x, weight, y, mean, invstd, gamma, beta, stride: int, padding: int,
                               groups: int, relu: bool, output_mask: Sequence[bool], group=None):
    scale = invstd if gamma is None else gamma.float() * invstd
    bias = torch.zeros_like(mean) if beta is None else beta.float()
    sum_dz, sum_dzx, _ = _bn.bn_bwd_reduce(grad_out, y, train=True, act=Act.from_relu(relu), mean=mean, invstd=invstd,
                                            scale=scale, bias=bias)
    count = y.numel() // y.shape[1]
    s_dz, s_dzx = sum_dz, sum_dzx
    if group is not None:
        # global sums for the input gradient (pre-divided: the count is a device tensor now); gamma/beta
        # gradients stay local, as nn.SyncBatchNorm's
        g_dz, g_dzx, n = _dist.sync_sums(sum_dz, sum_dzx, count, group)
        s_dz, s_dzx, count = g_dz / n, g_dzx / n, 1
    dx = dw = None
    if output_mask[0] or output_mask[1]:
        dy = _bn.bn_bwd_dy(grad_out.to(y.dtype), y, mean, invstd, scale, bias, s_dz, s_dzx, Act.from_relu(relu), count)
        if output_mask[0]:
            dx = _conv.conv2d_dgrad(dy, weight, x.shape, stride, padding, groups, like=x)
        if output_mask[1]:
            dw = _conv.conv2d_wgrad(x, dy, weight.shape, stride, padding, groups).to(weight.dtype)
    dgamma = sum_dzx.to(gamma.dtype) if (gamma is not None and output_mask[2]) else None
    dbeta = sum_dz.to(beta.dtype) if (beta is not None and output_mask[3]) else None
    return dx, dw, dgamma, dbeta


def _eval_affine(gamma, beta, running_mean, running_var, eps):
    """``(invstd, (mean, scale, bias))`` of eval-mode BN: ``BN(y) = (y - mean) * scale + bias``."""
    invstd = torch.rsqrt(running_var.float() + eps)
    scale = invstd if gamma is None else gamma.float() * invstd
    bias = torch.zeros_like(scale) if beta is None else beta.float()
    return invstd, (running_mean.float(), scale, bias)


def conv_bn_act_eval(x, weight, gamma, beta, running_mean, running_var, stride: int, padding: int, groups: int,
                     eps: float, relu: bool):
    out, _, _, _ = _conv.conv2d_fwd(x, weight, stride, padding, groups,
                                    post_bn=(running_mean, running_var, gamma, beta, eps), act=Act.from_relu(relu))
    return out


def conv_bn_act_eval_backward(grad_out, x, weight, out, gamma, beta, running_mean, running_var, stride: int,
                              padding: int, groups: int, eps: float, relu: bool, output_mask: Sequence[bool]):
    invstd, (_, scale, _) = _eval_affine(gamma, beta, running_mean, running_var, eps)
    sum_dz, _, dz = _bn.bn_bwd_reduce(grad_out.to(out.dtype), out, train=False, act=Act.from_relu(relu), write_dz=True)
    dx = dw = dgamma = dbeta = None
    if output_mask[0]:
        w_scaled = (weight.float() * scale[:, None, None, None]).to(weight.dtype)
        dx = _conv.conv2d_dgrad(dz, w_scaled, x.shape, stride, padding, groups, like=x)
    need_wf = output_mask[1] or (gamma is not None and output_mask[2])
    if need_wf:
        dwf = _conv.conv2d_wgrad(x, dz, weight.shape, stride, padding, groups)
        if output_mask[1]:
            dw = (dwf * scale[:, None, None, None]).to(weight.dtype)
        if gamma is not None and output_mask[2]:
            ds = (dwf * weight.float()).sum(dim=(1, 2, 3)) - running_mean.float() * sum_dz
            dgamma = (ds * invstd).to(gamma.dtype)
    if beta is not None and output_mask[3]:
        dbeta = sum_dz.to(beta.dtype)
    return dx, dw, dgamma, dbeta


def update_running_stats(running_mean, running_var, num_batches_tracked: Optional[torch.Tensor], mean, var_unb,
                         momentum: float, cumulative: bool) -> None:
    _bn.bn_running_update(running_mean, running_var, num_batches_tracked, mean, var_unb, momentum, cumulative)
