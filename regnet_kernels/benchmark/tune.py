"""Tune the Triton conv launch configs on this GPU and write the winners in the tuned-table format.

``python -m regnet_kernels.benchmark.tune --out tuned.json`` (the GPU kit's ``--tune`` step):

1. plan the model (:func:`regnet_kernels.benchmark.plan.plan`, default regnet_y_1_6gf, bf16, inference
   batch 256 and a training step at batch 128) and group its conv launches (forward, data and weight
   gradient) by conv shape: kind, dtype, ``N, C_in, H, W, C_out, kh, kw, stride, pad, groups`` and the
   fused options the launch uses (prologue, BN epilogue, residual, statistics);
2. keep the ``--top`` shapes with the largest modelled time (:mod:`regnet_kernels.benchmark.launch_model`,
   summed over the launches of that shape);
3. for each, build random inputs on the device and run the real launcher of
   :mod:`regnet_kernels.kernels.triton.conv` under each candidate config (forced through
   :func:`regnet_kernels.kernels.triton.config.override`): a candidate must compile, not spill registers,
   and give the default config's outputs within fp32 reassociation (relative to the output's largest
   magnitude: 1e-4 for fp32 outputs, 2**-9 for fp16, 2**-7 for bf16, NaN where NaN), else it is
   rejected; the survivors are timed (``triton.testing.do_bench`` median on a GPU, a wall clock under
   the interpreter);
4. a candidate replaces the default only if it is more than ``--min-gain`` (3 %) faster than the
   default's time; ties go to the earlier candidate (candidates are ordered by how few fields differ
   from the default). Several shapes can share one table key (its row count is bucketed): the slowest
   shape decides it.

Candidates (at most ``--max-candidates`` per shape, default first, then the nearest neighbours):
``BLOCK_M`` {64, 128}, ``BLOCK_N`` {32, 64, 128}, ``BLOCK_K`` {16, 32, 64}, ``num_warps`` {4, 8},
``num_stages`` {2, 3} for the forward and data-gradient kernels; for the weight gradient (whose tile is
fixed by the group packing) the pixel step ``block_m`` {32, 64}, the split-K count (default, x2, /2),
``num_warps`` and ``num_stages``. A field whose default lies outside these values keeps its default.

The output is a table (``{"_source", "entries", "shapes"}``): ``entries`` as
``regnet_kernels/kernels/triton/tuned.json`` holds them (the committed entries not re-tuned are carried
over), ``shapes`` the per-shape timings of every candidate. ``--dry-run`` runs the same path at tiny sizes
(resolution 32, batch 1, spatial size clipped) on whatever device this is: under the Triton interpreter
the timings mean nothing, the code path, override, correctness check and JSON are what it proves.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from regnet_kernels.kernels.geometry import device_arch
from regnet_kernels.kernels.activation import Act

__all__ = ["ConvShape", "conv_shapes", "candidates", "tune_shape", "tune", "main"]

#: The fused options of each conv kernel that change its code (constexprs; a flag is on when its value is
#: nonzero). ``PRE_ACT`` / ``ACT`` are activation codes: a shape with them on is tuned with ReLU (the config
#: rules do not depend on which activation it is).
FLAGS = {
    "fwd": ("PRE_AFFINE", "PRE_ACT", "PRE_GATE", "POST_BN", "BN_GAMMA", "BN_BETA", "HAS_RES", "ACT", "STATS"),
    "dgrad": ("HAS_ACC",),
    "wgrad": ("PRE_AFFINE", "PRE_ACT", "PRE_GATE"),
}
_KERNELS = {"conv_fwd_kernel": "fwd", "conv_dgrad_kernel": "dgrad", "conv_wgrad_kernel": "wgrad"}
_FIRST_TENSOR = {"fwd": "x_ptr", "dgrad": "dy_ptr", "wgrad": "x_ptr"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: Relative tolerance (to the output's largest magnitude) of a candidate against the default config.
TOLERANCE = {"fp32": 1e-4, "fp16": 2.0 ** -9, "bf16": 2.0 ** -7}
CONV_FIELDS = ("block_m", "block_n", "block_k", "num_warps", "num_stages")
WGRAD_FIELDS = ("block_m", "split", "num_warps", "num_stages")


@dataclass(frozen=True)
class ConvShape:
    """One conv launch shape: ``kind`` is ``fwd``, ``dgrad`` or ``wgrad``; ``flags`` the fused options on."""

    kind: str
    dtype: str
    N: int
    C_in: int
    H: int
    W: int
    C_out: int
    kh: int
    kw: int
    stride: int
    pad: int
    groups: int
    flags: Tuple[str, ...] = ()

    @property
    def out_hw(self) -> Tuple[int, int]:
        return ((self.H + 2 * self.pad - self.kh) // self.stride + 1,
                (self.W + 2 * self.pad - self.kw) // self.stride + 1)

    def label(self) -> str:
        return (f"{self.kind} {self.dtype} N{self.N} {self.C_in}x{self.H}x{self.W} -> {self.C_out} "
                f"k{self.kh}x{self.kw} s{self.stride} g{self.groups}"
                + (f" [{','.join(self.flags)}]" if self.flags else ""))


# ------------------------------------------------------------------------------------------------
# Shapes from the launch plan
# ------------------------------------------------------------------------------------------------
def shape_of(launch) -> Optional[ConvShape]:
    """The conv shape of a planned launch (None for a launch that is not a conv)."""
    kind = _KERNELS.get(launch.kernel)
    if kind is None:
        return None
    v = dict(launch.scalars)
    v.update({k: x for k, x in launch.constexprs.items() if isinstance(x, int) and not isinstance(x, bool)})
    dtype = launch.signature[_FIRST_TENSOR[kind]].lstrip("*")
    return ConvShape(kind, dtype, v["N"], v["C_IN"], v["H"], v["W"], v["C_OUT"], v["KH"], v["KW"], v["STRIDE"],
                     v["PAD"], v["C_OUT"] // v["COUT_G"], tuple(f for f in FLAGS[kind] if launch.constexprs.get(f)))


def conv_shapes(model: str = "regnet_y_1_6gf", modes: Sequence[Tuple[str, int]] = (("infer", 256), ("train", 128)),
                dtype: str = "bf16", resolution: int = 224, arch: int = 90,
                device: str = "h200") -> List[Tuple[ConvShape, float, int]]:
    """``(shape, modelled seconds summed over its launches, launches)`` for every distinct conv shape the
    plans of ``model`` launch, slowest first."""
    from regnet_kernels.benchmark import launch_model
    from regnet_kernels.benchmark.plan import plan

    acc: Dict[ConvShape, List[float]] = {}
    for mode, batch in modes:
        for la in plan(model, mode, batch=batch, resolution=resolution, dtype=dtype, arch=arch).launches:
            s = shape_of(la)
            if s is not None:
                rec = acc.setdefault(s, [0.0, 0])
                rec[0] += launch_model.predict_s(la, None, device)
                rec[1] += 1
    return sorted(((s, t, n) for s, (t, n) in acc.items()), key=lambda r: -r[1])


# ------------------------------------------------------------------------------------------------
# Running one shape under a forced config
# ------------------------------------------------------------------------------------------------
class Runner:
    """Random inputs for ``shape`` on ``device`` and the real launcher, run under a forced config."""

    def __init__(self, shape: ConvShape, device, seed: int = 0):
        from regnet_kernels.kernels.triton import conv

        self.shape, self.device = shape, torch.device(device)
        s, dev, dt = shape, self.device, _DTYPES[shape.dtype]
        g = torch.Generator().manual_seed(seed)

        def rnd(*size, dtype=dt, scale=1.0, cl=False):
            t = (torch.randn(*size, generator=g) * scale).to(dtype=dtype, device=dev)
            return t.contiguous(memory_format=torch.channels_last) if cl else t

        ho, wo = s.out_hw
        f = set(s.flags)
        pre_act = Act.RELU if "PRE_ACT" in f else Act.NONE
        cin_g = s.C_in // s.groups
        self.x = rnd(s.N, s.C_in, s.H, s.W, cl=True)
        self.weight = rnd(s.C_out, cin_g, s.kh, s.kw, scale=(cin_g * s.kh * s.kw) ** -0.5).contiguous(
            memory_format=torch.channels_last)
        self.dy = rnd(s.N, s.C_out, ho, wo, cl=True)
        pre = None
        if "PRE_AFFINE" in f:
            pre = (rnd(s.C_in, dtype=torch.float32, scale=0.1), rnd(s.C_in, dtype=torch.float32).abs() + 0.5,
                   rnd(s.C_in, dtype=torch.float32, scale=0.1))
        gate = torch.rand(s.N, s.C_in, generator=g).to(dev) if "PRE_GATE" in f else None
        if s.kind == "fwd":
            post = None
            if "POST_BN" in f:
                post = (rnd(s.C_out, dtype=torch.float32, scale=0.1), rnd(s.C_out, dtype=torch.float32).abs() + 0.5,
                        rnd(s.C_out, dtype=torch.float32) if "BN_GAMMA" in f else None,
                        rnd(s.C_out, dtype=torch.float32) if "BN_BETA" in f else None, 1e-5)
            res = rnd(s.N, s.C_out, ho, wo, cl=True) if "HAS_RES" in f else None
            self._call = lambda: conv.conv2d_fwd(
                self.x, self.weight, s.stride, s.pad, s.groups, pre_affine=pre, pre_act=pre_act, gate=gate,
                post_bn=post, residual=res, act=Act.RELU if "ACT" in f else Act.NONE, stats="STATS" in f)
        elif s.kind == "dgrad":
            add = rnd(s.N, s.C_in, s.H, s.W, cl=True) if "HAS_ACC" in f else None
            self._call = lambda: conv.conv2d_dgrad(self.dy, self.weight, self.x.shape, s.stride, s.pad, s.groups,
                                                   like=self.x, add=add)
        elif s.kind == "wgrad":
            self._call = lambda: conv.conv2d_wgrad(self.x, self.dy, self.weight.shape, s.stride, s.pad, s.groups,
                                                   pre_affine=pre, pre_act=pre_act, gate=gate)
        else:
            raise ValueError(f"unknown conv kind {s.kind!r}")
        self.kind = f"conv_{s.kind}"
        self.fields = WGRAD_FIELDS if s.kind == "wgrad" else CONV_FIELDS

    def config_args(self) -> dict:
        """The arguments the launcher passes to its config function (captured through the override)."""
        from regnet_kernels.kernels.triton import config

        with config.override(self.kind) as seen:
            self.launch()
        return seen[0]

    def default(self) -> dict:
        """The config fields that run today (tuned table, else the rules) for this shape."""
        from regnet_kernels.kernels.triton import runtime as _triton_utils
        from regnet_kernels.kernels.triton import config

        cfg = getattr(config, f"{self.kind}_config")(**self.config_args(), target=_triton_utils.target(self.device))
        return {k: int(getattr(cfg, k)) for k in self.fields}

    def launch(self):
        return self._call()

    def outputs(self, fields: dict) -> List[torch.Tensor]:
        """The launcher's results under ``fields``: the output, plus per-channel mean and variance when
        the forward accumulates BatchNorm statistics (its per-tile partials depend on the tile)."""
        from regnet_kernels.kernels.triton import config

        with config.override(self.kind, **fields):
            r = self.launch()
        if self.shape.kind != "fwd":
            return [r]
        y, pm, pm2, bm = r
        if pm is None:
            return [y]
        m = pm.shape[0]
        total = y.shape[0] * y.shape[2] * y.shape[3]
        cnt = (total - torch.arange(m, device=pm.device) * bm).clamp(max=bm).to(torch.float32)[:, None]
        mean = (cnt * pm).sum(0) / total
        var = (pm2 + cnt * (pm - mean) ** 2).sum(0) / total
        return [y, mean, var]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_ms(fn: Callable[[], object], device, reps: int = 3) -> float:
    """Median milliseconds of ``fn``: ``triton.testing.do_bench`` on a GPU, a wall clock elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    times = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def mismatch(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], dtype: str) -> Optional[str]:
    """Why ``outs`` differ from ``refs`` beyond fp32 reassociation, or None."""
    tol = TOLERANCE[dtype]
    for i, (o, r) in enumerate(zip(outs, refs)):
        if o.shape != r.shape:
            return f"output {i}: shape {tuple(o.shape)} != {tuple(r.shape)}"
        o, r = o.detach().float(), r.detach().float()
        if not torch.equal(torch.isnan(o), torch.isnan(r)):
            return f"output {i}: NaN where the default has none (or the reverse)"
        o, r = torch.nan_to_num(o), torch.nan_to_num(r)
        err = float((o - r).abs().max()) if o.numel() else 0.0
        scale = float(r.abs().max()) if r.numel() else 0.0
        if err > tol * scale + 1e-30:
            return f"output {i}: max |diff| {err:.3g} > {tol:.3g} x max |default| {scale:.3g}"
    return None


