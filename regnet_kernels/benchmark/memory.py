"""Activation memory saved for backward, measured with ``torch.autograd.graph.saved_tensors_hooks``."""
from __future__ import annotations

from typing import Any, Callable, Optional, Set, Tuple

import torch
from torch import nn

__all__ = ["saved_activation_bytes", "SavedTensorCounter"]


def _storage_key(t: torch.Tensor) -> Tuple[str, int]:
    """Identity of the memory behind ``t`` (views and in-place results share it)."""
    st = t.untyped_storage()
    return (str(t.device), st.data_ptr())


def _storage_nbytes(t: torch.Tensor) -> int:
    return int(t.untyped_storage().nbytes())


class SavedTensorCounter:
    """Context manager: bytes of distinct non-parameter storages that autograd saves for backward.

    A storage is counted once however many saved tensors (views, the same tensor saved by two ops)
    point into it. Tensors whose storage belongs to a parameter or buffer of ``model`` are skipped,
    and so are autocast's casts of parameters (a ``_to_copy`` whose input is a model parameter):
    they are weights, not activations.

    Example:
        >>> with SavedTensorCounter(model) as counter:
        ...     loss = model(x).sum()
        >>> counter.bytes
    """

    def __init__(self, model: nn.Module):
        self._param_keys: Set[Tuple[str, int]] = set()
        self._params: Set[int] = set()
        for t in list(model.parameters()) + list(model.buffers()):
            if t.device.type != "meta":
                self._param_keys.add(_storage_key(t))
            self._params.add(id(t))
        self._seen: Set[Tuple[str, int]] = set()
        self.bytes = 0
        self.tensors = 0
        self._hooks: Optional[Any] = None

    def _is_param_cast(self, t: torch.Tensor) -> bool:
        fn = t.grad_fn
        if fn is None or type(fn).__name__ != "ToCopyBackward0":
            return False
        for nxt, _ in fn.next_functions:
            var = getattr(nxt, "variable", None)  # AccumulateGrad of a leaf
            if var is not None and id(var) in self._params:
                return True
        return False

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.tensors += 1
        if id(t) in self._params or t.device.type == "meta":
            return t
        key = _storage_key(t)
        if key in self._param_keys or key in self._seen or self._is_param_cast(t):
            return t
        self._seen.add(key)
        self.bytes += _storage_nbytes(t)
        return t

    def __enter__(self) -> "SavedTensorCounter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor,
                           forward: Optional[Callable[[nn.Module, torch.Tensor], Any]] = None) -> int:
    """Bytes of activations autograd keeps for backward during one forward of ``model`` on ``x``.

    Counts each distinct storage once (views and tensors saved by several ops share one storage) and
    only storages that are not parameters or buffers of ``model`` (nor autocast copies of them). The
    input ``x`` counts when an op saves it. Run it under the autocast context and in the mode you want
    measured (``model.train()`` for training). Running statistics are updated by the forward, as in
    any training step.

    Args:
        model: any module; its parameters must require grad for anything to be saved.
        x: input batch ``(N, C, H, W)``.
        forward: ``forward(model, x)`` to run instead of ``model(x)`` (e.g. to add a loss).

    Returns:
        Bytes (int). The graph is freed before returning.

    Equivalent PyTorch: summing ``untyped_storage().nbytes()`` over the distinct storages packed by
    ``torch.autograd.graph.saved_tensors_hooks`` during the forward.
    """
    with torch.enable_grad():
        with SavedTensorCounter(model) as counter:
            out = forward(model, x) if forward is not None else model(x)
        del out
    return counter.bytes
