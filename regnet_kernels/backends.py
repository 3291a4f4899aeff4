"""Backend registry: which implementation runs an op, and why the others cannot.

Backends are ``"eager"`` (pure PyTorch, the reference; runs anywhere), ``"triton"`` (the fused
Triton kernels; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``) and ``"cuda"`` (the
hand-written CUDA extension ``regnet_kernels._C``). ``"auto"`` picks the fastest backend that can run
the given inputs, from a small table of measured results (:data:`AUTO_TABLE`), and falls back quietly
to eager. A backend requested explicitly that cannot run raises :class:`BackendUnavailableError`
naming every backend and its reason.

Precedence when an op decides its backend (first that applies):

1. the innermost :func:`use_backend` context manager;
2. the backend passed to the op / module / :func:`regnet_kernels.optimize` if it is not ``"auto"``;
3. the environment variable ``REGNET_KERNELS_BACKEND``;
4. ``"auto"``.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch

__all__ = [
    "BACKENDS",
    "REQUESTABLE",
    "Backend",
    "BackendUnavailableError",
    "AUTO_TABLE",
    "get_backend",
    "why_not",
    "resolve",
    "use_backend",
    "current_override",
    "register_op_check",
    "triton_interpreting",
    "triton_version",
    "cuda_ext_status",
    "summary",
]

BACKENDS: tuple = ("eager", "triton", "cuda")
REQUESTABLE: tuple = BACKENDS + ("auto",)
ENV_VAR = "REGNET_KERNELS_BACKEND"


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the given inputs."""


# --------------------------------------------------------------------------------------------
# Environment probes (cached: they import packages or touch the driver)
# --------------------------------------------------------------------------------------------
_probe_cache: dict = {}


def _cached(key: str, fn: Callable[[], object]):
    if key not in _probe_cache:
        _probe_cache[key] = fn()
    return _probe_cache[key]


# The environment probes below are constants for a process (what is installed, and the interpreter mode,
# which Triton fixes when our kernel modules are first imported). Dynamo cannot trace them (they import
# packages and read triton.knobs), so a compiled graph takes their value at trace time: the backend is
# decided outside the traced region even when torch.compile is the very first call.
@torch.compiler.assume_constant_result
def triton_interpreting() -> bool:
    """True when Triton kernels are (or will be) built in interpreter mode (``TRITON_INTERPRET=1``).

    Triton decides this when a kernel is decorated, i.e. when our kernel modules are first imported,
    so the variable must be set before the first Triton op runs; once they are imported, their mode
    is what counts.
    """
    import sys

    utils = sys.modules.get("regnet_kernels.kernels.triton.runtime")
    if utils is not None:
        return bool(utils.INTERPRET)
    try:
        from triton import knobs  # triton >= 3.4

        return bool(knobs.runtime.interpret)
    except Exception:  # older triton reads the environment directly
        return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_version() -> Optional[str]:
    """The installed Triton's ``__version__``, or None when it does not import (cached)."""

    def probe():
        try:
            import triton

            return triton.__version__
        except Exception:
            return None

    return _cached("triton_version", probe)


def _import_error(key: str, modules: Sequence[str], describe: Callable[[Exception], str]) -> Optional[str]:
    """None if every module of ``modules`` imports, else ``describe(error)`` (cached under ``key``)."""

    def probe():
        try:
            for name in modules:
                importlib.import_module(name)
            return None
        except Exception as e:  # pragma: no cover - depends on the machine
            return describe(e)

    return _cached(key, probe)


def _triton_import_error() -> Optional[str]:
    return _import_error("triton_import", ("triton", "triton.language"),
                         lambda e: f"triton is not importable ({type(e).__name__}: {e})")


def _version_tuple(v: str) -> tuple:
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def cuda_ext_status() -> dict:
    """Whether the compiled extension ``regnet_kernels._C`` loads, and what it was built for."""

    def probe():
        try:
            mod = importlib.import_module("regnet_kernels._C")
        except Exception as e:
            return {"built": False, "error": f"{type(e).__name__}: {e}"}
        info = {"built": True, "error": None}
        for attr in ("build_info",):
            fn = getattr(mod, attr, None)
            if callable(fn):
                try:
                    info.update(fn())
                except Exception as e:  # pragma: no cover
                    info["build_info_error"] = str(e)
        return info

    return _cached("cuda_ext", probe)


