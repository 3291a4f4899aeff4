"""The cuda kernel set: :class:`regnet_kernels.kernels.api.Kernels` over the hand-written kernels of
``csrc/`` (through :func:`regnet_kernels.kernels.cuda.ext.lib`: the compiled extension ``regnet_kernels._C``,
the CuPy JIT of the same sources, or the CPU emulator of the tests).

Every output and workspace is allocated with torch (no allocation outside torch's allocator, no host
sync: CUDA-graph capturable) and every launch goes to torch's current stream. Shapes were validated at
the functional boundary; the launchers check only that the tensors are on one CUDA device.

BatchNorm partials (:meth:`CudaKernels.conv_forward` with ``stats``) are ``(2, tiles, C)`` fp32 per-tile
(mean, M2) pairs, finalized by a two-pass shifted combine; the backward sums are per-tile partials summed
in a fixed order; the weight gradient is split-K into an fp32 workspace summed deterministically.
"""
from __future__ import annotations

from typing import Optional

import torch

from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.api import Kernels, eval_affine, f32
from regnet_kernels.kernels.cuda import ext as _ext
from regnet_kernels.kernels.geometry import conv_out_size, memory_format_of, num_sms

#: Tests set this to force a number of split-K slices in the weight gradient (None: the heuristic).
WGRAD_SPLITS: Optional[int] = None

def _launch(code_of: Optional[torch.Tensor], *tensors):
    """``(dtype code of code_of | None, device, lib)``: the tensors on one CUDA device (or the CPU
    emulation); ``code_of`` is the activation whose dtype picks the kernel instantiation."""
    code = _ext.dtype_code(code_of, "input") if code_of is not None else None
    dev = _ext.check_tensors("regnet_kernels", (code_of,) + tensors)
    return code, dev, _ext.lib()


def _geometry(x_shape, w_shape, stride: int, padding: int, groups: int) -> tuple:
    """``(N, C_in, H, W, C_out, HO, WO, KH, KW, stride, pad, groups)``: the launchers' shape arguments."""
    N, C_in, H, W = (int(v) for v in x_shape)
    C_out, _, KH, KW = (int(v) for v in w_shape)
    HO, WO = conv_out_size(H, KH, stride, padding), conv_out_size(W, KW, stride, padding)
    return N, C_in, H, W, C_out, HO, WO, KH, KW, int(stride), int(padding), int(groups)


def _conv(lib, code: int, x, weight, geo, out, stream: int, *, stats=None, post=None, act: int = Act.NONE) -> None:
    part_mean, part_m2 = stats if stats is not None else (None, None)
    post_mean, post_scale, post_bias = post if post is not None else (None, None, None)
    lib.conv_fwd(code, x.data_ptr(), *x.stride(), weight.data_ptr(), *weight.stride(), out.data_ptr(), *out.stride(),
                 *geo, _ext.ptr(part_mean), _ext.ptr(part_m2), _ext.ptr(post_mean), _ext.ptr(post_scale),
                 _ext.ptr(post_bias), int(act), stream)


def _dgrad(lib, code: int, dy, weight, geo, like, stream: int) -> torch.Tensor:
    dx = torch.empty(geo[:4], dtype=like.dtype, device=like.device, memory_format=memory_format_of(like))
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
        split = max(1, min(_ext.cdiv(M, bk * 4), _ext.cdiv(4 * num_sms(device), base)))
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


def _bn_bwd_sums(lib, code, go, src, fmt, stream, *, train: bool, act: int, stats=None, dz=None):
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
                      HW, cs, ps, bool(train), int(act), stream)
    sum_dz = torch.empty(C, dtype=torch.float32, device=src.device)
    sum_dzx = torch.empty(C, dtype=torch.float32, device=src.device) if train else None
    lib.sum_rows(part[0].data_ptr(), sum_dz.data_ptr(), part[1].data_ptr() if train else 0, _ext.ptr(sum_dzx), tiles,
                 C, stream)
    return sum_dz, sum_dzx


