"""Devices, cost records and conv geometry of the traffic model (:mod:`regnet_kernels.benchmark.roofline`).

Plain data: the GPUs' ceilings (:class:`DeviceSpec`), one kernel's cost (:class:`Kernel`), a layer's and a
whole workload's kernels (:class:`Layer`, :class:`Traffic`) and a conv's geometry (:class:`ConvShape`).
The counting rules that fill them live in :mod:`~regnet_kernels.benchmark.roofline`, which re-exports
every name here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

__all__ = [
    "DeviceSpec",
    "DEVICES",
    "match_device",
    "Kernel",
    "Layer",
    "Traffic",
    "ConvShape",
    "conv_out",
]


# ------------------------------------------------------------------------------------------------
# Devices
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceSpec:
    """Datasheet (and measured, where known) ceilings of one GPU, dense, no sparsity.

    Attributes:
        key: short identifier (``"h100_sxm"``).
        name: display name.
        hbm_tbps: HBM bandwidth from the datasheet, TB/s (1e12 bytes/s).
        hbm_tbps_measured: device-to-device copy bandwidth measured on this project's machines
            (docs/performance.md), TB/s, or None.
        tensor_tflops: dense bf16/fp16 tensor-core rate, TFLOP/s.
        tf32_tflops: dense TF32 tensor-core rate (what cuDNN uses for fp32 convs by default).
        fp32_tflops: non-tensor fp32 rate.
        sms: streaming multiprocessors.
        l2_bytes: L2 cache size.
    """

    key: str
    name: str
    hbm_tbps: float
    hbm_tbps_measured: Optional[float]
    tensor_tflops: float
    tf32_tflops: float
    fp32_tflops: float
    sms: int
    l2_bytes: int

    def bandwidth(self, measured: bool = False) -> float:
        """HBM bytes/s: the datasheet figure, or the measured copy bandwidth when asked and known."""
        tbps = self.hbm_tbps_measured if (measured and self.hbm_tbps_measured) else self.hbm_tbps
        return tbps * 1e12

    def peak_flops(self, dtype: str) -> float:
        """FLOP/s of the unit a conv in ``dtype`` runs on (fp32: TF32 tensor cores, torch's default)."""
        return (self.tf32_tflops if dtype == "fp32" else self.tensor_tflops) * 1e12

    @property
    def ridge_flop_per_byte(self) -> float:
        """bf16 FLOP/byte above which a kernel is compute-bound (datasheet figures)."""
        return self.tensor_tflops / self.hbm_tbps


#: the hardware table of docs/performance.md (TF32 = half the bf16 dense rate, from the same datasheets).
DEVICES: Dict[str, DeviceSpec] = {
    "h100_sxm": DeviceSpec("h100_sxm", "H100 SXM", 3.35, 3.0, 989.0, 494.5, 67.0, 132, 50 * 2**20),
    "h100_pcie": DeviceSpec("h100_pcie", "H100 PCIe", 2.0, None, 756.0, 378.0, 51.0, 114, 50 * 2**20),
    "h200": DeviceSpec("h200", "H200 SXM", 4.8, 4.3, 989.0, 494.5, 67.0, 132, 50 * 2**20),
}


def match_device(gpu_name: Optional[str]) -> Optional[DeviceSpec]:
    """The :data:`DEVICES` entry for a CUDA device name (``torch.cuda.get_device_name()``), or None.

    ``"NVIDIA H100 80GB HBM3"`` is the SXM part, ``"NVIDIA H100 PCIe"`` the PCIe one, anything with
    ``H200`` the H200. Other GPUs (H100 NVL included: its figures differ) get None: no floor.
    """
    if not gpu_name:
        return None
    n = gpu_name.upper()
    if "H200" in n:
        return DEVICES["h200"]
    if "H100" in n:
        if "PCIE" in n:
            return DEVICES["h100_pcie"]
        if "NVL" in n:
            return None
        return DEVICES["h100_sxm"]
    return None


# ------------------------------------------------------------------------------------------------
# Cost records
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kernel:
    """One kernel (or one fused epilogue: ``launches=0``) and what it moves.

    Attributes:
        op: what it does (``"conv"``, ``"bn"``, ``"relu"``, ``"dgrad"``, ``"tail"``...).
        read: activation bytes read.
        write: activation bytes written.
        weight: parameter-sized bytes read or written (weights, weight gradients, BN vectors).
        flops: floating-point operations (2 x MACs for convs and FCs, else 0).
        launches: kernel launches (0 for work riding in another kernel's epilogue).
        phase: ``"fwd"``, ``"bwd"`` or ``"opt"``.
    """

    op: str
    read: int = 0
    write: int = 0
    weight: int = 0
    flops: int = 0
    launches: int = 1
    phase: str = "fwd"

    @property
    def bytes(self) -> int:
        """All bytes moved through HBM."""
        return self.read + self.write + self.weight

    def floor_s(self, device: DeviceSpec, dtype: str, measured_bw: bool = False) -> float:
        """Seconds this kernel needs at least: ``max(bytes / bandwidth, flops / peak)``."""
        return max(self.bytes / device.bandwidth(measured_bw), self.flops / device.peak_flops(dtype))


class _KernelTotals:
    """Bytes, FLOPs and launches summed over ``self.kernels``."""

    kernels: List[Kernel]

    @property
    def bytes(self) -> int:
        return sum(k.bytes for k in self.kernels)

    @property
    def flops(self) -> int:
        return sum(k.flops for k in self.kernels)

    @property
    def launches(self) -> int:
        return sum(k.launches for k in self.kernels)


@dataclass
class Layer(_KernelTotals):
    """The kernels of one layer (``stem``, ``block2-0.b``, ``block2-0.se``, ``head``...).

    Attributes:
        name: layer name, torchvision's block names with the op inside the block after a dot.
        group: ``"stem"``, ``"stage1"`` .. ``"stageS"``, ``"head"`` or ``"optimizer"``.
        kernels: what runs for it, forward and (in training) backward.
    """

    name: str
    group: str
    kernels: List[Kernel] = field(default_factory=list)


@dataclass
class Traffic(_KernelTotals):
    """Modelled traffic of one (model, regime, mode, batch, resolution, dtype).

    Attributes:
        model: model name (or ``"custom"``).
        regime: one of :data:`REGIMES`.
        mode: ``"infer"`` (one forward) or ``"train"`` (forward + backward + SGD step).
        batch, resolution, dtype: the workload.
        layers: per-layer kernels, in forward order.
        params: parameter count (from the specs).
        note: caveat for this regime and mode, if any.
    """

    model: str
    regime: str
    mode: str
    batch: int
    resolution: int
    dtype: str
    layers: List[Layer]
    params: int
    note: str = ""

    @property
    def kernels(self) -> List[Kernel]:
        return [k for layer in self.layers for k in layer.kernels]

    def launches_by_phase(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for k in self.kernels:
            out[k.phase] = out.get(k.phase, 0) + k.launches
        return out

    def bytes_by_op(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for k in self.kernels:
            out[k.op] = out.get(k.op, 0) + k.bytes
        return out

    def by_group(self) -> Dict[str, int]:
        """Bytes per layer group (stem, stage1..S, head, optimizer), in forward order."""
        out: Dict[str, int] = {}
        for layer in self.layers:
            out[layer.group] = out.get(layer.group, 0) + layer.bytes
        return out

    def floor_ms(self, device: DeviceSpec, measured_bw: bool = False) -> float:
        """Sum over kernels of ``max(bytes / bandwidth, flops / peak)``, in milliseconds."""
        return 1e3 * sum(k.floor_s(device, self.dtype, measured_bw) for k in self.kernels)

    def group_floor_ms(self, device: DeviceSpec) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for layer in self.layers:
            t = 1e3 * sum(k.floor_s(device, self.dtype) for k in layer.kernels)
            out[layer.group] = out.get(layer.group, 0.0) + t
        return out

    def summary(self, devices: Sequence[DeviceSpec] = ()) -> dict:
        """JSON-ready totals, per-group bytes and the floor on each device."""
        return {
            "model": self.model,
            "regime": self.regime,
            "mode": self.mode,
            "batch": self.batch,
            "resolution": self.resolution,
            "dtype": self.dtype,
            "bytes": self.bytes,
            "flops": self.flops,
            "launches": self.launches,
            "launches_by_phase": self.launches_by_phase(),
            "params": self.params,
            "bytes_by_group": self.by_group(),
            "floor_ms": {d.key: self.floor_ms(d) for d in devices},
            "floor_ms_measured_bw": {d.key: self.floor_ms(d, measured_bw=True) for d in devices},
            "note": self.note,
        }


# ------------------------------------------------------------------------------------------------
# One conv (+ BN + act) in its network context
# ------------------------------------------------------------------------------------------------
def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a conv with ``padding = kernel // 2`` (RegNet's "same" padding)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


@dataclass(frozen=True)
class ConvShape:
    """A conv + BN (+ ReLU) layer's geometry.

    Attributes:
        n, c_in, h, w: input ``(N, C_in, H, W)``.
        c_out, kernel, stride, groups: the conv's.
        relu: whether a ReLU follows the BN.
    """

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    relu: bool = True

    @property
    def h_out(self) -> int:
        return conv_out(self.h, self.kernel, self.stride)

    @property
    def w_out(self) -> int:
        return conv_out(self.w, self.kernel, self.stride)

    @property
    def in_elems(self) -> int:
        return self.n * self.c_in * self.h * self.w

    @property
    def out_elems(self) -> int:
        return self.n * self.c_out * self.h_out * self.w_out

    @property
    def weight_elems(self) -> int:
        return self.c_out * (self.c_in // self.groups) * self.kernel * self.kernel

    @property
    def macs(self) -> int:
        return self.out_elems * (self.c_in // self.groups) * self.kernel * self.kernel
