"""Deploying optimized models: ``torch.export``, ONNX and AOTInductor.

An optimized model (:func:`regnet_kernels.optimize`) in eval mode exports as it is:

- :func:`export` wraps :func:`torch.export.export` with a dynamic batch dimension. The graph keeps the
  fused ops (``regnet_kernels::bottleneck_eval``, ``::conv_bn_act_eval``, ``::squeeze_excite``) as
  single nodes, each with the backend it resolved to at export time recorded as an argument;
  :func:`torch.export.save` / :func:`torch.export.load` round-trip it (import ``regnet_kernels`` in the
  process that loads it, so the ops are registered). The same program feeds AOTInductor
  (:func:`torch._inductor.aoti_compile_and_package`), where the fused ops run as extern calls.
- :func:`onnx_export` wraps ``torch.onnx.export(..., dynamo=True)`` with :func:`onnx_translation_table`,
  which translates every eval-mode fused op into standard ONNX (``Conv``, ``BatchNormalization``,
  ``Relu``, ``GlobalAveragePool``, ``Sigmoid``, ``Mul``, ``Add``): the ``.onnx`` file needs no custom
  domain and runs on any ONNX runtime. Pass the table yourself to call ``torch.onnx.export`` directly.

Training-mode ops (``conv_bn_act_train``, ``bottleneck_train``...) have no ONNX translation: export in
eval mode (the helpers here refuse a model in training mode).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from regnet_kernels.kernels.activation import Act

__all__ = ["export", "onnx_export", "onnx_translation_table", "aoti_package", "fused_ops_in", "ONNX_OPSET"]

#: the ONNX opset the translations are written against (torch's own ONNX library targets it too)
ONNX_OPSET = 18


# ------------------------------------------------------------------------------------------------
# torch.export
# ------------------------------------------------------------------------------------------------
def _as_tuple(args: Union[torch.Tensor, Sequence[Any]]) -> Tuple[Any, ...]:
    return (args,) if isinstance(args, torch.Tensor) else tuple(args)


def _check_eval(model: nn.Module, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what}: expected an nn.Module, got {type(model).__name__}")
    training = [n or "<root>" for n, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"{what}: the model is in training mode ({', '.join(training[:3])}"
                         f"{'...' if len(training) > 3 else ''}); call model.eval() first: only eval-mode "
                         "fused ops export")


def _batch_dynamic_shapes(args: Tuple[Any, ...], max_batch: Optional[int]):
    """Batch dimension of every tensor argument dynamic (one shared symbol), nothing else."""
    batch = torch.export.Dim("batch", min=1, max=max_batch) if max_batch else torch.export.Dim("batch", min=1)
    return tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args)


def _traceable_args(args: Tuple[Any, ...]) -> Tuple[Any, ...]:
    # a batch of 1 would be specialised (size 0/1 specialisation): trace on a batch of 2 instead
    return tuple(torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1 else a
                 for a in args)


def export(
    model: nn.Module,
    args: Union[torch.Tensor, Sequence[Any]],
    *,
    dynamic_batch: bool = True,
    max_batch: Optional[int] = None,
    **kwargs: Any,
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of an eval-mode (optimized) model, with a dynamic batch dimension.

    The trace runs under ``torch.no_grad()``, so each fused bottleneck is one
    ``regnet_kernels::bottleneck_eval`` node (with autograd on, fused blocks take their per-op path so
    that gradients can flow, and the graph holds ``conv_bn_act_eval`` / ``squeeze_excite`` nodes instead;
    both export, translate to ONNX and give the same numbers).

    Args:
        model: an ``nn.Module`` in eval mode, usually after :func:`regnet_kernels.optimize`.
        args: example input(s): a tensor ``(N, 3, H, W)`` or a tuple of arguments. Run the export on the
            device (and with the backend) you will serve on: the backend each fused op resolved to is
            recorded in the graph.
        dynamic_batch: make dimension 0 of every tensor argument dynamic (one shared symbol ``batch``);
            other dimensions stay static. An example batch of 1 is traced as a batch of 2.
        max_batch: upper bound of the dynamic batch (None: unbounded).
        **kwargs: passed to :func:`torch.export.export` (e.g. ``strict=True``; an explicit
            ``dynamic_shapes`` replaces the batch-only one).

    Returns:
        A :class:`torch.export.ExportedProgram`; ``ep.module()(x)`` runs it, :func:`torch.export.save`
        writes it.

    Equivalent PyTorch: ``torch.export.export(model, args, dynamic_shapes=...)`` under ``torch.no_grad()``.
    """
    _check_eval(model, "regnet_kernels.export.export")
    args = _as_tuple(args)
    if dynamic_batch and "dynamic_shapes" not in kwargs:
        args = _traceable_args(args)
        kwargs["dynamic_shapes"] = _batch_dynamic_shapes(args, max_batch)
    with torch.no_grad():
        return torch.export.export(model, args, **kwargs)


