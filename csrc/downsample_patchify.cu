// The fused area downsample + patchify of the final latent (contract of kernels/downsample_recache.py::
// downsample_patchify): each output element averages its r x r latent pixels, written straight into the
// low-res patch layout the patch embedding's matmul reads. One thread per output element.
#include "common.cuh"
#include "index_math.h"

namespace histream {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) downsample_patchify_kernel(
    const T* __restrict__ x,  // [B, C, F, H, W] high-res latents
    T* __restrict__ out,  // [N, P] low-res patch vectors, N = B * F/pt * h * w, P = C * pt * ph * pw
    int64_t sb, int64_t sc, int64_t sf, int64_t sh, int64_t sw, int64_t n,
    int p_len, int ft, int gh, int gw, int pt, int ph, int pw, int r) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
    if (i >= n * p_len) return;
    const int64_t token = i / p_len;
    const int p = static_cast<int>(i % p_len);
    const PatchSource src = patch_source(token, p, ft, gh, gw, pt, ph, pw, r);
    const T* base = x + src.b * sb + src.c * sc + src.frame * sf;
    float acc = 0.f;
    for (int u = 0; u < r; ++u)
        for (int v = 0; v < r; ++v) acc += to_float(base[(src.y0 + u) * sh + (src.x0 + v) * sw]);
    out[i] = from_float<T>(acc / (r * r));
}

template <typename T>
void launch(int device, uintptr_t stream, uintptr_t x, const int64_t* st, uintptr_t out, int b, int c, int ft, int gh, int gw,
            int pt, int ph, int pw, int r) {
    const int64_t n = static_cast<int64_t>(b) * ft * gh * gw;
    const int p_len = c * pt * ph * pw;
    dim3 grid(static_cast<unsigned>((n * p_len + kThreads - 1) / kThreads)), block(kThreads);
    use_device(device);
    downsample_patchify_kernel<T><<<grid, block, 0, as_stream(stream)>>>(
        reinterpret_cast<const T*>(x), reinterpret_cast<T*>(out), st[0], st[1], st[2], st[3], st[4], n, p_len, ft, gh, gw, pt, ph, pw, r);
    check_launch("downsample_patchify", grid, block, 0, "N=" + std::to_string(n) + " P=" + std::to_string(p_len) + " r=" + std::to_string(r));
}

}  // namespace

void downsample_patchify(int dtype, int device, uintptr_t stream, uintptr_t x, const int64_t* x_strides, uintptr_t out, int b,
                         int c, int ft, int gh, int gw, int pt, int ph, int pw, int r) {
    require(x && out, "downsample_patchify: null pointer");
    require(b > 0 && c > 0 && ft > 0 && gh > 0 && gw > 0 && pt > 0 && ph > 0 && pw > 0 && r > 0, "downsample_patchify: sizes must be positive");
    switch (dtype) {
        case kFloat32: return launch<float>(device, stream, x, x_strides, out, b, c, ft, gh, gw, pt, ph, pw, r);
        case kFloat16: return launch<__half>(device, stream, x, x_strides, out, b, c, ft, gh, gw, pt, ph, pw, r);
        case kBFloat16: return launch<__nv_bfloat16>(device, stream, x, x_strides, out, b, c, ft, gh, gw, pt, ph, pw, r);
        default: require(false, "downsample_patchify: dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16)");
    }
}

}  // namespace histream
