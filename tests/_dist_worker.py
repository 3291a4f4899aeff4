"""Worker for tests/test_distributed.py: one rank of a 2-process gloo group on the CPU.

Runs one training step of a tiny fused RegNet on this rank's half of the batch and saves the gradients
(after DDP's all-reduce) and BatchNorm buffers for the parent test to compare with one process on the
whole batch.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn


def build(seed: int = 0):
    from regnet_kernels.models import RegNet, RegNetParams

    torch.manual_seed(seed)
    params = RegNetParams(depth=3, w_0=16, w_a=8, w_m=2.0, group_width=8, se_ratio=0.25, stem_width=16)
    return RegNet(params, num_classes=10)


def batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)


def main(rank: int, world: int, init_file: str, out_dir: str, mode: str) -> None:
    import regnet_kernels as rk

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = build()
    if mode == "sync_then_optimize":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        rk.optimize(model, backend="triton")
    elif mode == "optimize_then_sync":
        rk.optimize(model, backend="triton")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif mode in ("fsdp", "ddp"):
        rk.optimize(model, backend="triton")
    else:
        raise ValueError(mode)
    x, y = batch()
    half = x.shape[0] // world
    xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
    if mode == "fsdp":
        # FSDP2 (fully_shard) runs on the CPU with gloo; FSDP1 insists on an accelerator
        from torch.distributed.fsdp import fully_shard

        for block in [m for m in model.modules() if type(m).__name__ == "FusedBottleneck"]:
            fully_shard(block)
        wrapped = fully_shard(model)
        opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
        loss = nn.functional.cross_entropy(wrapped(xs), ys)
        loss.backward()
        opt.step()
        torch.save({"loss": loss.detach()}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
        return
    if mode == "ddp":
        # plain DDP over a fused model (BatchNorm statistics stay per rank)
        ddp = nn.parallel.DistributedDataParallel(model)
        nn.functional.cross_entropy(ddp(xs), ys).backward()
    else:
        # DDP refuses SyncBatchNorm modules on the CPU ("SyncBatchNorm layers only work with GPU modules",
        # a check in DDP itself), so average the gradients by hand as DDP would
        nn.functional.cross_entropy(model(xs), ys).backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
    result = {
        "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "sync_modules": sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()),
        "state_keys": list(model.state_dict()),
    }
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    rank, world, init_file, out_dir, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    main(rank, world, init_file, out_dir, mode)
    sys.exit(0)
