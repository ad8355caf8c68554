// int4 GPTQ GEMV for decode (m = 1..8) and the dequantize-to-fp16 kernel.
//
// Algorithm. Decode GEMV is a stream over the packed weights (0.52 B per weight at group 128), so everything is
// arranged to read each weight once with 16-byte coalesced loads, keep enough of them in flight, and spend as few
// instructions per weight as possible (at 4.2 TB/s on 132 SMs the issue budget is ~4 instructions per weight):
//  - Layout (gptq_prepare.h): a lane's 16-byte load is 4 words = the A fragments of 4 mma.m16n8k16 (2 n16 tiles x
//    2 k16 steps = 32 columns x 32 rows per warp); a warp's load is 512 contiguous bytes and its K range is contiguous.
//  - Math: y^T = W^T x^T. The weights are the mma's A operand (16 columns x 16 rows, all 4 registers useful), the
//    activations its B operand (16 rows x 8: m <= 8 fits exactly). Codes enter the tensor cores as exact subnormal
//    fp16 numbers q 2^-24 made by one AND per two weights (quant/int4.cuh), so dequantization costs 5 integer
//    instructions per 8 weights and no float op. Per group, in fp32: y += s (sum q x - z sum x) with the power of
//    two folded into s and sum x per 32-row block precomputed in shared memory. Instruction count per weight does
//    not depend on m. No fp16 accumulation anywhere: mma sums in fp32, so do the group, split-K and epilogue sums.
//  - CTA: 8 warps x one 32-column tile each = 256 columns, all warps over the same K slice, so the CTA's activation
//    slice is gathered once into shared memory (through perm for act-order: x is read as x[perm[k]]) in B-fragment
//    order, one 16-byte shared load per lane per 32-row block, rows padded against bank conflicts.
//  - Loads in flight: 8 blocks (8 x 16 B) per lane, refilled one by one as each block is consumed (a rolling
//    prefetch with predicated loads, no second register buffer); the first 8 are issued before the activation
//    gather. Each block's scales and zero points travel with its weights, off the dot product's dependency chain.
//  - Split-K: when N alone gives too few CTAs, K is cut into `splits` slices (gptq_gemv_plan: the slicing that best
//    fills whole waves of resident CTAs). Each CTA writes fp32 partials to the workspace; the last CTA of a column
//    tile (a self-resetting atomic counter) sums them in slice order, adds the residual in fp32 and writes fp16.
//    Deterministic and graph-safe.
//
// Variants: one kernel template per m (1..8), chosen by the single switch in gptq_gemv. Group sizes are runtime
// (any multiple of 32, or K), act-order is the perm pointer (nullptr = rows already in order). Padded layouts (row
// shards of act-order layers, gptq_prepare.h step 5) add a per-block group table: each slot reads the entry of its next
// block a whole round ahead, so the scale load never waits on the table; filler rows (perm -1) stage x = 0.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "kernels/cuda/common/pdl.cuh"
#include "kernels/cuda/common/ptx.cuh"
#include "kernels/cuda/gptq_gemv.h"
#include "kernels/cuda/quant/int4.cuh"

