"""RegNet model zoo: design-space rounding, torchvision parity, published complexity figures.

Oracles: torchvision (imported only here, through conftest.import_torchvision) and the published tables
in tests/data/regnet_published.json (torchvision's Weights meta, pycls's dev/model_*.json and the stage
tables pycls's own generate_regnet_full() produces), plus an analytic pycls-style count written below
that never looks at the modules.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import import_torchvision
from torch import nn

import regnet_kernels.models as M
from regnet_kernels.models import RegNetParams, complexity

DATA = json.loads((Path(__file__).parent / "data" / "regnet_published.json").read_text())
TV_DATA = DATA["torchvision"]["models"]
PYCLS_DATA = DATA["pycls"]

TV_NAMES = [
    "regnet_y_400mf",
    "regnet_y_800mf",
    "regnet_y_1_6gf",
    "regnet_y_3_2gf",
    "regnet_y_8gf",
    "regnet_y_16gf",
    "regnet_y_32gf",
    "regnet_y_128gf",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_x_1_6gf",
    "regnet_x_3_2gf",
    "regnet_x_8gf",
    "regnet_x_16gf",
    "regnet_x_32gf",
]
_PYCLS_SIZES = [
    "200MF",
    "400MF",
    "600MF",
    "800MF",
    "1.6GF",
    "3.2GF",
    "4.0GF",
    "6.4GF",
    "8.0GF",
    "12GF",
    "16GF",
    "32GF",
]
# our name -> pycls's model name ("RegNetX-1.6GF")
PYCLS_MODELS = {
    f"regnet{fam}_{size.lower().replace('.', '_')}": f"RegNet{fam.upper()}-{size}"
    for fam in "xy"
    for size in _PYCLS_SIZES
}
PYCLS_NAMES = list(PYCLS_MODELS)
# torchvision models whose stages pycls's rounding changes, and the pycls config with the same design point
ROUNDING_DIFFERS = {
    "regnet_x_400mf": "RegNetX-400MF",
    "regnet_y_800mf": "RegNetY-800MF",
    "regnet_y_8gf": "RegNetY-8.0GF",
}
SMALL = ["regnet_y_400mf", "regnet_x_400mf", "regnet_y_800mf"]


def _pycls_cfg(model: str) -> str:
    return f"configs/dds_baselines/regnet{model[6].lower()}/{model}_dds_8gpu.yaml"


# ---------------------------------------------------------------------------------------------------- #
# Helpers
# ---------------------------------------------------------------------------------------------------- #


def tv_regnet():
    import_torchvision()
    import torchvision.models.regnet as tv_regnet

    return tv_regnet


def tv_block_params(name: str):
    """torchvision's BlockParams for a builder, from the builder itself (its real hyperparameters)."""
    tvr = tv_regnet()
    # The builder computes BlockParams and hands them to `_regnet`; intercept them there.
    with mock.patch.object(tvr, "_regnet", lambda block_params, weights, progress, **kw: block_params):
        return getattr(tvr, name)()


def tv_model(name: str, meta: bool) -> nn.Module:
    """A torchvision RegNet; on the meta device, BlockParams are computed first on CPU (torchvision builds
    them with torch.arange, which a meta device context would capture)."""
    if not meta:
        return getattr(tv_regnet(), name)()
    block_params = tv_block_params(name)
    with torch.device("meta"):
        return tv_regnet()._regnet(block_params, None, False)


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return M.get_model(name, **kwargs)


def tree(model: nn.Module) -> list[tuple[str, str]]:
    return [(n, type(m).__name__) for n, m in model.named_modules()]


def shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def analytic_cx(p: RegNetParams, hw: tuple[int, int] = (224, 224), num_classes: int = 1000) -> dict[str, int]:
    """pycls's complexity bookkeeping (pycls/models/blocks.py *_cx), from the block specs alone."""
    h, w = hw
    cx = {"params": 0, "macs": 0, "acts": 0, "pycls_flops": 0}

    def conv(h, w, c_in, c_out, k, stride=1, groups=1, bias=False, norm=True):
        h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
        macs = k * k * c_in * c_out * h * w // groups
        cx["macs"] += macs
        cx["pycls_flops"] += macs + (c_out * h * w if bias else 0)
        cx["params"] += k * k * c_in * c_out // groups + (c_out if bias else 0) + (2 * c_out if norm else 0)
        cx["acts"] += c_out * h * w
        return h, w

    h, w = conv(h, w, 3, p.stem_width, 3, stride=2)
    for b in p.blocks():
        if b.has_proj:
            conv(h, w, b.width_in, b.width_out, 1, stride=b.stride)
        conv(h, w, b.width_in, b.bottleneck_width, 1)
        h, w = conv(h, w, b.bottleneck_width, b.bottleneck_width, 3, stride=b.stride, groups=b.groups)
        if b.se_width is not None:
            conv(1, 1, b.bottleneck_width, b.se_width, 1, bias=True, norm=False)
            conv(1, 1, b.se_width, b.bottleneck_width, 1, bias=True, norm=False)
        conv(h, w, b.bottleneck_width, b.width_out, 1)
    conv(1, 1, p.blocks()[-1].width_out, num_classes, 1, bias=True, norm=False)  # fc
    return cx


