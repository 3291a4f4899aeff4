"""Rewrite a live model onto the fused ops, and back.

:func:`optimize` walks the module tree and replaces every structure it can prove equivalent with a fused
module, matching on *structure* (child types, names and their documented forward contract), never on
class names alone. Replacements keep the original submodules as children under their original names,
so ``state_dict()`` keys, parameter objects (and therefore optimizers), buffers and checkpoints are
unchanged. :func:`restore` puts the original modules back.

Recognised today:

- conv -> BatchNorm (-> ReLU) containers: an ``nn.Sequential`` (or a subclass that keeps
  ``Sequential.forward``, e.g. torchvision's ``Conv2dNormActivation``) whose children are exactly
  ``[Conv2d, BatchNorm2d]`` or ``[Conv2d, BatchNorm2d, ReLU | Identity]``; timm's ``ConvNormAct``
  (children ``conv`` and ``bn``, the BatchNorm carrying ``act`` and ``drop``, no anti-aliasing).
- whole RegNet bottleneck blocks: torchvision's / our zoo's ``ResBottleneckBlock`` and timm's RegNet
  ``Bottleneck`` (:class:`regnet_kernels.nn.FusedBottleneck`); inside them the conv-BN-ReLU pieces and
  the SE module are fused too, for the calls a whole-block kernel cannot take;
- squeeze-excitation modules elsewhere (torchvision ``SqueezeExcitation``, timm ``SEModule``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from torch import nn

from regnet_kernels import backends as _backends
from regnet_kernels.nn.bottleneck import match_bottleneck
from regnet_kernels.nn.conv_bn_act import (
    FusedConvBNAct2d,
    activation_name,
    bn_unsupported_reason,
    conv_unsupported_reason,
)
from regnet_kernels.nn.squeeze_excite import FusedSqueezeExcite, se_structure

__all__ = ["optimize", "restore", "FusionReport", "fusion_report", "register_matcher", "is_fused"]

_ORIGINAL = "_regnet_kernels_original"
_REPORT = "_regnet_kernels_report"

#: ``matcher(module, backend) -> (replacement, None)`` when it fuses ``module``; ``(None, reason)`` when
#: ``module`` has the shape of a candidate but cannot be fused; ``(None, None)`` when it is no candidate.
Matcher = Callable[[nn.Module, str], Tuple[Optional[nn.Module], Optional[str]]]


@dataclass
class FusionReport:
    """What :func:`optimize` fused and what it left alone, with reasons."""

    fused: List[Tuple[str, str]] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    backend: str = "auto"

    def counts(self) -> dict:
        out: dict = {}
        for _, kind in self.fused:
            out[kind] = out.get(kind, 0) + 1
        return out

    def __str__(self) -> str:
        lines = [f"regnet_kernels.optimize (backend={self.backend!r}): fused {len(self.fused)} modules "
                 + ", ".join(f"{v} x {k}" for k, v in sorted(self.counts().items()))]
        for name, reason in self.skipped:
            lines.append(f"  left alone {name or '<root>'}: {reason}")
        return "\n".join(lines)


def _match_sequential(m: nn.Module, backend: str):
    """torchvision ``Conv2dNormActivation`` and plain ``nn.Sequential(conv, bn[, act])``."""
    if not isinstance(m, nn.Sequential) or type(m).forward is not nn.Sequential.forward:
        return None, None
    children = list(m.named_children())
    if len(children) not in (2, 3) or not isinstance(children[0][1], nn.Conv2d):
        return None, None
    if not isinstance(children[1][1], nn.modules.batchnorm._BatchNorm):
        return None, None
    (cname, conv), (bname, bn) = children[0], children[1]
    reason = conv_unsupported_reason(conv) or bn_unsupported_reason(bn, conv.out_channels)
    if reason is not None:
        return None, reason
    act_mod = children[2][1] if len(children) == 3 else None
    act, reason = activation_name(act_mod)
    if reason is not None:
        return None, reason
    if getattr(bn, "act", None) is not None:  # a norm-act layer inside a Sequential: act must be identity
        inner, reason = activation_name(bn.act)
        if reason is not None or (inner is not None and act is not None):
            return None, reason or "two activations"
        act = act or inner
    extra = {children[2][0]: act_mod} if act_mod is not None else None
    return FusedConvBNAct2d(conv, bn, act, names=(cname, bname), extra_children=extra, backend=backend), None


def _match_conv_norm_act(m: nn.Module, backend: str):
    """timm's ``ConvNormAct``: children ``conv`` and ``bn`` (a norm-act layer), optional no-op ``aa``."""
    if isinstance(m, nn.Sequential):
        return None, None
    names = dict(m.named_children())
    if set(names) - {"conv", "bn", "aa"} or "conv" not in names or "bn" not in names:
        return None, None
    conv, bn = names["conv"], names["bn"]
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d) or not hasattr(bn, "act"):
        return None, None
    aa = names.get("aa")
    if aa is not None and not isinstance(aa, nn.Identity):
        return None, f"anti-aliasing layer {type(aa).__name__} after the norm"
    reason = conv_unsupported_reason(conv) or bn_unsupported_reason(bn, conv.out_channels)
    if reason is not None:
        return None, reason
    act, reason = activation_name(bn.act)
    if reason is not None:
        return None, reason
    extra = {"aa": aa} if aa is not None else None
    return FusedConvBNAct2d(conv, bn, act, names=("conv", "bn"), extra_children=extra, backend=backend), None


