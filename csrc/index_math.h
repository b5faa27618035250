// Index math shared by the CUDA kernels and the host tests: everything about a launch that is not a hardware
// instruction. Each function is __host__ __device__ so that bindings.cpp (compiled by the host compiler) can run
// the exact code the kernels run and pytest can compare it with the Python reference (tests/csrc).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HS_HD __host__ __device__ __forceinline__
#else
#define HS_HD inline
#endif

namespace histream {

// ---- RoPE -------------------------------------------------------------------------------------------------
// Pair i of a head turns by the token's position on the axis that owns the pair: temporal for the first
// `pt` pairs, height for the next `ph`, width for the rest (Wan's 3D split). `t` is the token's frame
// position, `tok` its index inside the frame (row-major over a grid `gw` tokens wide).
HS_HD int rope_axis_position(int pair, int t, int tok, int gw, int pt, int ph) {
    return pair < pt ? t : (pair < pt + ph ? tok / gw : tok % gw);
}

// Row of the cos/sin table of pair `pair` of token `row` of a frame-major token run whose frame f has
// temporal position `frame_pos[f]`: the whole lookup of the pre-pass and the rotated recache write.
HS_HD int rope_table_row(const int32_t* frame_pos, int64_t row, int tokens_per_frame, int pair, int gw, int pt, int ph) {
    const int frame = static_cast<int>(row / tokens_per_frame);
    const int tok = static_cast<int>(row % tokens_per_frame);
    return rope_axis_position(pair, frame_pos[frame], tok, gw, pt, ph);
}

// One interleaved pair (x[2i], x[2i+1]) turned by (cos, sin).
HS_HD void rope_turn(float even, float odd, float c, float s, float* out_even, float* out_odd) {
    *out_even = even * c - odd * s;
    *out_odd = even * s + odd * c;
}

// ---- area downsample + patchify -------------------------------------------------------------------------------
// Output element (token, p) of the low-res patch matrix [N, P] reads the r x r latent pixels starting at
// (b, c, frame, y0, x0) of [B, C, F, H, W]: tokens run (b, f', gy, gx), patch entries (c, dt, dy, dx).
struct PatchSource {
    int64_t b;
    int c, frame, y0, x0;
};

HS_HD PatchSource patch_source(int64_t token, int p, int ft, int gh, int gw, int pt, int ph, int pw, int r) {
    const int gx = static_cast<int>(token % gw);
    const int gy = static_cast<int>((token / gw) % gh);
    const int gf = static_cast<int>((token / (static_cast<int64_t>(gw) * gh)) % ft);
    PatchSource s;
    s.b = token / (static_cast<int64_t>(gw) * gh * ft);
    s.c = p / (pt * ph * pw);
    const int dt = (p / (ph * pw)) % pt, dy = (p / pw) % ph, dx = p % pw;
    s.frame = gf * pt + dt;
    s.y0 = (gy * ph + dy) * r;
    s.x0 = (gx * pw + dx) * r;
    return s;
}

// ---- attention tiles ----------------------------------------------------------------------------------------
// Key blocks of `block_n` over `lk` keys: whole blocks run unmasked, a partial last one masked.
struct KeyBlocks {
    int full;   // blocks with every key valid
    int total;  // full + (1 if a partial last block)
};

HS_HD KeyBlocks key_blocks(int lk, int block_n) {
    KeyBlocks k;
    k.full = lk / block_n;
    k.total = (lk + block_n - 1) / block_n;
    return k;
}

// Whether key `col` of the block starting at `n0` is a real key (the masked tail block only).
HS_HD bool key_valid(int n0, int col, int lk) { return n0 + col < lk; }

// Online softmax, one row, base 2: after a block whose scaled row maximum is `block_max` (log2 units),
// the running maximum and the factor that rescales what was accumulated under the old maximum. A first
// block (m_old = -inf) gives alpha = 0 through exp2(-inf).
struct SoftmaxStep {
    float m_new;
    float alpha;
};

HS_HD SoftmaxStep softmax_step(float m_old, float block_max) {
    SoftmaxStep s;
    s.m_new = m_old > block_max ? m_old : block_max;
    s.alpha = exp2f(m_old - s.m_new);
    return s;
}

// Shared-memory tiles are rows of `chunks` 16-byte chunks (8 fp16/bf16 each). The chunk index is XOR-swizzled
// so that the 8 row addresses of one ldmatrix 8x8 matrix, which share a logical chunk, fall in 8 different
// 16-byte bank groups (a 128-byte span): rows of 8+ chunks XOR the low 3 bits with row % 8; rows of 4 chunks
// (64 bytes, two rows per 128 bytes) with (row / 2) % 4.
HS_HD int swizzle_chunk(int row, int chunk, int chunks) {
    return chunks >= 8 ? (chunk ^ (row & 7)) : (chunk ^ ((row >> 1) & (chunks - 1)));
}

// Element offset of (row, chunk) in a swizzled tile.
HS_HD int tile_offset(int row, int chunk, int chunks) { return row * chunks * 8 + swizzle_chunk(row, chunk, chunks) * 8; }

// ldmatrix.x4 takes one row address per lane: lanes 8j..8j+7 give the rows of 8x8 matrix j. These say which
// (row, chunk) each lane points at for the three operands of the attention core (m16n8k16):
// Q as the A operand (16 rows, 16 dims at chunk pair k16): matrices (rows 0-7, k lo), (8-15, k lo), (0-7, k hi), (8-15, k hi).
HS_HD int ldsm_a_row(int lane) { return lane & 15; }
HS_HD int ldsm_a_chunk(int lane, int k16) { return 2 * k16 + (lane >> 4); }
// K as the B operand of S = Q K^T, two n8 tiles of 8 keys at once: (keys 0-7, d lo), (0-7, d hi), (8-15, d lo), (8-15, d hi).
HS_HD int ldsm_k_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
HS_HD int ldsm_k_chunk(int lane, int k16) { return 2 * k16 + ((lane >> 3) & 1); }
// V as the B operand of O += P V, transposed on load, two n8 tiles of 8 dims at once:
// (keys 0-7, dims lo), (keys 8-15, dims lo), (keys 0-7, dims hi), (keys 8-15, dims hi).
HS_HD int ldsm_v_row(int lane) { return (lane & 7) + (((lane >> 3) & 1) << 3); }
HS_HD int ldsm_v_chunk(int lane, int d16) { return 2 * d16 + (lane >> 4); }

// The accumulator fragment of m16n8 (c0..c3): lane holds rows lane/4 (c0, c1) and lane/4 + 8 (c2, c3), columns
// 2 * (lane % 4) + (i & 1).
HS_HD int frag_c_row(int lane, int i) { return (lane >> 2) + ((i >> 1) << 3); }
HS_HD int frag_c_col(int lane, int i) { return ((lane & 3) << 1) + (i & 1); }

// cp.async copies a tile of `rows` x `chunks` 16-byte chunks with `threads` threads; copy `it` of thread `tid`
// moves chunk index (tid + it * threads), i.e. this row and chunk.
HS_HD int copy_row(int tid, int it, int threads, int chunks) { return (tid + it * threads) / chunks; }
HS_HD int copy_chunk(int tid, int it, int threads, int chunks) { return (tid + it * threads) % chunks; }

}  // namespace histream
