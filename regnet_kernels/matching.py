"""The one structure parser: conv -> BatchNorm (-> act), squeeze-excitation and RegNet bottleneck blocks, in
torchvision's, timm's and our zoo's layouts.

Everything here is pure inspection (no tensors, no module is built or changed): each ``parse_*`` function
returns ``(structure, None)`` for a module the fused ops compute exactly, ``(None, reason)`` for a module
that has the shape of a candidate but cannot be fused, and ``(None, None)`` for anything else.
:mod:`regnet_kernels.optimize` and the fused modules in :mod:`regnet_kernels.nn` both use it, so what is
recognised and what is refused is decided in one place.

The rule is *provably identical or left alone*:

- activations are matched by exact type and configuration (``nn.ReLU`` in either in-place mode,
  ``nn.Sigmoid`` and timm's ``Sigmoid`` for SE gates, ``nn.Identity`` / absent), never by probing values;
- convs must be plain ``nn.Conv2d`` (no bias, zero padding, dilation 1, square stride and padding), not
  parametrized, not pruned; BatchNorms plain ``nn.BatchNorm2d`` / ``nn.SyncBatchNorm`` or timm's
  ``BatchNormAct2d`` (no dropout);
- :func:`equivalence_reason` refuses a candidate any of whose modules has hooks (module or global), a
  ``forward`` replaced on the instance, or is shared with another place in the model.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from torch import nn
from torch.nn.modules import module as _module_mod
from torch.nn.utils import parametrize as _parametrize
from torch.nn.utils import prune as _prune

from regnet_kernels.kernels.activation import Act

__all__ = [
    "Activation",
    "KERNEL_ACT",
    "activation_of",
    "conv_unsupported_reason",
    "bn_unsupported_reason",
    "ConvBNAct",
    "parse_conv_bn_act",
    "se_structure",
    "BottleneckLayout",
    "parse_bottleneck",
    "equivalence_reason",
    "module_paths",
]


class Activation(str, enum.Enum):
    """An activation the fused ops compute exactly. A ``str`` enum: ``Activation.RELU == "relu"``."""

    NONE = "none"
    RELU = "relu"
    SIGMOID = "sigmoid"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value) -> "Activation":
        """``None`` / ``"none"`` / ``"identity"`` -> NONE, ``"relu"`` -> RELU, an :class:`Activation` as is."""
        if value is None or value == "identity":
            return cls.NONE
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown activation {value!r}; known: None, "
                             + ", ".join(repr(a.value) for a in cls)) from None

    @property
    def kernel_act(self) -> Optional[Act]:
        """The kernels' code for this activation after a BatchNorm (:data:`KERNEL_ACT`), None if they have none."""
        return KERNEL_ACT.get(self)


#: The one table from a matched activation to the kernels' activation code
#: (:class:`regnet_kernels.kernels.activation.Act`): the activations a fused conv + BatchNorm may end with.
#: SIGMOID has no entry (it is only the SE gate, fixed inside the SE kernels). A new activation: its member
#: above, its module in :func:`activation_of`, and its entry here.
KERNEL_ACT: Dict[Activation, Act] = {Activation.NONE: Act.NONE, Activation.RELU: Act.RELU}


def _class_is(m: object, *known: Tuple[str, str]) -> bool:
    """Exact class match by ``(module, qualname)``, for optional libraries that are never imported here."""
    t = type(m)
    return (t.__module__, t.__qualname__) in known


_TIMM_SIGMOID = ("timm.layers.activations", "Sigmoid")
_TIMM_BN_ACT = ("timm.layers.norm_act", "BatchNormAct2d")
_TIMM_CONV_NORM_ACT = ("timm.layers.conv_bn_act", "ConvNormAct")


