"""Residual tail of a RegNet bottleneck in training mode: ``out = relu(BN_c(y_c) + shortcut)`` with the
shortcut ``x`` (identity) or ``BN_p(y_p)`` (projection), and its backward (dReLU fused with the
BatchNorm reductions of both branches).

Eval mode needs none of this: the tail rides in conv c's epilogue (``residual=`` of ``conv2d_fwd``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from regnet_kernels.kernels.triton.runtime import launch, target
from regnet_kernels.kernels.triton import config as _cfg
from regnet_kernels.kernels.triton.bn import collapsible, pixel_strides
from regnet_kernels.kernels.triton.common import ACT_RELU, act_grad, apply_act, store_tile
from regnet_kernels.kernels.triton.common import bn_vec as _vec, load_tile as _ld, pixel_tile as _tile


@triton.jit
def block_tail_fwd_kernel(
    yc_ptr, sc_ptr, out_ptr, mc_ptr, kc_ptr, bc_ptr, mp_ptr, kp_ptr, bp_ptr,
    M, C, HW,
    s_cn, s_cc, s_chw, s_sn, s_sc, s_shw, s_on, s_oc, s_ohw,
    HAS_PROJ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    c, c_ok, mask, n, hw = _tile(tl.program_id(0), tl.program_id(1), M, C, HW, BLOCK_M, BLOCK_C)
    z = (_ld(yc_ptr, n, hw, c, s_cn, s_chw, s_cc, mask) - _vec(mc_ptr, c, c_ok)) * _vec(kc_ptr, c, c_ok) \
        + _vec(bc_ptr, c, c_ok)
    s = _ld(sc_ptr, n, hw, c, s_sn, s_shw, s_sc, mask)
    if HAS_PROJ:
        s = (s - _vec(mp_ptr, c, c_ok)) * _vec(kp_ptr, c, c_ok) + _vec(bp_ptr, c, c_ok)
    out = apply_act(z + s, ACT_RELU)  # the block tail is ReLU by definition
    store_tile(out_ptr, n, hw, c, s_on, s_ohw, s_oc, out, mask)


@triton.jit
def _tail_grad(dout_ptr, yc_ptr, sc_ptr, n, hw, c, c_ok, mask,
               mc_ptr, kc_ptr, bc_ptr, ic_ptr, mp_ptr, kp_ptr, bp_ptr, ip_ptr,
               s_gn, s_gc, s_ghw, s_cn, s_cc, s_chw, s_sn, s_sc, s_shw, HAS_PROJ: tl.constexpr):
    # recompute the pre-activation, mask the incoming gradient, and return (g, xhat_c, xhat_p | s)
    yc = _ld(yc_ptr, n, hw, c, s_cn, s_chw, s_cc, mask)
    mc = _vec(mc_ptr, c, c_ok)
    z = (yc - mc) * _vec(kc_ptr, c, c_ok) + _vec(bc_ptr, c, c_ok)
    s = _ld(sc_ptr, n, hw, c, s_sn, s_shw, s_sc, mask)
    xp = s
    if HAS_PROJ:
        mp = _vec(mp_ptr, c, c_ok)
        xp = (s - mp) * _vec(ip_ptr, c, c_ok)
        s = (s - mp) * _vec(kp_ptr, c, c_ok) + _vec(bp_ptr, c, c_ok)
    g = _ld(dout_ptr, n, hw, c, s_gn, s_ghw, s_gc, mask)
    g = tl.where(mask, act_grad(g, z + s, ACT_RELU), 0.0)
    xc = (yc - mc) * _vec(ic_ptr, c, c_ok)
    return g, xc, xp


@triton.jit
def block_tail_bwd_reduce_kernel(
    dout_ptr, yc_ptr, sc_ptr, part_ptr,
    mc_ptr, kc_ptr, bc_ptr, ic_ptr, mp_ptr, kp_ptr, bp_ptr, ip_ptr,
    M, C, HW, T,
    s_gn, s_gc, s_ghw, s_cn, s_cc, s_chw, s_sn, s_sc, s_shw,
    HAS_PROJ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # per-tile partials: part[0] = sum g, part[1] = sum g * xhat_c, part[2] = sum g * xhat_p
    pid_m = tl.program_id(0)
    c, c_ok, mask, n, hw = _tile(pid_m, tl.program_id(1), M, C, HW, BLOCK_M, BLOCK_C)
    g, xc, xp = _tail_grad(dout_ptr, yc_ptr, sc_ptr, n, hw, c, c_ok, mask,
                           mc_ptr, kc_ptr, bc_ptr, ic_ptr, mp_ptr, kp_ptr, bp_ptr, ip_ptr,
                           s_gn, s_gc, s_ghw, s_cn, s_cc, s_chw, s_sn, s_sc, s_shw, HAS_PROJ)
    row = pid_m * C + c
    tl.store(part_ptr + row, tl.sum(g, axis=0), mask=c_ok)
    tl.store(part_ptr + T * C + row, tl.sum(g * xc, axis=0), mask=c_ok)
    if HAS_PROJ:
        tl.store(part_ptr + 2 * T * C + row, tl.sum(g * xp, axis=0), mask=c_ok)


@triton.jit
def block_tail_bwd_dy_kernel(
    dout_ptr, yc_ptr, sc_ptr, dyc_ptr, dsc_ptr, sums_ptr,
    mc_ptr, kc_ptr, bc_ptr, ic_ptr, mp_ptr, kp_ptr, bp_ptr, ip_ptr,
    inv_count, M, C, HW,
    s_gn, s_gc, s_ghw, s_cn, s_cc, s_chw, s_sn, s_sc, s_shw, s_dn, s_dc, s_dhw, s_en, s_ec, s_ehw,
    HAS_PROJ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dy_c = scale_c * (g - mean(g) - xhat_c * mean(g * xhat_c)); the shortcut gets dy_p likewise, or g
    c, c_ok, mask, n, hw = _tile(tl.program_id(0), tl.program_id(1), M, C, HW, BLOCK_M, BLOCK_C)
    g, xc, xp = _tail_grad(dout_ptr, yc_ptr, sc_ptr, n, hw, c, c_ok, mask,
                           mc_ptr, kc_ptr, bc_ptr, ic_ptr, mp_ptr, kp_ptr, bp_ptr, ip_ptr,
                           s_gn, s_gc, s_ghw, s_cn, s_cc, s_chw, s_sn, s_sc, s_shw, HAS_PROJ)
    a = _vec(sums_ptr, c, c_ok) * inv_count
    dyc = _vec(kc_ptr, c, c_ok) * (g - a - xc * _vec(sums_ptr + C, c, c_ok) * inv_count)
    store_tile(dyc_ptr, n, hw, c, s_dn, s_dhw, s_dc, dyc, mask)
    if HAS_PROJ:
        d = _vec(kp_ptr, c, c_ok) * (g - a - xp * _vec(sums_ptr + 2 * C, c, c_ok) * inv_count)
    else:
        d = g
    store_tile(dsc_ptr, n, hw, c, s_en, s_ehw, s_ec, d, mask)


# ------------------------------------------------------------------------------------------------
# Launchers. ``bn_c`` / ``bn_p`` are (mean, scale, bias, invstd) fp32 per-channel tuples.
# ------------------------------------------------------------------------------------------------
def tail_forward(yc: torch.Tensor, shortcut: torch.Tensor, bn_c, bn_p=None) -> torch.Tensor:
    N, C, H, W = yc.shape
    shortcut = collapsible(shortcut, yc)
    out = torch.empty_like(yc)
    M = N * H * W
    BM, BC, nw, ns = _cfg.ew_config(M, C, target(yc.device))
    p = bn_p[:3] if bn_p is not None else bn_c[:3]
    launch(block_tail_fwd_kernel, (triton.cdiv(M, BM), triton.cdiv(C, BC)), yc.device)(
        yc, shortcut, out, *bn_c[:3], *p, M, C, H * W,
        *pixel_strides(yc), *pixel_strides(shortcut), *pixel_strides(out),
        HAS_PROJ=bn_p is not None, BLOCK_M=BM, BLOCK_C=BC, num_warps=nw, num_stages=ns,
    )
    return out


def tail_backward(dout: torch.Tensor, yc: torch.Tensor, shortcut: torch.Tensor, bn_c, bn_p=None):
    """Returns ``(dy_c, d_shortcut, sums)``: ``d_shortcut`` is ``dy_p`` with a projection, else the
    gradient reaching the identity shortcut; ``sums`` (3, C) fp32 = (sum g, sum g xhat_c, sum g xhat_p),
    which are also ``dbeta`` and ``dgamma`` of both BatchNorms."""
    N, C, H, W = yc.shape
    M = N * H * W
    dout = collapsible(dout, yc)
    shortcut = collapsible(shortcut, yc)
    BM, BC, nw, ns = _cfg.ew_config(M, C, target(yc.device))
    T = triton.cdiv(M, BM)
    has_proj = bn_p is not None
    p = bn_p if has_proj else bn_c
    part = torch.zeros((3, T, C), device=yc.device, dtype=torch.float32)
    grid = (T, triton.cdiv(C, BC))
    strides = (*pixel_strides(dout), *pixel_strides(yc), *pixel_strides(shortcut))
    launch(block_tail_bwd_reduce_kernel, grid, yc.device)(
        dout, yc, shortcut, part, *bn_c, *p, M, C, H * W, T, *strides,
        HAS_PROJ=has_proj, BLOCK_M=BM, BLOCK_C=BC, num_warps=nw, num_stages=ns,
    )
    sums = part.sum(1)
    dyc = torch.empty_like(yc)
    dsc = torch.empty_like(yc) if has_proj else torch.empty_like(shortcut, dtype=yc.dtype)
    launch(block_tail_bwd_dy_kernel, grid, yc.device)(
        dout, yc, shortcut, dyc, dsc, sums, *bn_c, *p, 1.0 / M, M, C, H * W, *strides,
        *pixel_strides(dyc), *pixel_strides(dsc),
        HAS_PROJ=has_proj, BLOCK_M=BM, BLOCK_C=BC, num_warps=nw, num_stages=ns,
    )
    return dyc, dsc, sums