def _match_squeeze_excite(m: nn.Module, backend: str):
    """torchvision ``SqueezeExcitation`` / timm ``SEModule`` outside a fused block."""
    names, reason = se_structure(m)
    if names is None:
        return None, reason
    return FusedSqueezeExcite(m, backend=backend), None


# block-level first: a whole bottleneck beats its per-op pieces
_MATCHERS: List[Matcher] = [match_bottleneck, _match_sequential, _match_conv_norm_act, _match_squeeze_excite]


def register_matcher(matcher: Matcher, *, first: bool = True) -> None:
    """Add a structure matcher; block-level matchers go first so they win over per-op fusion."""
    if matcher in _MATCHERS:
        return
    if first:
        _MATCHERS.insert(0, matcher)
    else:
        _MATCHERS.append(matcher)


def is_fused(m: nn.Module) -> bool:
    """True for a module :func:`optimize` put in (it remembers what it replaced)."""
    return _ORIGINAL in m.__dict__


def _walk(module: nn.Module, prefix: str, backend: str, report: FusionReport) -> None:
    for name, child in list(module.named_children()):
        qual = f"{prefix}.{name}" if prefix else name
        if is_fused(child):
            for sub in child.modules():
                if hasattr(sub, "backend") and is_fused(sub):
                    sub.backend = backend
            report.fused.append((qual, type(child).__name__))
            continue
        replacement, candidate_reason = None, None
        for matcher in _MATCHERS:
            rep, reason = matcher(child, backend)
            if rep is not None:
                replacement = rep
                break
            if reason is not None and candidate_reason is None:
                candidate_reason = reason
        if replacement is not None:
            replacement.__dict__[_ORIGINAL] = child
            replacement.train(child.training)
            setattr(module, name, replacement)
            report.fused.append((qual, type(replacement).__name__))
            # a block-level replacement may hold per-op-fusable pieces it chose to keep
            _walk(replacement, qual, backend, report)
            continue
        if candidate_reason is not None:
            report.skipped.append((qual, candidate_reason))
        _walk(child, qual, backend, report)


def optimize(model: nn.Module, backend: str = "auto", *, return_report: bool = False):
    """Rewrite ``model`` in place onto the fused ops; returns the model (and the report if asked).

    Args:
        model: any ``nn.Module``: our zoo's RegNets, torchvision's, timm's, or any CNN built of
            conv -> BatchNorm -> ReLU containers. Parameters, buffers, their names and their objects
            are kept, so an optimizer built before this call still steps the same tensors.
        backend: ``"auto"`` (fastest measured backend that can run; eager on CPU tensors), ``"triton"``,
            ``"cuda"`` or ``"eager"``. Fused modules check at call time; an explicit backend that cannot
            run the inputs raises :class:`regnet_kernels.backends.BackendUnavailableError`.
        return_report: also return the :class:`FusionReport` (also kept: :func:`fusion_report`).

    Returns:
        ``model`` (the same object), or ``(model, report)``.

    Equivalent PyTorch: the unmodified ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize expects an nn.Module, got {type(model).__name__}")
    if backend not in _backends.REQUESTABLE:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(_backends.REQUESTABLE)}")
    report = FusionReport(backend=backend)
    root_rep = None
    for matcher in _MATCHERS:
        rep, reason = matcher(model, backend)
        if rep is not None:
            root_rep = rep
            break
    if root_rep is not None:
        raise ValueError("optimize: the model itself is a single fusable module; wrap it in a container "
                         "(e.g. nn.Sequential(model)) so it can be replaced in place")
    _walk(model, "", backend, report)
    for qual, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and not any(qual.startswith(f + ".") for f, _ in report.fused):
            if not any(qual == s or qual.startswith(s + ".") for s, _ in report.skipped):
                report.skipped.append((qual, "conv not in a recognised conv -> BatchNorm (-> ReLU) structure"))
    model.__dict__[_REPORT] = report
    return (model, report) if return_report else model


def fusion_report(model: nn.Module) -> Optional[FusionReport]:
    """The report of the last :func:`optimize` on ``model`` (None if never optimized)."""
    return model.__dict__.get(_REPORT)


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`optimize` in place: every fused module is replaced by the module it replaced.

    The original modules share their parameters and buffers with the fused ones, so training done on
    the optimized model is kept.
    """
    for name, child in list(model.named_children()):
        if is_fused(child):
            original = child.__dict__[_ORIGINAL]
            # the fused module's current children win: they may have been swapped since optimize()
            # (e.g. nn.SyncBatchNorm.convert_sync_batchnorm) and the original must see the same ones
            for sub_name, sub in child.named_children():
                if sub_name in original._modules:
                    original._modules[sub_name] = sub
            restore(original)
            original.train(child.training)
            setattr(model, name, original)
        else:
            restore(child)
    model.__dict__.pop(_REPORT, None)
    return model
