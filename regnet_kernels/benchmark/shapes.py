"""Real RegNet conv shapes, derived from the zoo's block specs (shared by the report and bench/)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

from regnet_kernels.benchmark.roofline import ConvShape, conv_out

__all__ = ["BENCH_MODELS", "OpShape", "stage_conv_shapes", "TINY_SHAPE"]

#: Models whose stage shapes the per-op benchmark covers.
BENCH_MODELS: Tuple[str, ...] = ("regnet_y_400mf", "regnet_y_1_6gf", "regnet_x_3_2gf")
#: Interpreter-sized grouped conv (group width 8) for CPU smoke runs of the op benchmark.
TINY_SHAPE = ConvShape(n=2, c_in=16, h=8, w=8, c_out=16, kernel=3, stride=1, groups=2)


@dataclass(frozen=True)
class OpShape:
    """One conv of a real RegNet stage.

    Attributes:
        id: ``"<model>-stage<S>-<kind>"``, e.g. ``"regnet_y_400mf-stage2-3x3g"``.
        model: zoo name.
        stage: 1-based stage.
        kind: ``"1x1"`` (conv a: width -> bottleneck, + BN + ReLU), ``"3x3g"`` (conv b: grouped 3x3 +
            BN + ReLU) or ``"3x3g_s2"`` (conv b of a stage whose only block is the strided one).
        shape: geometry with the batch.
    """

    id: str
    model: str
    stage: int
    kind: str
    shape: ConvShape


def stage_conv_shapes(model: str, batch: int = 128, resolution: int = 224,
                      kinds: Sequence[str] = ("1x1", "3x3g")) -> List[OpShape]:
    """Per stage, the 1x1 and grouped 3x3 convs of its representative block.

    The representative block is the stage's second (stride 1, input width = stage width: the shape
    most blocks have); a stage with a single block uses its first (strided) block, kind ``3x3g_s2``.

    Args:
        model: zoo name.
        batch: ``N``.
        resolution: input image size (the stem halves it).
        kinds: which convs (``"1x1"``, ``"3x3g"``).
    """
    from regnet_kernels.models import get_model_params

    params = get_model_params(model)
    h = conv_out(resolution, 3, 2)  # after the stem
    by_stage: dict = {}
    for b in params.blocks():
        by_stage.setdefault(b.stage, []).append((b, h))
        h = conv_out(h, 3, b.stride)
    out: List[OpShape] = []
    for stage, blocks in by_stage.items():
        blk, hin = blocks[1] if len(blocks) > 1 else blocks[0]
        groups = blk.bottleneck_width // blk.group_width
        for kind in kinds:
            if kind == "1x1":
                shape = ConvShape(batch, blk.width_in, hin, hin, blk.bottleneck_width, kernel=1)
                name = "1x1"
            elif kind == "3x3g":
                shape = ConvShape(batch, blk.bottleneck_width, hin, hin, blk.bottleneck_width, kernel=3,
                                  stride=blk.stride, groups=groups)
                name = "3x3g" if blk.stride == 1 else "3x3g_s2"
            else:
                raise ValueError(f"unknown conv kind {kind!r}; known: 1x1, 3x3g")
            out.append(OpShape(f"{model}-stage{stage}-{name}", model, stage, name, shape))
    return out