namespace q4tp::kernels::cuda {

namespace {

// ------------------------------------------------------------------------------------------------
// Traits and constants

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTileN = static_cast<int>(kGptqTileN);    // columns per warp
constexpr int kBlockK = static_cast<int>(kGptqBlockK);  // rows per 16-byte load
constexpr int kCtaN = kWarps * kTileN;                  // columns per CTA
// Tuning knob, overridable at build time only to benchmark alternatives (scripts/gpu_kernels.sh --variants):
// 16-byte loads in flight per lane (8: 32 KB per CTA). Q4TP_GPTQ_GEMV_CTAS_PER_SM, when defined, also asks the
// register allocator to fit that many CTAs per SM (3: <= 80 registers, 4: <= 64); by default it is unconstrained.
#ifndef Q4TP_GPTQ_GEMV_IN_FLIGHT
#define Q4TP_GPTQ_GEMV_IN_FLIGHT 8
#endif
constexpr int kBlocksInFlight = Q4TP_GPTQ_GEMV_IN_FLIGHT;
// Split-K policy. Constants, not device queries, so the plan and the workspace size are pure functions of the shape
// (H100 and H200 both have 132 SMs). The default, "waves": of all ways to cut K into slices of whole rounds (8
// k-blocks), take the one that finishes soonest if CTAs run in whole waves of kResidentCtas (2 per SM, register
// bound), each costing its rounds plus a fixed start-up and epilogue (kCtaFixedRounds); fewest slices on a tie. For
// Llama shapes at m = 1 that is one wave, 70-100% full. The former policy, "ctas" (cut K until about 4 CTAs per
// SM), left a partial second or third wave on most shapes: 2x H200, same call, 13B decode 187.0 -> 226.2 tokens/s,
// 70B 51.3 -> 54.2, 70B at TP=2 80.5 -> 89.2 (docs/kernel-notes.md). Q4TP_GEMV_PLAN=waves:N[:F] or ctas:N (read
// once) picks a policy, its CTA count (and fixed cost F) at run time, to compare them on a new card.
constexpr int kResidentCtas = 2 * 132;
constexpr std::int64_t kCtaFixedRounds = 1;
constexpr int kMaxStageBytes = 32 * 1024;  // activation slice in shared memory, all m rows
constexpr int kMaxSmemBytes = 48 * 1024;   // no opt-in attribute needed up to here
// Workspace: [tile counters, fixed size][fp32 partials]. The counter region has the same place and size for every
// layer, so layers of different widths sharing one workspace never see each other's partials as counters.
constexpr std::int64_t kMaxTiles = 4096;  // N <= 1M columns
constexpr std::size_t kCounterBytes = kMaxTiles * sizeof(unsigned int);
constexpr std::size_t kMaxPartialBytes = std::size_t{16} << 20;

std::int64_t round_up(std::int64_t v, std::int64_t to) {
    return (v + to - 1) / to * to;
}
std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
    return (a + b - 1) / b;
}

//! Bytes of one staged activation row of `blocks` k-blocks (64 B each), padded so consecutive rows start 64 bytes
//! apart modulo 128: the two rows a quarter-warp reads in one 16-byte shared load then hit disjoint banks.
int stage_row_bytes(int blocks) {
    int bytes = blocks * 64;
    if (bytes % 128 == 0) bytes += 64;
    return bytes;
}

std::size_t partial_bytes(const GptqGemvPlan& plan, int m, std::int64_t n) {
    if (plan.splits <= 1) return 0;
    return static_cast<std::size_t>(plan.splits) * static_cast<std::size_t>(m) *
           static_cast<std::size_t>(round_up(n, kTileN)) * sizeof(float);
}

struct GemvArgs {
    const uint4* qweight;
    const uint2* scales;         // 4 fp16 scales per lane-group, [G][N_pad / 4]
    const std::uint32_t* zeros;  // [G][N_pad / 8]
    const std::int32_t* perm;    // nullptr = identity; -1 = filler row
    const std::int32_t* block_groups;  // nullptr = block b in group b / group_blocks
    const __half* x;
    __half* y;
    const __half* residual;
    float* partials;         // [splits][m][N_pad]
    unsigned int* counters;  // [n_tiles]
    long long ldx;
    long long ldy;
    long long ldr;
    int n;
    int n_padded;
    int k_blocks;
    int tiles32;
    int group_blocks;  // group_size / 32
    int blocks_per_split;
    int splits;
    int stage_row_u4;  // staged row stride in 16-byte units
};

struct DequantArgs {
    const uint4* qweight;
    const uint2* scales;
    const std::uint32_t* zeros;
    const std::int32_t* perm;
    const std::int32_t* block_groups;
    __half* w;
    long long ldw;
    int column_begin;  // first column written (a multiple of kCtaN); w holds columns [column_begin, n)
    int n;
    int n_padded;
    int k_blocks;
    int tiles32;
    int group_blocks;
};

// ------------------------------------------------------------------------------------------------
// Device helpers

//! Position (in halves) of row c (0..31) of a k-block inside its staged 32-half B-fragment group: lane t reads
//! halves [8t, 8t+8) = rows (2t, 2t+1), (2t+8, 2t+9), (2t+16, 2t+17), (2t+24, 2t+25), i.e. the registers b0, b1
//! of the first and of the second k16 step.
__device__ __forceinline__ int staged_position(int c) {
    return 8 * ((c % 8) / 2) + 2 * (c / 8) + (c % 2);
}

//! fp16 bits (low half of `bits` when !high) to float.
__device__ __forceinline__ float half_bits_to_float(std::uint32_t bits, bool high) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(high ? bits >> 16 : bits & 0xFFFFu)));
}

// ------------------------------------------------------------------------------------------------
// Kernels

#ifdef Q4TP_GPTQ_GEMV_CTAS_PER_SM
#define Q4TP_GPTQ_GEMV_BOUNDS __launch_bounds__(kThreads, Q4TP_GPTQ_GEMV_CTAS_PER_SM)
#else
#define Q4TP_GPTQ_GEMV_BOUNDS __launch_bounds__(kThreads)
#endif

