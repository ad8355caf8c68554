// RoPE + KV-cache append: rotates the q heads of m tokens in place and writes the rotated k heads and the v heads
// into the layer's cache at each token's absolute position.
//
// Layout: q [m][nh][d], k and v [m][nkv][d] (the views of the fused QKV projection output), caches
// [nkv][capacity][d]; token t lands in cache row positions[t] (R4.5: positions are absolute, the cache row IS the
// position). Rotation pairs are (i, i + d/2) (R4.4 rotate_half, HF layout; not interleaved).
//
// Grid: x = token, y = head, q heads first (y < nh), then the kv heads (y = nh + g). Thread i of a block owns pair
// i of its head: it computes its own angle and sincosf (no shared table, no barrier; the same sincos for the same
// (t, i) in nh + nkv blocks is cheap next to a memory round trip) and, in a kv block, also copies v[i] and
// v[i + d/2]. Every element is read and written by the one thread that owns it, so the in-place q update has no race.
//
// Precision: the angle is the fp32 product float(pos) * inv_freq[i] (R4.4, one rounding, as transformers does) and
// cos/sin come from sincosf, NOT the __sincosf intrinsic: the intrinsic does no proper range reduction, so its
// absolute error grows with |angle|, and angles reach pos * inv_freq[0] = pos radians (thousands, 10^5 at long
// contexts). Measured on an H200: with __sincosf the rotated values are already off by up to 5e-4 at positions of a
// few thousand, as large as the fp16 rounding itself; sincosf stays within ~1 ulp of fp32 over the whole range.
// The rotation is fp32 and rounded once to fp16. The build must not use --use_fast_math (it turns sincosf into
// __sincosf).
//
// PDL (common/pdl.cuh): each thread loads the inv_freq entry of its first pair (a table no kernel writes) before
// pdl_wait(); positions, q, k, v are read and q and the caches written after it.
#include "kernels/cuda/rope.h"

#include <cassert>
#include <cmath>
#include <cstdint>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "kernels/cuda/common/pdl.cuh"

namespace q4tp::kernels::cuda {

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Constants

constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 256;
//! gridDim.y limit of the CUDA launch model; nh + nkv heads must fit.
constexpr std::int64_t kMaxGridY = 65535;

// ---------------------------------------------------------------------------------------------------------------
// Device helpers

//! Rotates the pair (lo, hi) = (x[i], x[i + d/2]) by (c, s) and rounds to fp16.
__device__ __forceinline__ void rotate_pair(const __half* src, __half* dst, std::int64_t i, std::int64_t half,
                                            float c, float s) {
    const float lo = __half2float(src[i]);
    const float hi = __half2float(src[i + half]);
    dst[i] = __float2half_rn(lo * c - hi * s);
    dst[i + half] = __float2half_rn(hi * c + lo * s);
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels

__global__ void rope_append_kv_kernel(RopeAppendKvParams p) {
    const std::int64_t t = blockIdx.x;
    const std::int64_t head = blockIdx.y;
    const std::int64_t half = p.head_dim / 2;
    const float first_inv_freq = threadIdx.x < half ? p.inv_freq[threadIdx.x] : 0.0f;
    pdl_wait();  // positions and q/k/v come from the kernels before this one
    pdl_launch_dependents();
    const std::int32_t pos = p.positions[t];
    assert(pos >= 0 && pos < p.capacity);
    const auto pos_f = static_cast<float>(pos);

    for (std::int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        float s;
        float c;
        sincosf(pos_f * (i == threadIdx.x ? first_inv_freq : p.inv_freq[i]), &s, &c);
        c *= p.attention_scaling;
        s *= p.attention_scaling;
        if (head < p.num_heads) {
            __half* x = p.q + (t * p.num_heads + head) * p.head_dim;
            rotate_pair(x, x, i, half, c, s);
        } else {
            const std::int64_t g = head - p.num_heads;
            const std::int64_t src_offset = (t * p.num_kv_heads + g) * p.head_dim;
            const std::int64_t row_offset = (g * p.capacity + pos) * p.head_dim;
            rotate_pair(p.k + src_offset, p.k_cache + row_offset, i, half, c, s);
            p.v_cache[row_offset + i] = p.v[src_offset + i];
            p.v_cache[row_offset + i + half] = p.v[src_offset + i + half];
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Launch configuration

//! One thread per rotation pair, whole warps, at most kMaxThreads (longer heads loop).
unsigned int threads_for(std::int64_t half) {
    const std::int64_t threads = (half + kWarpSize - 1) / kWarpSize * kWarpSize;
    return static_cast<unsigned int>(threads > kMaxThreads ? kMaxThreads : threads);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launcher

void rope_append_kv(const RopeAppendKvParams& p, cudaStream_t stream) {
    Q4TP_CHECK(p.m > 0 && p.m <= INT32_MAX, "rope_append_kv: m = " << p.m << ", expected in [1, " << INT32_MAX << "]");
    Q4TP_CHECK(p.num_heads > 0 && p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0,
               "rope_append_kv: num_heads = " << p.num_heads << ", num_kv_heads = " << p.num_kv_heads
                                              << ", expected both > 0 and num_kv_heads dividing num_heads");
    Q4TP_CHECK(p.num_heads + p.num_kv_heads <= kMaxGridY,
               "rope_append_kv: num_heads + num_kv_heads = " << p.num_heads + p.num_kv_heads << ", expected <= "
                                                             << kMaxGridY);
    Q4TP_CHECK(p.head_dim > 0 && p.head_dim % 2 == 0,
               "rope_append_kv: head_dim = " << p.head_dim << ", expected a positive even number");
    Q4TP_CHECK(p.capacity > 0 && p.capacity <= INT32_MAX,
               "rope_append_kv: capacity = " << p.capacity << ", expected in [1, " << INT32_MAX
                                             << "] (positions are int32)");
    Q4TP_CHECK(std::isfinite(p.attention_scaling) && p.attention_scaling > 0.0f,
               "rope_append_kv: attention_scaling = " << p.attention_scaling << ", expected a finite value > 0");
    Q4TP_CHECK(p.q && p.k && p.v && p.k_cache && p.v_cache && p.positions && p.inv_freq,
               "rope_append_kv: null q, k, v, k_cache, v_cache, positions or inv_freq pointer");
    const dim3 grid(static_cast<unsigned int>(p.m), static_cast<unsigned int>(p.num_heads + p.num_kv_heads));
    launch_kernel(rope_append_kv_kernel, grid, threads_for(p.head_dim / 2), 0, stream, p);
}

}  // namespace q4tp::kernels::cuda
