"""Serve a RegNet: load, optimize, CUDA-graph the batch-1 path, export, and time every path per batch.

Steps (each printed):

1. **Load** a zoo model (``--model``, any name of ``regnet_kernels.models.list_models()``), randomly
   initialised or from a torchvision-layout checkpoint (``--weights``: a ``state_dict`` saved from
   ``torchvision.models.regnet_*``, e.g. torchvision's ImageNet weights file; our zoo has the same module
   names and shapes). Eval mode, on CUDA when present, else CPU.
2. **Optimize** it with ``regnet_kernels.optimize(model, backend=...)`` and check its outputs against the
   unmodified model (relative error printed; exit status 1 above ``--rtol``).
3. **CUDA graph** (CUDA only): the batch-1 forward of the optimized model is captured once with
   ``torch.cuda.CUDAGraph`` and replayed (a request of one image is launch-bound: a replay issues all
   kernels at once).
4. **Export** to ``--out``: ``model.pt2`` (``regnet_kernels.export.export``, dynamic batch, saved with
   ``torch.export.save`` and loaded back) and ``model.onnx`` (``regnet_kernels.export.onnx_export``:
   standard ONNX, no custom ops; needs ``onnx`` + ``onnxscript``). The reloaded program and, when
   ``onnxruntime`` is installed, the ONNX file are checked against the eager model too.
5. **Latency** per batch size (``--batches``) of every path: eager, optimized, optimized + CUDA graph
   (batch 1), the reloaded exported program, onnxruntime; median of ``--iters`` timed calls after
   warm-up, in milliseconds per batch, plus images/s of the optimized model.

Writes ``serve.json`` (every number) next to the exported files. On CPU the optimized model runs the
fused ops' eager reference (backend ``auto``), so CPU latencies show the export paths work, not the
kernels' speed.

Usage::

    python examples/serve.py                                     # regnet_y_400mf, 224 px, batches 1,8,32
    python examples/serve.py --model regnet_y_800mf --weights regnet_y_800mf-58fc7688.pth --dtype bf16
    python examples/serve.py --quick                             # CPU smoke run: 64 px, batches 1,2

Equivalent PyTorch: ``model.eval()`` and a timed ``model(x)`` per batch size; the fused path differs only
by the ``regnet_kernels.optimize`` call.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

import regnet_kernels as rk
from regnet_kernels import export as rk_export
from regnet_kernels.models import get_model, list_models

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_model(name: str, weights: Optional[str] = None, num_classes: int = 1000) -> nn.Module:
    """A zoo model in eval mode, with a torchvision-layout ``state_dict`` file loaded strictly if given."""
    model = get_model(name, num_classes=num_classes)
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict"):  # training checkpoints wrap the state_dict
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        model.load_state_dict(state, strict=True)
    return model.eval()


class CudaGraphRunner:
    """Replays one captured forward for a fixed input shape: ``runner(x)`` copies ``x`` into the static
    input, replays the graph and returns (a clone of) the static output.

    Args:
        model: an eval-mode module on CUDA; example: a CUDA tensor of the shape to serve, e.g. ``(1, 3, H, W)``.
        warmup: eager calls before capture (on a side stream), so that lazy work (Triton compilation,
            autotuning, cuDNN plans) happens outside the graph.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, warmup: int = 3):
        self.static_in = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(warmup):
                model(self.static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.static_out = model(self.static_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out.clone()


def time_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA synchronised around each call)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = torch.as_tensor(a).double().cpu(), ref.double().cpu()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="regnet_y_400mf", choices=list_models(), metavar="NAME",
                   help="zoo model name (default regnet_y_400mf)")
    p.add_argument("--weights", default=None, help="torchvision-layout state_dict file (.pth) to load")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--resolution", type=int, default=None, help="input size (default 224; 64 with --quick)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32; 1,2 with --quick)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per measurement (default 20; 3 with --quick)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="model and input dtype (fp16/bf16 on CUDA only; default fp32)")
    p.add_argument("--backend", default="auto", choices=["auto", "eager", "triton", "cuda"])
    p.add_argument("--out", default="serve-out", help="folder for model.pt2, model.onnx and serve.json")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                   help="export (and time, with onnxruntime) the ONNX file")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=True,
                   help="capture the batch-1 path as a CUDA graph (CUDA only)")
    p.add_argument("--rtol", type=float, default=None,
                   help="largest relative error of every path vs the eager model (default 1e-4 fp32, 2e-2 half)")
    p.add_argument("--quick", action="store_true", help="small and short: a CPU smoke run")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    return p


