"""Cross-rank BatchNorm statistics for fused ``SyncBatchNorm`` (any torch.distributed backend, gloo included).

Forward: every rank computes its local per-channel ``(count, mean, M2)`` (M2 = sum of squared deviations
about the local mean), the ranks all-gather them and combine with the parallel-variance formula, so
large-mean activations keep full precision (a sum / sum-of-squares all-reduce would cancel). Backward:
the two BatchNorm reductions (sum of dz, sum of dz * xhat) and the counts are summed across ranks.

Custom op schemas cannot carry a ProcessGroup, so groups are registered here and passed to the ops as
small integers (``-1``: no synchronisation).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist

__all__ = ["register_group", "get_group", "sync_enabled", "sync_batch_stats", "sync_sums"]

_groups: list = []


def register_group(group) -> int:
    """An integer handle for ``group`` (None means the default WORLD group)."""
    if group is None:
        group = dist.group.WORLD
    for i, g in enumerate(_groups):
        if g is group:
            return i
    _groups.append(group)
    return len(_groups) - 1


def get_group(handle: int):
    """The process group behind ``handle``, or None for ``-1``."""
    if handle < 0:
        return None
    if handle >= len(_groups):
        raise RuntimeError(f"unknown process-group handle {handle}: groups must be registered in this process")
    return _groups[handle]


def sync_enabled(bn) -> bool:
    """Whether a (Sync)BatchNorm module must synchronise its batch statistics right now."""
    if not isinstance(bn, torch.nn.SyncBatchNorm) or not bn.training:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        return False
    group = bn.process_group if bn.process_group is not None else dist.group.WORLD
    return dist.get_world_size(group) > 1


def sync_batch_stats(count: int, mean: torch.Tensor, m2: torch.Tensor, group) -> Tuple[torch.Tensor, ...]:
    """Global ``(mean, var_biased, var_unbiased, total_count)`` from every rank's local statistics.

    Args:
        count: elements per channel on this rank (N * H * W).
        mean, m2: ``(C,)`` local mean and sum of squared deviations (fp32 or fp64).
        group: the process group.
    """
    acc = mean.dtype
    local = torch.stack([torch.full_like(mean, float(count)), mean, m2])  # (3, C)
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local.contiguous(), group=group)
    allstats = torch.stack(gathered)  # (world, 3, C)
    n_r, mean_r, m2_r = allstats[:, 0], allstats[:, 1], allstats[:, 2]
    n = n_r.sum(0)
    g_mean = (n_r * mean_r).sum(0) / n
    g_m2 = m2_r.sum(0) + (n_r * (mean_r - g_mean) ** 2).sum(0)
    var = g_m2 / n
    var_unb = g_m2 / (n - 1)
    return g_mean.to(acc), var.to(acc), var_unb.to(acc), n


def sync_sums(sum_dz: torch.Tensor, sum_dzx: torch.Tensor, count: int, group) -> Tuple[torch.Tensor, ...]:
    """All-reduced ``(sum_dz, sum_dz_xhat, total_count)``."""
    C = sum_dz.numel()
    packed = torch.cat([sum_dz, sum_dzx, sum_dz.new_full((1,), float(count))])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return packed[:C], packed[C:2 * C], packed[2 * C]


def local_m2(var_unb: torch.Tensor, count: int) -> torch.Tensor:
    """M2 from an unbiased variance (0 when a rank holds a single value per channel)."""
    if count <= 1:
        return torch.zeros_like(var_unb)
    return var_unb * (count - 1)