@contextmanager
def seeded(seed: int = 0):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


# ---------------------------------------------------------------------------------------------------- #
# Registry and constructors
# ---------------------------------------------------------------------------------------------------- #


def test_list_models_and_constructors():
    names = M.list_models()
    assert names == sorted(TV_NAMES + PYCLS_NAMES)
    assert sorted(M.PUBLISHED) == names
    for name in names:
        assert callable(getattr(M, name)), name
        assert getattr(M, name).__name__ == name
    assert {M.get_model_params(n).rounding for n in TV_NAMES} == {"torchvision"}
    assert {M.get_model_params(n).rounding for n in PYCLS_NAMES} == {"pycls"}


def test_constructor_kwargs_and_forward():
    model = M.regnet_y_400mf(num_classes=10, norm_eps=1e-3, norm_momentum=0.05)
    assert model.fc.out_features == 10
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.05 for m in bns)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 48)).shape == (2, 10)
    # The named constructor, get_model and RegNet(params) are the same thing.
    with torch.device("meta"):
        a, b = M.regnetx_200mf(num_classes=7), M.get_model("regnetx_200mf", num_classes=7)
        c = M.RegNet(M.get_model_params("regnetx_200mf"), num_classes=7)
    assert shapes(a) == shapes(b) == shapes(c)


def test_get_model_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="regnet_y_5gf") as info:
        M.get_model("regnet_y_5gf")
    for name in M.list_models():
        assert name in str(info.value)
    with pytest.raises(ValueError, match="regnetx_200mf"):
        M.get_model_params(None)
    with pytest.raises(ValueError, match="regnet_y_400mf"):
        complexity("resnet50")


_GOOD = {"depth": 16, "w_0": 48, "w_a": 27.89, "w_m": 2.09, "group_width": 8}


@pytest.mark.parametrize(
    "field, value",
    [
        ("depth", 0),
        ("depth", -3),
        ("depth", 2.5),
        ("depth", True),
        ("w_0", 0),
        ("w_0", -8),
        ("w_0", 20),
        ("w_0", 48.5),
        ("w_a", -0.1),
        ("w_a", float("nan")),
        ("w_m", 1.0),
        ("w_m", 0.5),
        ("w_m", float("nan")),
        ("w_m", float("inf")),
        ("group_width", 0),
        ("group_width", -8),
        ("group_width", 8.0),
        ("bottleneck_multiplier", 0.0),
        ("bottleneck_multiplier", -1.0),
        ("se_ratio", 0.0),
        ("se_ratio", 1.5),
        ("se_ratio", -0.25),
        ("se_ratio", "0.25"),
        ("rounding", "timm"),
        ("rounding", None),
        ("stem_width", 0),
        ("stem_width", -32),
    ],
)
def test_bad_design_parameter_names_it(field, value):
    with pytest.raises(ValueError, match=field):
        RegNetParams(**{**_GOOD, field: value})


def test_bad_design_parameter_pycls_bottleneck_and_edges():
    # pycls's adjust_block_compatibility only supports b < 1 or integer b.
    with pytest.raises(ValueError, match="bottleneck_multiplier"):
        RegNetParams(**_GOOD, bottleneck_multiplier=1.5, rounding="pycls")
    # A tiny SE ratio would give zero squeeze channels.
    with pytest.raises(ValueError, match="se_ratio"):
        RegNetParams(**_GOOD, se_ratio=0.001)
    # Edges that are valid: w_a = 0 gives one stage, se_ratio = 1, bottleneck 0.25.
    assert RegNetParams(depth=4, w_0=64, w_a=0, w_m=2.0, group_width=8).depths == (4,)
    RegNetParams(**_GOOD, se_ratio=1.0)
    RegNetParams(**_GOOD, bottleneck_multiplier=0.25, rounding="pycls")
    with pytest.raises(TypeError):
        M.RegNet({"depth": 16})
    with pytest.raises(ValueError, match="num_classes"):
        M.RegNet(RegNetParams(**_GOOD), num_classes=0)


