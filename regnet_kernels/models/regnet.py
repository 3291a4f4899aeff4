"""RegNet modules in torchvision's layout: stem, stages of residual bottlenecks (with SE), head.

The design space and its width rounding (``rounding="torchvision"`` or ``"pycls"``) live in
:mod:`regnet_kernels.models.params`; :class:`RegNetParams`, :class:`BlockSpec`, :class:`StageSpec` and
:data:`ROUNDINGS` are re-exported here.

The module tree (names, nesting, parameter and buffer shapes, construction order and weight init) is
identical to ``torchvision.models.RegNet``, so a torchvision ``state_dict`` loads with ``strict=True``
and a seeded construction draws the same initial weights. torchvision is not imported here.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Callable

from torch import Tensor, nn

from .params import MAX_DEPTH, MAX_WIDTH, ROUNDINGS, BlockSpec, RegNetParams, StageSpec, is_integer  # noqa: F401

__all__ = [
    "AnyStage",
    "BottleneckTransform",
    "Conv2dNormActivation",
    "RegNet",
    "ResBottleneckBlock",
    "SimpleStemIN",
    "SqueezeExcitation",
]


# ------------------------------------------------------------------------------------------------ #
# Modules (torchvision's layout and construction order)
# ------------------------------------------------------------------------------------------------ #

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[..., nn.Module]


class Conv2dNormActivation(nn.Sequential):
    """Conv2d (no bias when normalised) -> norm -> activation, as children ``"0"``, ``"1"``, ``"2"``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size; padding is ``(kernel_size - 1) // 2`` ("same" at stride 1).
        stride: conv stride.
        groups: conv groups.
        norm_layer: called with ``out_channels``; None for no norm (the conv then has a bias).
        activation_layer: called with ``inplace=True``; None for no activation.

    Shapes:
        ``(N, in_channels, H, W) -> (N, out_channels, (H - 1) // stride + 1, (W - 1) // stride + 1)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        activation_layer: ActLayer | None = nn.ReLU,
    ) -> None:
        padding = (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                groups=groups,
                bias=norm_layer is None,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SimpleStemIN(Conv2dNormActivation):
    """ImageNet stem: 3x3 stride-2 conv, norm, activation.

    Shapes:
        ``(N, width_in, H, W) -> (N, width_out, (H - 1) // 2 + 1, (W - 1) // 2 + 1)``.
    """

    def __init__(
        self, width_in: int, width_out: int, norm_layer: NormLayer, activation_layer: ActLayer
    ) -> None:
        super().__init__(
            width_in,
            width_out,
            kernel_size=3,
            stride=2,
            norm_layer=norm_layer,
            activation_layer=activation_layer,
        )


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation: ``x * sigmoid(fc2(act(fc1(avgpool(x)))))`` with 1x1 convs as the FCs.

    Args:
        input_channels: channels of ``x``.
        squeeze_channels: hidden width of the bottleneck MLP.
        activation: hidden activation (constructed without arguments, so not in-place).
        scale_activation: gate activation.

    Shapes:
        ``x: (N, input_channels, H, W) -> (N, input_channels, H, W)``.
    """

    def __init__(
        self,
        input_channels: int,
        squeeze_channels: int,
        activation: ActLayer = nn.ReLU,
        scale_activation: ActLayer = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, x: Tensor) -> Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self._scale(x) * x


class BottleneckTransform(nn.Sequential):
    """Bottleneck: 1x1 ``a`` -> grouped 3x3 ``b`` (strided) -> [``se``] -> 1x1 ``c`` (no activation).

    Args:
        width_in: input channels.
        width_out: output channels.
        stride: stride of ``b``.
        group_width: channels per group of ``b``.
        bottleneck_width: output channels of ``a`` and ``b``.
        se_width: squeeze channels of ``se``, or None for no SE.
        norm_layer: norm constructor (called with the channel count).
        activation_layer: activation constructor.

    Shapes:
        ``(N, width_in, H, W) -> (N, width_out, (H - 1) // stride + 1, (W - 1) // stride + 1)``.
    """

    def __init__(
        self,
        width_in: int,
        width_out: int,
        stride: int,
        group_width: int,
        bottleneck_width: int,
        se_width: int | None,
        norm_layer: NormLayer,
        activation_layer: ActLayer,
    ) -> None:
        w_b = bottleneck_width
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["a"] = Conv2dNormActivation(
            width_in, w_b, kernel_size=1, norm_layer=norm_layer, activation_layer=activation_layer
        )
        layers["b"] = Conv2dNormActivation(
            w_b,
            w_b,
            kernel_size=3,
            stride=stride,
            groups=w_b // group_width,
            norm_layer=norm_layer,
            activation_layer=activation_layer,
        )
        if se_width is not None:
            layers["se"] = SqueezeExcitation(w_b, se_width, activation=activation_layer)
        layers["c"] = Conv2dNormActivation(
            w_b, width_out, kernel_size=1, norm_layer=norm_layer, activation_layer=None
        )
        super().__init__(layers)


class ResBottleneckBlock(nn.Module):
    """Residual bottleneck block: ``act(shortcut(x) + f(x))``.

    ``proj`` (1x1 strided conv + norm) is the shortcut when the shape changes, else None (identity).

    Args:
        spec: the resolved block (see :meth:`RegNetParams.blocks`).
        norm_layer: norm constructor.
        activation_layer: activation constructor.

    Shapes:
        ``(N, spec.width_in, H, W) -> (N, spec.width_out, (H - 1) // stride + 1, (W - 1) // stride + 1)``.
    """

    def __init__(self, spec: BlockSpec, norm_layer: NormLayer, activation_layer: ActLayer) -> None:
        super().__init__()
        # Assigned before `f` so the registration (and seeded init) order matches torchvision's; a None
        # proj stays a plain attribute and is not a child module, as in torchvision.
        self.proj: Conv2dNormActivation | None = None
        if spec.has_proj:
            self.proj = Conv2dNormActivation(
                spec.width_in,
                spec.width_out,
                kernel_size=1,
                stride=spec.stride,
                norm_layer=norm_layer,
                activation_layer=None,
            )
        self.f = BottleneckTransform(
            spec.width_in,
            spec.width_out,
            spec.stride,
            spec.group_width,
            spec.bottleneck_width,
            spec.se_width,
            norm_layer,
            activation_layer,
        )
        self.activation = activation_layer(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.proj is not None:
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


class AnyStage(nn.Sequential):
    """A stage: blocks named ``block{stage}-{index}`` that share the output shape.

    Args:
        blocks: the stage's resolved blocks, in order.
        norm_layer: norm constructor.
        activation_layer: activation constructor.
    """

    def __init__(
        self, blocks: Sequence[BlockSpec], norm_layer: NormLayer, activation_layer: ActLayer
    ) -> None:
        super().__init__()
        for spec in blocks:
            self.add_module(spec.name, ResBottleneckBlock(spec, norm_layer, activation_layer))


class RegNet(nn.Module):
    """RegNet classifier with torchvision's module tree, ``state_dict`` names and weight init.

    Children: ``stem`` (:class:`SimpleStemIN`), ``trunk_output`` (``nn.Sequential`` of ``block1`` ..
    ``blockS``, each an :class:`AnyStage`), ``avgpool``, ``fc``.

    Args:
        params: the design point (widths, depths, groups, SE, stem width, rounding).
        num_classes: classifier outputs.
        norm_layer: norm constructor called with a channel count. Default:
            ``BatchNorm2d(eps=norm_eps, momentum=norm_momentum)``.
        activation_layer: activation constructor (called with ``inplace=True``, and without arguments in
            SE). Default: ``nn.ReLU``.
        norm_eps: BatchNorm eps when ``norm_layer`` is None (torchvision and pycls: 1e-5).
        norm_momentum: BatchNorm momentum when ``norm_layer`` is None (torchvision and pycls: 0.1).

    Shapes:
        ``x: (N, 3, H, W)`` float -> logits ``(N, num_classes)``, on the parameters' device and dtype.

    Equivalent PyTorch:
        ``torchvision.models.regnet_y_400mf()`` and friends (same modules, same init for the same seed).
    """

    def __init__(
        self,
        params: RegNetParams,
        num_classes: int = 1000,
        norm_layer: NormLayer | None = None,
        activation_layer: ActLayer | None = None,
        norm_eps: float = 1e-5,
        norm_momentum: float | None = 0.1,
    ) -> None:
        super().__init__()
        if not isinstance(params, RegNetParams):
            raise TypeError(f"params must be a RegNetParams, got {type(params).__name__}")
        if not is_integer(num_classes) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if norm_layer is None:
            norm_layer = partial(nn.BatchNorm2d, eps=norm_eps, momentum=norm_momentum)
        if activation_layer is None:
            activation_layer = nn.ReLU
        self.regnet_params = params

        self.stem = SimpleStemIN(3, params.stem_width, norm_layer, activation_layer)
        blocks = params.blocks()
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for s in range(1, params.num_stages + 1):
            stages[f"block{s}"] = AnyStage([b for b in blocks if b.stage == s], norm_layer, activation_layer)
        self.trunk_output = nn.Sequential(stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(blocks[-1].width_out, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's (and pycls's) ResNet-style init, in module order so seeded runs match draw for
        # draw. fan_out ignores groups, and SE conv biases keep their default init, exactly as there.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Classifies a batch.

        Args:
            x: images ``(N, 3, H, W)``.

        Returns:
            Logits ``(N, num_classes)``.
        """
        x = self.stem(x)
        x = self.trunk_output(x)
        x = self.avgpool(x)
        x = x.flatten(start_dim=1)
        return self.fc(x)
