"""``backend='auto'`` follows the committed measurements (regnet_kernels/auto_table.json)."""
import json
from pathlib import Path

from regnet_kernels import backends


def test_auto_table_names_its_measurement():
    table = json.loads((Path(backends.__file__).parent / "auto_table.json").read_text())
    src = table["_source"]
    assert "bench/results/" in src
    run = Path(__file__).resolve().parents[1] / src.split()[0]
    assert run.is_dir(), f"auto_table.json cites {run}, which is not committed"


def test_auto_order_is_what_the_measurement_says():
    # measured on an H200 (bench/results/nvidia-h200-2026-11-30): eager is faster than both fused backends
    for op in ("conv_bn_act", "squeeze_excite", "bottleneck"):
        assert backends.auto_order(op, "cuda") == ["eager"]
        assert backends.auto_order(op, "cpu") == ["eager"]
