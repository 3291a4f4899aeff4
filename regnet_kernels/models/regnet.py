"""RegNet: design space -> stage specs -> ``nn.Module`` tree in torchvision's layout.

The RegNet design space (Radosavovic et al. 2020, "Designing Network Design Spaces") describes a whole
network with a handful of numbers: per-block widths grow linearly (``u_j = w_0 + w_a * j``), are
quantised to powers of ``w_m`` (which splits blocks into stages), rounded to multiples of 8, and then
adjusted so that every stage width is a multiple of its group width.

Two reference implementations round that last step differently, and published checkpoints depend on
which one was used:

* ``rounding="torchvision"`` reproduces ``torchvision.models.regnet.BlockParams.from_init_params``
  (float32 arithmetic, ``_make_divisible`` with round-half-up and its "never round down by more than
  10%" correction). torchvision checkpoints need this.
* ``rounding="pycls"`` reproduces facebookresearch/pycls (``generate_regnet`` in float64 plus
  ``adjust_block_compatibility`` with Python's round-half-even ``round()`` and no 10% correction). The
  pycls model zoo (and the paper's tables) need this.

They disagree for torchvision's regnet_x_400mf, regnet_y_800mf and regnet_y_8gf.

The module tree (names, nesting, parameter and buffer shapes, construction order and weight init) is
identical to ``torchvision.models.RegNet``, so a torchvision ``state_dict`` loads with ``strict=True``
and a seeded construction draws the same initial weights. torchvision is not imported here.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "ROUNDINGS",
    "AnyStage",
    "BlockSpec",
    "BottleneckTransform",
    "Conv2dNormActivation",
    "RegNet",
    "RegNetParams",
    "ResBottleneckBlock",
    "SimpleStemIN",
    "SqueezeExcitation",
    "StageSpec",
]

#: Width-rounding rules accepted by :class:`RegNetParams`.
ROUNDINGS = ("torchvision", "pycls")

# Both codebases quantise block widths to multiples of 8 and downsample by 2 at every stage start.
_QUANT = 8
_STRIDE = 2


# ------------------------------------------------------------------------------------------------ #
# Design space -> stage specs
# ------------------------------------------------------------------------------------------------ #


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``depth`` blocks that share output width, group width and bottleneck width.

    Attributes:
        depth: number of blocks in the stage.
        width: output channels of every block in the stage.
        group_width: channels per group of the grouped 3x3 conv (already clipped to the stage width).
        bottleneck_width: channels of the bottleneck (``round(width * bottleneck_multiplier)``).
        stride: stride of the first block (the others use 1).
    """

    depth: int
    width: int
    group_width: int
    bottleneck_width: int
    stride: int

    @property
    def groups(self) -> int:
        """Number of groups of the stage's 3x3 conv."""
        return self.bottleneck_width // self.group_width


@dataclass(frozen=True)
class BlockSpec:
    """One residual bottleneck block, fully resolved.

    Attributes:
        stage: 1-based stage index (as in torchvision's module names).
        index: 0-based block index within the stage.
        width_in: input channels.
        width_out: output channels.
        stride: stride of the 3x3 conv and of the projection shortcut.
        group_width: channels per group of the 3x3 conv.
        bottleneck_width: channels of the a/b convs.
        se_width: squeeze channels of the SE block (``round(se_ratio * width_in)``), or None without SE.
    """

    stage: int
    index: int
    width_in: int
    width_out: int
    stride: int
    group_width: int
    bottleneck_width: int
    se_width: int | None

    @property
    def name(self) -> str:
        """Module name inside its stage, e.g. ``"block2-0"`` (torchvision's naming)."""
        return f"block{self.stage}-{self.index}"

    @property
    def groups(self) -> int:
        """Number of groups of the 3x3 conv."""
        return self.bottleneck_width // self.group_width

    @property
    def has_proj(self) -> bool:
        """Whether the shortcut is a strided 1x1 conv + BN (shape changes) rather than identity."""
        return self.width_in != self.width_out or self.stride != 1


