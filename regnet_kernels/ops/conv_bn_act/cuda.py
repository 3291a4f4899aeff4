"""CUDA implementation of the fused conv + BatchNorm + activation op (same contract as reference.py).

Python side of the hand-written kernels in ``csrc/``: validate, allocate every output and workspace
with torch (CUDA-graph capturable: no host syncs, no allocation outside torch's allocator), and launch
on torch's current stream through :func:`regnet_kernels.kernels.cuda.ext.lib` (the compiled extension
``regnet_kernels._C``, or the CuPy JIT of the same sources).

Training forward, 3 launches: implicit-GEMM conv writing the pre-BN output ``y`` and per-tile
(mean, M2) BatchNorm partials from its epilogue -> finalize (two-pass shifted combine) -> normalize +
act. Eval forward, 1 launch: BatchNorm applied in the conv epilogue in fp32. Backward: dReLU fused with
both BatchNorm reductions (per-tile partials, then a fixed-order sum), the conv-output gradient pass,
implicit-GEMM dgrad, and split-K wgrad into an fp32 workspace summed deterministically.

With ``group`` (SyncBatchNorm), the local statistics are combined across ranks between the finalize and
the normalize launches, and the two backward sums between the reduction and the conv-output gradient
(``regnet_kernels.distributed``, as the Triton backend does).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.cuda import ext as _ext
from regnet_kernels import distributed as _dist
from regnet_kernels.ops.conv_bn_act import reference as _ref
from regnet_kernels.kernels.geometry import conv_out_size
from regnet_kernels.ops.conv_bn_act.reference import out_memory_format

#: Tests set this to force a number of split-K slices in the weight gradient (None: the heuristic).
WGRAD_SPLITS: Optional[int] = None

_OP = "conv_bn_act"


def _geometry(x_shape, w_shape, stride: int, padding: int, groups: int) -> tuple:
    """``(N, C_in, H, W, C_out, HO, WO, KH, KW, stride, pad, groups)``: the launchers' shape arguments."""
    N, C_in, H, W = (int(v) for v in x_shape)
    C_out, cin_g, KH, KW = (int(v) for v in w_shape)
    if groups < 1 or C_in % groups or C_out % groups or cin_g * groups != C_in:
        raise ValueError(f"{_OP} (cuda backend): weight {tuple(w_shape)} with groups={groups} does not fit an input "
                         f"with {C_in} channels")
    if stride < 1 or padding < 0:
        raise ValueError(f"{_OP} (cuda backend): stride must be >= 1 and padding >= 0")
    HO, WO = conv_out_size(H, KH, stride, padding), conv_out_size(W, KW, stride, padding)
    if HO < 1 or WO < 1:
        raise ValueError(f"{_OP} (cuda backend): input {(H, W)} is too small for a {KH}x{KW} kernel")
    return N, C_in, H, W, C_out, HO, WO, KH, KW, int(stride), int(padding), int(groups)


def _check(x: torch.Tensor, weight: torch.Tensor, *others) -> tuple:
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"{_OP} (cuda backend): expected 4-D input and weight, got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    code = _ext.dtype_code(x, "input")
    if weight.dtype != x.dtype:
        raise TypeError(f"{_OP} (cuda backend): input and weight dtypes differ ({x.dtype} vs {weight.dtype})")
    dev = _ext.check_tensors(_OP, (x, weight) + tuple(others))
    return code, dev


def _per_channel(name: str, t: Optional[torch.Tensor], C: int) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.shape != (C,):
        raise ValueError(f"{_OP} (cuda backend): {name} must have shape ({C},), got {tuple(t.shape)}")
    return _ext.f32(t)


