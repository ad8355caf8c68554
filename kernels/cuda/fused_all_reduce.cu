// One-shot "Lamport" all-reduce of fp16 rows across the GPUs of one node, plain and fused with the residual add and
// RMSNorm (docs/kernels.md section 6; the design TensorRT-LLM and FlashInfer call Lamport one-shot).
//
// Layout. Each rank owns one allocation, mapped into every other rank through CUDA IPC:
//   buffers [3][ranks][max_tokens][hidden] fp16, slot [b][s] = rank s's rows for a call that uses buffer b.
// Every element that holds no live data is -0.0 (0x8000). The data is its own flag: a partial value of -0.0 is sent
// as +0.0 (the same summand), so a reader that sees no -0.0 in a 16-byte vector knows all of it has arrived.
//
// One call, one block per row r (m blocks, each of the threads rms_norm would use for this hidden size):
//   1. push: read partial[r], turn -0.0 into +0.0, store it into slot [b][rank] row r of every PEER's buffer b (16-byte
//      volatile stores over NVLink). This rank's own contribution stays in registers and is never written to its own
//      buffer, so its own slot stays -0.0 forever and needs no clearing.
//   2. re-poison: write -0.0 over the previous call's peer slots in this rank's own buffer (the rows that call used),
//      shared out over all blocks of the call. This runs while the peers' data is still on its way.
//   3. poll: volatile 16-byte loads of slot [b][s] row r of the OWN buffer, peer after peer, all of a thread's vectors
//      of one peer in flight together, reloaded until none holds a -0.0; the fp32 sum accumulates in rank order
//      (bitwise identical on every rank) and is rounded once to fp16.
//   4. fused only: residual = fp16(residual + sum), the fp32 sum of squares of the stored fp16 values in exactly the
//      order of kernels/cuda/rms_norm.cu (the block size, per-thread stride, reduction and rounding of
//      common/row_norm.cuh, which both use), so the output equals all-reduce + add_inplace + rms_norm bit for bit;
//      then out = fp16(gain * fp16(x * inv_rms)).
//   5. the last block to finish advances the device state: buffer index (mod 3), the rows to re-poison next time.
//
// Why three buffers, and why no fences. A rank pushes call i into buffer i % 3 of each peer only after finishing call
// i - 1, which needed that peer's call i - 1 data, which the peer pushed only after its call i - 2 kernel had ended,
// and that kernel re-poisoned buffer (i - 3) % 3 = i % 3. So the target is clean before the first push lands. While a
// rank is still in call i, a fast peer may already push call i + 1 into buffer (i + 1) % 3 (clean: re-poisoned in call
// i - 1), whereas the rank itself re-poisons (i - 1) % 3, whose data it consumed entirely in call i - 1 and which no
// peer writes again before call i + 2. The three buffers never collide and nothing but the data needs ordering. All
// state (index, rows to clear, arrival counter) is in device memory and changes only on the device: a captured CUDA
// graph replays the calls with no host involvement.
//
// Each 16-bit half is checked on its own, so the result is right even if a 16-byte store arrived in pieces. A call
// whose peer data does not arrive within timeout_ns gives up, records the missing rank in the sticky timed-out word
// (later calls then do not wait at all) and finishes with garbage rather than hanging; the host reads the word.
//
// PDL (common/pdl.cuh): the peer table and the gain are read before pdl_wait(); the state, the partial and the
// residual after it, and the dependents are released right after it: every block is resident by then, so the next
// kernel's blocks never keep one of ours from starting.
//
// Every block must be resident at once (a block polls for data that peers' blocks of the same row push): at most 128
// blocks of at most 512 threads, which one H100 holds with room to spare.
#include "kernels/cuda/fused_all_reduce.h"

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
//! Two fp16 -0.0 in one 32-bit word.
constexpr std::uint32_t kNegativeZeroPair = 0x80008000u;
constexpr std::uint32_t kNegativeZero = 0x8000u;
//! Spins between two reads of the global timer (the timeout is seconds; the timer read is not free).
constexpr unsigned kSpinsPerClockCheck = 256;

