"""The activation codes are defined once in Python (kernels/activation.py) and once in C++
(csrc/kernels/config.cuh, named in common.cuh): they must agree, and every code the kernels know must be
reachable from the matcher's table."""
import importlib
import re
from pathlib import Path

import pytest
import torch

from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.cuda import ext as _cuda_ext
from regnet_kernels.matching import KERNEL_ACT, Activation

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _header_codes() -> dict:
    return {k[len("ACT_"):]: v for k, v in _cuda_ext.read_config().items() if k.startswith("ACT_")}


def test_python_codes_match_config_header():
    assert _header_codes() == {a.name: a.value for a in Act}


def test_cpp_enum_names_every_code():
    src = (CSRC / "kernels" / "common.cuh").read_text()
    body = re.search(r"enum\s+Act\s*:\s*int\s*\{([^}]*)\}", src).group(1)
    pairs = dict(re.findall(r"ACT_(\w+)\s*=\s*REGNET_ACT_(\w+)", body))
    assert pairs == {a.name: a.name for a in Act}


def test_built_extension_reports_the_same_codes():
    try:
        ext = importlib.import_module("regnet_kernels._C")
    except ImportError as e:
        pytest.skip(f"regnet_kernels._C not built: {e}")
    assert {k[len("ACT_"):]: v for k, v in ext.config().items() if k.startswith("ACT_")} == \
        {a.name: a.value for a in Act}


def test_matcher_table_covers_every_kernel_code():
    assert sorted(KERNEL_ACT.values()) == sorted(Act)
    for act, code in KERNEL_ACT.items():
        assert act.name == code.name and act.kernel_act is code
    assert Activation.SIGMOID.kernel_act is None


def test_triton_apply_act_is_torch_relu_bit_for_bit():
    from regnet_kernels.kernels.triton import bn as _bn

    y = torch.tensor([[-1.0, -0.0, 0.0, 2.5, float("nan"), float("inf"), -float("inf"), 1e-30]]).reshape(1, 8, 1, 1)
    ones, zeros = torch.ones(8), torch.zeros(8)
    z = (y - 0.0) * 1.0 + 0.0  # the BatchNorm part, as the kernel computes it (-0.0 becomes +0.0)
    for act, ref in ((Act.RELU, torch.relu(z)), (Act.NONE, z)):
        out = _bn.bn_act(y, (zeros, ones, zeros), act)
        assert torch.equal(out.view(torch.int32), ref.view(torch.int32)), (act, out.flatten(), ref.flatten())


def test_launchers_refuse_unknown_activation_codes():
    try:
        ext = importlib.import_module("regnet_kernels._C")
    except ImportError as e:
        pytest.skip(f"regnet_kernels._C not built: {e}")
    with pytest.raises(ValueError, match=r"bn_act: activation code 7"):
        ext.bn_act(0, 1, 2, 3, 4, 5, 8, 8, 1, 7, 0)
    with pytest.raises(ValueError, match=r"se_outer: activation code -1"):
        ext.se_outer(1, 2, 3, 4, 4, 4, -1, 0)
