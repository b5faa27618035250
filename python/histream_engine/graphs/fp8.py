"""FP8 (E4M3) for exported graphs: Q/DQ around the transformer blocks' linear layers only, as public DiT FP8
recipes do. The modulation, the text/time embedders, the patch embedding and the head stay in the graph's dtype.
Which linears, and their weight scales, are ``model.fp8_linear``'s: the torch FP8 path (``EngineConfig(linear_dtype=
"float8_e4m3fn")``) quantizes the same layers the same way (its activations per token at run time, not static).

- Weights: per output channel, scale = amax / 448, stored as float8 initializers behind a DequantizeLinear.
- Activations: per tensor, static scale = amax / 448 from a calibration run of the model on this schedule's
  timesteps at the export's resolutions (``calibrate``), quantized and dequantized in front of the MatMul.

TensorRT's strongly typed networks run those MatMuls in FP8 (``histream build-trt --precision fp8``); ONNX Runtime
runs the same graphs on a CPU, which is how the tests check them. The block linears are found structurally: a
MatMul with a constant 2D weight followed by the Add of a bias named ``dit.blocks.N.<linear>.bias`` (the exporter
folds the transposed weight into an anonymous constant but keeps bias names).
"""

from __future__ import annotations

import re

import torch

from ..model.decoder import VAE_SPACE_STRIDE
from ..model.dit import WanDiT
from ..kernels.fp8_constants import E4M3_MAX, SCALE_FLOOR
from ..model.fp8_linear import block_linears, channel_scales
from .signature import Signature
from ..runtime.denoise.schedules import resolve_schedule

STORED = {16: torch.bfloat16, 10: torch.float16}  # onnx.TensorProto.BFLOAT16, FLOAT16
BLOCK_LINEAR = re.compile(r"^dit\.(blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qo]|ffn\.[02]))\.bias$")


@torch.no_grad()
def calibrate(dit: WanDiT, schedule: str, height: int, width: int, chunk_size: int = 3, seed: int = 0) -> dict[str, float]:
    """amax of each block linear's input over the reference forward on one chunk of noise at every timestep of the
    schedule (and t=0, the recache), at each resolution it uses, with a random zero-padded prompt. Noise is what the
    first step sees; later steps see partly denoised latents, which this approximates."""
    sched = resolve_schedule(schedule)
    cfg = dit.config
    g = torch.Generator().manual_seed(seed)
    amax = {name: 0.0 for name in block_linears(dit)}
    hooks = [mod.register_forward_pre_hook(lambda _m, args, name=name: amax.__setitem__(name, max(amax[name], args[0].abs().max().item())))
             for name, mod in block_linears(dit).items()]
    prompt = torch.zeros(1, cfg.text_len, cfg.text_dim)
    prompt[:, :16] = torch.randn(1, 16, cfg.text_dim, generator=g)
    timesteps = sorted({s.timestep for c in range(2) for s in sched.steps(c)} | {0.0})
    resolutions = {s.resolution for c in range(2) for s in sched.steps(c)}
    try:
        for res in sorted(resolutions):
            factor = sched.low_factor if res == "low" else 1
            latent = torch.randn(1, cfg.in_dim, chunk_size, height // VAE_SPACE_STRIDE // factor, width // VAE_SPACE_STRIDE // factor, generator=g)
            for t in timesteps:
                dit(latent.to(dit.device), torch.tensor([t], device=dit.device), prompt.to(dit.device))
    finally:
        for h in hooks:
            h.remove()
    return amax


def _fp8_initializer(name: str, values: torch.Tensor):
    from onnx import TensorProto, helper

    raw = values.to(torch.float8_e4m3fn).view(torch.uint8).numpy().tobytes()
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, list(values.shape), raw, raw=True)


def quantize_block_linears(model, sig: Signature, amax: dict[str, float]):
    """Rewrites ``model`` (an exported graph of signature ``sig``) in place: Q/DQ on each block linear's input,
    its weight as float8 with a per-channel DequantizeLinear. Returns the model."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    quantized = []
    new_nodes = []
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            adds = [c for c in consumers.get(node.output[0], []) if c.op_type == "Add"]
            match = next((m for a in adds for x in a.input if (m := BLOCK_LINEAR.match(x))), None)
            if match is not None:
                layer = match.group(1)
                w_init = inits[node.input[1]]
                w = torch.from_numpy(numpy_helper.to_array(w_init).astype("float32"))  # [C_in, C_out]
                dtype = w_init.data_type
                as_stored = STORED.get(dtype, torch.float32)  # scales are stored in the graph's dtype: divide by those
                w_scale = channel_scales(w, 0).to(as_stored).float()  # [C_out]
                x_scale = torch.tensor(max(amax[layer] / E4M3_MAX, SCALE_FLOOR)).to(as_stored).item()
                prefix = f"fp8.{layer}"
                graph.initializer.extend([
                    _fp8_initializer(f"{prefix}.weight", w / w_scale),
                    helper.make_tensor(f"{prefix}.weight_scale", dtype, [w.shape[1]], w_scale.tolist()),
                    helper.make_tensor(f"{prefix}.input_scale", dtype, [], [x_scale]),
                    _fp8_initializer(f"{prefix}.zero", torch.zeros(())),
                ])
                new_nodes += [
                    helper.make_node("QuantizeLinear", [node.input[0], f"{prefix}.input_scale", f"{prefix}.zero"], [f"{prefix}.x8"], saturate=1),
                    helper.make_node("DequantizeLinear", [f"{prefix}.x8", f"{prefix}.input_scale"], [f"{prefix}.x"]),
                    helper.make_node("DequantizeLinear", [f"{prefix}.weight", f"{prefix}.weight_scale"], [f"{prefix}.w"], axis=1),
                ]
                node.input[0], node.input[1] = f"{prefix}.x", f"{prefix}.w"
                quantized.append(layer)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    last = max(int(name.split(".")[1]) for name in amax)
    # a recache graph's last block only projects K and V (its attention and FFN would feed nothing)
    expected = {n for n in amax if sig.head or not n.startswith(f"blocks.{last}.") or n.endswith(("self_attn.k", "self_attn.v"))}
    if set(quantized) != expected:
        raise RuntimeError(f"FP8 export found {len(quantized)} of the {len(expected)} block linears in graph {sig.name}; "
                           f"missing {sorted(expected - set(quantized))[:4]}")
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]  # the replaced full-precision weights are dropped
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model
