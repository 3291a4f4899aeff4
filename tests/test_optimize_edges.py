"""optimize() at the edges: only provably identical structures are fused (everything else is left alone with
the reason in the report), bare fusable modules, meta tensors and complexity(), torch.compile as the very
first call, opcheck of the block ops, model-name aliases, and RegNetParams validation. Tiny shapes only."""
from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import textwrap
from unittest import mock
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

import regnet_kernels as rk
from regnet_kernels.matching import Activation
from regnet_kernels.models import (
    ALIASES,
    MODEL_PARAMS,
    Conv2dNormActivation,
    RegNet,
    RegNetParams,
    ResBottleneckBlock,
    complexity,
    get_model,
    get_model_params,
    list_models,
)
from regnet_kernels.nn import FusedBottleneck, FusedConvBNAct2d

TINY_Y = RegNetParams(depth=3, w_0=16, w_a=8, w_m=2.0, group_width=8, se_ratio=0.25, stem_width=16)
REPO = Path(__file__).resolve().parents[1]


def _cba(act=None, conv=None, bn=None) -> nn.Sequential:
    conv = conv if conv is not None else nn.Conv2d(3, 4, 3, padding=1, bias=False)
    layers = [conv, bn if bn is not None else nn.BatchNorm2d(4)]
    return nn.Sequential(*layers, *([act] if act is not None else []))


def _first_block(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, ResBottleneckBlock))


# ------------------------------------------------------------------------------------------------
# Item 5: fuse only what is provably identical; say why not in the report
# ------------------------------------------------------------------------------------------------
class _MyReLU(nn.ReLU):
    pass


class _MyBN(nn.BatchNorm2d):
    pass


def _hooked(kind):
    def build():
        m = _cba(nn.ReLU())
        target = {"conv forward": m[0], "bn pre": m[1], "container": m, "act": m[2]}[kind]
        if kind == "bn pre":
            target.register_forward_pre_hook(lambda mod, args: None)
        elif kind == "container":
            target.register_full_backward_hook(lambda mod, gi, go: None)
        else:
            target.register_forward_hook(lambda mod, args, out: None)
        return m
    return build


def _pruned():
    m = _cba(nn.ReLU())
    prune.l1_unstructured(m[0], "weight", amount=0.5)
    return m


def _parametrized():
    m = _cba(nn.ReLU())
    parametrize.register_parametrization(m[0], "weight", nn.Identity())
    return m


def _forward_replaced():
    m = _cba(nn.ReLU())
    bn = m[1]
    bn.forward = lambda x: nn.BatchNorm2d.forward(bn, x) * 2
    return m


LEFT_ALONE = [
    # (id, builder of a conv-BN(-act) container, report fragment)
    ("hardtanh_0_10", lambda: _cba(nn.Hardtanh(0.0, 10.0)), "Hardtanh"),
    ("relu6", lambda: _cba(nn.ReLU6()), "ReLU6"),
    ("leaky_relu_0", lambda: _cba(nn.LeakyReLU(0.0)), "LeakyReLU"),
    ("threshold_0_0", lambda: _cba(nn.Threshold(0.0, 0.0)), "Threshold"),
    ("relu_subclass", lambda: _cba(_MyReLU()), "_MyReLU"),
    ("silu", lambda: _cba(nn.SiLU()), "SiLU"),
    ("conv_forward_hook", _hooked("conv forward"), "forward hooks"),
    ("bn_forward_pre_hook", _hooked("bn pre"), "forward pre-hooks"),
    ("container_backward_hook", _hooked("container"), "hooks"),
    ("act_forward_hook", _hooked("act"), "forward hooks"),
    ("pruned_conv", _pruned, "pruned"),
    ("parametrized_conv", _parametrized, "parametrized"),
    ("forward_replaced", _forward_replaced, "forward replaced"),
    ("conv_bias", lambda: _cba(nn.ReLU(), conv=nn.Conv2d(3, 4, 3, padding=1)), "bias"),
    ("padding_mode", lambda: _cba(conv=nn.Conv2d(3, 4, 3, padding=1, bias=False, padding_mode="reflect")),
     "padding_mode"),
    ("dilation", lambda: _cba(conv=nn.Conv2d(3, 4, 3, padding=2, dilation=2, bias=False)), "dilation"),
    ("bn_subclass", lambda: _cba(bn=_MyBN(4)), "unknown forward"),
]


