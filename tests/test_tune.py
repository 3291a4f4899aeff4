"""The tuned-config table (kernels/triton/config.py) and the tuner (benchmark/tune.py) on CPU: the lookup, a
dry run of the sweep on tiny convs under the interpreter, and the rejection of a differing candidate."""
import json
import re

import pytest
import torch

from regnet_kernels.benchmark import tune
from regnet_kernels.benchmark.plan import plan
from regnet_kernels.kernels.triton import config

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the Triton interpreter (conftest sets it)
GPU = config.Target.gpu(90)
INTERP = config.Target(True, 4, 0)
KEY_RE = re.compile(r"^conv_(fwd|dgrad|wgrad)\|sm\d+\|M=\d+\|(c_out|c_in)=\d+\|cin_g=\d+\|cout_g=\d+\|kh=\d+\|kw=\d+"
                    r"\|elem_bytes=\d+$")


@pytest.fixture
def table():
    """A temporary tuned table (the committed one is restored afterwards)."""
    prev = config.set_tuned_table({})
    yield config._TUNED
    config.set_tuned_table(prev)


def test_committed_table_is_valid():
    doc = json.loads(config.TUNED_PATH.read_text())
    assert isinstance(doc["_source"], str) and doc["_source"]
    assert isinstance(doc["entries"], dict)
    for key, fields in doc["entries"].items():
        assert KEY_RE.match(key), key
        assert fields and all(isinstance(v, int) for v in fields.values()), (key, fields)


def test_lookup_gpu_only_and_seen_by_the_plan(table):
    args = dict(M=50_000, c_out=224, cin_g=8, cout_g=8, kh=3, kw=3, elem_bytes=2)
    rule_gpu = config.conv_fwd_config(*args.values(), GPU)
    rule_int = config.conv_fwd_config(*args.values(), INTERP)
    key = config.tuned_key("conv_fwd", 90, args)
    assert key == "conv_fwd|sm90|M=65536|c_out=224|cin_g=8|cout_g=8|kh=3|kw=3|elem_bytes=2"
    table[key] = {"block_m": 32, "num_warps": 2}
    assert config.conv_fwd_config(*args.values(), GPU) == rule_gpu._replace(block_m=32, num_warps=2)
    # the same bucket (next_pow2(M)) shares the entry; another arch or the interpreter does not
    assert config.conv_fwd_config(40_000, *list(args.values())[1:], GPU).block_m == 32
    assert config.conv_fwd_config(*args.values(), config.Target.gpu(80)).block_m != 32
    assert config.conv_fwd_config(*args.values(), INTERP) == rule_int
    # the weight gradient re-derives its split of the pixel reduction
    wkey = config.tuned_key("conv_wgrad", 90, args)
    table[wkey] = {"split": 3, "block_m": 64}
    w = config.conv_wgrad_config(*args.values(), GPU)
    assert (w.block_m, w.split) == (64, 3) and w.m_per_split * w.split >= 50_000 and w.m_per_split % 64 == 0
    # the ahead-of-time plan reaches the table through the launchers
    base = plan("regnet_y_400mf", "infer", batch=1, resolution=64, dtype="bf16", arch=90)
    la = next(la for la in base.launches if la.kernel == "conv_fwd_kernel" and la.constexprs["KH"] == 3)
    v = dict(la.scalars, **{k: x for k, x in la.constexprs.items() if isinstance(x, int)})
    key = config.tuned_key("conv_fwd", 90, dict(M=v["N"] * v["HO"] * v["WO"], c_out=v["C_OUT"], cin_g=v["CIN_G"],
                                                cout_g=v["COUT_G"], kh=3, kw=3, elem_bytes=2))
    table[key] = {"block_m": 32, "block_n": 32, "num_warps": 2}
    tuned = plan("regnet_y_400mf", "infer", batch=1, resolution=64, dtype="bf16", arch=90)
    changed = [(a, b) for a, b in zip(base.launches, tuned.launches) if a.constexprs != b.constexprs]
    assert changed and all(b.constexprs["BLOCK_M"] == 32 and b.constexprs["BLOCK_N"] == 32 and b.num_warps == 2
                           for _, b in changed)
    assert any(a is la for a, _ in changed)


