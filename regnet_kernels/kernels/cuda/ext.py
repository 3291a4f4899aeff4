"""Loader for the CUDA backend's kernels, and the helpers its Python launchers share.

:func:`lib` returns an object with the launcher API of ``csrc/launchers.h`` (one method per launcher;
pointers, strides, sizes and the stream as ints):

1. the compiled, torch-free extension ``regnet_kernels._C`` when it imports;
2. otherwise :class:`CupyLib`, which JIT-compiles the same ``csrc/kernels/*.cuh`` sources with CuPy's
   NVRTC (explicit kernel name expressions) and launches them on the caller's torch stream through
   ``cupy.cuda.ExternalStream``; it needs CuPy and a source checkout (``csrc/`` next to the package,
   or ``REGNET_KERNELS_CSRC``).

:func:`status` says which one is active and why the others are not. Tests may swap in the CPU
emulation of the launchers (``csrc/emulate.h``) with :func:`use_lib`; the launchers then accept CPU
tensors.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

__all__ = [
    "CudaExtensionUnavailable",
    "lib",
    "status",
    "use_lib",
    "config",
    "kernels_dir",
    "read_config",
    "dtype_code",
    "check_tensors",
    "launch_context",
    "ptr",
    "f32",
    "dense",
    "layout_of",
    "pixel_layout",
    "cdiv",
]

#: dtype codes of the launcher ABI
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_CONFIG_RE = re.compile(r"^#define\s+REGNET_(\w+)\s+(\d+)\s*$", re.M)


class CudaExtensionUnavailable(RuntimeError):
    """Neither the compiled extension nor the CuPy JIT fallback can provide the CUDA kernels."""


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------------------------------------
# Sources and constants
# ------------------------------------------------------------------------------------------------
def kernels_dir() -> Optional[Path]:
    """The ``csrc/kernels`` directory (``$REGNET_KERNELS_CSRC/kernels`` or next to the package), or None."""
    cands = []
    env = os.environ.get("REGNET_KERNELS_CSRC")
    if env:
        cands.append(Path(env) / "kernels")
    cands.append(Path(__file__).resolve().parents[3] / "csrc" / "kernels")
    for c in cands:
        if (c / "all.cuh").is_file() and (c / "config.cuh").is_file():
            return c
    return None


def read_config(path: Optional[Path] = None) -> dict:
    """The ``#define REGNET_<NAME> <int>`` constants of ``config.cuh`` as ``{NAME: int}``."""
    if path is None:
        kd = kernels_dir()
        if kd is None:
            raise FileNotFoundError("csrc/kernels/config.cuh not found (set REGNET_KERNELS_CSRC to the csrc directory)")
        path = kd / "config.cuh"
    return {m.group(1): int(m.group(2)) for m in _CONFIG_RE.finditer(Path(path).read_text())}


def inline_sources(entry: Path) -> str:
    """``entry`` with its local ``#include "*.cuh"`` files inlined (once each), for NVRTC and for CuPy's
    cache key (which hashes the source text only)."""
    seen: set = set()
    inc = re.compile(r'^\s*#include\s+"([\w./]+\.cuh)"\s*$', re.M)

    def expand(p: Path) -> str:
        p = p.resolve()
        if p in seen:
            return ""
        seen.add(p)
        text = p.read_text()
        return inc.sub(lambda m: f"// ---- {m.group(1)} ----\n" + expand(p.parent / m.group(1)), text)

    return expand(entry)


# ------------------------------------------------------------------------------------------------
# The launcher library
# ------------------------------------------------------------------------------------------------
_lock = threading.Lock()
_lib = None
_override: list = []
_ext_error: Optional[str] = None
_cupy_error: Optional[str] = None


def _import_extension():
    global _ext_error
    try:
        mod = importlib.import_module("regnet_kernels._C")
        _ext_error = None
        return mod
    except Exception as e:  # ImportError, or an undefined symbol in a stale build
        _ext_error = f"{type(e).__name__}: {e}"
        return None


def lib():
    """The active launcher library (see the module docstring).

    Raises:
        CudaExtensionUnavailable: the extension is not built and the CuPy fallback cannot start; the
            message gives both reasons.
    """
    global _lib, _cupy_error
    if _override:
        return _override[-1]
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            mod = _import_extension()
            if mod is not None:
                _lib = mod
            else:
                try:
                    _lib = CupyLib()
                    _cupy_error = None
                except Exception as e:
                    _cupy_error = f"{type(e).__name__}: {e}"
                    raise CudaExtensionUnavailable(
                        f"the CUDA extension regnet_kernels._C is not built ({_ext_error}) and the CuPy JIT fallback "
                        f"is unavailable ({_cupy_error})") from e
    return _lib