// ---------------------------------------------------------------------------------------------------------------
// Device helpers

//! Loads that bypass L1 and are never merged or hoisted by the compiler: what a peer's NVLink store becomes
//! visible to.
__device__ __forceinline__ uint4 load_volatile(const uint4* ptr) {
    uint4 v;
    asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(ptr));
    return v;
}

__device__ __forceinline__ void store_volatile(uint4* ptr, const uint4& v) {
    asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(ptr), "r"(v.x), "r"(v.y), "r"(v.z),
                 "r"(v.w));
}

__device__ __forceinline__ std::uint64_t global_time_ns() {
    std::uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ bool word_has_negative_zero(std::uint32_t w) {
    return (w & 0xFFFFu) == kNegativeZero || (w >> 16) == kNegativeZero;
}

__device__ __forceinline__ bool has_negative_zero(const uint4& v) {
    return word_has_negative_zero(v.x) || word_has_negative_zero(v.y) || word_has_negative_zero(v.z) ||
           word_has_negative_zero(v.w);
}

__device__ __forceinline__ std::uint32_t clear_negative_zero(std::uint32_t w) {
    if ((w & 0xFFFFu) == kNegativeZero) w &= 0xFFFF0000u;
    if ((w >> 16) == kNegativeZero) w &= 0x0000FFFFu;
    return w;
}

__device__ __forceinline__ uint4 clear_negative_zero(const uint4& v) {
    return make_uint4(clear_negative_zero(v.x), clear_negative_zero(v.y), clear_negative_zero(v.z),
                      clear_negative_zero(v.w));
}

//! Half j (0..7, memory order) of a 16-byte vector, as float.
__device__ __forceinline__ float half_at(const uint4& v, int j) {
    const int word = j / 2;
    const std::uint32_t w = word == 0 ? v.x : (word == 1 ? v.y : (word == 2 ? v.z : v.w));
    const auto bits = static_cast<unsigned short>(j % 2 == 0 ? (w & 0xFFFFu) : (w >> 16));
    return __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ std::uint32_t pack_pair(__half lo, __half hi) {
    return static_cast<std::uint32_t>(__half_as_ushort(lo)) | (static_cast<std::uint32_t>(__half_as_ushort(hi)) << 16);
}

__device__ __forceinline__ uint4 pack(const __half (&h)[kVecWidth]) {
    return make_uint4(pack_pair(h[0], h[1]), pack_pair(h[2], h[3]), pack_pair(h[4], h[5]), pack_pair(h[6], h[7]));
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels

struct KernelArgs {
    void* const* peer_buffers;  // device [ranks]
    std::uint32_t* state;       // device [kLamportStateWords]
    int rank;
    int ranks;
    int hidden;
    std::int64_t slot_vecs;  // max_tokens * hidden / 8
    std::uint64_t timeout_ns;
    const __half* partial;  // [m][hidden]
    __half* residual;       // [m][hidden], fused only
    const __half* gain;     // [hidden], fused only
    float eps;              // fused only
    __half* out;            // [m][hidden]
};

//! kVecs: vectors of the row per thread, ceil(vec_count / blockDim.x). Every load is issued for all kVecs with the
//! index clamped into the row (a thread past the end re-reads the last vector and discards it) rather than inside an
//! `if`: a predicated-off load would make the compiler wait for each load before issuing the next (common/ptx.cuh).
template <bool kFused, int kVecs>
__global__ void __launch_bounds__(kRowNormMaxThreads) lamport_kernel(const KernelArgs a) {
    const int vec_count = a.hidden / kVecWidth;
    const std::int64_t row_vec = static_cast<std::int64_t>(blockIdx.x) * vec_count;
    const std::int64_t buffer_vecs = a.ranks * a.slot_vecs;
    int vec[kVecs];     // the vectors of the row this thread owns, clamped into the row
    bool valid[kVecs];  // false for a clamped duplicate
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
        const int v = static_cast<int>(threadIdx.x) + k * static_cast<int>(blockDim.x);
        valid[k] = v < vec_count;
        vec[k] = valid[k] ? v : vec_count - 1;
    }

    // Before pdl_wait() only what no kernel writes (common/pdl.cuh): the peer table (filled once at setup) and, for the
    // fused variant, the gain. They stream in while the previous kernel drains.
    uint4* const own = static_cast<uint4*>(a.peer_buffers[a.rank]);
    uint4* peers[kLamportMaxRanks];
#pragma unroll
    for (int s = 0; s < kLamportMaxRanks; ++s) {
        peers[s] = s < a.ranks && s != a.rank ? static_cast<uint4*>(a.peer_buffers[s]) : nullptr;
    }
    uint4 w[kVecs];
    if constexpr (kFused) {
#pragma unroll
        for (int k = 0; k < kVecs; ++k) w[k] = reinterpret_cast<const uint4*>(a.gain)[vec[k]];
    }
    pdl_wait();
    pdl_launch_dependents();

    // Where this call sits in the rotation (the previous call, maybe this kernel's own, wrote it), this rank's row and,
    // for the fused variant, the residual row: all loads in flight together. Every block reads the state before it
    // arrives at the end, and only the last block to arrive changes it, so all blocks of one call agree.
    const std::uint32_t index = a.state[kLamportStateIndex];
    const std::uint32_t previous_rows = a.state[kLamportStatePreviousRows];
    bool may_wait = a.state[kLamportStateTimedOut] == 0;
    uint4 mine[kVecs];
    uint4 x[kVecs];
#pragma unroll
    for (int k = 0; k < kVecs; ++k) mine[k] = reinterpret_cast<const uint4*>(a.partial)[row_vec + vec[k]];
    if constexpr (kFused) {
#pragma unroll
        for (int k = 0; k < kVecs; ++k) x[k] = reinterpret_cast<const uint4*>(a.residual)[row_vec + vec[k]];
    }

    // 1. Push this rank's row into its slot of every peer's current buffer.
    const std::int64_t push_offset = index * buffer_vecs + a.rank * a.slot_vecs + row_vec;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
        mine[k] = clear_negative_zero(mine[k]);
        if (!valid[k]) continue;
#pragma unroll
        for (int s = 0; s < kLamportMaxRanks; ++s) {
            if (peers[s] != nullptr) store_volatile(peers[s] + push_offset + vec[k], mine[k]);
        }
    }

    // 2. Re-poison the peer slots of the previous call's buffer (this rank consumed all of it in that call) while the
    //    peers' data is on its way.
    if (previous_rows > 0) {
        const std::uint32_t previous = (index + kLamportBuffers - 1) % kLamportBuffers;
        const std::int64_t count = static_cast<std::int64_t>(previous_rows) * vec_count;
        const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
        const uint4 poison = make_uint4(kNegativeZeroPair, kNegativeZeroPair, kNegativeZeroPair, kNegativeZeroPair);
        for (int s = 0; s < a.ranks; ++s) {
            if (s == a.rank) continue;
            uint4* slot = own + previous * buffer_vecs + s * a.slot_vecs;
            for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
                 i += stride) {
                slot[i] = poison;
            }
        }
    }

    // 3. The fp32 sum in rank order: this rank's contribution from registers, each peer's from the own buffer once
    //    all of its vectors for this thread have arrived (all kVecs loads in flight together, peer after peer).
    float acc[kVecs][kVecWidth];
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
#pragma unroll
        for (int j = 0; j < kVecWidth; ++j) acc[k][j] = 0.0f;
    }
    const uint4* current = own + index * buffer_vecs + row_vec;
    unsigned spins = 0;
    std::uint64_t wait_start = 0;
