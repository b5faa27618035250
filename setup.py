"""Installs histream_engine (python/histream_engine), its Triton kernels (kernels/ -> histream_engine.kernels), its
benchmark suite (bench/ -> histream_engine.bench) and, where nvcc is found, its CUDA kernels (csrc/ ->
histream_engine._C, built by CMakeLists.txt). HISTREAM_SKIP_CUDA_BUILD=1 skips that build; HISTREAM_CUDA_ARCHS
(default "80;90a") picks the GPU architectures."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DHISTREAM_C_OUTPUT_DIR={out_dir}",  # _C only: nothing else a build makes lands in the package
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_CUDA_COMPILER={_nvcc()}",
            f"-DHISTREAM_CUDA_ARCHS={os.environ.get('HISTREAM_CUDA_ARCHS', '80;90a')}",
            "-DHISTREAM_BUILD_HOST=OFF",  # the C++ host is its own build (docs/cpp-host.md)
        ]
        t0 = time.perf_counter()
        print(f"histream_engine: building histream_engine._C with CMake for sm {os.environ.get('HISTREAM_CUDA_ARCHS', '80;90a')}", flush=True)
        subprocess.run(configure, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", "_C", "-j", str(os.cpu_count() or 2)], check=True)
        print(f"histream_engine: built histream_engine._C in {time.perf_counter() - t0:.0f} s", flush=True)


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
    install_requires=[
        "torch>=2.5",
        "safetensors>=0.4",
        "numpy",
        "imageio-ffmpeg",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "bench": ["diffusers>=0.33", "matplotlib"],
        "text": ["transformers>=4.45"],
        "host": ["pybind11>=2.12"],  # building the C++ host library (engine/), docs/cpp-host.md
        "onnx": ["onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.17"],  # histream export, dit="onnxruntime"
        "tensorrt": ["tensorrt>=10"],  # histream build-trt, dit="tensorrt" (NVIDIA GPUs only)
        "serve": ["fastapi>=0.110", "uvicorn[standard]>=0.29", "pillow>=10"],  # histream serve
        "ray": ["ray[serve]>=2.56", "fastapi>=0.110", "pillow>=10"],  # histream serve --ray (docs/ray-serve.md)
        "test": ["pytest>=8", "diffusers>=0.33", "triton>=3.0", "matplotlib", "transformers>=4.45", "pybind11>=2.12",
                 "onnx>=1.16", "onnxscript>=0.2", "onnxruntime>=1.17",
                 "fastapi>=0.110", "uvicorn[standard]>=0.29", "pillow>=10", "httpx>=0.27", "playwright>=1.45", "hypothesis>=6",
                 "ray[serve]>=2.56"],
    },
    entry_points={"console_scripts": ["histream=histream_engine.cli:main"]},
)
