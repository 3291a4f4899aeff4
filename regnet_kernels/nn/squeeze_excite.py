"""``FusedSqueezeExcite``: a squeeze-excitation module on the fused op, for SE modules that are not
between two of our convs (inside a RegNet bottleneck the block-level fusion handles SE)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from regnet_kernels.nn.conv_bn_act import computes
from regnet_kernels.ops.squeeze_excite import squeeze_excite

__all__ = ["FusedSqueezeExcite", "se_structure"]


def _fc_reason(fc: nn.Module, name: str) -> Optional[str]:
    if type(fc) is not nn.Conv2d:
        return f"SE {name} is {type(fc).__name__}, not a plain nn.Conv2d"
    if tuple(fc.kernel_size) != (1, 1) or tuple(fc.stride) != (1, 1) or fc.groups != 1:
        return f"SE {name} is not a dense 1x1 conv"
    if tuple(fc.padding) != (0, 0) or tuple(fc.dilation) != (1, 1):
        return f"SE {name} has padding or dilation"
    return None


def se_structure(m: nn.Module) -> Tuple[Optional[Tuple[str, str]], Optional[str]]:
    """Recognise a squeeze-excitation module by structure.

    Returns ``((fc1_name, fc2_name), None)`` for a supported one, ``(None, reason)`` for an SE-shaped
    module that cannot be fused, ``(None, None)`` for anything else. Accepted contracts:
    torchvision's ``SqueezeExcitation`` (children ``avgpool`` = AdaptiveAvgPool2d(1), ``fc1``,
    ``activation``, ``fc2``, ``scale_activation``) and timm's ``SEModule`` (``fc1``, ``bn``, ``act``,
    ``fc2``, ``gate``; no max-pool branch).
    """
    names = dict(m.named_children())
    tv = {"avgpool", "fc1", "activation", "fc2", "scale_activation"}
    timm = {"fc1", "bn", "act", "fc2", "gate"}
    if set(names) == tv:
        pool = names["avgpool"]
        if not isinstance(pool, nn.AdaptiveAvgPool2d) or pool.output_size not in (1, (1, 1)):
            return None, "SE pool is not a global average pool"
        act, gate = names["activation"], names["scale_activation"]
    elif set(names) == timm:
        if getattr(m, "add_maxpool", False):
            return None, "SE with a max-pool branch"
        if not isinstance(names["bn"], nn.Identity):
            return None, "SE with a norm layer between the FCs"
        act, gate = names["act"], names["gate"]
    else:
        return None, None
    if not computes(act, torch.relu):
        return None, f"SE activation {type(act).__name__} (only ReLU)"
    if not computes(gate, torch.sigmoid):
        return None, f"SE gate {type(gate).__name__} (only sigmoid)"
    fc1, fc2 = names["fc1"], names["fc2"]
    reason = _fc_reason(fc1, "fc1") or _fc_reason(fc2, "fc2")
    if reason is None and (fc2.in_channels != fc1.out_channels or fc2.out_channels != fc1.in_channels):
        reason = "SE fc1/fc2 channel counts do not chain"
    if reason is not None:
        return None, reason
    return ("fc1", "fc2"), None


class FusedSqueezeExcite(nn.Module):
    """Fused ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))`` holding the original SE children under their
    original names (so ``fc1.weight``, ``fc2.bias``... keep their ``state_dict`` keys and objects).

    Args:
        se: a torchvision ``SqueezeExcitation`` or timm ``SEModule`` (see :func:`se_structure`).
        backend: ``"auto"``, ``"eager"``, ``"triton"`` or ``"cuda"``.

    Shape:
        ``(N, C, H, W) -> (N, C, H, W)``, output in the input's memory format.
    """

    def __init__(self, se: nn.Module, backend: str = "auto"):
        super().__init__()
        names, reason = se_structure(se)
        if names is None:
            raise ValueError(f"FusedSqueezeExcite: {reason or 'not a squeeze-excitation module'}")
        for k, child in se.named_children():
            self.add_module(k, child)
        self.backend = backend

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self._modules["fc1"], self._modules["fc2"]
        return squeeze_excite(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, backend=self.backend)
