// The RoPE pre-pass (contract of kernels/rope_prepass.py): a chunk's queries, and where K is cached un-rotated its
// visible keys, rotated once per call into head-major scratch. Memory-bound: each thread turns 4 interleaved
// pairs (8 elements, one or two 16-byte loads).
#include "common.cuh"
#include "index_math.h"

namespace histream {
namespace {

constexpr int kThreads = 256;
constexpr int kElems = 8;  // elements (4 pairs) per thread

template <typename T>
__device__ void rotate_rows(const T* __restrict__ x,  // [B, rows, H, D] (strides sb, sl, sh)
                            T* __restrict__ out,  // [B, H, out_rows, D] contiguous
                            const int32_t* __restrict__ pos,  // [rows / S] temporal position per frame
                            const float* __restrict__ cos_t,  // [NPOS, D/2]
                            const float* __restrict__ sin_t,  // [NPOS, D/2]
                            int64_t i, int b, int hh, int h, int64_t rows, int64_t out_rows,
                            int64_t sb, int64_t sl, int64_t sh, int d, int s, int gw, int pt, int ph) {
    const int groups = d / kElems;
    const int64_t row = i / groups;
    if (row >= rows) return;
    const int e0 = static_cast<int>(i % groups) * kElems;
    float v[kElems], y[kElems];
    load8(x + b * sb + row * sl + hh * sh + e0, v);
    const int half = d / 2;
    #pragma unroll
    for (int j = 0; j < kElems / 2; ++j) {
        const int pair = e0 / 2 + j;
        const int p = rope_table_row(pos, row, s, pair, gw, pt, ph);
        rope_turn(v[2 * j], v[2 * j + 1], cos_t[p * half + pair], sin_t[p * half + pair], &y[2 * j], &y[2 * j + 1]);
    }
    store8(out + ((static_cast<int64_t>(b) * h + hh) * out_rows + row) * d + e0, y);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) rope_prepass_kernel(
    const T* __restrict__ q,  // [B, Lq, H, D] un-rotated
    const int32_t* __restrict__ q_pos,  // [Lq / S]
    T* __restrict__ q_out,  // [B, H, Lq, D]
    const T* __restrict__ k_store,  // [B, R, H, D] ring K, un-rotated (unused when lk == 0)
    const int32_t* __restrict__ slot_pos,  // [lk / S]
    T* __restrict__ k_out,  // [B, H, R, D], rows [0, lk) written
    const float* __restrict__ cos_t, const float* __restrict__ sin_t,  // [NPOS, D/2]
    int64_t q_sb, int64_t q_sl, int64_t q_sh, int64_t lq, int64_t q_blocks,
    int64_t k_sb, int64_t k_sl, int64_t k_sh, int64_t lk, int64_t r,
    int h, int d, int s, int gw, int pt, int ph) {
    const int b = blockIdx.y / h, hh = blockIdx.y % h;
    const int64_t blk = blockIdx.x;
    if (blk < q_blocks) {
        rotate_rows(q, q_out, q_pos, cos_t, sin_t, blk * kThreads + threadIdx.x, b, hh, h, lq, lq, q_sb, q_sl, q_sh, d, s, gw, pt, ph);
    } else {
        rotate_rows(k_store, k_out, slot_pos, cos_t, sin_t, (blk - q_blocks) * kThreads + threadIdx.x, b, hh, h, lk, r,
                    k_sb, k_sl, k_sh, d, s, gw, pt, ph);
    }
}

template <typename T>
void launch(int device, uintptr_t stream, uintptr_t q, int64_t q_sb, int64_t q_sl, int64_t q_sh, int64_t lq, uintptr_t q_pos,
            uintptr_t q_out, uintptr_t k_store, int64_t k_sb, int64_t k_sl, int64_t k_sh, int64_t lk, int64_t r,
            uintptr_t slot_pos, uintptr_t k_out, uintptr_t cos, uintptr_t sin, int b, int h, int d, int s, int gw, int pt, int ph) {
    const int groups = d / kElems;
    const int64_t q_blocks = (lq * groups + kThreads - 1) / kThreads;
    const int64_t k_blocks = (lk * groups + kThreads - 1) / kThreads;
    dim3 grid(static_cast<unsigned>(q_blocks + k_blocks), static_cast<unsigned>(b * h)), block(kThreads);
    use_device(device);
    rope_prepass_kernel<T><<<grid, block, 0, as_stream(stream)>>>(
        reinterpret_cast<const T*>(q), reinterpret_cast<const int32_t*>(q_pos), reinterpret_cast<T*>(q_out),
        reinterpret_cast<const T*>(k_store), reinterpret_cast<const int32_t*>(slot_pos), reinterpret_cast<T*>(k_out),
        reinterpret_cast<const float*>(cos), reinterpret_cast<const float*>(sin),
        q_sb, q_sl, q_sh, lq, q_blocks, k_sb, k_sl, k_sh, lk, r, h, d, s, gw, pt, ph);
    check_launch("rope_prepass", grid, block, 0,
                 "B=" + std::to_string(b) + " H=" + std::to_string(h) + " Lq=" + std::to_string(lq) + " Lk=" + std::to_string(lk) +
                     " D=" + std::to_string(d));
}

}  // namespace

void rope_prepass(int dtype, int device, uintptr_t stream, uintptr_t q, int64_t q_sb, int64_t q_sl, int64_t q_sh, int64_t lq,
                  uintptr_t q_pos, uintptr_t q_out, uintptr_t k_store, int64_t k_sb, int64_t k_sl, int64_t k_sh, int64_t lk,
                  int64_t r, uintptr_t slot_pos, uintptr_t k_out, uintptr_t cos, uintptr_t sin, int b, int h, int d, int s,
                  int gw, int pt, int ph) {
    require(q && q_pos && q_out && cos && sin, "rope_prepass: null pointer");
    require(((q | q_out | k_store | k_out) & 15) == 0, "rope_prepass: q, q_out, k_store and k_out must be 16-byte aligned");
    require(d % 16 == 0 && d >= 16 && d <= 256, "rope_prepass: head_dim must be a multiple of 16 in [16, 256]");
    require(s > 0 && gw > 0 && lq % s == 0 && lk % s == 0 && lk <= r, "rope_prepass: token counts do not fit the frame size");
    require(lk == 0 || (k_store && slot_pos && k_out), "rope_prepass: visible keys need k_store, slot_pos and k_out");
    require(pt + ph <= d / 2 && b > 0 && h > 0 && static_cast<int64_t>(b) * h < 65536, "rope_prepass: bad axis split or B*H");
    switch (dtype) {
        case kFloat32: return launch<float>(device, stream, q, q_sb, q_sl, q_sh, lq, q_pos, q_out, k_store, k_sb, k_sl, k_sh, lk, r, slot_pos, k_out, cos, sin, b, h, d, s, gw, pt, ph);
        case kFloat16: return launch<__half>(device, stream, q, q_sb, q_sl, q_sh, lq, q_pos, q_out, k_store, k_sb, k_sl, k_sh, lk, r, slot_pos, k_out, cos, sin, b, h, d, s, gw, pt, ph);
        case kBFloat16: return launch<__nv_bfloat16>(device, stream, q, q_sb, q_sl, q_sh, lq, q_pos, q_out, k_store, k_sb, k_sl, k_sh, lk, r, slot_pos, k_out, cos, sin, b, h, d, s, gw, pt, ph);
        default: require(false, "rope_prepass: dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16)");
    }
}

}  // namespace histream
