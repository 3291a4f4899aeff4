"""Rewrite a live model onto the fused ops, and back.

:func:`optimize` walks the module tree and replaces every structure it can prove equivalent with a fused
module, matching on *structure* (child types, names and their documented forward contract), never on
class names alone. Replacements keep the original submodules as children under their original names,
so ``state_dict()`` keys, parameter objects (and therefore optimizers), buffers and checkpoints are
unchanged. :func:`restore` puts the original modules back.

Recognised today (the parsing lives in :mod:`regnet_kernels.matching`):

- conv -> BatchNorm (-> ReLU) containers: an ``nn.Sequential`` (or a subclass that keeps
  ``Sequential.forward``, e.g. torchvision's ``Conv2dNormActivation``) whose children are exactly
  ``[Conv2d, BatchNorm2d]`` or ``[Conv2d, BatchNorm2d, ReLU | Identity]``; timm's ``ConvNormAct``
  (children ``conv`` and ``bn``, a ``BatchNormAct2d`` carrying ``act`` and ``drop``, no anti-aliasing).
- whole RegNet bottleneck blocks: torchvision's / our zoo's ``ResBottleneckBlock`` and timm's RegNet
  ``Bottleneck`` (:class:`regnet_kernels.nn.FusedBottleneck`); inside them the conv-BN-ReLU pieces and
  the SE module are fused too, for the calls a whole-block kernel cannot take;
- squeeze-excitation modules elsewhere (torchvision ``SqueezeExcitation``, timm ``SEModule``).

A recognised structure is still left alone, with the reason in the :class:`FusionReport`, when replacing
it could be observed: hooks, pruning, parametrization, a replaced ``forward``, or a module used twice
(:func:`regnet_kernels.matching.equivalence_reason`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Mapping, Optional, Tuple

from torch import nn

from regnet_kernels import backends as _backends
from regnet_kernels.matching import equivalence_reason, module_paths, parse_conv_bn_act, se_structure
from regnet_kernels.nn.bottleneck import match_bottleneck
from regnet_kernels.nn.conv_bn_act import FusedConvBNAct2d
from regnet_kernels.nn.squeeze_excite import FusedSqueezeExcite

__all__ = ["optimize", "restore", "unfused", "FusionReport", "fusion_report", "register_matcher", "is_fused"]

_ORIGINAL = "_regnet_kernels_original"
_REPORT = "_regnet_kernels_report"

#: ``matcher(module, backend) -> (replacement, None)`` when it fuses ``module``; ``(None, reason)`` when
#: ``module`` has the shape of a candidate but cannot be fused; ``(None, None)`` when it is no candidate.
Matcher = Callable[[nn.Module, str], Tuple[Optional[nn.Module], Optional[str]]]


@dataclass
class FusionReport:
    """What :func:`optimize` fused and what it left alone, with reasons.

    ``fused``: ``(path, fused module type)``; ``skipped``: ``(path, reason)`` (``""`` is the model itself).
    """

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


def _match_conv_bn_act(m: nn.Module, backend: str):
    """torchvision ``Conv2dNormActivation``, ``nn.Sequential(conv, bn[, act])`` and timm's ``ConvNormAct``."""
    parsed, reason = parse_conv_bn_act(m)
    if parsed is None:
        return None, reason
    extra = {name: m.get_submodule(name) for name in parsed.extra}
    return FusedConvBNAct2d(m.get_submodule(parsed.conv), m.get_submodule(parsed.bn), parsed.activation,
                            names=(parsed.conv, parsed.bn), extra_children=extra or None, backend=backend), None


def _match_squeeze_excite(m: nn.Module, backend: str):
    """torchvision ``SqueezeExcitation`` / timm ``SEModule`` outside a fused block."""
    names, reason = se_structure(m)
    if names is None:
        return None, reason
    return FusedSqueezeExcite(m, backend=backend), None


# block-level first: a whole bottleneck beats its per-op pieces
_MATCHERS: List[Matcher] = [match_bottleneck, _match_conv_bn_act, _match_squeeze_excite]


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


def _visit(m: nn.Module, qual: str, backend: str, report: FusionReport,
           paths: Mapping[int, List[str]]) -> Optional[nn.Module]:
    """Fuse ``m`` if it is a recognised structure and replacing it is invisible (returns the replacement);
    otherwise record why not (for a candidate) and descend into it (returns None)."""
    if is_fused(m):  # optimized before: retarget it
        for sub in m.modules():
            if hasattr(sub, "backend") and is_fused(sub):
                sub.backend = backend
        report.fused.append((qual, type(m).__name__))
        return None
    replacement, candidate_reason = None, None
    for matcher in _MATCHERS:
        rep, reason = matcher(m, backend)
        if rep is not None:
            reason = equivalence_reason(m, paths)
            if reason is None:
                replacement = rep
            else:
                candidate_reason = reason
            break
        if reason is not None and candidate_reason is None:
            candidate_reason = reason
    if replacement is None:
        if candidate_reason is not None:
            report.skipped.append((qual, candidate_reason))
        _walk(m, qual, backend, report, paths)
        return None
    replacement.__dict__[_ORIGINAL] = m
    replacement.train(m.training)
    report.fused.append((qual, type(replacement).__name__))
    # a block-level replacement may hold per-op-fusable pieces it chose to keep
    _walk(replacement, qual, backend, report, paths)
    return replacement


