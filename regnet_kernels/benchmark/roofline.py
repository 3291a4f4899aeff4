"""Traffic, launch and roofline model of a RegNet: the bytes each layer must move, in three regimes.

This is a *model*, not a measurement: pure integer arithmetic over the block specs of
:meth:`regnet_kernels.models.RegNetParams.blocks`, no tensors. Everything the report prints from
here is labelled ``kind: "model"``.

Regimes (defined in docs/performance.md):

``eager``
    Every op reads its inputs and writes its output: conv, BN, ReLU, pool, FC, sigmoid, mul, add,
    one kernel each, exactly what autograd runs.
``fused``
    Each conv reads its input once and writes its output once; BN statistics, ReLU, the SE pool and
    the SE scale ride in conv prologues/epilogues (docs/architecture.md).
``block_fused``
    A whole bottleneck per pass (inference). RegNetY blocks take three launches, because the SE
    gate needs a global pool of conv b's output before conv c may start: pass 1 (a, b, pool),
    the SE FCs, pass 2 (scale, c, proj, add, ReLU). In training, BN batch statistics are a
    device-wide barrier after every conv, so a bottleneck cannot be one pass: ``block_fused``
    training is modelled as ``fused`` training.

Counting rules (all regimes):

* Activation bytes: ``N * C * H * W * dtype_bytes`` per tensor read or written. A kernel reading a
  tensor reads all of it (also the strided 1x1 projection).
* Weights count once per kernel that uses them, at the compute dtype; each forward BN kernel also
  moves four fp32 per-channel vectors (:data:`BN_CHANNEL_BYTES` per channel). Per-channel traffic
  in the backward pass, autocast weight casts and the loss's int64 targets are not modelled (each
  well under 0.1 %). The loss runs in fp32 (autocast does).
* FLOPs: ``2 * MACs`` for every conv / FC forward, dgrad and wgrad; pointwise ops count 0.
* Floor: each kernel costs ``max(bytes / bandwidth, flops / peak)``; the model's floor is the sum
  over kernels (no two kernels overlap). This reproduces the floor table of docs/performance.md.

Training step = forward + backward + SGD(momentum) on fp32 master weights (read param, grad and
momentum, write param and momentum: 20 bytes per parameter). Backward models:

* eager: autograd's kernels. ReLU backward reads grad and output, writes grad; BN backward is a
  reduction pass (reads grad, input) plus an elementwise pass (reads grad, input, writes grad);
  conv backward is dgrad (reads grad, weights, writes input grad; none for the stem, whose input
  needs no grad) and wgrad (reads grad and input, writes the weight grad); an add's backward is
  free, but a tensor used twice (block input: shortcut and conv a; SE input: pool and mul) gets
  its gradients summed by an add kernel; BN training forward is two kernels (statistics, then
  normalise), as in ATen.
* fused (docs/architecture.md): forward convs write only the pre-BN output and per-channel partial sums;
  a tiny finalize kernel makes the statistics; normalise + ReLU (+ SE scale) are applied as the
  next conv loads its input. In training two passes cannot be avoided: the SE pool (needs b's
  statistics) and the residual tail ``relu(BN(c) + shortcut)`` (needs c's statistics). Backward
  saves pre-BN outputs only: dgrad and wgrad each form ``dY`` on load from the incoming gradient,
  the saved pre-BN output (and the ReLU mask's tensor) and the statistics; BN backward reductions
  ride in the epilogue of the kernel that writes their incoming gradient (reading the saved
  pre-BN output there), except after the SE gate, whose gradient needs a global reduction first
  (one extra pass). The identity shortcut's gradient is added in conv a's dgrad epilogue; the
  projection's dgrad adds conv a's input gradient in its epilogue.

Launches are counted per kernel (eager forward: one per op, as docs/performance.md counts; BN training
forward: two). The SGD step counts three multi-tensor launches (an approximation: chunking can add
a few).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple, Union

from regnet_kernels.benchmark import costs as _costs
from regnet_kernels.benchmark.costs import *  # noqa: F401,F403  (re-exported: listed once in costs.__all__)
from regnet_kernels.benchmark.costs import ConvShape, Kernel, Layer, Traffic

__all__ = [
    "REGIMES",
    "MODES",
    "DTYPE_BYTES",
    "BN_CHANNEL_BYTES",
    "model_traffic",
    "conv_bn_act_traffic",
    "PUBLISHED_FLOORS",
] + list(_costs.__all__)

REGIMES: Tuple[str, ...] = ("eager", "fused", "block_fused")
MODES: Tuple[str, ...] = ("infer", "train")
DTYPE_BYTES: Dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}
#: Bytes per channel a forward BN kernel moves: four fp32 vectors (mean, var or invstd, gamma, beta).
BN_CHANNEL_BYTES = 16
#: fp32 bytes of the loss (autocast runs cross-entropy in fp32).
_LOSS_BYTES = 4
#: SGD with momentum on fp32 master weights: read param, grad, momentum; write param, momentum.
_SGD_BYTES_PER_PARAM = 5 * 4


# ------------------------------------------------------------------------------------------------
# Per-op kernel formulas (the data types they fill live in regnet_kernels.benchmark.costs)
# ------------------------------------------------------------------------------------------------
class _Net:
    """Per-layer kernel lists for one regime/mode; ``e`` is the activation dtype's byte count."""

    def __init__(self, regime: str, mode: str, e: int):
        self.regime, self.mode, self.e = regime, mode, e
        self.train = mode == "train"
        self.layers: List[Layer] = []
        self.params = 0

    def add(self, name: str, group: str, kernels: List[Kernel]) -> None:
        self.layers.append(Layer(name, group, [k for k in kernels if k is not None]))

    # -- eager ---------------------------------------------------------------------------------
    def eager_cba(self, s: ConvShape, *, needs_dgrad: bool = True) -> List[Kernel]:
        """conv -> BN (-> ReLU) as autograd runs it."""
        i, o, w = s.in_elems * self.e, s.out_elems * self.e, s.weight_elems * self.e
        bnv = BN_CHANNEL_BYTES * s.c_out
        ks = [Kernel("conv", read=i, write=o, weight=w, flops=2 * s.macs)]
        if self.train:
            ks.append(Kernel("bn_stats", read=o, weight=bnv))
        ks.append(Kernel("bn", read=o, write=o, weight=bnv))
        if s.relu:
            ks.append(Kernel("relu", read=o, write=o))
        if self.train:
            if s.relu:
                ks.append(Kernel("relu_bwd", read=2 * o, write=o, phase="bwd"))
            ks.append(Kernel("bn_bwd_reduce", read=2 * o, phase="bwd"))
            ks.append(Kernel("bn_bwd", read=2 * o, write=o, phase="bwd"))
            if needs_dgrad:
                ks.append(Kernel("dgrad", read=o, write=i, weight=w, flops=2 * s.macs, phase="bwd"))
            ks.append(Kernel("wgrad", read=o + i, weight=w, flops=2 * s.macs, phase="bwd"))
        return ks

    def eager_fc(self, n: int, c_in: int, c_out: int, op: str) -> List[Kernel]:
        """Linear / 1x1 conv with bias on pooled ``(n, c_in)`` features."""
        e = self.e
        w = (c_in * c_out + c_out) * e
        ks = [Kernel(op, read=n * c_in * e, write=n * c_out * e, weight=w, flops=2 * n * c_in * c_out)]
        if self.train:
            ks += [
                Kernel(op + "_dgrad", read=n * c_out * e, write=n * c_in * e, weight=c_in * c_out * e,
                       flops=2 * n * c_in * c_out, phase="bwd"),
                Kernel(op + "_wgrad", read=n * (c_in + c_out) * e, weight=c_in * c_out * e,
                       flops=2 * n * c_in * c_out, phase="bwd"),
                Kernel(op + "_bias_grad", read=n * c_out * e, weight=c_out * e, phase="bwd"),
            ]
        return ks

    def eager_pointwise(self, op: str, elems: int, n_in: int = 1) -> List[Kernel]:
        """An elementwise op reading ``n_in`` tensors of ``elems`` elements and writing one."""
        b = elems * self.e
        return [Kernel(op, read=n_in * b, write=b)]

    def eager_se(self, n: int, c: int, hw: int, s: int) -> List[Kernel]:
        """``x * sigmoid(fc2(relu(fc1(avgpool(x)))))`` on ``x: (n, c, hw)``."""
        e, big, small = self.e, n * c * hw * self.e, n * c * self.e
        ks = [Kernel("se_pool", read=big, write=small)]
        ks += self.eager_fc(n, c, s, "se_fc1")
        ks += [Kernel("se_relu", read=n * s * e, write=n * s * e)]
        ks += self.eager_fc(n, s, c, "se_fc2")
        ks += [Kernel("se_sigmoid", read=small, write=small), Kernel("se_mul", read=big + small, write=big)]
        if self.train:
            ks += [
                Kernel("se_mul_bwd_x", read=big + small, write=big, phase="bwd"),  # g * gate
                Kernel("se_mul_bwd_gate", read=2 * big, write=big, phase="bwd"),  # g * x ...
                Kernel("se_sum", read=big, write=small, phase="bwd"),  # ... summed over H, W
                Kernel("se_sigmoid_bwd", read=2 * small, write=small, phase="bwd"),
                Kernel("se_relu_bwd", read=2 * n * s * e, write=n * s * e, phase="bwd"),
                Kernel("se_pool_bwd", read=small, write=big, phase="bwd"),
                Kernel("grad_accumulate", read=2 * big, write=big, phase="bwd"),  # pool + mul paths
            ]
        return ks

    # -- fused ---------------------------------------------------------------------------------
    def fused_conv_fwd(self, s: ConvShape, *, extra_read: int = 0, write_elems: Optional[int] = None,
                       op: str = "conv") -> List[Kernel]:
        """Fused conv: reads its input once, writes its output once.

        Inference: BN folded, ReLU in the epilogue (one launch). Training: writes the pre-BN output
        and partial statistics, then a finalize launch makes mean/invstd and updates running stats.
        """
        e = self.e
        i, o, w = s.in_elems * e, (s.out_elems if write_elems is None else write_elems) * e, s.weight_elems * e
        bnv = BN_CHANNEL_BYTES * s.c_out
        if self.train:
            return [Kernel(op, read=i + extra_read, write=o, weight=w, flops=2 * s.macs),
                    Kernel("bn_finalize", weight=bnv)]
        return [Kernel(op, read=i + extra_read, write=o, weight=w + bnv, flops=2 * s.macs)]

    def fused_conv_bwd(self, s: ConvShape, *, mask_reads: int = 0, reduce_mask_reads: Optional[int] = None,
                       dgrad: bool = True, dgrad_extra_read: int = 0,
                       reduce_in_epilogue: bool = True) -> List[Kernel]:
        """dgrad + wgrad forming ``dY`` on load from (incoming grad, saved pre-BN output, mask tensors).

        ``mask_reads``: extra bytes each consumer of the incoming gradient must read to form it (e.g.
        the residual output for the tail ReLU's mask); ``reduce_mask_reads``: the same for the BN
        reduction (default ``mask_reads``; 0 when another reduction in the same epilogue read it).
        ``reduce_in_epilogue``: the BN backward reductions ride in the epilogue of the producer of
        the incoming gradient (reading the pre-BN output there); otherwise they take their own pass.
        ``dgrad_extra_read``: bytes dgrad's epilogue reads besides (e.g. a gradient it accumulates).
        """
        e = self.e
        i, o, w = s.in_elems * e, s.out_elems * e, s.weight_elems * e
        g = o  # the incoming gradient has the output's shape
        red_mask = mask_reads if reduce_mask_reads is None else reduce_mask_reads
        ks = []
        if reduce_in_epilogue:
            ks.append(Kernel("bn_bwd_reduce", read=o + red_mask, launches=0, phase="bwd"))
        else:
            ks.append(Kernel("bn_bwd_reduce", read=g + o + red_mask, phase="bwd"))
        if dgrad:
            ks.append(Kernel("dgrad", read=g + o + mask_reads + dgrad_extra_read, write=i,
                             weight=w, flops=2 * s.macs, phase="bwd"))
        ks.append(Kernel("wgrad", read=g + o + mask_reads + i, weight=w, flops=2 * s.macs, phase="bwd"))
        return ks


