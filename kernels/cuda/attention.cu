// Causal grouped-query attention over one layer's KV cache: split-KV decode and flash-attention prefill.
//
// Layout. q and out are [m][nh][d]; k_cache and v_cache are [nkv][capacity][d] with the absolute position as the
// row. Query head h reads kv head h / (nh / nkv) (HF repeat_kv: consecutive query heads share a kv head). Query row
// t sits at position P + t with P = *past_len, read on the device so that one captured graph serves every step, and
// attends to keys 0 .. P + t. Scores are q.k * d^-0.5 softmaxed in fp32 with the running maximum subtracted. Both
// kernels fold log2(e) into the scale and use exp2f (one MUFU instruction); log-sum-exps are kept in base 2 too.
// Cache rows at or beyond P + m are never read: they may hold anything, NaN included.
//
// Decode (m <= kMaxDecodeM), "flash-decoding". One query token offers only nkv * (rows per kv head) independent
// tasks, far fewer than the 132 SMs, so the key range 0 .. P + m - 1 is cut into num_chunks chunks
// (attention_decode_chunks(), fixed from the capacity at plan time; the chunk length follows the current length on
// the device, so short contexts still spread over every chunk and chunks past the end exit at once).
//   decode_partial_kernel, grid (chunk, kv head, row block), 128 threads. The rows of a kv head are its
//     group = nh / nkv query heads times the m tokens (row r = t * group + head-in-group); a CTA takes NR of them so
//     that K and V are read once for the whole GQA group. d / 8 threads share a key row (16-byte loads, 8 halves
//     each); the 128 threads are kSlots such slots that walk the chunk with a stride of kSlots keys, a register
//     double buffer keeping the next batch of loads in flight. Every slot keeps an online-softmax state (max,
//     sum, output slice) per row; the slots are merged through shared memory and the CTA writes, per row, its
//     normalised partial output and its log-sum-exp to the fp32 workspace.
//   decode_merge_kernel, grid (m * nh), 128 threads: out = sum_c 2^(lse_c - M) o_c / sum_c 2^(lse_c - M),
//     M = max_c lse_c, over the chunks the current length uses; the block reads all chunks at once (float4 rows,
//     several chunks side by side) rather than walking them one L2 round trip at a time.
// Workspace: o [m * nh][num_chunks][d] then lse [m * nh][num_chunks], fp32.
//
// Prefill (any m), flash-attention 2 on tensor cores. Grid (query tile, head), 4 warps; each warp owns 16 of the
// tile's 64 query rows and keeps its Q fragments in registers. 64-key tiles of K and V are staged in shared memory
// with cp.async (zero-filled past the last key this tile needs, so unwritten cache rows are never loaded and masked
// probabilities never meet NaN). S = Q K^T and O += P V use mma.sync m16n8k16 (fp16 in, fp32 accumulate); the S
// accumulator fragment is the A fragment of P V once packed to fp16, and V's B fragments come from ldmatrix.trans.
// K(j+1) loads while the softmax and P V of tile j run, V(j+1) while S(j+1) runs. CTAs take the longest (latest)
// query tiles first to shorten the causal tail.
//
// A *past_len outside 0 .. capacity - m cannot be checked on the host: both paths then write NaN to every output
// element and read nothing from the cache.
//
// PDL (common/pdl.cuh): every input here (q, the caches, *past_len, the workspace) is written by an earlier kernel
// of the step, so each of the three kernels calls pdl_wait() first, before reading anything or exiting early.

#include "kernels/cuda/attention.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "kernels/cuda/common/pdl.cuh"