@pytest.mark.parametrize(
    "kwargs", [{"w_a": -1.0}, {"w_0": 0}, {"w_0": 20}, {"w_m": 1.0}], ids=["w_a", "w_0", "w_0%8", "w_m"]
)
def test_rejects_what_torchvision_rejects(kwargs):
    tvr = tv_regnet()
    with pytest.raises(ValueError):
        tvr.BlockParams.from_init_params(**{**_GOOD, **kwargs})
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RegNetParams(**{**_GOOD, **kwargs})


# ---------------------------------------------------------------------------------------------------- #
# Stage specs
# ---------------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", TV_NAMES)
def test_stage_specs_match_torchvision(name):
    bp = tv_block_params(name)
    p = M.get_model_params(name)
    stages = p.stages()
    assert [s.depth for s in stages] == bp.depths
    assert [s.width for s in stages] == bp.widths
    assert [s.group_width for s in stages] == bp.group_widths
    assert [s.stride for s in stages] == bp.strides
    assert [p.bottleneck_multiplier] * len(stages) == bp.bottleneck_multipliers
    assert p.se_ratio == bp.se_ratio
    assert p.stem_width == 32
    assert [s.bottleneck_width for s in stages] == [
        round(w * b) for w, b in zip(bp.widths, bp.bottleneck_multipliers)
    ]
    assert sum(s.depth for s in stages) == p.depth == len(p.blocks())


@pytest.mark.parametrize("name", PYCLS_NAMES)
def test_stage_specs_match_pycls(name):
    ref = PYCLS_DATA["stages"][_pycls_cfg(PYCLS_MODELS[name])]
    p = M.get_model_params(name)
    assert (list(p.depths), list(p.widths), list(p.group_widths)) == (ref["ds"], ref["ws"], ref["gs"])


def test_pycls_rounding_differs_exactly_where_expected():
    for name in TV_NAMES:
        tv = M.get_model_params(name)
        py = dataclasses.replace(tv, rounding="pycls")
        if name in ROUNDING_DIFFERS:
            assert py.stages() != tv.stages(), name
            ref = PYCLS_DATA["stages"][_pycls_cfg(ROUNDING_DIFFERS[name])]
            assert (list(py.depths), list(py.widths), list(py.group_widths)) == (
                ref["ds"],
                ref["ws"],
                ref["gs"],
            )
            # ... and that pycls config is the same design point as the torchvision builder.
            assert py == M.get_model_params(
                next(k for k, v in PYCLS_MODELS.items() if v == ROUNDING_DIFFERS[name])
            )
        else:
            assert py.stages() == tv.stages(), name
    # The concrete differences (torchvision's _make_divisible 10% rule / round-half-up vs round-half-even).
    assert M.get_model_params("regnet_x_400mf").widths == (32, 64, 160, 400)
    assert M.get_model_params("regnetx_400mf").widths == (32, 64, 160, 384)
    assert M.get_model_params("regnet_y_800mf").widths == (64, 144, 320, 784)
    assert M.get_model_params("regnety_800mf").widths == (64, 128, 320, 768)
    assert M.get_model_params("regnet_y_8gf").widths == (224, 448, 896, 2016)
    assert M.get_model_params("regnety_8_0gf").widths == (168, 448, 896, 2016)


def test_block_specs_se_width_uses_block_input_width():
    blocks = M.get_model_params("regnet_y_400mf").blocks()
    assert [(b.name, b.width_in, b.se_width) for b in blocks[:2]] == [
        ("block1-0", 32, 8),
        ("block2-0", 48, 12),
    ]
    assert all(b.se_width == round(0.25 * b.width_in) for b in blocks)
    assert all(b.se_width is None for b in M.get_model_params("regnet_x_400mf").blocks())
    assert [b.has_proj for b in blocks[1:5]] == [True, False, False, True]


# ---------------------------------------------------------------------------------------------------- #
# torchvision parity
# ---------------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", TV_NAMES)
def test_module_tree_and_state_dict_match_torchvision(name):
    theirs, ours = tv_model(name, meta=True), meta_model(name)
    assert tree(ours) == tree(theirs)  # names and class names
    assert shapes(ours) == shapes(theirs)  # state_dict keys (in order) and shapes
    assert [(n, tuple(b.shape)) for n, b in ours.named_buffers()] == [
        (n, tuple(b.shape)) for n, b in theirs.named_buffers()
    ]
    # Hyperparameters the shapes do not show: strides, padding, groups, eps, momentum, inplace.
    assert repr(ours) == repr(theirs)
    assert sum(p.numel() for p in ours.parameters()) == TV_DATA[name]["num_params"]