template <int M>
__global__ void Q4TP_GPTQ_GEMV_BOUNDS gptq_gemv_kernel(const GemvArgs a) {
    // Shared memory: [M][stage_row_u4] activations of this K slice in B-fragment order, then
    // [blocks_per_split][8] fp32 sums of each row's activations over each 32-row block (the zero-point term).
    extern __shared__ uint4 stage[];
    __shared__ unsigned int is_last_cta;

    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int g = lane / 4;  // mma groupID: A/D row (column of W) g and g + 8, B column (activation row) g
    const int t = lane % 4;  // mma thread-in-group: D columns (activation rows) 2t, 2t + 1
    const int tile = static_cast<int>(blockIdx.x) * kWarps + warp;
    const bool has_tile = tile < a.tiles32;
    const int split = static_cast<int>(blockIdx.y);
    const int blk0 = split * a.blocks_per_split;
    const int nblk = min(a.k_blocks - blk0, a.blocks_per_split);

    // Weight, scale and zero loads, one slot per block in flight. `ends` bit u: the block in slot u is the last of its
    // group (the group sum is folded into acc after it). Uniform layouts track the fetched block's group by counting;
    // padded ones read the table, one entry ahead. Every load is predicated (no branch), so all slots stay in flight
    // (see load_streaming_if).
    const uint4* wptr = a.qweight + (static_cast<long long>(tile) * a.k_blocks + blk0) * 32 + lane;
    const int s_stride = a.n_padded / 4;  // one group of scales, in uint2
    const int z_stride = a.n_padded / 8;  // one group of zero words
    const uint2* sbase = a.scales + tile * 8 + g;
    const std::uint32_t* zbase = a.zeros + tile * 4 + g / 2;
    const bool table = a.block_groups != nullptr;
    int fetch_group = table ? 0 : blk0 / a.group_blocks;
    int fetch_in_group = table ? 0 : blk0 - fetch_group * a.group_blocks;
    unsigned int ends = 0u;
    uint4 wq[kBlocksInFlight];
    uint2 sc[kBlocksInFlight];
    std::uint32_t zw[kBlocksInFlight];  // raw word: lane group g's 4 zero points are its half 16 (g & 1)
    // Padded layouts: entry[u] is the table entry of the block slot u fetches next, loaded one whole round (8
    // blocks) before its scale and zero loads need it, so the table's latency never stalls the stream.
    std::int32_t entry[kBlocksInFlight];
#pragma unroll
    for (int u = 0; u < kBlocksInFlight; ++u) entry[u] = table && u < nblk ? __ldg(a.block_groups + blk0 + u) : 0;
    // Issues the loads of slice block `b` into slot u (u == b % kBlocksInFlight).
    const auto fetch = [&](int u, int b) {
        const bool pred = has_tile && b < nblk;
        int group = fetch_group;
        bool last = false;
        if (table) {
            group = entry[u] & ~kGptqLastBlockOfGroup;
            last = entry[u] < 0;
            entry[u] = b + kBlocksInFlight < nblk ? __ldg(a.block_groups + blk0 + b + kBlocksInFlight) : 0;
        } else {
            last = ++fetch_in_group == a.group_blocks;
            if (last) {
                fetch_in_group = 0;
                ++fetch_group;
            }
        }
        load_streaming_if(wq[u], wptr + b * 32, pred);
        load_if(sc[u], sbase + static_cast<long long>(group) * s_stride, pred);
        load_if(zw[u], zbase + static_cast<long long>(group) * z_stride, pred);
        ends = last ? (ends | (1u << u)) : (ends & ~(1u << u));
    };
#pragma unroll
    for (int u = 0; u < kBlocksInFlight; ++u) {
        wq[u] = make_uint4(0u, 0u, 0u, 0u);
        sc[u] = make_uint2(0u, 0u);
        zw[u] = 0u;
        fetch(u, u);
    }
    // PDL (common/pdl.cuh): the weight loads above ran ahead while the kernel before this one drained; x, y, the
    // residual and the workspace belong to the chain and are touched only from here on.
    pdl_wait();
    pdl_launch_dependents();

    // Gather this slice of x (through perm) while the weight loads are in flight. Warp w stages whole 32-row blocks
    // (i = 32 w + lane + 256 j), so one shuffle reduction per row gives that block's sum x.
    __half* st = reinterpret_cast<__half*>(stage);
    float* block_sums = reinterpret_cast<float*>(stage + M * a.stage_row_u4);
    const int row_halves = a.stage_row_u4 * 8;
    for (int i = static_cast<int>(threadIdx.x); i < nblk * kBlockK; i += kThreads) {
        const int c = i % kBlockK;
        const int pos = (i - c) + staged_position(c);
        const int ks = blk0 * kBlockK + i;
        const long long ko = a.perm != nullptr ? __ldg(a.perm + ks) : ks;
        float sums[8] = {};
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const __half v = ko >= 0 ? __ldg(a.x + m * a.ldx + ko) : __float2half_rn(0.0f);
            st[m * row_halves + pos] = v;
            sums[m] = __half2float(v);
        }
#pragma unroll
        for (int m = 0; m < M; ++m) {
#pragma unroll
            for (int offset = 16; offset > 0; offset /= 2) sums[m] += __shfl_xor_sync(0xFFFFFFFFu, sums[m], offset);
        }
        if (c == 0) {
#pragma unroll
            for (int m = 0; m < 8; ++m) block_sums[(i / kBlockK) * 8 + m] = sums[m];  // rows >= M get 0
        }
    }
    __syncthreads();

    // acc: the lane's outputs; tmp: sum q x 2^-24 (rows g) / 2^-20 (rows g + 8) of the current group; xs: sum x of
    // the current group for activation rows 2t, 2t + 1.
    float acc[2][4] = {};
    float tmp[2][4] = {};
    float xs0 = 0.0f;
    float xs1 = 0.0f;
    if (has_tile) {
        for (int done = 0; done < nblk; done += kBlocksInFlight) {
#pragma unroll
            for (int u = 0; u < kBlocksInFlight; ++u) {
                const int b = done + u;
                if (b < nblk) {
                    uint4 xb = make_uint4(0u, 0u, 0u, 0u);
                    if (g < M) xb = stage[g * a.stage_row_u4 + b * 4 + t];
                    const float2 bs = *reinterpret_cast<const float2*>(block_sums + b * 8 + 2 * t);
                    xs0 += bs.x;
                    xs1 += bs.y;
                    const std::uint32_t words[4] = {wq[u].x, wq[u].y, wq[u].z, wq[u].w};
#pragma unroll
                    for (int p = 0; p < 2; ++p) {  // word 2p + s: n16 tile p, k16 step s
                        std::uint32_t a0[4];
                        std::uint32_t a1[4];
                        int4_codes_word(words[2 * p], a0);
                        int4_codes_word(words[2 * p + 1], a1);
                        mma_m16n8k16(tmp[p], a0, xb.x, xb.y);
                        mma_m16n8k16(tmp[p], a1, xb.z, xb.w);
                    }
                    // Group complete (or slice end): y += s 2^24 tmp - s z sum x, then start the next group.
                    if (((ends >> u) & 1u) != 0u || b + 1 == nblk) {
                        const std::uint32_t z = zw[u] >> (16 * (g & 1));
#pragma unroll
                        for (int p = 0; p < 2; ++p) {
#pragma unroll
                            for (int h = 0; h < 2; ++h) {  // h = 0: column 16p + g, h = 1: column 16p + g + 8
                                const int pos = 2 * p + h;
                                const float scale = half_bits_to_float(pos < 2 ? sc[u].x : sc[u].y, (pos & 1) != 0);
                                const float zero = static_cast<float>((z >> (4 * pos)) & 15u);
                                const float s_codes = scale * (h == 0 ? 16777216.0f : 1048576.0f);  // 2^24, 2^20
                                const float s_zero = scale * zero;
                                acc[p][2 * h] = fmaf(s_codes, tmp[p][2 * h], fmaf(-s_zero, xs0, acc[p][2 * h]));
                                acc[p][2 * h + 1] =
                                    fmaf(s_codes, tmp[p][2 * h + 1], fmaf(-s_zero, xs1, acc[p][2 * h + 1]));
                                tmp[p][2 * h] = 0.0f;
                                tmp[p][2 * h + 1] = 0.0f;
                            }
                        }
                        xs0 = 0.0f;
                        xs1 = 0.0f;
                    }
                }
                // Refill this slot with block b + 8 so that 8 loads stay in flight while the others are consumed.
                fetch(u, b + kBlocksInFlight);
            }
        }
    }

    // D fragment: acc[p][2h + e] is activation row 2t + e, column 32 tile + 16p + 8h + g.
    if (a.splits == 1) {
        if (has_tile) {
#pragma unroll
            for (int p = 0; p < 2; ++p) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int col = tile * kTileN + 16 * p + 8 * h + g;
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int m = 2 * t + e;
                        if (m < M && col < a.n) {
                            float v = acc[p][2 * h + e];
                            if (a.residual != nullptr) v += __half2float(a.residual[m * a.ldr + col]);
                            a.y[m * a.ldy + col] = __float2half_rn(v);
                        }
                    }
                }
            }
        }
        return;
    }

    if (has_tile) {
        float* out = a.partials + static_cast<long long>(split) * M * a.n_padded + tile * kTileN + g;
#pragma unroll
        for (int p = 0; p < 2; ++p) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int m = 2 * t + e;
                    if (m < M) out[static_cast<long long>(m) * a.n_padded + 16 * p + 8 * h] = acc[p][2 * h + e];
                }
            }
        }
    }
    // Last-CTA-reduces: publish the partials, count this slice in; the CTA that completes the count sums all
    // slices in slice order (bitwise deterministic whichever CTA it is) and clears the counter for the next launch.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int before = atomicAdd(a.counters + blockIdx.x, 1u);
        is_last_cta = before == static_cast<unsigned int>(a.splits - 1) ? 1u : 0u;
    }
    __syncthreads();
    if (is_last_cta == 0u) return;
    __threadfence();
    const int col = static_cast<int>(blockIdx.x) * kCtaN + static_cast<int>(threadIdx.x);
    if (col < a.n) {
#pragma unroll
        for (int m = 0; m < M; ++m) {
            float sum = 0.0f;
            const float* p = a.partials + static_cast<long long>(m) * a.n_padded + col;
            for (int sp = 0; sp < a.splits; ++sp) sum += __ldcg(p + static_cast<long long>(sp) * M * a.n_padded);
            if (a.residual != nullptr) sum += __half2float(a.residual[m * a.ldr + col]);
            a.y[m * a.ldy + col] = __float2half_rn(sum);
        }
    }
    if (threadIdx.x == 0) a.counters[blockIdx.x] = 0u;
}

