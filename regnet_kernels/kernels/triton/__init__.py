"""Triton kernels shared by the fused ops (imported lazily, only when a Triton op runs)."""