def activation_of(m: Optional[nn.Module]) -> Tuple[Optional[Activation], Optional[str]]:
    """``(Activation, None)`` for an activation module the fused ops compute exactly, else ``(None, reason)``.

    Matched by exact type: ``None`` / ``nn.Identity`` (NONE), ``nn.ReLU`` with either ``inplace``
    (RELU), ``nn.Sigmoid`` / timm's ``Sigmoid`` (SIGMOID). Anything else, subclasses included, is refused
    even where it agrees with one of them on some inputs (``nn.Hardtanh(0, 10)`` is not ReLU).
    """
    if m is None or type(m) is nn.Identity:
        return Activation.NONE, None
    if type(m) is nn.ReLU:
        return Activation.RELU, None
    if type(m) is nn.Sigmoid or _class_is(m, _TIMM_SIGMOID):
        return Activation.SIGMOID, None
    return None, f"activation {m!r} is not one the fused ops compute exactly (ReLU, Sigmoid or none)"


def conv_unsupported_reason(conv: nn.Module) -> Optional[str]:
    """Why ``conv`` cannot feed the fused op (None when it can)."""
    if _parametrize.is_parametrized(conv):
        return "conv is parametrized (torch.nn.utils.parametrize)"
    if any(isinstance(h, _prune.BasePruningMethod) for h in conv._forward_pre_hooks.values()):
        return "conv is pruned (torch.nn.utils.prune)"
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
    if type(bn) is not nn.SyncBatchNorm:
        if not isinstance(bn, nn.BatchNorm2d):
            return f"{type(bn).__name__} is not an nn.BatchNorm2d"
        # timm's BatchNormAct2d has a known forward (batch norm, then ``drop``, then ``act``); any other
        # subclass may have changed it
        if type(bn) is not nn.BatchNorm2d and not _class_is(bn, _TIMM_BN_ACT):
            return f"{type(bn).__name__} subclasses BatchNorm2d with an unknown forward"
    if bn.num_features != channels:
        return f"BatchNorm has {bn.num_features} features but the conv has {channels} output channels"
    drop = getattr(bn, "drop", None)
    if drop is not None and type(drop) is not nn.Identity:
        return f"BatchNorm carries a {type(drop).__name__} (only Identity)"
    return None


@dataclass(frozen=True)
class ConvBNAct:
    """A recognised conv -> BatchNorm (-> act) container: its child names and its activation."""

    conv: str
    bn: str
    activation: Activation
    #: further children the fused module keeps (the activation module ``"2"``, timm's no-op ``aa``)
    extra: Tuple[str, ...] = ()


def parse_conv_bn_act(m: nn.Module, *, in_block: bool = False) -> Tuple[Optional[ConvBNAct], Optional[str]]:
    """Recognise ``act(bn(conv(x)))``.

    Accepted containers: an ``nn.Sequential`` (or a subclass keeping ``Sequential.forward``, e.g.
    torchvision's ``Conv2dNormActivation``) of exactly ``[Conv2d, BatchNorm2d]`` or ``[Conv2d, BatchNorm2d,
    act]``; timm's ``ConvNormAct`` (``conv``, a norm-act ``bn``, a no-op ``aa``). ``in_block``: the piece
    sits in a bottleneck, whose block kernel has no cross-rank statistics (SyncBatchNorm refused).
    """
    children = list(m.named_children())
    names = dict(children)
    if isinstance(m, nn.Sequential):
        if type(m).forward is not nn.Sequential.forward or len(children) not in (2, 3):
            return None, None
        (cname, conv), (bname, bn) = children[0], children[1]
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            return None, None
        act_mod = children[2][1] if len(children) == 3 else None
        extra = (children[2][0],) if len(children) == 3 else ()
    elif _class_is(m, _TIMM_CONV_NORM_ACT) and set(names) <= {"conv", "bn", "aa"} and {"conv", "bn"} <= set(names):
        cname, bname, conv, bn = "conv", "bn", names["conv"], names["bn"]
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or not hasattr(bn, "act"):
            return None, None
        aa = names.get("aa")
        if aa is not None and type(aa) is not nn.Identity:
            return None, f"anti-aliasing layer {type(aa).__name__} after the norm"
        act_mod, extra = None, (("aa",) if aa is not None else ())
    else:
        return None, None
    if in_block and isinstance(bn, nn.SyncBatchNorm):
        return None, "SyncBatchNorm in the block (fused per op instead, with cross-rank statistics)"
    reason = conv_unsupported_reason(conv) or bn_unsupported_reason(bn, conv.out_channels)
    if reason is not None:
        return None, reason
    outer, reason = activation_of(act_mod)
    if reason is not None:
        return None, reason
    inner, reason = activation_of(getattr(bn, "act", None))
    if reason is not None:
        return None, reason
    if outer is not Activation.NONE and inner is not Activation.NONE:
        return None, "two activations"
    act = outer if outer is not Activation.NONE else inner
    if act not in KERNEL_ACT:
        return None, f"activation {act.value} after a BatchNorm (only {' or '.join(a.value for a in KERNEL_ACT)})"
    return ConvBNAct(cname, bname, act, extra), None


