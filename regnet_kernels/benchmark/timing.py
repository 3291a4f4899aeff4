"""Timing that survives asynchronous GPUs and warm caches (the device notes' method).

* CUDA: ``torch.cuda.Event`` pairs around every repetition (no host clock), warm-up first, the
  median and the 10th/90th percentiles over many repetitions, inputs rotated among several buffers
  whose total exceeds twice the L2 cache, and an L2 flush (a write to a scratch buffer larger than
  L2, outside the timed region) when the rotation alone cannot exceed it. Peak memory is
  ``torch.cuda.max_memory_allocated`` after a reset, over the timed repetitions.
* CUDA graphs: optionally capture the step once and time its replays (for launch-bound small batches).
* CPU: ``time.perf_counter`` around each repetition, fewer repetitions.

Never time on zeros: :func:`rotating_inputs` draws fresh random data for every buffer.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch

__all__ = [
    "Timing",
    "l2_bytes",
    "rotation_count",
    "rotating_inputs",
    "time_fn",
    "time_cuda_graph",
    "count_cuda_kernels",
    "percentile",
    "time_segments",
]

#: Default L2 size when the device does not report one (H100/H200: 50 MB).
_DEFAULT_L2 = 50 * 2**20


@dataclass
class Timing:
    """One timed workload.

    Attributes:
        ms_median, ms_p10, ms_p90: per-repetition milliseconds.
        reps, warmup: repetitions timed and discarded.
        method: ``"cuda_events"``, ``"cuda_graph"`` or ``"perf_counter"``.
        rotate: number of input buffers cycled through.
        l2_flush: whether the L2 was flushed before each repetition.
        peak_mem_bytes: ``torch.cuda.max_memory_allocated`` over the timed repetitions (CUDA), else None.
        samples_ms: every repetition, in order.
    """

    ms_median: float
    ms_p10: float
    ms_p90: float
    reps: int
    warmup: int
    method: str
    rotate: int = 1
    l2_flush: bool = False
    peak_mem_bytes: Optional[int] = None
    samples_ms: Optional[List[float]] = None

    def to_dict(self, with_samples: bool = False) -> dict:
        d = asdict(self)
        if not with_samples:
            d.pop("samples_ms")
        return d


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated ``q``-th percentile (``0 <= q <= 100``) of ``values``."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of an empty sequence")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def l2_bytes(device: Optional[torch.device] = None) -> int:
    """L2 cache size of a CUDA device (50 MB when unknown or on CPU)."""
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return _DEFAULT_L2
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or _DEFAULT_L2)


def rotation_count(bytes_per_set: int, l2: int = _DEFAULT_L2, max_sets: int = 8) -> int:
    """How many input sets make the rotation exceed ``2 * l2`` (at least 2, at most ``max_sets``)."""
    if bytes_per_set <= 0:
        return max_sets
    return int(min(max_sets, max(2, math.ceil(2 * l2 / bytes_per_set))))


def rotating_inputs(make: Callable[[int], Any], bytes_per_set: int, device: Optional[torch.device] = None,
                    max_sets: int = 8) -> List[Any]:
    """``[make(0), make(1), ...]``, enough sets to exceed twice the L2 (capped at ``max_sets``).

    ``make(i)`` must draw fresh random data (seeded by ``i``), never zeros.
    """
    k = rotation_count(bytes_per_set, l2_bytes(device), max_sets)
    return [make(i) for i in range(k)]


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _summarise(samples: List[float], warmup: int, method: str, rotate: int, flush: bool,
               peak: Optional[int]) -> Timing:
    return Timing(ms_median=statistics.median(samples), ms_p10=percentile(samples, 10),
                  ms_p90=percentile(samples, 90), reps=len(samples), warmup=warmup, method=method,
                  rotate=rotate, l2_flush=flush, peak_mem_bytes=peak, samples_ms=samples)


def time_fn(fn: Callable[..., Any], inputs: Sequence[Any], *, device: Optional[torch.device] = None,
            warmup: int = 10, reps: int = 50, flush_l2: Optional[bool] = None,
            bytes_per_set: int = 0, progress: Optional[Callable[[int], None]] = None) -> Timing:
    """Time ``fn(*inputs[i % len(inputs)])``: warm-up, then ``reps`` repetitions.

    Args:
        fn: the step; called with one input set (a tuple is unpacked) per repetition.
        inputs: input sets to rotate through (see :func:`rotating_inputs`).
        device: where ``fn`` runs; CUDA devices are timed with events.
        warmup: untimed repetitions first (compilation, autotuning, cuDNN algorithm search).
        reps: timed repetitions.
        flush_l2: write a buffer larger than L2 before every repetition, outside the timed region.
            Default: only when the rotated inputs total less than twice the L2.
        bytes_per_set: bytes of one input set (decides the default of ``flush_l2``).
        progress: called with 1 after every repetition (e.g. a tqdm ``update``).

    Returns:
        :class:`Timing` (milliseconds; peak memory on CUDA).
    """
    if not inputs:
        raise ValueError("time_fn needs at least one input set")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")

    def call(i):
        args = inputs[i % len(inputs)]
        return fn(*args) if isinstance(args, tuple) else fn(args)

    cuda = _is_cuda(device)
    for i in range(warmup):
        call(i)
    if not cuda:
        samples = []
        for i in range(reps):
            t0 = time.perf_counter()
            call(i)
            samples.append((time.perf_counter() - t0) * 1e3)
            if progress:
                progress(1)
        return _summarise(samples, warmup, "perf_counter", len(inputs), False, None)

    l2 = l2_bytes(device)
    if flush_l2 is None:
        flush_l2 = bytes_per_set * len(inputs) < 2 * l2
    scratch = torch.empty(2 * l2 // 4, dtype=torch.int32, device=device) if flush_l2 else None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        if scratch is not None:
            scratch.fill_(i)  # evicts the previous repetition's lines; not timed
        starts[i].record()
        call(i)
        ends[i].record()
        if progress:
            progress(1)
    torch.cuda.synchronize(device)
    peak = int(torch.cuda.max_memory_allocated(device))
    samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return _summarise(samples, warmup, "cuda_events", len(inputs), bool(flush_l2), peak)


def time_cuda_graph(fn: Callable[[Any], Any], inputs: Sequence[torch.Tensor], *, device: torch.device,
                    warmup: int = 10, reps: int = 100) -> Timing:
    """Capture ``fn(static_input)`` in a CUDA graph and time its replays with events.

    Before each replay the next rotating input is copied into the static input and the L2 is
    flushed, both outside the timed region. ``fn`` must be capturable (no host syncs, static shapes).
    """
    if not _is_cuda(device):
        raise ValueError("CUDA graphs need a CUDA device")
    static = inputs[0].clone()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for _ in range(max(3, warmup)):
            fn(static)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(static)
    for _ in range(warmup):
        graph.replay()
    l2 = l2_bytes(device)
    scratch = torch.empty(2 * l2 // 4, dtype=torch.int32, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        static.copy_(inputs[i % len(inputs)])
        scratch.fill_(i)
        starts[i].record()
        graph.replay()
        ends[i].record()
    torch.cuda.synchronize(device)
    peak = int(torch.cuda.max_memory_allocated(device))
    samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return _summarise(samples, warmup, "cuda_graph", len(inputs), True, peak)


def count_cuda_kernels(fn: Callable[[], Any]) -> Optional[int]:
    """CUDA kernels launched by one call of ``fn``, counted with the torch profiler (None without CUDA).

    Memory copies and memsets are not kernels and are not counted. Call ``fn`` once beforehand so
    that one-time work (autotuning, cuDNN algorithm search) is not counted.
    """
    if not torch.cuda.is_available():
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    count = 0
    for evt in prof.events():
        dev_type = getattr(evt, "device_type", None)
        if dev_type is None or "CUDA" not in str(dev_type):
            continue
        name = evt.name.lower()
        if name.startswith(("memcpy", "memset")) or "memcpy" in name or "memset" in name:
            continue
        count += 1
    return count


def time_segments(segments: Sequence[tuple], x: torch.Tensor, *, device: Optional[torch.device] = None,
                  warmup: int = 3, reps: int = 10,
                  context: Optional[Callable[[], Any]] = None) -> dict:
    """Median milliseconds of each piece of a forward run in sequence (``segments = [(name, fn), ...]``).

    Each repetition feeds ``x`` through every ``fn`` in order, timing each with CUDA events (or
    ``perf_counter`` on CPU). ``context()`` (e.g. autocast + no_grad) wraps every repetition.
    """
    cuda = _is_cuda(device)
    ctx = context or contextlib.nullcontext
    samples: dict = {name: [] for name, _ in segments}
    for rep in range(warmup + reps):
        marks = []
        with ctx():
            h = x
            if cuda:
                ev = [torch.cuda.Event(enable_timing=True) for _ in range(len(segments) + 1)]
                ev[0].record()
                for i, (_, fn) in enumerate(segments):
                    h = fn(h)
                    ev[i + 1].record()
                torch.cuda.synchronize(device)
                marks = [ev[i].elapsed_time(ev[i + 1]) for i in range(len(segments))]
            else:
                for _, fn in segments:
                    t0 = time.perf_counter()
                    h = fn(h)
                    marks.append((time.perf_counter() - t0) * 1e3)
        if rep >= warmup:
            for (name, _), ms in zip(segments, marks):
                samples[name].append(ms)
    return {name: statistics.median(v) for name, v in samples.items()}
