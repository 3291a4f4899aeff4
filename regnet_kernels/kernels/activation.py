"""Activation codes of the kernel layer: the ``ACT`` / ``PRE_ACT`` constexprs of the Triton kernels and the
``act`` argument of the CUDA kernels and launchers.

Defined once here and once in C++ (``REGNET_ACT_*`` in ``csrc/kernels/config.cuh``, named by the ``Act``
enum of ``csrc/kernels/common.cuh``; the built extension reports its codes through ``_C.config()``);
``tests/test_activation.py`` checks that the two agree. :class:`regnet_kernels.matching.Activation` (what a
model's activation module is) maps to these codes through its one table, ``matching.KERNEL_ACT``.

Adding an activation (SiLU, say): a code here and in ``config.cuh`` / ``common.cuh``, one branch in each
apply helper (``apply_act`` and ``act_grad`` in ``kernels/triton/common.py`` and ``csrc/kernels/common.cuh``),
one matcher entry (the ``Activation`` member / ``activation_of`` / ``KERNEL_ACT`` in ``matching.py``) and the
eager form the reference applies (``_EAGER_ACT`` in ``ops/conv_bn_act/reference.py``). The conv_bn_act ops
carry the code as their ``int act`` argument.
"""
from __future__ import annotations

import enum

__all__ = ["Act"]


class Act(enum.IntEnum):
    """What the kernels apply after a BatchNorm: ``NONE`` (identity) or ``RELU`` (``torch.relu``, NaN kept)."""

    NONE = 0
    RELU = 1