def _fc_reason(fc: nn.Module, name: str) -> Optional[str]:
    if _parametrize.is_parametrized(fc):
        return f"SE {name} is parametrized (torch.nn.utils.parametrize)"
    if type(fc) is not nn.Conv2d:
        return f"SE {name} is {type(fc).__name__}, not a plain nn.Conv2d"
    if tuple(fc.kernel_size) != (1, 1) or tuple(fc.stride) != (1, 1) or fc.groups != 1:
        return f"SE {name} is not a dense 1x1 conv"
    if tuple(fc.padding) != (0, 0) or tuple(fc.dilation) != (1, 1) or fc.padding_mode != "zeros":
        return f"SE {name} has padding or dilation"
    return None


def se_structure(m: nn.Module) -> Tuple[Optional[Tuple[str, str]], Optional[str]]:
    """Recognise a squeeze-excitation module by structure.

    Returns ``((fc1_name, fc2_name), None)`` for a supported one, ``(None, reason)`` for an SE-shaped
    module that cannot be fused, ``(None, None)`` for anything else. Accepted contracts:
    torchvision's ``SqueezeExcitation`` (children ``avgpool`` = AdaptiveAvgPool2d(1), ``fc1``,
    ``activation``, ``fc2``, ``scale_activation``) and timm's ``SEModule`` (``fc1``, ``bn``, ``act``,
    ``fc2``, ``gate``; no max-pool branch).
    """
    names = dict(m.named_children())
    if set(names) == {"avgpool", "fc1", "activation", "fc2", "scale_activation"}:
        pool = names["avgpool"]
        if type(pool) is not nn.AdaptiveAvgPool2d or pool.output_size not in (1, (1, 1)):
            return None, "SE pool is not a global average pool"
        act, gate = names["activation"], names["scale_activation"]
    elif set(names) == {"fc1", "bn", "act", "fc2", "gate"}:
        if getattr(m, "add_maxpool", False):
            return None, "SE with a max-pool branch"
        if type(names["bn"]) is not nn.Identity:
            return None, "SE with a norm layer between the FCs"
        act, gate = names["act"], names["gate"]
    else:
        return None, None
    if activation_of(act)[0] is not Activation.RELU:
        return None, f"SE activation {act!r} (only nn.ReLU)"
    if activation_of(gate)[0] is not Activation.SIGMOID:
        return None, f"SE gate {gate!r} (only sigmoid)"
    fc1, fc2 = names["fc1"], names["fc2"]
    reason = _fc_reason(fc1, "fc1") or _fc_reason(fc2, "fc2")
    if reason is None and (fc2.in_channels != fc1.out_channels or fc2.out_channels != fc1.in_channels):
        reason = "SE fc1/fc2 channel counts do not chain"
    if reason is not None:
        return None, reason
    return ("fc1", "fc2"), None


# ------------------------------------------------------------------------------------------------
# Bottleneck blocks
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BottleneckLayout:
    """Where each piece of a bottleneck lives, as submodule paths ``(conv, bn)`` relative to the block."""

    a: Tuple[str, str]
    b: Tuple[str, str]
    c: Tuple[str, str]
    se: Optional[Tuple[str, str]]
    proj: Optional[Tuple[str, str]]
    style: str


@dataclass(frozen=True)
class _BlockStyle:
    """One block contract: child names, where the pieces are, the output activation."""

    name: str
    required: frozenset
    optional: frozenset
    pieces: Tuple[str, str, str]  # a, b, c containers
    se: str
    proj: str
    act: str