def _train_twice(model, x):
    outs = []
    for _ in range(2):  # twice: a pruned conv's second backward is where a fused one broke
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().mean().backward()
        outs.append(out.detach())
    return outs


@pytest.mark.parametrize("case_id,build,fragment", LEFT_ALONE, ids=[c[0] for c in LEFT_ALONE])
def test_left_alone_with_reason(case_id, build, fragment):
    torch.manual_seed(0)
    model = nn.Sequential(build())
    torch.manual_seed(0)
    ref = nn.Sequential(build())  # not a deepcopy: a pruned module cannot be deep-copied
    _, report = rk.optimize(model, backend="eager", return_report=True)
    assert report.fused == []
    assert any(path == "0" and fragment in reason for path, reason in report.skipped), str(report)
    assert fragment in str(report)
    x = (3 * torch.randn(2, 3, 5, 5)).requires_grad_()
    for got, want in zip(_train_twice(model, x), _train_twice(ref, x)):
        assert torch.equal(got, want)


def test_hardtanh_outputs_stay_clamped():
    """The issue's example: Hardtanh(0, 10) fused as ReLU gave 14 where eager gives 10."""
    torch.manual_seed(0)
    model = nn.Sequential(_cba(nn.Hardtanh(0.0, 10.0)))
    with torch.no_grad():
        model[0][1].weight.fill_(20.0)
    out = rk.optimize(model, backend="eager")(torch.randn(2, 3, 5, 5))
    assert out.max().item() == 10.0


def test_global_hooks_leave_everything_alone():
    model = nn.Sequential(_cba(nn.ReLU()), _cba(nn.ReLU(), conv=nn.Conv2d(4, 4, 1, bias=False)))
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, args, out: None)
    try:
        _, report = rk.optimize(model, backend="eager", return_report=True)
    finally:
        handle.remove()
    assert report.fused == []
    assert {p for p, r in report.skipped if "global module forward hooks" in r} == {"0", "1"}


def test_shared_module_is_reported_and_left_alone():
    shared = _cba(nn.ReLU())
    model = nn.Sequential(shared, nn.Conv2d(4, 4, 1, bias=False))
    model.add_module("again", shared)  # the same instance at two places
    _, report = rk.optimize(model, backend="eager", return_report=True)
    assert report.fused == []
    assert any("shared" in r and "again" in r for _, r in report.skipped), str(report)
    assert model[0] is shared and model.again is shared


def test_shared_stateless_activation_is_fine():
    act = nn.ReLU()
    model = nn.Sequential(_cba(act), _cba(act, conv=nn.Conv2d(4, 4, 1, bias=False)))
    _, report = rk.optimize(model, backend="eager", return_report=True)
    assert report.counts() == {"FusedConvBNAct2d": 2}, str(report)


def test_relu_inplace_and_affine_free_bn_are_fused_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(_cba(nn.ReLU(inplace=True)), _cba(bn=nn.BatchNorm2d(4, affine=False),
                                                           conv=nn.Conv2d(4, 4, 1, bias=False)))
    ref = copy.deepcopy(model)
    _, report = rk.optimize(model, backend="eager", return_report=True)
    assert report.counts() == {"FusedConvBNAct2d": 2}
    assert [m.activation for m in model] == [Activation.RELU, Activation.NONE]
    x = torch.randn(2, 3, 5, 5)
    for got, want in zip(_train_twice(model, x), _train_twice(ref, x)):
        torch.testing.assert_close(got, want)


def test_hooked_piece_keeps_its_block_unfused_but_siblings_fuse():
    torch.manual_seed(0)
    model = RegNet(TINY_Y, num_classes=4)
    block = _first_block(model)
    calls = []
    block.f.b[0].register_forward_hook(lambda mod, args, out: calls.append(1))
    ref = copy.deepcopy(model)
    _, report = rk.optimize(model, backend="eager", return_report=True)
    path = next(p for p, m in ref.named_modules() if isinstance(m, ResBottleneckBlock))
    assert any(p == path and "f.b.0 has forward hooks" in r for p, r in report.skipped), str(report)
    assert not isinstance(model.get_submodule(path), FusedBottleneck)
    assert isinstance(model.get_submodule(path + ".f.a"), FusedConvBNAct2d)
    assert not isinstance(model.get_submodule(path + ".f.b"), FusedConvBNAct2d)
    x = torch.randn(2, 3, 32, 32)
    calls.clear()
    torch.testing.assert_close(model(x), ref(x))
    assert len(calls) == 2  # the hook fired in the optimized model too (and in the reference copy's)


