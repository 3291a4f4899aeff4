"""Deploying optimized models: ``torch.export`` (fused ops kept in the graph, dynamic batch, save/load round
trip) of our zoo's, torchvision's and timm's RegNets and of a features_only backbone; ONNX export to a
standard graph (onnx.checker, no custom domain, onnxruntime numerics); AOTInductor on GPU; and
examples/serve.py end to end on CPU.

Every model gets calibrated, non-identity BatchNorms first (running statistics from one training pass,
perturbed affine): a freshly built model's eval BatchNorm is nearly the identity and would hide a wrong
fold. Numerics: fp32 against the unmodified eager model (relative error <= 1e-5) and the design
handbook's rule against a float64 copy.
"""
from __future__ import annotations

import copy
import functools
import importlib
import json
import re
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import regnet_kernels as rk
from conftest import DEVICE, HAS_CUDA, import_timm, import_torchvision, kernel_ready
from helpers import load_example
from regnet_kernels import export as rk_export
from regnet_kernels.models import RegNet, RegNetParams, get_model
from regnet_kernels.nn import FusedBottleneck
from regnet_kernels.testing import FP32_REL, check, rel_err

# (the tiny design points of tests/test_fused_models.py)
TINY_Y = RegNetParams(depth=3, w_0=16, w_a=8, w_m=2.0, group_width=8, se_ratio=0.25, stem_width=16)
TINY_X = RegNetParams(depth=4, w_0=24, w_a=16, w_m=2.0, group_width=8, stem_width=16)
RES = 32
#: fp32: exported / ONNX outputs vs the eager model
RTOL = 1e-5
#: what a standard-ONNX RegNet may contain (ai.onnx domain only)
STANDARD_OPS = {"Conv", "BatchNormalization", "Relu", "GlobalAveragePool", "Sigmoid", "Mul", "Add", "Cast",
                "Gemm", "MatMul", "Flatten", "Reshape", "ReduceMean", "Unsqueeze", "Squeeze", "Expand",
                "Shape", "Constant", "Identity", "Concat", "Gather"}
EVAL_OPS = ("conv_bn_act_eval", "squeeze_excite", "bottleneck_eval")


def calibrated(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-identity eval BatchNorms (random affine and running statistics of moderate size, so the fold
    is exercised without making a deep random network ill-conditioned)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            c = bn.num_features
            bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=gen) * 0.1)
            bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
            bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return model.eval()


def _zoo(params):
    return lambda: RegNet(params, num_classes=10)


def _torchvision():
    return import_torchvision().models.regnet_y_400mf(num_classes=10)


def _timm():
    return import_timm().create_model("regnety_002", pretrained=False, num_classes=10)


def _features():
    return get_model("regnet_y_400mf", features_only=True)


MODELS = {
    "zoo_regnety_tiny": _zoo(TINY_Y),
    "zoo_regnetx_tiny": _zoo(TINY_X),
    "torchvision_regnet_y_400mf": _torchvision,
    "timm_regnety_002": _timm,
    "features_regnet_y_400mf": _features,
}


class Pair:
    """The eager model, its optimized copy (same calibrated weights, eval mode) and a float64 oracle."""

    def __init__(self, name: str, backend: str = "auto"):
        self.eager = calibrated(MODELS[name]())
        self.fused = rk.optimize(copy.deepcopy(self.eager), backend=backend).eval()
        self.gold = copy.deepcopy(self.eager).double()


@functools.lru_cache(maxsize=None)
def _pair(name: str, backend: str = "auto") -> Pair:
    """Built once per test module (tests that change a model copy it first)."""
    return Pair(name, backend)


def _inputs(n: int, seed: int = 3, res: int = RES) -> torch.Tensor:
    return torch.randn(n, 3, res, res, generator=torch.Generator().manual_seed(seed))


