"""The primitive interface every kernel backend implements, and :func:`get`, a backend's kernel set.

The fused ops (``regnet_kernels/ops/<op>/fused.py``) are written once against :class:`Kernels`; each
backend (``kernels/triton/api.py``, ``kernels/cuda/api.py``) is a thin adapter over its own launchers.

Conventions shared by every primitive:

- Activations are fp16 / bf16 / fp32 4-D tensors in any memory format the functional accepts; outputs
  take the input's memory format (:func:`regnet_kernels.kernels.geometry.memory_format_of`).
- Per-channel BatchNorm vectors (``mean``, ``invstd``, ``scale``, ``bias``, the sums) are fp32 ``(C,)``;
  ``BN(y) = (y - mean) * scale + bias`` with ``scale = gamma * invstd`` and ``bias = beta``.
- Inputs are trusted: the functional boundary (``ops/<op>/__init__.py``) validated them once. A backend
  checks only what it needs to launch at all (the cuda backend: tensors on a CUDA device).
- Nothing synchronises with the host (CUDA-graph capturable); work goes to torch's current stream.
"""
from __future__ import annotations

import abc
import importlib
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import torch

from regnet_kernels.kernels.activation import Act

#: the kernel backends (each a module ``regnet_kernels.kernels.<name>.api`` exposing ``KERNELS``)
BACKENDS = ("triton", "cuda")

Tensor = torch.Tensor
#: ``(mean, invstd, var_unbiased, scale, bias)``, each fp32 ``(C,)``
Finalized = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


class EvalBN(NamedTuple):
    """An eval-mode BatchNorm for the conv epilogue: the running statistics, affine and eps as the module
    holds them. A backend folds them itself (the Triton kernel in fp32 in its epilogue; the cuda backend
    through :func:`eval_affine`), so eval forward launches nothing but the conv."""
    running_mean: Tensor
    running_var: Tensor
    gamma: Optional[Tensor]
    beta: Optional[Tensor]
    eps: float


def f32(t: Optional[Tensor]) -> Optional[Tensor]:
    """``t`` as a contiguous fp32 tensor (itself when it already is one), or None."""
    return None if t is None else t.detach().to(torch.float32).contiguous()


def bn_scale(gamma: Optional[Tensor], invstd: Tensor) -> Tensor:
    """``gamma * invstd`` (fp32, contiguous), or ``invstd`` itself without an affine weight."""
    return invstd if gamma is None else (f32(gamma) * invstd).contiguous()


def bn_bias(beta: Optional[Tensor], like: Tensor) -> Tensor:
    """``beta`` as fp32 (zeros like ``like`` without an affine bias)."""
    return torch.zeros_like(like) if beta is None else f32(beta)