def _sgd_kernel(params: int) -> Kernel:
    return Kernel("sgd_momentum", weight=_SGD_BYTES_PER_PARAM * params, launches=3, phase="opt")


def _loss_kernels(n: int, classes: int) -> List[Kernel]:
    b = n * classes * _LOSS_BYTES
    return [
        Kernel("log_softmax", read=b, write=b),
        Kernel("nll_loss", read=b, write=_LOSS_BYTES),
        Kernel("nll_loss_bwd", read=_LOSS_BYTES, write=b, phase="bwd"),
        Kernel("log_softmax_bwd", read=2 * b, write=b, phase="bwd"),
    ]


def _head_kernels(net: _Net, n: int, c: int, hw: int, classes: int) -> List[Kernel]:
    e = net.e
    ks = [Kernel("pool", read=n * c * hw * e, write=n * c * e)] + net.eager_fc(n, c, classes, "fc")
    if net.train:
        ks.append(Kernel("pool_bwd", read=n * c * e, write=n * c * hw * e, phase="bwd"))
    return ks


# ------------------------------------------------------------------------------------------------
# Whole model
# ------------------------------------------------------------------------------------------------
def _resolve_params(model):
    if isinstance(model, str):
        from regnet_kernels.models import get_model_params

        return model, get_model_params(model)
    return "custom", model


