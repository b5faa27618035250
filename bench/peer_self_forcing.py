"""The official Self-Forcing implementation as a peer in the benchmark, loaded from a checkout the user provides.

``histream bench --peer-self-forcing PATH`` times guandeh17/Self-Forcing's ``CausalInferencePipeline`` on the
same random weights, prompt, noise and shapes as our ``self_forcing`` schedule. Nothing of the peer is
vendored or downloaded: PATH is the user's own checkout, imported as it is, with what the peer needs from
its environment (its ``requirements.txt``: diffusers, easydict, ftfy, einops...).

What is patched, and why:
- only the modules the causal pipeline needs are imported: its packages' ``__init__`` files would import the
  whole repository (image-to-video, CLIP, torchvision...), so empty packages stand over the same folders;
- importing the peer must not touch a GPU: ``demo_utils.memory`` builds a CUDA device at import time, so a
  stand-in module with the names the pipeline imports replaces it, and ``torch.cuda.current_device`` (a
  default argument in ``wan/modules/t5.py``) answers 0 while the peer is imported;
- its weights: ``CausalWanModel`` is built from our config and loaded with our DiT's state dict (both use
  the original Wan key names), its text encoder and VAE are stand-ins (precomputed prompt embeddings in, the
  latents out), so the peer loads no checkpoint;
- its 1.3B constants: 30 blocks, 1560 tokens per frame and 12x128 cache tensors become the model's;
- its attention without flash-attn: the SDPA fallback casts q, k, v to bf16 whatever the model's dtype (a
  float32 model then fails), so it is called with the model's dtype; and the text cross-attention calls
  ``flash_attention`` directly (it asserts CUDA and flash-attn), so it goes through the same fallback;
- its noise: the pipeline draws renoising noise with ``torch.randn_like``; a feed hands it the very tensors
  our engine draws for the same video, so the two outputs can be compared (they agree to rounding).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from histream_engine import SCHEDULES, WanDiT
from histream_engine.provenance import git_commit
from histream_engine.model.decoder import VAE_SPACE_STRIDE, VAE_TIME_STRIDE

PEER_MODULES = ("pipeline.causal_inference", "utils.wan_wrapper", "utils.scheduler", "wan.modules.causal_model")


class PeerError(RuntimeError):
    pass


def _memory_stand_in() -> types.ModuleType:
    """What ``pipeline.causal_inference`` imports from ``demo_utils.memory``, without building a CUDA device."""
    mod = types.ModuleType("demo_utils.memory")
    mod.gpu = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    mod.get_cuda_free_memory_gb = lambda device=None: 0.0
    mod.DynamicSwapInstaller = object
    mod.move_model_to_device_with_memory_preservation = lambda *a, **k: None
    return mod


PEER_PACKAGES = ("pipeline", "utils", "wan", "wan.modules", "demo_utils")


def load_peer(path: str | Path) -> dict[str, types.ModuleType]:
    """Import the peer's pipeline, wrapper, scheduler and causal model from a Self-Forcing checkout."""
    root = Path(path).expanduser().resolve()
    missing = [m for m in PEER_MODULES if not (root / (m.replace(".", "/") + ".py")).is_file()]
    if missing:
        raise PeerError(f"{root} is not a Self-Forcing checkout (guandeh17/Self-Forcing): no {', '.join(missing)}")
    if getattr(sys.modules.get("pipeline"), "histream_peer_root", root) != root:
        unload_peer()  # another checkout was loaded: its modules share these names
    sys.path.insert(0, str(root))
    # The packages' __init__ files import every pipeline and model of the repository (image-to-video, CLIP,
    # torchvision, Qwen...): empty packages over the same folders load only the modules asked for.
    for package in PEER_PACKAGES:
        if package not in sys.modules:
            mod = types.ModuleType(package)
            mod.__path__ = [str(root / package.replace(".", "/"))]
            mod.histream_peer_root = root
            sys.modules[package] = mod
    saved_device = torch.cuda.current_device
    sys.modules.setdefault("demo_utils.memory", _memory_stand_in())
    try:
        if not torch.cuda.is_available():
            torch.cuda.current_device = lambda: 0  # evaluated as a default argument at import; never used
        return {name: importlib.import_module(name) for name in PEER_MODULES}
    except ImportError as e:
        raise PeerError(f"importing the peer from {root} failed: {e}; install what its requirements.txt lists "
                        "(diffusers, easydict, ftfy, einops, ...) in this environment") from e
    finally:
        torch.cuda.current_device = saved_device