@pytest.mark.parametrize("name", SMALL)
def test_torchvision_state_dict_loads_and_outputs_match(name):
    theirs = tv_model(name, meta=False)
    ours = M.get_model(name)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    theirs.eval()
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))

    # Train mode: batch statistics, running-stat updates and gradients all match.
    theirs.train()
    ours.train()
    y_t, y_o = theirs(x), ours(x)
    assert torch.equal(y_o, y_t)
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert torch.equal(a, b), k
    y_t.square().mean().backward()
    y_o.square().mean().backward()
    for (k, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize("name", ["regnet_y_400mf", "regnet_x_400mf"])
def test_seeded_init_matches_torchvision(name):
    with seeded(0):
        theirs = tv_model(name, meta=False)
    with seeded(0):
        ours = M.get_model(name)
    sd_t, sd_o = theirs.state_dict(), ours.state_dict()
    assert list(sd_o) == list(sd_t)
    for k in sd_t:
        assert torch.equal(sd_o[k], sd_t[k]), k
    # The init itself: fan-out normal convs, unit/zero BN, N(0, 0.01) classifier with zero bias.
    conv = ours.trunk_output.block3[0].f.b[0]
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    assert abs(conv.weight.std().item() - math.sqrt(2.0 / fan_out)) < 0.1 * math.sqrt(2.0 / fan_out)
    assert torch.equal(ours.fc.bias, torch.zeros_like(ours.fc.bias))
    assert abs(ours.fc.weight.std().item() - 0.01) < 1e-3


def test_meta_build_allocates_nothing():
    model = meta_model("regnet_y_128gf")
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == TV_DATA["regnet_y_128gf"]["num_params"]


def test_models_do_not_import_torchvision():
    code = (
        "import sys, regnet_kernels.models as M; M.complexity(M.regnet_y_400mf()); "
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------------- #
# Complexity vs published tables
# ---------------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", TV_NAMES)
def test_complexity_matches_torchvision_published(name):
    pub = TV_DATA[name]
    cx = complexity(name)
    assert cx["params"] == pub["num_params"]
    assert cx == analytic_cx(M.get_model_params(name))
    # torchvision publishes GFLOPS = GMACs rounded to 3 decimals, at each checkpoint's eval crop (SWAG E2E: 384).
    for weights, meta in pub["weights"].items():
        macs = cx["macs"] if meta["crop_size"] == 224 else complexity(name, meta["crop_size"])["macs"]
        assert round(macs / 1e9, 3) == meta["_ops"], weights


@pytest.mark.parametrize("name", TV_NAMES)
def test_complexity_counts_torchvision_model_the_same(name):
    # The hook count on torchvision's own module tree agrees with ours and with the analytic count.
    theirs = complexity(tv_model(name, meta=True))
    assert theirs == complexity(meta_model(name)) == analytic_cx(M.get_model_params(name))


@pytest.mark.parametrize("name", PYCLS_NAMES)
def test_complexity_matches_pycls_published(name):
    pub = PYCLS_DATA["complexity"][_pycls_cfg(PYCLS_MODELS[name])]
    cx = complexity(name)
    # pycls publishes exact integers: flops (MACs plus bias adds), params, acts.
    assert (cx["params"], cx["pycls_flops"], cx["acts"]) == (pub["params"], pub["flops"], pub["acts"])
    # MACs = pycls flops minus one add per bias output: the classifier and, in RegNetY, both SE convs.
    p = M.get_model_params(name)
    bias_adds = 1000 + sum(b.se_width + b.bottleneck_width for b in p.blocks() if b.se_width is not None)
    assert cx["macs"] == pub["flops"] - bias_adds
    assert cx == analytic_cx(p)


def test_complexity_examples_from_the_issue():
    assert complexity("regnet_y_400mf")["params"] == 4_344_144
    assert complexity("regnet_y_400mf")["macs"] == 401_842_848
    assert complexity("regnetx_200mf") == {
        "params": 2_684_792,
        "macs": 199_039_872,
        "acts": 2_164_056,
        "pycls_flops": 199_040_872,
    }


def test_published_data_in_zoo_matches_sources():
    for name in TV_NAMES:
        pub, src = M.PUBLISHED[name], TV_DATA[name]
        assert pub["source"] == "torchvision"
        assert pub["params"] == src["num_params"]
        assert pub["weights"] == {
            k: {"top1": v["acc@1"], "top5": v["acc@5"], "resolution": v["crop_size"], "gmacs": v["_ops"]}
            for k, v in src["weights"].items()
        }
        v1 = src["weights"].get("IMAGENET1K_V1")
        assert pub["top1"] == (v1["acc@1"] if v1 else None)
        assert pub["gmacs"] == next(v["_ops"] for v in src["weights"].values() if v["crop_size"] == 224)
    for name, model in PYCLS_MODELS.items():
        pub, cx, err = (
            M.PUBLISHED[name],
            PYCLS_DATA["complexity"][_pycls_cfg(model)],
            PYCLS_DATA["error"][model],
        )
        assert pub["source"] == "pycls"
        assert (pub["params"], pub["flops"], pub["acts"]) == (cx["params"], cx["flops"], cx["acts"])
        assert pub["top1"] == pytest.approx(100 - err["top1_err"], abs=1e-9)
        assert pub["top5"] == pytest.approx(100 - err["top5_err"], abs=1e-9)
    assert {tuple(sorted(v)) for v in M.PUBLISHED.values()} == {
        ("acts", "flops", "gmacs", "params", "source", "top1", "top5", "weights")
    }


def test_published_test_data_matches_installed_torchvision():
    tvr = tv_regnet()
    for name in TV_NAMES:
        weights_enum = getattr(tvr, "RegNet_" + name[len("regnet_") :].upper() + "_Weights")
        live = {
            w.name: {
                "acc@1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"],
                "acc@5": w.meta["_metrics"]["ImageNet-1K"]["acc@5"],
                "crop_size": w.transforms.keywords["crop_size"],
                "_ops": w.meta["_ops"],
            }
            for w in weights_enum
        }
        assert live == TV_DATA[name]["weights"], name
        assert {w.meta["num_params"] for w in weights_enum} == {TV_DATA[name]["num_params"]}


# ---------------------------------------------------------------------------------------------------- #
# complexity() on its own
# ---------------------------------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["regnet_y_400mf", "regnetx_8_0gf", "regnet_y_128gf"])
def test_complexity_non_square_and_odd_resolutions(name):
    p = M.get_model_params(name)
    for hw in [(160, 96), (225, 223), (7, 300)]:
        assert complexity(name, hw) == analytic_cx(p, hw), hw
    assert complexity(name, 128) == complexity(name, (128, 128)) == analytic_cx(p, (128, 128))


def test_complexity_any_module_and_leaves_it_untouched():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True),  # 8x8 out at 16x16 in
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2, bias=False),  # 16x16 out
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cx = complexity(model, 16)
    conv_macs = 8 * 8 * 8 * 3 * 9
    convt_macs = 8 * 8 * 8 * (4 // 2) * 4  # every input element x (out_channels / groups) x kernel
    assert cx == {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": conv_macs + convt_macs + 4 * 5,
        "acts": 8 * 8 * 8 + 4 * 16 * 16 + 5,
        "pycls_flops": conv_macs + 8 * 8 * 8 + convt_macs + 4 * 5 + 5,
    }
    assert model.training
    for k, v in model.state_dict().items():  # weights and BN running stats untouched, still on CPU
        assert v.device.type == "cpu" and torch.equal(v, before[k]), k
    # A live CPU model of ours counts the same as the meta-built one.
    assert complexity(M.regnetx_200mf(), 224) == complexity("regnetx_200mf")


def test_complexity_bad_arguments():
    for bad in [0, -224, (224,), (224, 0), 224.0, "224", True]:
        with pytest.raises(ValueError, match="resolution"):
            complexity("regnetx_200mf", bad)
    with pytest.raises(ValueError, match="in_channels"):
        complexity(nn.Linear(3, 3), 4, in_channels=0)
    with pytest.raises(TypeError):
        complexity(42)


def test_complexity_is_fast_for_the_biggest_model():
    complexity("regnetx_200mf")  # first-call warm-up (lazy imports, meta kernels)
    start = time.perf_counter()
    cx = complexity("regnet_y_128gf")
    elapsed = time.perf_counter() - start
    assert cx["params"] == 644_812_894
    assert elapsed < 2.0, f"complexity('regnet_y_128gf') took {elapsed:.2f} s"
