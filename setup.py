"""Installs histream_engine (python/histream_engine), its Triton kernels (kernels/ -> histream_engine.kernels), its
benchmark suite (bench/ -> histream_engine.bench) and, where nvcc is found, its CUDA kernels (csrc/ ->
histream_engine._C, built by CMakeLists.txt). HISTREAM_SKIP_CUDA_BUILD=1 skips that build; HISTREAM_CUDA_ARCHS
(default "80;90a") picks the GPU architectures.

CMake's tree is kept between installs in build/cmake-<python tag>/ (pip builds each install in a fresh temporary
folder), with a stamp of what the last _C there was built from: the sources under csrc/, CMakeLists.txt and the
build's options. An install whose stamp matches copies that _C and runs neither CMake nor nvcc; any change to them
builds again, in the same tree."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Callable

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _skip_reason() -> str | None:
    if os.environ.get("HISTREAM_SKIP_CUDA_BUILD") == "1":
        return "HISTREAM_SKIP_CUDA_BUILD=1"
    if _nvcc() is None:
        return "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    if shutil.which("cmake") is None:
        return "cmake was not found"
    try:
        import pybind11  # noqa: F401
    except ImportError:
        return "pybind11 is not installed (pip install pybind11)"
    return None


STAMP = "histream-c-stamp.json"
# what a build of _C reads besides its options: a change to any of them builds again
BUILD_INPUTS = ("CMakeLists.txt", "csrc")
# the environment the compilers read
COMPILER_ENV = ("CC", "CXX", "CFLAGS", "CXXFLAGS", "CUDAFLAGS", "LDFLAGS", "NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS")


def cmake_build_dir(root: Path = ROOT) -> Path:
    """CMake's tree for this Python, kept between installs."""
    return root / "build" / f"cmake-{sys.implementation.cache_tag}"


def build_options() -> dict:
    """What a build of _C depends on besides its sources: the GPU architectures, nvcc (its path, size and date, read
    without running it), the Python ABI, pybind11's version and the compilers' environment."""
    import pybind11

    nvcc = _nvcc()
    stat = Path(nvcc).stat() if nvcc else None
    return {"archs": os.environ.get("HISTREAM_CUDA_ARCHS", "80;90a"), "nvcc": [nvcc, stat and stat.st_size, stat and stat.st_mtime_ns],
            "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"), "python": sys.version, "pybind11": pybind11.__version__,
            "env": {k: os.environ[k] for k in COMPILER_ENV if k in os.environ}}


