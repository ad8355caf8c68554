// Elementwise fp16 kernels: silu_mul (the SwiGLU product of the Llama MLP) and add_inplace (the residual add).
//
// Both are pure bandwidth: every element is read once and written once. When every pointer is 16-byte aligned the
// body moves 8 halves per thread per iteration (one 128-bit load per operand), and the count % 8 tail is done one
// element at a time by the same kernel; otherwise the whole range goes through the 1-element path. Math is fp32,
// each output rounded once to fp16 (round to nearest even). Grid-stride loops keep the grid size bounded for any
// count, so one launch covers counts far beyond one wave of the GPU.
//
// PDL (common/pdl.cuh): every operand is an activation, so both kernels wait before touching memory.
#include "kernels/cuda/elementwise.h"

#include <cstdint>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "kernels/cuda/common/pdl.cuh"

namespace q4tp::kernels::cuda {

// ---------------------------------------------------------------------------------------------------------------
// Constants

namespace {

constexpr int kThreads = 256;
//! 8 halves = 16 bytes, the widest single global load.
constexpr int kVecWidth = 8;
//! Enough blocks to fill an H100 (132 SMs x 8 resident blocks of 256) several times; grid-stride loops do the rest.
constexpr std::int64_t kMaxBlocks = 4096;

// ---------------------------------------------------------------------------------------------------------------
// Device helpers

//! N consecutive halves, aligned so that N = 8 compiles to one 128-bit access.
template <int N>
struct alignas(sizeof(__half) * N) HalfVec {
    __half h[N];
};

template <int N>
__device__ __forceinline__ HalfVec<N> load_vec(const __half* p, std::int64_t vec_index) {
    return reinterpret_cast<const HalfVec<N>*>(p)[vec_index];
}

template <int N>
__device__ __forceinline__ void store_vec(__half* p, std::int64_t vec_index, const HalfVec<N>& v) {
    reinterpret_cast<HalfVec<N>*>(p)[vec_index] = v;
}

//! silu(g) * u in fp32, in the quotient form kernels/cpu uses too: for very negative g, expf(-g) overflows to +inf
//! and g / inf = -0, so the result stays finite for every finite g. expf, not __expf: the intrinsic's error grows
//! to several ulps for |g| beyond a few units, which is the range gate activations do reach.
__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// ---------------------------------------------------------------------------------------------------------------
// Kernels

//! Processes count / N vectors of N halves, then (N > 1) the remaining count % N elements one by one.
template <int N>
__global__ void silu_mul_kernel(const __half* gate, const __half* up, std::int64_t count, __half* out) {
    pdl_wait();
    pdl_launch_dependents();
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const std::int64_t vec_count = count / N;
    for (std::int64_t v = first; v < vec_count; v += stride) {
        const HalfVec<N> g = load_vec<N>(gate, v);
        const HalfVec<N> u = load_vec<N>(up, v);
        HalfVec<N> o;
#pragma unroll
        for (int j = 0; j < N; ++j) o.h[j] = __float2half_rn(silu_times(__half2float(g.h[j]), __half2float(u.h[j])));
        store_vec<N>(out, v, o);
    }
    for (std::int64_t i = vec_count * N + first; i < count; i += stride) {
        out[i] = __float2half_rn(silu_times(__half2float(gate[i]), __half2float(up[i])));
    }
}

template <int N>
__global__ void add_inplace_kernel(__half* x, const __half* y, std::int64_t count) {
    pdl_wait();
    pdl_launch_dependents();
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const std::int64_t vec_count = count / N;
    for (std::int64_t v = first; v < vec_count; v += stride) {
        HalfVec<N> a = load_vec<N>(x, v);
        const HalfVec<N> b = load_vec<N>(y, v);
#pragma unroll
        for (int j = 0; j < N; ++j) a.h[j] = __float2half_rn(__half2float(a.h[j]) + __half2float(b.h[j]));
        store_vec<N>(x, v, a);
    }
    for (std::int64_t i = vec_count * N + first; i < count; i += stride) {
        x[i] = __float2half_rn(__half2float(x[i]) + __half2float(y[i]));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Launch configuration

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

//! Blocks for `work` grid-stride items of kThreads threads each, at least 1 and at most kMaxBlocks.
unsigned int grid_for(std::int64_t work) {
    const std::int64_t blocks = (work + kThreads - 1) / kThreads;
    return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launchers

void silu_mul(const __half* gate, const __half* up, std::int64_t count, __half* out, cudaStream_t stream) {
    Q4TP_CHECK(count > 0, "silu_mul: count = " << count << ", expected > 0");
    Q4TP_CHECK(gate && up && out, "silu_mul: null gate, up or out pointer");
    if (aligned16(gate) && aligned16(up) && aligned16(out)) {
        launch_kernel(silu_mul_kernel<kVecWidth>, grid_for(count / kVecWidth), kThreads, 0, stream, gate, up, count,
                      out);
    } else {
        launch_kernel(silu_mul_kernel<1>, grid_for(count), kThreads, 0, stream, gate, up, count, out);
    }
}

void add_inplace(__half* x, const __half* y, std::int64_t count, cudaStream_t stream) {
    Q4TP_CHECK(count > 0, "add_inplace: count = " << count << ", expected > 0");
    Q4TP_CHECK(x && y, "add_inplace: null x or y pointer");
    if (aligned16(x) && aligned16(y)) {
        launch_kernel(add_inplace_kernel<kVecWidth>, grid_for(count / kVecWidth), kThreads, 0, stream, x, y, count);
    } else {
        launch_kernel(add_inplace_kernel<1>, grid_for(count), kThreads, 0, stream, x, y, count);
    }
}

}  // namespace q4tp::kernels::cuda
