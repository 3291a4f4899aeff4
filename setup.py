"""Build script: the pure-Python package plus, where ``nvcc`` is found, the torch-free CUDA extension
``regnet_kernels._C`` (``csrc/``, built by CMake with Ninja; see ``csrc/README.md``).

The extension is optional. Without nvcc the install is pure Python and prints one warning; a failed
CUDA build prints a warning and the install goes on (the ``cuda`` backend then says why it cannot run,
and may still JIT the same kernels through CuPy). Both ``pip install -e .`` and
``python setup.py build_ext --inplace`` leave ``regnet_kernels/_C*.so`` in the source tree.

Environment:
    REGNET_KERNELS_NO_CUDA=1            skip the extension.
    REGNET_KERNELS_CUDA_ARCH_LIST       target GPUs: "80;90" (SASS each), "8.0;9.0+PTX"
                                        (TORCH_CUDA_ARCH_LIST style), "sm_80,sm_90", "90a".
                                        Default: SASS for sm_80 and sm_90, plus compute_90 PTX.
    CUDA_HOME / CUDA_PATH               the toolkit (its bin/nvcc); when set, it is the only place looked at.
    CUDACXX                             the nvcc binary itself.
    REGNET_KERNELS_BUILD_JOBS           parallel compile jobs (default: the CPU count).
    REGNET_KERNELS_BUILD_TYPE           CMake build type (default: Release).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Mapping, Optional

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = ["80-real", "90-real", "90-virtual"]
_WARNED: set = set()


def warn(msg: str) -> None:
    """One clearly marked warning on stderr (pip shows build output with -v or on failure)."""
    if msg in _WARNED:
        return
    _WARNED.add(msg)
    print(f"\nWARNING [regnet_kernels]: {msg}\n", file=sys.stderr, flush=True)


def find_nvcc(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Path of the nvcc to build with, or None.

    Order: ``CUDACXX``; ``CUDA_HOME`` / ``CUDA_PATH`` (when set, nothing else is searched); ``nvcc`` on
    ``PATH``; ``/usr/local/cuda/bin/nvcc``.
    """
    env = os.environ if environ is None else environ

    def usable(p: Optional[str]) -> Optional[str]:
        return p if p and os.path.isfile(p) and os.access(p, os.X_OK) else None

    if env.get("CUDACXX"):
        return usable(env["CUDACXX"])
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            return usable(os.path.join(env[var], "bin", "nvcc"))
    on_path = shutil.which("nvcc", path=env.get("PATH", ""))
    return usable(on_path) or usable("/usr/local/cuda/bin/nvcc")


def parse_arch_list(spec: str) -> List[str]:
    """CMake architecture entries for a user spec.

    ``"80;90"`` -> ``["80-real", "90-real"]``; ``"8.0;9.0+PTX"`` -> ``["80-real", "90-real", "90-virtual"]``;
    ``"sm_80,sm_90a"`` -> ``["80-real", "90a-real"]``; empty -> the default (sm_80, sm_90 + compute_90 PTX).

    Raises:
        ValueError: an entry that is not an architecture.
    """
    out: List[str] = []
    for item in re.split(r"[;,\s]+", spec.strip()):
        if not item:
            continue
        ptx = item.upper().endswith("+PTX")
        arch = item[:-4] if ptx else item
        arch = re.sub(r"^(sm_|compute_)", "", arch).replace(".", "")
        if not re.fullmatch(r"[0-9]+[af]?", arch):
            raise ValueError(f"REGNET_KERNELS_CUDA_ARCH_LIST: cannot parse architecture {item!r}")
        for entry in [f"{arch}-real"] + ([f"{arch}-virtual"] if ptx else []):
            if entry not in out:
                out.append(entry)
    return out or list(DEFAULT_ARCHS)


def skip_reason(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Why the CUDA extension is not built here (None: build it)."""
    env = os.environ if environ is None else environ
    if env.get("REGNET_KERNELS_NO_CUDA", "").strip() not in ("", "0"):
        return "REGNET_KERNELS_NO_CUDA is set: skipping the CUDA extension regnet_kernels._C (pure-Python install)"
    if find_nvcc(env) is None:
        return ("nvcc not found (CUDACXX, CUDA_HOME/CUDA_PATH, PATH, /usr/local/cuda): installing without the CUDA "
                "extension regnet_kernels._C; the 'cuda' backend will be unavailable unless CuPy can JIT the kernels")
    return None


def _tool(name: str) -> Optional[str]:
    """A build tool from PATH or from its PyPI package (cmake, ninja)."""
    found = shutil.which(name)
    if found:
        return found
    try:
        mod = __import__(name)
        cand = Path(getattr(mod, "BIN_DIR", getattr(mod, "CMAKE_BIN_DIR", ""))) / name
        return str(cand) if cand.is_file() else None
    except Exception:
        return None


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: Path):
        super().__init__(name, sources=[])
        self.sourcedir = str(sourcedir)


class BuildExt(build_ext):
    """Build CMake extensions; never fail the install because of the optional CUDA extension."""

    def run(self):
        reason = skip_reason()
        if reason is not None:
            warn(reason)
            self.extensions = []
        super().run()

    def build_extensions(self):
        built = []
        for ext in self.extensions:
            try:
                self._build_cmake(ext)
                built.append(ext)
            except Exception as e:  # noqa: BLE001 - any failure means "no extension", with the reason
                warn(f"building the CUDA extension {ext.name} failed; installing without it "
                     f"(the 'cuda' backend will say why it cannot run).\n  {type(e).__name__}: {e}")
        self.extensions = built  # setuptools copies only these in place (editable / --inplace)

    def _build_cmake(self, ext: CMakeExtension) -> None:
        cmake = _tool("cmake")
        if cmake is None:
            raise RuntimeError("cmake not found (pip install cmake)")
        nvcc = find_nvcc()
        out_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        out_dir = out_path.parent
        build_dir = Path(self.build_temp).resolve() / "regnet_kernels_cuda"
        build_dir.mkdir(parents=True, exist_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        archs = parse_arch_list(os.environ.get("REGNET_KERNELS_CUDA_ARCH_LIST", ""))
        build_type = os.environ.get("REGNET_KERNELS_BUILD_TYPE", "Release")
        args = [
            cmake, "-S", ext.sourcedir, "-B", str(build_dir),
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_CUDA_COMPILER={nvcc}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DREGNET_KERNELS_CUDA_ARCHITECTURES={';'.join(archs)}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build_dir / 'out'}",
        ]
        try:
            import pybind11

            args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError as e:
            raise RuntimeError("pybind11 is not installed in the build environment (pip install pybind11)") from e
        ninja = _tool("ninja")
        if ninja is not None:
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        jobs = os.environ.get("REGNET_KERNELS_BUILD_JOBS") or str(os.cpu_count() or 2)
        print(f"[regnet_kernels] building {ext.name} for CUDA architectures {archs} with {nvcc}", flush=True)
        subprocess.run(args, check=True)
        subprocess.run([cmake, "--build", str(build_dir), "--config", build_type, "-j", jobs], check=True)
        built = sorted((build_dir / "out").glob("_C*.so")) + sorted((build_dir / "out").glob("_C*.pyd"))
        if not built:
            raise RuntimeError(f"CMake finished but produced no _C module in {build_dir / 'out'}")
        shutil.copyfile(built[0], out_path)


if __name__ == "__main__":
    setup(
        ext_modules=[CMakeExtension("regnet_kernels._C", ROOT)],
        cmdclass={"build_ext": BuildExt},
    )