_STYLES = (
    # torchvision's (and our zoo's) ResBottleneckBlock: activation(proj(x) or x + f(x)), f = a, b, [se], c
    _BlockStyle("torchvision", frozenset({"f", "activation"}), frozenset({"proj"}),
                ("f.a", "f.b", "f.c"), "f.se", "proj", "activation"),
    # timm's RegNet Bottleneck: act3(drop_path(conv3(se(conv2(conv1(x))))) + downsample(x))
    _BlockStyle("timm", frozenset({"conv1", "conv2", "conv3", "se", "act3", "drop_path"}), frozenset({"downsample"}),
                ("conv1", "conv2", "conv3"), "se", "downsample", "act3"),
)


def _style_reason(style: _BlockStyle, m: nn.Module, names: Dict[str, nn.Module]) -> Optional[str]:
    """Contract details beyond child names; ``""`` means 'not this style after all'."""
    if style.name == "torchvision":
        f = names["f"]
        if not isinstance(f, nn.Sequential) or type(f).forward is not nn.Sequential.forward:
            return ""
        if [n for n, _ in f.named_children()] not in (["a", "b", "c"], ["a", "b", "se", "c"]):
            return ""
        return None
    if "downsample" not in names:
        return "block without a shortcut"
    dp = names["drop_path"]
    if type(dp) is not nn.Identity and getattr(dp, "drop_prob", None) != 0:
        return "drop_path is active (stochastic depth is not fused)"
    return None


def _check_geometry(block: nn.Module, lay: BottleneckLayout) -> Optional[str]:
    conv_a = block.get_submodule(lay.a[0])
    conv_b = block.get_submodule(lay.b[0])
    conv_c = block.get_submodule(lay.c[0])
    for name, conv in (("a", conv_a), ("c", conv_c)):
        if tuple(conv.kernel_size) != (1, 1) or conv.stride[0] != 1 or conv.groups != 1 or conv.padding[0] != 0:
            return f"conv {name} is not a dense 1x1 stride-1 conv"
    k = conv_b.kernel_size
    if k[0] != k[1] or k[0] % 2 == 0 or conv_b.padding[0] != k[0] // 2:
        return "conv b is not a square odd kernel with 'same' padding"
    if conv_b.in_channels != conv_a.out_channels or conv_c.in_channels != conv_b.out_channels:
        return "conv channels do not chain"
    if conv_b.out_channels != conv_a.out_channels:
        return "conv b changes the bottleneck width"
    stride = conv_b.stride[0]
    if lay.se is not None:
        fc1 = block.get_submodule(lay.se[0])
        if fc1.in_channels != conv_b.out_channels:
            return "SE width does not match conv b"
    if lay.proj is not None:
        conv_p = block.get_submodule(lay.proj[0])
        if (tuple(conv_p.kernel_size) != (1, 1) or conv_p.stride[0] != stride or conv_p.groups != 1
                or conv_p.padding[0] != 0 or conv_p.out_channels != conv_c.out_channels
                or conv_p.in_channels != conv_a.in_channels):
            return "projection shortcut is not a 1x1 conv matching the block"
    elif stride != 1 or conv_a.in_channels != conv_c.out_channels:
        return "identity shortcut but the block changes shape"
    return None


def _piece(block: nn.Module, path: str) -> Tuple[Optional[Tuple[str, str]], Optional[Activation], Optional[str]]:
    """``((conv_path, bn_path), activation, None)`` or ``(None, None, reason)`` for a block's conv-BN piece."""
    parsed, reason = parse_conv_bn_act(block.get_submodule(path), in_block=True)
    if parsed is None:
        return None, None, f"{path}: {reason or 'not a conv -> BatchNorm (-> act) container'}"
    return (f"{path}.{parsed.conv}", f"{path}.{parsed.bn}"), parsed.activation, None