def unload_peer() -> None:
    """Forget a loaded peer: its modules (generic names: ``utils``, ``pipeline``, ``wan``) and its path entry."""
    root = getattr(sys.modules.get("pipeline"), "histream_peer_root", None)
    for name in list(sys.modules):
        if name.split(".")[0] in ("pipeline", "utils", "wan", "demo_utils"):
            del sys.modules[name]
    if root is not None and str(root) in sys.path:
        sys.path.remove(str(root))


class _NoiseFeed(types.ModuleType):
    """``torch`` as the peer's pipeline module sees it, except that ``randn_like`` returns queued tensors."""

    def __init__(self, queue: list[torch.Tensor]):
        super().__init__("torch")
        self._queue = queue

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, t: torch.Tensor, **_kw) -> torch.Tensor:
        if not self._queue:
            raise PeerError("the peer drew more noise than our engine did for the same video")
        eps = self._queue.pop(0)
        if eps.shape != t.shape:
            raise PeerError(f"the peer drew noise of shape {tuple(t.shape)} where ours drew {tuple(eps.shape)}")
        return eps.to(t.dtype)


class _TextStandIn(torch.nn.Module):
    def __init__(self, prompt_embeds: torch.Tensor):
        super().__init__()
        self.prompt_embeds = prompt_embeds

    def forward(self, text_prompts):
        return {"prompt_embeds": self.prompt_embeds}


class _VAEStandIn(torch.nn.Module):
    """Denoising is what is compared: "decoding" returns the latents."""

    def decode_to_pixel(self, latent, use_cache=False):
        return latent


@dataclass
class PeerVideo:
    latents: torch.Tensor  # [B, 16, F, h, w] float32, our layout
    seconds: float