namespace q4tp::kernels::cuda {

// ---------------------------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------------------------

namespace {

constexpr float kLog2e = 1.4426950408889634f;

constexpr int kDecodeThreads = 128;
// About four 128-thread CTAs per SM of a 132-SM H100 over all kv heads: enough loads in flight to stream KV at
// HBM speed for 7B (32 kv heads x 16 chunks) and many short chunks for latency-bound GQA heads (70B: 8 x 32 at a
// 2048-row cache, as kDecodeMinChunk caps them).
constexpr int kDecodeTargetCtas = 528;
// Below this a chunk costs more in merge traffic (d floats per row per chunk, against 64 keys x 512 bytes shared by
// the GQA group) and CTA start-up than its keys take to read.
constexpr int kDecodeMinChunk = 64;
// attention_decode_chunks() never returns more (one kv head at most gets every target CTA).
constexpr int kMaxDecodeChunks = kDecodeTargetCtas;
constexpr int kMergeThreads = 128;

constexpr int kPrefillThreads = 128;  // 4 warps x 16 query rows
constexpr int kPrefillRows = 64;      // query rows per CTA
constexpr int kPrefillKeys = 64;      // keys per shared-memory tile
// Shared rows padded by 16 bytes: the 8 rows a B-fragment load or an ldmatrix touches then start in 8 different
// 4-bank groups (row stride d + 8 halves = 4 mod 32 words), so neither has bank conflicts.
constexpr int kSmemPad = 8;

// ---------------------------------------------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------------------------------------------

struct KernelArgs {
    const __half* q;
    const __half* k_cache;
    const __half* v_cache;
    __half* out;
    const std::int32_t* past_len;
    float* ws_o;    // decode: [m * nh][num_chunks][d]
    float* ws_lse;  // decode: [m * nh][num_chunks]
    int m;
    int num_heads;
    int group;       // query heads per kv head
    int capacity;
    int rows;        // decode: group * m rows per kv head
    int num_chunks;  // decode
    float scale_log2;  // d^-0.5 * log2(e)
};

__device__ __forceinline__ bool past_len_ok(int past, int m, int capacity) { return past >= 0 && past <= capacity - m; }

__device__ __forceinline__ __half half_nan() { return __ushort_as_half(static_cast<unsigned short>(0x7E00)); }

//! Keys per decode chunk for `keys` keys in all: an even split over num_chunks, but never below kDecodeMinChunk.
__device__ __forceinline__ int decode_chunk_len(int keys, int num_chunks) {
    return max((keys + num_chunks - 1) / num_chunks, kDecodeMinChunk);
}

__device__ __forceinline__ float2 half2_bits_to_float2(unsigned int bits) {
    return __half22float2(*reinterpret_cast<const __half2*>(&bits));
}

__device__ __forceinline__ unsigned int float2_to_half2_bits(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned int*>(&h);
}

//! q[0..7] . (8 halves in k), fp32.
__device__ __forceinline__ float dot8(const float (&q)[8], const uint4& k) {
    const unsigned int w[4] = {k.x, k.y, k.z, k.w};
    float acc = 0.0f;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const float2 kf = half2_bits_to_float2(w[e]);
        acc = fmaf(q[2 * e], kf.x, acc);
        acc = fmaf(q[2 * e + 1], kf.y, acc);
    }
    return acc;
}

//! o[0..7] = o * corr + p * (8 halves in v).
__device__ __forceinline__ void scale_add8(float (&o)[8], float corr, float p, const uint4& v) {
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const float2 vf = half2_bits_to_float2(w[e]);
        o[2 * e] = fmaf(p, vf.x, o[2 * e] * corr);
        o[2 * e + 1] = fmaf(p, vf.y, o[2 * e + 1] * corr);
    }
}

