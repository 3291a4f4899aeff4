"""RegNet backbones: the stem and stage feature maps for FPN-style detection and segmentation heads.

:class:`RegNetFeatures` is a classifier without its head. It keeps torchvision's module tree (``stem``,
``trunk_output.block1`` .. ``blockS``), so:

* its ``state_dict`` names are the classifier's minus ``fc.*``; an ImageNet checkpoint loads with
  :func:`load_classifier_state_dict` (which drops the head and loads strictly);
* :func:`regnet_kernels.optimize` recognises and fuses its blocks exactly as in the classifier;
* channels_last inputs give channels_last features, and it runs under ``torch.autocast``.

Feature levels (``out_indices``): ``0`` is the stem (stride 2), ``1`` .. ``4`` are the four stages
(strides 4, 8, 16, 32). Stages after the last requested level are not built, as in timm's
``features_only`` models (so no parameter goes unused under DDP); their checkpoint entries are dropped
on load.

Example:
    >>> from regnet_kernels.models import get_model
    >>> backbone = get_model("regnet_y_400mf", features_only=True)
    >>> backbone.channels, backbone.reductions
    ([48, 104, 208, 440], [4, 8, 16, 32])
    >>> [f.shape for f in backbone(torch.randn(2, 3, 320, 256))]  # doctest: +SKIP
    [(2, 48, 80, 64), (2, 104, 40, 32), (2, 208, 20, 16), (2, 440, 10, 8)]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .params import RegNetParams
from .regnet import RegNet

__all__ = ["FeatureInfo", "RegNetFeatures", "load_classifier_state_dict"]

#: ``out_indices`` of the four stages (strides 4, 8, 16, 32); what FPN heads take.
DEFAULT_OUT_INDICES = (1, 2, 3, 4)


@dataclass(frozen=True)
class FeatureInfo:
    """One output of a backbone.

    Attributes:
        index: feature level (0 = stem, ``s`` = stage ``s``).
        module: name of the module whose output it is (``"stem"``, ``"trunk_output.block2"``, ...).
        channels: channels of the feature map.
        reduction: nominal stride relative to the input (2, 4, 8, 16, 32). The exact size of a level
            with reduction ``r`` for an ``H x W`` input is ``ceil(H / r) x ceil(W / r)``.
    """

    index: int
    module: str
    channels: int
    reduction: int


def _last_conv(module: nn.Module) -> nn.Conv2d:
    # In torchvision's layout the last conv registered in a stem or a stage is the one that produces its
    # output (a block registers `proj` before `f`, and `f.c` last), so it carries the output width.
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(module).__name__} has no Conv2d: not a RegNet stem or stage")
    return convs[-1]


def _stride(module: nn.Module) -> int:
    # A RegNet stage downsamples once, in its first block (the 3x3 conv and the projection share it).
    return max(int(m.stride[0]) for m in module.modules() if isinstance(m, nn.Conv2d))


def _normalise_indices(out_indices: Sequence[int], num_levels: int) -> tuple[int, ...]:
    if isinstance(out_indices, int) or not isinstance(out_indices, Sequence) or len(out_indices) == 0:
        raise ValueError(f"out_indices must be a non-empty sequence of ints, got {out_indices!r}")
    out = []
    for i in out_indices:
        if not isinstance(i, int) or isinstance(i, bool) or not -num_levels <= i < num_levels:
            raise ValueError(
                f"out_indices entries must be ints in [0, {num_levels - 1}] (0 = stem, 1..{num_levels - 1} = "
                f"stages; negative counts from the end), got {out_indices!r}"
            )
        out.append(i % num_levels)
    if len(set(out)) != len(out):
        raise ValueError(f"out_indices has duplicates: {out_indices!r}")
    return tuple(sorted(out))


class RegNetFeatures(nn.Module):
    """A RegNet trunk that returns the feature maps of the requested levels.

    Children: ``stem`` and ``trunk_output`` (``block1`` .. ``block{max(out_indices)}``), the very modules
    of a :class:`~regnet_kernels.models.RegNet` classifier, under the same names.

    Args:
        params: the design point (see :class:`~regnet_kernels.models.RegNetParams`).
        out_indices: feature levels to return, in increasing order whatever order they are given in:
            0 = stem (stride 2), 1 .. 4 = stages (strides 4, 8, 16, 32); negative indices count from the end.
        **kwargs: forwarded to :class:`~regnet_kernels.models.RegNet` (``norm_layer``, ``activation_layer``,
            ``norm_eps``, ``norm_momentum``). The trunk is built by the classifier's own constructor, so a
            seeded build draws the same weights as the seeded classifier with the same ``num_classes``
            (default 1000).

    Shapes:
        ``x: (N, 3, H, W)`` -> a list with one ``(N, C_i, ceil(H / r_i), ceil(W / r_i))`` tensor per level,
        ``C_i = channels[i]``, ``r_i = reductions[i]``; in ``x``'s memory format, in the autocast dtype
        under ``torch.autocast``, else the parameters' dtype.

    Raises:
        ValueError: for bad ``out_indices`` (out of range, duplicates, empty).

    Equivalent PyTorch:
        ``torchvision.models.feature_extraction.create_feature_extractor(regnet, {"trunk_output.block1":
        "1", ...})`` on a torchvision RegNet, without the head's parameters.
    """

    def __init__(self, params: RegNetParams, out_indices: Sequence[int] = DEFAULT_OUT_INDICES,
                 **kwargs: Any) -> None:
        super().__init__()
        classifier = RegNet(params, **kwargs)
        self.regnet_params = params
        self._adopt(classifier.stem, classifier.trunk_output, out_indices)

    @classmethod
    def from_classifier(cls, model: nn.Module, out_indices: Sequence[int] = DEFAULT_OUT_INDICES) -> RegNetFeatures:
        """A backbone that *shares* the stem and stages of an existing classifier (no copy).

        Args:
            model: a RegNet in torchvision's layout (children ``stem`` and ``trunk_output``): this package's
                :class:`~regnet_kernels.models.RegNet`, ``torchvision.models.regnet_*()``, optimized or not.
            out_indices: as in the constructor.

        Returns:
            The backbone; training it trains ``model``'s trunk (the parameters are the same objects).
        """
        if not isinstance(getattr(model, "stem", None), nn.Module) or not isinstance(
            getattr(model, "trunk_output", None), nn.Sequential
        ):
            raise TypeError(
                f"from_classifier needs a RegNet with `stem` and `trunk_output` children, got {type(model).__name__}"
            )
        backbone = cls.__new__(cls)
        nn.Module.__init__(backbone)
        backbone.regnet_params = getattr(model, "regnet_params", None)
        cls._adopt(backbone, model.stem, model.trunk_output, out_indices)
        backbone.train(model.training)
        return backbone

    def _adopt(self, stem: nn.Module, trunk: nn.Sequential, out_indices: Sequence[int]) -> None:
        stages = list(trunk.named_children())
        self._out_indices = _normalise_indices(out_indices, len(stages) + 1)
        last = self._out_indices[-1]
        self.stem = stem
        # Only the stages up to the deepest requested level: the rest would never run, and DDP rejects
        # parameters that get no gradient.
        self.trunk_output = nn.Sequential(OrderedDict(stages[:last]))
        info, reduction = [], _stride(stem)
        levels = [("stem", stem)] + [(f"trunk_output.{n}", m) for n, m in stages[:last]]
        for index, (name, module) in enumerate(levels):
            if index > 0:
                reduction *= _stride(module)
            if index in self._out_indices:
                info.append(FeatureInfo(index, name, _last_conv(module).out_channels, reduction))
        self.feature_info: tuple[FeatureInfo, ...] = tuple(info)

    @property
    def out_indices(self) -> tuple[int, ...]:
        """The levels returned, increasing."""
        return self._out_indices

    @property
    def channels(self) -> list[int]:
        """Channels of each returned feature map, in output order."""
        return [f.channels for f in self.feature_info]

    @property
    def reductions(self) -> list[int]:
        """Nominal stride of each returned feature map relative to the input, in output order."""
        return [f.reduction for f in self.feature_info]

    def feature_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """``(C, H_i, W_i)`` of each returned feature map for an ``height x width`` input.

        Every stride-2 conv (3x3 pad 1 or 1x1 pad 0) maps ``H`` to ``(H - 1) // 2 + 1``, which composes to
        ``ceil(H / reduction)``.
        """
        return [(f.channels, -(-height // f.reduction), -(-width // f.reduction)) for f in self.feature_info]

    def extra_repr(self) -> str:
        return f"out_indices={self._out_indices}, channels={self.channels}, reductions={self.reductions}"

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps of the requested levels.

        Args:
            x: images ``(N, 3, H, W)``, NCHW or channels_last.

        Returns:
            ``len(out_indices)`` tensors, shallowest first; see the class docstring for their shapes.
        """
        feats = []
        x = self.stem(x)
        if 0 in self._out_indices:
            feats.append(x)
        for index, stage in enumerate(self.trunk_output, start=1):
            x = stage(x)
            if index in self._out_indices:
                feats.append(x)
        return feats


