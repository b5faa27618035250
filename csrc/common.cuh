// What every kernel file shares: dtype codes, element conversions, 16-byte vector loads, and the launch check
// that turns a CUDA error into a C++ exception naming the kernel and its launch shape (pybind11 raises it as
// RuntimeError).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

#include "launchers.h"

namespace histream {

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Eight consecutive elements through 16-byte loads and stores (the launchers check 16-byte alignment).
template <typename T> __device__ __forceinline__ void load8(const T* p, float* out) {
    constexpr int per = 16 / sizeof(T);
    #pragma unroll
    for (int v = 0; v < 8 / per; ++v) {
        uint4 raw = reinterpret_cast<const uint4*>(p)[v];
        const T* e = reinterpret_cast<const T*>(&raw);
        #pragma unroll
        for (int i = 0; i < per; ++i) out[v * per + i] = to_float(e[i]);
    }
}

template <typename T> __device__ __forceinline__ void store8(T* p, const float* in) {
    constexpr int per = 16 / sizeof(T);
    #pragma unroll
    for (int v = 0; v < 8 / per; ++v) {
        uint4 raw;
        T* e = reinterpret_cast<T*>(&raw);
        #pragma unroll
        for (int i = 0; i < per; ++i) e[i] = from_float<T>(in[v * per + i]);
        reinterpret_cast<uint4*>(p)[v] = raw;
    }
}

inline std::string dims(dim3 d) {
    std::ostringstream s;
    s << "(" << d.x << ", " << d.y << ", " << d.z << ")";
    return s.str();
}

// Throws for a failed CUDA call made for `kernel`, with its launch shape.
inline void check_cuda(cudaError_t err, const char* kernel, dim3 grid, dim3 block, size_t smem, const std::string& shape) {
    if (err != cudaSuccess) {
        cudaGetLastError();  // clear it, so that the next launch in this process is not blamed for it
        std::ostringstream s;
        s << "histream_engine._C: " << kernel << " failed to launch (grid " << dims(grid) << ", block " << dims(block)
          << ", " << smem << " B shared, " << shape << "): " << cudaGetErrorName(err) << ": " << cudaGetErrorString(err);
        throw std::runtime_error(s.str());
    }
}

// Checks the launch just made (configuration errors surface here; faults inside the kernel at the next sync).
inline void check_launch(const char* kernel, dim3 grid, dim3 block, size_t smem, const std::string& shape) {
    check_cuda(cudaGetLastError(), kernel, grid, block, smem, shape);
}

// Makes `device` current for this thread's runtime before a launch: torch and this module may each carry
// their own CUDA runtime, and only the driver's context is shared.
inline void use_device(int device) {
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current == device) return;
    cudaError_t err = cudaSetDevice(device);
    if (err != cudaSuccess) {
        throw std::runtime_error(std::string("histream_engine._C: cannot use CUDA device ") + std::to_string(device) + ": " +
                                 cudaGetErrorString(err));
    }
}

inline cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

inline void require(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("histream_engine._C: " + what);
}

}  // namespace histream
