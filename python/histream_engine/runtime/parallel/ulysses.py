"""One stream on N ranks: DeepSpeed-Ulysses sequence parallelism inside the cached forward.

Each rank owns a slice of every latent frame's tokens (``TokenSplit``: uneven where N does not divide the frame)
and runs the blocks token-wise on it: modulation, the Q/K/V projections, the across-heads RMSNorms, the output
projection, cross-attention (the text K/V are replicated) and the FFN (the patch embedding, one small matmul a
token, runs on the whole grid on every rank, which keeps its slice). Around
self-attention one all-to-all turns the rank's ``[L/N, H, D]`` Q, K and V into ``[L, H/N, D]`` (all tokens, its
heads), and one turns the output back. So a rank attends, writes and keeps only its own heads' ring cache:
1/N of the cache memory and no cache traffic, with every attention backend unchanged (they read H from the
ring they are given).

After each forward the head's output (the flow) is all-gathered, so every rank holds the whole flow and runs
the same sampling arithmetic with the same seeded noise, upsampling and downsampling included: the ranks' latents
stay identical, and the next forward takes its token slice of them again.

The same collectives run on NCCL and gloo (``torch.distributed``), so CPU ranks test the code path a node of GPUs
runs. Nothing here blocks the host besides the collectives themselves; a CUDA graph captures them as it captures
kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..runners.torch_runner import TorchRunner
from .group import ParallelGroup

_NO_NORM = nn.Identity()  # K arrives at the attention already normalised: its RMSNorm spans every head


@dataclass(frozen=True)
class TokenSplit:
    """Which of a frame's ``tokens`` each of ``world`` ranks owns: contiguous ranges, the first ``tokens % world``
    ranks one token more."""

    tokens: int
    world: int

    @property
    def sizes(self) -> list[int]:
        base, extra = divmod(self.tokens, self.world)
        return [base + (r < extra) for r in range(self.world)]

    def bounds(self, rank: int) -> tuple[int, int]:
        start = sum(self.sizes[:rank])
        return start, start + self.sizes[rank]


@dataclass
class Exchange:
    """The collectives of one rank's sequence-parallel forwards, counting the bytes it sends to other ranks (as they
    are issued from Python: the replay of a captured CUDA graph issues them again without counting)."""

    par: ParallelGroup
    bytes_sent: int = field(default=0)

    def _count(self, send: torch.Tensor, keeps: torch.Tensor) -> None:
        """An all-to-all sends ``send`` but for the part that stays on this rank, ``keeps``."""
        self.bytes_sent += (send.numel() - keeps.numel()) * send.element_size()

    def to_heads(self, x: torch.Tensor, split: TokenSplit) -> torch.Tensor:
        """``[G, B, F, S_r, H, D]`` (G tensors of this rank's tokens, every head) -> ``[G, B, F, S, H/N, D]`` (every
        token, this rank's heads)."""
        import torch.distributed as dist

        N = self.par.world_size
        G, B, Fr, Sr, H, D = x.shape
        h = H // N
        send = x.view(G, B, Fr, Sr, N, h, D).permute(4, 0, 1, 2, 3, 5, 6).contiguous()  # [N, G, B, F, S_r, h, D]
        unit = G * B * Fr * h * D  # elements per token of one rank's heads
        recv = x.new_empty(unit * split.tokens)  # [sum_j G*B*F*S_j*h*D]: rank j's tokens of my heads, rank after rank
        dist.all_to_all_single(recv, send.view(-1), [unit * s for s in split.sizes], [unit * Sr] * N, group=self.par.group)
        self._count(send, keeps=send[self.par.rank])
        pieces = [p.view(G, B, Fr, s, h, D) for p, s in zip(recv.split([unit * s for s in split.sizes]), split.sizes)]
        return torch.cat(pieces, dim=3)  # [G, B, F, S, h, D]

    def to_tokens(self, y: torch.Tensor, split: TokenSplit) -> torch.Tensor:
        """``[B, F, S, H/N, D]`` (every token, this rank's heads) -> ``[B, F, S_r, H, D]`` (its tokens, every head)."""
        import torch.distributed as dist

        N, r = self.par.world_size, self.par.rank
        B, Fr, S, h, D = y.shape
        Sr = split.sizes[r]
        unit = B * Fr * h * D
        parts = y.split(split.sizes, dim=2)  # [B, F, S_j, h, D] each: rank j's tokens
        send = torch.cat([p.reshape(-1) for p in parts])  # [B*F*S*h*D], rank after rank
        recv = y.new_empty(N * unit * Sr)  # [N * B*F*S_r*h*D]: my tokens of each rank's heads
        dist.all_to_all_single(recv, send, [unit * Sr] * N, [unit * s for s in split.sizes], group=self.par.group)
        self._count(send, keeps=parts[r])
        return recv.view(N, B, Fr, Sr, h, D).permute(1, 2, 3, 0, 4, 5).reshape(B, Fr, Sr, N * h, D)

    def gather_tokens(self, y: torch.Tensor, split: TokenSplit) -> torch.Tensor:
        """Every rank's ``[B, F, S_r, P]`` -> the whole ``[B, F, S, P]`` on every rank (rows padded to the largest
        slice for the gather, which wants equal sizes, and cut back)."""
        import torch.distributed as dist

        N = self.par.world_size
        B, Fr, Sr, P = y.shape
        most = max(split.sizes)
        padded = y if Sr == most else torch.cat([y, y.new_zeros(B, Fr, most - Sr, P)], dim=2)  # [B, F, most, P]
        parts = [torch.empty_like(padded) for _ in range(N)]  # [B, F, most, P] from each rank
        dist.all_gather(parts, padded.contiguous(), group=self.par.group)
        self.bytes_sent += padded.numel() * padded.element_size() * (N - 1)  # one copy to every other rank
        return torch.cat([p[:, :, :s] for p, s in zip(parts, split.sizes)], dim=2)


class UlyssesAttend:
    """``attend(layer, q, k_proj, v_proj, norm_k)`` for a rank's tokens, around an ``inner`` attend over its heads
    (the engine's ``WindowAttention`` on the rank's ring, or the re-cache pass's)."""

    def __init__(self, inner, exchange: Exchange, split: TokenSplit, frames: int, heads: int):
        self.inner, self.exchange, self.split, self.frames, self.heads = inner, exchange, split, frames, heads

    def __call__(self, layer: int, q, k_proj: torch.Tensor, v_proj: torch.Tensor, norm_k):
        # q: [B, F*S_r, H, D] after RMSNorm, or None (the last layer of a recache pass only writes); k_proj, v_proj: [B, F*S_r, C]
        B, Lr, C = k_proj.shape
        Fr, H = self.frames, self.heads
        Sr, D = Lr // Fr, C // H
        k = norm_k(k_proj)  # [B, F*S_r, C]: RMSNorm over all heads, so before the heads are dealt out
        parts = [k, v_proj] if q is None else [q.flatten(2).to(k.dtype), k, v_proj]
        x = torch.stack([p.reshape(B, Fr, Sr, H, D) for p in parts])  # [G, B, F, S_r, H, D]
        mine = self.exchange.to_heads(x, self.split)  # [G, B, F, S, H/N, D]
        S, h = mine.shape[3], mine.shape[4]
        flat = mine.view(len(parts), B, Fr * S, h * D)  # [G, B, L, C/N]
        if q is None:
            return self.inner(layer, None, flat[0], flat[1], _NO_NORM)
        out = self.inner(layer, flat[0].view(B, Fr * S, h, D).to(q.dtype), flat[1], flat[2], _NO_NORM)  # [B, L, H/N, D]
        return self.exchange.to_tokens(out.reshape(B, Fr, S, h, D), self.split).view(B, Lr, H, D)


class UlyssesRunner(TorchRunner):
    """The torch runner with its forwards sharded over a sequence-parallel group (``EngineConfig(parallel="ulysses")``):
    every forward goes through ``_forward``, which this runner replaces."""

    def __init__(self, dit, backend, ops, par: ParallelGroup):
        heads = dit.config.num_heads
        if heads % par.world_size:
            raise ValueError(f"parallel='ulysses' deals the model's {heads} attention heads out to the ranks, and {heads} is "
                             f"not divisible by the world size {par.world_size}: use {divisors(heads)} processes")
        super().__init__(dit, backend, ops)
        self.par = par
        self.exchange = Exchange(par)

    @property
    def head_shards(self) -> int:
        """Ranks the heads (and so each ring cache) are dealt out to."""
        return self.par.world_size

    def _forward(self, tokens: torch.Tensor, t, cross, attend, cache_only: bool) -> torch.Tensor | None:
        # tokens: [B, F, h, w, C], the whole grid on every rank (the embedding is token-wise and cheap)
        dit = self.dit
        B, Fr, gh, gw, C = tokens.shape
        split = TokenSplit(gh * gw, self.par.world_size)
        start, stop = split.bounds(self.par.rank)
        mine = tokens.reshape(B, Fr, gh * gw, C)[:, :, start:stop]  # [B, F, S_r, C]
        sharded = UlyssesAttend(attend, self.exchange, split, Fr, dit.config.num_heads)
        y = dit.run_blocks(mine, *dit.time_embed(t), cross, sharded, self.backend, cache_only, self.ops)  # [B, F, S_r, P]
        if y is None:
            return None
        return dit.unpatchify(self.exchange.gather_tokens(y, split), (Fr, gh, gw))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