def _walk(module: nn.Module, prefix: str, backend: str, report: FusionReport,
          paths: Mapping[int, List[str]]) -> None:
    for name, child in list(module.named_children()):
        replacement = _visit(child, f"{prefix}.{name}" if prefix else name, backend, report, paths)
        if replacement is not None:
            setattr(module, name, replacement)


def optimize(model: nn.Module, backend: str = "auto", *, return_report: bool = False):
    """Rewrite ``model`` in place onto the fused ops; returns the model (and the report if asked).

    Only what is provably identical is fused: structures of exactly known types and configuration (see
    :mod:`regnet_kernels.matching`). Everything else is left alone, and the report says why: unsupported
    layers or settings (e.g. an activation other than ``nn.ReLU``, a conv with bias, dilation or
    non-zero padding mode), module hooks (forward, pre-forward, backward; or global module hooks), pruned
    (``torch.nn.utils.prune``) or parametrized (``torch.nn.utils.parametrize``) convs, a ``forward``
    replaced on an instance, and modules used at more than one place in the model.

    Args:
        model: any ``nn.Module``: our zoo's RegNets, torchvision's, timm's, or any CNN built of
            conv -> BatchNorm -> ReLU containers. Parameters, buffers, their names and their objects
            are kept, so an optimizer built before this call still steps the same tensors.
        backend: ``"auto"`` (fastest measured backend that can run; eager on CPU tensors), ``"triton"``,
            ``"cuda"`` or ``"eager"``. Fused modules check at call time; an explicit backend that cannot
            run the inputs raises :class:`regnet_kernels.backends.BackendUnavailableError`.
        return_report: also return the :class:`FusionReport` (also kept: :func:`fusion_report`).

    Returns:
        The optimized model, or ``(model, report)``. That is ``model`` itself (changed in place), except
        when ``model`` is itself a single fusable module (e.g. a bare ``Conv2dNormActivation`` or a
        bottleneck block): then it is a new fused module holding ``model``'s children, and **the return
        value must be used** (``m = regnet_kernels.optimize(m)``); ``model`` is left unchanged.

    Equivalent PyTorch: the unmodified ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize expects an nn.Module, got {type(model).__name__}")
    if backend not in _backends.REQUESTABLE:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(_backends.REQUESTABLE)}")
    report = FusionReport(backend=backend)
    root = _visit(model, "", backend, report, module_paths(model)) or model
    fused_prefixes = [f for f, _ in report.fused]
    for qual, m in root.named_modules():
        if isinstance(m, nn.Conv2d) and not any(f == "" or qual.startswith(f + ".") for f in fused_prefixes):
            if not any(s == "" or qual == s or qual.startswith(s + ".") for s, _ in report.skipped):
                report.skipped.append((qual, "conv not in a recognised conv -> BatchNorm (-> ReLU) structure"))
    root.__dict__[_REPORT] = report
    return (root, report) if return_report else root


def fusion_report(model: nn.Module) -> Optional[FusionReport]:
    """The report of the last :func:`optimize` on ``model`` (None if never optimized)."""
    return model.__dict__.get(_REPORT)


def _unfuse(fused: nn.Module) -> nn.Module:
    original = fused.__dict__[_ORIGINAL]
    # the fused module's current children win: they may have been swapped since optimize()
    # (e.g. nn.SyncBatchNorm.convert_sync_batchnorm) and the original must see the same ones
    for sub_name, sub in fused.named_children():
        if sub_name in original._modules:
            original._modules[sub_name] = sub
    restore(original)
    original.train(fused.training)
    return original


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`optimize` in place: every fused module is replaced by the module it replaced.

    The original modules share their parameters and buffers with the fused ones, so training done on
    the optimized model is kept. Returns ``model``, or, when ``model`` is itself a fused module (what
    :func:`optimize` returns for a bare fusable module), the original module it replaced.
    """
    model.__dict__.pop(_REPORT, None)
    if is_fused(model):
        return _unfuse(model)
    for name, child in list(model.named_children()):
        if is_fused(child):
            setattr(model, name, _unfuse(child))
        else:
            restore(child)
    return model


@contextlib.contextmanager
def unfused(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put the original modules back (as :func:`restore`), then the fused ones again.

    For tools that observe the original modules' forwards (e.g. per-conv hooks counting MACs). Yields the
    module to run: ``model``, or the original one when ``model`` is itself fused.
    """
    swapped = []  # (parent or None, name, fused), outermost first

    def swap(parent: Optional[nn.Module], name: str, m: nn.Module) -> nn.Module:
        if is_fused(m):
            original = m.__dict__[_ORIGINAL]
            for sub_name, sub in m.named_children():
                if sub_name in original._modules:
                    original._modules[sub_name] = sub
            swapped.append((parent, name, m))
            if parent is not None:
                parent._modules[name] = original
            m = original
        for child_name, child in list(m.named_children()):
            swap(m, child_name, child)
        return m

    root = swap(None, "", model)
    try:
        yield root
    finally:
        for parent, name, fused in reversed(swapped):
            if parent is not None:
                parent._modules[name] = fused
