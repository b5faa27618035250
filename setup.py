"""Installs histream_engine (python/histream_engine), its Triton kernels (kernels/ -> histream_engine.kernels)
and its benchmark suite (bench/ -> histream_engine.bench)."""

from setuptools import setup

setup(
    name="histream_engine",
    version="0.1.0",
    description="Inference engine for HiStream: fast 1080p autoregressive video diffusion on Wan2.1",
    python_requires=">=3.10",
    package_dir={
        "histream_engine": "python/histream_engine",
        "histream_engine.kernels": "kernels",
        "histream_engine.bench": "bench",
    },
    packages=[
        "histream_engine",
        "histream_engine.model",
        "histream_engine.attention",
        "histream_engine.runtime",
        "histream_engine.kernels",
        "histream_engine.bench",
    ],
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
        "test": ["pytest>=8", "diffusers>=0.33", "triton>=3.0", "matplotlib", "transformers>=4.45"],
    },
    entry_points={"console_scripts": ["histream=histream_engine.cli:main"]},
)