def _outputs(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def assert_matches_eager(got, pair: Pair, x: torch.Tensor, what: str, rtol: float = RTOL) -> float:
    """Every output vs the eager model (<= rtol) and vs the float64 oracle (the handbook's rule)."""
    x = x.cpu()
    with torch.no_grad():
        ref = _outputs(pair.eager(x))
        gold = _outputs(pair.gold(x.double()))
    got = _outputs(got)
    assert len(got) == len(ref)
    worst = 0.0
    for i, (g, r, r64) in enumerate(zip(got, ref, gold)):
        g = torch.as_tensor(g).cpu()
        assert g.shape == r.shape, (what, i, g.shape, r.shape)
        check(f"{what}[{i}]", g, r, r64, torch.float32)
        err = rel_err(g, r)
        assert err <= rtol, (what, i, err)
        worst = max(worst, err)
    return worst


def _n_blocks(model: nn.Module) -> int:
    return sum(isinstance(m, FusedBottleneck) for m in model.modules())


# ------------------------------------------------------------------------------------------------
# torch.export
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_export_keeps_fused_ops_dynamic_batch_and_round_trips(name, tmp_path):
    """regnet_kernels.export.export: one bottleneck_eval node per fused block and one conv_bn_act_eval for
    the stem, no aten convolution left; saved, loaded back and run at batch sizes other than the traced
    one, it equals the eager model."""
    pair = _pair(name)
    fused = pair.fused
    ep = rk_export.export(fused, _inputs(2))
    ops = rk_export.fused_ops_in(ep)
    assert ops == {"conv_bn_act_eval": 1, "bottleneck_eval": _n_blocks(fused)}, ops
    assert not [n for n in ep.graph.nodes if "convolution" in str(n.target)]
    # the backend was resolved once at trace time and is recorded in the graph (auto -> eager on CPU)
    assert {n.args[-1] for n in ep.graph.nodes if str(n.target).startswith("regnet_kernels.")} == {"eager"}

    path = tmp_path / f"{name}.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path)
    assert rk_export.fused_ops_in(loaded) == ops
    for n in (1, 3):
        x = _inputs(n, seed=n)
        with torch.no_grad():
            assert_matches_eager(loaded.module()(x), pair, x, f"{name} loaded, batch {n}")


def test_export_with_autograd_on_keeps_per_op_fusion():
    """Plain torch.export.export with autograd on: fused blocks take their per-op path (the block op is
    inference-only), so the graph holds conv_bn_act_eval and squeeze_excite nodes; same numbers."""
    pair = _pair("zoo_regnety_tiny")
    fused = pair.fused
    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(fused, (_inputs(2),), dynamic_shapes=({0: batch},))
    ops = rk_export.fused_ops_in(ep)
    n = _n_blocks(fused)
    assert ops == {"conv_bn_act_eval": 1 + 3 * n + 2, "squeeze_excite": n}, ops  # a, b, c per block + 2 proj
    x = _inputs(3)
    with torch.no_grad():
        assert_matches_eager(ep.module()(x), pair, x, "per-op path")


def test_exported_triton_program_runs_the_kernels_after_load(tmp_path):
    """optimize(backend="triton"): the graph records "triton"; the reloaded program launches the Triton
    kernels (through the interpreter on CPU) and matches eager."""
    kernel_ready("triton", "bottleneck")
    utils = importlib.import_module("regnet_kernels.kernels.triton.runtime")
    pair = _pair("zoo_regnetx_tiny", backend="triton")
    fused = copy.deepcopy(pair.fused).to(DEVICE)
    ep = rk_export.export(fused, _inputs(2).to(DEVICE))
    assert {n.args[-1] for n in ep.graph.nodes if str(n.target).startswith("regnet_kernels.")} == {"triton"}
    torch.export.save(ep, tmp_path / "triton.pt2")
    loaded = torch.export.load(tmp_path / "triton.pt2").module()
    before = sum(utils.LAUNCHES.values())
    x = _inputs(1).to(DEVICE)
    with torch.no_grad():
        out = loaded(x)
    assert sum(utils.LAUNCHES.values()) > before
    # (the interpreter computes in exact fp32; on a GPU the handbook's fp32 bound applies)
    assert_matches_eager(out, pair, x, "triton program", rtol=RTOL if DEVICE.type == "cpu" else FP32_REL)


def test_export_refuses_training_mode():
    model = rk.optimize(RegNet(TINY_Y, num_classes=10))
    with pytest.raises(ValueError, match="training mode"):
        rk_export.export(model, _inputs(2))
    with pytest.raises(ValueError, match="training mode"):
        rk_export.onnx_export(model, _inputs(2))


def test_export_traces_a_batch_of_one_as_dynamic():
    """An example batch of 1 would be specialised by torch.export: the helper traces it as 2."""
    pair = _pair("zoo_regnetx_tiny")
    ep = rk_export.export(pair.fused, _inputs(1), max_batch=16)
    x = _inputs(4)
    with torch.no_grad():
        assert_matches_eager(ep.module()(x), pair, x, "batch-1 example")
    with pytest.raises((AssertionError, RuntimeError), match="16"):  # the program's guard on max_batch
        ep.module()(_inputs(17))


# ------------------------------------------------------------------------------------------------
# ONNX
# ------------------------------------------------------------------------------------------------
def _need_onnx():
    for mod in ("onnx", "onnxscript"):
        try:
            importlib.import_module(mod)
        except ImportError as e:
            pytest.skip(f"ONNX export needs {mod} (pip install 'regnet_kernels[export]'): {e}")
    return importlib.import_module("onnx")


def _onnxruntime():
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as e:
        pytest.skip(f"onnxruntime not installed (optional, pip install onnxruntime): {e}")


def assert_standard_onnx(proto) -> set:
    onnx = importlib.import_module("onnx")
    onnx.checker.check_model(proto, full_check=True)
    domains = {n.domain for n in proto.graph.node} | {f.domain for f in proto.functions}
    assert domains <= {"", "ai.onnx"}, domains
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert not proto.functions
    types = {n.op_type for n in proto.graph.node}
    assert types <= STANDARD_OPS, types - STANDARD_OPS
    assert "Conv" in types and "Relu" in types
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, RES, RES], dims  # dynamic batch only
    return types


