"""Input checks shared by the Triton launchers (this package) and the CUDA launchers (``histream_engine.native.ops``).

Plain torch, no Triton: each function raises ``ValueError`` naming what is wrong, or returns the sizes the
launcher needs. Device checks stay with each launcher (the Triton ones also accept the CPU interpreter).
Slot and position values are not read back (that would stall the GPU every layer): callers build them from
Python lists and check their ranges there (``histream_engine.attention.ring.RingView``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def check_rope_table(cos: torch.Tensor, sin: torch.Tensor, half: int, grid: tuple[int, int], axis_pairs: tuple[int, int, int]) -> None:
    if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] != half or cos.dtype != torch.float32 or not (cos.is_contiguous() and sin.is_contiguous()):
        raise ValueError(f"cos/sin tables must be contiguous float32 [NPOS, {half}], got {tuple(cos.shape)} {cos.dtype}")
    if cos.shape[0] < max(grid):
        raise ValueError(f"RoPE table has {cos.shape[0]} positions, fewer than the {grid[0]}x{grid[1]} token grid needs")
    if sum(axis_pairs) != half:
        raise ValueError(f"axis_pairs {axis_pairs} must sum to head_dim / 2 = {half}")


@dataclass(frozen=True)
class PrepassShape:
    B: int
    Lq: int
    H: int
    D: int
    S: int  # tokens per frame
    R: int  # ring rows (0 without K)
    Lk: int  # visible key rows (0 without K)


def check_rope_prepass(q, q_pos, cos, sin, grid, axis_pairs, q_out, k_store=None, slot_pos=None, k_out=None) -> PrepassShape:
    B, Lq, H, D = q.shape
    gh, gw = grid
    S = gh * gw
    nq = q_pos.numel()
    with_k = k_store is not None
    if with_k != (slot_pos is not None) or with_k != (k_out is not None):
        raise ValueError("rope_prepass rotates K only given all of k_store, slot_pos and k_out")
    if q.dtype not in FLOAT_DTYPES:
        raise ValueError(f"rope_prepass takes fp16/bf16/fp32 q and k of one dtype; got {q.dtype}")
    if D % 2 or (D // 2) & (D // 2 - 1) or D < 16:
        raise ValueError(f"rope_prepass needs a head_dim that is twice a power of two, at least 16; got {D}")
    if Lq != nq * S:
        raise ValueError(f"{Lq} query tokens must be the {nq} query frames of {S} tokens")
    if q_pos.dtype != torch.int32 or (with_k and slot_pos.dtype != torch.int32):
        raise ValueError("q_pos and slot_pos must be int32")
    check_rope_table(cos, sin, D // 2, grid, axis_pairs)
    if q.stride(-1) != 1:
        raise ValueError("q needs a contiguous last dim")
    outputs = [("q_out", q_out, (B, H, Lq, D))]
    nv, R = 0, 0
    if with_k:
        R, nv = k_store.shape[1], slot_pos.numel()
        if k_store.dtype != q.dtype or k_store.dim() != 4 or k_store.shape[0] != B or k_store.shape[2:] != (H, D) or R % S:
            raise ValueError(f"ring storage {tuple(k_store.shape)} {k_store.dtype} does not fit q {tuple(q.shape)} {q.dtype} with {S} tokens per frame")
        if nv * S > R or nq > nv:
            raise ValueError(f"{nv} visible slots of {S} tokens do not fit a ring of {R // S} slots with {nq} query frames")
        if k_store.stride(-1) != 1:
            raise ValueError("k_store needs a contiguous last dim")
        outputs.append(("k_out", k_out, (B, H, R, D)))
    for name, t, shape in outputs:
        if tuple(t.shape) != shape or t.dtype != q.dtype or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous {list(shape)} {q.dtype}, got {tuple(t.shape)} {t.dtype}")
    check_one_device("rope_prepass", q, q_pos, cos, sin, q_out, k_store, slot_pos, k_out)
    return PrepassShape(B, Lq, H, D, S, R, nv * S)


@dataclass(frozen=True)
class RecacheShape:
    B: int
    L: int
    H: int
    D: int
    S: int  # tokens per frame (1 without RoPE)
    gw: int
    pairs: tuple[int, int, int]


def check_recache_write(k_proj, v_proj, norm_weight, rows, k_store, v_store, rope=None) -> RecacheShape:
    B, L, C = k_proj.shape
    if v_proj.shape != k_proj.shape:
        raise ValueError(f"k_proj {tuple(k_proj.shape)} and v_proj {tuple(v_proj.shape)} differ")
    if k_store.shape != v_store.shape or k_store.dim() != 4 or k_store.shape[0] != B or k_store.shape[2] * k_store.shape[3] != C:
        raise ValueError(f"storage {tuple(k_store.shape)} does not hold [B={B}, rows, H, D] with H*D = {C}")
    H, D = k_store.shape[2:]
    if D & (D - 1):
        raise ValueError(f"recache_write needs a power-of-two head_dim, got {D}")
    if rows.shape != (L,) or rows.dtype != torch.int64:
        raise ValueError(f"rows must be int64 [{L}], got {rows.dtype} {tuple(rows.shape)}")
    if norm_weight is not None and norm_weight.shape != (C,):
        raise ValueError(f"norm weight must be [{C}], got {tuple(norm_weight.shape)}")
    for t in (k_proj, v_proj):
        if t.stride(-1) != 1:
            raise ValueError("k_proj and v_proj need a contiguous last dim")
    for t in (k_store, v_store):
        if t.stride(3) != 1:
            raise ValueError("ring storage needs a contiguous last (head_dim) dimension")
    S, gw, pairs = 1, 1, (0, 0, 0)
    if rope is not None:
        positions, cos, sin, (gh, gw), pairs = rope
        S = gh * gw
        if positions.dtype != torch.int32 or positions.numel() * S != L:
            raise ValueError(f"rope positions must be int32, one per frame of {S} tokens of the {L} written; got {positions.numel()} {positions.dtype}")
        check_rope_table(cos, sin, D // 2, (gh, gw), pairs)
    return RecacheShape(B, L, H, D, S, gw, tuple(pairs))


def check_downsample_patchify(x: torch.Tensor, factor: int, patch_size: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Returns the low-res token grid (F/pt, h, w) and the patch length P."""
    if x.dim() != 5:
        raise ValueError(f"latents must be [B, C, F, H, W], got {tuple(x.shape)}")
    B, C, Fr, H, W = x.shape
    pt, ph, pw = patch_size
    if Fr % pt or H % (factor * ph) or W % (factor * pw):
        raise ValueError(f"latent {tuple(x.shape[2:])} is not divisible by downsampling {factor} x patch {patch_size}")
    return Fr // pt, H // (factor * ph), W // (factor * pw), C * pt * ph * pw


