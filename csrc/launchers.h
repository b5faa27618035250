// The launch entry points of histream_engine._C: raw device pointers (as integers), sizes and strides in elements,
// a dtype code and the caller's cudaStream_t (torch's current stream handle). The Python launchers in
// histream_engine/native/ops.py check every input first; these re-check the cheap invariants and throw
// std::invalid_argument / std::runtime_error (ValueError / RuntimeError in Python) naming the kernel.
#pragma once

#include <cstdint>

namespace histream {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Q [B, Lq, H, D] (strides q_sb, q_sl, q_sh; last dim contiguous) -> q_out [B, H, Lq, D] rotated; where
// k_store != 0 also the visible keys: ring rows [0, lk) of k_store [B, R, H, D] -> k_out [B, H, R, D].
// q_pos [Lq / S] and slot_pos [lk / S] int32 temporal positions; cos, sin [npos, D/2] float32.
void rope_prepass(int dtype, int device, uintptr_t stream,
                  uintptr_t q, int64_t q_sb, int64_t q_sl, int64_t q_sh, int64_t lq, uintptr_t q_pos, uintptr_t q_out,
                  uintptr_t k_store, int64_t k_sb, int64_t k_sl, int64_t k_sh, int64_t lk, int64_t r, uintptr_t slot_pos,
                  uintptr_t k_out, uintptr_t cos, uintptr_t sin, int b, int h, int d, int s, int gw, int pt, int ph);

// K/V projections [B, L, H*D] (batch and row strides) -> K RMSNorm (when norm_weight != 0; weight [H*D] in the
// same dtype) -> RoPE (when cos != 0; pos [L / S] int32) -> rows[l] (int64) of k_store / v_store [B, R, H, D].
void recache_write(int dtype, int device, uintptr_t stream,
                   uintptr_t k_proj, int64_t kp_sb, int64_t kp_sl, uintptr_t v_proj, int64_t vp_sb, int64_t vp_sl,
                   uintptr_t norm_weight, float eps, uintptr_t rows,
                   uintptr_t k_store, int64_t ks_sb, int64_t ks_sl, int64_t ks_sh,
                   uintptr_t v_store, int64_t vs_sb, int64_t vs_sl, int64_t vs_sh,
                   uintptr_t pos, uintptr_t cos, uintptr_t sin,
                   int b, int64_t l, int h, int d, int s, int gw, int pt, int ph);

// Latents [B, C, F, H, W] (any strides) -> out [N, P] contiguous: area-downsampled by r, patchified (pt, ph, pw).
void downsample_patchify(int dtype, int device, uintptr_t stream, uintptr_t x, const int64_t* x_strides,
                         uintptr_t out, int b, int c, int ft, int gh, int gw, int pt, int ph, int pw, int r);

// Flash attention (fp16/bf16, fp32 accumulate, mma.sync) of q [B, H, Lq, D] over k, v [B, H, Lk, D] (strides per
// b, h, l; last dim contiguous) -> out [B, Lq, H, D] (strides per b, l, h).
void attention_core(int dtype, int device, uintptr_t stream,
                    uintptr_t q, int64_t q_sb, int64_t q_sh, int64_t q_sl,
                    uintptr_t k, int64_t k_sb, int64_t k_sh, int64_t k_sl,
                    uintptr_t v, int64_t v_sb, int64_t v_sh, int64_t v_sl,
                    uintptr_t out, int64_t o_sb, int64_t o_sl, int64_t o_sh,
                    int b, int h, int64_t lq, int64_t lk, int d, float qk_scale_log2);

// Dynamic shared memory the attention core asks for at head dim d (0 if d is unsupported): for the resource tests.
int attention_smem_bytes(int d);
// Threads per block and query rows per block of the attention core.
int attention_threads();
int attention_block_m();
int attention_block_n();

}  // namespace histream