def _ort_outputs(proto, x):
    ort = _onnxruntime()
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in sess.run(None, {sess.get_inputs()[0].name: x.numpy()})]


def test_onnx_translation_table_covers_every_eval_op():
    _need_onnx()
    table = rk_export.onnx_translation_table()
    assert set(table) == {getattr(torch.ops.regnet_kernels, op).default for op in EVAL_OPS}


@pytest.mark.parametrize("name", ["zoo_regnety_tiny", "zoo_regnetx_tiny", "timm_regnety_002",
                                  "features_regnet_y_400mf"])
def test_onnx_export_is_standard_and_matches_eager(name, tmp_path):
    """onnx_export: a file onnx.checker accepts, only ai.onnx nodes (Conv, Relu, GlobalAveragePool, Sigmoid,
    Mul, Add...), dynamic batch; onnxruntime's outputs at batch 3 equal the eager model's."""
    onnx = _need_onnx()
    pair = _pair(name)
    path = tmp_path / "model.onnx"
    rk_export.onnx_export(pair.fused, _inputs(2), path, external_data=False)
    proto = onnx.load(str(path))
    types = assert_standard_onnx(proto)
    if "regnety" in name or "regnet_y" in name:
        assert {"GlobalAveragePool", "Sigmoid", "Mul"} <= types
    x = _inputs(3)
    assert_matches_eager(_ort_outputs(proto, x), pair, x, f"{name} onnxruntime")


def test_plain_torch_onnx_export_with_the_table_per_op_path():
    """torch.onnx.export(dynamo=True) called directly with autograd on (per-op path: conv_bn_act_eval and
    squeeze_excite translations) and the table: standard ONNX, same numbers."""
    _need_onnx()
    pair = _pair("zoo_regnety_tiny")
    prog = torch.onnx.export(pair.fused, (_inputs(2),), dynamo=True, verbose=False,
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                             custom_translation_table=rk_export.onnx_translation_table())
    types = assert_standard_onnx(prog.model_proto)
    assert {"GlobalAveragePool", "Sigmoid", "Mul", "Add"} <= types
    x = _inputs(2, seed=11)
    assert_matches_eager(_ort_outputs(prog.model_proto, x), pair, x, "per-op onnxruntime")


