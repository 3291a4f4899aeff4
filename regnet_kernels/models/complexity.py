"""Parameter, MAC and activation counts of a CNN, measured on the meta device (no memory, no data).

The counts follow the conventions the RegNet literature publishes:

* ``macs``: multiply-accumulates of every conv and linear layer, bias adds excluded. This is what
  torchvision's "GFLOPS" (``Weights.meta["_ops"]``) and the RegNet paper's "flops" count.
* ``acts``: pycls's activation count, the number of output elements of every conv (shortcut and SE convs
  included) and linear layer, per image. Norms, activations and pools add nothing.
* ``pycls_flops``: pycls's exact ``flops`` figure, which is ``macs`` plus one add per output element of
  every layer with a bias (in RegNets: the SE convs and the classifier).
* ``params``: parameters (shared ones counted once); buffers are not parameters.
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

__all__ = ["complexity"]

Resolution = Union[int, tuple[int, int]]

# Any batch > 1 works (per-image counts are divided back out); 2 keeps training-mode norms that see a
# single value per channel (e.g. after global pooling) from refusing to run.
_BATCH = 2


def _hw(resolution: Resolution) -> tuple[int, int]:
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        hw = (resolution, resolution)
    elif isinstance(resolution, (tuple, list)) and len(resolution) == 2:
        hw = (resolution[0], resolution[1])
    else:
        raise ValueError(f"resolution must be an int or an (H, W) pair, got {resolution!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in hw):
        raise ValueError(f"resolution must be positive integers, got {resolution!r}")
    return hw


def complexity(
    model: nn.Module | str,
    resolution: Resolution = 224,
    *,
    in_channels: int | None = None,
) -> dict[str, int]:
    """Counts parameters, MACs and activations of one forward pass on one image.

    The forward runs on the ``meta`` device: parameters and buffers are swapped for storage-less meta
    tensors through :func:`torch.func.functional_call`, so even regnet_y_128gf takes well under a second
    and no memory, and the model itself (its weights, BN statistics and mode) is left untouched. Forward
    hooks on every conv (``nn.Conv{1,2,3}d``, ``nn.ConvTranspose*``) and ``nn.Linear`` count what actually
    ran, so any model whose forward works on meta tensors is supported, not only this package's.

    Args:
        model: an ``nn.Module`` taking ``(N, C, H, W)`` images, on any device (meta included), or the
            name of a model from :func:`regnet_kernels.models.list_models` (built on the meta device).
        resolution: input size, ``S`` for ``S x S`` or ``(H, W)``.
        in_channels: input channels ``C``; default: ``in_channels`` of the first conv, else 3.

    Returns:
        ``{"params", "macs", "acts", "pycls_flops"}`` as Python ints (per image; see the module docstring
        for what each counts). E.g. regnet_y_400mf at 224: 4,344,144 params, 401,842,848 MACs,
        3,892,496 acts, 401,849,056 pycls flops.

    Raises:
        ValueError: for a bad ``resolution`` or ``in_channels``, or an unknown model name.
        RuntimeError: if the model's forward cannot run on meta tensors (e.g. it reads tensor values).

    Equivalent PyTorch:
        summing, over the convs and linears of a real forward, ``out.numel() // N * in_channels //
        groups * prod(kernel_size)`` (MACs) and ``out.numel() // N`` (acts).
    """
    if isinstance(model, str):
        from .zoo import get_model

        with torch.device("meta"):
            model = get_model(model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or a model name, got {type(model).__name__}")
    h, w = _hw(resolution)
    if in_channels is None:
        first_conv = next((m for m in model.modules() if isinstance(m, _ConvNd)), None)
        in_channels = first_conv.in_channels if first_conv is not None else 3
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    counts = {"macs": 0, "acts": 0, "pycls_flops": 0}

    def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        out = output.numel() // _BATCH
        if isinstance(module, _ConvTransposeNd):
            # Every input element is scattered through a (out_channels / groups) x kernel window.
            macs = inputs[0].numel() // _BATCH * (module.out_channels // module.groups)
            macs *= math.prod(module.kernel_size)
        elif isinstance(module, _ConvNd):
            macs = out * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        else:  # nn.Linear, over however many positions it is applied to
            macs = out * module.in_features
        counts["macs"] += macs
        counts["acts"] += out
        counts["pycls_flops"] += macs + (out if module.bias is not None else 0)

    # modules put in by regnet_kernels.optimize do not call their convs' forwards: count the originals
    from regnet_kernels.optimize import unfused

    with unfused(model) as plain:
        _run_meta(plain, x_shape=(_BATCH, in_channels, h, w), dtype=dtype, count=count)
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, **counts}


def _run_meta(model: nn.Module, x_shape: tuple, dtype: torch.dtype, count) -> None:
    """One forward on meta tensors with ``count`` hooked on every conv and linear."""
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (_ConvNd, nn.Linear))]
    try:
        meta = {n: torch.empty_like(t, device="meta") for n, t in model.named_parameters()}
        meta.update({n: torch.empty_like(t, device="meta") for n, t in model.named_buffers()})
        x = torch.empty(x_shape, device="meta", dtype=dtype)
        with torch.no_grad():
            try:
                torch.func.functional_call(model, meta, (x,), strict=False, tie_weights=True)
            except (RuntimeError, NotImplementedError) as e:
                raise RuntimeError(
                    f"complexity(): the forward of {type(model).__name__} failed on meta tensors of shape "
                    f"{tuple(x.shape)}: {e}"
                ) from e
    finally:
        for handle in handles:
            handle.remove()
