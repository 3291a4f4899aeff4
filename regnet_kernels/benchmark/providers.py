"""Providers: the implementations a benchmark compares, built the same way for the report and bench/.

Model providers (:data:`PROVIDERS`):

``eager_nchw``   the zoo model as is, NCHW, ``cudnn.benchmark`` off (PyTorch's default).
``eager_nhwc``   channels_last model and input, ``cudnn.benchmark`` on.
``compile``      ``torch.compile`` of the eager model in the best eager layout measured in the same run
                 (NCHW when unknown: Inductor refuses channels_last for training graphs with grouped
                 convs), ``mode="max-autotune"`` on GPU, falling back to the default mode if that fails.
``triton``, ``cuda``, ``auto``
                 ``regnet_kernels.optimize(copy.deepcopy(model), backend=...)``, channels_last (the kernels
                 are NHWC-native; ``layouts=("nchw", "nhwc")`` tries both), ``cudnn.benchmark`` on for any
                 conv left unfused. Whatever :func:`regnet_kernels.optimize` fuses (conv+BN+ReLU today, SE and
                 whole blocks when they land) is picked up.

Precision policy, the same for every provider: bf16/fp16 run under ``torch.autocast`` (parameters stay
fp32, as in mixed-precision training; fp16 training adds a ``GradScaler``); fp32 runs without autocast.
Inputs are fp32 images (autocast casts them). A training step is forward, cross-entropy loss,
backward and ``SGD(lr=1e-3, momentum=0.9)`` for every provider.

Models have random weights from a fixed seed, with BN affine parameters perturbed and running
statistics calibrated on random data (one training-mode pass), so that eval-mode BN is not an identity
and the fused eval path really folds something.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from regnet_kernels.benchmark.roofline import ConvShape

__all__ = [
    "PROVIDERS",
    "OP_PROVIDERS",
    "FUSED_PROVIDERS",
    "DTYPES",
    "DESCRIPTIONS",
    "Workload",
    "Built",
    "why_not",
    "build",
    "base_model",
    "TINY_MODELS",
    "segments",
    "model_regime",
    "with_compile_fallback",
    "OpCase",
    "op_why_not",
    "build_op_case",
]

PROVIDERS: Tuple[str, ...] = ("eager_nchw", "eager_nhwc", "compile", "triton", "cuda", "auto")
FUSED_PROVIDERS: Tuple[str, ...] = ("triton", "cuda", "auto")
OP_PROVIDERS: Tuple[str, ...] = ("eager_nchw", "eager_nhwc", "compile", "triton", "cuda")
EAGER_PROVIDERS: Tuple[str, ...] = ("eager_nchw", "eager_nhwc")
DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DESCRIPTIONS: Dict[str, str] = {
    "eager_nchw": "eager PyTorch, NCHW, cudnn.benchmark off",
    "eager_nhwc": "eager PyTorch, channels_last, cudnn.benchmark on",
    "compile": "torch.compile of the eager model (best eager layout)",
    "triton": "regnet_kernels.optimize(backend='triton')",
    "cuda": "regnet_kernels.optimize(backend='cuda')",
    "auto": "regnet_kernels.optimize(backend='auto')",
}
#: Small design-space RegNets the benchmark can build besides the zoo: every fused path (conv+BN+ReLU, SE,
#: whole bottleneck blocks, train and eval) in 2 stages / 3 blocks, cheap enough for the Triton interpreter.
TINY_MODELS: Dict[str, dict] = {
    "regnety_tiny": dict(depth=3, w_0=16, w_a=8, w_m=2.0, group_width=8, se_ratio=0.25, stem_width=16),
}
_LAYOUT_FORMAT = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
LR, MOMENTUM = 1e-3, 0.9


def _sample(device: torch.device, dtype: torch.dtype) -> List[torch.Tensor]:
    return [torch.empty(1, dtype=dtype, device=device)]


def why_not(provider: str, device: torch.device, *, purpose: str = "time", allow_slow: bool = False,
            dtype: str = "bf16") -> Optional[str]:
    """Why ``provider`` cannot (or should not) run here for ``purpose``; None when it can.

    Args:
        provider: one of :data:`PROVIDERS`.
        device: where the workload runs.
        purpose: ``"time"`` (timed benchmark) or ``"numerics"`` (parity check at a small size).
        allow_slow: run providers that work here but are impractically slow (torch.compile on CPU).
        dtype: ``"bf16"``, ``"fp16"`` or ``"fp32"``.
    """
    from regnet_kernels import backends

    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    if provider in EAGER_PROVIDERS:
        return None
    if provider == "compile":
        if not cuda and not allow_slow:
            return ("torch.compile on CPU compiles for minutes and CPU speed is not the target (the bench CLI runs "
                    "it when named in --providers)")
        return None
    name = provider if provider != "auto" else None
    if name is not None:
        reason = backends.why_not(name, _sample(device, DTYPES[dtype]), "conv_bn_act")
        if reason is not None:
            return reason
        if name == "triton" and not cuda and purpose == "time":
            return "Triton on CPU runs in the interpreter: numerics only (timing an interpreter measures nothing)"
    return None


# ------------------------------------------------------------------------------------------------
# Model workloads
# ------------------------------------------------------------------------------------------------
@dataclass
class Workload:
    """What to run: a zoo model at a batch, resolution and dtype, in a mode, on a device."""

    model: str
    mode: str
    batch: int
    resolution: int
    dtype: str
    device: torch.device
    num_classes: int = 1000

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """``torch.autocast`` at the workload's dtype (a no-op for fp32).

        ``cache=False`` for CUDA-graph capture: autocast's weight-cast cache must not outlive a capture.
        """
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.torch_dtype, cache_enabled=cache)

    @property
    def input_bytes(self) -> int:
        return self.batch * 3 * self.resolution * self.resolution * 4

    def make_inputs(self, i: int, layout: str = "nchw") -> Tuple[torch.Tensor, torch.Tensor]:
        """Input set ``i``: fp32 N(0, 1) images (never zeros) and random labels, seeded by ``i``."""
        gen = torch.Generator(device="cpu").manual_seed(1000 + i)
        x = torch.randn(self.batch, 3, self.resolution, self.resolution, generator=gen)
        t = torch.randint(0, self.num_classes, (self.batch,), generator=gen)
        x = x.to(self.device).contiguous(memory_format=_LAYOUT_FORMAT[layout])
        return x, t.to(self.device)


def base_model(name: str, device: torch.device, *, seed: int = 0, calibrate_batch: int = 4,
               calibrate_resolution: int = 64, num_classes: int = 1000) -> nn.Module:
    """A zoo model (or one of :data:`TINY_MODELS`) with seeded random weights, perturbed BN affine and
    calibrated BN running stats.

    BN gamma ~ U(0.5, 1.5) (U(0.1, 0.3) for the last BN of each residual branch), beta ~ N(0, 0.1); the
    running statistics come from one training-mode forward on random images (cumulative average, i.e.
    exactly that batch's statistics), so eval-mode outputs are well scaled.
    """
    from regnet_kernels import models

    torch.manual_seed(seed)
    if name in TINY_MODELS:
        model = models.RegNet(models.RegNetParams(**TINY_MODELS[name]), num_classes=num_classes)
    else:
        model = models.get_model(name, num_classes=num_classes)
    gen = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # the last BN of each residual branch gets a small gamma, as in trained RegNets (and zero-init-residual
    # recipes): with gamma ~ 1 a random-weight RegNet is chaotic in eval mode (bf16 rounding grows ~3x per
    # stage to a ~25% logits error against float64), and no parity check could see a kernel bug through that
    damped = {id(blk.f.c[1]) for blk in model.modules() if isinstance(blk, models.ResBottleneckBlock)}
    with torch.no_grad():
        for bn in bns:
            lo, hi = (0.1, 0.3) if id(bn) in damped else (0.5, 1.5)
            bn.weight.copy_(torch.empty(bn.num_features).uniform_(lo, hi, generator=gen))
            bn.bias.copy_(torch.empty(bn.num_features).normal_(0.0, 0.1, generator=gen))
            bn.reset_running_stats()
        saved = [bn.momentum for bn in bns]
        for bn in bns:
            bn.momentum = None
        x = torch.randn(calibrate_batch, 3, calibrate_resolution, calibrate_resolution, generator=gen)
        model.train()
        model(x)
        for bn, mom in zip(bns, saved):
            bn.momentum = mom
            bn.num_batches_tracked.zero_()
    return model.to(device).eval()


@dataclass
class Built:
    """A provider's model ready to run a workload.

    Attributes:
        provider: provider name.
        workload: what it runs.
        module: the (possibly optimized) ``nn.Module``, never the compiled wrapper.
        runner: what is called (``module`` or ``torch.compile(module)``).
        layout: ``"nchw"`` or ``"nhwc"``.
        cudnn_benchmark: the ``torch.backends.cudnn.benchmark`` setting it runs under.
        optimizer, scaler: the training step's SGD and (fp16) GradScaler.
        backend_resolved: the kernel backend the fused ops resolve to here (fused providers).
        fusion: ``{fused module class: count}`` from :func:`regnet_kernels.fusion_report`.
        compile_mode: torch.compile mode actually used.
        notes: anything a reader of the report should know.
    """

    provider: str
    workload: Workload
    module: nn.Module
    runner: Callable[[torch.Tensor], torch.Tensor]
    layout: str
    cudnn_benchmark: bool
    optimizer: Optional[torch.optim.Optimizer] = None
    scaler: Optional[Any] = None
    backend_resolved: Optional[str] = None
    fusion: Optional[Dict[str, int]] = None
    compile_mode: Optional[str] = None
    notes: List[str] = field(default_factory=list)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Run inside this: sets ``cudnn.benchmark`` as the provider wants and restores it."""
        old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = old

    def forward(self, x: torch.Tensor, graph_safe: bool = False) -> torch.Tensor:
        """Logits ``(N, classes)`` under the workload's autocast (no grad in infer mode).

        ``graph_safe``: disable autocast's cast cache (for CUDA-graph capture).
        """
        grad = torch.enable_grad() if self.workload.mode == "train" else torch.no_grad()
        with grad, self.workload.autocast(cache=not graph_safe):
            return self.runner(x)

    def step(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Infer: one forward, returns logits. Train: forward + loss + backward + SGD step, returns loss."""
        if self.provider == "compile" and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            # max-autotune replays CUDA graphs: tell it each call starts a new iteration
            torch.compiler.cudagraph_mark_step_begin()
        if self.workload.mode == "infer":
            return self.forward(x)
        loss = self.loss_backward(x, t)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss

    def loss_backward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Zero grads, forward, cross-entropy, backward (scaled for fp16); no optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.workload.autocast():
            out = self.runner(x)
            loss = F.cross_entropy(out, t)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss.detach()

    def grads(self) -> Dict[str, torch.Tensor]:
        """Parameter gradients by name (unscaled for fp16)."""
        scale = float(self.scaler.get_scale()) if self.scaler is not None else 1.0
        return {n: p.grad.detach() / scale for n, p in self.module.named_parameters() if p.grad is not None}


def _grad_scaler(device: torch.device):
    try:
        return torch.amp.GradScaler(device.type)
    except (AttributeError, TypeError, RuntimeError):  # torch < 2.3 spells it per device
        return torch.cuda.amp.GradScaler() if device.type == "cuda" else None


def build(provider: str, workload: Workload, base: nn.Module, *, layout: Optional[str] = None,
          compile_mode: Optional[str] = "max-autotune") -> Built:
    """A fresh copy of ``base`` set up as ``provider`` runs it (same weights for every provider).

    Args:
        provider: one of :data:`PROVIDERS`.
        workload: mode, dtype and device (the batch only matters to the caller's inputs).
        base: model from :func:`base_model` on ``workload.device``; deep-copied, never modified.
        layout: ``"nchw"`` or ``"nhwc"``; default: the provider's (eager_nchw: nchw, eager_nhwc and the
            fused providers: nhwc, compile: nchw).
        compile_mode: torch.compile mode (``None`` = default). CPU always uses the default mode.

    Returns:
        :class:`Built`. torch.compile is lazy: compilation (and a max-autotune failure) happens on the
        first call; see :func:`with_compile_fallback`.
    """
    import regnet_kernels as rk
    from regnet_kernels import backends

    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
    dev = workload.device
    if layout is None:
        layout = "nchw" if provider in ("eager_nchw", "compile") else "nhwc"
    model = copy.deepcopy(base).to(dev)
    model.train(workload.mode == "train")
    if layout == "nhwc":
        model = model.to(memory_format=torch.channels_last)
    notes: List[str] = []
    backend_resolved = fusion = mode_used = None
    runner: Callable = model
    bench_flag = provider != "eager_nchw"
    if provider in FUSED_PROVIDERS:
        model, report = rk.optimize(model, backend=provider, return_report=True)
        fusion = report.counts()
        sample = torch.empty(1, dtype=workload.torch_dtype, device=dev)
        try:
            backend_resolved = backends.resolve("conv_bn_act", [sample], provider)
        except backends.BackendUnavailableError as e:  # the caller checked why_not; keep the reason
            notes.append(str(e).splitlines()[0])
        if provider == "auto" and backend_resolved == "eager":
            notes.append("auto resolves to the eager reference on this device")
    elif provider == "compile":
        mode_used = compile_mode if dev.type == "cuda" else None
        torch._dynamo.reset()  # no recompile budget or cache carried over from another workload
        runner = torch.compile(model, mode=mode_used)
    opt = scaler = None
    if workload.mode == "train":
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        if workload.dtype == "fp16":
            scaler = _grad_scaler(dev)
    return Built(provider, workload, model, runner, layout, bench_flag, opt, scaler, backend_resolved, fusion,
                 mode_used, notes)


def with_compile_fallback(built: Built, base: nn.Module, first_inputs: Tuple[torch.Tensor, torch.Tensor]) -> Built:
    """Run one step; if ``torch.compile`` in a non-default mode fails, rebuild in the default mode.

    Returns the working :class:`Built` (a note records the fallback). Other failures propagate.
    """
    try:
        with built.active():
            built.step(*first_inputs)
        return built
    except Exception as e:
        if built.provider != "compile" or built.compile_mode is None:
            raise
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
        torch._dynamo.reset()
        again = build("compile", built.workload, base, layout=built.layout, compile_mode=None)
        again.notes.append(f"mode={built.compile_mode!r} failed ({reason}); fell back to the default mode")
        with again.active():
            again.step(*first_inputs)
        return again


def model_regime(provider: str, backend_resolved: Optional[str] = None,
                 fusion: Optional[Dict[str, int]] = None) -> str:
    """The traffic regime a provider's time is judged against (the bytes its algorithm must move).

    eager providers: ``eager``. compile: ``fused`` (the floor Inductor could reach; it cannot fuse across
    a training-mode BN, so this is ambitious). Fused providers: ``eager`` when the ops resolve to the eager
    reference, ``block_fused`` once :func:`regnet_kernels.optimize` fuses whole blocks, else ``fused``.
    """
    if provider in EAGER_PROVIDERS:
        return "eager"
    if provider == "compile":
        return "fused"
    if backend_resolved == "eager":
        return "eager"
    kinds = " ".join(fusion or {})
    return "block_fused" if ("Bottleneck" in kinds or "Block" in kinds) else "fused"


def segments(model: nn.Module) -> Optional[List[Tuple[str, Callable[[torch.Tensor], torch.Tensor]]]]:
    """Top-level pieces of a RegNet for per-layer timing: stem, stage1..S, head (None if not a RegNet).

    Names match :meth:`regnet_kernels.benchmark.roofline.Traffic.by_group`.
    """
    needed = ("stem", "trunk_output", "avgpool", "fc")
    if not all(hasattr(model, n) for n in needed):
        return None
    out: List[Tuple[str, Callable]] = [("stem", model.stem)]
    for i, stage in enumerate(model.trunk_output.children(), start=1):
        out.append((f"stage{i}", stage))
    out.append(("head", lambda x: model.fc(torch.flatten(model.avgpool(x), 1))))
    return out


# ------------------------------------------------------------------------------------------------
# One op: conv + BN + ReLU (the per-op benchmark in bench/)
# ------------------------------------------------------------------------------------------------
def op_why_not(provider: str, device: torch.device, dtype: str = "bf16", *, allow_interpreter: bool = False,
               allow_slow: bool = False) -> Optional[str]:
    """Why the conv+BN+ReLU op ``provider`` cannot be benchmarked here (None when it can).

    ``allow_interpreter``: let Triton run on CPU under the interpreter (tiny smoke cases only).
    """
    if provider not in OP_PROVIDERS:
        raise ValueError(f"unknown op provider {provider!r}; known: {', '.join(OP_PROVIDERS)}")
    reason = why_not(provider, device, purpose="numerics" if allow_interpreter else "time",
                     allow_slow=allow_slow, dtype=dtype)
    return reason


@dataclass
class OpCase:
    """A ready-to-time conv+BN+ReLU op.

    Attributes:
        fn: ``fn(*inputs[i])`` runs the op once (forward, or forward + backward in ``train``).
        inputs: rotating input sets.
        bytes_fused: modelled bytes of the standalone fused op (the minimum any provider must move).
        bytes_eager: modelled bytes of the eager conv, BN, ReLU sequence.
        flops: 2 x MACs (x3 with backward).
        bytes_per_set: bytes of one input set.
    """

    fn: Callable[..., Any]
    inputs: List[Tuple[torch.Tensor, ...]]
    bytes_fused: int
    bytes_eager: int
    flops: int
    bytes_per_set: int


def build_op_case(provider: str, shape: ConvShape, mode: str, dtype: str, device: torch.device, *,
                  seed: int = 0, max_sets: int = 8, compile_mode: Optional[str] = None) -> OpCase:
    """The conv+BN(+ReLU) op ``relu(BN(conv2d(x, W)))`` as ``provider`` runs it.

    Args:
        provider: ``eager_nchw`` (F.conv2d + F.batch_norm + relu, NCHW), ``eager_nhwc`` (the same on
            channels_last tensors, cudnn.benchmark on), ``compile`` (torch.compile of the eager function,
            best-effort layout NCHW), ``triton`` / ``cuda`` (:func:`regnet_kernels.ops.conv_bn_act` with
            that backend, channels_last).
        shape: geometry, batch included.
        mode: ``"infer"`` (eval-mode BN, no grad) or ``"train"`` (batch statistics, forward + backward).
        dtype: activations and weights in this dtype; BN parameters fp32.
        device: where to run.
        seed: seeds weights and inputs.
        max_sets: cap on rotating input sets (enough to exceed twice the L2 otherwise).
        compile_mode: torch.compile mode for ``compile``.
    """
    from regnet_kernels.benchmark.roofline import conv_bn_act_traffic
    from regnet_kernels.benchmark.timing import rotating_inputs
    from regnet_kernels.ops import conv_bn_act

    if mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train', got {mode!r}")
    device = torch.device(device)
    tdt = DTYPES[dtype]
    train = mode == "train"
    layout = "nchw" if provider in ("eager_nchw", "compile") else "nhwc"
    fmt = _LAYOUT_FORMAT[layout]
    gen = torch.Generator().manual_seed(seed)
    fan_in = shape.weight_elems // shape.c_out
    w = (torch.randn(shape.c_out, shape.c_in // shape.groups, shape.kernel, shape.kernel, generator=gen)
         * fan_in ** -0.5).to(device=device, dtype=tdt)
    gamma = torch.empty(shape.c_out).uniform_(0.5, 1.5, generator=gen).to(device)
    beta = torch.empty(shape.c_out).normal_(0, 0.1, generator=gen).to(device)
    rm = torch.empty(shape.c_out).normal_(0, 0.1, generator=gen).to(device)
    rv = torch.empty(shape.c_out).uniform_(0.5, 1.5, generator=gen).to(device)
    params = [w, gamma, beta]
    if train:
        for p in params:
            p.requires_grad_(True)
    pad = shape.kernel // 2
    act = "relu" if shape.relu else None

    def eager(x):
        y = F.conv2d(x, w, None, shape.stride, pad, 1, shape.groups)
        y = F.batch_norm(y, rm, rv, gamma, beta, train, 0.1, 1e-5)
        return F.relu(y) if shape.relu else y

    if provider in ("eager_nchw", "eager_nhwc"):
        op = eager
    elif provider == "compile":
        # every case compiles the same code object: reset, or dynamo's recompile limit would silently
        # fall back to eager after a few shapes
        torch._dynamo.reset()
        op = torch.compile(eager, mode=compile_mode if device.type == "cuda" else None)
    elif provider in ("triton", "cuda"):
        backend = provider

        def op(x):
            return conv_bn_act(x, w, gamma, beta, rm, rv, stride=shape.stride, padding=pad, groups=shape.groups,
                               training=train, activation=act, backend=backend)
    else:
        raise ValueError(f"unknown op provider {provider!r}; known: {', '.join(OP_PROVIDERS)}")

    e = tdt.itemsize
    per_set = shape.in_elems * e + (shape.out_elems * e if train else 0)

    def make(i):
        g = torch.Generator().manual_seed(seed + 100 + i)
        x = torch.randn(shape.n, shape.c_in, shape.h, shape.w, generator=g).to(device=device, dtype=tdt)
        x = x.contiguous(memory_format=fmt)
        if not train:
            return (x,)
        x.requires_grad_(True)
        go = torch.randn(shape.n, shape.c_out, shape.h_out, shape.w_out, generator=g).to(device=device, dtype=tdt)
        return (x, go.contiguous(memory_format=fmt))

    inputs = rotating_inputs(make, per_set, device, max_sets=max_sets)
    bench_flag = provider != "eager_nchw"

    if train:
        def fn(x, go):
            old = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = bench_flag
            try:
                out = op(x)
                out.backward(go)
            finally:
                torch.backends.cudnn.benchmark = old
            # drop grads so every call does the same work (no accumulation into existing tensors)
            x.grad = None
            for p in params:
                p.grad = None
    else:
        def fn(x):
            old = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = bench_flag
            try:
                with torch.no_grad():
                    op(x)
            finally:
                torch.backends.cudnn.benchmark = old

    fused = conv_bn_act_traffic(shape, regime="fused", mode=mode, dtype=dtype)
    eager_k = conv_bn_act_traffic(shape, regime="eager", mode=mode, dtype=dtype)
    return OpCase(fn, inputs, sum(k.bytes for k in fused), sum(k.bytes for k in eager_k),
                  sum(k.flops for k in fused), per_set)
