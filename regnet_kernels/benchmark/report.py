"""``python -m regnet_kernels bench``: zoo table and eager timing on the available device.

(The full provider comparison lands with the benchmark issue; this prints what is measurable now.)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="zoo model to time (default: regnet_y_400mf on CPU, "
                   "regnet_y_1_6gf on GPU)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--quick", action="store_true")


def main(args: argparse.Namespace) -> int:
    from regnet_kernels import models

    print(f"{'model':<16} {'params':>13} {'GMACs':>8} {'acts (M)':>9}")
    for name in models.list_models():
        c = models.complexity(name)
        print(f"{name:<16} {c['params']:>13,} {c['macs'] / 1e9:>8.3f} {c['acts'] / 1e6:>9.2f}")
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    name = args.model or ("regnet_y_1_6gf" if cuda else "regnet_y_400mf")
    batch = args.batch or (64 if cuda else 2)
    res = 224 if cuda else (64 if args.quick else 224)
    model = models.get_model(name).to(dev).eval()
    x = torch.randn(batch, 3, res, res, device=dev)
    times = []
    with torch.no_grad():
        for i in range(3 + (5 if args.quick else 10)):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize()
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    print(f"\neager {name} inference on {dev}: batch {batch} at {res}x{res}, median {ms:.2f} ms "
          f"({batch / ms * 1e3:.1f} images/s) [measurement]")
    return 0
