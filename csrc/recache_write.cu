// The recache write (contract of kernels/downsample_recache.py::recache_write): a chunk's K projection through
// K RMSNorm (over all heads, as Wan) and, where the cache keeps K rotated, RoPE, into its ring rows; V into its
// rows. One block per token: the norm is a block reduction over the H*D channels, then each thread writes
// groups of 8 channels (4 rotation pairs of one head).
#include "common.cuh"
#include "index_math.h"

namespace histream {
namespace {

constexpr int kThreads = 128;

__device__ float block_sum(float x, float* scratch) {
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float total = 0.f;
    #pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) total += scratch[w];
    return total;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) recache_write_kernel(
    const T* __restrict__ k_proj,  // [B, L, H*D] before RMSNorm
    const T* __restrict__ v_proj,  // [B, L, H*D]
    const T* __restrict__ weight,  // [H*D] RMSNorm weight, or null: no norm
    const int64_t* __restrict__ rows,  // [L] destination ring row of each token
    T* __restrict__ k_store,  // [B, R, H, D]
    T* __restrict__ v_store,  // [B, R, H, D]
    const int32_t* __restrict__ pos,  // [L / S] temporal position per frame (rotate only)
    const float* __restrict__ cos_t, const float* __restrict__ sin_t,  // [NPOS, D/2], or null: store un-rotated
    int64_t kp_sb, int64_t kp_sl, int64_t vp_sb, int64_t vp_sl,
    int64_t ks_sb, int64_t ks_sl, int64_t ks_sh, int64_t vs_sb, int64_t vs_sl, int64_t vs_sh,
    float eps, int h, int d, int s, int gw, int pt, int ph) {
    __shared__ float scratch[kThreads / 32];
    const int64_t tok = blockIdx.x;
    const int b = blockIdx.y;
    const int c = h * d, groups = c / 8;
    const T* kin = k_proj + b * kp_sb + tok * kp_sl;
    const T* vin = v_proj + b * vp_sb + tok * vp_sl;
    const int64_t row = rows[tok];
    float rstd = 1.f;
    if (weight != nullptr) {
        float sq = 0.f, x[8];
        for (int g = threadIdx.x; g < groups; g += kThreads) {
            load8(kin + g * 8, x);
            #pragma unroll
            for (int i = 0; i < 8; ++i) sq += x[i] * x[i];
        }
        rstd = rsqrtf(block_sum(sq, scratch) / c + eps);
    }
    for (int g = threadIdx.x; g < groups; g += kThreads) {
        const int hh = g * 8 / d, e0 = g * 8 % d;
        float x[8], w[8];
        load8(kin + g * 8, x);
        if (weight != nullptr) {
            load8(weight + g * 8, w);
            // rounded as the torch path rounds: the normalised value to the storage dtype, then times the weight
            #pragma unroll
            for (int i = 0; i < 8; ++i) x[i] = to_float(from_float<T>(to_float(from_float<T>(x[i] * rstd)) * w[i]));
        }
        if (cos_t != nullptr) {
            #pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int pair = e0 / 2 + j;
                const int p = rope_table_row(pos, tok, s, pair, gw, pt, ph);
                rope_turn(x[2 * j], x[2 * j + 1], cos_t[p * (d / 2) + pair], sin_t[p * (d / 2) + pair], &x[2 * j], &x[2 * j + 1]);
            }
        }
        store8(k_store + b * ks_sb + row * ks_sl + hh * ks_sh + e0, x);
        load8(vin + g * 8, x);
        store8(v_store + b * vs_sb + row * vs_sl + hh * vs_sh + e0, x);
    }
}

template <typename T>
void launch(int device, uintptr_t stream, uintptr_t k_proj, int64_t kp_sb, int64_t kp_sl, uintptr_t v_proj, int64_t vp_sb,
            int64_t vp_sl, uintptr_t norm_weight, float eps, uintptr_t rows, uintptr_t k_store, int64_t ks_sb, int64_t ks_sl,
            int64_t ks_sh, uintptr_t v_store, int64_t vs_sb, int64_t vs_sl, int64_t vs_sh, uintptr_t pos, uintptr_t cos,
            uintptr_t sin, int b, int64_t l, int h, int d, int s, int gw, int pt, int ph) {
    dim3 grid(static_cast<unsigned>(l), static_cast<unsigned>(b)), block(kThreads);
    use_device(device);
    recache_write_kernel<T><<<grid, block, 0, as_stream(stream)>>>(
        reinterpret_cast<const T*>(k_proj), reinterpret_cast<const T*>(v_proj), reinterpret_cast<const T*>(norm_weight),
        reinterpret_cast<const int64_t*>(rows), reinterpret_cast<T*>(k_store), reinterpret_cast<T*>(v_store),
        reinterpret_cast<const int32_t*>(pos), reinterpret_cast<const float*>(cos), reinterpret_cast<const float*>(sin),
        kp_sb, kp_sl, vp_sb, vp_sl, ks_sb, ks_sl, ks_sh, vs_sb, vs_sl, vs_sh, eps, h, d, s, gw, pt, ph);
    check_launch("recache_write", grid, block, 0,
                 "B=" + std::to_string(b) + " L=" + std::to_string(l) + " H=" + std::to_string(h) + " D=" + std::to_string(d));
}

}  // namespace