def _pixels(t: torch.Tensor) -> tuple:
    """``(t dense in its layout, N, C, HW, cs, ps)``: an activation as the elementwise launchers take it
    (channel and pixel strides from :func:`regnet_kernels.kernels.cuda.ext.pixel_layout`)."""
    N, C, H, W = t.shape
    fmt = _ext.layout_of(t)
    return (_ext.dense(t, fmt), N, C, H * W) + _ext.pixel_layout(fmt, C, H * W)


def _flat(w: torch.Tensor) -> torch.Tensor:
    """An FC weight ``(rows, cols[, 1, 1])`` as a contiguous fp32 ``(rows, cols)``."""
    return f32(w.reshape(w.shape[0], w.shape[1]))


class CudaKernels(Kernels):
    name = "cuda"

    def as_operand(self, t, like):
        fmt = _ext.layout_of(like)
        return _ext.dense(t.to(like.dtype), fmt)

    # -- convolution
    def conv_forward(self, x, weight, stride, padding, groups, *, stats=False, eval_bn=None, act=Act.NONE, **extra):
        if extra:
            raise TypeError(f"the cuda backend's conv has no {', '.join(sorted(extra))} option")
        code, dev, lib = _launch(x, weight, *(eval_bn[:4] if eval_bn is not None else ()))
        geo = _geometry(x.shape, weight.shape, stride, padding, groups)
        N, C, HO, WO = geo[0], geo[4], geo[5], geo[6]
        out = torch.empty((N, C, HO, WO), dtype=x.dtype, device=dev, memory_format=memory_format_of(x))
        post = eval_affine(eval_bn)[1:] if eval_bn is not None else None
        partials = None
        if stats:
            tiles = _ext.cdiv(N * HO * WO, lib.config()["GEMM_BM"])
            partials = torch.empty((2, tiles, C), dtype=torch.float32, device=dev)
        with _ext.launch_context(dev) as stream:
            _conv(lib, code, x, weight, geo, out, stream, stats=partials, post=post, act=act)
        return out, partials

    def conv_dgrad(self, dy, weight, x_shape, stride, padding, groups, *, like, **extra):
        if extra:
            raise TypeError(f"the cuda backend's dgrad has no {', '.join(sorted(extra))} option")
        code, dev, lib = _launch(dy, weight, like)
        geo = _geometry(x_shape, weight.shape, stride, padding, groups)
        with _ext.launch_context(dev) as stream:
            return _dgrad(lib, code, dy, weight, geo, like, stream)

    def conv_wgrad(self, x, dy, weight_shape, stride, padding, groups, *, want_f32=True, out_dtype=None, scale=None,
                   **extra):
        if extra:
            raise TypeError(f"the cuda backend's wgrad has no {', '.join(sorted(extra))} option")
        code, dev, lib = _launch(x, dy, scale)
        geo = _geometry(x.shape, weight_shape, stride, padding, groups)
        with _ext.launch_context(dev) as stream:
            return _wgrad(lib, code, x, dy, geo, stream, want_f32=want_f32, out_dtype=out_dtype, scale=scale)

    # -- BatchNorm
    def bn_finalize(self, partials, count, gamma, beta, eps):
        _, dev, lib = _launch(None, partials, gamma, beta)
        tiles, C = partials.shape[1], partials.shape[2]
        mean, invstd, var_unb, scale, bias = (torch.empty(C, dtype=torch.float32, device=dev) for _ in range(5))
        with _ext.launch_context(dev) as stream:
            lib.bn_finalize(partials[0].data_ptr(), partials[1].data_ptr(), tiles, int(count), lib.config()["GEMM_BM"],
                            C, _ext.ptr(f32(gamma)), _ext.ptr(f32(beta)), float(eps), mean.data_ptr(),
                            invstd.data_ptr(), var_unb.data_ptr(), scale.data_ptr(), bias.data_ptr(), stream)
        return mean, invstd, var_unb, scale, bias

    def bn_act(self, y, mean, scale, bias, act):
        code, dev, lib = _launch(y, mean, scale, bias)
        y, _, C, _, cs, _ = _pixels(y)
        out = torch.empty_like(y)
        with _ext.launch_context(dev) as stream:
            lib.bn_act(code, y.data_ptr(), out.data_ptr(), mean.data_ptr(), scale.data_ptr(), bias.data_ptr(),
                       y.numel(), C, cs, int(act), stream)
        return out

    def bn_bwd_reduce(self, dout, src, *, train, act, stats=None, write_dz=False, **extra):
        if extra:
            raise TypeError(f"the cuda backend's BatchNorm reduction has no {', '.join(sorted(extra))} option")
        code, dev, lib = _launch(src, dout, *(stats or ()))
        fmt = _ext.layout_of(src)
        src = _ext.dense(src, fmt)
        go = self.as_operand(dout, src)
        dz = torch.empty_like(src) if write_dz else None
        with _ext.launch_context(dev) as stream:
            sum_dz, sum_dzx = _bn_bwd_sums(lib, code, go, src, fmt, stream, train=train, act=act, stats=stats,
                                           dz=dz)
        return sum_dz, sum_dzx, dz

    def bn_bwd_dy(self, dout, y, mean, invstd, scale, bias, sum_dz, sum_dzx, act, count, **extra):
        if extra:
            raise TypeError(f"the cuda backend's BatchNorm backward has no {', '.join(sorted(extra))} option")
        code, dev, lib = _launch(y, dout, mean, invstd, scale, bias, sum_dz, sum_dzx)
        y, _, C, _, cs, _ = _pixels(y)
        go = self.as_operand(dout, y)
        dy = torch.empty_like(y)
        with _ext.launch_context(dev) as stream:
            lib.bn_bwd_dy(code, go.data_ptr(), y.data_ptr(), dy.data_ptr(), mean.data_ptr(), invstd.data_ptr(),
                          scale.data_ptr(), bias.data_ptr(), sum_dz.data_ptr(), sum_dzx.data_ptr(), 1.0 / count,
                          y.numel(), C, cs, int(act), stream)
        return dy

    def bn_running_update(self, running_mean, running_var, num_batches_tracked, mean, var_unb, momentum, cumulative):
        _, dev, lib = _launch(None, running_mean, running_var, num_batches_tracked, mean, var_unb)
        C = running_mean.numel()
        fast = (all(t.dtype == torch.float32 and t.is_contiguous() and t.numel() == C
                    for t in (running_mean, running_var, mean, var_unb))
                and (not cumulative or (num_batches_tracked is not None and num_batches_tracked.dtype == torch.int64)))
        if not fast or C == 0:  # (other buffer dtypes / layouts: the reference's torch ops)
            from regnet_kernels.ops.conv_bn_act import reference as _ref

            _ref.update_running_stats(running_mean, running_var, num_batches_tracked, mean, var_unb, momentum,
                                      cumulative)
            return
        with _ext.launch_context(dev) as stream:
            lib.bn_running_update(running_mean.data_ptr(), running_var.data_ptr(),
                                  _ext.ptr(num_batches_tracked) if cumulative else 0, mean.data_ptr(),
                                  var_unb.data_ptr(), C, float(momentum), bool(cumulative), stream)

    # -- squeeze-excitation
    def se_pool(self, x):
        code, dev, lib = _launch(x)
        xd, N, C, HW, cs, ps = _pixels(x)
        pooled = torch.empty((N, C), dtype=torch.float32, device=dev)
        with _ext.launch_context(dev) as stream:
            lib.se_reduce(code, xd.data_ptr(), 0, pooled.data_ptr(), N, C, HW, cs, ps, 1.0 / HW, stream)
        return pooled

    def se_fc(self, pooled, w1, b1, w2, b2):
        _, dev, lib = _launch(None, pooled, w1, b1, w2, b2)
        N, C = pooled.shape
        S = w1.shape[0]
        w1f, b1f, w2f, b2f = _flat(w1), f32(b1), _flat(w2), f32(b2)
        s1 = torch.empty((N, S), dtype=torch.float32, device=dev)
        gate = torch.empty((N, C), dtype=torch.float32, device=dev)
        with _ext.launch_context(dev) as stream:
            lib.se_fc_fwd(pooled.data_ptr(), w1f.data_ptr(), _ext.ptr(b1f), w2f.data_ptr(), _ext.ptr(b2f),
                          s1.data_ptr(), gate.data_ptr(), N, C, S, stream)
        return gate

    def se_scale(self, x, gate):
        code, dev, lib = _launch(x, gate)
        xd, _, C, HW, cs, _ = _pixels(x)
        out = torch.empty_like(xd)
        with _ext.launch_context(dev) as stream:
            lib.se_scale(code, xd.data_ptr(), gate.data_ptr(), out.data_ptr(), xd.numel(), C, cs, C * HW, stream)
        return out

    def se_dgate(self, dout, x):
        code, dev, lib = _launch(x, dout)
        xd, N, C, HW, cs, ps = _pixels(x)
        go = self.as_operand(dout, xd)
        dgate = torch.empty((N, C), dtype=torch.float32, device=dev)
        with _ext.launch_context(dev) as stream:
            lib.se_reduce(code, go.data_ptr(), xd.data_ptr(), dgate.data_ptr(), N, C, HW, cs, ps, 1.0, stream)
        return dgate

    def se_fc_backward(self, pooled, gate, dgate, w1, b1, w2, need):
        _, dev, lib = _launch(None, pooled, gate, dgate, w1, b1, w2)
        need_w1, need_b1, need_w2, need_b2 = need
        N, C = pooled.shape
        S = w1.shape[0]
        w1f, b1f, w2f = _flat(w1), f32(b1), _flat(w2)
        pooled32, gate32 = f32(pooled), f32(gate)

        def buf(*shape):
            return torch.empty(shape, dtype=torch.float32, device=dev)

        dpooled, ds2, s1, ds1 = buf(N, C), buf(N, C), buf(N, S), buf(N, S)
        dw1 = buf(S, C) if need_w1 else None
        db1 = buf(S) if (b1 is not None and need_b1) else None
        dw2 = buf(C, S) if need_w2 else None
        db2 = buf(C) if need_b2 else None
        with _ext.launch_context(dev) as stream:
            lib.se_fc_bwd(pooled32.data_ptr(), gate32.data_ptr(), dgate.data_ptr(), w1f.data_ptr(), _ext.ptr(b1f),
                          w2f.data_ptr(), s1.data_ptr(), ds2.data_ptr(), ds1.data_ptr(), dpooled.data_ptr(), N, C, S,
                          stream)
            if dw1 is not None:  # dw1 = ds1^T @ pooled
                lib.se_outer(ds1.data_ptr(), pooled32.data_ptr(), dw1.data_ptr(), N, S, C, Act.NONE, stream)
            if db1 is not None:
                lib.se_outer(ds1.data_ptr(), 0, db1.data_ptr(), N, S, 1, Act.NONE, stream)
            if dw2 is not None:  # dw2 = ds2^T @ relu(s1)
                lib.se_outer(ds2.data_ptr(), s1.data_ptr(), dw2.data_ptr(), N, C, S, Act.RELU, stream)
            if db2 is not None:
                lib.se_outer(ds2.data_ptr(), 0, db2.data_ptr(), N, C, 1, Act.NONE, stream)
        return dpooled, dw1, db1, dw2, db2

    def se_dx(self, dout, gate, dpooled, like):
        code, dev, lib = _launch(like, dout, gate, dpooled)
        like, _, C, HW, cs, _ = _pixels(like)
        go = self.as_operand(dout, like)
        dx = torch.empty_like(like)
        with _ext.launch_context(dev) as stream:
            lib.se_dx(code, go.data_ptr(), f32(gate).data_ptr(), dpooled.data_ptr(), dx.data_ptr(), dx.numel(), C, cs,
                      C * HW, 1.0 / HW, stream)
        return dx


KERNELS = CudaKernels()
