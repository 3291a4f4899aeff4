"""Benchmark and numerics report behind ``python -m regnet_kernels bench``."""
