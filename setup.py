"""Installs histream_engine (python/histream_engine) and its Triton kernels (kernels/ -> histream_engine.kernels)."""

from setuptools import setup

setup(
    name="histream_engine",
    version="0.1.0",
    description="Inference engine for HiStream: fast 1080p autoregressive video diffusion on Wan2.1",
    python_requires=">=3.10",
    package_dir={
        "histream_engine": "python/histream_engine",
        "histream_engine.kernels": "kernels",
    },
    packages=[
        "histream_engine",
        "histream_engine.model",
        "histream_engine.attention",
        "histream_engine.runtime",
        "histream_engine.kernels",
    ],
    install_requires=[
        "torch>=2.5",
        "safetensors>=0.4",
        "numpy",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "test": ["pytest>=8", "diffusers>=0.33", "triton>=3.0"],
    },
    entry_points={"console_scripts": ["histream=histream_engine.cli:main"]},
)