def _fake_bench(fast):
    """Deterministic 'timings': 1 ms for configs matching ``fast``, 2 ms otherwise."""
    state = {}

    def bench(fn, device, reps=3):
        return 1.0 if all(config._OVERRIDE[state["kind"]].get(k) == v for k, v in fast.items()) else 2.0

    return bench, state


SHAPES = [
    tune.ConvShape("fwd", "fp32", 2, 16, 5, 5, 32, 3, 3, 1, 1, 2, ("PRE_AFFINE", "PRE_ACT", "STATS")),
    tune.ConvShape("dgrad", "fp32", 1, 16, 6, 6, 24, 3, 3, 2, 1, 2, ("HAS_ACC",)),
    tune.ConvShape("wgrad", "fp32", 2, 16, 6, 6, 16, 1, 1, 1, 0, 2, ("PRE_GATE",)),
]


def _second_candidate(runner):
    return tune.candidates(runner.kind, runner.default(), runner.config_args(), 4)[1]


def test_dry_run_tunes_tiny_shapes_into_a_valid_table(monkeypatch, table):
    winners = {}
    for s in SHAPES:
        fast = _second_candidate(tune.Runner(s, DEVICE))
        bench, state = _fake_bench(fast)
        state["kind"] = f"conv_{s.kind}"
        monkeypatch.setattr(tune, "bench_ms", bench)
        t = tune.tune([s], DEVICE, arch=90, limit=4)
        (rec,) = t["shapes"]
        assert [c["status"] for c in rec["candidates"]] == ["ok"] * len(rec["candidates"]), rec
        assert rec["candidates"][0]["config"] == rec["default"] and len(rec["candidates"]) == 4
        (key, fields), = t["entries"].items()
        assert KEY_RE.match(key) and key == rec["key"] and fields == rec["winner"]
        assert fields == fast
        winners[s] = (key, fields)
    json.dumps(t)  # the table is JSON
    # a table with these entries changes the GPU config of exactly these shapes
    for s, (key, fields) in winners.items():
        table[key] = fields
        args = tune.Runner(s, DEVICE).config_args()
        cfg = getattr(config, f"conv_{s.kind}_config")(*args.values(), GPU)
        assert all(getattr(cfg, k) == v for k, v in fields.items()), (s.kind, cfg, fields)


def test_a_candidate_whose_output_differs_is_rejected(monkeypatch):
    runner = tune.Runner(SHAPES[0], DEVICE)
    fast = _second_candidate(runner)
    bench, state = _fake_bench(fast)
    state["kind"] = "conv_fwd"
    monkeypatch.setattr(tune, "bench_ms", bench)
    real = runner.outputs

    def wrong_when_fast(fields):  # simulate a config that computes something else
        outs = real(fields)
        if fields == fast:
            outs[0] = outs[0] + 1e-2 * outs[0].abs().max()
        return outs

    runner.outputs = wrong_when_fast
    rec = tune.tune_shape(runner, limit=4)
    bad = [c for c in rec["candidates"] if c["config"] == fast]
    assert len(bad) == 1 and bad[0]["status"].startswith("rejected: differs") and bad[0]["ms"] is None
    assert [c["status"] for c in rec["candidates"]].count("ok") == 3
    assert rec["winner"] is None  # the fastest candidate was wrong; no other beat the default
    assert tune.mismatch([torch.tensor([1.0, float("nan")])], [torch.tensor([1.0, 2.0])], "fp32")
    assert tune.mismatch([torch.tensor([1.0, 2.0 + 1e-6])], [torch.tensor([1.0, 2.0])], "fp32") is None