@contextlib.contextmanager
def use_lib(obj) -> Iterator[None]:
    """Route every launch in this block to ``obj`` (e.g. the CPU emulation module in tests)."""
    _override.append(obj)
    try:
        yield
    finally:
        _override.pop()


def _emulated(obj) -> bool:
    fn = getattr(obj, "build_info", None)
    try:
        return bool(fn().get("emulated")) if callable(fn) else False
    except Exception:
        return False


def status() -> dict:
    """Which kernel provider is usable here, and why not otherwise (never raises)."""
    ext = {"built": False, "error": None}
    mod = _import_extension()
    if mod is not None:
        ext["built"] = True
        try:
            ext.update(mod.build_info())
        except Exception as e:  # pragma: no cover - a broken build
            ext["build_info_error"] = str(e)
    else:
        ext["error"] = _ext_error
    kd = kernels_dir()
    try:
        import cupy  # noqa: F401

        cupy_err = None if kd is not None else "csrc/kernels sources not found (set REGNET_KERNELS_CSRC)"
    except Exception as e:
        cupy_err = f"cupy not importable ({type(e).__name__})"
    active = None
    if _override:
        active = "override"
    elif ext["built"]:
        active = "_C"
    elif cupy_err is None:
        active = "cupy"
    return {"active": active, "extension": ext, "cupy": {"available": cupy_err is None, "error": cupy_err},
            "kernels_dir": str(kd) if kd is not None else None}


def config() -> dict:
    """Tile / launch constants of the active library (``csrc/kernels/config.cuh``)."""
    return lib().config()


# ------------------------------------------------------------------------------------------------
# Helpers for the Python launchers (regnet_kernels/kernels/cuda/api.py)
# ------------------------------------------------------------------------------------------------
def dtype_code(t: torch.Tensor, what: str = "input") -> int:
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"cuda backend: {what} must be float16, bfloat16 or float32, got {t.dtype}") from None


def check_tensors(op: str, tensors: Sequence[Optional[torch.Tensor]]) -> torch.device:
    """All given tensors on one CUDA device (or, under the CPU emulation, all on the CPU); returns it."""
    ts = [t for t in tensors if t is not None]
    devices = {t.device for t in ts}
    if len(devices) != 1:
        raise RuntimeError(f"{op} (cuda backend): all tensors must be on one device, got "
                           + ", ".join(sorted(str(d) for d in devices)))
    dev = next(iter(devices))
    emulating = bool(_override) and _emulated(_override[-1])
    if dev.type != "cuda" and not (dev.type == "cpu" and emulating):
        raise RuntimeError(f"{op} (cuda backend): needs CUDA tensors, got {dev.type} tensors")
    return dev


@contextlib.contextmanager
def launch_context(device: torch.device) -> Iterator[int]:
    """Make ``device`` current and yield the raw handle of torch's current stream on it (0 on the CPU)."""
    if device.type != "cuda":
        yield 0
        return
    with torch.cuda.device(device):
        yield torch.cuda.current_stream(device).cuda_stream


def ptr(t: Optional[torch.Tensor]) -> int:
    """Data pointer of ``t`` (0 for None: "absent" in the launcher ABI)."""
    return 0 if t is None else t.data_ptr()


