"""The launch model held against a (synthetic) measured profile: alignment, per-kernel ratios, refusal."""
import pytest

from regnet_kernels.benchmark import launch_model as LM
from regnet_kernels.benchmark.model_check import compare, format_comparison
from regnet_kernels.benchmark.plan import plan


def _profile(scale: float, drop_first: bool = False) -> dict:
    p = plan("regnet_y_400mf", "infer", batch=2, resolution=32, dtype="bf16")
    launches = [["void at::native::copy_kernel", 1.0]]  # torch's own kernels are ignored
    launches += [[la.kernel, scale * LM.predict_s(la, None, "h200") * 1e6] for la in p.launches]
    if drop_first:
        launches = launches[:1] + launches[2:]
    return {"infer": {"model": "regnet_y_400mf", "mode": "infer", "batch": 2, "resolution": 32, "dtype": "bf16",
                      "providers": {"triton": {"status": "ok", "first_step_launches": launches}}}}


def test_model_check_lines_up_and_measures_the_ratio():
    res = compare(_profile(3.0), "infer")
    assert res["status"] == "ok"
    assert res["measured_ms"] == pytest.approx(3 * res["model_ms"], rel=1e-3)
    assert all(k["ratio"] == pytest.approx(3.0, rel=1e-2) for k in res["kernels"].values())
    assert "conv_fwd_kernel" in res["kernels"] and format_comparison(res)[0].startswith("model (h200)")


def test_model_check_refuses_sequences_that_do_not_line_up():
    res = compare(_profile(1.0, drop_first=True), "infer")
    assert res["status"] == "misaligned" and res["planned"] == res["measured"] + 1