def build_fingerprint(root: Path, options: dict) -> str:
    """A hash of every file _C is built from (by path and content) and of ``options``."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for name in BUILD_INPUTS:
        base = root / name
        for path in sorted([base] if base.is_file() else base.rglob("*")):
            if path.is_file():
                h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def cached_extension(build_dir: Path, fingerprint: str) -> Path | None:
    """The _C a previous build left in ``build_dir`` from these very inputs, or None when it must be built."""
    try:
        stamp = json.loads((build_dir / STAMP).read_text())
    except (OSError, ValueError):
        return None
    built = build_dir / "lib" / str(stamp.get("file"))
    return built if stamp.get("fingerprint") == fingerprint and built.is_file() else None


def place_extension(build_dir: Path, fingerprint: str, target: Path, build: Callable[[Path], Path]) -> bool:
    """Put _C at ``target``: the cached one when its stamp matches ``fingerprint``, else what ``build(lib_dir)``
    makes (then stamped). Returns whether it was built."""
    built = cached_extension(build_dir, fingerprint)
    rebuilt = built is None
    if rebuilt:
        (build_dir / STAMP).unlink(missing_ok=True)  # an interrupted build leaves no stamp to trust
        built = build(build_dir / "lib")
        (build_dir / STAMP).write_text(json.dumps({"fingerprint": fingerprint, "file": built.name}))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, target)
    return rebuilt


def stable_pybind11(build_dir: Path) -> Path:
    """pybind11's CMake package, copied once into the build tree, for CMake to find there. pip installs pybind11 in a
    new temporary folder for each build; its include path is in every compile command, so CMake would recompile every
    file of _C on each install where one changed."""
    import pybind11

    source = Path(pybind11.__file__).parent
    copy = build_dir / f"pybind11-{pybind11.__version__}"
    cmake_dir = copy / Path(pybind11.get_cmake_dir()).relative_to(source)
    if not cmake_dir.is_dir():
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    return cmake_dir


class CMakeBuild(build_ext):
    """Builds histream_engine._C with CMake, or skips it with one printed line: the package works without it."""

    def run(self):
        reason = _skip_reason()
        if reason is not None:
            print(f"histream_engine: not building the CUDA extension histream_engine._C: {reason}", flush=True)
            self.extensions = []
            return
        super().run()

    def build_extension(self, ext):
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = cmake_build_dir()
        build_dir.mkdir(parents=True, exist_ok=True)
        fingerprint = build_fingerprint(ROOT, build_options())
        if cached_extension(build_dir, fingerprint) is not None:
            print(f"histream_engine: histream_engine._C is up to date in {build_dir} (its sources and build options are "
                  "unchanged): not rebuilt", flush=True)
        place_extension(build_dir, fingerprint, target, lambda lib: self.cmake(build_dir, lib, target.name))

    @staticmethod
    def cmake(build_dir: Path, lib: Path, name: str) -> Path:
        """Configure and build _C in ``build_dir`` (incrementally where it was built before); returns the module."""
        archs = os.environ.get("HISTREAM_CUDA_ARCHS", "80;90a")
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DHISTREAM_C_OUTPUT_DIR={lib}",  # _C only: nothing else a build makes lands beside it
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={stable_pybind11(build_dir)}",
            f"-DCMAKE_CUDA_COMPILER={_nvcc()}",
            f"-DHISTREAM_CUDA_ARCHS={archs}",
            "-DHISTREAM_BUILD_HOST=OFF",  # the C++ host is its own build (docs/cpp-host.md)
        ]
        t0 = time.perf_counter()
        print(f"histream_engine: building histream_engine._C with CMake for sm {archs} in {build_dir}", flush=True)
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "_C", "-j", str(os.cpu_count() or 2)], check=True)
        print(f"histream_engine: built histream_engine._C in {time.perf_counter() - t0:.0f} s", flush=True)
        built = lib / name
        if not built.is_file():
            raise RuntimeError(f"CMake built no {name} in {lib}")
        return built


# Subpackages whose modules live in a top-level folder of the repository (fixed by the product card). Those folders
# have no __init__.py, so that from the repository root they never shadow an installed package of the same name
# (PyPI's ``kernels``, which transformers imports); each package's own __init__.py under python/ reaches its folder
# in a source checkout, and BuildPy copies the folder's modules into it in a wheel.
MAPPED_IN = {"histream_engine.kernels": ROOT / "kernels", "histream_engine.bench": ROOT / "bench"}


class BuildPy(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package in MAPPED_IN:
            modules += [(package, p.stem, str(p.relative_to(ROOT))) for p in sorted(MAPPED_IN[package].glob("*.py"))]
        return modules


if __name__ == "__main__":  # pip runs this file as __main__; tests import its build helpers without installing
    setup(
        name="histream_engine",
        version="0.1.0",
        description="Inference engine for HiStream: fast 1080p autoregressive video diffusion on Wan2.1",
        python_requires=">=3.10",
        package_dir={"histream_engine": "python/histream_engine"},
        # every subpackage under python/histream_engine (the MAPPED_IN ones among them), found rather than listed (a listed
        # one went stale when export/ became graphs/)
        packages=["histream_engine." + p if p else "histream_engine" for p in [""] + find_packages("python/histream_engine")],
        package_data={"histream_engine.serve": ["static/*.html"]},
        ext_modules=[Extension("histream_engine._C", sources=[])],
        cmdclass={"build_ext": CMakeBuild, "build_py": BuildPy},
        # torch and Triton floors: the oldest stack the suite runs on (.ci/oldest-stack: torch 2.11 + Triton 3.6, the lent
        # GPU machines' versions); .ci/run tests torch 2.13 + Triton 3.9
        install_requires=[
            "torch>=2.11",
            "safetensors>=0.4",
            "numpy",
            "imageio-ffmpeg",
        ],
        extras_require={
            "triton": ["triton>=3.6"],
            "bench": ["diffusers>=0.33", "matplotlib"],
            "text": ["transformers>=4.45"],
            "host": ["pybind11>=2.12"],  # building the C++ host library (engine/), docs/cpp-host.md
            "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.17"],  # histream export, dit="onnxruntime"
            "tensorrt": ["tensorrt>=10"],  # histream build-trt, dit="tensorrt" (NVIDIA GPUs only)
            "serve": ["fastapi>=0.110", "uvicorn[standard]>=0.29", "pillow>=10", "python-multipart>=0.0.9"],  # histream serve (multipart: /v1 forms)
            "ray": ["ray[serve]>=2.56", "fastapi>=0.110", "pillow>=10", "python-multipart>=0.0.9"],  # histream serve --ray (docs/ray-serve.md)
            "test": ["pytest>=8", "pytest-xdist>=3.5", "diffusers>=0.33", "triton>=3.6", "matplotlib", "transformers>=4.45", "pybind11>=2.12",
                     "onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.17",
                     "fastapi>=0.110", "uvicorn[standard]>=0.29", "pillow>=10", "httpx>=0.27", "playwright>=1.45", "hypothesis>=6",
                     "ray[serve]>=2.56", "python-multipart>=0.0.9", "openai>=3.63"],  # openai: the /v1 tests drive serve with its SDK
        },
        entry_points={"console_scripts": ["histream=histream_engine.cli:main"]},
    )
