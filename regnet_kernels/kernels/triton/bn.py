"""BatchNorm pieces around the fused conv: statistics finalize, running-stat update, normalize + act,
and the backward reductions (dReLU fused with the sums BatchNorm's backward needs).

Per-channel element-wise kernels view a 4-D tensor as (pixels m = n*HW + hw, channels c) with strides
``(s_n, s_c, s_hw)``; that covers NCHW and channels_last (both keep H and W collapsible). Tensors the
caller does not own are made collapsible first by :func:`pixel_strides`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.triton.common import act_grad, bn_act_tile, load_tile, pixel_tile, store_tile
from regnet_kernels.kernels.triton.runtime import launch, target
from regnet_kernels.kernels.triton import config as _cfg
from regnet_kernels.kernels.geometry import memory_format_of


@triton.jit
def _partial_rows(t0, T, M_TOTAL, ROWS_PER_TILE, C, part_mean_ptr, offs_c, c_ok, BLOCK_T: tl.constexpr):
    # Tiles t0 .. t0 + BLOCK_T of the conv's partials: (t, row counts n_t, mask, tile means), fp32
    t = t0 + tl.arange(0, BLOCK_T)
    t_ok = t < T
    cnt = tl.where(t_ok, tl.minimum(ROWS_PER_TILE, M_TOTAL - t * ROWS_PER_TILE), 0).to(tl.float32)
    msk = t_ok[:, None] & c_ok[None, :]
    mu = tl.load(part_mean_ptr + t[:, None] * C + offs_c[None, :], mask=msk, other=0.0)
    return t, cnt, msk, mu


@triton.jit
def bn_finalize_kernel(
    part_mean_ptr, part_m2_ptr, T, M_TOTAL, ROWS_PER_TILE, C,
    gamma_ptr, beta_ptr, eps,
    mean_ptr, invstd_ptr, var_unb_ptr, scale_ptr, bias_ptr,
    HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Combine per-tile (count, mean, M2) in two passes over the partials. Pass 1: the mean as
    # K + sum(n_t * (mean_t - K)) / n with K the first tile's mean, so the sum runs over small
    # deviations (a running merge would round the mean once per tile). Pass 2: the parallel-variance
    # formula M2 = sum(M2_t) + sum(n_t * (mean_t - mean)^2), no sum-of-squares cancellation.
    pid = tl.program_id(0)
    offs_c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    n_tot = M_TOTAL.to(tl.float32)
    k_ref = tl.load(part_mean_ptr + offs_c, mask=c_ok, other=0.0)
    s1 = tl.zeros((BLOCK_C,), tl.float32)
    for t0 in range(0, T, BLOCK_T):
        _, cnt, msk, mu = _partial_rows(t0, T, M_TOTAL, ROWS_PER_TILE, C, part_mean_ptr, offs_c, c_ok, BLOCK_T)
        s1 += tl.sum(tl.where(msk, cnt[:, None] * (mu - k_ref[None, :]), 0.0), axis=0)
    mean_a = k_ref + s1 / n_tot
    m2_a = tl.zeros((BLOCK_C,), tl.float32)
    for t0 in range(0, T, BLOCK_T):
        t, cnt, msk, mu = _partial_rows(t0, T, M_TOTAL, ROWS_PER_TILE, C, part_mean_ptr, offs_c, c_ok, BLOCK_T)
        m2 = tl.load(part_m2_ptr + t[:, None] * C + offs_c[None, :], mask=msk, other=0.0)
        dm = tl.where(msk, mu - mean_a[None, :], 0.0)
        m2_a += tl.sum(m2, axis=0) + tl.sum(cnt[:, None] * dm * dm, axis=0)
    n_a = n_tot
    var = m2_a / n_a
    invstd = 1.0 / tl.sqrt(var + eps)
    var_unb = m2_a / (n_a - 1.0)
    if HAS_GAMMA:
        g = tl.load(gamma_ptr + offs_c, mask=c_ok, other=1.0).to(tl.float32)
    else:
        g = tl.full((BLOCK_C,), 1.0, tl.float32)
    if HAS_BETA:
        b = tl.load(beta_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    else:
        b = tl.zeros((BLOCK_C,), tl.float32)
    scale = g * invstd
    tl.store(mean_ptr + offs_c, mean_a, mask=c_ok)
    tl.store(invstd_ptr + offs_c, invstd, mask=c_ok)
    tl.store(var_unb_ptr + offs_c, var_unb, mask=c_ok)
    tl.store(scale_ptr + offs_c, scale, mask=c_ok)
    tl.store(bias_ptr + offs_c, b, mask=c_ok)


@triton.jit
def bn_running_update_kernel(
    rmean_ptr, rvar_ptr, nbt_ptr, mean_ptr, var_unb_ptr, C, momentum,
    CUMULATIVE: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # running = (1 - f) * running + f * batch, f = momentum, or 1 / num_batches_tracked (cumulative
    # average; the counter was already incremented, as nn.BatchNorm2d does). On device: no host sync.
    pid = tl.program_id(0)
    offs_c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    if CUMULATIVE:
        f = 1.0 / tl.load(nbt_ptr).to(tl.float32)
    else:
        f = momentum
    rm = tl.load(rmean_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    rv = tl.load(rvar_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    m = tl.load(mean_ptr + offs_c, mask=c_ok, other=0.0)
    v = tl.load(var_unb_ptr + offs_c, mask=c_ok, other=0.0)
    tl.store(rmean_ptr + offs_c, (1.0 - f) * rm + f * m, mask=c_ok)
    tl.store(rvar_ptr + offs_c, (1.0 - f) * rv + f * v, mask=c_ok)


@triton.jit
def bn_act_kernel(
    y_ptr, out_ptr, mean_ptr, scale_ptr, bias_ptr, M, C, HW,
    s_yn, s_yc, s_yhw, s_on, s_oc, s_ohw,
    ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    c, c_ok, mask, n, hw = pixel_tile(tl.program_id(0), tl.program_id(1), M, C, HW, BLOCK_M, BLOCK_C)
    y = load_tile(y_ptr, n, hw, c, s_yn, s_yhw, s_yc, mask)
    z = bn_act_tile(y, c, c_ok, mean_ptr, scale_ptr, bias_ptr, True, ACT)
    store_tile(out_ptr, n, hw, c, s_on, s_ohw, s_oc, z, mask)


@triton.jit
def _grad_tile(pid_m, pid_c, dout_ptr, src_ptr, gate_ptr, dpool_ptr, M, C, HW, inv_hw, s_gn, s_gc, s_ghw,
               s_sn, s_sc, s_shw,
               HAS_GATE: tl.constexpr, HAS_DPOOL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    # A (pixels x channels) tile of the gradient reaching a BatchNorm + activation output, in fp32: dout, or
    # inside a fused block dout * gate[n, c] + dpooled[n, c] / HW (the squeeze-excitation backward); and the
    # same tile of the saved tensor src (fp32) it is taken back through.
    offs_c, c_ok, mask, n, hw = pixel_tile(pid_m, pid_c, M, C, HW, BLOCK_M, BLOCK_C)
    g = load_tile(dout_ptr, n, hw, offs_c, s_gn, s_ghw, s_gc, mask)
    if HAS_GATE:
        g = g * tl.load(gate_ptr + n[:, None] * C + offs_c[None, :], mask=mask, other=0.0)
    if HAS_DPOOL:
        g = g + tl.load(dpool_ptr + n[:, None] * C + offs_c[None, :], mask=mask, other=0.0) * inv_hw
    v = load_tile(src_ptr, n, hw, offs_c, s_sn, s_shw, s_sc, mask)
    return offs_c, c_ok, mask, n, hw, g, v


@triton.jit
def bn_bwd_reduce_kernel(
    dout_ptr, src_ptr, dz_ptr, mean_ptr, invstd_ptr, scale_ptr, bias_ptr, gate_ptr, dpool_ptr,
    part_dz_ptr, part_dzx_ptr, M, C, HW, inv_hw,
    s_gn, s_gc, s_ghw, s_sn, s_sc, s_shw, s_zn, s_zc, s_zhw,
    ACT: tl.constexpr, TRAIN: tl.constexpr, WRITE_DZ: tl.constexpr,
    HAS_GATE: tl.constexpr, HAS_DPOOL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dz = dout * act'(z): in training z = (y - mean)*scale + bias is recomputed from the saved pre-BN
    # conv output y (src); in eval src is the saved output (ReLU's mask out > 0 is z > 0; an activation
    # whose gradient needs z itself must recompute it here). Per-tile partial sums
    # of dz and (training) dz * xhat with xhat = (y - mean) * invstd: dbeta and dgamma, and the two
    # reductions BatchNorm's input gradient needs. Inside a fused block the incoming gradient first goes
    # through the squeeze-excitation scale: dout * gate[n, c] + dpooled[n, c] / HW.
    pid_m = tl.program_id(0)
    offs_c, c_ok, mask, n, hw, g, v = _grad_tile(
        pid_m, tl.program_id(1), dout_ptr, src_ptr, gate_ptr, dpool_ptr, M, C, HW, inv_hw, s_gn, s_gc, s_ghw,
        s_sn, s_sc, s_shw, HAS_GATE, HAS_DPOOL, BLOCK_M, BLOCK_C)
    if TRAIN:
        mu = tl.load(mean_ptr + offs_c, mask=c_ok, other=0.0)
        rs = tl.load(invstd_ptr + offs_c, mask=c_ok, other=0.0)
        if ACT:
            s = tl.load(scale_ptr + offs_c, mask=c_ok, other=0.0)
            b = tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0)
            g = act_grad(g, (v - mu[None, :]) * s[None, :] + b[None, :], ACT)
        xhat = (v - mu[None, :]) * rs[None, :]
        g = tl.where(mask, g, 0.0)
        tl.store(part_dzx_ptr + pid_m * C + offs_c, tl.sum(g * xhat, axis=0), mask=c_ok)
    else:
        g = act_grad(g, v, ACT)
        g = tl.where(mask, g, 0.0)
    tl.store(part_dz_ptr + pid_m * C + offs_c, tl.sum(g, axis=0), mask=c_ok)
    if WRITE_DZ:
        store_tile(dz_ptr, n, hw, offs_c, s_zn, s_zhw, s_zc, g, mask)


@triton.jit
def bn_bwd_dy_kernel(
    dout_ptr, y_ptr, dy_ptr, mean_ptr, invstd_ptr, scale_ptr, bias_ptr, sum_dz_ptr, sum_dzx_ptr,
    gate_ptr, dpool_ptr, inv_count, M, C, HW, inv_hw,
    s_gn, s_gc, s_ghw, s_yn, s_yc, s_yhw, s_dn, s_dc, s_dhw,
    ACT: tl.constexpr, HAS_GATE: tl.constexpr, HAS_DPOOL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Gradient w.r.t. the pre-BN conv output (batch statistics):
    #   dy = scale * (dz - mean(dz) - xhat * mean(dz * xhat)),   scale = gamma * invstd
    offs_c, c_ok, mask, n, hw, g, v = _grad_tile(
        tl.program_id(0), tl.program_id(1), dout_ptr, y_ptr, gate_ptr, dpool_ptr, M, C, HW, inv_hw, s_gn, s_gc,
        s_ghw, s_yn, s_yc, s_yhw, HAS_GATE, HAS_DPOOL, BLOCK_M, BLOCK_C)
    s = tl.load(scale_ptr + offs_c, mask=c_ok, other=0.0)
    mu = tl.load(mean_ptr + offs_c, mask=c_ok, other=0.0)
    rs = tl.load(invstd_ptr + offs_c, mask=c_ok, other=0.0)
    if ACT:
        b = tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0)
        g = act_grad(g, (v - mu[None, :]) * s[None, :] + b[None, :], ACT)
    a = tl.load(sum_dz_ptr + offs_c, mask=c_ok, other=0.0) * inv_count
    b = tl.load(sum_dzx_ptr + offs_c, mask=c_ok, other=0.0) * inv_count
    xhat = (v - mu[None, :]) * rs[None, :]
    dy = s[None, :] * (g - a[None, :] - xhat * b[None, :])
    store_tile(dy_ptr, n, hw, offs_c, s_dn, s_dhw, s_dc, dy, mask)


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------
def pixel_strides(t: torch.Tensor) -> tuple:
    """``(s_n, s_c, s_hw)`` of a 4-D tensor whose H and W collapse into one pixel axis."""
    sn, sc, sh, sw = t.stride()
    H, W = t.shape[2], t.shape[3]
    if H > 1 and W > 1 and sh != W * sw:
        raise ValueError("H and W are not collapsible")
    if W == 1:
        return sn, sc, sh
    return sn, sc, sw


def collapsible(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` itself if its H, W collapse, else a copy in ``like``'s memory format."""
    try:
        pixel_strides(t)
        return t
    except ValueError:
        return t.contiguous(memory_format=memory_format_of(like))


