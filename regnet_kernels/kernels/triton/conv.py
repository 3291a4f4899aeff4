"""Grouped 2-D convolution as implicit GEMM in Triton: forward, data-gradient and weight-gradient.

All three kernels work on NHWC *logic* with arbitrary strides, so NCHW, channels_last and
non-contiguous tensors are read in place. Small groups are packed block-diagonally into one
tensor-core tile: a tile of ``BLOCK_N`` output channels spans groups ``g_lo..g_hi``; its reduction
runs over the input channels of exactly those groups, and the weight operand is zero where the input
channel's group differs from the output channel's. For group width 8 and ``BLOCK_N = 32`` that is
four groups in one 32-wide MMA instead of four 16-padded ones.

Fusion hooks:
- prologue (forward and weight-gradient, on the conv *input*): ``pre_act((x - pre_mean[c]) * pre_scale[c]
  + pre_bias[c]) * gate[n, c]`` so that a previous BatchNorm + activation and the squeeze-excitation scale are
  applied as the input is loaded and never written;
- forward epilogue: eval BatchNorm straight from its buffers,
  ``act((acc - running_mean[c]) * gamma[c] / sqrt(running_var[c] + eps) + beta[c])`` in fp32 (no separate
  kernels to fold the parameters: a launch per BN matters at small batch), and
  per-tile BatchNorm statistics (tile mean and sum of squared deviations about it, combined later with
  the parallel-variance formula, so large-mean inputs do not cancel).

BatchNorm is always applied as ``(v - mean) * scale + bias``, never as ``v * scale + (bias - mean *
scale)``: the folded form cancels catastrophically when ``|mean| >> std`` (mean 300, std 1 loses about
four digits in fp32 and flips ReLU masks).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.triton.common import apply_act, bn_act_tile, cast_to
from regnet_kernels.kernels.triton.runtime import dot_in_fp32, ieee_dot, launch, target
from regnet_kernels.kernels.triton import config as _cfg
from regnet_kernels.kernels.geometry import conv_out_size, memory_format_of


@triton.jit
def _apply_prologue(a, a_mask, ci, ci_ok, n_idx, pre_mean_ptr, pre_scale_ptr, pre_bias_ptr, gate_ptr, C_IN,
                    PRE_AFFINE: tl.constexpr, PRE_ACT: tl.constexpr, PRE_GATE: tl.constexpr):
    # a: [ROWS, BLOCK_K] raw input values; returns fp32 values of the *effective* conv input, with
    # zeros wherever the load was masked (conv zero-padding applies to the effective input).
    af = bn_act_tile(a.to(tl.float32), ci, ci_ok, pre_mean_ptr, pre_scale_ptr, pre_bias_ptr, PRE_AFFINE, PRE_ACT)
    if PRE_GATE:
        g = tl.load(gate_ptr + n_idx[:, None] * C_IN + ci[None, :], mask=a_mask, other=0.0)
        af = af * g
    return tl.where(a_mask, af, 0.0)


@triton.jit
def _mma(a, b, acc, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    if DOT_F32:
        if IEEE:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _block_diag_dot(a, b, acc, k_grp, n_grp, g_lo, g_hi, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    # acc += a @ b with b block-diagonal over groups (zero where the k and n groups differ). A NaN or Inf
    # in ``a`` times such a zero is NaN and would leak into another group's outputs, which eager's grouped
    # conv never sees; so when the tile spans several groups and ``a`` holds a non-finite value (only on
    # non-finite inputs), the product is taken group by group.
    if g_hi > g_lo:
        n_bad = tl.sum(tl.sum(tl.where(tl.abs(a.to(tl.float32)) < float("inf"), 0, 1), axis=1), axis=0)
        if n_bad > 0:
            for g in range(g_lo, g_hi + 1):
                a_g = tl.where((k_grp == g)[None, :], a, tl.zeros_like(a))
                part = _mma(a_g, b, tl.zeros_like(acc), DOT_F32, IEEE)
                acc += tl.where((n_grp == g)[None, :], part, 0.0)
        else:
            acc = _mma(a, b, acc, DOT_F32, IEEE)
    else:
        acc = _mma(a, b, acc, DOT_F32, IEEE)
    return acc


@triton.jit
def _aligned(v, VEC: tl.constexpr):
    # ``v``, which the launcher checked is a multiple of VEC, in a form whose divisibility Triton can see
    # (a multiply by the constant), so that channel vectors of VEC elements load as one 16-byte access.
    if VEC > 1:
        v = (v // VEC) * VEC
    return v


@triton.jit
def _pixels(offs, H, W):
    # (n, h, w) of flat pixel indices over an N x H x W map
    w = offs % W
    t = offs // W
    return t // H, t % H, w


@triton.jit
def _group_span(c0, BLOCK: tl.constexpr, C, C_G):
    # first and last group that the channel tile [c0, c0 + BLOCK) of C channels in groups of C_G spans
    return c0 // C_G, (tl.minimum(c0 + BLOCK, C) - 1) // C_G


@triton.jit
def _gemm_tile(H, W, N, COLS, COL_G, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # The forward / data-gradient output tile: rows = pixels (n, h, w) of an N x H x W map, columns =
    # channels (COLS of them in groups of COL_G); the groups the columns span decide the reduction range.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < N * H * W
    n_idx, h, w = _pixels(offs_m, H, W)
    n0 = tl.program_id(1) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_ok = offs_n < COLS
    g_lo, g_hi = _group_span(n0, BLOCK_N, COLS, COL_G)
    return offs_m, m_ok, n_idx, h, w, offs_n, n_ok, g_lo, g_hi


@triton.jit
def conv_fwd_kernel(
    x_ptr, w_ptr, y_ptr,
    pre_mean_ptr, pre_scale_ptr, pre_bias_ptr, gate_ptr,
    bn_rm_ptr, bn_rv_ptr, bn_g_ptr, bn_b_ptr, bn_eps,
    res_ptr,
    part_mean_ptr, part_m2_ptr,
    N, C_IN, H, W, C_OUT, HO, WO,
    sxn, sxc, sxh, sxw,
    syn, syc, syh, syw,
    srn, src, srh, srw,
    swo, swi, swh, sww,
    CIN_G, COUT_G,
    STRIDE: tl.constexpr, PAD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    PRE_AFFINE: tl.constexpr, PRE_ACT: tl.constexpr, PRE_GATE: tl.constexpr,
    POST_BN: tl.constexpr, BN_GAMMA: tl.constexpr, BN_BETA: tl.constexpr,
    HAS_RES: tl.constexpr, ACT: tl.constexpr, STATS: tl.constexpr,
    DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    VEC: tl.constexpr = 1, VEC_W: tl.constexpr = 1, VEC_Y: tl.constexpr = 1,
):
    # The weight (C_OUT, CIN_G, KH, KW) is read in place through its strides: it is small and stays in
    # L2, and a per-call re-layout would cost a launch per conv.
    # VEC (VEC_W): elements of a 16-byte vector along the input channels of x (of the weight), or 1. The
    # launcher passes more than 1 only where those channels are contiguous and every other stride of the
    # tensor, and the group width CIN_G, are multiples of it; then each channel range starts on a vector
    # and the channel masks are constant per vector, and the operand loads are vectorised. VEC_Y: the same
    # along the output channels of y and the residual (C_OUT and their other strides multiples of it).
    pid_m = tl.program_id(0)
    C_OUT = _aligned(C_OUT, VEC_Y)
    syn, syh, syw = _aligned(syn, VEC_Y), _aligned(syh, VEC_Y), _aligned(syw, VEC_Y)
    srn, srh, srw = _aligned(srn, VEC_Y), _aligned(srh, VEC_Y), _aligned(srw, VEC_Y)
    # rows of the implicit GEMM = output pixels (n, ho, wo), columns = output channels
    offs_m, m_ok, n_idx, ho, wo, offs_n, n_ok, g_lo, g_hi = _gemm_tile(HO, WO, N, C_OUT, COUT_G, BLOCK_M, BLOCK_N)
    cig = _aligned(CIN_G, VEC)
    ci_start = g_lo * cig
    ci_end = (g_hi + 1) * cig
    g_of_n = offs_n // COUT_G
    w_col = w_ptr + offs_n[None, :] * _aligned(swo, VEC_W)

    x_base = x_ptr + n_idx.to(tl.int64) * _aligned(sxn, VEC)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in tl.static_range(KH):
        hi = ho * STRIDE - PAD + kh
        h_ok = (hi >= 0) & (hi < H)
        for kw in tl.static_range(KW):
            wi = wo * STRIDE - PAD + kw
            row_ok = m_ok & h_ok & (wi >= 0) & (wi < W)
            x_row = x_base + hi * _aligned(sxh, VEC) + wi * _aligned(sxw, VEC)
            w_tap = w_col + kh * _aligned(swh, VEC_W) + kw * _aligned(sww, VEC_W)
            for k0 in range(ci_start, ci_end, BLOCK_K):
                ci = k0 + tl.arange(0, BLOCK_K)
                ci_ok = ci < ci_end
                a_mask = row_ok[:, None] & ci_ok[None, :]
                a = tl.load(x_row[:, None] + ci[None, :] * sxc, mask=a_mask, other=0.0)
                if PRE_AFFINE or PRE_ACT or PRE_GATE:
                    a = _apply_prologue(a, a_mask, ci, ci_ok, n_idx, pre_mean_ptr, pre_scale_ptr, pre_bias_ptr,
                                        gate_ptr, _aligned(C_IN, VEC), PRE_AFFINE, PRE_ACT, PRE_GATE)
                    a = cast_to(a, x_ptr.dtype.element_ty)
                # block-diagonal weight tile: zero where input and output channel groups differ
                ci_l = ci[:, None] - g_of_n[None, :] * cig
                b_mask = ci_ok[:, None] & n_ok[None, :] & (ci_l >= 0) & (ci_l < cig)
                b = tl.load(w_tap + ci_l * swi, mask=b_mask, other=0.0)
                acc = _block_diag_dot(a, b, acc, ci // CIN_G, g_of_n, g_lo, g_hi, DOT_F32, IEEE)

    if POST_BN:
        rm = tl.load(bn_rm_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        ps = 1.0 / tl.sqrt(tl.load(bn_rv_ptr + offs_n, mask=n_ok, other=1.0).to(tl.float32) + bn_eps)
        if BN_GAMMA:
            ps = ps * tl.load(bn_g_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        acc = (acc - rm[None, :]) * ps[None, :]
        if BN_BETA:
            acc += tl.load(bn_b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RES:  # residual add (the block tail in eval mode), before the final activation
        r_row = res_ptr + n_idx.to(tl.int64) * srn + ho * srh + wo * srw
        acc += tl.load(r_row[:, None] + offs_n[None, :] * src, mask=mask, other=0.0).to(tl.float32)
    acc = apply_act(acc, ACT)
    out = cast_to(acc, y_ptr.dtype.element_ty)
    y_row = y_ptr + n_idx.to(tl.int64) * syn + ho * syh + wo * syw
    tl.store(y_row[:, None] + offs_n[None, :] * syc, out, mask=mask)

    if STATS:
        # Statistics of the values as stored (what eager BatchNorm would read back), shifted by the
        # tile's first row so that the sum runs over small deviations: a plain sum of ~100 values of
        # mean 300 loses several fp32 ulps of the mean. Row 0 is valid in every tile.
        v = tl.where(mask, out.to(tl.float32), 0.0)
        cnt = tl.sum(m_ok.to(tl.float32), axis=0)
        rows = tl.arange(0, BLOCK_M)
        first = tl.sum(tl.where((rows == 0)[:, None], v, 0.0), axis=0)
        d = tl.where(mask, v - first[None, :], 0.0)
        dm = tl.sum(d, axis=0) / cnt
        t_mean = first + dm
        e = tl.where(mask, d - dm[None, :], 0.0)
        t_m2 = tl.sum(e * e, axis=0)
        tl.store(part_mean_ptr + pid_m * C_OUT + offs_n, t_mean, mask=n_ok)
        tl.store(part_m2_ptr + pid_m * C_OUT + offs_n, t_m2, mask=n_ok)


# Its parameter list has conv_fwd_kernel's shape (four tensors' strides, the group widths, the geometry
# constexprs): other tensors, so the two signatures stay written out.
@triton.jit
def conv_dgrad_kernel(
    dy_ptr, w_ptr, dx_ptr, acc_ptr,
    N, C_IN, H, W, C_OUT, HO, WO,
    sdn, sdc, sdh, sdw,
    sxn, sxc, sxh, sxw,
    san, sac, sah, saw,
    swo, swi, swh, sww,
    CIN_G, COUT_G,
    STRIDE: tl.constexpr, PAD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HAS_ACC: tl.constexpr,
    DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    VEC: tl.constexpr = 1, VEC_W: tl.constexpr = 1, VEC_DX: tl.constexpr = 1,
):
    # dx[n, ci, h, w] = sum_{kh, kw, co in group(ci)} dy[n, co, ho, wo] * W[co, ci_l, kh, kw]
    # with h = ho*STRIDE - PAD + kh. Rows = input pixels, columns = input channels, reduction over
    # (kh, kw, output channels of the spanned groups). The weight is read in place through its strides.
    # VEC: 16-byte vector along dy's channels (COUT_G and dy's other strides multiples of it), VEC_W along
    # the weight's input channels (CIN_G and the weight's other strides multiples of it), VEC_DX along the
    # channels of dx and the added gradient (C_IN and their other strides multiples of it), else 1.
    C_IN = _aligned(C_IN, max(VEC_W, VEC_DX))
    sxn, sxh, sxw = _aligned(sxn, VEC_DX), _aligned(sxh, VEC_DX), _aligned(sxw, VEC_DX)
    san, sah, saw = _aligned(san, VEC_DX), _aligned(sah, VEC_DX), _aligned(saw, VEC_DX)
    offs_m, m_ok, n_idx, h_i, w_i, offs_n, n_ok, g_lo, g_hi = _gemm_tile(H, W, N, C_IN, CIN_G, BLOCK_M, BLOCK_N)
    cog = _aligned(COUT_G, VEC)
    co_start = g_lo * cog
    co_end = (g_hi + 1) * cog
    cig = _aligned(CIN_G, VEC_W)

    dy_base = dy_ptr + n_idx.to(tl.int64) * _aligned(sdn, VEC)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kh in tl.static_range(KH):
        th = h_i + PAD - kh
        th_c = tl.maximum(th, 0)
        ho = th_c // STRIDE
        h_ok = (th >= 0) & (th_c % STRIDE == 0) & (ho < HO)
        for kw in tl.static_range(KW):
            tw = w_i + PAD - kw
            tw_c = tl.maximum(tw, 0)
            wo = tw_c // STRIDE
            row_ok = m_ok & h_ok & (tw >= 0) & (tw_c % STRIDE == 0) & (wo < WO)
            dy_row = dy_base + ho * _aligned(sdh, VEC) + wo * _aligned(sdw, VEC)
            w_tap = w_ptr + kh * _aligned(swh, VEC_W) + kw * _aligned(sww, VEC_W)
            for k0 in range(co_start, co_end, BLOCK_K):
                co = k0 + tl.arange(0, BLOCK_K)
                co_ok = co < co_end
                a = tl.load(dy_row[:, None] + co[None, :] * sdc, mask=row_ok[:, None] & co_ok[None, :], other=0.0)
                ci_l = offs_n[None, :] - (co[:, None] // COUT_G) * cig
                b_mask = co_ok[:, None] & n_ok[None, :] & (ci_l >= 0) & (ci_l < cig)
                b = tl.load(w_tap + co[:, None] * _aligned(swo, VEC_W) + ci_l * swi, mask=b_mask, other=0.0)
                acc = _block_diag_dot(a, b, acc, co // COUT_G, offs_n // CIN_G, g_lo, g_hi, DOT_F32, IEEE)

    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_ACC:  # add another gradient flowing into the same tensor (e.g. the shortcut branch)
        a_row = acc_ptr + n_idx.to(tl.int64) * san + h_i * sah + w_i * saw
        acc += tl.load(a_row[:, None] + offs_n[None, :] * sac, mask=mask, other=0.0).to(tl.float32)
    dx_row = dx_ptr + n_idx.to(tl.int64) * sxn + h_i * sxh + w_i * sxw
    tl.store(dx_row[:, None] + offs_n[None, :] * sxc, cast_to(acc, dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def conv_wgrad_kernel(
    x_ptr, dy_ptr, ws_ptr,
    pre_mean_ptr, pre_scale_ptr, pre_bias_ptr, gate_ptr,
    N, C_IN, H, W, C_OUT, HO, WO,
    sxn, sxc, sxh, sxw,
    sdn, sdc, sdh, sdw,
    CIN_G, COUT_G, M_PER_SPLIT,
    STRIDE: tl.constexpr, PAD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    PRE_AFFINE: tl.constexpr, PRE_ACT: tl.constexpr, PRE_GATE: tl.constexpr,
    DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_M: tl.constexpr,
    VEC: tl.constexpr = 1, VEC_DY: tl.constexpr = 1,
):
    # dW[co, ci_l, kh, kw] = sum_{n, ho, wo} dy[n, co, ho, wo] * x_eff[n, ci, ho*S - P + kh, wo*S - P + kw]
    # Tile = (BLOCK_CO output channels) x (BLOCK_CI input channels of the spanned groups) for one tap;
    # the pixel reduction is split over grid axis 2 (split-K) into an fp32 workspace
    # ws[split, co, ci_l, kh, kw], summed afterwards (deterministic, no atomics).
    # VEC (VEC_DY): 16-byte vector along x's (dy's) channels, where CIN_G (C_OUT) and the tensor's other
    # strides are multiples of it, else 1 (see conv_fwd_kernel).
    pid_co = tl.program_id(0)
    pid_ci = tl.program_id(1)
    pid_z = tl.program_id(2)
    tap = pid_z % (KH * KW)
    split = pid_z // (KH * KW)
    kh = tap // KW
    kw = tap % KW
    M = N * HO * WO

    co0 = pid_co * BLOCK_CO
    offs_co = co0 + tl.arange(0, BLOCK_CO)
    co_ok = offs_co < _aligned(C_OUT, VEC_DY)
    g_lo, g_hi = _group_span(co0, BLOCK_CO, C_OUT, COUT_G)
    cig = _aligned(CIN_G, VEC)
    ci_start = g_lo * cig + pid_ci * BLOCK_CI
    ci_end = (g_hi + 1) * cig
    ci = ci_start + tl.arange(0, BLOCK_CI)
    ci_ok = ci < ci_end

    acc = tl.zeros((BLOCK_CO, BLOCK_CI), dtype=tl.float32)
    if ci_start < ci_end:
        m_lo = split * M_PER_SPLIT
        m_hi = tl.minimum(m_lo + M_PER_SPLIT, M)
        for m0 in range(m_lo, m_hi, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            m_ok = offs_m < m_hi
            n_idx, ho, wo = _pixels(offs_m, HO, WO)
            hi = ho * STRIDE - PAD + kh
            wi = wo * STRIDE - PAD + kw
            row_ok = m_ok & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            # dy^T tile [BLOCK_CO, BLOCK_M], loaded transposed directly
            dy_col = (dy_ptr + n_idx.to(tl.int64) * _aligned(sdn, VEC_DY) + ho * _aligned(sdh, VEC_DY)
                      + wo * _aligned(sdw, VEC_DY))
            a = tl.load(dy_col[None, :] + offs_co[:, None] * sdc, mask=co_ok[:, None] & m_ok[None, :], other=0.0)
            x_row = (x_ptr + n_idx.to(tl.int64) * _aligned(sxn, VEC) + hi * _aligned(sxh, VEC)
                     + wi * _aligned(sxw, VEC))
            b_mask = row_ok[:, None] & ci_ok[None, :]
            b = tl.load(x_row[:, None] + ci[None, :] * sxc, mask=b_mask, other=0.0)
            if PRE_AFFINE or PRE_ACT or PRE_GATE:
                b = _apply_prologue(b, b_mask, ci, ci_ok, n_idx, pre_mean_ptr, pre_scale_ptr, pre_bias_ptr,
                                    gate_ptr, _aligned(C_IN, VEC), PRE_AFFINE, PRE_ACT, PRE_GATE)
                b = cast_to(b, x_ptr.dtype.element_ty)
            acc = _mma(a, b.to(a.dtype), acc, DOT_F32, IEEE)

    ci_l = ci[None, :] - (offs_co[:, None] // COUT_G) * CIN_G
    mask = co_ok[:, None] & ci_ok[None, :] & (ci_l >= 0) & (ci_l < CIN_G)
    ws_off = ((split * C_OUT + offs_co[:, None]).to(tl.int64) * CIN_G + ci_l) * (KH * KW) + tap
    tl.store(ws_ptr + ws_off, acc, mask=mask)


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------


def empty_like_format(t: torch.Tensor, shape, dtype=None) -> torch.Tensor:
    """Allocate ``shape`` in ``t``'s memory format (channels_last stays channels_last)."""
    return torch.empty(shape, dtype=dtype or t.dtype, device=t.device, memory_format=memory_format_of(t))


