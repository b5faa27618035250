// Flash attention over a ring cache's visible prefix (contract of kernels/attention_core.py): Q arrives rotated
// by the pre-pass, K rotated (ring or scratch), V from the ring, all as [B, H, L, D] views. FA2-style for sm_80+:
// 8 warps, each owning 16 query rows of a 128-row block; K and V tiles of 64 keys stream through shared memory
// with cp.async, double-buffered; ldmatrix feeds mma.sync.m16n8k16 (fp16/bf16 in, fp32 accumulate); the online
// softmax runs in registers on the accumulator fragments, which are re-packed as the A operand of P V.
// Shared tiles are XOR-swizzled by 16-byte chunk (index_math.h), so each ldmatrix phase hits distinct banks.
// Whole key blocks run unmasked; a partial last block is masked (cp.async zero-fills rows past Lk, whose scores
// must still be excluded).
#include "common.cuh"
#include "index_math.h"

namespace histream {
namespace {

constexpr int kBlockM = 128, kBlockN = 64, kWarps = kBlockM / 16, kThreads = kWarps * 32;

template <int D> struct Tile {
    static constexpr int chunks = D / 8;  // 16-byte chunks per row
    static constexpr int smem_bytes = (kBlockM * D + 4 * kBlockN * D) * 2;  // Q, then K and V x 2 stages
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

template <typename T> __device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma16816<__half>(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as one register of two 16-bit elements, the lower column in the low half.
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Rows [row0, row0 + ROWS) of a [L, D] operand (row stride `stride`) into a swizzled tile; rows at or past
// `limit` are zero-filled.
template <typename T, int D, int ROWS>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int64_t stride, int64_t row0, int64_t limit, int tid) {
    constexpr int chunks = Tile<D>::chunks, iters = ROWS * chunks / kThreads;
    static_assert(ROWS * chunks % kThreads == 0, "tile copies must divide evenly among the threads");
    #pragma unroll
    for (int it = 0; it < iters; ++it) {
        const int row = copy_row(tid, it, kThreads, chunks), ch = copy_chunk(tid, it, kThreads, chunks);
        const int64_t g = row0 + row;
        const bool valid = g < limit;
        cp_async16(tile + tile_offset(row, ch, chunks), src + (valid ? g : 0) * stride + ch * 8, valid);
    }
}

// One key block of the online softmax for this warp's 16 query rows; MASK only for the partial last block.
template <typename T, int D, bool MASK>
__device__ __forceinline__ void attend_block(const uint32_t (&qf)[D / 16][4], const T* sk, const T* sv, int n0, int64_t lk,
                                             float scale, float (&acc)[D / 8][4], float (&m_i)[2], float (&l_i)[2], int lane) {
    constexpr int chunks = Tile<D>::chunks;
    float s[kBlockN / 8][4];
    #pragma unroll
    for (int nt = 0; nt < kBlockN / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    #pragma unroll
    for (int k16 = 0; k16 < D / 16; ++k16) {
        #pragma unroll
        for (int nn = 0; nn < kBlockN / 16; ++nn) {
            uint32_t kf[4];
            ldmatrix_x4(kf, sk + tile_offset(nn * 16 + ldsm_k_row(lane), ldsm_k_chunk(lane, k16), chunks));
            mma16816<T>(s[2 * nn], qf[k16], kf[0], kf[1]);
            mma16816<T>(s[2 * nn + 1], qf[k16], kf[2], kf[3]);
        }
    }
    if (MASK) {
        #pragma unroll
        for (int nt = 0; nt < kBlockN / 8; ++nt)
            #pragma unroll
            for (int i = 0; i < 4; ++i)
                if (!key_valid(n0, nt * 8 + frag_c_col(lane, i), static_cast<int>(lk))) s[nt][i] = -INFINITY;
    }
    float mx[2] = {-INFINITY, -INFINITY};
    #pragma unroll
    for (int nt = 0; nt < kBlockN / 8; ++nt) {
        mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
    }
    float alpha[2], rs[2] = {0.f, 0.f};
    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const SoftmaxStep st = softmax_step(m_i[r], mx[r] * scale);
        m_i[r] = st.m_new;
        alpha[r] = st.alpha;
    }
    #pragma unroll
    for (int nt = 0; nt < kBlockN / 8; ++nt)
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            s[nt][i] = fast_exp2(fmaf(s[nt][i], scale, -m_i[i >> 1]));
            rs[i >> 1] += s[nt][i];
        }
    #pragma unroll
    for (int r = 0; r < 2; ++r) l_i[r] = l_i[r] * alpha[r] + rs[r];
    #pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
        #pragma unroll
        for (int i = 0; i < 4; ++i) acc[dt][i] *= alpha[i >> 1];
    #pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
        // the accumulators of key tiles 2kk and 2kk+1 are exactly the A fragment of keys [16kk, 16kk + 16)
        const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
        #pragma unroll
        for (int d16 = 0; d16 < D / 16; ++d16) {
            uint32_t vf[4];
            ldmatrix_x4_trans(vf, sv + tile_offset(kk * 16 + ldsm_v_row(lane), ldsm_v_chunk(lane, d16), chunks));
            mma16816<T>(acc[2 * d16], pa, vf[0], vf[1]);
            mma16816<T>(acc[2 * d16 + 1], pa, vf[2], vf[3]);
        }
    }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1) attention_core_kernel(
    const T* __restrict__ q,  // [B, H, Lq, D] rotated queries (strides q_sb, q_sh, q_sl)
    const T* __restrict__ k,  // [B, H, Lk, D] rotated keys, ring slot order
    const T* __restrict__ v,  // [B, H, Lk, D] values, ring slot order
    T* __restrict__ out,  // [B, Lq, H, D] (strides o_sb, o_sl, o_sh)
    int64_t q_sb, int64_t q_sh, int64_t q_sl, int64_t k_sb, int64_t k_sh, int64_t k_sl, int64_t v_sb, int64_t v_sh, int64_t v_sl,
    int64_t o_sb, int64_t o_sl, int64_t o_sh, int h, int64_t lq, int64_t lk, float scale) {
    constexpr int chunks = Tile<D>::chunks;
    extern __shared__ __align__(128) unsigned char smem[];
    T* sq = reinterpret_cast<T*>(smem);  // [BLOCK_M, D] swizzled
    T* sk = sq + kBlockM * D;  // [2][BLOCK_N, D]
    T* sv = sk + 2 * kBlockN * D;  // [2][BLOCK_N, D]
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlockM;
    const int b = blockIdx.y / h, hh = blockIdx.y % h;
    const T* qb = q + b * q_sb + hh * q_sh;
    const T* kb = k + b * k_sb + hh * k_sh;
    const T* vb = v + b * v_sb + hh * v_sh;

    load_tile<T, D, kBlockM>(sq, qb, q_sl, m0, lq, tid);
    load_tile<T, D, kBlockN>(sk, kb, k_sl, 0, lk, tid);
    load_tile<T, D, kBlockN>(sv, vb, v_sl, 0, lk, tid);
    cp_async_commit();

    const KeyBlocks blocks = key_blocks(static_cast<int>(lk), kBlockN);
    uint32_t qf[D / 16][4];
    float acc[D / 8][4];
    #pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.f;
    float m_i[2] = {-INFINITY, -INFINITY}, l_i[2] = {0.f, 0.f};

    for (int j = 0; j < blocks.total; ++j) {
        const int cur = j & 1;
        if (j + 1 < blocks.total) {
            const int64_t next = static_cast<int64_t>(j + 1) * kBlockN;
            load_tile<T, D, kBlockN>(sk + (cur ^ 1) * kBlockN * D, kb, k_sl, next, lk, tid);
            load_tile<T, D, kBlockN>(sv + (cur ^ 1) * kBlockN * D, vb, v_sl, next, lk, tid);
        }
        cp_async_commit();  // possibly empty: keeps "all but the newest group" meaning "block j has landed"
        cp_async_wait<1>();
        __syncthreads();
        if (j == 0) {
            #pragma unroll
            for (int k16 = 0; k16 < D / 16; ++k16)
                ldmatrix_x4(qf[k16], sq + tile_offset(warp * 16 + ldsm_a_row(lane), ldsm_a_chunk(lane, k16), chunks));
        }
        const T* skc = sk + cur * kBlockN * D;
        const T* svc = sv + cur * kBlockN * D;
        if (j < blocks.full)
            attend_block<T, D, false>(qf, skc, svc, j * kBlockN, lk, scale, acc, m_i, l_i, lane);
        else
            attend_block<T, D, true>(qf, skc, svc, j * kBlockN, lk, scale, acc, m_i, l_i, lane);
        __syncthreads();  // every warp is done with this stage before the next iteration refills it
    }

    float inv[2];
    #pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = l_i[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        inv[r] = 1.f / l;
    }
    T* ob = out + b * o_sb + hh * o_sh;
    #pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
        #pragma unroll
        for (int i = 0; i < 4; i += 2) {
            const int64_t row = m0 + warp * 16 + frag_c_row(lane, i);
            if (row < lq) {
                const int col = dt * 8 + frag_c_col(lane, i);
                *reinterpret_cast<uint32_t*>(ob + row * o_sl + col) = pack2<T>(acc[dt][i] * inv[i >> 1], acc[dt][i + 1] * inv[i >> 1]);
            }
        }
}