def eval_affine(bn: EvalBN) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(invstd, mean, scale, bias)`` fp32 of an eval-mode BatchNorm: ``BN(y) = (y - mean) * scale + bias``."""
    invstd = torch.rsqrt(f32(bn.running_var) + bn.eps)
    return invstd, f32(bn.running_mean), bn_scale(bn.gamma, invstd), bn_bias(bn.beta, invstd)


class Kernels(abc.ABC):
    """One backend's primitives. Methods return fresh tensors (op outputs may not alias each other)."""

    #: ``"triton"`` or ``"cuda"``
    name: str = ""

    # -- operands ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def as_operand(self, t: Tensor, like: Tensor) -> Tensor:
        """``t`` (of ``like``'s shape) as this backend's elementwise kernels read it, so a composition that
        feeds one tensor to several primitives prepares it once: Triton reads any collapsible strides and
        dtype (``t`` itself); cuda needs ``like``'s dtype, dense in ``like``'s memory format."""

    # -- convolution ------------------------------------------------------------------------------
    @abc.abstractmethod
    def conv_forward(self, x: Tensor, weight: Tensor, stride: int, padding: int, groups: int, *,
                     stats: bool = False, eval_bn: Optional[EvalBN] = None, act: Act = Act.NONE,
                     **extra) -> Tuple[Tensor, Any]:
        """Implicit-GEMM ``conv2d(x, weight)`` (no bias, dilation 1). Returns ``(y, partials)``.

        ``stats``: the epilogue also writes per-tile BatchNorm partials of ``y`` (``partials``, an opaque
        object only this backend's :meth:`bn_finalize` reads; None otherwise). ``eval_bn``: the epilogue
        applies that eval BatchNorm in fp32, then the activation ``act``. ``extra``: options only some
        backends have (Triton: ``pre_affine``, ``pre_act``, ``gate``, ``residual`` for the whole-block
        op); a backend without them raises ``TypeError``.
        """

    @abc.abstractmethod
    def conv_dgrad(self, dy: Tensor, weight: Tensor, x_shape: Sequence[int], stride: int, padding: int,
                   groups: int, *, like: Tensor, **extra) -> Tensor:
        """The conv's input gradient, ``x_shape``, in ``like``'s dtype and memory format (Triton extra:
        ``add``, a tensor added in the epilogue)."""

    @abc.abstractmethod
    def conv_wgrad(self, x: Tensor, dy: Tensor, weight_shape: Sequence[int], stride: int, padding: int,
                   groups: int, *, want_f32: bool = True, out_dtype: Optional[torch.dtype] = None,
                   scale: Optional[Tensor] = None, **extra) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """The conv's weight gradient ``(fp32 | None, out | None)``, both of ``weight_shape``: the fp32 sum
        when ``want_f32``, and when ``out_dtype`` is given the same in ``out_dtype``, multiplied per output
        channel by ``scale`` (fp32 ``(C_out,)``) when given. Deterministic (fixed-order split-K). Triton
        extras: ``pre_affine``, ``pre_act``, ``gate`` (the forward's input prologue)."""

    # -- BatchNorm --------------------------------------------------------------------------------
    @abc.abstractmethod
    def bn_finalize(self, partials: Any, count: int, gamma: Optional[Tensor], beta: Optional[Tensor],
                    eps: float) -> Finalized:
        """Batch statistics from :meth:`conv_forward`'s ``partials`` over ``count`` values per channel:
        ``(mean, invstd, var_unbiased, scale, bias)`` (biased variance in ``invstd``)."""

    @abc.abstractmethod
    def bn_act(self, y: Tensor, mean: Tensor, scale: Tensor, bias: Tensor, act: Act) -> Tensor:
        """``act((y - mean) * scale + bias)`` in ``y``'s dtype and memory format."""

    @abc.abstractmethod
    def bn_bwd_reduce(self, dout: Tensor, src: Tensor, *, train: bool, act: Act,
                      stats: Optional[Tuple[Tensor, Tensor, Tensor, Tensor]] = None, write_dz: bool = False,
                      **extra) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """``(sum_dz, sum_dz_xhat | None, dz | None)`` over N, H, W (fp32, distinct tensors).

        ``dz`` is ``dout`` through the activation gradient (``act``). Train: ``src`` is the pre-BN conv output ``y``,
        ``stats = (mean, invstd, scale, bias)``, the mask is ``BN(y) > 0`` and ``sum_dz_xhat`` is
        ``sum(dz * (y - mean) * invstd)``. Eval: ``src`` is the op output (mask ``src > 0``), no
        ``sum_dz_xhat``, and ``dz`` written (in ``src``'s dtype and layout) when ``write_dz``. Triton
        extras: ``gate`` / ``dpooled`` (the squeeze-excitation backward folded into the incoming gradient).
        """

    @abc.abstractmethod
    def bn_bwd_dy(self, dout: Tensor, y: Tensor, mean: Tensor, invstd: Tensor, scale: Tensor, bias: Tensor,
                  sum_dz: Tensor, sum_dzx: Tensor, act: Act, count: int, **extra) -> Tensor:
        """The conv-output gradient of training BatchNorm + act:
        ``scale * (dz - sum_dz / count - xhat * sum_dzx / count)`` in ``y``'s dtype and layout."""

    @abc.abstractmethod
    def bn_running_update(self, running_mean: Tensor, running_var: Tensor, num_batches_tracked: Optional[Tensor],
                          mean: Tensor, var_unb: Tensor, momentum: float, cumulative: bool) -> None:
        """In place: ``running = (1 - f) * running + f * batch``, ``f = momentum`` or
        ``1 / num_batches_tracked`` (read on the device)."""

    # -- squeeze-excitation -----------------------------------------------------------------------
    @abc.abstractmethod
    def se_pool(self, x: Tensor, **extra) -> Tensor:
        """``(N, C)`` fp32 spatial mean of ``x`` (Triton extras: ``pre_affine``, ``pre_act``: the mean of
        ``relu(BN(x))``)."""

    @abc.abstractmethod
    def se_fc(self, pooled: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
              b2: Optional[Tensor]) -> Tensor:
        """``gate = sigmoid(fc2(relu(fc1(pooled))))``, ``(N, C)`` fp32 (weights ``(S, C[, 1, 1])``,
        ``(C, S[, 1, 1])``)."""

    @abc.abstractmethod
    def se_scale(self, x: Tensor, gate: Tensor) -> Tensor:
        """``x * gate[:, :, None, None]`` in ``x``'s dtype and memory format."""

    @abc.abstractmethod
    def se_dgate(self, dout: Tensor, x: Tensor, **extra) -> Tensor:
        """``(N, C)`` fp32 ``sum_hw dout * x``: the gradient reaching the gate (Triton extras as
        :meth:`se_pool`)."""

    @abc.abstractmethod
    def se_fc_backward(self, pooled: Tensor, gate: Tensor, dgate: Tensor, w1: Tensor, b1: Optional[Tensor],
                       w2: Tensor, need: Sequence[bool]) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor],
                                                                 Optional[Tensor], Optional[Tensor]]:
        """``(dpooled, dw1, db1, dw2, db2)`` fp32 (weights flat: ``(S, C)``, ``(C, S)``); ``need`` says which
        of ``(dw1, db1, dw2, db2)`` are wanted (the others may be None)."""

    @abc.abstractmethod
    def se_dx(self, dout: Tensor, gate: Tensor, dpooled: Tensor, like: Tensor) -> Tensor:
        """The input gradient ``dout * gate + dpooled / HW`` in ``like``'s memory format."""


_KERNELS: Dict[str, Kernels] = {}


def get(name: str) -> Kernels:
    """The kernel set of backend ``name`` (``"triton"`` or ``"cuda"``), imported on first use."""
    if name not in _KERNELS:
        if name not in BACKENDS:
            raise ValueError(f"no kernel backend {name!r}; expected one of {', '.join(BACKENDS)}")
        _KERNELS[name] = importlib.import_module(f"regnet_kernels.kernels.{name}.api").KERNELS
    return _KERNELS[name]