@contextlib.contextmanager
def _compiled_kernels():
    """Collect what the conv launchers' launches return (Triton's compiled kernel; None when interpreting)."""
    from regnet_kernels.kernels.triton import conv

    got: list = []
    orig = conv.launch

    def wrapped(kernel, grid, device, label=""):
        fn = orig(kernel, grid, device, label)

        def call(*args, **kwargs):
            r = fn(*args, **kwargs)
            got.append(r)
            return r

        return call

    conv.launch = wrapped
    try:
        yield got
    finally:
        conv.launch = orig


# ------------------------------------------------------------------------------------------------
# Candidates and the sweep
# ------------------------------------------------------------------------------------------------
def candidates(kind: str, default: dict, args: dict, limit: int = 12) -> List[dict]:
    """The default first, then the candidates nearest to it (fewest fields changed, then by value),
    ``limit`` in all. ``args`` are the config function's arguments (sizes prune useless tiles)."""
    from regnet_kernels.kernels.triton.config import next_pow2

    if kind == "conv_wgrad":
        d = default["split"]
        space = {"block_m": (32, 64), "split": sorted({d, 2 * d, max(1, d // 2)}), "num_warps": (4, 8),
                 "num_stages": (2, 3)}
    else:
        cols = args["c_out"] if kind == "conv_fwd" else args["c_in"]
        space = {"block_m": (64, 128), "block_n": tuple(b for b in (32, 64, 128) if b <= max(32, next_pow2(cols))),
                 "block_k": (16, 32, 64), "num_warps": (4, 8), "num_stages": (2, 3)}
    # a field whose default lies outside the sweep (num_stages 1 under the interpreter) keeps its default
    space = {n: (v if default[n] in v else (default[n],)) for n, v in space.items()}
    names = list(space)
    combos = [dict(zip(names, vals)) for vals in itertools.product(*(space[n] for n in names))]
    combos = [c for c in combos if c != {n: default[n] for n in names}]
    combos.sort(key=lambda c: (sum(c[n] != default[n] for n in names), [c[n] for n in names]))
    return [dict(default)] + combos[: max(0, limit - 1)]


def tune_shape(runner: Runner, cands: Optional[List[dict]] = None, *, limit: int = 12, min_gain: float = 0.03,
               deadline: Optional[float] = None, reps: int = 3) -> dict:
    """Time every candidate config of one shape; returns the record (``winner`` is None when the default
    stays). The first candidate is the default and the reference for the correctness check."""
    default = runner.default()
    if cands is None:
        cands = candidates(runner.kind, default, runner.config_args(), limit)
    rec = {"shape": asdict(runner.shape), "label": runner.shape.label(), "kind": runner.kind,
           "default": default, "candidates": [], "winner": None}
    ref = None
    for i, c in enumerate(cands):
        if deadline is not None and time.monotonic() > deadline and i > 0:
            rec["note"] = f"time budget spent after {i} of {len(cands)} candidates"
            break
        row = {"config": c, "status": "ok", "ms": None}
        rec["candidates"].append(row)
        try:
            with _compiled_kernels() as compiled:
                outs = runner.outputs(c)
            _sync(runner.device)
            spills = max((getattr(k, "n_spills", None) or 0 for k in compiled), default=0)
            if spills:
                row["status"] = f"rejected: {spills} bytes of register spills"
                continue
            if ref is None:
                ref = outs
            why = mismatch(outs, ref, runner.shape.dtype)
            if why:
                row["status"] = f"rejected: differs from the default: {why}"
                continue
            with contextlib.ExitStack() as st:
                from regnet_kernels.kernels.triton import config

                st.enter_context(config.override(runner.kind, **c))
                row["ms"] = bench_ms(runner.launch, runner.device, reps)
        except Exception as e:  # a candidate that does not compile or launch is rejected
            row["status"] = f"rejected: {type(e).__name__}: {str(e)[:200]}"
        if i == 0 and row["status"] != "ok":
            rec["note"] = "the default config failed: nothing tuned"
            return rec
    timed = [(r["ms"], j) for j, r in enumerate(rec["candidates"]) if r["status"] == "ok"]
    base = rec["candidates"][0]["ms"]
    best_ms, j = min(timed)
    rec["default_ms"], rec["best_ms"] = base, best_ms
    if j != 0 and best_ms < base * (1.0 - min_gain):
        rec["winner"] = rec["candidates"][j]["config"]
    return rec


def tune(shapes: Sequence[ConvShape], device, *, arch: int, limit: int = 12, min_gain: float = 0.03,
         budget_s: Optional[float] = None, base_entries: Optional[dict] = None, reps: int = 3,
         progress: Callable[[str], None] = lambda s: None,
         checkpoint: Optional[Callable[[dict], None]] = None) -> dict:
    """Tune ``shapes`` (slowest first) on ``device``; returns ``{"entries", "shapes"}`` (the table's entries,
    with those of ``base_entries`` not re-tuned carried over, and the per-shape records). ``checkpoint``
    gets the same after each shape (so a run stopped from outside keeps what it measured)."""
    from regnet_kernels.kernels.triton import config

    deadline = None if budget_s is None else time.monotonic() + budget_s
    entries = dict(base_entries or {})
    decided: Dict[str, str] = {}
    records = []
    for s in shapes:
        if deadline is not None and time.monotonic() > deadline:
            records.append({"label": s.label(), "note": "not tuned: time budget spent"})
            continue
        runner = Runner(s, device)
        key = config.tuned_key(runner.kind, arch, runner.config_args())
        if key in decided:  # a slower shape with the same key already decided it
            records.append({"label": s.label(), "key": key, "note": f"key decided by {decided[key]}"})
            continue
        t0 = time.monotonic()
        rec = tune_shape(runner, limit=limit, min_gain=min_gain, deadline=deadline, reps=reps)
        rec["key"], rec["seconds"] = key, round(time.monotonic() - t0, 2)
        records.append(rec)
        if "best_ms" in rec:
            decided[key] = s.label()
            if rec["winner"] is not None:
                entries[key] = rec["winner"]
        progress(f"{s.label()}: default {rec.get('default_ms')} ms, best {rec.get('best_ms')} ms, "
                 f"winner {rec['winner']} ({rec['seconds']} s)")
        if checkpoint is not None:
            checkpoint({"entries": dict(sorted(entries.items())), "shapes": records})
    return {"entries": dict(sorted(entries.items())), "shapes": records}


def _source(device: torch.device, model: str, modes, dtype: str, dry: bool) -> str:
    import triton

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    return (f"{'DRY RUN (timings meaningless) ' if dry else ''}regnet_kernels.benchmark.tune on {where}, "
            f"torch {torch.__version__}, triton {triton.__version__}, {model} "
            f"{', '.join(f'{m} batch {b}' for m, b in modes)}, {dtype}, {time.strftime('%Y-%m-%d %H:%M %Z')}")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m regnet_kernels.benchmark.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="regnet_y_1_6gf")
    p.add_argument("--modes", default="infer,train", help="comma list of infer, train")
    p.add_argument("--batch", type=int, default=256, help="inference batch")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES))
    p.add_argument("--top", type=int, default=8, help="tune the N slowest conv shapes (launch model)")
    p.add_argument("--max-candidates", type=int, default=12)
    p.add_argument("--min-gain", type=float, default=0.03)
    p.add_argument("--budget", type=float, default=120.0, help="seconds; no shape starts after it")
    p.add_argument("--arch", default=None, help="table arch when no GPU (default: 90)")
    p.add_argument("--out", required=True, help="JSON file to write (the table plus per-shape timings)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on this device (interpreter on CPU)")
    a = p.parse_args(argv)
    from regnet_kernels.kernels.triton import runtime as _triton_utils
    from regnet_kernels.benchmark.plan import parse_arch
    from regnet_kernels.kernels.triton import config

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not (a.dry_run and _triton_utils.INTERPRET):
        print("tune: needs a CUDA GPU (or --dry-run with TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    arch = device_arch(device) if device.type == "cuda" else parse_arch(a.arch or 90)
    batches = {"infer": a.batch, "train": a.train_batch}
    modes = [(m, batches[m]) for m in a.modes.split(",") if m]
    top, limit, res, reps = a.top, a.max_candidates, a.resolution, 3
    if a.dry_run:
        modes, res, top, limit, reps = [(m, 2) for m, _ in modes], 32, min(top, 2), min(limit, 3), 1
    shapes = conv_shapes(a.model, modes, a.dtype, res, arch)
    t_all = sum(t for _, t, _ in shapes)
    picked = [s for s, _, _ in shapes[:top]]
    if a.dry_run:  # the interpreter pays per program: clip the spatial size
        picked = [replace(s, N=1, H=min(s.H, 8), W=min(s.W, 8)) for s in picked]
    print(f"tune: {len(shapes)} conv shapes, the {len(picked)} slowest hold "
          f"{100 * sum(t for _, t, _ in shapes[:top]) / max(t_all, 1e-30):.0f}% of the modelled conv time", flush=True)
    source = _source(device, a.model, modes, a.dtype, a.dry_run)

    def write(table: dict) -> None:
        with open(a.out, "w") as f:
            json.dump({"_source": source, **table}, f, indent=1)

    base = config.load_tuned()
    write({"entries": base, "shapes": []})
    table = tune(picked, device, arch=arch, limit=limit, min_gain=a.min_gain, budget_s=a.budget, base_entries=base,
                 reps=reps, progress=lambda s: print("tune: " + s, flush=True), checkpoint=write)
    write(table)
    n_new = sum(1 for r in table["shapes"] if r.get("winner"))
    print(f"tune: {n_new} new winner(s), {len(table['entries'])} entries -> {a.out}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
