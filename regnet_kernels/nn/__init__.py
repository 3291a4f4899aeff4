"""Fused modules: drop-in replacements that keep the original parameters under their original names."""
from regnet_kernels.nn.conv_bn_act import FusedConvBNAct2d

__all__ = ["FusedConvBNAct2d"]
