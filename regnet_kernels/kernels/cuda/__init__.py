"""The hand-written CUDA kernels (``csrc/``): ``ext`` loads them (the built extension, a CuPy/NVRTC JIT or
the CPU emulator the tests use) and reads their launch constants from ``csrc/kernels/config.cuh``."""
