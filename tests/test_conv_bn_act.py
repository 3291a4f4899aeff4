"""Fused conv + BatchNorm + ReLU: reference vs torch.nn (float64), Triton vs the float64 oracle with the
flash-attention rule (every output, every gradient, running buffers), layouts, odd shapes, errors,
opcheck, torch.compile and autocast. Triton runs on CPU tensors through the interpreter."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from conftest import DEVICE, KERNEL_BACKENDS
from conv_bn_act_checks import (
    CONFIGS,
    DTYPES,
    check_autocast,
    check_batch_one_eval,
    check_large_mean_input,
    check_no_activation,
    check_opcheck,
    check_running_stats_semantics,
    compare,
    make_input,
    make_modules,
    run,
    triton_ready,
)
from helpers import assert_kernels_ran
from regnet_kernels import backends
from regnet_kernels.nn import FusedConvBNAct2d
from regnet_kernels.ops import conv_bn_act
from regnet_kernels.testing import rel_err


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernels_match_oracle(backend, name, training, dtype):
    compare(CONFIGS[name], dtype, training, backend=backend)


@pytest.mark.parametrize("layout", ["channels_last", "noncontig"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["gw8_s2_odd", "stem_3to16_s2", "1x1_c24to40"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_layouts(backend, name, training, dtype, layout):
    got, eager = compare(CONFIGS[name], dtype, training, layout=layout, backend=backend)
    assert got["channels_last"] == (layout == "channels_last")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_no_activation(backend, training):
    check_no_activation(backend, training)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_batch_one_eval(backend):
    check_batch_one_eval(backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_large_mean_input(backend):
    check_large_mean_input(backend)


def test_triton_kernels_ran():
    triton_ready()
    with assert_kernels_ran("conv_fwd_kernel", "conv_dgrad_kernel", "conv_wgrad_kernel", "bn_finalize_kernel",
                            "bn_act_kernel", "bn_bwd_reduce_kernel", "bn_bwd_dy_kernel", "bn_running_update_kernel"):
        compare(CONFIGS["gw8"], torch.float16, True)
        compare(CONFIGS["gw8"], torch.float16, False)


# --------------------------------------------------------------------------------------------------
# BatchNorm semantics through the module
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_running_stats_semantics(backend):
    check_running_stats_semantics(backend)


def test_functional_matches_module_and_docs():
    cfg = CONFIGS["gw16"]
    seq = make_modules(cfg)
    x = make_input(cfg, torch.float32)
    ref = seq(x)
    bn = seq[1]
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    seq2 = make_modules(cfg)
    out = conv_bn_act(x, seq2[0].weight, seq2[1].weight, seq2[1].bias, seq2[1].running_mean, seq2[1].running_var,
                      num_batches_tracked=seq2[1].num_batches_tracked, stride=1, groups=3, backend="eager")
    assert rel_err(out, ref) < 1e-6
    assert torch.allclose(seq2[1].running_mean, rm) and torch.allclose(seq2[1].running_var, rv)
    assert conv_bn_act.__doc__ and "Equivalent PyTorch" in conv_bn_act.__doc__


# --------------------------------------------------------------------------------------------------
# reference.py against stock torch.nn in float64
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["gw8_s2_odd", "stem_3to16_s2", "1x1_c24to40"])
def test_reference_matches_torch_nn_float64(name, training):
    cfg = CONFIGS[name]
    seq = make_modules(cfg)
    x = make_input(cfg, torch.float64)
    got = run(seq, x, torch.float64, training, fused_backend="eager", param_dtype=torch.float64)
    ref = run(seq, x, torch.float64, training, param_dtype=torch.float64)
    for key in ("out", "dx", "dw", "dgamma", "dbeta", "running_mean", "running_var"):
        assert rel_err(got[key], ref[key]) < 1e-12, (key, rel_err(got[key], ref[key]))


# --------------------------------------------------------------------------------------------------
# Autocast
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_autocast(backend):
    check_autocast(backend)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
def test_errors_name_the_problem():
    w = torch.randn(8, 4, 3, 3)
    g, b = torch.ones(8), torch.zeros(8)
    x = torch.randn(2, 8, 5, 5)
    with pytest.raises(TypeError, match="floating point"):
        conv_bn_act(x.to(torch.int32), w.to(torch.int32), g, b, groups=2)
    with pytest.raises(TypeError, match="dtypes differ"):
        conv_bn_act(x.half(), w, g, b, groups=2)
    with pytest.raises(ValueError, match="channels"):
        conv_bn_act(torch.randn(2, 6, 5, 5), w, g, b, groups=2)
    with pytest.raises(ValueError, match="4-D input"):
        conv_bn_act(torch.randn(8, 5, 5), w, g, b, groups=2)
    with pytest.raises(ValueError, match="groups"):
        conv_bn_act(x, w, g, b, groups=3)
    with pytest.raises(ValueError, match="bn weight must have shape"):
        conv_bn_act(x, w, torch.ones(5), b, groups=2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        conv_bn_act(torch.randn(1, 8, 1, 1), torch.randn(8, 8, 1, 1), g, b)
    with pytest.raises(RuntimeError, match="same device"):
        conv_bn_act(x, w.to("meta"), g, b, groups=2)
    with pytest.raises(ValueError, match="activation"):
        conv_bn_act(x, w, g, b, groups=2, activation="gelu")
    # a matched activation the kernels have no code for (the SE gate's) is refused the same way
    with pytest.raises(ValueError, match=r"activation must be 'relu' or None, got 'sigmoid'"):
        conv_bn_act(x, w, g, b, groups=2, activation="sigmoid")
    with pytest.raises(ValueError, match="eval mode"):
        conv_bn_act(x, w, g, b, groups=2, training=False)
    with pytest.raises(ValueError, match="unknown backend"):
        conv_bn_act(x, w, g, b, groups=2, backend="tpu")
    # an explicit backend that cannot run says why, for every backend
    with pytest.raises(backends.BackendUnavailableError, match="cuda"):
        conv_bn_act(x, w, g, b, groups=2, backend="cuda")
    with pytest.raises(backends.BackendUnavailableError, match="float64"):
        conv_bn_act(x.double(), w.double(), g.double(), b.double(), groups=2, backend="triton")


def test_module_rejects_unsupported():
    with pytest.raises(ValueError, match="bias"):
        FusedConvBNAct2d(nn.Conv2d(4, 4, 3, padding=1, bias=True), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="dilation"):
        FusedConvBNAct2d(nn.Conv2d(4, 4, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="features"):
        FusedConvBNAct2d(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(5))


# --------------------------------------------------------------------------------------------------
# torch.library: opcheck and torch.compile
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["eager"] + KERNEL_BACKENDS)
def test_opcheck(backend):
    check_opcheck(backend)


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1, groups=2, bias=False), nn.BatchNorm2d(32), nn.ReLU()),
        nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5),
    )


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compile_backend):
    triton_ready()
    import regnet_kernels as rk

    ref = _tiny_net().to(DEVICE)
    model = rk.optimize(copy.deepcopy(ref), backend="triton")
    torch._dynamo.reset()
    cmodel = torch.compile(model, fullgraph=True, backend=compile_backend)
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    out = cmodel(x)
    out.square().sum().backward()
    ref_out = ref(x)
    ref_out.square().sum().backward()
    assert rel_err(out, ref_out) < 1e-4
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert rel_err(p.grad, q.grad) < 1e-4, n
    for (n, b1), (_, b2) in zip(model.named_buffers(), ref.named_buffers()):
        assert rel_err(b1, b2) < 1e-5 if b1.is_floating_point() else torch.equal(b1, b2), n
    model.eval()
    ref.eval()
    assert rel_err(cmodel(x), ref(x)) < 1e-4


def test_reference_count_identity():
    """The sum of a tiny conv over all outputs equals a hand count: guards the implicit-GEMM indexing."""
    triton_ready()
    x = torch.ones(1, 2, 3, 3, device=DEVICE)
    w = torch.ones(2, 1, 3, 3, device=DEVICE)
    out = conv_bn_act(x, w, None, None, torch.zeros(2, device=DEVICE), torch.ones(2, device=DEVICE) - 1e-5, groups=2,
                      training=False, activation=None, backend="triton", eps=1e-5).cpu()
    # each output pixel sums the 3x3 window inside the zero-padded 3x3 image: corners 4, edges 6, centre 9
    expect = torch.tensor([[4.0, 6, 4], [6, 9, 6], [4, 6, 4]])
    assert torch.allclose(out[0, 0], expect, atol=1e-4) and torch.allclose(out[0, 1], expect, atol=1e-4)
    assert math.isclose(out.sum().item(), 2 * 49.0, rel_tol=1e-5)


def test_ops_take_an_activation_code():
    """The ops carry ``int act`` (an ``Act`` code), mapped from ``activation`` through matching.KERNEL_ACT; the
    reference applies each code's eager form and refuses codes it does not know."""
    from regnet_kernels.kernels.activation import Act
    from regnet_kernels.ops.conv_bn_act import _activation
    from regnet_kernels.ops.conv_bn_act import reference as ref

    for op in ("conv_bn_act_train", "conv_bn_act_train_backward", "conv_bn_act_eval", "conv_bn_act_eval_backward"):
        args = {a.name: str(a.type) for a in getattr(torch.ops.regnet_kernels, op).default._schema.arguments}
        assert "relu" not in args and args["act"] in ("int", "SymInt"), (op, args)
    assert _activation("relu") == Act.RELU and _activation(None) == _activation("identity") == Act.NONE
    z = torch.tensor([-1.0, 0.0, 2.0, float("nan")])
    torch.testing.assert_close(ref.apply_act(z, Act.RELU), torch.relu(z), equal_nan=True)
    torch.testing.assert_close(ref.apply_act(z, Act.NONE), z, equal_nan=True)
    with pytest.raises(ValueError, match="unknown activation code 7"):
        ref.apply_act(z, 7)
    with pytest.raises(ValueError, match="unknown activation code 7"):
        ref.act_grad_from_output(z, z, 7)