def _cupy_status() -> Optional[str]:
    return _import_error("cupy", ("cupy",), lambda e: f"cupy not importable ({type(e).__name__})")


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------
OpCheck = Callable[[Sequence[torch.Tensor]], Optional[str]]
_op_checks: dict = {}


def register_op_check(op: str, backend: str, check: OpCheck) -> None:
    """Register an op-specific check ``check(tensors) -> reason | None`` for ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    _op_checks[(op, backend)] = check


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    _env_check: Callable[[], Optional[str]] = field(repr=False)
    _device_check: Callable[[torch.device], Optional[str]] = field(repr=False)

    def why_not_here(self) -> Optional[str]:
        """Reason this backend cannot run on this machine at all, or None."""
        return self._env_check()

    def why_not_device(self, device: torch.device) -> Optional[str]:
        reason = self._env_check()
        if reason is not None:
            return reason
        return self._device_check(torch.device(device))

    def why_not(self, tensors: Iterable[Optional[torch.Tensor]], op: Optional[str] = None) -> Optional[str]:
        """Reason this backend cannot run ``op`` on ``tensors``, or None if it can."""
        ts = [t for t in tensors if isinstance(t, torch.Tensor)]
        devices = {t.device for t in ts}
        if len({d.type for d in devices}) > 1 or len(devices) > 1:
            return "inputs are on different devices: " + ", ".join(sorted(str(d) for d in devices))
        if ts and all(t.device.type == "meta" for t in ts):
            return None  # meta tensors carry shapes only: every op runs its fake implementation
        if ts:
            reason = self.why_not_device(ts[0].device)
            if reason is not None:
                return reason
        else:
            reason = self._env_check()
            if reason is not None:
                return reason
        if op is not None and (op, self.name) in _op_checks:
            return _op_checks[(op, self.name)](ts)
        return None


def _eager_env() -> Optional[str]:
    return None


def _eager_device(device: torch.device) -> Optional[str]:
    return None


@torch.compiler.assume_constant_result
def _triton_env() -> Optional[str]:
    err = _triton_import_error()
    if err is not None:
        return err
    v = triton_version() or "0"
    if _version_tuple(v) < (3, 1):
        return f"triton {v} is too old (need >= 3.1)"
    return None


def _triton_device(device: torch.device) -> Optional[str]:
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA tensors but torch.cuda is not available"
        return None
    if device.type == "cpu":
        if triton_interpreting():
            return None
        return (
            "triton runs CPU tensors only in interpreter mode: set TRITON_INTERPRET=1 before the "
            "first triton op runs"
        )
    if device.type == "meta" and getattr(sys.modules.get("regnet_kernels.kernels.triton.runtime"), "_RECORDER", None):
        return None  # the launch plan records launches on meta tensors (regnet_kernels.benchmark.plan)
    return f"triton backend does not support device type {device.type!r}"


@torch.compiler.assume_constant_result
def _cuda_env() -> Optional[str]:
    st = cuda_ext_status()
    if not st["built"] and _cupy_status() is not None:
        return (
            "the CUDA extension regnet_kernels._C is not built "
            f"({st['error']}) and the CuPy JIT fallback is unavailable ({_cupy_status()})"
        )
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch (torch.cuda.is_available() is False)"
    return None


def _cuda_device(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return f"the cuda backend needs CUDA tensors, got {device.type} tensors"
    return None


_REGISTRY = {
    "eager": Backend("eager", "pure PyTorch reference (runs anywhere)", _eager_env, _eager_device),
    "triton": Backend(
        "triton",
        "fused Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1)",
        _triton_env,
        _triton_device,
    ),
    "cuda": Backend("cuda", "hand-written CUDA kernels (regnet_kernels._C or CuPy JIT)", _cuda_env, _cuda_device),
}


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(REQUESTABLE)}")
    return _REGISTRY[name]


def why_not(name: str, tensors: Iterable[Optional[torch.Tensor]] = (), op: Optional[str] = None) -> Optional[str]:
    """Reason backend ``name`` cannot run ``op`` on ``tensors`` (None when it can)."""
    return get_backend(name).why_not(list(tensors), op)


# --------------------------------------------------------------------------------------------
# Choosing a backend
# --------------------------------------------------------------------------------------------
_AUTO_TABLE_PATH = Path(__file__).with_name("auto_table.json")


def _load_auto_table() -> dict:
    try:
        with open(_AUTO_TABLE_PATH) as f:
            return json.load(f)
    except FileNotFoundError:  # pragma: no cover - the file ships with the package
        return {}


#: ``{op: {device_type: [backend, ...]}}`` fastest first, from committed benchmark results
#: (``auto_table.json``; each entry names its source).
AUTO_TABLE: dict = _load_auto_table()

_local = threading.local()


def current_override() -> Optional[str]:
    """The backend forced by the innermost :func:`use_backend` block, if any."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force every regnet_kernels op in this block (this thread) onto ``name``.

    Example:
        >>> with regnet_kernels.backends.use_backend("eager"):
        ...     y = model(x)
    """
    if name not in REQUESTABLE:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(REQUESTABLE)}")
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _env_backend() -> Optional[str]:
    v = os.environ.get(ENV_VAR, "").strip().lower()
    if not v:
        return None
    if v not in REQUESTABLE:
        raise ValueError(f"{ENV_VAR}={v!r} is not a backend; known: {', '.join(REQUESTABLE)}")
    return v


def requested(backend: Optional[str] = None) -> str:
    """The backend asked for, after the context manager and environment overrides."""
    override = current_override()
    if override is not None:
        return override
    if backend is not None and backend != "auto":
        if backend not in REQUESTABLE:
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(REQUESTABLE)}")
        return backend
    return _env_backend() or "auto"


def auto_order(op: str, device_type: str) -> list:
    """Backends ``auto`` tries for ``op`` on ``device_type``, fastest first (eager always last)."""
    order = list(AUTO_TABLE.get(op, {}).get(device_type, AUTO_TABLE.get("*", {}).get(device_type, [])))
    if device_type == "cpu":
        order = []  # on CPU tensors auto means eager (the interpreter is for testing, not speed)
    if "eager" not in order:
        order.append("eager")
    return order


def resolve(op: str, tensors: Sequence[Optional[torch.Tensor]], backend: Optional[str] = None) -> str:
    """Pick the backend that runs ``op`` on ``tensors``.

    Raises:
        BackendUnavailableError: an explicitly requested backend cannot run; the message lists
            every backend and why it cannot.
    """
    name = requested(backend)
    ts = [t for t in tensors if isinstance(t, torch.Tensor)]
    if name == "auto":
        dev = ts[0].device.type if ts else "cpu"
        for cand in auto_order(op, dev):
            if why_not(cand, ts, op) is None:
                return cand
        return "eager"
    reason = why_not(name, ts, op)
    if reason is None:
        return name
    lines = [f"backend {name!r} cannot run {op}: {reason}.", "Backends:"]
    for b in BACKENDS:
        r = why_not(b, ts, op)
        lines.append(f"  {b}: {'can run' if r is None else r}")
    raise BackendUnavailableError("\n".join(lines))


def summary() -> list:
    """One dict per backend: can it run here (on CUDA if present, else CPU), and if not, why."""
    dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    rows = []
    for name in BACKENDS:
        b = _REGISTRY[name]
        env = b.why_not_here()
        row = {
            "backend": name,
            "description": b.description,
            "device": str(dev),
            "available": env is None and b.why_not_device(dev) is None,
            "reason": env or b.why_not_device(dev),
        }
        if name == "triton":
            row["version"] = triton_version()
            row["interpreter"] = triton_interpreting()
        if name == "cuda":
            row["extension"] = cuda_ext_status()
            row["cupy"] = _cupy_status() is None
        rows.append(row)
    return rows
