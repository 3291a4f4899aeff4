"""Fused modules: drop-in replacements that keep the original parameters under their original names."""
from regnet_kernels.nn.bottleneck import FusedBottleneck
from regnet_kernels.nn.conv_bn_act import FusedConvBNAct2d
from regnet_kernels.nn.squeeze_excite import FusedSqueezeExcite

__all__ = ["FusedBottleneck", "FusedConvBNAct2d", "FusedSqueezeExcite"]
