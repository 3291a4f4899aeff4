"""``FusedConvBNAct2d``: conv -> BatchNorm -> (ReLU) as one fused op, a drop-in for the original module."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from regnet_kernels.distributed import sync_enabled
from regnet_kernels.ops.conv_bn_act import conv_bn_act

__all__ = ["FusedConvBNAct2d", "conv_unsupported_reason", "bn_unsupported_reason", "activation_name", "computes"]


def conv_unsupported_reason(conv: nn.Module) -> Optional[str]:
    """Why ``conv`` cannot feed the fused op (None when it can)."""
    if type(conv) is not nn.Conv2d:  # subclasses (e.g. timm's Conv2dSame) may change forward
        return f"{type(conv).__name__} is not a plain nn.Conv2d"
    if conv.bias is not None:
        return "conv has a bias (BatchNorm follows it; fusing would change its gradient)"
    if conv.padding_mode != "zeros":
        return f"conv padding_mode={conv.padding_mode!r} (only 'zeros')"
    if isinstance(conv.padding, str):
        return f"conv padding={conv.padding!r} (only explicit ints)"
    if tuple(conv.dilation) != (1, 1):
        return f"conv dilation={tuple(conv.dilation)} (only 1)"
    if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
        return f"conv stride {tuple(conv.stride)} / padding {tuple(conv.padding)} are not square"
    return None


def bn_unsupported_reason(bn: nn.Module, channels: int) -> Optional[str]:
    """Why ``bn`` cannot be fused after a conv with ``channels`` outputs (None when it can)."""
    if type(bn) is nn.SyncBatchNorm:
        return None if bn.num_features == channels else (
            f"BatchNorm has {bn.num_features} features but the conv has {channels} output channels")
    if not isinstance(bn, nn.BatchNorm2d):
        return f"{type(bn).__name__} is not an nn.BatchNorm2d"
    # a subclass is accepted only with the norm-act contract (timm's BatchNormAct2d: batch norm, then
    # ``drop``, then ``act``); any other subclass may have changed forward
    if type(bn) is not nn.BatchNorm2d and not (hasattr(bn, "act") and hasattr(bn, "drop")):
        return f"{type(bn).__name__} subclasses BatchNorm2d with an unknown forward"
    if bn.num_features != channels:
        return f"BatchNorm has {bn.num_features} features but the conv has {channels} output channels"
    drop = getattr(bn, "drop", None)
    if drop is not None and not isinstance(drop, nn.Identity):
        return f"BatchNorm carries a {type(drop).__name__} (only Identity)"
    return None


def computes(m: nn.Module, fn) -> bool:
    """True if parameter-free module ``m`` computes ``fn`` (an exact probe on both signs and large values).

    Libraries wrap the same activation in their own classes (timm's ``Sigmoid``); what matters for
    fusion is the function, so it is checked directly instead of by class name.
    """
    if type(m) in (nn.ReLU, nn.Sigmoid, nn.Identity):
        return fn(torch.tensor([-1.0, 2.0])).equal(m(torch.tensor([-1.0, 2.0])))
    if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
        return False
    probe = torch.linspace(-9.0, 9.0, 37, dtype=torch.float64).reshape(1, 37, 1, 1)
    try:
        with torch.no_grad():
            out = m(probe.clone())
    except Exception:
        return False
    return isinstance(out, torch.Tensor) and out.shape == probe.shape and torch.allclose(out, fn(probe), atol=1e-12)


def activation_name(act: Optional[nn.Module]) -> Tuple[Optional[str], Optional[str]]:
    """``(name, None)`` for a supported activation module (``"relu"`` or None), else ``(None, reason)``."""
    if act is None or isinstance(act, nn.Identity):
        return None, None
    if computes(act, torch.relu):
        return "relu", None
    return None, f"activation {type(act).__name__} is not supported (ReLU or none)"


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
        activation: ``"relu"`` or None.
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
        activation: Optional[str] = "relu",
        *,
        names: Tuple[str, str] = ("conv", "bn"),
        extra_children: Optional[Dict[str, nn.Module]] = None,
        backend: str = "auto",
    ):
        super().__init__()
        reason = conv_unsupported_reason(conv) or bn_unsupported_reason(bn, conv.out_channels)
        if reason is not None:
            raise ValueError(f"FusedConvBNAct2d: {reason}")
        if activation not in (None, "relu"):
            raise ValueError(f"FusedConvBNAct2d: activation must be 'relu' or None, got {activation!r}")
        self._names = tuple(names)
        self.add_module(names[0], conv)
        self.add_module(names[1], bn)
        for k, m in (extra_children or {}).items():
            self.add_module(k, m)
        self.activation = activation
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
        return f"activation={self.activation}, backend={self.backend!r}"

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
            activation=self.activation, backend=self.backend,
            sync_batch_stats=sync_enabled(bn), process_group=getattr(bn, "process_group", None),
        )
