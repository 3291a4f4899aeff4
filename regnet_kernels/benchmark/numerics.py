"""Numerics parity of every provider against eager at the same dtype and against a float64 reference.

The rule is docs/numerics.md's (flash-attention's): a provider passes when its error against float64 is at
most ``K`` times eager PyTorch's error at the same dtype against float64, plus a small floor. Errors
are relative norms ``||got - ref|| / ||ref||``. Inference compares logits; training compares the loss
and all parameter gradients as one vector after one forward + backward from identical weights (the
single worst parameter is reported too, not judged: near-zero gradients such as the SE FCs' have large
relative errors in every implementation).
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Iterable, Optional

import torch
from torch import nn

from regnet_kernels.benchmark import providers as P
from regnet_kernels.benchmark.memory import SavedTensorCounter

__all__ = ["K", "FLOOR", "rel_err", "passes", "check_model_numerics"]

#: A provider's error vs float64 may be at most K x eager's (same dtype) plus FLOOR[dtype].
K = 2.0
FLOOR: Dict[str, float] = {"fp32": 1e-6, "fp16": 1e-4, "bf16": 8e-4}


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``||got - ref|| / ||ref||`` in float64 (inf if ``got`` has a NaN or an inf)."""
    a = got.detach().to("cpu", torch.float64)
    b = ref.detach().to("cpu", torch.float64)
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def passes(err: float, eager_err: float, dtype: str) -> bool:
    """The tolerance rule: ``err <= K * eager_err + FLOOR[dtype]`` (NaN never passes)."""
    return err == err and err <= K * eager_err + FLOOR[dtype]


def _fp64_reference(base: nn.Module, wl: P.Workload, x: torch.Tensor, t: torch.Tensor):
    ref = copy.deepcopy(base).to(wl.device).double()
    ref.train(wl.mode == "train")
    x64 = x.double()
    if wl.mode == "infer":
        with torch.no_grad():
            return ref(x64), None
    out = ref(x64)
    loss = nn.functional.cross_entropy(out, t)
    loss.backward()
    return loss.detach(), {n: p.grad.detach() for n, p in ref.named_parameters() if p.grad is not None}


def check_model_numerics(
    providers: Iterable[str],
    *,
    model: str,
    mode: str,
    dtype: str,
    device: torch.device,
    batch: int,
    resolution: int,
    base: Optional[nn.Module] = None,
    allow_slow: Iterable[str] = (),
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, dict]:
    """Run every provider once on the same weights and input; errors vs eager and vs float64.

    Args:
        providers: names from :data:`regnet_kernels.benchmark.providers.PROVIDERS`.
        model, mode, dtype, device, batch, resolution: the (small) workload to check on.
        base: model from :func:`~regnet_kernels.benchmark.providers.base_model` (built if None).
        allow_slow: providers to run even where :func:`~providers.why_not` calls them slow.
        progress: called with each provider's name as it starts.

    Returns:
        ``{provider: {"status": "ok"|"skipped"|"failed", "skip_reason"|"error", "batch", "resolution",
        "err_vs_eager", "err_vs_fp64", "eager_err_vs_fp64", "pass", ...}}``. Training adds the loss and
        worst-gradient errors and ``saved_activation_bytes`` of the training forward (not under compile).
    """
    device = torch.device(device)
    allow_slow = set(allow_slow)
    if base is None:
        base = P.base_model(model, device)
    wl = P.Workload(model, mode, batch, resolution, dtype, device)
    x, t = wl.make_inputs(0)
    ref64, grads64 = _fp64_reference(base, wl, x, t)
    results: Dict[str, dict] = {}
    eager_out = eager_grads = None
    order = ["eager_nchw"] + [p for p in providers if p != "eager_nchw"]
    for name in order:
        if name != "eager_nchw" and eager_out is None:
            raise RuntimeError(f"eager_nchw, the numerics reference, did not run: {results.get('eager_nchw')}")
        if progress:
            progress(name)
        rec: dict = {"batch": batch, "resolution": resolution, "dtype": dtype, "mode": mode}
        reason = P.why_not(name, device, purpose="numerics", allow_slow=name in allow_slow, dtype=dtype)
        if reason is not None:
            results[name] = {**rec, "status": "skipped", "skip_reason": reason}
            continue
        try:
            built = P.build(name, wl, base, compile_mode=None)
            xin = x.contiguous(memory_format=P._LAYOUT_FORMAT[built.layout])
            rec["layout"] = built.layout
            rec["backend_resolved"] = built.backend_resolved
            with built.active():
                if mode == "infer":
                    out = built.forward(xin).float()
                    grads = None
                else:
                    counter = SavedTensorCounter(built.module) if name != "compile" else None
                    if counter is not None:
                        with counter:
                            out = built.loss_backward(xin, t).float()
                        rec["saved_activation_bytes"] = counter.bytes
                    else:
                        out = built.loss_backward(xin, t).float()
                    grads = built.grads()
        except Exception as e:  # a provider that crashes is a finding, not a reason to stop the report
            results[name] = {**rec, "status": "failed", "error": f"{type(e).__name__}: {e}"[:500]}
            continue
        if name == "eager_nchw":
            eager_out, eager_grads = out, grads
        rec["status"] = "ok"
        what = "logits" if mode == "infer" else "loss"
        rec["compared"] = what if mode == "infer" else "loss; all parameter gradients as one vector"
        rec["err_vs_eager"] = rel_err(out, eager_out)
        rec["err_vs_fp64"] = rel_err(out, ref64)
        rec["eager_err_vs_fp64"] = rel_err(eager_out, ref64)
        ok = passes(rec["err_vs_fp64"], rec["eager_err_vs_fp64"], dtype)
        if grads is not None:
            missing = sorted(set(grads64) - set(grads))
            if missing:
                rec["grad_missing"] = missing[:5]
                ok = False
            else:
                # all gradients as one vector: what the optimizer sees. Single near-zero gradients (SE FCs,
                # BN gammas feeding another BN) have large relative errors in any implementation; the
                # worst one is reported, not judged.
                names = sorted(grads64)
                flat = torch.cat([grads[n].reshape(-1).double().cpu() for n in names])
                flat_e = torch.cat([eager_grads[n].reshape(-1).double().cpu() for n in names])
                flat64 = torch.cat([grads64[n].reshape(-1).double().cpu() for n in names])
                rec["grad_err_vs_eager"] = rel_err(flat, flat_e)
                rec["grad_err_vs_fp64"] = rel_err(flat, flat64)
                rec["grad_eager_err_vs_fp64"] = rel_err(flat_e, flat64)
                ok = ok and passes(rec["grad_err_vs_fp64"], rec["grad_eager_err_vs_fp64"], dtype)
                worst = max(names, key=lambda n: rel_err(grads[n], grads64[n])
                            - K * rel_err(eager_grads[n], grads64[n]))
                rec["grad_worst_param"] = worst
                rec["grad_worst_err_vs_fp64"] = rel_err(grads[worst], grads64[worst])
                rec["grad_worst_eager_err_vs_fp64"] = rel_err(eager_grads[worst], grads64[worst])
        rec["pass"] = bool(ok)
        results[name] = rec
    return results