#pragma unroll
    for (int s = 0; s < kLamportMaxRanks; ++s) {
        if (s >= a.ranks) break;
        uint4 got[kVecs];
        if (peers[s] == nullptr) {
#pragma unroll
            for (int k = 0; k < kVecs; ++k) got[k] = mine[k];
        } else {
            const uint4* slot = current + s * a.slot_vecs;
#pragma unroll
            for (int k = 0; k < kVecs; ++k) got[k] = load_volatile(slot + vec[k]);
            while (may_wait) {
                bool missing = false;
#pragma unroll
                for (int k = 0; k < kVecs; ++k) missing |= has_negative_zero(got[k]);
                if (!missing) break;
                if (++spins % kSpinsPerClockCheck == 0) {
                    const std::uint64_t now = global_time_ns();
                    if (wait_start == 0) {
                        wait_start = now;
                    } else if (now - wait_start > a.timeout_ns) {
                        atomicCAS(&a.state[kLamportStateTimedOut], 0u, static_cast<std::uint32_t>(s + 1));
                        may_wait = false;
                        break;
                    }
                }
#pragma unroll
                for (int k = 0; k < kVecs; ++k) got[k] = load_volatile(slot + vec[k]);
            }
        }
#pragma unroll
        for (int k = 0; k < kVecs; ++k) {
#pragma unroll
            for (int j = 0; j < kVecWidth; ++j) acc[k][j] += half_at(got[k], j);
        }
    }

    // 4. Round the sum; plain: store it; fused: residual add, sum of squares in rms_norm.cu's order, norm.
    auto* out = reinterpret_cast<uint4*>(a.out) + row_vec;
    float sum_sq = 0.0f;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
        __half sum[kVecWidth];