def test_onnx_half_precision_keeps_batchnorm_and_se_in_fp32():
    """A float16 model: Casts around the BatchNorm / SE arithmetic, which runs in fp32 as in the kernels;
    onnxruntime's float16 outputs meet the handbook's fp16 rule against the float64 oracle."""
    onnx = _need_onnx()
    pair = _pair("zoo_regnety_tiny")
    fused = copy.deepcopy(pair.fused).half()
    proto = rk_export.onnx_export(fused, _inputs(2).half(), optimize=False).model_proto
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    nodes = list(proto.graph.node)
    to_float = [n for n in nodes if n.op_type == "Cast"
                and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)]
    assert len(to_float) >= sum(n.op_type == "BatchNormalization" for n in nodes) > 0
    x = _inputs(3)
    (got,) = _ort_outputs(proto, x.half())
    assert got.dtype == torch.float16
    with torch.no_grad():
        eager16 = copy.deepcopy(pair.eager).half()(x.half())
        gold = pair.gold(x.double())
    check("onnxruntime fp16", got, eager16, gold, torch.float16)


# ------------------------------------------------------------------------------------------------
# AOTInductor (GPU)
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_aoti_package_calls_the_fused_ops_on_gpu(tmp_path):
    """aoti_package on CUDA: the package calls the fused ops as extern kernels (named in its wrapper
    metadata) and its outputs at two batch sizes match the optimized model's and the eager model's."""
    pair = _pair("zoo_regnety_tiny")
    eager, fused = copy.deepcopy(pair.eager).cuda(), copy.deepcopy(pair.fused).cuda()
    path = rk_export.aoti_package(fused, _inputs(2).cuda(), tmp_path / "tiny.pt2")
    with zipfile.ZipFile(path) as z:
        meta = " ".join(z.read(n).decode(errors="ignore") for n in z.namelist() if n.endswith(".json"))
    assert set(re.findall(r"regnet_kernels::(\w+)", meta)) == {"conv_bn_act_eval", "bottleneck_eval"}
    runner = torch._inductor.aoti_load_package(path)
    for n in (1, 5):
        x = _inputs(n, seed=n).cuda()
        with torch.no_grad():
            got, same_kernels, ref = runner(x), fused(x), eager(x)
        assert rel_err(got, same_kernels) <= 1e-5, n
        # eager CUDA convolutions may run in TF32; the fused kernels' fp32 contract is the handbook's bound
        assert rel_err(got, ref) <= 1e-3, n


# ------------------------------------------------------------------------------------------------
# examples/serve.py
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serve():
    yield from load_example("serve.py", "regnet_kernels_examples_serve")


def test_serve_example_quick(serve, tmp_path, capsys):
    """The whole example on the device present (CPU here): a torchvision-layout weights file loads, every
    path agrees with eager, the exported files exist and reload, latency is reported per batch."""
    weights = tmp_path / "weights.pth"
    torch.save(calibrated(get_model("regnetx_200mf", num_classes=10)).state_dict(), weights)
    out = tmp_path / "out"
    res = serve.run(["--quick", "--model", "regnetx_200mf", "--num-classes", "10", "--weights", str(weights),
                     "--resolution", str(RES), "--batches", "1,2", "--iters", "1", "--out", str(out)])
    assert res["ok"], res["errors"]
    assert res["fused"]["FusedBottleneck"] > 0
    expected = {"eager", "optimized", "exported"}
    try:
        importlib.import_module("onnxscript")
        importlib.import_module("onnxruntime")
        expected.add("onnxruntime")
    except ImportError:
        pass
    if HAS_CUDA:
        expected.add("optimized+cuda_graph")
    assert expected <= set(res["latency_ms"]), res["latency_ms"]
    assert set(res["latency_ms"]["optimized"]) == {"1", "2"}
    assert all(v > 0 for row in res["latency_ms"].values() for v in row.values())
    assert max(res["errors"].values()) <= 1e-4
    assert Path(res["files"]["pt2"]).is_file() and json.loads((out / "serve.json").read_text())["ok"]
    if "onnxruntime" in expected:
        assert Path(res["files"]["onnx"]).is_file()
    printed = capsys.readouterr().out
    assert "latency" in printed and "relative error vs eager" in printed
    # a weights file that does not fit the model is refused, not silently ignored
    with pytest.raises(RuntimeError):
        serve.load_model("regnety_200mf", str(weights), num_classes=10)