@pytest.mark.parametrize("activation,expected", [("relu", Activation.RELU), (None, Activation.NONE),
                                                 (Activation.RELU, Activation.RELU), ("none", Activation.NONE)])
def test_fused_module_activation_enum(activation, expected):
    m = FusedConvBNAct2d(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), activation)
    assert m.activation is expected


@pytest.mark.parametrize("activation", ["gelu", Activation.SIGMOID, True])
def test_fused_module_rejects_other_activations(activation):
    with pytest.raises(ValueError, match="activation"):
        FusedConvBNAct2d(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), activation)


def test_one_structure_parser():
    """optimize() and the fused block share the parser in regnet_kernels.matching (no private twins)."""
    import importlib

    from regnet_kernels import matching
    from regnet_kernels.nn import bottleneck, conv_bn_act, squeeze_excite

    opt_mod = importlib.import_module("regnet_kernels.optimize")  # the attribute is the function

    assert bottleneck.parse_bottleneck is matching.parse_bottleneck
    assert opt_mod.parse_conv_bn_act is matching.parse_conv_bn_act
    assert squeeze_excite.se_structure is matching.se_structure
    assert conv_bn_act.conv_unsupported_reason is matching.conv_unsupported_reason
    for mod in (bottleneck, conv_bn_act, squeeze_excite, opt_mod):
        assert not hasattr(mod, "computes") and not hasattr(mod, "activation_name")


# ------------------------------------------------------------------------------------------------
# Item 7: a bare fusable module comes back fused
# ------------------------------------------------------------------------------------------------
def _bare_cna():
    return Conv2dNormActivation(3, 4, 3)


def _bare_block():
    return _first_block(RegNet(TINY_Y, num_classes=4))


def _bare_torchvision_cna():
    from conftest import import_torchvision

    return import_torchvision().ops.Conv2dNormActivation(3, 4, 3)


@pytest.mark.parametrize("build,fused_type,in_ch", [(_bare_cna, FusedConvBNAct2d, 3),
                                                    (_bare_block, FusedBottleneck, 16),
                                                    (_bare_torchvision_cna, FusedConvBNAct2d, 3)],
                         ids=["ours_conv2d_norm_activation", "res_bottleneck_block", "torchvision_cna"])
def test_bare_fusable_module(build, fused_type, in_ch):
    torch.manual_seed(0)
    bare = build()
    ref = copy.deepcopy(bare)
    keys = list(bare.state_dict())
    fused, report = rk.optimize(bare, backend="eager", return_report=True)
    assert isinstance(fused, fused_type)  # a new module: the return value must be used
    assert type(bare) is type(ref)  # the argument itself is not changed
    assert report.fused[0] == ("", fused_type.__name__)
    assert rk.fusion_report(fused) is report
    assert list(fused.state_dict()) == keys
    x = torch.randn(2, in_ch, 8, 8)
    torch.testing.assert_close(fused(x), ref(x))
    assert rk.optimize(fused, backend="eager") is fused  # already fused: retargeted, not wrapped again
    restored = rk.restore(fused)
    assert type(restored) is type(ref)
    torch.testing.assert_close(restored(x), ref(x))


# ------------------------------------------------------------------------------------------------
# Item 8: meta tensors, complexity(), torch.compile as the first call, opcheck of the block ops
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", "eager", "triton"])
def test_functionals_on_meta(backend):
    from regnet_kernels.ops.conv_bn_act import conv_bn_act
    from regnet_kernels.ops.squeeze_excite import squeeze_excite

    x = torch.empty(2, 8, 6, 6, device="meta")
    w = torch.empty(16, 4, 3, 3, device="meta")
    g, b, rm, rv = (torch.empty(16, device="meta") for _ in range(4))
    out = conv_bn_act(x, w, g, b, rm, rv, groups=2, stride=2, backend=backend)
    assert out.shape == (2, 16, 3, 3) and out.device.type == "meta"
    out = conv_bn_act(x, w, g, b, rm, rv, groups=2, training=False, backend=backend)
    assert out.shape == (2, 16, 6, 6)
    se = squeeze_excite(x, torch.empty(2, 8, 1, 1, device="meta"), None, torch.empty(8, 2, 1, 1, device="meta"),
                        None, backend=backend)
    assert se.shape == x.shape


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_optimized_model_on_meta_and_complexity(backend):
    model = RegNet(TINY_Y, num_classes=4)
    fused = rk.optimize(copy.deepcopy(model), backend=backend)
    assert complexity(fused, 32) == complexity(model, 32)
    meta = copy.deepcopy(fused).to("meta")
    x = torch.empty(2, 3, 32, 32, device="meta")
    assert meta(x).shape == (2, 4)
    assert meta.eval()(x).shape == (2, 4)
    assert any(isinstance(m, FusedBottleneck) for m in fused.modules())  # still fused after counting


