"""regnet_kernels: fused Triton/CUDA kernels for RegNet CNNs.

Public API: :func:`optimize` / :func:`restore` (rewrite a live model onto the fused ops and back),
the model zoo :mod:`regnet_kernels.models`, the fused ops :mod:`regnet_kernels.ops`, the fused modules
:mod:`regnet_kernels.nn`, and the backend registry :mod:`regnet_kernels.backends`.
"""
from regnet_kernels._version import __version__
from regnet_kernels import backends, nn, ops
from regnet_kernels.optimize import FusionReport, fusion_report, optimize, restore

__all__ = ["__version__", "backends", "models", "nn", "ops", "optimize", "restore", "fusion_report",
           "FusionReport"]


def __getattr__(name):
    # the zoo is imported on first use: `import regnet_kernels` stays light
    if name == "models":
        import importlib

        return importlib.import_module("regnet_kernels.models")
    raise AttributeError(f"module 'regnet_kernels' has no attribute {name!r}")