template <typename T, int D>
void launch(int device, uintptr_t stream, uintptr_t q, int64_t q_sb, int64_t q_sh, int64_t q_sl, uintptr_t k, int64_t k_sb,
            int64_t k_sh, int64_t k_sl, uintptr_t v, int64_t v_sb, int64_t v_sh, int64_t v_sl, uintptr_t out, int64_t o_sb,
            int64_t o_sl, int64_t o_sh, int b, int h, int64_t lq, int64_t lk, float scale) {
    const int smem = Tile<D>::smem_bytes;
    dim3 grid(static_cast<unsigned>((lq + kBlockM - 1) / kBlockM), static_cast<unsigned>(b * h)), block(kThreads);
    use_device(device);
    const std::string shape = "B=" + std::to_string(b) + " H=" + std::to_string(h) + " Lq=" + std::to_string(lq) +
                              " Lk=" + std::to_string(lk) + " D=" + std::to_string(D);
    // Once per device and instantiation, so that a CUDA graph capture (after an eager chunk) makes no such call.
    static std::array<std::atomic<bool>, 64> configured{};
    if (device < 0 || device >= 64 || !configured[device].load()) {
        check_cuda(cudaFuncSetAttribute(attention_core_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                   "attention_core (asking for its shared memory)", grid, block, smem, shape);
        if (device >= 0 && device < 64) configured[device].store(true);
    }
    attention_core_kernel<T, D><<<grid, block, smem, as_stream(stream)>>>(
        reinterpret_cast<const T*>(q), reinterpret_cast<const T*>(k), reinterpret_cast<const T*>(v), reinterpret_cast<T*>(out),
        q_sb, q_sh, q_sl, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl, o_sb, o_sl, o_sh, h, lq, lk, scale);
    check_launch("attention_core", grid, block, smem, shape);
}

template <typename T>
void dispatch_head_dim(int d, int device, uintptr_t stream, uintptr_t q, int64_t q_sb, int64_t q_sh, int64_t q_sl, uintptr_t k,
                       int64_t k_sb, int64_t k_sh, int64_t k_sl, uintptr_t v, int64_t v_sb, int64_t v_sh, int64_t v_sl,
                       uintptr_t out, int64_t o_sb, int64_t o_sl, int64_t o_sh, int b, int h, int64_t lq, int64_t lk, float scale) {
    switch (d) {
        case 32: return launch<T, 32>(device, stream, q, q_sb, q_sh, q_sl, k, k_sb, k_sh, k_sl, v, v_sb, v_sh, v_sl, out, o_sb, o_sl, o_sh, b, h, lq, lk, scale);
        case 64: return launch<T, 64>(device, stream, q, q_sb, q_sh, q_sl, k, k_sb, k_sh, k_sl, v, v_sb, v_sh, v_sl, out, o_sb, o_sl, o_sh, b, h, lq, lk, scale);
        case 128: return launch<T, 128>(device, stream, q, q_sb, q_sh, q_sl, k, k_sb, k_sh, k_sl, v, v_sb, v_sh, v_sl, out, o_sb, o_sl, o_sh, b, h, lq, lk, scale);
        default: require(false, "attention_core: head_dim must be 32, 64 or 128");
    }
}

}  // namespace

