"""Helpers shared by the bench/ suites (imported by name; bench/ is on sys.path under pytest)."""
from __future__ import annotations

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:  # conftest.py already did this; repeated for a direct import
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


def option(config, name: str, default=None):
    """A bench option, or ``default`` where the option was never registered (another rootdir)."""
    try:
        return config.getoption(name)
    except ValueError:
        return default


def bench_models(config) -> list:
    from regnet_kernels.benchmark.shapes import BENCH_MODELS

    value = option(config, "--bench-models")
    return [m.strip() for m in value.split(",") if m.strip()] if value else list(BENCH_MODELS)


def sync() -> None:
    """Wait for the GPU: pytest-benchmark reads a host clock, so each round ends synchronised."""
    if HAS_CUDA:
        torch.cuda.synchronize()


def run_pedantic(benchmark, fn, inputs, *, rounds: int, warmup_rounds: int) -> None:
    """Time ``fn`` over rotating ``inputs`` (the input set is picked in the untimed setup)."""
    state = {"i": 0}

    def setup():
        args = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return tuple(args), {}

    def timed(*args):
        fn(*args)
        sync()

    benchmark.pedantic(timed, setup=setup, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)


def median_s(benchmark):
    """pytest-benchmark's median in seconds, or None when benchmarking is disabled."""
    stats = getattr(benchmark, "stats", None)
    inner = getattr(stats, "stats", None) if stats is not None else None
    return getattr(inner, "median", None)