def f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` as a contiguous fp32 tensor (itself when it already is one), or None."""
    return None if t is None else t.detach().to(torch.float32).contiguous()


def layout_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last when ``t`` is laid out channels-last (and not also plain contiguous)."""
    from regnet_kernels.kernels.geometry import memory_format_of

    return memory_format_of(t)


def dense(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """``t`` itself when it is dense in ``fmt``, else a copy that is."""
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


def pixel_layout(fmt: torch.memory_format, C: int, HW: int) -> tuple:
    """``(cs, ps)``: channel and pixel strides of a tensor dense in ``fmt`` (storage index
    ``n*C*HW + c*cs + hw*ps``)."""
    return (1, C) if fmt == torch.channels_last else (HW, 1)




# ------------------------------------------------------------------------------------------------
# CuPy / NVRTC fallback
# ------------------------------------------------------------------------------------------------
_TYPES = {0: "float", 1: "__half", 2: "__nv_bfloat16"}
_TEMPLATED = ("conv_fwd_kernel", "conv_dgrad_kernel", "conv_wgrad_kernel", "wgrad_reduce_kernel", "bn_act_kernel",
              "bn_bwd_reduce_kernel", "bn_bwd_dy_kernel", "se_reduce_kernel", "se_scale_kernel", "se_dx_kernel")
_PLAIN = ("bn_finalize_kernel", "sum_rows_kernel", "bn_running_update_kernel", "se_fc_fwd_kernel", "se_fc_bwd_kernel",
          "se_outer_kernel")


def kernel_name_expressions() -> list:
    """Every kernel instantiation the launchers use, as NVRTC name expressions."""
    names = [f"regnet::{k}<{t}>" for k in _TEMPLATED for t in _TYPES.values()]
    return names + [f"regnet::{k}" for k in _PLAIN]


class CupyLib:
    """The launcher API of ``regnet_kernels._C``, implemented by JIT-compiling ``csrc/kernels`` with CuPy.

    Launch geometry mirrors the C++ launchers (``csrc/*.cu``); argument validation is the Python
    callers' (``kernels/cuda/api.py``).
    """

    def __init__(self):
        import cupy  # noqa: F401  (raises when CuPy is absent)
        import numpy as np

        kd = kernels_dir()
        if kd is None:
            raise FileNotFoundError("csrc/kernels sources not found (set REGNET_KERNELS_CSRC to the csrc directory)")
        self._np = np
        self._src = inline_sources(kd / "all.cuh")
        self._cfg = read_config(kd / "config.cuh")
        self._modules: dict = {}
        self._mlock = threading.Lock()

    # -- plumbing --
    def build_info(self) -> dict:
        return {"archs": [], "ptx": [], "cuda_version": None, "compiler": "cupy/nvrtc (JIT)", "emulated": False}

    def config(self) -> dict:
        return dict(self._cfg)

    def _fn(self, kernel: str, dtype: Optional[int] = None):
        import cupy

        dev = cupy.cuda.runtime.getDevice()
        with self._mlock:
            mod = self._modules.get(dev)
            if mod is None:
                opts = ("--std=c++17",) + tuple(f"-I{d}" for d in _cuda_include_dirs(cupy))
                mod = cupy.RawModule(code=self._src, options=opts, name_expressions=kernel_name_expressions())
                self._modules[dev] = mod
        name = f"regnet::{kernel}" if dtype is None else f"regnet::{kernel}<{_TYPES[dtype]}>"
        return mod.get_function(name)

    def _launch(self, kernel, dtype, grid, block, stream: int, args) -> None:
        import cupy

        if dtype is not None and dtype not in _TYPES:
            raise ValueError(f"dtype code {dtype} is not 0 (float32), 1 (float16) or 2 (bfloat16)")
        fn = self._fn(kernel, dtype)
        fn(tuple(grid), tuple(block), tuple(args), stream=cupy.cuda.ExternalStream(stream))

    def _p(self, v: int):  # pointer
        return self._np.uint64(v)

    def _i(self, v) -> object:  # long long
        return self._np.int64(int(v))

    def _f(self, v) -> object:  # float
        return self._np.float32(v)

    def _ew_grid(self, numel: int) -> tuple:
        per = self._cfg["EW_THREADS"] * self._cfg["EW_PER_THREAD"]
        return (max(1, min(cdiv(numel, per), 1 << 20)),)

    # -- conv --
    def conv_fwd(self, dtype, x, sxn, sxc, sxh, sxw, w, swo, swi, swh, sww, y, syn, syc, syh, syw, N, C_in, H, W,
                 C_out, HO, WO, KH, KW, stride, pad, groups, part_mean, part_m2, post_mean, post_scale, post_bias,
                 act, stream):
        c = self._cfg
        grid = (cdiv(N * HO * WO, c["GEMM_BM"]), cdiv(C_out, c["GEMM_BN"]))
        P, i = self._p, self._i
        args = [P(x), P(w), P(y), P(part_mean), P(part_m2), P(post_mean), P(post_scale), P(post_bias)]
        args += [i(v) for v in (N, C_in, H, W, C_out, HO, WO, KH, KW, stride, pad, groups, sxn, sxc, sxh, sxw,
                                swo, swi, swh, sww, syn, syc, syh, syw, act)]
        self._launch("conv_fwd_kernel", dtype, grid, (c["GEMM_THREADS"],), stream, args)

    def conv_dgrad(self, dtype, dy, sdn, sdc, sdh, sdw, w, swo, swi, swh, sww, dx, sxn, sxc, sxh, sxw, N, C_in, H, W,
                   C_out, HO, WO, KH, KW, stride, pad, groups, stream):
        c = self._cfg
        grid = (cdiv(N * H * W, c["GEMM_BM"]), cdiv(C_in, c["GEMM_BN"]))
        P, i = self._p, self._i
        args = [P(dy), P(w), P(dx)] + [i(v) for v in (N, C_in, H, W, C_out, HO, WO, KH, KW, stride, pad, groups,
                                                     sdn, sdc, sdh, sdw, swo, swi, swh, sww, sxn, sxc, sxh, sxw)]
        self._launch("conv_dgrad_kernel", dtype, grid, (c["GEMM_THREADS"],), stream, args)

    def wgrad_channel_chunks(self, C_in, C_out, groups):
        return wgrad_channel_chunks(C_in, C_out, groups, self._cfg)

    def conv_wgrad(self, dtype, x, sxn, sxc, sxh, sxw, dy, sdn, sdc, sdh, sdw, ws, N, C_in, H, W, C_out, HO, WO, KH,
                   KW, stride, pad, groups, splits, m_per_split, stream):
        c = self._cfg
        grid = (cdiv(C_out, c["GEMM_BM"]), wgrad_channel_chunks(C_in, C_out, groups, c), KH * KW * splits)
        P, i = self._p, self._i
        args = [P(x), P(dy), P(ws)] + [i(v) for v in (N, C_in, H, W, C_out, HO, WO, KH, KW, stride, pad, groups,
                                                     sxn, sxc, sxh, sxw, sdn, sdc, sdh, sdw, m_per_split)]
        self._launch("conv_wgrad_kernel", dtype, grid, (c["GEMM_THREADS"],), stream, args)

    def wgrad_reduce(self, dtype, ws, splits, C_out, per_co, scale, out_f32, out_t, stream):
        P, i = self._p, self._i
        args = [P(ws), i(splits), i(C_out * per_co), i(per_co), P(scale), P(out_f32), P(out_t)]
        self._launch("wgrad_reduce_kernel", dtype, self._ew_grid(C_out * per_co), (self._cfg["EW_THREADS"],), stream,
                     args)

    # -- BatchNorm --
    def bn_finalize(self, part_mean, part_m2, T, M, rows_per_tile, C, gamma, beta, eps, mean, invstd, var_unb, scale,
                    bias, stream):
        c = self._cfg
        P, i = self._p, self._i
        args = [P(part_mean), P(part_m2), i(T), i(M), i(rows_per_tile), i(C), P(gamma), P(beta), self._f(eps),
                P(mean), P(invstd), P(var_unb), P(scale), P(bias)]
        self._launch("bn_finalize_kernel", None, (cdiv(C, c["RED_CH"]),), (c["RED_CH"], c["ROW_LANES"]), stream, args)

    def sum_rows(self, part_a, out_a, part_b, out_b, T, C, stream):
        c = self._cfg
        P, i = self._p, self._i
        grid = (cdiv(C, c["RED_CH"]), 2 if part_b else 1)
        self._launch("sum_rows_kernel", None, grid, (c["RED_CH"], c["ROW_LANES"]), stream,
                     [P(part_a), P(out_a), P(part_b), P(out_b), i(T), i(C)])

    def bn_running_update(self, running_mean, running_var, num_batches_tracked, mean, var_unb, C, momentum, cumulative,
                          stream):
        P, i = self._p, self._i
        args = [P(running_mean), P(running_var), P(num_batches_tracked), P(mean), P(var_unb), i(C),
                self._f(momentum), i(bool(cumulative))]
        self._launch("bn_running_update_kernel", None, (cdiv(C, 256),), (256,), stream, args)

    def bn_act(self, dtype, y, out, mean, scale, bias, numel, C, cs, act, stream):
        if numel == 0:
            return
        P, i = self._p, self._i
        args = [P(y), P(out), P(mean), P(scale), P(bias), i(numel), i(C), i(cs), i(act)]
        self._launch("bn_act_kernel", dtype, self._ew_grid(numel), (self._cfg["EW_THREADS"],), stream, args)

    def bn_bwd_reduce(self, dtype, dout, src, dz, mean, invstd, scale, bias, part_dz, part_dzx, M, C, HW, cs, ps, train,
                      act, stream):
        c = self._cfg
        P, i = self._p, self._i
        args = [P(dout), P(src), P(dz), P(mean), P(invstd), P(scale), P(bias), P(part_dz), P(part_dzx), i(M), i(C),
                i(HW), i(cs), i(ps), i(bool(train)), i(act)]
        grid = (cdiv(M, c["RED_PIX"]), cdiv(C, c["RED_CH"]))
        self._launch("bn_bwd_reduce_kernel", dtype, grid, (c["RED_THREADS"],), stream, args)

    def bn_bwd_dy(self, dtype, dout, y, dy, mean, invstd, scale, bias, sum_dz, sum_dzx, inv_count, numel, C, cs, act,
                  stream):
        if numel == 0:
            return
        P, i = self._p, self._i
        args = [P(dout), P(y), P(dy), P(mean), P(invstd), P(scale), P(bias), P(sum_dz), P(sum_dzx),
                self._f(inv_count), i(numel), i(C), i(cs), i(act)]
        self._launch("bn_bwd_dy_kernel", dtype, self._ew_grid(numel), (self._cfg["EW_THREADS"],), stream, args)

    # -- squeeze-excitation --
    def se_reduce(self, dtype, a, b, out, N, C, HW, cs, ps, mul, stream):
        c = self._cfg
        P, i = self._p, self._i
        args = [P(a), P(b), P(out), i(C), i(HW), i(cs), i(ps), self._f(mul)]
        self._launch("se_reduce_kernel", dtype, (cdiv(C, c["RED_CH"]), N), (c["RED_THREADS"],), stream, args)

    def se_fc_fwd(self, pooled, w1, b1, w2, b2, s1, gate, N, C, S, stream):
        c = self._cfg
        P, i = self._p, self._i
        args = [P(pooled), P(w1), P(b1), P(w2), P(b2), P(s1), P(gate), i(N), i(C), i(S)]
        self._launch("se_fc_fwd_kernel", None, (cdiv(N, c["SE_NB"]),), (c["SE_THREADS"],), stream, args)

    def se_fc_bwd(self, pooled, gate, dgate, w1, b1, w2, s1, ds2, ds1, dpooled, N, C, S, stream):
        c = self._cfg
        P, i = self._p, self._i
        args = [P(pooled), P(gate), P(dgate), P(w1), P(b1), P(w2), P(s1), P(ds2), P(ds1), P(dpooled), i(N), i(C),
                i(S)]
        self._launch("se_fc_bwd_kernel", None, (cdiv(N, c["SE_NB"]),), (c["SE_THREADS"],), stream, args)

    def se_outer(self, A, B, out, N, I, J, act_b, stream):  # noqa: E741 - the launcher's names
        P, i = self._p, self._i
        args = [P(A), P(B), P(out), i(N), i(I), i(J), i(act_b)]
        self._launch("se_outer_kernel", None, self._ew_grid(I * J), (self._cfg["EW_THREADS"],), stream, args)

    def se_scale(self, dtype, x, gate, out, numel, C, cs, CHW, stream):
        if numel == 0:
            return
        P, i = self._p, self._i
        args = [P(x), P(gate), P(out), i(numel), i(C), i(cs), i(CHW)]
        self._launch("se_scale_kernel", dtype, self._ew_grid(numel), (self._cfg["EW_THREADS"],), stream, args)

    def se_dx(self, dtype, dout, gate, dpooled, dx, numel, C, cs, CHW, inv_hw, stream):
        if numel == 0:
            return
        P, i = self._p, self._i
        args = [P(dout), P(gate), P(dpooled), P(dx), i(numel), i(C), i(cs), i(CHW), self._f(inv_hw)]
        self._launch("se_dx_kernel", dtype, self._ew_grid(numel), (self._cfg["EW_THREADS"],), stream, args)


def _cuda_include_dirs(cupy) -> list:
    """The CUDA toolkit's include directory (cuda_fp16.h, mma.h) for NVRTC, when one can be found."""
    cands = []
    try:
        root = cupy.cuda.get_cuda_path()
        if root:
            cands.append(Path(root) / "include")
    except Exception:
        pass
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(Path(os.environ[var]) / "include")
    cands.append(Path("/usr/local/cuda/include"))
    for c in cands:
        if (c / "cuda_fp16.h").is_file():
            return [str(c)]
    return []


def wgrad_channel_chunks(C_in: int, C_out: int, groups: int, cfg: Optional[dict] = None) -> int:
    """Input-channel chunks (``GEMM_BN`` wide) of the widest output-channel tile of a grouped weight
    gradient (mirrors ``regnet::wgrad_channel_chunks`` in ``csrc/conv_bwd.cu``)."""
    cfg = cfg or read_config()
    bm, bn = cfg["GEMM_BM"], cfg["GEMM_BN"]
    cin_g, cout_g = C_in // groups, C_out // groups
    widest = 0
    for c0 in range(0, C_out, bm):
        c1 = min(c0 + bm, C_out) - 1
        widest = max(widest, (c1 // cout_g - c0 // cout_g + 1) * cin_g)
    return cdiv(widest, bn)
