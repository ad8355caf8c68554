//! The glue between parallel::IpcAllReduce (which owns the buffers) and the kernels of
//! kernels/cuda/fused_all_reduce.h (which parallel/ may not include): used by CudaOps and by the allreduce test and
//! benchmark.
#pragma once

#include "kernels/cuda/fused_all_reduce.h"
#include "parallel/ipc_all_reduce.h"

namespace q4tp::model {

// The two layers describe one memory layout; these keep them from drifting apart.
static_assert(parallel::IpcAllReduce::kMaxRanks == kernels::cuda::kLamportMaxRanks);
static_assert(parallel::IpcAllReduce::kBuffers == kernels::cuda::kLamportBuffers);
static_assert(parallel::IpcAllReduce::kMaxTokens == kernels::cuda::kLamportMaxTokens);
static_assert(parallel::IpcAllReduce::kMaxHidden == kernels::cuda::kLamportMaxHidden);
static_assert(parallel::IpcAllReduce::kStateWords == kernels::cuda::kLamportStateWords);
static_assert(parallel::IpcAllReduce::kStateTimedOut == kernels::cuda::kLamportStateTimedOut);

//! The kernels' view of a set-up group.
inline kernels::cuda::LamportGroup lamport_group(parallel::IpcAllReduce& all_reduce) {
    kernels::cuda::LamportGroup group;
    group.peer_buffers = all_reduce.peer_table();
    group.state = all_reduce.state();
    group.rank = all_reduce.rank();
    group.ranks = all_reduce.size();
    group.max_tokens = all_reduce.max_tokens();
    group.hidden = all_reduce.hidden();
    group.timeout_ns = all_reduce.timeout_ns();
    return group;
}

}  // namespace q4tp::model