class PeerSelfForcing:
    """The peer's pipeline around a model with our DiT's weights, for one video shape."""

    def __init__(self, path, dit: WanDiT, prompt_embeds: torch.Tensor, frames: int, height: int, width: int, chunk_size: int = 3):
        self.modules = load_peer(path)
        cfg = dit.config
        causal, wrapper_mod, sched_mod = (self.modules[m] for m in ("wan.modules.causal_model", "utils.wan_wrapper", "utils.scheduler"))
        self.attention = self._attention_name()
        # Its SDPA fallback casts to bf16 whatever the model's dtype (and a float32 model then fails at the output
        # projection): attention runs in the model's dtype, as its flash-attn path and ours do.
        original = causal.attention
        if not getattr(original, "histream_keeps_dtype", False):
            def attention(q, k, v, *args, **kwargs):
                kwargs.setdefault("dtype", q.dtype)
                return original(q, k, v, *args, **kwargs)

            attention.histream_keeps_dtype = True
            causal.attention = attention
            if self.attention == "scaled_dot_product_attention":
                # its text cross-attention calls flash_attention directly, which asserts CUDA and flash-attn
                importlib.import_module("wan.modules.model").flash_attention = attention
        with torch.device(dit.device):
            model = causal.CausalWanModel(
                model_type="t2v", patch_size=cfg.patch_size, text_len=cfg.text_len, in_dim=cfg.in_dim, dim=cfg.dim,
                ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim, out_dim=cfg.out_dim,
                num_heads=cfg.num_heads, num_layers=cfg.num_layers, qk_norm=cfg.qk_norm,
                cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps)
        missing, unexpected = model.load_state_dict(dit.state_dict(), strict=False)
        if unexpected or any(not k.startswith("freqs") for k in missing):
            raise PeerError(f"the peer's model does not take our weights: missing {missing}, unexpected {unexpected}")
        # the whole model in the run's dtype, as the peer's inference.py casts its pipeline
        model = model.to(device=dit.device, dtype=dit.dtype).eval().requires_grad_(False)

        generator = wrapper_mod.WanDiffusionWrapper.__new__(wrapper_mod.WanDiffusionWrapper)
        torch.nn.Module.__init__(generator)
        generator.model = model
        generator.uniform_timestep = False
        generator.scheduler = sched_mod.FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)
        generator.scheduler.set_timesteps(1000, training=True)
        generator.post_init()

        self.latent = ((frames - 1) // VAE_TIME_STRIDE + 1, height // VAE_SPACE_STRIDE, width // VAE_SPACE_STRIDE)
        tokens_per_frame = (self.latent[1] // cfg.patch_size[1]) * (self.latent[2] // cfg.patch_size[2])
        generator.seq_len = self.latent[0] * tokens_per_frame
        args = types.SimpleNamespace(denoising_step_list=[1000, 750, 500, 250], warp_denoising_step=True,
                                     num_frame_per_block=chunk_size, independent_first_frame=False, context_noise=0,
                                     model_kwargs={})
        with contextlib.redirect_stdout(io.StringIO()):
            pipe = self.modules["pipeline.causal_inference"].CausalInferencePipeline(
                args, dit.device, generator=generator, text_encoder=_TextStandIn(prompt_embeds), vae=_VAEStandIn())
        # The peer's 1.3B constants, made the model's.
        pipe.num_transformer_blocks = cfg.num_layers
        pipe.frame_seq_length = tokens_per_frame
        kv_len = generator.seq_len
        heads, head_dim = cfg.num_heads, cfg.head_dim

        def init_kv(batch_size, dtype, device):
            pipe.kv_cache1 = [{"k": torch.zeros([batch_size, kv_len, heads, head_dim], dtype=dtype, device=device),
                               "v": torch.zeros([batch_size, kv_len, heads, head_dim], dtype=dtype, device=device),
                               "global_end_index": torch.tensor([0], dtype=torch.long, device=device),
                               "local_end_index": torch.tensor([0], dtype=torch.long, device=device)}
                              for _ in range(cfg.num_layers)]

        def init_cross(batch_size, dtype, device):
            pipe.crossattn_cache = [{"k": torch.zeros([batch_size, cfg.text_len, heads, head_dim], dtype=dtype, device=device),
                                     "v": torch.zeros([batch_size, cfg.text_len, heads, head_dim], dtype=dtype, device=device),
                                     "is_init": False} for _ in range(cfg.num_layers)]

        pipe._initialize_kv_cache = init_kv
        pipe._initialize_crossattn_cache = init_cross
        for block in model.blocks:
            block.self_attn.max_attention_size = kv_len  # 32760 = 21 x 1560 in the peer: every key, as here
        self.pipe, self.dit = pipe, dit

    def _attention_name(self) -> str:
        attn = importlib.import_module("wan.modules.attention")
        if getattr(attn, "FLASH_ATTN_3_AVAILABLE", False):
            return "flash_attn 3"
        if getattr(attn, "FLASH_ATTN_2_AVAILABLE", False):
            return "flash_attn 2"
        return "scaled_dot_product_attention"

    def run(self, noises: list[list[torch.Tensor]]) -> PeerVideo:
        """One video from our engine's noise: ``noises[chunk][step]`` ``[B, 16, M, h, w]``, as the engine drew them."""
        initial = torch.cat([steps[0] for steps in noises], dim=2).permute(0, 2, 1, 3, 4)  # [B, F, 16, h, w]
        # the peer renoises [B, M, 16, h, w] flattened to [B*M, 16, h, w]
        queue = [eps.permute(0, 2, 1, 3, 4).flatten(0, 1) for steps in noises for eps in steps[1:]]
        module = self.modules["pipeline.causal_inference"]
        saved = module.torch
        module.torch = _NoiseFeed(queue)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints every timestep
                sync()
                t0 = time.perf_counter()
                with torch.no_grad():
                    _video, latents = self.pipe.inference(initial, text_prompts=[""], return_latents=True)
                sync()
                seconds = time.perf_counter() - t0
        finally:
            module.torch = saved
        if queue:
            raise PeerError(f"the peer drew {len(queue)} fewer noise tensors than our engine")
        return PeerVideo(latents.permute(0, 2, 1, 3, 4).float(), seconds)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def engine_noises(engine, batch: int, frames: int, height: int, width: int, seed: int) -> list[list[torch.Tensor]]:
    """The noise our engine draws for a ``self_forcing`` video, chunk by chunk and step by step, in its order."""
    sched = SCHEDULES["self_forcing"]
    M = engine.config.chunk_size
    latent_frames = (frames - 1) // VAE_TIME_STRIDE + 1
    gen = torch.Generator(device=engine.dit.device).manual_seed(seed)
    shape = (batch, engine.dit.config.in_dim, M, height // VAE_SPACE_STRIDE, width // VAE_SPACE_STRIDE)
    return [[torch.randn(shape, generator=gen, device=engine.dit.device) for _ in sched.steps(c)]
            for c in range(latent_frames // M)]


def compare(path, engine, prompt_embeds: torch.Tensor, frames: int, height: int, width: int, schedules: list[str],
            repeats: int, log=print) -> dict:
    """The peer against our schedules on one video shape, interleaved: after one untimed video of each (the peer's
    and our ``self_forcing`` from the same noise, which also checks that they agree), ``repeats`` rounds of our
    schedules then the peer. Wall-clock seconds of whole videos (denoising; the peer's VAE is a stand-in)."""
    import statistics

    peer = PeerSelfForcing(path, engine.dit, prompt_embeds, frames, height, width, engine.config.chunk_size)
    noises = engine_noises(engine, prompt_embeds.shape[0], frames, height, width, seed=0)
    ours_sf = engine.generate(prompt_embeds, frames, height, width, schedule="self_forcing", seed=0)
    theirs = peer.run(noises)
    err = ((ours_sf.latents - theirs.latents).double().norm() / theirs.latents.double().norm()).item()
    log(f"  peer Self-Forcing ({path}, attention: {peer.attention}): self_forcing outputs agree to {err:.1e}")
    for name in schedules:
        if name != "self_forcing":
            engine.generate(prompt_embeds, frames, height, width, schedule=name, seed=0)  # warm-up
    ours = {name: [] for name in schedules}
    peer_seconds = []
    for _ in range(repeats):
        for name in schedules:
            sync()
            t0 = time.perf_counter()
            engine.generate(prompt_embeds, frames, height, width, schedule=name, seed=0)
            sync()
            ours[name].append(time.perf_counter() - t0)
        peer_seconds.append(peer.run(noises).seconds)
    peer_spf = statistics.median(peer_seconds) / frames
    ours_spf = {name: statistics.median(s) / frames for name, s in ours.items()}
    ratios = {name: peer_spf / spf for name, spf in ours_spf.items()}
    log("  vs peer: " + ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items()) + f" (peer {peer_spf * 1e3:.1f} ms/frame)")
    return {
        "path": str(path),
        "commit": git_commit(path),
        "attention": peer.attention,
        "repeats": repeats,
        "seconds_per_frame": peer_spf,
        "seconds": peer_seconds,
        "ours_seconds_per_frame": ours_spf,
        "ours_seconds": ours,
        "speedup_vs_peer": ratios,
        "self_forcing_rel_err_vs_peer": err,
    }
