"""The hand-written CUDA backend (csrc/ + regnet_kernels/kernels/cuda/{ext,api}.py, composed by ops/*/fused.py).

CPU (these run in CI):
- the extension: imports when built, build_info() archs, config() == config.cuh, error translation
  (bad arguments -> ValueError, CUDA errors -> RuntimeError naming the CUDA error);
- the backend registry and CLI on a machine without a GPU: clean "why not" reasons, explicit requests
  raise BackendUnavailableError, ``python -m regnet_kernels info`` reports the extension;
- setup.py without nvcc (one warning, pure-Python install) and its nvcc / architecture parsing;
- the JIT path: NVRTC compiles csrc/kernels with every name expression the CuPy fallback uses (where
  libnvrtc is found);
- the real kernels and launchers under the CPU emulation of the CUDA execution model
  (csrc/emulate.h, built here with the host compiler): the conv_bn_act and squeeze_excite numerics
  suites (the same flash-attention rule vs float64 as for Triton), layouts, running statistics,
  opcheck, determinism.

GPU: test_cuda_gpu.py (and the parametrized suites of test_conv_bn_act.py / test_squeeze_excite.py, which
also run the cuda backend there).
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import conv_bn_act_checks as cba_checks
import edge_checks
import squeeze_excite_checks as se_checks
from conftest import HAS_CUDA
from cuda_helpers import CSRC, ROOT, SETUP, check_fully_written_and_deterministic, extension
from regnet_kernels import backends
from regnet_kernels.kernels.activation import Act
from regnet_kernels.kernels.cuda import ext as _cuda_ext
from regnet_kernels.ops import conv_bn_act, squeeze_excite
from regnet_kernels.testing import rel_err


# ------------------------------------------------------------------------------------------------
# The compiled extension
# ------------------------------------------------------------------------------------------------
def test_extension_imports_and_reports_archs():
    ext = extension()
    info = ext.build_info()
    assert info["emulated"] is False
    if os.environ.get("REGNET_KERNELS_CUDA_ARCH_LIST"):
        pytest.skip("built for a custom REGNET_KERNELS_CUDA_ARCH_LIST")
    assert {"sm_80", "sm_90"} <= set(info["archs"]), info
    assert "compute_90" in info["ptx"], info
    assert info["cuda_version"] and info["compiler"].startswith("nvcc"), info
    # the registry sees the same facts
    st = backends.cuda_ext_status()
    assert st["built"] and "sm_90" in st["archs"]


def test_extension_needs_no_torch_or_cudart_at_runtime():
    ext = extension()
    if not sys.platform.startswith("linux") or shutil.which("ldd") is None:
        pytest.skip("ldd check is Linux-only")
    deps = subprocess.run(["ldd", ext.__file__], capture_output=True, text=True).stdout
    assert "libtorch" not in deps and "libc10" not in deps, deps
    assert "libcudart" not in deps, f"the CUDA runtime must be linked statically:\n{deps}"


def test_config_matches_header():
    ext = extension()
    assert ext.config() == _cuda_ext.read_config()


@pytest.mark.parametrize("c_in,c_out,groups", [(3, 16, 1), (256, 256, 1), (232, 232, 29), (48, 48, 2), (120, 120, 5),
                                               (64, 128, 8), (24, 40, 1)])
def test_wgrad_channel_chunks_agree(c_in, c_out, groups):
    ext = extension()
    assert ext.wgrad_channel_chunks(c_in, c_out, groups) == _cuda_ext.wgrad_channel_chunks(c_in, c_out, groups)


def test_launcher_errors_become_python_exceptions():
    ext = extension()
    # argument validation happens before any CUDA call: ValueError naming the launcher and the problem
    with pytest.raises(ValueError, match=r"bn_act: dtype code 7"):
        ext.bn_act(7, 1, 2, 3, 4, 5, 8, 8, 1, True, 0)
    with pytest.raises(ValueError, match=r"conv_fwd: groups=3 must divide"):
        ext.conv_fwd(0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 1, 8, 5, 5, 8, 5, 5, 3, 3, 1, 1, 3,
                     0, 0, 0, 0, 0, False, 0)
    with pytest.raises(ValueError, match=r"conv_dgrad: dy is a null pointer"):
        ext.conv_dgrad(1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 1, 8, 5, 5, 8, 5, 5, 3, 3, 1, 1, 1, 0)
    with pytest.raises(ValueError, match=r"output size"):
        ext.conv_fwd(0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 1, 8, 5, 5, 8, 4, 5, 3, 3, 1, 1, 1,
                     0, 0, 0, 0, 0, False, 0)
    with pytest.raises(TypeError):  # pybind11 rejects a non-integer pointer
        ext.bn_act(0, "x", 2, 3, 4, 5, 8, 8, 1, True, 0)
    if not HAS_CUDA:
        # a well-formed launch on a machine without a usable GPU: the CUDA error comes back as RuntimeError
        with pytest.raises(RuntimeError, match=r"bn_running_update: CUDA error cuda\w+: "):
            ext.bn_running_update(1, 2, 0, 3, 4, 8, 0.1, False, 0)


# ------------------------------------------------------------------------------------------------
# Registry, ops and CLI without a GPU
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU reasons")
def test_why_not_cuda_without_gpu():
    reason = backends.why_not("cuda", [torch.empty(1)])
    assert isinstance(reason, str) and reason
    assert "GPU" in reason or "CUDA" in reason, reason
    assert backends.why_not("cuda", [torch.empty(1)], "conv_bn_act") == reason
    row = [r for r in backends.summary() if r["backend"] == "cuda"][0]
    assert row["available"] is False and row["reason"]


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU error")
def test_explicit_cuda_backend_on_cpu_raises():
    x, w = torch.randn(2, 8, 5, 5), torch.randn(8, 4, 3, 3)
    g, b = torch.ones(8), torch.zeros(8)
    cuda_reason = backends.why_not("cuda", [x])
    with pytest.raises(backends.BackendUnavailableError, match="cuda") as ei:
        conv_bn_act(x, w, g, b, groups=2, backend="cuda")
    assert cuda_reason in str(ei.value)
    with pytest.raises(backends.BackendUnavailableError, match="cuda"):
        squeeze_excite(x, torch.randn(2, 8), None, torch.randn(8, 2), None, backend="cuda")
    # the cuda.py entry points refuse CPU tensors on their own too
    from regnet_kernels.ops.dispatch import bind
    cu = bind("regnet_kernels.ops.conv_bn_act", "cuda")

    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        cu.conv_bn_act_eval(x, w, g, b, torch.zeros(8), torch.ones(8), 1, 1, 2, 1e-5, Act.RELU)


def test_info_mentionsextension():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "regnet_kernels", "info"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "regnet_kernels._C" in res.stdout, res.stdout
    try:
        importlib.import_module("regnet_kernels._C")
        built = True
    except ImportError:
        built = False
    if built:
        assert "built (archs:" in res.stdout and "sm_90" in res.stdout, res.stdout
    else:
        assert "not built" in res.stdout, res.stdout


# ------------------------------------------------------------------------------------------------
# setup.py
# ------------------------------------------------------------------------------------------------
def test_find_nvcc_rules(tmp_path):
    fake = tmp_path / "cuda" / "bin"
    fake.mkdir(parents=True)
    nvcc = fake / "nvcc"
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    assert SETUP.find_nvcc({"CUDA_HOME": str(tmp_path / "cuda"), "PATH": ""}) == str(nvcc)
    assert SETUP.find_nvcc({"CUDACXX": str(nvcc)}) == str(nvcc)
    # an explicit CUDA_HOME without nvcc means "no nvcc", whatever else is around
    assert SETUP.find_nvcc({"CUDA_HOME": str(tmp_path / "none"), "PATH": str(fake)}) is None
    assert SETUP.find_nvcc({"CUDACXX": str(tmp_path / "missing")}) is None
    assert SETUP.skip_reason({"REGNET_KERNELS_NO_CUDA": "1"}).startswith("REGNET_KERNELS_NO_CUDA")
    assert "nvcc not found" in SETUP.skip_reason({"CUDA_HOME": str(tmp_path / "none")})


def test_parse_arch_list():
    p = SETUP.parse_arch_list
    assert p("") == ["80-real", "90-real", "90-virtual"]
    assert p("80;90") == ["80-real", "90-real"]
    assert p("8.0;9.0+PTX") == ["80-real", "90-real", "90-virtual"]
    assert p("sm_80, sm_90a") == ["80-real", "90a-real"]
    assert p("compute_90") == ["90-real"]
    with pytest.raises(ValueError, match="Ampere"):
        p("Ampere")


def _copy_project(dst: Path) -> Path:
    ignore = shutil.ignore_patterns("_C*.so", "__pycache__", "*.egg-info", "build")
    for name in ("setup.py", "pyproject.toml", "README.md", "CMakeLists.txt"):
        shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / "regnet_kernels", dst / "regnet_kernels", ignore=ignore)
    shutil.copytree(CSRC, dst / "csrc", ignore=ignore)
    return dst


@pytest.mark.parametrize("how", ["no_nvcc", "opt_out"])
def test_setup_without_nvcc_is_pure_python(tmp_path, how):
    proj = _copy_project(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDACXX", "CUDA_PATH", "REGNET_KERNELS_NO_CUDA")}
    if how == "no_nvcc":
        env["CUDA_HOME"] = str(tmp_path / "no-cuda-here")
        env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep)
                                      if d and not os.path.exists(os.path.join(d, "nvcc")))
    else:
        env["REGNET_KERNELS_NO_CUDA"] = "1"
    res = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=proj, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    expected = "nvcc not found" if how == "no_nvcc" else "REGNET_KERNELS_NO_CUDA is set"
    assert out.count("WARNING [regnet_kernels]") == 1 and expected in out, out
    assert not list((proj / "regnet_kernels").glob("_C*.so"))


# ------------------------------------------------------------------------------------------------
# The JIT path: NVRTC over the same sources
# ------------------------------------------------------------------------------------------------
def test_name_expressions_cover_every_kernel():
    src = _cuda_ext.inline_sources(_cuda_ext.kernels_dir() / "all.cuh")
    import re

    defined = set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", src))
    named = {n.split("::")[1].split("<")[0] for n in _cuda_ext.kernel_name_expressions()}
    assert defined == named, (defined ^ named)
    for launcher in glob.glob(str(CSRC / "*.cu")):
        for k in re.findall(r"auto kern = (\w+)", Path(launcher).read_text()):
            assert k in named, f"{launcher} launches {k}, which the CuPy fallback does not know"


def _kernel_signatures() -> dict:
    """``{kernel: ["ptr" | "i64" | "f32", ...]}`` parsed from csrc/kernels."""
    import re

    src = _cuda_ext.inline_sources(_cuda_ext.kernels_dir() / "all.cuh")
    sigs = {}
    pat = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(([^)]*)\)\s*\{", re.S)
    for name, params in pat.findall(src):
        kinds = []
        for prm in params.split(","):
            prm = " ".join(prm.split())
            kinds.append("ptr" if "*" in prm else "f32" if prm.startswith("float ") else
                         "i64" if prm.startswith("long long ") else f"?{prm}")
        sigs[name] = kinds
    return sigs


class _Tee:
    """Launches go to the emulation (which computes) and to a second library (which records)."""

    def __init__(self, primary, secondary):
        self.primary, self.secondary = primary, secondary

    def __getattr__(self, name):
        fn = getattr(self.primary, name)
        if name in ("build_info", "config", "wgrad_channel_chunks"):
            return fn
        other = getattr(self.secondary, name)

        def both(*args):
            other(*args)
            return fn(*args)

        return both


def test_cupy_fallback_marshals_every_kernel_argument(emulated_cuda, monkeypatch):
    """Run the suites' cases through the emulation while the CuPy fallback (with a recording stand-in for
    CuPy) receives the same launcher calls: every kernel it would launch gets arguments whose count and
    types (uint64 pointer, int64, float32) match the kernel's C++ signature, and a valid grid."""
    import types

    import numpy as np

    calls = []

    class _Fn:
        def __init__(self, name):
            self.name = name

        def __call__(self, grid, block, args, stream=None):
            calls.append((self.name, grid, block, args))

    class _RawModule:
        def __init__(self, code, options, name_expressions):
            assert "regnet::conv_fwd_kernel<__nv_bfloat16>" in name_expressions and "__global__" in code
            self.names = set(name_expressions)

        def get_function(self, name):
            assert name in self.names, name
            return _Fn(name)

    fake = types.SimpleNamespace(
        RawModule=_RawModule,
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0), ExternalStream=lambda s: s,
                                   get_cuda_path=lambda: None))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    jit = _cuda_ext.CupyLib()
    with _cuda_ext.use_lib(_Tee(emulated_cuda, jit)):
        cba_checks.compare(cba_checks.CONFIGS["gw8_s2_odd"], torch.float16, True, backend="cuda")
        cba_checks.compare(cba_checks.CONFIGS["stem_3to16_s2"], torch.bfloat16, False, backend="cuda")
        se_checks.compare(se_checks.SHAPES["odd_9x9"], torch.float32, backend="cuda")
    sigs = _kernel_signatures()
    kind = {np.uint64: "ptr", np.int64: "i64", np.float32: "f32"}
    seen = set()
    for name, grid, block, args in calls:
        kernel = name.split("::")[1].split("<")[0]
        seen.add(kernel)
        assert [kind.get(type(a), repr(type(a))) for a in args] == sigs[kernel], kernel
        assert all(isinstance(g, int) and g >= 1 for g in grid) and len(grid) <= 3, (kernel, grid)
        assert 1 <= int(np.prod(block)) <= 1024, (kernel, block)
    assert seen == set(sigs), set(sigs) - seen