#pragma unroll
        for (int j = 0; j < kVecWidth; ++j) sum[j] = __float2half_rn(acc[k][j]);
        if constexpr (kFused) {
            __half updated[kVecWidth];
#pragma unroll
            for (int j = 0; j < kVecWidth; ++j) {
                updated[j] = __float2half_rn(half_at(x[k], j) + __half2float(sum[j]));
                if (valid[k]) accumulate_square(sum_sq, updated[j]);
            }
            x[k] = pack(updated);
            if (valid[k]) reinterpret_cast<uint4*>(a.residual)[row_vec + vec[k]] = x[k];
        } else {
            if (valid[k]) out[vec[k]] = pack(sum);
        }
    }

    if constexpr (kFused) {
        const float inv_rms = row_inv_rms(sum_sq, static_cast<float>(a.hidden), a.eps);
#pragma unroll
        for (int k = 0; k < kVecs; ++k) {
            if (!valid[k]) continue;
            __half o[kVecWidth];
#pragma unroll
            for (int j = 0; j < kVecWidth; ++j) o[j] = rms_scale(half_at(x[k], j), half_at(w[k], j), inv_rms);
            out[vec[k]] = pack(o);
        }
    }

    // 5. The last block of the call advances the rotation for the next call. No fence: the blocks' reads of the state
    //    have long returned (their values were used), and the next call sees these writes at the kernel boundary.
    __syncthreads();
    if (threadIdx.x == 0) {
        const bool last = gridDim.x == 1 || atomicAdd(&a.state[kLamportStateArrived], 1u) + 1 == gridDim.x;
        if (last) {
            a.state[kLamportStateArrived] = 0;
            a.state[kLamportStatePreviousRows] = gridDim.x;
            a.state[kLamportStateIndex] = (index + 1) % kLamportBuffers;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Launch configuration

bool aligned16(const void* p) {
    return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

void check_group(const char* op, const LamportGroup& g, std::int64_t m) {
    Q4TP_CHECK(g.peer_buffers != nullptr && g.state != nullptr, op << ": null peer table or state pointer");
    Q4TP_CHECK(g.ranks >= 1 && g.ranks <= kLamportMaxRanks,
               op << ": ranks = " << g.ranks << ", expected 1.." << kLamportMaxRanks);
    Q4TP_CHECK(g.rank >= 0 && g.rank < g.ranks, op << ": rank = " << g.rank << ", expected 0.." << g.ranks - 1);
    Q4TP_CHECK(g.max_tokens >= 1 && g.max_tokens <= kLamportMaxTokens,
               op << ": max_tokens = " << g.max_tokens << ", expected 1.." << kLamportMaxTokens);
    Q4TP_CHECK(g.hidden >= kVecWidth && g.hidden <= kLamportMaxHidden && g.hidden % kVecWidth == 0,
               op << ": hidden = " << g.hidden << ", expected a multiple of " << kVecWidth << " in [" << kVecWidth
                  << ", " << kLamportMaxHidden << "]");
    Q4TP_CHECK(g.timeout_ns > 0, op << ": timeout_ns = 0, expected > 0");
    Q4TP_CHECK(m >= 1 && m <= g.max_tokens, op << ": m = " << m << ", expected 1.." << g.max_tokens
                                               << " (the group's max_tokens; larger messages go to NCCL)");
}

//! One block per row, rms_norm's block size, kVecs = the row's vectors per thread (1, 2 or 4).
template <bool kFused>
void launch(const LamportGroup& g, const KernelArgs& args, std::int64_t m, cudaStream_t stream) {
    const std::int64_t vec_count = g.hidden / kVecWidth;
    const unsigned int threads = row_norm_threads(vec_count);  // rms_norm.cu's, for its summation order
    const std::int64_t per_thread = (vec_count + threads - 1) / threads;
    const dim3 grid(static_cast<unsigned int>(m));
    switch (per_thread) {
        case 1:
            launch_kernel(lamport_kernel<kFused, 1>, grid, dim3(threads), 0, stream, args);
            break;
        case 2:
            launch_kernel(lamport_kernel<kFused, 2>, grid, dim3(threads), 0, stream, args);
            break;
        case 3:  // e.g. hidden 12288: the fourth vector of some threads is a clamped duplicate
        case 4:
            launch_kernel(lamport_kernel<kFused, 4>, grid, dim3(threads), 0, stream, args);
            break;
        default:
            Q4TP_THROW("lamport all-reduce: " << per_thread << " vectors per thread, expected at most 4");
    }
}

KernelArgs base_args(const LamportGroup& g) {
    KernelArgs a{};
    a.peer_buffers = g.peer_buffers;
    a.state = g.state;
    a.rank = g.rank;
    a.ranks = g.ranks;
    a.hidden = static_cast<int>(g.hidden);
    a.slot_vecs = g.max_tokens * g.hidden / kVecWidth;
    a.timeout_ns = g.timeout_ns;
    return a;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launchers

void lamport_all_reduce(const LamportGroup& group, __half* inout, std::int64_t m, cudaStream_t stream) {
    check_group("lamport_all_reduce", group, m);
    Q4TP_CHECK(inout != nullptr, "lamport_all_reduce: null inout pointer");
    Q4TP_CHECK(aligned16(inout), "lamport_all_reduce: inout is not 16-byte aligned");
    KernelArgs a = base_args(group);
    a.partial = inout;
    a.out = inout;
    launch<false>(group, a, m, stream);
}

void lamport_all_reduce_add_rms_norm(const LamportGroup& group, const LamportAddRmsNormParams& p, cudaStream_t stream) {
    const char* op = "lamport_all_reduce_add_rms_norm";
    check_group(op, group, p.m);
    Q4TP_CHECK(p.partial && p.residual && p.gain && p.out, op << ": null partial, residual, gain or out pointer");
    Q4TP_CHECK(aligned16(p.partial) && aligned16(p.residual) && aligned16(p.gain) && aligned16(p.out),
               op << ": partial, residual, gain and out must be 16-byte aligned");
    Q4TP_CHECK(p.out != p.residual, op << ": out aliases residual, expected a separate buffer (the sum is kept)");
    Q4TP_CHECK(std::isfinite(p.eps) && p.eps >= 0.0f, op << ": eps = " << p.eps << ", expected a finite value >= 0");
    KernelArgs a = base_args(group);
    a.partial = p.partial;
    a.residual = p.residual;
    a.gain = p.gain;
    a.eps = p.eps;
    a.out = p.out;
    launch<true>(group, a, p.m, stream);
}

}  // namespace q4tp::kernels::cuda