def fused_ops_in(program: Union[torch.export.ExportedProgram, torch.fx.GraphModule]) -> Dict[str, int]:
    """How many nodes of each ``regnet_kernels`` op a graph holds, e.g. ``{"bottleneck_eval": 3}``."""
    graph = program.graph
    counts: Dict[str, int] = {}
    for node in graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) \
                and target.namespace == "regnet_kernels":
            name = target.name().split("::", 1)[1].split(".")[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------
# ONNX translations (onnxscript, traced: plain Python over ONNX values, so optional inputs are None)
# ------------------------------------------------------------------------------------------------
def _onnx():
    try:
        import onnxscript  # noqa: F401
        from onnxscript import ir
        from onnxscript import opset18 as op
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'regnet_kernels[export]' "
                          f"(or pip install onnx onnxscript) ({e})") from e
    return op, ir


def _translations() -> Dict[Callable, Callable]:
    op, ir = _onnx()
    FLOAT = ir.DataType.FLOAT
    DOUBLE = ir.DataType.DOUBLE

    def acc_dtype(dt):
        # BatchNorm and SE arithmetic run in fp32 (fp64 for fp64), as in the eager reference
        return DOUBLE if dt == DOUBLE else FLOAT

    def cast(v, to, known=None):
        # values made inside a translation carry no type while it is traced: their callers pass ``known``
        known = v.dtype if known is None else known
        return v if known == to else op.Cast(v, to=to)

    def filled(like, value: float, dtype):
        return op.Expand(op.Cast(op.Constant(value_floats=[value]), to=dtype), op.Shape(like))

    def cba(x, dt, weight, gamma, beta, running_mean, running_var, stride, padding, groups, eps, act):
        # x holds activations of dtype dt; so does the result
        y = op.Conv(x, weight, strides=[stride, stride], pads=[padding] * 4, group=groups)
        acc = acc_dtype(dt)
        scale = cast(gamma, acc) if gamma is not None else filled(running_mean, 1.0, acc)
        bias = cast(beta, acc) if beta is not None else filled(running_mean, 0.0, acc)
        z = op.BatchNormalization(cast(y, acc, dt), scale, bias, cast(running_mean, acc), cast(running_var, acc),
                                  epsilon=eps)
        if act == Act.RELU:
            z = op.Relu(z)
        elif act != Act.NONE:
            raise NotImplementedError(f"regnet_kernels.export: no ONNX translation for activation code {act!r}")
        return cast(z, dt, acc)

    def fc_weight(w, acc):
        w4 = w if len(w.shape) == 4 else op.Unsqueeze(w, op.Constant(value_ints=[2, 3]))  # (S, C) -> (S, C, 1, 1)
        return cast(w4, acc, w.dtype)

    def se(x, dt, w1, b1, w2, b2):
        acc = acc_dtype(dt)
        xf = cast(x, acc, dt)
        pooled = op.GlobalAveragePool(xf)
        h = op.Relu(op.Conv(pooled, fc_weight(w1, acc), *([cast(b1, acc)] if b1 is not None else [])))
        gate = op.Sigmoid(op.Conv(h, fc_weight(w2, acc), *([cast(b2, acc)] if b2 is not None else [])))
        return cast(op.Mul(xf, gate), dt, acc), pooled, gate

    def conv_bn_act_eval(x, weight, gamma, beta, running_mean, running_var, stride: int, padding: int,
                         groups: int, eps: float, act: int, backend: str = "auto"):
        """``act(BatchNormalization(Conv(x)))``; BatchNorm in fp32 for half inputs (Casts around it)."""
        return cba(x, x.dtype, weight, gamma, beta, running_mean, running_var, stride, padding, groups, eps, act)

    def squeeze_excite(x, w1, b1, w2, b2, backend: str = "auto"):
        """``x * Sigmoid(Conv(Relu(Conv(GlobalAveragePool(x)))))``; returns ``(out, pooled, gate)``."""
        out, pooled, gate = se(x, x.dtype, w1, b1, w2, b2)
        return out, op.Flatten(pooled, axis=1), op.Flatten(gate, axis=1)

    def bottleneck_eval(x, wa, ga, ba, rma, rva, wb, gb, bb, rmb, rvb, w1, b1, w2, b2, wc, gc, bc, rmc, rvc,
                        wp, gp, bp, rmp, rvp, stride: int, groups: int, eps: Sequence[float],
                        backend: str = "auto"):
        """``Relu(c(se(b(a(x)))) + shortcut(x))`` from the two translations above."""
        dt = x.dtype
        h = cba(x, dt, wa, ga, ba, rma, rva, 1, 0, 1, eps[0], Act.RELU)
        h = cba(h, dt, wb, gb, bb, rmb, rvb, stride, wb.shape[-1] // 2, groups, eps[1], Act.RELU)
        if w1 is not None:
            h = se(h, dt, w1, b1, w2, b2)[0]
        c = cba(h, dt, wc, gc, bc, rmc, rvc, 1, 0, 1, eps[2], Act.NONE)
        short = x if wp is None else cba(x, dt, wp, gp, bp, rmp, rvp, stride, 0, 1, eps[3], Act.NONE)
        return op.Relu(op.Add(c, short))

    ops = torch.ops.regnet_kernels
    return {
        ops.conv_bn_act_eval.default: conv_bn_act_eval,
        ops.squeeze_excite.default: squeeze_excite,
        ops.bottleneck_eval.default: bottleneck_eval,
    }


def onnx_translation_table() -> Dict[Callable, Callable]:
    """ONNX translations of the eval-mode fused ops, for ``torch.onnx.export(custom_translation_table=)``.

    Keys are the ops (``torch.ops.regnet_kernels.conv_bn_act_eval.default``, ``::squeeze_excite``,
    ``::bottleneck_eval``); values are onnxscript functions over ONNX opset :data:`ONNX_OPSET` that emit
    only standard nodes: ``Conv``, ``BatchNormalization`` (kept as a node; runtimes such as onnxruntime
    fold it into the conv), ``Relu``, ``GlobalAveragePool``, ``Sigmoid``, ``Mul``, ``Add`` (and
    ``Cast`` around the BatchNorm/SE arithmetic for half-precision models, which run it in fp32 as the
    fused kernels do). Needs ``onnxscript``.

    Example::

        torch.onnx.export(model, (x,), dynamo=True,
                          custom_translation_table=regnet_kernels.export.onnx_translation_table())
    """
    return _translations()


def onnx_export(
    model: nn.Module,
    args: Union[torch.Tensor, Sequence[Any]],
    f: Optional[Any] = None,
    *,
    dynamic_batch: bool = True,
    max_batch: Optional[int] = None,
    opset_version: Optional[int] = None,
    custom_translation_table: Optional[Dict[Callable, Callable]] = None,
    **kwargs: Any,
):
    """Export an eval-mode (optimized) model to a standard ONNX graph.

    Args:
        model: an ``nn.Module`` in eval mode, usually after :func:`regnet_kernels.optimize`.
        args: example input(s): a tensor ``(N, 3, H, W)`` or a tuple of arguments.
        f: path of the ``.onnx`` file to write (None: only return the program; call ``.save(path)``).
        dynamic_batch: dimension 0 of every tensor input dynamic (ONNX input shape ``["batch", 3, H, W]``).
        max_batch: upper bound of the dynamic batch (None: unbounded).
        opset_version: ONNX opset of the file (None: torch's default).
        custom_translation_table: further translations, merged over :func:`onnx_translation_table`.
        **kwargs: passed to :func:`torch.onnx.export` (e.g. ``input_names``, ``external_data``,
            ``optimize``); ``dynamo=True`` is implied.

    Returns:
        The :class:`torch.onnx.ONNXProgram` (``.model_proto`` is the ``onnx.ModelProto``).

    Equivalent PyTorch: ``torch.onnx.export(model, args, f, dynamo=True, dynamic_shapes=...,
    custom_translation_table=onnx_translation_table())`` under ``torch.no_grad()``.
    """
    _check_eval(model, "regnet_kernels.export.onnx_export")
    args = _as_tuple(args)
    table = dict(onnx_translation_table())
    table.update(custom_translation_table or {})
    if dynamic_batch and "dynamic_shapes" not in kwargs:
        args = _traceable_args(args)
        kwargs["dynamic_shapes"] = _batch_dynamic_shapes(args, max_batch)
    if opset_version is not None:
        kwargs["opset_version"] = opset_version
    kwargs.setdefault("verbose", False)
    with torch.no_grad():
        return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)


