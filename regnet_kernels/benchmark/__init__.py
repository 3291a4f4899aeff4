"""Benchmark and numerics report behind ``python -m regnet_kernels bench`` (and the ``bench/`` suites).

Modules (none is imported here: ``import regnet_kernels`` stays light):

- :mod:`~regnet_kernels.benchmark.roofline`: traffic / launch / roofline *model* per layer (eager, fused,
  block-fused), the device table (H100 SXM, H100 PCIe, H200). Pure arithmetic.
- :mod:`~regnet_kernels.benchmark.providers`: the implementations compared (eager NCHW / NHWC,
  torch.compile, regnet_kernels.optimize with each backend), model workloads and conv+BN+ReLU op cases.
- :mod:`~regnet_kernels.benchmark.timing`: CUDA-event timing with warm-up, rotating inputs, L2 flush,
  CUDA graphs, kernel-launch counting.
- :mod:`~regnet_kernels.benchmark.numerics`: parity of every provider against eager and float64.
- :mod:`~regnet_kernels.benchmark.memory`: activation bytes saved for backward.
- :mod:`~regnet_kernels.benchmark.shapes`: real RegNet stage conv shapes.
- :mod:`~regnet_kernels.benchmark.report` / :mod:`~regnet_kernels.benchmark.report_text` /
  :mod:`~regnet_kernels.benchmark.plots`: ``bench``, its printed report, JSON and PNGs.
- :mod:`~regnet_kernels.benchmark.sweep` (``sweep``: time every zoo variant),
  :mod:`~regnet_kernels.benchmark.pareto` (``pick``, Pareto fronts) and
  :mod:`~regnet_kernels.benchmark.sweep_records` (what both read and write).
- :mod:`~regnet_kernels.benchmark.common`: option validation, device/git stamps, atomic JSON, tables.
"""