def _conv(lib, code: int, x, weight, geo, out, stream: int, *, stats=None, post=None, relu: bool = False) -> None:
    part_mean, part_m2 = stats if stats is not None else (None, None)
    post_mean, post_scale, post_bias = post if post is not None else (None, None, None)
    lib.conv_fwd(code, x.data_ptr(), *x.stride(), weight.data_ptr(), *weight.stride(), out.data_ptr(), *out.stride(),
                 *geo, _ext.ptr(part_mean), _ext.ptr(part_m2), _ext.ptr(post_mean), _ext.ptr(post_scale),
                 _ext.ptr(post_bias), Act.from_relu(relu), stream)


def _dgrad(lib, code: int, dy, weight, geo, like, stream: int) -> torch.Tensor:
    dx = torch.empty(geo[:4], dtype=like.dtype, device=like.device, memory_format=out_memory_format(like))
    lib.conv_dgrad(code, dy.data_ptr(), *dy.stride(), weight.data_ptr(), *weight.stride(), dx.data_ptr(),
                   *dx.stride(), *geo, stream)
    return dx


def _wgrad_splits(geo, cfg: dict, device: torch.device) -> tuple:
    """``(splits, pixels per split)`` for the split-K weight gradient: enough CTAs for ~4 waves, each
    split at least 4 reduction slices deep."""
    N, C_in, _, _, C_out, HO, WO, KH, KW, _, _, groups = geo
    M = N * HO * WO
    bk = cfg["GEMM_BK"]
    if WGRAD_SPLITS is not None:
        split = max(1, min(int(WGRAD_SPLITS), _ext.cdiv(M, bk)))
    else:
        base = _ext.cdiv(C_out, cfg["GEMM_BM"]) * _ext.wgrad_channel_chunks(C_in, C_out, groups, cfg) * KH * KW
        split = max(1, min(_ext.cdiv(M, bk * 4), _ext.cdiv(4 * _ext.num_sms(device), base)))
    split = min(split, max(1, 65535 // (KH * KW)))
    per = _ext.cdiv(_ext.cdiv(M, split), bk) * bk
    return _ext.cdiv(M, per), per


def _wgrad(lib, code: int, x, dy, geo, stream: int, *, want_f32: bool = False, out_dtype=None, scale=None):
    """Weight gradient: ``(fp32 | None, out_dtype (times scale[co]) | None)``, both of the weight's shape."""
    N, C_in, H, W, C_out, HO, WO, KH, KW, stride, pad, groups = geo
    cfg = lib.config()
    splits, per = _wgrad_splits(geo, cfg, x.device)
    w_shape = (C_out, C_in // groups, KH, KW)
    ws = torch.empty((splits,) + w_shape, dtype=torch.float32, device=x.device)
    lib.conv_wgrad(code, x.data_ptr(), *x.stride(), dy.data_ptr(), *dy.stride(), ws.data_ptr(), *geo, splits, per,
                   stream)
    out_f32 = torch.empty(w_shape, dtype=torch.float32, device=x.device) if want_f32 else None
    out_t = torch.empty(w_shape, dtype=out_dtype, device=x.device) if out_dtype is not None else None
    lib.wgrad_reduce(code, ws.data_ptr(), splits, C_out, w_shape[1] * KH * KW, _ext.ptr(scale), _ext.ptr(out_f32),
                     _ext.ptr(out_t), stream)
    return out_f32, out_t


# ------------------------------------------------------------------------------------------------
# Training mode
# ------------------------------------------------------------------------------------------------
def conv_bn_act_train(x, weight, gamma, beta, stride: int, padding: int, groups: int, eps: float, relu: bool,
                      group=None):
    """Returns ``(out, y, mean, invstd, var_unbiased)`` (see reference.py); statistics across the ranks of
    ``group`` when given."""
    code, dev = _check(x, weight, gamma, beta)
    geo = _geometry(x.shape, weight.shape, stride, padding, groups)
    N, _, _, _, C, HO, WO = geo[:7]
    M = N * HO * WO
    if M <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got output size {(N, C, HO, WO)}")
    g32, b32 = _per_channel("bn weight", gamma, C), _per_channel("bn bias", beta, C)
    lib = _ext.lib()
    cfg = lib.config()
    fmt = out_memory_format(x)
    y = torch.empty((N, C, HO, WO), dtype=x.dtype, device=dev, memory_format=fmt)
    tiles = _ext.cdiv(M, cfg["GEMM_BM"])
    part = torch.empty((2, tiles, C), dtype=torch.float32, device=dev)
    mean, invstd, var_unb, scale, bias = (torch.empty(C, dtype=torch.float32, device=dev) for _ in range(5))
    out = torch.empty_like(y)
    cs, _ = _ext.pixel_layout(fmt, C, HO * WO)
    with _ext.launch_context(dev) as stream:
        _conv(lib, code, x, weight, geo, y, stream, stats=(part[0], part[1]))
        lib.bn_finalize(part[0].data_ptr(), part[1].data_ptr(), tiles, M, cfg["GEMM_BM"], C, _ext.ptr(g32),
                        _ext.ptr(b32), float(eps), mean.data_ptr(), invstd.data_ptr(), var_unb.data_ptr(),
                        scale.data_ptr(), bias.data_ptr(), stream)
        if group is not None:  # SyncBatchNorm: combine every rank's (count, mean, M2)
            mean, var, var_unb, _ = _dist.sync_batch_stats(M, mean, _dist.local_m2(var_unb, M), group)
            mean, var_unb = mean.contiguous(), var_unb.contiguous()
            invstd = torch.rsqrt(var + eps)
            scale = (invstd if g32 is None else g32 * invstd).contiguous()
        lib.bn_act(code, y.data_ptr(), out.data_ptr(), mean.data_ptr(), scale.data_ptr(), bias.data_ptr(), y.numel(),
                   C, cs, Act.from_relu(relu), stream)
    return out, y, mean, invstd, var_unb


def _bn_bwd_sums(lib, code, go, src, fmt, stream, *, train: bool, relu: bool, stats=None, dz=None):
    """``(sum_dz, sum_dz_xhat | None)`` over N, H, W (fp32, separate tensors: they become op outputs)."""
    N, C, H, W = src.shape
    M, HW = N * H * W, H * W
    cfg = lib.config()
    tiles = _ext.cdiv(M, cfg["RED_PIX"])
    cs, ps = _ext.pixel_layout(fmt, C, HW)
    part = torch.empty((2 if train else 1, tiles, C), dtype=torch.float32, device=src.device)
    mean, invstd, scale, bias = stats if stats is not None else (None,) * 4
    lib.bn_bwd_reduce(code, go.data_ptr(), src.data_ptr(), _ext.ptr(dz), _ext.ptr(mean), _ext.ptr(invstd),
                      _ext.ptr(scale), _ext.ptr(bias), part[0].data_ptr(), part[1].data_ptr() if train else 0, M, C,
                      HW, cs, ps, bool(train), Act.from_relu(relu), stream)
    sum_dz = torch.empty(C, dtype=torch.float32, device=src.device)
    sum_dzx = torch.empty(C, dtype=torch.float32, device=src.device) if train else None
    lib.sum_rows(part[0].data_ptr(), sum_dz.data_ptr(), part[1].data_ptr() if train else 0, _ext.ptr(sum_dzx), tiles,
                 C, stream)
    return sum_dz, sum_dzx


def conv_bn_act_train_backward(grad_out, x, weight, y, mean, invstd, gamma, beta, stride: int, padding: int,
                               groups: int, relu: bool, output_mask: Sequence[bool], group=None):
    """Gradients ``(dx, dweight, dgamma, dbeta)`` of the training-mode op (None where not asked). With
    ``group``, the input gradient uses the sums over all ranks; gamma/beta gradients stay local (as
    ``nn.SyncBatchNorm``'s: DDP averages them)."""
    code, dev = _check(x, weight, grad_out, y, mean, invstd, gamma, beta)
    geo = _geometry(x.shape, weight.shape, stride, padding, groups)
    C = geo[4]
    if tuple(y.shape) != (geo[0], C, geo[5], geo[6]) or y.dtype != x.dtype:
        raise ValueError(f"{_OP} (cuda backend): saved conv output has shape {tuple(y.shape)} / {y.dtype}")
    lib = _ext.lib()
    fmt = _ext.layout_of(y)
    y = _ext.dense(y, fmt)
    go = _ext.dense(grad_out.to(y.dtype), fmt)
    mean32, invstd32 = _per_channel("mean", mean, C), _per_channel("invstd", invstd, C)
    g32 = _per_channel("bn weight", gamma, C)
    scale = invstd32 if g32 is None else (g32 * invstd32).contiguous()
    bias = torch.zeros_like(mean32) if beta is None else _per_channel("bn bias", beta, C)
    dx = dw = None
    with _ext.launch_context(dev) as stream:
        sum_dz, sum_dzx = _bn_bwd_sums(lib, code, go, y, fmt, stream, train=True, relu=relu,
                                       stats=(mean32, invstd32, scale, bias))
        s_dz, s_dzx, inv_count = sum_dz, sum_dzx, 1.0 / (y.numel() // C)
        if group is not None:  # pre-divided global sums (the total count is a device tensor)
            g_dz, g_dzx, n = _dist.sync_sums(sum_dz, sum_dzx, y.numel() // C, group)
            s_dz, s_dzx, inv_count = (g_dz / n).contiguous(), (g_dzx / n).contiguous(), 1.0
        if output_mask[0] or output_mask[1]:
            dy = torch.empty_like(y)
            cs, _ = _ext.pixel_layout(fmt, C, geo[5] * geo[6])
            lib.bn_bwd_dy(code, go.data_ptr(), y.data_ptr(), dy.data_ptr(), mean32.data_ptr(), invstd32.data_ptr(),
                          scale.data_ptr(), bias.data_ptr(), s_dz.data_ptr(), s_dzx.data_ptr(), inv_count,
                          y.numel(), C, cs, Act.from_relu(relu), stream)
            if output_mask[0]:
                dx = _dgrad(lib, code, dy, weight, geo, x, stream)
            if output_mask[1]:
                _, dw = _wgrad(lib, code, x, dy, geo, stream, out_dtype=weight.dtype)
    dgamma = sum_dzx.to(gamma.dtype) if (gamma is not None and output_mask[2]) else None
    dbeta = sum_dz.to(beta.dtype) if (beta is not None and output_mask[3]) else None
    return dx, dw, dgamma, dbeta


# ------------------------------------------------------------------------------------------------
# Eval mode
# ------------------------------------------------------------------------------------------------
def _eval_affine(gamma, beta, running_mean, running_var, eps: float, C: int):
    """``(invstd, mean, scale, bias)`` fp32 of eval-mode BN: ``BN(y) = (y - mean) * scale + bias``."""
    rm, rv = _per_channel("running_mean", running_mean, C), _per_channel("running_var", running_var, C)
    invstd = torch.rsqrt(rv + eps)
    g32 = _per_channel("bn weight", gamma, C)
    scale = invstd if g32 is None else (g32 * invstd).contiguous()
    bias = torch.zeros_like(scale) if beta is None else _per_channel("bn bias", beta, C)
    return invstd, rm, scale, bias


def conv_bn_act_eval(x, weight, gamma, beta, running_mean, running_var, stride: int, padding: int, groups: int,
                     eps: float, relu: bool):
    """``act((conv(x) - running_mean) * gamma / sqrt(running_var + eps) + beta)`` in one launch."""
    code, dev = _check(x, weight, gamma, beta, running_mean, running_var)
    geo = _geometry(x.shape, weight.shape, stride, padding, groups)
    N, C, HO, WO = geo[0], geo[4], geo[5], geo[6]
    if N == 0:
        return _ref.conv_bn_act_eval(x, weight, gamma, beta, running_mean, running_var, stride, padding, groups, eps,
                                     relu)
    _, mean, scale, bias = _eval_affine(gamma, beta, running_mean, running_var, eps, C)
    out = torch.empty((N, C, HO, WO), dtype=x.dtype, device=dev, memory_format=out_memory_format(x))
    lib = _ext.lib()
    with _ext.launch_context(dev) as stream:
        _conv(lib, code, x, weight, geo, out, stream, post=(mean, scale, bias), relu=relu)
    return out


def conv_bn_act_eval_backward(grad_out, x, weight, out, gamma, beta, running_mean, running_var, stride: int,
                              padding: int, groups: int, eps: float, relu: bool, output_mask: Sequence[bool]):
    """Gradients ``(dx, dweight, dgamma, dbeta)`` of the eval-mode op (see reference.py for the algebra)."""
    code, dev = _check(x, weight, grad_out, out, gamma, beta, running_mean, running_var)
    geo = _geometry(x.shape, weight.shape, stride, padding, groups)
    C = geo[4]
    if geo[0] == 0:
        return _ref.conv_bn_act_eval_backward(grad_out, x, weight, out, gamma, beta, running_mean, running_var,
                                              stride, padding, groups, eps, relu, output_mask)
    lib = _ext.lib()
    invstd, rm, scale, _ = _eval_affine(gamma, beta, running_mean, running_var, eps, C)
    fmt = _ext.layout_of(out)
    out = _ext.dense(out, fmt)
    go = _ext.dense(grad_out.to(out.dtype), fmt)
    need_wf = output_mask[1] or (gamma is not None and output_mask[2])
    need_dz = output_mask[0] or need_wf
    dx = dw = dwf = dgamma = dbeta = None
    with _ext.launch_context(dev) as stream:
        dz = torch.empty_like(out) if need_dz else None
        sum_dz, _ = _bn_bwd_sums(lib, code, go, out, fmt, stream, train=False, relu=relu, dz=dz)
        if output_mask[0]:
            w_scaled = (weight.float() * scale[:, None, None, None]).to(weight.dtype)
            dx = _dgrad(lib, code, dz, w_scaled, geo, x, stream)
        if need_wf:
            dwf, dw = _wgrad(lib, code, x, dz, geo, stream, want_f32=True,
                             out_dtype=weight.dtype if output_mask[1] else None,
                             scale=scale if output_mask[1] else None)
    if gamma is not None and output_mask[2]:
        ds = (dwf * weight.float()).sum(dim=(1, 2, 3)) - rm * sum_dz
        dgamma = (ds * invstd).to(gamma.dtype)
    if beta is not None and output_mask[3]:
        dbeta = sum_dz.to(beta.dtype)
    return dx, dw, dgamma, dbeta


# ------------------------------------------------------------------------------------------------
# Running statistics
# ------------------------------------------------------------------------------------------------
def update_running_stats(running_mean, running_var, num_batches_tracked: Optional[torch.Tensor], mean, var_unb,
                         momentum: float, cumulative: bool) -> None:
    """In place: ``running = (1 - f) * running + f * batch``, ``f = momentum`` or ``1/num_batches_tracked``
    (read on the device: no host sync). fp32 buffers take the kernel; others the reference's torch ops."""
    _ext.check_tensors(_OP, (running_mean, running_var, num_batches_tracked, mean, var_unb))
    C = running_mean.numel()
    fast = (all(t.dtype == torch.float32 and t.is_contiguous() and t.numel() == C
                for t in (running_mean, running_var, mean, var_unb))
            and (not cumulative or (num_batches_tracked is not None and num_batches_tracked.dtype == torch.int64)))
    if not fast or C == 0:
        _ref.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var_unb, momentum, cumulative)
        return
    lib = _ext.lib()
    with _ext.launch_context(running_mean.device) as stream:
        lib.bn_running_update(running_mean.data_ptr(), running_var.data_ptr(),
                              _ext.ptr(num_batches_tracked) if cumulative else 0, mean.data_ptr(), var_unb.data_ptr(),
                              C, float(momentum), bool(cumulative), stream)
