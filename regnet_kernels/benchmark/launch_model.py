"""A per-launch performance *model* (not a measurement) of the planned Triton launches.

For one launch of the plan (:mod:`regnet_kernels.benchmark.plan`) with its compiled facts
(:mod:`regnet_kernels.benchmark.aot`: registers, shared memory, tensor-core instructions):

    time = max(bytes / achievable HBM bandwidth, executed FLOPs / achievable rate) x stretch + overhead

- bytes: each distinct tensor argument once (what the launch must move); executed FLOPs: the tensor
  cores' work including the padding of block-diagonally packed groups.
- rates: achievable HBM copy bandwidth (H100 SXM 3.0 TB/s of 3.35, H200 4.3 of 4.8, from
  :data:`regnet_kernels.benchmark.roofline.DEVICES`); tensor cores at :data:`TENSOR_EFFICIENCY` of the
  dense bf16 peak with ``wgmma`` (~790 of 989 TFLOP/s), half of that when the dot compiled to the older
  ``mma`` (no wgmma on sm_90); fp32 FMA dots at the same fraction of the 67 TFLOP/s FMA peak.
- stretch (wave quantisation): ``slots = SMs x resident programs per SM`` at the compiled occupancy.
  A grid of at least one full wave runs ``ceil(P / slots)`` waves, so ``stretch = waves x slots / P``;
  a smaller grid keeps only ``min(P, SMs)`` SMs busy: ``stretch = SMs / min(P, SMs)``.
- overhead: :data:`LAUNCH_OVERHEAD_S` per launch (host launch, ramp-up and tail of a short kernel).

The model ignores L2 reuse, overlap between launches and latency-bound tails beyond the waves; the GPU
run holds it against measured kernel times.
"""
from __future__ import annotations

from typing import Dict, Optional

from regnet_kernels.benchmark.roofline import DEVICES, DeviceSpec

__all__ = ["MODEL_DEVICES", "TENSOR_EFFICIENCY", "LAUNCH_OVERHEAD_S", "occupancy", "predict_s"]

#: Devices the model predicts for (keys of :data:`roofline.DEVICES`).
MODEL_DEVICES = ("h100_sxm", "h200")
TENSOR_EFFICIENCY = 0.8
MMA_SYNC_FACTOR = 0.5  # legacy mma.sync on Hopper reaches about half the wgmma rate
LAUNCH_OVERHEAD_S = 3e-6

#: Per-SM limits: registers, shared memory (bytes usable by blocks), warps, resident blocks.
_SM_LIMITS = {90: (65536, 227 * 1024, 64, 32), 80: (65536, 163 * 1024, 64, 32)}


def occupancy(regs: int, smem: int, num_warps: int, arch: int = 90) -> int:
    """Resident warps per SM for a kernel using ``regs`` registers per thread and ``smem`` bytes of shared
    memory per block (registers are allocated per warp in units of 256; 1 KB of shared memory is
    reserved per block)."""
    max_regs, max_smem, max_warps, max_blocks = _SM_LIMITS.get(arch, _SM_LIMITS[90])
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    # the register file is split over 4 sub-partitions: whole warps per sub-partition
    warps_by_regs = (max_regs // 4 // per_warp) * 4
    blocks = min(max_blocks, max_warps // num_warps, warps_by_regs // num_warps)
    if smem:
        blocks = min(blocks, max_smem // (smem + 1024))
    return max(0, blocks) * num_warps


def _rate(dev: DeviceSpec, flops_kind: str) -> float:
    if flops_kind == "wgmma":
        return TENSOR_EFFICIENCY * dev.tensor_tflops * 1e12
    if flops_kind == "mma":
        return MMA_SYNC_FACTOR * TENSOR_EFFICIENCY * dev.tensor_tflops * 1e12
    return TENSOR_EFFICIENCY * dev.fp32_tflops * 1e12


def predict_s(launch, compiled: Optional[dict], device: str = "h100_sxm") -> float:
    """Modelled seconds of one planned launch (``launch``: a :class:`plan.Launch`; ``compiled``: the aot
    record of its specialisation, or None when unknown: one resident program per SM is assumed)."""
    dev = DEVICES[device]
    kind = "fma"
    if compiled:
        kind = "wgmma" if compiled.get("wgmma") else ("mma" if compiled.get("mma") else "fma")
    t_mem = launch.bytes / dev.bandwidth(measured=True)
    t_cmp = launch.mma_flops / _rate(dev, kind) if launch.mma_flops else 0.0
    warps = (compiled or {}).get("occupancy_warps_per_sm") or launch.num_warps
    per_sm = max(1, warps // max(1, launch.num_warps))
    slots = dev.sms * per_sm
    p = max(1, launch.programs)
    if p >= slots:
        stretch = (-(-p // slots)) * slots / p
    else:
        stretch = dev.sms / min(p, dev.sms)
    return max(t_mem, t_cmp) * stretch + LAUNCH_OVERHEAD_S


def bound(launch, compiled: Optional[dict], device: str = "h100_sxm") -> str:
    """``"memory"`` or ``"compute"``: which term of the max wins."""
    dev = DEVICES[device]
    kind = "fma"
    if compiled:
        kind = "wgmma" if compiled.get("wgmma") else ("mma" if compiled.get("mma") else "fma")
    t_cmp = launch.mma_flops / _rate(dev, kind) if launch.mma_flops else 0.0
    return "compute" if t_cmp > launch.bytes / dev.bandwidth(measured=True) else "memory"


def eager_floor_ms(model: str, mode: str, batch: int, resolution: int, dtype: str) -> Dict[str, dict]:
    """The traffic floors of :func:`roofline.model_traffic` (eager and fused regimes), per device, in ms,
    at achievable bandwidth (the same bandwidth the launch model uses)."""
    from regnet_kernels.benchmark.roofline import model_traffic

    out: Dict[str, dict] = {}
    for regime in ("eager", "fused"):
        t = model_traffic(model, regime=regime, mode=mode, batch=batch, resolution=resolution, dtype=dtype)
        out[regime] = {d: t.floor_ms(DEVICES[d], measured_bw=True) for d in MODEL_DEVICES}
    return out