def channel_vec(t: torch.Tensor, *multiples_of: int) -> int:
    """Elements of a 16-byte vector along the channels (dim 1) of the 4-D ``t``, halved until the other
    strides of ``t`` and every ``multiples_of`` are multiples of it; 1 unless the channels are contiguous
    (NCHW tensors are read element by element). The conv kernels' ``VEC`` arguments: with it the loads of
    a channel vector are provably aligned and unmasked within the vector, so they compile to vector loads.
    Strides of size-1 dims are skipped (their index is 0 wherever a load is not masked)."""
    if t.dim() != 4 or t.stride(1) != 1:
        return 1
    v = max(1, 16 // t.element_size())
    for s in [t.stride(d) for d in (0, 2, 3) if t.shape[d] > 1] + list(multiples_of):
        while s % v:
            v //= 2
    return v


def conv2d_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    padding: int,
    groups: int,
    *,
    pre_affine=None,
    pre_act: Act = Act.NONE,
    gate=None,
    post_bn=None,
    residual: torch.Tensor = None,
    act: Act = Act.NONE,
    stats: bool = False,
    out: torch.Tensor = None,
):
    """Launch the fused forward conv. Returns ``(y, part_mean, part_m2, block_m)``.

    ``pre_affine`` is a ``(mean, scale, bias)`` fp32 per-channel triple; ``post_bn`` is an eval BatchNorm as
    ``(running_mean, running_var, gamma | None, beta | None, eps)``.
    ``part_*`` are ``(tiles, C_out)`` fp32 per-tile BatchNorm partials when ``stats`` (else None);
    ``block_m`` is the tile height the finalize step needs to reconstruct tile counts.
    """
    N, C_in, H, W = x.shape
    C_out, cin_g, KH, KW = weight.shape
    cout_g = C_out // groups
    HO, WO = conv_out_size(H, KH, stride, padding), conv_out_size(W, KW, stride, padding)
    M = N * HO * WO
    if out is None:
        out = empty_like_format(x, (N, C_out, HO, WO))
    tgt = target(x.device)
    BM, BN, BK, nw, ns = _cfg.conv_fwd_config(M, C_out, cin_g, cout_g, KH, KW, x.element_size(), tgt,
                                              fused_io=gate is not None and residual is not None)
    grid = (triton.cdiv(M, BM), triton.cdiv(C_out, BN))
    part_mean = part_m2 = None
    if stats:
        part_mean = torch.empty((grid[0], C_out), device=x.device, dtype=torch.float32)
        part_m2 = torch.empty_like(part_mean)
    dummy = x  # never read when its flag is off
    launch(conv_fwd_kernel, grid, x.device)(
        x, weight, out,
        *(pre_affine if pre_affine is not None else (dummy,) * 3),
        gate if gate is not None else dummy,
        *((post_bn[0], post_bn[1], post_bn[2] if post_bn[2] is not None else dummy,
           post_bn[3] if post_bn[3] is not None else dummy, float(post_bn[4]))
          if post_bn is not None else (dummy, dummy, dummy, dummy, 0.0)),
        residual if residual is not None else dummy,
        part_mean if stats else dummy, part_m2 if stats else dummy,
        N, C_in, H, W, C_out, HO, WO,
        *x.stride(), *out.stride(), *(residual.stride() if residual is not None else (0, 0, 0, 0)),
        *weight.stride(),
        cin_g, cout_g,
        STRIDE=stride, PAD=padding, KH=KH, KW=KW,
        PRE_AFFINE=pre_affine is not None, PRE_ACT=int(pre_act), PRE_GATE=gate is not None,
        POST_BN=post_bn is not None, BN_GAMMA=post_bn is not None and post_bn[2] is not None,
        BN_BETA=post_bn is not None and post_bn[3] is not None,
        HAS_RES=residual is not None, ACT=int(act), STATS=stats,
        DOT_F32=dot_in_fp32(x.dtype, tgt.interpret), IEEE=ieee_dot(x.dtype),
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, VEC=channel_vec(x, cin_g), VEC_W=channel_vec(weight, cin_g),
        VEC_Y=min(channel_vec(t, C_out) for t in (out, residual) if t is not None),
        num_warps=nw, num_stages=ns,
    )
    return out, part_mean, part_m2, BM


