"""The launch plan: every Triton kernel launch the fused path makes, from shapes alone.

``plan("regnet_y_400mf", "train", batch=128, dtype="bf16", arch=90)`` lists, in order, each launch an
``optimize(model, backend="triton")`` forward (``infer``) or forward + backward (``train``) makes on a
GPU of that arch: kernel, constexprs, argument types (the specialisation Triton would compile),
``num_warps``, ``num_stages``, grid, and the bytes and FLOPs the launch must move and do.

How (and why this way). The launch list must not drift from what runs, so the plan *is* the run:
the real model, built on the ``meta`` device, goes through :func:`regnet_kernels.optimize` and the
real module, op and launcher code. Two small hooks make that possible:

- a ``TorchDispatchMode`` sends the ``regnet_kernels::*`` custom ops to their Triton implementation
  (on meta tensors the dispatcher would otherwise pick their fake/meta implementation);
- while a recorder is installed (:func:`regnet_kernels.kernels.triton.runtime.set_recorder`), every launcher's
  ``launch(kernel, grid, device)(...)`` hands the launch to the recorder instead of running it, and
  the launchers choose their configs (:mod:`regnet_kernels.kernels.triton.config`) for the planned GPU
  rather than for this process (which may be interpreting).

Meta tensors have shapes and strides but no data, so planning regnet_x_3_2gf at batch 256 takes a
second or two and no memory; recording under the interpreter at a tiny size and scaling up would
be slower and would not be exact (tile choices depend on the sizes). What the plan cannot see:
pointer alignment (meta tensors have none; every tensor whose storage offset is a multiple of 16
bytes is taken as 16-byte aligned, as the CUDA caching allocator gives) and eager ops outside the
fused path (input cast, head, loss, optimizer step), which launch no Triton kernel.

Mixed precision is planned as ``torch.autocast`` runs it: the input and the conv weights in
``dtype``, BatchNorm and squeeze-excitation parameters in fp32 (the fused modules cast exactly that
under autocast; meta tensors cannot enter an autocast region, so the plan casts up front).
"""
from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

import torch

__all__ = ["Launch", "Plan", "plan", "DTYPES", "parse_arch"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_TYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
               torch.int64: "i64", torch.int32: "i32", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}


def parse_arch(arch) -> int:
    """``"sm_90"`` / ``"sm90"`` / ``"90"`` / ``90`` -> ``90``."""
    s = str(arch).lower().replace("sm_", "").replace("sm", "").rstrip("a")
    return int(s)