def check_attention_core(q, k, v, out, dtypes, head_dims) -> None:
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if q.dtype not in dtypes or k.dtype != q.dtype or v.dtype != q.dtype:
        names = "/".join(DTYPE_NAMES[d] for d in dtypes)
        raise ValueError(f"attention_core takes {names} q, k, v of one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if D not in head_dims:
        raise ValueError(f"attention_core supports head_dim {head_dims}, got {D}")
    if k.dim() != 4 or tuple(k.shape) != (B, H, Lk, D) or tuple(v.shape) != tuple(k.shape) or Lk == 0:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be [B, H, Lk > 0, D] for q {tuple(q.shape)}")
    if out is not None and (tuple(out.shape) != (B, Lq, H, D) or out.dtype != q.dtype or out.stride(-1) != 1):
        raise ValueError(f"out must be [{B}, {Lq}, {H}, {D}] {q.dtype} with a contiguous last dim")
    check_one_device("attention_core", q, k, v, out)


def check_16_byte_aligned(name: str, t: torch.Tensor, dims: int | None = None) -> None:
    """Vector and TMA loads need a contiguous last dim and the base and every other stride 16-byte aligned."""
    size = t.element_size()
    strides = t.stride()[:-1] if dims is None else t.stride()[:dims]
    if t.stride(-1) != 1 or any(s * size % 16 for s in strides) or t.data_ptr() % 16:
        raise ValueError(f"{name} {tuple(t.shape)} with strides {t.stride()} is not 16-byte aligned: the last dim must be "
                         "contiguous and the other strides and the base 16-byte aligned")


def check_one_device(kernel: str, *tensors) -> None:
    if len({t.device for t in tensors if t is not None}) != 1:
        raise ValueError(f"{kernel} inputs must be on one device")


E4M3 = torch.float8_e4m3fn


def _check_scales(name: str, scale: torch.Tensor, B: int, slots: int, H: int) -> None:
    if scale.dtype != torch.float32 or scale.dim() != 3 or tuple(scale.shape) != (B, slots, H) or scale.stride(2) != 1:
        raise ValueError(f"{name} must be float32 [{B}, {slots}, {H}] with heads contiguous, got {scale.dtype} {tuple(scale.shape)}")


def check_recache_write_fp8(k_proj, v_proj, norm_weight, rows, slots, tokens_per_frame, k_store, v_store, k_scale, v_scale, rope=None) -> RecacheShape:
    """``check_recache_write``'s checks (V may have any strides here), plus the e4m3 stores and their scales."""
    shape = check_recache_write(k_proj, v_proj, norm_weight, rows, k_store, k_store, rope)
    if k_store.dtype != E4M3 or v_store.dtype != E4M3 or v_store.shape != k_store.shape:
        raise ValueError(f"e4m3 ring storage expected for K and V of one shape, got {k_store.dtype} {tuple(k_store.shape)}, "
                         f"{v_store.dtype} {tuple(v_store.shape)}")
    S = tokens_per_frame
    R = k_store.shape[1]
    if S < 1 or shape.L % S or R % S or (rope is not None and shape.S != S):
        raise ValueError(f"{shape.L} written tokens and {R} ring rows must be whole frames of {S} tokens")
    if slots.dtype != torch.int64 or slots.shape != (shape.L // S,):
        raise ValueError(f"slots must be int64 [{shape.L // S}], got {slots.dtype} {tuple(slots.shape)}")
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        _check_scales(name, scale, shape.B, R // S, shape.H)
    check_one_device("recache_write_fp8", k_proj, v_proj, rows, slots, k_store, v_store, k_scale, v_scale)
    return shape


def check_fp8_prepass(q, q_pos, cos, sin, grid, axis_pairs, q8, q_scale, q_block, k_store=None, k_scale=None, slot_pos=None, k8=None) -> PrepassShape:
    """The FP8 pre-pass: the bf16 pre-pass's rules for Q and positions, e4m3 outputs (and e4m3 K storage), their scales."""
    B, Lq, H, D = q.shape
    with_k = k_store is not None
    if with_k != (k_scale is not None) or with_k != (slot_pos is not None) or with_k != (k8 is not None):
        raise ValueError("the FP8 pre-pass rotates K only given all of k_store, k_scale, slot_pos and k8")
    shape = check_rope_prepass(q, q_pos, cos, sin, grid, axis_pairs, q.new_empty((B, H, Lq, D)))
    if q8.dtype != E4M3 or tuple(q8.shape) != (B, H, Lq, D) or not q8.is_contiguous():
        raise ValueError(f"q8 must be contiguous e4m3 [{B}, {H}, {Lq}, {D}], got {q8.dtype} {tuple(q8.shape)}")
    nb = -(-Lq // q_block)
    if q_scale.dtype != torch.float32 or tuple(q_scale.shape) != (B, H, nb) or not q_scale.is_contiguous():
        raise ValueError(f"q_scale must be contiguous float32 [{B}, {H}, {nb}], got {q_scale.dtype} {tuple(q_scale.shape)}")
    if not with_k:
        check_one_device("fp8_prepass", q, q8, q_scale)
        return shape
    S, R, nv = shape.S, k_store.shape[1], slot_pos.numel()
    if k_store.dtype != E4M3 or k_store.dim() != 4 or k_store.shape[0] != B or k_store.shape[2:] != (H, D) or R % S or k_store.stride(-1) != 1:
        raise ValueError(f"ring storage must be e4m3 [B, whole frames of {S}, {H}, {D}] with D contiguous, got {k_store.dtype} {tuple(k_store.shape)}")
    if slot_pos.dtype != torch.int32 or nv * S > R or shape.Lq // S > nv:
        raise ValueError(f"{nv} visible slots (int32 positions) of {S} tokens do not fit a ring of {R // S} slots with {shape.Lq // S} query frames")
    if k8.dtype != E4M3 or tuple(k8.shape) != (B, H, R, D) or not k8.is_contiguous():
        raise ValueError(f"k8 must be contiguous e4m3 [{B}, {H}, {R}, {D}], got {k8.dtype} {tuple(k8.shape)}")
    _check_scales("k_scale", k_scale, B, nv, H)
    check_one_device("fp8_prepass", q, q8, q_scale, k_store, k_scale, slot_pos, k8)
    return PrepassShape(B, Lq, H, D, S, R, nv * S)


def check_attention_core_fp8(q8, q_scale, q_block, k8, k_scale, v_t, v_scale, head_dims) -> None:
    B, H, Lq, D = q8.shape
    Lk = k8.shape[2]
    if q8.dtype != E4M3 or k8.dtype != E4M3 or v_t.dtype != E4M3:
        raise ValueError(f"the FP8 attention core takes e4m3 q, k, v; got {q8.dtype}, {k8.dtype}, {v_t.dtype}")
    if D not in head_dims:
        raise ValueError(f"the FP8 attention core supports head_dim {head_dims}, got {D}")
    if tuple(k8.shape) != (B, H, Lk, D) or tuple(v_t.shape) != (B, H, D, Lk) or Lk == 0:
        raise ValueError(f"k {tuple(k8.shape)} must be [B, H, Lk > 0, D] and v [B, H, D, Lk] (transposed) for q {tuple(q8.shape)}")
    nv = k_scale.shape[1] if k_scale.dim() == 3 else 0
    if nv == 0 or Lk % nv:
        raise ValueError(f"{Lk} keys are not whole frames of the {nv} visible slots the scales describe")
    for name, scale in (("k_scale", k_scale), ("v_scale", v_scale)):
        _check_scales(name, scale, B, nv, H)
    nb = -(-Lq // q_block)
    if q_scale.dtype != torch.float32 or tuple(q_scale.shape) != (B, H, nb) or not q_scale.is_contiguous():
        raise ValueError(f"q_scale must be contiguous float32 [{B}, {H}, {nb}], got {q_scale.dtype} {tuple(q_scale.shape)}")
    check_one_device("attention_core_fp8", q8, q_scale, k8, k_scale, v_t, v_scale)
