"""The kernel primitive interface (regnet_kernels/kernels/api.py) and how dispatch binds the fused compositions
(ops/<op>/fused.py) to a backend's kernel set. CPU only: nothing here launches a kernel."""
import importlib

import pytest
import torch

from regnet_kernels import backends
from regnet_kernels.kernels import api
from regnet_kernels.ops import dispatch

PACKAGES = ("regnet_kernels.ops.conv_bn_act", "regnet_kernels.ops.squeeze_excite", "regnet_kernels.ops.bottleneck")


@pytest.mark.parametrize("name", api.BACKENDS)
def test_kernel_sets_implement_every_primitive(name):
    k = api.get(name)
    assert isinstance(k, api.Kernels) and k.name == name
    assert not type(k).__abstractmethods__
    assert api.get(name) is k  # one per backend


def test_unknown_kernel_set_is_refused():
    with pytest.raises(ValueError, match="no kernel backend 'eager'"):
        api.get("eager")


@pytest.mark.parametrize("package", PACKAGES)
def test_bind_gives_the_fused_functions_once_per_backend(package):
    fused = importlib.import_module(f"{package}.fused")
    reference = importlib.import_module(f"{package}.reference")
    for name in api.BACKENDS:
        bound = dispatch.bind(package, name)
        assert dispatch.bind(package, name) is bound
        assert bound.kernels is api.get(name)
        for fn in fused.__all__:
            assert getattr(bound, fn).func is getattr(fused, fn)
            assert getattr(bound, fn).args == (api.get(name),)
            assert hasattr(reference, fn), fn  # same names and contract as the reference


def test_implementation_picks_reference_for_eager_and_empty_batches(monkeypatch):
    monkeypatch.setitem(backends._REGISTRY, "cuda",
                        backends.Backend("cuda", "pretend (tests)", lambda: None, lambda d: None))
    package = "regnet_kernels.ops.conv_bn_act"
    reference = importlib.import_module(f"{package}.reference")
    x, empty = torch.randn(2, 4, 5, 5), torch.randn(0, 4, 5, 5)
    assert dispatch.implementation("conv_bn_act", package, "eager", (x,)) is reference
    assert dispatch.implementation("conv_bn_act", package, "cuda", (empty,)) is reference
    assert dispatch.implementation("conv_bn_act", package, "cuda", (x,)) is dispatch.bind(package, "cuda")


def test_cuda_kernel_set_refuses_triton_only_options():
    k = api.get("cuda")
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 4, 1, 1)
    with pytest.raises(TypeError, match="pre_affine"):
        k.conv_forward(x, w, 1, 0, 1, pre_affine=None)
    with pytest.raises(TypeError, match="add"):
        k.conv_dgrad(x, w, x.shape, 1, 0, 1, like=x, add=x)


def test_eval_affine_matches_the_reference_algebra():
    gen = torch.Generator().manual_seed(0)
    rm, rv = torch.randn(6, generator=gen), torch.rand(6, generator=gen) + 0.5
    g, b = torch.randn(6, generator=gen).half(), torch.randn(6, generator=gen)
    invstd, mean, scale, bias = api.eval_affine(api.EvalBN(rm, rv, g, b, 1e-3))
    assert torch.equal(invstd, torch.rsqrt(rv + 1e-3)) and torch.equal(mean, rm)
    assert torch.equal(scale, g.float() * invstd) and torch.equal(bias, b)
    _, _, scale, bias = api.eval_affine(api.EvalBN(rm, rv, None, None, 1e-3))
    assert scale is not None and torch.equal(scale, torch.rsqrt(rv + 1e-3)) and not bias.any()
