"""pytest-benchmark suites for regnet_kernels: per op (conv + BN + ReLU) and per model.

Providers and shapes come from :mod:`regnet_kernels.benchmark` (the same code as
``python -m regnet_kernels bench``). Without a GPU, Triton runs through its interpreter: we set
``TRITON_INTERPRET=1`` here, before any kernel module is imported, as tests/conftest.py does. Cases
that need a GPU carry the ``gpu`` marker and skip with a reason; tiny CPU cases keep the suite
exercised (``pytest bench/ --benchmark-disable`` runs on any machine). Shared helpers live in
``_bench_utils.py`` (a unique module name: ``conftest`` is also tests/'s).
"""
from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    group = parser.getgroup("regnet_kernels bench")
    group.addoption("--bench-models", default=None,
                    help="comma-separated zoo models (default: regnet_y_400mf,regnet_y_1_6gf,regnet_x_3_2gf)")
    group.addoption("--bench-batch", type=int, default=None,
                    help="batch for GPU cases (default: op 128; model 256 infer / 128 train)")
    group.addoption("--bench-dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    group.addoption("--bench-compile-mode", default="default",
                    help="torch.compile mode for the compile provider (default: torch's default; "
                         "max-autotune compiles for minutes per shape)")


def pytest_collection_modifyitems(config, items):
    from regnet_kernels.testing import skip_gpu_tests  # imported here: after TRITON_INTERPRET is set

    skip_gpu_tests(items)