@dataclass
class Launch:
    """One recorded launch.

    ``signature`` maps every kernel parameter to its Triton type (``"*bf16"``, ``"i32"``, ``"fp32"``) or
    ``"constexpr"``; ``constexprs`` holds the constexpr values (declared constexprs and the integers equal
    to 1 that Triton specialises); ``aligned`` names the arguments Triton would mark divisible by 16.
    ``bytes`` counts each distinct tensor argument once (the traffic the launch must move at least);
    ``flops`` the useful FLOPs, ``mma_flops`` those the tensor cores execute with the tile padding of
    block-diagonally packed groups. ``scalars`` holds the values of the non-constexpr integer arguments
    (sizes, strides), from which a launch's tensor shapes can be rebuilt (the tuner does).
    """

    kernel: str
    label: str
    module: str
    grid: Tuple[int, int, int]
    num_warps: int
    num_stages: int
    signature: Dict[str, str]
    constexprs: Dict[str, object]
    aligned: List[str]
    bytes: int = 0
    flops: int = 0
    mma_flops: int = 0
    phase: str = "fwd"
    scalars: Dict[str, int] = field(default_factory=dict)

    @property
    def programs(self) -> int:
        g = self.grid
        return int(g[0]) * int(g[1]) * int(g[2])

    def spec(self) -> dict:
        """What identifies the compiled binary (without the arch)."""
        return {"module": self.module, "kernel": self.kernel, "signature": self.signature,
                "constexprs": self.constexprs, "aligned": sorted(self.aligned), "num_warps": self.num_warps,
                "num_stages": self.num_stages}

    @property
    def spec_key(self) -> str:
        return hashlib.sha256(json.dumps(self.spec(), sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class Plan:
    model: str
    mode: str
    batch: int
    resolution: int
    dtype: str
    arch: int
    launches: List[Launch] = field(default_factory=list)

    def specs(self) -> Dict[str, dict]:
        """Distinct specialisations: ``{spec_key: spec + {"launches": n}}`` in first-launch order."""
        out: Dict[str, dict] = {}
        for la in self.launches:
            k = la.spec_key
            if k not in out:
                out[k] = dict(la.spec(), launches=0)
            out[k]["launches"] += 1
        return out

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ("model", "mode", "batch", "resolution", "dtype", "arch")}
        d["launches"] = [asdict(la) for la in self.launches]
        return d


# ------------------------------------------------------------------------------------------------
# Recording
# ------------------------------------------------------------------------------------------------
def _is_constexpr(param: inspect.Parameter) -> bool:
    return "constexpr" in str(param.annotation)


def _specialise(value) -> Tuple[str, object, bool]:
    """``(type, constexpr value or None, aligned)`` as Triton's JIT specialises an argument."""
    if isinstance(value, torch.Tensor):
        aligned = (value.storage_offset() * value.element_size()) % 16 == 0
        return "*" + _TYPE_NAMES[value.dtype], None, aligned
    if value is None:
        return "constexpr", None, False
    if isinstance(value, bool):
        return "u1", None, False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", 1, False
        ty = "i32" if -2**31 <= value < 2**31 else ("u64" if value >= 2**63 else "i64")
        return ty, None, value % 16 == 0
    if isinstance(value, float):
        return "fp32", None, False
    raise TypeError(f"cannot specialise a {type(value).__name__} argument")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _conv_flops(kernel: str, v: dict) -> Tuple[int, int]:
    """(useful, executed) FLOPs of a conv launch from its argument values ``v``."""
    kk = v["KH"] * v["KW"]
    macs = v["N"] * v["HO"] * v["WO"] * v["C_OUT"] * v["CIN_G"] * kk
    if kernel == "conv_wgrad_kernel":
        rows = _cdiv(v["N"] * v["HO"] * v["WO"], v["BLOCK_M"]) * v["BLOCK_M"]
        return 2 * macs, 2 * rows * _cdiv(v["C_OUT"], v["BLOCK_CO"]) * v["BLOCK_CO"] * v["_n_ci"] * v["BLOCK_CI"] * kk
    if kernel == "conv_fwd_kernel":
        m, cols, col_g, red_g = v["N"] * v["HO"] * v["WO"], v["C_OUT"], v["COUT_G"], v["CIN_G"]
    else:  # dgrad: columns are input channels, reduction over output channels
        m, cols, col_g, red_g = v["N"] * v["H"] * v["W"], v["C_IN"], v["CIN_G"], v["COUT_G"]
    bm, bn, bk = v["BLOCK_M"], v["BLOCK_N"], v["BLOCK_K"]
    red = 0
    for t in range(_cdiv(cols, bn)):
        n0 = t * bn
        groups = (min(n0 + bn, cols) - 1) // col_g - n0 // col_g + 1
        red += _cdiv(groups * red_g, bk) * bk
    return 2 * macs, 2 * _cdiv(m, bm) * bm * bn * red * kk


def _flops(kernel: str, v: dict, grid) -> Tuple[int, int]:
    if kernel.startswith("conv_"):
        if kernel == "conv_wgrad_kernel":
            v = dict(v, _n_ci=grid[1])
        return _conv_flops(kernel, v)
    if kernel in ("se_fc_fwd_kernel", "se_fc_bwd_kernel"):
        f = 2 * v["N"] * v["C"] * v["S"] * (2 if kernel == "se_fc_fwd_kernel" else 3)
        return f, f
    return 0, 0


class Recorder:
    """Collects launches (installed with :func:`regnet_kernels.kernels.triton.runtime.set_recorder`)."""

    def __init__(self, target):
        self.target = target
        self.launches: List[Launch] = []
        self.phase = "fwd"
        self._sigs: dict = {}

    def record(self, kernel, grid, label, args, kwargs) -> None:
        fn = kernel.fn
        if fn not in self._sigs:
            self._sigs[fn] = list(inspect.signature(fn).parameters.values())
        params = self._sigs[fn]
        values = dict(zip((p.name for p in params), args))
        values.update({k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")})
        signature, constexprs, aligned = {}, {}, []
        seen, nbytes = set(), 0
        for p in params:
            val = values.get(p.name, p.default)
            if isinstance(val, torch.Tensor) and id(val) not in seen:
                seen.add(id(val))
                nbytes += val.numel() * val.element_size()
            if _is_constexpr(p):
                signature[p.name], constexprs[p.name] = "constexpr", val
                continue
            ty, cval, al = _specialise(val)
            signature[p.name] = ty
            if ty == "constexpr":
                constexprs[p.name] = cval
            if al:
                aligned.append(p.name)
        g = tuple(int(x) for x in grid) + (1,) * (3 - len(grid))
        flops, mma = _flops(fn.__name__, {k: v for k, v in values.items() if not isinstance(v, torch.Tensor)}, g)
        self.launches.append(Launch(
            kernel=fn.__name__, label=label, module=fn.__module__, grid=g,
            num_warps=int(kwargs.get("num_warps", 4)), num_stages=int(kwargs.get("num_stages", 3)),
            signature=signature, constexprs=constexprs, aligned=aligned, bytes=nbytes, flops=flops,
            mma_flops=mma, phase=self.phase,
            scalars={k: v for k, v in values.items() if type(v) is int and signature.get(k) != "constexpr"}))


class _TritonOnMeta(torch.utils._python_dispatch.TorchDispatchMode):
    """Runs ``regnet_kernels::*`` custom ops through their Python implementation (not their meta one)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name.startswith("regnet_kernels::"):
            from torch._library.custom_ops import OPDEFS

            return OPDEFS[name]._init_fn(*args, **kwargs)
        return func(*args, **kwargs)


# ------------------------------------------------------------------------------------------------
# Planning a model
# ------------------------------------------------------------------------------------------------
def _build(model, dtype: torch.dtype, mode: str):
    from regnet_kernels import optimize
    from regnet_kernels.models import get_model

    with torch.device("meta"):
        net = get_model(model) if isinstance(model, str) else model()
    if dtype != torch.float32:
        keep = set()
        for m in net.modules():  # autocast leaves these in fp32 on the fused path
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or "SqueezeExcit" in type(m).__name__:
                keep.update(id(p) for p in m.parameters())
        for p in net.parameters():
            if id(p) not in keep:
                p.data = p.data.to(dtype)
    net = net.to(memory_format=torch.channels_last)
    net.train(mode == "train")
    return optimize(net, backend="triton")


def plan(model, mode: str = "infer", batch: int = 1, resolution: int = 224, dtype: str = "bf16",
         arch=90) -> Plan:
    """Every Triton launch of one fused forward (``infer``, eval mode, no grad) or one training step's
    forward + backward (``train``; the optimizer step is eager) of the zoo model ``model``.

    Args:
        model: zoo name (``"regnet_y_400mf"``), or a callable building the (unfused) model; it is called
            under ``torch.device("meta")``.
        mode: ``"infer"`` or ``"train"``.
        batch, resolution: input ``(batch, 3, resolution, resolution)``, channels_last.
        dtype: ``"bf16"``, ``"fp16"`` (autocast-style mixed precision) or ``"fp32"``.
        arch: compute capability (``90``, ``"sm_80"``): the launchers pick configs for it.

    Returns:
        A :class:`Plan`; ``plan.specs()`` gives the distinct specialisations to compile.
    """
    from regnet_kernels.kernels.triton import runtime as _triton_utils
    from regnet_kernels.kernels.triton.config import Target

    if mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train', got {mode!r}")
    tdtype = DTYPES[dtype]
    arch = parse_arch(arch)
    rec = Recorder(Target.gpu(arch))
    prev = _triton_utils.set_recorder(rec)
    # ``torch.is_autocast_enabled("meta")`` raises; the fused modules ask it. Mixed precision is planned
    # by casting up front (see the module docstring), so autocast is off for meta tensors.
    real_is_autocast = torch.is_autocast_enabled
    torch.is_autocast_enabled = lambda *a: False if a and a[0] == "meta" else real_is_autocast(*a)
    try:
        net = _build(model, tdtype, mode)
        x = torch.empty((batch, 3, resolution, resolution), device="meta", dtype=tdtype,
                        memory_format=torch.channels_last)
        with _TritonOnMeta():
            if mode == "infer":
                with torch.no_grad():
                    net(x)
            else:
                loss = net(x).float().square().mean()
                rec.phase = "bwd"
                loss.backward()
    finally:
        torch.is_autocast_enabled = real_is_autocast
        _triton_utils.set_recorder(prev)
    name = model if isinstance(model, str) else getattr(model, "__name__", "custom")
    return Plan(name, mode, batch, resolution, dtype, arch, rec.launches)
