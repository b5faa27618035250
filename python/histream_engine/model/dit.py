"""The Wan2.1 diffusion transformer, with parameter names exactly as in the original Wan checkpoints.

Self-attention is delegated to an ``attend(layer, q, k, v)`` callable so that one block implementation
serves the whole-sequence forward (with an optional block-causal mask) and the runtime's cached,
chunk-by-chunk forwards. Modulation, the time embedding and normalisation run in float32 whatever
the weight dtype, as in Wan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import get_backend
from ..attention.rope import grid_positions, inv_freqs, rope_cos_sin
from ..config import WanConfig

# attend(layer, q, k_proj, v_proj, norm_k) -> out [B, L, H, D]: q [B, L, H, D] after RMSNorm, not rotated;
# k_proj, v_proj [B, L, C] raw projections, K's RMSNorm left to the callee so a cache write can fuse it.
# q is None when only the K/V write is wanted (the last block of a recache pass); it then returns None.
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, nn.Module], torch.Tensor]

# Parameters that stay float32 when the model is cast to bf16/fp16 (they feed the fp32 modulation).
FP32_PREFIXES = ("time_embedding.", "time_projection.")
FP32_SUFFIXES = ("modulation",)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_dtype(dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported dtype {dtype}; use one of {[str(d) for d in SUPPORTED_DTYPES]}")


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[cos, sin] of t * 10000^(-i/half), in float64: ``[N, dim]`` for t ``[N]``."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)  # [N, half]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def merge_zero_rows(context: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attend a prompt's all-zero rows as one: ``context`` ``[B, L, text_dim]`` -> ``[B, Lr + 1, text_dim]`` and a
    logit bias ``[B, 1, 1, Lr + 1]``, or ``(context, None)`` when there is nothing to merge.

    Wan pads every prompt with zero rows to 512 (a prompt is often 20 to 150 tokens). Each zero row embeds to
    the same key and value, and attending n copies of one key is attending it once with log n added to its
    logit: the same softmax, the same output, without the copies. Real rows keep bias 0, the merged row gets
    log n, slots a shorter prompt of the batch leaves empty get -inf. The bias must carry log n (up to 6.2)
    precisely, so this is done only where ``dtype`` holds it to ~1e-7 (float32, float64): in bf16 the rounding
    of log n alone would move the padding's weight by up to 1.6%.
    """
    zero = (context == 0).all(-1)  # [B, L]
    n_pad = zero.sum(1).tolist()  # once per prompt, before any chunk: a host read is fine here
    if max(n_pad) < 2 or torch.finfo(dtype).eps > 2**-20:
        return context, None
    B, _, width = context.shape
    real = [context[b][~zero[b]] for b in range(B)]  # each [Lb, text_dim]
    Lr = max(r.shape[0] for r in real)
    merged = context.new_zeros(B, Lr + 1, width)  # [B, Lr + 1, text_dim]; row Lr is the merged padding
    bias = torch.full((B, Lr + 1), float("-inf"), dtype=dtype, device=context.device)  # [B, Lr + 1]
    for b, rows in enumerate(real):
        merged[b, : rows.shape[0]] = rows
        bias[b, : rows.shape[0]] = 0.0
        if n_pad[b]:
            bias[b, Lr] = math.log(n_pad[b])
    return merged, bias[:, None, None, :]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x / sqrt(mean(x^2) + eps) in float32 (a fused kernel where torch has one); then the weight in x's dtype, as Wan does
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class AffineLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the dtype of input and weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).type_as(x)


def layer_norm_fp32(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def modulated_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale) + shift in float32, back in x's dtype; x ``[B, F, S, C]``, shift/scale ``[B, F, 1, C]``."""
    return torch.addcmul(shift, layer_norm_fp32(x, eps), 1 + scale).to(x.dtype)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y * gate in float32, back in x's dtype; x, y ``[B, F, S, C]``, gate ``[B, F, 1, C]``."""
    return torch.addcmul(x.float(), y.float(), gate).to(x.dtype)


