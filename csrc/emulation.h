// Host emulation of the attention core's block algorithm (attention_core.cu), for the tests: without a GPU the
// hardware instructions cannot run, so ldmatrix and mma.sync are emulated from the PTX ISA's statement of their
// fragment layouts (32 lanes simulated), while every address, swizzle, fragment index, mask and softmax step
// comes from index_math.h, the code the kernel runs. A wrong lane mapping there gives a wrong answer here.
#pragma once

#include <cstdint>

namespace histream {

// q [B, H, Lq, D], k and v [B, H, Lk, D] contiguous float (values already representable in `dtype`);
// out [B, Lq, H, D] contiguous. P is rounded to `dtype` before P V, as the kernel packs it.
void emulate_attention_core(const float* q, const float* k, const float* v, float* out, int b, int h, int lq, int lk, int d,
                            int dtype, float qk_scale_log2);

}  // namespace histream
