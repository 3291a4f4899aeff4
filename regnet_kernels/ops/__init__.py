"""Fused ops, each registered as ``torch.ops.regnet_kernels.*`` with a public functional here."""
from regnet_kernels.ops.conv_bn_act import conv_bn_act
from regnet_kernels.ops.squeeze_excite import squeeze_excite

__all__ = ["conv_bn_act", "squeeze_excite"]
