"""``python -m regnet_kernels check``: a fast numerics self-check of the fused ops on this machine."""
from __future__ import annotations

import torch
from torch import nn

from regnet_kernels import backends


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def run_selfcheck(backend: str = "auto", verbose: bool = True) -> int:
    """Fused conv-BN-ReLU (train forward + backward, eval) vs eager at small sizes. Returns exit code."""
    from regnet_kernels.nn import FusedConvBNAct2d

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = backends.resolve("conv_bn_act", [torch.empty(1, device=dev)], backend)
    torch.manual_seed(0)
    failures = 0
    for (cin, cout, k, s, g) in ((3, 16, 3, 2, 1), (32, 32, 3, 2, 4), (24, 40, 1, 1, 1)):
        conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False).to(dev)
        bn = nn.BatchNorm2d(cout).to(dev)
        ref = nn.Sequential(conv, bn, nn.ReLU())
        import copy

        f = copy.deepcopy(ref)
        fused = FusedConvBNAct2d(f[0], f[1], "relu", names=("0", "1"), backend=resolved)
        x = torch.randn(2, cin, 9, 9, device=dev, requires_grad=True)
        x2 = x.detach().clone().requires_grad_(True)
        a, b = ref(x), fused(x2)
        a.square().sum().backward()
        b.square().sum().backward()
        errs = {"out": _rel(b, a), "dx": _rel(x2.grad, x.grad), "dw": _rel(f[0].weight.grad, conv.weight.grad),
                "running_var": _rel(f[1].running_var, bn.running_var)}
        ref.eval()
        fused.eval()
        errs["eval_out"] = _rel(fused(x2), ref(x))
        ok = all(e < 1e-4 for e in errs.values())
        failures += not ok
        if verbose:
            print(f"conv_bn_act {cin}->{cout} k{k} s{s} g{g} [{resolved} on {dev}]: "
                  + " ".join(f"{k}={v:.1e}" for k, v in errs.items()) + ("  OK" if ok else "  FAIL"))
    return 1 if failures else 0