def load_classifier_state_dict(
    backbone: RegNetFeatures, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True
) -> list[str]:
    """Loads a classifier checkpoint (e.g. torchvision's ImageNet weights) into a backbone.

    Drops the head (``fc.*``) and the stages the backbone did not build, strips a DDP ``module.`` prefix
    when every key has one, and loads the rest with ``backbone.load_state_dict(..., strict=strict)``.

    Args:
        backbone: from ``get_model(name, features_only=True)`` or :meth:`RegNetFeatures.from_classifier`
            (optimized or not: :func:`regnet_kernels.optimize` keeps every name).
        state_dict: the classifier's ``state_dict``.
        strict: as in ``load_state_dict``; with True, any other missing or unexpected key raises.

    Returns:
        The keys that were dropped, sorted.

    Raises:
        RuntimeError: from ``load_state_dict`` for a missing or unexpected key, or a shape mismatch (a
            checkpoint of another variant).
    """
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    kept_stages = {name for name, _ in backbone.trunk_output.named_children()}

    def dropped(key: str) -> bool:
        if key.startswith(("fc.", "avgpool.")):
            return True
        parts = key.split(".")
        return len(parts) > 2 and parts[0] == "trunk_output" and parts[1] not in kept_stages

    drop = sorted(k for k in state_dict if dropped(k))
    rest = {k: v for k, v in state_dict.items() if not dropped(k)}
    backbone.load_state_dict(rest, strict=strict)
    return drop
