"""Small helpers several test modules share (not a test module: pytest collects nothing here)."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import torch
from torch import nn

from conftest import kernel_ready
from regnet_kernels.models import BlockSpec, ResBottleneckBlock

#: examples/ (scripts, not a package)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def opcheck_module(backend: str, op: str) -> ModuleType:
    """``regnet_kernels.ops.<op>`` for ``torch.library.opcheck`` on ``backend`` (skips when that backend
    cannot run ``op`` here), with the global seed set to 0."""
    if backend != "eager":
        kernel_ready(backend, op)
    mod = importlib.import_module(f"regnet_kernels.ops.{op}")
    torch.manual_seed(0)
    return mod


@contextlib.contextmanager
def assert_kernels_ran(*kernels: str) -> Iterator[None]:
    """Asserts that every Triton kernel named (``"conv_fwd_kernel"`` ...) launched inside the block."""
    from regnet_kernels.kernels.triton.runtime import LAUNCHES

    before = dict(LAUNCHES)
    yield
    ran = {k: LAUNCHES[k] - before.get(k, 0) for k in LAUNCHES}
    for kernel in kernels:
        assert ran.get(kernel, 0) >= 1, f"{kernel} did not run: {ran}"


def load_example(filename: str, name: str) -> Iterator[ModuleType]:
    """examples/``filename`` imported as module ``name`` for a fixture's lifetime (``yield from`` it)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / filename)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve their module through sys.modules
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(name, None)


def random_bn_block(spec: BlockSpec, seed: int = 0) -> ResBottleneckBlock:
    """A seeded bottleneck block whose BatchNorms have non-trivial affine parameters."""
    torch.manual_seed(seed)
    block = ResBottleneckBlock(spec, nn.BatchNorm2d, nn.ReLU)
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    return block