#: Largest depth and channel count :class:`RegNetParams` accepts. Beyond them no network can be built
#: (a 1x1 conv 2**20 channels wide alone has 2**40 weights), and torchvision's float32 width arithmetic
#: overflows, so such values are refused up front, naming the parameter.
MAX_DEPTH = 10_000
MAX_WIDTH = 2**20


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class RegNetParams:
    """A point of the RegNet design space.

    Args:
        depth: total number of blocks ``d`` (>= 1).
        w_0: initial width (> 0, multiple of 8).
        w_a: width slope (>= 0).
        w_m: width multiplier between stages (> 1).
        group_width: channels per group of the 3x3 convs (>= 1; clipped to the stage width).
        bottleneck_multiplier: bottleneck width / block width (> 0). RegNets use 1.0.
        se_ratio: squeeze-excitation ratio in (0, 1] relative to the *block input* width (RegNetY:
            0.25), or None for no SE (RegNetX).
        stem_width: output channels of the 3x3 stride-2 stem (>= 1).
        rounding: ``"torchvision"`` or ``"pycls"``; see the module docstring.

    Raises:
        ValueError: naming the offending parameter, for any value outside the ranges above.

    Example:
        >>> RegNetParams(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8, se_ratio=0.25).widths
        (48, 104, 208, 440)
    """

    depth: int
    w_0: int
    w_a: float
    w_m: float
    group_width: int
    bottleneck_multiplier: float = 1.0
    se_ratio: float | None = None
    stem_width: int = 32
    rounding: str = "torchvision"

    def __post_init__(self) -> None:
        # Same admissible ranges as torchvision's BlockParams (w_a < 0, w_0 <= 0, w_m <= 1, w_0 % 8) and
        # pycls's asserts, but each failure names its parameter. `not (x > y)` also rejects NaN.
        if not _is_int(self.depth) or not 1 <= self.depth <= MAX_DEPTH:
            raise ValueError(f"depth must be an integer in [1, {MAX_DEPTH}], got {self.depth!r}")
        if not _is_int(self.w_0) or not 0 < self.w_0 <= MAX_WIDTH or self.w_0 % _QUANT != 0:
            raise ValueError(f"w_0 must be a positive integer multiple of {_QUANT} (at most {MAX_WIDTH}), "
                             f"got {self.w_0!r}")
        if not _is_real(self.w_a) or self.w_a < 0:
            raise ValueError(f"w_a must be a finite number >= 0, got {self.w_a!r}")
        if not _is_real(self.w_m) or not self.w_m > 1:
            raise ValueError(f"w_m must be a finite number > 1, got {self.w_m!r}")
        if not _is_int(self.group_width) or self.group_width < 1:
            raise ValueError(f"group_width must be an integer >= 1, got {self.group_width!r}")
        if not _is_real(self.bottleneck_multiplier) or not self.bottleneck_multiplier > 0:
            raise ValueError(
                f"bottleneck_multiplier must be a finite number > 0, got {self.bottleneck_multiplier!r}"
            )
        if self.se_ratio is not None and (not _is_real(self.se_ratio) or not 0 < self.se_ratio <= 1):
            raise ValueError(f"se_ratio must be None or a number in (0, 1], got {self.se_ratio!r}")
        if not _is_int(self.stem_width) or not 1 <= self.stem_width <= MAX_WIDTH:
            raise ValueError(f"stem_width must be an integer in [1, {MAX_WIDTH}], got {self.stem_width!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.rounding == "pycls" and not (
            self.bottleneck_multiplier < 1 or self.bottleneck_multiplier % 1 == 0
        ):
            # pycls's adjust_block_compatibility asserts this (it needs lcm(group_width, b) to exist).
            raise ValueError(
                "bottleneck_multiplier must be < 1 or an integer with rounding='pycls', "
                f"got {self.bottleneck_multiplier!r}"
            )
        # Values each fine alone that together leave the buildable range, blamed on the parameter that
        # drives the width there (before any arithmetic can overflow or divide by zero).
        last = self.w_0 + self.w_a * (self.depth - 1)
        if last > MAX_WIDTH:
            raise ValueError(f"w_a={self.w_a!r} is too large: the last block's width w_0 + w_a * (depth - 1) = "
                             f"{last:.6g} exceeds {MAX_WIDTH} channels")
        # (on the CPU explicitly: models are also built under a meta default device, e.g. by the launch plan)
        w_m32 = torch.tensor(float(self.w_m), dtype=torch.float32, device="cpu").item()
        if self.rounding == "torchvision" and not 1 < w_m32 < math.inf:
            raise ValueError(f"w_m must be > 1 and finite in float32 (torchvision rounding computes in float32), got "
                             f"{self.w_m!r}")
        widths = self.block_widths()
        if not all(1 <= w <= MAX_WIDTH for w in widths):
            raise ValueError(f"w_m={self.w_m!r} quantises the block widths to {max(widths)}, outside [1, {MAX_WIDTH}]")
        # Resolve once so that a design point that cannot be built fails here, not at module build.
        self.blocks()

    # -- per-block widths ------------------------------------------------------------------------ #

    def block_widths(self) -> list[int]:
        """Quantised per-block widths, before the group-width compatibility adjustment.

        Returns:
            ``depth`` ints, non-decreasing; each run of equal widths is one stage.
        """
        if self.rounding == "torchvision":
            # torchvision computes this in torch float32; reproduce the same ops in the same order so
            # that borderline values round identically. The explicit CPU device keeps this working
            # under a `torch.device("meta")` context (models are often built that way).
            u = torch.arange(self.depth, device="cpu") * self.w_a + self.w_0
            k = torch.round(torch.log(u / self.w_0) / math.log(self.w_m))
            w = torch.round(torch.divide(self.w_0 * torch.pow(float(self.w_m), k), _QUANT)) * _QUANT
            return w.int().tolist()
        # pycls uses numpy float64 with round-half-even; Python floats and round() are the same.
        widths = []
        for j in range(self.depth):
            u = j * self.w_a + self.w_0
            k = round(math.log(u / self.w_0) / math.log(self.w_m))
            widths.append(round(self.w_0 * self.w_m**k / _QUANT) * _QUANT)
        return widths

    def _adjust(self, width: int, group_width: int) -> tuple[int, int]:
        """Makes a stage width compatible with its group width; returns (width, group_width)."""
        b = self.bottleneck_multiplier
        if self.rounding == "torchvision":
            w_bot = int(width * b)
            if w_bot < 1:
                raise ValueError(f"bottleneck_multiplier={b!r} gives a zero bottleneck width for stage width {width}")
            g = min(group_width, w_bot)
            # torchvision's _make_divisible: round half up, never below g, and never more than 10% down.
            v = max(g, int(w_bot + g / 2) // g * g)
            if v < 0.9 * w_bot:
                v += g
            return int(v / b), g
        v = int(max(1, width * b))
        g = int(min(group_width, v))
        m = math.lcm(g, int(b)) if b > 1 else g
        v = max(m, int(round(v / m) * m))
        return int(v / b), g

    # -- stages and blocks ----------------------------------------------------------------------- #

    def stages(self) -> tuple[StageSpec, ...]:
        """Per-stage depth, width, group width, bottleneck width and stride.

        Returns:
            One :class:`StageSpec` per stage, in order.
        """
        runs: list[list[int]] = []  # [width, depth]
        for w in self.block_widths():
            if runs and runs[-1][0] == w:
                runs[-1][1] += 1
            else:
                runs.append([w, 1])
        specs = []
        for width, depth in runs:
            width, g = self._adjust(width, self.group_width)
            # Same expression as the bottleneck transform of both codebases.
            w_b = round(width * self.bottleneck_multiplier)
            if width < 1 or w_b < 1 or w_b % g != 0 or width > MAX_WIDTH or w_b > MAX_WIDTH:
                raise ValueError(
                    f"bottleneck_multiplier={self.bottleneck_multiplier!r} gives a bottleneck width {w_b} that "
                    f"is not a positive multiple of the group width {g} (stage width {width}), or a width "
                    f"above {MAX_WIDTH}"
                )
            specs.append(
                StageSpec(depth=depth, width=width, group_width=g, bottleneck_width=w_b, stride=_STRIDE)
            )
        return tuple(specs)

    def blocks(self) -> tuple[BlockSpec, ...]:
        """Every block, resolved: input/output widths, stride, groups, SE width.

        Returns:
            One :class:`BlockSpec` per block, in forward order (``len == depth``).
        """
        out = []
        width_in = self.stem_width
        for s, st in enumerate(self.stages(), start=1):
            for i in range(st.depth):
                se_width = None
                if self.se_ratio is not None:
                    # Relative to the block *input* width, as in torchvision and pycls.
                    se_width = round(self.se_ratio * width_in)
                    if se_width < 1:
                        raise ValueError(
                            f"se_ratio={self.se_ratio!r} gives a zero-width squeeze for input width {width_in}"
                        )
                out.append(
                    BlockSpec(
                        stage=s,
                        index=i,
                        width_in=width_in,
                        width_out=st.width,
                        stride=st.stride if i == 0 else 1,
                        group_width=st.group_width,
                        bottleneck_width=st.bottleneck_width,
                        se_width=se_width,
                    )
                )
                width_in = st.width
        return tuple(out)

    @property
    def depths(self) -> tuple[int, ...]:
        """Blocks per stage."""
        return tuple(s.depth for s in self.stages())

    @property
    def widths(self) -> tuple[int, ...]:
        """Output width per stage."""
        return tuple(s.width for s in self.stages())

    @property
    def group_widths(self) -> tuple[int, ...]:
        """Group width per stage."""
        return tuple(s.group_width for s in self.stages())

    @property
    def num_stages(self) -> int:
        """Number of stages."""
        return len(self.stages())


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
        if not _is_int(num_classes) or num_classes < 1:
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
