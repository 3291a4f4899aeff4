"""What the CUDA-backend test modules share: setup.py as a module, the compiled extension (or a skip),
and the written-everywhere / determinism check run on the emulation and on a GPU. Not a test module."""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


def load_setup():
    """setup.py as a module (its setup() call is guarded by ``__name__ == "__main__"``)."""
    spec = importlib.util.spec_from_file_location("regnet_kernels_setup", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SETUP = load_setup()


def extension():
    """``regnet_kernels._C``, or skip with the reason it is absent (failing where it should exist)."""
    try:
        return importlib.import_module("regnet_kernels._C")
    except ImportError as e:
        if os.environ.get("REGNET_KERNELS_NO_CUDA", "") not in ("", "0"):
            pytest.skip("extension not built: REGNET_KERNELS_NO_CUDA is set")
        if SETUP.find_nvcc() is None:
            pytest.skip(f"extension not built: nvcc is absent on this machine ({e})")
        pytest.fail(f"nvcc is present ({SETUP.find_nvcc()}) but regnet_kernels._C does not import: {e}. "
                    f"Rebuild: python setup.py build_ext --inplace")


def check_fully_written_and_deterministic(device: str) -> None:
    """torch.empty filled with NaN (deterministic mode): any output or workspace element a kernel fails to
    write shows up as NaN; two runs agree bitwise (no atomics, fixed reduction orders)."""
    from regnet_kernels.kernels.activation import Act
    from regnet_kernels.ops.dispatch import bind
    cu = bind("regnet_kernels.ops.conv_bn_act", "cuda")
    se = bind("regnet_kernels.ops.squeeze_excite", "cuda")

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        gen = torch.Generator().manual_seed(0)

        def rnd(*shape, scale=1.0):
            return (torch.randn(*shape, generator=gen) * scale).to(device)

        x = rnd(3, 48, 13, 11).half().contiguous(memory_format=torch.channels_last)
        w = rnd(72, 16, 3, 3, scale=0.2).half()
        g, b = rnd(72).abs() + 0.5, rnd(72)
        rm, rv = rnd(72), rnd(72).abs() + 0.5
        p = [rnd(12, 48), rnd(12), rnd(48, 12), rnd(48)]
        go = rnd(3, 72, 7, 6).half()
        runs = []
        for _ in range(2):
            out, y, mean, invstd, var = cu.conv_bn_act_train(x, w, g, b, 2, 1, 3, 1e-5, Act.RELU)
            res = [out, y, mean, invstd, var]
            res += cu.conv_bn_act_train_backward(go, x, w, y, mean, invstd, g, b, 2, 1, 3, Act.RELU, [True] * 4)
            e = cu.conv_bn_act_eval(x, w, g, b, rm, rv, 2, 1, 3, 1e-5, Act.RELU)
            res += [e] + list(cu.conv_bn_act_eval_backward(go, x, w, e, g, b, rm, rv, 2, 1, 3, 1e-5, Act.RELU,
                                                           [True] * 4))
            so, pooled, gate = se.squeeze_excite(x, *p)
            res += [so, pooled, gate] + list(se.squeeze_excite_backward(x, x, *p, pooled, gate, [True] * 5))
            runs.append(res)
        for i, (a, c) in enumerate(zip(*runs)):
            assert torch.isfinite(a.float()).all(), f"output {i} has unwritten (NaN) elements"
            assert torch.equal(a, c), f"output {i} differs between two runs"
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill
