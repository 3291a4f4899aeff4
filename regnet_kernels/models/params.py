"""RegNet design space -> per-stage and per-block specs (no ``nn.Module`` here: see :mod:`.regnet`).

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
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = [
    "ROUNDINGS",
    "BlockSpec",
    "RegNetParams",
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


def is_integer(x: object) -> bool:
    """An integral number that is not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_finite_real(x: object) -> bool:
    """A finite real number that is not a bool."""
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
        if not is_integer(self.depth) or not 1 <= self.depth <= MAX_DEPTH:
            raise ValueError(f"depth must be an integer in [1, {MAX_DEPTH}], got {self.depth!r}")
        if not is_integer(self.w_0) or not 0 < self.w_0 <= MAX_WIDTH or self.w_0 % _QUANT != 0:
            raise ValueError(f"w_0 must be a positive integer multiple of {_QUANT} (at most {MAX_WIDTH}), "
                             f"got {self.w_0!r}")
        if not is_finite_real(self.w_a) or self.w_a < 0:
            raise ValueError(f"w_a must be a finite number >= 0, got {self.w_a!r}")
        if not is_finite_real(self.w_m) or not self.w_m > 1:
            raise ValueError(f"w_m must be a finite number > 1, got {self.w_m!r}")
        if not is_integer(self.group_width) or self.group_width < 1:
            raise ValueError(f"group_width must be an integer >= 1, got {self.group_width!r}")
        if not is_finite_real(self.bottleneck_multiplier) or not self.bottleneck_multiplier > 0:
            raise ValueError(
                f"bottleneck_multiplier must be a finite number > 0, got {self.bottleneck_multiplier!r}"
            )
        if self.se_ratio is not None and (not is_finite_real(self.se_ratio) or not 0 < self.se_ratio <= 1):
            raise ValueError(f"se_ratio must be None or a number in (0, 1], got {self.se_ratio!r}")
        if not is_integer(self.stem_width) or not 1 <= self.stem_width <= MAX_WIDTH:
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
