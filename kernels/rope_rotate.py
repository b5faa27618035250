"""The 3D RoPE rotation of a tile, shared by the pre-pass and the fused recache write.

Pairs are interleaved (x[2i], x[2i+1]) as in Wan; pair i turns by the token's position on its axis
(temporal for the first PT pairs, height for the next PH, width for the rest) times its frequency, read
from a per-position cos/sin table so that NTK scaling and re-indexed positions cost nothing here.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rope_rotate(
    x,  # [BLOCK_T, NH, 2*HALF] float32: tokens x heads x interleaved pairs
    t,  # [BLOCK_T] int32 temporal position of each token's frame
    tok,  # [BLOCK_T] int32 index of each token inside its frame (row-major over the gh x gw grid)
    Cos,  # [NPOS, HALF] float32 cos(p * freq_i)
    Sin,  # [NPOS, HALF] float32
    GW,  # tokens per grid row
    HALF: tl.constexpr, PT: tl.constexpr, PH: tl.constexpr,
):
    BLOCK_T: tl.constexpr = x.shape[0]
    NH: tl.constexpr = x.shape[1]
    pair = tl.arange(0, HALF)
    pos = tl.where(pair[None, :] < PT, t[:, None], tl.where(pair[None, :] < PT + PH, (tok // GW)[:, None], (tok % GW)[:, None]))
    cos = tl.load(Cos + pos * HALF + pair[None, :])[:, None, :]  # [BLOCK_T, 1, HALF]
    sin = tl.load(Sin + pos * HALF + pair[None, :])[:, None, :]
    even, odd = tl.split(tl.reshape(x, (BLOCK_T, NH, HALF, 2)))
    return tl.reshape(tl.join(even * cos - odd * sin, even * sin + odd * cos), (BLOCK_T, NH, 2 * HALF))