def model_traffic(
    model: Union[str, "object"],
    *,
    regime: str = "eager",
    mode: str = "infer",
    batch: int = 1,
    resolution: int = 224,
    dtype: str = "bf16",
    num_classes: int = 1000,
) -> Traffic:
    """Modelled bytes, FLOPs and launches of one forward (``infer``) or training step (``train``).

    Args:
        model: a zoo name (``"regnet_y_400mf"``) or a :class:`regnet_kernels.models.RegNetParams`.
        regime: ``"eager"``, ``"fused"`` or ``"block_fused"`` (see the module docstring).
        mode: ``"infer"`` (eval-mode forward) or ``"train"`` (forward + backward + SGD step).
        batch: images per step ``N``.
        resolution: square input size ``H = W``.
        dtype: activation/compute dtype, ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        num_classes: classifier outputs.

    Returns:
        A :class:`Traffic` with one :class:`Layer` per stem / conv / SE / residual add / head (one per
        block in the block-fused regime), for the whole batch.

    Example:
        >>> t = model_traffic("regnet_y_400mf", regime="fused", batch=256)
        >>> round(t.floor_ms(DEVICES["h100_sxm"]), 2)   # docs/performance.md: 1.39 ms
        1.39
    """
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {tuple(DTYPE_BYTES)}, got {dtype!r}")
    if batch < 1 or resolution < 1:
        raise ValueError(f"batch and resolution must be >= 1, got {batch}, {resolution}")
    name, params = _resolve_params(model)
    note = ""
    eff_regime = regime
    if regime == "block_fused" and mode == "train":
        eff_regime = "fused"
        note = ("training-mode BN needs batch statistics after every conv (a device-wide barrier), so a "
                "bottleneck cannot be one pass: block_fused training is modelled as fused")
    net = _Net(eff_regime, mode, DTYPE_BYTES[dtype])
    n = batch

    stem = ConvShape(n, 3, resolution, resolution, params.stem_width, kernel=3, stride=2)
    n_params = stem.weight_elems + 2 * stem.c_out
    if eff_regime == "eager":
        net.add("stem", "stem", net.eager_cba(stem, needs_dgrad=False))
    else:
        ks = net.fused_conv_fwd(stem)
        if net.train:
            ks += net.fused_conv_bwd(stem, dgrad=False)
        net.add("stem", "stem", ks)

    h = stem.h_out
    for b in params.blocks():
        a = ConvShape(n, b.width_in, h, h, b.bottleneck_width, kernel=1)
        bconv = ConvShape(n, b.bottleneck_width, h, h, b.bottleneck_width, kernel=3, stride=b.stride,
                          groups=b.bottleneck_width // b.group_width)
        ho = bconv.h_out
        c = ConvShape(n, b.bottleneck_width, ho, ho, b.width_out, kernel=1, relu=False)
        proj = ConvShape(n, b.width_in, h, h, b.width_out, kernel=1, stride=b.stride, relu=False) if b.has_proj \
            else None
        n_params += sum(s.weight_elems + 2 * s.c_out for s in (a, bconv, c) + ((proj,) if proj else ()))
        if b.se_width:
            n_params += 2 * b.bottleneck_width * b.se_width + b.se_width + b.bottleneck_width
        block_model = _block_eager if eff_regime == "eager" else _block_whole_infer \
            if eff_regime == "block_fused" else _block_fused_train if net.train else _block_fused_infer
        block_model(net, _BlockShapes(b, n, ho, a, bconv, c, proj))
        h = ho

    c_last = params.blocks()[-1].width_out
    n_params += c_last * num_classes + num_classes
    head = _head_kernels(net, n, c_last, h * h, num_classes)
    if net.train:
        head += _loss_kernels(n, num_classes)
    net.add("head", "head", head)
    if net.train:
        net.add("optimizer", "optimizer", [_sgd_kernel(n_params)])
    return Traffic(name, regime, mode, batch, resolution, dtype, net.layers, n_params, note)


class _BlockShapes(NamedTuple):
    """One bottleneck's convs (``proj`` None without a projection) and sizes, as the block models take them."""

    b: object  # models.BlockSpec
    n: int
    ho: int
    a: ConvShape
    bconv: ConvShape
    c: ConvShape
    proj: Optional[ConvShape]


def _sizes(net: _Net, s: _BlockShapes) -> tuple:
    """``(group, layer prefix, element bytes, block input bytes, block output bytes, conv b output bytes,
    pooled / gate elements)`` of one bottleneck."""
    e = net.e
    return (f"stage{s.b.stage}", s.b.name, e, s.a.in_elems * e, s.c.out_elems * e, s.bconv.out_elems * e,
            s.n * s.b.bottleneck_width)


def _block_eager(net: _Net, s: _BlockShapes) -> None:
    """Eager: conv, BN, ReLU as separate kernels per piece, SE, then add + ReLU (and their backward)."""
    b, n, ho, a, bconv, c, proj = s
    group, pre, e, x_b, s_b, big_b, vec = _sizes(net, s)
    net.add(f"{pre}.a", group, net.eager_cba(a))
    net.add(f"{pre}.b", group, net.eager_cba(bconv))
    if b.se_width:
        net.add(f"{pre}.se", group, net.eager_se(n, b.bottleneck_width, ho * ho, b.se_width))
    net.add(f"{pre}.c", group, net.eager_cba(c))
    if proj:
        net.add(f"{pre}.proj", group, net.eager_cba(proj))
    ks = net.eager_pointwise("add", c.out_elems, n_in=2) + net.eager_pointwise("relu", c.out_elems)
    if net.train:
        ks += [Kernel("relu_bwd", read=2 * s_b, write=s_b, phase="bwd"),
               Kernel("grad_accumulate", read=2 * x_b, write=x_b, phase="bwd")]  # shortcut + f
    net.add(f"{pre}.add", group, ks)


def _block_fused_infer(net: _Net, s: _BlockShapes) -> None:
    """Fused inference: BN + act in each conv's epilogue, SE pool in conv b's, gate + shortcut in conv c's."""
    b, n, ho, a, bconv, c, proj = s
    group, pre, e, x_b, s_b, big_b, vec = _sizes(net, s)
    net.add(f"{pre}.a", group, net.fused_conv_fwd(a))
    # SE pool partial sums (fp32) ride in conv b's epilogue
    net.add(f"{pre}.b", group, net.fused_conv_fwd(bconv) if not b.se_width else
            [Kernel("conv", read=a.out_elems * e, write=big_b + 4 * vec, weight=bconv.weight_elems * e
                    + BN_CHANNEL_BYTES * bconv.c_out, flops=2 * bconv.macs)])
    if b.se_width:
        net.add(f"{pre}.se", group, [_se_fc_kernel(n, b.bottleneck_width, b.se_width, e)])
    if proj:
        net.add(f"{pre}.proj", group, net.fused_conv_fwd(proj))
    # conv c: gate applied on load, BN + shortcut + ReLU in the epilogue (reads the shortcut)
    gate = 4 * vec if b.se_width else 0
    net.add(f"{pre}.c", group, net.fused_conv_fwd(c, extra_read=(s_b if proj else x_b) + gate))


def _block_fused_train(net: _Net, s: _BlockShapes) -> None:
    """Fused training: pre-BN outputs normalised on load, BN reductions in epilogues, the residual tail pass."""
    b, n, ho, a, bconv, c, proj = s
    group, pre, e, x_b, s_b, big_b, vec = _sizes(net, s)
    # forward: each conv writes its pre-BN output; consumers normalise on load
    net_a = net.fused_conv_fwd(a)
    net_b = net.fused_conv_fwd(bconv)
    net_c = net.fused_conv_fwd(c, extra_read=4 * vec if b.se_width else 0)
    # tail pass relu(BN(c) + shortcut): c's statistics are needed first
    tail = Kernel("tail", read=s_b + (s_b if proj else x_b), write=s_b)
    # backward: incoming gradient G_S; the tail ReLU mask needs the block output S
    mask = s_b
    c_bwd = net.fused_conv_bwd(c, mask_reads=mask, dgrad_extra_read=big_b if b.se_width else 0)
    # conv c's dgrad writes the gradient w.r.t. the gated b output; its epilogue reduces
    # the SE gate's gradient (reading b's output, above) and, without SE, b's BN reduction
    if b.se_width:
        b_bwd = net.fused_conv_bwd(bconv, reduce_in_epilogue=False)
    else:
        b_bwd = net.fused_conv_bwd(bconv)
    # identity shortcut: conv a's dgrad epilogue adds G_S * mask (reads G_S and S)
    a_bwd = net.fused_conv_bwd(a, dgrad_extra_read=0 if proj else 2 * s_b)
    net.add(f"{pre}.a", group, net_a + a_bwd)
    net.add(f"{pre}.b", group, net_b + b_bwd)
    if b.se_width:
        net.add(f"{pre}.se", group, [
            Kernel("se_pool", read=big_b, write=4 * vec),
            _se_fc_kernel(n, b.bottleneck_width, b.se_width, e),
            _se_fc_kernel(n, b.bottleneck_width, b.se_width, e, backward=True),
        ])
    net.add(f"{pre}.c", group, net_c + c_bwd)
    if proj:
        # proj's BN reduction shares the tail-gradient epilogue (reads P); its dgrad adds conv
        # a's input gradient in the epilogue (reads it, writes the block input's gradient)
        p_fwd = net.fused_conv_fwd(proj)
        p_bwd = net.fused_conv_bwd(proj, mask_reads=mask, reduce_mask_reads=0, dgrad_extra_read=x_b)
        net.add(f"{pre}.proj", group, p_fwd + p_bwd)
    net.add(f"{pre}.add", group, [tail])


def _block_whole_infer(net: _Net, s: _BlockShapes) -> None:
    """Whole-block inference: one pass per bottleneck (two around the SE gate)."""
    b, n, ho, a, bconv, c, proj = s
    group, pre, e, x_b, s_b, big_b, vec = _sizes(net, s)
    w_all = sum(s.weight_elems for s in (a, bconv, c) + ((proj,) if proj else ())) * e
    bnv = BN_CHANNEL_BYTES * sum(s.c_out for s in (a, bconv, c) + ((proj,) if proj else ()))
    flops = 2 * sum(s.macs for s in (a, bconv, c) + ((proj,) if proj else ()))
    if not b.se_width:
        net.add(pre, group, [Kernel("block", read=x_b, write=s_b, weight=w_all + bnv, flops=flops)])
    else:
        w1 = (a.weight_elems + bconv.weight_elems) * e + BN_CHANNEL_BYTES * (a.c_out + bconv.c_out)
        f1 = 2 * (a.macs + bconv.macs)
        net.add(pre, group, [
            Kernel("block_pass1", read=x_b, write=big_b + 4 * vec, weight=w1, flops=f1),
            _se_fc_kernel(n, b.bottleneck_width, b.se_width, e),
            Kernel("block_pass2", read=big_b + 4 * vec + x_b, write=s_b, weight=w_all + bnv - w1,
                   flops=flops - f1),
        ])


def _se_fc_kernel(n: int, c: int, s: int, e: int, backward: bool = False) -> Kernel:
    """The SE's two FCs + ReLU + sigmoid as one small kernel on fp32 pooled vectors."""
    w = (2 * c * s + s + c) * e
    if backward:  # reads the gate's gradient partials and the pooled input, writes the pooled grad
        return Kernel("se_fc_bwd", read=8 * n * c, write=4 * n * c, weight=2 * w, flops=8 * n * c * s, phase="bwd")
    return Kernel("se_fc", read=4 * n * c, write=4 * n * c, weight=w, flops=4 * n * c * s)


# ------------------------------------------------------------------------------------------------
# One standalone conv + BN + act op (the per-op benchmark)
# ------------------------------------------------------------------------------------------------
def conv_bn_act_traffic(shape: ConvShape, *, regime: str = "fused", mode: str = "infer",
                        dtype: str = "bf16") -> List[Kernel]:
    """Kernels of one *standalone* ``act(BN(conv(x)))`` op (no neighbour to fuse into).

    ``eager``: conv, BN, ReLU kernels (and their autograd backward in ``train``). ``fused``: the
    minimum for a standalone op. Inference: read ``x``, write the output, one kernel. Training
    forward: conv writes the pre-BN output (saved for backward), a finalize makes the statistics,
    and one normalise pass reads it and writes the output (the batch statistics are a barrier, and
    no consumer is fused to apply them on load). Backward: a reduction pass (grad, saved output),
    then dgrad and wgrad forming ``dY`` on load.

    Args:
        shape: geometry (batch included).
        regime: ``"eager"`` or ``"fused"``.
        mode: ``"infer"`` or ``"train"`` (forward + backward, no optimizer).
        dtype: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    Returns:
        The kernels; ``sum(k.bytes for k in ...)`` is the op's modelled traffic.
    """
    if regime not in ("eager", "fused"):
        raise ValueError(f"regime must be 'eager' or 'fused', got {regime!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    net = _Net(regime, mode, DTYPE_BYTES[dtype])
    if regime == "eager":
        return net.eager_cba(shape)
    e = net.e
    o = shape.out_elems * e
    ks = net.fused_conv_fwd(shape)
    if net.train:
        ks.append(Kernel("bn_act", read=o, write=o))
        ks += net.fused_conv_bwd(shape, reduce_in_epilogue=False)
    return ks


#: the floor table of docs/performance.md (torchvision models, 224x224, bf16, batch 256, H100 SXM spec
#: bandwidth), in ms: ``{model: {(regime, mode): ms}}``. The model above is checked against it.
PUBLISHED_FLOORS: Dict[str, Dict[Tuple[str, str], float]] = {
    "regnet_y_400mf": {("eager", "infer"): 4.27, ("fused", "infer"): 1.39, ("block_fused", "infer"): 0.80,
                       ("eager", "train"): 13.7, ("fused", "train"): 6.66},
    "regnet_y_1_6gf": {("eager", "infer"): 9.27, ("fused", "infer"): 2.87, ("block_fused", "infer"): 1.83,
                       ("eager", "train"): 29.6, ("fused", "train"): 14.4},
    "regnet_y_8gf": {("eager", "infer"): 22.7, ("fused", "infer"): 7.24, ("block_fused", "infer"): 5.24,
                     ("eager", "train"): 72.6, ("fused", "train"): 35.5},
    "regnet_x_3_2gf": {("eager", "infer"): 11.7, ("fused", "infer"): 4.02, ("block_fused", "infer"): 1.73,
                       ("eager", "train"): 35.8, ("fused", "train"): 19.0},
}
