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

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from regnet_kernels import backends as _backends
from regnet_kernels.distributed import sync_enabled
from regnet_kernels.nn.conv_bn_act import activation_name, bn_unsupported_reason, computes, conv_unsupported_reason
from regnet_kernels.nn.squeeze_excite import se_structure
from regnet_kernels.ops.bottleneck import OP_NAME, bottleneck_eval, bottleneck_train
from regnet_kernels.ops.bottleneck.reference import unpack_stats
from regnet_kernels.ops.conv_bn_act import _update_op

__all__ = ["FusedBottleneck", "BottleneckLayout", "match_bottleneck"]


@dataclass(frozen=True)
class BottleneckLayout:
    """Where each piece of a bottleneck lives, as submodule paths relative to the block."""

    a: Tuple[str, str]
    b: Tuple[str, str]
    c: Tuple[str, str]
    se: Optional[Tuple[str, str]]
    proj: Optional[Tuple[str, str]]
    style: str


def _conv_bn_act_of(m: nn.Module, prefix: str):
    """``((conv_path, bn_path), activation, reason)`` for a conv-BN(-act) container ``m``."""
    if m is None:
        return None, None, "missing"
    children = list(m.named_children())
    if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward and len(children) in (2, 3):
        (cn, conv), (bn_name, bn) = children[0], children[1]
        act_mod = children[2][1] if len(children) == 3 else None
    elif set(dict(children)) <= {"conv", "bn"} and {"conv", "bn"} <= set(dict(children)) and \
            getattr(m, "aa", None) is None:
        cn, bn_name = "conv", "bn"
        conv, bn = m.conv, m.bn
        act_mod = getattr(bn, "act", None)
    else:
        return None, None, f"{prefix or 'module'} is not a conv -> BatchNorm (-> act) container"
    if isinstance(bn, nn.SyncBatchNorm):
        return None, None, "SyncBatchNorm in the block (fused per op instead, with cross-rank statistics)"
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return None, None, f"{prefix} is not conv -> BatchNorm"
    reason = conv_unsupported_reason(conv) or bn_unsupported_reason(bn, conv.out_channels)
    if reason is not None:
        return None, None, f"{prefix}: {reason}"
    act, reason = activation_name(act_mod)
    if reason is not None:
        return None, None, f"{prefix}: {reason}"
    if len(children) == 3 and getattr(bn, "act", None) is not None and not isinstance(bn.act, nn.Identity):
        return None, None, f"{prefix}: two activations"
    join = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)
    return (join(cn), join(bn_name)), act, None


def _check_geometry(block: nn.Module, lay: BottleneckLayout) -> Optional[str]:
    conv_a = block.get_submodule(lay.a[0])
    conv_b = block.get_submodule(lay.b[0])
    conv_c = block.get_submodule(lay.c[0])
    for name, conv in (("a", conv_a), ("c", conv_c)):
        if tuple(conv.kernel_size) != (1, 1) or conv.stride[0] != 1 or conv.groups != 1 or conv.padding[0] != 0:
            return f"conv {name} is not a dense 1x1 stride-1 conv"
    k = conv_b.kernel_size
    if k[0] != k[1] or k[0] % 2 == 0 or conv_b.padding[0] != k[0] // 2:
        return "conv b is not a square odd kernel with 'same' padding"
    if conv_b.in_channels != conv_a.out_channels or conv_c.in_channels != conv_b.out_channels:
        return "conv channels do not chain"
    if conv_b.out_channels != conv_a.out_channels:
        return "conv b changes the bottleneck width"
    stride = conv_b.stride[0]
    if lay.se is not None:
        fc1 = block.get_submodule(lay.se[0])
        if fc1.in_channels != conv_b.out_channels:
            return "SE width does not match conv b"
    if lay.proj is not None:
        conv_p = block.get_submodule(lay.proj[0])
        if (tuple(conv_p.kernel_size) != (1, 1) or conv_p.stride[0] != stride or conv_p.groups != 1
                or conv_p.padding[0] != 0 or conv_p.out_channels != conv_c.out_channels
                or conv_p.in_channels != conv_a.in_channels):
            return "projection shortcut is not a 1x1 conv matching the block"
    elif stride != 1 or conv_a.in_channels != conv_c.out_channels:
        return "identity shortcut but the block changes shape"
    return None


