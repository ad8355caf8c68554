//! The row RMSNorm steps that rms_norm.cu and fused_all_reduce.cu share: the block size, the fp32 sum of squares and
//! its reduction, and the fp16 rounding of the output (docs/formats.md R4.2).
//
// The fused all-reduce + add + norm is bitwise equal to add_inplace + rms_norm only while both sum the squares in the
// same order: the same threads per row (row_norm_threads), each thread adding its elements in row order (vector v =
// threadIdx.x + i * blockDim.x, halves in memory order) through accumulate_square, then the same warp and block
// reduction (row_inv_rms). Both kernels therefore use this one copy; a change here changes both alike.
//
// Output rounding (HF LlamaRMSNorm with fp16 activations): x * rsqrt(mean + eps) is rounded to fp16 first (HF casts
// hidden_states back to the input dtype), then multiplied by the fp16 gain and rounded once more. The product of two
// fp16 numbers is exact in fp32 (11 + 11 significant bits < 24), so fp16(float(w) * float(n)) is torch's fp16 w * n.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace q4tp::kernels::cuda {

constexpr int kRowNormWarpSize = 32;
//! Up to 512 threads per row: hidden 4096 is one 8-half vector per thread; longer rows loop.
constexpr int kRowNormMaxThreads = 512;

//! Threads per row for vec_count vectors: one per vector up to kRowNormMaxThreads, in whole warps (the block
//! reduction needs full warps). It fixes the summation order, so every kernel that must match rms_norm uses it.
inline unsigned int row_norm_threads(std::int64_t vec_count) {
    const std::int64_t threads = (vec_count + kRowNormWarpSize - 1) / kRowNormWarpSize * kRowNormWarpSize;
    return static_cast<unsigned int>(threads > kRowNormMaxThreads ? kRowNormMaxThreads : threads);
}

__device__ __forceinline__ float warp_reduce_sum(float v) {
#pragma unroll
    for (int offset = kRowNormWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

//! Sum of v over the block (blockDim.x a multiple of 32, at most kRowNormMaxThreads), returned to every thread.
__device__ __forceinline__ float block_reduce_sum(float v) {
    __shared__ float warp_sums[kRowNormMaxThreads / kRowNormWarpSize];
    __shared__ float total;
    const int lane = static_cast<int>(threadIdx.x) % kRowNormWarpSize;
    const int warp = static_cast<int>(threadIdx.x) / kRowNormWarpSize;
    v = warp_reduce_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const int warps = static_cast<int>(blockDim.x) / kRowNormWarpSize;
        v = warp_reduce_sum(lane < warps ? warp_sums[lane] : 0.0f);
        if (lane == 0) total = v;
    }
    __syncthreads();
    return total;
}

//! Adds the square of one stored fp16 row element to this thread's fp32 partial sum.
__device__ __forceinline__ void accumulate_square(float& sum_sq, __half h) {
    const float f = __half2float(h);
    sum_sq += f * f;
}

//! rsqrt(mean of squares + eps) of the row from every thread's partial sum; a block-wide barrier, so every thread of
//! the block calls it. hidden is the row length as float (exact: rows are at most 2^24 long).
__device__ __forceinline__ float row_inv_rms(float sum_sq, float hidden, float eps) {
    return rsqrtf(block_reduce_sum(sum_sq) / hidden + eps);
}

//! One output element: fp16(gain * fp16(x * inv_rms)).
__device__ __forceinline__ __half rms_scale(float x, float gain, float inv_rms) {
    const __half normalized = __float2half_rn(x * inv_rms);
    return __float2half_rn(gain * __half2float(normalized));
}

}  // namespace q4tp::kernels::cuda
