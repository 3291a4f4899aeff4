"""The Triton kernel set: :class:`regnet_kernels.kernels.api.Kernels` over the launchers of ``conv.py``,
``bn.py`` and ``se.py``, plus the whole-block primitives only this backend has (``block.py``'s residual
tail, the input shift of the large-mean fp32 path)."""
from __future__ import annotations

from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.api import Kernels
from regnet_kernels.kernels.triton import block as _blk
from regnet_kernels.kernels.triton import bn as _bn
from regnet_kernels.kernels.triton import conv as _conv
from regnet_kernels.kernels.triton import se as _se


class TritonKernels(Kernels):
    name = "triton"

    def as_operand(self, t, like):
        return t  # the launchers read any collapsible strides (copying what is not) and any float dtype

    # -- convolution
    def conv_forward(self, x, weight, stride, padding, groups, *, stats=False, eval_bn=None, act=Act.NONE, **extra):
        post_bn = tuple(eval_bn) if eval_bn is not None else None
        y, part_mean, part_m2, rows = _conv.conv2d_fwd(x, weight, stride, padding, groups, stats=stats,
                                                       post_bn=post_bn, act=act, **extra)
        return y, ((part_mean, part_m2, rows) if stats else None)

    def conv_dgrad(self, dy, weight, x_shape, stride, padding, groups, *, like, **extra):
        return _conv.conv2d_dgrad(dy, weight, x_shape, stride, padding, groups, like=like, **extra)

    def conv_wgrad(self, x, dy, weight_shape, stride, padding, groups, *, want_f32=True, out_dtype=None, scale=None,
                   **extra):
        dwf = _conv.conv2d_wgrad(x, dy, weight_shape, stride, padding, groups, **extra)
        out = None
        if out_dtype is not None:
            out = (dwf if scale is None else dwf * scale[:, None, None, None]).to(out_dtype)
        return (dwf if want_f32 else None), out

    # -- BatchNorm
    def bn_finalize(self, partials, count, gamma, beta, eps):
        part_mean, part_m2, rows = partials
        return _bn.bn_finalize(part_mean, part_m2, count, rows, gamma, beta, eps)

    def bn_act(self, y, mean, scale, bias, act):
        return _bn.bn_act(y, (mean, scale, bias), act)

    def bn_bwd_reduce(self, dout, src, *, train, act, stats=None, write_dz=False, **extra):
        mean, invstd, scale, bias = stats if stats is not None else (None,) * 4
        return _bn.bn_bwd_reduce(dout, src, train=train, act=act, mean=mean, invstd=invstd, scale=scale, bias=bias,
                                 write_dz=write_dz, **extra)

    def bn_bwd_dy(self, dout, y, mean, invstd, scale, bias, sum_dz, sum_dzx, act, count, **extra):
        return _bn.bn_bwd_dy(dout, y, mean, invstd, scale, bias, sum_dz, sum_dzx, act, count, **extra)

    def bn_running_update(self, running_mean, running_var, num_batches_tracked, mean, var_unb, momentum, cumulative):
        _bn.bn_running_update(running_mean, running_var, num_batches_tracked, mean, var_unb, momentum, cumulative)

    # -- squeeze-excitation (Triton extras on pool / dgate: ``pre_affine``, ``pre_act``)
    def se_pool(self, x, **extra):
        return _se.se_pool(x, **extra)

    def se_fc(self, pooled, w1, b1, w2, b2):
        return _se.se_fc(pooled, w1, b1, w2, b2)

    def se_scale(self, x, gate):
        return _se.se_scale(x, gate)

    def se_dgate(self, dout, x, **extra):
        return _se.se_dgate(dout, x, **extra)

    def se_fc_backward(self, pooled, gate, dgate, w1, b1, w2, need):
        need_w1, need_b1, need_w2, need_b2 = need
        dpooled, dw1, db1, dw2, db2 = _se.se_fc_backward(pooled, gate, dgate, w1, b1, w2,
                                                         b1 is not None and need_b1, need_b2)
        return dpooled, (dw1 if need_w1 else None), db1, (dw2 if need_w2 else None), db2

    def se_dx(self, dout, gate, dpooled, like):
        return _se.se_dx(dout, gate, dpooled, like=like)

    # -- whole-block primitives (Triton only)
    @staticmethod
    def input_shift(x):
        return _conv.input_shift(x)

    @staticmethod
    def shift_offset(weight, shift):
        return _conv.shift_offset(weight, shift)

    @staticmethod
    def tail_forward(yc, shortcut, bn_c, bn_p=None):
        return _blk.tail_forward(yc, shortcut, bn_c, bn_p)

    @staticmethod
    def tail_backward(dout, yc, shortcut, bn_c, bn_p=None):
        return _blk.tail_backward(dout, yc, shortcut, bn_c, bn_p)


KERNELS = TritonKernels()