void recache_write(int dtype, int device, uintptr_t stream, uintptr_t k_proj, int64_t kp_sb, int64_t kp_sl, uintptr_t v_proj,
                   int64_t vp_sb, int64_t vp_sl, uintptr_t norm_weight, float eps, uintptr_t rows, uintptr_t k_store,
                   int64_t ks_sb, int64_t ks_sl, int64_t ks_sh, uintptr_t v_store, int64_t vs_sb, int64_t vs_sl, int64_t vs_sh,
                   uintptr_t pos, uintptr_t cos, uintptr_t sin, int b, int64_t l, int h, int d, int s, int gw, int pt, int ph) {
    require(k_proj && v_proj && rows && k_store && v_store, "recache_write: null pointer");
    require(((k_proj | v_proj | k_store | v_store | norm_weight) & 15) == 0, "recache_write: tensors must be 16-byte aligned");
    require(d % 8 == 0 && d >= 8, "recache_write: head_dim must be a multiple of 8");
    require(l > 0 && l < (int64_t(1) << 31) && b > 0 && b < 65536, "recache_write: token or batch count out of range");
    require(cos == 0 || (sin && pos && s > 0 && gw > 0 && l % s == 0 && pt + ph <= d / 2), "recache_write: bad RoPE arguments");
    switch (dtype) {
        case kFloat32: return launch<float>(device, stream, k_proj, kp_sb, kp_sl, v_proj, vp_sb, vp_sl, norm_weight, eps, rows, k_store, ks_sb, ks_sl, ks_sh, v_store, vs_sb, vs_sl, vs_sh, pos, cos, sin, b, l, h, d, s, gw, pt, ph);
        case kFloat16: return launch<__half>(device, stream, k_proj, kp_sb, kp_sl, v_proj, vp_sb, vp_sl, norm_weight, eps, rows, k_store, ks_sb, ks_sl, ks_sh, v_store, vs_sb, vs_sl, vs_sh, pos, cos, sin, b, l, h, d, s, gw, pt, ph);
        case kBFloat16: return launch<__nv_bfloat16>(device, stream, k_proj, kp_sb, kp_sl, v_proj, vp_sb, vp_sl, norm_weight, eps, rows, k_store, ks_sb, ks_sl, ks_sh, v_store, vs_sb, vs_sl, vs_sh, pos, cos, sin, b, l, h, d, s, gw, pt, ph);
        default: require(false, "recache_write: dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16)");
    }
}

}  // namespace histream
