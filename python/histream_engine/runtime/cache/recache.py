"""Re-encoding the frames a stream's next chunk attends under a new prompt (a prompt switch with ``recache=True``).

Every cached K/V was computed under the old prompt: cross-attention feeds each block's output, so every layer's
K/V past the first depends on the text. After a switch the engine re-runs one t=0 pass over the clean latents of
the frames the next chunk will attend (the anchor, then the history frames in order), per resolution the schedule
keeps, and writes their K/V back into the same ring slots. Inside that pass the frames attend each other (they
form one block, as the uncached reference ``WanDiT(..., block_causal=M)`` over them and the next chunk has it);
the next chunk then attends them as usual.

Frames still in the ring that the next chunk does not attend are left alone: no later chunk reads them before
they are overwritten.

The pass's self-attention runs through the torch path whatever the stream's backend: a switch is rare, and the
torch path writes K/V in the layout every backend reads (un-rotated with ``window`` positions, rotated by the
same positions otherwise), and reads both ring dtypes: on an e4m3 ring (``kv_dtype``) its write is the reference the
Triton FP8 write is tested against, so each re-encoded (frame, head) gets its own scale.
"""

from __future__ import annotations

import torch

from ...attention.ring import RingView
from ...attention.torch_ref import TorchAttention
from .kv_cache import RingKVCache
from .resolution import Resolution
from .window import WindowPlan

_TORCH = TorchAttention()


class LatentRing:
    """The clean high-res latents of the frames in the ring, slot by slot, preallocated (what a re-cache reads)."""

    def __init__(self, plan: WindowPlan, batch: int, channels: int, latent_hw: tuple[int, int], device):
        self.plan = plan
        self.x0 = torch.zeros((batch, channels, plan.slots) + tuple(latent_hw), dtype=torch.float32, device=device)  # [B, 16, slots, h, w]

    def write(self, chunk: int, x0: torch.Tensor) -> None:
        """Store chunk ``chunk``'s final x0 ``[B, 16, M, h, w]`` in its frames' slots."""
        slots = [self.plan.slot_of(f) for f in self.plan.chunk_frames(chunk)]
        self.x0[:, :, slots] = x0

    def frames(self, slots: list[int]) -> torch.Tensor:
        return self.x0[:, :, slots]  # [B, 16, n, h, w]

    @property
    def nbytes(self) -> int:
        return self.x0.numel() * self.x0.element_size()


class _RecacheAttention:
    """``attend`` for the re-cache pass: write the frames' K/V into their ring rows, and let them attend each other."""

    def __init__(self, cache: RingKVCache, view: RingView):
        self.cache, self.view = cache, view

    def __call__(self, layer: int, q, k_proj, v_proj, norm_k):
        # q: [B, n*S, H, D] after RMSNorm, un-rotated, or None (the last layer only writes); k_proj, v_proj: [B, n*S, C]
        ring = self.cache.layer(layer)  # K, V [B, slots*S, H, D] (and, in e4m3, scales [B, slots, H])
        _TORCH.write_kv(ring, self.view, k_proj, v_proj, norm_k)
        if q is None:
            return None
        H, D = ring.k.shape[2:]
        # The frames attend each other's K/V as computed, not as stored: the uncached reference the pass stands for has
        # no rounding, and with every frame present there is no cache to read. Attending the dequantized rows instead
        # would round each layer's input as well; on the tiny model both gave the same chunk after the switch
        # (1.8e-4 to 2.6e-4 from the model-dtype cache's switch, tests/runtime/test_fp8_engine.py).
        k = norm_k(k_proj).unflatten(-1, (H, D)).to(q.dtype)  # [B, n*S, H, D]
        v = v_proj.unflatten(-1, (H, D))
        return _TORCH.self_attention(q, k, v, self.view.q_rope, self.view.q_rope)


def recache_window(dit, forwards, targets: dict[str, Resolution], latents: LatentRing, next_chunk: int, cross_kv,
                   low_factor: int, rope_dtype) -> dict[str, int]:
    """Re-encode, under ``cross_kv`` (``WanDiT.cross_kv`` of the new prompt), the frames chunk ``next_chunk`` attends
    besides its own, through the engine's DiT runner ``forwards`` (its ``recache_tokens``: sharded on a
    sequence-parallel engine, where each rank re-encodes its own heads' ring); returns the t=0 forwards run per
    resolution (none before the second chunk)."""
    plan = latents.plan
    visible = plan.visible_frames(next_chunk)
    context = visible[: len(visible) - plan.chunk_size]
    if not context:
        return {name: 0 for name in targets}
    slots = [plan.slot_of(f) for f in context]
    positions = plan.temporal_positions(next_chunk)[: len(context)]
    x0 = latents.frames(slots)  # [B, 16, n, h, w]
    t = torch.zeros((x0.shape[0], len(context)), device=x0.device)  # [B, n]
    for name, target in targets.items():
        view = RingView(slots=slots, frame_pos=positions, query_frames=len(slots), grid=target.grid, num_slots=plan.slots,
                        freqs=target.freqs, device=x0.device, rope_dtype=rope_dtype,
                        rotated_keys=plan.fixed_positions and target.cache.rotate_keys)
        if name == "high":
            tokens = dit.patchify(x0)
        else:
            tokens = dit.embed_patches(_TORCH.downsample_patches(x0, low_factor, dit.config.patch_size))
        forwards.recache_tokens(tokens, t, cross_kv, _RecacheAttention(target.cache, view))
    return {name: 1 for name in targets}
