"""``FusedConvBNAct2d``: conv -> BatchNorm -> (ReLU) as one fused op, a drop-in for the original module."""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from regnet_kernels.distributed import sync_enabled
from regnet_kernels.matching import KERNEL_ACT, Activation, bn_unsupported_reason, conv_unsupported_reason
from regnet_kernels.ops.conv_bn_act import conv_bn_act

__all__ = ["FusedConvBNAct2d", "Activation", "conv_unsupported_reason", "bn_unsupported_reason"]


class FusedConvBNAct2d(nn.Module):
    """Fused ``act(BatchNorm2d(Conv2d(x)))`` holding the original conv and BatchNorm modules.

    The original submodules stay children under their original names (``"0"``, ``"1"``, ``"2"`` for a
    torchvision ``Conv2dNormActivation``; ``conv``/``bn`` for timm's ``ConvNormAct``), so parameter and
    buffer names, ``state_dict`` keys and the parameter objects themselves are unchanged: optimizers,
    checkpoints and ``load_state_dict`` keep working. BatchNorm semantics are ``nn.BatchNorm2d``'s:
    batch statistics in training (running statistics updated with momentum or the cumulative average,
    ``num_batches_tracked`` incremented), running statistics in eval, and batch statistics whenever
    ``track_running_stats=False``. An ``nn.SyncBatchNorm`` (before or after :func:`regnet_kernels.optimize`)
    reduces its batch statistics across its process group in training, on any torch.distributed backend.

    Args:
        conv: ``nn.Conv2d`` without bias, dilation 1, zero padding, square stride and padding.
        bn: ``nn.BatchNorm2d`` over the conv's output channels.
        activation: :class:`~regnet_kernels.matching.Activation` ``RELU`` or ``NONE`` (``"relu"`` / None
            also accepted).
        names: child names for ``(conv, bn)``.
        extra_children: further parameter-free children to keep (e.g. the original ReLU as ``"2"``).
        backend: ``"auto"``, ``"eager"``, ``"triton"`` or ``"cuda"``.

    Shape:
        ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``, any memory format, output in the input's.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d,
        activation: Union[Activation, str, None] = Activation.RELU,
        *,
        names: Tuple[str, str] = ("conv", "bn"),
        extra_children: Optional[Dict[str, nn.Module]] = None,
        backend: str = "auto",
    ):
        super().__init__()
        reason = conv_unsupported_reason(conv) or bn_unsupported_reason(bn, conv.out_channels)
        if reason is not None:
            raise ValueError(f"FusedConvBNAct2d: {reason}")
        try:
            act = Activation.parse(activation)
        except ValueError:
            act = None
        if act not in KERNEL_ACT:
            raise ValueError(f"FusedConvBNAct2d: activation must be Activation.RELU or Activation.NONE ('relu' or "
                             f"None), got {activation!r}")
        self._names = tuple(names)
        self.add_module(names[0], conv)
        self.add_module(names[1], bn)
        for k, m in (extra_children or {}).items():
            self.add_module(k, m)
        self.activation = act
        self.backend = backend

    # (not named ``conv``/``bn``: those may be the children's own names)
    @property
    def conv_module(self) -> nn.Conv2d:
        return self._modules[self._names[0]]

    @property
    def bn_module(self) -> nn.BatchNorm2d:
        return self._modules[self._names[1]]

    def __getitem__(self, idx):
        """Index like the ``nn.Sequential`` it replaced (``m[0]`` is the conv)."""
        keys = list(self._modules)
        if isinstance(idx, int):
            return self._modules[keys[idx]]
        return self._modules[idx]

    def __len__(self) -> int:
        return len(self._modules)

    def extra_repr(self) -> str:
        return f"activation={self.activation.value}, backend={self.backend!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.conv_module, self.bn_module
        # nn.BatchNorm2d's rules: batch stats in training or without running stats; update only
        # when training and tracking.
        use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        update = bn.training and bn.track_running_stats and bn.running_mean is not None
        rm = bn.running_mean if (update or not use_batch_stats) else None
        rv = bn.running_var if (update or not use_batch_stats) else None
        return conv_bn_act(
            x, conv.weight, bn.weight, bn.bias, rm, rv,
            num_batches_tracked=bn.num_batches_tracked if update else None,
            stride=conv.stride[0], padding=conv.padding[0], groups=conv.groups,
            training=use_batch_stats, momentum=bn.momentum, eps=bn.eps,
            activation=self.activation.value, backend=self.backend,
            sync_batch_stats=sync_enabled(bn), process_group=getattr(bn, "process_group", None),
        )