def conv2d_dgrad(dy: torch.Tensor, weight: torch.Tensor, x_shape, stride: int, padding: int, groups: int,
                 like: torch.Tensor, add: torch.Tensor = None) -> torch.Tensor:
    """Gradient of the conv input (plus ``add`` if given); allocated in ``like``'s memory format and dtype."""
    N, C_in, H, W = x_shape
    C_out, cin_g, KH, KW = weight.shape
    cout_g = C_out // groups
    HO, WO = dy.shape[2], dy.shape[3]
    dx = empty_like_format(like, (N, C_in, H, W), dtype=like.dtype)
    M = N * H * W
    tgt = target(dy.device)
    BM, BN, BK, nw, ns = _cfg.conv_dgrad_config(M, C_in, cin_g, cout_g, KH, KW, dy.element_size(), tgt)
    grid = (triton.cdiv(M, BM), triton.cdiv(C_in, BN))
    launch(conv_dgrad_kernel, grid, dy.device)(
        dy, weight, dx, add if add is not None else dx,
        N, C_in, H, W, C_out, HO, WO,
        *dy.stride(), *dx.stride(), *(add.stride() if add is not None else (0, 0, 0, 0)),
        *weight.stride(),
        cin_g, cout_g,
        STRIDE=stride, PAD=padding, KH=KH, KW=KW, HAS_ACC=add is not None,
        DOT_F32=dot_in_fp32(dy.dtype, tgt.interpret), IEEE=ieee_dot(dy.dtype),
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, VEC=channel_vec(dy, cout_g), VEC_W=channel_vec(weight, cin_g),
        VEC_DX=min(channel_vec(t, C_in) for t in (dx, add) if t is not None),
        num_warps=nw, num_stages=ns,
    )
    return dx