# ------------------------------------------------------------------------------------------------
# AOTInductor
# ------------------------------------------------------------------------------------------------
def aoti_package(
    model: nn.Module,
    args: Union[torch.Tensor, Sequence[Any]],
    package_path: str,
    *,
    dynamic_batch: bool = True,
    max_batch: Optional[int] = None,
    inductor_configs: Optional[Dict[str, Any]] = None,
) -> str:
    """Ahead-of-time compile an eval-mode (optimized) model into a ``.pt2`` package with AOTInductor.

    :func:`export`, then :func:`torch._inductor.aoti_compile_and_package`. Inductor generates code for the
    aten ops around the fused ones (stem/head glue) and calls the fused ops as extern kernels, so the
    package runs the same Triton/CUDA kernels as the optimized model. Load it with
    ``torch._inductor.aoti_load_package(path)`` in a process that has imported ``regnet_kernels`` (the
    ops' kernels are registered from Python). Compile on the device you serve on.

    Args:
        model, args, dynamic_batch, max_batch: as :func:`export`.
        package_path: where to write the package (a ``.pt2`` file).
        inductor_configs: Inductor options, e.g. ``{"max_autotune": True}``.

    Returns:
        The package path.

    Equivalent PyTorch: ``torch._inductor.aoti_compile_and_package(torch.export.export(model, args),
    package_path=package_path)``.
    """
    program = export(model, args, dynamic_batch=dynamic_batch, max_batch=max_batch)
    return torch._inductor.aoti_compile_and_package(program, package_path=str(package_path),
                                                    inductor_configs=inductor_configs)
