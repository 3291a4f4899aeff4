"""``FusedBottleneck``: a whole RegNet bottleneck block on one fused op (training and eval).

Recognised by structure: torchvision's (and our zoo's) ``ResBottleneckBlock`` (children ``proj``, ``f`` =
``a, b, [se], c``, ``activation``) and timm's RegNet ``Bottleneck`` (``conv1, conv2, se, conv3,
downsample, act3, drop_path``). The original children stay under their original names, so the
``state_dict`` is unchanged. Where the fused block cannot run a call (BatchNorms in mixed train/eval
modes, eval mode without running statistics, gradients requested in eval mode, or a backend without a
block kernel) it runs the block's forward over its children, whose conv-BN-ReLU pieces are themselves
fused.
"""
from __future__ import annotations

import torch
from torch import nn

from regnet_kernels import backends as _backends
from regnet_kernels.distributed import sync_enabled
from regnet_kernels.matching import BottleneckLayout, parse_bottleneck
from regnet_kernels.ops import dispatch as _dispatch
from regnet_kernels.ops.bottleneck import OP_NAME, bottleneck_eval, bottleneck_train
from regnet_kernels.ops.bottleneck.reference import batch_stats
from regnet_kernels.ops.conv_bn_act import update_running_stats_op

__all__ = ["FusedBottleneck", "BottleneckLayout", "match_bottleneck"]


def match_bottleneck(m: nn.Module, backend: str):
    """Optimize matcher: ``(FusedBottleneck, None)``, ``(None, reason)`` or ``(None, None)``."""
    layout, reason = parse_bottleneck(m)
    if layout is None:
        return None, reason
    return FusedBottleneck(m, layout, backend=backend), None


class FusedBottleneck(nn.Module):
    """A RegNet bottleneck block run by the fused ``bottleneck`` ops.

    Args:
        block: the original block; its children are kept under their names.
        layout: where the convs, BatchNorms, SE and projection live (from :func:`match_bottleneck`).
        backend: ``"auto"``, ``"eager"``, ``"triton"`` or ``"cuda"`` (no block kernel: per-op fusion).

    Shape:
        ``(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)``, output in the input's memory format.
    """

    def __init__(self, block: nn.Module, layout: BottleneckLayout, backend: str = "auto"):
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        self.layout = layout
        self.backend = backend

    def extra_repr(self) -> str:
        return f"style={self.layout.style}, se={self.layout.se is not None}, " \
               f"proj={self.layout.proj is not None}, backend={self.backend!r}"

    def _pieces(self):
        lay = self.layout
        get = self.get_submodule
        convs = [get(lay.a[0]), get(lay.b[0]), get(lay.c[0])] + ([get(lay.proj[0])] if lay.proj else [])
        bns = [get(lay.a[1]), get(lay.b[1]), get(lay.c[1])] + ([get(lay.proj[1])] if lay.proj else [])
        fcs = (get(lay.se[0]), get(lay.se[1])) if lay.se else None
        return convs, bns, fcs

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        """The block's own forward over this module's current children (themselves fused per op where
        possible): the children, not a stored copy of the block, so a later child swap (e.g.
        ``convert_sync_batchnorm``) is honoured."""
        m = self._modules
        if self.layout.style == "torchvision":
            short = m["proj"](x) if "proj" in m else x
            return m["activation"](short + m["f"](x))
        y = m["conv3"](m["se"](m["conv2"](m["conv1"](x))))
        return m["act3"](m["drop_path"](y) + m["downsample"](x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convs, bns, fcs = self._pieces()
        training = bns[0].training
        if any(bn.training != training for bn in bns):
            return self._fallback(x)
        if any(sync_enabled(bn) for bn in bns):  # converted to SyncBatchNorm after optimize()
            return self._fallback(x)
        weights = [c.weight for c in convs]
        dt = _dispatch.autocast_dtype(x.device.type)
        if dt is not None:
            x = x.to(dt)
            weights = [w.to(dt) for w in weights]
        try:
            backend = _backends.resolve(OP_NAME, [x] + weights, self.backend)
        except _backends.BackendUnavailableError:
            return self._fallback(x)
        se = (fcs[0].weight, fcs[0].bias, fcs[1].weight, fcs[1].bias) if fcs else (None,) * 4
        proj = (weights[3], bns[3].weight, bns[3].bias) if len(convs) == 4 else (None,) * 3
        conv_b = convs[1]
        eps = [bn.eps for bn in bns] + ([bns[2].eps] if len(bns) == 3 else [])
        if training:
            params = (weights[0], bns[0].weight, bns[0].bias, weights[1], bns[1].weight, bns[1].bias, *se,
                      weights[2], bns[2].weight, bns[2].bias, *proj)
            # the op validates first: a refused call leaves every buffer as it was
            out, stats = bottleneck_train(x, params, conv_b.stride[0], conv_b.groups, eps, backend)
            for bn in bns:
                if bn.track_running_stats and bn.num_batches_tracked is not None:
                    bn.num_batches_tracked.add_(1)
            if out.numel() > 0:  # nn.BatchNorm2d counts an empty batch but keeps its running statistics
                self._update_running_stats(bns, stats.detach(), backend)
            return out
        if any(bn.running_mean is None or bn.running_var is None for bn in bns):
            return self._fallback(x)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return self._fallback(x)  # the eval block op has no backward; per-op fusion does
        run = [(w, bn.weight, bn.bias, bn.running_mean, bn.running_var) for w, bn in zip(weights, bns)]
        proj_run = run[3] if len(run) == 4 else (None,) * 5
        params = (*run[0], *run[1], *se, *run[2], *proj_run)
        return bottleneck_eval(x, params, conv_b.stride[0], conv_b.groups, eps, backend)

    def _update_running_stats(self, bns, stats: torch.Tensor, backend: str) -> None:
        parts = batch_stats(stats, bns[0].num_features, bns[2].num_features, len(bns) == 4)
        for key, bn in zip(("a", "b", "c", "p"), bns):
            if not (bn.track_running_stats and bn.running_mean is not None):
                continue
            mean, var_unb = parts[key]
            cumulative = bn.momentum is None
            update_running_stats_op(bn.running_mean, bn.running_var, bn.num_batches_tracked if cumulative else None,
                       mean, var_unb, 0.0 if cumulative else float(bn.momentum), cumulative, backend)