//! One batch of a decode slot: keys first, first + kSlots, ... (kKeys of them) below end; zeros past end, unread.
template <int D, int kKeys, int kSlots>
__device__ __forceinline__ void load_kv_batch(const __half* k_row0, const __half* v_row0, int first, int end,
                                              uint4 (&kb)[kKeys], uint4 (&vb)[kKeys]) {
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
        const int j = first + u * kSlots;
        if (j < end) {
            kb[u] = __ldg(reinterpret_cast<const uint4*>(k_row0 + static_cast<std::size_t>(j) * D));
            vb[u] = __ldg(reinterpret_cast<const uint4*>(v_row0 + static_cast<std::size_t>(j) * D));
        } else {
            kb[u] = make_uint4(0u, 0u, 0u, 0u);
            vb[u] = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, int src_bytes) {
    const unsigned int addr = static_cast<unsigned int>(__cvta_generic_to_shared(smem));
    // src_bytes = 0 zero-fills the 16 bytes without reading global memory.
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

//! Waits until at most N of this thread's cp.async groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

//! c += a . b for one m16n8k16 tile (a row-major 16x16 fp16, b column-major 16x8 fp16, c 16x8 fp32).
__device__ __forceinline__ void mma_16816(float (&c)[4], const unsigned int (&a)[4], unsigned int b0,
                                          unsigned int b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

//! Four transposed 8x8 fp16 matrices; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned int (&r)[4], const __half* smem_row) {
    const unsigned int addr = static_cast<unsigned int>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

//! Stages keys key0 .. key0 + kPrefillKeys - 1 of one kv head ([capacity][D] at head) into smem rows of D + kSmemPad
//! halves; keys at or beyond end are zero-filled, not read.
template <int D>
__device__ __forceinline__ void load_tile_async(__half* smem, const __half* head, int key0, int end) {
    constexpr int kChunksPerRow = D / 8;
    constexpr int kChunks = kPrefillKeys * kChunksPerRow;
    static_assert(kChunks % kPrefillThreads == 0, "every thread copies the same number of 16-byte chunks");
#pragma unroll
    for (int it = 0; it < kChunks / kPrefillThreads; ++it) {
        const int c = it * kPrefillThreads + static_cast<int>(threadIdx.x);
        const int r = c / kChunksPerRow;
        const int col = (c % kChunksPerRow) * 8;
        const int key = key0 + r;
        const bool inside = key < end;
        const __half* src = head + static_cast<std::size_t>(inside ? key : 0) * D + col;
        cp_async_16(smem + r * (D + kSmemPad) + col, src, inside ? 16 : 0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------------------------

template <int D, int NR>
__global__ void __launch_bounds__(kDecodeThreads) decode_partial_kernel(KernelArgs a) {
    constexpr int kLanes = D / 8;                   // threads sharing one key row, 16 bytes each
    constexpr int kSlots = kDecodeThreads / kLanes;  // keys the CTA reads side by side
    constexpr int kKeys = NR <= 2 ? 4 : 2;           // keys per slot per batch (fewer when rows cost registers)
    constexpr int kStep = kSlots * kKeys;

    __shared__ __align__(16) float s_o[kSlots][NR][D];
    __shared__ float s_max[kSlots][NR];
    __shared__ float s_sum[kSlots][NR];

    pdl_wait();
    pdl_launch_dependents();
    const int past = *a.past_len;
    if (!past_len_ok(past, a.m, a.capacity)) return;  // the merge kernel writes NaN
    const int keys = past + a.m;
    const int chunk_len = decode_chunk_len(keys, a.num_chunks);
    const int chunk = static_cast<int>(blockIdx.x);
    const int c0 = chunk * chunk_len;
    if (c0 >= keys) return;  // a chunk only a longer context uses; the merge kernel skips it too
    const int c1 = min(c0 + chunk_len, keys);

    const int kv_head = static_cast<int>(blockIdx.y);
    const int lane = static_cast<int>(threadIdx.x) % kLanes;
    const int slot = static_cast<int>(threadIdx.x) / kLanes;

    float q[NR][8];
    int limit[NR];  // last key each row may see; -1 for padding rows past group * m
#pragma unroll
    for (int i = 0; i < NR; ++i) {
        const int r = static_cast<int>(blockIdx.z) * NR + i;
        if (r < a.rows) {
            const int t = r / a.group;
            const int h = kv_head * a.group + r % a.group;
            const uint4 raw = *reinterpret_cast<const uint4*>(
                a.q + (static_cast<std::size_t>(t) * a.num_heads + h) * D + lane * 8);
            const unsigned int w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float2 f = half2_bits_to_float2(w[e]);
                q[i][2 * e] = f.x * a.scale_log2;
                q[i][2 * e + 1] = f.y * a.scale_log2;
            }
            limit[i] = past + t;
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) q[i][e] = 0.0f;
            limit[i] = -1;
        }
    }

    float o[NR][8];
    float row_max[NR];
    float row_sum[NR];
#pragma unroll
    for (int i = 0; i < NR; ++i) {
#pragma unroll
        for (int e = 0; e < 8; ++e) o[i][e] = 0.0f;
        row_max[i] = -INFINITY;
        row_sum[i] = 0.0f;
    }

    const std::size_t head_offset = static_cast<std::size_t>(kv_head) * a.capacity * D + lane * 8;
    const __half* k_row0 = a.k_cache + head_offset;
    const __half* v_row0 = a.v_cache + head_offset;

    uint4 kc[kKeys];
    uint4 vc[kKeys];
    load_kv_batch<D, kKeys, kSlots>(k_row0, v_row0, c0 + slot, c1, kc, vc);
    for (int base = c0; base < c1; base += kStep) {
        uint4 kn[kKeys];
        uint4 vn[kKeys];
        load_kv_batch<D, kKeys, kSlots>(k_row0, v_row0, base + kStep + slot, c1, kn, vn);

        const int first = base + slot;
#pragma unroll
        for (int i = 0; i < NR; ++i) {
            float s[kKeys];
            float batch_max = row_max[i];
#pragma unroll
            for (int u = 0; u < kKeys; ++u) {
                float dot = dot8(q[i], kc[u]);
#pragma unroll
                for (int off = kLanes / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
                const int j = first + u * kSlots;
                s[u] = (j < c1 && j <= limit[i]) ? dot : -INFINITY;
                batch_max = fmaxf(batch_max, s[u]);
            }
            // While a row has seen no key its max is -inf; exponents are then taken against 0 (all weights 0).
            const float ref = batch_max == -INFINITY ? 0.0f : batch_max;
            float corr = exp2f(row_max[i] - ref);
            row_sum[i] *= corr;
#pragma unroll
            for (int u = 0; u < kKeys; ++u) {
                const float p = exp2f(s[u] - ref);
                row_sum[i] += p;
                scale_add8(o[i], corr, p, vc[u]);
                corr = 1.0f;
            }
            row_max[i] = batch_max;
        }

#pragma unroll
        for (int u = 0; u < kKeys; ++u) {
            kc[u] = kn[u];
            vc[u] = vn[u];
        }
    }

    // Merge the slots' states: every lane of a slot holds the same max and sum (the dot was reduced over the slot).
#pragma unroll
    for (int i = 0; i < NR; ++i) {
        float4* dst = reinterpret_cast<float4*>(&s_o[slot][i][lane * 8]);
        dst[0] = make_float4(o[i][0], o[i][1], o[i][2], o[i][3]);
        dst[1] = make_float4(o[i][4], o[i][5], o[i][6], o[i][7]);
        if (lane == 0) {
            s_max[slot][i] = row_max[i];
            s_sum[slot][i] = row_sum[i];
        }
    }
    __syncthreads();

    for (int idx = static_cast<int>(threadIdx.x); idx < NR * D; idx += kDecodeThreads) {
        const int i = idx / D;
        const int d = idx % D;
        const int r = static_cast<int>(blockIdx.z) * NR + i;
        if (r >= a.rows) continue;
        float m_all = -INFINITY;
#pragma unroll
        for (int s = 0; s < kSlots; ++s) m_all = fmaxf(m_all, s_max[s][i]);
        float sum = 0.0f;
        float acc = 0.0f;
        if (m_all != -INFINITY) {
#pragma unroll
            for (int s = 0; s < kSlots; ++s) {
                const float w = exp2f(s_max[s][i] - m_all);
                sum = fmaf(s_sum[s][i], w, sum);
                acc = fmaf(s_o[s][i][d], w, acc);
            }
        }
        const int t = r / a.group;
        const int h = kv_head * a.group + r % a.group;
        const std::size_t row = static_cast<std::size_t>(t) * a.num_heads + h;
        // A row whose keys all lie past this chunk (a later token of m > 1 in the last chunk) contributes nothing.
        a.ws_o[(row * a.num_chunks + chunk) * D + d] = sum > 0.0f ? acc / sum : 0.0f;
        if (d == 0) a.ws_lse[row * a.num_chunks + chunk] = sum > 0.0f ? m_all + log2f(sum) : -INFINITY;
    }
}

template <int D>
__global__ void __launch_bounds__(kMergeThreads) decode_merge_kernel(KernelArgs a) {
    constexpr int kLanes = D / 4;                    // threads per chunk row, a float4 each
    constexpr int kGroups = kMergeThreads / kLanes;  // chunks summed side by side
    constexpr int kWarps = kMergeThreads / 32;
    __shared__ float s_weight[kMaxDecodeChunks];
    __shared__ __align__(16) float s_part[kGroups][D];
    __shared__ float s_part_weight[kGroups];
    __shared__ float s_warp_max[kWarps];

    const std::size_t row = blockIdx.x;  // t * nh + h
    const int tid = static_cast<int>(threadIdx.x);
    __half* out = a.out + row * D;
    pdl_wait();  // the partial kernel's workspace
    pdl_launch_dependents();
    const int past = *a.past_len;
    if (!past_len_ok(past, a.m, a.capacity)) {
        for (int d = tid; d < D; d += kMergeThreads) out[d] = half_nan();
        return;
    }
    const int keys = past + a.m;
    const int chunk_len = decode_chunk_len(keys, a.num_chunks);
    const int active = (keys + chunk_len - 1) / chunk_len;

    // All log-sum-exps are loaded at once and reduced over the block: a serial walk over the chunks would pay one
    // L2 round trip per chunk.
    const float* lse = a.ws_lse + row * a.num_chunks;
    float local_max = -INFINITY;
    for (int c = tid; c < active; c += kMergeThreads) {
        s_weight[c] = lse[c];
        local_max = fmaxf(local_max, s_weight[c]);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, off));
    if (tid % 32 == 0) s_warp_max[tid / 32] = local_max;
    __syncthreads();
    float m_all = s_warp_max[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) m_all = fmaxf(m_all, s_warp_max[w]);
    // Chunk 0 holds key 0, which every row sees, so m_all is finite. Each thread rescales the entries it loaded.
    for (int c = tid; c < active; c += kMergeThreads) s_weight[c] = exp2f(s_weight[c] - m_all);
    __syncthreads();

    const int lane = tid % kLanes;
    const int grp = tid / kLanes;
    const float* part = a.ws_o + row * a.num_chunks * D + lane * 4;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float weight = 0.0f;
#pragma unroll 4
    for (int c = grp; c < active; c += kGroups) {
        const float w = s_weight[c];
        const float4 v = *reinterpret_cast<const float4*>(part + static_cast<std::size_t>(c) * D);
        acc.x = fmaf(w, v.x, acc.x);
        acc.y = fmaf(w, v.y, acc.y);
        acc.z = fmaf(w, v.z, acc.z);
        acc.w = fmaf(w, v.w, acc.w);
        weight += w;
    }
    *reinterpret_cast<float4*>(&s_part[grp][lane * 4]) = acc;
    if (lane == 0) s_part_weight[grp] = weight;
    __syncthreads();
    for (int d = tid; d < D; d += kMergeThreads) {
        float sum = 0.0f;
        float total_weight = 0.0f;
#pragma unroll
        for (int g = 0; g < kGroups; ++g) {
            sum += s_part[g][d];
            total_weight += s_part_weight[g];
        }
        out[d] = __float2half_rn(sum / total_weight);
    }
}

template <int D>
__global__ void __launch_bounds__(kPrefillThreads) prefill_kernel(KernelArgs a) {
    constexpr int kStride = D + kSmemPad;    // shared row stride, halves
    constexpr int kQkSteps = D / 16;         // k16 steps of Q K^T
    constexpr int kOutTiles = D / 8;         // n8 tiles of O
    constexpr int kKeyTiles = kPrefillKeys / 8;  // n8 tiles of S
    constexpr int kPvSteps = kPrefillKeys / 16;  // k16 steps of P V

    __shared__ __align__(16) __half s_k[kPrefillKeys * kStride];
    __shared__ __align__(16) __half s_v[kPrefillKeys * kStride];

    pdl_wait();
    pdl_launch_dependents();
    const int past = *a.past_len;
    const int h = static_cast<int>(blockIdx.y);
    const int t0 = (static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x)) * kPrefillRows;

    if (!past_len_ok(past, a.m, a.capacity)) {
        const int rows = min(kPrefillRows, a.m - t0);
        for (int idx = static_cast<int>(threadIdx.x); idx < rows * D; idx += kPrefillThreads) {
            const int t = t0 + idx / D;
            a.out[(static_cast<std::size_t>(t) * a.num_heads + h) * D + idx % D] = half_nan();
        }
        return;
    }

    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int g = lane / 4;   // fragment row (and n index of B)
    const int tq = lane % 4;  // fragment column pair
    const int row_lo = t0 + warp * 16 + g;
    const int row_hi = row_lo + 8;
    const int kv_head = h / a.group;

    // Q fragments (A operand, rows g and g + 8, columns 2tq, 2tq + 1 and those + 8); rows past m are zero.
    unsigned int qf[kQkSteps][4];
    {
        const __half* q_lo = a.q + (static_cast<std::size_t>(min(row_lo, a.m - 1)) * a.num_heads + h) * D + 2 * tq;
        const __half* q_hi = a.q + (static_cast<std::size_t>(min(row_hi, a.m - 1)) * a.num_heads + h) * D + 2 * tq;
        const bool lo_ok = row_lo < a.m;
        const bool hi_ok = row_hi < a.m;
#pragma unroll
        for (int ks = 0; ks < kQkSteps; ++ks) {
            qf[ks][0] = lo_ok ? *reinterpret_cast<const unsigned int*>(q_lo + ks * 16) : 0u;
            qf[ks][1] = hi_ok ? *reinterpret_cast<const unsigned int*>(q_hi + ks * 16) : 0u;
            qf[ks][2] = lo_ok ? *reinterpret_cast<const unsigned int*>(q_lo + ks * 16 + 8) : 0u;
            qf[ks][3] = hi_ok ? *reinterpret_cast<const unsigned int*>(q_hi + ks * 16 + 8) : 0u;
        }
    }
    const int limit[2] = {past + row_lo, past + row_hi};

    float o[kOutTiles][4];
#pragma unroll
    for (int dt = 0; dt < kOutTiles; ++dt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[dt][e] = 0.0f;
    }
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.0f, 0.0f};  // this thread's share; the quad's four shares are added at the end

    const std::size_t head_offset = static_cast<std::size_t>(kv_head) * a.capacity * D;
    const __half* k_head = a.k_cache + head_offset;
    const __half* v_head = a.v_cache + head_offset;
    const int kv_end = past + min(t0 + kPrefillRows, a.m);  // keys the tile's last valid row sees
    const int num_tiles = (kv_end + kPrefillKeys - 1) / kPrefillKeys;

    load_tile_async<D>(s_k, k_head, 0, kv_end);
    cp_async_commit();
    load_tile_async<D>(s_v, v_head, 0, kv_end);
    cp_async_commit();

    for (int kt = 0; kt < num_tiles; ++kt) {
        const int key0 = kt * kPrefillKeys;
        const bool more = kt + 1 < num_tiles;

        cp_async_wait<1>();  // K(kt) has landed; V(kt) may still be in flight
        __syncthreads();
        float s[kKeyTiles][4];
#pragma unroll
        for (int nt = 0; nt < kKeyTiles; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
        }
#pragma unroll
        for (int ks = 0; ks < kQkSteps; ++ks) {
#pragma unroll
            for (int nt = 0; nt < kKeyTiles; ++nt) {
                // B[k][n] = K[key n][dim k]: dims 2tq, 2tq + 1 (and + 8) of key nt * 8 + g are adjacent in smem.
                const __half* kp = s_k + (nt * 8 + g) * kStride + ks * 16 + 2 * tq;
                mma_16816(s[nt], qf[ks], *reinterpret_cast<const unsigned int*>(kp),
                          *reinterpret_cast<const unsigned int*>(kp + 8));
            }
        }
        __syncthreads();  // every warp is done with s_k
        if (more) {
            load_tile_async<D>(s_k, k_head, key0 + kPrefillKeys, kv_end);
            cp_async_commit();
        }

        // Online softmax; element (nt, e) of s is row g (e < 2) or g + 8, key key0 + nt * 8 + 2tq + e % 2.
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
            float tile_max = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < kKeyTiles; ++nt) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int key = key0 + nt * 8 + 2 * tq + e;
                    const float v = key <= limit[rh] ? s[nt][rh * 2 + e] * a.scale_log2 : -INFINITY;
                    s[nt][rh * 2 + e] = v;
                    tile_max = fmaxf(tile_max, v);
                }
            }
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
            const float new_max = fmaxf(row_max[rh], tile_max);
            const float ref = new_max == -INFINITY ? 0.0f : new_max;
            const float corr = exp2f(row_max[rh] - ref);
            row_max[rh] = new_max;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < kKeyTiles; ++nt) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float p = exp2f(s[nt][rh * 2 + e] - ref);
                    s[nt][rh * 2 + e] = p;
                    sum += p;
                }
            }
            row_sum[rh] = row_sum[rh] * corr + sum;