def bn_finalize(part_mean, part_m2, m_total: int, rows_per_tile: int, gamma, beta, eps: float):
    """Per-channel fp32 ``(mean, invstd, var_unbiased, scale, bias)`` from the conv's partials, where
    ``BN(y) = (y - mean) * scale + bias`` (``scale = gamma * invstd``, ``bias = beta``)."""
    T, C = part_mean.shape
    dev = part_mean.device
    outs = [torch.empty(C, device=dev, dtype=torch.float32) for _ in range(5)]
    BT, BC, nw, ns = _cfg.bn_finalize_config(T, C, target(dev))
    launch(bn_finalize_kernel, (triton.cdiv(C, BC),), dev)(
        part_mean, part_m2, T, m_total, rows_per_tile, C,
        gamma if gamma is not None else part_mean, beta if beta is not None else part_mean, float(eps),
        *outs,
        HAS_GAMMA=gamma is not None, HAS_BETA=beta is not None, BLOCK_T=BT, BLOCK_C=BC,
        num_warps=nw, num_stages=ns,
    )
    return tuple(outs)


def bn_running_update(running_mean, running_var, num_batches_tracked, mean, var_unb, momentum: float,
                      cumulative: bool) -> None:
    C = running_mean.numel()
    _, BC, nw, ns = _cfg.bn_running_update_config(C, target(running_mean.device))
    launch(bn_running_update_kernel, (triton.cdiv(C, BC),), running_mean.device)(
        running_mean, running_var, num_batches_tracked if cumulative else running_mean,
        mean, var_unb, C, float(momentum), CUMULATIVE=cumulative, BLOCK_C=BC, num_warps=nw, num_stages=ns,
    )