def test_compile_fullgraph_as_first_call():
    """A fresh process whose very first regnet_kernels call is a torch.compile(fullgraph=True) trace."""
    script = textwrap.dedent("""
        import torch, regnet_kernels as rk
        from regnet_kernels.models import RegNet, RegNetParams
        torch.manual_seed(0)
        p = RegNetParams(depth=1, w_0=8, w_a=8, w_m=2.0, group_width=8, se_ratio=0.25, stem_width=8)
        model = rk.optimize(RegNet(p, num_classes=2), backend="triton")
        out = torch.compile(model, fullgraph=True, backend="eager")(torch.randn(2, 3, 8, 8))
        out.sum().backward()
        print("OK", tuple(out.shape))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), TRITON_INTERPRET="1")
    env.pop("REGNET_KERNELS_BACKEND", None)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "OK (2, 2)" in res.stdout, res.stderr[-3000:]


def _block_op_args(training: bool):
    """The exact arguments FusedBottleneck passes to the block op, captured from a tiny SE + projection block."""
    import regnet_kernels.nn.bottleneck as nb

    torch.manual_seed(0)
    block = _first_block(RegNet(TINY_Y, num_classes=4))
    fused = rk.optimize(block, backend="eager")
    assert isinstance(fused, FusedBottleneck) and fused.layout.se and fused.layout.proj
    captured = {}
    name = "bottleneck_train" if training else "bottleneck_eval"
    real = getattr(nb, name)

    def capture(x, params, stride, groups, eps, backend):
        captured["args"] = (x, *params, int(stride), int(groups), [float(e) for e in eps], backend)
        return real(x, params, stride, groups, eps, backend)

    x = torch.randn(2, 16, 6, 6, requires_grad=training)
    fused.train(training)
    with mock.patch.object(nb, name, capture), torch.set_grad_enabled(training):
        fused(x)
    return captured["args"]


def _detached(args):
    """The backward and eval ops have no autograd formula of their own (never differentiated): no grad inputs."""
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


def test_opcheck_bottleneck_train():
    args = _block_op_args(training=True)
    torch.library.opcheck(torch.ops.regnet_kernels.bottleneck_train.default, args)


def test_opcheck_bottleneck_train_backward():
    args = _block_op_args(training=True)
    from regnet_kernels.ops.bottleneck import DIFF_INPUTS

    n = len(DIFF_INPUTS)
    x, params, (stride, groups, _eps, backend) = args[0], args[1:n], args[n:]
    with torch.no_grad():
        out, *saved = torch.ops.regnet_kernels.bottleneck_train.default(*args)
    mask = [t is not None for t in (x, *params)]
    bwd_args = (torch.randn_like(out), x, *params, *saved, stride, groups, mask, backend)
    torch.library.opcheck(torch.ops.regnet_kernels.bottleneck_train_backward.default, _detached(bwd_args))


def test_opcheck_bottleneck_eval():
    args = _block_op_args(training=False)
    torch.library.opcheck(torch.ops.regnet_kernels.bottleneck_eval.default, _detached(args))


# ------------------------------------------------------------------------------------------------
# Item 9: pycls and timm model names
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alias,name", [("RegNetY-1.6GF", "regnety_1_6gf"), ("RegNetX-3.2GF", "regnetx_3_2gf"),
                                        ("RegNetX-200MF", "regnetx_200mf"), ("RegNetY-32GF", "regnety_32gf"),
                                        ("regnety_016", "regnety_1_6gf"), ("regnetx_032", "regnetx_3_2gf"),
                                        ("regnetx_002", "regnetx_200mf"), ("regnety_040", "regnety_4_0gf"),
                                        ("regnety_120", "regnety_12gf"), ("regnetx_320", "regnetx_32gf")])
def test_alias_names(alias, name):
    assert ALIASES[alias] == name
    assert get_model_params(alias) is get_model_params(name)
    assert alias in list_models(aliases=True) and alias not in list_models()
    with torch.device("meta"):
        a, b = get_model(alias, num_classes=3), get_model(name, num_classes=3)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]


def test_list_models_aliases():
    assert len(ALIASES) == 48 and set(ALIASES.values()) == {n for n in MODEL_PARAMS if n.startswith("regnet") and
                                                            n[6] in "xy" and n[7] == "_"}
    assert list_models(aliases=True) == sorted(set(list_models()) | set(ALIASES))


@pytest.mark.parametrize("name", ["regnety_017", "regnet-y-1.6gf", "", None, 16])
def test_unknown_model_names(name):
    with pytest.raises(ValueError, match="known models: .*regnety_1_6gf"):
        get_model_params(name)


def test_timm_names_match_timm_params(timm):
    for alias, name in ALIASES.items():
        if not alias.startswith("regnet"):
            continue
        with torch.device("meta"):
            ours = get_model(alias)
            theirs = timm.create_model(alias, pretrained=False)
        n_ours = sum(p.numel() for p in ours.parameters())
        assert n_ours == sum(p.numel() for p in theirs.parameters()), alias
        assert sorted(p.shape for p in ours.parameters()) == sorted(p.shape for p in theirs.parameters()), alias


# ------------------------------------------------------------------------------------------------
# Item 10: every impossible RegNetParams value is a ValueError naming its parameter
# ------------------------------------------------------------------------------------------------
BASE = dict(depth=3, w_0=8, w_a=8.0, w_m=2.0, group_width=8)
NAN, INF = math.nan, math.inf
BAD = {
    "depth": [0, -1, 2.0, NAN, INF, 10**9, "3", True, None],
    "w_0": [0, -8, 12, 8.0, NAN, INF, 2**40, "8", True, None],
    "w_a": [-1.0, NAN, INF, -INF, 1e9, 10**9, 1e300, "8", None],
    "w_m": [0, 1, 0.5, -2.0, NAN, INF, "2", None],
    "group_width": [0, -8, 8.5, NAN, INF, "8", True, None],
    "bottleneck_multiplier": [0, -1.0, 1e-300, NAN, INF, 1e9, 10**9, "1", None],
    "se_ratio": [0, -0.25, 1.5, 1e-9, NAN, INF, "0.25", True],
    "stem_width": [0, -1, 2**40, 8.0, NAN, "32", None],
    "rounding": ["tf", "", None, 1, NAN],
}
SWEEP = [(p, v, r) for p, values in BAD.items() for v in values
         for r in (("torchvision",) if p == "rounding" else ("torchvision", "pycls"))]
# impossible only with torchvision's rounding: its float32 arithmetic (w_m rounds to 1.0) and its int()
# truncation of the bottleneck width (8 * 0.1 -> 0); pycls builds both
SWEEP += [("w_m", 1.0 + 1e-9, "torchvision"), ("bottleneck_multiplier", 0.1, "torchvision")]


@pytest.mark.parametrize("param,value,rounding", SWEEP, ids=[f"{p}={v!r}-{r}" for p, v, r in SWEEP])
def test_regnet_params_sweep(param, value, rounding):
    kw = {**BASE, "rounding": rounding, param: value}
    with pytest.raises(ValueError) as info:
        RegNetParams(**kw)
    assert str(info.value).startswith(param), str(info.value)


@pytest.mark.parametrize("kw,param", [(dict(bottleneck_multiplier=0.1), "bottleneck_multiplier"),
                                      (dict(w_a=1e9), "w_a"), (dict(w_a=1e9, rounding="pycls"), "w_a"),
                                      (dict(w_m=10.0**30), None), (dict(w_a=0.0), None)])
def test_regnet_params_issue_cases(kw, param):
    if param is None:  # huge w_m (one stage) and w_a = 0 (constant width) are valid design points
        assert RegNetParams(**{**BASE, **kw}).depth == 3
        return
    with pytest.raises(ValueError, match=f"^{param}"):
        RegNetParams(**{**BASE, **kw})
