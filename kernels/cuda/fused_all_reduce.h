//! One-shot "Lamport" all-reduce of fp16 rows over peer-mapped buffers (CUDA IPC), plain and fused with the residual
//! add and the next RMSNorm (docs/kernels.md section 6). Raw device pointers only: parallel/ipc_all_reduce.h owns the
//! buffers and the exchange of their handles, core/model calls these launchers.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace q4tp::kernels::cuda {

//! Ranks one group may span: the size of the peer table.
inline constexpr int kLamportMaxRanks = 8;
//! Buffers per rank, used in rotation: current, next (already clean), previous (re-poisoned by the current call).
inline constexpr int kLamportBuffers = 3;
//! Rows one call may reduce (decode is m <= 8; larger messages go to NCCL).
inline constexpr std::int64_t kLamportMaxTokens = 128;
//! Longest row: 512 threads x 4 vectors of 8 halves, held in registers for the norm.
inline constexpr std::int64_t kLamportMaxHidden = 16384;

//! The words of a rank's device state (std::uint32_t each, zero at setup; every call reads and advances them).
inline constexpr int kLamportStateIndex = 0;         //!< which of the 3 buffers the next call uses
inline constexpr int kLamportStatePreviousRows = 1;  //!< rows the previous call reduced: what the next re-poisons
inline constexpr int kLamportStateArrived = 2;       //!< blocks of the running call that finished (the last advances)
inline constexpr int kLamportStateTimedOut = 3;      //!< 0, or 1 + the rank a call gave up waiting for (sticky)
inline constexpr int kLamportStateWords = 4;

//! One rank's view of the group, fixed at setup. Rank p's buffers (one allocation, mapped into every rank):
//!   [kLamportBuffers][ranks][max_tokens][hidden] fp16, slot [b][s] holding rank s's rows of a call that uses b;
//!   every element not holding live data is -0.0 (0x8000), which is how a reader knows a value has not arrived.
struct LamportGroup {
    void* const* peer_buffers = nullptr;  //!< device [ranks]: base of rank p's buffers as mapped here (own included)
    std::uint32_t* state = nullptr;       //!< device [kLamportStateWords], this rank's own
    int rank = 0;                         //!< this rank, < ranks
    int ranks = 1;                        //!< 1..kLamportMaxRanks
    std::int64_t max_tokens = 0;          //!< rows per slot, 1..kLamportMaxTokens; equal on every rank
    std::int64_t hidden = 0;              //!< halves per row, a multiple of 8 up to kLamportMaxHidden; equal everywhere
    std::uint64_t timeout_ns = 0;         //!< a call that waits longer for a peer gives up and sets the timed-out word
};

//! inout [m][hidden] <- fp16(sum over ranks, in rank order, in fp32) of every rank's inout. Every rank calls it with
//! the same m (1..max_tokens) in the same order of calls; the results are bitwise identical on every rank.
void lamport_all_reduce(const LamportGroup& group, __half* inout, std::int64_t m, cudaStream_t stream);

//! The row-parallel epilogue of a decoder block in one kernel, per row r < m and column j:
//!   s = fp16(sum over ranks of partial[r][j]) (as lamport_all_reduce), residual[r][j] = fp16(residual + s),
//!   out[r][j] = fp16(gain[j] * fp16(residual[r][j] * rsqrt(mean_j(residual[r][j]^2) + eps))),
//! with the rounding steps and the sum-of-squares order of kernels/cuda add_inplace followed by rms_norm, so it equals
//! an fp16 all-reduce (NCCL at 2 ranks: one correctly rounded addition) followed by those two kernels bitwise.
struct LamportAddRmsNormParams {
    const __half* partial = nullptr;  //!< [m][hidden] this rank's partial sum (read only)
    __half* residual = nullptr;       //!< [m][hidden] the residual stream, updated in place
    const __half* gain = nullptr;     //!< [hidden] RMSNorm weight
    float eps = 0.0f;                 //!< RMSNorm epsilon, finite and >= 0
    __half* out = nullptr;            //!< [m][hidden] may alias partial exactly, never residual
    std::int64_t m = 0;               //!< rows, 1..max_tokens, the same on every rank
};
void lamport_all_reduce_add_rms_norm(const LamportGroup& group,
                                     const LamportAddRmsNormParams& params,
                                     cudaStream_t stream);

}  // namespace q4tp::kernels::cuda
