"""Self-attention K/V storage for one resolution: preallocated once, written in place by slot.

K is stored after RMSNorm, and after RoPE where a frame's positions never change (``absolute`` temporal
positions: every attention call then reads it as it lies); with ``window`` positions it is stored before RoPE
and rotated by its current position when attended. Which frame lives in which slot is decided by
``window.WindowPlan``; this class holds the tensors, turns the plan into per-chunk ``RingView``s, and hands an
attention backend one layer at a time (``layer``: K, V and, in e4m3, their scales).

With ``kv_dtype=torch.float8_e4m3fn`` K and V are stored in e4m3 with one float32 scale per (layer, batch, frame slot,
head) (``attention.fp8_quant``), half the bytes of bf16. V is then stored transposed, ``[.., H, D, rows]`` seen as
``[.., rows, H, D]``: FP8 wgmma takes its B operand only K-major, and for P.V the reduction runs over the keys
(``kernels/attention_core_fp8.py``); its rows are padded to a multiple of 16 so the TMA row stride is 16-byte aligned.
"""

from __future__ import annotations

import torch

from ...attention.protocol import CacheLayer
from ...attention.ring import RingView
from ...kernels.fp8_constants import E4M3, SCALE_FLOOR
from .window import WindowPlan


class RingKVCache:
    def __init__(self, plan: WindowPlan, num_layers: int, batch: int, tokens_per_frame: int, heads: int, head_dim: int, dtype, device,
                 rotate_keys: bool = True, kv_dtype: torch.dtype | None = None):
        self.plan = plan
        # False keeps K un-rotated even where positions are fixed: exported graphs take the window's K as projected.
        self.rotate_keys = rotate_keys
        self.tokens_per_frame = tokens_per_frame
        # Head-major memory, seen as [layers, B, slots*S, H, D]: every attention reads one head's keys as one
        # contiguous block (SDPA's CPU kernel ran 2-3% faster on such K/V at 384x384; TMA and cuDNN take either).
        rows = plan.slots * tokens_per_frame
        shape = (num_layers, batch, heads, rows, head_dim)
        self.k_scale = self.v_scale = None
        if kv_dtype is None:
            self.k = torch.zeros(shape, dtype=dtype, device=device).transpose(2, 3)  # [layers, B, slots*S, H, D]
            self.v = torch.zeros(shape, dtype=dtype, device=device).transpose(2, 3)  # [layers, B, slots*S, H, D]
            self._storage = (self.k, self.v)
            self._layers = tuple(CacheLayer(self.k[i], self.v[i]) for i in range(num_layers))
            return
        if kv_dtype != E4M3:
            raise ValueError(f"kv_dtype must be None (the model dtype) or torch.float8_e4m3fn, got {kv_dtype}")
        self.k = torch.zeros(shape, dtype=E4M3, device=device).transpose(2, 3)  # [layers, B, slots*S, H, D]
        v_t = torch.zeros((num_layers, batch, heads, head_dim, -(-rows // 16) * 16), dtype=E4M3, device=device)  # [layers, B, H, D, rows16]
        self.v = v_t[..., :rows].permute(0, 1, 4, 2, 3)  # [layers, B, slots*S, H, D], D strided
        scales = (num_layers, batch, plan.slots, heads)
        self.k_scale = torch.full(scales, SCALE_FLOOR, dtype=torch.float32, device=device)  # [layers, B, slots, H]
        self.v_scale = torch.full(scales, SCALE_FLOOR, dtype=torch.float32, device=device)  # [layers, B, slots, H]
        self._storage = (self.k, v_t, self.k_scale, self.v_scale)
        self._layers = tuple(CacheLayer(self.k[i], self.v[i], self.k_scale[i], self.v_scale[i]) for i in range(num_layers))

    @property
    def fp8(self) -> bool:
        return self.k_scale is not None

    def layer(self, index: int) -> CacheLayer:
        """Layer ``index``'s K and V ``[B, slots*S, H, D]`` (and, in e4m3, scales ``[B, slots, H]``): views of the
        storage, made once, so a captured CUDA graph and every later call read the same addresses."""
        return self._layers[index]

    def view(self, chunk: int, grid: tuple[int, int], freqs: torch.Tensor, rope_dtype=torch.float32, rope_positions: int = 0) -> RingView:
        """Chunk ``chunk``'s window: the slots and temporal positions of the frames it attends.

        ``rope_positions`` fixes the kernels' RoPE table length for the whole stream (see ``RingView``)."""
        plan = self.plan
        return RingView(
            slots=[plan.slot_of(f) for f in plan.visible_frames(chunk)],
            frame_pos=plan.temporal_positions(chunk),
            query_frames=plan.chunk_size,
            grid=grid,
            num_slots=plan.slots,
            freqs=freqs,
            device=self.k.device,
            rope_dtype=rope_dtype,
            rope_positions=rope_positions,
            rotated_keys=plan.fixed_positions and self.rotate_keys,
        )

    @property
    def storage(self) -> tuple[torch.Tensor, ...]:
        """The tensors that hold everything the cache knows (K, V, and for e4m3 V's padded storage and the scales):
        what a stream state with its rings saves."""
        return self._storage

    def load_storage(self, tensors) -> None:
        """Copy a saved ``storage`` back in place, refusing one of another shape or dtype (another model, size or
        window)."""
        if len(tensors) != len(self._storage):
            raise ValueError(f"a ring of {len(self._storage)} tensors cannot take {len(tensors)}: the state comes from "
                             "another cache dtype")
        for mine, saved in zip(self._storage, tensors):
            if tuple(mine.shape) != tuple(saved.shape) or mine.dtype != saved.dtype:
                raise ValueError(f"a ring tensor {tuple(mine.shape)} {mine.dtype} cannot take {tuple(saved.shape)} "
                                 f"{saved.dtype}: the state comes from another model, size, window or cache dtype")
            mine.copy_(saved)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tensors (scales and row padding included)."""
        return sum(t.numel() * t.element_size() for t in self._storage)
