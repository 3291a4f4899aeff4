"""Every launch configuration of the Triton kernels: tile sizes, ``num_warps``, ``num_stages``, split-K.

One home for these choices. The launchers in this package call these functions at run time, and the
ahead-of-time plan (:mod:`regnet_kernels.benchmark.plan`) reaches them through the very same
launchers, so what the plan compiles is what a GPU run launches. The functions are pure: shapes and a
:class:`Target` in, a config out; no torch, no triton, no device queries.

The ``Target`` says where the kernel runs: under the Triton interpreter (CPU tests) tiles stay small
because the interpreter is slow per program and numpy has no bf16 dot; on a GPU the tiles are sized
so that no specialisation the zoo launches spills registers (checked in CI by ``tests/test_aot.py``,
which compiles every specialisation of regnet_y_400mf for sm_90 and reads the cubin).

Tuned configs. Each public function below is ``@_tunable``: on a GPU target it first looks its shape
family up in the committed table ``tuned.json`` (next to this file; written on a GPU by
:mod:`regnet_kernels.benchmark.tune`, ``scripts/gpu_check.sh OUTDIR --tune``), and only then falls back
to the rules. The key of a shape family is

    ``<kind>|sm<arch>|<arg>=<value>|...``

``kind`` the function's name without ``_config`` (``conv_fwd``), ``arch`` the target's compute capability,
then the function's arguments by name, in order (``target`` excluded); the first one (the row count
``M``, ``HW``, ``T`` or ``N``; ``C`` for bn_running_update) is bucketed to ``next_pow2`` clamped to
``[2**8, 2**22]``, e.g.
``conv_fwd|sm90|M=65536|c_out=224|cin_g=8|cout_g=8|kh=3|kw=3|elem_bytes=2``. The value holds config
fields (``{"block_m": 128, "block_n": 64, ...}``) that replace the rule's; fields the rules derive
(the weight gradient's ``n_co``, ``n_ci``, ``m_per_split``) are re-derived. The table is never read
under the interpreter (its entries are GPU measurements); ``REGNET_KERNELS_TUNED=path`` reads another file.
:func:`override` forces fields for every shape of one kind while it is active, on any target: the tuner
times candidates through it.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, NamedTuple, Optional

__all__ = [
    "Target",
    "GPU_SMS",
    "next_pow2",
    "ConvConfig",
    "WgradConfig",
    "conv_fwd_config",
    "conv_dgrad_config",
    "conv_wgrad_config",
    "ew_config",
    "channel_sum_config",
    "se_fc_config",
    "bn_finalize_config",
    "bn_running_update_config",
    "tuned_key",
    "load_tuned",
    "set_tuned_table",
    "override",
]

#: Streaming multiprocessors of the planned targets (H100 SXM / H200: 132; A100: 108).
GPU_SMS = {90: 132, 80: 108}


@dataclass(frozen=True)
class Target:
    """Where a launch runs: ``interpret`` (Triton interpreter on CPU), ``num_sms``, compute capability
    ``arch`` (``90`` for sm_90; ``0`` when unknown or interpreting)."""

    interpret: bool
    num_sms: int
    arch: int = 0

    @classmethod
    def gpu(cls, arch: int = 90) -> "Target":
        return cls(False, GPU_SMS.get(arch, 132), arch)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _clamp_pow2(n: int, lo: int, hi: int) -> int:
    """``next_pow2(n)`` clamped to ``[lo, hi]`` (the tile rule used throughout)."""
    return min(hi, max(lo, next_pow2(n)))


# ------------------------------------------------------------------------------------------------
# Tuned-config table and the tuner's override (see the module docstring)
# ------------------------------------------------------------------------------------------------
TUNED_PATH = Path(__file__).with_name("tuned.json")
_TUNED: Optional[Dict[str, dict]] = None  # entries of the table, loaded on first use
_OVERRIDE: Dict[str, dict] = {}  # kind -> forced fields (the tuner's candidates)
_SEEN: Dict[str, list] = {}  # kind -> argument dicts looked up while an override is active


def tuned_key(kind: str, arch: int, args: Dict[str, int]) -> str:
    """The table key of a shape family: ``args`` are the config function's arguments by name, in order
    (the first one, the row count, is bucketed)."""
    parts = [kind, f"sm{arch}"]
    for i, (name, value) in enumerate(args.items()):
        if value is False:  # an option flag that is off names no other family (keys stay short and stable)
            continue
        parts.append(f"{name}={_clamp_pow2(value, 2**8, 2**22) if i == 0 else int(value)}")
    return "|".join(parts)


def load_tuned(path=None) -> Dict[str, dict]:
    """The ``entries`` of a tuned table (``{"_source": ..., "entries": {key: fields}}``); {} if absent."""
    p = Path(path) if path is not None else Path(os.environ.get("REGNET_KERNELS_TUNED", TUNED_PATH))
    if not p.is_file():
        return {}
    return dict(json.loads(p.read_text()).get("entries", {}))


def set_tuned_table(entries: Optional[Dict[str, dict]]) -> Optional[Dict[str, dict]]:
    """Use ``entries`` as the table (None: reload the committed file on next use); returns the previous."""
    global _TUNED
    prev, _TUNED = _TUNED, entries
    return prev


@contextlib.contextmanager
def override(kind: str, **fields):
    """Force config ``fields`` for every shape of ``kind`` (``"conv_fwd"``) while active, on every target
    (the tuner's candidates). Yields the list of argument dicts looked up meanwhile."""
    prev_fields, prev_seen = _OVERRIDE.get(kind), _SEEN.get(kind)
    _OVERRIDE[kind], _SEEN[kind] = dict(fields), []
    try:
        yield _SEEN[kind]
    finally:
        for d, v in ((_OVERRIDE, prev_fields), (_SEEN, prev_seen)):
            if v is None:
                d.pop(kind, None)
            else:
                d[kind] = v


def _tunable(fn=None, *, fix=None):
    """Consult the override, then (GPU targets) the tuned table, before the rules of ``fn``; ``fix(cfg,
    args)`` re-derives dependent fields after a replacement."""
    if fn is None:
        return functools.partial(_tunable, fix=fix)
    kind = fn.__name__[: -len("_config")]
    names = [n for n in inspect.signature(fn).parameters if n != "target"]

    @functools.wraps(fn)
    def wrapper(*args, target: "Target" = None, **kwargs):
        if target is None:  # a positional target, wherever it stands among the shape arguments
            i = next(i for i, a in enumerate(args) if isinstance(a, Target))
            target, args = args[i], args[:i] + args[i + 1:]
        bound = dict(zip(names, args), **kwargs)
        cfg = fn(**bound, target=target)
        fields = _OVERRIDE.get(kind)
        if fields is not None:
            _SEEN[kind].append(bound)
        elif not target.interpret:
            global _TUNED
            if _TUNED is None:
                _TUNED = load_tuned()
            fields = _TUNED.get(tuned_key(kind, target.arch, bound)) if _TUNED else None
        if not fields:
            return cfg
        cfg = cfg._replace(**{k: int(v) for k, v in fields.items() if k in cfg._fields})
        return fix(cfg, bound) if fix is not None else cfg

    return wrapper


# ------------------------------------------------------------------------------------------------
# Convolutions (implicit GEMM)
# ------------------------------------------------------------------------------------------------
class ConvConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def _packed_k(n_cols: int, block_n: int, k_g: int, n_g: int) -> int:
    """``BLOCK_K`` for a tile of ``block_n`` columns packing groups of ``n_g`` columns / ``k_g`` reduction
    channels: the reduction range a tile spans, capped at 64."""
    span = min(n_cols, block_n + n_g) // n_g + 1  # groups a tile can span
    return _clamp_pow2(min(span * k_g, 64), 16, 64)


def _conv_config(M: int, n_cols: int, k_g: int, n_g: int, kh: int, kw: int, elem_bytes: int,
                 target: Target, fused_io: bool = False) -> ConvConfig:
    block_n = _clamp_pow2(n_cols, 16, 64)
    block_k = _packed_k(n_cols, block_n, k_g, n_g)
    if target.interpret:
        return ConvConfig(64, block_n, block_k, 4, 1)
    block_m = 64 if M <= 4096 else 128
    # 8 warps for 128-row tiles: 128 x 32 with 4 warps spilled at 255 registers (the stem, sm_90)
    num_warps = 4 if block_m == 64 else 8
    # When the conv main loops loaded their operands element by element, the reduction tile set the register
    # budget: BLOCK_K 64 with 3 stages spilled 2-3 KB per thread at 255 registers (sm_90, regnet_y_400mf).
    # Taps unrolled 9 times (3x3) take BLOCK_K 16, 1x1 convs 32, both double-buffered: 0 spills, wgmma kept.
    # With the channels_last loads vectorised (2026-12-04) the 3x3 bf16 specialisations need ~180-190
    # registers at BLOCK_K 16, and BLOCK_K 32 (~200) and 64 (~230-240, fwd and dgrad) compile without spills
    # too, except the stem (C_in 3, element-wise: 64 spilled 1 KB). Fewer, larger K steps should cut the
    # per-iteration overhead the H200 run measured, but the choice waits for a GPU measurement (the tuner).
    block_k = min(block_k, 16 if kh * kw > 1 else 32)
    if fused_io:
        # a gate in the prologue and a residual in the epilogue (the eval block's conv c) hold two more
        # tiles live: BLOCK_K 32 spilled 8 B per thread at 255 registers (1x1, sm_90), and 64-row tiles on 4
        # warps (batch 1) spilled 144 B: BLOCK_K 16 on 8 warps
        block_k, num_warps = 16, 8
    if elem_bytes == 4:
        # fp32 multiplies on the FMA units (IEEE), whose dot keeps operand rows and columns in registers:
        # 128 x 64 tiles spilled 20-420 B per thread in 54 of 162 regnet_y_400mf specialisations (sm_90)
        # (and 128 x 32 still spilled 112-128 B in the 3x3 data gradient): 64 x 32 tiles on 8 warps
        # single-buffered (the FMA dot does not overlap loads the way wgmma does; 2 stages still spilled),
        # 32 rows for 1x1 convs (the strided 1x1 projection spilled 44-52 B at 64)
        return ConvConfig(64 if kh * kw > 1 else 32, min(block_n, 32), 16, 8, 1)
    return ConvConfig(block_m, block_n, block_k, num_warps, 2)


@_tunable
def conv_fwd_config(M: int, c_out: int, cin_g: int, cout_g: int, kh: int, kw: int, elem_bytes: int,
                    target: Target, fused_io: bool = False) -> ConvConfig:
    """Forward conv: rows ``M = N*Ho*Wo`` output pixels, columns = ``c_out`` output channels, reduction over
    the ``cin_g`` input channels of the groups a tile spans (groups of ``cout_g`` columns). ``fused_io``: the
    launch has both a gate prologue and a residual epilogue."""
    return _conv_config(M, c_out, cin_g, cout_g, kh, kw, elem_bytes, target, fused_io)


@_tunable
def conv_dgrad_config(M: int, c_in: int, cin_g: int, cout_g: int, kh: int, kw: int, elem_bytes: int,
                      target: Target) -> ConvConfig:
    """Data gradient: rows ``M = N*H*W`` input pixels, columns = ``c_in`` input channels, reduction over the
    ``cout_g`` output channels of the spanned groups (groups of ``cin_g`` columns)."""
    return _conv_config(M, c_in, cout_g, cin_g, kh, kw, elem_bytes, target)


class WgradConfig(NamedTuple):
    block_co: int
    block_ci: int
    block_m: int
    n_co: int
    n_ci: int
    split: int
    m_per_split: int
    num_warps: int
    num_stages: int


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _wgrad_fix(cfg: "WgradConfig", args: dict) -> "WgradConfig":
    """Re-derive the split of the pixel reduction after a tuned ``split`` / ``block_m``."""
    m_per_split = _cdiv(_cdiv(args["M"], max(1, cfg.split)), cfg.block_m) * cfg.block_m
    return cfg._replace(m_per_split=m_per_split, split=_cdiv(args["M"], m_per_split))


@_tunable(fix=_wgrad_fix)
def conv_wgrad_config(M: int, c_out: int, cin_g: int, cout_g: int, kh: int, kw: int, elem_bytes: int,
                      target: Target) -> WgradConfig:
    """Weight gradient: a tile of ``block_co`` output x ``block_ci`` input channels per tap; the pixel
    reduction ``M = N*Ho*Wo`` is split ``split`` ways (split-K) so that the grid fills the GPU."""
    # on a GPU the output-channel side is the dot's M: wgmma needs 64 rows per warpgroup
    bco = _clamp_pow2(c_out, 16 if target.interpret else 64, 64)
    if elem_bytes == 4 and not target.interpret:
        # fp32 runs on the FMA units (no wgmma to feed): 64 x 64 tiles spilled up to 7 KB per thread
        bco = _clamp_pow2(c_out, 16, 32)
    bci = _packed_k(c_out, bco, cin_g, cout_g)
    if elem_bytes == 4 and not target.interpret:
        bci = min(bci, 32)
    bm = 32  # the pixel reduction per step: 64 spilled with the BN + gate prologue (sm_90)
    n_co = _cdiv(c_out, bco)
    # widest input-channel range any output tile spans, in BLOCK_CI chunks
    max_ci = 0
    for t in range(n_co):
        c0, c1 = t * bco, min((t + 1) * bco, c_out) - 1
        max_ci = max(max_ci, (c1 // cout_g - c0 // cout_g + 1) * cin_g)
    n_ci = _cdiv(max_ci, bci)
    base_programs = n_co * n_ci * kh * kw
    split = max(1, min(_cdiv(M, bm * 4), _cdiv(4 * target.num_sms, base_programs)))
    if target.interpret:
        split = min(split, 2)
    m_per_split = _cdiv(_cdiv(M, split), bm) * bm
    split = _cdiv(M, m_per_split)
    if elem_bytes == 4 and not target.interpret:  # 32 x 32 fp32 tiles on 4 warps, 2 stages spilled 24-116 B
        return WgradConfig(bco, bci, bm, n_co, n_ci, split, m_per_split, 8, 1)
    return WgradConfig(bco, bci, bm, n_co, n_ci, split, m_per_split, 4, 1 if target.interpret else 2)


# ------------------------------------------------------------------------------------------------
# Element-wise passes, reductions and the small SE / BN kernels
# ------------------------------------------------------------------------------------------------
class TileConfig(NamedTuple):
    block_m: int
    block_c: int
    num_warps: int
    num_stages: int


@_tunable
def ew_config(M: int, C: int, target: Target) -> TileConfig:
    """(pixels x channels) element-wise and per-channel-reduction passes: BN apply and backward, SE scale,
    the residual tail."""
    bc = _clamp_pow2(C, 16, 64)
    bm = 64 if target.interpret else max(32, 4096 // bc)
    # 8 warps on a GPU: the residual tail's backward reached 254 registers (and spilled) with 4
    return TileConfig(bm, bc, 4 if target.interpret else 8, 1 if target.interpret else 3)


@_tunable
def channel_sum_config(HW: int, C: int, target: Target) -> TileConfig:
    """Per-(sample, channel) spatial sums (SE pool, SE gate gradient): ``block_m`` pixels per step."""
    bc = _clamp_pow2(C, 16, 64)
    # 4096 values per step, double-buffered: 128 x 64 fp32 with 3 stages spilled (sm_90)
    bhw = 64 if target.interpret else max(16, min(256, 4096 // bc))
    return TileConfig(bhw, bc, 4, 1 if target.interpret else 2)


class FcConfig(NamedTuple):
    block_n: int
    block_s: int
    block_c: int
    num_warps: int
    num_stages: int


@_tunable
def se_fc_config(N: int, C: int, S: int, target: Target) -> FcConfig:
    """Both SE FCs for ``block_n`` samples per program (squeeze width ``S``, ``C`` channels)."""
    bn = 16  # 32 samples per program spilled (255 registers, up to 1.3 KB per thread) on sm_90
    if target.interpret:
        return FcConfig(bn, _clamp_pow2(S, 16, 64), _clamp_pow2(C, 16, 64), 4, 1)
    # 64-wide channel and squeeze tiles with 3 stages spilled 36-376 B per thread (fwd and bwd, sm_90)
    return FcConfig(bn, _clamp_pow2(S, 16, 32), _clamp_pow2(C, 16, 32), 4, 2)


@_tunable
def bn_finalize_config(T: int, C: int, target: Target) -> TileConfig:
    """BN finalize over ``T`` per-tile partials of ``C`` channels: ``block_m`` partials per step."""
    bc = _clamp_pow2(C, 16, 128)
    bt = min(256 if target.interpret else 64, max(2, next_pow2(T)))
    return TileConfig(bt, bc, 4, 1 if target.interpret else 3)


@_tunable
def bn_running_update_config(C: int, target: Target) -> TileConfig:
    return TileConfig(1, _clamp_pow2(C, 16, 1024), 4, 1 if target.interpret else 3)