int attention_smem_bytes(int d) {
    switch (d) {
        case 32: return Tile<32>::smem_bytes;
        case 64: return Tile<64>::smem_bytes;
        case 128: return Tile<128>::smem_bytes;
        default: return 0;
    }
}
int attention_threads() { return kThreads; }
int attention_block_m() { return kBlockM; }
int attention_block_n() { return kBlockN; }

void attention_core(int dtype, int device, uintptr_t stream, uintptr_t q, int64_t q_sb, int64_t q_sh, int64_t q_sl, uintptr_t k,
                    int64_t k_sb, int64_t k_sh, int64_t k_sl, uintptr_t v, int64_t v_sb, int64_t v_sh, int64_t v_sl,
                    uintptr_t out, int64_t o_sb, int64_t o_sl, int64_t o_sh, int b, int h, int64_t lq, int64_t lk, int d,
                    float qk_scale_log2) {
    require(q && k && v && out, "attention_core: null pointer");
    // Lk below INT_MAX - BLOCK_N: key_blocks rounds it up in int
    require(lq > 0 && lk > 0 && lk <= INT32_MAX - kBlockN && b > 0 && h > 0 && static_cast<int64_t>(b) * h < 65536,
            "attention_core: Lq, Lk, B and H must be positive (Lk < 2^31 - 64, B*H < 65536)");
    require(((q | k | v | out) & 15) == 0, "attention_core: q, k, v and out must be 16-byte aligned");
    switch (dtype) {
        case kFloat16: return dispatch_head_dim<__half>(d, device, stream, q, q_sb, q_sh, q_sl, k, k_sb, k_sh, k_sl, v, v_sb, v_sh, v_sl, out, o_sb, o_sl, o_sh, b, h, lq, lk, qk_scale_log2);
        case kBFloat16: return dispatch_head_dim<__nv_bfloat16>(d, device, stream, q, q_sb, q_sh, q_sl, k, k_sb, k_sh, k_sl, v, v_sb, v_sh, v_sl, out, o_sb, o_sl, o_sh, b, h, lq, lk, qk_scale_log2);
        default: require(false, "attention_core: dtype code must be 1 (fp16) or 2 (bf16)");
    }
}

}  // namespace histream
