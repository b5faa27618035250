"""The suite's outputs: the JSON record, the markdown table, the per-chunk latency plot."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from histream_engine.optional import OptionalDependencyError, require
from histream_engine.output_paths import OutputPathError, check_output_file


def command_line(prog: str, argv: list[str] | None) -> str:
    """How a record names the command that made it: ``prog`` and its arguments (``sys.argv`` when ``argv`` is None)."""
    return " ".join([prog, *(argv if argv is not None else sys.argv[1:])])


def default_out(date: str, slug: str, name: str) -> Path:
    """Where a run without ``--out`` writes its record: the working folder. bench/results/ holds only the records the
    project commits, each written there with ``--out``."""
    return Path.cwd() / f"histream-bench-{date}-{slug}-{name}.json"


# Dense bf16/fp16 tensor-core peaks (FLOP/s) of the GPUs we report utilisation for.
DEVICE_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
# Dense e4m3 tensor-core peaks (FLOP/s): twice bf16 on Hopper; Ampere has none (the engine refuses FP8 there).
FP8_PEAKS = {"H100": 1979e12, "H200": 1979e12}


def fp8_peak(device_name: str) -> float | None:
    return next((peak for key, peak in FP8_PEAKS.items() if key in device_name), None)


def device_peak(device_name: str, dtype: str) -> float | None:
    if dtype not in ("bfloat16", "float16"):
        return None
    return next((peak for key, peak in DEVICE_PEAKS.items() if key in device_name), None)


def markdown_table(record: dict) -> str:
    head = ("schedule", "s/frame", "first chunk s", "steady s/frame", "VAE s/frame", "end-to-end s/frame", "speedup vs SF",
            "FLOP-model speedup", "vs Wan2.1", "TFLOP/s", "peak %")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for name, r in record["schedules"].items():
        lines.append(
            "| " + " | ".join((
                name, fmt(r["seconds_per_frame"], ".4f"), fmt(r["first_chunk_seconds"], ".3f"),
                fmt(r["steady_seconds_per_frame"], ".4f"), fmt(r["vae_seconds_per_frame"], ".4f"),
                fmt(r["end_to_end_seconds_per_frame"], ".4f"), fmt(r["speedup_vs_self_forcing"], ".2f"),
                fmt(r["predicted_speedup_vs_self_forcing"], ".2f"), fmt(r["speedup_vs_wan_baseline"], ".1f"),
                fmt(r["achieved_tflops"], ".2f"), fmt(None if r["peak_fraction"] is None else 100 * r["peak_fraction"], ".1f"),
            )) + " |"
        )
    decoded = [(name, r["decoders"]) for name, r in record["schedules"].items() if r.get("decoders")]
    if decoded:
        vae = record["vae"]
        lines += [f"\nDecoders (FLOPs per frame: Wan VAE dim {vae['dim']} {vae['flops_per_frame'] / 1e9:.1f} G, "
                  f"TAEHV {vae['taehv_flops_per_frame'] / 1e9:.1f} G):",
                  "| schedule | decoder | decode s/frame | end-to-end s/frame | decoder share |", "|---|---|---|---|---|"]
        for name, by in decoded:
            lines += [f"| {name} | {d['name']} | {d['vae_seconds_per_frame']:.4f} | {d['end_to_end_seconds_per_frame']:.4f} | "
                      f"{100 * d['decoder_fraction']:.0f}% |" for d in by.values()]
    base = record["wan_baseline"]
    if "seconds_per_frame" in base:
        lines.append(f"\nWan2.1 bidirectional baseline: {base['seconds_per_frame']:.4f} s/frame ({base['note']}).")
    else:
        lines.append(f"\nWan2.1 bidirectional baseline: {base.get('skipped', 'not run')}.")
    peer = record.get("peer_self_forcing")
    if peer:
        ratios = ", ".join(f"{n} {r:.2f}x" for n, r in peer["speedup_vs_peer"].items())
        lines.append(f"\nSelf-Forcing's own pipeline ({peer['path']}, commit {peer['commit']}, attention {peer['attention']}): "
                     f"{peer['seconds_per_frame']:.4f} s/frame; ours against it, interleaved over {peer['repeats']} repeats: {ratios}; "
                     f"self_forcing outputs agree to {peer['self_forcing_rel_err_vs_peer']:.1e}.")
    return "\n".join(lines)


def write_json(record: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))


def plot_chunks(record: dict, path: Path) -> str | None:
    """Per-chunk latency against chunk index, one line per schedule; returns why not, if not drawn."""
    try:
        matplotlib = require("matplotlib", "bench", "the chunk plot")
        matplotlib.use("Agg")
        plt = require("matplotlib.pyplot", "bench", "the chunk plot")
    except OptionalDependencyError as e:
        return str(e)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in record["schedules"].items():
        ax.plot(range(len(r["per_chunk_seconds"])), r["per_chunk_seconds"], marker="o", label=name)
    ax.set_xlabel("chunk index")
    ax.set_ylabel("seconds per chunk (median over repeats)")
    ax.set_title(f"{record['preset']} on {record['environment']['device']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def size_or_exit(parser: argparse.ArgumentParser, flag: str, text: str, multiple: int) -> tuple[int, int]:
    """``WxH`` with both sides positive multiples of ``multiple`` -> (width, height); else the parser exits 2."""
    w, _, h = text.partition("x")
    if not (w.isdigit() and h.isdigit()) or int(w) % multiple or int(h) % multiple or not int(w) or not int(h):
        parser.exit(2, f"{parser.prog}: error: {flag} {text!r} is not WxH with multiples of {multiple}\n")
    return int(w), int(h)


def check_json_out_or_exit(parser: argparse.ArgumentParser, out: Path | None) -> None:
    """``--out``, a .json file that can be written, checked before any work; else the parser exits 2."""
    if out is not None:
        try:
            check_output_file(out, (".json",), "--out")
        except OutputPathError as e:
            parser.exit(2, f"{parser.prog}: error: {e}\n")


def write_record(record: dict, out: Path, markdown: str) -> None:
    """A recording script's output: the record as JSON at ``out`` and its table beside it (``.md``), both named."""
    write_json(record, out)
    out.with_suffix(".md").write_text(markdown)
    print(markdown + f"wrote {out} and {out.with_suffix('.md')}")