#pragma unroll
            for (int dt = 0; dt < kOutTiles; ++dt) {
                o[dt][rh * 2] *= corr;
                o[dt][rh * 2 + 1] *= corr;
            }
        }

        if (more) {
            cp_async_wait<1>();  // V(kt) has landed; K(kt + 1) may still be in flight
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < kPvSteps; ++ks) {
            // The C fragments of key tiles 2ks and 2ks + 1 are exactly the A fragment of keys 16ks .. 16ks + 15.
            const unsigned int pa[4] = {float2_to_half2_bits(s[2 * ks][0], s[2 * ks][1]),
                                        float2_to_half2_bits(s[2 * ks][2], s[2 * ks][3]),
                                        float2_to_half2_bits(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                                        float2_to_half2_bits(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                // Matrices: (keys 0-7, dims 0-7), (keys 8-15, dims 0-7), (keys 0-7, dims 8-15), (keys 8-15, dims
                // 8-15) of this 16x16 block; transposed they are B fragments b0, b1 of two n8 tiles.
                const int mat = lane / 8;
                const __half* vp = s_v + (ks * 16 + (mat & 1) * 8 + lane % 8) * kStride + dp * 16 + (mat >> 1) * 8;
                unsigned int b[4];
                ldmatrix_x4_trans(b, vp);
                mma_16816(o[2 * dp], pa, b[0], b[1]);
                mma_16816(o[2 * dp + 1], pa, b[2], b[3]);
            }
        }
        __syncthreads();  // every warp is done with s_v
        if (more) {
            load_tile_async<D>(s_v, v_head, key0 + kPrefillKeys, kv_end);
            cp_async_commit();
        }
    }

#pragma unroll
    for (int rh = 0; rh < 2; ++rh) {
        float sum = row_sum[rh];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int row = rh == 0 ? row_lo : row_hi;
        if (row >= a.m) continue;
        const float inv = 1.0f / sum;  // sum >= 1: the row's maximum contributes 2^0
        __half* out = a.out + (static_cast<std::size_t>(row) * a.num_heads + h) * D + 2 * tq;
#pragma unroll
        for (int dt = 0; dt < kOutTiles; ++dt) {
            *reinterpret_cast<__half2*>(out + dt * 8) = __floats2half2_rn(o[dt][rh * 2] * inv, o[dt][rh * 2 + 1] * inv);
        }
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launch configuration
// ---------------------------------------------------------------------------------------------------------------

namespace {

constexpr int kMaxGridYZ = 65535;

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

bool overlaps(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
    const auto a0 = reinterpret_cast<std::uintptr_t>(a);
    const auto b0 = reinterpret_cast<std::uintptr_t>(b);
    return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

void check_shape(int m, int num_heads, int num_kv_heads, int head_dim, int capacity, const char* who) {
    Q4TP_CHECK(m >= 1, who << ": m = " << m << ", expected >= 1");
    Q4TP_CHECK(head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128,
               who << ": head_dim = " << head_dim << ", expected 16, 32, 64 or 128");
    Q4TP_CHECK(num_kv_heads >= 1 && num_heads >= 1 && num_heads % num_kv_heads == 0,
               who << ": num_heads = " << num_heads << " is not a positive multiple of num_kv_heads = "
                   << num_kv_heads);
    Q4TP_CHECK(num_heads <= kMaxGridYZ, who << ": num_heads = " << num_heads << ", expected <= " << kMaxGridYZ);
    Q4TP_CHECK(capacity >= m, who << ": capacity = " << capacity << " is below m = " << m
                                  << " (past_len + m must fit in the cache)");
}

void check_params(const AttentionParams& p, const char* who) {
    check_shape(p.m, p.num_heads, p.num_kv_heads, p.head_dim, p.capacity, who);
    Q4TP_CHECK(p.q && p.k_cache && p.v_cache && p.out && p.past_len,
               who << ": null q, k_cache, v_cache, out or past_len pointer");
    Q4TP_CHECK(aligned16(p.q) && aligned16(p.k_cache) && aligned16(p.v_cache) && aligned16(p.out),
               who << ": q, k_cache, v_cache and out must be 16-byte aligned (16-byte vector loads)");
    const std::size_t act_bytes = static_cast<std::size_t>(p.m) * p.num_heads * p.head_dim * sizeof(__half);
    const std::size_t cache_bytes =
        static_cast<std::size_t>(p.num_kv_heads) * p.capacity * p.head_dim * sizeof(__half);
    Q4TP_CHECK(!overlaps(p.out, act_bytes, p.q, act_bytes) && !overlaps(p.out, act_bytes, p.k_cache, cache_bytes) &&
                   !overlaps(p.out, act_bytes, p.v_cache, cache_bytes),
               who << ": out overlaps q, k_cache or v_cache");
}

KernelArgs kernel_args(const AttentionParams& p) {
    KernelArgs a{};
    a.q = p.q;
    a.k_cache = p.k_cache;
    a.v_cache = p.v_cache;
    a.out = p.out;
    a.past_len = p.past_len;
    a.m = p.m;
    a.num_heads = p.num_heads;
    a.group = p.num_heads / p.num_kv_heads;
    a.capacity = p.capacity;
    a.rows = a.group * p.m;
    // head_dim^-0.5 in float, as the model computes it, then moved to base 2.
    a.scale_log2 = (1.0f / std::sqrt(static_cast<float>(p.head_dim))) * kLog2e;
    return a;
}

//! Rows per decode CTA: the smallest of 1, 2, 4 covering a kv head's rows, else 4 and several row blocks.
int decode_rows_per_cta(int rows) { return rows <= 1 ? 1 : (rows <= 2 ? 2 : 4); }

template <int D>
void launch_decode(const KernelArgs& a, int num_kv_heads, cudaStream_t stream) {
    const int nr = decode_rows_per_cta(a.rows);
    const dim3 grid(static_cast<unsigned int>(a.num_chunks), static_cast<unsigned int>(num_kv_heads),
                    static_cast<unsigned int>((a.rows + nr - 1) / nr));
    switch (nr) {
        case 1:
            launch_kernel(decode_partial_kernel<D, 1>, grid, kDecodeThreads, 0, stream, a);
            break;
        case 2:
            launch_kernel(decode_partial_kernel<D, 2>, grid, kDecodeThreads, 0, stream, a);
            break;
        case 4:
            launch_kernel(decode_partial_kernel<D, 4>, grid, kDecodeThreads, 0, stream, a);
            break;
        default:
            Q4TP_THROW("attention_decode: no kernel for " << nr << " rows per CTA");
    }
    launch_kernel(decode_merge_kernel<D>, static_cast<unsigned int>(a.m * a.num_heads), kMergeThreads, 0, stream, a);
}

template <int D>
void launch_prefill(const KernelArgs& a, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned int>((a.m + kPrefillRows - 1) / kPrefillRows),
                    static_cast<unsigned int>(a.num_heads));
    launch_kernel(prefill_kernel<D>, grid, kPrefillThreads, 0, stream, a);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------------------------------------

int attention_decode_chunks(int num_kv_heads, int capacity) {
    Q4TP_CHECK(num_kv_heads >= 1 && capacity >= 1, "attention_decode_chunks: num_kv_heads = "
                                                        << num_kv_heads << ", capacity = " << capacity
                                                        << ", expected both >= 1");
    const int wanted = std::max(1, kDecodeTargetCtas / num_kv_heads);
    const int useful = (capacity + kDecodeMinChunk - 1) / kDecodeMinChunk;  // more would all stay empty
    return std::min(wanted, useful);
}

std::size_t attention_workspace_bytes(int m, int num_heads, int num_kv_heads, int head_dim, int capacity) {
    check_shape(m, num_heads, num_kv_heads, head_dim, capacity, "attention_workspace_bytes");
    if (m > kMaxDecodeM) return 0;
    const std::size_t chunks = static_cast<std::size_t>(attention_decode_chunks(num_kv_heads, capacity));
    return static_cast<std::size_t>(m) * num_heads * chunks * (head_dim + 1) * sizeof(float);
}

void attention_decode(const AttentionParams& p, cudaStream_t stream) {
    Q4TP_CHECK(p.m <= kMaxDecodeM, "attention_decode: m = " << p.m << ", expected <= " << kMaxDecodeM
                                                            << " (use attention_prefill)");
    check_params(p, "attention_decode");
    const std::size_t need = attention_workspace_bytes(p.m, p.num_heads, p.num_kv_heads, p.head_dim, p.capacity);
    Q4TP_CHECK(p.workspace != nullptr && p.workspace_bytes >= need,
               "attention_decode: workspace of " << p.workspace_bytes << " bytes at " << p.workspace << ", expected "
                                                 << need << " bytes (attention_workspace_bytes)");
    Q4TP_CHECK(aligned16(p.workspace), "attention_decode: workspace must be 16-byte aligned");
    const std::size_t act_bytes = static_cast<std::size_t>(p.m) * p.num_heads * p.head_dim * sizeof(__half);
    Q4TP_CHECK(!overlaps(p.workspace, need, p.out, act_bytes) && !overlaps(p.workspace, need, p.q, act_bytes),
               "attention_decode: workspace overlaps q or out");

    KernelArgs a = kernel_args(p);
    a.num_chunks = attention_decode_chunks(p.num_kv_heads, p.capacity);
    Q4TP_CHECK(a.num_chunks <= kMaxDecodeChunks,
               "attention_decode: " << a.num_chunks << " chunks, the merge kernel takes " << kMaxDecodeChunks);
    a.ws_o = p.workspace;
    a.ws_lse = p.workspace + static_cast<std::size_t>(p.m) * p.num_heads * a.num_chunks * p.head_dim;
    Q4TP_CHECK((a.rows + 3) / 4 <= kMaxGridYZ, "attention_decode: " << a.rows << " query rows per kv head, expected <= "
                                                                    << 4 * kMaxGridYZ);
    switch (p.head_dim) {
        case 16:
            launch_decode<16>(a, p.num_kv_heads, stream);
            break;
        case 32:
            launch_decode<32>(a, p.num_kv_heads, stream);
            break;
        case 64:
            launch_decode<64>(a, p.num_kv_heads, stream);
            break;
        case 128:
            launch_decode<128>(a, p.num_kv_heads, stream);
            break;
        default:
            Q4TP_THROW("attention_decode: head_dim = " << p.head_dim << ", expected 16, 32, 64 or 128");
    }
}

void attention_prefill(const AttentionParams& p, cudaStream_t stream) {
    check_params(p, "attention_prefill");
    const KernelArgs a = kernel_args(p);
    switch (p.head_dim) {
        case 16:
            launch_prefill<16>(a, stream);
            break;
        case 32:
            launch_prefill<32>(a, stream);
            break;
        case 64:
            launch_prefill<64>(a, stream);
            break;
        case 128:
            launch_prefill<128>(a, stream);
            break;
        default:
            Q4TP_THROW("attention_prefill: head_dim = " << p.head_dim << ", expected 16, 32, 64 or 128");
    }
}

void attention(const AttentionParams& p, cudaStream_t stream) {
    if (p.m <= kMaxDecodeM) {
        attention_decode(p, stream);
    } else {
        attention_prefill(p, stream);
    }
}

}  // namespace q4tp::kernels::cuda