def conv2d_wgrad(x: torch.Tensor, dy: torch.Tensor, weight_shape, stride: int, padding: int, groups: int,
                 *, pre_affine=None, pre_act: Act = Act.NONE, gate=None) -> torch.Tensor:
    """Gradient of the conv weight, fp32, shape ``weight_shape``."""
    N, C_in, H, W = x.shape
    C_out, cin_g, KH, KW = weight_shape
    cout_g = C_out // groups
    HO, WO = dy.shape[2], dy.shape[3]
    M = N * HO * WO
    tgt = target(x.device)
    cfg = _cfg.conv_wgrad_config(M, C_out, cin_g, cout_g, KH, KW, x.element_size(), tgt)
    split, m_per_split = cfg.split, cfg.m_per_split
    # every (split, co, ci_l, tap) entry is written by exactly one program
    ws = torch.empty((split, C_out, cin_g, KH, KW), device=x.device, dtype=torch.float32)
    grid = (cfg.n_co, cfg.n_ci, KH * KW * split)
    dummy = x
    launch(conv_wgrad_kernel, grid, x.device)(
        x, dy, ws,
        *(pre_affine if pre_affine is not None else (dummy,) * 3),
        gate if gate is not None else dummy,
        N, C_in, H, W, C_out, HO, WO,
        *x.stride(), *dy.stride(),
        cin_g, cout_g, m_per_split,
        STRIDE=stride, PAD=padding, KH=KH, KW=KW,
        PRE_AFFINE=pre_affine is not None, PRE_ACT=int(pre_act), PRE_GATE=gate is not None,
        DOT_F32=dot_in_fp32(x.dtype, tgt.interpret), IEEE=ieee_dot(x.dtype),
        BLOCK_CO=cfg.block_co, BLOCK_CI=cfg.block_ci, BLOCK_M=cfg.block_m,
        VEC=channel_vec(x, cin_g), VEC_DY=channel_vec(dy, C_out),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return ws[0] if split == 1 else ws.sum(0)


# ------------------------------------------------------------------------------------------------
# Input shift for training BatchNorm after an unpadded conv
# ------------------------------------------------------------------------------------------------
#: shift a channel only where its value at pixel 0 is this many times farther from 0 than from the other
#: sampled pixels, i.e. where the channel's mean dominates its spread (see :func:`input_shift`)
SHIFT_RATIO = 8.0


def input_shift(x: torch.Tensor):
    """A ``pre_affine`` triple ``(c, 1, 0)`` that makes a conv read ``x - c``, with ``c`` per input channel
    either ``x[0, c, 0, 0]`` or 0; None (no shift) unless ``x`` is fp32. Device ops only (no host sync).

    For an input with a large mean (300, 1e4) the conv's fp32 outputs are ~|mean| with an ulp that is no
    longer small against their spread, and the rounding flips ReLU masks after the BatchNorm. Training
    BatchNorm removes any per-channel constant from its input exactly, so conv(x - c) gives the same
    normalised output, computed on values near 0. Valid for a conv without padding (``x - c`` shifts the
    zero padding too); the batch mean of the unshifted output is the shifted one plus
    :func:`shift_offset`. The weight gradient may read ``x - c`` as well: it differs from the true one by
    ``c * sum(dy)``, and the conv-output gradient of a training BatchNorm sums to zero over the batch.

    Only channels whose mean dominates their spread are shifted: ``x[0, c, 0, 0]`` must be
    :data:`SHIFT_RATIO` times farther from 0 than from each of the batch / spatial corner pixels
    (non-finite values never pass). On a mean-0 channel a shift by one sample (~std) would leave the saved
    mean ~std while the batch mean is ~std / sqrt(count), and adding the offset back for the running mean
    would cost digits there.

    fp16 / bf16 inputs are not shifted: the prologue rounds ``x - c`` back to the input dtype, and a 16-bit
    activation at a large mean is already coarser than anything the shift recovers (ulp 8 at 1e4).
    """
    if x.dtype != torch.float32:
        return None
    N, _, H, W = x.shape
    # corners of the (batch, height, width) box: up to 8 pixels, a strided view
    corners = x[::max(N - 1, 1), :, ::max(H - 1, 1), ::max(W - 1, 1)].transpose(0, 1).reshape(x.shape[1], -1)
    x0 = corners[:, 0]
    spread = (corners - x0[:, None]).abs().amax(1)
    c = torch.where(spread * SHIFT_RATIO < x0.abs(), x0, torch.zeros_like(x0))
    return c, torch.ones_like(c), torch.zeros_like(c)


def shift_offset(weight: torch.Tensor, shift) -> torch.Tensor:
    """``conv(x) - conv(x - c)`` per output channel (fp32) for an unpadded conv with ``groups=1`` and the
    ``shift`` of :func:`input_shift` (zeros when it is None)."""
    if shift is None:
        return torch.zeros(weight.shape[0], device=weight.device, dtype=torch.float32)
    return weight.to(torch.float32).sum((2, 3)) @ shift[0]