//! One CTA: one 32-row k-block x 256 columns. Dequantizes through shared memory so that the output rows are
//! written with coalesced stores at their original row (perm undone).
__global__ void __launch_bounds__(kThreads) gptq_dequant_kernel(const DequantArgs a) {
    __shared__ __half tile_rows[kBlockK][kCtaN + 8];
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int b = static_cast<int>(blockIdx.x);
    const int cta_column = a.column_begin + static_cast<int>(blockIdx.y) * kCtaN;
    const int tile = cta_column / kTileN + warp;
    if (tile < a.tiles32) {
        const uint4 q = load_streaming(a.qweight + (static_cast<long long>(tile) * a.k_blocks + b) * 32 + lane);
        const int group =
            a.block_groups != nullptr ? (__ldg(a.block_groups + b) & ~kGptqLastBlockOfGroup) : b / a.group_blocks;
        const uint2 s = __ldg(a.scales + static_cast<long long>(group) * (a.n_padded / 4) + tile * 8 + g);
        const std::uint32_t z =
            __ldg(a.zeros + static_cast<long long>(group) * (a.n_padded / 8) + tile * 4 + g / 2) >> (16 * (g & 1));
        const std::uint32_t words[4] = {q.x, q.y, q.z, q.w};
        pdl_wait();  // the GEMM before may still read the scratch this kernel overwrites
#pragma unroll
        for (int j = 0; j < 4; ++j) {  // word j: n16 tile p = j / 2, k16 step j % 2
            const int p = j / 2;
#pragma unroll
            for (int nib = 0; nib < 8; ++nib) {
                const int h = int4_nibble_column(nib) / 8;
                const int pos = 2 * p + h;
                const float scale = half_bits_to_float(pos < 2 ? s.x : s.y, (pos & 1) != 0);
                const int zero = static_cast<int>((z >> (4 * pos)) & 15u);
                const int code = static_cast<int>((words[j] >> (4 * nib)) & 15u);
                const int row = 16 * (j % 2) + int4_nibble_k(nib, t);
                tile_rows[row][warp * kTileN + 16 * p + 8 * h + g] = int4_dequant(code, zero, scale);
            }
        }
    } else {
        pdl_wait();
    }
    pdl_launch_dependents();
    __syncthreads();
    for (int i = static_cast<int>(threadIdx.x); i < kBlockK * kCtaN; i += kThreads) {
        const int row = i / kCtaN;
        const int c = i % kCtaN;
        const int n = cta_column + c;
        if (n < a.n) {
            const int ks = b * kBlockK + row;
            const long long ko = a.perm != nullptr ? __ldg(a.perm + ks) : ks;
            // Filler rows have no place in W.
            if (ko >= 0) a.w[ko * a.ldw + (n - a.column_begin)] = tile_rows[row][c];
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Launch configuration

std::int64_t prepared_rows(const GptqWeights& w) {
    return w.k_rows == 0 ? w.k : w.k_rows;
}

bool is_aligned(const void* p, std::size_t to) {
    return reinterpret_cast<std::uintptr_t>(p) % to == 0;
}

bool ranges_overlap(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
    const auto a0 = reinterpret_cast<std::uintptr_t>(a);
    const auto b0 = reinterpret_cast<std::uintptr_t>(b);
    return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

void check_weights(const GptqWeights& w, const char* what) {
    Q4TP_CHECK(w.k > 0 && w.k % kBlockK == 0 && w.k <= (std::int64_t{1} << 30),
               what << ": K = " << w.k << ", expected a positive multiple of " << kBlockK << " up to 2^30");
    Q4TP_CHECK(w.n > 0 && w.n % 8 == 0 && w.n <= (std::int64_t{1} << 30),
               what << ": N = " << w.n << ", expected a positive multiple of 8 up to 2^30");
    Q4TP_CHECK(w.group_size > 0 && w.group_size % kBlockK == 0,
               what << ": group_size = " << w.group_size << ", expected the effective size (K for -1), a multiple of "
                    << kBlockK);
    Q4TP_CHECK(w.qweight != nullptr && is_aligned(w.qweight, 16),
               what << ": qweight " << static_cast<const void*>(w.qweight) << " must be non-null and 16-byte aligned");
    Q4TP_CHECK(w.scales != nullptr && is_aligned(w.scales, 8),
               what << ": scales " << static_cast<const void*>(w.scales) << " must be non-null and 8-byte aligned");
    Q4TP_CHECK(w.zeros != nullptr && is_aligned(w.zeros, 4),
               what << ": zeros " << static_cast<const void*>(w.zeros) << " must be non-null and 4-byte aligned");
    Q4TP_CHECK(w.perm == nullptr || is_aligned(w.perm, 4),
               what << ": perm " << static_cast<const void*>(w.perm) << " must be 4-byte aligned");
    const std::int64_t k_rows = prepared_rows(w);
    Q4TP_CHECK(k_rows >= w.k && k_rows % kBlockK == 0 && k_rows <= (std::int64_t{1} << 30),
               what << ": K_rows = " << w.k_rows << " for K = " << w.k << ", expected a multiple of " << kBlockK
                    << " >= K");
    // A block-group table may come with K_rows == K (every group present happened to fill whole blocks), but
    // filler rows exist only with a table, and a table only with the permutation that places the rows.
    Q4TP_CHECK((k_rows == w.k || w.block_groups != nullptr) && (w.block_groups == nullptr || w.perm != nullptr),
               what << ": K_rows " << k_rows << ", K " << w.k << ", block_groups "
                    << static_cast<const void*>(w.block_groups) << ", perm " << static_cast<const void*>(w.perm)
                    << ": filler rows need a block-group table, and a table needs the row permutation");
}

template <int M>
void launch_gemv(const GemvArgs& args, const GptqGemvPlan& plan, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned int>(plan.n_tiles), static_cast<unsigned int>(plan.splits));
    launch_kernel(gptq_gemv_kernel<M>, grid, dim3(kThreads), static_cast<std::size_t>(plan.smem_bytes), stream, args);
}

struct SplitPolicy {
    bool whole_waves = true;
    std::int64_t ctas = kResidentCtas;  // resident CTAs per wave, or the target CTA count of "ctas"
    std::int64_t fixed_rounds = kCtaFixedRounds;
};

SplitPolicy split_policy() {
    static const SplitPolicy policy = [] {
        SplitPolicy p;
        const char* env = std::getenv("Q4TP_GEMV_PLAN");
        if (env == nullptr) return p;
        const char* colon = std::strchr(env, ':');
        const long ctas = colon ? std::strtol(colon + 1, nullptr, 10) : 0;
        if (colon && ctas > 0 && std::strncmp(env, "waves", static_cast<std::size_t>(colon - env)) == 0) {
            p.whole_waves = true;
            p.ctas = ctas;
            const char* second = std::strchr(colon + 1, ':');  // waves:N:F, F the fixed cost in rounds
            if (second) p.fixed_rounds = std::max(0L, std::strtol(second + 1, nullptr, 10));
        } else if (colon && ctas > 0 && std::strncmp(env, "ctas", static_cast<std::size_t>(colon - env)) == 0) {
            p.whole_waves = false;
            p.ctas = ctas;
        }
        return p;
    }();
    return policy;
}

//! Rounds of 8 k-blocks per CTA so that n_tiles x splits is about `target` CTAs.
std::int64_t iters_for_target(int n_tiles, std::int64_t total_iters, std::int64_t max_iters, std::int64_t target) {
    const std::int64_t splits = std::clamp<std::int64_t>(ceil_div(target, n_tiles), 1, total_iters);
    return std::min(ceil_div(total_iters, splits), max_iters);
}

//! Rounds per CTA that minimise waves x (rounds + fixed cost) with `resident` CTAs per wave; ties keep more rounds
//! per CTA (fewer slices to reduce).
std::int64_t iters_for_whole_waves(
    int n_tiles, std::int64_t total_iters, std::int64_t max_iters, std::int64_t resident, std::int64_t fixed_rounds) {
    std::int64_t best = 1, best_cost = -1;
    for (std::int64_t iters = std::min(total_iters, max_iters); iters >= 1; --iters) {
        const std::int64_t ctas = n_tiles * ceil_div(total_iters, iters);
        const std::int64_t cost = ceil_div(ctas, resident) * (iters + fixed_rounds);
        if (best_cost < 0 || cost < best_cost) {
            best = iters;
            best_cost = cost;
        }
    }
    return best;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Launchers

GptqGemvPlan gptq_gemv_plan(int m, std::int64_t k, std::int64_t n) {
    Q4TP_CHECK(m >= 1 && m <= kGptqGemvMaxM, "gptq_gemv: m = " << m << ", expected 1.." << kGptqGemvMaxM);
    Q4TP_CHECK(k > 0 && k % kBlockK == 0, "gptq_gemv: K = " << k << ", expected a positive multiple of " << kBlockK);
    Q4TP_CHECK(n > 0 && n % 8 == 0, "gptq_gemv: N = " << n << ", expected a positive multiple of 8");
    GptqGemvPlan plan;
    const std::int64_t k_blocks = k / kBlockK;
    plan.n_tiles = static_cast<int>(ceil_div(round_up(n, kTileN), kCtaN));
    const std::int64_t total_iters = ceil_div(k_blocks, kBlocksInFlight);
    const std::int64_t max_iters = std::max<std::int64_t>(1, kMaxStageBytes / (m * kBlocksInFlight * 64));
    const SplitPolicy policy = split_policy();
    const std::int64_t iters = policy.whole_waves ? iters_for_whole_waves(plan.n_tiles, total_iters, max_iters,
                                                                          policy.ctas, policy.fixed_rounds)
                                                  : iters_for_target(plan.n_tiles, total_iters, max_iters, policy.ctas);
    plan.blocks_per_split = static_cast<int>(iters * kBlocksInFlight);
    plan.splits = static_cast<int>(ceil_div(k_blocks, plan.blocks_per_split));
    if (partial_bytes(plan, m, n) > kMaxPartialBytes) {
        // Fewer, longer slices so the partials fit the fixed workspace (never for Llama shapes; see the notes).
        const std::int64_t row_bytes = static_cast<std::int64_t>(m) * round_up(n, kTileN) * 4;
        const std::int64_t max_splits =
            std::max<std::int64_t>(1, static_cast<std::int64_t>(kMaxPartialBytes) / row_bytes);
        plan.blocks_per_split = static_cast<int>(round_up(ceil_div(k_blocks, max_splits), kBlocksInFlight));
        plan.splits = static_cast<int>(ceil_div(k_blocks, plan.blocks_per_split));
    }
    plan.smem_bytes = m * stage_row_bytes(plan.blocks_per_split) + plan.blocks_per_split * 8 * 4;
    Q4TP_CHECK(plan.n_tiles <= kMaxTiles,
               "gptq_gemv: N = " << n << " needs " << plan.n_tiles << " column tiles, more than " << kMaxTiles);
    Q4TP_CHECK(plan.smem_bytes <= kMaxSmemBytes && plan.splits <= 65535,
               "gptq_gemv: m " << m << " K " << k << " N " << n << " needs " << plan.splits << " K-slices of "
                               << plan.blocks_per_split * kBlockK << " rows (" << plan.smem_bytes
                               << " bytes of shared memory), over the limits 65535 and " << kMaxSmemBytes);
    return plan;
}

std::size_t gptq_gemv_workspace_bytes(int max_m, std::int64_t k, std::int64_t n) {
    Q4TP_CHECK(max_m >= 1 && max_m <= kGptqGemvMaxM,
               "gptq_gemv_workspace_bytes: max_m = " << max_m << ", expected 1.." << kGptqGemvMaxM);
    std::size_t partials = 0;
    for (int m = 1; m <= max_m; ++m) partials = std::max(partials, partial_bytes(gptq_gemv_plan(m, k, n), m, n));
    return kCounterBytes + partials;
}

std::size_t gptq_gemv_workspace_bytes() {
    return kCounterBytes + kMaxPartialBytes;
}

void gptq_gemv_workspace_init(void* workspace, std::size_t bytes, cudaStream_t stream) {
    Q4TP_CHECK(workspace != nullptr && bytes > 0,
               "gptq_gemv_workspace_init: workspace " << workspace << " of " << bytes << " bytes");
    Q4TP_CUDA_CHECK(cudaMemsetAsync(workspace, 0, bytes, stream));
}

void gptq_gemv(const GptqGemvParams& p, cudaStream_t stream) {
    const GptqWeights& w = p.weights;
    check_weights(w, "gptq_gemv");
    const std::int64_t k_rows = prepared_rows(w);
    const GptqGemvPlan plan = gptq_gemv_plan(p.m, k_rows, w.n);
    const std::int64_t ldx = p.ldx == 0 ? w.k : p.ldx;
    const std::int64_t ldy = p.ldy == 0 ? w.n : p.ldy;
    const std::int64_t ldr = p.ldr == 0 ? w.n : p.ldr;
    Q4TP_CHECK(p.x != nullptr && ldx >= w.k, "gptq_gemv: x " << static_cast<const void*>(p.x) << " with ldx " << p.ldx
                                                             << ", expected non-null and ldx >= K = " << w.k);
    Q4TP_CHECK(p.y != nullptr && ldy >= w.n, "gptq_gemv: y " << static_cast<const void*>(p.y) << " with ldy " << p.ldy
                                                             << ", expected non-null and ldy >= N = " << w.n);
    const std::size_t x_bytes = static_cast<std::size_t>((p.m - 1) * ldx + w.k) * sizeof(__half);
    const std::size_t y_bytes = static_cast<std::size_t>((p.m - 1) * ldy + w.n) * sizeof(__half);
    Q4TP_CHECK(!ranges_overlap(p.x, x_bytes, p.y, y_bytes),
               "gptq_gemv: x and y overlap; every CTA reads x while others write y");
    if (p.residual != nullptr) {
        Q4TP_CHECK(ldr >= w.n, "gptq_gemv: residual ldr = " << p.ldr << ", expected >= N = " << w.n);
        const std::size_t r_bytes = static_cast<std::size_t>((p.m - 1) * ldr + w.n) * sizeof(__half);
        Q4TP_CHECK(!ranges_overlap(p.residual, r_bytes, p.y, y_bytes) || (p.residual == p.y && ldr == ldy),
                   "gptq_gemv: residual overlaps y without being y itself with ldr == ldy");
    }
    const std::size_t need = kCounterBytes + partial_bytes(plan, p.m, w.n);
    Q4TP_CHECK(p.workspace != nullptr && is_aligned(p.workspace, 16) && p.workspace_bytes >= need,
               "gptq_gemv: workspace " << p.workspace << " of " << p.workspace_bytes
                                       << " bytes, expected 16-byte aligned "
                                       << "and >= " << need << " (gptq_gemv_workspace_bytes(" << p.m << ", " << k_rows
                                       << ", " << w.n << "))");

    GemvArgs args{};
    args.qweight = reinterpret_cast<const uint4*>(w.qweight);
    args.scales = reinterpret_cast<const uint2*>(w.scales);
    args.zeros = w.zeros;
    args.perm = w.perm;
    args.block_groups = w.block_groups;
    args.x = p.x;
    args.y = p.y;
    args.residual = p.residual;
    args.counters = static_cast<unsigned int*>(p.workspace);
    args.partials = reinterpret_cast<float*>(static_cast<char*>(p.workspace) + kCounterBytes);
    args.ldx = ldx;
    args.ldy = ldy;
    args.ldr = ldr;
    args.n = static_cast<int>(w.n);
    args.n_padded = static_cast<int>(round_up(w.n, kTileN));
    args.k_blocks = static_cast<int>(k_rows / kBlockK);
    args.tiles32 = args.n_padded / kTileN;
    args.group_blocks = static_cast<int>(std::min<std::int64_t>(w.group_size, w.k) / kBlockK);
    args.blocks_per_split = plan.blocks_per_split;
    args.splits = plan.splits;
    args.stage_row_u4 = stage_row_bytes(plan.blocks_per_split) / 16;

    switch (p.m) {
        case 1:
            launch_gemv<1>(args, plan, stream);
            break;
        case 2:
            launch_gemv<2>(args, plan, stream);
            break;
        case 3:
            launch_gemv<3>(args, plan, stream);
            break;
        case 4:
            launch_gemv<4>(args, plan, stream);
            break;
        case 5:
            launch_gemv<5>(args, plan, stream);
            break;
        case 6:
            launch_gemv<6>(args, plan, stream);
            break;
        case 7:
            launch_gemv<7>(args, plan, stream);
            break;
        case 8:
            launch_gemv<8>(args, plan, stream);
            break;
        default:
            Q4TP_THROW("gptq_gemv: m = " << p.m << ", expected 1.." << kGptqGemvMaxM);
    }
}

void gptq_dequantize(const GptqDequantParams& p, cudaStream_t stream) {
    const GptqWeights& w = p.weights;
    check_weights(w, "gptq_dequantize");
    const std::int64_t columns = p.columns == 0 ? w.n - p.column_begin : p.columns;
    Q4TP_CHECK(p.column_begin >= 0 && p.column_begin % kGptqDequantColumnStep == 0 && columns > 0 &&
                   p.column_begin + columns <= w.n,
               "gptq_dequantize: columns [" << p.column_begin << ", " << p.column_begin + columns << ") of N = " << w.n
                                            << ", expected a start at a multiple of " << kGptqDequantColumnStep);
    Q4TP_CHECK(p.w != nullptr && p.ldw >= columns, "gptq_dequantize: output "
                                                       << static_cast<const void*>(p.w) << " with ldw " << p.ldw
                                                       << ", expected non-null and ldw >= " << columns << " columns");
    DequantArgs args{};
    args.qweight = reinterpret_cast<const uint4*>(w.qweight);
    args.scales = reinterpret_cast<const uint2*>(w.scales);
    args.zeros = w.zeros;
    args.perm = w.perm;
    args.block_groups = w.block_groups;
    args.w = p.w;
    args.ldw = p.ldw;
    args.column_begin = static_cast<int>(p.column_begin);
    args.n = static_cast<int>(p.column_begin + columns);  // the kernel writes columns [column_begin, n)
    args.n_padded = static_cast<int>(round_up(w.n, kTileN));
    args.k_blocks = static_cast<int>(prepared_rows(w) / kBlockK);
    args.tiles32 = args.n_padded / kTileN;
    args.group_blocks = static_cast<int>(std::min<std::int64_t>(w.group_size, w.k) / kBlockK);
    const std::int64_t n_tiles = ceil_div(columns, kCtaN);
    Q4TP_CHECK(n_tiles <= 65535, "gptq_dequantize: N = " << w.n << " needs " << n_tiles << " column tiles, over 65535");
    const dim3 grid(static_cast<unsigned int>(args.k_blocks), static_cast<unsigned int>(n_tiles));
    launch_kernel(gptq_dequant_kernel, grid, dim3(kThreads), 0, stream, args);
}

}  // namespace q4tp::kernels::cuda
