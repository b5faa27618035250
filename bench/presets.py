"""Benchmark presets as data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchPreset:
    name: str
    model: str  # WanConfig preset; weights are random (timing needs no trained weights)
    height: int  # high resolution; the low resolution is the schedule's (height / 2 for HiStream)
    width: int
    frames: int
    dtype: str
    repeats: int
    baseline_steps: int  # full-sequence forwards timed for the bidirectional Wan baseline
    vae_dim: int  # VAE base width for --vae: 96 is the real Wan2.1 VAE
    description: str


PRESETS: dict[str, BenchPreset] = {
    p.name: p
    for p in (
        BenchPreset("1080p-1.3b", "wan2.1-1.3b", 1088, 1920, 81, "bfloat16", 3, 2, 96,
                    "the real 1.3B architecture at 1920x1088 (low 960x544), 81 frames, on a GPU"),
        BenchPreset("1080p-1.3b-long", "wan2.1-1.3b", 1088, 1920, 357, "bfloat16", 1, 0, 96,
                    "as 1080p-1.3b with 30 chunks, to show per-chunk cost staying flat"),
        BenchPreset("cpu-small", "tiny", 384, 384, 81, "float32", 2, 2, 16,
                    "the tiny model on a 48x48 latent grid: attention-dominated, for a CPU (its run time: docs/benchmarks.md)"),
        BenchPreset("cpu-peer", "small", 256, 256, 81, "float32", 3, 0, 16,
                    "a Wan-shaped dim-384, 4-layer DiT at 256x256 (--height/--width 384 for the larger size), for "
                    "--peer-self-forcing on a CPU"),
    )
}