def parse_bottleneck(m: nn.Module) -> Tuple[Optional[BottleneckLayout], Optional[str]]:
    """Recognise a RegNet residual bottleneck block (torchvision / our zoo / timm) and check its geometry."""
    names = dict(m.named_children())
    for style in _STYLES:
        if not style.required <= set(names) or set(names) - style.required - style.optional:
            continue
        reason = _style_reason(style, m, names)
        if reason == "":
            continue
        if reason is not None:
            return None, reason
        act = m.get_submodule(style.act)
        if activation_of(act)[0] is not Activation.RELU:
            return None, f"block activation {act!r} (only nn.ReLU)"
        pieces = []
        for path, want in zip(style.pieces, (Activation.RELU, Activation.RELU, Activation.NONE)):
            paths, got, reason = _piece(m, path)
            if reason is not None:
                return None, reason
            if got is not want:
                return None, f"{path} has activation {got.value} (expected {want.value})"
            pieces.append(paths)
        se = None
        se_mod = _get(m, style.se)
        if se_mod is not None and type(se_mod) is not nn.Identity:
            fc, reason = se_structure(se_mod)
            if fc is None:
                return None, reason or f"{style.se} is not a squeeze-excitation module"
            se = (f"{style.se}.{fc[0]}", f"{style.se}.{fc[1]}")
        proj = None
        proj_mod = _get(m, style.proj)
        if proj_mod is not None and type(proj_mod) is not nn.Identity:
            proj, got, reason = _piece(m, style.proj)
            if reason is not None:
                return None, reason
            if got is not Activation.NONE:
                return None, f"{style.proj} (the shortcut) has an activation"
        layout = BottleneckLayout(pieces[0], pieces[1], pieces[2], se, proj, style.name)
        reason = _check_geometry(m, layout)
        return (layout, None) if reason is None else (None, reason)
    return None, None


def _get(m: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return m.get_submodule(path)
    except AttributeError:
        return None


# ------------------------------------------------------------------------------------------------
# Is replacing a recognised structure invisible to everything else?
# ------------------------------------------------------------------------------------------------
def module_paths(model: nn.Module) -> Dict[int, List[str]]:
    """``id(module) -> every path it is reachable at`` (more than one for a module used twice)."""
    out: Dict[int, List[str]] = {}
    for path, sub in model.named_modules(remove_duplicate=False):
        out.setdefault(id(sub), []).append(path)
    return out


_HOOK_KINDS = (("forward ", "_forward_hooks"), ("forward pre-", "_forward_pre_hooks"),
               ("backward ", "_backward_hooks"), ("backward pre-", "_backward_pre_hooks"))


def _global_hooks() -> List[str]:
    return [k for k, attr in _HOOK_KINDS if getattr(_module_mod, "_global" + attr, None)]


def _stateless_activation(m: nn.Module) -> bool:
    """Sharing one of these between places is harmless: exact pure functions without state."""
    return (activation_of(m)[1] is None and not m._modules and not m._parameters and not m._buffers)


def equivalence_reason(candidate: nn.Module, paths: Optional[Mapping[int, List[str]]] = None) -> Optional[str]:
    """Why replacing ``candidate`` (a recognised structure, with everything under it) by a fused module could
    change what the model does; None when it cannot.

    Refused: global module hooks (``torch.nn.modules.module.register_module_forward_hook`` and kin: they
    would not see the fused-away modules), module hooks of any kind on any module of the structure,
    pruned or parametrized convs, a ``forward`` replaced on an instance, and, with ``paths`` from
    :func:`module_paths`, a module that is also used at another place of the model.
    """
    hooks = _global_hooks()
    if hooks:
        return (f"global module {', '.join(k + 'hooks' for k in hooks)} are registered (they would not fire for "
                "the modules a fused module replaces)")
    for name, sub in candidate.named_modules():
        where = name or "the module itself"
        if _parametrize.is_parametrized(sub):
            return f"{where} is parametrized (torch.nn.utils.parametrize)"
        if any(isinstance(h, _prune.BasePruningMethod) for h in sub._forward_pre_hooks.values()):
            return f"{where} is pruned (torch.nn.utils.prune)"
        kinds = [k for k, attr in _HOOK_KINDS if getattr(sub, attr, None)]
        if kinds:
            return f"{where} has {', '.join(k + 'hooks' for k in kinds)} (they would not fire)"
        if "forward" in sub.__dict__:
            return f"{where} has its forward replaced on the instance"
        if paths is not None and len(paths.get(id(sub), ())) > 1 and not _stateless_activation(sub):
            return f"{where} is shared: one module used at {', '.join(p or '<root>' for p in paths[id(sub)])}"
    return None