def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Everything in the module docstring; returns what ``serve.json`` holds."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    if dtype != torch.float32 and device.type != "cuda":
        raise SystemExit(f"--dtype {args.dtype} needs CUDA (CPU convolutions in half precision are slow or missing)")
    res = args.resolution or (64 if args.quick else 224)
    batches = [int(b) for b in (args.batches or ("1,2" if args.quick else "1,8,32")).split(",")]
    iters = args.iters or (3 if args.quick else 20)
    warmup = 1 if args.quick else 5
    rtol = args.rtol if args.rtol is not None else (1e-4 if dtype == torch.float32 else 2e-2)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"serve: {args.model} at {res}x{res}, {args.dtype}, batches {batches}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

    # 1-2. load, optimize, check
    eager = load_model(args.model, args.weights, args.num_classes).to(device=device, dtype=dtype)
    fused, report = rk.optimize(copy.deepcopy(eager), backend=args.backend, return_report=True)
    print(f"optimize: {report.counts()} (backend {args.backend!r})")
    gen = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, 3, res, res, generator=gen).to(device=device, dtype=dtype) for b in batches}
    probe = inputs[max(batches)]
    with torch.inference_mode():
        ref = eager(probe)
        errors: Dict[str, float] = {"optimized": rel_err(fused(probe), ref)}

    paths: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"eager": eager, "optimized": fused}
    files: Dict[str, Optional[str]] = {}

    # 3. CUDA graph of the batch-1 path
    graph_runner = None
    if device.type == "cuda" and args.cuda_graph and 1 in inputs:
        graph_runner = CudaGraphRunner(fused, inputs[1])
        with torch.inference_mode():
            errors["optimized+cuda_graph"] = rel_err(graph_runner(inputs[1]), eager(inputs[1]))

    # 4. export: torch.export (saved, loaded back) and ONNX
    t0 = time.perf_counter()
    ep = rk_export.export(fused, inputs[batches[0]])
    pt2 = out_dir / "model.pt2"
    torch.export.save(ep, pt2)
    loaded = torch.export.load(pt2).module()
    files["pt2"] = str(pt2)
    print(f"torch.export: {rk_export.fused_ops_in(ep)} fused-op nodes, dynamic batch, saved to {pt2} "
          f"({time.perf_counter() - t0:.1f} s)")
    with torch.inference_mode():
        errors["exported"] = rel_err(loaded(probe), ref)
    paths["exported"] = loaded

    files["onnx"] = None
    if args.onnx:
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            print("onnx: skipped (pip install onnx onnxscript)")
        else:
            t0 = time.perf_counter()
            onnx_path = out_dir / "model.onnx"
            # the ONNX file is fp32 whatever --dtype: CPU runtimes serve fp32
            onnx_model = copy.deepcopy(fused).float().cpu() if (dtype != torch.float32 or device.type != "cpu") \
                else fused
            # weights inside the file unless protobuf's 2 GB limit forbids it (regnet_y_128gf)
            big = sum(p.numel() for p in onnx_model.parameters()) * 4 > 1 << 30
            rk_export.onnx_export(onnx_model, inputs[batches[0]].float().cpu(), onnx_path, external_data=big)
            files["onnx"] = str(onnx_path)
            print(f"onnx: saved to {onnx_path} ({time.perf_counter() - t0:.1f} s)")
            session = _onnxruntime_session(onnx_path)
            if session is not None:
                name = session.get_inputs()[0].name

                def ort_run(x, _s=session, _n=name):
                    return torch.from_numpy(_s.run(None, {_n: x.float().cpu().numpy()})[0])

                errors["onnxruntime"] = rel_err(ort_run(probe), ref)
                paths["onnxruntime"] = ort_run

    # 5. latency per batch
    latency: Dict[str, Dict[int, float]] = {name: {} for name in paths}
    if graph_runner is not None:
        latency["optimized+cuda_graph"] = {}
    for b, x in inputs.items():
        for name, fn in paths.items():
            latency[name][b] = time_ms(lambda fn=fn, x=x: fn(x), device, iters, warmup)
        if graph_runner is not None and b == 1:
            latency["optimized+cuda_graph"][1] = time_ms(lambda x=x: graph_runner(x), device, iters, warmup)
    _print_table(latency, batches)

    ok = all(e <= rtol for e in errors.values())
    print("relative error vs eager: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
          + f" -> {'ok' if ok else 'FAILED'} (<= {rtol:.0e})")
    result = {
        "model": args.model, "resolution": res, "dtype": args.dtype, "device": str(device),
        "backend": args.backend, "fused": report.counts(), "batches": batches, "iters": iters,
        "latency_ms": {k: {str(b): v for b, v in d.items()} for k, d in latency.items()},
        "errors": errors, "rtol": rtol, "ok": ok, "files": files,
    }
    (out_dir / "serve.json").write_text(json.dumps(result, indent=2))
    files["json"] = str(out_dir / "serve.json")
    return result


def _onnxruntime_session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime: not installed, ONNX file not timed")
        return None
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _print_table(latency: Dict[str, Dict[int, float]], batches: List[int]) -> None:
    title = "latency (median ms per batch)"
    width = max([len(k) for k in latency] + [len(title), len("images/s (optimized)")]) + 2
    print(title.ljust(width) + "".join(f"{'batch ' + str(b):>12}" for b in batches))
    for name, row in latency.items():
        cells = "".join(f"{row[b]:>12.2f}" if b in row else f"{'-':>12}" for b in batches)
        print(name.ljust(width) + cells)
    if "optimized" in latency:
        print("images/s (optimized)".ljust(width)
              + "".join(f"{b * 1e3 / latency['optimized'][b]:>12.0f}" for b in batches))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return 0 if run(argv)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
