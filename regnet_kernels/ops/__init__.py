"""Fused ops, each registered as ``torch.ops.regnet_kernels.*`` with a public functional here."""
from regnet_kernels.ops.conv_bn_act import conv_bn_act

__all__ = ["conv_bn_act"]
