"""Squeeze-excitation kernels: global average pool, the two FCs (+ ReLU, sigmoid) in one kernel, the
channel scale, and their backward pieces.

Shapes: ``x`` (N, C, H, W) viewed as pixels x channels (see :func:`bn.pixel_strides`); ``pooled`` and
``gate`` are (N, C) fp32; ``w1`` (S, C), ``w2`` (C, S) with S the squeeze width. The pool and the
dgate reduction take an optional BatchNorm + activation prologue so that, inside a fused block, they read
the pre-BN conv output and never need the normalized tensor written.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.triton.common import (ACT_NONE, ACT_RELU, act_grad, apply_act, bn_act_tile, load_tile,
                                                  pixel_tile, store_tile)
from regnet_kernels.kernels.triton.runtime import launch, target
from regnet_kernels.kernels.triton import config as _cfg
from regnet_kernels.kernels.triton.bn import collapsible, pixel_strides


@triton.jit
def se_channel_sum_kernel(
    x_ptr, w_ptr, out_ptr, mean_ptr, scale_ptr, bias_ptr,
    C, HW, sxn, sxc, sxhw, swn, swc, swhw, factor,
    HAS_W: tl.constexpr, PRE_AFFINE: tl.constexpr, PRE_ACT: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # out[n, c] = factor * sum over pixels of (w *) x_eff, x_eff = x or act(BN(x)) inside a fused block.
    # The SE pool (no w, factor 1/HW) and the gate gradient (w = dout, factor 1). One program per
    # (sample, channel block), a sequential loop over pixels: deterministic, no atomics.
    n = tl.program_id(0)
    pid_c = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    xbase = x_ptr + n.to(tl.int64) * sxn
    wbase = w_ptr + n.to(tl.int64) * swn
    acc = tl.zeros((BLOCK_C,), tl.float32)
    for p0 in range(0, HW, BLOCK_HW):
        p = p0 + tl.arange(0, BLOCK_HW)
        msk = (p < HW)[:, None] & c_ok[None, :]
        v = tl.load(xbase + p[:, None] * sxhw + c[None, :] * sxc, mask=msk, other=0.0).to(tl.float32)
        v = bn_act_tile(v, c, c_ok, mean_ptr, scale_ptr, bias_ptr, PRE_AFFINE, PRE_ACT)
        if HAS_W:
            v = v * tl.load(wbase + p[:, None] * swhw + c[None, :] * swc, mask=msk, other=0.0).to(tl.float32)
        acc += tl.sum(tl.where(msk, v, 0.0), axis=0)
    tl.store(out_ptr + n * C + c, acc * factor, mask=c_ok)


@triton.jit
def _rows_matmul(in_ptr, K, w_ptr, sk, so, o, o_ok, rows, r_ok,
                 IN_ACT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr):
    # (BLOCK_N x BLOCK_O) fp32 tile of act(in[rows, :K]) @ W with W[k, o] at w_ptr + k * sk + o * so and in
    # row-major (N, K): the SE FCs and their backward (IEEE dots)
    acc = tl.zeros((BLOCK_N, BLOCK_O), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        a = tl.load(in_ptr + rows[:, None] * K + k[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        a = apply_act(a, IN_ACT)
        w = tl.load(w_ptr + k[:, None] * sk + o[None, :] * so, mask=k_ok[:, None] & o_ok[None, :], other=0.0)
        acc = tl.dot(a, w.to(tl.float32), acc, input_precision="ieee")
    return acc


@triton.jit
def _fc_layer(in_ptr, K, w_ptr, b_ptr, out_ptr, O, rows, r_ok, IN_ACT: tl.constexpr, HAS_B: tl.constexpr,
              SIGMOID: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr):
    # out[rows, :] = f(act(in[rows, :]) @ w^T + b) with w (O, K), f = sigmoid or identity, fp32 (IEEE dots)
    for o0 in range(0, O, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        o_ok = o < O
        acc = _rows_matmul(in_ptr, K, w_ptr, 1, K, o, o_ok, rows, r_ok, IN_ACT, BLOCK_N, BLOCK_O, BLOCK_K)
        if HAS_B:
            acc += tl.load(b_ptr + o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
        if SIGMOID:
            acc = 1.0 / (1.0 + tl.exp(-acc))
        tl.store(out_ptr + rows[:, None] * O + o[None, :], acc, mask=r_ok[:, None] & o_ok[None, :])


@triton.jit
def _fc1_to_scratch(pooled_ptr, w1_ptr, b1_ptr, s1_ptr, rows, r_ok, C, S,
                    HAS_B1: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    # s1[rows, :] = pooled[rows, :] @ w1^T + b1 into the (N, S) scratch: the forward and backward's recompute
    _fc_layer(pooled_ptr, C, w1_ptr, b1_ptr, s1_ptr, S, rows, r_ok, ACT_NONE, HAS_B1, False, BLOCK_N, BLOCK_S, BLOCK_C)


@triton.jit
def se_fc_fwd_kernel(
    pooled_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, s1_ptr, gate_ptr,
    N, C, S,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Both FCs for BLOCK_N samples in one program: s1 = pooled @ w1^T + b1 goes to a small fp32 scratch
    # (also what backward recomputes the ReLU mask from), a barrier, then
    # gate = sigmoid(relu(s1) @ w2^T + b2) (the SE hidden activation is ReLU by definition). fp32 throughout.
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < N
    _fc1_to_scratch(pooled_ptr, w1_ptr, b1_ptr, s1_ptr, rows, r_ok, C, S, HAS_B1, BLOCK_N, BLOCK_S, BLOCK_C)
    tl.debug_barrier()
    _fc_layer(s1_ptr, S, w2_ptr, b2_ptr, gate_ptr, C, rows, r_ok, ACT_RELU, HAS_B2, True, BLOCK_N, BLOCK_C, BLOCK_S)


@triton.jit
def se_fc_bwd_kernel(
    pooled_ptr, gate_ptr, dgate_ptr, w1_ptr, b1_ptr, w2_ptr, s1_ptr, ds2_ptr, ds1_ptr, dpooled_ptr,
    N, C, S,
    HAS_B1: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # ds2 = dgate * gate * (1 - gate); s1 recomputed; ds1 = (ds2 @ w2) * (s1 > 0);
    # dpooled = ds1 @ w1. Weight gradients are two small GEMMs done by the launcher.
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < N
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        msk = r_ok[:, None] & (c < C)[None, :]
        g = tl.load(gate_ptr + rows[:, None] * C + c[None, :], mask=msk, other=0.0)
        dg = tl.load(dgate_ptr + rows[:, None] * C + c[None, :], mask=msk, other=0.0)
        tl.store(ds2_ptr + rows[:, None] * C + c[None, :], dg * g * (1.0 - g), mask=msk)
    _fc1_to_scratch(pooled_ptr, w1_ptr, b1_ptr, s1_ptr, rows, r_ok, C, S, HAS_B1, BLOCK_N, BLOCK_S, BLOCK_C)
    tl.debug_barrier()
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        s_ok = s < S
        acc = _rows_matmul(ds2_ptr, C, w2_ptr, S, 1, s, s_ok, rows, r_ok, ACT_NONE, BLOCK_N, BLOCK_S, BLOCK_C)
        s1 = tl.load(s1_ptr + rows[:, None] * S + s[None, :], mask=r_ok[:, None] & s_ok[None, :], other=0.0)
        tl.store(ds1_ptr + rows[:, None] * S + s[None, :], act_grad(acc, s1, ACT_RELU),
                 mask=r_ok[:, None] & s_ok[None, :])
    tl.debug_barrier()
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        acc = _rows_matmul(ds1_ptr, S, w1_ptr, C, 1, c, c_ok, rows, r_ok, ACT_NONE, BLOCK_N, BLOCK_C, BLOCK_S)
        tl.store(dpooled_ptr + rows[:, None] * C + c[None, :], acc, mask=r_ok[:, None] & c_ok[None, :])


@triton.jit
def se_scale_kernel(
    x_ptr, gate_ptr, out_ptr, M, C, HW,
    sxn, sxc, sxhw, son, soc, sohw,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    c, _, msk, n, hw = pixel_tile(tl.program_id(0), tl.program_id(1), M, C, HW, BLOCK_M, BLOCK_C)
    v = load_tile(x_ptr, n, hw, c, sxn, sxhw, sxc, msk)
    g = tl.load(gate_ptr + n[:, None] * C + c[None, :], mask=msk, other=0.0)
    store_tile(out_ptr, n, hw, c, son, sohw, soc, v * g, msk)


@triton.jit
def se_dx_kernel(
    dout_ptr, gate_ptr, dpooled_ptr, dx_ptr, M, C, HW, inv_hw,
    sgn, sgc, sghw, sdn, sdc, sdhw,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # dx = dout * gate[n, c] + dpooled[n, c] / HW
    c, _, msk, n, hw = pixel_tile(tl.program_id(0), tl.program_id(1), M, C, HW, BLOCK_M, BLOCK_C)
    g = load_tile(dout_ptr, n, hw, c, sgn, sghw, sgc, msk)
    gate = tl.load(gate_ptr + n[:, None] * C + c[None, :], mask=msk, other=0.0)
    dp = tl.load(dpooled_ptr + n[:, None] * C + c[None, :], mask=msk, other=0.0)
    store_tile(dx_ptr, n, hw, c, sdn, sdhw, sdc, g * gate + dp * inv_hw, msk)


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------
def _channel_sum(x: torch.Tensor, w, factor: float, pre_affine, pre_act: Act, label: str) -> torch.Tensor:
    N, C, H, W = x.shape
    x = collapsible(x, x)
    w = collapsible(w, x) if w is not None else None
    out = torch.empty((N, C), device=x.device, dtype=torch.float32)
    BHW, BC, nw, ns = _cfg.channel_sum_config(H * W, C, target(x.device))
    aff = pre_affine if pre_affine is not None else (out,) * 3
    # (the launch counter keeps the pool / gate-gradient names: they are two different passes)
    launch(se_channel_sum_kernel, (N, triton.cdiv(C, BC)), x.device, label)(
        x, w if w is not None else x, out, *aff, C, H * W, *pixel_strides(x),
        *(pixel_strides(w) if w is not None else (0, 0, 0)), factor,
        HAS_W=w is not None, PRE_AFFINE=pre_affine is not None, PRE_ACT=int(pre_act), BLOCK_HW=BHW, BLOCK_C=BC,
        num_warps=nw, num_stages=ns,
    )
    return out


def se_pool(x: torch.Tensor, pre_affine=None, pre_act: Act = Act.NONE) -> torch.Tensor:
    """``(N, C)`` fp32 spatial mean of ``x`` (of ``pre_act(BN(x))`` with ``pre_affine=(mean, scale, bias)``)."""
    return _channel_sum(x, None, 1.0 / (x.shape[2] * x.shape[3]), pre_affine, pre_act, "se_pool_kernel")


def _flat(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).contiguous()


def se_fc(pooled: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
    """``gate = sigmoid(fc2(relu(fc1(pooled))))``, ``(N, C)`` fp32."""
    N, C = pooled.shape
    w1f, w2f = _flat(w1), _flat(w2)
    S = w1f.shape[0]
    s1 = torch.empty((N, S), device=pooled.device, dtype=torch.float32)
    gate = torch.empty((N, C), device=pooled.device, dtype=torch.float32)
    BN, BS, BC, nw, ns = _cfg.se_fc_config(N, C, S, target(pooled.device))
    launch(se_fc_fwd_kernel, (triton.cdiv(N, BN),), pooled.device)(
        pooled, w1f, b1 if b1 is not None else w1f, w2f, b2 if b2 is not None else w2f, s1, gate, N, C, S,
        HAS_B1=b1 is not None, HAS_B2=b2 is not None, BLOCK_N=BN, BLOCK_S=BS, BLOCK_C=BC,
        num_warps=nw, num_stages=ns,
    )
    return gate


def se_fc_backward(pooled, gate, dgate, w1, b1, w2, need_b1: bool, need_b2: bool):
    """``(dpooled, dw1, db1, dw2, db2)`` in fp32 (``db*`` None when not needed)."""
    N, C = pooled.shape
    w1f, w2f = _flat(w1), _flat(w2)
    S = w1f.shape[0]
    dev = pooled.device
    s1 = torch.empty((N, S), device=dev, dtype=torch.float32)
    ds1 = torch.empty((N, S), device=dev, dtype=torch.float32)
    ds2 = torch.empty((N, C), device=dev, dtype=torch.float32)
    dpooled = torch.empty((N, C), device=dev, dtype=torch.float32)
    BN, BS, BC, nw, ns = _cfg.se_fc_config(N, C, S, target(dev))
    launch(se_fc_bwd_kernel, (triton.cdiv(N, BN),), dev)(
        pooled, gate, dgate, w1f, b1 if b1 is not None else w1f, w2f, s1, ds2, ds1, dpooled, N, C, S,
        HAS_B1=b1 is not None, BLOCK_N=BN, BLOCK_S=BS, BLOCK_C=BC, num_warps=nw, num_stages=ns,
    )
    dw2 = ds2.t().mm(s1.clamp_min(0.0))  # (C, S)
    dw1 = ds1.t().mm(pooled)  # (S, C)
    return dpooled, dw1, (ds1.sum(0) if need_b1 else None), dw2, (ds2.sum(0) if need_b2 else None)


def se_scale(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    N, C, H, W = x.shape
    x = collapsible(x, x)
    out = torch.empty_like(x)
    M = N * H * W
    BM, BC, nw, ns = _cfg.ew_config(M, C, target(x.device))
    launch(se_scale_kernel, (triton.cdiv(M, BM), triton.cdiv(C, BC)), x.device)(
        x, gate, out, M, C, H * W, *pixel_strides(x), *pixel_strides(out), BLOCK_M=BM, BLOCK_C=BC,
        num_warps=nw, num_stages=ns,
    )
    return out


def se_dgate(dout: torch.Tensor, x: torch.Tensor, pre_affine=None, pre_act: Act = Act.NONE) -> torch.Tensor:
    """``(N, C)`` fp32 ``sum_hw dout * x_eff``: the gradient reaching the SE gate."""
    return _channel_sum(x, dout, 1.0, pre_affine, pre_act, "se_dgate_kernel")


def se_dx(dout: torch.Tensor, gate: torch.Tensor, dpooled: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    N, C, H, W = like.shape
    dout = collapsible(dout, like)
    dx = torch.empty_like(like, dtype=dout.dtype)
    dx = collapsible(dx, like)
    M = N * H * W
    BM, BC, nw, ns = _cfg.ew_config(M, C, target(like.device))
    launch(se_dx_kernel, (triton.cdiv(M, BM), triton.cdiv(C, BC)), like.device)(
        dout, gate, dpooled, dx, M, C, H * W, 1.0 / (H * W), *pixel_strides(dout), *pixel_strides(dx),
        BLOCK_M=BM, BLOCK_C=BC, num_warps=nw, num_stages=ns,
    )
    return dx