def feed_forward(ffn: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """Wan's FFN (Linear, GELU tanh, Linear) as the module computes it."""
    return ffn(h)


class FFNWorkspace:
    """Wan's FFN without a pass over its hidden activations for GELU alone.

    On a GPU (and for dtypes oneDNN does not fuse) the hidden lives in one buffer per shape, reused by every
    block and forward: the first matmul writes into it (``addmm(out=)``) and GELU runs in place, so no
    ``[tokens, ffn_dim]`` tensor (440 MB at 1080p on the 1.3B) churns the caching allocator or the graph pool.
    On a CPU, oneDNN's matmul applies GELU in its epilogue (``mkldnn._linear_pointwise``, the op inductor emits
    for this pattern): 7.0 ms instead of 8.3 ms for a 768 x 384 x 2240 layer on 2 cores.
    """

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def __call__(self, ffn: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
        lin1, act, lin2 = ffn
        if not (isinstance(lin1, nn.Linear) and isinstance(lin2, nn.Linear)):  # FP8 layers (model.fp8_linear) run as modules
            return ffn(h)
        if lin1.bias is None or lin2.bias is None or getattr(act, "approximate", None) != "tanh":
            return ffn(h)
        x = h.reshape(-1, h.shape[-1])  # [N, C]
        if x.device.type == "cpu" and torch.backends.mkldnn.is_available() and (
                x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())):
            hidden = torch.ops.mkldnn._linear_pointwise(x, lin1.weight, lin1.bias, "gelu", [], "tanh")  # [N, ffn_dim]
        else:
            key = (x.shape[0], lin1.out_features, x.dtype, x.device)
            hidden = self._buffers.get(key)
            if hidden is None:
                hidden = self._buffers[key] = torch.empty(key[:2], dtype=x.dtype, device=x.device)  # [N, ffn_dim]
            torch.addmm(lin1.bias, x, lin1.weight.t(), out=hidden)
            torch.ops.aten.gelu_(hidden, approximate="tanh")
        return torch.addmm(lin2.bias, hidden, lin2.weight.t()).view(*h.shape[:-1], lin2.out_features)


@dataclass(frozen=True)
class BlockOps:
    """How a block runs its parts other than the projections and attention: the elementwise ones (about 10
    memory-bound passes over the activations, which ``torch.compile`` fuses into a few kernels) and the FFN."""

    modulated_norm: Callable = modulated_norm
    gated_residual: Callable = gated_residual
    feed_forward: Callable = feed_forward


EAGER_OPS = BlockOps()


def engine_ops(compile: bool = False) -> BlockOps:
    """An engine's ``BlockOps``: the FFN through its own workspace; the elementwise parts through ``torch.compile``
    with static shapes (one compile per token-grid shape) when ``compile``."""
    if not compile:
        return BlockOps(feed_forward=FFNWorkspace())
    return BlockOps(torch.compile(modulated_norm, dynamic=False), torch.compile(gated_residual, dynamic=False), FFNWorkspace())


class Attention(nn.Module):
    """Projections shared by Wan's self- and cross-attention (keys q, k, v, o, norm_q, norm_k)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))  # [B, L, H, D]

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.norm_q(self.q(x)))

    def key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.norm_k(self.k(x))), self.heads(self.v(x))


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)
        self.self_attn = Attention(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = AffineLayerNorm(cfg.dim, eps=cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(cfg.dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, cfg.dim))

    def forward(
        self,
        x: torch.Tensor,  # [B, F, S, C] tokens, frame-major
        e0: torch.Tensor,  # [B, F, 6, C] float32 per-frame modulation
        cross_kv: tuple,  # text K, V [B, Lc, H, D] and logit bias [B, 1, 1, Lc] or None (WanDiT.cross_kv)
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, nn.Module], torch.Tensor],
        cross: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        ops: BlockOps = EAGER_OPS,
    ) -> torch.Tensor:
        shift_sa, scale_sa, gate_sa, shift_ffn, scale_ffn, gate_ffn = self.modulation_terms(e0)

        h = ops.modulated_norm(x, shift_sa, scale_sa, self.eps).flatten(1, 2)  # [B, L, C]
        sa = self.self_attn
        y = sa.o(attend(sa.query(h), sa.k(h), sa.v(h), sa.norm_k).flatten(2)).view_as(x)
        x = ops.gated_residual(x, y, gate_sa)

        h = self.norm3(x).flatten(1, 2)
        y = self.cross_attn.o(cross(self.cross_attn.query(h), *cross_kv).flatten(2))
        x = x + y.view_as(x)

        h = ops.modulated_norm(x, shift_ffn, scale_ffn, self.eps)
        return ops.gated_residual(x, ops.feed_forward(self.ffn, h), gate_ffn)

    def modulation_terms(self, e0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """shift_sa, scale_sa, gate_sa, shift_ffn, scale_ffn, gate_ffn, each ``[B, F, 1, C]`` float32."""
        return (self.modulation.float().unsqueeze(0) + e0).unsqueeze(3).unbind(2)

    def write_kv(self, x: torch.Tensor, e0: torch.Tensor, attend, ops: BlockOps = EAGER_OPS) -> None:
        """Only this block's self-attention K/V, handed to ``attend`` with no queries: the last block of a recache
        pass, whose attention, cross-attention and FFN outputs would feed nothing."""
        shift_sa, scale_sa = self.modulation_terms(e0)[:2]
        h = ops.modulated_norm(x, shift_sa, scale_sa, self.eps).flatten(1, 2)  # [B, L, C]
        sa = self.self_attn
        attend(None, sa.k(h), sa.v(h), sa.norm_k)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * cfg.patch_volume)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # x [B, F, S, C]; e [B, F, C] float32
        shift, scale = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unsqueeze(3).unbind(2)  # [B, F, 1, C]
        return self.head(modulated_norm(x, shift, scale, self.eps))  # [B, F, S, p*out]


class WanDiT(nn.Module):
    def __init__(self, config: WanConfig | str = "wan2.1-1.3b"):
        super().__init__()
        cfg = WanConfig.from_name(config) if isinstance(config, str) else config
        self.config = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([WanBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.reference_attention = get_backend("torch")

    # ---- dtype ----
    def cast(self, dtype: torch.dtype) -> "WanDiT":
        """Cast weights to ``dtype``, keeping the modulation path (time embedding, modulation tables) float32."""
        check_dtype(dtype)
        for name, p in self.named_parameters():
            keep = dtype in (torch.bfloat16, torch.float16) and (name.startswith(FP32_PREFIXES) or name.endswith(FP32_SUFFIXES))
            p.data = p.data.to(torch.float32 if keep else dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    # ---- embeddings ----
    def check_context(self, context: torch.Tensor) -> None:
        if context.dim() != 3 or context.shape[-1] != self.config.text_dim:
            raise ValueError(
                f"context must be [B, L, text_dim={self.config.text_dim}] text embeddings, got shape {tuple(context.shape)}"
            )

    def cross_kv(self, context: torch.Tensor, merge_padding: bool = True) -> list[tuple]:
        """Every block's cross-attention (K, V ``[B, L, H, D]``, logit bias ``[B, 1, 1, L]`` or None) for a prompt;
        computed once, reused for all steps. ``merge_padding``: all-zero text rows attended as one (``merge_zero_rows``)."""
        self.check_context(context)
        bias = None
        if merge_padding:
            context, bias = merge_zero_rows(context, self.dtype)
        ctx = self.text_embedding(context.to(self.dtype))  # [B, L, C]
        # Stored head-major (seen as [B, L, H, D]): attention reads each head's keys as one block, every step.
        return [(*(t.transpose(1, 2).contiguous().transpose(1, 2) for t in blk.cross_attn.key_value(ctx)), bias) for blk in self.blocks]

    def time_embed(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame timesteps ``[B, F]`` -> e ``[B, F, C]`` and e0 ``[B, F, 6, C]``, both float32."""
        return self.time_mlp(self.time_sinusoid(t))

    def time_sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` timesteps -> their sinusoid ``[B, F, freq_dim]``, computed in float64 and handed over in the time
        embedding's dtype: the only float64 step of a forward (exported graphs take it as an input)."""
        sin = sinusoidal_embedding(self.config.freq_dim, t.reshape(-1))  # [B*F, freq_dim] float64
        return sin.to(self.time_embedding[0].weight.dtype).view(*t.shape, -1)

    def time_mlp(self, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sinusoid ``[B, F, freq_dim]`` -> e ``[B, F, C]`` and e0 ``[B, F, 6, C]``, both float32."""
        B, Fr = sin.shape[:2]
        e = self.time_embedding(sin.reshape(B * Fr, -1)).float()  # [B*F, C]
        e0 = self.time_projection(e.to(self.time_projection[1].weight.dtype)).float()  # [B*F, 6C]
        return e.view(B, Fr, -1), e0.view(B, Fr, 6, -1)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, in, F, H, W]`` -> tokens ``[B, F', h, w, C]``."""
        return self.patch_embedding(x.to(self.dtype)).permute(0, 2, 3, 4, 1)

    def unpatchify(self, y: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Head output ``[B, F', h*w, p*out]`` -> flow ``[B, out, F, H, W]``."""
        (pt, ph, pw), (f, h, w) = self.config.patch_size, grid
        y = y.reshape(y.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        y = torch.einsum("bfhwpqrc->bcfphqwr", y)
        return y.reshape(y.shape[0], self.config.out_dim, f * pt, h * ph, w * pw)

    def latent_grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """Token grid (F', h, w) of latents ``[B, in, F, H, W]``; raises a clear error on bad shapes."""
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"latents must be [B, {cfg.in_dim}, F, H, W], got shape {tuple(x.shape)}")
        dims = x.shape[2:]
        if any(d % p for d, p in zip(dims, cfg.patch_size)):
            raise ValueError(f"latent (F, H, W) = {tuple(dims)} must be divisible by the patch size {cfg.patch_size}")
        return tuple(d // p for d, p in zip(dims, cfg.patch_size))

    def frame_timesteps(self, t: torch.Tensor | float, batch: int, frames: int, device) -> torch.Tensor:
        """Normalise t (scalar, ``[B]`` or ``[B, F]``) to per-frame ``[B, F]`` float32."""
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1 and t.shape[0] == batch:
            return t[:, None].expand(batch, frames)
        if t.dim() == 2 and tuple(t.shape) == (batch, frames):
            return t
        raise ValueError(f"t must be a scalar, [B={batch}] or per-frame [B={batch}, F={frames}], got shape {tuple(t.shape)}")

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch vectors ``[B, F', h, w, in*pt*ph*pw]`` (order c, dt, dy, dx) -> tokens ``[B, F', h, w, C]``.

        The patch embedding as a matmul, for callers that patchify themselves (the fused low-res recache).
        """
        w = self.patch_embedding.weight  # [C, in, pt, ph, pw]
        return F.linear(patches.to(w.dtype), w.reshape(w.shape[0], -1), self.patch_embedding.bias)

    # ---- forwards ----
    def forward_tokens(
        self,
        tokens: torch.Tensor,  # [B, F', h, w, C] embedded patches
        t: torch.Tensor,  # [B, F'] per-frame timesteps
        cross_kv: Sequence[tuple],  # per block, from ``cross_kv``
        attend: Attend,
        backend=None,
        cache_only: bool = False,
        ops: BlockOps = EAGER_OPS,
    ) -> torch.Tensor | None:
        """Core forward; returns the flow ``[B, out, F, H, W]``.

        ``cache_only`` is a recache pass, run for the K/V it writes through ``attend``: it returns None, skips
        the head, and the last block stops once its K/V are handed over (``attend`` gets ``q=None``).
        """
        return self.forward_embedded(tokens, *self.time_embed(t), cross_kv, attend, backend, cache_only, ops)

    def forward_embedded(
        self,
        tokens: torch.Tensor,  # [B, F', h, w, C] embedded patches
        e: torch.Tensor,  # [B, F', C] float32 time embedding (``time_embed``)
        e0: torch.Tensor,  # [B, F', 6, C] float32 modulation
        cross_kv: Sequence[tuple],
        attend: Attend,
        backend=None,
        cache_only: bool = False,
        ops: BlockOps = EAGER_OPS,
    ) -> torch.Tensor | None:
        """``forward_tokens`` after the time embedding: the blocks and the head."""
        B, f, h, w, C = tokens.shape
        y = self.run_blocks(tokens.reshape(B, f, h * w, C), e, e0, cross_kv, attend, backend, cache_only, ops)
        return None if y is None else self.unpatchify(y, (f, h, w))

    def run_blocks(
        self,
        x: torch.Tensor,  # [B, F', S, C] tokens, frame-major: a whole grid, or a rank's slice of every frame's tokens
        e: torch.Tensor,  # [B, F', C] float32
        e0: torch.Tensor,  # [B, F', 6, C] float32
        cross_kv: Sequence[tuple],
        attend: Attend,
        backend=None,
        cache_only: bool = False,
        ops: BlockOps = EAGER_OPS,
    ) -> torch.Tensor | None:
        """The blocks and the head, token-wise but for ``attend``: returns the head's output ``[B, F', S, p*out]``
        (None for ``cache_only``). Nothing here needs the whole token grid, so a sequence-parallel rank runs it on
        its own tokens with an ``attend`` that exchanges them (``runtime.ulysses``)."""
        backend = backend or self.reference_attention
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            layer_attend = lambda q, k, v, norm_k, i=i: attend(i, q, k, v, norm_k)  # noqa: E731
            if cache_only and i == last:
                blk.write_kv(x, e0, layer_attend, ops)
                return None
            x = blk(x, e0, cross_kv[i], layer_attend, backend.cross_attention, ops)
        return self.head(x, e)

    def forward_latents(self, x: torch.Tensor, t, cross_kv, attend: Attend, backend=None, cache_only: bool = False, ops: BlockOps = EAGER_OPS):
        """``forward_tokens`` on latents ``[B, in, F, H, W]`` (shape-checked and patchified here)."""
        self.latent_grid(x)
        return self.forward_tokens(self.patchify(x), t, cross_kv, attend, backend, cache_only, ops)

    def forward(
        self,
        x: torch.Tensor,  # [B, in, F, H, W]
        t: torch.Tensor | float,  # [B] or per-frame [B, F]
        context: torch.Tensor,  # [B, L, text_dim]
        block_causal: int | None = None,
        frame_mask: torch.Tensor | None = None,  # [F', F'] bool: latent frame i may attend frame j
        ntk_scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> torch.Tensor:  # flow [B, out, F, H, W]
        """Whole-sequence forward, the uncached reference of the chunked runtime.

        ``block_causal=M`` lets each chunk of M latent frames see itself and earlier chunks; ``frame_mask``
        states any frame-level visibility (a sliding window); ``ntk_scale`` stretches RoPE per (t, h, w) axis.
        """
        f, h, w = self.latent_grid(x)
        self.check_context(context)
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"batch of context ({context.shape[0]}) and latents ({x.shape[0]}) differ")
        if block_causal is not None and frame_mask is not None:
            raise ValueError("pass block_causal or frame_mask, not both")
        t = self.frame_timesteps(t, x.shape[0], f, x.device)
        positions = grid_positions(range(f), h, w, device=x.device)  # [L, 3]
        freqs = inv_freqs(self.config.head_dim, self.config.rope_theta, ntk_scale)
        rope = rope_cos_sin(positions, freqs, dtype=torch.promote_types(self.dtype, torch.float32))
        if block_causal is not None:
            if block_causal <= 0:
                raise ValueError(f"block_causal must be a positive chunk size, got {block_causal}")
            chunk = torch.arange(f, device=x.device) // block_causal
            frame_mask = chunk[:, None] >= chunk[None, :]  # [F, F]
        mask = None
        if frame_mask is not None:
            if tuple(frame_mask.shape) != (f, f):
                raise ValueError(f"frame_mask must be [F, F] = [{f}, {f}], got {tuple(frame_mask.shape)}")
            frame = positions[:, 0]
            mask = frame_mask.to(x.device)[frame][:, frame]  # [L, L]
        backend = self.reference_attention
        heads = self.config.num_heads

        def attend(layer: int, q, k_proj, v_proj, norm_k):
            k = norm_k(k_proj).unflatten(-1, (heads, -1))  # [B, L, H, D]
            return backend.self_attention(q, k, v_proj.unflatten(-1, (heads, -1)), rope, rope, mask)

        return self.forward_latents(x, t, self.cross_kv(context, merge_padding=False), attend, backend)


def initialized_dit(config: WanConfig | str, dtype: torch.dtype, device, seed: int = 0) -> WanDiT:
    """A DiT with its default initialisation under ``seed``, built on ``device`` (so its RNG draws the weights): the
    random model of the benchmark presets and of ``histream export --preset``, which must match weight for weight."""
    torch.manual_seed(seed)
    with torch.device(device):
        dit = WanDiT(config)
    return dit.cast(dtype).eval().requires_grad_(False)
