"""The kernel layer: everything that launches work on a GPU, apart from the ops that compose it.

``geometry`` holds the shape facts every backend shares (output sizes, memory formats); ``triton/`` holds
the ``@triton.jit`` kernels, their launchers and ``config.py`` (every tile, warp and stage choice);
``cuda/`` loads the hand-written CUDA kernels of ``csrc/`` (the built extension ``regnet_kernels._C``,
else a CuPy/NVRTC JIT of the same sources). See ``docs/architecture.md``.
"""
