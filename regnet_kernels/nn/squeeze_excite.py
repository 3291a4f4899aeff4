"""``FusedSqueezeExcite``: a squeeze-excitation module on the fused op, for SE modules that are not
between two of our convs (inside a RegNet bottleneck the block-level fusion handles SE)."""
from __future__ import annotations

import torch
from torch import nn

from regnet_kernels.matching import se_structure
from regnet_kernels.ops.squeeze_excite import squeeze_excite

__all__ = ["FusedSqueezeExcite", "se_structure"]


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