def _find_nvrtc():
    cands = []
    if os.environ.get("REGNET_KERNELS_NVRTC"):
        cands.append(os.environ["REGNET_KERNELS_NVRTC"])
    nvcc = SETUP.find_nvcc()
    if nvcc:
        cands += glob.glob(str(Path(nvcc).resolve().parent.parent / "lib64" / "libnvrtc.so*"))
    cands += glob.glob("/usr/local/cuda/lib64/libnvrtc.so*")
    for mod in ("nvidia.cu13", "nvidia.cuda_nvrtc"):
        try:
            m = importlib.import_module(mod)
            for base in m.__path__:
                cands += glob.glob(os.path.join(base, "lib", "libnvrtc.so*"))
        except ImportError:
            pass
    for c in cands:
        if "builtins" in c or "alt" in os.path.basename(c):
            continue
        try:
            return ctypes.CDLL(c)
        except OSError:
            continue
    return None


def _cuda_include():
    nvcc = SETUP.find_nvcc()
    cands = ([Path(nvcc).resolve().parent.parent / "include"] if nvcc else []) + [Path("/usr/local/cuda/include")]
    for c in cands:
        if (c / "cuda_fp16.h").is_file():
            return c
    return None


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_kernels_compile_with_nvrtc(arch):
    nvrtc = _find_nvrtc()
    if nvrtc is None:
        pytest.skip("libnvrtc not found (CUDA toolkit lib64, nvidia-cuda-nvrtc, or REGNET_KERNELS_NVRTC)")
    inc = _cuda_include()
    src = _cuda_ext.inline_sources(_cuda_ext.kernels_dir() / "all.cuh")
    names = _cuda_ext.kernel_name_expressions()
    prog = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"regnet_kernels.cu", 0, None, None) == 0
    try:
        for n in names:
            assert nvrtc.nvrtcAddNameExpression(prog, n.encode()) == 0
        opts = ["--std=c++17", f"-arch={arch}"] + ([f"-I{inc}"] if inc else [])
        res = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts]))
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        if res == 7:  # NVRTC_ERROR_BUILTIN_OPERATION_FAILURE: libnvrtc-builtins not loadable here
            pytest.skip(f"libnvrtc is not usable here: {log.value.decode()[:200]}")
        assert res == 0, log.value.decode()
        for n in names:
            lowered = ctypes.c_char_p()
            assert nvrtc.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(lowered)) == 0, n
            assert lowered.value.startswith(b"_ZN6regnet"), (n, lowered.value)
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))