def bn_act(y: torch.Tensor, affine, act: Act, out: torch.Tensor = None) -> torch.Tensor:
    """``act((y - mean) * scale + bias)`` with ``affine = (mean, scale, bias)``."""
    N, C, H, W = y.shape
    if out is None:
        out = torch.empty_like(y)
    M = N * H * W
    BM, BC, nw, ns = _cfg.ew_config(M, C, target(y.device))
    launch(bn_act_kernel, (triton.cdiv(M, BM), triton.cdiv(C, BC)), y.device)(
        y, out, *affine, M, C, H * W, *pixel_strides(y), *pixel_strides(out),
        ACT=int(act), BLOCK_M=BM, BLOCK_C=BC, num_warps=nw, num_stages=ns,
    )
    return out


def bn_bwd_reduce(dout, src, *, train: bool, act: Act, mean=None, invstd=None, scale=None, bias=None,
                  write_dz: bool = False, gate=None, dpooled=None):
    """Returns ``(sum_dz, sum_dz_xhat | None, dz | None)``, sums in fp32 over N, H, W.

    ``gate`` / ``dpooled`` ((N, C) fp32): the incoming gradient is ``dout * gate + dpooled / HW`` (the
    squeeze-excitation backward) before the activation's gradient.
    """
    N, C, H, W = src.shape
    M = N * H * W
    dout = collapsible(dout, src)
    BM, BC, nw, ns = _cfg.ew_config(M, C, target(src.device))
    T = triton.cdiv(M, BM)
    part = torch.empty((2 if train else 1, T, C), device=src.device, dtype=torch.float32)
    dz = torch.empty_like(src, dtype=dout.dtype) if write_dz else None
    f32 = part  # placeholder pointer for unused per-channel operands
    launch(bn_bwd_reduce_kernel, (T, triton.cdiv(C, BC)), src.device)(
        dout, src, dz if write_dz else dout,
        mean if mean is not None else f32, invstd if invstd is not None else f32,
        scale if scale is not None else f32, bias if bias is not None else f32,
        gate if gate is not None else f32, dpooled if dpooled is not None else f32,
        part[0], part[1] if train else part[0], M, C, H * W, 1.0 / (H * W),
        *pixel_strides(dout), *pixel_strides(src), *pixel_strides(dz if write_dz else dout),
        ACT=int(act), TRAIN=train, WRITE_DZ=write_dz, HAS_GATE=gate is not None, HAS_DPOOL=dpooled is not None,
        BLOCK_M=BM, BLOCK_C=BC, num_warps=nw, num_stages=ns,
    )
    # separate reductions: the sums become op outputs, which must not share storage
    return part[0].sum(0), (part[1].sum(0) if train else None), dz


def bn_bwd_dy(dout, y, mean, invstd, scale, bias, sum_dz, sum_dzx, act: Act, count: int, gate=None,
              dpooled=None, out_dtype=None) -> torch.Tensor:
    N, C, H, W = y.shape
    M = N * H * W
    dout = collapsible(dout, y)
    dy = torch.empty_like(y, dtype=out_dtype or dout.dtype)
    BM, BC, nw, ns = _cfg.ew_config(M, C, target(y.device))
    launch(bn_bwd_dy_kernel, (triton.cdiv(M, BM), triton.cdiv(C, BC)), y.device)(
        dout, y, dy, mean, invstd, scale, bias, sum_dz, sum_dzx,
        gate if gate is not None else mean, dpooled if dpooled is not None else mean,
        1.0 / count, M, C, H * W, 1.0 / (H * W),
        *pixel_strides(dout), *pixel_strides(y), *pixel_strides(dy),
        ACT=int(act), HAS_GATE=gate is not None, HAS_DPOOL=dpooled is not None, BLOCK_M=BM, BLOCK_C=BC,
        num_warps=nw, num_stages=ns,
    )
    return dy
