"""Shared test fixtures.

Triton kernels run on CPU tensors through the interpreter: ``scripts/test.sh`` sets
``TRITON_INTERPRET=1`` on machines without a GPU, and we set it here too (before any kernel module
is imported) so a bare ``pytest`` behaves the same.
"""
import os
import sys
import types

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def import_torchvision():
    """torchvision as a test oracle, or skip with the reason.

    torchvision's PyPI wheel is a CUDA build; next to a CPU torch it imports only when its meta
    registrations module is stubbed out first.
    """
    if "torchvision" not in sys.modules and not HAS_CUDA:
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    try:
        import torchvision  # noqa: F401
        import torchvision.models  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"torchvision not importable: {type(e).__name__}: {e}")
    return torchvision


def import_timm():
    """timm as a test oracle (it needs torchvision), or skip with the reason."""
    import_torchvision()
    try:
        import timm  # noqa: F401
    except Exception as e:  # pragma: no cover
        pytest.skip(f"timm not importable: {type(e).__name__}: {e}")
    return timm


@pytest.fixture
def torchvision():
    return import_torchvision()


@pytest.fixture
def timm():
    return import_timm()


def pytest_collection_modifyitems(config, items):
    from regnet_kernels.testing import skip_gpu_tests  # imported here: after TRITON_INTERPRET is set

    skip_gpu_tests(items)


#: where the kernels under test run: CUDA when present, else CPU (Triton through its interpreter)
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")

#: kernel backends the numerics suites run; the CUDA-extension backend only on a GPU
KERNEL_BACKENDS = ["triton", pytest.param("cuda", marks=pytest.mark.gpu)]


def kernel_ready(backend: str, op: str) -> None:
    """Skip (with the backend's own reason) when ``backend`` cannot run ``op`` on :data:`DEVICE`."""
    from regnet_kernels import backends

    reason = backends.why_not(backend, [torch.empty(1, device=DEVICE)], op)
    if reason is not None:
        pytest.skip(f"{backend} backend unavailable here: {reason}")