# ------------------------------------------------------------------------------------------------
# The real kernels under the CPU emulation (csrc/emulate.h)
# ------------------------------------------------------------------------------------------------
def _build_emulator() -> Path:
    """Compile csrc/*.cu + bindings.cpp with the host compiler and -DREGNET_EMULATE into a Python module
    (cached under build/ by a hash of the sources and flags); returns its path or skips with the reason."""
    inc = _cuda_include()
    if inc is None:
        pytest.skip("CUDA headers (cuda_fp16.h) not found: the emulation reuses their host-side fp16/bf16 types")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    from torch.utils.cpp_extension import include_paths  # torch's bundled pybind11 headers

    includes = [f"-I{CSRC}", f"-I{inc}", f"-I{sysconfig.get_paths()['include']}"]
    includes += [f"-I{p}" for p in include_paths()]
    flags = ["-O2", "-std=c++20", "-fPIC", "-fvisibility=hidden", "-DREGNET_EMULATE", "-DREGNET_MODULE_NAME=_C_emu"]
    sources = sorted(CSRC.glob("*.cu")) + [CSRC / "bindings.cpp"]
    h = hashlib.sha256(" ".join([cxx] + flags + includes + [torch.__version__, sys.version]).encode())
    for f in sorted(CSRC.rglob("*")):
        if f.is_file() and f.suffix in (".cu", ".cuh", ".h", ".cpp"):
            h.update(f.name.encode() + f.read_bytes())
    out_dir = ROOT / "build" / "emulator" / h.hexdigest()[:16]
    so = out_dir / ("_C_emu" + sysconfig.get_config_var("EXT_SUFFIX"))
    if so.is_file():
        return so
    out_dir.mkdir(parents=True, exist_ok=True)

    def compile_one(src: Path) -> Path:
        obj = out_dir / (src.name + ".o")
        cmd = [cxx, *flags, *includes, "-x", "c++", "-c", str(src), "-o", str(obj)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"emulator build failed: {' '.join(cmd)}\n{res.stderr[-4000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=max(1, min(len(sources), os.cpu_count() or 2))) as pool:
        objs = list(pool.map(compile_one, sources))
    tmp = so.with_suffix(".tmp")
    res = subprocess.run([cxx, "-shared", *map(str, objs), "-o", str(tmp)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    os.replace(tmp, so)
    return so


class CountingLib:
    """Forwards to the emulation module and counts launcher calls (proof that the kernels ran)."""

    def __init__(self, mod):
        self.mod = mod
        self.calls: dict = {}

    def __getattr__(self, name):
        fn = getattr(self.mod, name)
        if name in ("build_info", "config", "wgrad_channel_chunks"):
            return fn

        def wrapped(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args)

        return wrapped


@pytest.fixture(scope="session")
def emulator_module():
    so = _build_emulator()
    spec = importlib.util.spec_from_file_location("_C_emu", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.build_info()["emulated"] is True
    return mod


@pytest.fixture
def emulated_cuda(emulator_module, monkeypatch):
    """The ``cuda`` backend, on CPU tensors, through the emulated launchers: the registry is told the
    backend can run, and every launch goes to the emulation module."""
    if HAS_CUDA:
        pytest.skip("a GPU is present: the real kernels run in the GPU tests")
    monkeypatch.setitem(backends._REGISTRY, "cuda",
                        backends.Backend("cuda", "emulated on the CPU (tests)", lambda: None, lambda d: None))
    lib = CountingLib(emulator_module)
    with _cuda_ext.use_lib(lib):
        yield lib


def test_emulator_matches_extension_constants(emulator_module):
    assert emulator_module.config() == _cuda_ext.read_config()


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_dt = {"ids": lambda d: str(d).split(".")[-1]}


@pytest.mark.parametrize("dtype", DTYPES, **_dt)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(cba_checks.CONFIGS))
def test_emulated_conv_bn_act_matches_oracle(emulated_cuda, name, training, dtype):
    cba_checks.compare(cba_checks.CONFIGS[name], dtype, training, backend="cuda")


@pytest.mark.parametrize("layout", ["channels_last", "noncontig"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ["gw8_s2_odd", "stem_3to16_s2", "1x1_c24to40"])
def test_emulated_conv_bn_act_layouts(emulated_cuda, name, training, layout):
    got, _ = cba_checks.compare(cba_checks.CONFIGS[name], torch.float16, training, layout=layout, backend="cuda")
    assert got["channels_last"] == (layout == "channels_last")


@pytest.mark.parametrize("splits", [1, 3])
def test_emulated_conv_bn_act_semantics(emulated_cuda, monkeypatch, splits):
    from regnet_kernels.kernels.cuda import api as cuda_kernels

    monkeypatch.setattr(cuda_kernels, "WGRAD_SPLITS", splits)  # split-K with an uneven last split, and without
    for training in (True, False):
        cba_checks.check_no_activation("cuda", training)
    cba_checks.check_batch_one_eval("cuda")
    cba_checks.check_large_mean_input("cuda")
    cba_checks.check_running_stats_semantics("cuda")
    cba_checks.check_autocast("cuda")
    for launcher in ("conv_fwd", "bn_finalize", "bn_act", "bn_bwd_reduce", "sum_rows", "bn_bwd_dy", "conv_dgrad",
                     "conv_wgrad", "wgrad_reduce", "bn_running_update"):
        assert emulated_cuda.calls.get(launcher, 0) >= 1, (launcher, emulated_cuda.calls)


def test_emulated_conv_bn_act_opcheck(emulated_cuda):
    cba_checks.check_opcheck("cuda")


def test_emulated_conv_bn_act_is_deterministic(emulated_cuda):
    from regnet_kernels.ops.dispatch import bind
    cu = bind("regnet_kernels.ops.conv_bn_act", "cuda")

    torch.manual_seed(0)
    x = torch.randn(2, 32, 9, 9, dtype=torch.float16)
    w = (torch.randn(32, 8, 3, 3) * 0.2).half()
    g, b = torch.rand(32) + 0.5, torch.randn(32)
    runs = []
    for _ in range(2):
        out, y, mean, invstd, _ = cu.conv_bn_act_train(x, w, g, b, 2, 1, 4, 1e-5, Act.RELU)
        go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).half()
        runs.append((out, mean) + cu.conv_bn_act_train_backward(go, x, w, y, mean, invstd, g, b, 2, 1, 4, Act.RELU,
                                                                [True] * 4))
    for a, b_ in zip(*runs):
        assert torch.equal(a, b_)


def test_emulated_sync_batchnorm_plumbing(emulated_cuda, tmp_path):
    """The SyncBatchNorm path (``group=``) on one gloo rank gives the unsynchronised results, and the
    reference's synchronised ones."""
    import torch.distributed as dist

    from regnet_kernels.ops.dispatch import bind
    cu = bind("regnet_kernels.ops.conv_bn_act", "cuda")
    from regnet_kernels.ops.conv_bn_act import reference as ref

    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        group = dist.group.WORLD
        torch.manual_seed(0)
        x = torch.randn(2, 32, 9, 9)
        w = torch.randn(32, 8, 3, 3) * 0.2
        g, b = torch.rand(32) + 0.5, torch.randn(32)
        args = (2, 1, 4, 1e-5, Act.RELU)
        synced = cu.conv_bn_act_train(x, w, g, b, *args, group=group)
        plain = cu.conv_bn_act_train(x, w, g, b, *args)
        oracle = ref.conv_bn_act_train(x, w, g, b, *args, group=group)
        for a, p_, o in zip(synced, plain, oracle):
            assert rel_err(a, p_) < 1e-6 and rel_err(a, o) < 1e-5
        go = torch.randn_like(synced[0])
        bargs = (2, 1, 4, Act.RELU, [True] * 4)
        gs = cu.conv_bn_act_train_backward(go, x, w, synced[1], synced[2], synced[3], g, b, *bargs, group=group)
        gp = cu.conv_bn_act_train_backward(go, x, w, plain[1], plain[2], plain[3], g, b, *bargs)
        go_ = ref.conv_bn_act_train_backward(go, x, w, oracle[1], oracle[2], oracle[3], g, b, *bargs, group=group)
        for a, p_, o in zip(gs, gp, go_):
            assert rel_err(a, p_) < 1e-6 and rel_err(a, o) < 1e-5
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("dtype", DTYPES, **_dt)
@pytest.mark.parametrize("name", [n for n in se_checks.SHAPES if n != "112x112"])
def test_emulated_squeeze_excite_matches_oracle(emulated_cuda, name, dtype):
    se_checks.compare(se_checks.SHAPES[name], dtype, backend="cuda")


def test_emulated_squeeze_excite_large_and_layouts(emulated_cuda):
    se_checks.compare(se_checks.SHAPES["112x112"], torch.float32, backend="cuda")
    for layout in ("channels_last", "noncontig"):
        got = se_checks.compare(se_checks.SHAPES["odd_9x9"], torch.bfloat16, layout, backend="cuda")
        assert got["channels_last"] == (layout == "channels_last")
    se_checks.check_no_bias_and_2d_weights("cuda")
    se_checks.check_opcheck("cuda")
    for launcher in ("se_reduce", "se_fc_fwd", "se_scale", "se_fc_bwd", "se_dx", "se_outer"):
        assert emulated_cuda.calls.get(launcher, 0) >= 1, (launcher, emulated_cuda.calls)


def test_emulated_squeeze_excite_batch_not_multiple_of_block(emulated_cuda):
    """N = 7 samples: the FC kernels handle SE_NB-sample blocks with a partial last block."""
    se_checks.compare((7, 24, 6, 3, 5), torch.float32, backend="cuda")


@pytest.mark.parametrize("case", edge_checks.CASES, ids=[c.id for c in edge_checks.CASES])
def test_emulated_edges(emulated_cuda, case):
    """The edge table through the cuda backend (blocks: per-op fusion): NaN/Inf, empty batches, refusals
    (grouped NaN: the NaN stays in its own group's outputs and gradients, as in eager)."""
    edge_checks.check_module_edges(case, "cuda")


def _assert_same_nonfinite(name, got, want, tol):
    """NaN and ±Inf exactly where the float64 reference has them; finite values within ``tol`` (relative)."""
    got, want = got.double(), want.double()
    assert torch.equal(got.isnan(), want.isnan()), f"{name}: NaN at {got.isnan().sum()} vs {want.isnan().sum()} places"
    assert torch.equal(got.isinf(), want.isinf()), f"{name}: Inf at {got.isinf().sum()} vs {want.isinf().sum()} places"
    inf = want.isinf()
    assert torch.equal(got[inf], want[inf]), f"{name}: Inf signs differ"
    fin = torch.isfinite(want)
    assert rel_err(got[fin], want[fin]) < tol, name


@pytest.mark.parametrize("dtype", DTYPES, **_dt)
@pytest.mark.parametrize("geo", [(32, 32, 4, 1), (16, 48, 4, 2)], ids=["gw8", "cin4_cout12_s2"])
def test_emulated_grouped_conv_nonfinite_stays_in_group(emulated_cuda, geo, dtype):
    """A NaN / +Inf / -Inf in x (forward, weight gradient) or in the output gradient (data gradient) of a
    grouped conv whose 64-channel tiles span several groups reaches only its own group's outputs and
    gradients, with eager's values: NaN where an Inf meets an in-group zero weight, signed Inf otherwise."""
    from regnet_kernels.ops.dispatch import bind
    cu = bind("regnet_kernels.ops.conv_bn_act", "cuda")
    from regnet_kernels.ops.conv_bn_act import reference as ref

    c_in, c_out, groups, stride = geo
    cin_g, cout_g = c_in // groups, c_out // groups
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, c_in, 5, 5, generator=gen)
    x[0, 1, 2, 2] = float("nan")               # group 0
    x[1, cin_g + 1, 0, 4] = float("inf")        # group 1
    x[1, 2 * cin_g + 2, 3, 1] = float("-inf")   # group 2
    w = torch.randn(c_out, cin_g, 3, 3, generator=gen) * 0.3
    w[cout_g + 2, 1, :, :] = 0.0                # group 1: Inf * 0 = NaN in that output channel only
    g, b = torch.rand(c_out, generator=gen) + 0.5, torch.randn(c_out, generator=gen)
    rm, rv = torch.randn(c_out, generator=gen) * 0.1, torch.rand(c_out, generator=gen) + 0.5
    x, w = x.to(dtype), w.to(dtype)
    args = (stride, 1, groups, 1e-5, Act.NONE)
    out = cu.conv_bn_act_eval(x, w, g, b, rm, rv, *args)
    f64 = [t.double() for t in (x, w, g, b, rm, rv)]
    want = ref.conv_bn_act_eval(*f64, *args)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    _assert_same_nonfinite("out", out, want, tol)
    assert want.isnan().any() and want.isinf().any() and torch.isfinite(want[:, 3 * cout_g:]).all()

    go = torch.randn(out.shape, generator=gen)
    go[0, 3, 1, 1] = float("nan")               # group 0
    go[1, cout_g + 1, 2, 0] = float("inf")      # group 1
    go[0, 2 * cout_g, 0, 2] = float("-inf")     # group 2
    go = go.to(dtype)
    got = cu.conv_bn_act_eval_backward(go, x, w, out, g, b, rm, rv, *args, [True] * 4)
    want = ref.conv_bn_act_eval_backward(go.double(), *f64[:2], want, *f64[2:], *args, [True] * 4)
    for name, a, e in zip(("dx", "dw", "dgamma", "dbeta"), got, want):
        _assert_same_nonfinite(name, a, e, tol)
    assert torch.isfinite(want[0][:, 3 * cin_g:]).all() and torch.isfinite(want[1][3 * cout_g:]).all()
    assert want[0].isnan().any() and want[1].isnan().any()


def test_emulated_outputs_fully_written_and_deterministic(emulated_cuda, monkeypatch):
    from regnet_kernels.kernels.cuda import api as cuda_kernels

    monkeypatch.setattr(cuda_kernels, "WGRAD_SPLITS", 2)
    check_fully_written_and_deterministic("cpu")