def _match_torchvision(m: nn.Module):
    names = dict(m.named_children())
    if set(names) not in ({"f", "activation"}, {"proj", "f", "activation"}):
        return None, None
    f = names["f"]
    if not isinstance(f, nn.Sequential) or type(f).forward is not nn.Sequential.forward:
        return None, None
    order = [n for n, _ in f.named_children()]
    if order not in (["a", "b", "c"], ["a", "b", "se", "c"]):
        return None, None
    if not computes(names["activation"], torch.relu):
        return None, f"block activation {type(names['activation']).__name__} (only ReLU)"
    pieces = {}
    for key, acts in (("a", "relu"), ("b", "relu"), ("c", None)):
        paths, act, reason = _conv_bn_act_of(f.get_submodule(key), f"f.{key}")
        if reason is not None:
            return None, reason
        if act != acts:
            return None, f"f.{key} has activation {act} (expected {acts})"
        pieces[key] = paths
    se = None
    if "se" in order:
        fc, reason = se_structure(f.se)
        if fc is None:
            return None, reason or "f.se is not a squeeze-excitation module"
        se = ("f.se.fc1", "f.se.fc2")
    proj = None
    if "proj" in names:
        proj, act, reason = _conv_bn_act_of(names["proj"], "proj")
        if reason is not None:
            return None, reason
        if act is not None:
            return None, "projection shortcut has an activation"
    return BottleneckLayout(pieces["a"], pieces["b"], pieces["c"], se, proj, "torchvision"), None


def _match_timm(m: nn.Module):
    names = dict(m.named_children())
    required = {"conv1", "conv2", "conv3", "se", "act3", "drop_path"}
    if not required <= set(names) or set(names) - required - {"downsample"}:
        return None, None
    if "downsample" not in names:
        return None, "block without a shortcut"
    dp = names["drop_path"]
    if not isinstance(dp, nn.Identity) and getattr(dp, "drop_prob", None) != 0:
        return None, "drop_path is active (stochastic depth is not fused)"
    if not computes(names["act3"], torch.relu):
        return None, f"block activation {type(names['act3']).__name__} (only ReLU)"
    pieces = {}
    for key, acts in (("conv1", "relu"), ("conv2", "relu"), ("conv3", None)):
        paths, act, reason = _conv_bn_act_of(names[key], key)
        if reason is not None:
            return None, reason
        if act != acts:
            return None, f"{key} has activation {act} (expected {acts})"
        pieces[key] = paths
    se = None
    if not isinstance(names["se"], nn.Identity):
        fc, reason = se_structure(names["se"])
        if fc is None:
            return None, reason or "se is not a squeeze-excitation module"
        se = ("se.fc1", "se.fc2")
    proj = None
    ds = names["downsample"]
    if not isinstance(ds, nn.Identity):
        proj, act, reason = _conv_bn_act_of(ds, "downsample")
        if reason is not None:
            return None, reason
        if act is not None:
            return None, "downsample has an activation"
    return BottleneckLayout(pieces["conv1"], pieces["conv2"], pieces["conv3"], se, proj, "timm"), None


def match_bottleneck(m: nn.Module, backend: str):
    """Optimize matcher: ``(FusedBottleneck, None)``, ``(None, reason)`` or ``(None, None)``."""
    for matcher in (_match_torchvision, _match_timm):
        layout, reason = matcher(m)
        if layout is not None:
            reason = _check_geometry(m, layout)
            if reason is None:
                return FusedBottleneck(m, layout, backend=backend), None
            return None, reason
        if reason is not None:
            return None, reason
    return None, None


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
        if torch.is_autocast_enabled(x.device.type):
            dt = torch.get_autocast_dtype(x.device.type)
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
        parts = unpack_stats(stats, bns[0].num_features, bns[2].num_features, len(bns) == 4)
        for key, bn in zip(("a", "b", "c", "p"), bns):
            if not (bn.track_running_stats and bn.running_mean is not None):
                continue
            mean, _, var_unb = parts[key]
            cumulative = bn.momentum is None
            _update_op(bn.running_mean, bn.running_var, bn.num_batches_tracked if cumulative else None,
                       mean, var_unb, 0.0 if cumulative else float(bn.momentum), cumulative, backend)
