// RMSNorm over fp16 rows, plain (rms_norm) and fused with the residual add (add_rms_norm).
//
// Semantics (docs/formats.md R4.2, HF LlamaRMSNorm with fp16 activations): the sum of squares, the mean and the
// rsqrt are fp32; the normalized value x * rsqrt(mean + eps) is rounded to fp16 FIRST and only then multiplied by the
// fp16 weight, the product rounded once more. The block size, the reduction and the rounding are common/row_norm.cuh,
// which fused_all_reduce.cu uses too (its fused norm is bitwise equal to this one).
//
// Algorithm: one block per row. Pass 1 reads the row (for add_rms_norm: adds delta, rounds to fp16, stores the new
// residual) and accumulates the fp32 sum of squares of the fp16 values as stored; a warp-shuffle reduction and one
// shared-memory step give the row total. Pass 2 re-reads the row (from L1/L2: a row is at most a few tens of KB)
// and writes the output. Each thread touches the same elements in both passes, which is why out may alias the input
// of pass 2 element for element. With hidden % 8 == 0 and 16-byte aligned pointers each access moves 8 halves
// (128 bits); any other hidden takes the 1-element path. Two passes instead of registers means no upper bound on
// hidden and no per-hidden template instances; the reduction order is fixed, so results are bitwise deterministic.
//
// PDL (common/pdl.cuh): each thread loads its first gain vector, which no kernel writes, before pdl_wait(); the rows
// (x, residual, delta) are read and every output written after it.
#include "kernels/cuda/rms_norm.h"

#include <cmath>
#include <cstdint>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "kernels/cuda/common/pdl.cuh"
#include "kernels/cuda/common/row_norm.cuh"

namespace q4tp::kernels::cuda {

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Constants

constexpr int kVecWidth = 8;

// ---------------------------------------------------------------------------------------------------------------
// Device helpers

//! N consecutive halves, aligned so that N = 8 compiles to one 128-bit access.
template <int N>
struct alignas(sizeof(__half) * N) HalfVec {
    __half h[N];
};

// ---------------------------------------------------------------------------------------------------------------
// Kernels

//! What one row of either op needs. kAdd: residual is read, updated and normalized, delta added; otherwise x is.
struct NormArgs {
    const __half* x;       // [m][hidden], !kAdd
    __half* residual;      // [m][hidden], kAdd
    const __half* delta;   // [m][hidden], kAdd
    const __half* weight;  // [hidden]
    std::int64_t hidden;
    float eps;
    __half* out;           // [m][hidden]
};

template <int N, bool kAdd>
__global__ void rms_norm_kernel(NormArgs a) {
    const std::int64_t row_offset = static_cast<std::int64_t>(blockIdx.x) * a.hidden;
    const __half* src = (kAdd ? a.residual : a.x) + row_offset;
    const auto* src_vec = reinterpret_cast<const HalfVec<N>*>(src);
    const std::int64_t vec_count = a.hidden / N;
    const auto* weight_vec = reinterpret_cast<const HalfVec<N>*>(a.weight);
    // The gain is a weight: its first vector streams in while the previous kernel drains.
    HalfVec<N> first_weight{};
    if (threadIdx.x < vec_count) first_weight = weight_vec[threadIdx.x];
    pdl_wait();
    pdl_launch_dependents();

    float sum_sq = 0.0f;
    for (std::int64_t v = threadIdx.x; v < vec_count; v += blockDim.x) {
        HalfVec<N> r = src_vec[v];
        if constexpr (kAdd) {
            const HalfVec<N> d = reinterpret_cast<const HalfVec<N>*>(a.delta + row_offset)[v];
#pragma unroll
            for (int j = 0; j < N; ++j) r.h[j] = __float2half_rn(__half2float(r.h[j]) + __half2float(d.h[j]));
            reinterpret_cast<HalfVec<N>*>(a.residual + row_offset)[v] = r;
        }
#pragma unroll
        for (int j = 0; j < N; ++j) accumulate_square(sum_sq, r.h[j]);
    }
    const float inv_rms = row_inv_rms(sum_sq, static_cast<float>(a.hidden), a.eps);

    auto* out_vec = reinterpret_cast<HalfVec<N>*>(a.out + row_offset);
    for (std::int64_t v = threadIdx.x; v < vec_count; v += blockDim.x) {
        const HalfVec<N> r = src_vec[v];
        const HalfVec<N> w = v == threadIdx.x ? first_weight : weight_vec[v];
        HalfVec<N> o;
#pragma unroll
        for (int j = 0; j < N; ++j) o.h[j] = rms_scale(__half2float(r.h[j]), __half2float(w.h[j]), inv_rms);
        out_vec[v] = o;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Launch configuration

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

void check_shape(const char* op, std::int64_t m, std::int64_t hidden, float eps) {
    Q4TP_CHECK(m > 0 && m <= INT32_MAX, op << ": m = " << m << ", expected in [1, " << INT32_MAX << "]");
    // hidden must convert to float exactly for the mean; real models are far below 2^24.
    Q4TP_CHECK(hidden > 0 && hidden <= (std::int64_t{1} << 24),
               op << ": hidden = " << hidden << ", expected in [1, " << (std::int64_t{1} << 24) << "]");
    Q4TP_CHECK(std::isfinite(eps) && eps >= 0.0f, op << ": eps = " << eps << ", expected a finite value >= 0");
}

template <bool kAdd>
void launch(const NormArgs& a, const void* row_base, std::int64_t m, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned int>(m));
    const bool vec = a.hidden % kVecWidth == 0 && aligned16(row_base) && aligned16(a.weight) && aligned16(a.out) &&
                     (!kAdd || aligned16(a.delta));
    if (vec) {
        launch_kernel(rms_norm_kernel<kVecWidth, kAdd>, grid, row_norm_threads(a.hidden / kVecWidth), 0, stream, a);
    } else {
        launch_kernel(rms_norm_kernel<1, kAdd>, grid, row_norm_threads(a.hidden), 0, stream, a);
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launchers

void rms_norm(const __half* x,
              const __half* weight,
              std::int64_t m,
              std::int64_t hidden,
              float eps,
              __half* out,
              cudaStream_t stream) {
    check_shape("rms_norm", m, hidden, eps);
    Q4TP_CHECK(x && weight && out, "rms_norm: null x, weight or out pointer");
    launch<false>(NormArgs{x, nullptr, nullptr, weight, hidden, eps, out}, x, m, stream);
}

void add_rms_norm(__half* residual,
                  const __half* delta,
                  const __half* weight,
                  std::int64_t m,
                  std::int64_t hidden,
                  float eps,
                  __half* out,
                  cudaStream_t stream) {
    check_shape("add_rms_norm", m, hidden, eps);
    Q4TP_CHECK(residual && delta && weight && out, "add_rms_norm: null residual, delta, weight or out pointer");
    Q4TP_CHECK(out != residual, "add_rms_norm: out aliases residual, expected a separate buffer (the sum is kept)");
    launch<true>(NormArgs{nullptr, residual, delta, weight, hidden, eps, out}, residual, m, stream);
}

}  // namespace q4tp::kernels::cuda
