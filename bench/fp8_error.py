"""FP8 error against an fp32 run: whole videos, every precision variant, latents and per-layer outputs.

``histream bench --precision-errors`` runs it (on the preset's random model, or a user's checkpoint with
``--model-dir``): the same seed, prompt and schedule for every variant, one video each. Reported per schedule and
variant: the relative error ``||x - x_fp32|| / ||x_fp32||`` of the whole video's latents, and of every block's output
and every block linear's output at the first forward (hooks, by module name: an ``Fp8Linear`` sits where its
``nn.Linear`` was). With a VAE (``--vae`` or a real checkpoint) also the decoded frames' PSNR against the fp32 frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from histream_engine import Engine, EngineConfig
from histream_engine.model.dit import EAGER_OPS
from histream_engine.model.fp8_linear import block_linears
from histream_engine.numerics import rel_err


@dataclass(frozen=True)
class Variant:
    name: str
    dtype: str  # the model's dtype
    config: dict = field(default_factory=dict)  # EngineConfig fields beyond attention


# FP8 runs in a bf16 model, as deployed: each FP8 row's error includes bf16's (the row above it).
VARIANTS = (
    Variant("fp32", "float32"),
    Variant("bf16", "bfloat16"),
    Variant("fp8_cache", "bfloat16", {"kv_dtype": "float8_e4m3fn"}),
    Variant("fp8_attention", "bfloat16", {"kv_dtype": "float8_e4m3fn", "attention": "fp8"}),
    Variant("fp8_linears", "bfloat16", {"linear_dtype": "float8_e4m3fn"}),
    Variant("fp8_all", "bfloat16", {"precision": "fp8"}),
)


def psnr(frames: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of uint8 frames against reference frames."""
    mse = (frames.double() - ref.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


class FirstOutputs:
    """The output of each watched module at its first call, kept in fp32 on the CPU."""

    def __init__(self, dit):
        self.outputs: dict[str, torch.Tensor] = {}
        watched = {f"blocks.{i}": blk for i, blk in enumerate(dit.blocks)} | block_linears(dit)
        self.hooks = [m.register_forward_hook(self._hook(name)) for name, m in watched.items()]

    def _hook(self, name):
        def hook(_module, _args, out):
            if name not in self.outputs:
                self.outputs[name] = out.detach().float().cpu()
        return hook

    def remove(self):
        for h in self.hooks:
            h.remove()


def run_variant(make_dit, variant: Variant, fp8_attention: str, prompt, frames, height, width, schedule, seed, vae=None):
    """One video under ``variant``: (latents, first outputs by module, frames or None)."""
    dit = make_dit(getattr(torch, variant.dtype))
    config = dict(variant.config)
    attention = config.pop("attention", "torch")
    attention = fp8_attention if attention == "fp8" else attention
    if config.pop("precision", None) == "fp8":  # the preset maps the base backend to its FP8 core
        settings = EngineConfig.with_precision("fp8", attention={"torch_fp8": "torch", "triton_fp8": "triton"}[fp8_attention])
    else:
        settings = EngineConfig(attention=attention, **config)
    engine = Engine(dit, settings, vae=vae)
    if hasattr(engine.runner, "ops"):  # the FFN through its modules (not the fused workspace), so hooks see its linears
        engine.runner.ops = EAGER_OPS
    watch = FirstOutputs(engine.dit)  # after the engine swapped in its FP8 layers
    try:
        result = engine.generate(prompt.to(dit.dtype), frames, height, width, schedule=schedule, seed=seed)
    finally:
        watch.remove()
    return result.latents.float().cpu(), watch.outputs, result.frames, result.chunks[0].cache_bytes, engine.config.attention


def precision_errors(make_dit, prompt, frames: int, height: int, width: int, schedules, seed: int = 0,
                     fp8_attention: str = "torch_fp8", make_vae=None, log=print) -> dict:
    """``{schedule: {variant: {...}}}``; ``make_dit(dtype)`` builds a fresh model (FP8 linears replace layers in place)."""
    out = {}
    for schedule in schedules:
        ref = None
        rows = {}
        for v in VARIANTS:
            vae = make_vae(getattr(torch, v.dtype)) if make_vae else None
            latents, layers, video, cache_bytes, attention = run_variant(make_dit, v, fp8_attention, prompt, frames, height, width, schedule, seed, vae)
            if ref is None:
                ref = (latents, layers, video)
            row = {"model_dtype": v.dtype, "attention": attention, "config": v.config, "cache_bytes": cache_bytes,
                   "latent_rel_err": rel_err(latents, ref[0]),
                   "block_rel_err": {n: rel_err(t, ref[1][n]) for n, t in layers.items() if n.count(".") == 1},
                   "linear_rel_err": {n: rel_err(t, ref[1][n]) for n, t in layers.items() if n.count(".") > 1}}
            if video is not None:
                row["frame_psnr_db"] = psnr(video, ref[2])
            rows[v.name] = row
            log(f"  {schedule:>14} {v.name:>13}: latent rel err {row['latent_rel_err']:.3e}"
                + (f", PSNR {row['frame_psnr_db']:.1f} dB" if video is not None else ""))
        out[schedule] = rows
    return out


def linear_summary(row: dict) -> dict[str, float]:
    """Mean relative error per kind of block linear (``self_attn.q``, ``ffn.0``, ...) over the blocks."""
    kinds: dict[str, list[float]] = {}
    for name, err in row["linear_rel_err"].items():
        kinds.setdefault(name.split(".", 2)[2], []).append(err)
    return {k: sum(v) / len(v) for k, v in kinds.items()}


def markdown(errors: dict) -> str:
    """The error table of ``docs/fp8.md``: one row per variant, one column per schedule, then the per-layer means."""
    schedules = list(errors)
    lines = ["| variant | model dtype | attention | " + " | ".join(f"{s} latent rel err" for s in schedules) + " | cache bytes |",
             "|---|---|---|" + "---|" * len(schedules) + "---|"]
    for name, row in errors[schedules[0]].items():
        cells = " | ".join(f"{errors[s][name]['latent_rel_err']:.2e}" for s in schedules)
        lines.append(f"| {name} | {row['model_dtype']} | {row['attention']} | {cells} | {row['cache_bytes']} |")
    s0 = schedules[0]
    first = next(iter(errors[s0].values()))
    blocks = list(first["block_rel_err"])
    kinds = list(linear_summary(first))
    lines += ["", f"Per-layer output error at the first forward of `{s0}` (blocks; block linears averaged over blocks):", "",
              "| variant | " + " | ".join(blocks + kinds) + " |", "|---|" + "---|" * (len(blocks) + len(kinds))]
    for name, row in errors[s0].items():
        if name == "fp32":
            continue
        summary = linear_summary(row)
        lines.append(f"| {name} | " + " | ".join(f"{row['block_rel_err'][b]:.1e}" for b in blocks) + " | "
                     + " | ".join(f"{summary[k]:.1e}" for k in kinds) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """FP8 against bf16 and fp32 on your own checkpoint: ``python -m histream_engine.bench.fp8_error --model-dir DIR
    --prompt-embeds FILE [--checkpoint PT]``. Loads the DiT and the VAE once per variant (FP8 layers replace the
    loaded ones), writes the record as JSON and prints the table."""
    import json
    import sys
    import time
    from pathlib import Path

    from histream_engine.cli_parser import make_parser
    from histream_engine.model_dir import find_model_files, load_folder_dit
    from histream_engine.text_encoder import load_prompt_embeds
    from histream_engine.vae_checkpoint import load_vae

    p = make_parser("python -m histream_engine.bench.fp8_error", __doc__)
    p.add_argument("--model-dir", type=Path, required=True, help="Wan2.1 folder (DiT and Wan2.1_VAE.pth)")
    p.add_argument("--checkpoint", type=Path, help="causal DiT weights replacing the folder's (Self-Forcing / HiStream .pt)")
    p.add_argument("--prompt-embeds", type=Path, required=True, help="UMT5 embeddings (.safetensors or .pt, [512, 4096])")
    p.add_argument("--schedules", nargs="+", default=["histream", "histream_plus"], help="the schedules measured")
    p.add_argument("--height", type=int, default=1088, help="video height")
    p.add_argument("--width", type=int, default=1920, help="video width")
    p.add_argument("--frames", type=int, default=81, help="video frames (4k+1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise")
    p.add_argument("--attention", default="triton_fp8", choices=["triton_fp8", "torch_fp8"], help="the FP8 core measured")
    p.add_argument("--out", type=Path, default=Path("fp8_error.json"), help="JSON path for the record")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def make_dit(dtype):
        return load_folder_dit(args.model_dir, args.checkpoint, dtype, device, ("vae",))[0]

    vae_file = find_model_files(args.model_dir, ("vae",)).vae

    def make_vae(dtype):
        return load_vae(vae_file, dtype=dtype if device.type == "cuda" else torch.float32, device=device)

    # The width is the model's (4096 for Wan2.1's UMT5): the engine checks it against the loaded DiT's text_dim.
    prompt = load_prompt_embeds(args.prompt_embeds)
    errors = precision_errors(make_dit, prompt, args.frames, args.height, args.width, args.schedules, args.seed, args.attention, make_vae)
    command = ["python -m histream_engine.bench.fp8_error"] + list(sys.argv[1:] if argv is None else argv)
    record = {"command": " ".join(command), "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "errors": errors}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(markdown(errors))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
